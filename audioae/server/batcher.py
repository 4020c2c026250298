"""Dynamic batching: one worker thread owns the device; requests queue for it, and denoise
requests for the same causal model that arrive within ``max_delay`` run as one batch.

Why the batch is assembled from features, not from padded waveforms: padding a waveform with
zeros changes the last STFT frames that overlap its end, and so the last ~``n_fft`` output
samples (measured: up to 2e-3 on a random model). Each request therefore gets its own resampling
and STFT, exactly as :func:`audioae.enhance.denoise` does; only the model's forward runs on the
stacked features, zero-padded at the end. A causal model's outputs for the real frames do not
depend on frames after them, so every request's answer equals ``denoise()`` on it alone (to
float rounding of the batched matrix products; ``tests/test_server.py`` checks it). Non-causal
models, long clips (which ``denoise()`` streams) and every other kind of job run alone through
the library's own functions.

gRPC threads only decode, enqueue and wait: the worker is a separate thread, so the server keeps
answering (health, rejections) while the device is busy. The queue is bounded: a request that
finds it full is refused at once (RESOURCE_EXHAUSTED), never parked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from audioae.device import is_out_of_memory, release_device_memory
from audioae.enhance import (
    OFFLINE_MAX_SECONDS,
    Stopped,
    denoise,
    denoise_batch,
)
from audioae.models import SpectralAutoencoder

from .errors import QueueFull, ShuttingDown
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One unit of device work: ``fn()``, or a denoise of ``args`` = (model, wav [C, T], sr,
    strength). A denoise job with a ``key`` may share a batch with others of the same key."""

    kind: str  # metrics label: denoise | decompose | encode | decode
    seconds: float  # channel-seconds of audio (0 for tensors): the batch cap counts these, the work of a clip
    key: str | None = None
    args: tuple = ()
    fn: Callable[[], object] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    abandoned: threading.Event = field(default_factory=threading.Event)  # its call has ended

    def abandon(self) -> None:
        """The call ended (answered, cancelled or timed out): a queued job is dropped, and a long
        denoise already running stops at its next piece (it held the device for seconds more)."""
        self.abandoned.set()
        self.future.cancel()


@dataclass(frozen=True)
class BatchInfo:
    queue_ms: float
    compute_ms: float
    batch_size: int


@torch.inference_mode()
def batch_key(model_name: str, model: SpectralAutoencoder, channel_seconds: float) -> str | None:
    """Requests with equal keys may share a batch: causal models, clips ``denoise()`` runs whole
    (``channel_seconds``: seconds times channels, as ``denoise()`` decides)."""
    return model_name if model.causal and channel_seconds <= OFFLINE_MAX_SECONDS else None


class Batcher:
    """The device worker and its bounded queue."""

    def __init__(
        self,
        metrics: Metrics,
        max_queue: int = 64,
        max_delay_ms: float = 10.0,
        max_batch_seconds: float = 60.0,
    ):
        self.metrics = metrics
        self.max_queue = max_queue
        self.max_delay = max_delay_ms / 1000.0
        self.max_batch_seconds = max_batch_seconds
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._held = False
        self._stopping = False
        self._running: list[Job] = []  # taken from the queue: being gathered into a batch, or on the device
        self._cut: str | None = None  # cut_off()'s reason: every job ends with it
        self._thread = threading.Thread(target=self._loop, name="audioae-device", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._held = False
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def cut_off(self, reason: str) -> None:
        """End every job now, as the server stops: a queued one fails with :class:`ShuttingDown`
        (``reason``), a running one is asked to stop at its next piece (the ``stop`` its function
        checks, :func:`audioae.enhance.check_stop`) and fails so too. A batch of short clips,
        which has no such check, finishes. Then the worker ends."""
        with self._cond:
            self._cut = reason
            self._stopping = True
            self._held = False
            queued, running = list(self._queue), list(self._running)
            self._queue.clear()
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        for job in queued:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown(reason))
        for job in running:
            job.abandoned.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def queued_besides(self, job: Job) -> int:
        """Jobs waiting for the device other than ``job``, which stays queued, abandoned, until the
        worker reaches it: a lone request whose deadline passed read "(1 request queued)"."""
        with self._cond:
            return sum(1 for j in self._queue if j is not job)

    def submit(self, job: Job) -> Future:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queue`` jobs are already waiting."""
        with self._cond:
            if self._cut is not None:
                raise ShuttingDown(self._cut)
            if self._stopping:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(
                    f"the server is busy: {len(self._queue)} requests are already waiting "
                    f"for the device (max {self.max_queue}); retry with backoff"
                )
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
        return job.future

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Pause the worker (requests queue up but none runs) until the block exits.

        For maintenance and for tests that need a deterministic queue."""
        with self._cond:
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    # ---- worker ---------------------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while (not self._queue or self._held) and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None  # stopping and empty
            head = self._queue.popleft()
            # On the running list from the moment it leaves the queue (the wait below lets go of
            # the lock), so that cut_off() always finds it in one or the other.
            batch, total = [head], head.seconds
            self._running = batch
            if head.key is not None and self.max_batch_seconds > 0:
                window_end = head.enqueued + self.max_delay
                while total < self.max_batch_seconds:
                    for job in list(self._queue):
                        if job.key == head.key and total + job.seconds <= self.max_batch_seconds:
                            self._queue.remove(job)
                            batch.append(job)
                            total += job.seconds
                    remaining = window_end - time.monotonic()
                    if remaining <= 0 or self._stopping:
                        break
                    self._cond.wait(remaining)
            self.metrics.queue_depth.set(len(self._queue))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            with self._cond:
                # A job whose call was cancelled (or timed out) while queued has a cancelled future.
                live = [j for j in batch if j.future.set_running_or_notify_cancel()]
                cut = self._cut
                self._running = [] if cut is not None else live
            self.metrics.dropped.inc(len(batch) - len(live))
            if cut is not None:  # cut off after leaving the queue, before running: never runs
                for j in live:
                    j.future.set_exception(ShuttingDown(cut))
                continue
            if live:
                try:
                    self._run(live)
                finally:
                    with self._cond:
                        self._running = []

    def _run(self, jobs: list[Job]) -> None:
        start = time.monotonic()
        for j in jobs:
            self.metrics.queue_seconds.observe(start - j.enqueued)
        failed = None
        try:
            results: list = self._compute(jobs)
        except Exception as exc:
            # Out of memory: drop the traceback, whose frames hold the failed batch's tensors on the
            # device, before the retries below need that memory.
            failed = exc.with_traceback(None) if is_out_of_memory(exc) else exc
        if failed is not None:
            if is_out_of_memory(failed):
                release_device_memory()
            if self._cut is not None:  # stopped by cut_off(), or failed as the server stops: no retries
                for j in jobs:
                    j.future.set_exception(ShuttingDown(self._cut))
                return
            if len(jobs) == 1:
                if isinstance(failed, Stopped):  # its call had ended: nobody waits for it
                    self.metrics.dropped.inc()
                jobs[0].future.set_exception(failed)  # the caller's thread re-raises it with its status
                return
            # One bad clip must not fail its neighbours: run them one by one instead.
            log.warning("batch of %d failed (%s); running its requests one by one", len(jobs), failed)
            failed = None
            for j in jobs:
                self._run_alone(j, start)
            return
        compute = time.monotonic() - start
        self.metrics.compute_seconds.labels(jobs[0].kind).observe(compute)
        self.metrics.batch_size.observe(len(jobs))
        for j, r in zip(jobs, results, strict=True):
            j.future.set_result((r, BatchInfo(1000 * (start - j.enqueued), 1000 * compute, len(jobs))))

    def _run_alone(self, job: Job, start: float) -> None:
        t0 = time.monotonic()
        try:
            (r,) = self._compute([job])
        except Exception as exc:
            if self._cut is not None:
                job.future.set_exception(ShuttingDown(self._cut))
                return
            if is_out_of_memory(exc):  # as in _run: let the next clip have the failed one's memory
                job.future.set_exception(exc.with_traceback(None))
                release_device_memory()
            else:
                job.future.set_exception(exc)
            return
        self.metrics.batch_size.observe(1)
        self.metrics.compute_seconds.labels(job.kind).observe(time.monotonic() - t0)
        job.future.set_result((r, BatchInfo(1000 * (t0 - job.enqueued), 1000 * (time.monotonic() - t0), 1)))

    @staticmethod
    def _compute(jobs: list[Job]) -> list:
        if jobs[0].fn is not None:
            return [jobs[0].fn()]
        if len(jobs) == 1:  # a denoise job alone: the library's own path
            model, wav, sr, strength = jobs[0].args
            return [denoise(model, wav, sr, strength=strength, stop=jobs[0].abandoned.is_set)]
        items = [(wav, sr, strength) for _, wav, sr, strength in (j.args for j in jobs)]
        return denoise_batch(jobs[0].args[0], items)
