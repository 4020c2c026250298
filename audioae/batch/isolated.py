"""Files denoised with in-flight markers (:mod:`.journal`), and a file a process has died on
before denoised in a child process of its own: if the codec library crashes on it again, the
child dies, not the job, and the file is reported with how its process ended. Both engines use
these: the local one in its process or its workers, the Ray one in its actors."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..isolation import ProcessDied, call_in_child, how_it_ended
from .interrupts import deaf_to_ctrl_c
from .journal import Journal
from .manifest import FileResult
from .plan import FileTask, part_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What a process needs to denoise files on its own: the checkpoint (a path, sha256-checked) and the knobs."""

    checkpoint: str
    sha256: str
    device: str
    strength: float
    threads: int
    block_seconds: float


def _as_is(result: FileResult) -> FileResult:
    """A result with nothing added (``complete``'s default)."""
    return result


def run_marked(den, items: Sequence[tuple[FileTask, bytes | None]], settings: Settings, journal: Journal,
               complete: Callable[[FileResult], FileResult] = _as_is) -> Iterator[FileResult]:
    """Results for ``items`` from ``den`` (a :class:`~.process.FileDenoiser`), each file marked
    in flight while it runs; a suspect among them goes to a process of its own instead.
    ``complete``: what the caller adds to a result (a Ray actor: the input as read, for a file
    denoised from bytes), before its marker notes it."""
    suspect = [bool(journal.why(t.input)) for t, _ in items]
    fresh = [item for item, s in zip(items, suspect, strict=True) if not s]
    # On CPU files run one at a time, each marked as it starts; a GPU batch is in flight as a whole.
    groups = [[item] for item in fresh] if den.device.type == "cpu" else [fresh]
    for group in groups:
        yield from _marked_group(den, group, journal, complete)
    for (t, _), s in zip(items, suspect, strict=True):
        if s:
            yield isolate(t, settings, journal, complete)


def _marked_group(den, group: Sequence[tuple[FileTask, bytes | None]], journal: Journal,
                  complete: Callable[[FileResult], FileResult]) -> Iterator[FileResult]:
    for t, _ in group:
        journal.started(t.input, output=t.output)
    running = {t.input for t, _ in group}
    try:
        for r in den.run_many(group):
            running.discard(r.input)
            r = complete(r)
            journal.result(r)
            yield r
    except BaseException:  # an interruption (Ctrl-C), not the file's fault: a crash never gets here
        with deaf_to_ctrl_c():  # Ctrl-C pressed again: not before the markers are gone
            for name in running:
                journal.interrupted(name)
        raise


def isolate(task: FileTask, settings: Settings, journal: Journal,
            complete: Callable[[FileResult], FileResult] = _as_is) -> FileResult:
    log.warning("%s: a process died on this file before; denoising it in a process of its own", task.input)
    result, crashed = run_isolated(task, settings, journal)
    result = complete(result)
    journal.result(result, crashed=crashed)
    return result


def _denoise_alone(task: FileTask, settings: Settings) -> FileResult:
    """The child's work: load the model, denoise the one file."""
    from ..checkpoint import load_checkpoint
    from .process import FileDenoiser

    torch.set_num_threads(max(1, settings.threads))
    try:
        model = load_checkpoint(settings.checkpoint, map_location=settings.device, expected_sha256=settings.sha256)
    except Exception as exc:  # noqa: BLE001 (the model would not load: an answer, not a crash)
        return FileResult(task.input, task.output, "error", f"{type(exc).__name__}: {exc}")
    return FileDenoiser(model, settings.strength, block_seconds=settings.block_seconds).run(task)


def run_isolated(task: FileTask, settings: Settings, journal: Journal) -> tuple[FileResult, bool]:
    """``(result, crashed)``: the file's result from a child process, or, when that process died
    before answering, an error saying how it ended (``crashed`` True). Costs a process start and
    a model load (seconds), which is why only suspects come here."""
    t0 = time.perf_counter()
    try:  # the child's pid goes in the marker: the file stays a suspect if this process dies meanwhile
        result = call_in_child(_denoise_alone, task, settings,
                               on_start=lambda pid: journal.started(task.input, pid, output=task.output))
        return result, False
    except ProcessDied as died:
        with contextlib.suppress(OSError):
            part_path(task.output).unlink(missing_ok=True)
        msg = (f"the process denoising this file {how_it_ended(died.exitcode)}, and so had an earlier one: a "
               f"codec library probably crashes on this file (check it with ffprobe or sndfile-info); skipped, "
               f"no output written")
        log.warning("%s: %s", task.input, msg)
        return FileResult(task.input, task.output, "error", msg, time.perf_counter() - t0), True
