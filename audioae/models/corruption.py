"""Input corruptions for denoising autoencoders: the network sees the corrupted input and is
trained to reconstruct the clean one.

All functions take an optional ``torch.Generator`` so that validation corruptions are fixed.
"""

from __future__ import annotations

import torch

CORRUPTIONS = ("none", "gaussian", "patches", "mix")


def _uniform(shape, low: float, high: float, like: torch.Tensor, generator=None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device="cpu").to(like.device, like.dtype)
    return low + (high - low) * u


def mix_at_snr(clean: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``clean + g * noise`` with ``g`` chosen so the mixture has ``snr_db`` per example.

    ``clean, noise [B, T]``, ``snr_db [B]``.
    """
    p_clean = clean.pow(2).mean(-1, keepdim=True).clamp_min(1e-10)  # [B, 1]
    p_noise = noise.pow(2).mean(-1, keepdim=True).clamp_min(1e-10)  # [B, 1]
    gain = torch.sqrt(p_clean / (p_noise * 10 ** (snr_db[:, None] / 10)))  # [B, 1]
    return clean + gain * noise


def add_gaussian(clean: torch.Tensor, snr_low: float, snr_high: float, generator=None) -> torch.Tensor:
    """White Gaussian noise at a random SNR per example; ``clean [B, ...]``."""
    noise = torch.randn(clean.shape, generator=generator, device="cpu").to(clean.device, clean.dtype)
    snr = _uniform((clean.shape[0],), snr_low, snr_high, clean, generator)
    flat = mix_at_snr(clean.reshape(clean.shape[0], -1), noise.reshape(clean.shape[0], -1), snr)
    return flat.reshape(clean.shape)


def add_gaussian_std(x: torch.Tensor, std: float, generator=None) -> torch.Tensor:
    """Gaussian noise of fixed standard deviation (the image course's corruption)."""
    return x + std * torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)


def darken_patches(x: torch.Tensor, fraction: float, patch: tuple[int, int], generator=None) -> torch.Tensor:
    """Zero random rectangular patches of the last two axes until about ``fraction`` is dark.

    Works for spectrograms ``[B, F, N]`` (time-frequency patches) and images ``[B, C, H, W]``.
    """
    *lead, h, w = x.shape
    b = lead[0]
    ph, pw = min(patch[0], h), min(patch[1], w)
    n_patches = max(1, round(fraction * h * w / (ph * pw)))
    keep = torch.ones(b, h, w, device=x.device, dtype=x.real.dtype)
    rows = torch.randint(0, h - ph + 1, (b, n_patches), generator=generator)
    cols = torch.randint(0, w - pw + 1, (b, n_patches), generator=generator)
    for i in range(b):
        for r, c in zip(rows[i].tolist(), cols[i].tolist(), strict=True):
            keep[i, r : r + ph, c : c + pw] = 0
    shape = [b] + [1] * (len(lead) - 1) + [h, w]
    return x * keep.reshape(shape)
