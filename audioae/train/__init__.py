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

The modules, by concern (each name is importable from here, as it was from the one module
``audioae/train.py`` this package replaces); each imports only from those above it:

- :mod:`~audioae.train.config`      the run's settings (:class:`RunConfig`, :func:`load_run_config`) and their checks
- :mod:`~audioae.train.loss`        one batch: its corruption (:func:`corrupt_batch`) and its loss (:func:`batch_loss`)
- :mod:`~audioae.train.validation`  the data sources, the validation set, :func:`validate` and its scores
- :mod:`~audioae.train.growth`      weights grown into a larger model (:func:`grow_into`); ``train.init_from``
- :mod:`~audioae.train.records`     ``run.json``: the settings a run started with and each resume's changes
- :mod:`~audioae.train.phases`      the learning-rate schedule; phases, and what a resume continues
- :mod:`~audioae.train.resume`      the resume point written and read back; where a call starts
- :mod:`~audioae.train.runtime`     the device, DDP, AMP's dtype, ``train.deterministic``
- :mod:`~audioae.train.loop`        :func:`train` and its steps: gradients, weight average, log, checkpoints, signals
- :mod:`~audioae.train.arrays`      :func:`fit_arrays`, for one tensor in memory

Patch a name where it is looked up: in its module (``audioae.train.validation.VALIDATION_LEVEL_LIFT``,
``audioae.train.loop.validate``), not here.
"""

from __future__ import annotations

from .arrays import NonFiniteLoss, configured_corruption, fit_arrays
from .config import (
    AMP_DTYPES,
    VAL_METRICS,
    DataConfig,
    RunConfig,
    TrainConfig,
    check_corruption_inputs,
    check_deterministic_support,
    check_model_settings_read,
    load_run_config,
)
from .growth import SIGNAL_FIXED, grow_into, grown_like
from .loop import LOG_EVERY, MAX_NONFINITE_STEPS, MAX_SCALER_SKIPS, TrainingStopped, _apply_gradients, train
from .loss import batch_loss, corrupt_batch, step_seed
from .phases import (
    NOT_IN_PHASE_IDENTITY,
    PHASE_SETTINGS,
    _finished_phase,
    _phase_done,
    _phase_of,
    _resumed_phase,
    decayed_lr,
    scheduled_lr,
)
from .resume import (
    RESUME_FIXED,
    RUN_FILES,
    SCALER_KEYS,
    ResumeState,
    _load_optimizer,
    _save_resume_point,
    _weight_average,
)
from .runtime import CUBLAS_DETERMINISTIC, FP32_PRECISION, replica_divergence
from .validation import (
    VALIDATION_LEVEL_LIFT,
    _sources,
    _val_mix,
    _validation_sources,
    input_scores,
    make_validation_set,
    score_denoised,
    validate,
    validation_key,
    validation_line,
)

__all__ = [
    "DataConfig",
    "VAL_METRICS",
    "AMP_DTYPES",
    "TrainConfig",
    "RunConfig",
    "load_run_config",
    "check_corruption_inputs",
    "check_model_settings_read",
    "check_deterministic_support",
    "corrupt_batch",
    "batch_loss",
    "step_seed",
    "make_validation_set",
    "input_scores",
    "VALIDATION_LEVEL_LIFT",
    "validate",
    "score_denoised",
    "validation_line",
    "validation_key",
    "SIGNAL_FIXED",
    "grow_into",
    "grown_like",
    "PHASE_SETTINGS",
    "NOT_IN_PHASE_IDENTITY",
    "decayed_lr",
    "scheduled_lr",
    "SCALER_KEYS",
    "RUN_FILES",
    "RESUME_FIXED",
    "ResumeState",
    "CUBLAS_DETERMINISTIC",
    "FP32_PRECISION",
    "replica_divergence",
    "MAX_NONFINITE_STEPS",
    "MAX_SCALER_SKIPS",
    "LOG_EVERY",
    "TrainingStopped",
    "train",
    "NonFiniteLoss",
    "fit_arrays",
    "configured_corruption",
    # not public: tests, recipes and benchmarks import these from here
    "_sources",
    "_validation_sources",
    "_val_mix",
    "_phase_of",
    "_phase_done",
    "_finished_phase",
    "_resumed_phase",
    "_save_resume_point",
    "_weight_average",
    "_load_optimizer",
    "_apply_gradients",
]
