"""What a run's folder records of its settings: ``run.json`` (the settings it started with and each
resume's changes), the flat settings they are compared in, and the provenance that
``best.safetensors`` and ``ema.safetensors`` carry.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..fileio import atomic_write_bytes
from ..models import family
from .config import RunConfig

log = logging.getLogger(__package__)  # audioae.train, whichever module logs


def _warn_init_from_unused(out: Path, init_from: str, record: dict | None) -> None:
    """A resume continues the run's own weights and ignores train.init_from, which seeds a new run
    only. Said when the run did not start from it (its run.json): ``--set train.init_from=X`` on a
    folder that held a run resumed that run in silence, and run.json then named X as its start.
    A phase resumed with the init_from it started from (recipes/train_denoiser.sh) hears nothing.
    ``record``: run.json as :func:`_read_run_record` read it."""
    # Not known without run.json, or from one written on a resume that found none (settings_from_step):
    # its train.init_from is that resume's, and would pass for the start's from then on.
    started_from = None if record is None or "settings_from_step" in record else record["train"].get("init_from")
    if init_from == started_from:
        return
    how = ("run.json does not say what it started from" if started_from is None else
           "it started from random weights" if not started_from else f"it started from {started_from!r}")
    log.warning("%s: resuming its run, which did not start from train.init_from=%r (%s): a resume continues the "
                "run's own weights and ignores init_from; --no-resume or another --out starts a new run from it",
                out, init_from, how)


def _record_settings(out: Path, run: RunConfig, resumed_at: int | None, record: dict | None) -> None:
    """Write run.json: the settings the run started with (``model``, ``data``, ``train``, as
    :meth:`RunConfig.to_dict` gives them) and, for each resume, ``{"step": <resumed at>,
    "changed": {"train.lr": {"was": ..., "now": ...}, ...}}`` under ``resumes``. A resume does not
    rewrite it with its own settings, so that the folder still says what the earlier steps were
    trained with; readers of the settings (``run["train"]["init_from"]``) still read the start's.
    ``record``: run.json as the resume read it (None: a new run, or none readable)."""
    settings = run.to_dict()
    if resumed_at is not None and record is None:
        # No readable record of the start: these settings hold from here on, and run.json says from where.
        log.warning("%s: no readable run.json to add this resume to; recording this run's settings as "
                    "holding from step %d", out, resumed_at)
        settings["settings_from_step"] = resumed_at
    elif record is not None:
        changed = _changed_settings(_settings_in_effect(record), _flat_settings(settings))
        settings = {**record, "resumes": [*record.get("resumes", []), {"step": resumed_at, "changed": changed}]}
    atomic_write_bytes(out / "run.json", json.dumps(settings, indent=2).encode())


def _read_run_record(out: Path) -> dict | None:
    """run.json as written by :func:`_record_settings`, or None when it is missing or of another shape."""
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    shaped = (isinstance(record, dict) and all(isinstance(record.get(k), dict) for k in ("model", "data", "train"))
              and isinstance(record.get("resumes", []), list))
    return record if shaped else None


def _flat_settings(settings: dict) -> dict:
    """``{"train.lr": 0.001, "model.config.hidden": 16, ...}`` as JSON values (tuples as lists), so
    that settings from run.json and from this run compare equal when they are."""
    model = settings["model"]
    flat = {"model.name": model.get("name"),
            **{f"model.config.{k}": v for k, v in _model_settings_in_effect(model).items()},
            **{f"{section}.{k}": v for section in ("data", "train") for k, v in settings[section].items()}}
    return json.loads(json.dumps(flat))


def _model_settings_in_effect(model: dict) -> dict:
    """``[model.config]`` as the model ran with it: the given keys and every default (a setting
    left out was recorded as ``"was": None`` when a resume set it, while the resume's warning
    named its value); the keys as given when they make no config (a run.json of another version)."""
    given = model.get("config") or {}
    try:
        return dataclasses.asdict(family(model.get("name")).config.from_dict(dict(given)))
    except (ValueError, TypeError, KeyError, RecursionError):
        return given


def _settings_in_effect(record: dict) -> dict:
    """The flat settings of the latest invocation run.json records: the start's, then each resume's changes."""
    flat = _flat_settings(record)
    for resume in record.get("resumes", []):
        changed = resume.get("changed") if isinstance(resume, dict) else None
        for key, change in (changed or {}).items():
            flat[key] = change.get("now") if isinstance(change, dict) else None
    return flat


def _changed_settings(was: dict, now: dict) -> dict:
    return {k: {"was": was.get(k), "now": now.get(k)} for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)}


def _provenance(run: RunConfig, out: Path, minutes_done: float) -> dict:
    """The run's main settings, which best.safetensors and ema.safetensors carry (``audioae models
    FILE`` shows them): a copy away from its folder still says where it came from and how it was
    trained. Those of the invocation that wrote it; run.json has every resume's changes."""
    d, t = run.data, run.train
    return {"out_dir": str(out), "data": {k: getattr(d, k) for k in ("clean_dir", "noise_dir", "val_clean_dir",
                                                                    "val_noise_dir") if getattr(d, k)},
            "train": {k: getattr(t, k) for k in ("steps", "batch_size", "lr", "lr_final", "decay_steps",
                                                 "decay_by_time", "max_minutes", "init_from", "ema_decay",
                                                 "seed", "deterministic")},
            "minutes_done": round(minutes_done, 3)}
