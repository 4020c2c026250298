"""Audio file I/O (soundfile) and resampling (torchaudio.functional).

Arrays are float32 ``[C, T]`` (channels first) inside the library; files keep their own
sample rate, channel count and subtype when written back.

Importing this package does not import torch (0.6 GB and seconds): the gRPC client and the
server's codec processes read and write audio without it. The functions that compute on tensors
import it when called.

The modules, by concern (each name is importable from here, as it was from the one module
``audioae/audio.py`` this package replaces):

- :mod:`~audioae.audio.checks`      sample-rate, channel and array checks; :class:`AudioError`, :class:`AudioInfo`
- :mod:`~audioae.audio.walk`        the folder search (:func:`walk_audio`) and the extension tables
- :mod:`~audioae.audio.coded`       MPEG frame and Ogg page walks; MP3, Opus and Vorbis bitrates
- :mod:`~audioae.audio.diagnose`    why a read failed or came up short (:func:`cut_short`, :func:`empty_audio`)
- :mod:`~audioae.audio.soundio`     reads and writes through soundfile (:func:`read_audio`, :func:`write_audio`)
- :mod:`~audioae.audio.resampling`  resampling: whole, in blocks, streaming (:class:`StreamingResampler`)

Patch a name where it is looked up: in its module (``audioae.audio.walk.os.scandir``), not here.
"""

from __future__ import annotations

from .checks import (
    MAX_ABS_SAMPLE,
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioError,
    AudioInfo,
    as_channels_first,
    check_audio_array,
    check_channels,
    check_levels,
    check_pcm,
    check_sample_rate,
    fs_path,
    whole_hz,
)
from .coded import (
    MAX_VORBIS_RATE,
    VORBIS_LEVELS,
    CodedScan,
    coded_kbps,
    mp3_compression,
    mpeg_frames_samples,
    ogg_pages,
    opus_compression,
    scan_coded,
    vorbis_compression,
    vorbis_kbps,
    vorbis_mean_compression,
    vorbis_nominal_kbps,
)
from .diagnose import (
    PLACEHOLDER_SIZES,
    SAMPLE_BYTES,
    CutShort,
    cut_short,
    empty_audio,
    ogg_cut_off,
    os_refusal,
    sound_error_reason,
    undecodable,
    unfinished_wav_bytes,
    unopened,
    wide_data_claim,
)
from .resampling import (
    MAX_OFFLINE_RESAMPLE_FILTER_BYTES,
    MAX_RESAMPLE_FILTER_BYTES,
    StreamingResampler,
    band_above,
    check_resample,
    fit_length,
    resample,
    resample_filter_bytes,
    resample_in_blocks,
    resampled,
    resampler,
)
from .soundio import (
    FLOAT_SUBTYPES,
    MAX_CONTAINER_CHANNELS,
    READ_BLOCK,
    WRITE_FRAMES,
    HeldAudio,
    check_writable,
    clips_at_full_scale,
    encode_audio,
    header_shape,
    header_shapes,
    held_audio,
    iter_blocks,
    open_for_writing,
    read_all,
    read_audio,
    read_blocks,
    write_audio,
    write_frames,
    write_refusal,
)
from .walk import (
    AUDIO_EXTENSIONS,
    CONTAINERS,
    OTHER_AUDIO,
    READ_ONLY,
    container_for,
    is_audio_name,
    not_a_file,
    walk_audio,
)

__all__ = [
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
    "AudioError",
    "AudioInfo",
    "whole_hz",
    "check_sample_rate",
    "MAX_ABS_SAMPLE",
    "check_levels",
    "fs_path",
    "MAX_CHANNELS",
    "check_channels",
    "check_audio_array",
    "as_channels_first",
    "check_pcm",
    "CONTAINERS",
    "READ_ONLY",
    "AUDIO_EXTENSIONS",
    "container_for",
    "OTHER_AUDIO",
    "is_audio_name",
    "not_a_file",
    "walk_audio",
    "CodedScan",
    "mpeg_frames_samples",
    "ogg_pages",
    "scan_coded",
    "MAX_VORBIS_RATE",
    "mp3_compression",
    "opus_compression",
    "vorbis_mean_compression",
    "VORBIS_LEVELS",
    "vorbis_nominal_kbps",
    "vorbis_kbps",
    "vorbis_compression",
    "coded_kbps",
    "sound_error_reason",
    "os_refusal",
    "unfinished_wav_bytes",
    "empty_audio",
    "ogg_cut_off",
    "unopened",
    "SAMPLE_BYTES",
    "PLACEHOLDER_SIZES",
    "CutShort",
    "cut_short",
    "wide_data_claim",
    "undecodable",
    "read_blocks",
    "READ_BLOCK",
    "read_all",
    "iter_blocks",
    "read_audio",
    "header_shape",
    "header_shapes",
    "WRITE_FRAMES",
    "MAX_CONTAINER_CHANNELS",
    "check_writable",
    "write_refusal",
    "open_for_writing",
    "HeldAudio",
    "held_audio",
    "write_frames",
    "encode_audio",
    "FLOAT_SUBTYPES",
    "clips_at_full_scale",
    "write_audio",
    "MAX_RESAMPLE_FILTER_BYTES",
    "MAX_OFFLINE_RESAMPLE_FILTER_BYTES",
    "check_resample",
    "resample_filter_bytes",
    "resample",
    "resample_in_blocks",
    "resampled",
    "resampler",
    "StreamingResampler",
    "band_above",
    "fit_length",
]
