"""The gRPC service against real servers on 127.0.0.1 (no mocks): every RPC, every bad input
with its status code, batching equal to the library, streaming equal to offline, limits,
deadlines, auth, TLS, health, reflection, metrics and the ``audioae client`` command."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
import torch
from audio_tree import cut_short, live_wav
from server_checks import sample_value, wait_until

from audioae.audio import encode_audio
from audioae.checkpoint import load_checkpoint, save_checkpoint, sha256_file
from audioae.cli import main as cli_main
from audioae.client import Client, array_from_tensor, pcm_message, tensor_message
from audioae.data.synthetic import speech_like
from audioae.enhance import denoise, denoise_batch, is_out_of_memory
from audioae.models import build_model
from audioae.server import AudioServer, ServerConfig
from audioae.server.batcher import Batcher, Job
from audioae.server.errors import MAX_STATUS_BYTES, Abort, status_of
from audioae.server.metrics import Metrics
from audioae.server.servicer import MAX_COMPONENT_BYTES, AudioAEServicer, _queued, _took
from audioae.v1 import audioae_pb2 as pb

CODE = grpc.StatusCode
TOL = 2e-5  # float32 rounding of batched vs single matrix products


# ---- fixtures -------------------------------------------------------------------------------------
def _noisy(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clean = np.stack([speech_like(rng, seconds, sr) for _ in range(channels)])  # [C, T]
    return (clean + 0.05 * rng.standard_normal(clean.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), d / "tiny.safetensors")
    save_checkpoint(
        build_model("conv1d", {"channels": [32], "code_dim": 8, "unpool": "maxunpool"}),
        d / "conv.safetensors",
    )
    save_checkpoint(build_model("image", {}), d / "img.safetensors")
    save_checkpoint(
        build_model("sparse_dict", {"code_dim": 24}), d / "dict.safetensors"
    )
    return d


def _config(model_dir: Path, **kw) -> ServerConfig:
    models = tuple(str(model_dir / f"{n}.safetensors") for n in ("tiny", "conv", "img", "dict"))
    base = dict(
        port=0,
        models=models,
        max_request_mb=1,
        max_audio_seconds=30,
        max_stream_seconds=30,
        max_queue=4,
        max_delay_ms=20,
        metrics_port=0,
        torch_threads=1,
        drain_seconds=10,
    )
    return ServerConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def server(model_dir):
    srv = AudioServer(_config(model_dir))
    srv.start()
    srv.load()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tiny(model_dir):
    return load_checkpoint(model_dir / "tiny.safetensors")


def _code(fn, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    return info.value.code(), info.value.details()


@contextlib.contextmanager
def _serving(model_dir: Path, model: str | Path, **kw):
    """A server of one model (a name in ``model_dir``, or a path), loaded, and a client of it."""
    path = model if isinstance(model, Path) else model_dir / f"{model}.safetensors"
    srv = AudioServer(_config(model_dir, models=(str(path),), metrics_port=None, **kw))
    srv.start()
    srv.load()
    try:
        with Client(f"127.0.0.1:{srv.port}", timeout=60) as c:
            yield srv, c
    finally:
        srv.stop()


def _wait_until(cond, timeout: float = 10.0) -> bool:
    return wait_until(cond, timeout)


# ---- Denoise --------------------------------------------------------------------------------------
def test_denoise_pcm_equals_library(client, tiny):
    x = _noisy(1.3, 22050, channels=2)
    y = client.denoise(x, 22050, model="tiny")
    assert y.shape == x.shape
    np.testing.assert_allclose(y, denoise(tiny, x, 22050), atol=TOL)


def test_denoise_default_model_and_mono_1d(client, tiny):
    x = _noisy(0.7, 16000)[0]
    y = client.denoise(x, 16000)  # no model: the server's default denoiser (tiny, listed first)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, denoise(tiny, x, 16000), atol=TOL)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("WAV", "FLOAT")])
def test_denoise_encoded_keeps_container_rate_length(client, tiny, fmt, subtype):
    x = np.clip(_noisy(1.0, 44100), -1, 1)[:, :39_691]  # odd length
    data = encode_audio(x, 44100, format=fmt, subtype=subtype)
    resp = client.denoise_bytes(data, model="tiny")
    info = sf.info(io.BytesIO(resp.audio.encoded))
    assert (info.format, info.subtype, info.samplerate, info.frames, info.channels) == (
        fmt,
        subtype,
        44100,
        39_691,
        1,
    )
    x_read, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    y, _ = sf.read(io.BytesIO(resp.audio.encoded), dtype="float32", always_2d=True)
    step = {"PCM_16": 1 / 32768, "PCM_24": 1 / 2**23, "FLOAT": 0}[subtype]
    np.testing.assert_allclose(y.T, denoise(tiny, x_read.T, 44100), atol=TOL + step)


def test_denoise_int16_pcm_comes_back_int16(client, tiny):
    x = _noisy(0.5, 16000)
    req = pb.DenoiseRequest(model="tiny", audio=pb.Audio(pcm=pcm_message(x, 16000, "int16")))
    resp = client.stub.Denoise(req, timeout=30)
    assert resp.audio.pcm.format == pb.INT16 and resp.audio.pcm.sample_rate == 16000
    assert len(resp.audio.pcm.data) == 2 * x.shape[-1]
    assert resp.batch_size >= 1 and resp.model == "tiny"


def test_strength_zero_returns_the_input(client):
    x = _noisy(0.5, 16000)
    np.testing.assert_array_equal(client.denoise(x, 16000, model="tiny", strength=0.0), x)


def test_non_causal_model_denoises_alone(client, model_dir):
    conv = load_checkpoint(model_dir / "conv.safetensors")
    x = _noisy(0.6, 16000)
    np.testing.assert_allclose(client.denoise(x, 16000, model="conv"), denoise(conv, x, 16000), atol=TOL)


# ---- dynamic batching -----------------------------------------------------------------------------
def test_denoise_batch_equals_denoise_alone(tiny):
    items = [
        (_noisy(1.1, 16000, seed=1), 16000, 1.0),
        (_noisy(0.4, 22050, 2, seed=2), 22050, 0.5),
        (_noisy(0.77, 8000, seed=3), 8000, 1.0),
    ]
    for (wav, sr, s), y in zip(items, denoise_batch(tiny, items), strict=True):
        assert y.shape == wav.shape
        np.testing.assert_allclose(y, denoise(tiny, wav, sr, strength=s), atol=TOL)


def test_queued_requests_run_as_one_batch_with_library_results(server, client, tiny):
    clips = [
        (_noisy(0.5 + 0.3 * i, sr, ch, seed=10 + i), sr)
        for i, (sr, ch) in enumerate([(16000, 1), (16000, 2), (44100, 1), (8000, 1)])
    ]
    with ThreadPoolExecutor(4) as pool, server.batcher.hold():
        futs = [
            pool.submit(
                client.stub.Denoise,
                pb.DenoiseRequest(model="tiny", audio=pb.Audio(pcm=pcm_message(x, sr))),
                timeout=30,
            )
            for x, sr in clips
        ]
        assert _wait_until(lambda: server.batcher.depth == 4)
    for f, (x, sr) in zip(futs, clips, strict=True):
        resp = f.result()
        assert resp.batch_size == 4
        y = np.frombuffer(resp.audio.pcm.data, "<f4").reshape(-1, x.shape[0]).T
        np.testing.assert_allclose(y, denoise(tiny, x, sr), atol=TOL)


def test_full_queue_answers_resource_exhausted_at_once(server, client):
    x = _noisy(0.3, 16000)
    with ThreadPoolExecutor(4) as pool, server.batcher.hold():
        futs = [pool.submit(client.denoise, x, 16000, model="tiny") for _ in range(4)]
        assert _wait_until(lambda: server.batcher.depth == 4)
        code, msg = _code(client.denoise, x, 16000, model="tiny")
        assert code == CODE.RESOURCE_EXHAUSTED and "busy" in msg
    assert all(f.result().shape == x.shape for f in futs)


def test_deadline_exceeded_drops_the_queued_job(server, client):
    dropped = server.metrics.registry.get_sample_value("audioae_dropped_jobs_total") or 0.0
    with server.batcher.hold():
        code, _ = _code(client.denoise, _noisy(0.3, 16000), 16000, model="tiny", timeout=1.0)
        assert code == CODE.DEADLINE_EXCEEDED
        # The server's own deadline ends a moment after the client's: wait for it to cancel the job
        # before the worker may run again.
        assert _wait_until(lambda: all(j.future.cancelled() for j in list(server.batcher._queue)))
    # >=: a job an earlier test left behind (e.g. the full-queue test's) may be dropped meanwhile.
    assert _wait_until(
        lambda: (server.metrics.registry.get_sample_value("audioae_dropped_jobs_total") or 0.0) >= dropped + 1
    )



def test_deadline_messages_count_and_time_in_words_that_say_something():
    """Were "(1 requests queued)" and, for a short deadline, "(0.0 s after it came)". A client rarely
    reads them (its own deadline fires first and it says "Deadline Exceeded"), so they are checked here."""
    assert [_queued(n) for n in (0, 1, 2)] == ["0 requests queued", "1 request queued", "2 requests queued"]
    assert [_took(s) for s in (0.0, 0.0404, 0.9994, 0.9996, 2.46)] == ["0 ms", "40 ms", "999 ms", "1.0 s", "2.5 s"]
    # The count is of the others: the request's own job stays queued, abandoned, until the worker
    # reaches it, and a lone request read "(1 request queued)".
    batcher = Batcher(Metrics())  # not started: what is submitted stays queued
    mine, other = Job("encode", 0.0), Job("encode", 0.0)
    batcher.submit(mine)
    assert batcher.queued_besides(mine) == 0
    batcher.submit(other)
    assert batcher.queued_besides(mine) == 1 and batcher.queued_besides(Job("encode", 0.0)) == 2
    job = Job("decompose", 1.0)  # enqueued now: well under a second before the message
    said = AudioAEServicer._ended_while_working(CODE.DEADLINE_EXCEEDED, job, "stopped at component 2 of 5").message
    assert re.fullmatch(r"the deadline passed while the device worked on the request \(\d+ ms after it came; "
                        r"stopped at component 2 of 5\): allow more time for this much audio", said), said

def _long_denoise():
    x = _noisy(150, 1000, channels=8)  # 1,200 channel-seconds: the long path, 2.4 MB of int16
    return "tiny", "Denoise", pb.DenoiseRequest(audio=pb.Audio(pcm=pcm_message(x, 1000, "int16"))), "stopped after "


def _long_decompose():
    x = _noisy(30, 16000)  # 30 s, 100 fit steps: seconds of work
    req = pb.DecomposeRequest(model="dict", audio=pb.Audio(pcm=pcm_message(x, 16000, "int16")), fit_steps=100,
                              group="cluster")
    return "dict", "Decompose", req, "decomposition stopped "


class _AskedMidWork(threading.Event):
    """A job's ``abandoned`` event whose second ``is_set()`` (the work's stop check after its first
    piece, stage or fit step) waits, at most 60 s, for the event itself: the cancel then lands
    while the work is under way on a machine of any speed. (The test assumed the work
    outlasted the time a cancel takes to land.)"""

    def __init__(self):
        super().__init__()
        self.asked = 0

    def is_set(self) -> bool:
        self.asked += 1
        if self.asked == 2:
            self.wait(60)
        return super().is_set()


@pytest.mark.parametrize("work", [_long_denoise, _long_decompose], ids=["denoise", "decompose"])
def test_long_work_stops_when_its_call_is_cancelled(model_dir, work):
    """Work on the device thread, cancelled (or timed out) once running, ran to its end anyway: a
    600 s clip held the device 5 s more after a 1 s deadline, a 60 s decomposition 3 s. A long
    Denoise (over 120 channel-seconds, run alone piece by piece) now stops at its next piece, a
    Decompose between its stages and at each fit step."""
    name, method, req, said = work()
    with _serving(model_dir, name, max_audio_seconds=600, max_request_mb=8) as (srv, c):
        with srv.batcher.hold():
            call = getattr(c.stub, method).future(req, timeout=120)
            assert _wait_until(lambda: srv.batcher.depth == 1, timeout=60)
            job = srv.batcher._queue[0]
            job.abandoned = _AskedMidWork()  # read by the work when it starts, after the hold
        assert _wait_until(lambda: job.abandoned.asked >= 2, timeout=60)  # under way, held at its stop check
        call.cancel()
        exc = job.future.exception(timeout=120)  # stopped, not run to its end
        assert exc is not None and str(exc).startswith(said), exc
        assert job.abandoned.asked == 2  # at the check the cancel landed on
        assert srv.metrics.registry.get_sample_value("audioae_dropped_jobs_total") == 1

        def count(code: str) -> float | None:
            return srv.metrics.registry.get_sample_value("audioae_requests_total", {"method": method, "code": code})

        assert _wait_until(lambda: count("CANCELLED") == 1, timeout=30)  # was INTERNAL, logged with a traceback
        assert count("INTERNAL") is None
        y = _noisy(1.0, 16000)  # the device is free again
        if name == "tiny":
            assert c.denoise(y, 16000).shape == y.shape
        else:
            assert c.decompose(y, 16000, model="dict").activations.shape[0] == 24


def test_calls_past_the_admission_limit_get_the_servers_busy_message_and_health_answers(model_dir):
    """Uploads waiting for a codec process, or queued for the device, each hold a gRPC thread. With
    no limit of the server's own on them, a burst of encoded uploads took every thread, and gRPC
    refused calls and health probes alike with its bare "Concurrent RPC limit exceeded!"."""
    srv = AudioServer(_config(model_dir, models=(str(model_dir / "tiny.safetensors"),), metrics_port=None,
                              max_queue=2, max_streams=1, codec_workers=1))  # 2 x max_queue = 4 calls
    srv.start()
    srv.load()
    c = Client(f"127.0.0.1:{srv.port}", timeout=60)
    x = _noisy(0.3, 16000)
    wav = encode_audio(np.clip(x, -1, 1), 16000, subtype="PCM_16")
    codec = srv.codecs._idle.get(timeout=10)  # the one codec process, taken: uploads wait for it
    try:
        with ThreadPoolExecutor(4) as pool:
            try:
                with srv.batcher.hold():
                    # Admitted calls count whatever they wait for: two for the device, two for a codec.
                    held = [pool.submit(c.denoise, x, 16000, model="tiny") for _ in range(2)]
                    assert _wait_until(lambda: srv.batcher.depth == 2)
                    held += [pool.submit(c.denoise_bytes, wav, model="tiny") for _ in range(2)]
                    assert _wait_until(lambda: srv.gate.calls == 4)
                    busy = "the server is busy: 4 calls in progress (max 4); retry with backoff"
                    assert _code(c.list_models) == (CODE.RESOURCE_EXHAUSTED, busy)
                    # A burst past the whole thread pool (4 + 1 + 16 threads): every call is refused
                    # by the server itself, at once, and health answers all the while.
                    with ThreadPoolExecutor(32) as burst:
                        refused = [burst.submit(_code, c.denoise_bytes, wav, model="tiny") for _ in range(64)]
                        while not all(f.done() for f in refused):
                            assert c.health() == "SERVING"
                    assert [f.result() for f in refused] == [(CODE.RESOURCE_EXHAUSTED, busy)] * 64
                    assert c.health() == "SERVING"
            finally:
                srv.codecs._idle.put(codec)
            assert all(f.result(timeout=60).shape == x.shape for f in held[:2])
            assert all(len(f.result(timeout=60).audio.encoded) == len(wav) for f in held[2:])
        assert srv.gate.calls == 0
    finally:
        c.close()
        srv.stop()


def _requests(srv, method: str, code: str) -> float | None:
    return srv.metrics.registry.get_sample_value("audioae_requests_total", {"method": method, "code": code})


PEER = r"from ipv(4:127\.0\.0\.1|6:\[::1\]):\d+"


def _call_lines(caplog, rpc: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "audioae.server.servicer" and r.levelno == logging.INFO and r.getMessage().startswith(rpc)]


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_call_that_ends_while_it_waits_for_a_codec_process_stops_waiting(model_dir, how, caplog):
    """Abandoned uploads (large FLACs, timeout=0.3) kept the codec processes busy after
    their callers left, and the next small call waited for them. A call that ends while its upload
    waits for a codec process now stops waiting and is not decoded; one that ends while its answer
    waits is not encoded. Each is counted and logged as it ended, with the caller's address."""
    caplog.set_level(logging.INFO, logger="audioae.server")
    label = "CANCELLED" if how == "cancel" else "DEADLINE_EXCEEDED"
    with _serving(model_dir, "tiny", codec_workers=1) as (srv, c):
        x = _noisy(0.3, 16000)
        wav = encode_audio(np.clip(x, -1, 1), 16000, subtype="PCM_16")
        req = pb.DenoiseRequest(audio=pb.Audio(encoded=wav))

        def ended(call, n: int) -> None:  # the client's view, then the server's, the codec still held
            if how == "cancel":
                call.cancel()
            assert _wait_until(lambda: call.done(), timeout=60)
            assert _wait_until(lambda: _requests(srv, "Denoise", label) == n and srv.codecs.waiting == 0, 60)

        codec = srv.codecs._idle.get(timeout=10)  # the one codec process, taken: the upload waits for it
        try:
            # A deadline far enough away that the upload reaches its wait for the codec process first
            # on a loaded machine, too (1 s could pass before it did, and the wait was never seen).
            call = c.stub.Denoise.future(req, timeout=60 if how == "cancel" else 5.0)
            assert _wait_until(lambda: srv.codecs.waiting == 1, timeout=60)
            ended(call, 1)  # while the codec process is still taken: it waited no more
        finally:
            srv.codecs._idle.put(codec)
        assert srv.batcher.depth == 0 and _requests(srv, "Denoise", "OK") is None
        # Decoded and queued, then its answer waits for the codec process: not encoded once it ends.
        with srv.batcher.hold():
            call = c.stub.Denoise.future(req, timeout=60 if how == "cancel" else 5.0)  # decoded and queued first
            assert _wait_until(lambda: srv.batcher.depth == 1, timeout=60)
            codec = srv.codecs._idle.get(timeout=10)  # back from the decode
        try:
            assert _wait_until(lambda: srv.codecs.waiting == 1 or call.done(), timeout=60)
            ended(call, 2)
            assert srv.codecs._idle.empty()  # still taken: the call did not wait for it
        finally:
            srv.codecs._idle.put(codec)
        assert _requests(srv, "Denoise", "OK") is None
        assert len(c.denoise_bytes(wav).audio.encoded) == len(wav)  # the server goes on
    lines = _call_lines(caplog, "Denoise")
    assert len(lines) == 3, lines
    for line in lines[:2]:  # the caller's address, read as the call came (was "from ''")
        assert re.fullmatch(rf"Denoise {label} \d+ ms model tiny( 0\.30 s of audio)? {PEER}", line), line


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_unary_call_that_ends_while_its_work_runs_is_counted_as_it_ended(model_dir, monkeypatch, how, caplog):
    """A Denoise (or Encode, Decode) cancelled while its work ran to its end returned its answer to
    nobody and was logged and counted OK ({code="OK"} in audioae_requests_total), and logged
    "from ''": the peer was read after the call had ended."""
    caplog.set_level(logging.INFO, logger="audioae.server")
    with _serving(model_dir, "tiny") as (srv, c):
        model = srv.store.get("tiny").model
        decode, running = model.decode, threading.Event()

        def held_decode(h):  # the whole call (not the 8-frame probe of its answer's size) waits for its end
            if h.shape[-1] > 8:
                job = srv.batcher._running[0]
                running.set()
                assert job.abandoned.wait(60)
            return decode(h)

        monkeypatch.setattr(model, "decode", held_decode)
        req = pb.DecodeRequest(model="tiny", code=tensor_message(np.zeros((1, 16, 20), np.float32)))
        call = c.stub.Decode.future(req, timeout=60 if how == "cancel" else 5.0)  # its work starts well before
        assert running.wait(60)
        if how == "cancel":
            call.cancel()
        label = "CANCELLED" if how == "cancel" else "DEADLINE_EXCEEDED"
        assert _wait_until(lambda: _requests(srv, "Decode", label) == 1, timeout=60), srv.metrics.text()
        assert _requests(srv, "Decode", "OK") is None
        monkeypatch.setattr(model, "decode", decode)
        assert c.decode(np.zeros((1, 16, 20), np.float32), model="tiny").shape[-1] > 0
    lines = _call_lines(caplog, "Decode")
    assert re.fullmatch(rf"Decode {label} \d+ ms model tiny {PEER}", lines[0]), lines


def test_a_call_whose_deadline_passes_while_its_upload_decodes_is_counted_deadline_exceeded(model_dir):
    """Its job, submitted for a call already ended, was abandoned at once, and the call counted
    CANCELLED, the caller having seen DEADLINE_EXCEEDED. The codec process is stopped (SIGSTOP)
    while it holds the upload, and let go once the deadline has passed."""
    with _serving(model_dir, "tiny", codec_workers=1) as (srv, c):
        wav = encode_audio(np.clip(_noisy(0.3, 16000), -1, 1), 16000, subtype="PCM_16")
        (worker,) = srv.codecs._all
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            # 5 s: the upload reaches the stopped codec process before its deadline, on a loaded machine too
            call = c.stub.Denoise.future(pb.DenoiseRequest(audio=pb.Audio(encoded=wav)), timeout=5.0)
            assert _wait_until(lambda: srv.codecs._idle.empty() and srv.codecs.waiting == 0, timeout=60)
            assert call.exception(timeout=60).code() == CODE.DEADLINE_EXCEEDED
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert _wait_until(lambda: _requests(srv, "Denoise", "DEADLINE_EXCEEDED") == 1, timeout=60)
        assert _requests(srv, "Denoise", "CANCELLED") is None and _requests(srv, "Denoise", "OK") is None
        assert srv.metrics.registry.get_sample_value("audioae_compute_seconds_count", {"kind": "denoise"}) in (None, 0)
        assert len(c.denoise_bytes(wav).audio.encoded) == len(wav)


# ---- bad input: precise status, clear message, server stays up ----------------------------------
def _pcm(data: bytes, fmt=pb.FLOAT32, sr=16000, ch=1) -> pb.Audio:
    return pb.Audio(pcm=pb.Pcm(data=data, format=fmt, sample_rate=sr, channels=ch))


_ONE_SECOND = np.zeros(16000, "<f4").tobytes()
BAD_DENOISE = {
    "corrupt container": (
        pb.Audio(encoded=b"RIFF\x00\x00\x00\x00WAVEjunk" * 10),
        "tiny",
        CODE.INVALID_ARGUMENT,
        "cannot read audio",
    ),
    "pcm not whole samples": (_pcm(b"\x00" * 1001, pb.INT16), "tiny", CODE.INVALID_ARGUMENT, "whole number"),
    "pcm not whole frames": (
        _pcm(b"\x00" * 1002, pb.INT16, ch=2),
        "tiny",
        CODE.INVALID_ARGUMENT,
        "whole number",
    ),
    "nan": (_pcm(np.array([0.1, np.nan, 0.2] * 100, "<f4").tobytes()), "tiny", CODE.INVALID_ARGUMENT, "NaN"),
    "inf": (_pcm(np.array([0.1, np.inf] * 100, "<f4").tobytes()), "tiny", CODE.INVALID_ARGUMENT, "Inf"),
    "empty pcm": (_pcm(b""), "tiny", CODE.INVALID_ARGUMENT, "empty"),
    "empty wav": (
        pb.Audio(encoded=encode_audio(np.zeros((1, 0), np.float32), 16000)),
        "tiny",
        CODE.INVALID_ARGUMENT,
        "empty",
    ),
    "no audio": (None, "tiny", CODE.INVALID_ARGUMENT, "no audio"),
    # what a client of the .proto may well send: libsndfile's bare "Format not recognised." said no more
    "raw samples as a file": (
        pb.Audio(encoded=_ONE_SECOND),
        "tiny",
        CODE.INVALID_ARGUMENT,
        "audio: cannot read audio (Format not recognised.); Audio.encoded takes a whole audio file (WAV, FLAC, "
        "Ogg, ...): raw samples go in Audio.pcm, with their sample format, rate and channels",
    ),
    "unknown model": (_pcm(_ONE_SECOND), "nope", CODE.NOT_FOUND, "unknown model 'nope'"),
    "image model": (_pcm(_ONE_SECOND), "img", CODE.INVALID_ARGUMENT, "cannot denoise"),
    "absurd rate": (_pcm(_ONE_SECOND, sr=7), "tiny", CODE.INVALID_ARGUMENT, "sample rate 7 Hz"),
    "absurd rate high": (_pcm(_ONE_SECOND, sr=50_000_000), "tiny", CODE.INVALID_ARGUMENT, "sample rate"),
    "zero channels": (_pcm(_ONE_SECOND, ch=0), "tiny", CODE.INVALID_ARGUMENT, "channels"),
    # the field a client of the .proto most easily leaves out (was: "PCM sample format must be INT16 or
    # FLOAT32, got SAMPLE_FORMAT_UNSPECIFIED", naming neither the field nor the request's part)
    "no sample format": (
        _pcm(_ONE_SECOND, fmt=pb.SAMPLE_FORMAT_UNSPECIFIED),
        "tiny",
        CODE.INVALID_ARGUMENT,
        "audio: the PCM's sample format is unset (SAMPLE_FORMAT_UNSPECIFIED); set Pcm.format to INT16 or FLOAT32",
    ),
    "unknown sample format": (_pcm(_ONE_SECOND, fmt=7), "tiny", CODE.INVALID_ARGUMENT,
                              "audio: PCM sample format must be INT16 or FLOAT32, got 7"),
    "too long": (
        _pcm(np.zeros(8000 * 31, "<i2").tobytes(), pb.INT16, sr=8000),
        "tiny",
        CODE.RESOURCE_EXHAUSTED,
        "at most 30 s",
    ),
    "message too large": (_pcm(np.zeros(300_000, "<f4").tobytes()), "tiny", CODE.RESOURCE_EXHAUSTED, ""),
    # Finite but beyond float32's reach once squared: the answer was OK and all NaN.
    "huge finite floats": (
        _pcm(np.array([0.1, -3e38] * 100, "<f4").tobytes()),
        "tiny",
        CODE.INVALID_ARGUMENT,
        "the audio peaks at 3e+38; float samples are expected within [-1, 1]",
    ),
    # 64 channels of 1 s at 1 kHz: 128 kB, but 64 s of the model's work (it runs at 16 kHz on
    # every channel); this server takes 30 s of stereo, 60 channel-seconds.
    "too many channel-seconds": (
        _pcm(np.zeros(1000 * 64, "<i2").tobytes(), pb.INT16, sr=1000, ch=64),
        "tiny",
        CODE.RESOURCE_EXHAUSTED,
        "64 channels x 1.0 s = 64 channel-seconds; this server accepts at most 60 per request (30 s of stereo",
    ),
    "encoded with 65 channels": (
        pb.Audio(encoded=encode_audio(np.zeros((65, 100), np.float32), 16000)),
        "tiny",
        CODE.INVALID_ARGUMENT,
        "audio: the audio has 65 channels; this server takes 1..64",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DENOISE))
def test_bad_denoise_input(client, case):
    audio, model, want, text = BAD_DENOISE[case]
    req = pb.DenoiseRequest(model=model, audio=audio) if audio is not None else pb.DenoiseRequest(model=model)
    code, msg = _code(client.stub.Denoise, req, timeout=30)
    assert code == want, msg
    assert text in msg
    assert client.health() == "SERVING"


def test_bad_strength(client):
    code, msg = _code(client.denoise, _noisy(0.2, 16000), 16000, model="tiny", strength=1.5)
    assert code == CODE.INVALID_ARGUMENT and "strength" in msg
    req = pb.DenoiseRequest(model="tiny", audio=_pcm(_ONE_SECOND), strength=-0.1)  # a float32 on the wire
    code, msg = _code(client.stub.Denoise, req, timeout=30)
    assert code == CODE.INVALID_ARGUMENT and msg.endswith("got -0.1"), msg  # not -0.10000000149011612


# ---- limits that keep a small request from allocating gigabytes -----------------------------------
@pytest.mark.parametrize(("sr", "refused", "streamed"), [
    # 44101 Hz against the model's 16000 Hz: torchaudio's filter bank would be 2.8 GB.
    (44101, "44101 Hz cannot be resampled to the model's 16000 Hz efficiently",
     "44101 Hz cannot be resampled to the model's 16000 Hz"),
    # 44056 Hz needs a 44 MB bank: `audioae denoise` takes it, a server does not (a new rate's
    # bank costs it a second and tens of MB: tiny calls at odd rates would make it pay at will).
    (44056, "44056 Hz is not resampled to the model's 16000 Hz by a server",
     "44056 Hz cannot be streamed at the model's 16000 Hz"),
], ids=["no-factor", "offline-only"])
def test_a_rate_the_server_will_not_resample_is_refused(client, sr, refused, streamed):
    advice = ("standard rate such as 16000, 44100 or 48000 Hz first" if sr == 44101 else
              "work on the file offline instead (audioae denoise and audioae decompose take it)")
    wav = io.BytesIO()
    sf.write(wav, np.zeros(sr // 10, np.int16), sr, format="WAV", subtype="PCM_16")
    pcm = _pcm(np.zeros(sr // 10, "<f4").tobytes(), sr=sr)
    for rpc, req in (
        ("Denoise", pb.DenoiseRequest(model="tiny", audio=pcm)),
        ("Denoise", pb.DenoiseRequest(model="tiny", audio=pb.Audio(encoded=wav.getvalue()))),
        ("Encode", pb.EncodeRequest(model="tiny", audio=pcm)),
        ("Decompose", pb.DecomposeRequest(model="dict", audio=pb.Audio(encoded=wav.getvalue()))),
    ):
        code, msg = _code(getattr(client.stub, rpc), req, timeout=30)
        assert code == CODE.INVALID_ARGUMENT, msg
        assert refused in msg and advice in msg, msg
    cfg = pb.StreamConfig(model="tiny", sample_rate=sr, channels=1, format=pb.FLOAT32)
    code, msg = _code(lambda: list(client.stub.StreamDenoise(iter([pb.StreamDenoiseRequest(config=cfg), _AUDIO]),
                                                              timeout=30)))
    assert code == CODE.INVALID_ARGUMENT and streamed in msg, msg
    x = _noisy(0.2, 44100)
    assert client.denoise(x, 44100, model="tiny").shape == x.shape  # the standard neighbour is fine


def test_encoded_upload_that_would_decode_too_large_is_refused_before_decoding(server, client):
    # 1 s of 8-channel 384 kHz silence: a few kB of FLAC, 3.1 M samples decoded -- over this
    # server's budget of max(30 s x 48 kHz x 2, 1 MB / 2) = 2.88 M samples.
    buf = io.BytesIO()
    sf.write(buf, np.zeros((384_000, 8), np.int16), 384_000, format="FLAC", subtype="PCM_16")
    data = buf.getvalue()
    assert len(data) < 20_000
    assert server.servicer.max_decoded_samples == 2_880_000
    for rpc, req in (
        ("Denoise", pb.DenoiseRequest(model="tiny", audio=pb.Audio(encoded=data))),
        ("Decompose", pb.DecomposeRequest(model="dict", audio=pb.Audio(encoded=data))),
    ):
        code, msg = _code(getattr(client.stub, rpc), req, timeout=30)
        assert code == CODE.RESOURCE_EXHAUSTED, msg  # as the duration limit
        assert "would decode to 3,072,000 samples (384,000 frames x 8 channels at 384000 Hz" in msg, msg
        assert "at most 2,880,000" in msg and "--max-audio-seconds" in msg, msg
    x = _noisy(0.3, 16000)
    assert client.denoise(x, 16000, model="tiny").shape == x.shape


def test_a_denoise_answer_over_the_answer_limit_is_refused_with_the_servers_own_message(model_dir):
    """FLAC of a square wave compresses 10x better than its denoised audio: 190 kB in, 2.8 MB out,
    over the 2 MB answers of a server taking 0.5 MB. gRPC refused the answer itself ("Sent
    message larger than max") and the call was counted OK."""
    with _serving(model_dir, "tiny", max_request_mb=0.5) as (srv, c):
        t = np.arange(30 * 48000) / 48000
        square = np.sign(np.sin(2 * np.pi * 100 * t)) * 0.5
        data = encode_audio(np.stack([square, square]), 48000, format="FLAC", subtype="PCM_24")
        assert len(data) < 0.5 * 2**20
        code, msg = _code(c.denoise_bytes, data)
        assert code == CODE.RESOURCE_EXHAUSTED, msg
        assert "of FLAC PCM_24, over this server's 2 MB answer limit (4 x --max-request-mb)" in msg, msg
        assert "send shorter audio" in msg, msg
        count = srv.metrics.registry.get_sample_value
        assert count("audioae_requests_total", {"method": "Denoise", "code": "RESOURCE_EXHAUSTED"}) == 1
        assert count("audioae_requests_total", {"method": "Denoise", "code": "OK"}) is None
        x = _noisy(0.3, 16000)
        assert c.denoise(x, 16000).shape == x.shape


def _cut_short(fmt: str, subtype: str, seconds: float = 2.0) -> tuple[bytes, int]:
    """A 16 kHz mono file of ``fmt`` cut to half its bytes, its header claiming all of it, and the
    frames the whole file holds."""
    x = _noisy(seconds, 16000)  # [1, T]
    return cut_short(encode_audio(x, 16000, format=fmt, subtype=subtype)), x.shape[-1]


def _mp3_with_tags_and_no_xing(seconds: float) -> bytes:
    """A complete MP3 without the Xing frame that counts its frames, after 64 kB of ID3 tags (cover
    art): libsndfile guesses its length from the file's size, seconds too long, and the server
    warned of a file cut short that was not (a ffmpeg -write_xing 0 file with its cover)."""
    from audio_tree import _id3v2

    from audioae.audio import mpeg_frames_samples

    mp3 = encode_audio(_noisy(seconds, 16000), 16000, format="MP3")
    assert mp3[:2] == b"\xff\xf3" and b"Xing" in mp3[:64]  # libsndfile's first frame: the Xing frame
    audio = mp3[mp3.index(b"\xff\xf3", 4) :]  # from the next frame's sync word
    tag = _id3v2(bytes(64 * 1024))
    walked, whole = mpeg_frames_samples(tag + audio), mpeg_frames_samples(mp3)
    assert (walked.held, walked.counted) == (whole.held, False)  # every frame, no count
    assert sf.info(io.BytesIO(tag + audio)).frames > 1.5 * seconds * 16000  # the guess the tag misleads
    return tag + audio


def test_a_file_cut_short_is_answered_with_a_warning_for_the_audio_it_holds(server, client, caplog):
    """A WAV or an MP3 cut short (an interrupted copy, a recorder that stopped) was answered for
    the audio libsndfile reads without a word, though the caller may still have its whole original
    somewhere: Denoise, Decompose and Encode now answer it with a warning, logged by the server too.
    A complete file, PCM and a live recorder's placeholder size (0xFFFFFFFF) warn of nothing."""
    wav, whole = _cut_short("WAV", "PCM_16")
    held = sf.info(io.BytesIO(wav)).frames
    assert held < whole
    with caplog.at_level("WARNING", logger="audioae.server.servicer"):
        resp = client.denoise_bytes(wav, model="tiny")
    assert sf.info(io.BytesIO(resp.audio.encoded)).frames == held  # answered for what it holds
    assert len(resp.warnings) == 1, resp.warnings
    assert re.fullmatch(r"audio: its header claims 64,000 bytes of audio but the file holds 3\d,\d{3} \(a copy cut "
                        rf"short, or a recording that stopped mid-write\?\): answered for the {held / 16000:.2f} s "
                        r"it holds", resp.warnings[0]), resp.warnings[0]
    logged = [r.getMessage() for r in caplog.records if r.name == "audioae.server.servicer"]  # the operator hears of it
    assert len(logged) == 1 and re.fullmatch(r"Denoise from \S+: " + re.escape(resp.warnings[0]), logged[0]), logged

    d = client.decompose(wav, model="dict", top_k=2, fit_steps=0)
    assert d.warnings == list(resp.warnings) and d.samples == held
    e = client.stub.Encode(pb.EncodeRequest(model="tiny", audio=pb.Audio(encoded=wav)), timeout=60)
    assert list(e.warnings) == list(resp.warnings)

    mp3, whole = _cut_short("MP3", "MPEG_LAYER_III")  # its Xing header counts the frames: libsndfile reads fewer
    resp = client.denoise_bytes(mp3, model="tiny")
    got = sf.info(io.BytesIO(resp.audio.encoded)).frames
    assert len(resp.warnings) == 1 and re.fullmatch(  # the frames walked hold more than decodes: the encoder's delay
        rf"audio: its header claims {whole / 16000:.2f} s of audio but its frames hold 1.0\d s \(a copy cut short, or a "
        rf"recording that stopped mid-write\?\): answered for the {got / 16000:.2f} s it holds", resp.warnings[0]), resp.warnings

    ogg = encode_audio(_noisy(2.0, 16000), 16000, format="OGG", subtype="VORBIS")
    resp = client.denoise_bytes(ogg[: len(ogg) * 9 // 10], model="tiny")  # no end page: decodes in part
    got = sf.info(io.BytesIO(resp.audio.encoded)).frames
    assert list(resp.warnings) == [f"audio: its Ogg stream stops before its end page (a copy cut short, or a "
                                   f"recording that stopped mid-write?): answered for the {got / 16000:.2f} s it "
                                   f"holds"], resp.warnings

    complete = encode_audio(_noisy(1.0, 16000), 16000, format="WAV", subtype="PCM_16")
    for data in (complete, live_wav(complete), encode_audio(_noisy(1.0, 16000), 16000, format="MP3"),
                 _mp3_with_tags_and_no_xing(2.0), ogg):
        assert list(client.denoise_bytes(data, model="tiny").warnings) == []
    assert list(client.stub.Denoise(pb.DenoiseRequest(model="tiny", audio=pb.Audio(pcm=pcm_message(
        _noisy(0.3, 16000), 16000, "int16"))), timeout=60).warnings) == []


def test_a_request_over_the_message_limit_is_refused_in_words_and_counted(model_dir):
    """Was gRPC's own "Received message larger than max (N vs. M)", never counted. A message up to
    2 x --max-request-mb is now read and refused by the server, naming the flag; one past that is
    still refused by gRPC."""
    with _serving(model_dir, "tiny", max_request_mb=1) as (srv, c):
        x = 0.1 * np.ones((1, 300_000), np.float32)  # 1.2 MB of float32 PCM, 18.8 s: within the 30 s limit
        code, msg = _code(c.denoise, x, 16000)
        assert code == CODE.RESOURCE_EXHAUSTED, msg
        assert re.fullmatch(r"the audioae.v1.DenoiseRequest message is 1,200,\d{3} bytes \(1.1 MB\), over this "
                            r"server's message limit of 1,048,576 bytes \(1 MB, --max-request-mb\): send shorter "
                            r"audio, in several calls; a WAV is smaller as FLAC, float32 PCM as int16 PCM", msg), msg
        count = srv.metrics.registry.get_sample_value
        assert count("audioae_requests_total", {"method": "Denoise", "code": "RESOURCE_EXHAUSTED"}) == 1
        code, msg = _code(c.denoise, 0.1 * np.ones((1, 1_100_000), np.float32), 16000)  # 4.4 MB: past 2x
        assert code == CODE.RESOURCE_EXHAUSTED and "Received message larger than max" in msg, msg
        assert c.denoise(x[:, :16000], 16000).shape == (1, 16000)


def test_out_of_memory_is_told_apart_from_shape_errors():
    # Encode/Decode map these to RESOURCE_EXHAUSTED; other RuntimeErrors stay INVALID_ARGUMENT
    # (the shape-error cases of test_bad_encode_decode: "image wrong shape", "code wrong size").
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    with pytest.raises(RuntimeError) as refusal:  # a real allocator refusal: nothing is allocated
        torch.empty(1 << 60, dtype=torch.uint8)
    assert is_out_of_memory(refusal.value), refusal.value
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (5x7 and 16x64)"))
    assert not is_out_of_memory(ValueError("out of memory"))
    # Denoise, StreamDenoise and Decompose: was INTERNAL with a traceback in the log
    code, msg = status_of(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later, or send shorter audio" in msg


def test_a_unary_call_out_of_memory_is_told_what_to_send_less_of(server, client, monkeypatch):
    """Every unary call out of memory was told "send shorter audio", or "send a smaller batch" where
    Encode/Decode's model ran out: a Decode (a code, no audio) of one item, and a Decompose whose
    components, as much as its audio, take the memory. The failures are the allocator's own refusal."""
    import audioae.decompose as decompose_module

    def no_memory(*args, **kwargs):
        torch.empty(1 << 60, dtype=torch.uint8)  # RuntimeError: can't allocate memory

    monkeypatch.setattr(decompose_module, "_spectrum_and_features", no_memory)
    x = _noisy(0.5, 16000)
    req = pb.DecomposeRequest(model="dict", audio=pb.Audio(pcm=pcm_message(x, 16000, pb.FLOAT32)))
    code, msg = _code(client.stub.Decompose, req, timeout=60)
    assert code == CODE.RESOURCE_EXHAUSTED, msg
    assert msg.startswith("the server ran out of memory for this request ("), msg
    assert msg.endswith("retry later, or send shorter audio or fewer channels, ask for a smaller top_k, or group "
                        "the units (group=band or cluster)"), msg

    monkeypatch.setattr(server.store.models["tiny"].model, "decode", no_memory)
    code, msg = _code(client.stub.Decode, pb.DecodeRequest(model="tiny", code=_tensor([1, 16, 7])), timeout=60)
    assert code == CODE.RESOURCE_EXHAUSTED, msg
    assert msg == "out of memory decoding a code of shape [1, 16, 7]: send a shorter code (fewer frames), or fewer items"
    monkeypatch.undo()
    assert client.denoise(x, 16000, model="tiny").shape == x.shape  # the server goes on


@pytest.mark.parametrize("text", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "cuFFT error: CUFFT_ALLOC_FAILED"])
def test_a_cuda_library_allocation_failure_is_out_of_memory(text, monkeypatch):
    """Was INTERNAL, and the batcher retried clip by clip without handing the cache back: cuBLAS,
    cuDNN and cuFFT failing to allocate on a full GPU raise a plain RuntimeError with these words."""
    import audioae.server.batcher as batcher_module

    assert is_out_of_memory(RuntimeError(text))
    code, msg = status_of(RuntimeError(text))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later, or send shorter audio" in msg, msg
    released = []
    monkeypatch.setattr(batcher_module, "release_device_memory", lambda: released.append(True))
    batcher = Batcher(Metrics())  # not started: _run is driven here

    def compute(jobs):
        if len(jobs) > 1:
            raise RuntimeError(text)
        return [len(released)]  # how many times the cache was emptied before this clip ran

    batcher._compute = compute
    jobs = [Job("denoise", 1.0, key="m") for _ in range(2)]
    for j in jobs:
        assert j.future.set_running_or_notify_cancel()
    batcher._run(jobs)
    assert [j.future.result()[0] for j in jobs] == [1, 1]  # emptied once, before the clip-by-clip retry


def test_a_job_being_gathered_into_a_batch_is_cut_off_too():
    """A job the worker had taken from the queue, waiting for others to batch with it, was in
    neither the queue nor the running list: cut_off() missed it, and it ran after the cut-off."""
    from audioae.server.errors import ShuttingDown

    batcher = Batcher(Metrics(), max_delay_ms=600_000)  # it gathers a batch for 10 minutes
    ran = threading.Event()
    job = Job("denoise", 1.0, key="m", fn=lambda: ran.set() or "answered")
    batcher.start()
    try:
        batcher.submit(job)
        assert wait_until(lambda: batcher.depth == 0, 30)  # taken from the queue: gathering its batch
        batcher.cut_off("the server is shutting down (test)")
        with pytest.raises(ShuttingDown, match=r"the server is shutting down \(test\)"):
            job.future.result(timeout=30)
        assert not ran.is_set()
    finally:
        batcher.stop(timeout=5)


def test_decompose_whose_components_could_exceed_the_cap_is_refused(model_dir):
    # 750 s of 16 kHz silence (a few tens of kB of FLAC) into the 24 units of "dict": 24 x 12 M
    # float32 samples = 1.07 GiB of component waveforms, refused from the header, before decoding.
    with _serving(model_dir, "dict", max_audio_seconds=3600) as (srv, c):
        frames = 750 * 16000
        assert 24 * frames * 4 > MAX_COMPONENT_BYTES > 8 * frames * 4
        buf = io.BytesIO()
        sf.write(buf, np.zeros(frames, np.int16), 16000, format="FLAC", subtype="PCM_16")
        big = pb.Audio(encoded=buf.getvalue())
        for kw in ({}, {"return_components": True}, {"top_k": 23}):
            code, msg = _code(c.stub.Decompose, pb.DecomposeRequest(audio=big, **kw), timeout=30)
            assert code == CODE.RESOURCE_EXHAUSTED, msg
            assert "750.0 s of 1-channel audio at 16000 Hz into up to" in msg, msg
            assert "send shorter audio, ask for a smaller top_k, or group the units" in msg, msg
        assert "into up to 23 components" in msg
        # The server keeps serving: the next request (short audio) is answered.
        x = _noisy(0.5, 16000)
        r = c.decompose(x, 16000, top_k=2, group="none", components=True, fit_steps=0)
        assert r.components.shape == (2, 1, x.shape[-1])
        np.testing.assert_allclose(r.components.sum(0) + r.residual, x, atol=1e-5)
        assert c.health() == "SERVING"


@pytest.mark.parametrize("components", [False, True], ids=["activations", "with-components"])
def test_a_decompose_answer_over_the_answer_limit_is_refused_before_any_work(model_dir, components):
    """The activations are [units, frames] float32 at the model's frame rate whatever the caller's
    rate: 200 s at 1 kHz, a 400 kB question, ran the whole decomposition, then met gRPC's own
    "Sent message larger than max" RESOURCE_EXHAUSTED, and the call was counted OK. Now refused
    from the audio's length before any work, in the server's words, with what length fits."""
    with _serving(model_dir, "dict", max_request_mb=0.125, max_audio_seconds=600) as (srv, c):
        # 0.5 MB answers, 95% for the arrays: 24 units x 125 frames/s x 4 B = 12 kB a second of
        # activations; with components, the residual's 4 B a sample at 1 kHz is 4 kB a second more.
        seconds = 36 if components else 50  # 36 s: 432 kB of activations, within the limit alone, not with the residual
        x = _noisy(seconds, 1000)
        req = pb.DecomposeRequest(model="dict", audio=pb.Audio(pcm=pcm_message(x, 1000, "int16")), top_k=1,
                                  group="none", fit_steps=0, return_components=components)
        assert req.ByteSize() < 0.125 * 2**20
        code, msg = _code(c.stub.Decompose, req, timeout=60)
        assert code == CODE.RESOURCE_EXHAUSTED, msg
        frames = 1 + seconds * 16000 // 128
        residual = f" and its residual [1, {seconds * 1000}]" if components else ""
        said = re.fullmatch(
            rf"decomposing {seconds}\.0 s of audio at 1000 Hz would answer activations of shape \[24, {frames}\]"
            rf"{re.escape(residual)}, and the summaries of up to 1 component: 0\.[56] MB of float32 and summaries, "
            rf"over this server's 0\.5 MB answer limit: send at most "
            rf"(\d+\.\d) s of audio at this rate per call"
            + (r" \(with its residual and up to 1 component waveform\)" if components else ""), msg)
        assert said, msg
        assert _requests(srv, "Decompose", "RESOURCE_EXHAUSTED") == 1
        assert _requests(srv, "Decompose", "OK") is None
        assert srv.metrics.registry.get_sample_value("audioae_compute_seconds_count",
                                                     {"kind": "decompose"}) in (None, 0)  # no work ran
        # What it says fits is answered, up to the last sample.
        fit = int(float(said.group(1)) * 1000)
        req.audio.pcm.CopyFrom(pcm_message(x[:, :fit], 1000, "int16"))
        r = c.stub.Decompose(req, timeout=120)
        assert (r.sample_rate, r.samples, list(r.activations.shape)) == (1000, fit, [24, 1 + fit * 16 // 128])
        assert len(r.residual.pcm.data) == (4 * fit if components else 0)



def _decomposer_small() -> Path:
    from audioae import pretrained

    shipped = pretrained.shipped()
    if "decomposer-small" not in shipped:
        pytest.skip("no shipped decomposer-small")
    return Path(shipped["decomposer-small"])


def _gated_noise(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    """Noise on and off every 50 ms: every unit that answers it is active in many spans (the
    summary of each component at its largest, MAX_SPANS spans)."""
    x = 0.3 * np.random.default_rng(0).standard_normal((channels, round(seconds * sr)))
    return (x * ((np.arange(x.shape[-1]) // (sr // 20)) % 2 == 0)).astype(np.float32)


def test_the_length_a_decompose_refusal_advises_is_answered_with_every_components_summary(model_dir):
    """The estimate counted the float32 arrays only: the 320 components of decomposer-small
    (top_k=0, group none) carry up to 1.1 kB of summary each (label, units, three doubles, 50
    spans), and 6 s at 8 kHz under --max-request-mb 0.125 advised 3.0 s, whose answer met gRPC's
    own "Sent message larger than max (524355 vs. 524288)", the call counted OK."""
    with _serving(model_dir, _decomposer_small(), max_request_mb=0.125, max_audio_seconds=600) as (srv, c):
        x = _gated_noise(6, 8000)
        req = pb.DecomposeRequest(audio=pb.Audio(pcm=pcm_message(x, 8000, "int16")), top_k=0, group="none",
                                  fit_steps=0)
        code, msg = _code(c.stub.Decompose, req, timeout=120)
        assert code == CODE.RESOURCE_EXHAUSTED, msg
        assert "[320, 751], and the summaries of up to 320 components:" in msg, msg
        said = re.search(r"send at most (\d+) ms of audio at this rate per call$", msg)
        assert said, msg
        fit = int(said.group(1)) * 8
        req.audio.pcm.CopyFrom(pcm_message(x[:, :fit], 8000, "int16"))
        r = c.stub.Decompose(req, timeout=300)  # was gRPC's own RESOURCE_EXHAUSTED
        assert r.samples == fit and len(r.components) > 100, (r.samples, len(r.components))
        assert r.ByteSize() <= srv.config.max_send_bytes
        assert _requests(srv, "Decompose", "OK") == 1
        assert _requests(srv, "Decompose", "RESOURCE_EXHAUSTED") == 1
        # 320 waveforms of 2 channels and the summaries leave no room for even one analysis window:
        # said so, not "send at most 3 ms" and then "too short to decompose".
        req.audio.pcm.CopyFrom(pcm_message(np.tile(x[:, :8000], (2, 1)), 8000, "int16"))
        req.return_components = True
        code, msg = _code(c.stub.Decompose, req, timeout=120)
        assert code == CODE.RESOURCE_EXHAUSTED, msg
        assert msg.endswith(
            "no audio fits under it at this rate, not even the shortest the model takes (32 ms, its analysis "
            "window): ask for fewer components (a smaller top_k, or group=band or cluster), send fewer channels, "
            "or have the server run with a larger --max-request-mb"), msg
        assert "send at most" not in msg, msg


def test_a_decompose_answer_over_the_limit_after_the_work_is_refused_in_the_servers_words(model_dir, monkeypatch):
    """Past the estimate before the work (a loose one, here none at all), the answer's exact size
    is checked before its waveforms are copied in: refused RESOURCE_EXHAUSTED in the server's
    words, not sent to meet gRPC's own "Sent message larger than max", the call counted OK."""
    monkeypatch.setattr(AudioAEServicer, "_check_decompose_answer", lambda *args: None)
    with _serving(model_dir, "dict", max_request_mb=0.125, max_audio_seconds=600) as (srv, c):
        # 50 s at 1 kHz: 0.6 MB of activations ([24, 6251] float32); 20 s: 0.24 MB of them, and 80 kB
        # for each waveform returned (the residual and every component's).
        x = _gated_noise(50, 1000)
        for seconds, components in ((50, False), (20, True)):
            audio = pb.Audio(pcm=pcm_message(x[:, : seconds * 1000], 1000, "int16"))
            req = pb.DecomposeRequest(model="dict", audio=audio, top_k=0, group="none", fit_steps=0,
                                      return_components=components)
            code, msg = _code(c.stub.Decompose, req, timeout=120)
            assert code == CODE.RESOURCE_EXHAUSTED, msg
            waves = ", their waveforms and the residual" if components else ""
            assert re.fullmatch(
                rf"the answer \(the activations and \d+ components' summaries{waves}\) would be \d\.\d MB of "
                r"float32 and summaries, over this server's 0\.5 MB answer limit \(4 x --max-request-mb\): ask for "
                r"a smaller top_k, group the units, or send shorter audio", msg), msg
        assert _requests(srv, "Decompose", "RESOURCE_EXHAUSTED") == 2
        assert _requests(srv, "Decompose", "OK") is None

# ---- StreamDenoise --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt,sr,channels", [("float32", 16000, 1), ("float32", 22050, 2), ("int16", 16000, 1)]
)
def test_stream_equals_offline_and_streams_early(client, tiny, fmt, sr, channels):
    x = _noisy(1.5, sr, channels, seed=5)
    if fmt == "int16":
        x = np.round(x * 32768).clip(-32768, 32767) / 32768
        x = x.astype(np.float32)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, x.shape[-1]), 40, replace=False))
    pieces = np.split(x, cuts, axis=-1)  # chunks of any size, some a few samples
    first_out = threading.Event()
    early = []

    def chunks():
        for i, p in enumerate(pieces):
            if i == len(pieces) // 2:
                early.append(first_out.wait(30))  # output must come back before the input ends
            yield p

    outs = []
    for y in client.stream(chunks(), sr, channels, model="tiny", pcm_format=fmt):
        outs.append(y)
        first_out.set()
    y = np.concatenate(outs, axis=-1)
    assert early == [True]
    assert y.shape == x.shape
    step = 1 / 32768 if fmt == "int16" else 0
    np.testing.assert_allclose(y, denoise(tiny, x, sr), atol=TOL + step)


_CFG = pb.StreamConfig(model="tiny", sample_rate=16000, channels=1, format=pb.FLOAT32)
_AUDIO = pb.StreamDenoiseRequest(audio=np.zeros(160, "<f4").tobytes())
BAD_STREAM = {
    "empty stream": ([], CODE.INVALID_ARGUMENT, "empty stream"),
    "audio first": ([_AUDIO], CODE.INVALID_ARGUMENT, "first message must be a StreamConfig (model, sample_rate, "
                                                      "channels, format); audio came first"),
    "empty first message": (  # was "...; audio came first", though none came
        [pb.StreamDenoiseRequest(), _AUDIO], CODE.INVALID_ARGUMENT,
        "the first message must be a StreamConfig (model, sample_rate, channels, format); the 1st message is empty "
        "(neither a StreamConfig nor audio)",
    ),
    # Messages are counted from 1, the StreamConfig being the 1st, and audio chunks from 1 as the
    # client counts them: a second config was "message 1" (zero-based), its first audio "chunk 1".
    "config twice": ([pb.StreamDenoiseRequest(config=_CFG)] * 2, CODE.INVALID_ARGUMENT,
                     "the 2nd message is a StreamConfig: only the first message may be one"),
    "config after audio": ([pb.StreamDenoiseRequest(config=_CFG), _AUDIO, pb.StreamDenoiseRequest(config=_CFG)],
                           CODE.INVALID_ARGUMENT, "the 3rd message is a StreamConfig"),
    "empty message": (  # was "only the first message may be a StreamConfig", though it carried none
        [pb.StreamDenoiseRequest(config=_CFG), pb.StreamDenoiseRequest()],
        CODE.INVALID_ARGUMENT,
        "the 2nd message is empty (neither audio nor a StreamConfig)",
    ),
    "no audio at all": ([pb.StreamDenoiseRequest(config=_CFG)], CODE.INVALID_ARGUMENT, "no audio"),
    "not causal": (
        [
            pb.StreamDenoiseRequest(
                config=pb.StreamConfig(model="conv", sample_rate=16000, channels=1, format=pb.FLOAT32)
            )
        ],
        CODE.INVALID_ARGUMENT,
        "model 'conv' is not causal and cannot stream; use Denoise, or models that stream: tiny",
    ),
    "a decomposer": (  # was "...; use Denoise, or one of: tiny", where its Denoise is only its reconstruction
        [
            pb.StreamDenoiseRequest(
                config=pb.StreamConfig(model="dict", sample_rate=16000, channels=1, format=pb.FLOAT32)
            )
        ],
        CODE.INVALID_ARGUMENT,
        "model 'dict' is not causal and cannot stream; models that stream: tiny",
    ),
    "unknown model": (
        [
            pb.StreamDenoiseRequest(
                config=pb.StreamConfig(model="x", sample_rate=16000, channels=1, format=pb.FLOAT32)
            )
        ],
        CODE.NOT_FOUND,
        "'x'",
    ),
    "absurd rate": (
        [
            pb.StreamDenoiseRequest(
                config=pb.StreamConfig(model="tiny", sample_rate=3, channels=1, format=pb.FLOAT32)
            )
        ],
        CODE.INVALID_ARGUMENT,
        "sample rate 3 Hz",
    ),
    "odd bytes": (
        [pb.StreamDenoiseRequest(config=_CFG), _AUDIO, pb.StreamDenoiseRequest(audio=b"\x00" * 7)],
        CODE.INVALID_ARGUMENT,
        "audio chunk 2 (the 3rd message): 7 bytes",
    ),
    "nan chunk": (
        [
            pb.StreamDenoiseRequest(config=_CFG),
            pb.StreamDenoiseRequest(audio=np.array([np.nan] * 10, "<f4").tobytes()),
        ],
        CODE.INVALID_ARGUMENT,
        "NaN",
    ),
    "too long": (
        [
            pb.StreamDenoiseRequest(
                config=pb.StreamConfig(model="tiny", sample_rate=1000, channels=1, format=pb.FLOAT32)
            )
        ]
        + [pb.StreamDenoiseRequest(audio=np.zeros(10_000, "<f4").tobytes())] * 4,
        CODE.RESOURCE_EXHAUSTED,
        "the stream reached 30 s, this server's limit (--max-stream-seconds)",
    ),
    "huge finite chunk": (
        [pb.StreamDenoiseRequest(config=_CFG), pb.StreamDenoiseRequest(audio=np.array([1e30] * 10, "<f4").tobytes())],
        CODE.INVALID_ARGUMENT,
        "audio chunk 1 (the 2nd message): the audio peaks at 1e+30",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STREAM))
def test_bad_stream_input(client, case):
    msgs, want, text = BAD_STREAM[case]
    code, msg = _code(lambda: list(client.stub.StreamDenoise(iter(msgs), timeout=30)))
    assert code == want, msg
    assert text in msg
    assert client.health() == "SERVING"


# ---- Decompose ------------------------------------------------------------------------------------
def test_decompose_components_sum_to_input(client, model_dir):
    from audioae.decompose import decompose

    x = _noisy(0.8, 22050)
    r = client.decompose(x, 22050, model="dict", top_k=3, group="none", components=True, fit_steps=3)
    ref = decompose(load_checkpoint(model_dir / "dict.safetensors"), x, 22050, top_k=3, fit_steps=3)
    assert r.components.shape == (3, 1, x.shape[-1]) and r.residual.shape == x.shape
    np.testing.assert_allclose(r.components.sum(0) + r.residual, x, atol=1e-5)
    np.testing.assert_allclose(r.activations, ref.activations, atol=1e-5)
    np.testing.assert_allclose(r.components, ref.components, atol=1e-5)
    assert r.labels == ref.labels and r.units == ref.units and r.frame_rate == ref.frame_rate
    np.testing.assert_allclose(r.energy_share, ref.energy_share, rtol=1e-5)
    from audioae.decompose import summarize

    assert r.active_spans == [e["active_spans"] for e in summarize(ref)["components"]]  # the true counts cross the wire


def test_decompose_activations_of_multichannel_input_are_the_mean_over_channels(client):
    """As docs/serving.md and the proto say: one [U, N] row per unit, the channels averaged. No
    fit: it adapts one set of atoms to all the channels together, so channels alone fit otherwise."""
    x = _noisy(0.6, 16000, channels=2)
    x[1] *= 0.3  # channels of different levels: the mean is over level-scaled codes
    both = client.decompose(x, 16000, model="dict", top_k=2, fit_steps=0).activations
    each = [client.decompose(x[c], 16000, model="dict", top_k=2, fit_steps=0).activations for c in (0, 1)]
    assert both.shape == each[0].shape == (24, each[0].shape[1])
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, rtol=1e-4, atol=1e-6)


def test_decompose_asks_for_a_number_of_clusters_or_bands(client, model_dir):
    # was: the server always made 8; the local command's --groups had no counterpart in the API
    from audioae.decompose import decompose

    x = _noisy(0.8, 16000)
    model = load_checkpoint(model_dir / "dict.safetensors")
    for group, n in (("cluster", 3), ("band", 2)):
        r = client.decompose(x, 16000, model="dict", group=group, groups=n, fit_steps=0)
        ref = decompose(model, x, 16000, group=group, groups=n, fit_steps=0)
        assert 1 <= len(r.labels) <= n and r.labels == ref.labels and r.units == ref.units
        assert r.groups == n == r.summary()["groups"]
        # from the server, not the client's fallback to the request's count
        raw = client.stub.Decompose(pb.DecomposeRequest(model="dict", audio=pb.Audio(pcm=pcm_message(x, 16000, "float32")),
                                                        group=group, groups=n, fit_steps=0), timeout=60)
        assert raw.HasField("groups") and raw.groups == n


def test_a_decomposer_of_fewer_units_than_the_default_groups_still_decomposes(model_dir, tmp_path):
    # the default of 8 groups is capped at the model's units; only a groups the caller gives is
    # checked against them (a first version refused every call to a 4-unit model)
    small = build_model("sparse_dict", {"n_fft": 256, "hop_length": 64, "code_dim": 4, "topk": 2, "refine_steps": 2})
    save_checkpoint(small, tmp_path / "dict4.safetensors")
    with _serving(model_dir, tmp_path / "dict4.safetensors") as (srv, c):
        x = _noisy(0.5, 16000)
        for group in ("none", "cluster", "band"):
            r = c.decompose(x, 16000, group=group, fit_steps=0)
            assert 1 <= len(r.labels) <= 4
            # the server's count, as `audioae decompose` writes it (the client wrote 8, the request's default)
            assert r.summary()["groups"] == (None if group == "none" else 4)
        code, msg = _code(c.decompose, x, 16000, group="band", groups=5)
        assert code == CODE.INVALID_ARGUMENT and "groups must be 1..4" in msg, msg


def test_decompose_default_model_file_bytes_no_audio(client):
    data = encode_audio(np.clip(_noisy(0.5, 16000), -1, 1), 16000, subtype="PCM_16")
    r = client.decompose(data)  # the default decomposer, activations only
    assert r.model == "dict" and r.components is None and r.activations.shape[0] == 24
    assert len(r.labels) == len(r.units) == len(r.energy_share) > 0


@pytest.mark.parametrize(
    "model,kw,want,text",
    [
        ("tiny", {}, CODE.INVALID_ARGUMENT, "sparse dictionary"),
        ("dict", {"top_k": -1}, CODE.INVALID_ARGUMENT, "top_k"),
        ("dict", {"group": "zodiac"}, CODE.INVALID_ARGUMENT, "unknown group"),
        ("dict", {"fit_steps": -2}, CODE.INVALID_ARGUMENT, "fit_steps must be 0..100"),
        ("dict", {"fit_steps": 10_000}, CODE.INVALID_ARGUMENT, "fit_steps must be 0..100"),
        ("dict", {"group": "cluster", "groups": 0}, CODE.INVALID_ARGUMENT, "groups must be 1..24"),
        ("dict", {"group": "band", "groups": 25}, CODE.INVALID_ARGUMENT, "groups must be 1..24"),
        ("dict", {"group": "none", "groups": 3}, CODE.INVALID_ARGUMENT, "set group to band or cluster"),
        ("nope", {}, CODE.NOT_FOUND, "unknown model"),
    ],
)
def test_bad_decompose(client, model, kw, want, text):
    code, msg = _code(client.decompose, _noisy(0.3, 16000), 16000, model=model, **kw)
    assert code == want and text in msg, msg


# ---- Encode / Decode ------------------------------------------------------------------------------
def test_encode_decode_spectrogram_model(client, tiny):
    feats = tiny.example_input(2)  # [2, F, 37]
    h = client.encode(feats.numpy(), model="tiny")
    with torch.no_grad():
        np.testing.assert_allclose(h, tiny.encode(feats).numpy(), atol=1e-5)
        out = client.decode(h, model="tiny")
        np.testing.assert_allclose(out, tiny.decode(torch.from_numpy(h)).numpy(), atol=1e-5)


def test_encode_audio_uses_the_model_features(client, tiny):
    x = _noisy(0.5, 16000, channels=2)
    h = client.encode_audio(x, 16000, model="tiny")
    with torch.no_grad():
        want = tiny.encode(tiny.features(tiny.stft(torch.from_numpy(x))))
    np.testing.assert_allclose(h, want.numpy(), atol=1e-5)


def test_encode_decode_image_model(client, model_dir):
    img = load_checkpoint(model_dir / "img.safetensors")
    x = img.example_input(3)
    h = client.encode(x.numpy().astype(np.float64), model="img")  # FP64 in: converted
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).numpy()  # [3, 1, 16, 16]
    assert client.encode(noisy, model="img").shape == h.shape  # noise spreads [0, 1] levels: still encoded
    with torch.no_grad():
        np.testing.assert_allclose(h, img.encode(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(
            client.decode(h, model="img"), img.decode(torch.from_numpy(h)).numpy(), atol=1e-5
        )


def _tensor(shape, datatype="FP32", data=None):
    n = int(np.prod(shape))
    return pb.Tensor(
        shape=shape, datatype=datatype, data=np.zeros(n, "<f4").tobytes() if data is None else data
    )


BAD_TENSORS = {
    "maxunpool decode": ("Decode", "conv", _tensor([1, 8, 4]), CODE.INVALID_ARGUMENT, "pooling indices"),
    "wrong bins": ("Encode", "tiny", _tensor([1, 100, 5]), CODE.INVALID_ARGUMENT, "[B, 257, N]"),
    "image wrong shape": ("Encode", "img", _tensor([1, 1, 8, 8]), CODE.INVALID_ARGUMENT, "[B, 1, 16, 16]"),
    "code wrong size": ("Decode", "tiny", _tensor([1, 5, 7]), CODE.INVALID_ARGUMENT, "codes of shape [B, 16, N]"),
    # The image model's own check saw only the one-item probe of the answer's size, and named its
    # shape: "image model expects [B, 1, 16, 16], got [1, 1, 8, 8]", "... decodes codes [B, 32], got [1]".
    "image batch of the wrong shape": ("Encode", "img", _tensor([2, 1, 8, 8]), CODE.INVALID_ARGUMENT,
                                       "model 'img' encodes [B, 1, 16, 16], got shape [2, 1, 8, 8]"),
    "image code without batch": ("Decode", "img", _tensor([32]), CODE.INVALID_ARGUMENT,
                                 "model 'img' decodes codes of shape [B, 32], as its Encode returns them, got shape [32]"),
    "image with an extra axis": ("Encode", "img", _tensor([2, 1, 16, 16, 1]), CODE.INVALID_ARGUMENT,
                                 "model 'img' encodes [B, 1, 16, 16], got shape [2, 1, 16, 16, 1]"),
    "image code with an extra axis": ("Decode", "img", _tensor([2, 32, 3]), CODE.INVALID_ARGUMENT,
                                      "model 'img' decodes codes of shape [B, 32], as its Encode returns them, "
                                      "got shape [2, 32, 3]"),
    "code without batch": ("Decode", "tiny", _tensor([16, 7]), CODE.INVALID_ARGUMENT, "got shape [16, 7]"),
    "code of no frames": ("Decode", "tiny", _tensor([1, 16, 0]), CODE.INVALID_ARGUMENT, "(N >= 1 frames)"),
    "no frames": ("Encode", "tiny", _tensor([1, 257, 0]), CODE.INVALID_ARGUMENT, "(N >= 1 frames)"),
    "byte count": (
        "Encode",
        "tiny",
        _tensor([1, 257, 5], data=b"\x00" * 12),
        CODE.INVALID_ARGUMENT,
        "needs 5140",
    ),
    "datatype": (
        "Encode",
        "tiny",
        _tensor([1, 257, 5], "COMPLEX"),
        CODE.INVALID_ARGUMENT,
        "datatype 'COMPLEX'",
    ),
    "negative shape": ("Encode", "tiny", _tensor([1, -257, 5], data=b""), CODE.INVALID_ARGUMENT, "negative"),
    # 2**40 * 2**40 elements: np.prod wraps to 0, which matched the empty data
    "shape overflowing int64": (
        "Encode",
        "tiny",
        _tensor([2**40, 2**40], data=b""),
        CODE.INVALID_ARGUMENT,
        "0 bytes of data, but shape [1099511627776, 1099511627776] of FP32 needs 483570327",
    ),
    "nan": (
        "Encode",
        "tiny",
        _tensor([1, 257, 1], data=np.full(257, np.nan, "<f4").tobytes()),
        CODE.INVALID_ARGUMENT,
        "NaN",
    ),
    "no model": ("Encode", "", _tensor([1, 257, 5]), CODE.INVALID_ARGUMENT, "needs a model name"),
    # Finite FP64 beyond float32 became Inf on conversion, and the answer was all NaN (OK).
    "FP64 beyond float32": (
        "Encode",
        "tiny",
        _tensor([1, 257, 1], "FP64", data=np.full(257, 1e300, "<f8").tobytes()),
        CODE.INVALID_ARGUMENT,
        "tensor: values up to 1e+300 are beyond float32's range (3.4e+38)",
    ),
    # Finite float32 the model's arithmetic overflows on: answered OK, all NaN.
    "features overflowing the model": (
        "Encode",
        "dict",
        _tensor([1, 257, 1], data=np.full(257, 1e20, "<f4").tobytes()),
        CODE.INVALID_ARGUMENT,
        "encoding a tensor of shape [1, 257, 1] gave NaN or Inf: the model's float32 arithmetic overflows "
        "on values this large (largest magnitude 1e+20)",
    ),
    "code overflowing the model": (
        "Decode",
        "dict",
        _tensor([1, 24, 1], data=np.full(24, 3e38, "<f4").tobytes()),
        CODE.INVALID_ARGUMENT,
        "decoding a code of shape [1, 24, 1] gave NaN or Inf",
    ),
    # 0.8 MB of INT8 code decodes to 51 MB of float32 (257 bins per 16 units), over this server's
    # 4 MB answers: refused before it runs (was: computed, then protobuf's serialisation error,
    # INTERNAL; for the shipped model 57 MB of code took 9 GB and 39 s)
    "answer over the send limit": (
        "Decode",
        "tiny",
        _tensor([1, 16, 50_000], "INT8", data=np.ones(16 * 50_000, np.int8).tobytes()),
        CODE.RESOURCE_EXHAUSTED,
        "would answer 49 MB of float32, over this server's 4 MB answer limit: send at most 3,8",
    ),
    "unknown model": ("Decode", "nope", _tensor([1, 16, 5]), CODE.NOT_FOUND, "unknown model"),
    # An image model's pixels are [0, 1] levels, as reconstruct_image requires: 0..255 levels were
    # encoded, OK, to a code of nonsense.
    "image of 0..255 levels": (
        "Encode",
        "img",
        _tensor([2, 1, 16, 16], data=np.linspace(0, 255, 512, dtype="<f4").tobytes()),
        CODE.INVALID_ARGUMENT,
        "model 'img' encodes images: grey levels in [0, 1] expected (noise may spread them), but 98% of the "
        "tensor spans 2.55..252.5 and all of it 0..255; accepted: 98% within -4..5 and all within +-64; "
        "for 0..255 levels send the levels divided by 255",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_encode_decode(client, tiny, case):
    rpc, model, tensor, want, text = BAD_TENSORS[case]
    if rpc == "Encode":
        req = pb.EncodeRequest(model=model, tensor=tensor)
    else:
        req = pb.DecodeRequest(model=model, code=tensor)
    code, msg = _code(getattr(client.stub, rpc), req, timeout=30)
    assert code == want, msg
    assert text in msg, msg
    # The refusal left the RPC working: a good request still gets the library's answer.
    feats = tiny.example_input(1)  # [1, F, N]
    with torch.no_grad():
        h = tiny.encode(feats)  # [1, code_dim, N']
        if rpc == "Encode":
            got, ref = client.encode(feats.numpy(), model="tiny"), h
        else:
            got, ref = client.decode(h.numpy(), model="tiny"), tiny.decode(h)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def test_a_vector_model_takes_a_batch_of_vectors(model_dir, tmp_path):
    torch.manual_seed(0)
    vec = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": 16})
    save_checkpoint(vec, tmp_path / "vec.safetensors")
    with _serving(model_dir, tmp_path / "vec.safetensors") as (_, c):
        x = vec.example_input(3)  # [3, 64]
        with torch.no_grad():
            h = vec.encode(x)  # [3, 16]
            np.testing.assert_allclose(c.encode(x.numpy(), model="vec"), h.numpy(), atol=1e-6)
            np.testing.assert_allclose(c.decode(h.numpy(), model="vec"), vec.decode(h).numpy(), atol=1e-6)
        # one vector without its batch dimension: was INTERNAL "IndexError: Dimension out of range"
        code, msg = _code(c.stub.Encode, pb.EncodeRequest(model="vec", tensor=_tensor([64])), timeout=30)
        assert (code, msg) == (CODE.INVALID_ARGUMENT, "model 'vec' encodes [B, 64], got shape [64]")
        code, msg = _code(c.stub.Decode, pb.DecodeRequest(model="vec", code=_tensor([16])), timeout=30)
        assert code == CODE.INVALID_ARGUMENT and "got shape [16]" in msg, msg
        # checked whole against [B, 64]: [2, 64, 5] was encoded, OK, as ten vectors
        for shape in ([2, 63], [2, 64, 5], [2, 5, 64]):
            code, msg = _code(c.stub.Encode, pb.EncodeRequest(model="vec", tensor=_tensor(shape)), timeout=30)
            assert (code, msg) == (CODE.INVALID_ARGUMENT, f"model 'vec' encodes [B, 64], got shape {shape}")
        for shape in ([2, 15], [2, 16, 5]):
            code, msg = _code(c.stub.Decode, pb.DecodeRequest(model="vec", code=_tensor(shape)), timeout=30)
            assert (code, msg) == (CODE.INVALID_ARGUMENT, f"model 'vec' decodes codes of shape [B, 16], as its "
                                                          f"Encode returns them, got shape {shape}")
        # no audio frames: no code frame rate (ListModels said 125.0, the config's unused audio defaults)
        info = c.list_models()["models"][0]
        assert (info["code_frame_rate"], info["sample_rate"], info["latency_ms"]) == (None, 0, None)
        resp = c.stub.Encode(pb.EncodeRequest(model="vec", tensor=tensor_message(x.numpy())), timeout=30)
        assert not resp.HasField("frame_rate")


def test_an_image_model_encodes_inputs_as_noisy_as_its_training_data(model_dir, tmp_path):
    """The pixel check's band grows with the model's noise_std: a model trained under Gaussian noise
    of std 2 had its own training inputs refused (98% of them had to lie within -3..4); 0..255
    levels are still refused."""
    from sklearn.datasets import load_digits

    from audioae.models.image import corrupt_images

    model = build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8,
                                  "corruption": "gaussian", "noise_std": 2.0})
    save_checkpoint(model, tmp_path / "noisy.safetensors")
    digits = torch.tensor(load_digits().images[:, None] / 16, dtype=torch.float32)  # [1797, 1, 8, 8]
    noisy = corrupt_images(digits, model.config, torch.Generator().manual_seed(0))
    with _serving(model_dir, tmp_path / "noisy.safetensors") as (_, c):
        for one in noisy[:200]:  # one digit a call: the check is per tensor
            assert c.encode(one[None].numpy(), model="noisy").shape == (1, 8)
        code, msg = _code(c.stub.Encode, pb.EncodeRequest(model="noisy", tensor=tensor_message(
            (digits[:1] * 255).numpy())), timeout=30)
        assert code == CODE.INVALID_ARGUMENT and "for 0..255 levels send the levels divided by 255" in msg, msg


def _stream_config_only(stub, model: str):
    cfg = pb.StreamConfig(model=model, sample_rate=16000, channels=1, format=pb.FLOAT32)
    return list(stub.StreamDenoise(iter([pb.StreamDenoiseRequest(config=cfg), _AUDIO]), timeout=30))


LONG_FIELDS = {  # rpc, request, status, the message's start, the length it names
    "model name": ("Denoise", pb.DenoiseRequest(model="m" * 20_000, audio=_pcm(_ONE_SECOND)), CODE.NOT_FOUND,
                   "unknown model 'mmm", "20,000"),
    "stream model name": ("StreamDenoise", "m" * 20_000, CODE.NOT_FOUND, "unknown model 'mmm", "20,000"),
    "decode model name": ("Decode", pb.DecodeRequest(model="m" * 20_000, code=_tensor([1, 16, 5])),
                          CODE.NOT_FOUND, "unknown model 'mmm", "20,000"),
    "group": ("Decompose", pb.DecomposeRequest(model="dict", audio=_pcm(_ONE_SECOND), group="g" * 100_000),
              CODE.INVALID_ARGUMENT, "unknown group 'ggg", "100,000"),
    "datatype": ("Encode", pb.EncodeRequest(model="tiny", tensor=_tensor([1, 257, 5], "T" * 100_000, data=b"")),
                 CODE.INVALID_ARGUMENT, "tensor: datatype 'TTT", "100,000"),
}


@pytest.mark.parametrize("case", list(LONG_FIELDS))
def test_a_long_string_in_a_request_is_clipped_where_the_message_quotes_it(client, case):
    """Quoted whole, a 20,000-character model name made the status message too large for gRPC's
    metadata limit: the caller got RESOURCE_EXHAUSTED "Stream removed (received metadata size
    exceeds hard limit ...)" where the server meant NOT_FOUND."""
    rpc, req, want, start, length = LONG_FIELDS[case]
    if rpc == "StreamDenoise":
        code, msg = _code(_stream_config_only, client.stub, req)
    else:
        code, msg = _code(getattr(client.stub, rpc), req, timeout=30)
    assert code == want, msg[:300]
    assert start in msg and f"... ({length} characters)" in msg, msg[:300]
    assert len(msg) < 400 and msg.count(start[-1]) <= 90, msg[:300]
    assert client.health() == "SERVING"


@pytest.mark.parametrize("text", ["x" * 100_000, "\u00e9" * 100_000, "%" * 5000 + "ok", "\U0001f600" * 2000])
def test_a_status_message_is_clipped_to_what_grpc_carries(text):
    """Whatever the message (an internal error's text, a library's), it reaches the caller: gRPC
    percent-encodes it into a trailer a client refuses beyond 16 kB (8 kB at its soft limit)."""
    code, msg = status_of(Abort(CODE.INVALID_ARGUMENT, text))
    assert code == CODE.INVALID_ARGUMENT
    assert msg.endswith(f" ... (clipped: the message had {len(text):,} characters)")
    wire = sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in msg.encode())
    assert MAX_STATUS_BYTES - 12 < wire <= MAX_STATUS_BYTES
    assert status_of(ValueError("short")) == (CODE.INVALID_ARGUMENT, "short")


@pytest.mark.parametrize("method", ["Denoise", "Decompose", "Encode", "Decode", "ListModels"])
def test_bytes_protobuf_cannot_parse_are_invalid_argument_not_internal(client, method):
    """grpcio's own answer was INTERNAL 'Exception deserializing request!': a server fault to
    anyone's monitoring, for what a broken client sent."""
    raw = client.channel.unary_unary(f"/audioae.v1.AudioAE/{method}", request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
    code, msg = _code(raw, b"\xff\xff\xff", timeout=30)
    assert code == CODE.INVALID_ARGUMENT, msg
    assert f"not a valid audioae.v1.{method}Request message: protobuf could not parse its 3 bytes" in msg, msg


def test_a_stream_message_protobuf_cannot_parse_is_invalid_argument(client):
    raw = client.channel.stream_stream("/audioae.v1.AudioAE/StreamDenoise", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
    config = pb.StreamDenoiseRequest(config=pb.StreamConfig(model="tiny", sample_rate=16000, channels=1,
                                                            format=pb.FLOAT32)).SerializeToString()
    code, msg = _code(lambda: list(raw(iter([config, b"\xff\xff\xff"]), timeout=30)))
    assert code == CODE.INVALID_ARGUMENT, msg
    assert "the 2nd message: the request is not a valid audioae.v1.StreamDenoiseRequest" in msg, msg
    code, msg = _code(lambda: list(raw(iter([b"\xff\xff\xff"]), timeout=30)))  # was "message 0"
    assert code == CODE.INVALID_ARGUMENT, msg
    assert "the 1st message, which should be the StreamConfig: the request is not a valid" in msg, msg
    assert client.health() == "SERVING"


def test_stream_messages_are_named_by_ordinals():
    from audioae.server.servicer import _nth

    assert [_nth(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th", "112th"]


def test_encode_conv_maxunpool_works(client):
    h = client.encode(np.zeros((1, 257, 9), np.float32), model="conv")
    assert h.shape == (1, 8, 5)


# ---- ListModels, reflection, metrics --------------------------------------------------------------
def test_list_models(client, model_dir):
    info = client.list_models()
    by = {m["name"]: m for m in info["models"]}
    assert list(by) == ["tiny", "conv", "img", "dict"]
    assert info["default_denoiser"] == "tiny" and info["default_decomposer"] == "dict"
    assert by["tiny"]["rpcs"] == ["Denoise", "StreamDenoise", "Encode", "Decode"] and by["tiny"]["causal"]
    # a decomposer's Denoise was its reconstruction, noise included: listed and answered until 2026-12-07
    assert by["dict"]["rpcs"] == ["Decompose", "Encode", "Decode"]
    assert by["img"]["rpcs"] == ["Encode", "Decode"] and by["img"]["sample_rate"] == 0
    # max-unpooling needs the encoder's indices, which Decode cannot be sent: it refuses every call
    assert by["conv"]["rpcs"] == ["Denoise", "Encode"]
    assert (
        by["tiny"]["sample_rate"] == 16000 and by["tiny"]["code_dim"] == 16 and by["tiny"]["latency_ms"] > 0
    )
    assert by["tiny"]["sha256"] == sha256_file(model_dir / "tiny.safetensors")
    tiny = load_checkpoint(model_dir / "tiny.safetensors")  # a count, not protobuf JSON's int64 string
    assert by["tiny"]["parameters"] == sum(p.numel() for p in tiny.parameters())
    # code frames per second of audio: 16 kHz / hop 128, and the conv model's one level pools time by 2
    assert [by[n]["code_frame_rate"] for n in ("tiny", "conv", "img", "dict")] == [125.0, 62.5, None, 125.0]


def test_encode_says_how_many_code_frames_a_second_of_audio_makes(client):
    """A caller of Encode had no hop length to put the code's frames on a time axis."""
    x = _noisy(2.0, 16000)
    for name, rate in (("tiny", 125.0), ("conv", 62.5)):
        resp = client.stub.Encode(pb.EncodeRequest(model=name, audio=pb.Audio(pcm=pcm_message(x, 16000, "float32"))),
                                  timeout=60)
        frames = array_from_tensor(resp.code, "code").shape[-1]
        assert resp.frame_rate == rate and abs(frames / resp.frame_rate - 2.0) <= 1.0 / rate + 1e-9, (name, frames)
    img = client.stub.Encode(pb.EncodeRequest(model="img", tensor=tensor_message(np.zeros((1, 1, 16, 16), "<f4"))),
                             timeout=60)
    assert not img.HasField("frame_rate")  # unset, as from a server older than frame_rate: no rate to give


def test_reflection_lists_the_service(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert "audioae.v1.AudioAE" in services and "grpc.health.v1.Health" in services


def _metric(text: str, sample: str) -> float:
    return sample_value(text, sample, absent=0.0)


def test_prometheus_metrics(server, client):
    def page() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()

    ok, refused = 'audioae_requests_total{code="OK",method="Denoise"}', \
        'audioae_requests_total{code="INVALID_ARGUMENT",method="Denoise"}'
    before = page()
    client.denoise(_noisy(0.3, 16000), 16000, model="tiny")
    with pytest.raises(grpc.RpcError) as err:  # was: relied on earlier tests' refusals being counted
        client.denoise(_noisy(0.3, 16000), 16000, model="tiny", strength=2.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = page()
    assert _metric(text, ok) == _metric(before, ok) + 1
    assert _metric(text, refused) == _metric(before, refused) + 1
    for needle in (
        "audioae_queue_seconds_bucket",
        'audioae_compute_seconds_count{kind="denoise"}',
        "audioae_batch_size_bucket",
        'audioae_audio_seconds_total{method="Denoise"}',
        "audioae_queue_depth",
    ):
        assert needle in text, needle


def test_the_client_pointed_at_the_metrics_port_is_told_it_is_not_grpc(server, capsys):
    """grpc alone says "Failed parsing HTTP/2 (Expected SETTINGS frame ...)"."""
    assert cli_main(["client", "--server", f"127.0.0.1:{server.metrics_port}", "--timeout", "10", "models"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "does not speak gRPC: an HTTP server, such as the metrics port?" in err, err


def test_what_list_models_lists_is_what_each_model_answers(client):
    """ListModels' rpcs and the servicer read one test (ServedModel.refusal): every RPC a model
    lists is answered, every other refused with INVALID_ARGUMENT. A decomposer listed Denoise and
    answered its reconstruction of the input, noise included, until 2026-12-07."""
    x = _noisy(0.3, 16000)
    image = np.zeros((1, 1, 16, 16), np.float32)
    code = {m: client.encode(image, model=m) if m == "img" else client.encode_audio(x, 16000, model=m)
            for m in ("tiny", "conv", "img", "dict")}
    calls = {
        "Denoise": lambda m: client.denoise(x, 16000, model=m),
        "StreamDenoise": lambda m: list(client.stream([x], 16000, 1, model=m)),
        "Decompose": lambda m: client.decompose(x, 16000, model=m, top_k=2, fit_steps=0),
        "Encode": lambda m: code[m],  # above: every model encodes
        "Decode": lambda m: client.decode(code[m], model=m),
    }
    for m in client.list_models()["models"]:
        for rpc, call in calls.items():
            if rpc in m["rpcs"]:
                call(m["name"])
            else:
                status, msg = _code(lambda: call(m["name"]))  # noqa: B023 (called at once)
                assert status == CODE.INVALID_ARGUMENT and f"model {m['name']!r}" in msg, (m["name"], rpc, msg)
    status, msg = _code(lambda: client.denoise(x, 16000, model="dict"))
    assert msg == ("model 'dict' is a decomposition model (sparse_dict): its output would be its reconstruction of "
                   "the input, noise included, not a denoised copy; use Decompose with it; models here that denoise: "
                   "tiny, conv"), msg


def test_client_denoise_with_a_decomposition_model_is_refused_before_any_audio_is_sent(server, tmp_path, capsys):
    # was a warning, then the decomposer's reconstruction, noise and all (the server now refuses it)
    src = tmp_path / "in.wav"
    sf.write(src, _noisy(0.5, 16000)[0], 16000)
    base = ["client", "--server", f"127.0.0.1:{server.port}", "--timeout", "30"]
    assert cli_main([*base, "denoise", str(src), "-o", str(tmp_path / "a.wav"), "--model", "dict"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("audioae client: error: model 'dict' is a decomposition model: its output would be its "
                           "reconstruction of the input, noise included, not a denoised copy (`audioae client "
                           "decompose` splits a file with it); the models this server denoises with (--model): "
                           "tiny, conv"), err
    assert not (tmp_path / "a.wav").exists()
    assert cli_main([*base, "denoise", str(src), "-o", str(tmp_path / "b.wav"), "--model", "tiny"]) == 0


@pytest.mark.parametrize(("flags", "text"), [
    (["--server", "127.0.0.1:99999"], "the port must be within 1..65535, got 99999"),  # gRPC: 99999 mod 65536
    (["--server", "localhost"], "expected HOST:PORT (e.g. 127.0.0.1:50051), got 'localhost'"),  # gRPC: port 443
    (["--timeout", "0"], "must be more than 0 seconds, got 0"),  # was: ignored by health, instant DEADLINE_EXCEEDED
    (["--timeout", "nan"], "must be more than 0 seconds, got nan")])
def test_client_addresses_and_deadlines_are_checked_before_any_call(flags, text, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["client", *flags, "health"])
    assert info.value.code == 2 and text in capsys.readouterr().err


def test_the_client_pointed_at_a_closed_port_is_told_nothing_listens(capsys):
    with socket.socket() as s:  # a port that was free a moment ago, and nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli_main(["client", "--server", f"127.0.0.1:{port}", "--timeout", "10", "health"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "nothing listens there: start audioae serve" in err, err


# ---- health transitions and drain (in process) ---------------------------------------------------
def _health_list(c: Client) -> dict[str, str]:
    """grpc.health.v1's List: service name -> status name."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    resp = health_pb2_grpc.HealthStub(c.channel).List(health_pb2.HealthListRequest(), timeout=5)
    return {k: health_pb2.HealthCheckResponse.ServingStatus.Name(v.status) for k, v in resp.statuses.items()}


def test_health_transitions_and_drain(model_dir):
    srv = AudioServer(_config(model_dir, models=(str(model_dir / "tiny.safetensors"),), metrics_port=None))
    srv.start()
    c = Client(f"127.0.0.1:{srv.port}", timeout=30)
    try:
        assert c.health() == "NOT_SERVING" and c.health("audioae.v1.AudioAE") == "NOT_SERVING"
        code, msg = _code(c.list_models)
        assert code == CODE.UNAVAILABLE and "loading" in msg
        srv.load()
        assert c.health() == "SERVING" and c.health("audioae.v1.AudioAE") == "SERVING"
        assert _health_list(c) == {"": "SERVING", "audioae.v1.AudioAE": "SERVING"}  # was UNIMPLEMENTED, a traceback
        # A misspelt service: the protocol's NOT_FOUND, with the names it could have been (was: no words)
        code, msg = _code(c.health, "audioae.v1.Audioae")
        assert code == CODE.NOT_FOUND
        assert msg == "no health status for service 'audioae.v1.Audioae'; this server reports '', 'audioae.v1.AudioAE'"
        # A stream in flight when the drain starts finishes normally; new calls are refused.
        go_on, outs = threading.Event(), []
        x = _noisy(1.0, 16000)

        def chunks():
            yield x[:, :8000]
            go_on.wait(30)
            yield x[:, 8000:]

        reader = threading.Thread(target=lambda: outs.extend(c.stream(chunks(), 16000, 1, model="tiny")))
        reader.start()
        assert _wait_until(lambda: srv.gate.inflight == 1)
        drained = []
        drainer = threading.Thread(target=lambda: drained.append(srv.drain(timeout=30)))
        drainer.start()
        assert _wait_until(lambda: c.health() == "NOT_SERVING")
        assert set(_health_list(c).values()) == {"NOT_SERVING"}
        code, msg = _code(c.denoise, x, 16000)
        assert code == CODE.UNAVAILABLE and "shutting down" in msg
        go_on.set()
        reader.join(30)
        drainer.join(30)
        assert drained == [True]
        assert np.concatenate(outs, -1).shape == x.shape
    finally:
        c.close()
        srv.stop()


# ---- auth and TLS ---------------------------------------------------------------------------------
def _self_signed_openssl(tmp: Path) -> tuple[Path, Path]:
    """The same certificate with the openssl command, where the cryptography package is missing."""
    if shutil.which("openssl") is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key_path),
                    "-out", str(cert_path), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert_path, key_path


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    try:
        from cryptography import x509
    except ImportError:
        return _self_signed_openssl(tmp)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def secure_server(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(tmp)
    (tmp / "tokens").write_text("# rotation: old and new\nold-secret\nnew-secret\n")
    srv = AudioServer(
        _config(
            model_dir,
            models=(str(model_dir / "tiny.safetensors"),),
            metrics_port=None,
            token_file=str(tmp / "tokens"),
            tls_cert=str(cert),
            tls_key=str(key),
        )
    )
    srv.start()
    srv.load()
    yield srv, cert
    srv.stop()


def test_tls_and_bearer_token(secure_server):
    srv, cert = secure_server
    target = f"127.0.0.1:{srv.port}"
    x = _noisy(0.3, 16000)
    for token in ("old-secret", "new-secret"):
        with Client(target, token=token, tls_ca=cert, timeout=30) as c:
            assert c.denoise(x, 16000).shape == x.shape
            streamed = list(c.stream([x], 16000, 1))
            assert sum(chunk.shape[-1] for chunk in streamed) == x.shape[-1]  # the whole input came back
    for token, text in ((None, "missing bearer token"), ("wrong", "invalid bearer token")):
        with Client(target, token=token, tls_ca=cert, timeout=30) as c:
            assert c.health() == "SERVING"  # health stays open for probes
            for call in (lambda: c.denoise(x, 16000), lambda: list(c.stream([x], 16000, 1)), c.list_models):
                code, msg = _code(call)
                assert code == CODE.UNAUTHENTICATED and text in msg
    with Client(target, token="new-secret", timeout=5) as c:  # plaintext to a TLS port
        code, _ = _code(c.list_models)
        assert code == CODE.UNAVAILABLE


def test_tls_files_that_are_not_pem_are_named_on_both_sides(model_dir, tmp_path, capsys):
    """gRPC alone: the server 'cannot listen' (as if the port were taken), the client fails every
    call with 'Failed to create security handshaker'."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    srv = AudioServer(_config(model_dir, models=(str(model_dir / "tiny.safetensors"),), metrics_port=None,
                              tls_cert=str(bad), tls_key=str(bad)))
    with pytest.raises(RuntimeError, match=re.escape(f"--tls-cert {bad} and --tls-key {bad} are not a PEM "
                                                     "certificate chain and its private key")):
        srv.start()
    assert not srv.port
    assert cli_main(["client", "--tls-ca", str(bad), "--server", "127.0.0.1:1", "health"]) == 2
    assert f"--tls-ca {bad}: no PEM certificate in it" in capsys.readouterr().err
    assert cli_main(["client", "--tls-ca", str(tmp_path / "none.pem"), "--server", "127.0.0.1:1", "health"]) == 2
    assert f"--tls-ca {tmp_path / 'none.pem'}: No such file or directory" in capsys.readouterr().err


def test_cli_client_says_when_a_plaintext_call_meets_a_tls_server(secure_server, capsys):
    srv, _ = secure_server
    assert cli_main(["client", "health", "--server", f"127.0.0.1:{srv.port}", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "pass --tls-ca" in err, err  # grpc alone says only "Socket closed"


# ---- the `audioae client` command ----------------------------------------------------------------
def test_cli_client_commands(server, tmp_path, capsys):
    addr = f"127.0.0.1:{server.port}"
    src = tmp_path / "noisy.flac"
    x = np.clip(_noisy(0.8, 24000, 2), -1, 1)
    sf.write(src, x.T, 24000, subtype="PCM_16")
    assert cli_main(["client", "denoise", str(src), "--server", addr, "--model", "tiny"]) == 0
    out = tmp_path / "noisy.denoised.flac"
    info = sf.info(out)
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (24000, x.shape[-1], 2, "PCM_16")
    assert (
        cli_main(
            [
                "client",
                "stream",
                str(src),
                "-o",
                str(tmp_path / "s.wav"),
                "--server",
                addr,
                "--chunk-ms",
                "37",
            ]
        )
        == 0
    )
    a, _ = sf.read(out, always_2d=True)
    b, _ = sf.read(tmp_path / "s.wav", always_2d=True)
    np.testing.assert_allclose(a, b, atol=2 / 32768)  # streamed == offline, both quantized to 16 bits
    assert (
        cli_main(
            ["client", "decompose", str(src), "-o", str(tmp_path / "comp"), "--top-k", "2", "--server", addr]
        )
        == 0
    )
    assert len(list((tmp_path / "comp").glob("[0-9][0-9]_*.wav"))) == 2
    assert (tmp_path / "comp" / "residual.wav").is_file() and (tmp_path / "comp" / "summary.json").is_file()
    comp2 = str(tmp_path / "comp2")  # local decompose's flag names work too, and --fit reaches the server
    assert cli_main(["client", "decompose", str(src), "-o", comp2, "--top", "1", "--fit", "0", "--server", addr]) == 0
    assert len(list((tmp_path / "comp2").glob("[0-9][0-9]_*.wav"))) == 1
    assert cli_main(["client", "decompose", str(src), "-o", comp2, "--groups", "2", "--server", addr]) == 0
    assert 1 <= len(list((tmp_path / "comp2").glob("[0-9][0-9]_*.wav"))) <= 2
    assert cli_main(["client", "decompose", str(src), "-o", comp2, "--fit", "-1", "--server", addr]) == 2
    assert "fit_steps must be" in capsys.readouterr().err
    assert cli_main(["client", "models", "--server", addr]) == 0
    assert cli_main(["client", "health", "--server", addr]) == 0
    capsys.readouterr()
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    assert cli_main(["client", "denoise", str(tmp_path / "bad.wav"), "--server", addr]) == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "cannot read audio" in err
    assert not (tmp_path / "bad.denoised.wav").exists()


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_stream_cancelled_or_timed_out_stops_server_work(server, client, how):
    label = "CANCELLED" if how == "cancel" else "DEADLINE_EXCEEDED"

    def count():
        return (
            server.metrics.registry.get_sample_value(
                "audioae_requests_total", {"method": "StreamDenoise", "code": label}
            )
            or 0.0
        )

    # Earlier tests' calls must have left: otherwise "in flight" below could count one of them
    # and the cancel could land before this stream's handler has started.
    assert _wait_until(lambda: server.gate.inflight == 0)
    before, stop = count(), threading.Event()

    def msgs():
        yield pb.StreamDenoiseRequest(config=_CFG)
        yield _AUDIO
        stop.wait(30)  # the client never closes its side

    call = client.stub.StreamDenoise(msgs(), timeout=30 if how == "cancel" else 1.0)
    if how == "cancel":
        assert _wait_until(lambda: server.gate.inflight >= 1)
        call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    stop.set()
    assert info.value.code() == getattr(CODE, label)
    assert _wait_until(lambda: count() == before + 1), server.metrics.text()  # the handler ended, counted
    assert _wait_until(lambda: server.gate.inflight == 0)
    assert client.health() == "SERVING"


@pytest.mark.parametrize(("flags", "text"), [
    (["--port", "70000"], "port (--port) must be within [0, 65535]"),
    (["--metrics-port", "-1"], "metrics_port (--metrics-port) must be within"),
    (["--max-streams", "0"], "max_streams (--max-streams) must be >= 1, got 0"),
    (["--max-queue", "0"], "max_queue (--max-queue) must be >= 1, got 0"),
    (["--tls-cert", "cert.pem"], "TLS needs both"),
    (["--max-request-mb", "0"], "max_request_mb (--max-request-mb) must be positive"),
    (["--max-request-mb", "3000"], "max_request_mb (--max-request-mb) must be below 2048 (a gRPC message is at most 2 GB)"),
    (["--max-batch-seconds", "-1"], "max_batch_seconds (--max-batch-seconds) must be >= 0 (0: no batching), got -1"),
    (["--max-delay-ms", "-5"], "max_delay_ms (--max-delay-ms) must be >= 0 (0: no wait), got -5"),
    (["--threads", "-1"], "torch_threads (--threads) must be >= 0 (0: torch's default)"),
    # was a crash as torch made the threads (exit 139)
    (["--threads", "99999"], "torch_threads (--threads) must be at most")])
def test_bad_server_settings_are_refused_before_anything_loads(flags, text, capsys):
    assert cli_main(["serve", *flags]) == 2  # gRPC alone would bind port 70000 as 4464
    assert text in capsys.readouterr().err


def test_a_large_request_limit_keeps_answers_within_what_grpc_can_carry():
    from audioae.server.config import ServerConfig

    c = ServerConfig(max_request_mb=1000)  # 4x would be 4000 MB: grpcio raised OverflowError at start
    assert c.max_message_bytes == 1000 * 2**20 and c.max_send_bytes == 2**31 - 1


@pytest.mark.parametrize(("taken", "text"), [("metrics_port", "cannot serve metrics on 127.0.0.1:{busy} (Address already in use"),
                                           ("port", "cannot listen on 127.0.0.1:{busy} (in use")])
def test_a_taken_port_is_a_plain_error_and_nothing_stays_bound(model_dir, taken, text):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        srv = AudioServer(_config(model_dir, models=(str(model_dir / "tiny.safetensors"),), **{taken: busy}))
        with pytest.raises(RuntimeError, match=re.escape(text.format(busy=busy))):
            srv.start()  # was an OSError traceback (metrics), or grpcio's "Failed to bind ... GRPC_VERBOSITY"
    assert not srv.port  # the gRPC port: refused before binding, or never bound
    assert srv.metrics._http is None  # /metrics: never started, or shut down again


def test_a_checkpoint_path_holding_an_equals_sign_is_a_path(model_dir, tmp_path):
    """Was: "runs/lr=1e-3/best.safetensors" split as the name "runs/lr" and the path "1e-3/..."."""
    from audioae.server.store import _split_spec

    run = tmp_path / "runs" / "lr=1e-3"
    run.mkdir(parents=True)
    shutil.copy(model_dir / "tiny.safetensors", run / "best.safetensors")
    spec = str(run / "best.safetensors")
    assert _split_spec(spec) == (None, spec)
    assert _split_spec(f"fast={spec}") == ("fast", spec)
    assert _split_spec("runs/lr=2e-3/missing.safetensors") == (None, "runs/lr=2e-3/missing.safetensors")
    with pytest.raises(ValueError, match="NAME=PATH needs a name and a path"):
        _split_spec("=x.safetensors")
    srv = AudioServer(_config(model_dir, models=(spec,), metrics_port=None))
    srv.start()
    try:
        srv.load()
        with Client(f"127.0.0.1:{srv.port}", timeout=30) as c:
            assert [m["name"] for m in c.list_models()["models"]] == ["best"]
    finally:
        srv.stop()


def _refused_at_load(model_dir: Path, models: tuple[str, ...]) -> str:
    """What a real server (bound on 127.0.0.1) says when loading ``models`` fails: what
    `audioae serve` prints after "error:"."""
    srv = AudioServer(_config(model_dir, models=models, metrics_port=None, codec_workers=0))
    srv.start()
    try:
        with pytest.raises((RuntimeError, ValueError)) as info:
            srv.load()
    finally:
        srv.stop()
    return str(info.value)


def test_a_model_that_fails_its_warm_up_is_named(model_dir, tmp_path):
    """Was only "the model's output holds NaN or Inf samples ...": with several --models, which?"""
    torch.manual_seed(0)
    broken = build_model("recurrent", {"hidden": 16, "code_dim": 8})
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))  # as a diverged training run leaves it
    (tmp_path / "lrinf").mkdir()
    save_checkpoint(broken, tmp_path / "lrinf" / "last.safetensors")
    path = tmp_path / "lrinf" / "last.safetensors"
    said = _refused_at_load(model_dir, (str(model_dir / "tiny.safetensors"), str(path)))
    assert said.startswith(f"model 'last' ({path}) failed its warm-up on noise: the model's output holds NaN"), said
    said = _refused_at_load(model_dir, (f"fast={path}",))
    assert said.startswith(f"model 'fast' ({path}) failed its warm-up"), said


def test_each_model_is_warmed_up_through_the_rpcs_it_serves(model_dir, monkeypatch, caplog):
    """A sparse dictionary was warmed through denoise(), which the server refuses it, and never
    through decompose(), which its first Decompose then paid for; nor was any model's Decode path
    warmed. The real functions run, counted; the log says which RPCs each was warmed for."""
    import logging

    import audioae.server.store as store_module

    ran: dict[str, list] = {"denoise": [], "decompose": []}

    def counted(what: str, fn):
        def call(model, *args, **kwargs):
            ran[what].append(model)
            return fn(model, *args, **kwargs)
        return call

    monkeypatch.setattr(store_module, "denoise", counted("denoise", store_module.denoise))
    monkeypatch.setattr(store_module, "decompose", counted("decompose", store_module.decompose))
    caplog.set_level(logging.INFO, logger="audioae.server.store")
    srv = AudioServer(_config(model_dir, metrics_port=None, codec_workers=0))
    srv.start()
    try:
        assert srv.load()
        models = {n: m.model for n, m in srv.store.models.items()}

        def names(what: str) -> list[str]:
            return sorted(n for n, model in models.items() if any(model is r for r in ran[what]))

        assert names("denoise") == ["conv", "tiny"]
        assert names("decompose") == ["dict"]
        for name, rpcs in (("tiny", "Denoise, StreamDenoise, Encode, Decode"), ("conv", "Denoise, Encode"),
                           ("img", "Encode, Decode"), ("dict", "Decompose, Encode, Decode")):
            assert f"warmed up {name}: {rpcs}" in caplog.text, caplog.text
    finally:
        srv.stop()


def test_two_models_given_one_name_are_told_apart_from_two_files_of_one_stem(model_dir, tmp_path):
    tiny = model_dir / "tiny.safetensors"
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        shutil.copy(tiny, tmp_path / run / "best.safetensors")
    best, other = tmp_path / "run1" / "best.safetensors", tmp_path / "run2" / "best.safetensors"
    # named explicitly already: was told to "name them explicitly with NAME=PATH"
    said = _refused_at_load(model_dir, (f"a={best}", f"a={other}"))
    assert said == (f"two models named 'a'; each --models NAME=PATH needs a NAME of its own ({best}: by "
                    f"NAME=PATH; {other}: by NAME=PATH)")
    said = _refused_at_load(model_dir, (str(best), str(other)))  # named after their stems: naming them helps
    assert said == (f"two models named 'best'; name them explicitly with NAME=PATH ({best}: after its file name; "
                    f"{other}: after its file name)")
    # One NAME=PATH beside a bare path: was worded by the second spec alone, "each --models NAME=PATH needs
    # a NAME of its own" (one was given) or "name them explicitly" (one was), and named no path.
    for specs, bare in (((str(best), f"best={other}"), best), ((f"best={best}", str(other)), other)):
        said = _refused_at_load(model_dir, specs)
        first, second = ("after its file name", "by NAME=PATH") if bare == best else ("by NAME=PATH", "after its file name")
        assert said == (f"two models named 'best'; give {bare} a NAME of its own with NAME=PATH, or the other "
                        f"another NAME ({best}: {first}; {other}: {second})"), said


def test_a_file_served_under_a_shipped_models_name_is_warned_of(model_dir, tmp_path, caplog):
    """Was silent: callers asking for denoiser-small got another model under its name."""
    import logging

    from audioae import pretrained

    if "denoiser-small" not in pretrained.shipped():
        pytest.skip("no shipped denoiser-small")
    tiny = model_dir / "tiny.safetensors"
    caplog.set_level(logging.WARNING, logger="audioae.server")

    def served(spec: str) -> tuple[list[tuple[str, str]], list[str]]:
        """(name, sha256) of each model a real server of ``spec`` lists, and its warnings."""
        caplog.clear()
        srv = AudioServer(_config(model_dir, models=(spec,), metrics_port=None, codec_workers=0))
        srv.start()
        try:
            srv.load()
            with Client(f"127.0.0.1:{srv.port}", timeout=30) as c:
                listed = [(m["name"], m["sha256"]) for m in c.list_models()["models"]]
        finally:
            srv.stop()
        return listed, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    assert served(f"denoiser-small={tiny}") == (
        [("denoiser-small", sha256_file(tiny))],
        [f"model name 'denoiser-small' now means {tiny}, not the shipped model of that name"])
    assert served(f"mine={tiny}") == ([("mine", sha256_file(tiny))], [])  # a name of its own: nothing to say


def test_a_shipped_name_and_paths_load_side_by_side(model_dir):
    """The store looks for the shipped files once for all the --models specs: a shipped name, a
    bare path and a NAME=PATH each still load what they name."""
    from audioae import pretrained
    from audioae.server.store import ModelStore

    shipped = pretrained.shipped()
    if "denoiser-small" not in shipped:
        pytest.skip("no shipped denoiser-small")
    tiny = model_dir / "tiny.safetensors"
    specs = ("denoiser-small", str(tiny), f"mine={tiny}")
    ModelStore.check_specs(specs)
    store = ModelStore(specs, torch.device("cpu"))
    assert {n: m.path for n, m in store.models.items()} == {"denoiser-small": shipped["denoiser-small"],
                                                             "tiny": tiny, "mine": tiny}


@pytest.mark.parametrize(("pcm", "text"), [
    # was "audio: sample rate 0 Hz is outside 1000..384000 Hz": a field left out, read as 0
    (_pcm(_ONE_SECOND, sr=0), "audio: the sample rate is unset (0); set it to the audio's rate in Hz, 1000..384000 "
                              "(in a request: Pcm.sample_rate)"),
    # was "audio: channels must be within 1..64, got 0"
    (_pcm(_ONE_SECOND, ch=0), "audio: the channel count is unset (0); set it to the audio's channels, 1..64 "
                              "(in a request: Pcm.channels)"),
])
def test_pcm_without_a_sample_rate_or_channels_names_the_unset_field(client, pcm, text):
    code, msg = _code(client.stub.Denoise, pb.DenoiseRequest(model="tiny", audio=pcm), timeout=30)
    assert code == CODE.INVALID_ARGUMENT and text in msg, msg
