"""In-memory arrays, vectors and images: :func:`fit_arrays` fits any model to one tensor held in
memory (MSE plus its sparsity penalty, Adam, nothing saved).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..audio.checks import as_native_tensor
from ..models import Autoencoder
from ..models.image import check_grey_levels, corrupt_images


class NonFiniteLoss(ValueError):
    """:func:`fit_arrays` stopped at a non-finite loss; ``losses``: the finite ones before it."""

    def __init__(self, message: str, losses: list[float]):
        super().__init__(message)
        self.losses = losses


def fit_arrays(model: Autoencoder, x: torch.Tensor | np.ndarray, *, steps: int = 1000, batch_size: int = 64,
               lr: float = 1e-3, corrupt=None, seed: int = 0, weight_decay: float = 0.0, forward=None) -> list[float]:
    """Train ``model`` to reconstruct ``x [N, ...]`` (a tensor or a NumPy array, converted to the
    model's parameter dtype) with MSE plus its sparsity penalty.

    ``corrupt(batch, generator) -> batch`` makes it a denoising autoencoder: the model sees the
    corrupted batch and is scored against the clean one. Left at None, the model's own
    ``config.corruption`` is applied (:func:`configured_corruption`; none for ``"none"``). Returns
    the loss every step. A non-finite loss stops it with :class:`NonFiniteLoss` (a ValueError)
    before that step is taken (the weights are those of the step before).
    """
    # Each of these trained on in silence: an empty set or batch gave a NaN loss every step and
    # left the weights as they were; NaN in x made every weight NaN.
    if steps < 0 or batch_size < 1:
        raise ValueError(f"fit_arrays needs steps >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
    x = _as_tensor(x)
    if x.numel() == 0:
        raise ValueError(f"fit_arrays got no data to fit: x has shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"fit_arrays needs floating-point data, got {x.dtype}; for 8-bit images pass x / 255")
    param = next(model.parameters(), None)
    if param is not None and x.dtype != param.dtype:  # float64 data met float32 weights: torch's dtype error
        x = x.to(param.dtype)  # before the check: 1e300 in float64 is Inf in float32
    if not torch.isfinite(x).all():
        raise ValueError(f"fit_arrays got NaN or Inf in x (in {int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum())} "
                         f"of its {x.shape[0]} examples)")
    _check_layout(model, x)
    if model.config.input == "image":  # 0..255 levels trained silently to a huge loss
        check_grey_levels(x, what="x", fix="pass x / 255", noise_std=model.config.noise_std)
    if corrupt is None:  # a denoising config trained as a plain autoencoder while its checkpoint said otherwise
        corrupt = configured_corruption(model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    forward = forward or model
    history = []
    model.train()
    for _ in range(steps):
        if batch_size >= x.shape[0]:
            target = x  # full-batch gradient descent: what converges tightly on small sets
        else:
            target = x[torch.randint(0, x.shape[0], (batch_size,), generator=gen)]
        inp = corrupt(target, gen) if corrupt is not None else target
        out, h = forward(inp)
        loss = torch.nn.functional.mse_loss(out, target) + model.sparsity_loss(h)
        if not torch.isfinite(loss):
            model.eval()
            raise NonFiniteLoss(f"fit_arrays: the loss is {float(loss.detach())} at step {len(history) + 1} of {steps} "
                                f"(the last finite one: {history[-1] if history else None}); a lower lr (now {lr:g}) "
                                f"may train", history)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


def configured_corruption(model: Autoencoder) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """``corrupt(batch, generator)`` applying ``model.config.corruption`` to what :func:`fit_arrays`
    trains on, or None for ``"none"``: image models take each of theirs (:func:`corrupt_images`),
    vector models ``gaussian``. A corruption that cannot apply to the model's input (the audio
    models' corruptions act on waveforms and STFTs before the features fit_arrays is given) is
    refused: training without it would make a plain autoencoder under a denoising config."""
    config = model.config
    kind = config.corruption
    if kind == "none":
        return None
    given = config.input
    if given == "image" or (given == "vector" and kind == "gaussian"):
        return lambda batch, generator: corrupt_images(batch, config, generator)
    where = {"vector": "a vector has no rows and columns to darken; gaussian applies to vectors"}.get(
        given, "audioae train applies it to the waveform or the STFT, and fit_arrays is given the features")
    raise ValueError(f"fit_arrays cannot apply this {model.registry_name} model's corruption {kind!r} to its "
                     f"{given} input ({where}): pass corrupt=, or build the model with corruption='none'")


def _as_tensor(x) -> torch.Tensor:
    """``x`` as a tensor: NumPy arrays (copied where torch would not take them as they are) and nested lists taken."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return as_native_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"fit_arrays needs x as a tensor or a NumPy array [N, ...], got {type(x).__name__} "
                         f"({exc})") from None


def _check_layout(model: Autoencoder, x: torch.Tensor) -> None:
    """Refuse ``x`` unless each example has the model's input shape (vector and image models):
    a vector model given [N, 1, 8, 8] digits failed inside torch ("mat1 and mat2 shapes cannot
    be multiplied")."""
    given = model.config.input
    if given not in ("vector", "image"):
        return
    want = tuple(model.example_input(1).shape[1:])  # [D] or [C, H, W]
    fix = "flatten with x.flatten(1)" if given == "vector" else f"reshape with x.reshape(-1, {', '.join(map(str, want))})"
    if tuple(x.shape[1:]) != want:
        fits = x.dim() >= 2 and math.prod(x.shape[1:]) == math.prod(want)
        raise ValueError(f"this {model.registry_name} model takes x [N, {', '.join(map(str, want))}], got shape "
                         f"{list(x.shape)}" + (f": {fix}" if fits else ""))
