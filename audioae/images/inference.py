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


# A [0, 1] image under Gaussian noise of std up to 1 (the most ReportConfig accepts) keeps its 1st
# and 99th percentiles within -2.33..3.33 and never gets near +-64; 8-bit levels held as floats are
# outside both unless the image is almost black.
LEVEL_SPREAD = (-3.0, 4.0)  # of the 1st and 99th percentiles
LEVEL_LIMIT = 64.0


def check_levels(img: torch.Tensor) -> None:
    """Refuse ``img`` unless it holds [0, 1] grey levels, with or without noise on them. Noise
    pushes the extremes past [0, 1], so the check is on percentiles, with a far limit for the
    extremes: a noisy image passes, an image of 0..255 levels does not."""
    flat = img.detach().flatten().double().cpu().numpy()
    low, high = np.quantile(flat, [0.01, 0.99])
    least, most = float(flat.min()), float(flat.max())
    if low < LEVEL_SPREAD[0] or high > LEVEL_SPREAD[1] or least < -LEVEL_LIMIT or most > LEVEL_LIMIT:
        raise ValueError(f"grey levels in [0, 1] expected (noise may spread them), but 98% of the image spans "
                         f"{low:.4g}..{high:.4g} and all of it {least:g}..{most:g}; accepted: 98% within "
                         f"{LEVEL_SPREAD[0]:g}..{LEVEL_SPREAD[1]:g} and all within +-{LEVEL_LIMIT:g}"
                         + ("; for 0..255 levels pass img / 255" if high > LEVEL_SPREAD[1] or most > LEVEL_LIMIT
                            else ""))


@torch.inference_mode()
def reconstruct_image(model: Autoencoder, img: torch.Tensor | np.ndarray, stride: int | None = None,
                      batch_size: int = 512) -> torch.Tensor:
    """Pass ``img [H, W]`` (grey levels in [0, 1], noisy or not, a tensor or an array) through a
    patch model (``config.image_size`` square patches) and average the overlapping outputs back
    into ``[H, W]``. ``stride`` defaults to a quarter patch: each pixel is then seen in up to 16
    positions, which hides the seams between patches."""
    if not hasattr(model.config, "image_size") or getattr(model.config, "in_channels", 1) != 1:
        # was an AttributeError ('LinearConfig' object has no attribute 'image_size') or a conv's shape error
        raise ValueError(f"reconstruct_image needs an image model of grey-level patches; this model's family "
                         f"is {model.registry_name}" + (f", with {model.config.in_channels} input channels"
                                                        if hasattr(model.config, "in_channels") else ""))
    img = torch.as_tensor(img)
    if img.dim() != 2:
        raise ValueError(f"a grey-level image [H, W] expected, got shape {tuple(img.shape)}"
                         + ("; for colour, pass one channel or img.mean(-1)" if img.dim() == 3 else ""))
    if img.numel() == 0:  # was numpy's IndexError from the percentiles of nothing
        raise ValueError(f"an empty image: shape {tuple(img.shape)}")
    if not img.is_floating_point():
        raise ValueError(f"grey levels in [0, 1] expected, got {img.dtype}; for 8-bit images pass img / 255")
    if not torch.isfinite(img).all():
        raise ValueError("the image contains NaN or Inf")
    check_levels(img)
    size = model.config.image_size[0]
    if model.config.image_size[1] != size:
        raise ValueError("reconstruct_image needs a model with square patches")
    stride = stride or max(1, size // 4)
    if not 1 <= stride <= size:  # a stride past the patch left pixels no patch covers: NaN (0 / 0) there
        raise ValueError(f"stride must be within 1..{size} (the patch size), got {stride}")
    patches, padded = image_to_patches(img.float(), size, stride)  # [P, 1, s, s]
    out, _ = run_batches(model, patches, batch_size)  # [P, 1, s, s]
    return patches_to_image(out, padded, tuple(img.shape), stride)  # [H, W]
