"""Training losses: spectral (compressed magnitudes), multi-resolution STFT, SI-SDR, and two
differentiable proxies of the benchmark's perceptual metrics (PESQ: ``torch-pesq``; STOI:
``torch-stoi``), installed with the ``train`` extra."""

from __future__ import annotations

import functools

import torch

from .metrics import si_sdr
from .spectral import compress, magnitude


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
        w = torch.hann_window(n_fft, device=est.device)
        e = magnitude(torch.stft(est, n_fft, hop, window=w, return_complex=True))  # [B, F, N]
        r = magnitude(torch.stft(ref, n_fft, hop, window=w, return_complex=True))
        sc = torch.linalg.norm(r - e, dim=(-2, -1)) / torch.linalg.norm(r, dim=(-2, -1)).clamp_min(1e-7)
        logmag = (torch.log(e + 1e-7) - torch.log(r + 1e-7)).abs().mean(dim=(-2, -1))
        total = total + (sc + logmag).mean()
    return total / len(resolutions)


def si_sdr_loss(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return -si_sdr(est, ref).mean()


@functools.cache
def _pesq_proxy(sample_rate: int, device: str) -> torch.nn.Module:
    from torch_pesq import PesqLoss  # the `train` extra

    return PesqLoss(1.0, sample_rate=sample_rate).to(device)


@functools.cache
def _stoi_proxy(sample_rate: int, device: str) -> torch.nn.Module:
    from torch_stoi import NegSTOILoss  # the `train` extra

    return NegSTOILoss(sample_rate=sample_rate).to(device)


def pesq_loss(est: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """PESQ's disturbance term, 0.1 * symmetric + 0.0309 * asymmetric (Strauss et al.'s
    differentiable PESQ): 4.5 minus the loss is PESQ's raw score before its MOS mapping, so one
    unit of loss is about one PESQ point. ``est``, ``ref``: [B, T]."""
    # Its level alignment divides by the signal's power: a silent row (the model muting a whole
    # crop) would give NaN, so such rows are left out before the proxy sees them and add nothing.
    audible = (est.detach().square().mean(-1) > 1e-10) & (ref.square().mean(-1) > 1e-10)  # [B]
    if not bool(audible.any()):
        return est.sum() * 0.0
    per_row = _pesq_proxy(sample_rate, str(est.device))(ref[audible].float(), est[audible].float())  # [B']
    return per_row.sum() / est.shape[0]


def stoi_loss(est: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Negative STOI (differentiable, silent frames dropped as in the metric). [B, T] each."""
    return _stoi_proxy(sample_rate, str(est.device))(est.float(), ref.float()).mean()
