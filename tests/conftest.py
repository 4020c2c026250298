import numpy as np
import pytest
import torch

# Two cores in CI: one thread per test process keeps the suite predictable.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
