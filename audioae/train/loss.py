"""What one training step computes on a batch: the corruption the model sees (:func:`corrupt_batch`,
its random draws from :func:`step_seed`) and the weighted sum of the configured losses
(:func:`batch_loss`).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import losses
from ..models import SpectralAutoencoder
from ..models.corruption import add_gaussian, darken_patches, mix_at_snr
from .config import TrainConfig


def corrupt_batch(model: SpectralAutoencoder, clean: torch.Tensor, noise: torch.Tensor, snr: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the model sees for this batch: ``(noisy waveform [B, T], noisy STFT [B, F, N])``.

    The model config's corruption decides: ``mix`` adds the drawn noise at the drawn SNR,
    ``gaussian`` white noise at a random SNR, ``patches`` darkens time-frequency patches of the
    clean STFT, ``none`` passes the clean signal (a plain autoencoder).
    """
    c = model.config
    if c.corruption == "mix":
        noisy = mix_at_snr(clean, noise, snr)
    elif c.corruption == "gaussian":
        noisy = add_gaussian(clean, c.snr_low, c.snr_high, generator)
    else:
        noisy = clean
    spec = model.stft(noisy)  # [B, F, N]
    if c.corruption == "patches":
        spec = darken_patches(spec, c.patch_fraction, c.patch_size, generator)
        noisy = model.stft.inverse(spec, clean.shape[-1])
    return noisy, spec


def batch_loss(model: SpectralAutoencoder, clean: torch.Tensor, noisy_spec: torch.Tensor, tc: TrainConfig,
               forward=None, noisy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the configured losses plus the sparsity penalty. ``noisy [B, T]``, the
    waveform of ``noisy_spec``, is needed by look-ahead models only."""
    inner = model
    forward = forward or model
    feats = inner.features_of(noisy_spec, noisy)  # [B, F', N]
    out, h = forward(feats)  # [B, F, N], code
    est_spec = inner.estimate_spec(noisy_spec, out.float())  # [B, F, N]
    clean_spec = inner.stft(clean)  # [B, F, N]
    parts = {}
    total = clean.new_zeros(())
    cfg = inner.config
    if tc.spectral_weight:
        parts["spec"] = losses.spectral_loss(est_spec, clean_spec, cfg.compression, cfg.compression_power)
        total = total + tc.spectral_weight * parts["spec"]
    waveform_terms = {"mrstft": (tc.mrstft_weight, losses.multires_stft_loss),
                      "sisdr": (tc.sisdr_weight, losses.si_sdr_loss),
                      "pesq": (tc.pesq_weight, lambda e, c: losses.pesq_loss(e, c, cfg.sample_rate)),
                      "stoi": (tc.stoi_weight, lambda e, c: losses.stoi_loss(e, c, cfg.sample_rate))}
    if any(weight for weight, _ in waveform_terms.values()):
        est = inner.stft.inverse(est_spec, clean.shape[-1])  # [B, T]
        for name, (weight, term) in waveform_terms.items():
            if weight:
                parts[name] = term(est, clean)
                total = total + weight * parts[name]
    sp = inner.sparsity_loss(h.float())
    if cfg.sparsity_weight:
        parts["sparsity"] = sp
    total = total + sp
    # Detached tensors, not floats: reading a CUDA value waits for the GPU, so the training loop
    # converts them only on the steps it logs.
    return total, {k: v.detach() for k, v in parts.items()}


def step_seed(key: tuple[int, ...], step: int) -> int:
    """A 64-bit seed for ``step``'s draws from ``key`` (the run's seed, the rank) and the step alone."""
    return int(np.random.SeedSequence([*key, step]).generate_state(1, np.uint64)[0])
