"""Where and how the loop computes: the device, torchrun's process group (DDP), AMP's dtype,
``train.deterministic``'s switches (:func:`_reproducible`), and what the ranks share (the clock of
the time budget, the check that their weights agree).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import torch
import torch.distributed as dist

from ..device import pick_device
from .config import TrainConfig

log = logging.getLogger(__package__)  # audioae.train, whichever module logs


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return True
    return False


# cuBLAS's deterministic workspace settings (torch's "Reproducibility" notes): without one of them a
# CUDA matmul under torch.use_deterministic_algorithms raises.
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


# torch's float32 precision switches that deterministic mode sets, in the fp32_precision API (the
# legacy allow_tf32 flags, mixed with it, make torch.get_float32_matmul_precision() raise): parents
# before children, the order they are restored in (setting cudnn's sets conv's and rnn's).
FP32_PRECISION = (("cuda.matmul", "ieee"), ("mkldnn.matmul", "ieee"), ("cudnn", "ieee"), ("cudnn.conv", "ieee"),
                  ("cudnn.rnn", "ieee"))


def _fp32_backend(name: str):
    backend = torch.backends
    for part in name.split("."):
        backend = getattr(backend, part)
    return backend


@contextlib.contextmanager
def _reproducible(tc: TrainConfig):
    """With ``train.deterministic``: torch's deterministic settings for the run, and the caller's
    settings back afterwards, also when the run fails (a library call leaves no global switch
    behind: a later training or inference in the same process runs as it would have). No seed
    here: the run seeds torch at its start and draws batches and corruptions from generators of
    its own (StepMixer, step_seed), so Python's and numpy's global generators are left alone."""
    if not tc.deterministic:
        yield
        return
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if cublas not in (None, *CUBLAS_DETERMINISTIC) and tc.device != "cpu" and torch.cuda.is_available():
        raise ValueError(f"train.deterministic needs CUBLAS_WORKSPACE_CONFIG={' or '.join(CUBLAS_DETERMINISTIC)} "
                         f"for cuBLAS, and it is {cublas!r}; unset it or set one of those")
    cudnn = torch.backends.cudnn
    before = {"algorithms": (torch.are_deterministic_algorithms_enabled(),
                             torch.is_deterministic_algorithms_warn_only_enabled()),
              "cudnn": (cudnn.benchmark, cudnn.deterministic), "matmul": torch.get_float32_matmul_precision(),
              "fp32": [(name, _fp32_backend(name).fp32_precision) for name, _ in FP32_PRECISION]}
    try:  # before the first change: whatever raises below, the finally puts back what was changed
        if cublas is None:
            if torch.cuda.is_initialized():  # cuBLAS may have read its workspace setting already
                log.warning("train.deterministic: CUDA started in this process before CUBLAS_WORKSPACE_CONFIG was "
                            "set; set CUBLAS_WORKSPACE_CONFIG=%s in the environment to be sure of deterministic "
                            "matmuls", CUBLAS_DETERMINISTIC[0])
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
        torch.use_deterministic_algorithms(True)
        cudnn.benchmark, cudnn.deterministic = False, True
        torch.set_float32_matmul_precision("highest")
        for name, value in FP32_PRECISION:
            _fp32_backend(name).fp32_precision = value
        yield
    finally:
        torch.use_deterministic_algorithms(before["algorithms"][0], warn_only=before["algorithms"][1])
        cudnn.benchmark, cudnn.deterministic = before["cudnn"]
        # The matmul precision first: it sets cuda.matmul's (and mkldnn's), which the saved ones then overwrite.
        torch.set_float32_matmul_precision(before["matmul"])
        for name, value in before["fp32"]:
            _fp32_backend(name).fp32_precision = value
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _setup_device(tc: TrainConfig) -> tuple[torch.device, bool, int, int]:
    """The device this process trains on, and torch's threads: ``(device, whether this call
    started the process group, rank, world size)``."""
    device = pick_device(tc.device)
    started_dist = _maybe_init_distributed(device)
    rank, world = _dist_info()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    elif device.type == "cuda" and device.index is not None:
        # one process on cuda:N: the current device too, or cuDNN handles, AMP's scaler and any
        # bare "cuda" tensor (torch.cuda.* calls without a device) land on cuda:0
        torch.cuda.set_device(device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    return device, started_dist, rank, world


def _amp_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)  # one of AMP_DTYPES: TrainConfig checked it


def _time_used(t0: float, deadline: float, world: int, device: torch.device) -> float:
    """The share of the wall-time budget spent (0 without one); under DDP every rank follows
    rank 0's clock, so all stop on the same step and use the same rate (the tensor lives on the
    training device: NCCL broadcasts only CUDA tensors)."""
    if not math.isfinite(deadline):
        return 0.0
    used = (time.monotonic() - t0) / max(deadline - t0, 1e-9)
    if world == 1:
        return used
    shared = torch.tensor([used], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared.item())


def replica_divergence(model: torch.nn.Module) -> float:
    """Largest absolute difference between any rank's weights and rank 0's (0.0 when DDP kept the
    replicas in sync, as it must)."""
    # on the training device: NCCL only carries CUDA tensors
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])  # [P]
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)
