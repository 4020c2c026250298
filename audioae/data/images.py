"""Image data bundled with installed packages (nothing is downloaded): scikit-learn's 8x8 digits
as images, and grayscale patches of scikit-image's bundled photographs; plus cutting an image
into overlapping patches and putting it back together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .digits import load_digits_tensors

# Photographs that ship inside the scikit-image wheel. Others in skimage.data are fetched from
# the network on first use, so only these names are accepted.
BUNDLED_PHOTOGRAPHS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "moon", "page", "rocket", "text",
)
TRAIN_PHOTOGRAPHS = ("astronaut", "brick", "chelsea", "clock", "coffee", "coins", "grass", "moon", "page",
                     "rocket", "text")
TEST_PHOTOGRAPH = "camera"  # held out: every photograph number in the report is measured on it


def load_digit_images(size: int = 8) -> tuple[torch.Tensor, np.ndarray]:
    """``(x [1797, 1, size, size] float32 in [0, 1], labels [1797])``; bilinear upsampling when
    ``size`` is not 8 (for architectures with more pooling levels)."""
    if size < 1:
        raise ValueError(f"size must be at least 1 pixel, got {size}")
    x, labels = load_digits_tensors(scale=True)
    x = x.reshape(-1, 1, 8, 8)  # [N, 1, 8, 8]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)  # [N, 1, S, S]
    return x.contiguous(), labels


def load_photograph(name: str, scale: float = 0.5) -> np.ndarray:
    """A bundled scikit-image photograph as grayscale ``[H, W]`` float32 in [0, 1], rescaled by
    ``scale`` (0.5 puts more structure into each small patch)."""
    if name not in BUNDLED_PHOTOGRAPHS:
        raise ValueError(f"unknown photograph {name!r}; bundled: {', '.join(BUNDLED_PHOTOGRAPHS)}")
    if not 0 < scale < float("inf"):  # 0 and below gave a 1x1 image, NaN a ValueError from deep in skimage
        raise ValueError(f"scale must be a positive number, got {scale}")
    from skimage import color, data, transform

    img = np.asarray(getattr(data, name)())
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])  # float in [0, 1]
    else:
        img = img.astype(np.float64) / 255.0
    if scale != 1.0:
        img = transform.rescale(img, scale, anti_aliasing=True)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def random_patches(img: np.ndarray, size: int, count: int, generator: torch.Generator,
                   name: str = "image") -> torch.Tensor:
    """``count`` patches ``[count, 1, size, size]`` at random positions of ``img [H, W]``
    (``name`` says which image in messages)."""
    h, w = img.shape
    if h < size or w < size:
        raise ValueError(f"{name} {img.shape} is smaller than the patch size {size}")
    rows = torch.randint(0, h - size + 1, (count,), generator=generator).tolist()
    cols = torch.randint(0, w - size + 1, (count,), generator=generator).tolist()
    t = torch.from_numpy(img)
    return torch.stack([t[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)])[:, None]


def photograph_patches(names: tuple[str, ...] | str = TRAIN_PHOTOGRAPHS, size: int = 16, per_image: int = 500,
                       scale: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Random patches ``[len(names) * per_image, 1, size, size]`` of the named photographs (one
    name alone: of that photograph)."""
    if isinstance(names, str):  # "coins" was read as the names 'c', 'o', ...: "unknown photograph 'c'"
        names = (names,)
    if not names or per_image < 1:  # not torch's "stack expects a non-empty TensorList"
        raise ValueError(f"photograph_patches needs at least one photograph and per_image >= 1, got "
                         f"{len(names)} photograph(s) and per_image={per_image}")
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([random_patches(load_photograph(n, scale), size, per_image, gen, f"photograph {n!r} at scale {scale:g}")
                      for n in names])


def _grid(length: int, size: int, stride: int) -> int:
    """Padded length so that patches of ``size`` at ``stride`` cover ``length`` exactly."""
    n = max(1, -(-(length - size) // stride) + 1)
    return (n - 1) * stride + size


def image_to_patches(img: torch.Tensor, size: int, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``img [H, W]`` -> ``(patches [P, 1, size, size], padded (H', W'))``; pads the
    bottom and right edges (edge values repeated) so the grid covers the whole image."""
    h, w = img.shape
    hp, wp = _grid(h, size, stride), _grid(w, size, stride)
    x = F.pad(img[None, None], (0, wp - w, 0, hp - h), mode="replicate")  # [1, 1, H', W']
    cols = F.unfold(x, size, stride=stride)  # [1, size*size, P]
    return cols[0].T.reshape(-1, 1, size, size), (hp, wp)


def patches_to_image(patches: torch.Tensor, padded: tuple[int, int], shape: tuple[int, int], stride: int) -> torch.Tensor:
    """Inverse of :func:`image_to_patches`: overlapping ``patches [P, 1, s, s]`` averaged back into
    ``[H, W]`` (cropped to ``shape``)."""
    size = patches.shape[-1]
    cols = patches.reshape(patches.shape[0], -1).T[None]  # [1, s*s, P]
    total = F.fold(cols, padded, size, stride=stride)  # [1, 1, H', W']
    count = F.fold(torch.ones_like(cols), padded, size, stride=stride)  # [1, 1, H', W']
    return (total / count)[0, 0, : shape[0], : shape[1]]
