"""Sparsity penalties on the code ``h`` and the structural top-k constraint."""

from __future__ import annotations

import torch

PENALTIES = ("none", "l1", "l2", "kl", "topk")


def sparsity_penalty(h: torch.Tensor, kind: str, target: float = 0.05) -> torch.Tensor:
    """Penalty on a code ``h [B, K, ...]`` (unit axis 1), averaged over everything else.

    - ``l1``: mean |h| -- pulls every unit towards zero by the same amount, whatever its size;
    - ``l2``: mean h^2 -- pulls each unit in proportion to its size: shrinks them all, concentrates
      none (the course's contrast to L1);
    - ``kl``: KL(target || mean activation per unit), for codes in (0, 1) (sigmoid activation);
    - ``topk`` and ``none``: no penalty (top-k is enforced structurally by :func:`keep_topk`).

    Neither L1 nor L2 makes a unit *exactly* zero by itself: the zeros come from the code
    activation. Under a ReLU code, L1 leaves each input a few active units (the image report's
    digits: 18 of 128 at weight 0.3) where L2 leaves many (59 at 2); on a linear code
    (``code_activation="none"``, the image family's default) L1 only shrinks the code and no entry
    is exactly zero (an image model warns of that combination when it is trained).
    """
    if kind in ("none", "topk"):
        return h.new_zeros(())
    if kind == "l1":
        return h.abs().mean()
    if kind == "l2":
        return h.pow(2).mean()
    if kind == "kl":
        dims = [d for d in range(h.dim()) if d != 1]
        rho_hat = h.mean(dim=dims).clamp(1e-6, 1 - 1e-6)  # [K]
        rho = torch.full_like(rho_hat, target)
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return kl.sum()
    raise ValueError(f"unknown sparsity {kind!r}; choose one of {', '.join(PENALTIES)}")


def check_topk(sparsity: str, topk: int, code_dim: int) -> None:
    """Refuse a top-k code that keeps more units than the code has: :func:`keep_topk` then keeps
    them all, and the model trains with no sparsity at all, silently."""
    if sparsity == "topk" and topk > code_dim:
        raise ValueError(f"topk ({topk}) is above code_dim ({code_dim}): every unit would be kept, so the code "
                         f"would not be sparse; choose topk within 1..{code_dim}")


def keep_topk(h: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the ``k`` largest units of ``h [B, K, ...]`` at every other position."""
    if k <= 0 or k >= h.shape[1]:
        return h
    kth = h.topk(k, dim=1).values[:, -1:]  # [B, 1, ...]
    return h * (h >= kth).to(h.dtype)


def fraction_near_zero(h: torch.Tensor, threshold: float = 1e-3) -> float:
    """Share of code entries whose magnitude is below ``threshold`` times the largest one."""
    scale = h.abs().max().clamp_min(1e-12)
    return float((h.abs() < threshold * scale).float().mean())


def hoyer_sparsity(h: torch.Tensor) -> float:
    """Hoyer's measure in [0, 1] per code vector (1 = one active unit), averaged over the code
    vectors that have any activity (an all-zero vector has no defined sparsity)."""
    x = h.transpose(0, 1).reshape(h.shape[1], -1).abs()  # [K, M]
    n = x.shape[0]
    l1 = x.sum(0)
    l2 = x.pow(2).sum(0).sqrt()
    active = l2 > 1e-12
    if not active.any():
        return 1.0
    s = (n**0.5 - l1[active] / l2[active]) / (n**0.5 - 1)
    return float(s.mean())
