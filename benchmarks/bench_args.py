"""argparse types the benchmark and recipe scripts share: a bad value is a usage error (exit 2)
naming the flag, before any work, where it was a traceback from deep inside (numpy's "zero-size
array", a StopIteration, a range() of step 0); and :func:`resolved`, a model name checked the same
way, its kind too."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from audioae import audio
from audioae.checkpoint import CheckpointError, config_of
from audioae.models import AutoencoderConfig
from audioae.pretrained import DEFAULT_DECOMPOSER, DEFAULT_DENOISER, resolve


def _denoises(name: str, config: AutoencoderConfig) -> bool:
    # A model trained without corruption reconstructs its input: given a mixture it keeps the noise.
    return config.input == "spectrogram" and config.corruption != "none"


# What a script may need of a checkpoint: a test of its registry name and config, what such a
# model is, and a shipped one that is.
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


def resolved(parser: argparse.ArgumentParser, spec: str | None, flag: str | None = None,
             family: str | None = None, default: str = DEFAULT_DENOISER) -> Path:
    """``spec`` (a shipped model name or a ``.safetensors`` path; None: ``default``) -> its checkpoint
    file, or a usage error (exit 2) before any work, led by ``flag`` where one is given: an unknown,
    empty or missing name, and with ``family`` (a key of :data:`FAMILIES`) a file that is no audioae
    checkpoint or a model of another kind (a decomposer given to a denoiser's benchmark ran, and
    wrote numbers, or ended in an AttributeError). Only the header is read, not the weights."""
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


def whole(text: str, low: int = 0) -> int:
    """A whole number, ``low`` or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more."""
    return whole(text, 0)


def positive(text: str) -> int:
    """A whole number, 1 or more."""
    return whole(text, 1)


def amount(text: str, unit: str, zero_ok: bool = False) -> float:
    """A finite number of ``unit`` above 0 (``zero_ok``: 0 or more)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None
    if not ((value >= 0 if zero_ok else value > 0) and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero_ok else 'more than 0'} {unit}, got {text}")
    return value


def positive_seconds(text: str) -> float:
    return amount(text, "seconds")


def finite(text: str) -> float:
    """Any finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def sample_rate(text: str) -> int:
    """A whole number of Hz that audioae takes (MIN_SAMPLE_RATE..MAX_SAMPLE_RATE)."""
    value = whole(text)
    if not audio.MIN_SAMPLE_RATE <= value <= audio.MAX_SAMPLE_RATE:
        raise argparse.ArgumentTypeError(f"must be within {audio.MIN_SAMPLE_RATE}..{audio.MAX_SAMPLE_RATE} Hz, "
                                         f"got {value}")
    return value
