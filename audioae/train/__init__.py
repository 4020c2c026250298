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

The code is in :mod:`audioae.train.loop` (``audioae/train.py`` until it became this package);
every name that code imported from ``audioae.train`` is importable from here as it was. Patch a
name where it is looked up (``audioae.train.loop``), not here.
"""

from __future__ import annotations

from .loop import (
    AMP_DTYPES,
    CUBLAS_DETERMINISTIC,
    FP32_PRECISION,
    LOG_EVERY,
    MAX_NONFINITE_STEPS,
    MAX_SCALER_SKIPS,
    NOT_IN_PHASE_IDENTITY,
    PHASE_SETTINGS,
    RESUME_FIXED,
    RUN_FILES,
    SCALER_KEYS,
    SIGNAL_FIXED,
    VAL_METRICS,
    VALIDATION_LEVEL_LIFT,
    DataConfig,
    NonFiniteLoss,
    ResumeState,
    RunConfig,
    TrainConfig,
    TrainingStopped,
    _apply_gradients,
    _finished_phase,
    _load_optimizer,
    _phase_done,
    _phase_of,
    _resumed_phase,
    _save_resume_point,
    _sources,
    _val_mix,
    _validation_sources,
    _weight_average,
    batch_loss,
    check_corruption_inputs,
    check_deterministic_support,
    check_model_settings_read,
    corrupt_batch,
    decayed_lr,
    fit_arrays,
    grow_into,
    grown_like,
    input_scores,
    load_run_config,
    make_validation_set,
    replica_divergence,
    scheduled_lr,
    score_denoised,
    step_seed,
    train,
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
    # not public: tests, recipes and benchmarks import these from here
    "_sources",
    "_validation_sources",
    "_val_mix",
    "_finished_phase",
    "_phase_done",
    "_phase_of",
    "_resumed_phase",
    "_save_resume_point",
    "_load_optimizer",
    "_weight_average",
    "_apply_gradients",
]
