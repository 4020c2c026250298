"""Python client for the audioae gRPC service.

The wire codec it shares with the server (arrays <-> the messages of
``proto/audioae/v1/audioae.proto``; token files) lives in :mod:`audioae.wire`; its names are
re-exported here, so ``from audioae.client import pcm_message`` keeps working.

Typical use::

    from audioae.client import Client
    with Client("127.0.0.1:50051") as c:
        c.denoise_file("noisy.wav", "clean.wav")
        print(c.list_models())

RPC failures surface as ``grpc.RpcError`` (``.code()``, ``.details()``). An answer the server
gives with a warning (an encoded file cut short, answered for the audio it holds) is logged at
WARNING by this module, and its warnings are kept: ``warnings`` in what ``denoise_file``,
``denoise_bytes`` and ``decompose`` return.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from . import decomposition_folder as folder
from .audio import (
    AudioError,
    check_writable,
    clips_at_full_scale,
    container_for,
    cut_short,
    fs_path,
    iter_blocks,
    open_for_writing,
    read_audio,
    sound_error_reason,
    whole_hz,
    write_frames,
    write_refusal,
)
from .fileio import atomic_open, atomic_write_bytes, output_file

# The codec shared with the server; the names not used here are re-exported (noqa), so that
# `from audioae.client import AudioForm, read_tokens, ...` keeps working.
from .wire import (  # noqa: F401
    DATATYPES,
    AudioForm,
    _pb,
    _pcm_format_code,
    array_from_tensor,
    array_to_pcm_bytes,
    audio_from_message,
    audio_message,
    check_token,
    float_audio,
    is_loopback,
    pcm_bytes_to_array,
    pcm_dtype,
    pcm_message,
    pcm_seconds,
    read_tokens,
    tensor_message,
)

log = logging.getLogger(__name__)

DEFAULT_TARGET = "127.0.0.1:50051"
# Largest message the client sends or receives: the answer limit of a server on its defaults
# (``audioae serve``: 4 x --max-request-mb 64; tests/test_client.py checks they agree). Less
# would fail answers the server has already computed, e.g. every component of a decomposition.
DEFAULT_MESSAGE_MB = 256
# gRPC keeps a deadline as int64 nanoseconds since 1970, which end in 2262: a timeout reaching past
# that (1e10 s, or inf, meant as "no deadline") failed every call at once with DEADLINE_EXCEEDED.
# Longer than a century is sent as no deadline.
MAX_TIMEOUT_SECONDS = 100 * 365 * 86400
# Subtypes whose samples int16 PCM carries exactly (an 8-bit step is 256 of int16's), in half the
# bytes of float32: `client stream` sends a file written in one of them as int16 (Client.stream_file).
INT16_EXACT_SUBTYPES = ("PCM_16", "PCM_S8", "PCM_U8")


# Every UNAVAILABLE this project's server sends starts so (a drain's "the server is shutting down;
# retry on another replica", a start's "the server is still loading its models; retry shortly", a
# cut-off's "the server is shutting down and its drain time (2 s) ran out; ..."): an UNAVAILABLE
# that does not is gRPC's own, or a proxy's, whatever its words.
SERVER_UNAVAILABLE = "the server is "
# gRPC's words for a call that never reached a server (a name that does not resolve, "Connection
# refused"), checked first; then "failed to connect ..." is unreached too unless something took the
# connection and closed it at once ("... Socket closed" or, for the same listener a moment later,
# "... Connection reset by peer": a TLS server to a plain client, a server stopping), which is
# "closed" like a connection that closed under the call (a server stopped or restarted mid-call:
# "Socket closed", a GOAWAY's "Cancelling all calls").
GRPC_UNREACHED_WORDS = ("errors resolving", "domain name not found", "dns resolution failed", "name resolution",
                        "empty address list", "connection refused", "network is unreachable", "no route to host",
                        "handshake", "parsing http/2", "http1.x")
GRPC_ACCEPTED_THEN_CLOSED_WORDS = ("socket closed", "connection reset", "end of file")
GRPC_CLOSED_WORDS = (*GRPC_ACCEPTED_THEN_CLOSED_WORDS, "cancelling all calls", "goaway", "broken pipe",
                     "stream removed", "too many pings", "endpoint", "transport closed", "keepalive")


def unavailable_source(details: str) -> str:
    """Who said an UNAVAILABLE with these ``details``: ``"server"`` (its own answer, which starts
    :data:`SERVER_UNAVAILABLE`, such as a drain's; a retry on another replica may succeed),
    ``"closed"`` (gRPC: the connection closed during the call, or as soon as it was made) or
    ``"unreached"`` (gRPC or a proxy: no server answered; also any words not listed here, such as
    a proxy's "upstream connect error")."""
    if details.startswith(SERVER_UNAVAILABLE):
        return "server"
    text = details.lower()
    if any(w in text for w in GRPC_UNREACHED_WORDS):
        return "unreached"
    if "failed to connect" in text:
        return "closed" if any(w in text for w in GRPC_ACCEPTED_THEN_CLOSED_WORDS) else "unreached"
    if any(w in text for w in GRPC_CLOSED_WORDS):
        return "closed"
    return "unreached"


def _deadline(timeout: float | None) -> float | None:
    """``timeout`` as gRPC can carry it: None (no deadline) beyond :data:`MAX_TIMEOUT_SECONDS`."""
    return None if timeout is not None and timeout > MAX_TIMEOUT_SECONDS else timeout


def _target_host(target: str) -> str:
    """The host of a gRPC target: ``host:port``, ``[v6]:port``, ``dns:[//authority/]host:port``, ``ipv4:...``."""
    if target.startswith("dns:"):  # gRPC's dns:host:port, dns:///host:port, dns://resolver/host:port
        rest = target.removeprefix("dns:")
        rest = rest[2:].split("/", 1)[-1] if rest.startswith("//") else rest
    else:
        rest = target.split(":///", 1)[-1] if ":///" in target else target.removeprefix("ipv4:").removeprefix("ipv6:")
    if rest.startswith("["):
        return rest[: rest.find("]") + 1]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def _source_info(src: Path):
    """``soundfile.info`` of a file the client reads, or an :class:`AudioError` naming it."""
    try:
        return sf.info(fs_path(src))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{src}: cannot read audio ({sound_error_reason(exc)})") from exc


def _read_ca(tls_ca: str | os.PathLike | bytes) -> bytes:
    """The CA certificates of ``tls_ca`` (PEM bytes or a file), checked: gRPC alone would fail
    every call with "Failed to create security handshaker" and C-core log lines."""
    import ssl

    name = "tls_ca" if isinstance(tls_ca, bytes) else f"--tls-ca {tls_ca}"
    try:
        ca = tls_ca if isinstance(tls_ca, bytes) else Path(tls_ca).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: {exc.strerror or exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=ca.decode("ascii", errors="replace"))
    except ssl.SSLError as exc:
        raise ValueError(f"{name}: no PEM certificate in it ({exc.reason or exc}); pass the CA certificate "
                         f"that signed the server's (-----BEGIN CERTIFICATE-----)") from None
    return ca


# ---- results ------------------------------------------------------------------------------------
@dataclass
class DecomposeResult:
    """What ``Decompose`` returned; waveforms are ``None`` unless components were requested."""

    model: str
    activations: np.ndarray  # [U, N]
    frame_rate: float
    labels: list[str]
    units: list[list[int]]
    energy_share: np.ndarray  # [K]
    components: np.ndarray | None = None  # [K, C, T]
    residual: np.ndarray | None = None  # [C, T]
    sample_rate: int = 0
    channels: int = 0
    samples: int = 0  # frames per channel
    group: str = "none"
    fit_steps: int = 0
    residual_energy_share: float | None = None  # None: a silent input, which has no energy to share
    error_db: float | None = None  # None: exact (a silent input)
    dominant_hz: list[float] = dataclasses.field(default_factory=list)  # [K]
    active_fraction: list[float] = dataclasses.field(default_factory=list)  # [K]
    active_seconds: list[list[list[float]]] = dataclasses.field(default_factory=list)  # [K][spans][start, end]
    # [K] spans before the list was cut to 50 (None: an older server does not say)
    active_spans: list[int | None] = dataclasses.field(default_factory=list)
    groups: int | None = None  # bands or clusters asked for, the server's default filled in (None: group none)
    warnings: list[str] = dataclasses.field(default_factory=list)  # the server's, about this answer

    def summary(self) -> dict:
        """The description ``audioae decompose`` writes into ``summary.json``, key by key."""
        spans = self.active_spans or [None] * len(self.labels)
        comps = [folder.component_entry(k, *entry, active_spans=n) for k, (*entry, n) in enumerate(zip(
            self.labels, self.units, [round(float(e), 6) for e in self.energy_share], self.dominant_hz,
            self.active_fraction, self.active_seconds, spans, strict=True))]
        return folder.summary(sample_rate=self.sample_rate, channels=self.channels, samples=self.samples,
                              group=self.group, fit_steps=self.fit_steps, frame_rate=self.frame_rate,
                              error_db=self.error_db, residual_share=self.residual_energy_share, components=comps,
                              groups=self.groups)


def decompose_result(resp) -> DecomposeResult:
    """A ``DecomposeResponse`` as a :class:`DecomposeResult` (waveforms when it carries them)."""
    comps, residual, rate = None, None, 0
    if resp.HasField("residual"):  # asked for; a silent input has no component, only its residual
        residual, rate, _ = audio_from_message(resp.residual, "residual")  # [C, T]
        waves = [audio_from_message(c.audio, f"component {c.label}")[0] for c in resp.components]
        comps = np.stack(waves) if waves else np.zeros((0, *residual.shape), np.float32)  # [K, C, T]
    # A server older than the summary fields (2026-12-06) leaves them 0: the waveforms still say.
    shape = residual.shape if residual is not None else (0, 0)
    return DecomposeResult(
        model=resp.model,
        activations=array_from_tensor(resp.activations, "activations"),
        frame_rate=resp.frame_rate,
        labels=[c.label for c in resp.components],
        units=[list(c.units) for c in resp.components],
        energy_share=np.array([c.energy_share for c in resp.components], np.float64),
        components=comps,
        residual=residual,
        sample_rate=resp.sample_rate or rate,
        channels=resp.channels or shape[0],
        samples=resp.samples or shape[-1],
        group=resp.group,
        fit_steps=resp.fit_steps,
        # unset: a silent input, which has no energy to share (an older server sends 0.0)
        residual_energy_share=resp.residual_energy_share if resp.HasField("residual_energy_share") else None,
        error_db=resp.error_db if resp.HasField("error_db") else None,
        dominant_hz=[c.dominant_hz for c in resp.components],
        active_fraction=[c.active_fraction for c in resp.components],
        active_seconds=[[[span.start, span.end] for span in c.active] for c in resp.components],
        active_spans=[c.active_spans if c.HasField("active_spans") else None for c in resp.components],
        groups=resp.groups if resp.HasField("groups") else None,
        warnings=list(resp.warnings),
    )


# ---- the client ---------------------------------------------------------------------------------
class Client:
    """A connection to an audioae server.

    ``token``: bearer token sent as ``authorization`` metadata, without its surrounding whitespace
    (:func:`check_token`). ``tls_ca``: PEM file (or bytes) of
    the CA that signed the server's certificate; enables TLS. ``timeout``: per-call deadline in
    seconds (None: no deadline). ``max_message_mb``: largest message sent or received; raise it
    for a server whose ``--max-request-mb`` is above its default.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls_ca: str | os.PathLike | bytes | None = None,
        tls_server_name: str | None = None,
        timeout: float | None = None,
        max_message_mb: float = DEFAULT_MESSAGE_MB,
    ):
        import grpc

        from .v1 import audioae_pb2_grpc

        if not max_message_mb > 0:
            raise ValueError(f"max_message_mb must be positive, got {max_message_mb}")
        token = check_token(token, "token") if token is not None else None  # before a channel opens
        size = min(int(max_message_mb * 1024 * 1024), 2**31 - 1)  # gRPC's limits are int32
        options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        if tls_ca is not None:
            ca = _read_ca(tls_ca)
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self.channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=ca), options
            )
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = audioae_pb2_grpc.AudioAEStub(self.channel)
        self.target = target
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if token and tls_ca is None and not target.startswith(("unix:", "unix-abstract:")) and not is_loopback(_target_host(target)):
            # gRPC sends metadata as it is: anyone on the path could reuse the token
            log.warning("%s: the token goes in plaintext (no TLS: pass the server's CA with tls_ca / --tls-ca)",
                        target)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _kw(self, timeout: float | None) -> dict:
        t = self.timeout if timeout is None else timeout
        return {"metadata": self.metadata, "timeout": _deadline(t)}

    def _warned(self, rpc: str, resp):
        """``resp``, its warnings logged: the server answered all the same, and says what the
        caller should know (``audioae client`` prints them on stderr)."""
        for warning in resp.warnings:
            log.warning("%s answered %s with a warning: %s", self.target, rpc, warning)
        return resp

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects (raises ``grpc.FutureTimeoutError``)."""
        import grpc

        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -- denoise ----------------------------------------------------------------------------------
    def denoise(
        self,
        wav: np.ndarray,
        sr: int,
        *,
        model: str = "",
        strength: float | None = None,
        pcm_format: str = "float32",
        timeout: float | None = None,
    ) -> np.ndarray:
        """``wav [T]`` or ``[C, T]`` at ``sr`` -> the same shape, denoised (sent as raw PCM)."""
        pb = _pb()
        req = pb.DenoiseRequest(model=model, audio=pb.Audio(pcm=pcm_message(float_audio(wav), sr, pcm_format)))
        if strength is not None:
            req.strength = strength
        resp = self.stub.Denoise(req, **self._kw(timeout))  # PCM: nothing to warn of
        y, _, _ = audio_from_message(resp.audio, "response")
        return y[0] if np.ndim(wav) == 1 else y

    def denoise_bytes(
        self, data: bytes, *, model: str = "", strength: float | None = None, timeout: float | None = None
    ):
        """Encoded file bytes -> the ``DenoiseResponse`` (its audio in the same container; its
        ``warnings``, logged too: a file cut short is answered for the audio it holds)."""
        pb = _pb()
        req = pb.DenoiseRequest(model=model, audio=pb.Audio(encoded=data))
        if strength is not None:
            req.strength = strength
        return self._warned("Denoise", self.stub.Denoise(req, **self._kw(timeout)))

    def denoise_file(
        self,
        src: str | os.PathLike,
        dst: str | os.PathLike,
        *,
        model: str = "",
        strength: float | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Denoise a file into ``dst`` (atomic write) at its own rate, channels and length; an
        existing folder ``dst`` gets the file under its own name. The input is never overwritten.
        ``warnings`` in the result: the server's (a file cut short is answered for what it holds)."""
        src, dst = Path(src), output_file(src, dst)
        same_container = dst.suffix.lower() == src.suffix.lower()  # the answer's bytes as they come
        if not same_container:  # before the call: out.mp3 would get WAV bytes, out.flac 12 channels
            info, fmt = _source_info(src), container_for(dst)
            try:
                check_writable(info.samplerate, info.channels, format=fmt)
            except AudioError as exc:
                raise write_refusal(dst, exc, fmt, info.samplerate) from exc
        resp = self.denoise_bytes(src.read_bytes(), model=model, strength=strength, timeout=timeout)
        data = resp.audio.encoded
        if same_container:
            atomic_write_bytes(dst, data)
        else:  # another container asked for: transcode, keeping the sample subtype where possible
            from .audio import write_audio

            wav, sr, info = read_audio(data, name="response")
            write_audio(dst, wav, sr, subtype=info.subtype)
        return {
            "model": resp.model,
            "queue_ms": round(resp.queue_ms, 2),
            "compute_ms": round(resp.compute_ms, 2),
            "batch_size": resp.batch_size,
            "output": str(dst),
            "warnings": list(resp.warnings),
        }

    # -- streaming --------------------------------------------------------------------------------
    def stream(
        self,
        chunks: Iterable[np.ndarray],
        sr: int,
        channels: int = 1,
        *,
        model: str = "",
        strength: float | None = None,
        pcm_format: str = "float32",
        timeout: float | None = None,
    ) -> Iterator[np.ndarray]:
        """Send ``[C, n]`` chunks (``[n]`` for mono), yield cleaned ``[C, m]`` chunks as the server
        returns them. Every chunk must have the ``channels`` the stream was opened with.

        The concatenated output has exactly the input's length. ``timeout``: a deadline on the
        whole stream, in seconds; the client's own ``timeout`` (one request's) does not apply, or
        it would end a live stream after that long.
        """
        pb = _pb()
        code = _pcm_format_code(pb, pcm_format)
        config = pb.StreamConfig(model=model, sample_rate=whole_hz(sr, "sample_rate"), channels=int(channels), format=code)
        if strength is not None:
            config.strength = strength

        import grpc

        failed: list[Exception] = []

        def requests():
            yield pb.StreamDenoiseRequest(config=config)
            try:
                for i, chunk in enumerate(chunks, 1):
                    c = float_audio(chunk, f"chunk {i}")  # [C, n]
                    if c.shape[0] != channels:  # else its samples would be sent as channels x more frames
                        raise ValueError(f"chunk {i} has {c.shape[0]} channel(s), the stream was opened with "
                                         f"channels={channels}")
                    yield pb.StreamDenoiseRequest(audio=array_to_pcm_bytes(c, code))
            except Exception as exc:  # noqa: BLE001 - gRPC runs this on its own thread and drops errors
                failed.append(exc)  # end the stream here; raised to the caller below

        try:
            for resp in self.stub.StreamDenoise(requests(), metadata=self.metadata, timeout=_deadline(timeout)):
                if resp.audio:
                    yield pcm_bytes_to_array(resp.audio, code, channels, "response")
        except grpc.RpcError:
            if failed:  # the server only saw the stream end early; the cause is on this side
                raise failed[0] from None
            raise
        if failed:
            raise failed[0]

    def stream_file(
        self,
        src: str | os.PathLike,
        dst: str | os.PathLike,
        *,
        chunk_ms: float = 100.0,
        model: str = "",
        strength: float | None = None,
        timeout: float | None = None,
        pcm_format: str | None = None,
    ) -> dict:
        """Stream a file through ``StreamDenoise`` in ``chunk_ms`` chunks, writing ``dst``
        progressively (temp file in the same folder, renamed at the end); an existing folder
        ``dst`` gets the file under its own name. The input is never overwritten; a stream that
        fails leaves no ``dst``, not even the audio answered before the failure. ``timeout``: a
        deadline on the whole call, in seconds (None: the client's own; a file, unlike a live
        :meth:`stream`, has an end, and ``audioae client stream --timeout`` went unheeded).
        ``pcm_format``: the stream's sample format, "int16" or "float32"; None: int16 for a
        16- or 8-bit PCM file written as such (half the bytes of float32, nothing lost: int16 holds
        its samples exactly, and the answer is written in the file's own subtype), float32 for any other."""
        if not chunk_ms > 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        src, dst = Path(src), output_file(src, dst)
        info = _source_info(src)
        if (cut := cut_short(info)) is not None:  # a WAV, AIFF, AU, W64 or RF64's claim (an MP3's needs its frames walked)
            log.warning("%s", cut.warning(str(src), "streaming"))
        fmt = info.format if dst.suffix.lower() == src.suffix.lower() else container_for(dst)
        block = max(1, int(info.samplerate * chunk_ms / 1000))
        chunks = iter_blocks(src, block)
        subtype = info.subtype if sf.check_format(fmt, info.subtype) else None
        if pcm_format is None:  # float32 sent these int16 (or 8-bit) samples in twice the bytes int16 takes
            pcm_format = "int16" if subtype in INT16_EXACT_SUBTYPES else "float32"
        n = 0
        with atomic_open(dst) as fh:
            try:
                out = open_for_writing(fh, info.samplerate, info.channels, subtype=subtype, format=fmt)
            except (AudioError, sf.LibsndfileError) as exc:
                raise write_refusal(dst, exc, fmt, info.samplerate) from exc
            with out:
                for y in self.stream(chunks, info.samplerate, info.channels, model=model, strength=strength,
                                     pcm_format=pcm_format, timeout=self.timeout if timeout is None else timeout):
                    write_frames(out, np.clip(y.T, -1, 1) if clips_at_full_scale(fmt, subtype) else y.T)
                    n += y.shape[-1]
        return {"frames": n, "sample_rate": info.samplerate, "channels": info.channels, "output": str(dst)}

    # -- decompose --------------------------------------------------------------------------------
    def decompose(
        self,
        audio: np.ndarray | bytes,
        sr: int | None = None,
        *,
        model: str = "",
        top_k: int = folder.DEFAULT_TOP_K,
        group: str = folder.DEFAULT_GROUP,
        components: bool = False,
        fit_steps: int | None = None,
        groups: int | None = None,
        timeout: float | None = None,
    ) -> DecomposeResult:
        """Decompose ``[C, T]`` float audio at ``sr`` (or encoded file bytes). ``top_k`` and
        ``group``: the strongest 16 components, units clustered, as ``audioae decompose`` and
        ``audioae client decompose`` do (``top_k=0, group="none"``: the RPC's own, every unit
        ungrouped, which for a minute of audio is over the server's 1 GiB of waveforms).
        ``fit_steps``: per-signal fit steps (None: the model's default; 0: fastest). ``groups``:
        bands or clusters for ``group`` band / cluster (None: the server's, 8).

        Changed 2026-12-07: the defaults were ``top_k=0, group="none"`` (every unit, ungrouped). A
        caller that passes only ``top_k`` now gets the strongest ``top_k`` of the clusters of units
        (``groups`` of them, the server's 8 by default), not single units: pass ``group="none"``
        as well for the old result."""
        pb = _pb()
        if isinstance(audio, bytes | bytearray | memoryview):
            msg = pb.Audio(encoded=bytes(audio))
        else:
            if sr is None:
                raise ValueError(f"decompose of an array needs its sample rate (got a {type(audio).__name__} "
                                 f"and no sr; encoded file bytes need none)")
            msg = pb.Audio(pcm=pcm_message(float_audio(audio), sr, "float32"))
        req = pb.DecomposeRequest(
            model=model, audio=msg, top_k=top_k, group=group, return_components=components, fit_steps=fit_steps,
            groups=groups,
        )
        resp = self._warned("Decompose", self.stub.Decompose(req, **self._kw(timeout)))
        result = decompose_result(resp)
        if result.groups is None and result.group in ("band", "cluster"):  # an older server says none: the
            result.groups = folder.DEFAULT_GROUPS if groups is None else groups  # request's (wrong for < 8 units)
        return result

    # -- encode / decode --------------------------------------------------------------------------
    def encode(self, x: np.ndarray, *, model: str, timeout: float | None = None) -> np.ndarray:
        """The model's input tensor (spectrogram models: features ``[B, F, N]``) -> code."""
        resp = self.stub.Encode(
            _pb().EncodeRequest(model=model, tensor=tensor_message(x)), **self._kw(timeout)
        )
        return array_from_tensor(resp.code, "code")

    def encode_audio(
        self, wav: np.ndarray, sr: int, *, model: str, timeout: float | None = None
    ) -> np.ndarray:
        """``[C, T]`` audio -> code ``[C, K, N]`` of a spectrogram model (channels as the batch)."""
        pb = _pb()
        msg = pb.Audio(pcm=pcm_message(float_audio(wav), sr, "float32"))
        resp = self.stub.Encode(pb.EncodeRequest(model=model, audio=msg), **self._kw(timeout))  # PCM
        return array_from_tensor(resp.code, "code")

    def decode(self, h: np.ndarray, *, model: str, timeout: float | None = None) -> np.ndarray:
        resp = self.stub.Decode(_pb().DecodeRequest(model=model, code=tensor_message(h)), **self._kw(timeout))
        return array_from_tensor(resp.output, "output")

    # -- models and health ------------------------------------------------------------------------
    def list_models(self, timeout: float | None = None) -> dict:
        """The served models as plain Python values (``parameters`` an int: protobuf's JSON
        mapping would make the int64 a string). Each model's ``code_frame_rate`` is the code
        frames per second of audio that its ``encode`` gives (None: not a spectrogram model), and
        ``latency_ms`` its algorithmic latency, None for a model that does not stream (not
        ``causal``: the wire's 0.0), as ``audioae models`` says "offline" and ``inspect`` null."""
        from google.protobuf.json_format import MessageToDict

        resp = self.stub.ListModels(_pb().ListModelsRequest(), **self._kw(timeout))
        info = MessageToDict(
            resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for m in info["models"]:
            m["parameters"] = int(m["parameters"])
            m.setdefault("code_frame_rate", None)  # unset: not a spectrogram model
            if not m["causal"]:  # proto3 has no null double: 0.0 on the wire means "does not stream"
                m["latency_ms"] = None
        return info

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """``grpc.health.v1`` status name: SERVING, NOT_SERVING or UNKNOWN; a ``service`` the server
        does not know raises ``grpc.RpcError`` with NOT_FOUND (the health protocol's answer)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=_deadline(timeout), metadata=self.metadata
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def save_decomposition(result: DecomposeResult, out_dir: str | os.PathLike | folder.Claim, *,
                       source: str | None = None, top: int | None = None) -> tuple[dict, list[Path]]:
    """Write what ``audioae decompose`` writes for the same recording: ``NN_<label>.wav`` per
    component and ``residual.wav`` (when the result has waveforms), ``activations.npy`` and
    ``summary.json`` (:mod:`audioae.decomposition_folder`, whose writer replaces an earlier
    decomposition in ``out_dir`` only once the new one is complete; other files are left alone).
    ``source`` (the input's name) and ``top`` are recorded in the summary. Returns the summary and
    the files written, ``summary.json`` last. ``out_dir``: a folder, held for the write (one run at
    a time: :func:`audioae.decomposition_folder.claim`), or a claim on one the caller holds."""
    with folder.claim(out_dir) as held:
        summary = {**result.summary(), "input": source, "model": result.model, "top": top}
        return summary, folder.write_folder(held, summary, result.activations, result.components, result.residual,
                                            result.sample_rate)
