"""Training losses: spectral (compressed magnitudes), multi-resolution STFT, SI-SDR, and two
differentiable proxies of the benchmark's perceptual metrics (PESQ: ``torch-pesq``; STOI:
``torch-stoi``; installed with the ``train`` extra), subclassed here to run in parallel on a GPU
with the same values."""

from __future__ import annotations

import functools
import importlib
import math

import numpy as np
import scipy.fft
import scipy.signal
import torch

from .metrics import si_sdr
from .spectral import compress, framed_rfft, magnitude, reflect_stft, unfold_frames


def spectral_loss(est_spec: torch.Tensor, clean_spec: torch.Tensor, kind: str = "power", power: float = 0.3) -> torch.Tensor:
    """MSE between compressed magnitudes, plus the same on compressed complex values (which
    penalises phase errors where the magnitude model cannot fix them, weighted lightly)."""
    e, c = compress(magnitude(est_spec), kind, power), compress(magnitude(clean_spec), kind, power)
    mag = (e - c).pow(2).mean()
    if kind != "power":
        return mag
    ec = e * est_spec / est_spec.abs().clamp_min(1e-8)
    cc = c * clean_spec / clean_spec.abs().clamp_min(1e-8)
    diff = ec - cc
    return 0.7 * mag + 0.3 * (diff.real.square() + diff.imag.square()).mean()  # |diff|^2, no abs(): see magnitude()


def multires_stft_loss(est: torch.Tensor, ref: torch.Tensor,
                       resolutions=((512, 128), (1024, 256), (256, 64))) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over resolutions (Yamamoto et al.)."""
    total = est.new_zeros(())
    for n_fft, hop in resolutions:
        e = magnitude(reflect_stft(est, n_fft, hop))  # [B, F, N]
        r = magnitude(reflect_stft(ref, n_fft, hop))  # [B, F, N]
        sc = torch.linalg.norm(r - e, dim=(-2, -1)) / torch.linalg.norm(r, dim=(-2, -1)).clamp_min(1e-7)  # [B]
        logmag = (torch.log(e + 1e-7) - torch.log(r + 1e-7)).abs().mean(dim=(-2, -1))  # [B]
        total = total + (sc + logmag).mean()
    return total / len(resolutions)


def si_sdr_loss(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return -si_sdr(est, ref).mean()


def _fir_via_fft(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal FIR filtering of each row of ``x`` [B, T] by ``h`` [L], in one FFT: the same output
    as a sample-by-sample loop, computed in parallel over time."""
    n = scipy.fft.next_fast_len(x.shape[-1] + h.shape[-1] - 1, real=True)  # a prime length would be 5x slower
    y = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(h, n), n)  # [B, n]
    return y[..., : x.shape[-1]]


def _impulse_response(b, a, taps: int) -> torch.Tensor:
    """An IIR filter's impulse response, computed in float64 and cut after ``taps`` samples."""
    impulse = np.zeros(taps)
    impulse[0] = 1.0
    return torch.as_tensor(scipy.signal.lfilter(np.asarray(b, np.float64), np.asarray(a, np.float64), impulse), dtype=torch.float32)


# weight name -> (the modules its proxy imports, the distribution that brings them)
PROXY_MODULES = {"pesq_weight": (("torch_pesq",), "torch-pesq"),
                 "stoi_weight": (("torch_stoi", "torch_stoi.stoi"), "torch-stoi")}


def check_proxy_imports(weights: dict[str, float]) -> None:
    """Raise RuntimeError naming the install when a perceptual term is weighted (``weights``:
    e.g. ``{"pesq_weight": 0.1}``) and its package does not import: run as a config check, not at
    the first step, after the corpus was loaded and run.json written."""
    missing = []
    for key, weight in weights.items():
        if weight and key in PROXY_MODULES:
            modules, dist_name = PROXY_MODULES[key]
            try:
                for module in modules:
                    importlib.import_module(module)
            except ImportError as exc:
                missing.append(f"train.{key}={weight:g} needs {dist_name} ({exc})")
    if missing:
        raise RuntimeError("; ".join(missing) + ": install the train extra, pip install -e '.[train]' "
                           "(or pip install 'audioae[train]'), or set the weight to 0")


def _fast_pesq_class():
    from torch_pesq import PesqLoss  # the `train` extra

    class FastPesqLoss(PesqLoss):
        """torch-pesq's loss with its two IIR filters (the 325-3250 Hz band for level alignment,
        the pre-emphasis) applied as FIR filters by FFT. torchaudio's ``lfilter`` runs through the
        samples one by one (on a GPU, one thread per row for 32,000 steps); these filters' impulse
        responses fall below 1e-15 of their energy within 1024 samples (poles inside radius 0.973),
        so cutting them there changes nothing a float32 can hold."""

        taps = 1024

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("power_ir", _impulse_response(self.power_filter[0], self.power_filter[1], self.taps))
            self.register_buffer("pre_ir", _impulse_response(self.pre_filter[0], self.pre_filter[1], self.taps))

        def align_level(self, signal: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T]
            filtered = _fir_via_fft(signal, self.power_ir)  # [B, T]
            # torch-pesq's constants, which follow the reference implementation's quirks
            power = filtered.square().sum(dim=1, keepdim=True) / (filtered.shape[1] + 5120) / 1.04684  # [B, 1]
            return signal * (10**7 / power).sqrt()

        def preemphasize(self, signal: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T]
            ramp = torch.linspace(0, 15, 16, device=signal.device)[1:] / 16.0  # [15]
            fade = torch.ones(signal.shape[-1], device=signal.device, dtype=signal.dtype)  # [T]
            fade[:15] = ramp
            fade[-15:] = ramp.flip(0)
            return _fir_via_fft(signal * fade, self.pre_ir)

    return FastPesqLoss


def _fast_stoi_class():
    from torch_stoi import NegSTOILoss  # the `train` extra
    from torch_stoi.stoi import EPS, _overlap_and_add

    def move_speech_frames_first(frames: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """[B, N, L] frames, [B, N] bool -> the kept frames of each row first, in order, then
        zeros: what torch-stoi's per-row loop does, as one gather."""
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # [B, N]
        moved = frames.gather(1, order.unsqueeze(-1).expand_as(frames))  # [B, N, L]
        count = keep.sum(1, keepdim=True)  # [B, 1]
        live = torch.arange(frames.shape[1], device=frames.device) < count  # [B, N]
        return moved * live.unsqueeze(-1)

    class FastNegSTOILoss(NegSTOILoss):
        """torch-stoi's loss with its voice-activity step vectorised (the original drops each
        row's silent frames in a Python loop with boolean indexing, two host syncs per row per
        call) and its framing done by views."""

        @staticmethod
        def remove_silent_frames(x, y, dyn_range, window, framelen, hop):
            x_frames = unfold_frames(x, framelen, hop) * window[:, None]  # [B, L, N]
            y_frames = unfold_frames(y, framelen, hop) * window[:, None]  # [B, L, N]
            x_energies = 20 * torch.log10(torch.norm(x_frames, dim=1, keepdim=True) + EPS)  # [B, 1, N]
            mask = ((x_energies.amax(2, keepdim=True) - dyn_range - x_energies) < 0).squeeze(1)  # [B, N]
            x_frames = move_speech_frames_first(x_frames.permute(0, 2, 1), mask)  # [B, N, L]
            y_frames = move_speech_frames_first(y_frames.permute(0, 2, 1), mask)
            return _overlap_and_add(x_frames, hop), _overlap_and_add(y_frames, hop), mask.long()

        @staticmethod
        def stft(x, win, fft_size, overlap=4):
            hop = int(win.shape[0] / overlap)
            framed = unfold_frames(x, win.shape[0], hop)[..., :-1]  # [B, L, N - 1]: torch-stoi drops the last
            return framed_rfft(framed, win, fft_size)  # [B, F, N - 1]

    return FastNegSTOILoss


@functools.cache
def _pesq_proxy(sample_rate: int, device: str) -> torch.nn.Module:
    return _fast_pesq_class()(1.0, sample_rate=sample_rate).to(device)


@functools.cache
def _stoi_proxy(sample_rate: int, device: str) -> torch.nn.Module:
    return _fast_stoi_class()(sample_rate=sample_rate).to(device)


def pesq_loss(est: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """PESQ's disturbance term, 0.1 * symmetric + 0.0309 * asymmetric (Strauss et al.'s
    differentiable PESQ): 4.5 minus the loss is PESQ's raw score before its MOS mapping, so one
    unit of loss is about one PESQ point. ``est``, ``ref``: [B, T]."""
    # Its level alignment divides by the signal's power: a silent row (the model muting a whole
    # crop) would give NaN, so such rows are swapped for a tone in both signals (finite, and no
    # gradient reaches est through the swap) and weighted 0. A mask, not boolean indexing:
    # indexing needs the row count on the host, which waits for the GPU.
    audible = (est.detach().square().mean(-1) > 1e-10) & (ref.square().mean(-1) > 1e-10)  # [B]
    keep = audible[:, None]  # [B, 1]
    t = torch.arange(est.shape[-1], device=est.device, dtype=torch.float32)  # [T]
    tone = 0.1 * torch.sin(2 * math.pi * 1000.0 / sample_rate * t)  # [T]
    with _full_precision(est.device):
        per_row = _pesq_proxy(sample_rate, str(est.device))(
            torch.where(keep, ref.float(), tone), torch.where(keep, est.float(), tone))  # [B]
    return (per_row * audible).sum() / est.shape[0]


def stoi_loss(est: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Negative STOI (differentiable, silent frames dropped as in the metric). [B, T] each."""
    with _full_precision(est.device):
        return _stoi_proxy(sample_rate, str(est.device))(est.float(), ref.float()).mean()


def _full_precision(device: torch.device):
    """Autocast off: the proxies scale signals to a power of 1e7 and take logs and ratios of
    energies, which overflow or lose everything in float16 (fp16 autocast training went NaN on an
    H200, benchmarks/results/gpu.json); their inputs are cast to float32 already."""
    return torch.autocast(device.type, enabled=False)
