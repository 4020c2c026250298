"""Training losses: spectral (compressed magnitudes), multi-resolution STFT, SI-SDR."""

from __future__ import annotations

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
