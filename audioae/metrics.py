"""Quality metrics: SI-SDR (zero-mean), PESQ wide-band at 16 kHz (``pesq``), STOI (``pystoi``)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from .audio import resample

log = logging.getLogger(__name__)


def si_sdr(estimate: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, eps: float = 1e-8):
    """Scale-invariant SDR in dB over the last axis, after removing the mean (Le Roux et al. 2019).

    Returns a tensor for tensor inputs (differentiable: the training loss uses it) and a float or
    array for numpy inputs. Silence (after the mean is removed) has no SI-SDR: called on it, this
    returns a finite number that means nothing (0 dB for a silent estimate, about -3096 dB for a
    speech estimate of a silent reference with :func:`_eps_for`'s eps). :func:`si_sdr_score` (what
    ``audioae eval`` scores with) refuses silent signals, and pairs too short to score, before scoring.
    """
    as_numpy = not isinstance(estimate, torch.Tensor)
    est = torch.as_tensor(estimate, dtype=torch.float64 if as_numpy else None)  # [..., T]
    ref = torch.as_tensor(reference, dtype=est.dtype, device=est.device)  # [..., T]
    est = est - est.mean(-1, keepdim=True)  # [..., T]
    ref = ref - ref.mean(-1, keepdim=True)  # [..., T]
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)  # [..., 1]
    target = alpha * ref  # [..., T]
    noise = est - target  # [..., T]
    val = 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))  # [...]
    if as_numpy:
        v = val.numpy()
        return float(v) if v.ndim == 0 else v
    return val


SILENT_RMS = 1e-7  # -140 dBFS, under one step of 24-bit audio (2**-23): digital silence, not a recording
SI_SDR_MIN_SECONDS = 0.032  # one 32 ms analysis frame (512 samples at 16 kHz)


def _silence(x: np.ndarray) -> str | None:
    """Why ``x`` counts as silent, or None: all zeros, or an RMS (after removing its mean: SI-SDR
    removes it, and STOI's and PESQ's bands start above DC) below :data:`SILENT_RMS`. No metric is
    defined against a silent reference: SI-SDR and STOI would divide nothing by nothing (0 dB or
    -100 dB, and 0.0), and PESQ scores a reference of a constant or of -180 dBFS noise 1.7-2.0."""
    x = np.asarray(x, np.float64)
    if not np.any(x):
        return "silent (all zeros)"
    if len(x) < 2:  # one sample is its own mean: a length check says more
        return None
    rms = float(np.sqrt(np.mean((x - x.mean()) ** 2)))
    if rms == 0:
        return "silent (a constant offset, nothing else)"
    if rms < SILENT_RMS:
        return f"silent (RMS {20 * math.log10(rms):.0f} dBFS after removing its mean, below {20 * math.log10(SILENT_RMS):.0f} dBFS)"
    return None


def si_sdr_score(estimate: np.ndarray, reference: np.ndarray, sr: int, also: str = "", label: str = "") -> float:
    """:func:`si_sdr` of one mono pair for ``audioae eval``; NaN (and a logged reason) where it is
    undefined: a pair shorter than :data:`SI_SDR_MIN_SECONDS` (a handful of samples decides the
    score, and one sample has none once its mean is removed), or a silent reference (the target is
    nothing: the score would be ``eps / eps``, 0 dB, or about -100 dB). Its ``eps`` is scaled to the
    pair's energy (:func:`_eps_for`), so that a quiet pair scores as a loud one would. ``also``: a metric
    that the missing score takes with it, named in the reason; ``label``: what the reason names
    instead (a score of another span than the pair's)."""
    what = label or (f"SI-SDR (and so {also})" if also else "SI-SDR")
    if len(reference) < SI_SDR_MIN_SECONDS * sr:
        log.warning("%s could not score this pair: %d samples at %d Hz, shorter than one %.0f ms frame (%d samples)",
                    what, len(reference), sr, 1000 * SI_SDR_MIN_SECONDS, math.ceil(SI_SDR_MIN_SECONDS * sr))
        return float("nan")
    silent = _silence(reference)
    if silent:
        log.warning("%s could not score this pair: the reference is %s", what, silent)
        return float("nan")
    silent = _silence(estimate)
    if silent:  # no direction to compare: eps / eps would read 0 dB, above most noisy inputs
        log.warning("%s could not score this pair: the estimate is %s, and SI-SDR is undefined for it (it "
                    "would read 0 dB, more than a noisy input at 0 dB SNR or below scores)", what, silent)
        return float("nan")
    return si_sdr(estimate, reference, eps=_eps_for(reference, estimate))


def _eps_for(*signals: np.ndarray) -> float:
    """:func:`si_sdr`'s ``eps`` for this pair: 1e-10 of the smaller of the two energies (after
    removing the mean), so that it scales with the signals and a pair scores the same at any level.
    A fixed 1e-8 biased quiet pairs (a 1 s white-noise reference at 16 kHz, 15 dB above the noise
    added to it, scored 14.2 dB at -100 dBFS and 1.0 dB at -120 dBFS; a perfect estimate 120 dB
    below its reference scored 0.07 dB), and 1e-8 * min(energy, 1) made the ceiling depend on the
    level: an identical pair scored 80.0 dB when quiet and up to 120.8 dB when loud. It only keeps
    a perfect estimate from dividing by zero: an identical pair scores 100 dB at any level, one 40 dB
    apart loses 4e-6 dB to it (1e-10 is about what 1e-8 was for speech files with energies of 10 to
    1e4, so their scores hold). Floored at the smallest normal float64, so that silence (which
    :func:`si_sdr_score` refuses before) still gives a finite number."""
    energies = [float(((x - x.mean()) ** 2).sum()) for x in (np.asarray(s, np.float64) for s in signals)]
    return max(1e-10 * min(energies), float(np.finfo(np.float64).tiny))


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    return resample(np.asarray(x, dtype=np.float32), sr, 16000).numpy().astype(np.float64)


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) at 16 kHz; inputs at other rates are resampled. NaN when the
    pair is too short for PESQ, the estimate is all zeros, or the reference is silent."""
    from pesq import pesq
    from pesq.cypesq import PesqError

    # PESQ's own error for all zeros is "cannot convert float NaN to integer". The reference
    # first, as the other metrics check it: a silent pair's notes then give one reason.
    for name, silent in (("reference", _silence(reference)),
                         ("estimate", None if np.any(estimate) else "silent (all zeros)")):
        if silent:
            log.warning("PESQ could not score this pair: the %s is %s", name, silent)
            return float("nan")
    try:
        return float(pesq(16000, _to_16k(reference, sr), _to_16k(estimate, sr), "wb"))
    except (PesqError, ValueError) as exc:
        reason = exc.args[0] if exc.args else exc  # the C library's reason arrives as bytes
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
        log.warning("PESQ could not score this pair: %s", reason)
        return float("nan")


def pesq_rate_note(sr: int) -> str | None:
    """What a reader of a PESQ score at ``sr`` should know: it was computed at 16 kHz, wide-band,
    on the pair resampled from ``sr`` (None at 16 kHz). Below 16 kHz the pair holds nothing in the
    top of the band wide-band PESQ judges, so its scores compare only with scores at that rate."""
    if sr == 16000:
        return None
    if sr < 16000:
        return (f"PESQ is wide-band (P.862.2, 16 kHz) on {sr} Hz audio upsampled to 16 kHz: nothing above "
                f"{sr / 2000:g} kHz, where wide-band PESQ still judges speech; compare it only with scores of "
                f"{sr} Hz audio (narrow-band PESQ, P.862, is the measure made for it)")
    return f"PESQ on the pair resampled from {sr} Hz to 16 kHz (wide-band PESQ's rate): nothing above 8 kHz counts"


STOI_MIN_SECONDS = 0.0256  # one 256-sample analysis frame at STOI's 10 kHz; pystoi fails below it


def stoi(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """STOI (pystoi). NaN when the pair cannot be scored: shorter than one STOI frame (pystoi
    fails), a silent reference (pystoi drops frames 40 dB below the loudest, so it keeps all of
    one that is silent throughout and returns 0.0), or fewer than its 30 non-silent frames (pystoi
    warns and returns 1e-5, a number that would pass for a score)."""
    import warnings

    from pystoi import stoi as _stoi

    if len(reference) < STOI_MIN_SECONDS * sr:
        log.warning("STOI could not score this pair: %d samples at %d Hz, shorter than STOI's %.1f ms frame",
                    len(reference), sr, 1000 * STOI_MIN_SECONDS)
        return float("nan")
    silent = _silence(reference)
    if silent:  # pystoi keeps every frame of an all-silent reference and says 0.0
        log.warning("STOI could not score this pair: the reference is %s", silent)
        return float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = _stoi(np.asarray(reference, np.float64), np.asarray(estimate, np.float64), sr, extended=False)
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        log.warning("STOI could not score this pair: fewer than 30 non-silent 25.6 ms frames (%.2f s at %d Hz)",
                    len(reference) / sr, sr)
        return float("nan")
    return float(value)


def score(estimate: np.ndarray, reference: np.ndarray, sr: int, noisy: np.ndarray | None = None) -> dict[str, float]:
    """Every metric for one mono pair; with ``noisy``, also the SI-SDR improvement over it. A
    metric that cannot score the pair is NaN, and the reason is logged (a warning)."""
    out = {
        "si_sdr": si_sdr_score(estimate, reference, sr, also="SI-SDRi" if noisy is not None else ""),
        "pesq": pesq_wb(estimate, reference, sr),
        "stoi": stoi(estimate, reference, sr),
    }
    if noisy is not None:
        out["si_sdr_i"] = si_sdr_improvement(estimate, reference, noisy, sr, out["si_sdr"])
    return out


def si_sdr_improvement(estimate: np.ndarray, reference: np.ndarray, noisy: np.ndarray, sr: int,
                       estimate_sdr: float | None = None, label: str = "") -> float:
    """SI-SDR of ``estimate`` minus that of ``noisy``, both against ``reference`` (``estimate_sdr``:
    the first, when already scored over these samples); NaN where either is undefined, the reason
    logged once (the estimate's by :func:`si_sdr_score`, named ``label`` when given)."""
    if estimate_sdr is None:
        estimate_sdr = si_sdr_score(estimate, reference, sr, also="SI-SDRi", label=label)
    if not math.isfinite(estimate_sdr):  # said already, for both
        return math.nan
    silent = _silence(noisy)
    if silent:  # the noisy file is at fault, not the estimate, whose SI-SDR is still shown
        log.warning("SI-SDRi could not score this pair: the noisy file is %s, and its SI-SDR is undefined", silent)
        return math.nan
    return estimate_sdr - si_sdr(noisy, reference, eps=_eps_for(reference, noisy))
