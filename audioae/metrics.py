"""Quality metrics: SI-SDR (zero-mean), PESQ wide-band at 16 kHz (``pesq``), STOI (``pystoi``)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from .audio import resample

log = logging.getLogger(__name__)


def si_sdr(estimate: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, eps: float = 1e-8):
    """Scale-invariant SDR in dB over the last axis, after removing the mean (Le Roux et al. 2019).

    Returns a tensor for tensor inputs (differentiable: the training loss uses it) and a float or
    array for numpy inputs.
    """
    as_numpy = not isinstance(estimate, torch.Tensor)
    est = torch.as_tensor(estimate, dtype=torch.float64 if as_numpy else None)
    ref = torch.as_tensor(reference, dtype=est.dtype, device=est.device)
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    val = 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))
    if as_numpy:
        v = val.numpy()
        return float(v) if v.ndim == 0 else v
    return val


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    return resample(np.asarray(x, dtype=np.float32), sr, 16000).numpy().astype(np.float64)


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) at 16 kHz; inputs at other rates are resampled. NaN when the
    signal is too short or silent for PESQ to score."""
    from pesq import pesq
    from pesq.cypesq import PesqError

    for name, x in (("estimate", estimate), ("reference", reference)):
        if not np.any(x):  # PESQ's own error for it is "cannot convert float NaN to integer"
            log.warning("PESQ could not score this pair: the %s is silent (all zeros)", name)
            return float("nan")
    try:
        return float(pesq(16000, _to_16k(reference, sr), _to_16k(estimate, sr), "wb"))
    except (PesqError, ValueError) as exc:
        reason = exc.args[0] if exc.args else exc  # the C library's reason arrives as bytes
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
        log.warning("PESQ could not score this pair: %s", reason)
        return float("nan")


STOI_MIN_SECONDS = 0.0256  # one 256-sample analysis frame at STOI's 10 kHz; pystoi fails below it


def stoi(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """STOI (pystoi). NaN when the pair is too short to score: shorter than one STOI frame (pystoi
    fails), or with fewer than its 30 non-silent frames (pystoi warns and returns 1e-5, a number
    that would pass for a score)."""
    import warnings

    from pystoi import stoi as _stoi

    if len(reference) < STOI_MIN_SECONDS * sr:
        log.warning("STOI could not score this pair: %d samples at %d Hz, shorter than STOI's %.1f ms frame",
                    len(reference), sr, 1000 * STOI_MIN_SECONDS)
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
    """Every metric for one mono pair; with ``noisy``, also the SI-SDR improvement over it."""
    out = {
        "si_sdr": si_sdr(estimate, reference),
        "pesq": pesq_wb(estimate, reference, sr),
        "stoi": stoi(estimate, reference, sr),
    }
    if noisy is not None:
        out["si_sdr_i"] = out["si_sdr"] - si_sdr(noisy, reference)
    return out
