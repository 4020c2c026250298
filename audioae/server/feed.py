"""A stream's incoming messages, read on a thread of their own.

gRPC's request iterator blocks until the client sends; a call's thread that reads it directly
cannot notice an idle client (which would hold one of ``--max-streams`` slots for as long as it
keeps the connection open) or a drain deadline (a live voice call never finishes by itself). A
reader thread moves the messages into a small queue, and the call's thread waits on the queue
with a time limit. The queue is bounded: a client that sends faster than the model runs waits
for it (gRPC's flow control), as it did without the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

_END = object()  # the client half-closed: no more messages
QUEUE_MESSAGES = 2  # read ahead while the model works on the current one


class FeedTimeout(Exception):
    """No message arrived within the time asked for."""


class MessageFeed:
    def __init__(self, requests: Iterator):
        self._q: queue.Queue = queue.Queue(maxsize=QUEUE_MESSAGES)
        self._closed = threading.Event()
        self._ended = False
        self.taken_after_deadline = 0  # messages the call took after a drain's deadline (servicer)
        self._thread = threading.Thread(target=self._read, args=(requests,), name="stream-reader", daemon=True)
        self._thread.start()

    def _read(self, requests: Iterator) -> None:
        try:
            for msg in requests:
                if not self._put(msg):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 (an unparsable message, a cancelled call: the reader's to raise)
            self._put(exc)

    def _put(self, item) -> bool:
        """Queue ``item``; False when the call ended meanwhile (nobody would take it)."""
        while not self._closed.is_set():
            try:
                self._q.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def next(self, timeout: float | None = None):
        """The next message; None when the client half-closed. Raises :class:`FeedTimeout` after
        ``timeout`` seconds without one (None: wait as long as it takes), and re-raises what
        reading the messages raised."""
        if self._ended:
            return None
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            raise FeedTimeout from None
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """The call is over: a reader blocked on a full queue gives up (one blocked on the client
        ends when gRPC ends the call)."""
        self._closed.set()
