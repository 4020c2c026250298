"""The resume point, and where a call of :func:`~audioae.train.train` starts: ``last.safetensors``,
``last.optim.safetensors`` (with float16's loss scale) and ``last.ema.safetensors`` written and
read back, with their checks; the score a resumed run must beat; and the folder made ready (the log
past the resume point dropped, or an earlier run's files removed). Safetensors, never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import (
    CheckpointError,
    check_sha256,
    checkpoint_extra,
    read_checkpoint,
    safetensors_metadata,
    save_checkpoint,
    write_with_sha256,
)
from ..config import differences
from ..fileio import atomic_write_bytes
from ..models import Autoencoder, SpectralAutoencoder
from .config import RunConfig, TrainConfig
from .growth import SIGNAL_FIXED, _init_from
from .phases import (
    PHASE_SETTINGS,
    _finished_phase,
    _phase_done,
    _phase_lr,
    _resumed_phase,
    _saved_phase,
    _saved_phases_done,
    scheduled_lr,
)
from .records import _read_run_record, _warn_init_from_unused

log = logging.getLogger(__package__)  # audioae.train, whichever module logs


def _save_optimizer(opt: torch.optim.Optimizer, step: int, path: Path, minutes_done: float,
                    scaler: torch.amp.GradScaler | None = None, phase: dict | None = None,
                    phases_done: list[dict] | None = None) -> None:
    # No best score: best.safetensors records the one a resumed run must beat (_resumed_best).
    tensors, meta = {}, {"step": str(step), "minutes_done": repr(minutes_done), **_scaler_metadata(scaler)}
    if phase is not None:
        meta["phase"] = json.dumps(phase)
    if phases_done:
        meta["phases_done"] = json.dumps(phases_done)
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"{i}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    write_with_sha256(path, st_save(tensors, metadata=meta))


def _save_resume_point(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, out: Path,
                       ema: AveragedModel | None = None, minutes_done: float = 0.0,
                       scaler: torch.amp.GradScaler | None = None, phase: dict | None = None,
                       phases_done: list[dict] | None = None) -> None:
    """``last.safetensors`` and ``last.optim.safetensors`` (and ``last.ema.safetensors`` with
    train.ema_decay): what a rerun resumes from; ``minutes_done``: the run's minutes of training in
    all its invocations; ``phase``: the phase it trains in (:func:`_phase_of`);
    ``phases_done``: the earlier phases that ran to their end (:func:`_phase_done`), which a rerun
    of one of them finds (:func:`_finished_phase`); the
    optimizer state also keeps ``scaler``'s loss scale when float16 AMP uses one.
    Each with its ``.sha256``, checked on resume (a changed byte of weights or moments loads
    without complaint otherwise), and each records ``step``: a run killed between these writes
    leaves parts of two steps, which a resume warns of (:func:`_check_resume_steps`)."""
    save_checkpoint(model, out / "last.safetensors", {"step": step})
    if ema is not None:
        save_checkpoint(ema.module, out / "last.ema.safetensors", {"step": step})
    _save_optimizer(opt, step, out / "last.optim.safetensors", minutes_done, scaler, phase, phases_done)


# float16 AMP's loss scale, in the optimizer state's metadata. Without it a resumed run started again
# at GradScaler's 65536 and skipped a few steps to overflows, or lost small gradients to underflow
# for up to growth_interval (2000) steps after a run had backed off.
SCALER_KEYS = ("loss_scale", "loss_scale_growth_tracker")


def _scaler_metadata(scaler: torch.amp.GradScaler | None) -> dict[str, str]:
    if scaler is None or not scaler.is_enabled():
        return {}
    state = scaler.state_dict()
    return {"loss_scale": repr(float(state["scale"])), "loss_scale_growth_tracker": str(int(state["_growth_tracker"]))}


def _restore_scaler(scaler: torch.amp.GradScaler | None, meta: dict, path: Path) -> None:
    """Load the loss scale a resume point kept into ``scaler`` (float16 AMP); a resume point of a
    run without one (float32, bfloat16, or an older one) leaves its initial scale."""
    if scaler is None or not scaler.is_enabled():
        return
    if not all(k in meta for k in SCALER_KEYS):
        log.info("%s keeps no float16 loss scale: it starts again at %g", path, scaler.get_scale())
        return
    try:
        scale, tracker = float(meta["loss_scale"]), int(meta["loss_scale_growth_tracker"])
    except ValueError:
        raise ValueError(f"{path}: its loss_scale metadata ({meta['loss_scale']!r}, "
                         f"{meta['loss_scale_growth_tracker']!r}) is not a number; restore the file, or start "
                         f"over with --no-resume or another --out") from None
    if not (math.isfinite(scale) and scale > 0 and tracker >= 0):
        raise ValueError(f"{path}: its loss scale {scale} (growth tracker {tracker}) is not a positive finite "
                         f"number; restore the file, or start over with --no-resume or another --out")
    scaler.load_state_dict({**scaler.state_dict(), "scale": scale, "_growth_tracker": tracker})


def _read_resume_average(path: Path, model: torch.nn.Module) -> tuple[Autoencoder, int | None]:
    """last.ema.safetensors, read and hashed once, before the folder is changed: the average's
    weights and the step it records. Its sha256 is checked first, so that a changed or truncated
    file is named as such; an average of another model (another run's, copied in) is refused here,
    not with torch's list of size mismatches once the folder was changed."""
    data = path.read_bytes()
    saved, meta = read_checkpoint(path, data=data)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in saved.state_dict().items()} != ours:
        changed = differences(dataclasses.asdict(saved.config), dataclasses.asdict(model.config))
        raise ValueError(f"{path}: the weight average of a differently shaped model ({saved.registry_name}; "
                         f"{', '.join(changed) or 'another family'}); restore the run's own, or start over with "
                         f"--no-resume or another --out")
    return saved, _recorded_step(meta)


def _recorded_step(meta: dict) -> int | None:
    """The step a resume point's checkpoint records (its metadata, as read_checkpoint read it)."""
    return json.loads(meta.get("extra", "{}")).get("step")  # (read_checkpoint checked it is an object)


def _check_resume_steps(out: Path, step: int, weights: int | None, ema_step: int | None = None) -> None:
    """Warn when last.safetensors (which recorded the step ``weights``) and last.ema.safetensors
    (``ema_step``) hold another step than the optimizer state's ``step``: a run killed between the
    writes of one resume point (a preemption after SIGTERM's save). It resumes as it always did, with a few
    steps' stale moments: refusing would cost the run its step count, its best score and its log
    for what Adam forgets within a few hundred steps."""
    for name, at in (("last.optim.safetensors", step), ("last.ema.safetensors", ema_step)):
        if at is not None and weights is not None and at != weights:
            log.warning("%s: last.safetensors is at step %s and %s at step %s: a resume point half written (a run "
                        "killed while saving it?); resuming at step %s with them as they are", out, weights, name,
                        at, step)


# What a run writes into its folder; a run that starts over (--no-resume, or no resume point) removes
# them first, so that nothing of an earlier run (an ema.safetensors a run without an average never
# replaces, a best.safetensors from before the new run's first validation) passes for the new run's.
RUN_FILES = ("best.safetensors", "last.safetensors", "last.optim.safetensors", "last.ema.safetensors",
             "ema.safetensors", "log.jsonl", "summary.json")


def _forget_previous_run(out: Path, why: str) -> None:
    found = [n for n in RUN_FILES if (out / n).is_file()]
    if not found:
        return
    if not (out / "run.json").is_file():  # every run writes it first: these files are someone else's
        raise ValueError(f"{out} holds {', '.join(found)} but no run.json: not a training run's folder, and "
                         f"starting over would delete them; choose another train.out_dir")
    log.warning("%s: starting over (%s): removing the earlier run's %s", out, why, ", ".join(found))
    for name in found:
        (out / name).unlink(missing_ok=True)
        (out / (name + ".sha256")).unlink(missing_ok=True)


def _forget_lost_steps(path: Path, step: int) -> None:
    """Drop the records of ``path`` (log.jsonl) past ``step``, the resume point: a run killed
    after logging them and before its next resume point lost those steps, which the resumed run
    trains and logs again (each step twice, with other numbers). A line cut short by the kill
    goes too."""
    if not path.is_file():
        return
    kept, lost = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            ok = record["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            lost += 1
    if lost:
        log.warning("%s: dropping %d record(s) past the resume point at step %d (the steps after it were lost "
                    "with the run that logged them)", path, lost, step)
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


def _weight_average(model: torch.nn.Module, decay: float, resume_from: Autoencoder | None) -> AveragedModel | None:
    """The EMA of ``model``'s weights (None when ``decay`` is 0), continued from ``resume_from``
    (the average a resumed run saved) when given; otherwise its first update copies the weights."""
    if not decay:
        return None
    # device=: the copy is moved (.to) where the model is, which also re-packs a GRU's weights into
    # cuDNN's one buffer; a bare deepcopy leaves them unpacked ("not part of single contiguous chunk")
    device = next(model.parameters()).device
    ema = AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay))
    if resume_from is not None:
        ema.module.load_state_dict(resume_from.state_dict())
        ema.n_averaged.fill_(1)  # not 0: the next update averages instead of copying
    return ema


def _load_optimizer(opt: torch.optim.Optimizer, path: Path,
                    scaler: torch.amp.GradScaler | None = None) -> tuple[int, float, dict | None, list[dict]]:
    """Load ``path`` into ``opt`` (and its float16 loss scale into ``scaler``, when given and
    enabled); returns the step, the run's minutes done, the phase it recorded (None in older
    files) and the finished phases before that one (:func:`_phase_done`). A "best" that older
    files also hold is ignored (:func:`_resumed_best`)."""
    try:
        data = path.read_bytes()  # read once: hashed, parsed and loaded from the same bytes
        # First, as for the weights: a truncated file is named as such. (State files written before
        # 2026-12-07 have no .sha256: then a file that is no safetensors is named so by st_load.)
        check_sha256(path, data)
        flat = st_load(data)
        meta = safetensors_metadata(path, data)
        if "step" not in meta:  # (a checkpoint of weights copied over it: a KeyError traceback)
            raise ValueError("it records no step")
        step, minutes_done = int(meta["step"]), float(meta.get("minutes_done", "0.0"))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types)
        raise ValueError(f"{path}: not a readable optimizer state ({exc}); restore it, or start over with "
                         f"--no-resume or another --out (the weights in last.safetensors can seed a new run "
                         f"with train.init_from)") from None
    sd = opt.state_dict()
    state: dict = {}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    _check_optimizer_fits(opt, state, path)
    _restore_scaler(scaler, meta, path)
    sd["state"] = state
    opt.load_state_dict(sd)
    return step, minutes_done, _saved_phase(meta), _saved_phases_done(meta, path)


def _check_optimizer_fits(opt: torch.optim.Optimizer, state: dict[int, dict], path: Path) -> None:
    """ValueError unless each parameter's saved moments have its shape: an optimizer state of
    another model (copied in from another run's folder) loaded without a word and failed at the
    first step with torch's "The size of tensor a (24) must match the size of tensor b (16)"."""
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, moments in sorted(state.items()):
        shapes = {tuple(v.shape) for v in moments.values() if v.dim()}  # (its step count is a scalar)
        if i < len(params) and not shapes - {tuple(params[i].shape)}:
            continue
        if i >= len(params):
            found = f"parameter {i}, and this model has {len(params)}"
        else:
            found = f"parameter {i} of shape {list(min(shapes - {tuple(params[i].shape)}))}, and this model's is {list(params[i].shape)}"
        raise ValueError(f"{path}: the optimizer state of another model (moments for {found}); restore the run's "
                         f"own, or start over with --no-resume or another --out (the weights in last.safetensors "
                         f"can seed a new run with train.init_from)")


# What a resumed run keeps of its model's settings: the signal (SIGNAL_FIXED), its input and output too.
RESUME_FIXED = (*SIGNAL_FIXED, "input", "output")


def _resume_weights(model: SpectralAutoencoder, last: Path) -> tuple[int | None, list[str]]:
    """Load the run's last weights; returns the step they record and the model settings that
    changed since. A model whose shapes changed is refused with the config fields that differ, not
    torch's list of size mismatches. Other changed settings (causal, unpool, sparsity, corruption,
    ...) are taken, and the caller names them in a warning when the resume trains (the same
    command with an edited config resumed without a word)."""
    saved, meta = read_checkpoint(last)
    ours, theirs = dataclasses.asdict(model.config), dataclasses.asdict(saved.config)
    changed = differences(theirs, ours)
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError:
        raise ValueError(f"{last.parent} holds a run of a differently shaped model ({saved.registry_name}; "
                         f"{', '.join(changed) or 'another family'}); resume with its settings, start over with "
                         f"--no-resume or another --out, or grow it with train.init_from") from None
    # Same shapes, other signal: the weights would load, and best_val be compared across two
    # validation sets (8 kHz and 16 kHz runs share every shape).
    moved = differences(theirs, ours, RESUME_FIXED)
    if moved:
        raise ValueError(f"{last.parent} holds a run of this model at another {', '.join(moved)}; resume with "
                         f"its settings, or start over with --no-resume or another --out")
    return _recorded_step(meta), changed


def _resumed_best(path: Path, key: dict, warn: bool = True) -> tuple[float, float | None]:
    """The score a resumed run's validations must beat to replace ``path`` (best.safetensors):
    the one recorded in it, or none when it was scored under another validation ``key``; and the
    unprocessed input's score beside it (None where not recorded). ``warn``: say why a file is
    not taken (false for a call that validates nothing).

    Not a score saved with the optimizer state (older files hold one, unread): a run
    resumed with another select_by would compare STOI with that SI-SDR in dB and never replace
    best.safetensors again, and a run killed after a validation improved it (before the next
    resume point) could replace it with a worse model."""
    if not path.is_file():
        return -math.inf, None
    try:
        extra = checkpoint_extra(path)
    except CheckpointError as exc:  # (an extra that is no JSON object is one: read_metadata checks it)
        if warn:
            log.warning("%s: unreadable (%s); the first validation replaces it", path, exc)
        return -math.inf, None
    recorded = extra.get("validation")
    if recorded is not None and recorded != key:
        if warn:
            log.warning("%s was scored under another validation (%s): the first validation of this run replaces it",
                        path, "; ".join(differences(recorded, key)))
        return -math.inf, None
    val = extra.get("val", {})
    score = val.get(key["select_by"])  # (a file of an older run records no key)
    return (-math.inf, None) if score is None else (float(score), val.get(key["select_by"] + "_in"))


@dataclass
class ResumeState:
    """Where a call of :func:`train` starts: a fresh run's defaults, or what :func:`_restore` read
    from the run's resume point (and its ``best.safetensors`` and ``run.json``)."""

    step: int = 0
    best: float = -math.inf  # the best score of select_by so far, best.safetensors'
    best_input: float | None = None  # the unprocessed input's score of select_by, beside best
    minutes_total: float = 0.0  # the run's minutes of training in all its invocations (never reset)
    minutes_before: float = 0.0  # the phase's clock when this call starts
    phase_start: int = 0  # the step this phase's schedule counts from
    phases_done: list[dict] = field(default_factory=list)  # the run's earlier phases that ran to their end (_phase_done)
    done_before: dict | None = None  # the finished phase this invocation's schedule would train again
    saved_average: Autoencoder | None = None  # the weight average a resumed run continues (last.ema.safetensors)
    record: dict | None = None  # a resumed run's run.json, read once: what it started with and its resumes


def _starting_point(run: RunConfig, model: SpectralAutoencoder, opt: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, out: Path, val_key: dict, rank: int, resume: bool,
                    say) -> tuple[ResumeState, bool]:
    """Where this call starts, and whether it resumes: the run's resume point in ``out``
    (:func:`_restore`), else ``train.init_from``'s weights grown into ``model``, else the model
    as built."""
    tc = run.train
    last, last_opt = out / "last.safetensors", out / "last.optim.safetensors"
    resuming = resume and last.is_file() and last_opt.is_file()
    if resume and last.is_file() != last_opt.is_file():  # half a resume point: never start over in silence
        have, lack = (last, last_opt) if last.is_file() else (last_opt, last)
        raise ValueError(f"{out} holds {have.name} but not {lack.name}, and a resume needs both; restore it, or "
                         f"start over with --no-resume (replacing this run's checkpoints) or another --out")
    state = ResumeState()
    if resuming:
        state = _restore(run, model, opt, scaler, out, val_key, rank, say)
    elif tc.init_from:
        _init_from(run, model)
    if resuming and not tc.ema_decay and (out / "last.ema.safetensors").is_file() and state.done_before is None:
        raise ValueError(f"{out} was trained with a weight average (last.ema.safetensors), and this run sets "
                         f"train.ema_decay=0: the average would stop, and ema.safetensors stay at step {state.step} as "
                         f"if it were the run's; resume with the run's train.ema_decay (run.json), or start over with "
                         f"--no-resume or another --out")
    return state, resuming


def _restore(run: RunConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             out: Path, val_key: dict, rank: int, say) -> ResumeState:
    """Load the run's resume point in ``out`` into ``model``, ``opt`` and ``scaler``, and decide
    which phase this call trains in (and whether it trains at all: a finished phase, or the run
    at train.steps); says the resume line and its warnings on the rank that validates."""
    tc = run.train
    last = out / "last.safetensors"
    state = ResumeState(record=_read_run_record(out))
    weights_step, model_changes = _resume_weights(model, last)
    state.step, state.minutes_total, saved_phase, state.phases_done = _load_optimizer(
        opt, out / "last.optim.safetensors", scaler)
    step = state.step
    ema_step = None
    if tc.ema_decay > 0 and (out / "last.ema.safetensors").is_file():
        state.saved_average, ema_step = _read_resume_average(out / "last.ema.safetensors", model)
    _check_resume_steps(out, step, weights_step, ema_step)
    state.phase_start, state.minutes_before, how, continuing = _resumed_phase(run, step, saved_phase)
    ended = None if continuing or saved_phase is None else _phase_done(saved_phase, step)
    # Other settings than the resume point's phase: a phase the run finished earlier (a recipe
    # rerun from its top after it stopped in a later stage) is done, not trained again over the
    # later stages' weights; otherwise a new phase, and the one it follows joins the finished ones.
    state.done_before = None if continuing else _finished_phase(run, state.phases_done)
    if state.done_before is None and ended is not None:
        state.phases_done = [*state.phases_done, ended]
    # The run config, not the saved state, sets the rate: the schedule's at this step (what the
    # summary's final_lr reports when nothing more is trained: the rate the run ended at).
    resumed_lr = scheduled_lr(tc, state.minutes_before / tc.max_minutes if tc.decay_by_time else 0.0, step,
                              state.phase_start)
    if state.done_before is not None and saved_phase is not None:  # the run stays in the phase it was in
        state.phase_start, state.minutes_before = saved_phase["start_step"], saved_phase["minutes"]
        resumed_lr = _phase_lr(saved_phase, step, resumed_lr)
    for group in opt.param_groups:
        group["lr"] = resumed_lr
    # A finished phase skipped says so in one line: nothing of the resume's warnings (other model
    # settings than the resume point's, a best.safetensors scored under another validation, an
    # unused init_from) concerns a call that trains and validates nothing.
    trains_on = state.done_before is None and step < tc.steps  # trains on from here, and says so
    if rank == 0:  # the rank that validates and keeps best.safetensors (and the summary's best_val)
        if trains_on and model_changes:
            log.warning("%s: resuming its run with other model settings (%s); --no-resume or another --out "
                        "starts a new run instead", out, "; ".join(model_changes))
        state.best, state.best_input = _resumed_best(out / "best.safetensors", val_key, warn=trains_on)
        if state.done_before is not None:
            d = state.done_before
            schedule = ", ".join(f"train.{k} {d['settings'][k]}" for k in PHASE_SETTINGS)
            say(f"{out}: this phase ({schedule}, its other settings alike) already ran to its end (steps "
                f"{d['start_step']}..{d['end_step']}, {d['minutes']:.2f} min) and the run went on to step "
                f"{step}: nothing to train, the weights stay as they are (--no-resume or another --out trains "
                f"it anew)")
        elif trains_on:  # step >= train.steps is said below, in one line: not "resumed" and then "nothing"
            say(f"resumed from {last} at step {step}: {how}")
    if tc.init_from and rank == 0 and trains_on:
        _warn_init_from_unused(out, tc.init_from, state.record)
    if step >= tc.steps and state.done_before is None:
        log.warning("%s already holds %d steps, train.steps is %d: nothing to train; raise --steps to "
                    "go on, or start over with --no-resume or another --out", out, step, tc.steps)
    return state


def _nothing_to_train(tc: TrainConfig, out: Path, state: ResumeState, rank: int) -> bool:
    """Whether this call trains nothing: a finished phase, the run at train.steps, or a phase
    whose budget is spent (said here: each further call of a split run trained one more step and
    said nothing)."""
    spent = (state.done_before is None and state.step < tc.steps and tc.max_minutes > 0
             and state.minutes_before >= tc.max_minutes)
    if spent and rank == 0:
        log.warning("%s: the phase's budget is spent (%.2f min on its clock, train.max_minutes=%g): nothing to "
                    "train; a larger train.max_minutes continues the phase, another schedule starts a new one",
                    out, state.minutes_before, tc.max_minutes)
    return spent or state.done_before is not None or state.step >= tc.steps


def _prepare_folder(out: Path, rank: int, resume: bool, resuming: bool, step: int) -> None:
    """Only now, with every check passed (a refused run leaves the folder as it was) and the weights
    in place (a bad init_from or resume point leaves no empty run behind): the log past the resume
    point dropped, or an earlier run's files removed, and the folder made."""
    if resuming and rank == 0:
        _forget_lost_steps(out / "log.jsonl", step)
    elif rank == 0:
        # Also without a resume point: a run killed before its first one (3 minutes by default) left
        # best.safetensors and log.jsonl, and the same command started over beside them, logging
        # every step a second time.
        _forget_previous_run(out, "--no-resume" if not resume else "no resume point (last.safetensors)")
    out.mkdir(parents=True, exist_ok=True)
