"""audioae.enhance: the windowed path that non-causal models take on long inputs."""

import numpy as np
import torch

from audioae.enhance import _denoise_offline, denoise
from audioae.models import build_model


def _bidirectional():
    torch.manual_seed(0)
    return build_model("recurrent", {"sample_rate": 8000, "n_fft": 128, "hop_length": 32, "hidden": 16,
                                     "code_dim": 8, "bidirectional": True}).eval()


def test_long_input_of_a_non_causal_model_goes_through_crossfaded_windows():
    model, sr = _bidirectional(), 8000
    x = np.random.default_rng(0).standard_normal((2, 3 * sr + 123)).astype(np.float32) * 0.1  # [C, T]
    win = sr  # max_offline_seconds=1: windows of 1 s, 1/8 overlap
    overlap, hop = win // 8, win - win // 8
    y = denoise(model, x, sr, max_offline_seconds=1.0)
    assert y.shape == x.shape
    # Before the first overlap only the first window counts: its own offline output.
    first = _denoise_offline(model, torch.from_numpy(x[:, :win]), sr, 1.0).numpy()
    np.testing.assert_allclose(y[:, :hop], first[:, :hop], atol=1e-6)
    # In the overlap the two windows' outputs are cross-faded with weights that sum to one.
    second = _denoise_offline(model, torch.from_numpy(x[:, hop : hop + win]), sr, 1.0).numpy()
    ramp = np.linspace(0, 1, overlap + 2)[1:-1]
    mixed = first[:, hop:win] * ramp[::-1] + second[:, :overlap] * ramp
    np.testing.assert_allclose(y[:, hop:win], mixed, atol=1e-5)
    # Strength 0 gives the input back exactly where windows overlap too.
    np.testing.assert_allclose(denoise(model, x, sr, strength=0.0, max_offline_seconds=1.0), x, atol=1e-6)
