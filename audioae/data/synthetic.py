"""Generated signals for tests, demos and the tiny default: speech-like voiced sounds and a few
noise families. Deterministic given a ``numpy.random.Generator``."""

from __future__ import annotations

import numpy as np
from scipy import signal as sps


def speech_like(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Harmonic 'syllables' with gliding pitch, two moving formants and pauses, peak ~0.5."""
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    t0 = 0
    while t0 < n:
        dur = int(rng.uniform(0.12, 0.35) * sr)
        gap = int(rng.uniform(0.02, 0.15) * sr)
        seg_n = min(dur, n - t0)
        t = np.arange(seg_n) / sr
        f0 = rng.uniform(90, 250) * (1 + rng.uniform(-0.2, 0.2) * t / max(t[-1], 1e-3) if seg_n > 1 else 1)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        harmonics = np.arange(1, 30)
        formants = rng.uniform([300, 900], [900, 2500])
        seg = np.zeros(seg_n)
        for h in harmonics:
            fh = f0 * h
            amp = sum(np.exp(-((fh - f) ** 2) / (2 * 150.0**2)) for f in formants) + 0.02
            seg += amp * np.sin(h * phase) * (fh < sr / 2 - 200)
        env = np.sin(np.pi * np.linspace(0, 1, seg_n)) ** 0.5
        out[t0 : t0 + seg_n] = (seg * env).astype(np.float32)
        t0 += dur + gap
    peak = np.abs(out).max()
    return (0.5 * out / peak if peak > 0 else out).astype(np.float32)


# Below this the noise has no energy, as after any microphone's high-pass. Without it, 1/f noise
# puts its largest bins at DC and a fraction of a hertz: 10 s of pink noise holds 56% of its energy
# below 20 Hz and brown 99.8%, so "pink at 0 dB SNR" is about 3.5 dB of audible noise and brown
# noise an inaudible drift.
AUDIBLE_HZ = 20.0


def colored_noise(rng: np.random.Generator, seconds: float, sr: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum 1/f**exponent above AUDIBLE_HZ and none below it: 0 white, 1 pink,
    2 brown."""
    n = int(seconds * sr)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    audible = f >= AUDIBLE_HZ
    spec[~audible] = 0
    spec[audible] /= f[audible] ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return (x / (np.abs(x).max() + 1e-9) * 0.5).astype(np.float32)


def hum(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    n = int(seconds * sr)
    t = np.arange(n) / sr
    base = rng.choice([50.0, 60.0])
    x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.28)) for k in range(1, 8))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def clicks(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    n = int(seconds * sr)
    x = np.zeros(n, np.float32)
    for pos in rng.integers(0, max(1, n - 200), size=max(1, int(seconds * rng.uniform(3, 15)))):
        length = int(rng.integers(20, 200))
        x[pos : pos + length] += (rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))).astype(np.float32)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def tones(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """A music-like line: notes of a few harmonics with decaying envelopes."""
    n = int(seconds * sr)
    x = np.zeros(n)
    pos = 0
    while pos < n:
        length = min(int(rng.uniform(0.1, 0.5) * sr), n - pos)
        t = np.arange(length) / sr
        f = 220 * 2 ** (rng.integers(-12, 13) / 12)
        note = sum(0.6**k * np.sin(2 * np.pi * f * (k + 1) * t) for k in range(4) if f * (k + 1) < sr / 2)
        x[pos : pos + length] += note * np.exp(-t * rng.uniform(2, 8))
        pos += length
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


NOISE_FAMILIES = {
    "white": lambda r, s, sr: colored_noise(r, s, sr, 0.0),
    "pink": lambda r, s, sr: colored_noise(r, s, sr, 1.0),
    "brown": lambda r, s, sr: colored_noise(r, s, sr, 2.0),
    "hum": hum,
    "clicks": clicks,
    "tones": tones,
}


def noise(rng: np.random.Generator, seconds: float, sr: int, family: str | None = None) -> np.ndarray:
    family = family or str(rng.choice(sorted(NOISE_FAMILIES)))
    return NOISE_FAMILIES[family](rng, seconds, sr)


def synthetic_rir(rng: np.random.Generator, sr: int, rt60: float | None = None) -> np.ndarray:
    """An exponentially decaying noise tail: a crude but useful room impulse response."""
    rt60 = rt60 or rng.uniform(0.15, 0.8)
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    h[0] = 1.0
    return (h / np.sqrt((h**2).sum())).astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    return sps.fftconvolve(x, rir)[: len(x)].astype(np.float32)
