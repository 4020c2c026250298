"""Pure inference for image models: batched forward passes, whole images through a patch model,
and PSNR. No file I/O."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..audio.checks import as_native_tensor
from ..data.images import image_to_patches, patches_to_image
from ..models import Autoencoder
from ..models.image import check_grey_levels


def psnr(estimate: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements: ``10 log10(range^2 / MSE)``; tensors or
    arrays of the same shape."""
    estimate, reference = as_native_tensor(estimate), as_native_tensor(reference)
    if estimate.shape != reference.shape:  # was torch's broadcasting error, or a silent broadcast ([H, 1] with [1, W])
        raise ValueError(f"psnr needs two images of the same shape, got {tuple(estimate.shape)} and "
                         f"{tuple(reference.shape)}")
    err = mse(estimate, reference)
    return math.inf if err == 0 else 10 * math.log10(data_range**2 / err)


def mse(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The mean squared difference over all elements, in float64; tensors or arrays."""
    return float((as_native_tensor(a).double() - as_native_tensor(b).double()).pow(2).mean())


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


def _channel_hint(shape: tuple[int, ...]) -> str:
    """How to make ``[H, W]`` of a 3-D image: a short first axis is channels first ([C, H, W],
    as torch keeps them), otherwise channels last ([H, W, C], as image files load)."""
    if len(shape) != 3:
        return ""
    if shape[0] <= 4 < min(shape[1:]):
        return "; for channels first, pass img[0]" + (" or img.mean(0)" if shape[0] > 1 else "")
    return "; for channels last, pass img[..., 0]" + (" or img.mean(-1)" if shape[-1] > 1 else "")


@torch.inference_mode()
def reconstruct_image(model: Autoencoder, img: torch.Tensor | np.ndarray, stride: int | None = None,
                      batch_size: int = 512) -> torch.Tensor:
    """Pass ``img [H, W]`` (grey levels in [0, 1], noisy or not, a tensor or an array) through a
    patch model (``config.image_size`` square patches) and average the overlapping outputs back
    into ``[H, W]``. ``stride`` defaults to a quarter patch: each pixel is then seen in up to 16
    positions, which hides the seams between patches."""
    if not hasattr(model.config, "image_size") or getattr(model.config, "in_channels", 1) != 1:
        # not an AttributeError ('LinearConfig' object has no attribute 'image_size') or a conv's shape error
        raise ValueError(f"reconstruct_image needs an image model of grey-level patches; this model's family "
                         f"is {model.registry_name}" + (f", with {model.config.in_channels} input channels"
                                                        if hasattr(model.config, "in_channels") else ""))
    img = as_native_tensor(img)
    if img.dim() != 2:
        raise ValueError(f"a grey-level image [H, W] expected, got shape {tuple(img.shape)}" + _channel_hint(img.shape))
    if img.numel() == 0:  # not numpy's IndexError from the percentiles of nothing
        raise ValueError(f"an empty image: shape {tuple(img.shape)}")
    if not img.is_floating_point():
        raise ValueError(f"grey levels in [0, 1] expected, got {img.dtype}; for 8-bit images pass img / 255")
    if not torch.isfinite(img).all():
        raise ValueError("the image contains NaN or Inf")
    check_grey_levels(img, noise_std=model.config.noise_std)  # as noisy as the model was trained on
    size = model.config.image_size[0]
    if model.config.image_size[1] != size:
        raise ValueError("reconstruct_image needs a model with square patches")
    stride = stride or max(1, size // 4)
    if not 1 <= stride <= size:  # a stride past the patch left pixels no patch covers: NaN (0 / 0) there
        raise ValueError(f"stride must be within 1..{size} (the patch size), got {stride}")
    patches, padded = image_to_patches(img.float(), size, stride)  # [P, 1, s, s]
    out, _ = run_batches(model, patches, batch_size)  # [P, 1, s, s]
    return patches_to_image(out, padded, tuple(img.shape), stride)  # [H, W]
