"""Checks every path holds on audio: sample rates, channel counts, in-memory arrays (layout,
levels), and the error type they raise (:class:`AudioError`)."""

from __future__ import annotations

import math
import numbers
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from .diagnose import CutShort


MIN_SAMPLE_RATE = 1000

MAX_SAMPLE_RATE = 384_000

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

def check_sample_rate(sr: float, name: str = "audio", field: str = "Pcm.sample_rate", *,
                      argument: str | None = None) -> None:
    """A whole number of Hz within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] (16000.0 passes; 44100.5 does
    not). ``field``: the request field the rate came from, named when it is unset; ``argument``:
    a library call's parameter it came from (``sr``), named instead (a caller of ``decompose``
    was told of ``Pcm.sample_rate``, a request field it never saw)."""
    whole_hz(sr, name)
    if sr == 0:  # a message's field left out reads as 0: "0 Hz is outside ..." would not say it was never set
        raise AudioError(f"{name}: {argument} is 0; pass the audio's sample rate in Hz, "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}" if argument else
                         f"{name}: the sample rate is unset (0); set it to the audio's rate in Hz, "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} (in a request: {field})")
    if not (MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE):
        raise AudioError(f"{name}: sample rate {sr} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")

def _check_samples(wav: np.ndarray, sr: int, name: str, argument: str | None = None) -> None:
    if wav.size == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples)")
    check_sample_rate(sr, name, argument=argument)
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


def needs_native_copy(a: np.ndarray) -> bool:
    """Whether torch.as_tensor would warn on or refuse ``a`` as it is: read-only (np.frombuffer of
    bytes), big-endian, or with negative strides (``x[:, ::-1]``)."""
    return not a.flags.writeable or not a.dtype.isnative or any(s < 0 for s in a.strides)


def as_native_tensor(x) -> torch.Tensor:
    """``torch.as_tensor(x)`` of its own dtype, a NumPy array copied where torch would warn on or
    refuse it as it is (:func:`needs_native_copy`)."""
    import torch

    if isinstance(x, np.ndarray) and needs_native_copy(x):
        x = x.astype(x.dtype.newbyteorder("="))
    return torch.as_tensor(x)


def as_channels_first(wav: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``[T]`` or ``[C, T]`` float audio -> float32 ``[C, T]`` and whether the input was 1-D."""
    import torch

    if not isinstance(wav, torch.Tensor):
        wav = np.asarray(wav)
    check_audio_array(wav)
    if isinstance(wav, np.ndarray) and (wav.dtype != np.float32 or needs_native_copy(wav)):
        # a native float32 copy is what torch would have made of another dtype anyway; a
        # writable native float32 array is still shared, not copied
        wav = wav.astype(np.float32)
    x = torch.as_tensor(wav, dtype=torch.float32)
    return (x[None], True) if x.dim() == 1 else (x, False)

def check_pcm(wav: np.ndarray, sr: int, name: str = "<pcm>", *, argument: str | None = None) -> None:
    """Validate in-memory audio the same way files are validated. ``argument``: the library
    parameter the rate came from (:func:`check_sample_rate`)."""
    _check_samples(wav, sr, name, argument)
