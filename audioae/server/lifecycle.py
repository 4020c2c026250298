"""Serving state and in-flight accounting: starting -> serving -> draining.

Every RPC enters through :meth:`Gate.enter`, atomically with the in-flight count, so a drain
either sees a call (and waits for it) or the call sees the drain (and gets UNAVAILABLE).

The gate is also the server's admission control: at most ``max_calls`` unary calls and
``max_streams`` streams are in progress at once, each counted from entry to exit whatever it
waits for (a codec process, the device queue, the encoding of its answer), and one more is
refused at once with RESOURCE_EXHAUSTED. Each admitted call holds a gRPC thread, so the thread
pool is sized to leave threads over for health checks and for these refusals.
"""

from __future__ import annotations

import math
import threading
import time

import grpc

from .errors import Abort

STARTING, SERVING, DRAINING = "starting", "serving", "draining"
STREAM_END_MARGIN = 1.0  # seconds before the drain's end at which streams end (half the drain if shorter)


class Gate:
    def __init__(self, max_calls: int | None = None):
        self.state = STARTING
        self.max_calls = max_calls  # unary calls in progress at once; None: no limit
        self._inflight = 0
        self._calls = 0
        self._streams = 0
        self._cond = threading.Condition()
        self._streams_end_at: float | None = None  # monotonic time at which a drain ends open streams
        self._stream_grace = 0.0  # seconds after that in which streams still take queued messages
        self.ended_streams = 0  # streams a drain ended before their clients did
        self.cut_reason: str | None = None  # cut_off()'s: why calls still in flight are being ended

    def set_serving(self) -> None:
        with self._cond:
            self.state = SERVING

    def start_draining(self, within: float | None = None) -> None:
        """Refuse new calls; open streams end themselves a little before ``within`` seconds (a
        live voice call never finishes on its own), answering the audio they were sent."""
        with self._cond:
            self.state = DRAINING
            if within is not None:
                margin = min(STREAM_END_MARGIN, within / 2)
                self._streams_end_at = time.monotonic() + max(0.0, within - margin)
                # Half the margin for what clients already sent; the other half answers it.
                self._stream_grace = margin / 2
            self._cond.notify_all()

    def cut_off(self, reason: str) -> None:
        """The drain is over (its time ran out, or a second signal came): open streams end now,
        without waiting for messages on their way, and say ``reason``."""
        with self._cond:
            self.state = DRAINING
            self.cut_reason = reason
            self._streams_end_at = time.monotonic()
            self._stream_grace = 0.0
            self._cond.notify_all()

    def streams_must_end(self) -> bool:
        """Whether a drain has reached the time for open streams to end."""
        return self._streams_end_at is not None and time.monotonic() >= self._streams_end_at

    def stream_grace_left(self) -> float:
        """Seconds left, once streams must end, in which they may still wait for messages already
        on their way (never below 0; infinite before a drain with a deadline)."""
        if self._streams_end_at is None:
            return math.inf
        return max(0.0, self._streams_end_at + self._stream_grace - time.monotonic())

    def stream_ended_by_drain(self) -> None:
        with self._cond:
            self.ended_streams += 1

    def enter(self, stream: bool = False, max_streams: int = 0) -> None:
        with self._cond:
            if self.state == STARTING:
                raise Abort(
                    grpc.StatusCode.UNAVAILABLE, "the server is still loading its models; retry shortly"
                )
            if self.state == DRAINING:
                raise Abort(
                    grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
                )
            if stream and self._streams >= max_streams:
                raise Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many open streams ({self._streams}, max {max_streams}); retry later",
                )
            if not stream and self.max_calls is not None and self._calls >= self.max_calls:
                raise Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is busy: {self._calls} calls in progress (max {self.max_calls}); "
                    f"retry with backoff",
                )
            self._inflight += 1
            self._streams += int(stream)
            self._calls += int(not stream)

    def exit(self, stream: bool = False) -> None:
        with self._cond:
            self._inflight -= 1
            self._streams -= int(stream)
            self._calls -= int(not stream)
            self._cond.notify_all()

    @property
    def inflight(self) -> int:
        """Calls in progress, streams included."""
        return self._inflight

    @property
    def calls(self) -> int:
        """Unary calls in progress."""
        return self._calls

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False if ``timeout`` passed first."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._inflight > 0:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True
