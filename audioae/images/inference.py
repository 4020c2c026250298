"""Pure inference for image models: batched forward passes, whole images through a patch model,
and PSNR. No file I/O."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.images import image_to_patches, patches_to_image
from ..models import Autoencoder


def psnr(estimate: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements: ``10 log10(range^2 / MSE)``."""
    mse = float((estimate.double() - reference.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


@torch.inference_mode()
def run_batches(model: Autoencoder, x: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(x)`` in batches: ``x [N, ...]`` -> ``(x̂ [N, ...], h [N, K])``."""
    model.eval()
    outs, codes = [], []
    for i in range(0, x.shape[0], batch_size):
        out, h = model(x[i : i + batch_size])
        outs.append(out)
        codes.append(h)
    return torch.cat(outs), torch.cat(codes)


@torch.inference_mode()
def reconstruct_image(model: Autoencoder, img: torch.Tensor | np.ndarray, stride: int | None = None,
                      batch_size: int = 512) -> torch.Tensor:
    """Pass ``img [H, W]`` (grey levels in [0, 1], a tensor or an array) through a patch model
    (``config.image_size`` square patches) and average the overlapping outputs back into
    ``[H, W]``. ``stride`` defaults to a quarter patch: each pixel is then seen in up to 16
    positions, which hides the seams between patches."""
    img = torch.as_tensor(img)
    if img.dim() != 2:
        raise ValueError(f"a grey-level image [H, W] expected, got shape {tuple(img.shape)}"
                         + ("; for colour, pass one channel or img.mean(-1)" if img.dim() == 3 else ""))
    if not img.is_floating_point():
        raise ValueError(f"grey levels in [0, 1] expected, got {img.dtype}; for 8-bit images pass img / 255")
    if not torch.isfinite(img).all():
        raise ValueError("the image contains NaN or Inf")
    low, high = float(img.min()), float(img.max())
    if low < -1.0 or high > 2.0:  # noise may push [0, 1] levels a little past either end; 0..255 is far
        raise ValueError(f"grey levels in [0, 1] expected, the image spans {low:g}..{high:g}"
                         + ("; for 0..255 levels pass img / 255" if high > 2.0 else ""))
    size = model.config.image_size[0]
    if model.config.image_size[1] != size:
        raise ValueError("reconstruct_image needs a model with square patches")
    stride = stride or max(1, size // 4)
    patches, padded = image_to_patches(img.float(), size, stride)  # [P, 1, s, s]
    out, _ = run_batches(model, patches, batch_size)  # [P, 1, s, s]
    return patches_to_image(out, padded, tuple(img.shape), stride)  # [H, W]
