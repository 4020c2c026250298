"""The wire codec the client and the server share: arrays <-> the messages of
``proto/audioae/v1/audioae.proto``, and the bearer-token helpers both sides use.

Audio travels as a whole encoded file or as little-endian PCM (``[C, T]`` float32 inside,
interleaved ``[T, C]`` on the wire), tensors as shape + KServe datatype + raw little-endian
row-major bytes. Decoding validates everything (whole frames, finite samples, sane rates, byte
counts) and raises :class:`~audioae.audio.AudioError` or ``ValueError`` with a message meant for a
person; the server turns those into INVALID_ARGUMENT.

No torch here (nor anything that imports it): :mod:`audioae.client` re-exports this module and
runs without torch. The generated messages (``audioae.v1``) are imported on first use.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import (
    MIN_SAMPLE_RATE,
    AudioError,
    CutShort,
    check_audio_array,
    check_channels,
    check_pcm,
    clips_at_full_scale,
    encode_audio,
    read_audio,
    whole_hz,
)

# KServe v2 datatypes <-> little-endian numpy dtypes.
DATATYPES: dict[str, str] = {
    "FP32": "<f4",
    "FP64": "<f8",
    "FP16": "<f2",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT16": "<i2",
    "INT8": "i1",
    "UINT8": "u1",
    "BOOL": "?",
}


def _pb():
    from .v1 import audioae_pb2

    return audioae_pb2


# ---- codec: PCM and encoded audio ----------------------------------------------------------------
@dataclass(frozen=True)
class AudioForm:
    """How a piece of audio arrived, so the answer can go back the same way."""

    kind: str  # "encoded" | "pcm"
    sample_rate: int
    channels: int
    format: str = ""  # encoded: soundfile container, e.g. "WAV"
    subtype: str = ""  # encoded: soundfile subtype, e.g. "PCM_16"
    pcm_format: int = 0  # pcm: SampleFormat value
    kbps: float | None = None  # encoded MP3 or Opus: its mean bitrate, Vorbis its nominal one; the answer keeps it
    cut: CutShort | None = None  # encoded: a file holding less audio than its header claims


def pcm_dtype(fmt: int, name: str = "PCM audio", field: str = "Pcm.format") -> tuple[str, str]:
    """``(numpy dtype, label)`` of a ``SampleFormat``, or an AudioError naming ``field`` (the
    request field it came from) when it is unset."""
    pb = _pb()
    if fmt == pb.INT16:
        return "<i2", "int16"
    if fmt == pb.FLOAT32:
        return "<f4", "float32"
    # Pcm.format is the field a client of the .proto most easily leaves out: say so, and where
    if fmt == pb.SAMPLE_FORMAT_UNSPECIFIED:
        raise AudioError(f"{name}: the PCM's sample format is unset (SAMPLE_FORMAT_UNSPECIFIED); set {field} "
                         f"to INT16 or FLOAT32")
    given = pb.SampleFormat.Name(fmt) if fmt in pb.SampleFormat.values() else str(fmt)
    raise AudioError(f"{name}: PCM sample format must be INT16 or FLOAT32, got {given}")


def pcm_bytes_to_array(data: bytes, fmt: int, channels: int, name: str = "PCM audio") -> np.ndarray:
    """Interleaved little-endian bytes -> ``[C, T]`` float32; raises :class:`AudioError`."""
    check_channels(channels, name)
    dtype, label = pcm_dtype(fmt, name)
    frame = np.dtype(dtype).itemsize * channels
    if len(data) % frame:
        raise AudioError(
            f"{name}: {len(data)} bytes is not a whole number of {channels}-channel {label} "
            f"frames ({frame} bytes each)"
        )
    x = np.frombuffer(data, dtype=dtype).reshape(-1, channels).T  # [C, T]
    if label == "int16":
        return (x.astype(np.float32) / 32768.0).astype(np.float32)
    return np.array(x, dtype=np.float32, order="C")  # a writable copy: the buffer belongs to the message


def array_to_pcm_bytes(wav: np.ndarray, fmt: int) -> bytes:
    """``[C, T]`` float -> interleaved little-endian bytes (int16 is clipped, not wrapped)."""
    dtype, label = pcm_dtype(fmt)
    x = np.asarray(wav, dtype=np.float32).T  # [T, C]
    if label == "int16":
        x = np.clip(np.round(x * 32768.0), -32768, 32767)
    return np.ascontiguousarray(x.astype(dtype)).tobytes()


def float_audio(wav, name: str = "audio") -> np.ndarray:
    """A caller's ``[T]`` or ``[C, T]`` float array -> ``[C, T]`` float32, checked as the library
    checks in-memory audio (:func:`audioae.audio.check_audio_array`) before it reaches the server."""
    x = np.asarray(wav)
    check_audio_array(x, name)
    return np.atleast_2d(x.astype(np.float32, copy=False))  # [C, T]


def _pcm_format_code(pb, fmt: str) -> int:
    try:
        return {"int16": pb.INT16, "float32": pb.FLOAT32}[fmt]
    except KeyError:
        raise ValueError(f"pcm_format must be 'int16' or 'float32', got {fmt!r}") from None


def pcm_message(wav: np.ndarray, sr: int, fmt: str | int = "float32"):
    """``[C, T]`` (or ``[T]``) float audio -> ``Pcm`` message."""
    pb = _pb()
    code = fmt if isinstance(fmt, int) else _pcm_format_code(pb, fmt)
    x = np.atleast_2d(np.asarray(wav, dtype=np.float32))  # [C, T]
    return pb.Pcm(data=array_to_pcm_bytes(x, code), format=code, sample_rate=whole_hz(sr, "sample_rate"), channels=x.shape[0])


def audio_from_message(audio, name: str = "audio", read: Callable = read_audio) -> tuple[np.ndarray, int, AudioForm]:
    """``Audio`` message -> ``(wav [C, T] float32, sample_rate, form)``; validates it all.
    ``read(data, name=)``: how encoded bytes are decoded (the server: in a codec process)."""
    which = audio.WhichOneof("data") if audio is not None else None
    if which == "encoded":
        try:
            wav, sr, info = read(bytes(audio.encoded), name=name)
        except AudioError as exc:  # soundfile names the BytesIO object; a person needs none of that
            message = re.sub(r"Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ", "", str(exc))
            if "(Format not recognised.)" in message:  # most often raw samples sent as a file
                message += ("; Audio.encoded takes a whole audio file (WAV, FLAC, Ogg, ...): raw samples go in "
                            "Audio.pcm, with their sample format, rate and channels")
            raise AudioError(message) from None
        return wav, sr, AudioForm("encoded", sr, info.channels, info.format, info.subtype, kbps=info.kbps, cut=info.cut)
    if which == "pcm":
        p = audio.pcm
        wav = pcm_bytes_to_array(p.data, p.format, p.channels, name)
        check_pcm(wav, p.sample_rate, name)
        return wav, p.sample_rate, AudioForm("pcm", p.sample_rate, p.channels, pcm_format=p.format)
    raise AudioError(f"{name}: no audio given (set either encoded file bytes or pcm)")


def audio_message(wav: np.ndarray, form: AudioForm, encode: Callable = encode_audio):
    """``[C, T]`` float audio -> ``Audio`` message in the same form the input came in.
    ``encode(wav, sr, format=, subtype=)``: how file bytes are made (the server: in a codec process)."""
    pb = _pb()
    if form.kind == "pcm":
        return pb.Audio(pcm=pcm_message(wav, form.sample_rate, form.pcm_format))
    fmt, subtype = form.format, form.subtype or None
    if subtype is not None and not sf.check_format(fmt, subtype):
        subtype = None
    x = np.asarray(wav, dtype=np.float32)
    if clips_at_full_scale(fmt, subtype):
        x = np.clip(x, -1.0, 1.0)
    kbps = {"kbps": form.kbps} if form.kbps else {}  # an MP3, Opus or Vorbis answer at the question's bitrate
    return pb.Audio(encoded=encode(x, form.sample_rate, format=fmt, subtype=subtype, **kbps))


def pcm_seconds(audio) -> float | None:
    """Duration of an ``Audio`` message's PCM from its byte count (None when malformed, or when
    the message carries file bytes: their header is read by a codec, which the server does in
    its codec processes, ``audioae.server.codecs``)."""
    which = audio.WhichOneof("data")
    if which == "pcm":
        p = audio.pcm
        width = {_pb().INT16: 2, _pb().FLOAT32: 4}.get(p.format)
        if not width or p.channels <= 0 or p.sample_rate < MIN_SAMPLE_RATE:  # the full decode says why
            return None
        return len(p.data) / (width * p.channels) / p.sample_rate
    return None


# ---- codec: tensors -----------------------------------------------------------------------------
def tensor_message(x: np.ndarray):
    """Array -> ``Tensor`` message (row-major, little-endian)."""
    pb = _pb()
    a = np.asarray(x)
    for name, dt in DATATYPES.items():
        if np.dtype(dt) == a.dtype.newbyteorder("<") or (a.dtype == np.dtype(dt)):
            return pb.Tensor(
                shape=list(a.shape),
                datatype=name,
                data=np.ascontiguousarray(a.astype(np.dtype(dt), copy=False)).tobytes(),
            )
    raise ValueError(f"cannot send arrays of dtype {a.dtype}; use one of {sorted(DATATYPES)}")


def array_from_tensor(t, name: str = "tensor") -> np.ndarray:
    """``Tensor`` message -> array; raises ``ValueError`` on a bad datatype, shape or byte count."""
    if t.datatype not in DATATYPES:
        raise ValueError(f"{name}: datatype {t.datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = tuple(int(s) for s in t.shape)
    if not shape or any(s < 0 for s in shape):
        raise ValueError(f"{name}: shape {list(shape)} must have at least one dimension, none negative")
    dtype = np.dtype(DATATYPES[t.datatype])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: np.prod wraps at 2**63
    if len(t.data) != expected:
        raise ValueError(
            f"{name}: {len(t.data)} bytes of data, but shape {list(shape)} of {t.datatype} needs {expected}"
        )
    return np.frombuffer(t.data, dtype=dtype).reshape(shape).copy()  # writable, owns its memory


# ---- bearer tokens ------------------------------------------------------------------------------
def check_token(token: str, where: str) -> str:
    """``token`` without surrounding whitespace (a file read whole ends in a newline, which the
    server strips too). Raises ``ValueError`` naming ``where``, never the token, when a character
    of it cannot travel as gRPC metadata, printable ASCII only: gRPC failed every call, health's
    included, with INTERNAL "Invalid metadata", and a server could never match such a token."""
    token = token.strip()
    if any(not " " <= ch <= "~" for ch in token):
        raise ValueError(f"{where}: the token holds a character gRPC metadata cannot carry (a tab, a control "
                         f"character or a non-ASCII letter); tokens are printable ASCII (letters, digits, "
                         f"punctuation)")
    return token


def read_tokens(path: str | os.PathLike) -> list[str]:
    """The tokens of a token file: one per line; blank lines and lines starting with ``#`` are
    skipped. The server accepts any of them (rotation); the client sends the first. Raises
    ``ValueError`` when the file is missing or holds no token."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--token-file {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # name the file: a bare UnicodeDecodeError does not
        raise ValueError(f"--token-file {path}: not text (UTF-8); it should hold one token per line") from None
    lines = ((n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1))
    tokens = [check_token(ln, f"--token-file {path}, line {n}") for n, ln in lines if ln and not ln.startswith("#")]
    if not tokens:
        raise ValueError(f"--token-file {path}: no token in it (one per line; '#' starts a comment)")
    return tokens


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) is this machine's loopback."""
    if host.lower().rstrip(".") == "localhost":  # names are caseless; "localhost." is the same name
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a host name: it may resolve to anything
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, which is_loopback does not see
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
