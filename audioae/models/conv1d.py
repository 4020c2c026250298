"""1D convolutional autoencoder over spectrogram frames: frequency bins are channels, the
convolutions run over time, the encoder max-pools time by 2 per level and the decoder unpools by
one of three methods (nearest-neighbour, max-unpooling with the pooling indices, or a learnable
transposed convolution of kernel 3, stride 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import SpectralAutoencoder, SpectralConfig

UNPOOLING = ("nearest", "maxunpool", "transposed")
# Each level halves the frame rate, and the input is padded to a multiple of 2**levels frames:
# 40 levels padded any input to 2**40 frames. 10 is 1024 frames, 8 s at a hop of 8 ms.
MAX_LEVELS = 10


@dataclass(frozen=True)
class Conv1dConfig(SpectralConfig):
    channels: tuple[int, ...] = (256, 128)  # one entry per level; each level halves the frame rate
    kernel_size: int = 3
    unpool: str = "nearest"  # nearest | maxunpool | transposed
    causal: bool = False  # causal convs: no look-ahead beyond the pooling block (2**levels - 1 frames)

    def __post_init__(self):
        super().__post_init__()
        if self.unpool not in UNPOOLING:
            raise ValueError(f"unpool must be one of {UNPOOLING}, got {self.unpool!r}")
        if not 1 <= len(self.channels) <= MAX_LEVELS:
            raise ValueError(f"channels needs 1..{MAX_LEVELS} levels, got {len(self.channels)}")
        self.require_positive("channels", "kernel_size")


class _Conv(nn.Module):
    """Conv1d that keeps the frame count: symmetric padding, or left-only when causal."""

    def __init__(self, c_in: int, c_out: int, k: int, causal: bool):
        super().__init__()
        self.pad = (k - 1, 0) if causal else ((k - 1) // 2, k // 2)
        self.conv = nn.Conv1d(c_in, c_out, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))  # [B, C_out, N]


class _Unpool(nn.Module):
    def __init__(self, method: str, channels: int, causal: bool):
        super().__init__()
        self.method, self.causal = method, causal
        if method == "transposed":
            # Kernel 3, stride 2. Causal: no padding and keep the first 2n outputs, so output 2j+1
            # depends on codes j and j-1 only; otherwise the usual padding=1, output_padding=1.
            pad = 0 if causal else 1
            self.up = nn.ConvTranspose1d(channels, channels, 3, stride=2, padding=pad, output_padding=pad)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[-1]
        if self.method == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")  # [B, C, 2n]
        if self.method == "maxunpool":
            if indices is None:
                raise ValueError("max-unpooling needs the encoder's pooling indices (use encode_with_indices)")
            return F.max_unpool1d(x, indices, kernel_size=2, output_size=(2 * n,))  # [B, C, 2n]
        return self.up(x)[..., : 2 * n]  # [B, C, 2n]


class Conv1dAutoencoder(SpectralAutoencoder):
    registry_name = "conv1d"
    config: Conv1dConfig

    def __init__(self, config: Conv1dConfig):
        super().__init__(config)
        c = config
        self.causal = c.causal
        widths = [c.n_bins, *c.channels]
        self.enc = nn.ModuleList(_Conv(widths[i], widths[i + 1], c.kernel_size, c.causal) for i in range(len(c.channels)))
        self.to_code = nn.Conv1d(c.channels[-1], c.code_dim, 1)
        self.from_code = nn.Conv1d(c.code_dim, c.channels[-1], 1)
        self.unpool = nn.ModuleList(_Unpool(c.unpool, w, c.causal) for w in c.channels)
        self.dec = nn.ModuleList(
            _Conv(widths[i + 1], widths[i], c.kernel_size, c.causal) for i in range(len(c.channels))
        )

    @property
    def levels(self) -> int:
        return len(self.config.channels)

    @property
    def stream_block(self) -> int:
        return 2**self.levels  # each level max-pools time by 2

    @property
    def code_stride(self) -> int:
        return self.stream_block

    @property
    def lookahead_frames(self) -> int:
        return self.stream_block - 1 if self.causal else 0

    @property
    def receptive_field(self) -> int:
        # Per level and side: the conv's (k-1) frames at that level's rate, plus one pooled frame
        # for the causal transposed conv; the whole doubled for encoder and decoder, plus a block.
        k = self.config.kernel_size
        per_level = sum((k - 1 + 1) * 2**i for i in range(self.levels))
        return 2 * per_level + 2 * self.stream_block

    def encode_with_indices(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """``x [B, F, N]`` -> ``(h [B, K, ceil(N / 2**L)], pooling indices, N)``."""
        n = x.shape[-1]
        pad = (-n) % self.stream_block
        x = F.pad(x, (0, pad))  # [B, F, N'] with N' a multiple of 2**L
        indices = []
        for conv in self.enc:
            x = torch.relu(conv(x))  # [B, C, n]
            x, idx = F.max_pool1d(x, 2, return_indices=True)  # [B, C, n/2]
            indices.append(idx)
        h = self.finish_code(self.to_code(x))  # [B, K, N'/2**L]
        return h, indices, n

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_indices(x)[0]

    def decode(self, h: torch.Tensor, indices: list[torch.Tensor] | None = None, length: int | None = None) -> torch.Tensor:
        """``h [B, K, M]`` -> head output ``[B, F, length or M * 2**L]``."""
        y = torch.relu(self.from_code(h))  # [B, C_L, M]
        for level in reversed(range(self.levels)):
            idx = None if indices is None else indices[level]
            y = self.unpool[level](y, idx)  # [B, C_l, 2m]
            y = self.dec[level](y)  # [B, C_{l-1}, 2m]
            if level > 0:
                y = torch.relu(y)
        y = self.head(y)
        return y if length is None else y[..., :length]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, indices, n = self.encode_with_indices(x)
        return self.decode(h, indices, n), h
