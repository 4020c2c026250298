"""Recurrent autoencoder: GRU or LSTM encoder -> one code vector per frame -> recurrent decoder.

Unidirectional models are causal (no look-ahead beyond the STFT window and ``lookahead``
samples) and stream with their hidden state carried across calls; bidirectional ones see the
whole input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import SpectralAutoencoder, SpectralConfig

# Layers per side; no recipe here uses more than 2. A checkpoint's config asking for 20,000 took
# 105 s to build, even on the meta device, before its weights could be compared with it.
MAX_LAYERS = 32


@dataclass(frozen=True)
class RecurrentConfig(SpectralConfig):
    cell: str = "gru"  # gru | lstm
    hidden: int = 256
    layers: int = 1  # per side (encoder and decoder)
    bidirectional: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be gru or lstm, got {self.cell!r}")
        self.require_positive("hidden", "layers")
        if self.layers > MAX_LAYERS:
            raise ValueError(f"layers must be at most {MAX_LAYERS}, got {self.layers}")


class RecurrentAutoencoder(SpectralAutoencoder):
    registry_name = "recurrent"
    config: RecurrentConfig
    supports_deep_filter = True
    supports_input_gate = True
    supports_lookahead = True

    def __init__(self, config: RecurrentConfig):
        super().__init__(config)
        c = config
        self.causal = not c.bidirectional
        rnn = nn.GRU if c.cell == "gru" else nn.LSTM
        dirs = 2 if c.bidirectional else 1
        self.enc_in = nn.Linear(c.n_features, c.hidden)
        self.enc_rnn = rnn(c.hidden, c.hidden, c.layers, batch_first=True, bidirectional=c.bidirectional)
        self.to_code = nn.Linear(dirs * c.hidden, c.code_dim)
        self.dec_in = nn.Linear(c.code_dim, c.hidden)
        self.dec_rnn = rnn(c.hidden, c.hidden, c.layers, batch_first=True, bidirectional=c.bidirectional)
        self.to_out = nn.Linear(dirs * c.hidden, c.n_outputs)

    def growth_blocks(self) -> dict[str, tuple[int, int, bool]]:
        """For :func:`audioae.train.grow_into`: ``name -> (row blocks, column blocks, fresh rows)``.
        RNN weights stack their gates as row blocks; inputs that come from both directions of a
        bidirectional layer are two column blocks; the rows of hidden units (RNN gates, enc_in,
        dec_in) are fresh units when ``hidden`` grows."""
        c = self.config
        gates, dirs = (3 if c.cell == "gru" else 4), (2 if c.bidirectional else 1)
        blocks = {f"{layer}.{kind}": (1, 1, True) for layer in ("enc_in", "dec_in") for kind in ("weight", "bias")}
        blocks |= {"to_code.weight": (1, dirs, False), "to_out.weight": (1, dirs, False)}
        for name, _ in self.named_parameters():
            if "_rnn." in name:
                from_both = "weight_ih_l" in name and "weight_ih_l0" not in name  # layer k > 0 reads dirs*H
                blocks[name] = (gates, dirs if from_both else 1, True)
        return blocks

    def _encode(self, x: torch.Tensor, state=None):
        z = torch.relu(self.enc_in(x.transpose(1, 2)))  # [B, N, H]
        z, state = self.enc_rnn(z, state)  # [B, N, dirs*H]
        h = self.finish_code(self.to_code(z).transpose(1, 2))  # [B, K, N]
        return h, state

    def _decode(self, h: torch.Tensor, state=None):
        z = torch.relu(self.dec_in(h.transpose(1, 2)))  # [B, N, H]
        z, state = self.dec_rnn(z, state)  # [B, N, dirs*H]
        return self.head(self.to_out(z).transpose(1, 2)), state  # [B, F', N]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, F', N]`` (:meth:`features`) -> ``h [B, K, N]``."""
        return self._encode(x)[0]

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, K, N]`` -> ``[B, F', N]`` (what :meth:`estimate_spec` applies)."""
        return self._decode(h)[0]

    def stream_init(self, batch: int):
        super().stream_init(batch)
        return (None, None)

    def stream_step(self, feats: torch.Tensor, state, final: bool = False):
        """Carry the encoder's and decoder's hidden states across calls; every frame is final."""
        if feats.shape[-1] == 0:
            return feats, state
        h, enc_state = self._encode(feats, state[0])
        out, dec_state = self._decode(h, state[1])
        return out, (enc_state, dec_state)
