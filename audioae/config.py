"""Config dataclasses from TOML, JSON and ``--set`` values: each value checked against its field's
type before the class sees it, so ``--set model.config.hidden=abc`` is a message, not a TypeError
from deep inside torch."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing

QUOTE_CHARS = 80  # of a caller's string, quoted in a message
# torch takes sizes and numbers as 64-bit integers: a checkpoint's code_dim of 10**30 was torch's
# "Overflow when unpacking long long" and a page of C++ stack frames.
INT_LIMIT = 2**63
# The devices a --device or train.device names (pick_device says whether torch sees it).
DEVICE_NAMES = r"auto|cpu|cuda(:\d+)?"
# Thread settings (--threads, train.threads, ...): torch takes any count, and 99999 crashed the
# process (exit 139, in jemalloc) as it made them. More threads than CPUs only slow torch down, but
# the cap stops a typo, not oversubscription on purpose: a config written for a larger machine runs.
THREADS_PER_CPU = 8
MIN_THREADS_CAP = 64


def max_threads() -> int:
    """The most threads a thread setting takes on this machine: :data:`THREADS_PER_CPU` per CPU
    (``os.cpu_count()``), and at least :data:`MIN_THREADS_CAP`."""
    return max(MIN_THREADS_CAP, THREADS_PER_CPU * (os.cpu_count() or 1))


def check_thread_count(value: int, name: str, least: int | None = None) -> None:
    """Refuse a thread count above :func:`max_threads`, naming the setting (its flag or field) and
    this machine's CPUs, and one below ``least`` where given (0 means torch's default in some
    settings, so each says its own lower bound)."""
    if least is not None and value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")
    if value > max_threads():
        raise ValueError(f"{name} must be at most {max_threads()} on this machine ({os.cpu_count()} CPUs; "
                         f"{THREADS_PER_CPU} threads per CPU, at least {MIN_THREADS_CAP}), got {value}")


def quoted(text: str, limit: int = QUOTE_CHARS) -> str:
    """``repr(text)`` for a message, its first ``limit`` characters only when it is longer, then its
    length: a request's string, echoed whole, could make the message larger than gRPC carries."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def differences(before: dict, now: dict, keys: typing.Iterable[str] | None = None) -> list[str]:
    """``"k: <before> there, <now> now"`` for each of ``keys`` (default: ``now``'s) whose values
    differ: what changed since a run, a checkpoint or a cache was made, for a message."""
    return [f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in (now if keys is None else keys)
            if before.get(k) != now.get(k)]


def _shown(value: object) -> str:
    """``repr(value)`` for a message, cut as :func:`quoted` cuts a string."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}... ({len(text):,} characters)"


def _huge(value: object) -> bool:
    """An integer (or a list holding one) that no 64-bit integer holds."""
    if isinstance(value, (list, tuple)):
        return any(_huge(v) for v in value)
    return isinstance(value, int) and not -INT_LIMIT < value < INT_LIMIT


def _conforms(value: object, t: object) -> bool:
    if _huge(value):
        return False
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t in (str, bool, dict):
        return isinstance(value, t)
    if typing.get_origin(t) is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(t)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True))
    return True  # an annotation not listed above: the class checks it


def _as_field(value: object, t: object) -> object:
    """Lists become tuples where the field is a tuple (TOML and JSON have no tuples)."""
    if typing.get_origin(t) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(t)
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_as_field(v, a) for v, a in zip(value, inner, strict=True))
    return value


# Each type a config field can have, in words, with examples written as --set and TOML take them
# (two, for a list of them).
_PLAIN_WORDS = {int: ("an integer", "integers", ("2", "4")), float: ("a number", "numbers", ("0.25", "0.5")),
                bool: ("true or false", "true or false values", ("true", "false")),
                str: ("a text", "texts", ('"gru"', '"l1"')), dict: ("a table", "tables", ("{ a = 1 }", "{ b = 2 }"))}


def _any_length(t: object) -> bool:
    """A list annotation of any length (``list[X]``, a bare list or tuple, ``tuple[X, ...]``), not
    one of fixed length (``tuple[int, int]``)."""
    args = typing.get_args(t)
    return typing.get_origin(t) is list or not args or (len(args) == 2 and args[1] is Ellipsis)


def _union(t: object) -> bool:
    """``X | Y``, ``Optional[X]`` or ``Union[X, Y]``."""
    return typing.get_origin(t) is typing.Union or isinstance(t, types.UnionType)


def _examples(t: object) -> tuple[str, str]:
    """Two values of type ``t`` as TOML writes them, for a message."""
    if t in _PLAIN_WORDS:
        return _PLAIN_WORDS[t][2]
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (tuple, list) or t in (tuple, list):
        if _any_length(t):
            one = _examples(args[0]) if args else ("2", "4")
            return f"[{', '.join(one)}]", f"[{one[1]}]"
        fixed = f"[{', '.join(_examples(a)[i % 2] for i, a in enumerate(args))}]"
        return fixed, fixed
    if origin in _PLAIN_WORDS:  # dict[str, float]: a table, whatever its values
        return _PLAIN_WORDS[origin][2]
    members = [a for a in args if a is not type(None)]
    return _examples(members[0]) if members else ("...", "...")


def _plural(t: object) -> str:
    plain = _PLAIN_WORDS.get(t) or _PLAIN_WORDS.get(typing.get_origin(t))  # dict[str, float]: tables
    if plain:
        return plain[1]
    return "lists" if typing.get_origin(t) in (tuple, list) else "items"


def _in_words(t: object) -> str | None:
    """``t`` in a person's words with an example; None for an annotation not known here."""
    if t in _PLAIN_WORDS:
        words, _, (example, _) = _PLAIN_WORDS[t]
        return words if t is bool else f"{words} such as {example}"
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (tuple, list) or t in (tuple, list):
        if _any_length(t):
            return f"a list of {_plural(args[0]) if args else 'values'} such as {_examples(t)[0]}"
        what = _plural(args[0]) if len(set(args)) == 1 else "values"
        return f"a list of {len(args)} {what} such as {_examples(t)[0]}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if not _union(t):  # dict[str, float] was "str or float", as if a union
        return _in_words(origin) if origin in _PLAIN_WORDS else None
    if type(None) in args:  # Optional[X] and X | None; TOML has no null: leaving the key out keeps the default
        rest = [a for a in args if a is not type(None)]
        return f"{' or '.join(describe_type(a) for a in rest)}, or the key left out for none"
    return " or ".join(describe_type(a) for a in args)  # another union


def describe_type(t: object) -> str:
    """A field's type for a message: its annotation, then in words with an example:
    ``tuple[int, ...]`` alone meant nothing to someone who had typed ``code_sizes=2,4``."""
    name = t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
    words = _in_words(t)
    if words is None or _union(t):
        return words or name  # a union's words already name each member
    return f"{name} ({words})"


def _list_hint(value: object, t: object) -> str:
    """How to write a list, for a bare ``2,4`` (a text to TOML) given where a list was expected;
    texts in it need quotes, or the brackets are a text again."""
    if not (typing.get_origin(t) in (tuple, list) and isinstance(value, str)):
        return ""
    args = typing.get_args(t)
    texts = bool(args) and args[0] is str
    text = value.strip()
    # "[si_sdr]": brackets, but a text unquoted is no TOML value, so the whole came as one text
    bracketed = text.startswith("[") and text.endswith("]")
    if not (bracketed or "," in text or (texts and text)):
        return ""
    items = [v.strip().strip("'\"") for v in (text[1:-1] if bracketed else text).split(",") if v.strip()]
    if texts:
        items = [f'"{v}"' for v in items]
    how = "each text in the list needs quotes" if bracketed and texts else "write a list in brackets"
    return f"; {how}: [{', '.join(items)}]"


def refuse_non_finite(config, prefix: str = "") -> None:
    """Refuse inf and NaN in a config dataclass's float fields (``prefix``: how the message names
    them, e.g. ``train.``): NaN passes every comparison a check would make."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{f.name} must be a finite number, got {value}")


def typed_fields(cls: type, values: dict, where: str) -> dict:
    """``values`` ready for ``cls(**values)``: unknown keys and values of the wrong type raise
    ValueError naming ``where`` (e.g. ``[train]``), the key, the value and the type expected."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        close = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, hints, n=1))}
        if len(unknown) == 1 and close:
            hint = f" (did you mean {close[unknown[0]]!r}?)"
        else:
            hint = f" (did you mean {', '.join(f'{m!r} for {k!r}' for k, m in close.items())}?)" if close else ""
        raise ValueError(f"{where} has no key(s) {unknown}{hint}; valid: {sorted(hints)}")
    for k, v in values.items():
        if not _conforms(v, hints[k]):
            bound = " (integers within ±2**63)" if _huge(v) else ""
            raise ValueError(f"{where} {k} = {_shown(v)}: expected {describe_type(hints[k])}{bound}"
                             f"{_list_hint(v, hints[k])}")
    return {k: _as_field(v, hints[k]) for k, v in values.items()}


def coerce_value(value: str) -> object:
    """A ``--set`` value: TOML syntax when it parses (numbers, booleans, lists, quoted strings),
    else the plain string (``cell=gru`` and ``cell="gru"`` mean the same)."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def parse_assignments(items: list[str] | tuple[str, ...], where: str = "--set", example: str = "mask_power=0.8") -> dict:
    """``KEY=VALUE`` strings -> ``{key: value}`` (values by :func:`coerce_value`); a string
    without ``=`` or a key raises ValueError naming it, with ``example``: a key of the caller's."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not (sep and key.strip()):
            raise ValueError(f"{where} {item!r}: expected KEY=VALUE, e.g. {example}")
        values[key.strip()] = coerce_value(value.strip())
    return values
