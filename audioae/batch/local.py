"""The local engine: the files of a job on this machine, in this process (``workers=1``) or in a
pool of worker processes that each load the model once (``workers>1``). A file a process died
on is retried alone in a process of its own (:mod:`.journal`)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence

import torch

from ..isolation import ProcessDied, Worker
from ..models import SpectralAutoencoder
from .interrupts import deaf_to_ctrl_c
from .isolated import Settings, isolate, run_marked
from .journal import Journal
from .manifest import FileResult
from .plan import FileTask, part_path
from .process import BLOCK_SECONDS, FileDenoiser, says_disk_full

log = logging.getLogger(__name__)

_WORKER: FileDenoiser | None = None  # one per worker process, set by _init_worker
_JOURNAL: Journal | None = None


def _init_worker(settings: Settings, journal: Journal) -> None:
    from ..checkpoint import load_checkpoint

    global _WORKER, _JOURNAL
    torch.set_num_threads(max(1, settings.threads))
    model = load_checkpoint(settings.checkpoint, map_location=settings.device, expected_sha256=settings.sha256)
    _WORKER, _JOURNAL = FileDenoiser(model, settings.strength, block_seconds=settings.block_seconds), journal


def _work(task: FileTask, disk_full: bool = False) -> FileResult:
    """``disk_full``: a write of this job has found the disk full (in any worker): see
    :attr:`.process.FileDenoiser.disk_full`."""
    assert _WORKER is not None and _JOURNAL is not None, "worker used before its initializer ran"
    _WORKER.disk_full = _WORKER.disk_full or disk_full  # run() passes over a file that cannot fit: its marker goes below
    _JOURNAL.started(task.input, output=task.output)  # the worker, not the parent, knows when a file starts
    try:
        result = _WORKER.run(task)
    except BaseException:  # Ctrl-C (or a bug), not a crash: no suspect, though an output renamed into place is kept
        _JOURNAL.interrupted(task.input)
        raise
    _JOURNAL.result(result)
    return result


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
    """``workers`` processes (:class:`audioae.isolation.Worker`, a pipe each), each loading the
    model once and fed by a thread of this process from one queue. A worker that dies (a codec
    crash, the out-of-memory killer) costs only the file it was on, which is denoised alone in a
    process of its own after the others; a fresh worker takes its place. Ctrl-C stops the workers at once
    and leaves no file marked, nor its .part file: they were interrupted, not crashed on. Ctrl-C
    pressed again while the pool stops is ignored (:func:`.interrupts.deaf_to_ctrl_c`): until
    2026-12-08 it broke off the stop, and the files' markers and .part files stayed."""
    pool = _Pool(todo, settings, journal)
    feeders = [threading.Thread(target=pool.feed, name=f"audioae-worker-{i}", daemon=True)
               for i in range(min(workers, len(todo)))]
    stopped = True  # until every result came: Ctrl-C, SIGTERM, or the job stopped reading
    try:
        for feeder in feeders:
            feeder.start()
        for _ in feeders:  # each feeder ends with None after its last result
            while (result := pool.results.get()) is not None:
                yield result
        stopped = False
    finally:
        with deaf_to_ctrl_c(stopped):
            pool.stop()
            for feeder in feeders:
                if feeder.is_alive():
                    feeder.join()
            pool.forget_interrupted()
    yield from pool.unstarted()
    for task in pool.died:  # here, not in a feeder thread: Ctrl-C reaches this one, and stops its child
        yield isolate(task, settings, journal)


class _Pool:
    """The shared state of one pool: the queue of files, the results, and who is on what."""

    def __init__(self, todo: Sequence[FileTask], settings: Settings, journal: Journal):
        self.settings, self.journal = settings, journal
        self.tasks: queue.SimpleQueue[FileTask] = queue.SimpleQueue()
        for t in todo:
            self.tasks.put(t)
        self.results: queue.SimpleQueue[FileResult | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.workers: set[Worker] = set()
        self.in_flight: set[FileTask] = set()
        self.died: list[FileTask] = []  # files a worker died on, denoised alone after the pool
        self.stopping = False
        self.start_error: str | None = None  # why no worker could start: the files left get it
        self.disk_full = False  # a worker's write found the disk full: every worker checks for room from then on

    def feed(self) -> None:
        """One feeder thread: a worker of its own, files from the queue until none is left."""
        worker = None
        try:
            worker = self._start_worker()
            while worker is not None and (task := self._next()) is not None:
                try:
                    result = worker.call(_work, task, self.disk_full)
                except ProcessDied:
                    if self.stopping:  # stopped by stop(): the file was interrupted
                        return
                    log.warning("a worker process died while on %s: it will be retried in a process of its own",
                                task.rel)
                    with self.lock:
                        self.in_flight.discard(task)
                        self.died.append(task)  # its marker stays until then: a suspect if the job dies too
                    self._retire(worker)
                    worker = self._start_worker()
                    continue
                except Exception as exc:  # noqa: BLE001 (an error the worker could not turn into a result)
                    result = FileResult(task.input, task.output, "error", f"{type(exc).__name__}: {exc}")
                with self.lock:
                    self.in_flight.discard(task)
                    self.disk_full = self.disk_full or says_disk_full(result.error)
                self.results.put(result)
        finally:
            if worker is not None:
                self._retire(worker)
            self.results.put(None)

    def _next(self) -> FileTask | None:
        with self.lock:
            if self.stopping:
                return None
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                return None
            self.in_flight.add(task)
            return task

    def _start_worker(self) -> Worker | None:
        """A worker with the model loaded, or None when none can start (the reason is kept)."""
        worker = Worker()
        with self.lock:
            if self.stopping:
                worker.close()
                return None
            self.workers.add(worker)
        try:
            worker.call(_init_worker, self.settings, self.journal)
        except Exception as exc:  # noqa: BLE001 (ProcessDied, or the model would not load there)
            self._retire(worker)
            # exit status 1 before a word: as a script without a __main__ guard ends in each worker
            hint = ("; from a script, call run_denoise under if __name__ == \"__main__\":"
                    if isinstance(exc, ProcessDied) and exc.exitcode == 1 else "")
            with self.lock:
                self.start_error = self.start_error or f"no worker process could start ({type(exc).__name__}: {exc}{hint})"
            return None
        return worker

    def _retire(self, worker: Worker) -> None:
        with self.lock:
            self.workers.discard(worker)
        worker.close()

    def stop(self) -> None:
        """Stop taking files and stop every worker, a busy one at once (its caller was interrupted)."""
        with self.lock:
            self.stopping = True
            workers = list(self.workers)
        for worker in workers:
            worker.close()

    def forget_interrupted(self) -> None:
        """The files workers were on when the pool was stopped: their markers and partial outputs
        go (interrupted, not crashed on: a rerun need not isolate them), but for a file whose output
        was renamed into place before its result came back, which the job still has to record."""
        for task in self.in_flight:
            self.journal.interrupted(task.input)
            with contextlib.suppress(OSError):
                part_path(task.output).unlink(missing_ok=True)

    def unstarted(self) -> Iterator[FileResult]:
        """An error for each file no worker took, when none could start."""
        while self.start_error is not None:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                return
            yield FileResult(task.input, task.output, "error", self.start_error)
