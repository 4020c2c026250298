"""The data a run reads, and its validation: the training and validation sources, the fixed
validation set, the scores of the model's output and of its input (:func:`validate`,
:func:`input_scores`, :func:`score_denoised`), the line a person reads, and :func:`validation_key`,
under which ``best.safetensors``' score is compared.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.mixing import MixConfig, Mixer, Source, folder_source, synthetic_noise, synthetic_speech
from ..enhance import SHIPPED_LEVEL_LIFT, LevelLift, denoise, estimate_clips, network_features
from ..metrics import pesq_wb, si_sdr, stoi
from ..models import SpectralAutoencoder
from .config import VAL_METRICS, DataConfig, RunConfig
from .loss import corrupt_batch


def _sources(data: DataConfig, sr: int, val: bool) -> tuple[Source, Source]:
    clean_dir = (data.val_clean_dir or data.clean_dir) if val else data.clean_dir
    noise_dir = (data.val_noise_dir or data.noise_dir) if val else data.noise_dir
    # Validation keeps every family at its natural share, so scores compare across phases.
    speech_weights = None if val else data.speech_weights
    noise_weights = None if val else data.noise_weights
    speech = folder_source(clean_dir, sr, speech_weights) if clean_dir else synthetic_speech()
    noise = folder_source(noise_dir, sr, noise_weights) if noise_dir else synthetic_noise()
    return speech, noise


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
