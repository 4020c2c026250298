"""One training loop for the spectrogram autoencoders (CPU, CUDA with mixed precision, DDP under
``torchrun``), and :func:`fit_arrays` for in-memory vector/image data (digits, patches).

A run is described by a :class:`RunConfig` read from TOML with ``section.key=value`` overrides::

    [model]
    name = "recurrent"
    [model.config]          # fields of the family's config dataclass
    hidden = 256
    [data]                  # folders, or synthetic signals when none are given
    clean_dir = "corpus/train/speech"
    noise_dir = "corpus/train/noise"
    [train]
    steps = 20000
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .. import losses
from ..checkpoint import (
    CheckpointError,
    check_sha256,
    checkpoint_extra,
    load_checkpoint,
    read_checkpoint,
    safetensors_metadata,
    save_checkpoint,
    write_with_sha256,
)
from ..config import coerce_value, differences, refuse_non_finite, typed_fields
from ..data.mixing import (
    MixConfig,
    Mixer,
    Source,
    StepMixer,
    bad_family_weights,
    folder_source,
    mixed_batches,
    synthetic_noise,
    synthetic_speech,
)
from ..device import pick_device
from ..enhance import SHIPPED_LEVEL_LIFT, LevelLift, denoise, estimate_clips, network_features
from ..fileio import atomic_write_bytes
from ..metrics import pesq_wb, si_sdr, stoi
from ..models import Autoencoder, SpectralAutoencoder, build_model, family, takes_audio
from ..models.corruption import add_gaussian, darken_patches, mix_at_snr

log = logging.getLogger("audioae.train")  # the name it had as one module


@dataclass(frozen=True)
class DataConfig:
    clean_dir: str = ""  # empty: synthetic speech-like signals
    noise_dir: str = ""  # empty: synthetic noise families
    val_clean_dir: str = ""  # empty: a fixed seed over the training sources
    val_noise_dir: str = ""
    val_examples: int = 24
    val_seconds: float = 3.0
    segment_seconds: float = 2.0
    snr_low: float = -5.0
    snr_high: float = 20.0
    reverb_prob: float = 0.0
    second_noise_prob: float = 0.0  # MixConfig.second_noise_prob: two noises in one example
    # Training noise only: {family (subfolder of noise_dir) = weight} scales how often that
    # family is drawn beyond its share of the duration ({babble = 2.0}: twice as often).
    noise_weights: dict = field(default_factory=dict)
    # The same for clean speech: {source (subfolder of clean_dir) = weight}, e.g. more of the
    # real recorded voices against text-to-speech ({espeak = 0.5}).
    speech_weights: dict = field(default_factory=dict)

    def __post_init__(self):
        refuse_non_finite(self, "data.")
        for name in ("segment_seconds", "val_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")
        if self.val_examples < 1:
            raise ValueError(f"data.val_examples must be at least 1, got {self.val_examples}")
        if self.snr_low > self.snr_high:
            raise ValueError(f"data.snr_low {self.snr_low} is above data.snr_high {self.snr_high}")
        for name in ("reverb_prob", "second_noise_prob"):  # the mixer took 5 as 1 and -1 as 0, in silence
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} is a share of the examples, within [0, 1]; got {getattr(self, name)}")
        for weights in ("noise_weights", "speech_weights"):  # here, before loading: the mixer's message names neither
            bad = bad_family_weights(getattr(self, weights))
            if bad:
                raise ValueError(f"data.{weights}: each weight must be a number >= 0, as in {{ babble = 2.0 }}; "
                                 f"got {bad}")
        for weights, folder in (("noise_weights", "noise_dir"), ("speech_weights", "clean_dir")):
            if getattr(self, weights) and not getattr(self, folder):  # weights of synthetic sources: ignored
                raise ValueError(f"data.{weights} weighs the subfolders of data.{folder}, which is not set "
                                 f"(the synthetic sources have none)")


VAL_METRICS = ("si_sdr", "pesq", "stoi")  # what validation can score (si_sdr_in, the input's, always)
AMP_DTYPES = ("auto", "bfloat16", "float16")  # train.amp_dtype


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    max_minutes: float = 0.0  # stop (with a final checkpoint) after this much wall time; 0: no limit
    batch_size: int = 16
    lr: float = 1e-3
    # Cosine decay from lr to lr_final over decay_steps steps counted from where this phase
    # started; afterwards lr_final. decay_steps 0: constant lr. Step-based, so every DDP rank uses
    # the same rate. A phase: the steps trained under one set of the settings that shape training
    # (the schedule, losses, data, model, batch size, seed, ...: NOT_IN_PHASE_IDENTITY lists the
    # settings left out, among them max_minutes and steps). A resume with the same ones continues
    # its phase (the same command after Ctrl-C, SIGTERM or a crash: the decay and the max_minutes
    # budget go on where they were), also with another max_minutes (a larger budget: the phase's
    # clock goes on); one that changes any of them starts a new phase at its first step, at 0
    # minutes with a budget of its own (a fine-tuning stage, as in recipes/train_denoiser.sh), and
    # says so. The resume point also lists the run's earlier phases that ran to their end (budget
    # spent, or train.steps reached): a rerun of one with all those settings alike and no more
    # steps or minutes than it ran, as when the recipe stopped in a later stage and is run again
    # from the top, trains nothing, says so in one line and leaves the weights alone. Older resume
    # points record no phase: a new one.
    lr_final: float = 0.0
    decay_steps: int = 0
    # Decay over max_minutes of wall time instead (a rented GPU: the budget is minutes and the
    # step rate unknown beforehand); every DDP rank follows rank 0's clock. Like decay_steps it
    # counts from the phase's start: a resume with another schedule is a warm restart with a new
    # budget.
    decay_by_time: bool = False
    # Split one phase's max_minutes over several invocations (a GPU lent in calls shorter than
    # the training): each stops after this much wall time with a resume point, and the same
    # command again continues the phase's clock where it stopped, so the time-based decay spans
    # all of them and the phase ends after max_minutes of training in all. A resume that changes
    # the schedule starts a new phase at 0 minutes as above. 0: each invocation stops at the end
    # of its phase's budget.
    session_minutes: float = 0.0
    weight_decay: float = 1e-5
    grad_clip: float = 5.0
    spectral_weight: float = 1.0
    mrstft_weight: float = 0.0
    sisdr_weight: float = 0.0
    # Differentiable proxies of the benchmark's PESQ and STOI on the output waveform (a
    # fine-tuning phase; needs the `train` extra): one unit of pesq loss is about one PESQ point.
    pesq_weight: float = 0.0
    stoi_weight: float = 0.0
    val_every: int = 250
    checkpoint_seconds: float = 180.0  # write last.safetensors at least this often
    out_dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: str = "auto"  # bfloat16 | float16 (with a GradScaler) | auto: bfloat16 where supported
    seed: int = 0
    # Every run draws from generators seeded by seed alone (weights, batches, corruptions), so a
    # CPU run repeats bit for bit without this. For a GPU's kernels: turns on
    # torch.use_deterministic_algorithms (an op without a deterministic kernel then raises instead
    # of varying; model.config.unpool = "maxunpool" is refused before the run for that), cuDNN's
    # autotuner off, float32 matmuls and cuDNN at full precision (no TF32), and sets
    # CUBLAS_WORKSPACE_CONFIG=:4096:8, which cuBLAS reads when CUDA starts (one set to another
    # value is refused on a CUDA run). Slower on a GPU; all restored after the run (_reproducible).
    deterministic: bool = False
    threads: int = 0  # torch intra-op threads on CPU; 0: leave torch's default
    # Mix batches on this many background threads, each with its own seeded mixer, taken in
    # turn (the same sequence whatever the timing). A GPU at batch 256 outruns one mixer;
    # 0: mix on the training thread.
    loader_threads: int = 0
    # Run those mixers in worker processes instead of threads (the same batches, in the same
    # order): mixer threads hold the GIL that a CUDA training loop needs between every two
    # kernel launches (benchmarks/loader_contention.py). Batches come pinned on CUDA. Falls back
    # to threads, with a warning, where /dev/shm is too small to hand batches over.
    loader_processes: bool = False
    # Start a fresh run from another checkpoint's weights (ignored when resuming). Tensors that
    # grew (a deep-filter head on a mask model, more filter taps, a wider GRU) keep the old
    # values, with zeros on every new input and output (grow_into), so training starts from
    # exactly the old model's function.
    init_from: str = ""
    metrics: tuple[str, ...] = ("si_sdr", "pesq", "stoi")
    # The validation metric that picks best.safetensors (higher is better; one of metrics). A
    # perceptual phase trades SI-SDR for PESQ, so it selects by pesq.
    select_by: str = "si_sdr"
    # An exponential moving average of the weights (Polyak), updated every step: 0.999 averages
    # about the last thousand steps, smoother than any one of them. When on, validation and
    # best.safetensors use the average (what one would ship), ema.safetensors holds the final
    # one, and last.safetensors stays the raw weights that a resume continues from. 0: off.
    ema_decay: float = 0.0
    progress: bool = True

    def __post_init__(self):
        refuse_non_finite(self, "train.")
        # Counts that would otherwise fail deep inside (a modulo by zero, an empty batch) or
        # "train" nothing and still write a run.
        for name in ("steps", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr >= 0:  # 0 is a run that changes nothing, which a test of grown weights uses
            raise ValueError(f"train.lr must be >= 0, got {self.lr}")
        if self.decay_by_time and self.max_minutes <= 0:
            raise ValueError("train.decay_by_time needs train.max_minutes")
        if self.session_minutes < 0 or (self.session_minutes and self.max_minutes <= 0):
            raise ValueError("train.session_minutes splits train.max_minutes: set max_minutes too (and session_minutes >= 0)")
        if self.decay_by_time and self.decay_steps:
            raise ValueError("train.decay_by_time and train.decay_steps both set: choose one (decay_steps=0)")
        if self.select_by not in self.metrics:
            raise ValueError(f"train.select_by={self.select_by!r} is not among train.metrics {list(self.metrics)}")
        # Checked here, not where the loop starts: that was after --no-resume had removed the
        # earlier run's checkpoints (and after a new run's folder was made).
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"train.amp_dtype must be {', '.join(AMP_DTYPES[:-1])} or {AMP_DTYPES[-1]}, "
                             f"got {self.amp_dtype!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        unknown = [m for m in self.metrics if m not in VAL_METRICS]
        if unknown:  # refused now, not ignored, nor (as select_by) an error after training
            raise ValueError(f"train.metrics: unknown {unknown}; choose from {list(VAL_METRICS)}")
        # Values a library would refuse later in its own words, or take the wrong way silently:
        # clip_grad_norm_ scales gradients by max_norm / norm, so a negative grad_clip turned every
        # step around and 0 zeroed it.
        for name, ok, want in (("grad_clip", self.grad_clip > 0, "> 0"),
                               ("max_minutes", self.max_minutes >= 0, ">= 0 (0: no limit)"),
                               ("checkpoint_seconds", self.checkpoint_seconds > 0, "> 0"),
                               ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               # torch's generators take 64 bits ("Overflow when unpacking long long")
                               ("seed", 0 <= self.seed < 2**64, ">= 0 and below 2**64"),
                               ("threads", self.threads >= 0, ">= 0 (0: torch's default)"),
                               ("loader_threads", self.loader_threads >= 0, ">= 0 (0: mix on the training thread)")):
            if not ok:  # (NaN fails every comparison)
                raise ValueError(f"train.{name} must be {want}, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    model: str = "recurrent"
    model_config: dict = field(default_factory=dict)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict:
        return {"model": {"name": self.model, "config": dict(self.model_config)},
                "data": dataclasses.asdict(self.data), "train": dataclasses.asdict(self.train)}


def _section(cls, values: dict, name: str):
    """``[name]`` of a run config as ``cls``; its errors name the section as --set spells it."""
    try:
        return cls(**typed_fields(cls, values, f"[{name}]"))
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if text.startswith((f"[{name}]", f"{name}.")) else f"[{name}] {text}") from None


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML run description and apply ``section.key=value`` overrides
    (``model.config.hidden=64``, ``train.steps=10``, ``model.name=conv1d``)."""
    raw: dict = {}
    if path:
        # Each in words that name the config, not the bare OSError or codec message ("[Errno 2] No
        # such file or directory: ...", "'utf-8' codec can't decode byte 0x83 ...").
        if not Path(path).exists():
            raise ValueError(f"{path}: no such run config (the example configs are in the source repository's "
                             f"configs/: train from a checkout of it)")
        if Path(path).is_dir():
            raise ValueError(f"{path}: a folder, not a run config; name a .toml file in it")
        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: not a TOML run config ({exc})") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"override {item!r} needs section.key=value, e.g. train.steps=100")
        node = raw
        for depth, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node[parts[-1]] = coerce_value(value.strip())
    # Checked after the overrides: a misspelt ``--set modle.name=...`` must not train the default.
    unknown = sorted(set(raw) - {"model", "data", "train"})
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; valid: model, data, train")
    model = raw.get("model", {})
    if not isinstance(model, dict) or not isinstance(model.get("config", {}), dict):
        raise ValueError("[model] needs name = \"<family>\" and a [model.config] table")
    unknown = sorted(set(model) - {"name", "config"})
    if unknown:
        raise ValueError(f"[model] has no key(s) {unknown}; valid: name, config")
    return RunConfig(
        model=model.get("name", "recurrent"),
        model_config=dict(model.get("config", {})),
        data=_section(DataConfig, raw.get("data", {}), "data"),
        train=_section(TrainConfig, raw.get("train", {}), "train"),
    )


# ---------------------------------------------------------------------------------------------
# Corruption and loss for one batch


def corrupt_batch(model: SpectralAutoencoder, clean: torch.Tensor, noise: torch.Tensor, snr: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the model sees for this batch: ``(noisy waveform [B, T], noisy STFT [B, F, N])``.

    The model config's corruption decides: ``mix`` adds the drawn noise at the drawn SNR,
    ``gaussian`` white noise at a random SNR, ``patches`` darkens time-frequency patches of the
    clean STFT, ``none`` passes the clean signal (a plain autoencoder).
    """
    c = model.config
    if c.corruption == "mix":
        noisy = mix_at_snr(clean, noise, snr)
    elif c.corruption == "gaussian":
        noisy = add_gaussian(clean, c.snr_low, c.snr_high, generator)
    else:
        noisy = clean
    spec = model.stft(noisy)  # [B, F, N]
    if c.corruption == "patches":
        spec = darken_patches(spec, c.patch_fraction, c.patch_size, generator)
        noisy = model.stft.inverse(spec, clean.shape[-1])
    return noisy, spec


def batch_loss(model: SpectralAutoencoder, clean: torch.Tensor, noisy_spec: torch.Tensor, tc: TrainConfig,
               forward=None, noisy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the configured losses plus the sparsity penalty. ``noisy [B, T]``, the
    waveform of ``noisy_spec``, is needed by look-ahead models only."""
    inner = model
    forward = forward or model
    feats = inner.features_of(noisy_spec, noisy)  # [B, F', N]
    out, h = forward(feats)  # [B, F, N], code
    est_spec = inner.estimate_spec(noisy_spec, out.float())  # [B, F, N]
    clean_spec = inner.stft(clean)  # [B, F, N]
    parts = {}
    total = clean.new_zeros(())
    cfg = inner.config
    if tc.spectral_weight:
        parts["spec"] = losses.spectral_loss(est_spec, clean_spec, cfg.compression, cfg.compression_power)
        total = total + tc.spectral_weight * parts["spec"]
    waveform_terms = {"mrstft": (tc.mrstft_weight, losses.multires_stft_loss),
                      "sisdr": (tc.sisdr_weight, losses.si_sdr_loss),
                      "pesq": (tc.pesq_weight, lambda e, c: losses.pesq_loss(e, c, cfg.sample_rate)),
                      "stoi": (tc.stoi_weight, lambda e, c: losses.stoi_loss(e, c, cfg.sample_rate))}
    if any(weight for weight, _ in waveform_terms.values()):
        est = inner.stft.inverse(est_spec, clean.shape[-1])  # [B, T]
        for name, (weight, term) in waveform_terms.items():
            if weight:
                parts[name] = term(est, clean)
                total = total + weight * parts[name]
    sp = inner.sparsity_loss(h.float())
    if cfg.sparsity_weight:
        parts["sparsity"] = sp
    total = total + sp
    # Detached tensors, not floats: reading a CUDA value waits for the GPU, so the training loop
    # converts them only on the steps it logs.
    return total, {k: v.detach() for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# Data sources and validation


def _sources(data: DataConfig, sr: int, val: bool) -> tuple[Source, Source]:
    clean_dir = (data.val_clean_dir or data.clean_dir) if val else data.clean_dir
    noise_dir = (data.val_noise_dir or data.noise_dir) if val else data.noise_dir
    # Validation keeps every family at its natural share, so scores compare across phases.
    speech_weights = None if val else data.speech_weights
    noise_weights = None if val else data.noise_weights
    speech = folder_source(clean_dir, sr, speech_weights) if clean_dir else synthetic_speech()
    noise = folder_source(noise_dir, sr, noise_weights) if noise_dir else synthetic_noise()
    return speech, noise


def check_corruption_inputs(run: RunConfig, model: SpectralAutoencoder) -> None:
    """Refuse data settings that the model's corruption never reads. Only ``mix`` adds the noise
    folders' recordings, at ``data.snr_low..snr_high``; the others (``none``, the default, is a
    plain autoencoder) trained on clean speech alone while the noise folder was loaded and left
    unused, and ``gaussian`` draws its SNR from ``model.config.snr_low..snr_high``."""
    d, c = run.data, model.config
    if c.corruption == "mix":
        given = {k: run.model_config[k] for k in ("snr_low", "snr_high") if k in run.model_config}
        if any(v != getattr(d, k) for k, v in given.items()):
            raise ValueError(f"corruption \"mix\" draws its SNR from data.snr_low..snr_high ({d.snr_low:g}..{d.snr_high:g} "
                             f"dB); model.config sets {given}: set the range in [data] instead")
        return
    plain = DataConfig()
    mix_only = {"noise_dir": d.noise_dir, "val_noise_dir": d.val_noise_dir, "noise_weights": d.noise_weights,
                "second_noise_prob": d.second_noise_prob, "snr_low": d.snr_low, "snr_high": d.snr_high}
    unused = [f"data.{k}" for k, v in mix_only.items() if v != getattr(plain, k)]
    if unused:
        why = {"none": " (the default: a plain autoencoder, which never sees noise)",
               "gaussian": " (white noise at model.config.snr_low..snr_high)"}.get(c.corruption, "")
        it = "it" if len(unused) == 1 else "them"
        raise ValueError(f"{', '.join(unused)}: only corruption = \"mix\" reads {it}, and this model's corruption is "
                         f"{c.corruption!r}{why}; set model.config.corruption = \"mix\" to train a denoiser on that "
                         f"noise, or remove {it}")


def check_model_settings_read(model: Autoencoder) -> None:
    """Refuse model settings that nothing reads under the others
    (:meth:`~audioae.models.AutoencoderConfig.unread_settings`): ``sparsity = "l1"`` with the default
    ``sparsity_weight = 0`` trained with no sparsity at all, and a weight under ``sparsity = "none"``
    was ignored, both in silence. Checked here, for a run, not in the config: a checkpoint saved
    with such a value (it changes nothing the model computes) still loads."""
    unread = model.config.unread_settings()
    if unread:
        raise ValueError("; ".join(f"model.config.{why}" for why in unread)
                         + (": nothing would read it" if len(unread) == 1 else ": nothing would read them"))


def check_deterministic_support(run: RunConfig, model: Autoencoder) -> None:
    """Refuse a model that train.deterministic cannot train: under
    torch.use_deterministic_algorithms an operation without a deterministic implementation
    raises at its first call, which was after run.json was written (max_unpool1d has none, on the
    CPU as on CUDA)."""
    if run.train.deterministic and getattr(model.config, "unpool", None) == "maxunpool":
        raise ValueError('train.deterministic: model.config.unpool = "maxunpool" has no deterministic '
                         'implementation in torch (max_unpool1d); set model.config.unpool = "nearest" or '
                         '"transposed", or train.deterministic = false')


def step_seed(key: tuple[int, ...], step: int) -> int:
    """A 64-bit seed for ``step``'s draws from ``key`` (the run's seed, the rank) and the step alone."""
    return int(np.random.SeedSequence([*key, step]).generate_state(1, np.uint64)[0])


def _validation_sources(data: DataConfig, sr: int, train_sources: tuple[Source, Source]) -> tuple[Source, Source]:
    """The val folders, or, where none is set, the training clips already loaded (an hour of Ogg
    is not decoded twice) at their natural shares: validation ignores the training weights."""
    def pick(val_dir: str, train: Source) -> Source:
        if val_dir:
            return folder_source(val_dir, sr)
        return train if train.clips is None else Source(train.clips, name=train.name)

    return pick(data.val_clean_dir, train_sources[0]), pick(data.val_noise_dir, train_sources[1])


def make_validation_set(model: SpectralAutoencoder, data: DataConfig, sources=None, seed: int = 1234):
    """A fixed list of ``(clean [T], noise [T], snr)`` examples: same every run and every resume."""
    speech, noise = sources or _sources(data, model.config.sample_rate, val=True)
    # One noise per example even where training adds a second (data.second_noise_prob): scores
    # stay comparable across phases that differ only in that setting.
    mix = MixConfig(data.val_seconds, data.snr_low, data.snr_high, reverb_prob=data.reverb_prob)
    mixer = Mixer(speech, noise, model.config.sample_rate, mix, seed=seed)
    clean, noise_b, snr = mixer.batch(data.val_examples)
    return clean, noise_b, snr


def _val_mix(model: SpectralAutoencoder, val_set) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The validation set's clean [B, T] (CPU), noisy [B, T] and noisy spectrum, mixed the same
    way at every call (a fixed generator)."""
    clean, noise, snr = val_set
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(99)
    noisy, spec = corrupt_batch(model, clean.to(dev), noise.to(dev), snr.to(dev), gen)
    return clean, noisy, spec


def _wave_scores(wave: torch.Tensor, clean: torch.Tensor, sr: int, metrics, tag: str) -> dict[str, float]:
    """Mean PESQ and STOI (those in ``metrics``) of ``wave`` [B, T] against ``clean``, keyed name + tag."""
    pairs = list(zip(wave.numpy(), clean.numpy(), strict=True))
    res = {}
    if "pesq" in metrics:
        res["pesq" + tag] = _mean_of_scored([pesq_wb(e, c, sr) for e, c in pairs])
    if "stoi" in metrics:
        res["stoi" + tag] = _mean_of_scored([stoi(e, c, sr) for e, c in pairs])
    return res


def _mean_of_scored(scores: list[float]) -> float:
    """The mean of the scores that are numbers; NaN when none is (a non-finite output, which the
    caller then reports), without numpy's "Mean of empty slice" warning that nanmean gave."""
    scored = [x for x in scores if not math.isnan(x)]
    return float(np.mean(scored)) if scored else math.nan


@torch.inference_mode()
def input_scores(model: SpectralAutoencoder, val_set, metrics=("si_sdr", "pesq", "stoi")) -> dict[str, float]:
    """The unprocessed input's scores on the validation set (``si_sdr_in``, and ``pesq_in`` and
    ``stoi_in`` where ``metrics`` ask): the same at every validation, so train() scores them once,
    before its clock starts, and passes them to validate()."""
    clean, noisy, _ = _val_mix(model, val_set)
    return _scores_of_input(noisy.float().cpu(), clean, model.config.sample_rate, metrics)


def _scores_of_input(noisy: torch.Tensor, clean: torch.Tensor, sr: int, metrics) -> dict[str, float]:
    return {"si_sdr_in": float(si_sdr(noisy.double(), clean.double()).mean()),
            **_wave_scores(noisy, clean, sr, metrics, "_in")}


# How validation feeds the network quiet input: lifted as `audioae denoise` lifts it (enhance.LevelLift),
# so that the scores that choose best.safetensors are those of what users get from it; validation_key
# records it, so a best score from unlifted validation is not compared with lifted ones. Unlifted, the
# shipped denoiser's scores on tests/test_training.py's _quiet_mixture (2 s, 5 dB SNR; docs/training.md
# gives the command) were SI-SDR 11.36 as denoise()'s at -25 dBFS, 10.78 against denoise()'s 10.33
# at -45 dBFS and 4.48 against 7.67 at -60 dBFS. The lift is causal and per row (each
# mixture's own level, whatever else is in the batch), and the validation mixtures are whole clips
# of one length, so the batch is what denoise() computes clip by clip; at the levels the mixtures
# are made at it lifts few frames, and a validation with none lifted scores as before to the bit.
VALIDATION_LEVEL_LIFT = SHIPPED_LEVEL_LIFT


@torch.inference_mode()
def validate(model: SpectralAutoencoder, val_set, metrics=("si_sdr", "pesq", "stoi"),
             inputs: dict[str, float] | None = None, *,
             level_lift: LevelLift | None = None) -> dict[str, float]:
    """Mean metrics of the model's output on the fixed validation set, and of its unprocessed
    input (``si_sdr_in``, ``pesq_in``, ``stoi_in``: a model's score means little without the
    input's). The input is the same at every validation, so ``inputs`` may be the ``*_in``
    entries of an earlier call or of input_scores(), which are then not scored again.
    The network runs as denoising runs it (enhance.estimate_clips), on the features of the noisy
    STFT lifted as ``level_lift`` says (None: :data:`VALIDATION_LEVEL_LIFT` as it is at the call,
    as ``audioae denoise`` lifts; :func:`validation_key` records it); :func:`score_denoised` scores
    denoise()'s own output, its checks included."""
    level_lift = VALIDATION_LEVEL_LIFT if level_lift is None else level_lift
    model.eval()
    clean, noisy, spec = _val_mix(model, val_set)
    feats = network_features(model, spec, noisy, level_lift=level_lift)  # [B, F', N]
    est = estimate_clips(model, [spec], [feats])[0].est  # [B, F, N]
    est = model.stft.inverse(est, clean.shape[-1]).float().cpu()  # [B, T]
    res = _scores_of_output(est, clean, noisy.float().cpu(), model.config.sample_rate, metrics, inputs)
    model.train()
    return res


@torch.inference_mode()
def score_denoised(model: SpectralAutoencoder, val_set, metrics=("si_sdr", "pesq", "stoi")) -> dict[str, float]:
    """:func:`validate`'s scores of what ``audioae denoise`` outputs for the validation mixtures:
    each mixture through :func:`audioae.enhance.denoise` as a file would go (the shipped level lift,
    its checks of the output). How recipes/compare_checkpoints.py ranks the checkpoints to ship.
    The model's train/eval mode is left as it is (give an eval() one)."""
    clean, noisy, _ = _val_mix(model, val_set)
    noisy = noisy.float().cpu()  # [B, T]
    sr = model.config.sample_rate
    est = torch.from_numpy(np.stack([denoise(model, x.numpy(), sr) for x in noisy]))  # [B, T]
    return _scores_of_output(est, clean, noisy, sr, metrics, None)


def _scores_of_output(est: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor, sr: int, metrics,
                      inputs: dict[str, float] | None) -> dict[str, float]:
    """The scores of ``est [B, T]`` and of the input ``noisy [B, T]`` (``inputs``, where already scored)."""
    if inputs is None:
        inputs = _scores_of_input(noisy, clean, sr, metrics)
    res = {"si_sdr": float(si_sdr(est.double(), clean.double()).mean()), "si_sdr_in": inputs["si_sdr_in"],
           **_wave_scores(est, clean, sr, metrics, "")}
    return {**res, **inputs}


def validation_line(step: int, val: dict[str, float], minutes: float) -> str:
    """One validation for a person: ``step 100: si_sdr 4.49 (input 8.20), stoi 0.812 (input
    0.845); 0.6 min``, each score beside the unprocessed input's."""
    parts = []
    for name in VAL_METRICS:
        if name in val:
            digits = 3 if name == "stoi" else 2
            given = f" (input {val[name + '_in']:.{digits}f})" if name + "_in" in val else ""
            parts.append(f"{name} {val[name]:.{digits}f}{given}")
    return f"step {step}: {', '.join(parts)}; {minutes:.1f} min"


# ---------------------------------------------------------------------------------------------
# Checkpoint and optimizer state (safetensors, never pickle)


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


def grow_into(model: torch.nn.Module, old: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``old`` weights into ``model`` where tensors grew; returns the grown names.

    Function-preserving (Net2Net-style): every added input column is zero, so nothing that
    existed hears a new feature or a new unit, and added output rows are zero (``tanh(0) = 0``
    taps), so they add nothing. Models may declare a block layout (``growth_blocks``): a GRU's
    weights stack 3 gates (an LSTM's 4) of ``hidden`` rows, so each gate grows on its own, and
    the rows of new *hidden units* keep the model's fresh random init: their outgoing weights
    start at zero, but a unit whose incoming weights were zero too would never get a gradient.
    """
    new = model.state_dict()
    missing = sorted(set(new) ^ set(old))
    if missing:
        raise ValueError(f"cannot grow: parameter names differ ({', '.join(missing[:5])})")
    layout = model.growth_blocks() if hasattr(model, "growth_blocks") else {}
    buffers = {name for name, _ in model.named_buffers()}
    grown = []
    for name, target in new.items():
        src = old[name]
        if src.shape == target.shape:
            target.copy_(src)
            continue
        if name in buffers:  # not a weight: an STFT window "grown" with zeros was another transform
            raise ValueError(f"cannot grow {name}: {tuple(src.shape)} -> {tuple(target.shape)} is a fixed buffer "
                             f"of another shape (another n_fft), not a weight")
        if src.dim() != target.dim() or any(a > b for a, b in zip(src.shape, target.shape, strict=True)):
            raise ValueError(f"cannot grow {name}: {tuple(src.shape)} does not fit in {tuple(target.shape)}")
        if src.dim() <= 2:
            _grow_blocks(name, target, src, *layout.get(name, (1, 1, False)))
        else:  # conv kernels: the leading slice, zeros elsewhere
            target.zero_()
            target[tuple(slice(0, n) for n in src.shape)].copy_(src)
        grown.append(name)
    return grown


def grown_like(model: Autoencoder, base: Autoencoder) -> Autoencoder:
    """A new model of ``model``'s architecture holding ``base``'s weights grown into it
    (:func:`grow_into`): the start of a fine-tuning that grew the model, to interpolate towards."""
    out = type(model)(model.config)
    grow_into(out, base.state_dict())
    return out.train(model.training)


def _grow_blocks(name: str, target: torch.Tensor, src: torch.Tensor, row_blocks: int, col_blocks: int,
                 fresh_rows: bool) -> None:
    """Copy ``src`` into ``target`` block by block (``row_blocks`` gates of rows, ``col_blocks``
    directions of columns); new columns of old rows are zero; new rows keep ``target``'s values
    when ``fresh_rows`` (new hidden units), else are zero (new outputs)."""
    if src.shape[0] % row_blocks or target.shape[0] % row_blocks:
        raise ValueError(f"cannot grow {name}: {src.shape[0]} rows are not {row_blocks} equal blocks")
    if not fresh_rows:
        target.zero_()
    ro, rn = src.shape[0] // row_blocks, target.shape[0] // row_blocks
    for g in range(row_blocks):
        rows_new, rows_old = slice(g * rn, g * rn + ro), slice(g * ro, (g + 1) * ro)
        if src.dim() == 1:
            target[rows_new] = src[rows_old]
            continue
        if src.shape[1] % col_blocks or target.shape[1] % col_blocks:
            raise ValueError(f"cannot grow {name}: {src.shape[1]} columns are not {col_blocks} equal blocks")
        co, cn = src.shape[1] // col_blocks, target.shape[1] // col_blocks
        for b in range(col_blocks):
            target[rows_new, b * cn : b * cn + co] = src[rows_old, b * co : (b + 1) * co]
            target[rows_new, b * cn + co : (b + 1) * cn] = 0  # old units never hear new ones


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return True
    return False


MAX_NONFINITE_STEPS = 20  # non-finite gradients in a row before training stops
# float16 steps in a row the GradScaler skipped for overflow before training stops: a few at the start
# are its calibration (65536 halves until the gradients fit); 40 halve it to 2**-24, where no
# overflow is left to calibrate and the gradients themselves are inf/NaN
MAX_SCALER_SKIPS = 40
LOG_EVERY = 50  # steps between log.jsonl records (and validation steps)


# Model settings that define the signal the weights were trained on: a run grown from other
# weights (train.init_from) keeps them, and a resumed run keeps its input and output too.
SIGNAL_FIXED = ("sample_rate", "n_fft", "hop_length", "compression", "compression_power")
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


def validation_key(run: RunConfig, model: SpectralAutoencoder) -> dict:
    """What a validation score depends on besides the weights and the audio, as JSON values:
    best.safetensors records it, and a resumed run compares its scores with that file's only
    under the same key. ``level_lift``: the lift validate() feeds the network quiet input with
    (:data:`VALIDATION_LEVEL_LIFT`); a file recorded without it was scored on unlifted features and
    is not compared with lifted scores. Not the folders' paths: a run split over machines
    (train.session_minutes) may find the same corpus elsewhere on each."""
    d, c = run.data, model.config
    lift = VALIDATION_LEVEL_LIFT  # how validate() runs the network: scores with another lift are not comparable
    key = {"select_by": run.train.select_by, "examples": d.val_examples, "seconds": d.val_seconds,
           "snr": [d.snr_low, d.snr_high], "reverb_prob": d.reverb_prob, "corruption": c.corruption,
           "level_lift": [lift.target_db, lift.max_gain_db]}
    if c.corruption == "gaussian":
        key["gaussian_snr"] = [c.snr_low, c.snr_high]
    if c.corruption == "patches":
        key["patches"] = [c.patch_fraction, list(c.patch_size)]
    return key


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


# cuBLAS's deterministic workspace settings (torch's "Reproducibility" notes): without one of them a
# CUDA matmul under torch.use_deterministic_algorithms raises.
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


# torch's float32 precision switches that deterministic mode sets, in the fp32_precision API (the
# legacy allow_tf32 flags, mixed with it, make torch.get_float32_matmul_precision() raise): parents
# before children, the order they are restored in (setting cudnn's sets conv's and rnn's).
FP32_PRECISION = (("cuda.matmul", "ieee"), ("mkldnn.matmul", "ieee"), ("cudnn", "ieee"), ("cudnn.conv", "ieee"),
                  ("cudnn.rnn", "ieee"))


def _fp32_backend(name: str):
    backend = torch.backends
    for part in name.split("."):
        backend = getattr(backend, part)
    return backend


@contextlib.contextmanager
def _reproducible(tc: TrainConfig):
    """With ``train.deterministic``: torch's deterministic settings for the run, and the caller's
    settings back afterwards, also when the run fails (a library call leaves no global switch
    behind: a later training or inference in the same process runs as it would have). No seed
    here: the run seeds torch at its start and draws batches and corruptions from generators of
    its own (StepMixer, step_seed), so Python's and numpy's global generators are left alone."""
    if not tc.deterministic:
        yield
        return
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if cublas not in (None, *CUBLAS_DETERMINISTIC) and tc.device != "cpu" and torch.cuda.is_available():
        raise ValueError(f"train.deterministic needs CUBLAS_WORKSPACE_CONFIG={' or '.join(CUBLAS_DETERMINISTIC)} "
                         f"for cuBLAS, and it is {cublas!r}; unset it or set one of those")
    cudnn = torch.backends.cudnn
    before = {"algorithms": (torch.are_deterministic_algorithms_enabled(),
                             torch.is_deterministic_algorithms_warn_only_enabled()),
              "cudnn": (cudnn.benchmark, cudnn.deterministic), "matmul": torch.get_float32_matmul_precision(),
              "fp32": [(name, _fp32_backend(name).fp32_precision) for name, _ in FP32_PRECISION]}
    try:  # before the first change: whatever raises below, the finally puts back what was changed
        if cublas is None:
            if torch.cuda.is_initialized():  # cuBLAS may have read its workspace setting already
                log.warning("train.deterministic: CUDA started in this process before CUBLAS_WORKSPACE_CONFIG was "
                            "set; set CUBLAS_WORKSPACE_CONFIG=%s in the environment to be sure of deterministic "
                            "matmuls", CUBLAS_DETERMINISTIC[0])
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
        torch.use_deterministic_algorithms(True)
        cudnn.benchmark, cudnn.deterministic = False, True
        torch.set_float32_matmul_precision("highest")
        for name, value in FP32_PRECISION:
            _fp32_backend(name).fp32_precision = value
        yield
    finally:
        torch.use_deterministic_algorithms(before["algorithms"][0], warn_only=before["algorithms"][1])
        cudnn.benchmark, cudnn.deterministic = before["cudnn"]
        # The matmul precision first: it sets cuda.matmul's (and mkldnn's), which the saved ones then overwrite.
        torch.set_float32_matmul_precision(before["matmul"])
        for name, value in before["fp32"]:
            _fp32_backend(name).fp32_precision = value
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


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


def _setup_device(tc: TrainConfig) -> tuple[torch.device, bool, int, int]:
    """The device this process trains on, and torch's threads: ``(device, whether this call
    started the process group, rank, world size)``."""
    device = pick_device(tc.device)
    started_dist = _maybe_init_distributed(device)
    rank, world = _dist_info()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    elif device.type == "cuda" and device.index is not None:
        # one process on cuda:N: the current device too, or cuDNN handles, AMP's scaler and any
        # bare "cuda" tensor (torch.cuda.* calls without a device) land on cuda:0
        torch.cuda.set_device(device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    return device, started_dist, rank, world


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


def _init_from(run: RunConfig, model: SpectralAutoencoder) -> None:
    """Grow ``train.init_from``'s weights (a shipped name, as --model takes, or a path) into a new
    run's ``model``: the same family at the same signal settings."""
    from ..pretrained import resolve

    tc = run.train
    source = load_checkpoint(resolve(tc.init_from))
    if source.registry_name != run.model:  # grow_into would only say that parameter names differ
        raise ValueError(f"train.init_from={tc.init_from!r} is a {source.registry_name} model and this run "
                         f"trains a {run.model} one: init_from grows a model of the same family")
    # Same shapes at another rate or compression, or bins of another FFT size grown with zeros
    # (and the STFT window with them): the weights would hear another signal.
    moved = differences(dataclasses.asdict(source.config), dataclasses.asdict(model.config), SIGNAL_FIXED)
    if moved:
        raise ValueError(f"train.init_from={tc.init_from!r} was trained on another signal ({', '.join(moved)}): "
                         f"init_from grows a model at the same signal settings")
    grown = grow_into(model, source.state_dict())
    log.info("initialised from %s (grown: %s)", tc.init_from, ", ".join(grown) or "none")


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


def _amp_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)  # one of AMP_DTYPES: TrainConfig checked it


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


def _time_used(t0: float, deadline: float, world: int, device: torch.device) -> float:
    """The share of the wall-time budget spent (0 without one); under DDP every rank follows
    rank 0's clock, so all stop on the same step and use the same rate (the tensor lives on the
    training device: NCCL broadcasts only CUDA tensors)."""
    if not math.isfinite(deadline):
        return 0.0
    used = (time.monotonic() - t0) / max(deadline - t0, 1e-9)
    if world == 1:
        return used
    shared = torch.tensor([used], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared.item())


def replica_divergence(model: torch.nn.Module) -> float:
    """Largest absolute difference between any rank's weights and rank 0's (0.0 when DDP kept the
    replicas in sync, as it must)."""
    # on the training device: NCCL only carries CUDA tensors
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])  # [P]
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


# ---------------------------------------------------------------------------------------------
# In-memory arrays: vectors and images


class NonFiniteLoss(ValueError):
    """:func:`fit_arrays` stopped at a non-finite loss; ``losses``: the finite ones before it."""

    def __init__(self, message: str, losses: list[float]):
        super().__init__(message)
        self.losses = losses


def fit_arrays(model: Autoencoder, x: torch.Tensor, *, steps: int = 1000, batch_size: int = 64, lr: float = 1e-3,
               corrupt=None, seed: int = 0, weight_decay: float = 0.0, forward=None) -> list[float]:
    """Train ``model`` to reconstruct ``x [N, ...]`` with MSE plus its sparsity penalty.

    ``corrupt(batch, generator) -> batch`` makes it a denoising autoencoder: the model sees the
    corrupted batch and is scored against the clean one. Returns the loss every step. A
    non-finite loss stops it with :class:`NonFiniteLoss` (a ValueError) before that step is taken
    (the weights are those of the step before).
    """
    # Each of these trained on in silence: an empty set or batch gave a NaN loss every step and
    # left the weights as they were; NaN in x made every weight NaN.
    if steps < 0 or batch_size < 1:
        raise ValueError(f"fit_arrays needs steps >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
    if x.numel() == 0:
        raise ValueError(f"fit_arrays got no data to fit: x has shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"fit_arrays needs floating-point data, got {x.dtype}; for 8-bit images pass x / 255")
    if not torch.isfinite(x).all():
        raise ValueError(f"fit_arrays got NaN or Inf in x (in {int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum())} "
                         f"of its {x.shape[0]} examples)")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    forward = forward or model
    history = []
    model.train()
    for _ in range(steps):
        if batch_size >= x.shape[0]:
            target = x  # full-batch gradient descent: what converges tightly on small sets
        else:
            target = x[torch.randint(0, x.shape[0], (batch_size,), generator=gen)]
        inp = corrupt(target, gen) if corrupt is not None else target
        out, h = forward(inp)
        loss = torch.nn.functional.mse_loss(out, target) + model.sparsity_loss(h)
        if not torch.isfinite(loss):
            model.eval()
            raise NonFiniteLoss(f"fit_arrays: the loss is {float(loss.detach())} at step {len(history) + 1} of {steps} "
                                f"(the last finite one: {history[-1] if history else None}); a lower lr (now {lr:g}) "
                                f"may train", history)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    model.eval()
    return history
