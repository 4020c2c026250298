"""One linear encoder layer and one linear decoder layer: the course's "a one-layer autoencoder
does what PCA does". With squared error and no activation it learns the span of the top principal
components (not the components themselves: any invertible mix of them is as good).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import SpectralAutoencoder, SpectralConfig


@dataclass(frozen=True)
class LinearConfig(SpectralConfig):
    input: str = "spectrogram"  # spectrogram (per frame) | vector (e.g. 64-pixel digits)
    input_dim: int = 0  # 0: the number of STFT bins; required for vector inputs
    code_activation: str = "none"
    output: str = "magnitude"

    def __post_init__(self):
        super().__post_init__()
        if self.input not in ("spectrogram", "vector"):
            raise ValueError(f"linear input must be spectrogram or vector, got {self.input!r}")
        if self.input_dim < 0:
            raise ValueError(f"input_dim cannot be negative, got {self.input_dim}")
        if self.input == "vector" and self.input_dim <= 0:
            raise ValueError("a vector linear autoencoder needs input_dim")


class LinearAutoencoder(SpectralAutoencoder):
    registry_name = "linear"
    config: LinearConfig
    causal = True  # frame by frame: no memory at all

    def __init__(self, config: LinearConfig):
        super().__init__(config)
        d = config.input_dim or config.n_bins
        self.encoder = nn.Linear(d, config.code_dim)
        self.decoder = nn.Linear(config.code_dim, d)

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        if self.config.input == "vector":
            return torch.rand(batch, self.config.input_dim, generator=torch.Generator().manual_seed(seed))
        return super().example_input(batch, seed)

    @property
    def latency_seconds(self) -> float | None:
        """None for vectors: no audio frames, so no algorithmic latency to report."""
        return None if self.config.input == "vector" else super().latency_seconds

    def describe(self) -> dict:
        d = super().describe()
        if self.config.input == "vector":
            d["sample_rate"] = None  # the config's audio default means nothing for pixels
        return d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, D]`` or ``[B, D, N]`` -> ``h [B, K]`` or ``[B, K, N]``."""
        return self.finish_code(self.encoder(x.movedim(1, -1)).movedim(-1, 1))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        y = self.decoder(h.movedim(1, -1)).movedim(-1, 1)  # [B, D(, N)]
        return y if self.config.input == "vector" else self.head(y)

    def stream_step(self, feats: torch.Tensor, state, final: bool = False):
        return self(feats)[0], state
