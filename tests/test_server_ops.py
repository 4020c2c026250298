"""What an operator meets running ``audioae serve``, against real servers on loopback: one log
line per finished call, IPv6 addresses with and without brackets, and the defaults in --help."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest

from audioae.cli import main as cli_main
from audioae.client import Client
from audioae.server import AudioServer, ServerConfig
from audioae.server.config import grpc_host


@pytest.fixture
def served(causal_ckpt):
    srv = AudioServer(ServerConfig(port=0, models=(f"tiny={causal_ckpt}",), codec_workers=0, torch_threads=1))
    srv.start()
    srv.load()
    yield srv
    srv.stop()


def _calls(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "audioae.server.servicer" and r.levelno == logging.INFO]


def test_each_finished_call_is_logged_once_with_its_status_model_audio_time_and_peer(served, caplog):
    """Successful calls and refusals (NOT_FOUND, INVALID_ARGUMENT) left no log line; a stream gets
    one line at its end, not one per chunk."""
    caplog.set_level(logging.INFO, logger="audioae.server")
    x = (0.1 * np.random.default_rng(0).standard_normal((1, 8000))).astype(np.float32)
    with Client(f"127.0.0.1:{served.port}", timeout=30) as c:
        c.denoise(x, 16000)
        with pytest.raises(grpc.RpcError):
            c.denoise(x, 16000, model="nope")
        with pytest.raises(grpc.RpcError):
            c.denoise(x, 16000, strength=2.0)
        outs = list(c.stream(iter([x[:, :4000], x[:, 4000:]]), 16000, 1))
        assert sum(y.shape[-1] for y in outs) == 8000
        c.list_models()
    lines = _calls(caplog)
    peer = r"from ipv(4:127\.0\.0\.1|6:\[::1\]):\d+$"
    assert len(lines) == 5, lines
    assert re.fullmatch(r"Denoise OK \d+ ms model tiny 0\.50 s of audio " + peer, lines[0]), lines[0]
    assert re.fullmatch(r"Denoise NOT_FOUND \d+ ms model nope " + peer, lines[1]), lines[1]
    assert re.fullmatch(r"Denoise INVALID_ARGUMENT \d+ ms model tiny " + peer, lines[2]), lines[2]
    assert re.fullmatch(r"StreamDenoise OK \d+ ms model tiny 0\.50 s of audio " + peer, lines[3]), lines[3]
    assert re.fullmatch(r"ListModels OK \d+ ms " + peer, lines[4]), lines[4]


def test_a_callers_model_name_is_logged_quoted_and_clipped(served, caplog):
    """The log line printed the model name asked for as it came: a name holding a newline and a
    made-up log line forged a second line, and an 8 MB name wrote an 8 MB line. A plain name is
    logged as it is; any other quoted (repr) and clipped to 64 characters. A stream refused at its
    StreamConfig logged no model at all: it names the one asked for now."""
    caplog.set_level(logging.INFO, logger="audioae.server")
    x = (0.1 * np.random.default_rng(0).standard_normal((1, 8000))).astype(np.float32)
    forged = "nope\n2026-12-07 18:02:28,782 INFO audioae.server.servicer: Denoise OK 97 ms model tiny from ipv4:1.2.3.4:5"
    huge = "x" * (8 << 20)
    with Client(f"127.0.0.1:{served.port}", timeout=60) as c:
        for name in (forged, huge):
            with pytest.raises(grpc.RpcError) as info:
                c.denoise(x, 16000, model=name)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            list(c.stream(iter([x]), 16000, 1, model=forged))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    lines = _calls(caplog)
    assert len(lines) == 3 and all("\n" not in line and len(line) < 300 for line in lines), lines
    peer = r" from ipv(4:127\.0\.0\.1|6:\[::1\]):\d+$"
    shown = re.escape(repr(forged[:64]) + f"... ({len(forged)} characters)")
    assert re.fullmatch(r"Denoise NOT_FOUND \d+ ms model " + shown + peer, lines[0]), lines[0]
    assert re.fullmatch(r"Denoise NOT_FOUND \d+ ms model 'x{64}'\.\.\. \(8,388,608 characters\)" + peer,
                        lines[1]), lines[1]
    assert re.fullmatch(r"StreamDenoise NOT_FOUND \d+ ms model " + shown + peer, lines[2]), lines[2]


def test_an_auth_refusal_names_the_caller(causal_ckpt, tmp_path, caplog):
    tokens = tmp_path / "tokens"
    tokens.write_text("the-token\n")
    tokens.chmod(0o600)
    srv = AudioServer(ServerConfig(port=0, models=(f"tiny={causal_ckpt}",), codec_workers=0, torch_threads=1,
                                   token_file=str(tokens)))
    srv.start()
    try:
        srv.load()
        caplog.set_level(logging.INFO, logger="audioae.server")
        with Client(f"127.0.0.1:{srv.port}", timeout=30) as c, pytest.raises(grpc.RpcError):
            c.list_models()
    finally:
        srv.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "audioae.server.auth"]
    assert len(said) == 1 and re.fullmatch(r"refused /audioae\.v1\.AudioAE/ListModels from ipv4:127\.0\.0\.1:\d+: "
                                           r"missing bearer token: .*", said[0]), said


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_hosts_with_or_without_brackets_serve_grpc_and_metrics(host):
    """``--host ::1`` failed "cannot listen on ::1:0"; ``--host [::1] --metrics-port N`` failed
    "cannot serve metrics on [::1]:N (Name or service not known)"."""
    import socket

    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    srv = AudioServer(ServerConfig(host=host, port=0, metrics_port=0, codec_workers=0))
    srv.start()  # health answers before the models load
    try:
        assert grpc_host(host) == "[::1]"
        with Client(f"[::1]:{srv.port}", timeout=30) as c:
            assert c.health() == "NOT_SERVING"
        page = urllib.request.urlopen(f"http://[::1]:{srv.metrics_port}/metrics", timeout=10).read().decode()
        assert "audioae_inflight_calls" in page
    finally:
        srv.stop()


def test_serve_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("default: 127.0.0.1", "default: 50051", "in MB (default: 64)", "default: 30)", "default: 60)",
                    "default: 32)", "default: off"):
        assert default in text, (default, text)


def test_python_m_audioae_runs_the_cli():
    # was: "No module named audioae.__main__"; now `python -m audioae` is the `audioae` console script
    proc = subprocess.run([sys.executable, "-m", "audioae", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: audioae") and "serve" in proc.stdout, proc.stdout
