"""Checkpoints are plain data: a ``.safetensors`` file of weights whose metadata holds the
registry name, the config as JSON, the format version and the library versions.

Loading is strict (every key, every shape) and never unpickles. A sha256 of the file can be
published beside it (``<file>.sha256``) and is then checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .fileio import atomic_write_bytes
from .models import Autoencoder, build_model, family

FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, tampered with or incompatible."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: Autoencoder, path: str | os.PathLike, extra: dict | None = None,
                    write_sha256: bool = True) -> str:
    """Write ``model`` atomically; returns the file's sha256 (also written to ``<path>.sha256``
    unless ``write_sha256`` is false; a stale one is removed either way)."""
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "registry_name": model.registry_name,
        "config": model.config.to_json(),
        "audioae_version": __version__,
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = st_save(state, metadata=meta)
    digest = hashlib.sha256(data).hexdigest()
    sidecar = path.with_name(path.name + ".sha256")
    # The old hash goes first: a kill (or a reader) between the two renames then finds a checkpoint
    # without a hash file, which loads, never a new checkpoint beside the old file's hash.
    sidecar.unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    if write_sha256:
        atomic_write_bytes(sidecar, f"{digest}  {path.name}\n".encode())
    return digest


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata header alone (cheap: no weights are read)."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if "registry_name" not in meta or "config" not in meta:
        raise CheckpointError(f"{path}: safetensors file without audioae metadata (registry_name, config)")
    return meta


def sidecar_sha256(path: str | os.PathLike) -> str | None:
    """The hash in ``<path>.sha256`` beside a checkpoint, or None when there is none."""
    sidecar = Path(path).with_name(Path(path).name + ".sha256")
    if not sidecar.is_file():
        return None
    words = sidecar.read_text().split()
    if not words:  # was an IndexError
        raise CheckpointError(f"{sidecar}: empty; it should hold the checkpoint's sha256 (sha256sum's output)")
    return words[0]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expected_sha256: str | None = None) -> Autoencoder:
    """Rebuild the model from its registry name and config, then load every weight strictly.

    The sha256 is checked against ``expected_sha256`` or, when present, ``<path>.sha256``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    data = path.read_bytes()
    if expected_sha256 is None:
        expected_sha256 = sidecar_sha256(path)
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():  # hex digits in either case
            raise CheckpointError(f"{path}: sha256 mismatch (expected {expected_sha256[:12]}..., "
                                  f"got {actual[:12]}...): the file was changed or truncated")
    meta = read_metadata(path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format_version')!r}, "
                              f"this audioae reads {FORMAT_VERSION!r}")
    try:
        state = st_load(data)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated weights ({exc})") from exc
    name = meta["registry_name"]
    try:
        config = family(name).config.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid config for {name!r}: {exc}") from exc
    model = build_model(name, config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the {name} config: {exc}") from exc
    return model.to(map_location).eval()


def checkpoint_extra(path: str | os.PathLike) -> dict:
    return json.loads(read_metadata(path).get("extra", "{}"))


def interpolate_weights(model: Autoencoder, base: Autoencoder, alpha: float) -> Autoencoder:
    """``alpha * model + (1 - alpha) * base``, tensor by tensor, under ``model``'s config.

    For a fine-tuned model and the weights it started from (one basin), the straight line
    between them trades what the fine-tuning gained against what it cost (Wortsman et al.'s
    WiSE-FT): ``alpha`` is chosen on validation data. Same family and shapes required."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mine, theirs = model.state_dict(), base.state_dict()
    if type(model) is not type(base) or mine.keys() != theirs.keys() or any(
            mine[k].shape != theirs[k].shape for k in mine):
        raise CheckpointError("interpolation needs two checkpoints of one architecture (same tensors and shapes)")
    mixed = {k: torch.lerp(theirs[k].float(), mine[k].float(), alpha).to(mine[k].dtype)
             if mine[k].is_floating_point() else mine[k] for k in mine}
    out = type(model)(model.config)
    out.load_state_dict(mixed, strict=True)
    return out.train(model.training)
