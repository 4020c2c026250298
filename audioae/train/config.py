"""What a training run is: a :class:`RunConfig` (the model's family and config, :class:`DataConfig`,
:class:`TrainConfig`) read from TOML with ``section.key=value`` overrides (:func:`load_run_config`);
the checks of each setting, and those of the settings against the model they build, made before a
run writes anything.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_thread_count, coerce_value, refuse_non_finite, typed_fields
from ..data.mixing import bad_family_weights
from ..models import Autoencoder, SpectralAutoencoder


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
        for name in ("threads", "loader_threads"):
            check_thread_count(getattr(self, name), f"train.{name}")


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
