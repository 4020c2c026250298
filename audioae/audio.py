"""Audio file I/O (soundfile) and resampling (torchaudio.functional).

Arrays are float32 ``[C, T]`` (channels first) inside the library; files keep their own
sample rate, channel count and subtype when written back.

Importing this module does not import torch (0.6 GB and seconds): the gRPC client and the
server's codec processes read and write audio without it. The functions that compute on tensors
import it when called.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import mmap
import numbers
import os
import re
import stat
import struct
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import soundfile as sf

from .fileio import atomic_open

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Extension -> soundfile container: the audio a folder search takes and an output name may ask
# for, where this machine's libsndfile has the container (MP3 from libsndfile 1.1; the soundfile
# wheels bring 1.2). libsndfile keeps the length of an MP3 it wrote through a round trip (its LAME
# header); one it would cut short is refused (scan_coded).
_NAMED = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3", ".aif": "AIFF", ".aiff": "AIFF",
          ".au": "AU", ".caf": "CAF", ".w64": "W64", ".rf64": "RF64",
          # other names of those containers, so that a folder search takes them too
          ".wave": "WAV", ".bwf": "WAV", ".aifc": "AIFF", ".snd": "AU", ".oga": "OGG"}
CONTAINERS = {ext: fmt for ext, fmt in _NAMED.items() if fmt in sf.available_formats()}
# Ogg Opus (voice messages) is read by its contents; never written by name: Ogg's default is Vorbis.
READ_ONLY = (".opus",) if sf.check_format("OGG", "OPUS") else ()
AUDIO_EXTENSIONS = (*CONTAINERS, *READ_ONLY)  # what a folder search takes
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
# torchaudio's resampler builds a filter bank of (new/g) x (orig/g + 2 * width) floats, g = gcd:
# 44101 -> 16000 Hz would be ~700 M floats (2.8 GB). Banks up to this size are built (once per
# rate pair, kept: :func:`resampler`): every standard rate against 16000 Hz needs at most 1.2 MB
# (11025 Hz), 5512 Hz 5.6 MB, the NTSC pull-down of 48 kHz (47952 Hz) 12 MB; that of 44.1 kHz
# (44056 Hz) needs 44 MB. A bound on the reduced rates' product (1,000,000)
# would refuse 47952 and 5512 Hz too. A bound per path: a filter's cost is paid per call, in
# context blocks of orig/g samples, so small real-time calls pay it many times a second (44056 Hz:
# 82 ms per 10 ms call) where a file's seconds-long calls do not (44056 Hz: a whole 20 s clip's
# denoise() ran at 50x real time; benchmarks/odd_rates.py, benchmarks/results/odd-rates.json).
MAX_RESAMPLE_FILTER_BYTES = 16_000_000  # real-time streams (the server's, StreamingDenoiser's default)
# Offline (files, denoise, the folder tool): the cache keeps 8 pairs (resampler) of up to this
# size each, up to 512 MB a process; a bank of it costs at most a few times 44056 Hz's per sample.
MAX_OFFLINE_RESAMPLE_FILTER_BYTES = 64_000_000


class AudioError(ValueError):
    """An audio input could not be used: unreadable, empty, or with absurd parameters."""

    empty = False  # a file of 0 samples and no sign of more (:func:`empty_audio`)


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str  # soundfile container, e.g. "WAV"
    subtype: str  # soundfile subtype, e.g. "PCM_16"
    cut: CutShort | None = None  # a file holding less audio than its header claims (cut_short)
    kbps: float | None = None  # an MP3's or Opus's mean bitrate, a Vorbis's nominal one: its answer keeps it (coded_kbps)


def whole_hz(sr: float, name: str = "audio") -> int:
    """``sr`` as an int: 16000.0 is 16000; 44100.5 is a caller's mistake, not 44100."""
    if not isinstance(sr, numbers.Real):  # "16000" would fail below and be printed as 16000
        raise AudioError(f"{name}: a sample rate is a number of Hz, got {sr!r} (a {type(sr).__name__})")
    if int(sr) != sr:
        raise AudioError(f"{name}: a sample rate is a whole number of Hz, got {sr}")
    return int(sr)


def check_sample_rate(sr: float, name: str = "audio", field: str = "Pcm.sample_rate") -> None:
    """A whole number of Hz within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] (16000.0 passes; 44100.5 does
    not). ``field``: the request field the rate came from, named when it is unset."""
    whole_hz(sr, name)
    if sr == 0:  # a message's field left out reads as 0: "0 Hz is outside ..." would not say it was never set
        raise AudioError(f"{name}: the sample rate is unset (0); set it to the audio's rate in Hz, "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} (in a request: {field})")
    if not (MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE):
        raise AudioError(f"{name}: sample rate {sr} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")


def _check_samples(wav: np.ndarray, sr: int, name: str) -> None:
    if wav.size == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples)")
    check_sample_rate(sr, name)
    check_levels(wav, name)


MAX_ABS_SAMPLE = 1e9  # 180 dB over full scale; 1e18 made the decomposer's float32 energies Inf


def check_levels(wav: np.ndarray | torch.Tensor, name: str) -> None:
    """Refuse samples no arithmetic here survives: NaN or Inf, and finite floats so large that a
    float32 spectrogram's energies overflow (the answer was all NaN, even at strength 0)."""
    a = np.asarray(wav)  # [C, T] or [T]; a CPU tensor shares its memory
    # One pass each for max and min, no copy: NaN propagates through both, Inf is their value.
    peak = max(float(a.max()), -float(a.min())) if a.size else 0.0
    if not math.isfinite(peak):
        raise AudioError(f"{name}: the audio contains NaN or Inf samples")
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(f"{name}: the audio peaks at {peak:.3g}; float samples are expected within [-1, 1] "
                         f"(full scale) and at most {MAX_ABS_SAMPLE:g} is taken, beyond which float32 "
                         f"arithmetic overflows: scale it down (integer PCM as floats: divide by 2**(bits - 1))")


def fs_path(path: str | os.PathLike) -> bytes:
    """A path as libsndfile should get it: the file system's bytes. soundfile encodes a str path
    as strict UTF-8, which fails for a name that is not UTF-8 (a Latin-1 "caf\xe9.wav" from an
    old disk, which Python holds with a surrogate); the bytes are the name as it is on disk."""
    return os.fsencode(path)


# libsndfile's words where they mislead: for bytes in memory it says "not a regular file" of data
# it does not recognise, and for a header with a rate or channel count of 0, "Internal error".
_PLAINER = {
    "File does not exist or is not a regular file (possibly a pipe?).":
        "not an audio format libsndfile recognises (WAV, FLAC, Ogg, MP3, AIFF, ...)",
    "Internal error : SF_INFO struct incomplete.":
        "the header is incomplete: a sample rate, channel count or format of 0",
}


def sound_error_reason(exc: BaseException, in_memory: bool = False, path: str | os.PathLike | None = None,
                       writing: bool = False) -> str:
    """What went wrong in libsndfile's or the system's own words, without the prefixes: soundfile's
    "Error opening <path>:" (the caller names the file) and libsndfile's "Error : ". ``in_memory``:
    the audio was bytes, not a file, so "not a regular file" means an unknown format. ``path``
    (``writing``: opened to write): the file libsndfile failed on, asked again where it says only
    "System error."."""
    reason = (getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)).strip()
    # Of a regular file too (a cut MP3): "does not exist or is not a regular file" was false there.
    if reason in _PLAINER and (in_memory or "SF_INFO" in reason
                               or (path is not None and not writing and os.path.isfile(path))):
        return _PLAINER[reason]
    if reason == "System error." and path is not None:
        reason = os_refusal(path, writing) or reason
    if reason == "Format not recognised." and path is not None and not writing:
        reason = _unrecognised(path) or reason
    return reason.removeprefix("Error : ")


def _unrecognised(path: str | os.PathLike) -> str | None:
    """A plainer reason than libsndfile's "Format not recognised." for a file it cannot open:
    an empty one, or a kind it does not read (M4A, AAC, ...)."""
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    suffix = os.path.splitext(os.fsdecode(path))[1].lower()
    if suffix in OTHER_AUDIO:
        return f"libsndfile does not read {suffix} files: convert it, e.g. ffmpeg -i in{suffix} out.flac"
    return None


def os_refusal(path: str | os.PathLike, writing: bool = False) -> str | None:
    """Why the system will not open ``path`` (``writing``: to write, creating it), such as "Permission
    denied", or None when it opens. libsndfile reports any such refusal as "System error." and keeps
    the errno to itself: a file without read permission and an output folder without write permission
    both read "System error."; a file this creates to find out is removed again."""
    created = writing and not os.path.lexists(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT if writing else os.O_RDONLY | os.O_NONBLOCK, 0o666))
    except OSError as exc:
        return exc.strerror
    if created:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return None


def unfinished_wav_bytes(source: str | os.PathLike | bytes) -> int:
    """The bytes after the "data" chunk of a WAV whose header says that chunk is empty, 0 for any
    other file: a recording whose header was never finished (a recorder that lost power before
    it rewrote the sizes it wrote as 0), which libsndfile reads as 0 samples."""
    try:
        with io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(fs_path(source), "rb") as fh:
            size = fh.seek(0, io.SEEK_END)
            fh.seek(0)
            head = fh.read(12)
            if head[:4] != b"RIFF" or head[8:] != b"WAVE":
                return 0
            pos = 12
            while pos + 8 <= size:  # the chunks before "data": fmt, bext, iXML, LIST, JUNK, ...
                fh.seek(pos)
                chunk = fh.read(8)
                n = int.from_bytes(chunk[4:], "little")
                if chunk[:4] == b"data":
                    return size - pos - 8 if n == 0 else 0
                pos += 8 + n + (n & 1)
    except OSError:
        pass
    return 0


def empty_audio(name: str, source: str | os.PathLike | bytes, fmt: str) -> AudioError:
    """The error for a file of 0 samples (``fmt``: its container); one whose header is unfinished,
    or an Ogg cut off before its end page, says so: "empty" led to deleting a recording that holds
    all its audio. The error's ``empty`` is True where the file is just empty (nothing says there
    is more): the folder tool writes an empty output for it. An empty Ogg (libsndfile writes one) is
    just empty, not "may be cut short", which would fail it on every run."""
    held = unfinished_wav_bytes(source)
    if held:
        return AudioError(f"{name}: its header says the audio is empty, but {held:,} bytes of it follow: a recording "
                          f"whose header was never finished (the recorder stopped before writing its length); "
                          f"repair the header (e.g. sox --ignore-length IN.wav OUT.wav) and use the repaired copy")
    if fmt == "OGG" and ogg_cut_off(source):  # libsndfile finds an Ogg's length at its end
        return AudioError(f"{name}: libsndfile decodes no audio from this Ogg file; if it should hold some, it "
                          f"may be cut short (an Ogg cut short decodes to less than it holds, or to nothing): "
                          f"use the complete file")
    error = AudioError(f"{name}: the audio is empty (0 samples)")
    error.empty = True
    return error


def ogg_cut_off(source: str | os.PathLike | bytes) -> bool:
    """Whether ``source`` (a path or its bytes) begins as an Ogg file does (its first page's
    capture pattern) but its stream has no end page among its complete pages (:func:`ogg_pages`):
    a copy cut short, or a recording that stopped. Cut inside its header pages, libsndfile cannot
    open it and says only "malformed" (or "unimplemented format", cut inside the first page)."""
    try:
        if isinstance(source, bytes | bytearray):
            return source[:4] == b"OggS" and not ogg_pages(bytes(source)).ended
        with open(fs_path(source), "rb") as fh:
            if fh.read(4) != b"OggS":
                return False
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return not ogg_pages(data).ended
    except (OSError, ValueError):  # unreadable: libsndfile's reason stands alone
        return False


def unopened(name: str, exc: BaseException, source: str | os.PathLike | bytes, *, in_memory: bool = False,
             path: str | os.PathLike | None = None) -> AudioError:
    """The error for audio libsndfile cannot open (``source``: its path or bytes; ``in_memory``,
    ``path``: :func:`sound_error_reason`'s), with a word on an Ogg that may be cut short
    (:func:`ogg_cut_off`): "malformed" alone sent people looking for a broken encoder."""
    reason = sound_error_reason(exc, in_memory=in_memory, path=path)
    if ogg_cut_off(source):
        return AudioError(f"{name}: cannot read audio ({reason}); its Ogg stream stops before its end page: it may "
                          f"be cut short (an interrupted copy or download, or a recording that stopped mid-write): "
                          f"use the complete file")
    return AudioError(f"{name}: cannot read audio ({reason})")


# libsndfile's log of a data chunk whose size claims more than the file holds: WAV "data", AIFF
# "SSND", AU "Data Size" (CAF too; Ogg, FLAC and MP3 claim no size). W64 and RF64 say it otherwise
# (libsndfile 1.2.2): "riff : 64104 (should be 32052)" (an RF64's ds64: "Riff size : ...") for the
# whole file; a W64's "data : N" chunk size (which counts its 24-byte header); an RF64's ds64
# "Data size : N", where its own "data" size says 0xFFFFFFFF.
_DATA_CLAIM = re.compile(r"^ *(?:data|SSND|Data Size) *: (\d+) \(should be (\d+)\)$", re.MULTILINE)
_RIFF_SHORT = re.compile(r"^ *(?:riff|Riff size) : (\d+) \(should be (\d+)\)$", re.MULTILINE)
_W64_DATA = re.compile(r"^data : (\d+)$", re.MULTILINE)
_DS64_DATA = re.compile(r"^ *Data size : (\d+)$", re.MULTILINE)
_BLOCK_ALIGN = re.compile(r"^ *Block Align *: (\d+)$", re.MULTILINE)
# Bytes per sample of the uncompressed subtypes: their Block Align is the bytes of one frame (a
# coded one's is those of a block of frames), and an output's size is known before it is written.
SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
                "FLOAT": 4, "DOUBLE": 8}
# Sizes written before the length was known (live recorders, pipes): 0x7FFFFFFF or 0xFFFFFFFF,
# some less the header's bytes. A claim just under either is no claim.
PLACEHOLDER_SIZES = ((0x7FFFF000, 0x7FFFFFFF), (0xFFFFF000, 0xFFFFFFFF))


@dataclass(frozen=True)
class CutShort:
    """A file that holds less audio than its header claims (:func:`cut_short`)."""

    claim: str  # "its header claims 64,000 bytes of audio but the file holds 32,000"
    frames: int | None  # the frames that decode, where the header tells (an MP3's: once decoded)
    sample_rate: int

    def warning(self, name: str, done: str, frames: int | None = None) -> str:
        """The sentence a person reads: ``done`` ("denoised", "answered for") what it holds
        (``frames``: what decoded, where known)."""
        frames = self.frames if frames is None else frames
        if frames is None:
            held = "what decodes of it"
        else:  # "0.00 s" said nothing
            held = f"the {frames / self.sample_rate:.2f} s" if frames >= self.sample_rate // 100 else f"the {frames:,} sample(s)"
            held += " it holds"
        return f"{name}: {self.claim} (a copy cut short, or a recording that stopped mid-write?): {done} {held}"


def cut_short(f: sf.SoundFile, scan: CodedScan | None = None) -> CutShort | None:
    """A file whose header claims more audio than it holds (None for any other): a copy cut short
    (an interrupted download or card copy), whose complete original may still exist, or a
    recording that stopped mid-write. libsndfile reads the samples that are there and logs a
    WAV's, AIFF's or AU's claim; an MP3's (``scan``: :func:`scan_coded`'s) is its Xing/Info
    frame count, libsndfile's ``frames``, against the frames walked (without that frame, the
    length is a guess from the file's size: no claim). ``f``: an open file, or ``soundfile.info``.
    An Ogg claims no length, but a writer that finished marks its last page as the stream's end:
    without that mark it is cut short (it decodes its complete pages, or nothing). A FLAC cut short
    does not decode. libsndfile logs a W64's or RF64's claim in other words (:func:`wide_data_claim`)."""
    if scan is not None and not scan.ended:  # an Ogg
        return CutShort("its Ogg stream stops before its end page", None, f.samplerate)
    if scan is not None and scan.held is not None:  # an MP3
        if scan.counted and f.frames - scan.held >= 1152:  # one MPEG frame: decoders trim delay and padding
            sr = f.samplerate
            # frames hold more than decodes: the encoder's delay, a last frame that needs the next
            return CutShort(f"its header claims {f.frames / sr:.2f} s of audio but its frames hold {scan.held / sr:.2f} s",
                            None, sr)
        return None
    claim = _DATA_CLAIM.search(f.extra_info)
    if claim is not None:
        claimed, held = int(claim[1]), int(claim[2])
    elif (wide := wide_data_claim(f)) is not None:
        claimed, held = wide
    else:
        return None
    if any(lo <= claimed <= hi for lo, hi in PLACEHOLDER_SIZES) or claimed >= 1 << 62:  # no file is: a placeholder
        return None
    if claimed - held < 64:  # a missing pad byte, or a frame's few bytes: nothing a person lost
        return None
    if claim is not None and claim[0].lstrip().startswith("SSND"):  # its size counts the offset and block size fields
        claimed, held = claimed - 8, held - 8
    return CutShort(f"its header claims {claimed:,} bytes of audio but the file holds {held:,}", f.frames, f.samplerate)


def wide_data_claim(f: sf.SoundFile) -> tuple[int, int] | None:
    """``(bytes of audio the header claims, bytes of them the file holds)`` of a W64 or RF64, from
    libsndfile's log of its header (``f``: an open file or ``soundfile.info``); None for another
    file, or one whose claim is not logged. The claim: a W64's "data" chunk size, an RF64's ds64
    data size (not its sample count, which a writer may leave 0). What it holds: for PCM, float
    and G.711 the frames libsndfile counted in what is there (a chunk after the audio, cut, loses
    no audio); for a coded one (IMA/MS ADPCM, GSM 6.10), whose Block Align counts a block of many
    frames, the claim less the bytes the whole file lacks ("riff : A (should be B)"). Until
    2026-12-07 the header's chunks were walked, which missed an RF64 whose odd-sized chunk has no
    pad byte (libsndfile reads it so)."""
    info = f.extra_info
    if f.format == "W64" and (claim := _W64_DATA.search(info)):
        claimed = int(claim[1]) - 24
    elif f.format == "RF64" and (claim := _DS64_DATA.search(info)):
        claimed = int(claim[1])
    else:
        return None
    if f.subtype in SAMPLE_BYTES and (align := _BLOCK_ALIGN.search(info)):
        return claimed, min(claimed, f.frames * int(align[1]))
    if (short := _RIFF_SHORT.search(info)) is None:  # the file holds what its header says
        return claimed, claimed
    return claimed, min(claimed, max(0, claimed - (int(short[1]) - int(short[2]))))


def undecodable(name: str, exc: sf.LibsndfileError, after: int | None = None) -> AudioError:
    """A file whose header opened but whose samples do not decode: most often a copy cut short."""
    where = f" after {after} samples" if after else ""
    return AudioError(f"{name}: cannot decode the audio{where} ({sound_error_reason(exc)}): the file is "
                      f"truncated or corrupt")


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


# MPEG audio frame headers (ISO 11172-3 / 13818-3): kbit/s by (MPEG-1?, layer) and bitrate index,
# sample rates by version, samples per frame by (MPEG-1?, layer).
_MPEG_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits
_MPEG_SAMPLES = {(True, 1): 384, (True, 2): 1152, (True, 3): 1152, (False, 1): 384, (False, 2): 1152, (False, 3): 576}


@dataclass(frozen=True)
class CodedScan:
    """What :func:`scan_coded` found walking an MP3's frames or an Ogg's pages."""

    audio_bytes: int  # the coded audio's bytes: tags, cover art and codec headers left out
    held: int | None = None  # MP3: samples per channel its frames hold
    counted: bool = False  # MP3: a Xing/Info frame first: libsndfile's length is its count, not a guess
    ended: bool = True  # Ogg: its stream's last page says it ends (a file cut short, or a recorder stopped: no)
    chained: bool = False  # Ogg: a stream begins after another's (files joined end to end)


def _id3v2_end(data: bytes, pos: int) -> int:
    """``pos``, or past the ID3v2 tags that start there (a second one holding the cover art was
    read as MPEG frames: a complete file refused as "files joined end to end")."""
    while data[pos : pos + 3] == b"ID3" and pos + 10 <= len(data):
        size = (data[pos + 6] & 0x7F) << 21 | (data[pos + 7] & 0x7F) << 14 | (data[pos + 8] & 0x7F) << 7 | (data[pos + 9] & 0x7F)
        pos += 10 + size + (10 if data[pos + 5] & 0x10 else 0)  # a footer too
    return pos


def _mpeg_frame(data: bytes, pos: int) -> tuple[int, int] | None:
    """``(bytes, samples)`` of the MPEG audio frame whose header starts at ``pos``; None where none does."""
    h = int.from_bytes(data[pos : pos + 4], "big")
    version, layer_bits = (h >> 19) & 3, (h >> 17) & 3
    kbps_index, rate_index = (h >> 12) & 0xF, (h >> 10) & 3
    if (h >> 21) != 0x7FF or version == 1 or layer_bits == 0 or kbps_index in (0, 15) or rate_index == 3:
        return None
    mpeg1, layer = version == 3, 4 - layer_bits
    rate = _MPEG_RATES[version][rate_index]
    bits_per_s, padding = 1000 * _MPEG_KBPS[mpeg1, layer][kbps_index], (h >> 9) & 1
    if layer == 1:
        return (12 * bits_per_s // rate + padding) * 4, _MPEG_SAMPLES[mpeg1, layer]
    return (144 if mpeg1 or layer == 2 else 72) * bits_per_s // rate + padding, _MPEG_SAMPLES[mpeg1, layer]


def mpeg_frames_samples(data: bytes) -> CodedScan:
    """Samples per channel that an MPEG audio file's frames hold, and their bytes, by walking its
    frame headers (ID3v2 tags first are skipped, and so is a Xing/Info frame, which holds no
    audio), and whether a Xing/Info frame was there. Past bytes that are no frame (a tag or cover
    art at the end, damage), a sync word counts as a frame only where another frame, or the end of
    the file, follows it: a cover's bytes were walked as frames, and a complete file refused as
    joined. libsndfile decodes only the length its first header gives: a VBR file without a Xing
    header, or MP3s joined end to end, come out short (tests/test_batch.py: two joined files
    come out as one). Without one, that length is guessed from the file's size and first bitrate
    (cover art or tags make it seconds too long); with one, it is the encoder's count."""
    pos, total, audio_bytes, first, counted, synced = _id3v2_end(data, 0), 0, 0, True, False, True
    while pos + 4 <= len(data):
        frame = _mpeg_frame(data, pos)
        if frame is not None and not synced and pos + frame[0] + 4 <= len(data) \
                and _mpeg_frame(data, pos + frame[0]) is None:
            frame = None  # a sync word in other bytes
        if frame is None:
            synced = False
            found = data.find(b"\xff", pos + 1)  # the next candidate, not a byte at a time
            pos = found if found >= 0 else len(data)
            continue
        synced, (length, samples) = True, frame
        if first and (b"Xing" in data[pos : pos + length] or b"Info" in data[pos : pos + length]):
            counted = True
        else:
            total += samples
            audio_bytes += length
        first = False
        pos += length
    return CodedScan(audio_bytes, total, counted)


_NO_GRANULE = (1 << 64) - 1  # a page on which no packet ends (a header split over pages: cover art)


def ogg_pages(data: bytes) -> CodedScan:
    """An Ogg file's coded audio bytes: the complete pages of its first stream (the one libsndfile
    decodes) from the first that ends audio on (the codec's headers, with any cover art in their
    comments, left out; a page cut off at the end, which does not decode, too), and whether it is
    chained: a stream begins after another's pages (files joined end to end, of which libsndfile
    decodes only the first). ``ended``: its last complete page says the stream ends (a writer that
    finished sets it). Walks the page headers; past damage, on to the next capture pattern."""
    pos, audio_bytes, serial, in_headers, seen_data, chained, ended = 0, 0, None, True, False, False, False
    while pos + 27 <= len(data):
        if data[pos : pos + 4] != b"OggS":
            found = data.find(b"OggS", pos + 1)
            if found < 0:
                break
            pos = found
            continue
        flags, granule = data[pos + 5], int.from_bytes(data[pos + 6 : pos + 14], "little")
        segments = data[pos + 26]
        length = 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
        if pos + length > len(data):  # cut off
            break
        starts = bool(flags & 0x02)  # beginning of a stream
        chained = chained or (starts and seen_data)
        seen_data = seen_data or not starts
        page_serial = data[pos + 14 : pos + 18]
        serial = page_serial if serial is None else serial
        if page_serial == serial:
            in_headers = in_headers and granule in (0, _NO_GRANULE)
            audio_bytes += 0 if in_headers else length
            ended = bool(flags & 0x04)  # end of stream
        pos += length
    return CodedScan(audio_bytes, ended=ended, chained=chained)


def scan_coded(source: str | os.PathLike | bytes, f: sf.SoundFile, name: str) -> CodedScan | None:
    """Walk an MP3's frames or an Ogg's pages (any other container: None) and raise
    :class:`AudioError` for a file of which libsndfile would decode only part, reported done: an
    MPEG file whose frames hold more than ``f.frames`` (beyond 3 frames of encoder delay and
    padding; :func:`mpeg_frames_samples`), a chained Ogg (:func:`ogg_pages`). Returns what the walk
    found (the coded audio's bytes, for :func:`coded_kbps`; an MP3's frames, for
    :func:`cut_short`). A file is mapped, not read into memory; None where it cannot be read
    (the decode that follows says why). ``f``: the open file, or ``soundfile.info``."""
    if f.format not in ("MP3", "OGG"):
        return None
    walk = mpeg_frames_samples if f.format == "MP3" else ogg_pages
    try:
        if isinstance(source, bytes | bytearray):
            scan = walk(bytes(source))
        else:
            with open(fs_path(source), "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                scan = walk(data)
    except (OSError, ValueError):  # unreadable, or empty: the decode that follows says why
        return None
    sr = f.samplerate
    if scan.chained:
        raise AudioError(f"{name}: Ogg streams joined end to end (a chained Ogg), of which libsndfile decodes "
                         f"only the first ({f.frames / sr:.2f} s): convert it first, e.g. ffmpeg -i in.ogg out.flac")
    if scan.held is not None and scan.held > f.frames + 3 * 1152:
        raise AudioError(f"{name}: libsndfile decodes {f.frames / sr:.2f} s of this MPEG file, but its frames hold "
                         f"{scan.held / sr:.2f} s (a VBR file without its Xing header, or files joined end to end): "
                         f"convert it first, e.g. ffmpeg -i in.mp3 out.flac")
    return scan


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


MAX_CHANNELS = 64  # the most channels one call or file may carry (the wire contract's limit too)


def check_channels(channels: int, name: str = "", field: str = "Pcm.channels") -> None:
    """The channel limit every path holds: 1..MAX_CHANNELS (``name``: the audio's, in the message;
    ``field``: the request field the count came from, named when it is unset)."""
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral):  # 2.0 reached torch's TypeError
        raise AudioError(f"{name + ': ' if name else ''}a channel count is a whole number, got {channels!r} "
                         f"(a {type(channels).__name__})")
    if channels == 0:  # a message's field left out reads as 0
        raise AudioError(f"{name + ': ' if name else ''}the channel count is unset (0); set it to the audio's "
                         f"channels, 1..{MAX_CHANNELS} (in a request: {field})")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{name + ': ' if name else ''}channels must be within 1..{MAX_CHANNELS}, got {channels}")


def _is_tensor(x: object) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch: if torch is not imported yet,
    nothing can be one."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _pcm_hint(x: np.ndarray | torch.Tensor) -> str:
    """How to scale integer PCM of ``x``'s type to floats in [-1, 1], for an error message."""
    dtype = np.dtype(str(x.dtype).removeprefix("torch.")) if _is_tensor(x) else x.dtype
    if dtype.kind not in "iu":
        return ""
    bits = 8 * dtype.itemsize
    cast = "x.float()" if _is_tensor(x) else "x.astype(np.float32)"
    if dtype.kind == "u":  # unsigned PCM (8-bit WAV) is centred on half its range
        return f"; for {bits}-bit unsigned PCM pass ({cast} - {2 ** (bits - 1)}) / {2 ** (bits - 1)}"
    return f"; for {bits}-bit PCM pass {cast} / {2 ** (bits - 1)}"


def check_audio_array(wav: np.ndarray | torch.Tensor, name: str = "audio") -> None:
    """Refuse the two usual slips with in-memory audio before they turn into nonsense output:
    integer samples (int16 PCM taken as floats is 32768 times too loud) and soundfile's
    ``[T, C]`` layout where ``[C, T]`` is meant (it would become thousands of 2-sample channels)."""
    x = wav if _is_tensor(wav) else np.asarray(wav)  # a list has no dtype or shape
    if not (x.is_floating_point() if _is_tensor(x) else x.dtype.kind == "f"):
        raise AudioError(f"{name}: float samples in [-1, 1] expected, got {x.dtype}{_pcm_hint(x)}")
    shape = tuple(x.shape)
    if len(shape) not in (1, 2):
        raise AudioError(f"{name}: [T] or [C, T] expected, got shape {shape}")
    if len(shape) == 2 and shape[0] > MAX_CHANNELS >= shape[1]:
        raise AudioError(f"{name}: channels first ([C, T]) expected, got shape {shape}, which looks like "
                         f"[T, C] (soundfile.read's layout): pass its transpose, x.T")


def as_channels_first(wav: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``[T]`` or ``[C, T]`` float audio -> float32 ``[C, T]`` and whether the input was 1-D."""
    import torch

    if not isinstance(wav, torch.Tensor):
        wav = np.asarray(wav)
    check_audio_array(wav)
    if isinstance(wav, np.ndarray) and (wav.dtype != np.float32 or not wav.flags.writeable
                                        or any(s < 0 for s in wav.strides)):
        # torch warns for a read-only array (np.frombuffer of bytes) and refuses a big-endian one
        # or negative strides (x[:, ::-1]); a native float32 copy is what it would have made of
        # another dtype anyway. A writable native float32 array is still shared, not copied.
        wav = wav.astype(np.float32)
    x = torch.as_tensor(wav, dtype=torch.float32)
    return (x[None], True) if x.dim() == 1 else (x, False)


def check_pcm(wav: np.ndarray, sr: int, name: str = "<pcm>") -> None:
    """Validate in-memory audio the same way files are validated."""
    _check_samples(wav, sr, name)


# libvorbis puts its analysis buffer on the stack, one float per sample handed to it in one call
# (alloca in _preextrapolate_helper): a single write of a minute of 48 kHz audio overflows an
# 8 MB stack and kills the process, a server included (libsndfile/libsndfile#1095,
# bastibe/python-soundfile#396). Every write therefore goes in slices of this many frames.
WRITE_FRAMES = 1 << 15


MAX_VORBIS_RATE = 192_000  # libvorbis crashes (SIGSEGV) encoding above 200 kHz (python-soundfile#187)


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


def _bitrate_settings(format: str, subtype: str | None, kbps: float | None, sr: int, channels: int) -> dict:
    """soundfile's settings for a bitrate near ``kbps``: MP3 at a constant bitrate (an MP3's own
    bitrate is mostly constant) where that keeps the length, else an average one; Opus variable,
    as libopus chooses by default; Vorbis at the quality whose bitrate comes nearest."""
    if not kbps:
        return {}
    if format == "MP3":
        level = mp3_compression(kbps, sr)
        return {"compression_level": level, "bitrate_mode": "CONSTANT" if _cbr_keeps_length(sr, channels, level) else "AVERAGE"}
    if format == "OGG" and subtype == "OPUS":
        return {"compression_level": opus_compression(kbps, channels)}
    if format == "OGG" and (subtype or "VORBIS").upper() == "VORBIS":
        return {"compression_level": vorbis_compression(kbps, sr, channels)}
    return {}


@functools.lru_cache(maxsize=64)
def _cbr_keeps_length(sr: int, channels: int, level: float) -> bool:
    """Whether a constant-bitrate MP3 at these settings decodes to the length written. A frame at
    a low bitrate is too small for the header that tells a decoder to trim the encoder's delay
    (LAME's Info tag): a 16 kHz 32 kbps MP3 came back longer than it went in, its audio late.
    Asked of a few silent frames, once per setting; where it fails, an average bitrate (which
    keeps the header) comes near the input's instead."""
    probe = np.zeros((4608, channels), np.float32)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, channels, format="MP3", compression_level=level, bitrate_mode="CONSTANT") as f:
        f.write(probe)
    return len(sf.read(io.BytesIO(buf.getvalue()), dtype="float32")[0]) == len(probe)


def mp3_compression(kbps: float, sr: int) -> float:
    """libsndfile's MP3 compression level for a constant bitrate near ``kbps`` at ``sr``: it maps
    level 0..1 linearly onto its bitrates, 320..32 kbps from 32 kHz up (MPEG-1), 160..8 at 16 to
    24 kHz (MPEG-2) and 64..8 below (MPEG-2.5: 8, 11.025 and 12 kHz; read as MPEG-2's, a 64 kbps
    phone memo came back at 24), and takes the nearest in the standard's table (tests/test_batch.py
    checks outputs against their inputs' bitrates). Its level 1 is refused: at most 0.99."""
    top, bottom = (320.0, 32.0) if sr >= 32000 else (160.0, 8.0) if sr >= 16000 else (64.0, 8.0)
    return min(0.99, max(0.0, (top - kbps) / (top - bottom)))


def opus_compression(kbps: float, channels: int) -> float:
    """libsndfile's Opus compression level for a mean bitrate near ``kbps``: it maps level 0..1
    linearly onto 256..6 kbps per channel, at every rate (tests/test_batch.py checks outputs
    against their inputs' bitrates)."""
    return min(1.0, max(0.0, (256.0 - kbps / channels) / 250.0))


# Ogg Vorbis kbit/s at compression levels 0, 0.1, ..., 1 (vorbis_compression says how measured)
_VORBIS_KBPS = {  # sample rate: (1 channel, 2 channels, 6 channels)
    8000: ((37, 36, 33, 32, 30, 28, 26, 24, 22, 20, 19),
           (72, 67, 62, 57, 52, 47, 43, 39, 34, 31, 26),
           (223, 212, 200, 189, 176, 164, 153, 142, 132, 122, 112)),
    11025: ((50, 47, 44, 42, 39, 37, 34, 32, 31, 29, 26),
            (94, 87, 80, 73, 66, 60, 54, 49, 44, 40, 37),
            (298, 282, 265, 248, 232, 218, 205, 193, 181, 168, 156)),
    16000: ((67, 61, 55, 50, 44, 38, 37, 35, 32, 28, 29),
            (143, 129, 111, 96, 80, 64, 57, 52, 46, 39, 39),
            (399, 366, 328, 295, 262, 229, 220, 206, 190, 168, 171)),
    22050: ((87, 79, 72, 65, 58, 51, 48, 44, 39, 34, 34),
            (185, 164, 141, 120, 100, 82, 68, 60, 52, 44, 44),
            (520, 477, 429, 387, 345, 307, 286, 257, 231, 200, 203)),
    32000: ((187, 121, 97, 87, 80, 72, 66, 62, 59, 55, 45),
            (384, 264, 208, 183, 168, 145, 114, 103, 92, 75, 59),
            (1123, 728, 584, 527, 478, 432, 395, 372, 351, 327, 271)),
    44100: ((251, 155, 120, 106, 98, 87, 75, 69, 66, 61, 51),
            (514, 336, 255, 221, 206, 168, 122, 110, 99, 82, 67),
            (1235, 814, 617, 537, 495, 426, 287, 246, 215, 163, 123)),
    48000: ((272, 166, 128, 112, 104, 85, 75, 68, 65, 61, 51),
            (557, 359, 271, 234, 218, 167, 122, 109, 99, 82, 66),
            (1332, 871, 653, 564, 523, 422, 285, 245, 215, 162, 122)),
    96000: ((526, 300, 222, 188, 180, 94, 82, 75, 72, 68, 55),
            (1077, 653, 465, 392, 376, 178, 133, 119, 108, 91, 76),
            (2926, 1796, 1318, 1119, 1070, 555, 481, 442, 422, 403, 323)),
    192000: ((1038, 572, 429, 358, 204, 104, 95, 84, 80, 78, 66),
             (1999, 1245, 892, 739, 420, 196, 147, 132, 118, 103, 88),
             (5401, 3427, 2564, 2139, 1212, 609, 556, 488, 469, 454, 379)),
}


def vorbis_mean_compression(kbps: float, sr: int, channels: int) -> float:
    """libsndfile's Ogg Vorbis compression level for a mean bitrate near ``kbps``, for a file
    whose header names no nominal bitrate (:func:`vorbis_compression`; with libsndfile 1.2.2,
    libvorbis names one only from 8,000 to 50,000 Hz). libsndfile codes Vorbis at quality
    1 - level (default level 0.6), whose bitrate depends on the sample rate and the channels far
    more than on the signal: :data:`_VORBIS_KBPS` holds it, measured, for one
    channel, two (coupled stereo) and six (5.1, coupled: from 44.1 kHz up, 0.4-0.8x six times one by level)
    at the levels 0, 0.1, ..., 1; between the rates measured it is interpolated, and for other
    counts (each channel coded alone: 3, 4, 5, 7 and 8 came within 5% of that many times one) it
    is one channel's times the count. Within 0..1: a bitrate beyond the quality
    range's gets its end (tests/test_batch.py checks outputs against their inputs' sizes).

    Measured (libsndfile 1.2.2, the soundfile 0.14 wheel's libvorbis) on white noise at -20 dBFS,
    the audio's own kbit/s (8 s less 4 s: the few kB of codec headers cancel), one rate and
    channel count a run::

        python - 48000 2 <<'EOF'
        import io, sys
        import numpy as np, soundfile as sf
        sr, ch = map(int, sys.argv[1:])
        x = np.random.default_rng(0).normal(0, 0.1, (8 * sr, ch)).astype("f4")
        def size(y, level):
            b = io.BytesIO()
            sf.write(b, y, sr, format="OGG", compression_level=level)
            return len(b.getvalue())
        print([round((size(x, q / 10) - size(x[: 4 * sr], q / 10)) / 500) for q in range(11)])
        EOF

    Pink noise and speech-like signals come lower than white noise at the same level (tens of
    percent below 32 kHz): tests/test_batch.py bounds the outputs' sizes for a speech-like tone."""
    rates = sorted(_VORBIS_KBPS)
    column = {2: 1, 6: 2}.get(channels, 0)
    per_level = np.array([np.interp(sr, rates, [_VORBIS_KBPS[r][column][i] for r in rates]) for i in range(11)])
    if column == 0:
        per_level *= channels
    # falling with the level but for a kbit/s at its end: made monotonic, np.interp wants rising x
    falling = np.minimum.accumulate(per_level)
    return float(np.clip(np.interp(kbps, falling[::-1], np.linspace(1.0, 0.0, 11)), 0.0, 1.0))


VORBIS_LEVELS = np.linspace(0.0, 1.0, 11)  # the compression levels whose nominal bitrates are asked


@functools.lru_cache(maxsize=64)
def _vorbis_nominal_by_level(sr: int, channels: int) -> tuple[float, ...]:
    """The nominal kbit/s libvorbis writes in its header at each of :data:`VORBIS_LEVELS` for
    ``sr`` and ``channels``, asked of a few silent frames (it depends on the quality, the rate and
    the channels alone, not on the audio): falling with the level. All 0 where there is none: most
    often libvorbis encodes but names none (with libsndfile 1.2.2, at every rate outside 8,000 to
    50,000 Hz); also above :data:`MAX_VORBIS_RATE` (libvorbis would crash) and where libsndfile
    refuses to encode."""
    if sr > MAX_VORBIS_RATE:
        return (0.0,) * len(VORBIS_LEVELS)
    kbps = []
    for level in VORBIS_LEVELS:
        buf = io.BytesIO()
        try:
            with sf.SoundFile(buf, "w", sr, channels, format="OGG", subtype="VORBIS",
                              compression_level=float(level)) as f:
                f.write(np.zeros((64, channels), np.float32))
        except (sf.LibsndfileError, RuntimeError, ValueError):
            return (0.0,) * len(VORBIS_LEVELS)
        kbps.append(vorbis_nominal_kbps(buf.getvalue()) or 0.0)
    return tuple(kbps)


def _head(source: str | os.PathLike | bytes, n: int) -> bytes:
    """The first ``n`` bytes of a file or of its bytes (b"" where it cannot be read)."""
    if isinstance(source, bytes | bytearray):
        return bytes(source[:n])
    try:
        with open(fs_path(source), "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def vorbis_nominal_kbps(source: str | os.PathLike | bytes) -> float | None:
    """The nominal bitrate (kbit/s) in an Ogg Vorbis file's identification header, which names the
    quality it was coded at (libvorbis writes the one of its quality, rate and channels, whatever
    the audio); None where there is none."""
    head = _head(source, 4096)
    at = head.find(b"\x01vorbis")
    if at < 0 or len(head) < at + 7 + 21:
        return None
    _version, _channels, _rate, _top, nominal, _bottom = struct.unpack_from("<IBIiii", head, at + 7)
    return nominal / 1000 if nominal > 0 else None


def vorbis_kbps(source: str | os.PathLike | bytes, mean: float, sr: int, channels: int) -> float:
    """The kbit/s :func:`vorbis_compression` takes for a Vorbis input whose audio's mean bitrate is
    ``mean``: the nominal bitrate its header names (the one libvorbis writes for its quality), or
    for a header that names none the nominal one of the quality whose mean comes nearest (the
    white-noise table); where libvorbis names no nominal bitrate at this rate (with libsndfile
    1.2.2, outside 8,000 to 50,000 Hz), the mean."""
    by_level = _vorbis_nominal_by_level(sr, channels)
    if not all(by_level):
        return mean
    named = vorbis_nominal_kbps(source)
    return named or float(np.interp(vorbis_mean_compression(mean, sr, channels), VORBIS_LEVELS, by_level))


def vorbis_compression(kbps: float, sr: int, channels: int) -> float:
    """libsndfile's Ogg Vorbis compression level whose nominal bitrate is ``kbps`` at ``sr`` and
    ``channels`` (:func:`vorbis_kbps`, which :func:`coded_kbps` gives for a Vorbis input, so that
    its output is coded at its quality); where libvorbis names no nominal bitrate (with libsndfile
    1.2.2, outside 8,000 to 50,000 Hz), ``kbps`` is a mean bitrate (:func:`vorbis_mean_compression`).
    libsndfile codes Vorbis at quality 1 - level; libvorbis's nominal bitrate names that quality for the rate and channels
    whatever the audio, where the mean bitrate does not: the table of means measured on white noise,
    used alone, would send speech (which codes lower) back at a lower quality, level 0.92
    for a speech file coded at 0.6. Within 0..1: a bitrate beyond the quality range's gets its end
    (tests/test_batch.py checks outputs against their inputs' nominal bitrates and sizes)."""
    by_level = np.array(_vorbis_nominal_by_level(sr, channels))
    if not by_level.all():
        return vorbis_mean_compression(kbps, sr, channels)
    falling = np.minimum.accumulate(by_level)  # np.interp wants it monotonic
    return float(np.clip(np.interp(kbps, falling[::-1], VORBIS_LEVELS[::-1]), 0.0, 1.0))


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


def coded_kbps(f: sf.SoundFile, scan: CodedScan | None, frames: int,
               source: str | os.PathLike | bytes) -> float | None:
    """A lossy input's bitrate in kbit/s, which its output keeps: its coded audio's bytes
    (``scan``: :func:`scan_coded`'s, without tags, cover art or codec headers) over the ``frames``
    it holds at ``f``'s rate, for Vorbis the nominal bitrate of its quality (:func:`vorbis_kbps`,
    from its header in ``source``); None where it is not lossy (or is a kind libsndfile writes
    at no chosen bitrate). Counted with the cover art, an MP3's output came out at several times its
    bitrate (tests/test_batch.py::test_tags_cover_art_and_chained_files_are_told_from_the_audio).
    An MP3's bytes are over the samples its frames hold (``scan.held``), not the ``frames`` it
    decodes to: with an Info frame a decoder trims the encoder's delay and padding (over 1,500
    samples), which the frames' bytes still code: counted over ``frames``, a half-second 56 kbps file
    would read as 61 kbps and come back at 64."""
    if scan is None or not frames or (f.format != "MP3" and f.subtype not in ("OPUS", "VORBIS")):
        return None
    coded = scan.held if f.format == "MP3" and scan.held else frames  # samples the counted bytes code
    mean = 8 * scan.audio_bytes / (coded / f.samplerate) / 1000
    return vorbis_kbps(source, mean, f.samplerate, f.channels) if f.subtype == "VORBIS" else mean


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


def container_for(path: str | os.PathLike) -> str:
    """The soundfile container a path's extension names (:data:`CONTAINERS`: WAV, FLAC, OGG, MP3,
    AIFF, ...). Any other name is refused: a WAV written as ``out.m4a`` would be mislabelled."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise AudioError(f"{path}: audio is written as {', '.join(CONTAINERS)}; "
                         f"got {suffix or 'no extension'}")
    return CONTAINERS[suffix]


# Audio a folder search passes over (libsndfile reads none of it): counted, so a folder of M4As
# does not come back as "0 files" without a word on why.
OTHER_AUDIO = (*(ext for ext in (*_NAMED, ".opus") if ext not in AUDIO_EXTENSIONS),
               ".m4a", ".aac", ".wma", ".mp4", ".amr", ".3gp", ".webm")


def is_audio_name(path: str | os.PathLike) -> bool:
    """Whether ``path``'s extension names audio (one this package reads, or one it passes over):
    a name a report, a figure or an output folder must not take."""
    return Path(path).suffix.lower() in (*AUDIO_EXTENSIONS, *OTHER_AUDIO)


def not_a_file(path: str | os.PathLike) -> str:
    """What ``path`` is when it exists (through links) but is neither a regular file nor a folder:
    "a named pipe", "a device", "a socket"; "" otherwise (a broken link too: reading it says so)."""
    try:
        return _special_kind(os.stat(path).st_mode)
    except OSError:
        return ""


def _special_kind(mode: int) -> str:
    """:func:`not_a_file` of a file of this ``st_mode``."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return ""


def _entry_not_a_file(entry: os.DirEntry) -> str:
    """:func:`not_a_file` of a folder listing's entry, from what the listing told: no stat for a
    regular file that is no link (its type came with the listing), and a link's target was stat'ed
    (and kept) by the entry's is_dir."""
    try:
        if entry.is_file():
            return ""
        return _special_kind(entry.stat().st_mode)
    except OSError:  # a broken link, a link loop: reading it says so
        return ""


def _listed(top: str, unlisted: Callable[[OSError], None]) -> tuple[list[str], list[os.DirEntry]] | None:
    """``(folders, other entries)`` in ``top``, split as os.walk splits them (an entry whose kind
    cannot be told is no folder); None, after ``unlisted(exc)``, where ``top`` cannot be listed."""
    dirs, others = [], []
    try:
        with os.scandir(top) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    dirs.append(entry.name)
                else:
                    others.append(entry)
    except OSError as exc:
        unlisted(exc)
        return None
    try:  # listed, but searchable? (read without execute permission: every open in it fails)
        os.lstat(os.path.join(top, os.curdir))
    except PermissionError as exc:
        unlisted(PermissionError(exc.errno, f"{exc.strerror}: its entries cannot be opened", top))
        return None
    except OSError:  # gone meanwhile: the rest is looked at as it comes
        pass
    return dirs, others


def walk_audio(folder: str | os.PathLike,
               prune: Callable[[Path, Path, list[str], list[str]], bool] = lambda here, real, files, folders: False,
               searched_elsewhere: Collection[Path] = (),
               left_out: list[tuple[str, str]] | None = None) -> list[tuple[Path, str]]:
    """Every audio file under ``folder`` (:data:`AUDIO_EXTENSIONS`: WAV, FLAC, OGG, MP3, ...;
    recursive; hidden names skipped) with its path
    relative to ``folder`` (posix). Linked folders are followed (shared storage is often linked
    in), each real folder once, so a link loop ends: the real folders first, under their own
    names, each folder's files in name order, then the links whose targets were not searched;
    no folder reached through a link is searched where it lies in ``searched_elsewhere`` (the
    real paths of the job's other input folders), nor twice. Real folders go first so that ``a_latest -> z_2024``
    does not take z_2024's place: in plain name order its outputs would go under the link's
    name, and once the link moved on to z_2025, that folder would be skipped as searched already.
    ``prune(here, real, filenames, folders)`` returning True skips a folder and everything under
    it: ``real`` is ``here``'s real path, ``filenames`` and ``folders`` its listing's names (hidden
    ones too), so that the caller asks the file system nothing the walk knows. Other audio kinds are counted in one warning.
    ``left_out``: where each folder that cannot be listed and each audio name that is no regular
    file (a named pipe) is appended, as ``(path, why)``, for the caller to count (the folder tool
    fails a job that left any out).

    The one folder search: the folder tool and ``eval`` must see the same files, or a file
    denoised from a linked folder would have no reference to be scored against."""
    folder = Path(folder)
    found, skipped, seen, special = [], {}, set(), []

    def unlisted(exc: OSError) -> None:  # os.walk would pass over such a folder without a word
        log.warning("%s: cannot list this folder (%s); the files in it are left out", exc.filename,
                    exc.strerror or exc)
        if left_out is not None:
            left_out.append((os.fsdecode(exc.filename), f"cannot list this folder ({exc.strerror or exc})"))

    def searched(here: str, real: Path, via_link: bool) -> bool:
        """Whether the folder ``here`` (real path ``real``) is searched already, or, reached through
        a link, is searched as (part of) another input: one check for every folder, where until
        2026-12-07 a folder reached through two links was warned of as "a link loop?", and a
        link to a folder that holds another input searched that input twice (the job refused)."""
        if real in seen:
            if Path(os.path.realpath(os.path.dirname(here))).is_relative_to(real):
                log.warning("%s: skipped, its files were searched already under another name (a link loop?)", here)
            else:
                log.info("%s: not followed, it leads to %s, searched under another name", here, real)
            return True
        if via_link and any(real.is_relative_to(other) for other in searched_elsewhere):
            log.info("%s: not followed, it leads to %s, searched as part of another input", here, real)
            return True
        return False

    # os.walk(folder, followlinks=True) by hand, top down: its listing's entries tell a regular
    # file from a named pipe without a stat per file (os.walk keeps only their names).
    # (path, reached through a link); links to folders: once every real folder is searched
    pending: list[tuple[str, bool]] = [(os.fspath(folder), False)]
    links: list[str] = []
    while pending or links:
        dirpath, via_link = pending.pop() if pending else (links.pop(), True)
        real = Path(os.path.realpath(dirpath))
        if searched(dirpath, real, via_link):
            continue
        seen.add(real)  # before listing: a link to a folder that cannot be listed is not counted again
        listed = _listed(dirpath, unlisted)
        if listed is None:
            continue
        dirnames, entries = listed
        here = Path(dirpath)
        if prune(here, real, [e.name for e in entries], dirnames):
            continue
        subfolders = [os.path.join(dirpath, d) for d in sorted((d for d in dirnames if not d.startswith(".")),
                                                               reverse=True)]
        linked = [os.path.islink(d) for d in subfolders]  # one lstat each
        pending.extend((d, via_link) for d, is_link in zip(subfolders, linked, strict=True) if not is_link)
        # popped from the end: the first found first
        links[:0] = [d for d, is_link in zip(subfolders, linked, strict=True) if is_link]
        for entry in sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name):
            suffix = Path(entry.name).suffix.lower()
            if suffix in OTHER_AUDIO:
                skipped[suffix] = skipped.get(suffix, 0) + 1
            elif suffix in AUDIO_EXTENSIONS:  # a broken link too: reading it reports it
                if what := _entry_not_a_file(entry):
                    special.append((here / entry.name, what))
                    if left_out is not None:
                        left_out.append((str(here / entry.name), f"{what}, not a file"))
                    continue
                found.append((here / entry.name, (here / entry.name).relative_to(folder).as_posix()))
    if special:  # a named pipe's read waits for a writer: one hung the whole job
        log.warning("%s: passed over %d name(s) that are no regular file (e.g. %s: %s)", folder, len(special),
                    *special[0])
    if skipped:
        kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(skipped.items()))
        log.warning("%s: passed over %s file(s): libsndfile reads none of these; convert them (e.g. ffmpeg "
                    "-i in.m4a out.flac). The folder search takes %s", folder, kinds, "/".join(AUDIO_EXTENSIONS))
    return found


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


def check_resample(orig_sr: int, new_sr: int, *, target: str = "", realtime: bool = False,
                   served: bool = False) -> None:
    """Raise :class:`AudioError` when resampling ``orig_sr`` -> ``new_sr`` would need a huge
    filter bank: rates that share almost no factor (44101 and 16000 share only 1).
    ``target`` names the new rate for people, e.g. ``"the model's "``. Both directions count: every
    caller goes there and back, and the way back's bank can be the larger (16000 -> 24790 Hz).
    ``realtime``: for a stream of small calls that must keep up (:data:`MAX_RESAMPLE_FILTER_BYTES`);
    else offline, a file or a clip (:data:`MAX_OFFLINE_RESAMPLE_FILTER_BYTES`). ``served``: any call
    to a server, held to the stream's bound too: a bank of 44-64 MB costs a shared server 0.8-1.2 s
    and its memory per new rate pair (benchmarks/odd_rates.py), which tiny requests at odd rates could make it pay at will
    (docs/serving.md, "Resampling ratio")."""
    size = max(resample_filter_bytes(orig_sr, new_sr), resample_filter_bytes(new_sr, orig_sr))
    limit = MAX_RESAMPLE_FILTER_BYTES if realtime or served else MAX_OFFLINE_RESAMPLE_FILTER_BYTES
    if size <= limit:
        return
    g = math.gcd(orig_sr, new_sr)
    need, most = f"{size / 1e6:,.1f} MB", f"{limit / 1e6:.0f} MB"
    if round(size / 1e6, 1) <= limit / 1e6:  # just over: "16.0 MB (at most 16 MB)" said nothing
        need, most = f"{size:,}-byte", f"{limit:,} bytes"
    reduced = f"the two rates reduce to {orig_sr // g}:{new_sr // g}, which needs a {need} resampling filter"
    if served and size <= MAX_OFFLINE_RESAMPLE_FILTER_BYTES:
        raise AudioError(
            f"a sample rate of {orig_sr} Hz is not resampled to {target}{new_sr} Hz by a server: {reduced} (a "
            f"server takes at most {most}: each new rate's filter would cost it seconds and tens of MB); work on the "
            f"file offline instead (audioae denoise and audioae decompose take it), or resample the audio to a standard rate such as "
            f"16000, 44100 or 48000 Hz first")
    if realtime and size <= MAX_OFFLINE_RESAMPLE_FILTER_BYTES:
        raise AudioError(
            f"a sample rate of {orig_sr} Hz cannot be streamed at {target}{new_sr} Hz: {reduced} (a stream takes "
            f"at most {most}: its small calls would not keep up with real time); denoise it as a file instead "
            f"(offline, e.g. audioae denoise, which takes it), or resample the audio to a standard rate such as "
            f"16000, 44100 or 48000 Hz first")
    raise AudioError(
        f"a sample rate of {orig_sr} Hz cannot be resampled to {target}{new_sr} Hz efficiently: "
        f"{reduced} (at most {most} here); resample the audio to a standard rate such as 16000, 44100 or 48000 Hz first"
    )


def resample_filter_bytes(orig_sr: int, new_sr: int) -> int:
    """The size of torchaudio's float32 filter bank for ``orig_sr`` -> ``new_sr``:
    ``(new/g) x (orig/g + 2 * width)`` coefficients, ``g = gcd``, ``width`` its kernel's half-width
    (its defaults: 6 zero crossings, rolloff 0.99)."""
    g = math.gcd(orig_sr, new_sr)
    a, b = orig_sr // g, new_sr // g
    width = math.ceil(6 * a / (min(a, b) * 0.99))
    return 4 * b * (a + 2 * width)


def resample(wav: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int, *, target: str = "") -> torch.Tensor:
    """Resample along the last axis with torchaudio's windowed-sinc resampler.

    Raises :class:`AudioError` for rate pairs :func:`check_resample` refuses (``target`` names
    the new rate in its message)."""
    import torch

    x = torch.as_tensor(wav, dtype=torch.float32)
    if orig_sr == new_sr:
        return x
    check_resample(orig_sr, new_sr, target=target)
    return resampled(x, orig_sr, new_sr)


def resample_in_blocks(wav: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int, *,
                       stop: Callable[[], None] | None = None, block: int = 1 << 20) -> torch.Tensor:
    """:func:`resample`, in blocks of about ``block`` input samples, ``stop()`` called before each
    block after the first: it may raise to end the work (a 550 s recording's resample from 44.1 kHz,
    0.3 s on one thread, ran uncut past its stop: docs/decomposition.md). A tensor off the CPU, or
    one of a block or less, is resampled whole, without asking ``stop``.

    The result is :func:`resample`'s, length included, to float rounding: each block applies the
    kept kernel of :func:`resampler` to the samples that the whole-signal convolution's strides read
    (``width`` either side of its own, zeros only outside the signal), as torchaudio does."""
    import torch

    x = torch.as_tensor(wav, dtype=torch.float32)
    g = math.gcd(orig_sr, new_sr)
    a, b = orig_sr // g, new_sr // g  # each stride of a input samples gives b output samples
    n = x.shape[-1]
    per = max(1, block // a)  # strides per block
    if orig_sr == new_sr or x.device.type != "cpu" or n <= per * a:
        return resample(x, orig_sr, new_sr)
    check_resample(orig_sr, new_sr)
    kept = resampler(orig_sr, new_sr)
    kernel, w = kept.kernel, kept.width  # [b, 1, a + 2w]
    flat = x.reshape(-1, n)  # [B, T]
    rows = n // a + 1  # strides of the whole: torchaudio pads w samples before and w + a after
    # Each block is written into its place: joining the blocks at the end (torch.cat) ran 0.1-0.3 s
    # past the last stop question at 550 s (benchmarks/results/decompose-deadline-join-before.json).
    out = torch.empty(len(flat), rows * b, dtype=flat.dtype)  # [B, b * rows]
    for j0 in range(0, rows, per):
        if j0 and stop is not None:
            stop()
        j1 = min(rows, j0 + per)
        lo, hi = j0 * a - w, j1 * a + w  # stride j reads samples j*a - w .. j*a + a + w
        seg = torch.nn.functional.pad(flat[:, max(lo, 0) : min(hi, n)], (max(-lo, 0), max(hi - n, 0)))
        y = torch.nn.functional.conv1d(seg[:, None], kernel, stride=a)  # [B, b, j1 - j0]
        out[:, j0 * b : j1 * b].unflatten(-1, (j1 - j0, b)).copy_(y.transpose(1, 2))  # [B, j1 - j0, b]
    # torchaudio's length, ceil(b n / a), is computed in float32: one sample short of the exact
    # ceiling on some long inputs (16 kHz -> 44.1 kHz, 1600004 samples: 4410011). Its length is kept.
    # It can also be one more than the strides make (48 kHz -> 16 kHz, 100,672,892 samples), where
    # torchaudio's slice gives what there is: so does this one.
    length = int(torch.ceil(torch.as_tensor(b * n / a)))
    y = out[:, :length]  # [B, length or one fewer]
    return y.reshape(*x.shape[:-1], y.shape[-1])


def resampled(x: torch.Tensor, orig_sr: int, new_sr: int, kept=None) -> torch.Tensor:
    """``x`` (last axis) resampled with the kept kernel of :func:`resampler` (``kept``: one a
    caller holds for this pair): float32 on the CPU, what every path here resamples; any other
    tensor with torchaudio's functional form."""
    import torch
    import torchaudio.functional as AF

    if x.dtype == torch.float32 and x.device.type == "cpu":
        return (kept or resampler(orig_sr, new_sr))(x)
    return AF.resample(x, orig_sr, new_sr)


_RESAMPLERS_LOCK = threading.Lock()  # one build per pair: threads asking at once waited for none


def resampler(orig_sr: int, new_sr: int):
    """torchaudio's ``Resample`` for a rate pair (checked: :func:`check_resample`), shared and kept
    for the last 8 pairs asked: it builds its windowed-sinc kernel once, where
    ``torchaudio.functional.resample`` builds it on every call (a 10 ms stream call at 44.1 kHz took
    1.3 ms longer: ``benchmarks/results/stream-chunks-cost-kernel-{rebuilt,kept}.json``). Its
    defaults are the functional form's, and so are its samples. Read-only: share it, never move it."""
    with _RESAMPLERS_LOCK:
        return _built_resampler(orig_sr, new_sr)


@functools.lru_cache(maxsize=8)
def _built_resampler(orig_sr: int, new_sr: int):
    import torch
    import torchaudio.transforms as T

    with torch.inference_mode(False):  # an ordinary kernel: one built under inference mode refused autograd later
        return T.Resample(orig_sr, new_sr, dtype=torch.float32).eval()  # its kernel computed as the functional form's


class StreamingResampler:
    """Resampling chunk by chunk that equals ``torchaudio.functional.resample`` on the whole input
    (to float rounding).

    torchaudio works in blocks of ``orig/g`` input samples (``new/g`` output samples, ``g = gcd``),
    and an output sample reads the input within the sinc kernel's ``width`` of its position. So
    each call answers every output sample whose kernel the input has reached, computed from a
    short segment with whole blocks of context on both sides (zeros past the input, where the
    kernel's window is zero), and keeps the samples asked for. Answering whole blocks
    with a block of context to spare would make a 44.1 kHz stream (blocks of 441 samples) wait
    60-80 ms for its audio, an 11.025 kHz one 200-240 ms. Raises
    :class:`AudioError` for rate pairs :func:`check_resample` refuses
    (``realtime``: at the bound of a stream of small calls; False: a file read in long blocks).
    """

    LOWPASS_WIDTH = 6  # torchaudio's default lowpass_filter_width
    ROLLOFF = 0.99

    def __init__(self, orig_sr: int, new_sr: int, channels: int, *, target: str = "", realtime: bool = True):
        import torch

        # the blocks below are orig/g samples long, and every call computes its context blocks
        check_resample(orig_sr, new_sr, target=target, realtime=realtime)
        self.orig_sr, self.new_sr = orig_sr, new_sr
        # Held for the stream's life: asked of the 8-pair cache on each chunk, a server with streams
        # at more pairs than that rebuilt a kernel per chunk. A stream holds its own 1-2 pairs.
        self.kernel = resampler(orig_sr, new_sr) if orig_sr != new_sr else None
        g = math.gcd(orig_sr, new_sr)
        self.bi, self.bo = orig_sr // g, new_sr // g  # block sizes in and out
        # torchaudio's kernel half-width in input samples: an output sample reads no further
        self.width = math.ceil(self.LOWPASS_WIDTH * self.bi / (min(self.bi, self.bo) * self.ROLLOFF))
        self.ctx = max(1, math.ceil(self.width / self.bi))  # context in whole blocks on each side
        self.buf = torch.zeros(channels, self.ctx * self.bi)  # zeros before the start, as offline
        self.buf_block = -self.ctx  # block index of buf[..., 0]
        self.next_sample = 0  # first output sample not yet produced
        self.length = 0  # input samples pushed

    def _run(self, upto: int) -> torch.Tensor:
        """Output samples ``[next_sample, upto)``: each reads input already in ``buf`` (or past the
        input's end, which offline pads with zeros too)."""
        import torch

        if upto <= self.next_sample:
            return self.buf.new_zeros(self.buf.shape[0], 0)
        b0, b1 = self.next_sample // self.bo, -(-upto // self.bo)  # the blocks holding them
        lo = (b0 - self.ctx - self.buf_block) * self.bi
        hi = (b1 + self.ctx - self.buf_block) * self.bi
        seg = self.buf[:, lo:hi]  # [C, n]
        seg = torch.nn.functional.pad(seg, (0, hi - lo - seg.shape[-1]))  # zeros where no input is yet
        y = resampled(seg, self.orig_sr, self.new_sr, self.kernel)  # [C, n * bo / bi]
        y = y[:, self.ctx * self.bo + self.next_sample - b0 * self.bo : self.ctx * self.bo + upto - b0 * self.bo]
        self.next_sample = upto
        keep = self.next_sample // self.bo - self.ctx  # the next call's first context block
        self.buf = self.buf[:, (keep - self.buf_block) * self.bi :]
        self.buf_block = keep
        return y

    def push(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.orig_sr == self.new_sr:
            return x
        self.length += x.shape[-1]
        self.buf = torch.cat([self.buf, x], dim=-1)
        # output sample n sits at input position n * bi / bo and reads input up to ``width`` past it
        ready = (self.length - self.width) * self.bo // self.bi + 1 if self.length >= self.width else 0
        return self._run(ready)

    def finish(self) -> torch.Tensor:
        import torch

        if self.orig_sr == self.new_sr:
            return torch.zeros(self.buf.shape[0], 0)
        return self._run(math.ceil(self.new_sr * self.length / self.orig_sr))


def band_above(wav: torch.Tensor | np.ndarray, sr: int, band_sr: int) -> torch.Tensor:
    """The part of ``wav`` (last axis at ``sr``) that resampling to ``band_sr`` drops: the input
    minus its round trip through ``band_sr``, same length (what a model at ``band_sr`` never sees)."""
    import torch

    x = torch.as_tensor(wav, dtype=torch.float32)
    return x - fit_length(resample(resample(x, sr, band_sr), band_sr, sr), x.shape[-1])


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``length`` samples (resampling can be off by one)."""
    n = x.shape[-1]
    if n == length:
        return x
    if n > length:
        return x[..., :length]
    import torch

    return torch.nn.functional.pad(x, (0, length - n))
