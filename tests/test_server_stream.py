"""StreamDenoise when the server ends a stream before its client does: a length limit, an idle
client, a drain. Each time the audio the server was sent is answered before the call ends, and
the call's status says why. Real servers on 127.0.0.1."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from audioae.checkpoint import load_checkpoint, save_checkpoint
from audioae.client import Client
from audioae.data.synthetic import speech_like
from audioae.enhance import denoise
from audioae.models import build_model
from audioae.server import AudioServer, ServerConfig
from audioae.v1 import audioae_pb2 as pb
from audioae.v1 import audioae_pb2_grpc

SR = 16000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    torch.manual_seed(0)
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), path)
    return path


def _server(tiny: Path, **kw) -> AudioServer:
    srv = AudioServer(ServerConfig(port=0, models=(str(tiny),), torch_threads=1, codec_workers=0, **kw))
    srv.start()
    srv.load()
    return srv


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (speech_like(rng, seconds, SR) + 0.05 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def _config() -> pb.StreamDenoiseRequest:
    return pb.StreamDenoiseRequest(config=pb.StreamConfig(sample_rate=SR, channels=1, format=pb.FLOAT32))


def _audio(x: np.ndarray) -> pb.StreamDenoiseRequest:
    return pb.StreamDenoiseRequest(audio=x.astype("<f4").tobytes())


def _collect(call) -> tuple[list[pb.StreamDenoiseResponse], grpc.RpcError | None]:
    """The responses a stream gave, and the error it ended with (None: OK)."""
    got = []
    try:
        for resp in call:
            got.append(resp)
    except grpc.RpcError as exc:
        return got, exc
    return got, None


def _counted_and_goes_on(srv: AudioServer, code: str, n: int) -> None:
    """The refused streams are counted under ``code`` (``n`` of them), and the server goes on."""
    assert srv.metrics.registry.get_sample_value(
        "audioae_requests_total", {"method": "StreamDenoise", "code": code}) == n
    with Client(f"127.0.0.1:{srv.port}") as c:
        assert np.concatenate(list(c.stream([_speech(1.0)], SR, 1)), -1).shape == (1, SR)


def _samples(responses) -> np.ndarray:
    return np.concatenate([np.frombuffer(r.audio, "<f4") for r in responses])


def test_a_stream_over_its_length_limit_answers_what_fits_then_ends(tiny):
    # was: RESOURCE_EXHAUSTED on the chunk that passed --max-audio-seconds, with the audio before it
    # still held back in the model unanswered; streams are now limited by --max-stream-seconds alone
    srv = _server(tiny, max_stream_seconds=2.0)
    try:
        x = _speech(3.0)
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:  # raw stubs: every response's counts
            stub = audioae_pb2_grpc.AudioAEStub(ch)
            msgs = [_config()] + [_audio(x[i : i + 8000]) for i in range(0, len(x), 8000)]
            got, err = _collect(stub.StreamDenoise(iter(msgs), timeout=60))
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the stream reached 2 s, this server's limit (--max-stream-seconds); the audio up to there was answered" \
            in err.details()
        y = _samples(got)
        assert len(y) == 2 * SR and got[-1].samples_in == got[-1].samples_out == 2 * SR
        np.testing.assert_allclose(y, denoise(load_checkpoint(tiny), x[: 2 * SR], SR), atol=1e-4)
    finally:
        srv.stop()


def test_long_multichannel_streams_are_not_held_to_the_clip_limits(tiny):
    # A stream's memory does not grow with its length or its channel-seconds: 8 channels of 8 s at
    # 1 kHz were refused as 64 channel-seconds over a 60 s budget, with --max-audio-seconds 30
    srv = _server(tiny, max_audio_seconds=30)
    try:
        x = np.stack([_speech(8.0, seed=c)[::16] for c in range(8)])  # [8, 8000] at 1 kHz
        with Client(f"127.0.0.1:{srv.port}") as c:
            y = np.concatenate(list(c.stream([x[:, i : i + 1000] for i in range(0, 8000, 1000)], 1000, 8)), -1)
        assert y.shape == x.shape
    finally:
        srv.stop()


def test_an_idle_stream_is_ended_with_its_audio_answered_and_frees_its_slot(tiny):
    srv = _server(tiny, max_streams=1, stream_idle_seconds=1.0)
    release = threading.Event()
    try:
        x = _speech(0.5)

        def stalls():  # sends its config and one chunk, then nothing, without half-closing
            yield _config()
            yield _audio(x)
            release.wait(30)

        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = audioae_pb2_grpc.AudioAEStub(ch)
            got, err = _collect(stub.StreamDenoise(stalls(), timeout=60))
            assert err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            assert "no message for 1 s: the stream was ended (--stream-idle-seconds)" in err.details()
            assert len(_samples(got)) == len(x)  # the chunk it sent came back whole
            release.set()
            # a stream that never sends its config is ended too
            silent = threading.Event()

            def nothing():
                silent.wait(30)
                yield _config()

            _, err = _collect(stub.StreamDenoise(nothing(), timeout=60))
            silent.set()
            assert err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # the one slot (--max-streams 1) is free again
            got, err = _collect(stub.StreamDenoise(iter([_config(), _audio(x)]), timeout=60))
            assert err is None and len(_samples(got)) == len(x)
    finally:
        release.set()
        srv.stop()


def test_empty_audio_chunks_keep_an_idle_stream_open_unanswered(tiny):
    # A client with nothing to send (a muted microphone) sends audio=b"" to keep its stream: each is
    # taken as no frames, answered with nothing, and restarts the --stream-idle-seconds wait.
    srv = _server(tiny, stream_idle_seconds=1.0)
    try:
        x = _speech(0.5)

        def muted_for_a_while():  # 2 s without audio, over the 1 s idle limit
            yield _config()
            yield _audio(x[:4000])
            for _ in range(5):
                time.sleep(0.4)
                yield pb.StreamDenoiseRequest(audio=b"")
            yield _audio(x[4000:])

        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got, err = _collect(audioae_pb2_grpc.AudioAEStub(ch).StreamDenoise(muted_for_a_while(), timeout=60))
        assert err is None, err
        assert len(got) <= 3 and all(r.audio for r in got)  # two chunks of audio and the tail; never an empty answer
        assert got[-1].samples_in == got[-1].samples_out == len(x)
        np.testing.assert_allclose(_samples(got), denoise(load_checkpoint(tiny), x, SR), atol=1e-4)
    finally:
        srv.stop()


def test_a_drain_ends_an_open_stream_with_its_audio_answered(tiny, caplog):
    # was: a live stream got gRPC's bare "Cancelling all calls" when --drain-seconds ran out, and
    # the audio the model still held back was never returned
    srv = _server(tiny)
    x = _speech(0.1)
    sent = threading.Event()
    stop = threading.Event()

    def live_call():  # a voice call: 100 ms chunks until the end of time
        yield _config()
        while not stop.is_set():
            yield _audio(x)
            sent.set()
            time.sleep(0.05)

    result: dict = {}

    def drain():
        sent.wait(30)
        time.sleep(0.3)
        result["clean"] = srv.drain(timeout=2.0)

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="audioae.server"), grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got, err = _collect(audioae_pb2_grpc.AudioAEStub(ch).StreamDenoise(live_call(), timeout=60))
            stop.set()
            drainer.join(30)
    finally:
        stop.set()
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert "the server is shutting down: the stream was ended at the end of its drain" in err.details()
    y = _samples(got)
    assert got[-1].samples_out == got[-1].samples_in == len(y) > 0  # all the server was sent, answered
    assert result["clean"] is False  # the exit status says a drain cut calls short
    assert "drain: 1 calls still running after 2 s: streams, ended with the audio they had been sent answered" \
        in caplog.text


def test_the_clients_default_timeout_is_per_request_not_a_streams_whole_length(tiny):
    # was: Client(timeout=1).stream(...) ended every stream after 1 s with DEADLINE_EXCEEDED
    srv = _server(tiny)
    try:
        x = _speech(0.1)

        def paced():
            for _ in range(15):
                time.sleep(0.1)
                yield x

        with Client(f"127.0.0.1:{srv.port}", timeout=1) as c:
            y = np.concatenate(list(c.stream(paced(), SR)), -1)
            assert y.shape[-1] == 15 * len(x)
            with pytest.raises(grpc.RpcError) as info:  # a stream's own timeout still applies
                list(c.stream(paced(), SR, timeout=0.5))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        srv.stop()


def test_a_stream_its_client_finished_before_the_drain_deadline_ends_ok(tiny):
    # was: the deadline was checked before the queued messages, so a stream whose client had sent
    # everything and half-closed, while the model was still busy, got UNAVAILABLE "reconnect to
    # another replica" (a retry would redo the whole file) and the drain exited 1. Here the
    # deadline has passed before the call reads anything: its config, its audio and its
    # half-close are all still to be taken (the stream's own path, fed from a list; an end-to-end
    # version depended on the machine's speed).
    from audioae.server.feed import MessageFeed

    srv = _server(tiny)
    try:
        x = _speech(1.0)
        feed = MessageFeed(iter([_config(), _audio(x)]))
        for _ in range(500):  # the client's messages have reached the server (its queue holds two)
            if feed._q.full():
                break
            time.sleep(0.01)
        srv.gate.start_draining(within=0.0)  # no grace: only what has arrived is taken
        assert srv.gate.streams_must_end()
        got = list(srv.servicer._stream_from(feed))
        feed.close()
        assert got[-1].samples_in == got[-1].samples_out == len(x)
        np.testing.assert_allclose(_samples(got), denoise(load_checkpoint(tiny), x, SR), atol=1e-4)
        assert srv.gate.ended_streams == 0  # so the drain's exit status stays 0
    finally:
        srv.stop()


def test_a_drain_leaves_streams_half_its_margin_for_messages_on_their_way():
    # was: after the deadline a stream waited up to 0.5 s for each of three messages, 1.5 s in
    # all, past the 1 s margin before the drain's end, where gRPC cancels it without a message
    from audioae.server.lifecycle import STREAM_END_MARGIN, Gate

    gate = Gate()
    assert gate.stream_grace_left() == float("inf")  # no drain
    gate.start_draining(within=0.0)
    assert gate.streams_must_end() and gate.stream_grace_left() == 0.0
    gate = Gate()
    gate.start_draining(within=60.0)
    assert not gate.streams_must_end()
    assert 60.0 - STREAM_END_MARGIN < gate.stream_grace_left() <= 60.0 - STREAM_END_MARGIN / 2


@pytest.mark.parametrize("field", ["max_stream_seconds", "stream_idle_seconds", "drain_seconds", "max_audio_seconds"])
def test_a_limit_of_inf_or_nan_is_refused_at_start(field):
    # was: --max-stream-seconds inf failed every stream with INTERNAL (int(inf)), nan blamed the client
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}\\) must be a finite number"):
            ServerConfig(**{field: value})


def test_a_stream_message_over_the_request_limit_ends_it_with_the_audio_before_it_answered(tiny):
    """Was gRPC's own "Received message larger than max (1792004 vs. 1048576)", the call ended by gRPC
    before the servicer saw that message: the audio sent before it went unanswered (0 samples back).
    Now the chunks before it are answered, the model's tail included, and the status says what to do."""
    srv = _server(tiny, max_request_mb=1)
    try:
        x = _speech(1.0)
        big = _speech(28.0, seed=1)  # 1,792,000 bytes of float32
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = audioae_pb2_grpc.AudioAEStub(ch)
            msgs = [_config(), _audio(x[:8000]), _audio(x[8000:]), _audio(big), _audio(x)]
            got, err = _collect(stub.StreamDenoise(iter(msgs), timeout=60))
            assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert err.details() == (
                "the 4th message is 1,792,004 bytes (1.7 MB), over this server's message limit of 1,048,576 bytes "
                "(1 MB, --max-request-mb): send the stream's audio in smaller chunks (any whole number of frames; "
                "100 ms is typical); the audio before it was answered"), err.details()
            y = _samples(got)
            assert len(y) == SR and got[-1].samples_in == got[-1].samples_out == SR
            np.testing.assert_allclose(y, denoise(load_checkpoint(tiny), x, SR), atol=1e-4)

            config = pb.StreamConfig(model="m" * 1_100_000, sample_rate=SR, channels=1, format=pb.FLOAT32)
            got, err = _collect(stub.StreamDenoise(iter([pb.StreamDenoiseRequest(config=config)]), timeout=60))
            assert got == [] and err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert err.details().startswith("the 1st message, which should be the StreamConfig, is 1,100,0"), \
                err.details()  # was "(the StreamConfig)", of a message never parsed: it may be audio
            assert err.details().endswith(
                "(1 MB, --max-request-mb): send a StreamConfig first (model, sample_rate, channels, format: a few "
                "bytes), then the stream's audio in smaller chunks (any whole number of frames; 100 ms is typical)"), \
                err.details()
        _counted_and_goes_on(srv, "RESOURCE_EXHAUSTED", 2)
    finally:
        srv.stop()


def test_a_stream_message_protobuf_cannot_parse_ends_it_with_the_audio_before_it_answered(tiny):
    """Was INVALID_ARGUMENT at once, raised on the thread that reads the messages: the audio the
    model still held back for the chunks before it (its tail) never came back, where a message
    over the size limit had it answered first. Now both end the same way."""
    srv = _server(tiny)
    try:
        x = _speech(1.0)
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            raw = ch.stream_stream("/audioae.v1.AudioAE/StreamDenoise", request_serializer=lambda b: b,
                                   response_deserializer=pb.StreamDenoiseResponse.FromString)
            msgs = [m.SerializeToString() for m in (_config(), _audio(x[:8000]), _audio(x[8000:]))]
            got, err = _collect(raw(iter([*msgs, b"\xff\xff\xff", _audio(x).SerializeToString()]), timeout=60))
            assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert re.fullmatch(  # protobuf's own reason in the brackets differs by its implementation
                r"the 4th message: the request is not a valid audioae\.v1\.StreamDenoiseRequest message: protobuf "
                r"could not parse its 3 bytes \(.+\); build the client from proto/audioae/v1/audioae\.proto; the "
                r"audio before it was answered", err.details()), err.details()
            y = _samples(got)  # the two chunks before it, the model's tail included; nothing of the 5th
            assert len(y) == SR and got[-1].samples_in == got[-1].samples_out == SR
            np.testing.assert_allclose(y, denoise(load_checkpoint(tiny), x, SR), atol=1e-4)

            got, err = _collect(raw(iter([msgs[0], b"\xff\xff\xff"]), timeout=60))  # no audio: nothing to answer
            assert got == [] and err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert err.details().startswith("the 2nd message: the request is not a valid"), err.details()
            assert not err.details().endswith("the audio before it was answered"), err.details()
            got, err = _collect(raw(iter([b"\xff\xff\xff", msgs[1]]), timeout=60))
            assert got == [] and err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert err.details().startswith("the 1st message, which should be the StreamConfig: the request is not "
                                            "a valid audioae.v1.StreamDenoiseRequest message"), err.details()
        _counted_and_goes_on(srv, "INVALID_ARGUMENT", 3)
    finally:
        srv.stop()


BAD_MESSAGES = {  # a bad message after two good chunks of audio, and what the server says of it
    "bytes not whole frames": (pb.StreamDenoiseRequest(audio=b"\x00" * 7),
                               "audio chunk 3 (the 4th message): 7 bytes is not a whole number of 1-channel "
                               "float32 frames (4 bytes each)"),
    "NaN samples": (_audio(np.array([0.1, np.nan, 0.2], np.float32)),
                    "audio chunk 3 (the 4th message): the audio contains NaN or Inf samples"),
    "a second StreamConfig": (_config(), "the 4th message is a StreamConfig: only the first message may be one; "
                                         "the rest carry audio"),
    "an empty message": (pb.StreamDenoiseRequest(), "the 4th message is empty (neither audio nor a StreamConfig); "
                                                    "send audio bytes"),
}


def test_a_bad_message_mid_stream_ends_it_with_the_audio_before_it_answered(tiny):
    """Was INVALID_ARGUMENT at once: the audio the model still held for the chunks before a bad
    one (its tail) never came back, where a message protobuf cannot parse had it answered first.
    Now every message refused mid-stream ends it that way, with the same message as before + the
    note. With no audio before it there is nothing to answer, and no note."""
    srv = _server(tiny)
    try:
        x = _speech(1.0)
        want = denoise(load_checkpoint(tiny), x, SR)
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = audioae_pb2_grpc.AudioAEStub(ch)
            for case, (bad, said) in BAD_MESSAGES.items():
                msgs = [_config(), _audio(x[:8000]), _audio(x[8000:]), bad, _audio(x)]
                got, err = _collect(stub.StreamDenoise(iter(msgs), timeout=60))
                assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err)
                assert err.details() == said + "; the audio before it was answered", (case, err.details())
                y = _samples(got)  # the two chunks before it, the model's tail included; nothing of the 5th
                assert len(y) == SR and got[-1].samples_in == got[-1].samples_out == SR, case
                np.testing.assert_allclose(y, want, atol=1e-4, err_msg=case)
            nan_first = [_config(), BAD_MESSAGES["NaN samples"][0], _audio(x)]  # no audio before it
            got, err = _collect(stub.StreamDenoise(iter(nan_first), timeout=60))
            assert got == [] and err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert err.details() == "audio chunk 1 (the 2nd message): the audio contains NaN or Inf samples"
        _counted_and_goes_on(srv, "INVALID_ARGUMENT", 5)
    finally:
        srv.stop()


@pytest.mark.parametrize(("config", "text"), [
    # each was "sample rate 0 Hz is outside ...", "channels must be within 1..64, got 0", "must be INT16 or FLOAT32":
    # a field left out reads as 0, and the message did not say it was never set
    ({"channels": 1, "format": pb.FLOAT32}, "stream: the sample rate is unset (0); set it to the audio's rate in Hz, "
                                            "1000..384000 (in a request: StreamConfig.sample_rate)"),
    ({"sample_rate": SR, "format": pb.FLOAT32}, "stream: the channel count is unset (0); set it to the audio's "
                                                "channels, 1..64 (in a request: StreamConfig.channels)"),
    ({"sample_rate": SR, "channels": 1}, "stream: the PCM's sample format is unset (SAMPLE_FORMAT_UNSPECIFIED); "
                                         "set StreamConfig.format to INT16 or FLOAT32"),
])
def test_a_stream_config_field_left_out_is_named_as_unset(tiny, config, text):
    srv = _server(tiny)
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            first = pb.StreamDenoiseRequest(config=pb.StreamConfig(**config))
            got, err = _collect(c.stub.StreamDenoise(iter([first, _audio(_speech(0.1))]), timeout=30))
        assert not got and err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert text in err.details(), err.details()
    finally:
        srv.stop()


def _tensors(state) -> list[torch.Tensor]:
    """The tensors of a model's stream state (nested tuples of tensors and None)."""
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in (state if isinstance(state, tuple | list) else ()) for t in _tensors(part)]


def _stream_until_exhausted(srv, timeout: float):
    """2 s of speech streamed in quarter seconds to a stream that ends RESOURCE_EXHAUSTED: the
    responses, the error and the samples answered before it."""
    x = _speech(2.0)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = audioae_pb2_grpc.AudioAEStub(ch)
        msgs = [_config()] + [_audio(x[i : i + SR // 4]) for i in range(0, len(x), SR // 4)]
        got, err = _collect(stub.StreamDenoise(iter(msgs), timeout=timeout))
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    return got, err, (got[-1].samples_out if got else 0)


def test_running_out_of_memory_mid_stream_ends_it_in_words_and_frees_its_state(tiny, monkeypatch, caplog):
    """A stream runs on its gRPC thread, outside the batcher: out of memory there went out as the
    unary calls' "send shorter audio" (which a stream cannot), and the cache was not emptied. Now the
    stream ends RESOURCE_EXHAUSTED saying where and what was answered, its state on the device let go
    before the cache is emptied, and the server goes on. The failure is the allocator's own refusal
    (CUDA's cannot be had on a CPU), made in the model's 3rd stream step."""
    import audioae.server.servicer as servicer_module

    srv = _server(tiny)
    model = srv.store.models["tiny"].model
    steps, state_refs, freed = [], [], []
    real_step = model.stream_step

    def stream_step(feats, state, final=False):
        steps.append(final)
        if len(steps) == 3:
            state_refs.extend(weakref.ref(t) for t in _tensors(state))
            torch.empty(1 << 60, dtype=torch.uint8, device=feats.device)  # RuntimeError: can't allocate memory
        return real_step(feats, state, final)

    def release() -> None:  # the real one empties CUDA's cache, where there is one: nothing to see on a CPU
        freed.append([ref() is None for ref in state_refs])

    monkeypatch.setattr(model, "stream_step", stream_step)
    monkeypatch.setattr(servicer_module, "release_device_memory", release)
    try:
        got, err, answered = _stream_until_exhausted(srv, timeout=60)
        assert err.details() == (
            f"the server ran out of host memory running the model on audio chunk 3 (the 4th message), 0.75 s into "
            f"the stream: the stream was ended, its audio answered up to {answered / SR:.2f} s; other calls share "
            f"that memory: retry later, or stream fewer channels"), err.details()
        assert len(_samples(got)) == answered
        assert state_refs and freed == [[True] * len(state_refs)]  # emptied once, the stream's state let go first
        assert "out of host memory in a stream running the model on audio chunk 3 (the 4th message)" in caplog.text
        monkeypatch.setattr(model, "stream_step", real_step)
        _counted_and_goes_on(srv, "RESOURCE_EXHAUSTED", 1)
    finally:
        srv.stop()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_running_out_of_host_memory_decoding_a_chunk_names_that_chunk_and_the_host(tiny, device, monkeypatch):
    """A host MemoryError while audio chunk 3 was decoded (before the stream's place was moved on) was
    said as chunk 2's, and as the memory of the model's device ("cuda:0"). The failure is numpy's own
    refusal of an allocation, made in the 3rd chunk's decode."""
    import audioae.server.servicer as servicer_module

    srv = _server(tiny, device=device)
    calls = []
    real_decode = servicer_module.pcm_bytes_to_array

    def decode(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            np.empty(1 << 62, dtype=np.uint8)  # MemoryError: Unable to allocate 4.00 EiB
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(servicer_module, "pcm_bytes_to_array", decode)
    try:
        got, err, answered = _stream_until_exhausted(srv, timeout=120)
        assert err.details() == (
            f"the server ran out of host memory decoding audio chunk 3 (the 4th message), 0.50 s into the stream: "
            f"the stream was ended, its audio answered up to {answered / SR:.2f} s; other calls share that "
            f"memory: retry later, or send smaller audio chunks"), err.details()
        assert len(_samples(got)) == answered
        monkeypatch.setattr(servicer_module, "pcm_bytes_to_array", real_decode)
        _counted_and_goes_on(srv, "RESOURCE_EXHAUSTED", 1)
    finally:
        srv.stop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_running_out_of_memory_mid_stream_empties_the_cache(tiny, monkeypatch):
    """On a GPU, the real thing: CUDA's allocator refuses the model's 3rd stream step, after that
    step took 256 MiB of its own. The stream ends RESOURCE_EXHAUSTED in words, and the cache holds
    no more than before the stream (the 256 MiB and the stream's state handed back), so that the
    next call can have that memory; the server goes on."""
    srv = _server(tiny, device="cuda")
    model = srv.store.models["tiny"].model
    steps = []
    real_step = model.stream_step

    def stream_step(feats, state, final=False):
        steps.append(final)
        if len(steps) == 3:
            scratch = torch.ones(64 << 20, device=feats.device)  # 256 MiB, held by the failing step
            torch.empty(1 << 50, dtype=torch.uint8, device=feats.device) + scratch.sum()  # torch.cuda.OutOfMemoryError
        return real_step(feats, state, final)

    try:
        torch.cuda.synchronize()
        before = torch.cuda.memory_reserved()
        monkeypatch.setattr(model, "stream_step", stream_step)
        _, err, _ = _stream_until_exhausted(srv, timeout=120)
        assert err.details().startswith(
            "the server ran out of memory (cuda:0) running the model on audio chunk 3 (the 4th message)"), err.details()
        assert torch.cuda.memory_reserved() < before + (128 << 20), (before, torch.cuda.memory_reserved())
        monkeypatch.setattr(model, "stream_step", real_step)
        _counted_and_goes_on(srv, "RESOURCE_EXHAUSTED", 1)
    finally:
        srv.stop()


def test_a_stream_sends_its_headers_once_its_config_is_taken(tiny):
    """gRPC sent a stream's response headers with its first answer: a client that waits for them
    before sending audio (Go's ``stream.Header()``, Java's ``onHeaders``) waited until
    ``--stream-idle-seconds`` ended the stream. They come once the StreamConfig is taken; the
    stream is still open then, and answers the audio sent after them."""
    srv = _server(tiny, stream_idle_seconds=60)
    try:
        sent: queue.Queue[pb.StreamDenoiseRequest | None] = queue.Queue()
        sent.put(_config())

        def messages():
            while (msg := sent.get(timeout=120)) is not None:
                yield msg

        x = _speech(0.5)
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call = audioae_pb2_grpc.AudioAEStub(ch).StreamDenoise(messages(), timeout=120)
            headers = threading.Thread(target=call.initial_metadata, daemon=True)
            headers.start()
            headers.join(60)  # a bound against a hang, not a timing: it waited for the idle limit's 60 s
            assert not headers.is_alive(), "no response headers after the StreamConfig"
            assert call.is_active() and not call.done()  # the stream is open, nothing ended it
            assert srv.metrics.registry.get_sample_value("audioae_inflight_calls") == 1
            sent.put(_audio(x))
            sent.put(None)
            got, err = _collect(call)
        assert err is None, err
        assert _samples(got).shape == x.shape
        _counted_and_goes_on(srv, "OK", 1)
    finally:
        srv.stop()
