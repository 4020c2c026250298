"""Which torch device to run on, and what running out of its memory looks like.

Shared by the CLI, training, the batch engines and the server; nothing here is inference (that is
:mod:`audioae.enhance`, which re-exports these names).
"""

from __future__ import annotations

import re

import torch

from .config import DEVICE_NAMES


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees one, else CPU; ``cpu``, ``cuda`` or ``cuda:N``. Asking for a
    CUDA device torch does not see is an error, and so is any other name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(DEVICE_NAMES, name):  # "auto" returned above
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            # Neutral about where the name came from: --device, --set train.device or a config file.
            raise RuntimeError(f"device {name!r} was asked for, but torch sees no CUDA device")
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise RuntimeError(f"device {name!r} was asked for, but torch sees {count} CUDA device(s) "
                               f"(cuda:0..{count - 1})")
    return torch.device(name)


# What CUDA's libraries say when their own allocation fails (a workspace, a handle) on a full GPU:
# torch raises a plain RuntimeError with it, not OutOfMemoryError, e.g. "CUDA error:
# CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
LIBRARY_ALLOC_FAILURES = ("cublas_status_alloc_failed", "cudnn_status_alloc_failed", "cufft_alloc_failed",
                          "cusolver_status_alloc_failed", "cusparse_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the host or the device running out of memory (torch raises a plain
    RuntimeError for the CPU allocator, MPS and cuBLAS/cuDNN/cuFFT allocation failures,
    ``torch.cuda.OutOfMemoryError`` for its CUDA allocator)."""
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or any(name in text for name in LIBRARY_ALLOC_FAILURES))


def release_device_memory() -> None:
    """Hand the CUDA allocator's cached blocks back after running out of memory, so that the
    retries (smaller batches, one clip each) can have them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
