"""Run one call in a child process of its own, so that a crash inside a C library (a codec on a
malformed file) ends the child, not the caller: the folder tool for a file a process died on
(:mod:`audioae.batch.isolated`), the server for an upload that crashed its codec process.

Imports nothing heavy: the child loads only what ``fn``'s module needs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from typing import Any


class ProcessDied(RuntimeError):
    """The child died before answering (killed by a signal, or exited)."""

    def __init__(self, exitcode: int | None):
        self.exitcode = exitcode
        super().__init__(f"its process {how_it_ended(exitcode)}")


class CallTimedOut(RuntimeError):
    """The child did not answer in time, and was killed."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"no answer within {seconds:g} s, so its process was stopped")


def how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
        return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


ORPHAN_CHECK_SECONDS = 0.2


def _exit_when_orphaned(parent: int) -> None:
    """A worker's watch: end it at once when ``parent`` (its creator's pid) is gone. A parent
    killed outright (SIGKILL, or a signal it does not handle) closes no pipe and kills no child,
    and a folder job's workers went on writing into its output folder, unlocked, under a rerun."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(1)


def _serve_calls(conn, parent: int) -> None:
    """A worker's loop: ``(fn, args, kwargs)`` in, ``("ok", result)`` or ``("raised", exception)``
    out, one call at a time, until the parent closes its end (or dies: :func:`_exit_when_orphaned`)."""
    # Ctrl-C reaches the whole process group; the parent decides when a worker stops (it closes
    # the pipe, or kills a busy one), so a worker neither dies mid-call nor prints a traceback.
    # (SIGTERM stays: multiprocessing ends daemon children with it at exit, and waits for them.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="orphan-watch").start()
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except EOFError:
            return
        try:
            answer = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 (an answer, sent back and raised there)
            answer = ("raised", _portable(exc))
        conn.send(answer)


def _portable(exc: Exception) -> Exception:
    """``exc``, or a RuntimeError with its text when it would not survive the pipe (an exception
    class whose constructor takes other arguments than its message does not unpickle)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class Worker:
    """A spawned child process that runs calls one at a time. When it dies, the call it was on
    (or the next one) raises :class:`ProcessDied`; nothing else is affected. A pipe per worker,
    not ProcessPoolExecutor's shared queues: a write to a dead worker fails at once, and the
    caller knows whose process died (with the pool, one test run hung a call for its whole
    deadline while its workers were being killed)."""

    def __init__(self):
        ctx = mp.get_context("spawn")  # never fork a process whose thread pools (torch, gRPC) run
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_calls, args=(child, os.getpid()), daemon=True)
        self.proc.start()
        child.close()  # the child holds the only other end: its death ends recv() with EOFError
        self._busy = False  # a call is under way (close() then stops the process at once)
        self._timed_out = False  # its last call ran out of time and the process was killed
        self._lock = threading.Lock()  # between a call's end and its timeout's timer

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, fn: Callable, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` there: its result, or the exception it raised, or
        :class:`ProcessDied`; after ``timeout`` seconds without an answer the process is killed
        and :class:`CallTimedOut` raised (a decoder caught in a loop). The clock starts before the
        arguments are sent: a worker stopped from outside (SIGSTOP) never reads a large upload,
        and the send would otherwise wait for it with no limit."""
        self._busy = True
        timer = threading.Timer(timeout, self._stop_late) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            self.conn.send((fn, args, kwargs))
            kind, value = self.conn.recv()
        except (EOFError, OSError):  # died before or while answering (a broken pipe is an OSError)
            self._end_call(timer)
            self.proc.join(timeout=5)
            if self._timed_out:
                raise CallTimedOut(timeout) from None
            raise ProcessDied(self.proc.exitcode) from None
        except BaseException:  # interrupted (Ctrl-C): still busy, so close() stops it mid-call
            if timer is not None:
                timer.cancel()
            raise
        self._end_call(timer)
        if kind == "raised":
            raise value
        return value  # answered just as its time ran out (killed after answering): the next call raises ProcessDied

    def _end_call(self, timer: threading.Timer | None) -> None:
        if timer is not None:
            timer.cancel()
        with self._lock:
            self._busy = False

    def _stop_late(self) -> None:
        """The timeout's timer: kill the process when its call is still under way."""
        with self._lock:
            if self._busy:
                self._timed_out = True
                self.proc.kill()

    def close(self) -> None:
        """Let an idle worker exit (its loop ends when the pipe closes); stop a busy one (its
        caller was interrupted) at once, and any that does not exit."""
        self.conn.close()
        if self._busy:
            self.proc.kill()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def answering_worker() -> Worker:
    """A :class:`Worker` that has answered once, so that one dying later died on its call, not on
    its start; :class:`ProcessDied` when none can start here (a script read from stdin, which a
    spawned child cannot import again, is one such place)."""
    worker = Worker()
    try:
        worker.call(len, b"")
    except ProcessDied:
        worker.close()
        raise
    return worker


def call_in_child(fn: Callable, *args: Any, on_start: Callable[[int], None] | None = None,
                  timeout: float | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a child process of its own: its result, or the exception it
    raised, or :class:`ProcessDied` when the child died before answering (:class:`CallTimedOut`
    after ``timeout`` seconds). ``fn`` must be importable (module level); ``on_start(pid)`` runs
    once the child is up. Costs a process start (about 0.3 s plus what ``fn``'s module imports)."""
    worker = Worker()
    try:
        if on_start is not None:
            on_start(worker.pid)
        return worker.call(fn, *args, timeout=timeout, **kwargs)
    finally:
        worker.close()
