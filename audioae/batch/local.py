"""The local engine: the files of a job on this machine, in this process (``workers=1``) or in a
pool of worker processes that each load the model once (``workers>1``). A file a process died
on is retried alone in a process of its own (:mod:`.journal`)."""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from ..models import SpectralAutoencoder
from .isolated import Settings, isolate, run_marked
from .journal import Journal
from .manifest import FileResult
from .plan import FileTask
from .process import BLOCK_SECONDS, FileDenoiser

log = logging.getLogger(__name__)

_WORKER: FileDenoiser | None = None  # one per worker process, set by _init_worker
_JOURNAL: Journal | None = None


def _init_worker(settings: Settings, journal: Journal) -> None:
    from ..checkpoint import load_checkpoint

    global _WORKER, _JOURNAL
    torch.set_num_threads(max(1, settings.threads))
    model = load_checkpoint(settings.checkpoint, map_location=settings.device, expected_sha256=settings.sha256)
    _WORKER, _JOURNAL = FileDenoiser(model, settings.strength, block_seconds=settings.block_seconds), journal


def _work(task: FileTask) -> FileResult:
    assert _WORKER is not None and _JOURNAL is not None, "worker used before its initializer ran"
    _JOURNAL.started(task.input)  # the worker, not the parent, knows when a file starts and ends
    try:
        return _WORKER.run(task)
    finally:  # done, or interrupted (Ctrl-C reaches the workers too); a crash never gets here
        _JOURNAL.ended(task.input)


def run_local(todo: Sequence[FileTask], model: SpectralAutoencoder | None, *, checkpoint: str, sha256: str,
              journal: Journal, device: str = "cpu", strength: float = 1.0, workers: int = 1, threads: int = 1,
              block_seconds: float = BLOCK_SECONDS) -> Iterator[FileResult]:
    """Results for ``todo`` as files finish. ``model`` (already on its device) serves the
    in-process case (``workers`` 1 or a single file); worker processes load ``checkpoint``
    themselves onto ``device`` (sha256-checked), so ``model`` may then be None.

    Every file is marked in flight in ``journal`` while it runs. Files a process died on (in an
    earlier run, or in this run's pool) are denoised each in a process of its own (:mod:`.isolated`)."""
    settings = Settings(checkpoint, sha256, device, strength, threads, block_seconds)
    if model is not None and (workers <= 1 or len(todo) <= 1):
        yield from _in_process(todo, model, settings, journal)
        return
    suspects = [t for t in todo if journal.why(t.input)]
    yield from _in_pool([t for t in todo if t not in suspects], settings, journal, workers)
    for t in suspects:
        yield isolate(t, settings, journal)


def _in_process(todo: Sequence[FileTask], model: SpectralAutoencoder, settings: Settings,
                journal: Journal) -> Iterator[FileResult]:
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        den = FileDenoiser(model, settings.strength, block_seconds=settings.block_seconds)
        group = den.batch_files if den.device.type == "cuda" else 1
        for i in range(0, len(todo), group):
            yield from run_marked(den, [(t, None) for t in todo[i : i + group]], settings, journal)
    finally:
        torch.set_num_threads(before)


def _in_pool(todo: Sequence[FileTask], settings: Settings, journal: Journal, workers: int) -> Iterator[FileResult]:
    """A pool of worker processes. When one dies (a codec crash, the OOM killer), the pool is
    lost: the files its workers were on are retried one by one in processes of their own, the
    files not yet started go on in a new pool."""
    remaining = list(todo)
    while remaining:
        finished: set[str] = set()
        broken = yield from _pool_round(remaining, settings, journal, workers, finished)
        if not broken:
            return
        unfinished = [t for t in remaining if t.input not in finished]
        died = [t for t in unfinished if journal.why(t.input)]
        remaining = [t for t in unfinished if t not in died]
        if not died and not finished:  # nothing ever ran (a worker cannot start): do not loop
            for t in remaining:
                yield FileResult(t.input, t.output, "error", f"worker process died: {broken}")
            return
        log.warning("a worker process died while on %s: each is retried in a process of its own; %d file(s) "
                    "go on in a new pool", ", ".join(t.rel for t in died), len(remaining))
        for t in died:
            yield isolate(t, settings, journal)


def _pool_round(todo: Sequence[FileTask], settings: Settings, journal: Journal, workers: int,
                finished: set[str]) -> Generator[FileResult, None, BrokenProcessPool | None]:
    """Runs ``todo`` in one pool; returns the pool's breakage, or None when it stayed whole."""
    # spawn, not fork: forking a process whose torch thread pools are running can deadlock.
    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(settings, journal))
    broken = None
    try:
        futures = {ex.submit(_work, t): t for t in todo}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                result = fut.result()
            except BrokenProcessPool as exc:  # this file's worker, or another, died
                broken = exc
                continue
            except Exception as exc:  # noqa: BLE001 (e.g. the model failed to load in a worker)
                result = FileResult(task.input, task.output, "error", f"{type(exc).__name__}: {exc}")
            finished.add(task.input)
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return broken
