"""A real `python -m server` process: SIGTERM gives NOT_SERVING, new calls UNAVAILABLE, the call
in flight finishes with the right answer, then the process exits 0; and what once killed the
process (a long Ogg Vorbis upload, answered in Ogg Vorbis) is answered."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from audioae.checkpoint import load_checkpoint, save_checkpoint
from audioae.client import Client
from audioae.enhance import denoise
from audioae.models import build_model


def _lines(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)


def _wait_for(lines: queue.Queue, pattern: str, log: list[str], timeout: float = 60.0) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        log.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got:\n{''.join(log)}")


def _start_server(tmp_path, *flags: str, own_group: bool = False) -> tuple[subprocess.Popen, queue.Queue, list[str], Path]:
    """``python -m server`` with a tiny causal model: the process, its stderr lines, the log of
    those read, and the checkpoint."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--models", str(ckpt), "--threads", "1", *flags],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=own_group,  # a process group of its own, as a terminal gives it
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    return proc, lines, [], ckpt


def _ready_port(lines: queue.Queue, log: list[str]) -> int:
    port = int(_wait_for(lines, r"listening on 127\.0\.0\.1:(\d+)", log).group(1))
    _wait_for(lines, r"ready: serving tiny", log)
    return port


def test_sigterm_drains_in_flight_calls(tmp_path):
    proc, lines, log, ckpt = _start_server(tmp_path)
    try:
        port = _ready_port(lines, log)
        c = Client(f"127.0.0.1:{port}", timeout=60)
        assert c.health() == "SERVING"

        x = (0.1 * np.random.default_rng(0).standard_normal((1, 24000))).astype(np.float32)
        first_out, go_on, outs = threading.Event(), threading.Event(), []

        def chunks():
            yield x[:, :12000]
            go_on.wait(60)
            yield x[:, 12000:]

        def read():
            for y in c.stream(chunks(), 16000, 1):
                outs.append(y)
                first_out.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert first_out.wait(30), "the stream never answered"

        proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 30
        while c.health() != "NOT_SERVING" and time.monotonic() < end:
            time.sleep(0.05)
        assert c.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as info:
            c.denoise(x, 16000)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in info.value.details()

        go_on.set()
        reader.join(60)
        y = np.concatenate(outs, axis=-1)
        np.testing.assert_allclose(y, denoise(load_checkpoint(ckpt), x, 16000), atol=2e-5)
        assert proc.wait(timeout=60) == 0
        c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _wait_for(lines, r"stopped$", log, timeout=5)


def test_a_long_ogg_vorbis_upload_is_answered_and_the_server_lives(tmp_path):
    """The answer to an Ogg upload is Ogg; encoding 70 s of 48 kHz in one write overflowed
    libvorbis' stack and the whole server died with SIGSEGV."""
    import soundfile as sf

    src = tmp_path / "long.ogg"
    x = (0.1 * np.random.default_rng(0).standard_normal((70 * 48000, 2))).astype(np.float32)
    with sf.SoundFile(src, "w", 48000, 2, format="OGG", subtype="VORBIS") as f:
        for i in range(0, len(x), 48000):  # in slices: one write would crash this test too
            f.write(x[i : i + 48000])
    proc, lines, log, _ = _start_server(tmp_path)
    try:
        port = _ready_port(lines, log)
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            r = c.denoise_file(src, tmp_path / "clean.ogg")
            assert r["model"] == "tiny" and sf.info(tmp_path / "clean.ogg").frames == len(x)
            assert proc.poll() is None and c.health() == "SERVING"
    finally:
        proc.kill()
        proc.wait()


def _codec_processes(pid: int) -> list[int]:
    """The server's codec processes: its multiprocessing 'spawn' children (the pool's workers and
    a call's process of its own), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    found.append(int(kid))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the codec processes in /proc")
def test_a_dead_codec_process_costs_no_call_and_an_upload_that_kills_two_is_refused(tmp_path):
    """Uploads are decoded and answers encoded in codec processes. Real SIGSEGVs (what a codec
    crashing on a malformed file raises) sent to them: a call that finds its pool dead is retried
    alone and answered; a call whose own process dies too gets INVALID_ARGUMENT; the server lives."""
    from audioae.audio import encode_audio

    proc, lines, log, ckpt = _start_server(tmp_path)
    try:
        port = _ready_port(lines, log)
        workers = _codec_processes(proc.pid)
        assert len(workers) == 2, f"the server should start its 2 codec processes with its models: {workers}"
        x = (0.1 * np.random.default_rng(0).standard_normal((1, 32000))).astype(np.float32)
        flac = encode_audio(x, 16000, format="FLAC", subtype="PCM_16")
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            expected = c.denoise_bytes(flac).audio.encoded

            for w in workers:  # 1. the pool dies between calls
                os.kill(w, signal.SIGSEGV)
            assert c.denoise_bytes(flac).audio.encoded == expected
            _wait_for(lines, r"reading the audio file's header: its process was killed by SIGSEGV; trying again", log)

            stop = threading.Event()  # 2. every codec process dies as soon as it appears

            def kill_codecs():
                while not stop.is_set():
                    for pid in _codec_processes(proc.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGSEGV)
                    time.sleep(0.002)

            killer = threading.Thread(target=kill_codecs)
            killer.start()
            try:
                with pytest.raises(grpc.RpcError) as info:
                    c.denoise_bytes(flac)
            finally:
                stop.set()
                killer.join()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "crashed the codec (its process was killed by SIGSEGV) in a process of its own" in \
                info.value.details()

            assert c.denoise_bytes(flac).audio.encoded == expected  # 3. the next call: a fresh pool
            assert proc.poll() is None and c.health() == "SERVING"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the codec processes in /proc")
def test_a_codec_process_that_stops_answering_is_stopped_and_the_call_refused(tmp_path):
    """A decoder caught in a loop on a malformed file would hold its codec process for ever; here
    the processes are frozen for real (SIGSTOP): the call is refused after --codec-timeout, the
    frozen process replaced, and the server answers the next call."""
    from audioae.audio import encode_audio

    proc, lines, log, _ = _start_server(tmp_path, "--codec-timeout", "3")
    try:
        port = _ready_port(lines, log)
        frozen = _codec_processes(proc.pid)
        x = (0.1 * np.random.default_rng(0).standard_normal((1, 16000))).astype(np.float32)
        flac = encode_audio(x, 16000, format="FLAC", subtype="PCM_16")
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            expected = c.denoise_bytes(flac).audio.encoded
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                c.denoise_bytes(flac)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "no answer within 3 s, so its process was stopped" in info.value.details()
            assert 3 <= time.monotonic() - t0 < 30
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # the one still waiting its turn answers again
            assert c.denoise_bytes(flac).audio.encoded == expected
            assert len(set(_codec_processes(proc.pid)) - set(frozen)) == 1  # the stopped one was replaced
            assert proc.poll() is None and c.health() == "SERVING"
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_drains_quietly(tmp_path):
    """Ctrl-C reaches the server and its codec processes (one process group): the server drains
    and exits 0, and no codec process prints a KeyboardInterrupt traceback of its own."""
    proc, lines, log, _ = _start_server(tmp_path, own_group=True)
    try:
        port = _ready_port(lines, log)
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            assert c.health() == "SERVING"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        assert proc.wait(timeout=60) == 0
        time.sleep(0.5)  # the reader thread drains the rest of stderr
        while not lines.empty():
            log.append(lines.get())
        text = "".join(log)
        assert "stopped" in text and "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
