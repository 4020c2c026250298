"""Why a read failed or came up short, in words a person can act on: libsndfile's errors made
plainer, empty and unfinished files, files cut short (:func:`cut_short`)."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import soundfile as sf

from .checks import AudioError, fs_path
from .coded import ogg_pages
from .walk import OTHER_AUDIO

if TYPE_CHECKING:
    from .coded import CodedScan


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
