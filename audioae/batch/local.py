"""The local engine: the files of a job on this machine, in this process (``workers=1``) or in a
pool of worker processes that each load the model once (``workers>1``)."""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from ..models import SpectralAutoencoder
from .manifest import FileResult
from .plan import FileTask
from .process import BLOCK_SECONDS, FileDenoiser

log = logging.getLogger(__name__)

_WORKER: FileDenoiser | None = None  # one per worker process, set by _init_worker


def _init_worker(checkpoint: str, sha256: str, device: str, strength: float, threads: int,
                 block_seconds: float) -> None:
    from ..checkpoint import load_checkpoint

    global _WORKER
    torch.set_num_threads(max(1, threads))
    model = load_checkpoint(checkpoint, map_location=device, expected_sha256=sha256)
    _WORKER = FileDenoiser(model, strength, block_seconds=block_seconds)


def _work(task: FileTask) -> FileResult:
    assert _WORKER is not None, "worker used before its initializer ran"
    return _WORKER.run(task)


def run_local(todo: Sequence[FileTask], model: SpectralAutoencoder | None, *, checkpoint: str, sha256: str,
              device: str = "cpu", strength: float = 1.0, workers: int = 1, threads: int = 1,
              block_seconds: float = BLOCK_SECONDS) -> Iterator[FileResult]:
    """Results for ``todo`` as files finish. ``model`` (already on its device) serves the
    in-process case (``workers`` 1 or a single file); worker processes load ``checkpoint``
    themselves onto ``device`` (sha256-checked), so ``model`` may then be None."""
    if workers <= 1 or len(todo) <= 1:
        assert model is not None, "the in-process engine needs the loaded model"
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            den = FileDenoiser(model, strength, block_seconds=block_seconds)
            group = den.batch_files if den.device.type == "cuda" else 1
            for i in range(0, len(todo), group):
                yield from den.run_many([(t, None) for t in todo[i : i + group]])
        finally:
            torch.set_num_threads(before)
        return
    # spawn, not fork: forking a process whose torch thread pools are running can deadlock.
    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(checkpoint, sha256, device, strength, threads, block_seconds))
    try:
        futures = {ex.submit(_work, t): t for t in todo}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                yield fut.result()
            except BrokenProcessPool as exc:
                # A worker died (killed, out of memory): its file and any still queued fail.
                yield FileResult(task.input, task.output, "error", f"worker process died: {exc}")
            except Exception as exc:  # noqa: BLE001 (e.g. the model failed to load in a worker)
                yield FileResult(task.input, task.output, "error", f"{type(exc).__name__}: {exc}")
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
