"""Encoded audio (uploads and answers in WAV, FLAC, Ogg, ...) read and written in worker processes.

libsndfile and the codecs under it are C: a file one of them crashes on would end the server
and every call in flight with it. Here it ends a worker, which only the call on it notices: that
call is tried once more alone in a fresh process (:func:`audioae.isolation.call_in_child`),
answered if it was innocent (the worker was killed from outside, by hand or by the out-of-memory
killer), refused with INVALID_ARGUMENT if its upload kills that process too. The dead worker is
replaced. A call that takes longer than the timeout (a decoder caught in a loop) has its process
stopped and is refused, not tried again. The workers import numpy and soundfile only (tens of
MB each), never torch. PCM never reaches a codec. A call given ``is_active`` (its gRPC call's)
stops waiting for a worker once that says False, and is not run: an abandoned upload takes no
worker from the calls still waiting.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from audioae.audio import AudioError, AudioInfo, encode_audio, header_shape, read_audio
from audioae.isolation import CallTimedOut, ProcessDied, Worker, call_in_child

from .errors import CallEnded, ShuttingDown

log = logging.getLogger(__name__)
IsActive = Callable[[], bool] | None  # a call's context.is_active: False once the call has ended


class Codecs:
    """``header``, ``read`` and ``encode`` of file bytes, in ``workers`` processes (0: in this one).
    A call takes an idle worker (waiting while all are busy, or until its ``is_active()`` says
    False: :class:`~audioae.server.errors.CallEnded`) and gives it back."""

    def __init__(self, workers: int, timeout: float = 60.0, on_death: Callable[[str], None] = lambda outcome: None):
        self.workers = workers
        self.timeout = timeout  # seconds a call may take before its process is stopped (a decoder in a loop)
        self.on_death = on_death  # "retried" | "refused" | "timed_out": counted in the metrics
        self._idle: queue.Queue[Worker] = queue.Queue()
        self._all: set[Worker] = set()
        self._lock = threading.Lock()
        self._started = False
        # Set by close(): a worker dead from then on was stopped by the shutdown, not by its input.
        self._closing: str | None = None
        self._waiting = 0  # calls waiting for an idle worker
        self._waiting_lock = threading.Lock()  # not _lock: a worker's replacement holds that for its start

    @property
    def waiting(self) -> int:
        """How many calls wait for an idle worker now."""
        return self._waiting

    def start(self) -> None:
        """Start the workers and wait until each answers (they boot in parallel, about 0.3 s): the
        first upload then finds them ready, and a Ctrl-C after the server says it is ready finds
        them ignoring it (:func:`audioae.isolation._serve_calls`)."""
        with self._lock:
            if not self._started and self._closing is None:  # a stop during start-up: start none
                workers = [Worker() for _ in range(self.workers)]
                for worker in workers:
                    worker.call(len, b"")
                    self._add(worker)
                self._started = True

    def _add(self, worker: Worker) -> None:
        self._all.add(worker)
        self._idle.put(worker)

    def header(self, data: bytes, is_active: IsActive = None) -> tuple[int, int, int] | None:
        """``(frames, channels, sample_rate)`` from the file's header; None when it has none."""
        return self._run(header_shape, (data,), {}, "reading the audio file's header", is_active=is_active)

    def read(self, data: bytes, name: str = "audio", is_active: IsActive = None) -> tuple[np.ndarray, int, AudioInfo]:
        return self._run(read_audio, (data,), {"name": name}, "decoding the audio file", is_active=is_active)

    def encode(self, wav: np.ndarray, sr: int, *, format: str, subtype: str | None, kbps: float | None = None,
               is_active: IsActive = None) -> bytes:
        return self._run(encode_audio, (wav, sr), {"format": format, "subtype": subtype, "kbps": kbps},
                         f"encoding the answer as {format}", ours=True, is_active=is_active)

    def _run(self, fn: Callable, args: tuple, kwargs: dict, doing: str, ours: bool = False,
             is_active: IsActive = None) -> Any:
        def ended() -> CallEnded | None:
            if is_active is None or is_active():
                return None
            return CallEnded(f"{doing}: the call ended before a codec process took it")

        if (exc := ended()) is not None:  # no work, nor a wait for a process, for a call that has ended
            raise exc
        if self.workers == 0:
            return fn(*args, **kwargs)
        if not self._started:  # the server starts them in load(); a Codecs used on its own, here
            self.start()
        worker = None
        with self._waiting_lock:
            self._waiting += 1
        try:
            while worker is None:  # close() returns no worker to the queue: look at it while waiting
                if self._closing is not None:
                    raise ShuttingDown(self._closing)
                if (exc := ended()) is not None:  # its caller left: it waits no more, and takes no worker
                    raise exc
                try:
                    worker = self._idle.get(timeout=0.2)
                except queue.Empty:
                    pass
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        if (exc := ended()) is not None:  # it ended as the worker came: the worker goes to the next call
            self._idle.put(worker)
            raise exc
        try:
            answer = worker.call(fn, *args, timeout=self.timeout, **kwargs)
        except (CallTimedOut, ProcessDied) as died:
            if self._closing is not None:  # close() stopped it: no fault of the input, no crash to retry
                raise ShuttingDown(self._closing) from None
            self._replace(worker)
            if isinstance(died, CallTimedOut):  # not tried again: it would hold a process that long again
                self.on_death("timed_out")
                raise (RuntimeError if ours else AudioError)(
                    f"{doing}: {died}; the file is malformed in a way the decoder does not catch, or too long "
                    f"for this server's --codec-timeout") from None
            log.warning("%s: %s; trying again in a process of its own", doing, died)
            return self._alone(fn, args, kwargs, doing, ours)
        except BaseException:
            self._idle.put(worker)  # it answered (an AudioError): it lives
            raise
        self._idle.put(worker)
        return answer

    def _replace(self, dead: Worker) -> None:
        with self._lock:
            self._all.discard(dead)
            dead.close()
            if self._closing is None:
                self._add(Worker())

    def _alone(self, fn: Callable, args: tuple, kwargs: dict, doing: str, ours: bool) -> Any:
        """The call once more in a fresh process: an innocent one (its worker was killed by
        someone, or by the out-of-memory killer) is answered; one that kills this too is refused."""
        outcome = "retried"
        try:
            return call_in_child(fn, *args, timeout=self.timeout, **kwargs)
        except (ProcessDied, CallTimedOut) as died:
            outcome = "refused"
            if self._closing is not None:  # the shutdown (its process group's signal) ended it
                outcome = None
                raise ShuttingDown(self._closing) from None
            if ours:  # the server's own output: a fault here, not the caller's
                raise RuntimeError(f"{doing} crashed the codec ({died}); ask for PCM instead") from None
            raise AudioError(f"{doing} crashed the codec ({died}) in a process of its own: the file is "
                             f"malformed in a way the decoder does not catch; send PCM, or re-encode it "
                             f"with a standard encoder") from None
        finally:
            if outcome is not None:
                self.on_death(outcome)

    def close(self, reason: str = "the server is shutting down") -> None:
        """Stop every worker, a busy one at once; its call (and any after) raises
        :class:`ShuttingDown` with ``reason``: not retried, not counted as a death."""
        if self._closing is None:
            self._closing = reason
        with self._lock:
            for worker in self._all:
                worker.close()
            self._all.clear()
