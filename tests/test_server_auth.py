"""What an operator hears before exposing the service, and what a caller without the token gets
from a real server on 127.0.0.1: refusals, never the token in a log line, health open, reflection
closed."""

from __future__ import annotations

import logging
import os

import grpc
import pytest

from audioae.client import Client
from audioae.server import AudioServer, ServerConfig

SECRET = "s3cret-token-of-the-test"


@pytest.fixture
def tiny(causal_ckpt) -> str:
    """conftest's tiny denoiser as a --models spec, served under the name "tiny"."""
    return f"tiny={causal_ckpt}"


def _tokens(tmp_path, mode: int):
    path = tmp_path / "tokens"
    path.write_text(f"# the test's\n{SECRET}\n")
    os.chmod(path, mode)
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("audioae.server")]


def test_serving_beyond_loopback_warns_of_no_token_of_plaintext_tokens_and_of_a_readable_token_file(
        tiny, tmp_path, caplog):
    """Nothing was said: a token file other users could read, tokens sent in plaintext to 0.0.0.0,
    or a service open to the network without any token. (The servers are built, not started:
    the warnings come before anything binds.)"""
    caplog.set_level(logging.WARNING)
    AudioServer(ServerConfig(host="0.0.0.0", port=0, models=(tiny,), token_file=str(_tokens(tmp_path, 0o644)),
                             codec_workers=0))
    said = _warnings(caplog)
    assert any("serving on 0.0.0.0 with bearer tokens but without TLS: each call carries its token in plaintext"
               in w for w in said), said
    assert any(f"--token-file {tmp_path / 'tokens'}: other users of this machine can read it (mode 644); "
               "chmod 600 it" in w for w in said), said
    caplog.clear()
    AudioServer(ServerConfig(host="0.0.0.0", port=0, models=(tiny,), codec_workers=0))
    assert any("serving on 0.0.0.0 without --token-file: anyone who reaches the port can use the models" in w
               for w in _warnings(caplog)), _warnings(caplog)


def test_a_loopback_server_with_a_private_token_file_refuses_without_a_word_of_the_token(tiny, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    srv = AudioServer(ServerConfig(port=0, models=(tiny,), token_file=str(_tokens(tmp_path, 0o600)),
                                   codec_workers=0, torch_threads=1))
    srv.start()
    try:
        srv.load()
        assert _warnings(caplog) == []  # loopback and mode 600: nothing to warn of
        target = f"127.0.0.1:{srv.port}"
        with Client(target, token=SECRET, timeout=30) as c:
            assert [m["name"] for m in c.list_models()["models"]] == ["tiny"]
        for token, why in ((None, "missing bearer token"), ("wrong-" + SECRET, "invalid bearer token")):
            with Client(target, token=token, timeout=30) as c:
                assert c.health() == "SERVING"  # open for probes
                with pytest.raises(grpc.RpcError) as info:
                    c.list_models()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and why in info.value.details()
                assert SECRET not in info.value.details()
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

        with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError) as info:
            ProtoReflectionDescriptorDatabase(ch).get_services()  # docs/serving.md: reflection needs the token
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        srv.stop()
    assert not [r for r in caplog.records if SECRET in r.getMessage()]
