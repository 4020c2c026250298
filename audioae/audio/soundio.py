"""Reading and writing audio files and bytes through soundfile (libsndfile): whole reads, block
reads, header reads, encoding, atomic writes."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import soundfile as sf

from ..fileio import atomic_open
from .checks import AudioError, AudioInfo, _check_samples, check_audio_array, fs_path, whole_hz
from .coded import MAX_VORBIS_RATE, _bitrate_settings, coded_kbps, scan_coded
from .diagnose import cut_short, empty_audio, sound_error_reason, undecodable, unopened
from .walk import container_for

if TYPE_CHECKING:
    from .diagnose import CutShort


def read_blocks(f: sf.SoundFile, block: int, name: str) -> Iterator[np.ndarray]:
    """An open file's samples as float32 blocks ``[C, n]`` of ``block`` frames (the last may be
    shorter), one block in memory at a time; a decoding error names the file and the place.

    Read until the decoder has no more, block by block, never by the header's frame count: a
    header may claim far more than the file holds (a damaged MP3 claimed 1.5e12 frames, and one
    read of "the rest" asked for 10.8 TiB; soundfile's ``blocks`` would then go on yielding its
    last block again), and GSM 6.10 WAV cannot seek, so "to the end" is not an option there."""
    done = 0
    while True:
        try:
            chunk = f.read(block, dtype="float32", always_2d=True)  # [n, C], n <= block
        except sf.LibsndfileError as exc:
            raise undecodable(name, exc, done) from exc
        if chunk.shape[0] == 0:
            return
        done += chunk.shape[0]
        yield np.ascontiguousarray(chunk.T)  # [C, n]
        if chunk.shape[0] < block:
            return

READ_BLOCK = 1 << 20  # frames per read of a whole-file read (4 MB a channel)

def read_all(f: sf.SoundFile, name: str) -> np.ndarray:
    """Every sample of an open file, ``[C, T]`` float32, as much as it really holds (:func:`read_blocks`)."""
    blocks = list(read_blocks(f, READ_BLOCK, name))
    if not blocks:
        return np.zeros((f.channels, 0), np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)

def iter_blocks(path: str | os.PathLike, block: int) -> Iterator[np.ndarray]:
    """:func:`read_blocks` of the file at ``path``."""
    with sf.SoundFile(fs_path(path)) as f:
        yield from read_blocks(f, block, str(path))

def read_audio(source: str | os.PathLike | bytes, *, name: str | None = None) -> tuple[np.ndarray, int, AudioInfo]:
    """Read audio (any container libsndfile reads: WAV, FLAC, OGG, MP3, ...) from a path or from encoded bytes.

    Returns ``(wav [C, T] float32, sample_rate, info)``. Raises :class:`AudioError` naming the
    file for anything unreadable, empty or non-finite.
    """
    in_memory = isinstance(source, bytes | bytearray)
    if in_memory:
        name = name or "<bytes>"
        handle = io.BytesIO(source)
    else:
        name = name or str(source)
        handle = fs_path(source)
        if os.path.isdir(handle):
            raise AudioError(f"{name}: is a folder; name an audio file")
        if not os.path.isfile(handle):
            raise AudioError(f"{name}: no such file")
    if (len(source) if in_memory else os.path.getsize(handle)) == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")  # libsndfile says "Format not recognised."
    try:
        with sf.SoundFile(handle) as f:
            coded = held_audio(source, f, name)  # libsndfile stops at an MP3's first header's length, an Ogg's first chain
            wav = read_all(f, name)  # [C, T]; AudioError where the samples do not decode
            info = AudioInfo(f.samplerate, f.channels, wav.shape[-1], f.format, f.subtype,  # frames read, not claimed
                             coded.cut, coded.kbps)
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as exc:
        raise unopened(name, exc, source, in_memory=in_memory, path=None if in_memory else handle) from exc
    if wav.shape[-1] == 0:
        raise empty_audio(name, source, info.format)
    _check_samples(wav, info.sample_rate, name)
    return wav, info.sample_rate, info

def header_shape(source: str | os.PathLike | bytes) -> tuple[int, int, int] | None:
    """``(frames, channels, sample_rate)`` of an audio file (a path or its bytes) from the header
    alone; None when libsndfile knows no header there (the full decode then says why)."""
    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else fs_path(source))
    except Exception:  # malformed or unreadable: reported by the decode
        return None
    return info.frames, info.channels, info.samplerate

def header_shapes(paths: Sequence[str | os.PathLike]) -> list[tuple[int, int, int] | None]:
    """:func:`header_shape` of each file: a folder's headers in one call to a codec process."""
    return [header_shape(p) for p in paths]

# libvorbis puts its analysis buffer on the stack, one float per sample handed to it in one call
# (alloca in _preextrapolate_helper): a single write of a minute of 48 kHz audio overflows an
# 8 MB stack and kills the process, a server included (libsndfile/libsndfile#1095,
# bastibe/python-soundfile#396). Every write therefore goes in slices of this many frames.
WRITE_FRAMES = 1 << 15

# Channel limits libsndfile reports only as "Format not recognised."
MAX_CONTAINER_CHANNELS = {"FLAC": 8, "MP3": 2}

def check_writable(sr: int, channels: int, *, format: str, subtype: str | None = None) -> None:
    """Refuse with :class:`AudioError` what the codec would crash on rather than report (Ogg
    Vorbis above 192 kHz) and what libsndfile would only call "Format not recognised." (FLAC
    above 8 channels, MP3 above 2)."""
    fmt = format.upper()
    if fmt == "OGG" and (subtype or "VORBIS").upper() == "VORBIS" and sr > MAX_VORBIS_RATE:
        raise AudioError(f"Ogg Vorbis cannot hold {sr} Hz audio (at most {MAX_VORBIS_RATE} Hz; libvorbis "
                         f"crashes above 200 kHz): write WAV or FLAC instead")
    if channels > MAX_CONTAINER_CHANNELS.get(fmt, channels):
        raise AudioError(f"{fmt} cannot hold {channels} channels (at most {MAX_CONTAINER_CHANNELS[fmt]}): "
                         f"write WAV instead")

def write_refusal(name: str | os.PathLike, exc: Exception, format: str, sr: int) -> AudioError:
    """A refusal to write ``name``, as an :class:`AudioError` naming it: ours says what the
    container cannot hold; libsndfile's names the temporary file object instead of the output."""
    if isinstance(exc, AudioError):
        return AudioError(f"{name}: {exc}")
    return AudioError(f"{name}: cannot write {format} audio at {sr} Hz ({sound_error_reason(exc)})")

def open_for_writing(target, sr: int, channels: int, *, format: str, subtype: str | None = None,
                     kbps: float | None = None) -> sf.SoundFile:
    """Open ``target`` (a path as bytes or str, or a binary file object) to write audio, after
    :func:`check_writable`. ``kbps``: for MP3, Ogg Opus and Ogg Vorbis, the bitrate to come near
    (the input's, :func:`coded_kbps`), where libsndfile's default ignored the input's."""
    check_writable(sr, channels, format=format, subtype=subtype)
    return sf.SoundFile(target, "w", sr, channels, subtype=subtype, format=format,
                        **_bitrate_settings(format, subtype, kbps, sr, channels))

class HeldAudio(NamedTuple):
    """What a file holds, beyond what its header says (:func:`held_audio`)."""

    frames: int  # an MP3's as its frames hold them where libsndfile's is a guess or more than it holds
    cut: CutShort | None  # a file holding less audio than its header claims
    kbps: float | None  # an MP3's or Opus's mean bitrate, a Vorbis's nominal one (coded_kbps): its output keeps it

def held_audio(source: str | os.PathLike | bytes, f: sf.SoundFile, name: str) -> HeldAudio:
    """:func:`scan_coded` (refusing what libsndfile would decode only part of), :func:`cut_short`
    and :func:`coded_kbps` of an open file, for the folder tool and :func:`read_audio` alike. An
    MP3 without a Xing frame has a length libsndfile guessed from its size (tags and cover art
    count), and one cut short a length it does not hold (a 4 s file recorded as 8 s): their frames
    are the walked ones."""
    scan = scan_coded(source, f, name)
    cut = cut_short(f, scan)
    guessed = scan is not None and scan.held is not None and (cut is not None or not scan.counted)
    frames = scan.held if guessed else f.frames
    return HeldAudio(frames, cut, coded_kbps(f, scan, frames, source))

def write_frames(f: sf.SoundFile, data: np.ndarray) -> None:
    """Write ``data [n, C]`` to an open sound file in slices of :data:`WRITE_FRAMES` frames."""
    for start in range(0, len(data), WRITE_FRAMES):
        f.write(data[start : start + WRITE_FRAMES])

def encode_audio(wav: np.ndarray, sr: int, *, format: str = "WAV", subtype: str | None = None,
                 kbps: float | None = None) -> bytes:
    """Encode ``[C, T]`` float audio into file bytes (``format``: a soundfile container; ``kbps``:
    an MP3's, Opus's or Vorbis's bitrate to come near, :func:`open_for_writing`)."""
    buf = io.BytesIO()
    data = np.ascontiguousarray(wav.T)  # [T, C]
    with open_for_writing(buf, sr, data.shape[1], subtype=subtype, format=format, kbps=kbps) as f:
        write_frames(f, data)
    return buf.getvalue()

FLOAT_SUBTYPES = ("FLOAT", "DOUBLE", "VORBIS", "OPUS")  # hold samples beyond full scale as they are

def clips_at_full_scale(fmt: str, subtype: str | None) -> bool:
    """Whether samples must be clipped to [-1, 1] before libsndfile writes them as ``subtype``
    (None: ``fmt``'s default): beyond full scale, u-law, A-law, GSM 6.10 and ADPCM turn a
    sample's sign over (1.5 came back as 0.17 in u-law), where float formats keep it."""
    return (subtype or sf.default_subtype(fmt)) not in FLOAT_SUBTYPES

def write_audio(path: str | os.PathLike, wav: np.ndarray, sr: int, *, subtype: str | None = None,
                format: str | None = None) -> None:
    """Write ``[C, T]`` (or mono ``[T]``) float audio atomically: a temporary file in the same
    folder, then ``os.replace``. The samples get the checks a read gives them (layout, NaN, rate):
    NaN was written as -32768 in PCM_16.

    A crash at any moment leaves either the old file or the new one, never half of one
    (rename is atomic on POSIX local filesystems; not guaranteed on NFS).
    """
    check_audio_array(wav, str(path))
    wav = np.asarray(wav)
    wav = wav[None] if wav.ndim == 1 else wav  # [C, T]
    _check_samples(wav, sr, str(path))
    sr = whole_hz(sr, str(path))
    path = Path(path)
    fmt = format or container_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if subtype is not None and not sf.check_format(fmt, subtype):
        subtype = None  # e.g. a float subtype asked of FLAC: fall back to the container default
    data = np.ascontiguousarray(wav.T)
    if clips_at_full_scale(fmt, subtype):
        data = np.clip(data, -1.0, 1.0)
    try:
        with atomic_open(path) as fh, open_for_writing(fh, sr, data.shape[1], subtype=subtype, format=fmt) as f:
            write_frames(f, data)
    except (AudioError, sf.LibsndfileError) as exc:
        raise write_refusal(path, exc, fmt, sr) from exc
