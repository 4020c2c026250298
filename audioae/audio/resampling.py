"""Resampling (torchaudio): whole, in blocks, or streaming (:class:`StreamingResampler`), with
the bound on a rate pair's filter bank and the kept banks (:func:`resampler`)."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .checks import AudioError

if TYPE_CHECKING:
    import torch


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
