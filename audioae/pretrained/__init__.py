"""Shipped models. Each ``<name>.safetensors`` has a ``<name>.safetensors.sha256`` (checked on
load) and a model card ``<name>.md`` saying how it was trained, on what, and what it scored.
Beside them: example recordings (:data:`EXAMPLES`) and their clean speech (:data:`EXAMPLES_CLEAN`)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from collections.abc import Callable
from pathlib import Path

from ..checkpoint import CheckpointError, config_of, load_checkpoint, read_metadata, sha256_file, sidecar_sha256
from ..models import Autoencoder, AutoencoderConfig

HERE = Path(__file__).resolve().parent  # resolved, as the CLI's (which imports no torch) is: one path to print
# Example recordings (noisy speech) and their clean speech, for ``audioae denoise`` and ``audioae eval``;
# ``audioae examples [--clean]`` prints these paths wherever the package is installed.
EXAMPLES = HERE / "examples"
EXAMPLES_CLEAN = HERE / "examples-clean"
DEFAULT_DENOISER = "denoiser-small"
DEFAULT_DECOMPOSER = "decomposer-small"


def shipped() -> dict[str, Path]:
    """Shipped model names -> weight files."""
    return {p.name.removesuffix(".safetensors"): p for p in sorted(HERE.glob("*.safetensors"))}


def empty_name_error() -> str:
    """What an empty model name is told: ``--model "$MODEL"`` with ``MODEL`` unset, most likely."""
    names = ", ".join(shipped()) or "none shipped"
    return f"the model name is empty (an unset shell variable?); name a shipped model ({names}) or a .safetensors path"


def resolve(spec: str | None, default: str = DEFAULT_DENOISER) -> Path:
    """A shipped model name or a path to a ``.safetensors`` checkpoint -> its path; None: ``default``.
    An empty name is refused, not silently taken for the default."""
    if spec is None:
        spec = default
    if not spec:
        raise CheckpointError(empty_name_error())
    models = shipped()
    if spec in models:
        return models[spec]
    path = Path(spec)
    if path.is_dir():  # a training run's folder, most likely
        inside = sorted(p.name for p in path.glob("*.safetensors") if not p.name.endswith(".optim.safetensors"))
        hint = f": name one of its checkpoints ({', '.join(inside)})" if inside else ", with no checkpoint in it"
        raise CheckpointError(f"{path}: is a folder{hint}")
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            hint = f" (the shipped model is named {path.stem!r}, without a path)" if path.stem in models else ""
            raise CheckpointError(f"{path}: no such checkpoint file{hint}")
        return path
    names = ", ".join(models) or "(none shipped)"
    close = difflib.get_close_matches(spec, models, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CheckpointError(f"unknown model {spec!r}: not a shipped model ({names}) nor a .safetensors path{hint}")


def _denoises(name: str, config: AutoencoderConfig) -> bool:
    # A model trained without corruption reconstructs its input: given a mixture it keeps the noise.
    return config.input == "spectrogram" and config.corruption != "none"


# What a script may need of a checkpoint: a test of its registry name and config, and what such a
# model is, with a shipped one that is.
FAMILIES: dict[str, tuple[Callable[[str, AutoencoderConfig], bool], str]] = {
    "denoiser": (_denoises, f"a spectrogram model trained with a corruption, such as {DEFAULT_DENOISER}"),
    "recurrent denoiser": (lambda name, config: name == "recurrent" and _denoises(name, config),
                           f"a recurrent model trained with a corruption, such as {DEFAULT_DENOISER}"),
    "decomposer": (lambda name, config: name == "sparse_dict", f"a sparse_dict model, such as {DEFAULT_DECOMPOSER}"),
}


def what(name: str, config: AutoencoderConfig) -> str:
    """A checkpoint as a person names it: ``a sparse_dict model trained without corruption (a decomposer)``."""
    said = f"a {name} model"
    if config.input != "spectrogram":
        said += f" of {config.input} input"
    elif config.corruption == "none":
        said += " trained without corruption"
    roles = [r for r in ("denoiser", "decomposer") if FAMILIES[r][0](name, config)]
    return said + (f" ({' and '.join('a ' + r for r in roles)})" if roles else "")


def resolve_arg(parser: argparse.ArgumentParser, spec: str | None, flag: str | None = None,
                family: str | None = None, default: str = DEFAULT_DENOISER) -> Path:
    """For the benchmark and recipe scripts: ``spec`` (a shipped model name or a ``.safetensors``
    path; None: ``default``) -> its checkpoint file, or a usage error (exit 2) before any work, led
    by ``flag`` where one is given: an unknown, empty or missing name, and with ``family`` (a key of
    :data:`FAMILIES`) a file that is no audioae checkpoint or a model of another kind (a decomposer
    given to a denoiser's benchmark ran, and wrote numbers, or ended in an AttributeError). Only
    the header is read, not the weights."""
    lead = f"{flag}: " if flag else ""
    try:
        path = resolve(spec, default)
        if family is None:
            return path
        name, config = config_of(path)
    except CheckpointError as exc:
        parser.error(f"{lead}{exc}")
    fits, wanted = FAMILIES[family]
    if not fits(name, config):
        parser.error(f"{lead}{spec or default} is {what(name, config)}, not a {family}: this needs {wanted}")
    return path


def load(spec: str | None, default: str = DEFAULT_DENOISER, map_location="cpu") -> Autoencoder:
    """Load a shipped model by name, or any checkpoint by path (None: ``default``; "" is refused)."""
    return load_checkpoint(resolve(spec, default), map_location=map_location)


def describe_shipped() -> list[dict]:
    rows = []
    for name, path in shipped().items():
        meta = read_metadata(path)
        model = load_checkpoint(path)
        rows.append({"name": name, **model.describe(), "version": meta.get("audioae_version"),
                     "card": str(path.with_suffix(".md"))})
    return rows


def describe_checkpoint(spec: str) -> dict:
    """One checkpoint (a shipped name or a path) as a person asks about it: what it is, its whole
    config, what its training recorded, the versions that wrote it, its sha256."""
    path = resolve(spec)
    model = load_checkpoint(path)  # checks the sha256 beside it, as every use does
    meta = read_metadata(path)
    return {"model": str(path), **model.describe(), "config": dataclasses.asdict(model.config),
            "extra": json.loads(meta.get("extra", "{}")),
            "versions": {k.removesuffix("_version"): v for k, v in sorted(meta.items()) if k.endswith("_version")},
            "sha256": sidecar_sha256(path) or sha256_file(path)}  # a sidecar was checked by the load: no rehash
