"""The training loop: :func:`train` builds the model, finds where it starts (:mod:`.resume`) and runs
the steps (loss, gradients applied or skipped, the weight average, validation, ``log.jsonl``,
resume points) until ``train.steps`` or its time budget, or until Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel

from .. import losses
from ..checkpoint import save_checkpoint
from ..data.mixing import MixConfig, Source, StepMixer, mixed_batches
from ..fileio import atomic_write_bytes
from ..models import SpectralAutoencoder, build_model, family, takes_audio
from .config import (
    RunConfig,
    TrainConfig,
    _section,
    check_corruption_inputs,
    check_deterministic_support,
    check_model_settings_read,
)
from .loss import batch_loss, corrupt_batch, step_seed
from .phases import _phase_of, scheduled_lr
from .records import _provenance, _record_settings
from .resume import _nothing_to_train, _prepare_folder, _save_resume_point, _starting_point, _weight_average
from .runtime import _amp_dtype, _reproducible, _setup_device, _time_used, replica_divergence
from .validation import (
    _sources,
    _validation_sources,
    input_scores,
    make_validation_set,
    validate,
    validation_key,
    validation_line,
)

log = logging.getLogger(__package__)  # audioae.train, whichever module logs


MAX_NONFINITE_STEPS = 20  # non-finite gradients in a row before training stops
# float16 steps in a row the GradScaler skipped for overflow before training stops: a few at the start
# are its calibration (65536 halves until the gradients fit); 40 halve it to 2**-24, where no
# overflow is left to calibrate and the gradients themselves are inf/NaN
MAX_SCALER_SKIPS = 40
LOG_EVERY = 50  # steps between log.jsonl records (and validation steps)


class TrainingStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training between two steps, after the resume point was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _StopSignals:
    """While one process trains, SIGINT and SIGTERM ask the loop to stop at the next step
    boundary, so the resume point it then saves holds whole steps (an interrupt inside the
    optimiser's update would not). A second signal acts at once. Entered before the loader forks
    its workers, which inherit it and keep running until the loop shuts them down. Under DDP the
    ranks could stop at different steps and wait on each other, so there the signals keep their
    defaults and the periodic checkpoint is the resume point."""

    def __init__(self, enabled: bool):
        self.received: int | None = None
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: dict = {}

    def __enter__(self) -> _StopSignals:
        if self._enabled:
            self._previous = {sig: signal.signal(sig, self._note) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum: int, frame) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def train(run: RunConfig, resume: bool = True, report=None) -> dict:
    """Train ``run``; returns a summary. Writes ``best.safetensors`` (best validation score of
    ``train.select_by``, SI-SDR by default),
    ``last.safetensors`` + ``last.optim.safetensors`` (resume), ``run.json`` and ``log.jsonl``;
    with ``train.ema_decay`` also ``ema.safetensors`` and ``last.ema.safetensors``.
    ``report(line)`` gets the lines meant for a person (the resume, each validation); without it
    they are logged at INFO. A progress bar on a terminal writes the validations itself.
    ``train.deterministic`` holds for the whole call (:func:`_reproducible`)."""
    with _reproducible(run.train):
        return _train(run, resume, report)


@dataclass
class _Loop:
    """What the step loop of :func:`_train` carries from step to step, and what its helpers
    (:func:`_train_step`, :func:`_account_step`, :func:`_validate_and_log`, :func:`_summary`) share."""

    run: RunConfig
    model: SpectralAutoencoder
    forward: torch.nn.Module  # the model, or its DDP wrapper under torchrun
    evaluated: torch.nn.Module  # what validation scores and best keeps: the model or its weight average
    ema: AveragedModel | None
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype
    out: Path
    rank: int
    world: int
    val_key: dict
    step: int
    phase_start: int
    phases_done: list[dict]
    best: float
    best_input: float | None
    minutes_total: float  # the run's minutes as the last resume point recorded them (the summary's minutes_done)
    phase_minutes: float  # the phase's clock, likewise
    minutes_before_run: float  # the run's minutes when this call began training
    t0: float  # when this call's clock started (time.monotonic)
    clock0: float  # when the phase's clock started: minutes_before earlier than t0
    deadline: float  # the phase's train.max_minutes on that clock
    stop_share: float  # the share of the budget at which this invocation stops (1: the run's end)
    t_last_ckpt: float
    audio_seconds: float = 0.0
    skipped: int = 0  # non-finite steps skipped
    bad_in_a_row: int = 0
    scaler_skipped: int = 0  # float16 steps its GradScaler skipped (overflow)
    overflow_in_a_row: int = 0

    def resume_point(self, keep_loss_scale: bool = True) -> None:
        """Write the resume point at this step; ``keep_loss_scale=False``: without float16's loss scale."""
        now = time.monotonic()
        # The summary reports what the resume point holds: computed later, it would be a little more,
        # and the next call's minutes_done (from the file) would come out lower than this one's.
        self.minutes_total = self.minutes_before_run + (now - self.t0) / 60
        self.phase_minutes = (now - self.clock0) / 60
        _save_resume_point(self.model, self.opt, self.step, self.out, self.ema, self.minutes_total,
                           self.scaler if keep_loss_scale else None,
                           _phase_of(self.run, self.phase_start, self.phase_minutes), self.phases_done)


def _train(run: RunConfig, resume: bool, report) -> dict:
    say = report or (lambda line: log.info("%s", line))
    tc = run.train
    device, started_dist, rank, world = _setup_device(tc)
    model = _build_checked_model(run)  # before the folder: a bad config leaves none
    out = Path(tc.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the run's output folder {out} is a file; give a folder (--out or train.out_dir)")
    sr = model.config.sample_rate
    val_key = validation_key(run, model)  # recorded with best.safetensors' score
    # On the device before the optimizer: a resumed optimizer state is cast to its parameters'
    # device as it loads, and model.to() later would move the parameters and leave it on the CPU.
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    use_amp = tc.amp and device.type == "cuda"
    amp_dtype = _amp_dtype(tc.amp_dtype)
    # Before the resume: a resume point keeps float16's loss scale.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    state, resuming = _starting_point(run, model, opt, scaler, out, val_key, rank, resume, say)
    idle = _nothing_to_train(tc, out, state, rank)
    # The data before the folder too: a missing or empty corpus folder leaves no empty run behind. Not
    # read when there is nothing to train (a finished run rerun spent most of its time loading it).
    sources = None if idle else _sources(run.data, sr, val=False)
    val_set = (make_validation_set(model, run.data, _validation_sources(run.data, sr, sources))
               if rank == 0 and not idle else None)
    _prepare_folder(out, rank, resume, resuming, state.step)
    model.train()
    ema = _weight_average(model, tc.ema_decay, state.saved_average)
    evaluated = model if ema is None else ema.module  # what validation scores and best keeps
    forward = model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    mixers = [] if idle else _step_mixers(run, sources, sr, rank, state.step)
    # With nothing to train, run.json keeps what made the weights (and lists no resume that trained nothing).
    if rank == 0 and not idle:
        _record_settings(out, run, state.step if resuming else None, state.record)

    bar = _progress_bar(tc, state.step) if rank == 0 else None
    # The input's scores, the same at every validation: scored here, before the clock starts (PESQ
    # and STOI of the input, scored at every first validation, came out of every session's budget).
    val_inputs = (input_scores(evaluated, val_set, tc.metrics) if rank == 0 and not idle
                  else None)
    t_last_ckpt = time.monotonic()
    t0 = time.monotonic()
    # The phase's clock: it started minutes_before earlier when this invocation continues a phase (or
    # carries a split run's clock, train.session_minutes).
    clock0 = t0 - 60 * state.minutes_before
    loop = _Loop(run, model, forward, evaluated, ema, opt, scaler, device, use_amp, amp_dtype, out, rank, world,
                 val_key, state.step, state.phase_start, state.phases_done, state.best, state.best_input,
                 minutes_total=state.minutes_total, phase_minutes=state.minutes_before,
                 minutes_before_run=state.minutes_total, t0=t0, clock0=clock0,
                 deadline=clock0 + 60 * tc.max_minutes if tc.max_minutes > 0 else math.inf,
                 stop_share=(min(1.0, (state.minutes_before + tc.session_minutes) / tc.max_minutes)
                             if tc.session_minutes else 1.0),
                 t_last_ckpt=t_last_ckpt)
    loader = "inline" if tc.loader_threads <= 0 else "processes" if tc.loader_processes else "threads"
    with (_StopSignals(world == 1) as stop,
          contextlib.nullcontext() if idle else
          mixed_batches(mixers, tc.batch_size, loader, pin_memory=device.type == "cuda") as batches):
        if not idle:
            _run_steps(loop, batches, stop, bar, val_set, val_inputs, say)
    if bar is not None:
        bar.close()
    if ema is not None and rank == 0 and state.done_before is None:  # (it would name the finished phase's settings)
        save_checkpoint(ema.module, out / "ema.safetensors",
                        {"step": loop.step, "run": _provenance(run, out, loop.minutes_total)})
    summary = _summary(loop, state.step if resuming else None)
    # One process or torchrun's: the folder says how its last training call went (fields: docs/training.md).
    # A call that trained nothing leaves the one before, as it leaves the weights and run.json.
    if rank == 0 and not idle:
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    if started_dist:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _build_checked_model(run: RunConfig) -> SpectralAutoencoder:
    """The run's model, its weights drawn from ``train.seed``, after every check of the run's
    settings against it that needs no file: a refused run has written nothing."""
    tc = run.train
    torch.manual_seed(tc.seed)
    model = build_model(run.model, _section(family(run.model).config, run.model_config, "model.config"))
    if not takes_audio(model):
        raise ValueError(f"audioae train trains spectrogram models; {run.model} with input "
                         f"{model.config.input!r} trains with fit_arrays (see audioae images)")
    check_corruption_inputs(run, model)
    check_model_settings_read(model)
    check_deterministic_support(run, model)
    losses.check_proxy_imports({"pesq_weight": tc.pesq_weight, "stoi_weight": tc.stoi_weight})
    for name in ("segment_seconds", "val_seconds"):  # 0 samples was numpy's "zero-size array to reduction ..."
        samples = int(getattr(run.data, name) * model.config.sample_rate)
        if samples < model.config.n_fft:
            raise ValueError(f"data.{name}={getattr(run.data, name):g} is {samples} samples at the model's "
                             f"{model.config.sample_rate} Hz, shorter than one STFT window (n_fft={model.config.n_fft})")
    return model


def _step_mixers(run: RunConfig, sources: tuple[Source, Source], sr: int, rank: int, step: int) -> list[StepMixer]:
    """The mixers of the training batches from ``step`` on. Each step's batch from (seed, rank,
    step) alone: each rank draws its own, and a resumed run draws the batches the uninterrupted run
    would have (it was seeded from the resume step, and drew others), whatever the number of
    mixers: mixer k mixes steps step + k, step + k + K, ..."""
    tc = run.train
    mix = MixConfig(run.data.segment_seconds, run.data.snr_low, run.data.snr_high, reverb_prob=run.data.reverb_prob,
                    second_noise_prob=run.data.second_noise_prob)
    n_mixers = max(1, tc.loader_threads)
    return [StepMixer(*sources, sr, mix, key=(tc.seed, rank), first_step=step + k, stride=n_mixers)
            for k in range(n_mixers)]


def _run_steps(loop: _Loop, batches, stop: _StopSignals, bar, val_set, val_inputs, say) -> None:
    """Train from ``loop.step`` until train.steps or this call's share of the time budget, with a
    resume point every train.checkpoint_seconds and at the end; a signal stops it at the next step
    boundary, with a resume point (:class:`TrainingStopped`)."""
    tc, sr = loop.run.train, loop.model.config.sample_rate
    while loop.step < tc.steps:
        if stop.received is not None:
            loop.resume_point()
            if bar is not None:
                bar.close()
            raise TrainingStopped(f"{signal.Signals(stop.received).name} at step {loop.step}; "
                                  f"{loop.out / 'last.safetensors'} holds it, and the same command resumes",
                                  stop.received)
        time_used = _time_used(loop.clock0, loop.deadline, loop.world, loop.device)
        last_step = loop.step + 1 == tc.steps or time_used >= loop.stop_share
        outcome, loss, parts, clean = _train_step(loop, batches, time_used)
        _account_step(loop, outcome, loss)
        loop.step += 1
        loop.audio_seconds += clean.shape[0] * clean.shape[1] / sr * loop.world
        if bar is not None:
            _show_progress(bar, loop, loss)
        if loop.rank != 0:
            if last_step:
                break
            continue
        _validate_and_log(loop, loss, parts, last_step, val_set, val_inputs, bar, say)
        if time.monotonic() - loop.t_last_ckpt > tc.checkpoint_seconds or last_step:
            loop.resume_point()
            loop.t_last_ckpt = time.monotonic()
        if last_step:
            break


def _train_step(loop: _Loop, batches, time_used: float) -> tuple[str, torch.Tensor, dict, torch.Tensor]:
    """One step on the next batch: ``(outcome, loss, its parts, the clean batch)``, the outcome
    :func:`_apply_gradients`' ("applied", "overflow" or "bad")."""
    tc, model, opt, scaler = loop.run.train, loop.model, loop.opt, loop.scaler
    clean, noise, snr = next(batches)
    # non_blocking: a pinned batch (process loader) copies while the GPU still computes.
    clean, noise, snr = (t.to(loop.device, non_blocking=True) for t in (clean, noise, snr))
    # gaussian and patches draw too: from the step's own generator, as the mixer does
    draws = None if model.config.corruption not in ("gaussian", "patches") else \
        torch.Generator(device=clean.device).manual_seed(step_seed((tc.seed, loop.rank), loop.step))
    with torch.no_grad():
        noisy, spec = corrupt_batch(model, clean, noise, snr, draws)
    with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.use_amp):
        loss, parts = batch_loss(model, clean, spec, tc, forward=loop.forward, noisy=noisy)
    if tc.decay_steps or tc.decay_by_time:
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(tc, time_used, loop.step, loop.phase_start)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return _apply_gradients(model, opt, scaler, tc.grad_clip, loss), loss, parts, clean


def _account_step(loop: _Loop, outcome: str, loss: torch.Tensor) -> None:
    """Count a step's outcome (before its step is counted); an applied step updates the weight
    average. Too many overflows or bad steps in a row stop the run, with a resume point of the last
    applied weights."""
    out, step = loop.out, loop.step
    if outcome == "applied":
        loop.bad_in_a_row = loop.overflow_in_a_row = 0
        if loop.ema is not None:
            loop.ema.update_parameters(loop.model)
    elif outcome == "overflow":  # fp16's scaler skipped it: not counted as bad, but no update to average
        loop.scaler_skipped += 1
        loop.overflow_in_a_row += 1
        if loop.overflow_in_a_row >= MAX_SCALER_SKIPS:
            if loop.rank == 0:
                loop.resume_point(keep_loss_scale=False)
            if loop.world > 1:
                dist.barrier()
            raise FloatingPointError(
                f"{out}: float16's GradScaler skipped {loop.overflow_in_a_row} steps in a row on inf/NaN gradients "
                f"(up to step {step + 1}, loss scale now {loop.scaler.get_scale():g}); last.safetensors holds the "
                f"last applied weights. train.amp_dtype=\"bfloat16\" or train.amp=false runs without it.")
    else:
        loop.skipped += 1
        loop.bad_in_a_row += 1
        if loop.bad_in_a_row >= MAX_NONFINITE_STEPS:
            if loop.rank == 0:  # the weights are still the last finite ones: keep them
                # Not the loss scale: the streak halved it every step (1/16 after 20), and a
                # resume that kept it would grow it back by doubling once per 2000 steps.
                loop.resume_point(keep_loss_scale=False)
            if loop.world > 1:  # every rank got here (same reduced gradients): let rank 0 finish
                dist.barrier()
            raise FloatingPointError(
                f"{out}: the loss or its gradient was non-finite for {loop.bad_in_a_row} steps in a row "
                f"(up to step {step + 1}, loss {float(loss.detach())}); those updates were skipped and "
                f"last.safetensors holds the last finite weights. "
                + ("On CUDA, train.amp=false runs without mixed precision." if loop.use_amp else ""))


def _progress_bar(tc: TrainConfig, step: int):
    """tqdm's bar on a terminal, else None: a redirected log got every update of the bar."""
    if not (tc.progress and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=tc.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)


def _show_progress(bar, loop: _Loop, loss: torch.Tensor) -> None:
    if loop.device.type != "cuda" or loop.step % LOG_EVERY == 0:  # reading the loss waits for the GPU
        rate = loop.audio_seconds / max(time.monotonic() - loop.t0, 1e-9)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", audio_s_per_s=f"{rate:.0f}")
    bar.update(1)


def _validate_and_log(loop: _Loop, loss: torch.Tensor, parts: dict, last_step: bool, val_set, val_inputs,
                      bar, say) -> None:
    """On the rank that validates, after the step: validate (every train.val_every steps and at the
    last), keep a better ``best.safetensors``, say the validation's line, and log the step to
    ``log.jsonl`` (with every validation, and every LOG_EVERY steps)."""
    tc, step, scaler = loop.run.train, loop.step, loop.scaler
    validating = step % tc.val_every == 0 or last_step
    if not (validating or step % LOG_EVERY == 0):
        return
    record = {"step": step, "loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()},
              "lr": loop.opt.param_groups[0]["lr"], **({"skipped": loop.skipped} if loop.skipped else {}),
              **({"scaler_skipped": loop.scaler_skipped, "loss_scale": scaler.get_scale()}
                 if scaler.is_enabled() else {})}
    if validating:
        out = loop.out
        record["val"] = validate(loop.evaluated, val_set, tc.metrics, val_inputs)
        # NaN only from a non-finite output (eps keeps silence finite). Rank 0 alone validates:
        # under DDP the other ranks wait in their next all-reduce until torchrun ends them.
        if not math.isfinite(record["val"]["si_sdr"]):
            raise FloatingPointError(
                f"{out}: at step {step} the model's output on the validation set is not finite (SI-SDR "
                f"{record['val']['si_sdr']}): its weights no longer work (train.lr {tc.lr} too high?). "
                f"best.safetensors, if written, holds the best weights before that; last.safetensors may "
                f"hold broken ones, so start again with --no-resume, or from best.safetensors with "
                f"--set train.init_from=... and another --out")
        if record["val"][tc.select_by] > loop.best:
            loop.best, loop.best_input = record["val"][tc.select_by], record["val"].get(tc.select_by + "_in")
            save_checkpoint(loop.evaluated, out / "best.safetensors",
                            {"step": step, "val": record["val"], "validation": loop.val_key,
                             "run": _provenance(loop.run, out,
                                                loop.minutes_before_run + (time.monotonic() - loop.t0) / 60)})
        line = validation_line(step, record["val"], (time.monotonic() - loop.t0) / 60)
        if bar is not None:
            bar.write(line)
        else:
            say(line)
    with open(loop.out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _summary(loop: _Loop, resumed_at_step: int | None) -> dict:
    """How this call went: the JSON ``audioae train`` prints and ``summary.json`` keeps (fields:
    docs/training.md)."""
    tc, best, scaler = loop.run.train, loop.best, loop.scaler
    summary = {"steps": loop.step, "resumed_at_step": resumed_at_step, "select_by": tc.select_by,
               "best_val": best if math.isfinite(best) else None,
               "best_val_input": loop.best_input if math.isfinite(best) else None,
               "seconds": time.monotonic() - loop.t0,
               "audio_seconds": loop.audio_seconds, "out_dir": str(loop.out), "world_size": loop.world,
               "final_lr": loop.opt.param_groups[0]["lr"], "skipped_steps": loop.skipped,
               # float16 only (else 0 and None): overflow skips are its calibration, not bad steps
               "scaler_skipped_steps": loop.scaler_skipped,
               "final_loss_scale": scaler.get_scale() if scaler.is_enabled() else None,
               "minutes_done": loop.minutes_total, "phase_minutes": loop.phase_minutes}
    if loop.world > 1:
        summary["replica_max_abs_diff"] = replica_divergence(loop.model)
    return summary


def _apply_gradients(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     grad_clip: float, loss: torch.Tensor) -> str:
    """Clip and apply the gradients. Returns "applied"; "bad" when the step was bad and nothing
    was applied; "overflow" when float16's GradScaler skipped it (inf/NaN gradients at its scale,
    which it has now lowered): nothing was applied either.

    Bad: a non-finite loss or gradient norm. The loss counts too: log(x) of a negative x is NaN
    and its gradient 1/x finite, so a KL sparsity penalty with a target outside (0, 1) trained
    every step on a NaN loss and the run reported no skipped step. fp16's GradScaler skips steps
    whose scaled gradients overflow and lowers its scale: those are its calibration, so with it
    only a non-finite loss counts as bad. Under DDP the gradients are already reduced but each
    rank has its own loss: the ranks agree on the verdict, so that all skip or step together.
    """
    scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    finite = torch.isfinite(loss.detach())
    if not scaler.is_enabled():
        finite = finite & torch.isfinite(norm)
    if dist.is_available() and dist.is_initialized():
        flag = finite.to(norm.dtype).reshape(1)  # on the training device: NCCL only carries CUDA tensors
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = flag[0] > 0
    good = bool(finite)
    if good and scaler.is_enabled():
        # The scaler skips by itself on inf/NaN gradients only: a NaN loss with finite ones (the
        # 1/x above) it steps on, while the step is counted as skipped.
        scaler.step(opt)
    elif good:
        opt.step()
    scaler.update()  # after unscale_ alone too: an overflow still lowers the scale
    if not good:
        return "bad"
    # The scaler's own test (found_inf) is for inf/NaN in the unscaled gradients, which make their
    # norm inf/NaN: the same verdict, without its private state. Under DDP the gradients, and so
    # the norm, are the same on every rank. (bool(finite) above already waited for the device.)
    if scaler.is_enabled() and not bool(torch.isfinite(norm)):
        return "overflow"
    return "applied"
