from pathlib import Path

import numpy as np
import pytest
import torch

from audioae.checkpoint import save_checkpoint
from audioae.models import build_model

# Two cores in CI: one thread per test process keeps the suite predictable.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def causal_ckpt(tmp_path_factory) -> Path:
    """A tiny causal recurrent denoiser (untrained): what the folder tool's tests run."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-causal.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), path)
    return path
