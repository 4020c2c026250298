import os
import shutil
import subprocess
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


@pytest.fixture(scope="session")
def unprivileged(tmp_path_factory) -> list[str]:
    """A command prefix under which file permissions hold: nothing for a user, and for root (who
    reads and writes through any mode bits) ``setpriv`` without the capabilities that let it."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all", "--"]
    locked = tmp_path_factory.mktemp("perm") / "locked"
    locked.write_text("x")
    locked.chmod(0)
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "cat", str(locked)],
                                                         capture_output=True).returncode == 0:
        pytest.skip("cannot run a process that file permissions apply to (root without setpriv)")
    return prefix
