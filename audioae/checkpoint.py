"""Checkpoints are plain data: a ``.safetensors`` file of weights whose metadata holds the
registry name, the config as JSON, the format version and the library versions.

Loading is strict (every key, every shape) and never unpickles. A sha256 of the file can be
published beside it (``<file>.sha256``) and is then checked on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import string
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .config import quoted
from .fileio import atomic_write_bytes, file_in_the_way
from .models import Autoencoder, AutoencoderConfig, build_model, family

FORMAT_VERSION = "1"
# audioae writes a few hundred characters of config and extra; safetensors allows a 100 MB header,
# whose JSON would parse into gigabytes of Python objects.
MAX_METADATA_CHARS = 1 << 20
SIDECAR_BYTES = 4096  # sha256sum's line: 64 hex digits, two spaces and the file's name
HEADER_LIMIT = 100_000_000  # safetensors' own bound on its JSON header
# A file with a sha256 to check, up to this size, is hashed before its header is read, so that a
# truncated one is named as such; a larger one (a sparse terabyte) is refused from its header first.
HASH_FIRST_BYTES = 1 << 30
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}  # the dtypes safetensors.torch reads

log = logging.getLogger(__name__)


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
    return write_with_sha256(path, st_save(state, metadata=meta), write_sha256)


def write_with_sha256(path: str | os.PathLike, data: bytes, write_sha256: bool = True) -> str:
    """Write ``data`` to ``path`` atomically and its sha256 to ``<path>.sha256`` (sha256sum's
    line; a stale one is removed either way); returns the sha256."""
    path = Path(path)
    refuse_file_in_the_way(path)
    digest = hashlib.sha256(data).hexdigest()
    sidecar = path.with_name(path.name + ".sha256")
    # The old hash goes first: a kill (or a reader) between the two renames then finds a checkpoint
    # without a hash file, which loads, never a new checkpoint beside the old file's hash.
    sidecar.unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    if write_sha256:
        atomic_write_bytes(sidecar, f"{digest}  {path.name}\n".encode())
    return digest


def refuse_file_in_the_way(path: Path) -> None:
    """NotADirectoryError naming ``path`` and the file among its folders that stops the write:
    left alone, the first thing to fail is the hash file's unlink, whose bare error names
    ``<path>.sha256``, a path the caller never gave."""
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise NotADirectoryError(f"cannot write {path}: {blocker} is a file, not a folder; "
                                 f"move it away or choose another path")


def check_sha256(path: str | os.PathLike, data: bytes, expected: str | None = None) -> None:
    """CheckpointError unless ``data`` (the bytes read from ``path``) has the sha256 ``expected``
    or, without one, that of ``<path>.sha256`` when there is such a file."""
    expected = sidecar_sha256(path) if expected is None else expected
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():  # hex digits in either case
        raise CheckpointError(f"{path}: sha256 mismatch (expected {expected[:12]}..., "
                              f"got {actual[:12]}...): the file was changed or truncated")


def _json_object(path: Path, key: str, text: str) -> dict:
    """A metadata entry that holds a JSON object (``config``, ``extra``), parsed, or a CheckpointError."""
    if len(text) > MAX_METADATA_CHARS:
        raise CheckpointError(f"{path}: its {key!r} metadata is {len(text):,} characters long; audioae writes "
                              f"a few hundred (at most {MAX_METADATA_CHARS:,} are read)")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise CheckpointError(f"{path}: its {key!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: its {key!r} metadata is a JSON {type(value).__name__}, not an object")
    return value


def _read_header(path: str | os.PathLike, data: bytes | None = None) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The metadata and each tensor's shape, from the header alone (of ``data``, the file's bytes,
    when the caller has read them already), of an audioae checkpoint: else CheckpointError."""
    meta, shapes = _safetensors_header(path, data)
    if "registry_name" not in meta or "config" not in meta:
        if Path(path).name.endswith(".optim.safetensors") or {"step", "minutes_done"} <= set(meta):
            # audioae.train's resume point: the optimizer's moments, which name no model
            raise CheckpointError(f"{path}: this is a training run's optimizer state (last.optim.safetensors), "
                                  f"not a model; use best.safetensors or last.safetensors in that folder")
        raise CheckpointError(f"{path}: safetensors file without audioae metadata (registry_name, config)")
    for key in ("config", "extra"):  # checked here, so that every reader of them may json.loads them
        if key in meta:
            _json_object(Path(path), key, meta[key])
    return meta, shapes


def safetensors_metadata(path: str | os.PathLike, data: bytes) -> dict:
    """The ``__metadata__`` of any safetensors file (an optimizer state too) whose bytes are
    ``data``; CheckpointError when its header does not read."""
    return _safetensors_header(path, data)[0]


def _safetensors_header(path: str | os.PathLike, data: bytes | None = None) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The metadata and each tensor's shape of a safetensors file, from its header alone. Read, not
    mapped: safetensors' ``safe_open`` maps the whole file, and Linux's default overcommit heuristic
    refuses a mapping larger than the machine's RAM and swap (ENOMEM): the terabyte test of
    tests/test_checkpoint.py."""
    try:
        with open(path, "rb") if data is None else io.BytesIO(data) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            if size < 8:
                raise ValueError(f"{size} bytes, shorter than the length that starts a header")
            n = int.from_bytes(f.read(8), "little")
            if n > min(HEADER_LIMIT, size - 8):
                raise ValueError(f"a header of {n:,} bytes in a file of {size:,}")
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        if not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("metadata values that are not strings")
        shapes, data = {}, 0
        for key, t in header.items():
            if t["dtype"] not in DTYPE_BYTES or not all(isinstance(d, int) and d >= 0 for d in t["shape"]):
                raise ValueError(f"{key}: dtype {t['dtype']!r}, shape {t['shape']!r}")
            shapes[key] = tuple(t["shape"])
            data += math.prod(shapes[key]) * DTYPE_BYTES[t["dtype"]]
        if 8 + n + data != size:  # then the file is as large as the weights it declares, no larger
            raise ValueError(f"its tensors take {data:,} bytes and {size - 8 - n:,} follow its header")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    return meta, shapes


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata header alone (cheap: no weights are read). Its ``config`` and ``extra`` are
    JSON objects (else CheckpointError)."""
    return _read_header(path)[0]


def config_of(path: str | os.PathLike, meta: dict | None = None) -> tuple[str, AutoencoderConfig]:
    """``(registry name, config)`` from a checkpoint's header (``meta``: already read), or
    CheckpointError: what the file is, without reading its weights."""
    meta = read_metadata(path) if meta is None else meta
    name = meta["registry_name"]
    try:
        cls = family(name).config
        return name, cls.from_dict(_saved_topk_within_code_dim(path, cls, json.loads(meta["config"])))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:  # RecursionError: lists in lists in ...
        raise CheckpointError(f"{path}: invalid config for {name!r}: {exc}") from exc


def _saved_topk_within_code_dim(path: str | os.PathLike, cls: type[AutoencoderConfig], saved: dict) -> dict:
    """``saved`` with a top-k above code_dim lowered to code_dim (a logged warning names the file).

    Checkpoints written before configs refused such a topk hold one: sparse_dict's old fixed
    default of 32 with a code_dim under 32. Top-k then kept every unit, exactly as topk = code_dim
    does, so the model loads with identical outputs; a config built from user settings still refuses it."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    sparsity, topk, code_dim = (saved.get(k, defaults.get(k)) for k in ("sparsity", "topk", "code_dim"))
    if (sparsity == "topk" and all(isinstance(v, int) and not isinstance(v, bool) for v in (topk, code_dim))
            and 0 < code_dim < topk):
        log.warning("%s: its config keeps topk %d units of a code_dim of %d (every unit, as topk %d does); "
                    "loaded with topk = %d", path, topk, code_dim, code_dim, code_dim)
        return {**saved, "topk": code_dim}
    return saved


def sidecar_sha256(path: str | os.PathLike) -> str | None:
    """The hash in ``<path>.sha256`` beside a checkpoint, or None when there is none; for a link,
    beside the link or else beside the file it leads to (where the checkpoint's own sidecar is)."""
    sidecar = Path(path).with_name(Path(path).name + ".sha256")
    if not sidecar.is_file() and Path(path).is_symlink():
        target = Path(os.path.realpath(path))
        sidecar = target.with_name(target.name + ".sha256")
    if not sidecar.is_file():
        return None
    with open(sidecar, "rb") as f:
        head = f.read(SIDECAR_BYTES)  # sha256sum's line; a sidecar of gigabytes is not read whole
    words = head.split()
    if not words:  # not an IndexError below
        raise CheckpointError(f"{sidecar}: empty; it should hold the checkpoint's sha256 (sha256sum's output)")
    digest = words[0].decode("ascii", errors="replace").lower()  # hex digits in either case
    if len(digest) != 64 or any(c not in string.hexdigits for c in digest):
        # the sidecar is at fault, not the checkpoint: no "sha256 mismatch"
        raise CheckpointError(f"{sidecar}: does not start with a sha256 (64 hex digits, sha256sum's output), "
                              f"but {quoted(digest, 20)}")
    return digest


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expected_sha256: str | None = None) -> Autoencoder:
    """Rebuild the model from its registry name and config, then load every weight strictly.

    The sha256 is checked against ``expected_sha256`` or, when present, ``<path>.sha256``.
    The config and the tensors' shapes are checked against each other from the header before
    anything is allocated or the weights are read: a file of a few bytes whose config asks for
    ``code_dim = 10**9`` (or a sparse file of a terabyte) is refused, not built or read into memory.
    """
    return read_checkpoint(path, map_location, expected_sha256)[0]


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expected_sha256: str | None = None, data: bytes | None = None) -> tuple[Autoencoder, dict]:
    """:func:`load_checkpoint`'s model and the metadata it was read with (its ``extra`` a JSON
    object), from one reading of the file: ``data``, its bytes, when the caller has them already
    (then hashed first: with the bytes in memory, the header's checks no longer spare a read).
    A file of at most HASH_FIRST_BYTES with a sha256 to check is read and hashed first too."""
    path = Path(path)
    if data is None and path.is_file() and path.stat().st_size <= HASH_FIRST_BYTES:
        expected_sha256 = sidecar_sha256(path) if expected_sha256 is None else expected_sha256
        if expected_sha256 is not None:
            data = path.read_bytes()  # read whole anyway once its header passes
    if data is not None:
        check_sha256(path, data, expected_sha256)
    elif not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    meta, shapes = _read_header(path, data)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format_version')!r}, "
                              f"this audioae reads {FORMAT_VERSION!r}")
    name, config = config_of(path, meta)
    try:
        with torch.device("meta"):  # shapes without memory: the model is built for real only once they match
            wanted = {k: tuple(v.shape) for k, v in build_model(name, config).state_dict().items()}
    except (ValueError, TypeError, KeyError, RecursionError) as exc:  # RecursionError: lists in lists in ...
        raise CheckpointError(f"{path}: invalid config for {name!r}: {exc}") from exc
    except (RuntimeError, NotImplementedError) as exc:
        # torch's bare "Tensor.item() cannot be called on meta tensors" (or "... 'Meta' backend"): an
        # __init__ that computes from tensor values. Any other error of the build is passed on as it is.
        why = ("; its __init__ likely computes from tensor values, which meta tensors lack: skip that work when "
               "audioae.spectral.building_on_meta() is true (docs/models.md)" if "meta" in str(exc).lower() else "")
        raise CheckpointError(f"{path}: the {name} model could not be built on the meta device, where loading "
                              f"learns its shapes before reading any weight ({type(exc).__name__}: {exc}){why}") from exc
    if wanted != shapes:
        raise CheckpointError(f"{path}: weights do not match the {name} config: {_shape_differences(wanted, shapes)}")
    if data is None:
        data = path.read_bytes()  # hashed and loaded from the same bytes
        check_sha256(path, data, expected_sha256)
    try:
        state = st_load(data)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated weights ({exc})") from exc
    model = build_model(name, config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # the file changed since its header was read
        raise CheckpointError(f"{path}: weights do not match the {name} config: {exc}") from exc
    return model.to(map_location).eval(), meta


def _shape_differences(wanted: dict[str, tuple], found: dict[str, tuple], most: int = 4) -> str:
    """What a config wants and a file holds, differently: missing, unexpected and reshaped tensors."""
    missing = [k for k in wanted if k not in found]
    unexpected = [k for k in found if k not in wanted]
    parts = [f"{what} {', '.join(keys[:most])}{f' and {len(keys) - most} more' if len(keys) > most else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    reshaped = [k for k in wanted if k in found and found[k] != wanted[k]]
    parts += [f"{k} is {list(found[k])} in the file, {list(wanted[k])} in the config" for k in reshaped[:most]]
    if len(reshaped) > most:
        parts.append(f"{len(reshaped) - most} more of other shapes")
    return "; ".join(parts)


def checkpoint_extra(path: str | os.PathLike) -> dict:
    return json.loads(read_metadata(path).get("extra", "{}"))  # read_metadata checked it is an object


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
