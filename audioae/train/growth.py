"""Trained weights grown into a larger model (:func:`grow_into`: function-preserving, zeros on every
new input and output), and ``train.init_from``, which starts a new run from another checkpoint's
weights grown so.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..checkpoint import load_checkpoint
from ..config import differences
from ..models import Autoencoder, SpectralAutoencoder
from .config import RunConfig

log = logging.getLogger(__package__)  # audioae.train, whichever module logs


def grow_into(model: torch.nn.Module, old: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``old`` weights into ``model`` where tensors grew; returns the grown names.

    Function-preserving (Net2Net-style): every added input column is zero, so nothing that
    existed hears a new feature or a new unit, and added output rows are zero (``tanh(0) = 0``
    taps), so they add nothing. Models may declare a block layout (``growth_blocks``): a GRU's
    weights stack 3 gates (an LSTM's 4) of ``hidden`` rows, so each gate grows on its own, and
    the rows of new *hidden units* keep the model's fresh random init: their outgoing weights
    start at zero, but a unit whose incoming weights were zero too would never get a gradient.
    """
    new = model.state_dict()
    missing = sorted(set(new) ^ set(old))
    if missing:
        raise ValueError(f"cannot grow: parameter names differ ({', '.join(missing[:5])})")
    layout = model.growth_blocks() if hasattr(model, "growth_blocks") else {}
    buffers = {name for name, _ in model.named_buffers()}
    grown = []
    for name, target in new.items():
        src = old[name]
        if src.shape == target.shape:
            target.copy_(src)
            continue
        if name in buffers:  # not a weight: an STFT window "grown" with zeros was another transform
            raise ValueError(f"cannot grow {name}: {tuple(src.shape)} -> {tuple(target.shape)} is a fixed buffer "
                             f"of another shape (another n_fft), not a weight")
        if src.dim() != target.dim() or any(a > b for a, b in zip(src.shape, target.shape, strict=True)):
            raise ValueError(f"cannot grow {name}: {tuple(src.shape)} does not fit in {tuple(target.shape)}")
        if src.dim() <= 2:
            _grow_blocks(name, target, src, *layout.get(name, (1, 1, False)))
        else:  # conv kernels: the leading slice, zeros elsewhere
            target.zero_()
            target[tuple(slice(0, n) for n in src.shape)].copy_(src)
        grown.append(name)
    return grown


def grown_like(model: Autoencoder, base: Autoencoder) -> Autoencoder:
    """A new model of ``model``'s architecture holding ``base``'s weights grown into it
    (:func:`grow_into`): the start of a fine-tuning that grew the model, to interpolate towards."""
    out = type(model)(model.config)
    grow_into(out, base.state_dict())
    return out.train(model.training)


def _grow_blocks(name: str, target: torch.Tensor, src: torch.Tensor, row_blocks: int, col_blocks: int,
                 fresh_rows: bool) -> None:
    """Copy ``src`` into ``target`` block by block (``row_blocks`` gates of rows, ``col_blocks``
    directions of columns); new columns of old rows are zero; new rows keep ``target``'s values
    when ``fresh_rows`` (new hidden units), else are zero (new outputs)."""
    if src.shape[0] % row_blocks or target.shape[0] % row_blocks:
        raise ValueError(f"cannot grow {name}: {src.shape[0]} rows are not {row_blocks} equal blocks")
    if not fresh_rows:
        target.zero_()
    ro, rn = src.shape[0] // row_blocks, target.shape[0] // row_blocks
    for g in range(row_blocks):
        rows_new, rows_old = slice(g * rn, g * rn + ro), slice(g * ro, (g + 1) * ro)
        if src.dim() == 1:
            target[rows_new] = src[rows_old]
            continue
        if src.shape[1] % col_blocks or target.shape[1] % col_blocks:
            raise ValueError(f"cannot grow {name}: {src.shape[1]} columns are not {col_blocks} equal blocks")
        co, cn = src.shape[1] // col_blocks, target.shape[1] // col_blocks
        for b in range(col_blocks):
            target[rows_new, b * cn : b * cn + co] = src[rows_old, b * co : (b + 1) * co]
            target[rows_new, b * cn + co : (b + 1) * cn] = 0  # old units never hear new ones


# Model settings that define the signal the weights were trained on: a run grown from other
# weights (train.init_from) keeps them, and a resumed run keeps its input and output too (RESUME_FIXED).
SIGNAL_FIXED = ("sample_rate", "n_fft", "hop_length", "compression", "compression_power")


def _init_from(run: RunConfig, model: SpectralAutoencoder) -> None:
    """Grow ``train.init_from``'s weights (a shipped name, as --model takes, or a path) into a new
    run's ``model``: the same family at the same signal settings."""
    from ..pretrained import resolve

    tc = run.train
    source = load_checkpoint(resolve(tc.init_from))
    if source.registry_name != run.model:  # grow_into would only say that parameter names differ
        raise ValueError(f"train.init_from={tc.init_from!r} is a {source.registry_name} model and this run "
                         f"trains a {run.model} one: init_from grows a model of the same family")
    # Same shapes at another rate or compression, or bins of another FFT size grown with zeros
    # (and the STFT window with them): the weights would hear another signal.
    moved = differences(dataclasses.asdict(source.config), dataclasses.asdict(model.config), SIGNAL_FIXED)
    if moved:
        raise ValueError(f"train.init_from={tc.init_from!r} was trained on another signal ({', '.join(moved)}): "
                         f"init_from grows a model at the same signal settings")
    grown = grow_into(model, source.state_dict())
    log.info("initialised from %s (grown: %s)", tc.init_from, ", ".join(grown) or "none")
