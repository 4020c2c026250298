"""Ctrl-C pressed again while a stopped job cleans up: ignored until the cleanup is done."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deaf_to_ctrl_c(stopping: bool = True) -> Iterator[None]:
    """Inside, SIGINT is ignored (``stopping``: else nothing changes); its handler is put back
    after. People press Ctrl-C again while a stopped job ends: the second one broke off the
    cleanup under way (Ray's shutdown, which then printed a KeyboardInterrupt traceback at exit;
    the local pool's stop, which then never removed its files' in-flight markers and .part files,
    and the rerun took them for files a process had died on). Only the main thread may set
    handlers, and one Python did not install (getsignal: None) could not be put back: there it
    changes nothing. SIGTERM is left as it is: a second one ends the job at once, as the CLI says."""
    deaf = stopping and threading.current_thread() is threading.main_thread() \
        and signal.getsignal(signal.SIGINT) is not None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if deaf else None
    try:
        yield
    finally:
        if deaf:
            signal.signal(signal.SIGINT, previous)
