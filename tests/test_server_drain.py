"""A real `python -m audioae.server` process: SIGTERM gives NOT_SERVING, new calls UNAVAILABLE, the call
in flight finishes with the right answer, then the process exits 0 (1 when a call outlasts
--drain-seconds); what once killed the process (a long Ogg Vorbis upload, answered in Ogg Vorbis)
is answered; its codec processes killed and frozen for real, counted on /metrics; and TLS checked
against --tls-server-name."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from server_checks import sample_value, wait_until

from audioae.checkpoint import load_checkpoint, save_checkpoint
from audioae.cli import main as cli_main
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


def _start_server(tmp_path, *flags: str, own_group: bool = False,
                  hidden: int = 32) -> tuple[subprocess.Popen, queue.Queue, list[str], Path]:
    """``python -m audioae.server`` with a tiny causal model ("tiny", ``hidden`` wide): the process, its
    stderr lines, the log of those read, and the checkpoint."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": hidden, "code_dim": 16}), ckpt)
    proc = subprocess.Popen(
        [sys.executable, "-m", "audioae.server", "--port", "0", "--models", str(ckpt), "--threads", "1", *flags],
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
    return _ready_ports(lines, log)[0]


def _ready_ports(lines: queue.Queue, log: list[str]) -> tuple[int, int | None]:
    """The gRPC port and, when the server was started with --metrics-port, the metrics port."""
    m = _wait_for(lines, r"listening on 127\.0\.0\.1:(\d+)(?:; metrics on :(\d+))?", log)
    _wait_for(lines, r"ready: serving tiny", log)
    return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)


def _metric(port: int, sample: str, absent: float | None = None) -> float:
    return sample_value(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode(),
                        sample, absent)


def _until(condition, timeout: float = 30.0) -> bool:
    return wait_until(condition, timeout, poll=0.05)


def _rest_of(lines: queue.Queue, log: list[str]) -> str:
    """The whole stderr of an exited server: ``log`` and what is left in ``lines``."""
    time.sleep(0.3)  # the reader thread takes the rest of stderr
    while not lines.empty():
        log.append(lines.get())
    return "".join(log)


def _in_order(text: str, *said: str) -> None:
    """Each of ``said`` is in ``text``, each after the one before it."""
    at = 0
    for words in said:
        found = text.find(words, at)
        assert found >= 0, f"{words!r} not said (after {at}):\n{text}"
        at = found + len(words)


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
    alone and answered; a call whose own process dies too gets INVALID_ARGUMENT; the server lives.
    ``audioae_codec_process_deaths_total`` counts each by its outcome."""
    from audioae.audio import encode_audio

    proc, lines, log, ckpt = _start_server(tmp_path, "--metrics-port", "0")

    def deaths(outcome: str) -> float:
        return _metric(metrics, f'audioae_codec_process_deaths_total{{outcome="{outcome}"}}', absent=0.0)

    try:
        port, metrics = _ready_ports(lines, log)
        workers = _codec_processes(proc.pid)
        assert len(workers) == 2, f"the server should start its 2 codec processes with its models: {workers}"
        x = (0.1 * np.random.default_rng(0).standard_normal((1, 32000))).astype(np.float32)
        flac = encode_audio(x, 16000, format="FLAC", subtype="PCM_16")
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            expected = c.denoise_bytes(flac).audio.encoded

            for w in workers:  # 1. the pool dies between calls
                os.kill(w, signal.SIGSEGV)
            assert (deaths("retried"), deaths("refused")) == (0, 0)
            assert c.denoise_bytes(flac).audio.encoded == expected
            _wait_for(lines, r"reading the audio file's header: its process was killed by SIGSEGV; trying again", log)
            # The call's header read meets one dead process and its decode the other (a fresh
            # process joins the back of the queue): each step is retried alone, counted once.
            assert (deaths("retried"), deaths("refused")) == (2, 0)

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
            assert (deaths("retried"), deaths("refused")) == (2, 1)  # one call, its own process killed too

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

    proc, lines, log, _ = _start_server(tmp_path, "--codec-timeout", "3", "--metrics-port", "0")
    timed_out = 'audioae_codec_process_deaths_total{outcome="timed_out"}'
    try:
        port, metrics = _ready_ports(lines, log)
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
            assert _metric(metrics, timed_out, absent=0.0) == 1
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # the one still waiting its turn answers again
            assert c.denoise_bytes(flac).audio.encoded == expected
            assert len(set(_codec_processes(proc.pid)) - set(frozen)) == 1  # the stopped one was replaced
            assert _metric(metrics, timed_out, absent=0.0) == 1  # the one that waited its turn was not counted
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


class _SlowStream:
    """A StreamDenoise on a thread of its own that sends 0.1 s of audio every 0.1 s until
    ``finish()`` (at most a minute), as a live microphone does. ``error`` is the ``grpc.RpcError``
    it ended with, None if it ended cleanly."""

    def __init__(self, client: Client, timeout: float | None = None):
        self.x = (0.1 * np.random.default_rng(1).standard_normal((1, 1600))).astype(np.float32)
        self.sent = 0
        self.outs: list[np.ndarray] = []
        self.error: grpc.RpcError | None = None
        self.answered, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._read, args=(client, timeout))
        self._thread.start()

    def _chunks(self):
        for _ in range(600):
            self.sent += self.x.shape[-1]
            yield self.x
            if self._stop.wait(0.1):
                return

    def _read(self, client: Client, timeout: float | None) -> None:
        try:
            for y in client.stream(self._chunks(), 16000, 1, timeout=timeout):
                self.outs.append(y)
                self.answered.set()
        except grpc.RpcError as exc:
            self.error = exc

    def finish(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream never ended"


INFLIGHT = "audioae_inflight_calls"


def test_sigterm_exits_1_when_a_stream_outlasts_drain_seconds(tmp_path):
    """docs/serving.md: after SIGTERM the server waits --drain-seconds for calls in flight, then
    stops anyway and exits 1, saying so; the stream it cut off ends with UNAVAILABLE."""
    proc, lines, log, _ = _start_server(tmp_path, "--drain-seconds", "2", "--metrics-port", "0")
    try:
        port, metrics = _ready_ports(lines, log)
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            assert _metric(metrics, INFLIGHT) == 0
            slow = _SlowStream(c)
            try:
                assert slow.answered.wait(30), "the stream never answered"
                assert _metric(metrics, INFLIGHT) == 1  # the open stream, and nothing else
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 1
            finally:
                slow.finish()
        assert slow.error is not None and slow.error.code() == grpc.StatusCode.UNAVAILABLE, slow.error
        _wait_for(lines, r"drain: 1 calls still running after 2 s", log, timeout=10)
        _wait_for(lines, r"stopped with calls still running", log, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_inflight_gauge_counts_open_streams_and_a_stream_ended_by_its_deadline_is_released(tmp_path):
    """audioae_inflight_calls is 1 while a stream is open and 0 once it ends, cleanly or by its
    deadline; with nothing in flight left, SIGTERM drains at once and the server exits 0 (a call
    whose count leaked would hold the drain for --drain-seconds and make it exit 1)."""
    proc, lines, log, _ = _start_server(tmp_path, "--drain-seconds", "2", "--metrics-port", "0")
    try:
        port, metrics = _ready_ports(lines, log)
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            assert _metric(metrics, INFLIGHT) == 0
            slow = _SlowStream(c)  # 1. a stream that ends cleanly
            try:
                assert slow.answered.wait(30), "the stream never answered"
                assert _metric(metrics, INFLIGHT) == 1
            finally:
                slow.finish()
            assert slow.error is None, slow.error
            assert sum(y.shape[-1] for y in slow.outs) == slow.sent  # the whole stream came back
            assert _until(lambda: _metric(metrics, INFLIGHT) == 0), _metric(metrics, INFLIGHT)

            late = _SlowStream(c, timeout=1.5)  # 2. a stream its deadline ends while it waits for audio
            late.join()
            assert late.error is not None and late.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, late.error
            assert _until(lambda: _metric(metrics, INFLIGHT) == 0), _metric(metrics, INFLIGHT)
            assert c.health() == "SERVING"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _wait_for(lines, r"stopped$", log, timeout=10)
        assert "still running" not in "".join(log), "".join(log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _certificate_for(name: str, tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate whose only name (CN and SAN) is the DNS name ``name``, and its key."""
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key_path),
                        "-out", str(cert_path), "-addext", f"subjectAltName=DNS:{name}"],
                       check=True, capture_output=True)
        return cert_path, key_path
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_cli_client_tls_server_name_checks_the_certificate_against_that_name(tmp_path, capsys):
    """A TLS server reached by address whose certificate names only "audioae.test": `audioae client`
    refuses it (the certificate is not for 127.0.0.1), and `--tls-server-name audioae.test` makes the
    same call, and a denoise, go through."""
    import soundfile as sf

    cert, key = _certificate_for("audioae.test", tmp_path)
    proc, lines, log, _ = _start_server(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        port = _ready_port(lines, log)
        conn = ["--server", f"127.0.0.1:{port}", "--tls-ca", str(cert), "--timeout", "30"]
        assert cli_main(["client", "health", *conn]) == 2
        err = capsys.readouterr().err
        # grpcio's words for a certificate not made out to the name dialled, new and old
        assert "UNAVAILABLE" in err and re.search(r"Hostname Verification|Peer name \S+ is not in peer certificate", err), err

        assert cli_main(["client", "health", *conn, "--tls-server-name", "audioae.test"]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        src, out = tmp_path / "noisy.wav", tmp_path / "clean.wav"
        sf.write(src, 0.1 * np.random.default_rng(0).standard_normal(8000), 16000, subtype="PCM_16")
        assert cli_main(["client", "denoise", str(src), "-o", str(out), *conn, "--tls-server-name", "audioae.test"]) == 0
        assert (sf.info(out).frames, sf.info(out).subtype) == (8000, "PCM_16")

        assert cli_main(["client", "health", *conn, "--tls-server-name", "other.test"]) == 2  # another name: refused
        err = capsys.readouterr().err
        assert "UNAVAILABLE" in err and re.search(r"Hostname Verification|Peer name \S+ is not in peer certificate", err), err
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def _health_watch(port: int, seen: list[str]) -> threading.Thread:
    """grpc.health.v1 Watch on the server's overall status, each status it sends appended to ``seen``
    until the stream ends."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def watch():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with contextlib.suppress(grpc.RpcError):
                for r in health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="")):
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


class _StopAfterFirstModel(logging.Handler):
    """Calls ``srv.stop_starting()`` (what a stop signal during start-up does) when the first model
    has loaded: on the loading thread, between two models, every time."""

    def __init__(self, srv):
        super().__init__(logging.INFO)
        self.srv, self.stopped = srv, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("loaded tiny from") and not self.stopped:
            self.stopped.append(self.srv.stop_starting())


def test_a_stop_while_the_models_load_stops_at_once_and_health_never_says_serving(tmp_path):
    """A stop signal after "listening on", while the models load: the server stopped only once they
    had loaded, reported SERVING, then drained. Now loading stops at the next model and health
    never says SERVING. (Was a SIGTERM to a process loading 20 models, which raced the loading.)"""
    from audioae.server import AudioServer, ServerConfig

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    srv = AudioServer(ServerConfig(port=0, models=(f"tiny={ckpt}", f"copy1={ckpt}", f"copy2={ckpt}"),
                                   codec_workers=0, torch_threads=1))
    port = srv.start()
    stopper = _StopAfterFirstModel(srv)
    store_log = logging.getLogger("audioae.server.store")
    level = store_log.level
    try:
        seen: list[str] = []
        watcher = _health_watch(port, seen)
        assert _until(lambda: seen == ["NOT_SERVING"], timeout=30), seen
        store_log.addHandler(stopper)
        store_log.setLevel(logging.INFO)
        assert srv.load() is False
        assert stopper.stopped == [True]  # stop_starting() stopped it: not yet serving
        assert srv.store is None and not srv.serving
        watcher.join(30)
        assert not watcher.is_alive() and "SERVING" not in seen, seen  # stop() says NOT_SERVING again
    finally:
        store_log.removeHandler(stopper)
        store_log.setLevel(level)
        srv.stop()


# `audioae serve` whose loading of each checkpoint waits, after saying so, until a line can be read
# from the FIFO named by $AUDIOAE_TEST_GATE: a load that is observably in progress for as long as
# the test needs, with no clock involved. The rest is the real entry point (python -m audioae.server).
_GATED_SERVE = """
import os, sys
import audioae.server.store
from audioae.cli import main

real = audioae.server.store.read_metadata

def gated(path):
    print(f"test gate: loading {path}", file=sys.stderr, flush=True)
    with open(os.environ["AUDIOAE_TEST_GATE"]) as gate:  # blocks until a writer opens it
        gate.readline()
    return real(path)

audioae.server.store.read_metadata = gated
sys.exit(main(["serve", *sys.argv[1:]]))
"""


def test_a_stop_signal_while_the_models_load_ends_the_process_never_serving(tmp_path):
    """serve()'s branch for a SIGTERM that comes while the models load, in a real process: it exits
    0 at once, saying it never served, and health said NOT_SERVING throughout. The load waits on a
    FIFO the test never writes, so the signal comes while it is in progress, every time."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    proc = subprocess.Popen(
        [sys.executable, "-c", _GATED_SERVE, "--port", "0", "--models", str(ckpt), "--threads", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "AUDIOAE_TEST_GATE": str(gate)},
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    log: list[str] = []
    try:
        port = int(_wait_for(lines, r"listening on 127\.0\.0\.1:(\d+)", log).group(1))
        _wait_for(lines, rf"test gate: loading {re.escape(str(ckpt))}", log)  # loading, and held there
        seen: list[str] = []
        watcher = _health_watch(port, seen)
        assert _until(lambda: seen == ["NOT_SERVING"]), seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        text = _rest_of(lines, log)
        assert "stopped while loading the models: never served" in text, text
        assert "ready: serving" not in text and "draining" not in text and "Traceback" not in text, text
        watcher.join(30)
        assert not watcher.is_alive() and "SERVING" not in seen, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_drain_seconds_bounds_the_drain_and_the_call_cut_off_hears_why(tmp_path):
    """--drain-seconds 2 and a 600 s denoise in flight (about half a minute of work here): the
    process waited for the device worker (exit 15 s after SIGTERM) and the call got gRPC's bare
    "Cancelling all calls". Now the work is asked to stop at the drain's end: the call ends
    UNAVAILABLE in the server's words and the process exits within a second or two of the 2 s."""
    proc, lines, log, _ = _start_server(tmp_path, "--drain-seconds", "2", "--metrics-port", "0", hidden=384)
    try:
        port, metrics = _ready_ports(lines, log)
        x = (0.1 * np.random.default_rng(0).standard_normal((1, 600 * 16000))).astype(np.float32)
        errors: list[grpc.RpcError] = []
        with Client(f"127.0.0.1:{port}", timeout=300) as c:
            def call():
                try:
                    c.denoise(x, 16000)
                except grpc.RpcError as exc:
                    errors.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            assert _until(lambda: _metric(metrics, INFLIGHT) == 1 and
                          _metric(metrics, "audioae_queue_depth") == 0), "the call never reached the device"
            time.sleep(0.5)  # well into its work
            proc.send_signal(signal.SIGTERM)
            # A hang guard only (the 600 s of work take far longer): no timing is asserted.
            assert proc.wait(timeout=120) == 1
            caller.join(30)
        # The call heard the drain's reason, not gRPC's bare "Cancelling all calls": the work was
        # stopped at its next piece, within CUT_OFF_SECONDS, not left to the device worker.
        assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.UNAVAILABLE, errors
        assert errors[0].details() == ("the server is shutting down and its drain time (2 s) ran out; retry on "
                                       "another replica"), errors[0].details()
        text = _rest_of(lines, log)
        _in_order(text, "drain: 1 calls still running after 2 s; ending them", "stopped with calls still running")
        assert "did not end within" not in text and "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the codec processes in /proc")
def test_a_codec_process_stopped_by_the_shutdown_is_not_retried_nor_called_a_crash(tmp_path):
    """A call waiting on its codec process (frozen for real, SIGSTOP) when the drain runs out: the
    shutdown kills that process. It was warned of as a crash ("killed by SIGKILL; trying again in a
    process of its own"), retried in a fresh process and counted; now the call ends UNAVAILABLE
    with the drain's reason, and nothing is retried."""
    from audioae.audio import encode_audio

    proc, lines, log, _ = _start_server(tmp_path, "--drain-seconds", "2", "--codec-workers", "1",
                                        "--metrics-port", "0")
    try:
        port, metrics = _ready_ports(lines, log)
        x = (0.1 * np.random.default_rng(0).standard_normal((1, 16000))).astype(np.float32)
        flac = encode_audio(x, 16000, format="FLAC", subtype="PCM_16")
        errors: list[grpc.RpcError] = []
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            c.denoise_bytes(flac)
            (worker,) = _codec_processes(proc.pid)
            os.kill(worker, signal.SIGSTOP)

            def call():
                try:
                    c.denoise_bytes(flac)
                except grpc.RpcError as exc:
                    errors.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            assert _until(lambda: _metric(metrics, INFLIGHT) == 1)
            time.sleep(0.3)  # it is waiting on the frozen process
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 1  # a hang guard only: no timing is asserted
            caller.join(30)
        assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.UNAVAILABLE, errors
        assert "its drain time (2 s) ran out" in errors[0].details(), errors[0].details()
        text = _rest_of(lines, log)
        # The frozen process was killed by the cut-off, which the call heard at once (not after
        # --codec-timeout, nor from gRPC's own stop), and nothing was retried.
        _in_order(text, "drain: 1 calls still running after 2 s; ending them", "stopped with calls still running")
        assert "did not end within" not in text, text
        assert "trying again" not in text and "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_signal_during_a_drain_stops_at_once_saying_so(tmp_path):
    """--drain-seconds 20 and a live stream open: a second Ctrl-C was ignored (only SIGKILL got
    out). Now it says so, ends the stream with the server's reason (its audio so far answered),
    and the process exits 1 at once."""
    proc, lines, log, _ = _start_server(tmp_path, "--drain-seconds", "20")
    try:
        port = _ready_port(lines, log)
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            slow = _SlowStream(c)
            try:
                assert slow.answered.wait(30), "the stream never answered"
                proc.send_signal(signal.SIGINT)
                _wait_for(lines, r"draining: finishing in-flight calls", log, timeout=10)
                time.sleep(0.5)
                assert proc.poll() is None  # the first signal drains: the stream goes on
                proc.send_signal(signal.SIGINT)
                # A hang guard only: the log below says it ended at the second signal, not after
                # the 20 s drain the first one began.
                assert proc.wait(timeout=60) == 1
            finally:
                slow.finish()
        assert slow.error is not None and slow.error.code() == grpc.StatusCode.UNAVAILABLE, slow.error
        assert "a second stop signal" in slow.error.details(), slow.error.details()
        text = _rest_of(lines, log)
        _in_order(text, "drain: a second stop signal: ending 1 calls still running now",
                  "stopped at once by a second signal")
        assert "still running after 20 s" not in text and "did not end within" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_serve_refuses_equal_ports_and_a_missing_model_before_binding(tmp_path):
    """--port P --metrics-port P was "cannot listen ... (in use, or not an address of this machine)",
    the metrics having taken P; a missing --models file was said after "listening on"."""
    for flags, said in ((["--port", "50987", "--metrics-port", "50987"],
                         "port (--port) and metrics_port (--metrics-port) are both 50987"),
                        (["--port", "0", "--models", str(tmp_path / "missing.safetensors")],
                         "no such checkpoint file")):
        run = subprocess.run([sys.executable, "-m", "audioae.server", *flags], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and said in run.stderr, run.stderr
        assert "listening on" not in run.stderr, run.stderr


def test_serve_refuses_two_models_named_alike_before_binding(tmp_path):
    """Two checkpoints served under one name were refused only once the first had loaded and the
    port was bound; the refusal names both files, however each got the name."""
    torch.manual_seed(0)
    for run in ("r1", "r2"):
        (tmp_path / run).mkdir()
        save_checkpoint(build_model("recurrent", {"hidden": 16, "code_dim": 8}), tmp_path / run / "best.safetensors")
    best, other = tmp_path / "r1" / "best.safetensors", tmp_path / "r2" / "best.safetensors"
    for specs in ((str(best), f"best={other}"), (f"best={best}", str(other)), (str(best), str(other))):
        run = subprocess.run([sys.executable, "-m", "audioae.server", "--port", "0", "--models", *specs],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "two models named 'best'" in run.stderr, run.stderr
        assert f"{best}: " in run.stderr and f"{other}: " in run.stderr, run.stderr
        assert "listening on" not in run.stderr and "loaded best" not in run.stderr, run.stderr


def test_a_stream_cut_off_takes_no_more_of_its_queued_messages(tmp_path):
    """After a cut-off (the drain over) a stream still took up to 3 messages already queued and put
    each through the model. Now it answers the audio it had taken and ends with the reason."""
    from audioae.server import AudioServer, ServerConfig
    from audioae.server.errors import Abort
    from audioae.server.feed import MessageFeed
    from audioae.v1 import audioae_pb2 as pb

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    srv = AudioServer(ServerConfig(port=0, models=(f"tiny={ckpt}",), codec_workers=0, torch_threads=1))
    srv.start()
    more = threading.Event()
    chunk = pb.StreamDenoiseRequest(audio=np.zeros(8000, "<f4").tobytes())

    def requests():
        yield pb.StreamDenoiseRequest(config=pb.StreamConfig(sample_rate=16000, channels=1, format=pb.FLOAT32))
        yield chunk
        more.wait(60)
        yield chunk  # these two wait in the feed's queue when the cut-off comes
        yield chunk
        more.wait(60)

    try:
        assert srv.load()
        feed = MessageFeed(requests())
        try:
            answers = srv.servicer._stream_from(feed)
            first = next(answers)  # the first chunk went through
            assert first.samples_in == 8000
            more.set()
            assert _until(feed._q.full, timeout=30)
            srv.gate.cut_off("the server is shutting down (test)")
            rest = []
            with pytest.raises(Abort) as info:
                rest.extend(answers)
        finally:
            feed.close()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.message == "the server is shutting down (test); the audio it took before the cut-off was answered, none after"
        assert [r.samples_in for r in rest] == [8000]  # the tail of the first chunk; the queued two not taken
        assert rest[0].samples_out == 8000  # counts are cumulative: all of it answered
    finally:
        more.set()
        srv.stop()
