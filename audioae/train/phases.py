"""The learning-rate schedule and phases. A phase is the steps trained under one set of the settings
that shape training (:data:`NOT_IN_PHASE_IDENTITY` lists those left out): what a resume point
records of its phase, whether a resume continues it or starts a new one, and whether a rerun asks
for a phase the run already finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

from .config import RunConfig, TrainConfig
from .records import _flat_settings

log = logging.getLogger(__package__)  # audioae.train, whichever module logs


# The settings of a phase's schedule: its learning rate at each step (_phase_lr) and what the
# resume lines name. Which phase a run is in is decided by all the settings that shape training
# (_phase_identity), of which these are some.
PHASE_SETTINGS = ("lr", "lr_final", "decay_steps", "decay_by_time", "max_minutes")

# The flat settings (_flat_settings) that do not make a phase another one; every other setting (the
# model's config, the data mixed and its SNRs, each loss weight, the schedule, batch size, seed,
# weight decay, gradient clipping, the weight average) shapes the weights trained, so a rerun that
# changes one is a new phase, and a finished phase is done only for a rerun with all of them alike.
# A setting added later is in the identity unless listed here.
NOT_IN_PHASE_IDENTITY = frozenset({
    # When it stops: a rerun that asks for no more than a finished phase ran is that phase
    # (_finished_phase), and a larger budget or more steps continue the current one.
    "train.steps", "train.max_minutes", "train.session_minutes",
    # Where and how fast it computes, not what: a phase split over calls may move to another
    # machine, and a run stopped by float16 overflows is resumed with train.amp=false (its message).
    "train.out_dir", "train.device", "train.amp", "train.amp_dtype", "train.deterministic", "train.threads",
    "train.loader_threads", "train.loader_processes", "train.progress", "train.checkpoint_seconds",
    # What it validates and reports: the weights trained are the same (best.safetensors' score is
    # kept under its own key, validation_key).
    "train.val_every", "train.metrics", "train.select_by",
    "data.val_clean_dir", "data.val_noise_dir", "data.val_examples", "data.val_seconds",
    # Where the training data is, not what: a phase split over machines (train.session_minutes)
    # may find the same corpus at another path on each (recipes/train_denoiser_gpu.sh DATA).
    "data.clean_dir", "data.noise_dir",
    # Read by a new run only: a resume continues the run's own weights (_warn_init_from_unused).
    "train.init_from",
})


def _phase_identity(run: RunConfig) -> dict:
    """The settings that make a phase the one it is (NOT_IN_PHASE_IDENTITY lists those left out),
    flat and as JSON values, the model's config with its defaults filled in."""
    return {k: v for k, v in _flat_settings(run.to_dict()).items() if k not in NOT_IN_PHASE_IDENTITY}


def _run_identities(run: RunConfig) -> tuple[dict, dict]:
    """``run``'s phase identity and the defaults' (with ``run``'s model), what
    :func:`_identity_changes` compares a phase record with: computed once for all the records."""
    return _phase_identity(run), _phase_identity(RunConfig(model=run.model))


def _identity_changes(saved: dict, identities: tuple[dict, dict]) -> dict[str, tuple]:
    """``{setting: (was, now)}`` for each setting of a run's phase identity that differs from
    ``saved`` (a phase record's); ``identities`` is the run's :func:`_run_identities`. A setting
    ``saved`` lacks (added to audioae since) counts as its default, which the saved run trained with."""
    now, default = identities
    missing = object()
    changed = {}
    for k, v in now.items():
        was = saved.get(k, missing)
        if was is missing:
            was = default.get(k, missing)
        if was != v:
            changed[k] = (None if was is missing else was, v)
    return changed


def _phase_of(run: RunConfig, start_step: int, minutes: float) -> dict:
    """What a resume point records of its phase: the schedule's settings, the settings that make
    it the phase it is (:func:`_phase_identity`), the step it started at, the minutes on its clock
    (the max_minutes budget and decay_by_time count those) and the train.steps it trains to (with
    the budget, what says whether it ran to its end)."""
    return {"settings": {k: getattr(run.train, k) for k in PHASE_SETTINGS}, "identity": _phase_identity(run),
            "start_step": start_step, "minutes": minutes, "steps": run.train.steps}


def _identity_of(record: dict) -> dict | None:
    """A phase record's identity; None in an older one (its schedule alone)."""
    identity = record.get("identity")
    if identity is not None and not isinstance(identity, dict):
        raise TypeError("identity")
    return identity


def _saved_phase(meta: dict) -> dict | None:
    """The phase a resume point recorded, or None (an older one, or unreadable);
    ``steps`` None where it records none, ``identity`` None where it records none (both: older
    resume points)."""
    try:
        phase = json.loads(meta.get("phase", "null"))
        if not (isinstance(phase, dict) and isinstance(phase.get("settings"), dict)):
            return None
        steps = phase.get("steps")
        return {"settings": phase["settings"], "identity": _identity_of(phase), "start_step": int(phase["start_step"]),
                "minutes": float(phase["minutes"]), "steps": None if steps is None else int(steps)}
    except (ValueError, TypeError, KeyError):
        return None


def _saved_phases_done(meta: dict, path: Path) -> list[dict]:
    """The finished phases a resume point recorded before its own (:func:`_phase_done`); none in
    older files. An unreadable list is named in a warning and taken as none: its phases, rerun,
    train again as new ones."""
    try:
        done = json.loads(meta.get("phases_done", "[]"))
        return [{"settings": dict(d["settings"]), "identity": _identity_of(d), "start_step": int(d["start_step"]),
                 "end_step": int(d["end_step"]), "minutes": float(d["minutes"]), "ended": str(d["ended"])}
                for d in done]
    except (ValueError, TypeError, KeyError):
        log.warning("%s: its list of finished phases is unreadable; a rerun of one trains it again as a new phase",
                    path)
        return []


def _phase_done(phase: dict, step: int) -> dict | None:
    """``phase``, which a resume point at ``step`` recorded as its own, as a finished phase, or None
    when it did not run to its end (stopped by a signal, an error or train.session_minutes): ended
    by ``"time"`` (its max_minutes spent) or by ``"steps"`` (it reached its train.steps)."""
    budget = phase["settings"].get("max_minutes")
    if isinstance(budget, (int, float)) and budget > 0 and phase["minutes"] >= budget:
        ended = "time"
    elif phase.get("steps") is not None and step >= phase["steps"]:
        ended = "steps"
    else:
        return None
    return {"settings": phase["settings"], "identity": phase.get("identity"), "start_step": phase["start_step"],
            "end_step": step, "minutes": phase["minutes"], "ended": ended}


def _finished_phase(run: RunConfig, done: list[dict]) -> dict | None:
    """The finished phase of ``done`` that this invocation would train again, or None: one with
    the same identity (:func:`_phase_identity`: the schedule, the losses, the data, the model, ...)
    that ran at least as far as this invocation asks, i.e. train.steps within the step it ended at,
    or a train.max_minutes within the minutes it ran (max_minutes is no part of the identity: a
    rerun of a recipe's stage with another MINUTES is still that stage). A phase asked for more
    than it ran, or under another setting (a later stage that reuses a schedule with another
    loss), is a new phase. Phases an older version recorded keep no identity and are never done."""
    tc = run.train
    identities = None  # the run's, computed once for all the phases (and not when none records one)
    for phase in reversed(done):
        if phase.get("identity") is None:
            continue
        if identities is None:
            identities = _run_identities(run)
        if _identity_changes(phase["identity"], identities):
            continue
        if tc.steps <= phase["end_step"] or 0 < tc.max_minutes <= phase["minutes"]:
            return phase
    return None


def _phase_lr(phase: dict, step: int, fallback: float) -> float:
    """The rate ``phase`` (as a resume point records it) trains at at ``step``: what a run that
    trains nothing more ended at; ``fallback`` where its settings are not those of a TrainConfig."""
    try:
        tc = dataclasses.replace(TrainConfig(), **{k: phase["settings"][k] for k in PHASE_SETTINGS})
    except (KeyError, TypeError, ValueError):
        return fallback
    return scheduled_lr(tc, phase["minutes"] / tc.max_minutes if tc.decay_by_time else 0.0, step, phase["start_step"])


def _resumed_phase(run: RunConfig, step: int, saved: dict | None) -> tuple[int, float, str, bool]:
    """Where a resume at ``step`` continues the schedule: the step its decay counts from, the
    minutes already on its clock (the max_minutes budget and decay_by_time), a few words that say
    so, and whether it continues the saved phase. The same phase identity as the resume point's
    (:func:`_phase_identity`: every setting that shapes training, train.max_minutes and
    train.steps not among them) continues that phase: a run interrupted, then resumed with the same
    command, as recipes/train_denoiser_gpu.sh's split calls are, or with a larger budget or more
    steps. Any other change (a fine-tuning stage's rate, loss or data) starts a new phase here at 0
    minutes with its own budget, with or without train.session_minutes. A phase recorded before
    2026-12-07 keeps its schedule alone, which then decides."""
    tc = run.train
    if saved is None:
        changed = None
    elif saved["identity"] is None:
        changed = {f"train.{k}": (saved["settings"].get(k), getattr(tc, k)) for k in PHASE_SETTINGS
                   if k != "max_minutes" and saved["settings"].get(k) != getattr(tc, k)}
    else:
        changed = _identity_changes(saved["identity"], _run_identities(run))
    if changed == {}:
        was = saved["settings"].get("max_minutes")
        budget = f" with train.max_minutes {was} -> {tc.max_minutes}" if was != tc.max_minutes else ""
        return (saved["start_step"], saved["minutes"],
                f"continuing its phase, begun at step {saved['start_step']}{budget} ({saved['minutes']:.2f} min on "
                f"its clock)", True)
    why = ("its resume point records no schedule (written before 2026-12-07)" if changed is None else
           "; ".join(f"{k} {json.dumps(was)} -> {json.dumps(now)}" for k, (was, now) in changed.items()))
    return step, 0.0, f"a new phase ({why}): the learning-rate decay and the max_minutes budget start again here", False


def decayed_lr(tc: TrainConfig, done: float) -> float:
    """The learning rate when ``done`` of the decay is behind (steps or wall time as a fraction;
    cosine from ``lr`` to ``lr_final``, then ``lr_final``)."""
    frac = min(1.0, max(0.0, done))
    return tc.lr_final + (tc.lr - tc.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))


def scheduled_lr(tc: TrainConfig, time_share: float, step: int, phase_start: int) -> float:
    """The rate at ``step`` of a phase that began at ``phase_start``: decayed over the share of the
    wall-time budget spent (``decay_by_time``) or over ``decay_steps``, else constant. One rule for
    the training loop and a resume (whose rate a run that trains nothing more reports)."""
    if tc.decay_by_time:
        return decayed_lr(tc, time_share)
    if tc.decay_steps:
        return decayed_lr(tc, (step - phase_start) / tc.decay_steps)
    return tc.lr
