"""scikit-learn's bundled 8x8 digits (1,797 images, no download)."""

from __future__ import annotations

import numpy as np
import torch


def load_digits_tensors(scale: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """``(X [1797, 64] float32 in [0, 1], labels [1797])``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32)
    if scale:
        x = x / 16.0
    return torch.from_numpy(x), d.target
