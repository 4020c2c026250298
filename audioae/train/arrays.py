"""In-memory arrays, vectors and images: :func:`fit_arrays` fits any model to one tensor held in
memory (MSE plus its sparsity penalty, Adam, nothing saved).
"""

from __future__ import annotations

import torch

from ..models import Autoencoder


class NonFiniteLoss(ValueError):
    """:func:`fit_arrays` stopped at a non-finite loss; ``losses``: the finite ones before it."""

    def __init__(self, message: str, losses: list[float]):
        super().__init__(message)
        self.losses = losses


def fit_arrays(model: Autoencoder, x: torch.Tensor, *, steps: int = 1000, batch_size: int = 64, lr: float = 1e-3,
               corrupt=None, seed: int = 0, weight_decay: float = 0.0, forward=None) -> list[float]:
    """Train ``model`` to reconstruct ``x [N, ...]`` with MSE plus its sparsity penalty.

    ``corrupt(batch, generator) -> batch`` makes it a denoising autoencoder: the model sees the
    corrupted batch and is scored against the clean one. Returns the loss every step. A
    non-finite loss stops it with :class:`NonFiniteLoss` (a ValueError) before that step is taken
    (the weights are those of the step before).
    """
    # Each of these trained on in silence: an empty set or batch gave a NaN loss every step and
    # left the weights as they were; NaN in x made every weight NaN.
    if steps < 0 or batch_size < 1:
        raise ValueError(f"fit_arrays needs steps >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
    if x.numel() == 0:
        raise ValueError(f"fit_arrays got no data to fit: x has shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"fit_arrays needs floating-point data, got {x.dtype}; for 8-bit images pass x / 255")
    if not torch.isfinite(x).all():
        raise ValueError(f"fit_arrays got NaN or Inf in x (in {int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum())} "
                         f"of its {x.shape[0]} examples)")
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
