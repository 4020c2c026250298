"""argparse types the benchmark and recipe scripts share: a bad value is a usage error (exit 2)
naming the flag, before any work, not a traceback from deep inside (numpy's "zero-size
array", a StopIteration, a range() of step 0). A model name is checked the same way by
:func:`audioae.pretrained.resolve_arg`."""

from __future__ import annotations

import argparse
import math

from audioae import audio


def description(doc: str) -> str:
    """A script's ``--help`` description: its docstring's first paragraph, on one line."""
    return " ".join(doc.split("\n\n")[0].split())


def check_one_sample(parser: argparse.ArgumentParser, seconds: float, sr: int, flag: str = "--seconds") -> None:
    """Refuse ``seconds`` of audio that hold no sample at ``sr`` (a usage error, exit 2): a
    positive ``--seconds`` can still be under one sample, and the work then fails deep inside."""
    if int(seconds * sr) < 1:
        parser.error(f"{flag} {seconds:g} is less than one sample at {sr} Hz")


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
