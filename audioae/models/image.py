"""2D convolutional autoencoder for small grayscale images and photograph patches (the course's
first autoencoders). The encoder is a stack of ``conv -> ReLU -> 2x2 max-pool`` levels and one
dense layer to a code vector ``h [B, K]``; the decoder mirrors it and unpools by one of three
methods chosen in the config:

- ``nearest``: copy each value into its 2x2 block (no parameters);
- ``maxunpool``: put each value back where the encoder's max-pool found it, zeros elsewhere. The
  pooling indices travel from the encoder to the decoder, so they are information *beside* the
  code: reconstruction error is then not a function of ``code_dim`` alone, and a bare code
  cannot be decoded (``decode(h)`` without indices raises);
- ``transposed``: a learnable transposed convolution, kernel 3, stride 2.

Sparse (``sparsity``) and denoising (``corruption``: ``gaussian`` noise of ``noise_std`` or
darkened ``patches``) variants come from the shared config fields, as for the audio models.

With ``channels=()`` there are no conv levels: one dense layer from the pixels to the code and
one back, the one-layer sparse autoencoder of the course. Two options then give it the usual
sparse-coding form, ``h = act(W_e (x - b_d) + b_e)``, ``x̂ = W_d h + b_d`` with unit-norm columns
(atoms) of ``W_d``:

- ``unit_norm_atoms``: each column of ``W_d`` is divided by its norm in every forward pass.
  Without it a penalty on ``h`` is dodged for free: ``h / c`` with ``c W_d`` decodes the same and
  costs ``c`` (L1) or ``c**2`` (L2) times less, so L1 mostly shrinks the code and kills units
  instead of sparsifying it. (After conv levels the scale could still move into the later
  layers, ReLU and convolutions being positively homogeneous, so the option needs
  ``channels=()``.) The model starts with the encoder tied to the atoms (``W_e = W_d^T``) and
  ``b_e = 0``: each unit starts as a matched filter for its atom.
- ``subtract_decoder_bias``: the encoder sees ``x - b_d``. Set ``b_d`` to the mean training input
  and every unit works on a centred input, active for some inputs and silent for others, and
  stays so while ``b_d`` learns. On raw non-negative pixels a unit's sign is mostly its filter
  against the mean image: in our trials on the digits (128 units, L1 0.3, 3,000 steps), 21 units
  died for every digit from the tied start and 60 from PyTorch's default one; centred, none.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..spectral import building_on_meta
from .base import Autoencoder, AutoencoderConfig
from .conv1d import UNPOOLING  # the same three choices as the 1D model
from .corruption import add_gaussian_std, darken_patches

IMAGE_CORRUPTIONS = ("none", "gaussian", "patches")
# Small images and patches. The weights do not bound it (conv levels shrink the image before the
# dense layer), and the server's warm-up allocates it: 32768 x 32768 would be 4 GB per channel.
MAX_IMAGE_SIDE = 1024

# Pixels are grey levels in [0, 1]. Noise pushes them out, so the band on the 1st and 99th
# percentiles is wide and grows with the model's own noise_std s (above 1): -4s..1+4s. At s = 1 a
# single 8x8 digit under its training noise stays inside -4..5 (the old -3..4 refused a few in a
# thousand); 8-bit levels held as floats stay outside unless the image is almost black
# (the smallest 99th percentile of the 8x8 digits at 0..255 is 213).
LEVEL_SPREAD = (-4.0, 5.0)  # of the 1st and 99th percentiles, at noise std up to 1
LEVEL_LIMIT = 64.0  # on every level, at noise std up to 1


def grey_level_band(noise_std: float = 1.0) -> tuple[float, float, float]:
    """``(low, high, limit)``: the 1st and 99th percentiles of [0, 1] grey levels under Gaussian
    noise of ``noise_std`` lie within ``low..high`` and every level within ``+-limit``."""
    s = max(1.0, float(noise_std))
    return LEVEL_SPREAD[0] * s, 1 + (LEVEL_SPREAD[1] - 1) * s, LEVEL_LIMIT * s


def check_grey_levels(img: torch.Tensor, what: str = "the image", fix: str = "pass img / 255",
                      noise_std: float = 1.0) -> None:
    """Refuse ``img`` unless it holds [0, 1] grey levels, with or without noise on them (Gaussian
    noise of std up to ``noise_std``, the model's: pass ``model.config.noise_std``). Noise pushes
    the extremes past [0, 1], so the check is on percentiles, with a far limit for the extremes: a
    noisy image passes, an image of 0..255 levels does not (a model trained on [0, 1] gives codes of
    nonsense for them, silently). ``what`` names the input in the message and ``fix`` says how to
    scale 0..255 levels."""
    lo, hi, limit = grey_level_band(noise_std)
    flat = img.detach().flatten().double().cpu().numpy()
    low, high = np.quantile(flat, [0.01, 0.99])
    least, most = float(flat.min()), float(flat.max())
    if low < lo or high > hi or least < -limit or most > limit:
        raise ValueError(f"grey levels in [0, 1] expected (noise may spread them), but 98% of {what} spans "
                         f"{low:.4g}..{high:.4g} and all of it {least:g}..{most:g}; accepted: 98% within "
                         f"{lo:g}..{hi:g} and all within +-{limit:g}"
                         + (f"; for 0..255 levels {fix}" if high > hi or most > limit else ""))


@dataclass(frozen=True)
class ImageConfig(AutoencoderConfig):
    input: str = "image"
    in_channels: int = 1
    image_size: tuple[int, int] = (16, 16)  # (H, W); each must divide by 2**levels
    channels: tuple[int, ...] = (16, 32)  # one entry per level; each level halves H and W
    kernel_size: int = 3
    unpool: str = "nearest"  # nearest | maxunpool | transposed
    code_dim: int = 32
    # A linear code, like PCA's. Use relu for sparse codes: the exact zeros come from the ReLU, and an
    # l1 penalty on a linear code only shrinks it (docs/images.md: 128 units on the digits, l1 0.1, no
    # entry zero), so training that combination warns (not a refusal: L1 without ReLU is a fair
    # contrast; ImageAutoencoder.train).
    code_activation: str = "none"
    output_activation: str = "sigmoid"  # sigmoid (pixels in [0, 1]) | none
    patch_size: tuple[int, int] = (4, 4)  # darkened (rows, cols) for corruption='patches'
    # Sparse-coding form of a dense model (channels=()); see the module docstring.
    unit_norm_atoms: bool = False  # decoder columns scaled to unit norm: a code penalty cannot be dodged
    subtract_decoder_bias: bool = False  # encode x - b_d (b_d: the decoder's output bias, in pixels)

    def __post_init__(self):
        super().__post_init__()  # (negative settings and a topk above code_dim, named there)
        if self.input != "image":
            raise ValueError(f"image models take input='image', got {self.input!r}")
        if self.unpool not in UNPOOLING:
            raise ValueError(f"unpool must be one of {UNPOOLING}, got {self.unpool!r}")
        if self.corruption not in IMAGE_CORRUPTIONS:
            raise ValueError(f"image corruption must be one of {IMAGE_CORRUPTIONS}, got {self.corruption!r}")
        if self.output_activation not in ("sigmoid", "none"):
            raise ValueError(f"output_activation must be sigmoid or none, got {self.output_activation!r}")
        self.require_positive("channels", "in_channels", "kernel_size")
        if self.unit_norm_atoms and self.channels:
            raise ValueError("unit_norm_atoms needs channels=() (a dense decoder): after conv levels the code's "
                             "scale can still move into the later layers")
        if self.subtract_decoder_bias and (self.channels or self.output_activation != "none"):
            raise ValueError("subtract_decoder_bias needs channels=() and output_activation='none' (the decoder's "
                             "bias must be in pixels)")
        if self.kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd (same-size convolutions)")
        if max(self.image_size) > MAX_IMAGE_SIDE:
            raise ValueError(f"image_size {self.image_size}: each side must be at most {MAX_IMAGE_SIDE}")
        block = 2 ** len(self.channels)
        if any(s <= 0 or s % block for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be positive multiples of 2**levels = {block}")

    @property
    def bottleneck_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the last feature map, before the dense layer to the code (the image
        itself when there are no conv levels)."""
        if not self.channels:
            return self.in_channels, self.image_size[0], self.image_size[1]
        block = 2 ** len(self.channels)
        return self.channels[-1], self.image_size[0] // block, self.image_size[1] // block


class _Unpool(nn.Module):
    """Doubles H and W of ``[B, C, h, w]`` by the configured method."""

    def __init__(self, method: str, channels: int):
        super().__init__()
        self.method = method
        if method == "transposed":
            # Kernel 3, stride 2, padding 1, output_padding 1: exactly [h, w] -> [2h, 2w].
            self.up = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.method == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")  # [B, C, 2h, 2w]
        if self.method == "maxunpool":
            if indices is None:
                raise ValueError("max-unpooling needs the encoder's pooling indices: a bare code cannot be "
                                 "decoded (use forward/encode_with_indices, or a nearest/transposed model)")
            return F.max_unpool2d(x, indices, kernel_size=2, output_size=(2 * h, 2 * w))  # [B, C, 2h, 2w]
        return self.up(x)  # [B, C, 2h, 2w]


class ImageAutoencoder(Autoencoder):
    """``encode(x [B, C, H, W]) -> h [B, K]``, ``decode(h) -> x̂ [B, C, H, W]``."""

    registry_name = "image"
    config: ImageConfig

    def __init__(self, config: ImageConfig):
        super().__init__()
        self.config = c = config
        widths = [c.in_channels, *c.channels]
        pad = c.kernel_size // 2
        self.enc = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], c.kernel_size, padding=pad) for i in range(len(c.channels))
        )
        flat = c.bottleneck_shape[0] * c.bottleneck_shape[1] * c.bottleneck_shape[2]
        self.to_code = nn.Linear(flat, c.code_dim)
        self.from_code = nn.Linear(c.code_dim, flat)
        self.unpool = nn.ModuleList(_Unpool(c.unpool, w) for w in c.channels)
        self.dec = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], c.kernel_size, padding=pad) for i in range(len(c.channels))
        )
        if c.unit_norm_atoms and not building_on_meta():
            with torch.no_grad():  # tied start: each unit a matched filter for its own (unit-norm) atom
                self.from_code.weight.copy_(F.normalize(torch.randn_like(self.from_code.weight), dim=0))
                self.to_code.weight.copy_(self.from_code.weight.T)
                self.to_code.bias.zero_()

    def train(self, mode: bool = True) -> ImageAutoencoder:
        """``nn.Module.train``; the first switch into training of an L1 penalty on a code without a
        ReLU warns that the penalty leaves no unit exactly zero. Here, not in the config: there it
        fired on every load of such a checkpoint, pointing into the dataclass' ``__init__``."""
        c = self.config
        if mode and not getattr(self, "_warned_linear_l1", False) and c.sparsity == "l1" and c.sparsity_weight > 0 \
                and c.code_activation != "relu":
            self._warned_linear_l1 = True
            warnings.warn(f"sparsity 'l1' on a code_activation={c.code_activation!r} code shrinks it but leaves "
                          f"no unit exactly zero (the zeros of a sparse code come from a ReLU): set "
                          f"code_activation='relu' for a sparse code", UserWarning, stacklevel=2)
        return super().train(mode)

    @property
    def levels(self) -> int:
        return len(self.config.channels)

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """Uniform random pixels ``[B, C, H, W]`` in [0, 1]."""
        c = self.config
        return torch.rand(batch, c.in_channels, *c.image_size, generator=torch.Generator().manual_seed(seed))

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        want = (c.in_channels, *c.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"image model expects [B, {want[0]}, {want[1]}, {want[2]}], got {list(x.shape)}")

    def atoms(self) -> torch.Tensor:
        """The decoder's columns as used, ``[K, C_L * H_L * W_L]``: unit norm with ``unit_norm_atoms``
        (for a dense model, ``[K, C * H * W]``: one image per code unit)."""
        w = self.from_code.weight.T  # [K, flat]
        return F.normalize(w, dim=1) if self.config.unit_norm_atoms else w

    def encode_with_indices(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x [B, C, H, W]`` -> ``(h [B, K], max-pool indices per level)``."""
        self._check(x)
        if self.config.subtract_decoder_bias:
            x = x - self.from_code.bias.view(1, *self.config.bottleneck_shape)  # [B, C, H, W]
        indices = []
        for conv in self.enc:
            x = torch.relu(conv(x))  # [B, C_l, h, w]
            x, idx = F.max_pool2d(x, 2, return_indices=True)  # [B, C_l, h/2, w/2]
            indices.append(idx)
        h = self.finish_code(self.to_code(x.flatten(1)))  # [B, K]
        return h, indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_indices(x)[0]

    def decode(self, h: torch.Tensor, indices: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``h [B, K]`` -> ``x̂ [B, C, H, W]``; max-unpooling models also need the encoder's indices."""
        if h.dim() != 2 or h.shape[1] != self.config.code_dim:
            raise ValueError(f"image model decodes codes [B, {self.config.code_dim}], got {list(h.shape)}")
        y = F.linear(h, self.atoms().T, self.from_code.bias)  # [B, C_L * H/2^L * W/2^L]
        if not self.levels:  # a dense model: that was the output layer
            y = y.unflatten(1, self.config.bottleneck_shape)  # [B, C, H, W]
            return torch.sigmoid(y) if self.config.output_activation == "sigmoid" else y
        y = torch.relu(y).unflatten(1, self.config.bottleneck_shape)  # [B, C_L, H/2^L, W/2^L]
        for level in reversed(range(self.levels)):
            y = self.unpool[level](y, None if indices is None else indices[level])  # [B, C_l, 2h, 2w]
            y = self.dec[level](y)  # [B, C_{l-1}, 2h, 2w]
            if level > 0:
                y = torch.relu(y)
        return torch.sigmoid(y) if self.config.output_activation == "sigmoid" else y

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, indices = self.encode_with_indices(x)
        return self.decode(h, indices), h

    def describe(self) -> dict:
        d = super().describe()
        d.update(image_size=list(self.config.image_size), unpool=self.config.unpool)
        return d


def corrupt_images(x: torch.Tensor, config: AutoencoderConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """What a denoising image model sees: ``x [B, C, H, W]`` (or ``[B, D]`` for ``gaussian``)
    with Gaussian noise of ``config.noise_std`` or darkened ``config.patch_size`` patches covering
    about ``config.patch_fraction``; ``none`` returns ``x`` itself. Values are not clipped."""
    if config.corruption == "none":
        return x
    if config.corruption == "gaussian":
        return add_gaussian_std(x, config.noise_std, generator)
    if config.corruption == "patches":
        if x.dim() != 4:  # [B, D] has no rows and columns, and [C, H, W] would take C as the batch
            want = "C, H, W"
            if isinstance(config, ImageConfig):
                want = f"{config.in_channels}, {config.image_size[0]}, {config.image_size[1]}"
            raise ValueError(f"corruption 'patches' darkens rectangles of images [B, {want}], got shape "
                             f"{list(x.shape)}; reshape flat images first (x.view(-1, {want}))")
        return darken_patches(x, config.patch_fraction, config.patch_size, generator)
    raise ValueError(f"no image corruption {config.corruption!r}; choose one of {IMAGE_CORRUPTIONS}")
