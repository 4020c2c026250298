"""Coded (lossy) audio: MPEG frame and Ogg page walks (what a file's frames hold, whether
libsndfile would decode all of it), and the bitrate an MP3, Opus or Vorbis output is coded at."""

from __future__ import annotations

import functools
import io
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .checks import AudioError, fs_path

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

MAX_VORBIS_RATE = 192_000  # libvorbis crashes (SIGSEGV) encoding above 200 kHz (python-soundfile#187)

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
