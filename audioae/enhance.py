"""The pure inference functions shared by the CLI, the server, the batch engines and the
benchmarks. No file I/O here: arrays in, arrays out.

Length contract: every function returns exactly as many samples as it got, at the caller's sample
rate and channel count. The model's own rate is internal: we resample in and out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .audio import (
    AudioError,
    StreamingResampler,  # used here; re-exported: it lived here
    as_channels_first,
    check_channels,
    check_levels,
    check_pcm,
    check_sample_rate,
    fit_length,
    resample,
)

# Re-exported: these lived here, and `from audioae.enhance import pick_device` keeps working.
from .device import LIBRARY_ALLOC_FAILURES, is_out_of_memory, pick_device, release_device_memory  # noqa: F401
from .models import SpectralAutoencoder, takes_audio
from .spectral import StreamingSTFT, gain_frames, hann_energy

# Inputs longer than this (in channel-seconds: every channel is a row of the model's batch, and
# memory grows with both) go through the chunked path so memory stays bounded.
OFFLINE_MAX_SECONDS = 120.0
STREAM_CHUNK_SECONDS = 4.0
STREAM_CHUNK_CHANNEL_SECONDS = 32.0  # and at most this much per push: 64 channels go 0.5 s at a time


class Stopped(Exception):
    """A long :func:`denoise` ended early because its ``stop()`` said so (the server: its caller
    went away, so nobody would read the answer)."""


def check_stop(stop: Callable[[], bool] | None, where: str) -> None:
    """Raise :class:`Stopped` (``where`` says how far the work came) when ``stop()`` says the work
    is no longer wanted: between the pieces of a long denoise, and the stages of a decomposition."""
    if stop is not None and stop():
        raise Stopped(where)


# ---- input level ---------------------------------------------------------------------------------
# The model was trained on mixtures at about -45 to -17 dBFS; on quieter recordings it removed less
# and less, and below about -60 dBFS it made them worse than the input (stage 9 on 48 val mixtures
# lowered by 40 dB: SI-SDR 2.7 dB where the same mixtures at their own level gave 13.4; figures of
# the val set before synthetic.AUDIBLE_HZ, model card "Input level"). So the network's
# *features* are computed from the frames raised by a causal gain when the recording's level is
# low; the mask and filter it returns are applied to the frames as they are, so the output keeps
# the input's level. At the levels it was trained on the gain is mostly 1; a quiet opening (noise
# before the first word) is lifted until the first loud frame. The target was chosen on the 144
# val mixtures (benchmarks/input_level.py, stage 9, the same val set): at their own level, -45 dB
# costs 0.02 dB of SI-SDRi (-40 dB: 0.06) and no PESQ; lowered by 40 dB, they score SI-SDRi 5.2 dB
# instead of -3.7. Rerun on the rebuilt val set, the ranking of the targets held.
LEVEL_TARGET_DB = -45.0  # tracked frame level (dB re full-scale mean square) below which frames are lifted
LEVEL_MAX_GAIN_DB = 40.0  # at most this much
LEVEL_RELEASE_S = 3.0  # the tracked level rises at once with a louder frame and falls with this time constant


@dataclass(frozen=True)
class LevelLift:
    """How quiet input's features are lifted, passed explicitly to :func:`denoise`,
    :func:`denoise_batch`, :class:`StreamingDenoiser` and :func:`model_input` (not module
    globals for benchmarks/input_level.py to patch around each call). The default is the shipped
    lift. ``target_db``: the tracked frame level (dB re full-scale mean square) below which frames
    are lifted; ``max_gain_db``: at most this much (0: no lift, the behaviour before the tracker)."""

    target_db: float = LEVEL_TARGET_DB
    max_gain_db: float = LEVEL_MAX_GAIN_DB

    def __post_init__(self) -> None:  # a negative gain would turn every frame down, NaN make NaN audio
        if not (math.isfinite(self.target_db) and math.isfinite(self.max_gain_db) and self.max_gain_db >= 0):
            raise ValueError(f"LevelLift needs a finite target_db and a finite max_gain_db >= 0, "
                             f"got target_db={self.target_db}, max_gain_db={self.max_gain_db}")


SHIPPED_LEVEL_LIFT = LevelLift()


class LevelTracker:
    """Causal level of STFT frames, one per row: the loudest recent frame power, rising at once
    and falling with a time constant of ``LEVEL_RELEASE_S``. :meth:`gains` takes frames in order
    (all at once or in chunks: the same gains, to float rounding) and returns the feature gain
    per frame, ``10^((lift.target_db - level) / 20)`` clamped to [1, lift.max_gain_db]."""

    def __init__(self, model: SpectralAutoencoder, lift: LevelLift = SHIPPED_LEVEL_LIFT):
        c = model.config
        self.lift = lift
        self.norm = hann_energy(c.n_fft)  # |X|^2 per unit mean square
        self.decay = -10 / math.log(10) * (c.hop_length / c.sample_rate) / LEVEL_RELEASE_S  # dB per frame
        self.level: np.ndarray | None = None  # [B] dB after the last frame seen

    def gains(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec [B, F, n]`` (the next ``n`` frames) -> gains ``[B, 1, n]`` (float32, on ``spec``'s
        device). In NumPy past the one reduction: a streamed 10 ms call brings one frame, and a
        dozen small torch ops cost more than the frame's features."""
        power = spec.abs().square().mean(1).double().cpu().numpy() / self.norm  # [B, n] mean square per frame
        db = 10 * np.log10(np.maximum(power, 1e-20))  # [B, n]
        n = np.arange(1, db.shape[-1] + 1, dtype=np.float64)  # [n]
        # level_i = max over j <= i of db_j + (i - j) * decay: a running maximum, in closed form
        level = n * self.decay + np.maximum.accumulate(db - n * self.decay, axis=-1)  # [B, n]
        if self.level is not None and db.shape[-1]:  # what the earlier frames left, decayed over these
            level = np.maximum(level, self.level[:, None] + n * self.decay)
        if db.shape[-1]:
            self.level = level[:, -1]
        gain_db = np.clip(self.lift.target_db - level, 0.0, self.lift.max_gain_db)  # [B, n]
        return torch.from_numpy(10 ** (gain_db[:, None, :] / 20)).float().to(spec.device)  # [B, 1, n]


def lifted_features(model: SpectralAutoencoder, spec: torch.Tensor, ahead: torch.Tensor | None,
                    gains: torch.Tensor) -> torch.Tensor:
    """The model's features of ``spec [B, F, N]`` (and look-ahead frames) raised by ``gains [B, 1, N]``."""
    if not bool((gains != 1.0).any()):  # the usual case at trained levels: the model's own features
        return model.features(spec) if ahead is None else model.features(spec, ahead)
    lifted = spec * gains  # [B, F, N]
    return model.features(lifted) if ahead is None else model.features(lifted, ahead * gains)


def model_input(model: SpectralAutoencoder, wav: torch.Tensor, *,
                level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """What denoising feeds the network for ``wav [B, T]`` at the model's rate: ``(spec [B, F, N],
    features [B, F', N])``, the features lifted by a :class:`LevelTracker` (offline, whole) as
    ``level_lift`` says."""
    spec = model.stft(wav)  # [B, F, N]
    return spec, network_features(model, spec, wav, level_lift=level_lift)


def network_features(model: SpectralAutoencoder, spec: torch.Tensor, wav: torch.Tensor | None, *,
                     level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> torch.Tensor:
    """The features denoising feeds the network for ``spec [B, F, N]``, the STFT of ``wav [B, T]``
    at the model's rate (which gives a look-ahead model its look-ahead frames; None for another),
    lifted by a :class:`LevelTracker` (offline, whole, row by row) as ``level_lift`` says. Training
    validation passes its own noisy STFT (for ``patches`` corruption not quite ``model.stft(wav)``)."""
    ahead = model.stft.ahead(wav, model.config.lookahead) if model.config.lookahead else None  # [B, F, N]
    return lifted_features(model, spec, ahead, LevelTracker(model, level_lift).gains(spec))


# ---- codes ---------------------------------------------------------------------------------------
# Encode's audio path (the server's Encode RPC, its warm-up): the code is the model's encoding of
# the very features denoising feeds it, so a code decoded and masked matches what denoise() does.
@torch.inference_mode()
def code_input(model: SpectralAutoencoder, wav: np.ndarray | torch.Tensor, sr: int, *,
               level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> torch.Tensor:
    """The features ``model.encode`` takes for ``wav [C, T]`` (float, already checked) at ``sr``:
    resampled to the model's rate, on the model's device, lifted as :func:`model_input` lifts
    them; ``[C, F', N]``, the channels as the batch. The server runs ``model.encode`` on them
    itself (to bound and explain its answer); otherwise call :func:`audio_code`."""
    x = resample(wav, sr, model.config.sample_rate).to(_device_of(model))  # [C, T'] at the model's rate
    return model_input(model, x, level_lift=level_lift)[1]  # [C, F', N]


@torch.inference_mode()
def audio_code(model: SpectralAutoencoder, wav: np.ndarray | torch.Tensor, sr: int, *,
               level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> torch.Tensor:
    """The code of ``wav [C, T]`` at ``sr``: ``model.encode`` of :func:`code_input`,
    ``[C, code_dim, N]`` (N frames at the model's rate), on the model's device."""
    return model.encode(code_input(model, wav, sr, level_lift=level_lift))  # [C, code_dim, N]


# ---- above the model's band ----------------------------------------------------------------------
# A file at a higher rate than the model's holds a band the network never sees (above 8 kHz for the
# 16 kHz denoiser). Resampling down and up again left it out: every 44.1/48 kHz output was
# band-limited to 8 kHz, clean recordings included. Now that band is taken from the input and
# scaled, frame by frame, by the gain the model gave the top of its own band (the top quarter: 6-8
# kHz), where the same noises and the same fricatives usually reach. Frames the model silenced lose
# their high band too; speech frames keep theirs.
HIGH_BAND_GAIN_FROM = 0.75  # the gain is read from the model's bins above this fraction of its band
# At the shipped model's plain top-band gain, clean 44.1 kHz speech kept 84% of its band above 8 kHz
# (projection): the model's mask takes some of clean speech's 6-8 kHz. The rule passes the band
# above at 1.3 times that gain (at most 1), chosen on 6 clips of training speech with synthetic
# noise (benchmarks/high_band.py --clips 6 --seed 1 --gain-scale S ..., model card "Above 8 kHz",
# results/high-band-rules/): against 1, the high band's mean SNR 12.2 dB instead of 9.2,
# full-band SI-SDR +0.04 dB, worst case (white noise at 0 dB) -0.49 dB instead of -0.23.
HIGH_BAND_GAIN_SCALE = 1.3


@dataclass(frozen=True)
class HighBand:
    """How the band above the model's is treated, passed explicitly to :func:`denoise`,
    :func:`denoise_batch` and :class:`StreamingDenoiser` (not module globals for
    benchmarks/high_band.py to patch around each call). The default is the shipped rule.

    ``keep``: False passes nothing above the model's band (to compare with a band-limited output).
    ``scale``, ``power``: the gain is ``min(1, scale * r**power)``, ``r`` the top-band amplitude
    ratio within [0, 1] (:func:`top_band_gains`); other values only to compare rules."""

    keep: bool = True
    scale: float = HIGH_BAND_GAIN_SCALE
    power: float = 1.0

    def applies(self, sr: int, model: SpectralAutoencoder) -> bool:
        """Whether a file at ``sr`` gets this treatment (:func:`has_high_band`)."""
        return self.keep and has_high_band(sr, model)

    def gains(self, spec: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
        return top_band_gains(spec, est, scale=self.scale, power=self.power)


SHIPPED_HIGH_BAND = HighBand()


def top_band_gains(spec: torch.Tensor, est: torch.Tensor, *, scale: float = HIGH_BAND_GAIN_SCALE,
                   power: float = 1.0) -> torch.Tensor:
    """Per-frame gain for the band above the model's, from the amplitude the model gave the top of
    its own: ``scale`` times ``r**power``, ``r = sqrt(sum |est|^2 / sum |spec|^2)`` over the bins
    above :data:`HIGH_BAND_GAIN_FROM` within [0, 1] (0 where that band is silent), at most 1.
    ``spec``, ``est``: complex ``[B, F, N]`` -> ``[B, 1, N]``."""
    lo = int(spec.shape[-2] * HIGH_BAND_GAIN_FROM)
    kept = est[..., lo:, :].abs().square().sum(-2, keepdim=True)  # [B, 1, N]
    had = spec[..., lo:, :].abs().square().sum(-2, keepdim=True)  # [B, 1, N]
    ratio = torch.where(had > 0, (kept / had.clamp_min(1e-30)).sqrt(), 0.0)  # [B, 1, N]
    if power != 1.0:  # skipped at 1, so the shipped rule's output stays bit for bit what it was
        ratio = ratio.clamp(0.0, 1.0) ** power
    elif scale < 1.0:  # a ratio above 1 (a boost) would get through a scale below 1
        ratio = ratio.clamp(0.0, 1.0)
    return (scale * ratio).clamp(0.0, 1.0)


def gain_at_rate(gain: torch.Tensor, start: int, first: int, n: int, model_sr: int, sr: int) -> torch.Tensor:
    """The model-rate gain ``gain [C, L]`` (its column 0 is model sample ``start``) at the file's
    samples ``first .. first + n`` -> ``[C, n]``, linearly interpolated: file sample ``i`` sits at
    model sample ``i * model_sr / sr``; past the gain's last sample it stays at its last value.
    Not through the sinc resampler: that one pads with zeros, and a gain of 1 came out 13% above 1
    next to the file's first sample and fell to 0.3 at its last.

    Worked in blocks of the rates' ratio (``bo`` file samples span ``bi`` model samples, ``g =
    gcd``), whose left neighbours and weights are the same in every block; ``gain`` must start at
    or before model sample ``(first // bo) * bi``."""
    if n == 0:
        return gain.new_zeros(gain.shape[0], 0)
    g = math.gcd(model_sr, sr)
    bi, bo = model_sr // g, sr // g
    b0, b1 = first // bo, -(-(first + n) // bo)  # the blocks holding the samples asked for
    j = torch.arange(bo)  # [bo]
    left, weight = j * bi // bo, ((j * bi) % bo).float() / bo  # [bo] each: neighbour within a block, its share
    lo, need = b0 * bi - start, (b1 - b0) * bi + 1
    if lo < 0 or lo >= gain.shape[-1]:
        raise ValueError(f"gain_at_rate: file samples from {first} need the gain from model sample {b0 * bi}, "
                         f"and it holds {start}..{start + gain.shape[-1] - 1}")
    seg = gain[:, lo : lo + need]  # [C, <= need]
    if seg.shape[-1] < need:  # past the end: the last value
        seg = F.pad(seg[:, None], (0, need - seg.shape[-1]), mode="replicate")[:, 0]
    blocks = seg.unfold(-1, bi + 1, bi)  # [C, b1 - b0, bi + 1], each with the next block's first sample
    g0 = blocks[..., left]  # [C, b1 - b0, bo]
    out = (g0 + (blocks[..., left + 1] - g0) * weight).reshape(gain.shape[0], -1)  # [C, (b1 - b0) * bo]
    return out[:, first - b0 * bo : first - b0 * bo + n]


def has_high_band(sr: int, model: SpectralAutoencoder) -> bool:
    """Whether a file at ``sr`` holds a band above the model's (the part resampling drops)."""
    return sr > model.config.sample_rate


def with_high_band(x: torch.Tensor, y: torch.Tensor, below: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The model's output ``y`` plus the input's band above the model's, scaled by ``gain``: all
    ``[C, T]`` at the file's rate; ``below`` is the input as the model saw it, resampled back (the
    part of ``x`` within the model's band), so ``x - below`` is what the model never saw. A model
    that changes nothing (gain 1) gives ``x`` back whole."""
    return y + gain * (x - below)


class ModelOutputError(RuntimeError):
    """The model gave NaN or Inf samples for finite input: its weights or settings are broken."""


def _blend(clean: torch.Tensor, noisy: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength`` 1: the model's output; 0: the input untouched; between: a mix, which caps
    how much the model may remove (an attenuation limit users ask for). Every path's output
    passes here, so a broken model is refused here: NaN was written as -1.0 (full-scale DC) and
    the file reported denoised."""
    if not bool(torch.isfinite(clean).all()):
        raise ModelOutputError("the model's output holds NaN or Inf samples for finite input: its weights or "
                               "settings are broken (e.g. a checkpoint exported with a non-finite setting)")
    if strength >= 1.0:
        return clean
    return strength * clean + (1.0 - strength) * noisy


def _check_strength(strength: float) -> None:
    if not (0.0 <= strength <= 1.0) or math.isnan(strength):
        raise ValueError(f"strength must be within [0, 1], got {strength}")


def _check_audio_model(model) -> None:
    """Refuse a model that does not take audio (an image model) with a message, not an AttributeError."""
    if not takes_audio(model):
        name = getattr(model, "registry_name", type(model).__name__)
        raise ValueError(f"denoising needs a spectrogram model; this is a {name!r} model")


@torch.inference_mode()
def denoise(model: SpectralAutoencoder, wav: np.ndarray | torch.Tensor, sr: int, *, strength: float = 1.0,
            max_offline_seconds: float = OFFLINE_MAX_SECONDS, stop: Callable[[], bool] | None = None,
            high_band: HighBand = SHIPPED_HIGH_BAND, level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> np.ndarray:
    """Denoise ``wav`` (``[T]`` or ``[C, T]``, any rate) with ``model``; same shape and rate out.

    Each channel is processed separately. At a rate above the model's, the band the model never
    sees is kept at the gain the model gave the top of its own band (:func:`with_high_band`;
    ``high_band`` says how, :class:`HighBand`). Quiet input's features are lifted as
    ``level_lift`` says (:class:`LevelLift`, :func:`model_input`).
    Long inputs (over ``max_offline_seconds`` channel-
    seconds: 64 channels of 20 s count 1,280) of a causal model stream through
    :class:`StreamingDenoiser` (bounded memory, same output); long inputs of a non-causal model
    are cut into overlapping windows that are cross-faded. ``stop()`` is asked before each piece
    or window of a long input; when it says True, :class:`Stopped` is raised.
    """
    _check_audio_model(model)
    x, squeeze = checked_clip(wav, sr, strength)
    if channel_seconds(x, sr) > max_offline_seconds:
        if model.causal:
            s = StreamingDenoiser(model, sr, x.shape[0], strength=strength, realtime=False,  # pieces of seconds
                                  high_band=high_band, level_lift=level_lift)
            parts = []
            for i in range(0, x.shape[-1], s.piece):  # the pieces push would cut: same output
                check_stop(stop, f"stopped after {i} of {x.shape[-1]} samples")
                parts.append(s.push(x[:, i : i + s.piece]))
            y = torch.cat([*parts, s.finish()], -1)
        else:
            win = max(1, int(max_offline_seconds * sr / x.shape[0]))
            y = _denoise_windows(model, x, sr, strength, win, stop, high_band, level_lift)
    else:
        y = _denoise_offline(model, x, sr, strength, high_band, level_lift)
    out = y.cpu().numpy()
    return out[0] if squeeze else out


def checked_clip(wav: np.ndarray | torch.Tensor, sr: int, strength: float) -> tuple[torch.Tensor, bool]:
    """``(x [C, T] float32 on the CPU, whether wav was 1-D)`` after every check a clip gets,
    whichever path it then takes: layout and dtype, samples, rate, channel count, strength."""
    _check_strength(strength)
    x, squeeze = as_channels_first(wav)
    x = x.cpu()
    check_pcm(x.numpy(), sr, "wav", argument="sr")  # the library's parameters, not a request's fields
    check_channels(x.shape[0])  # the streamed path refused these; the offline one took them
    return x, squeeze


def channel_seconds(wav: np.ndarray | torch.Tensor, sr: int) -> float:
    """What a clip ``[C, T]`` (or ``[T]``) costs the model: seconds times channels."""
    channels = wav.shape[0] if wav.ndim == 2 else 1
    return channels * wav.shape[-1] / sr


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _denoise_offline(model: SpectralAutoencoder, x: torch.Tensor, sr: int, strength: float,
                     high_band: HighBand = SHIPPED_HIGH_BAND, level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> torch.Tensor:
    """``x [C, T]`` (checked) at ``sr`` -> ``[C, T]``: all channels through the model as one batch."""
    return torch.from_numpy(_denoise_clips(model, [(x.cpu(), False, int(sr), strength)], high_band, level_lift)[0])


@torch.inference_mode()
def denoise_batch(model: SpectralAutoencoder, items: list[tuple[np.ndarray, int, float]], *,
                  high_band: HighBand = SHIPPED_HIGH_BAND, level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> list[np.ndarray]:
    """Denoise several clips ``(wav [C, T] or [T], sr, strength)`` with one forward pass of the model.

    Per clip: resample to the model's rate, STFT, then the model runs once on the features of all
    channels of all clips, zero-padded at the end to the longest in frames; mask, iSTFT with the
    clip's own length, resample back, blend. A causal model's outputs do not depend on what
    follows, so each result equals the clip denoised alone; a non-causal model takes one clip.
    """
    _check_audio_model(model)
    if not items:
        raise ValueError("denoise_batch needs at least one clip")
    if len(items) > 1 and not model.causal:  # before any work; estimate_clips holds the same rule
        raise ValueError(NON_CAUSAL_BATCH)
    # The checks denoise() makes, clip by clip: unchecked, int16 came back as noise and [T, C] as
    # T channels of C samples.
    return _denoise_clips(model, [(*checked_clip(wav, sr, strength), int(sr), strength) for wav, sr, strength in items],
                          high_band, level_lift)


@torch.inference_mode()
def _denoise_clips(model: SpectralAutoencoder, checked: list[tuple[torch.Tensor, bool, int, float]],
                   high_band: HighBand = SHIPPED_HIGH_BAND, level_lift: LevelLift = SHIPPED_LEVEL_LIFT,
                   traces: list[DenoiseTrace] | None = None) -> list[np.ndarray]:
    """:func:`denoise_batch` of clips already checked: ``(x [C, T] on the CPU, was 1-D, sr, strength)``.
    ``traces``: a list to which each clip's :class:`DenoiseTrace` is appended (the quantities are
    computed either way; only kept when asked)."""
    msr = model.config.sample_rate
    dev = _device_of(model)
    lengths, seen, specs, feats = [], [], [], []  # seen: the model-rate input where a high band needs it
    for x, _, sr, _ in checked:
        z = resample(x, sr, msr, target="the model's ")  # [C, T'] on the CPU
        spec, feat = model_input(model, z.to(dev), level_lift=level_lift)  # [C, F, N_i], [C, F', N_i]
        lengths.append(z.shape[-1])
        seen.append(z if high_band.applies(sr, model) else None)
        specs.append(spec)
        feats.append(feat)
    estimated, results = estimate_clips(model, specs, feats), []
    for (x, squeeze, sr, strength), length, z, trace in zip(checked, lengths, seen, estimated, strict=True):
        spec, est, c = trace.spec, trace.est, trace.spec.shape[0]  # [C, F, N_i] each
        if traces is not None:
            traces.append(trace)
        if z is not None:  # a high band: one inverse for output and gain, one resampling for output and input
            gains = gain_frames(high_band.gains(spec, est), model.stft.spec.window)  # [C, F, N_i]
            y_gain = model.stft.inverse(torch.cat([est, gains]), length).float().cpu()  # [2C, T'] at the model's rate
            up = fit_length(resample(torch.cat([y_gain[:c], z]), msr, sr), x.shape[-1])  # [2C, T]
            gain = gain_at_rate(y_gain[c:], 0, 0, x.shape[-1], msr, sr)  # [C, T]
            y = with_high_band(x, up[:c], up[c:], gain)  # [C, T]
        else:
            y = model.stft.inverse(est, length)  # [C, T'] at the model's rate
            y = fit_length(resample(y.float().cpu(), msr, sr), x.shape[-1])  # [C, T]
        y = _blend(y, x, strength).numpy()
        results.append(y[0] if squeeze else y)
    return results


NON_CAUSAL_BATCH = "only a causal model can batch clips of different lengths (end padding)"


@dataclass(frozen=True)
class DenoiseTrace:
    """What the offline path computed for one clip on the way to its output, at the model's rate
    and STFT (``inspect --audio`` draws these, so it draws what :func:`denoise` computed):
    ``spec [C, F, N]`` the input's STFT, ``features [C, F', N]`` what the network was fed (quiet
    input lifted, :func:`model_input`), ``out [C, F_out, N]`` its output (mask, filter taps, gate),
    ``code [C, K, N']`` its latent code, ``est [C, F, N]`` the estimate whose iSTFT is the output
    below the model's Nyquist frequency."""

    spec: torch.Tensor
    features: torch.Tensor
    out: torch.Tensor
    code: torch.Tensor
    est: torch.Tensor


def estimate_clips(model: SpectralAutoencoder, specs: list[torch.Tensor], feats: list[torch.Tensor]) -> list[DenoiseTrace]:
    """The network run as denoising runs it, the one place it is (:func:`denoise`, :func:`denoise_batch`,
    training validation): clips at the model's rate, each its STFT ``specs[i] [C_i, F, N_i]`` and
    features ``feats[i] [C_i, F', N_i]`` (:func:`network_features`, :func:`model_input`), zero-padded
    at the end to the longest and run as one batch; each clip's estimate ``est [C_i, F, N_i]`` (whose
    iSTFT is the output) from its own frames of the output, as float32. Returns each clip's
    :class:`DenoiseTrace`. Call it under ``torch.inference_mode()`` (or no_grad).

    A non-causal model's output at a frame depends on the frames after it, end padding included,
    so clips of different lengths are refused for one (ValueError, as :func:`denoise_batch`
    refuses them); clips of one length (validation's mixtures, the rows of one clip) need no padding."""
    n_max = max(s.shape[-1] for s in specs)
    if not model.causal and any(s.shape[-1] != n_max for s in specs):
        raise ValueError(NON_CAUSAL_BATCH)
    batch = torch.cat([F.pad(f, (0, n_max - f.shape[-1])) for f in feats])  # [R, F', N]
    out, code = model(batch)  # [R, F, N], [R, K, N']
    traces, row = [], 0
    for spec in specs:
        c, n = spec.shape[0], spec.shape[-1]
        est = model.estimate_spec(spec, out[row : row + c, :, :n].float())  # [C, F, N_i]
        n_code = -(-n // model.code_stride)  # the clip's own code frames, as it alone would have
        traces.append(DenoiseTrace(spec, batch[row : row + c, :, :n], out[row : row + c, :, :n],
                                   code[row : row + c, ..., :n_code], est))
        row += c
    return traces


@torch.inference_mode()
def denoise_traced(model: SpectralAutoencoder, wav: np.ndarray | torch.Tensor, sr: int, *, strength: float = 1.0,
                   high_band: HighBand = SHIPPED_HIGH_BAND,
                   level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> tuple[np.ndarray, DenoiseTrace]:
    """:func:`denoise` on its offline path (the whole clip as one batch, at any length: no chunking)
    and the :class:`DenoiseTrace` of what it computed; the output is :func:`denoise`'s to the bit
    (for an input :func:`denoise` takes whole: up to ``max_offline_seconds`` channel-seconds)."""
    _check_audio_model(model)
    x, squeeze = checked_clip(wav, sr, strength)
    traces: list[DenoiseTrace] = []
    y = _denoise_clips(model, [(x, squeeze, int(sr), strength)], high_band, level_lift, traces)[0]
    return y, traces[0]


def _denoise_windows(model: SpectralAutoencoder, x: torch.Tensor, sr: int, strength: float, win: int,
                     stop: Callable[[], bool] | None = None, high_band: HighBand = SHIPPED_HIGH_BAND,
                     level_lift: LevelLift = SHIPPED_LEVEL_LIFT) -> torch.Tensor:
    """Non-causal models on long input: windows with 1/8 overlap, linearly cross-faded."""
    overlap = max(1, win // 8)
    hop = win - overlap
    out = torch.zeros_like(x)
    weight = torch.zeros(x.shape[-1])
    ramp = torch.linspace(0, 1, overlap + 2)[1:-1]
    for start in range(0, x.shape[-1], hop):
        check_stop(stop, f"stopped after {start} of {x.shape[-1]} samples")
        seg = x[:, start : start + win]
        y = _denoise_offline(model, seg, sr, strength, high_band, level_lift)
        w = torch.ones(seg.shape[-1])
        if start > 0:
            w[: min(overlap, len(w))] = ramp[: min(overlap, len(w))]
        if start + win < x.shape[-1]:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
        out[:, start : start + seg.shape[-1]] += y * w
        weight[start : start + seg.shape[-1]] += w
        if start + win >= x.shape[-1]:
            break
    return out / weight.clamp_min(1e-8)


class StreamingDenoiser:
    """Denoise audio chunk by chunk, carrying state between chunks.

    ``push(chunk [C, n])`` returns the cleaned samples that are ready (possibly none);
    ``finish()`` returns the rest. Both lay it out as :func:`denoise` does (``[n]`` for a 1-D
    chunk, ``[C, n]`` for a 2-D one) and type it by the chunk: a numpy array for an array (or a
    list), as denoise() gives, but an ordinary CPU tensor for a tensor chunk (on any device), where
    denoise() gives a numpy array for any input. The concatenation has
    exactly the input's length and equals :func:`denoise` on the whole input to float tolerance.
    Needs a causal model.

    ``realtime``: fed as it happens in small calls (a server's stream, a microphone), so a rate
    whose resampling filter would not keep up is refused (:data:`~audioae.audio.MAX_RESAMPLE_FILTER_BYTES`:
    44056 Hz); False for a file fed in long blocks (:func:`denoise`, the folder tool), which takes
    what offline denoising takes. ``high_band``: the band above the model's, and ``level_lift``: quiet
    input's lift, as :func:`denoise` takes them.
    """

    def __init__(self, model: SpectralAutoencoder, sr: int, channels: int = 1, *, strength: float = 1.0,
                 realtime: bool = True, high_band: HighBand = SHIPPED_HIGH_BAND,
                 level_lift: LevelLift = SHIPPED_LEVEL_LIFT):
        _check_audio_model(model)
        if not model.causal:
            raise ValueError(f"model {model.registry_name} is not causal and cannot stream")
        _check_strength(strength)
        check_sample_rate(sr, "stream")
        sr = int(sr)
        check_channels(channels)  # AudioError: the folder tool reports it like any bad file
        channels = int(channels)  # numpy's integers too
        c = model.config
        self.model, self.sr, self.strength, self.channels = model, sr, strength, channels
        self.finished = False
        self.device = _device_of(model)
        self.down = StreamingResampler(sr, c.sample_rate, channels, target="the model's ", realtime=realtime)
        # With a band above the model's, the output and the input as the model saw it go up
        # together, and the top-band gain is interpolated (see with_high_band, gain_at_rate).
        self.high_band_rule = high_band
        self.high_band = high_band.applies(sr, model)
        self.rows = channels * (2 if self.high_band else 1)  # the output, and the input as seen with a high band
        self.up = StreamingResampler(c.sample_rate, sr, self.rows, realtime=realtime)  # checked both ways above
        self.seen = torch.zeros(channels, 0)  # model-rate input awaiting its output (high band only)
        self.gain = torch.zeros(channels, 0)  # model-rate gain from model sample gain_start on
        self.gain_start = 0
        self.stft = StreamingSTFT(c.n_fft, c.hop_length, (channels,), device=self.device)
        # Look-ahead frames arrive ``lookahead`` samples after the frame of the same index.
        self.ahead = (StreamingSTFT(c.n_fft, c.hop_length, (channels,), device=self.device, offset=c.lookahead)
                      if c.lookahead else None)
        empty = torch.zeros(channels, c.n_bins, 0, dtype=torch.complex64, device=self.device)
        self.unpaired, self.ahead_frames = empty, empty  # frames still waiting for their look-ahead
        self.unpaired_gains = torch.ones(channels, 1, 0, device=self.device)  # and their level gains
        self.level = LevelTracker(model, level_lift)
        self.state = model.stream_init(channels)
        self.pending_spec: list[torch.Tensor] = []  # frames awaiting the model's output
        # Frames already estimated that a deep filter still reads (its past taps).
        self.spec_past = torch.zeros(channels, c.n_bins, 0, dtype=torch.complex64, device=self.device)
        self.dry = torch.zeros(channels, 0)  # input kept for blending, aligned with output
        self.n_in = 0
        self.n_out = 0
        self.as_tensor, self.squeeze = False, False  # how the last chunk came: how answers go back

    def _features(self, frames: torch.Tensor, ahead: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The new frames that have their look-ahead frames too, and their features ``[C, F', m]``."""
        gains = self.level.gains(frames)  # [C, 1, n], in frame order as offline
        if self.ahead is None:
            return frames, lifted_features(self.model, frames, None, gains)
        self.unpaired = torch.cat([self.unpaired, frames], dim=-1)  # [C, F, a]
        self.unpaired_gains = torch.cat([self.unpaired_gains, gains], dim=-1)  # [C, 1, a]
        self.ahead_frames = torch.cat([self.ahead_frames, ahead], dim=-1)  # [C, F, b], b <= a
        m = self.ahead_frames.shape[-1]
        frames, ahead, gains = self.unpaired[..., :m], self.ahead_frames, self.unpaired_gains[..., :m]
        self.unpaired, self.ahead_frames = self.unpaired[..., m:], self.ahead_frames[..., m:]
        self.unpaired_gains = self.unpaired_gains[..., m:]
        return frames, lifted_features(self.model, frames, ahead, gains)

    def _process(self, frames: torch.Tensor, ahead: torch.Tensor | None, final: bool) -> torch.Tensor:
        frames, feats = self._features(frames, ahead)  # [C, F, m'], [C, F', m']
        self.pending_spec.append(frames)
        spec = torch.cat(self.pending_spec, dim=-1)  # [C, F, n]
        if frames.shape[-1] == 0 and not final:  # no output yet: the output's rows, no samples
            return torch.zeros(self.rows, 0, device=self.device)
        out, self.state = self.model.stream_step(feats, self.state, final)  # [C, F', m]
        m = out.shape[-1]
        done, self.pending_spec = spec[..., :m], [spec[..., m:]]
        with_past = torch.cat([self.spec_past, done], dim=-1)  # [C, F, P + m]
        # max(0, ...): while fewer frames than the context have passed, keep them all (a negative
        # start would keep only the last few, and the filter would lose taps for good).
        self.spec_past = with_past[..., max(0, with_past.shape[-1] - self.model.spec_context_frames) :]
        est = self.model.estimate_spec(with_past, out)  # [C, F, m]
        if self.high_band:
            est = torch.cat([est, gain_frames(self.high_band_rule.gains(done, est), self.stft.window)])  # [2C, F, m]
        return self.stft.add_frames(est)  # [C, k] at the model rate ([2C, k]: and the gains)

    def _output(self, y_model: torch.Tensor, final: bool) -> torch.Tensor:
        """``y_model [C, k]`` (``[2C, k]`` with the gains) at the model's rate -> ``[C, n]`` final output."""
        y_model = y_model.float().cpu()
        if self.high_band:
            c, k = self.channels, y_model.shape[-1]
            seen, self.seen = self.seen[:, :k], self.seen[:, k:]  # [C, k] the input samples of this output, [C, rest]
            self.gain = torch.cat([self.gain, y_model[c:]], dim=-1)  # [C, L + k]
            y_model = torch.cat([y_model[:c], seen])  # [2C, k]
        y = self.up.push(y_model)
        if final:
            y = torch.cat([y, self.up.finish()], dim=-1)
        n = y.shape[-1]
        if final:
            n = self.n_in - self.n_out  # the resamplers' rounding: crop or pad to the input length
            y = fit_length(y, n)
        dry, self.dry = fit_length(self.dry[:, :n], n), self.dry[:, n:]
        if self.high_band:
            y = with_high_band(dry, y[: self.channels], y[self.channels :], self._gain_for(n))  # [C, n]
        self.n_out += n
        return _blend(y, dry, self.strength)

    def _gain_for(self, n: int) -> torch.Tensor:
        """The gain at the next ``n`` output samples ``[C, n]``; forgets what no later sample reads.
        The up-resampler answers a sample only once the model-rate samples ``width`` past it have
        come, so the two the interpolation reads are here (except past the end, clamped as offline)."""
        msr = self.model.config.sample_rate
        gain = gain_at_rate(self.gain, self.gain_start, self.n_out, n, msr, self.sr)  # [C, n]
        g = math.gcd(msr, self.sr)
        keep = (self.n_out + n) // (self.sr // g) * (msr // g)  # the start of the next sample's block
        drop = max(0, min(keep - self.gain_start, self.gain.shape[-1] - 1))
        self.gain, self.gain_start = self.gain[:, drop:], self.gain_start + drop
        return gain

    def _remember(self, z: torch.Tensor) -> None:
        """Keep the model-rate input ``z [C, n']`` until its output comes (for the high band)."""
        if self.high_band:
            self.seen = torch.cat([self.seen, z], dim=-1)  # [C, S + n']

    @property
    def piece(self) -> int:
        """Samples per piece that :meth:`push` cuts a long chunk into."""
        return max(1, int(self.sr * min(STREAM_CHUNK_SECONDS, STREAM_CHUNK_CHANNEL_SECONDS / self.channels)))

    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError("this stream has finished; start a new StreamingDenoiser for the next one")

    def push(self, chunk: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """The cleaned samples of ``chunk`` (``[C, n]``, or ``[n]`` for a mono stream) that are
        ready, possibly none, laid out as :func:`denoise` gives them: a 1-D chunk's as ``[m]``, a
        2-D one's as ``[C, m]``; a numpy array for an array (or a list), as denoise() gives, and a
        CPU tensor (an ordinary one, not an inference tensor: in-place ops work) for a tensor on
        any device, where denoise() would give a numpy array."""
        x, squeeze = as_channels_first(chunk)
        x = x.cpu()  # [C, n]: the stream's state (input kept for blending, resamplers) is on the CPU
        self._check_open()
        if x.shape[0] != self.channels:
            if not squeeze and x.shape[1] == self.channels:  # sounddevice's blocks of <= 64 frames
                raise AudioError(f"chunk: channels first ([C, T]) expected, got shape {tuple(x.shape)}, which looks "
                                 f"like [T, C] (soundfile.read's layout) for this stream's {self.channels} "
                                 f"channel(s): pass its transpose, x.T")
            raise ValueError(f"this stream has {self.channels} channel(s), the chunk has {x.shape[0]}")
        y = self._push_checked(x)
        self.as_tensor, self.squeeze = isinstance(chunk, torch.Tensor), squeeze  # finish() answers alike
        return self._answer(y)

    @torch.inference_mode()
    def _push_checked(self, x: torch.Tensor) -> torch.Tensor:
        check_levels(x, f"chunk after {self.n_in} samples")  # x on the CPU (push)
        if x.shape[-1] == 0:
            return torch.zeros(x.shape[0], 0)
        # A long chunk goes through in pieces: the model's working memory grows with a push's
        # length, the stream's does not (8 channels of 115 s at 1 kHz in one push grew the server
        # by 1.5 GB: benchmarks/channel_memory.py).
        step = self.piece
        if x.shape[-1] > step:
            return torch.cat([self._push(x[:, i : i + step]) for i in range(0, x.shape[-1], step)], dim=-1)
        return self._push(x)

    def _answer(self, y: torch.Tensor) -> np.ndarray | torch.Tensor:
        """``y [C, m]`` (made in inference mode) as the last chunk came: 1-D for a 1-D chunk; a
        numpy array for an array, else an ordinary tensor (a clone made outside inference mode;
        inside it, as :func:`denoise` calls, the caller's mode applies)."""
        y = y[0] if self.squeeze else y  # a fresh tensor: nothing here keeps or reuses it
        if not self.as_tensor:
            return y.numpy()
        return y if torch.is_inference_mode_enabled() else y.clone()

    def _push(self, x: torch.Tensor) -> torch.Tensor:
        """One checked chunk ``[C, n]`` (on the CPU) of at most a step's length -> the cleaned
        samples ready. What counts the input (``n_in``, which finish() pads the output to, and the
        input kept for blending) is updated once the network has run, so that a chunk that raises
        before (out of memory) is not counted: finish() would pad the output by its length."""
        z = self.down.push(x)  # [C, n'] at the model's rate
        z_dev = z.to(self.device)
        frames = self.stft.push(z_dev)  # [C, F, m]
        ahead = self.ahead.push(z_dev) if self.ahead else None  # [C, F, m'], m' <= pending + m
        y = self._process(frames, ahead, final=False)  # [C, k] at the model's rate ([2C, k] with the gains)
        self._remember(z)
        self.dry = torch.cat([self.dry, x], dim=-1)
        self.n_in += x.shape[-1]
        return self._output(y, final=False)

    def finish(self) -> np.ndarray | torch.Tensor:
        """The rest of the cleaned samples, typed and laid out as the last :meth:`push`'s answer."""
        self._check_open()
        return self._answer(self._finish())

    @torch.inference_mode()
    def _finish(self) -> torch.Tensor:
        if self.n_in == 0:
            raise AudioError("the stream carried no audio")
        self.finished = True
        z = self.down.finish()  # [C, n']
        self._remember(z)
        z = z.to(self.device)
        frames = torch.cat([self.stft.push(z), self.stft.finish()], dim=-1)  # [C, F, m]
        ahead = torch.cat([self.ahead.push(z), self.ahead.finish()], dim=-1) if self.ahead else None
        y = self._process(frames, ahead, final=True)
        y = torch.cat([y, self.stft.drain()], dim=-1)
        return self._output(y, final=True)

