"""audioae.isolation: calls in child processes, their answers, their errors and their deaths."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from audioae.audio import AudioError
from audioae.isolation import CallTimedOut, ProcessDied, Worker, call_in_child


class _Picky(Exception):
    def __init__(self, code: int, where: str):  # unpickling calls this with the message alone: fails
        super().__init__(f"{where}: code {code}")


def raise_audio_error(text: str) -> None:
    raise AudioError(text)


def raise_picky() -> None:
    raise _Picky(7, "decoder")


def pid_and_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_worker_answers_calls_one_after_another_and_passes_their_errors_back():
    w = Worker()
    try:
        assert w.call(sum, [1, 2, 3]) == 6
        with pytest.raises(AudioError, match="^bad header$"):
            w.call(raise_audio_error, "bad header")
        with pytest.raises(RuntimeError, match=r"^_Picky: decoder: code 7$"):  # not a TypeError from unpickling
            w.call(raise_picky)
        assert w.call(pid_and_sleep, 0) == w.pid != os.getpid()  # the same process all along
    finally:
        w.close()
    assert not w.proc.is_alive()


@pytest.mark.skipif(not hasattr(signal, "SIGSEGV") or os.name != "posix", reason="POSIX signals")
def test_a_worker_killed_mid_call_raises_process_died_for_that_call():
    w = Worker()
    try:
        w.call(len, b"")  # up and answering
        threading.Timer(0.5, os.kill, (w.pid, signal.SIGSEGV)).start()
        with pytest.raises(ProcessDied, match="killed by SIGSEGV") as info:
            w.call(pid_and_sleep, 30)
        assert info.value.exitcode == -signal.SIGSEGV
        with pytest.raises(ProcessDied):  # and every call after it, at once
            w.call(len, b"")
    finally:
        w.close()


def test_call_in_child_runs_once_in_a_fresh_process_and_reports_it():
    started = []
    assert call_in_child(pid_and_sleep, 0, on_start=started.append) == started[0] != os.getpid()


def test_a_call_without_an_answer_in_time_has_its_process_stopped():
    w = Worker()
    try:
        with pytest.raises(CallTimedOut, match=r"no answer within 0\.5 s"):
            w.call(pid_and_sleep, 30, timeout=0.5)
        assert not w.proc.is_alive()
    finally:
        w.close()


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_is_the_parents_to_handle():
    """Ctrl-C reaches the whole process group: a worker ignores it (no traceback of its own, no
    death mid-call) and its parent stops it with close(), at once when a call was under way."""
    w = Worker()
    try:
        w.call(len, b"")
        os.kill(w.pid, signal.SIGINT)
        assert w.call(sum, [2, 3]) == 5
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            w.call(pid_and_sleep, 30)
    finally:
        w.close()
    assert not w.proc.is_alive() and time.monotonic() - t0 < 25  # interrupted: not the 30 s sleep's end


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP") or os.name != "posix", reason="POSIX signals")
def test_the_timeout_also_covers_sending_to_a_stopped_worker():
    """A worker stopped from outside (SIGSTOP) while idle reads nothing: an upload larger than
    the pipe's buffer would block the send itself. The timeout counts from before the send."""
    w = Worker()
    outcome: list[BaseException] = []

    def send_large():
        try:
            w.call(len, b"x" * (8 << 20), timeout=1.0)
        except BaseException as exc:  # noqa: BLE001 (kept for the assertion)
            outcome.append(exc)

    try:
        w.call(len, b"")
        os.kill(w.pid, signal.SIGSTOP)
        caller = threading.Thread(target=send_large, daemon=True)
        caller.start()
        caller.join(20)
        assert not caller.is_alive(), "the send blocked past its timeout"
        assert len(outcome) == 1 and isinstance(outcome[0], CallTimedOut)
        assert not w.proc.is_alive()
    finally:
        if w.proc.is_alive():
            os.kill(w.pid, signal.SIGCONT)
        w.close()
