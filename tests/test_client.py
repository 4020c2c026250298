"""The client side against real servers on 127.0.0.1 (no mocks): which model a call naming none
gets, the client's message limit, token files, and decomposition folders written twice."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
import torch
from audio_tree import whole_and_cut

from audioae.audio import read_audio, write_audio
from audioae.checkpoint import load_checkpoint, save_checkpoint
from audioae.cli import main as cli_main
from audioae.client import (
    DEFAULT_MESSAGE_MB,
    Client,
    decompose_result,
    pcm_message,
    read_tokens,
    save_decomposition,
)
from audioae.data.synthetic import speech_like
from audioae.enhance import denoise
from audioae.models import build_model
from audioae.pretrained import DEFAULT_DECOMPOSER, DEFAULT_DENOISER
from audioae.server import AudioServer, ServerConfig
from audioae.server.auth import read_tokens as server_read_tokens

CODE = grpc.StatusCode
MB = 1024 * 1024
TOL = 2e-5  # float32 rounding, as in test_server.py


def _noisy(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clean = np.stack([speech_like(rng, seconds, sr) for _ in range(channels)])  # [C, T]
    return np.clip(clean + 0.05 * rng.standard_normal(clean.shape), -1, 1).astype(np.float32)


def _code(fn, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    return info.value.code(), info.value.details()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), d / "tiny.safetensors")  # causal
    save_checkpoint(build_model("conv1d", {"channels": [32], "code_dim": 8}), d / "conv.safetensors")  # offline
    return d


def _start(**kw) -> AudioServer:
    srv = AudioServer(ServerConfig(**{"port": 0, "torch_threads": 1, "max_delay_ms": 1, **kw}))
    srv.start()
    srv.load()
    return srv


@pytest.fixture(scope="module")
def mixed_server(model_dir):
    """The shipped decomposer listed first, then an offline denoiser, then a causal one; the
    message limits are the server's defaults."""
    srv = _start(models=(DEFAULT_DECOMPOSER, str(model_dir / "conv.safetensors"), str(model_dir / "tiny.safetensors")))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mixed(mixed_server):
    with Client(f"127.0.0.1:{mixed_server.port}", timeout=120) as c:
        yield c


# ---- the default denoiser ---------------------------------------------------------------------------
def test_default_denoiser_is_never_the_decomposer_and_prefers_causal(mixed, model_dir):
    info = mixed.list_models()
    assert [m["name"] for m in info["models"]] == [DEFAULT_DECOMPOSER, "conv", "tiny"]
    assert info["default_denoiser"] == "tiny" and info["default_decomposer"] == DEFAULT_DECOMPOSER
    # a model that does not stream has no latency: None, as `audioae models` says "offline" (was 0.0, the wire's)
    by = {m["name"]: m for m in info["models"]}
    assert by[DEFAULT_DECOMPOSER]["causal"] is False and by[DEFAULT_DECOMPOSER]["latency_ms"] is None
    assert by["tiny"]["causal"] is True and by["tiny"]["latency_ms"] > 0
    tiny = load_checkpoint(model_dir / "tiny.safetensors")
    x = _noisy(0.6, 16000)
    np.testing.assert_allclose(mixed.denoise(x, 16000), denoise(tiny, x, 16000), atol=TOL)  # no model named
    y = np.concatenate(list(mixed.stream(np.array_split(x, 5, axis=-1), 16000, 1)), axis=-1)  # no model named
    np.testing.assert_allclose(y, denoise(tiny, x, 16000), atol=TOL)
    assert mixed.decompose(x, 16000, fit_steps=0).model == DEFAULT_DECOMPOSER


def test_a_server_with_only_a_decomposer_has_no_default_denoiser():
    srv = _start(models=(DEFAULT_DECOMPOSER,))
    try:
        with Client(f"127.0.0.1:{srv.port}", timeout=60) as c:
            info = c.list_models()
            assert info["default_denoiser"] == "" and info["default_decomposer"] == DEFAULT_DECOMPOSER
            x = _noisy(0.3, 16000)
            for call in (lambda: c.denoise(x, 16000), lambda: list(c.stream([x], 16000, 1))):
                code, msg = _code(call)
                assert code == CODE.INVALID_ARGUMENT and "this server holds no model that can" in msg, msg
                assert "that needs a" in msg and f"it serves {DEFAULT_DECOMPOSER}" in msg, msg
            assert c.decompose(x, 16000, fit_steps=0).model == DEFAULT_DECOMPOSER  # still its job
            assert c.health() == "SERVING"
    finally:
        srv.stop()


def test_a_server_with_only_a_denoiser_says_what_decomposing_needs():
    srv = _start(models=(DEFAULT_DENOISER,))
    try:
        with Client(f"127.0.0.1:{srv.port}", timeout=60) as c:
            code, msg = _code(lambda: c.decompose(_noisy(0.3, 16000), 16000))
            # was: "...; name one: (none here can)"
            assert code == CODE.INVALID_ARGUMENT, msg
            assert msg == (f"no model named, and this server holds no model that can decompose: that needs a sparse "
                           f"dictionary model (sparse_dict); it serves {DEFAULT_DENOISER}"), msg
    finally:
        srv.stop()


# ---- the client's message limit ------------------------------------------------------------------------
def test_client_receives_what_a_default_server_may_answer():
    assert DEFAULT_MESSAGE_MB * MB == ServerConfig().max_send_bytes
    with pytest.raises(ValueError, match="max_message_mb"):
        Client(max_message_mb=0)


def test_a_timeout_past_what_grpc_can_carry_is_no_deadline(mixed_server):
    # gRPC's deadline is int64 nanoseconds since 1970: 1e10 s or inf ("no deadline" to whoever
    # wrote it) failed every call at once with DEADLINE_EXCEEDED, health's included
    with Client(f"127.0.0.1:{mixed_server.port}", timeout=1e10) as c:
        assert c.list_models()["default_decomposer"] == DEFAULT_DECOMPOSER
        assert c.health(timeout=float("inf")) == "SERVING"
        x = _noisy(0.2, 16000)
        assert c.encode_audio(x, 16000, model="tiny", timeout=float("inf")).shape[:2] == (1, 16)
        out = np.concatenate(list(c.stream([x], 16000, model="tiny", timeout=1e10)), -1)
        assert out.shape == x.shape


def test_ungrouped_decomposition_over_64_mb_arrives(mixed, mixed_server, tmp_path, capsys):
    x = _noisy(1.0, 48000, channels=2)  # every active unit of 320, stereo at 48 kHz: ~85 MB of components
    r = mixed.decompose(x, 48000, top_k=0, group="none", components=True, fit_steps=0)
    assert r.components.nbytes > 64 * MB
    np.testing.assert_allclose(r.components.sum(0) + r.residual, x, atol=1e-4)
    # The old limit, asked for with the flag: the server computes, the client refuses the answer.
    src = tmp_path / "in.wav"
    write_audio(src, x, 48000, subtype="FLOAT")
    argv = ["client", "decompose", str(src), "-o", str(tmp_path / "parts"), "--server", f"127.0.0.1:{mixed_server.port}"]
    argv += ["--max-message-mb", "64", "--group", "none", "--top", "0"]  # the RPC's defaults: everything
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"the server's answer is 8\d\.\d MB, over this client's --max-message-mb 64: raise it", err), err
    assert not list((tmp_path / "parts").glob("component_*.wav"))


# ---- token files ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_server(model_dir, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("# rotation: old and new\n\nold-secret\n  new-secret  \n")
    srv = _start(models=(str(model_dir / "tiny.safetensors"),), token_file=str(tokens))
    yield srv
    srv.stop()


def test_server_and_client_read_token_files_alike(tmp_path):
    assert server_read_tokens is read_tokens
    f = tmp_path / "t"
    f.write_text("\n  # indented comment\n\nfirst\r\n# another\nsecond\n")
    assert read_tokens(f) == ["first", "second"]
    for text in ("", "\n\n", "# only a comment\n  # and another\n"):
        f.write_text(text)
        with pytest.raises(ValueError, match="no token in it"):
            read_tokens(f)
    with pytest.raises(ValueError, match="no such file"):
        read_tokens(tmp_path / "missing")


def test_cli_client_token_file_with_comments(token_server, tmp_path, capsys):
    addr = f"127.0.0.1:{token_server.port}"
    ok = tmp_path / "client-token"
    ok.write_text("# the token for the staging server\n\nnew-secret\n")
    assert cli_main(["client", "models", "--server", addr, "--token-file", str(ok)]) == 0
    assert "tiny" in capsys.readouterr().out
    wrong = tmp_path / "wrong"
    wrong.write_text("# comment\nnot-the-secret\n")
    assert cli_main(["client", "models", "--server", addr, "--token-file", str(wrong)]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_cli_client_connection_options_may_come_before_the_subcommand(token_server, tmp_path, capsys):
    # was: `audioae client --server H:P models` said "invalid choice: 'H:P'"
    addr = f"127.0.0.1:{token_server.port}"
    ok = tmp_path / "client-token"
    ok.write_text("new-secret\n")
    assert cli_main(["client", "--server", addr, "--token-file", str(ok), "models"]) == 0
    assert "tiny" in capsys.readouterr().out
    # after the subcommand wins, and the default address is not taken for a given one
    assert cli_main(["client", "--server", "127.0.0.1:1", "models", "--server", addr, "--token-file", str(ok)]) == 0
    assert cli_main(["client", "--server", "127.0.0.1:1", "--timeout", "5", "models"]) == 2
    assert "server 127.0.0.1:1 could not be reached (UNAVAILABLE)" in capsys.readouterr().err  # nothing answered


def test_cli_client_names_a_missing_input_or_a_folder_the_same_way_for_every_command(mixed_server, tmp_path,
                                                                                    capsys):
    addr = f"127.0.0.1:{mixed_server.port}"
    for command in ("denoise", "stream", "decompose"):  # was a raw Errno for some, libsndfile's words for others
        assert cli_main(["client", "--server", addr, command, str(tmp_path / "nope.wav")]) == 2
        assert f"{tmp_path / 'nope.wav'}: no such file" in capsys.readouterr().err
        assert cli_main(["client", "--server", addr, command, str(tmp_path)]) == 2
        assert f"{tmp_path}: is a folder; name an audio file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse names the flag (was "chunk_ms must be positive")
        cli_main(["client", "--server", addr, "stream", str(tmp_path / "nope.wav"), "--chunk-ms", "0"])
    assert "argument --chunk-ms: must be more than 0 ms, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "# just a comment\n\n"])
def test_cli_client_token_file_without_a_token_is_a_clear_error(token_server, tmp_path, capsys, text):
    f = tmp_path / "tokens"
    f.write_text(text)
    assert cli_main(["client", "models", "--server", f"127.0.0.1:{token_server.port}", "--token-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert "audioae client: error:" in err and "no token in it" in err and "Traceback" not in err


def test_a_token_is_sent_as_the_server_reads_it_and_one_grpc_cannot_carry_is_refused_first(token_server, tmp_path):
    """Client(token=Path(f).read_text()) sent "new-secret\n", which gRPC refused on every call,
    health's included, with INTERNAL "Invalid metadata" (a C-core log line besides), though the
    server strips its own tokens. A token with a tab or a non-ASCII letter failed the same way,
    and a server given one in its token file could never match it."""
    addr = f"127.0.0.1:{token_server.port}"
    for token in ("new-secret\n", "  old-secret\r\n"):
        with Client(addr, token=token, timeout=30) as c:
            assert c.health() == "SERVING" and [m["name"] for m in c.list_models()["models"]] == ["tiny"]
    for token in ("new\tsecret", "nëw-secret"):
        with pytest.raises(ValueError, match="token: the token holds a character gRPC metadata cannot carry") as info:
            Client(addr, token=token)
        assert token not in str(info.value)
    f = tmp_path / "tokens"
    f.write_text("# staging\nfirst\nsécond\n")
    with pytest.raises(ValueError, match=re.escape(f"--token-file {f}, line 3: the token holds a character")):
        read_tokens(f)  # the server's reader too: `audioae serve` refuses the file at start
    with pytest.raises(ValueError, match="line 3: the token holds"):
        AudioServer(ServerConfig(port=0, models=(DEFAULT_DENOISER,), token_file=str(f)))


# ---- decomposition folders written twice -------------------------------------------------------------
def _folder_sum(folder: Path, pattern: str) -> np.ndarray:
    total = read_audio(folder / "residual.wav")[0].astype(np.float64)
    for f in folder.glob(pattern):
        total += read_audio(f)[0]
    return total


def test_cli_client_decompose_rerun_leaves_only_the_new_components(mixed_server, tmp_path, capsys):
    x = _noisy(0.5, 16000)
    src, out = tmp_path / "mix.wav", tmp_path / "mix.components"
    write_audio(src, x, 16000, subtype="FLOAT")
    out.mkdir()
    keep = [out / "notes.txt", out / "component_mine.wav", out / "01.wav", out / "1_x.wav"]  # not this tool's names
    for f in keep:
        f.write_bytes(b"mine")
    # what an older client wrote (component_NN_<label>.wav, decomposition.json) is cleared as well
    (out / "component_00_cluster_1_100_Hz_3_units.wav").write_bytes(b"old")
    (out / "decomposition.json").write_bytes(b"old")
    base = ["client", "decompose", str(src), "-o", str(out), "--server", f"127.0.0.1:{mixed_server.port}"]
    assert cli_main([*base, "--top-k", "4"]) == 0
    assert len(list(out.glob("[0-9][0-9]_*.wav"))) == 4
    assert not (out / "component_00_cluster_1_100_Hz_3_units.wav").exists() and not (out / "decomposition.json").exists()
    assert cli_main([*base, "--top-k", "2"]) == 0
    capsys.readouterr()
    new = sorted(f.name for f in out.glob("[0-9][0-9]_*.wav"))
    assert len(new) == 2 and new[0].startswith("01_") and new[1].startswith("02_")
    err = _folder_sum(out, "[0-9][0-9]_*.wav") - x
    assert 10 * np.log10((err**2).sum() / (x.astype(np.float64) ** 2).sum()) < -90
    assert all(f.read_bytes() == b"mine" for f in keep)
    assert cli_main([*base, "--top-k", "2", "--no-audio"]) == 0  # activations only: no waveform is left
    assert not list(out.glob("[0-9][0-9]_*.wav")) and not (out / "residual.wav").exists()
    assert (out / "activations.npy").is_file() and (out / "summary.json").is_file()
    assert json.loads((out / "summary.json").read_text())["residual_file"] is None
    assert all(f.read_bytes() == b"mine" for f in keep)
    assert not list(out.glob(".*.part"))


def test_cli_client_stream_of_a_model_that_cannot_stream_names_the_command_to_use(mixed_server, model_dir, tmp_path,
                                                                                    capsys, caplog):
    """Was the "decomposition model" warning, then the server's "use Denoise, or one of: tiny": the
    name of an RPC, where a CLI user needs `audioae client denoise`. Now the CLI says so, before any
    audio is sent; a server whose default denoiser cannot stream is told of the same way."""
    src = tmp_path / "in.wav"
    write_audio(src, _noisy(0.3, 16000), 16000)
    base = ["client", "stream", str(src), "--server", f"127.0.0.1:{mixed_server.port}", "--timeout", "30"]
    why = {"conv": "cannot stream (it is not causal): `audioae client denoise` takes the whole file at once",
           # the server denoises with no decomposer (until 2026-12-07 this pointed to `client denoise`)
           DEFAULT_DECOMPOSER: "is a decomposition model: its output would be its reconstruction of the input, noise "
                               "included, not a denoised copy (`audioae client decompose` splits a file with it)"}
    for name in (DEFAULT_DECOMPOSER, "conv"):
        assert cli_main([*base, "--model", name]) == 2
        err = capsys.readouterr().err
        assert err.strip() == (f"audioae client: error: model {name!r} {why[name]}; the models this server streams "
                               f"with (--model): tiny"), err
        assert "decomposition model" not in caplog.text and not (tmp_path / "in.denoised.wav").exists()
    save_checkpoint(build_model("image", {}), tmp_path / "img.safetensors")
    srv = _start(models=(str(model_dir / "conv.safetensors"), str(tmp_path / "img.safetensors")))  # no causal denoiser
    try:
        assert cli_main([*base[:4], f"127.0.0.1:{srv.port}"]) == 2
        assert "error: model 'conv' cannot stream (it is not causal): `audioae client denoise` takes the whole " \
               "file at once; the models this server streams with (--model): none" in capsys.readouterr().err
        assert cli_main([*base[:4], f"127.0.0.1:{srv.port}", "--model", "img"]) == 2  # neither denoises audio
        assert "error: model 'img' does not denoise audio (it serves Encode, Decode); the models this server " \
               "streams with (--model): none" in capsys.readouterr().err
    finally:
        srv.stop()
    assert cli_main([*base, "--model", "tiny"]) == 0  # one that streams, named or not
    assert cli_main(base) == 0
    assert (tmp_path / "in.denoised.wav").is_file()


@pytest.mark.parametrize("command", ["denoise", "stream"])
def test_cli_client_never_writes_over_its_input_and_writes_into_a_folder(mixed_server, tmp_path, capsys, command):
    src = tmp_path / "in.wav"
    write_audio(src, _noisy(0.5, 16000), 16000)
    before = src.read_bytes()
    base = ["client", command, str(src), "--server", f"127.0.0.1:{mixed_server.port}", "--model", "tiny"]
    assert cli_main([*base, "-o", str(src)]) == 2
    assert cli_main([*base, "-o", str(tmp_path)]) == 2  # its own folder: <folder>/in.wav is the input
    assert "it is the input" in capsys.readouterr().err
    assert src.read_bytes() == before
    (tmp_path / "cleaned").mkdir()
    assert cli_main([*base, "-o", str(tmp_path / "cleaned")]) == 0  # an existing folder, as cp does
    assert str(tmp_path / "cleaned" / "in.wav") in capsys.readouterr().out
    y, sr, _ = read_audio(tmp_path / "cleaned" / "in.wav")
    assert sr == 16000 and y.shape[-1] == 8000
    assert cli_main([*base, "-o", str(tmp_path / "out.m4a")]) == 2  # was: WAV bytes in a file named .mp3
    assert "audio is written as .wav, .flac, .ogg, .mp3, .aif, .aiff, .au, .caf, .w64, .rf64, .wave, .bwf, .aifc, .snd, .oga; got .m4a" in \
        capsys.readouterr().err
    assert not (tmp_path / "out.m4a").exists()
    assert cli_main([*base, "-o", str(tmp_path / "out.mp3")]) == 0  # a container libsndfile writes: transcoded
    assert sf.info(tmp_path / "out.mp3").format == "MP3" and sf.info(tmp_path / "out.mp3").frames == 8000
    assert cli_main([*base, "-o", str(tmp_path / "out.flac")]) == 0  # another known container: transcoded
    assert sf.info(tmp_path / "out.flac").format == "FLAC"
    wide = tmp_path / "wide.wav"  # FLAC holds 8 channels: was libsndfile's "Error opening
    write_audio(wide, _noisy(0.2, 16000, channels=12), 16000)  # <_io.BufferedWriter name=8>: Format not recognised."
    assert cli_main([*base[:2], str(wide), *base[3:], "-o", str(tmp_path / "wide.flac")]) == 2
    assert "wide.flac: FLAC cannot hold 12 channels (at most 8): write WAV instead" in capsys.readouterr().err
    assert not list(tmp_path.glob("*wide.flac*"))
    aiff = tmp_path / "in.aiff"  # a container of the input's own kind is written as the server answers
    sf.write(aiff, _noisy(0.5, 16000)[0], 16000, subtype="PCM_16")
    argv = ["client", command, str(aiff), "--server", f"127.0.0.1:{mixed_server.port}", "--model", "tiny"]
    assert cli_main(argv) == 0
    assert sf.info(tmp_path / "in.denoised.aiff").format == "AIFF"


@pytest.mark.parametrize(("kbps", "level", "sr", "channels"), [(320, 0.0, 44100, 2), (64, 0.9, 44100, 2),
                                                              (32, 0.84, 16000, 1)])  # libsndfile's CBR levels
def test_an_mp3_is_answered_at_its_own_bitrate(mixed, kbps, level, sr, channels):
    """The answer was encoded at libsndfile's default, whatever the question's bitrate; then, at
    16 kHz 32 kbps, longer than the question (no header to trim the encoder's delay)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, channels, format="MP3", compression_level=level, bitrate_mode="CONSTANT") as f:
        f.write(np.ascontiguousarray(_noisy(2.0, sr, channels=channels).T))
    question = buf.getvalue()
    answer = mixed.denoise_bytes(question, model="tiny").audio.encoded
    assert sf.info(io.BytesIO(answer)).format == "MP3"
    assert 0.8 < len(answer) / len(question) < 1.25, (len(question), len(answer))
    decoded = [len(sf.read(io.BytesIO(b), dtype="float32")[0]) for b in (question, answer)]
    assert decoded[0] == decoded[1], decoded  # (a header without the tag only estimates the frames)


def test_an_opus_question_is_answered_at_its_own_bitrate(mixed):
    """An Opus answer was encoded at libopus's default whatever the question's."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", 48000, 1, format="OGG", subtype="OPUS", compression_level=0.928) as f:  # 24 kbps
        f.write(np.ascontiguousarray(_noisy(2.0, 48000).T))
    question = buf.getvalue()
    answer = mixed.denoise_bytes(question, model="tiny").audio.encoded
    assert sf.info(io.BytesIO(answer)).subtype == "OPUS"
    assert 0.6 < len(answer) / len(question) < 1.4, (len(question), len(answer))


def test_cli_client_tells_a_closed_connection_and_its_own_deadline_from_a_server_that_answered(capsys):
    """A server killed mid-call was "could not be reached ... (something answered and closed the
    connection: if the server uses TLS, pass --tls-ca)"; a listener that never speaks gRPC was
    "answered (DEADLINE_EXCEEDED)". Both verdicts are the client's own."""
    import socket
    import threading

    def listener(close: bool) -> tuple[socket.socket, int]:
        sock = socket.create_server(("127.0.0.1", 0))
        held = []

        def serve():
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:  # closed by the test
                    return
                conn.close() if close else held.append(conn)  # a dead server, or a silent one

        threading.Thread(target=serve, daemon=True).start()
        return sock, sock.getsockname()[1]

    dead, port = listener(close=True)
    try:
        assert cli_main(["client", "--server", f"127.0.0.1:{port}", "--timeout", "5", "health"]) == 2
        err = capsys.readouterr().err
        assert f"server 127.0.0.1:{port} closed the connection (UNAVAILABLE)" in err, err
        assert "the server stopped or restarted during the call, try again; or, if it uses TLS, pass --tls-ca" in err
    finally:
        dead.close()
    silent, port = listener(close=False)
    try:
        assert cli_main(["client", "--server", f"127.0.0.1:{port}", "--timeout", "1", "health"]) == 2
        err = capsys.readouterr().err
        assert f"server 127.0.0.1:{port} gave no answer in time (DEADLINE_EXCEEDED): Deadline Exceeded (--timeout 1 s)" \
            in err, err
    finally:
        silent.close()
    src = Path(__file__)  # any existing file: -o is refused before it is read
    # was: "newdir/: audio is written as .wav, ...; got no extension"
    assert cli_main(["client", "--server", "127.0.0.1:1", "denoise", str(src), "-o", "no-such-dir/"]) == 2
    assert "-o no-such-dir/: no such folder; make it first" in capsys.readouterr().err
    for bad in ("0", "-1", "nan"):  # was the client library's "max_message_mb must be positive, got 0.0"
        with pytest.raises(SystemExit):
            cli_main(["client", "--max-message-mb", bad, "health"])
        assert f"--max-message-mb: must be more than 0 MB, got {bad}" in capsys.readouterr().err


def test_cli_client_names_its_own_message_limit_not_the_server(mixed_server, tmp_path, capsys):
    """gRPC refuses a request over the client's --max-message-mb in the client; the CLI said
    "server ... answered (RESOURCE_EXHAUSTED): CLIENT: Sent message larger than max"."""
    src = tmp_path / "in.wav"
    write_audio(src, _noisy(2.0, 16000), 16000, subtype="FLOAT")  # 128 kB
    argv = ["client", "--server", f"127.0.0.1:{mixed_server.port}", "--max-message-mb", "0.05", "denoise", str(src),
            "-o", str(tmp_path / "out.wav"), "--model", "tiny"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "the request is 0.1 MB, over this client's --max-message-mb 0.05: raise it" in err, err
    assert "answered" not in err and not (tmp_path / "out.wav").exists()
    # and an answer over it: a request within the limit whose components are not
    argv = ["client", "--server", f"127.0.0.1:{mixed_server.port}", "--max-message-mb", "0.2", "decompose", str(src),
            "-o", str(tmp_path / "parts"), "--fit", "0"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"the server's answer is \d+\.\d MB, over this client's --max-message-mb 0\.2: raise it", err), err


def test_cli_client_decompose_defaults_to_the_local_commands_grouping(mixed_server, tmp_path, capsys):
    x = _noisy(1.0, 48000, channels=2)
    src, out = tmp_path / "in.wav", tmp_path / "parts"
    write_audio(src, x, 48000, subtype="FLOAT")
    assert cli_main(["client", "decompose", str(src), "-o", str(out), "--server", f"127.0.0.1:{mixed_server.port}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    labels = [c["label"] for c in summary["components"]]
    assert 1 <= len(labels) <= 16 and all(label.startswith("cluster ") for label in labels)
    names = sorted(f.name for f in out.glob("[0-9][0-9]_*.wav"))
    assert names == [c["file"] for c in summary["components"]]
    assert all(re.fullmatch(r"\d\d_cluster_\d+_\d+(_\d+)?_Hz_\d+_units?\.wav", n) for n in names), names
    err = _folder_sum(out, "[0-9][0-9]_*.wav") - x
    assert 10 * np.log10((err**2).sum() / (x.astype(np.float64) ** 2).sum()) < -90


def test_cli_client_decompose_writes_what_the_local_command_writes(mixed_server, tmp_path, capsys):
    """The same recording through `audioae decompose` and `audioae client decompose`: the same
    files, the same summary (but the model's name), the same printed table, the same waveforms."""
    x = _noisy(1.0, 22050, channels=2)
    src = tmp_path / "in.wav"
    write_audio(src, x, 22050, subtype="FLOAT")
    flags = ["--group", "band", "--groups", "4", "--fit", "0"]
    assert cli_main(["decompose", str(src), "-o", str(tmp_path / "local"), *flags]) == 0
    local_out = capsys.readouterr().out
    assert cli_main(["client", "decompose", str(src), "-o", str(tmp_path / "remote"), *flags,
                     "--server", f"127.0.0.1:{mixed_server.port}"]) == 0
    remote_out = capsys.readouterr().out
    assert local_out.replace(str(tmp_path / "local"), "OUT") == remote_out.replace(str(tmp_path / "remote"), "OUT")
    names = sorted(f.name for f in (tmp_path / "local").iterdir())
    assert names == sorted(f.name for f in (tmp_path / "remote").iterdir())
    assert {"activations.npy", "residual.wav", "summary.json"} < set(names) and names[0].startswith("01_band_")
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("local", "remote"))
    assert a.pop("model").endswith(f"{DEFAULT_DECOMPOSER}.safetensors") and b.pop("model") == DEFAULT_DECOMPOSER
    assert a == b
    assert a["group"] == "band" and a["fit_steps"] == 0 and a["channels"] == 2 and a["samples"] == 22050
    for name in names:
        if name.endswith(".wav"):
            np.testing.assert_allclose(read_audio(tmp_path / "local" / name)[0],
                                       read_audio(tmp_path / "remote" / name)[0], atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "local" / "activations.npy"),
                               np.load(tmp_path / "remote" / "activations.npy"), atol=1e-6)


def test_a_silent_recording_decomposes_into_its_residual_alone_locally_and_through_the_server(
        mixed, mixed_server, tmp_path, capsys):
    """Silence has no component: the server sends the residual alone, which the client dropped
    (components and residual None), so `client decompose` wrote no residual.wav where `audioae
    decompose` does."""
    silence = np.zeros((2, 8000), np.float32)
    d = mixed.decompose(silence, 16000, components=True)
    assert d.labels == [] and d.components.shape == (0, 2, 8000)
    np.testing.assert_array_equal(d.residual, silence)
    src = tmp_path / "silence.wav"
    write_audio(src, silence, 16000, subtype="PCM_16")
    assert cli_main(["decompose", str(src), "-o", str(tmp_path / "local")]) == 0
    assert cli_main(["client", "decompose", str(src), "-o", str(tmp_path / "remote"),
                     "--server", f"127.0.0.1:{mixed_server.port}"]) == 0
    capsys.readouterr()
    names = sorted(f.name for f in (tmp_path / "local").iterdir())
    assert names == ["activations.npy", "residual.wav", "summary.json"]
    assert names == sorted(f.name for f in (tmp_path / "remote").iterdir())
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("local", "remote"))
    a.pop("model"), b.pop("model")
    assert a == b and b["residual_file"] == "residual.wav"
    assert b["residual_energy_share"] is None  # no energy to share (the wire said 0.0 until 2026-12-07)


def test_a_decomposition_from_a_server_older_than_the_summary_fields_still_saves(mixed, tmp_path):
    """A server from before 2026-12-06 sends no rate, channels or length: the waveforms give them."""
    from audioae.v1 import audioae_pb2 as pb

    x = _noisy(0.5, 22050, channels=2)
    req = pb.DecomposeRequest(audio=pb.Audio(pcm=pcm_message(x, 22050, "float32")), top_k=2, group="band",
                              return_components=True, fit_steps=0)
    resp = mixed.stub.Decompose(req, timeout=60)
    for name in ("group", "fit_steps", "residual_energy_share", "error_db", "sample_rate", "channels", "samples"):
        resp.ClearField(name)
    for comp in resp.components:
        for name in ("dominant_hz", "active_fraction", "active"):
            comp.ClearField(name)
    summary, files = save_decomposition(decompose_result(resp), tmp_path / "old")
    assert (summary["sample_rate"], summary["channels"], summary["samples"]) == (22050, 2, x.shape[-1])
    total = sum(read_audio(f)[0].astype(np.float64) for f in files if f.suffix == ".wav")
    assert read_audio(files[1])[1] == 22050 and np.abs(total - x).max() < 1e-5


def test_cli_client_decompose_refuses_a_file_or_a_folder_holding_the_input(mixed_server, tmp_path, capsys):
    src = tmp_path / "residual.wav"  # a name the decomposition writes into its folder
    write_audio(src, _noisy(0.5, 16000), 16000)
    before = src.read_bytes()
    base = ["client", "decompose", str(src), "--server", f"127.0.0.1:{mixed_server.port}"]
    assert cli_main([*base, "-o", str(tmp_path)]) == 2
    assert "has a name this command writes there" in capsys.readouterr().err
    assert src.read_bytes() == before
    (tmp_path / "taken").write_text("mine")
    assert cli_main([*base, "-o", str(tmp_path / "taken")]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine"


def test_integer_samples_and_time_first_arrays_are_refused_before_the_call(mixed):
    x = _noisy(0.5, 16000)[0]  # [T] float32
    for bad, text in (((x * 32767).astype(np.int16), "float samples in [-1, 1] expected, got int16"),
                      (np.stack([x, x], 1), "looks like [T, C]"),
                      (x[None, None], "[T] or [C, T] expected")):
        with pytest.raises(ValueError, match=re.escape(text)):
            mixed.denoise(bad, 16000)
        with pytest.raises(ValueError, match=re.escape(text)):
            list(mixed.stream([bad], 16000, channels=1))
    with pytest.raises(ValueError, match="looks like"):
        mixed.decompose(np.stack([x, x], 1), 16000)
    y = mixed.denoise(x.astype(np.float64), 16000)  # any float works, [T] in gives [T] out
    assert y.shape == x.shape and np.abs(y).max() < 1
    assert mixed.denoise(np.stack([x, x]), 16000).shape == (2, len(x))


def test_client_stream_keeps_its_timeout_as_client_denoise_does(mixed_server, tmp_path, capsys):
    """docs/serving.md: every client command takes --timeout, a per-call deadline. ``client stream``
    ran without one (stream_file left the client's timeout out, as a live stream must), so a call
    that should have ended at its deadline ran on. A deadline of a microsecond has passed before any
    answer can come: the call ends with DEADLINE_EXCEEDED and writes nothing. The CLI's stream is
    stopped at its ListModels question already; the Client.stream_file lines test the fix. Which
    side says DEADLINE_EXCEEDED first is a race (the server checks the deadline too), so both
    wordings pass; the exit code 2 and nothing written are the point."""
    src = tmp_path / "in.wav"
    write_audio(src, _noisy(0.5, 16000), 16000)
    addr = f"127.0.0.1:{mixed_server.port}"
    for command in ("denoise", "stream"):
        out = tmp_path / f"{command}.wav"
        assert cli_main(["client", "--server", addr, "--timeout", "0.000001", command, str(src), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        # the client's own deadline usually fires first; the server may answer DEADLINE_EXCEEDED
        # itself when the call reached it ("waited for the device"): either way the timeout held
        assert re.search(rf"server {re.escape(addr)} (gave no answer in time|answered) \(DEADLINE_EXCEEDED\)", err), (command, err)
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]
    with Client(addr, timeout=0.000001) as c:  # the Python API: the client's timeout, unless the call names one
        assert _code(c.stream_file, src, tmp_path / "py.wav")[0] == CODE.DEADLINE_EXCEEDED
        assert c.stream_file(src, tmp_path / "py.wav", timeout=60)["frames"] == 8000


def test_a_chunk_that_disagrees_with_the_stream_and_a_fractional_rate_are_refused(mixed):
    x = _noisy(0.5, 16000)  # [1, T]
    stereo = np.concatenate([x, x])  # [2, T]
    with pytest.raises(ValueError, match=re.escape("chunk 2 has 2 channel(s), the stream was opened with channels=1")):
        list(mixed.stream([x[:, :1600], stereo[:, 1600:3200]], 16000))  # was sent as 3200 mono frames
    with pytest.raises(ValueError, match=re.escape("chunk 1 has 1 channel(s), the stream was opened with channels=2")):
        list(mixed.stream([x[0]], 16000, channels=2))
    with pytest.raises(ValueError, match="pcm_format must be 'int16' or 'float32', got 'pcm16'"):
        list(mixed.stream([x], 16000, pcm_format="pcm16"))
    with pytest.raises(ValueError, match="sample_rate: a sample rate is a whole number of Hz, got 44100.5"):
        mixed.denoise(x, 44100.5)  # was sent as 44100
    with pytest.raises(ValueError, match=re.escape("a sample rate is a number of Hz, got '16000' (a str)")):
        mixed.denoise(x, "16000")  # was "a whole number of Hz, got 16000"
    assert sum(y.shape[-1] for y in mixed.stream([x[:, :800], x[:, 800:]], 16000.0)) == x.shape[-1]  # mono default


def test_encoded_bytes_may_come_as_a_memoryview(mixed):
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, _noisy(0.5, 16000)[0], 16000, format="WAV")
    res = mixed.decompose(memoryview(buf.getvalue()), top_k=2, fit_steps=0)  # was "needs its sample rate"
    assert res.sample_rate == 16000 and res.activations.size > 0


def test_streaming_a_file_cut_short_names_it_and_writes_nothing(mixed, tmp_path):
    """The stream reads the file block by block; a FLAC whose frames stop mid-way failed with
    libsndfile's bare "Error : flac decoder lost sync."."""
    from audioae.audio import AudioError

    _, src = whole_and_cut(tmp_path, _noisy(2.0, 16000)[0], 16000, ext="flac")
    with pytest.raises(AudioError, match=r"cut\.flac: cannot decode the audio after \d+ samples .* truncated or corrupt"):
        mixed.stream_file(src, tmp_path / "out.flac", model="tiny", chunk_ms=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.flac", "whole.flac"]  # no output, no temporary


def test_the_client_does_not_import_torch(mixed_server, tmp_path):
    """An engineer's service that calls the server needs grpc, numpy and soundfile, not torch
    (0.6 GB resident and seconds to import): the client commands and ``audioae.client`` run
    without loading it, here a real denoise call against a real server in a fresh process."""
    import subprocess
    import sys

    src = tmp_path / "in.wav"
    sf.write(src, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    code = (
        "import sys\n"
        "from audioae.cli import main\n"
        f"rc = main(['client', '--server', '127.0.0.1:{mixed_server.port}', 'denoise', sys.argv[1], "
        "'-o', sys.argv[2], '--model', 'tiny'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'the client imported torch'\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out.wav")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sf.info(tmp_path / "out.wav").frames == 16000


def test_cli_client_prints_the_servers_warning_about_a_file_cut_short(mixed_server, mixed, tmp_path):
    """A WAV cut short (an interrupted copy) was denoised for the half it holds without a word, as
    the folder tool warns of it: `audioae client` now prints the server's warning on stderr, and
    the calls return it (``warnings``). A fresh process: the command's own logging, not pytest's."""
    import subprocess
    import sys

    whole, src = whole_and_cut(tmp_path, _noisy(2.0, 16000)[0], 16000)
    held = sf.info(src).frames
    code = (
        "import sys\n"
        "from audioae.cli import main\n"
        f"sys.exit(main(['client', '--server', '127.0.0.1:{mixed_server.port}', 'denoise', sys.argv[1], "
        "'-o', sys.argv[2], '--model', 'tiny']))\n"
    )
    out = tmp_path / "out.wav"
    run = subprocess.run([sys.executable, "-c", code, str(src), str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    warning = (f"audio: its header claims 64,000 bytes of audio but the file holds {2 * held:,} (a copy cut short, "
               f"or a recording that stopped mid-write?): answered for the {held / 16000:.2f} s it holds")
    assert f"127.0.0.1:{mixed_server.port} answered Denoise with a warning: {warning}" in run.stderr, run.stderr
    assert sf.info(out).frames == held and f"-> {out}" in run.stdout
    assert mixed.denoise_file(src, tmp_path / "again.wav", model="tiny")["warnings"] == [warning]
    assert mixed.decompose(src.read_bytes(), top_k=2, fit_steps=0).warnings == [warning]
    assert mixed.denoise_file(whole, tmp_path / "whole_out.wav", model="tiny")["warnings"] == []


def test_streaming_a_wav_cut_short_warns_before_it_streams(mixed, tmp_path, caplog):
    """client stream decodes the file itself and sends PCM: the server cannot tell it was cut short,
    and nothing said so (the same file through Denoise, or the folder tool, warned)."""
    whole, src = whole_and_cut(tmp_path, _noisy(2.0, 16000)[0], 16000)
    held = sf.info(src).frames
    with caplog.at_level("WARNING", logger="audioae.client"):
        r = mixed.stream_file(src, tmp_path / "out.wav", model="tiny", chunk_ms=50)
        mixed.stream_file(whole, tmp_path / "whole_out.wav", model="tiny", chunk_ms=50)
    assert r["frames"] == held
    assert [rec.getMessage() for rec in caplog.records if rec.name == "audioae.client"] == [
        f"{src}: its header claims 64,000 bytes of audio but the file holds {2 * held:,} (a copy cut short, or a "
        f"recording that stopped mid-write?): streaming the {held / 16000:.2f} s it holds"]


def test_a_token_sent_beyond_loopback_without_tls_is_warned_about(caplog, tmp_path):
    """Was: no word, although gRPC sends the token as it is to anyone on the path (the server warns
    its operator; the client's user had no warning)."""
    import logging

    from audioae.client import Client, read_tokens

    with caplog.at_level(logging.WARNING, logger="audioae.client"):
        for target in ("127.0.0.1:50051", "localhost:1", "[::1]:5", "unix:/tmp/audioae.sock"):
            Client(target, token="t").close()
        assert not caplog.records
        Client("dns:///audio.example.com:443", token="t").close()  # channels connect lazily: nothing is sent
        Client("10.0.0.7:50051").close()  # no token, nothing to leak
    assert [r.getMessage() for r in caplog.records] == [
        "dns:///audio.example.com:443: the token goes in plaintext (no TLS: pass the server's CA with tls_ca / "
        "--tls-ca)"]
    bad = tmp_path / "token"
    bad.write_bytes(b"\xff\xfe secret")
    with pytest.raises(ValueError, match=f"--token-file {bad}: not text"):  # was a bare UnicodeDecodeError
        read_tokens(bad)


@pytest.mark.parametrize("target", ["LOCALHOST:50051", "localhost.:50051", "dns:localhost:50051",
                                    "dns://8.8.8.8/127.0.0.1:50051", "[::ffff:127.0.0.1]:50051",
                                    "unix-abstract:audioae"])
def test_a_token_sent_to_this_machine_in_other_spellings_is_not_warned_about(caplog, target):
    """Was "the token goes in plaintext" for each: gRPC's dns:host:port and dns://resolver/host
    forms, a name in capitals, an IPv4-mapped loopback address and an abstract unix socket."""
    import logging

    from audioae.client import Client

    with caplog.at_level(logging.WARNING, logger="audioae.client"):
        Client(target, token="t").close()  # channels connect lazily: nothing is sent
    assert not caplog.records


# ---- who said UNAVAILABLE; what a failed stream leaves ---------------------------------------------------
def test_cli_client_tells_a_servers_unavailable_from_grpcs(model_dir, tmp_path, capsys):
    """A draining server's UNAVAILABLE ("the server is shutting down; retry on another replica")
    was printed as "could not be reached", as if nothing had answered; gRPC's own UNAVAILABLE (a
    stopped server: "failed to connect ... Connection refused") still is. The drain is made
    deterministic by a stream held open: drain() waits for it, refusing new calls meanwhile."""
    import threading
    import time

    from audioae.client import unavailable_source

    src = tmp_path / "in.wav"
    write_audio(src, _noisy(0.5, 16000), 16000)
    stopped = _start(models=(str(model_dir / "tiny.safetensors"),))
    addr = f"127.0.0.1:{stopped.port}"
    stopped.stop()
    assert cli_main(["client", "--server", addr, "--timeout", "5", "denoise", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"server {addr} could not be reached (UNAVAILABLE): failed to connect" in err, err

    srv = _start(models=(str(model_dir / "tiny.safetensors"),))
    addr = f"127.0.0.1:{srv.port}"
    release, outs, drained = threading.Event(), [], []
    x = _noisy(0.5, 16000)

    def chunks():
        yield x
        release.wait(60)

    with Client(addr, timeout=60) as c:
        reader = threading.Thread(target=lambda: outs.extend(c.stream(chunks(), 16000)))
        reader.start()
        drainer = None
        try:
            end = time.monotonic() + 30
            while not outs and time.monotonic() < end:  # the stream is in: the drain waits for it
                time.sleep(0.05)
            drainer = threading.Thread(target=lambda: drained.append(srv.drain(timeout=60)))
            drainer.start()
            while c.health() != "NOT_SERVING" and time.monotonic() < end:
                time.sleep(0.05)
            answer = f"server {addr} answered (UNAVAILABLE): the server is shutting down; retry on another replica"
            assert cli_main(["client", "--server", addr, "--timeout", "30", "denoise", str(src)]) == 2
            err = capsys.readouterr().err
            assert answer in err and "could not be reached" not in err, err
            out = tmp_path / "out.wav"
            assert cli_main(["client", "--server", addr, "--timeout", "30", "stream", str(src), "-o", str(out)]) == 2
            assert f"{answer}; nothing was written to {out}" in capsys.readouterr().err
        finally:
            release.set()
            reader.join(60)
            if drainer is not None:
                drainer.join(90)
            else:
                srv.stop()
    assert drained == [True] and sum(y.shape[-1] for y in outs) == x.shape[-1]  # the held stream was answered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]
    # gRPC's words as grpcio 1.85 gives them, and a server's own
    assert unavailable_source("Cancelling all calls") == unavailable_source("Socket closed") == "closed"
    assert unavailable_source("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
                              "Failed to connect to remote host: Connection refused") == "unreached"
    assert unavailable_source("the server is still loading its models; retry shortly") == "server"


def test_an_unavailable_is_the_servers_only_in_its_own_words(tmp_path, capsys):
    """Words on neither of gRPC's lists read "server" ("answered"): a name that does not resolve,
    a keepalive timeout, a proxy's reply. Only the server's own UNAVAILABLE (it starts "the server
    is ") is its answer now."""
    from audioae.client import SERVER_UNAVAILABLE, unavailable_source
    from audioae.server.errors import Abort
    from audioae.server.lifecycle import Gate

    src = tmp_path / "in.wav"
    write_audio(src, _noisy(0.5, 16000), 16000)
    addr = "nonexistent.invalid:1"  # .invalid never resolves (RFC 6761): no network needed
    with Client(addr, timeout=10) as c:
        code, msg = _code(c.list_models)
    assert code == CODE.UNAVAILABLE and unavailable_source(msg) == "unreached", msg
    assert cli_main(["client", "--server", addr, "--timeout", "10", "denoise", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"server {addr} could not be reached (UNAVAILABLE): " in err and "answered" not in err, err
    for words, source in (
        ("DNS resolution failed for nonexistent.invalid:1: C-ares status is not ARES_SUCCESS qtype=A "
         "name=nonexistent.invalid is_balancer=0: Domain name not found", "unreached"),
        # a listener that takes the connection and closes it says either (a TLS server to a plain client)
        ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: "
         "recvmsg:Connection reset by peer (104)", "closed"),
        ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed", "closed"),
        ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Some new words", "unreached"),
        ("keepalive watchdog timeout", "closed"),
        ("Transport closed", "closed"),
        ("upstream connect error or disconnect/reset before headers. reset reason: connection failure", "unreached"),
        ("Received http2 header with status: 503", "unreached"),
        ("the server is shutting down and its drain time (2 s) ran out; retry on another replica", "server"),
    ):
        assert unavailable_source(words) == source, words
    # the server's own UNAVAILABLE messages, as the gate sends them
    gate = Gate()
    for state in ("starting", "draining"):
        gate.state = state
        with pytest.raises(Abort) as info:
            gate.enter()
        assert info.value.message.startswith(SERVER_UNAVAILABLE), info.value.message


def test_cli_client_stream_that_fails_midway_says_nothing_was_written(model_dir, tmp_path, capsys):
    """docs/serving.md: a refused call writes no output file. A stream ended at --max-stream-seconds
    says "the audio up to there was answered", and the message did not say that none of it was
    kept: it now names the file that was not written."""
    srv = _start(models=(str(model_dir / "tiny.safetensors"),), max_stream_seconds=1)
    try:
        src = tmp_path / "in.wav"
        write_audio(src, _noisy(3.0, 16000), 16000)
        (tmp_path / "cleaned").mkdir()
        for out, written in ((tmp_path / "out.wav", tmp_path / "out.wav"),
                             (tmp_path / "cleaned", tmp_path / "cleaned" / "in.wav")):  # a folder: its file named
            argv = ["client", "--server", f"127.0.0.1:{srv.port}", "stream", str(src), "-o", str(out)]
            assert cli_main(argv) == 2
            err = capsys.readouterr().err
            assert re.search(r"answered \(RESOURCE_EXHAUSTED\): the stream reached 1 s, .*; the audio up to there was "
                             rf"answered; nothing was written to {re.escape(str(written))}$", err.strip()), err
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["cleaned", "in.wav"]
    finally:
        srv.stop()


# ---- Client.decompose's defaults ---------------------------------------------------------------------
def test_client_decompose_has_the_clis_defaults(mixed):
    """Client.decompose sent the RPC's own (every unit, ungrouped), `client decompose` 16 clusters:
    a minute of 16 kHz mono was refused ("...into up to 320 components needs 1.1 GiB")."""
    import inspect

    from audioae import decomposition_folder as folder
    from audioae.cli import build_parser

    sig = inspect.signature(Client.decompose).parameters
    remote = build_parser().parse_args(["client", "decompose", "x.wav"])
    local = build_parser().parse_args(["decompose", "x.wav", "-o", "out"])
    assert (sig["top_k"].default, sig["group"].default) == (remote.top_k, remote.group) == (local.top, local.group) \
        == (folder.DEFAULT_TOP_K, folder.DEFAULT_GROUP) == (16, "cluster")
    x = _noisy(60.0, 16000)
    r = mixed.decompose(x, 16000, fit_steps=0)
    assert r.group == "cluster" and 1 <= len(r.labels) <= 16 and r.samples == x.shape[-1]
    code, msg = _code(mixed.decompose, x, 16000, top_k=0, group="none", fit_steps=0)  # the RPC's own, asked for
    assert code == CODE.RESOURCE_EXHAUSTED and "into up to 320 components needs 1.1 GiB" in msg, msg


# ---- the format a file is streamed in ------------------------------------------------------------------
def test_client_stream_of_a_16_bit_file_sends_int16(model_dir, tmp_path):
    """A PCM_16 WAV was streamed as float32, twice its bytes: a 20 s chunk (1,280,004 bytes) over a
    1 MB --max-request-mb server was refused, at half the audio a file of that size holds. It goes
    as int16 now (640,004 bytes), answered as before within int16's quantisation; a float file
    still goes as float32."""
    srv = _start(models=(str(model_dir / "tiny.safetensors"),), max_request_mb=1)
    try:
        x = _noisy(20.0, 16000)
        pcm16, flt = tmp_path / "pcm16.wav", tmp_path / "float.wav"
        write_audio(pcm16, x, 16000, subtype="PCM_16")
        write_audio(flt, x, 16000, subtype="FLOAT")
        with Client(f"127.0.0.1:{srv.port}", timeout=120) as c:
            assert c.stream_file(pcm16, tmp_path / "now.wav", chunk_ms=20000)["frames"] == x.shape[-1]
            for src, kw in ((pcm16, {"pcm_format": "float32"}), (flt, {})):  # what was sent before, and float input
                code, msg = _code(c.stream_file, src, tmp_path / "refused.wav", chunk_ms=20000, **kw)
                assert code == CODE.RESOURCE_EXHAUSTED and "the 2nd message is 1,280,004 bytes" in msg, msg
            c.stream_file(pcm16, tmp_path / "before.wav", chunk_ms=10000, pcm_format="float32")  # 640,004 bytes
        assert not (tmp_path / "refused.wav").exists()
        now, before = (sf.read(tmp_path / f"{n}.wav", dtype="int16")[0].astype(np.int32) for n in ("now", "before"))
        assert sf.info(tmp_path / "now.wav").subtype == "PCM_16" and now.shape == before.shape == (x.shape[-1],)
        assert np.abs(now - before).max() <= 1
    finally:
        srv.stop()


@pytest.mark.parametrize(("name", "subtype"), [("u8.wav", "PCM_U8"), ("s8.aiff", "PCM_S8")])
def test_client_stream_of_an_8_bit_file_sends_int16_and_writes_its_subtype(model_dir, tmp_path, name, subtype):
    """8-bit files went as float32, four times their bytes (a 20 s chunk: 1,280,004 bytes, over a 1 MB
    server); int16 holds their samples exactly (one 8-bit step is 256 of int16's) at half float32's
    bytes, as for PCM_16. The answer is written in the file's own subtype, as float32 would have it."""
    srv = _start(models=(str(model_dir / "tiny.safetensors"),), max_request_mb=1)
    try:
        x = _noisy(20.0, 16000)
        src = tmp_path / name
        write_audio(src, x, 16000, subtype=subtype)
        now, before = tmp_path / f"now{src.suffix}", tmp_path / f"before{src.suffix}"
        with Client(f"127.0.0.1:{srv.port}", timeout=120) as c:
            assert c.stream_file(src, now, chunk_ms=20000)["frames"] == x.shape[-1]
            code, msg = _code(c.stream_file, src, tmp_path / f"refused{src.suffix}", chunk_ms=20000,
                              pcm_format="float32")  # what was sent before
            assert code == CODE.RESOURCE_EXHAUSTED and "the 2nd message is 1,280,004 bytes" in msg, msg
            c.stream_file(src, before, chunk_ms=10000, pcm_format="float32")
        assert sf.info(now).subtype == sf.info(before).subtype == subtype
        a, b = (sf.read(f, dtype="int16")[0].astype(np.int32) // 256 for f in (now, before))  # 8-bit steps
        assert a.shape == b.shape == (x.shape[-1],) and np.abs(a - b).max() <= 1
    finally:
        srv.stop()
