"""The band above the model's: what a 44.1 kHz recording keeps above 8 kHz once denoised, with
the high band passed at the model's top-band gain (:func:`audioae.enhance.with_high_band`, the
default since 2026-12-07) and without it (``HighBand(keep=False)``: the earlier behaviour,
nothing above the model's Nyquist frequency).

    python benchmarks/high_band.py [--model denoiser-small] [--speech DIR ...] [--clips 24] \
        [--seconds 4] [--snrs 0 5 10 20] [--noise-dirs DIR ...] [--speed-seconds 60] [--speed-rounds 3] \
        [--gain-power 1] [--gain-scale 1.3] [--out benchmarks/results/high-band.json]

Speech: 44.1 kHz recordings with energy above 8 kHz, from the Debian packages ``klettres-data``
and ``ktuberling-data`` (spoken letters and words, many voices and languages; training packages
of the corpus, never the reserved evaluation ones), concatenated into clips of ``--seconds``.
Noise: the synthetic families of :mod:`audioae.data.synthetic` drawn at 44.1 kHz (white, pink
and brown noise, mains hum, clicks, tones), and recorded game sounds and music at 44.1 kHz, one
family per ``--noise-dirs`` folder (default: the Debian training-noise packages
``neverball-common`` and ``frozen-bubble-data``, where installed; a 4 s stretch of a random file
per clip), each mixed at each SNR (full band; one draw of the family's noise per clip, scaled to
each SNR); and no noise at all.

Per condition, over the clips: SI-SDR of the whole band against the clean clip, and the band
above 8 kHz alone (both signals high-passed at 8 kHz): its SNR against the clean high band, and
the share of the clean high band's energy the output keeps there (the projection of the output's
high band on the clean one, over the clean one's energy). The high band is scored only where
the clean clip has some (its energy above -50 dB relative to the whole clip).

``--gain-power P --gain-scale S``: the "kept" column with the gain ``min(1, S * r**P)``, ``r`` the
root of the model's output over input energy in its top band (:func:`audioae.enhance.top_band_gains`
without its scale), to compare rules; the shipped rule is P = 1, S =
:data:`audioae.enhance.HIGH_BAND_GAIN_SCALE` (1.3, chosen with this option).

Speed: seconds of a ``--speed-seconds`` 44.1 kHz noise file denoised per second of wall time on one
thread, with and without the high band, the two timed in turn in each of ``--speed-rounds`` rounds
(this VM's speed drifts; medians reported).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from audioae import enhance
from audioae.audio import band_above, read_audio, walk_audio
from audioae.data.synthetic import clicks, colored_noise, hum, tones
from audioae.fileio import atomic_write_json
from audioae.metrics import si_sdr
from audioae.pretrained import load, resolve_arg

SR = 44100
SPLIT_HZ = 8000.0
DEFAULT_SPEECH = ("/usr/share/klettres", "/usr/share/ktuberling/sounds")
NOISES = {
    "white": lambda rng, s: colored_noise(rng, s, SR, 0.0),
    "pink": lambda rng, s: colored_noise(rng, s, SR, 1.0),
    "brown": lambda rng, s: colored_noise(rng, s, SR, 2.0),
    "hum": lambda rng, s: hum(rng, s, SR),
    "clicks": lambda rng, s: clicks(rng, s, SR),
    "tones": lambda rng, s: tones(rng, s, SR),
}


DEFAULT_NOISE_DIRS = ("/usr/share/games/neverball", "/usr/share/games/frozen-bubble")
SUFFIXES = (".ogg", ".wav", ".flac")  # the kinds the published numbers drew from: another would change the draws


def audio_files(folder: str) -> list[Path]:
    """The OGG, WAV and FLAC files under ``folder`` (the project's folder walk), in path order: the
    order the draws index into (the walk lists a folder's files before its subfolders'; it
    passes over hidden names and searches a linked folder once, where ``rglob`` did not: the
    corpus's package folders have neither). A folder that is not there has none, said by the caller."""
    if not Path(folder).is_dir():
        return []
    return sorted(path for path, _ in walk_audio(folder) if path.suffix.lower() in SUFFIXES)


def recorded_noise(folder: str) -> list[np.ndarray] | None:
    """Every 44.1 kHz recording under ``folder`` of at least 0.5 s, mono; None when none is there."""
    found = []
    for path in audio_files(folder):
        try:
            x, sr, _ = read_audio(path)
        except Exception:  # noqa: BLE001 - a file the reader refuses is left out
            continue
        x = x if x.ndim == 1 else x.mean(0)
        if sr == SR and len(x) >= SR // 2 and np.abs(x).max() > 0:
            found.append(x.astype(np.float32))
    return found or None


def stretch(recordings: list[np.ndarray], rng: np.random.Generator, seconds: float) -> np.ndarray:
    """``seconds`` from a random place of a random recording (looped when shorter)."""
    x = recordings[rng.integers(len(recordings))]
    n = int(seconds * SR)
    x = np.tile(x, -(-n // len(x)) + 1)
    start = int(rng.integers(len(x) - n))
    return x[start : start + n]


def high_part(x: np.ndarray) -> np.ndarray:
    """``x [T]`` high-passed at ``SPLIT_HZ`` (x minus its lowpassed copy, a 44.1 kHz sinc round trip)."""
    return band_above(np.ascontiguousarray(x, np.float32), SR, 16000).numpy()


def speech_files(folders: list[str], min_high_db: float = -30.0) -> list[Path]:
    """Every 44.1 kHz recording under ``folders`` with energy above 8 kHz at least ``min_high_db``
    relative to its whole (an upsampled narrow-band file has none worth scoring)."""
    found = []
    for folder in folders:
        for path in audio_files(folder):
            try:
                x, sr, _ = read_audio(path)
            except Exception:  # noqa: BLE001 - a file the reader refuses is not speech for this bench
                continue
            x = x if x.ndim == 1 else x.mean(0)
            if sr != SR or len(x) < SR // 4:
                continue
            whole, high = float(np.sum(x.astype(np.float64) ** 2)), float(np.sum(high_part(x).astype(np.float64) ** 2))
            if whole > 0 and 10 * np.log10(max(high, 1e-30) / whole) > min_high_db:
                found.append(path)
    return found


def clips(files: list[Path], count: int, seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` clips of ``seconds``, each recordings drawn at random and joined with 0.1 s gaps,
    trimmed of leading and trailing silence by librosa (the `recipes` extra: pip install -e ".[recipes]")."""
    import librosa

    out = []
    n = int(seconds * SR)
    for _ in range(count):
        parts, total = [], 0
        while total < n:
            x, _, _ = read_audio(files[rng.integers(len(files))])
            x = x if x.ndim == 1 else x.mean(0)
            x, _ = librosa.effects.trim(x, top_db=40)
            x = x / (np.abs(x).max() + 1e-9) * 0.5
            parts += [x, np.zeros(int(0.1 * SR), np.float32)]
            total += len(x) + int(0.1 * SR)
        out.append(np.concatenate(parts)[:n].astype(np.float32))
    return out


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    gain = np.sqrt(np.sum(clean**2) / (np.sum(noise**2) + 1e-20) / 10 ** (snr_db / 10))
    return (clean + gain * noise).astype(np.float32)


def scores(out: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    hc, ho = high_part(clean).astype(np.float64), high_part(out).astype(np.float64)
    row = {"si_sdr": float(si_sdr(out, clean))}
    energy = float(np.sum(hc**2))
    if energy > 1e-5 * float(np.sum(clean.astype(np.float64) ** 2)):
        row["high_snr"] = float(10 * np.log10(energy / max(float(np.sum((ho - hc) ** 2)), 1e-30)))
        row["high_kept"] = float(np.dot(ho, hc) / energy)
    return row


def denoised(model, x: np.ndarray, keep: bool, power: float = 1.0, scale: float | None = None) -> np.ndarray:
    """The high-band rule is passed to the call (:class:`audioae.enhance.HighBand`), nothing patched."""
    rule = enhance.HighBand(keep=keep, scale=enhance.HIGH_BAND_GAIN_SCALE if scale is None else scale, power=power)
    return enhance.denoise(model, x, SR, high_band=rule)


def speed(model, seconds: float, rounds: int) -> dict[str, float]:
    """Median x real time with the high band kept and without, timed in turn."""
    x = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)  # [T]
    times: dict[str, list[float]] = {"model band only": [], "high band kept": []}
    for _ in range(rounds):
        for label, keep in (("model band only", False), ("high band kept", True)):
            t0 = time.perf_counter()
            denoised(model, x, keep)
            times[label].append(seconds / (time.perf_counter() - t0))
    return {k: round(float(np.median(v)), 1) for k, v in times.items()}


def mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return round(float(np.mean(vals)), 3) if vals else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="denoiser-small", help="a shipped model name or a .safetensors path")
    ap.add_argument("--speech", nargs="+", default=list(DEFAULT_SPEECH))
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.0, 5.0, 10.0, 20.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-dirs", nargs="*", default=list(DEFAULT_NOISE_DIRS))
    ap.add_argument("--gain-power", type=float, default=1.0)
    ap.add_argument("--gain-scale", type=float, default=enhance.HIGH_BAND_GAIN_SCALE)
    ap.add_argument("--speed-seconds", type=float, default=60.0)
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/high-band.json")
    args = ap.parse_args(argv)
    model_path = resolve_arg(ap, args.model, "--model", family="denoiser")  # before minutes of reading
    torch.set_num_threads(1)
    files = speech_files(args.speech)
    if not files:
        print(f"no 44.1 kHz speech with energy above 8 kHz under {args.speech}: "
              "apt-get install klettres-data ktuberling-data", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    clean = clips(files, args.clips, args.seconds, rng)
    model = load(model_path)
    noises = dict(NOISES)
    for folder in args.noise_dirs:
        recordings = recorded_noise(folder)
        if recordings is None:
            print(f"note: no 44.1 kHz recordings under {folder}: left out", file=sys.stderr)
            continue
        noises[Path(folder).name] = lambda rng, s, r=recordings: stretch(r, rng, s)
    conditions = [("clean", None, None)] + [(f"{name} {snr:g} dB", name, snr) for name in noises for snr in args.snrs]
    table: dict[str, dict] = {}
    started = time.time()
    for label, name, snr in conditions:
        rows = {"noisy": [], "model band only": [], "high band kept": []}
        for i, c in enumerate(clean):
            # the same noise draw for a clip at every SNR of a family, another for each family
            rng = np.random.default_rng([args.seed, i, list(noises).index(name)]) if name else None
            x = c if name is None else mix(c, noises[name](rng, args.seconds)[: len(c)], snr)
            rows["noisy"].append(scores(x, c))
            rows["model band only"].append(scores(denoised(model, x, False), c))
            rows["high band kept"].append(scores(denoised(model, x, True, args.gain_power, args.gain_scale), c))
        table[label] = {k: {m: mean(v, m) for m in ("si_sdr", "high_snr", "high_kept")} for k, v in rows.items()}
        t = table[label]
        print(f"{label:16s} SI-SDR noisy {t['noisy']['si_sdr']:6.2f}  model band {t['model band only']['si_sdr']:6.2f}  "
              f"kept {t['high band kept']['si_sdr']:6.2f} | high SNR {t['noisy']['high_snr']:6.2f} "
              f"{t['model band only']['high_snr']:6.2f} {t['high band kept']['high_snr']:6.2f} | high kept "
              f"{t['high band kept']['high_kept']:.2f}", flush=True)
    speeds = speed(model, args.speed_seconds, args.speed_rounds) if args.speed_rounds else {}
    print(f"x real time at 44.1 kHz, one thread: {speeds}")
    noisy_rows = [t for lbl, t in table.items() if lbl != "clean"]
    overall = {k: {m: round(float(np.mean([t[k][m] for t in noisy_rows if t[k][m] is not None])), 3)
                   for m in ("si_sdr", "high_snr", "high_kept")} for k in ("noisy", "model band only", "high band kept")}
    overall["high band kept"]["worst_high_snr"] = round(min(t["high band kept"]["high_snr"] for t in noisy_rows
                                                            if t["high band kept"]["high_snr"] is not None), 3)
    result = {"model": args.model, "sample_rate": SR, "clips": args.clips, "seconds": args.seconds,
              "speech_files": len(files), "speech": args.speech, "gain_power": args.gain_power,
              "gain_scale": args.gain_scale, "noise_families": list(noises), "snrs": args.snrs, "seed": args.seed,
              "mean_over_noisy_conditions": overall, "conditions": table,
              "x_realtime_44k_one_thread": speeds, "speed_seconds": args.speed_seconds, "speed_rounds": args.speed_rounds,
              "wall_seconds": round(time.time() - started, 1)}
    atomic_write_json(args.out, result)
    print(json.dumps(overall, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
