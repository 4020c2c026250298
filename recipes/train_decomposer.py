#!/usr/bin/env python3
"""Train the shipped decomposition model ``audioae/pretrained/decomposer-small.safetensors``.

A :class:`~audioae.models.sparse_dict.SparseDictionary` (registry name ``sparse_dict``) learns a
non-negative convolutive dictionary from mixtures of speech and synthesised music-like and noise
signals, all made here at 16 kHz:

- speech: espeak-ng (several voices, rates and pitches, random word strings) when installed, and
  the harmonic "syllables" of :func:`audioae.data.synthetic.speech_like`;
- music-like: note lines (:func:`synthetic.tones`), plucked strings (Karplus-Strong), chords;
- steady tones: sinusoids with a few harmonics and a slow tremolo;
- noise: colored-noise bursts, steady colored noise, hum, clicks.

Each example sums one to three parts from different categories at random relative levels, so
the dictionary has to explain mixtures additively. Training is the library's one loop,
:func:`audioae.train.fit_arrays` (MSE on compressed magnitudes + the model's sparsity penalty),
called once per *round* on freshly drawn examples; after every round the weights and a
``progress.json`` are written, so an interrupted run resumes where it stopped (the Adam moments
restart each round: a few minutes of data per round, which the rounds' fresh examples need anyway).

One CPU thread, about 20 minutes::

    nohup python recipes/train_decomposer.py --out runs/decomposer --minutes 22 --ship > runs/decomposer.log 2>&1 &

``--ship`` writes ``audioae/pretrained/decomposer-small.safetensors`` (+ ``.sha256``) at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audioae.audio import resample
from audioae.checkpoint import load_checkpoint, save_checkpoint
from audioae.config import check_thread_count, differences, parse_assignments
from audioae.data import synthetic
from audioae.fileio import atomic_write_bytes
from audioae.models import build_model
from audioae.models.sparse_dict import SparseDictionary
from audioae.spectral import decompress
from audioae.train import NonFiniteLoss, configured_corruption, fit_arrays

log = logging.getLogger("train_decomposer")

SR = 16000
SHIPPED = Path(__file__).resolve().parent.parent / "audioae" / "pretrained" / "decomposer-small.safetensors"
MODEL_CONFIG = {"sample_rate": SR, "n_fft": 512, "hop_length": 128, "code_dim": 320, "atom_frames": 3,
                "sparsity": "topk", "topk": 32, "refine_steps": 4}
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "de", "es", "nl", "sv", "pt", "pl", "cs", "fi")
WORDS = ("the quick brown fox jumps over lazy dog seven bright windows open slowly while rain falls on "
         "quiet streets music plays somewhere under the bridge people talk about weather markets trains "
         "and the long summer evening every morning she reads a short story to her children before school "
         "numbers like three forty nine and twelve appear in the report please call me back tomorrow").split()


# ---- sources --------------------------------------------------------------------------------------
POOL_RECORD = "made_with"  # the key, in the utterance cache, of what it was made from


def pool_settings(n: int, seed: int) -> dict:
    """What an utterance pool is made from: a cache made from anything else is another pool."""
    return {"utterances": n, "seed": seed, "sample_rate": SR, "voices": list(VOICES), "words": list(WORDS)}


def _read_pool(cache: Path) -> tuple[dict | None, list[np.ndarray]]:
    """The settings a cache records (None: an older one records none) and its clips."""
    with np.load(cache) as data:
        made = json.loads(str(data[POOL_RECORD])) if POOL_RECORD in data.files else None
        return made, [data[k] for k in sorted(data.files) if k != POOL_RECORD]


def _how_made(made: dict | None, want: dict) -> str:
    if made is None:
        return "before 2026-12-06, and records nothing of how"
    lists = ("voices", "words")  # too long to show: named only
    shown = sorted(k for k in {*made, *want} if k not in lists)
    return "from " + ", ".join([*differences(made, want, shown),
                                *(f"other {k}" for k in lists if made.get(k) != want.get(k))])


def espeak_pool(cache: Path, n: int, seed: int, *, resume: bool = False) -> list[np.ndarray]:
    """``n`` espeak-ng utterances at 16 kHz, drawn with ``seed``; empty when espeak-ng is absent.

    Cached in ``cache`` with what they were made from (:func:`pool_settings`): a cache made from
    anything else (another count, seed, voice or word list) is remade, or, without espeak-ng to
    remake it, refused (ValueError), never used as this run's in silence. ``resume``: the run
    resumes, and an older cache, which records nothing, is the one it began with."""
    want = pool_settings(n, seed)
    exe = shutil.which("espeak-ng")
    if cache.is_file():
        made, clips = _read_pool(cache)
        if made == want or (made is None and resume):
            return clips
        if exe is None:
            raise ValueError(f"{cache} holds espeak-ng utterances made {_how_made(made, want)}, and espeak-ng is not "
                             f"installed to make this run's: install it, delete the file (to train on synthetic "
                             f"speech-like signals only), or give another --out")
        log.warning("%s was made %s: making this run's utterances", cache, _how_made(made, want))
    if exe is None:
        log.warning("espeak-ng not found: training on synthetic speech-like signals only")
        return []
    rng = np.random.default_rng(seed)
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "u.wav"
        for i in range(n):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 14))))
            voice = str(rng.choice(VOICES)) + str(rng.choice(["", "+f2", "+m3", "+f4", "+m1"]))
            cmd = [exe, "-v", voice, "-s", str(int(rng.integers(120, 200))), "-p", str(int(rng.integers(20, 80))),
                   "-w", str(wav_path), text]
            if subprocess.run(cmd, capture_output=True, timeout=60).returncode != 0:
                continue
            wav, sr = sf.read(wav_path, dtype="float32")
            clip = resample(wav, sr, SR).numpy()
            if np.abs(clip).max() > 1e-3:
                clips.append(clip / np.abs(clip).max())
            if i % 50 == 0:
                log.info("espeak-ng: %d utterances", len(clips))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".part.npz")  # np.savez adds .npz to a name without it
    np.savez(tmp, **{f"u{i:04d}": c for i, c in enumerate(clips)}, **{POOL_RECORD: np.array(json.dumps(want))})
    os.replace(tmp, cache)  # a run killed while writing leaves no half cache
    return clips


def crop(rng: np.random.Generator, clip: np.ndarray, n: int) -> np.ndarray:
    if len(clip) <= n:
        clip = np.pad(clip, (0, n - len(clip) + 1))
    start = int(rng.integers(0, len(clip) - n + 1))
    return clip[start : start + n]


def steady_tone(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f = float(np.exp(rng.uniform(np.log(80), np.log(4000))))
    x = sum(rng.uniform(0, 1) ** k * np.sin(2 * np.pi * f * (k + 1) * t + rng.uniform(0, 6.3))
            for k in range(int(rng.integers(1, 5))) if f * (k + 1) < sr / 2 - 100)
    x = x * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 4) * t))
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def pluck(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Karplus-Strong plucked strings, a few notes."""
    n = int(seconds * sr)
    out = np.zeros(n)
    pos = 0
    while pos < n:
        f = 110 * 2 ** (rng.integers(0, 36) / 12)
        period = max(2, int(sr / f))
        length = min(n - pos, int(rng.uniform(0.15, 0.6) * sr))
        buf = rng.uniform(-1, 1, period)
        note = np.empty(length)
        decay = rng.uniform(0.985, 0.999)
        for i in range(length):
            note[i] = buf[i % period]
            buf[i % period] = decay * 0.5 * (buf[i % period] + buf[(i + 1) % period])
        out[pos : pos + length] += note
        pos += length
    return (out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def chord(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    root = 110 * 2 ** (rng.integers(0, 24) / 12)
    x = sum(np.sin(2 * np.pi * root * 2 ** (s / 12) * (k + 1) * t) * 0.5**k
            for s in rng.choice([0, 3, 4, 7, 10, 12], size=3, replace=False) for k in range(4))
    return (x * np.exp(-t * rng.uniform(0, 3)) / (np.abs(x).max() + 1e-9)).astype(np.float32)


def noise_bursts(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    n = int(seconds * sr)
    base = synthetic.colored_noise(rng, seconds, sr, float(rng.uniform(0, 2)))
    env = np.zeros(n, np.float32)
    for _ in range(int(rng.integers(1, 5))):
        a = int(rng.integers(0, n))
        b = min(n, a + int(rng.uniform(0.03, 0.3) * sr))
        env[a:b] = 1.0
    return base * env


def draw_part(rng: np.random.Generator, category: str, n: int, speech: list[np.ndarray]) -> np.ndarray:
    s = n / SR
    if category == "speech":
        if speech and rng.random() < 0.75:
            return crop(rng, speech[int(rng.integers(len(speech)))], n)
        return synthetic.speech_like(rng, s, SR)[:n]
    if category == "music":
        return [synthetic.tones, pluck, chord][int(rng.integers(3))](rng, s, SR)[:n]
    if category == "tone":
        return steady_tone(rng, s, SR)[:n]
    kind = str(rng.choice(["bursts", "white", "pink", "brown", "hum", "clicks"]))
    return noise_bursts(rng, s, SR)[:n] if kind == "bursts" else synthetic.noise(rng, s, SR, kind)[:n]


CATEGORIES = ("speech", "music", "tone", "noise")


def example(rng: np.random.Generator, n: int, speech: list[np.ndarray]) -> np.ndarray:
    """One to three parts of different categories at random levels; peak from -40 to -1 dBFS."""
    k = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    x = np.zeros(n, np.float32)
    for cat in rng.choice(CATEGORIES, size=k, replace=False):
        part = draw_part(rng, str(cat), n, speech)
        rms = np.sqrt(np.mean(part**2)) + 1e-9
        x += part / rms * 10 ** (rng.uniform(-12, 0) / 20)
    return x / (np.abs(x).max() + 1e-9) * 10 ** (rng.uniform(-40, -1) / 20)


@torch.no_grad()
def make_features(model: SparseDictionary, rng: np.random.Generator, count: int, seconds: float,
                  speech: list[np.ndarray]) -> torch.Tensor:
    """``count`` examples as compressed magnitudes ``[count, F, N]``."""
    n = int(seconds * SR)
    wav = torch.from_numpy(np.stack([example(rng, n, speech) for _ in range(count)]))  # [B, T]
    return model.features(model.stft(wav))  # [B, F, N]


@torch.no_grad()
def code_stats(model: SparseDictionary, x: torch.Tensor) -> dict:
    """Active units per frame, units used at all, and the linear-magnitude SNR on ``x [B, F, N]``."""
    h = model.encode(x)  # [B, U, N]
    on = h > 1e-3 * h.amax(dim=1, keepdim=True).clamp_min(1e-12)  # [B, U, N]
    c = model.config
    mag = decompress(x, c.compression, c.compression_power)  # [B, F, N]
    v = model.magnitudes(h)  # [B, F, N]
    snr = 10 * torch.log10(mag.pow(2).sum() / (mag - v).pow(2).sum().clamp_min(1e-20))
    return {"active_per_frame": float(on.float().sum(1).mean()), "units_used": int(on.any(-1).any(0).sum()),
            "snr_db": float(snr)}


# ---- the run ----------------------------------------------------------------------------------------
def _write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2).encode())


# The shipped model decodes with a wider support (64 units per frame) and fits each signal with
# 10 joint atom + code updates (decompose's default; `--fit 0` skips it). Chosen on tuning
# mixtures (decompose_bench.make_mixture seeds 1000-1005; the benchmark uses seeds 0-7): mean
# purity 4.50 -> 6.38 dB one component per unit, 1.73 -> 2.49 dB in 8 clusters (NMF-8: 2.18);
# docs/decomposition.md has the commands. Training keeps top-32 and no fit (faster steps).
SHIP_INFERENCE = {"topk": 64, "fit_steps": 10}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--out", default="runs/decomposer", help="run folder (checkpoints, progress, log)")
    ap.add_argument("--minutes", type=float, default=22.0, help="training time budget (rounds stop after it)")
    ap.add_argument("--max-rounds", type=int, default=1000)
    ap.add_argument("--round-steps", type=int, default=300, help="fit_arrays steps per round of fresh data")
    ap.add_argument("--examples", type=int, default=640, help="examples drawn per round")
    ap.add_argument("--seconds", type=float, default=0.6, help="length of one example")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--speech-utterances", type=int, default=160)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="model config override, e.g. --set code_dim=64 (TOML values: numbers, true/false, lists)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ship", action="store_true", help=f"write the result to {SHIPPED}")
    args = ap.parse_args(argv)
    # Sizes of 0 trained nothing while the log counted steps (--batch-size 0: loss nan, atoms as drawn)
    # or failed deep inside numpy (--examples 0, --seconds 0).
    for name in ("round_steps", "examples", "batch_size", "speech_utterances", "max_rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("seconds", "lr", "minutes"):
        if not 0 < getattr(args, name) < math.inf:
            ap.error(f"--{name} must be a finite number above 0, got {getattr(args, name)}")
    try:
        check_thread_count(args.threads, "--threads", least=1)
    except ValueError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        config = {**MODEL_CONFIG, **parse_assignments(args.overrides)}
        # every key and value checked before the run folder is made, and a corruption fit_arrays would refuse
        configured_corruption(build_model("sparse_dict", config))
    except ValueError as exc:
        ap.error(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    last, progress_path = out / "last.safetensors", out / "progress.json"
    # What defines the run's data and model: a resume with others would mix two runs in silence.
    settings = {"config": config, "seed": args.seed, "speech_utterances": args.speech_utterances,
                "examples": args.examples, "seconds": args.seconds, "round_steps": args.round_steps,
                "batch_size": args.batch_size, "lr": args.lr}
    progress = {"round": 0, "steps": 0, "seconds": 0.0, "losses": [], "settings": settings}
    resume = last.is_file() and progress_path.is_file()
    if resume:
        saved = json.loads(progress_path.read_text())
        now = json.loads(json.dumps(settings))  # tuples as lists, as the file holds them
        changed = differences(saved.get("settings", now), now, sorted(now))  # an older run kept none
        if changed:
            ap.error(f"{out} holds a run with other settings ({', '.join(changed)}); "
                     f"resume with its settings (progress.json), or give another --out")
        model = load_checkpoint(last)
        progress = {**saved, "settings": settings}
        log.info("resuming at round %d (%d steps, %.0f s)", progress["round"], progress["steps"], progress["seconds"])
    else:
        torch.manual_seed(args.seed)
        model = build_model("sparse_dict", config)
    log.info("model: %s", model.describe())
    try:
        speech = espeak_pool(out / "speech_pool.npz", args.speech_utterances, args.seed, resume=resume)
    except ValueError as exc:
        ap.error(str(exc))
    log.info("speech pool: %d espeak-ng utterances, %.0f s", len(speech), sum(map(len, speech)) / SR)

    budget = args.minutes * 60
    while progress["seconds"] < budget and progress["round"] < args.max_rounds:
        t0 = time.monotonic()
        r = progress["round"]
        rng = np.random.default_rng([args.seed, r])  # each round its own examples, same on resume
        x = make_features(model, rng, args.examples, args.seconds, speech)  # [E, F, N]
        # Step the learning rate down over the budget: a coarse cosine by elapsed time.
        frac = min(1.0, progress["seconds"] / budget)
        lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))
        try:
            losses = fit_arrays(model, x, steps=args.round_steps, batch_size=args.batch_size, lr=float(lr),
                                seed=args.seed * 100_003 + r)
        except NonFiniteLoss as exc:  # the weights gave that loss: the round is logged as failed below
            log.error("%s", exc)
            losses = [*exc.losses, math.nan]
        progress["round"] = r + 1
        progress["steps"] += len(losses) if math.isfinite(losses[-1]) else len(losses) - 1  # the steps taken
        progress["seconds"] += time.monotonic() - t0
        progress["losses"].append(float(np.mean(losses[-50:])))
        save_checkpoint(model, last, {"round": r + 1, "steps": progress["steps"]}, write_sha256=False)
        _write_json(progress_path, progress)
        stats = code_stats(model, x[:128])
        log.info("round %d: steps %d loss %.5f lr %.2e active units/frame %.1f, units used %d, mag SNR %.2f dB "
                 "(%.0f s)", r + 1, progress["steps"], progress["losses"][-1], lr, stats["active_per_frame"],
                 stats["units_used"], stats["snr_db"], progress["seconds"])
        if not math.isfinite(progress["losses"][-1]):  # every later round would train on NaN weights
            log.error("round %d's loss is not finite: stopping (lower --lr, or start again in another --out)", r + 1)
            break
    if args.ship and not progress["steps"]:  # a resumed run already spent: nothing trained here
        log.error("nothing was trained (0 steps): %s is left as it was; give --minutes or --max-rounds", SHIPPED)
        return 1
    if progress["losses"] and not math.isfinite(progress["losses"][-1]):  # a failed run, shipped or not: exit 1
        if args.ship:
            log.error("the last round's loss is %s: %s is left as it was", progress["losses"][-1], SHIPPED)
        return 1
    if args.ship:
        extra = {"steps": progress["steps"], "rounds": progress["round"], "train_seconds": round(progress["seconds"]),
                 "final_loss": progress["losses"][-1] if progress["losses"] else None,
                 "data": "espeak-ng speech + synthetic speech-like, music-like, tones and noise (16 kHz)",
                 "recipe": "recipes/train_decomposer.py"}
        # Inference knobs of the tied encoder differ from training's (same atoms): see SHIP_INFERENCE.
        shipped = model.with_config(**SHIP_INFERENCE)
        extra["inference"] = SHIP_INFERENCE
        digest = save_checkpoint(shipped.eval(), SHIPPED, extra)
        log.info("shipped %s (sha256 %s, %.2f MB)", SHIPPED, digest[:12], SHIPPED.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
