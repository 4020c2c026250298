"""One file denoised in a child process of its own, for a file a process has died on before
(:mod:`.journal`): if the codec library crashes on it again, the child dies, not the job, and the
file is reported with how its process ended."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import time

import torch

from .manifest import FileResult
from .plan import FileTask, part_path

log = logging.getLogger(__name__)


def _child(conn, task: FileTask, checkpoint: str, sha256: str, device: str, strength: float, threads: int,
           block_seconds: float) -> None:
    from ..checkpoint import load_checkpoint
    from .process import FileDenoiser

    torch.set_num_threads(max(1, threads))
    try:
        model = load_checkpoint(checkpoint, map_location=device, expected_sha256=sha256)
        result = FileDenoiser(model, strength, block_seconds=block_seconds).run(task)
    except Exception as exc:  # noqa: BLE001 (the model would not load: an answer, not a crash)
        result = FileResult(task.input, task.output, "error", f"{type(exc).__name__}: {exc}")
    conn.send(result)
    conn.close()


def how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
        return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def run_isolated(task: FileTask, *, checkpoint: str, sha256: str, device: str = "cpu", strength: float = 1.0,
                 threads: int = 1, block_seconds: float) -> tuple[FileResult, bool]:
    """``(result, crashed)``: the file's result from a child process, or, when that process died
    before answering, an error saying how it ended (``crashed`` True). Costs a process start and
    a model load (seconds), which is why only suspects come here."""
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")  # never fork a process whose torch thread pools run
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, task, checkpoint, sha256, device, strength, threads, block_seconds),
                       name=f"audioae-isolated:{task.rel}", daemon=True)
    proc.start()
    send.close()  # the child holds the only sending end: its death ends recv() with EOFError
    try:
        result = receive.recv()
    except EOFError:
        result = None
    finally:
        receive.close()
        proc.join()
    if result is not None:
        return result, False
    with contextlib.suppress(OSError):
        part_path(task.output).unlink(missing_ok=True)
    msg = (f"the process denoising this file {how_it_ended(proc.exitcode)}, and so had an earlier one: a codec "
           f"library probably crashes on this file (check it with ffprobe or sndfile-info); skipped, no output "
           f"written")
    log.warning("%s: %s", task.input, msg)
    return FileResult(task.input, task.output, "error", msg, time.perf_counter() - t0), True
