#!/usr/bin/env python3
"""Quality and speed of speech denoisers, side by side in one run.

    python benchmarks/denoise_bench.py --model denoiser-small \\
        --testset corpus/test/mixtures --out benchmarks/results/denoise.json

Methods: our model (through :func:`audioae.enhance.denoise`, the one inference path), noisereduce
stationary and non-stationary (defaults), RNNoise (``pyrnnoise``'s C library at 48 kHz, resampled
in and out, its fixed delay removed) and the unprocessed input.

Quality: SI-SDR, SI-SDR improvement, PESQ (wb) and STOI on every pair of the test set (built by
``recipes/build_corpus.py``: held-out speakers and noises), averaged overall, per noise type and per
SNR. Speed: seconds of audio per second of wall time on one CPU thread, on a 60 s file.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU thread for every library, set before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_args, also where tests import this
from bench_args import description, positive  # noqa: E402

from audioae.audio import fit_length, read_audio, resample  # noqa: E402
from audioae.fileio import atomic_write_text  # noqa: E402
from audioae.metrics import score  # noqa: E402
from audioae.pretrained import DEFAULT_DENOISER, resolve_arg  # noqa: E402

log = logging.getLogger("denoise_bench")

Method = Callable[[np.ndarray, int], np.ndarray]  # mono [T] at sr -> mono [T] at sr
METRICS = ("si_sdr", "si_sdr_i", "pesq", "stoi")
RNNOISE_SR = 48000


# --------------------------------------------------------------------------------------------
# Methods


def unprocessed(x: np.ndarray, sr: int) -> np.ndarray:
    return x


def noisereduce_method(stationary: bool) -> Method:
    import noisereduce

    def run(x: np.ndarray, sr: int) -> np.ndarray:
        y = noisereduce.reduce_noise(y=x, sr=sr, stationary=stationary, n_jobs=1)
        return np.asarray(y, np.float32)[: len(x)]

    return run


def _rnnoise_raw(x48: np.ndarray) -> np.ndarray:
    """RNNoise frame by frame (480 samples at 48 kHz) on float samples in int16 scale, as its C API
    expects; returns the output exactly as the library produces it (delayed)."""
    import ctypes

    from pyrnnoise.rnnoise import FRAME_SIZE, create, destroy, lib

    n = len(x48)
    frames = math.ceil(n / FRAME_SIZE) + 3  # extra frames flush the delay line
    buf = np.zeros(frames * FRAME_SIZE, np.float32)
    buf[:n] = np.clip(x48, -1.0, 1.0) * 32767.0
    state = create()
    try:
        for i in range(frames):
            frame = np.ascontiguousarray(buf[i * FRAME_SIZE : (i + 1) * FRAME_SIZE])
            ptr = frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            lib.rnnoise_process_frame(state, ptr, ptr)
            buf[i * FRAME_SIZE : (i + 1) * FRAME_SIZE] = frame
    finally:
        destroy(state)
    return buf / 32767.0


def rnnoise_delay() -> int:
    """RNNoise's fixed output delay in samples at 48 kHz, found by cross-correlating its output on
    generated voiced speech with the input (960 samples, two frames, for the stock library)."""
    from audioae.data.synthetic import speech_like

    x = speech_like(np.random.default_rng(0), 2.0, RNNOISE_SR)
    y = _rnnoise_raw(x)[: len(x)]
    span = len(x) - 4800
    corr = [float(np.dot(y[lag : lag + span], x[:span])) for lag in range(4800)]
    return int(np.argmax(corr))


def rnnoise_method() -> Method:
    from pyrnnoise.rnnoise import FRAME_SIZE

    delay, probed = 2 * FRAME_SIZE, rnnoise_delay()  # analysis window + overlap-add: two frames
    if abs(probed - delay) > FRAME_SIZE // 20:
        log.warning("RNNoise delay probe says %d samples, not %d: using the probe", probed, delay)
        delay = probed
    log.info("RNNoise delay: %d samples at 48 kHz (removed from its output; probe %d)", delay, probed)

    def run(x: np.ndarray, sr: int) -> np.ndarray:
        x48 = resample(x, sr, RNNOISE_SR).numpy()
        y48 = _rnnoise_raw(x48)[delay : delay + len(x48)]
        return fit_length(resample(y48, RNNOISE_SR, sr), len(x)).numpy()

    return run


def audioae_method(spec: str, path: Path) -> tuple[Method, dict]:
    """Our model by shipped name or checkpoint path (``path``: the file ``spec`` was resolved to,
    :func:`audioae.pretrained.resolve_arg`), through :func:`audioae.enhance.denoise`."""
    from audioae.checkpoint import load_checkpoint
    from audioae.enhance import denoise

    model = load_checkpoint(path).eval()
    info = {"spec": spec, "path": str(path), **model.describe()}

    def run(x: np.ndarray, sr: int) -> np.ndarray:
        return np.asarray(denoise(model, x, sr), np.float32)

    return run, info


def build_methods(model_spec: str | None, names: list[str] | None,
                  model_path: Path | None = None) -> tuple[dict[str, Method], dict]:
    methods: dict[str, Method] = {}
    info: dict = {}
    if model_spec:
        methods["audioae"], info = audioae_method(model_spec, model_path)
    methods["rnnoise"] = rnnoise_method()
    methods["noisereduce_stationary"] = noisereduce_method(True)
    methods["noisereduce_nonstationary"] = noisereduce_method(False)
    methods["unprocessed"] = unprocessed
    if names:
        unknown = sorted(set(names) - set(methods))
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; available: {', '.join(methods)}")
        methods = {k: v for k, v in methods.items() if k in names}
    return methods, info


# --------------------------------------------------------------------------------------------
# Quality


FULL_RUN = Path("benchmarks/results/denoise.json")
TESTSET = Path("corpus/test/mixtures")
METHODS = ("audioae", "rnnoise", "noisereduce_stationary", "noisereduce_nonstationary", "unprocessed")


def load_testset(folder: Path, limit: int | None = None) -> tuple[list[dict], int]:
    meta = json.loads((folder / "meta.json").read_text())
    items = meta["mixtures"]
    if limit is not None and limit < len(items):  # spread over the set: its rows are sorted by noise and SNR
        items = [items[i] for i in np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))]
    return items, int(meta["sample_rate"])


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    wav, sr, _ = read_audio(path)
    return wav.mean(0).astype(np.float32), sr


def evaluate(methods: dict[str, Method], folder: Path, items: list[dict]) -> dict[str, list[dict]]:
    """Per-file scores: ``{method: [{file, noise_type, snr_db, speaker, si_sdr, si_sdr_i, pesq, stoi}]}``."""
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for i, item in enumerate(items):
        noisy, sr = read_mono(folder / "noisy" / item["file"])
        clean, _ = read_mono(folder / "clean" / item["file"])
        for name, fn in methods.items():
            est = fn(noisy, sr)
            if est.shape != noisy.shape:
                raise RuntimeError(f"{name} returned {est.shape} for input {noisy.shape}: length contract broken")
            s = score(est, clean, sr, noisy=noisy)
            rows[name].append({"file": item["file"], "noise_type": item["noise_type"], "snr_db": item["snr_db"],
                               "speaker": item.get("speaker", ""), **{k: float(s[k]) for k in METRICS}})
        if (i + 1) % 20 == 0 or i + 1 == len(items):
            log.info("scored %d/%d mixtures", i + 1, len(items))
    return rows


def mean_scores(rows: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {"n": len(rows)}
    for k in METRICS:
        vals = np.array([r[k] for r in rows], np.float64)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def aggregate(rows: dict[str, list[dict]]) -> dict:
    """Means overall, per noise type, per SNR and per speaker, for each method."""
    result: dict = {}
    for name, rs in rows.items():
        types = sorted({r["noise_type"] for r in rs})
        snrs = sorted({r["snr_db"] for r in rs})
        hard = [r for r in rs if -5 <= r["snr_db"] <= 10]
        result[name] = {
            "overall": mean_scores(rs),
            "hard_-5_to_10dB": mean_scores(hard) if hard else {},
            "per_noise_type": {t: mean_scores([r for r in rs if r["noise_type"] == t]) for t in types},
            "per_snr": {f"{s:g}": mean_scores([r for r in rs if r["snr_db"] == s]) for s in snrs},
            "per_speaker": {k: mean_scores([r for r in rs if r.get("speaker", "") == k])
                            for k in sorted({r.get("speaker", "") for r in rs})},
        }
    return result


# --------------------------------------------------------------------------------------------
# Speed


def speed_signal(folder: Path, items: list[dict], seconds: float = 60.0) -> tuple[np.ndarray, int]:
    """A ``seconds``-long noisy file: test mixtures back to back."""
    parts, total, sr = [], 0, 16000
    for item in items:
        x, sr = read_mono(folder / "noisy" / item["file"])
        parts.append(x)
        total += len(x)
        if total >= seconds * sr:
            break
    x = np.concatenate(parts)
    reps = math.ceil(seconds * sr / len(x))
    return np.tile(x, reps)[: int(seconds * sr)], sr


def measure_speed(methods: dict[str, Method], x: np.ndarray, sr: int, repeats: int) -> dict[str, dict]:
    """Best-of-``repeats`` wall time on one thread (after one warm-up call on 1 s).

    ``x_realtime`` is audio seconds per wall second, the figure asked for; ``x_realtime_cpu`` uses
    the process's CPU time instead, which other jobs on a shared machine do not inflate."""
    torch.set_num_threads(1)
    out = {}
    seconds = len(x) / sr
    for name, fn in methods.items():
        if name == "unprocessed":
            continue
        fn(x[:sr], sr)  # warm-up: lazy imports, kernels
        walls, cpus = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn(x, sr)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out[name] = {"seconds_audio": seconds, "wall_s": min(walls), "cpu_s": min(cpus),
                     "x_realtime": seconds / max(min(walls), 1e-9), "x_realtime_cpu": seconds / max(min(cpus), 1e-9)}
        log.info("speed %s: %.1fx real time (wall), %.1fx (CPU time)", name, out[name]["x_realtime"],
                 out[name]["x_realtime_cpu"])
    return out


# --------------------------------------------------------------------------------------------
# Report


def _fmt(v: float, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    q, sp = result["quality"], result.get("speed", {})
    lines = ["| method | SI-SDR (dB) | SI-SDRi (dB) | PESQ wb | STOI | SI-SDRi at -5..10 dB | PESQ at -5..10 dB "
             "| × real time, 1 thread (wall) | (CPU time) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, agg in q.items():
        o, h = agg["overall"], agg["hard_-5_to_10dB"]
        wall = _fmt(sp[name]["x_realtime"], 1) if name in sp else "—"
        cpu = _fmt(sp[name]["x_realtime_cpu"], 1) if name in sp else "—"
        lines.append(f"| {name} | {_fmt(o['si_sdr'])} | {_fmt(o['si_sdr_i'])} | {_fmt(o['pesq'])} "
                     f"| {_fmt(o['stoi'], 3)} | {_fmt(h.get('si_sdr_i', math.nan))} | {_fmt(h.get('pesq', math.nan))} "
                     f"| {wall} | {cpu} |")
    for group, title in (("per_noise_type", "noise type"), ("per_snr", "SNR (dB)"), ("per_speaker", "speaker")):
        keys = list(next(iter(q.values())).get(group, {}))
        if not keys:  # results written before per-speaker scores existed
            continue
        for metric, label, digits in (("si_sdr_i", "SI-SDR improvement (dB)", 2), ("pesq", "PESQ wb", 2),
                                      ("stoi", "STOI", 3)):
            lines += ["", f"{label} per {title}:", "",
                      "| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
            for name, agg in q.items():
                lines.append(f"| {name} | " + " | ".join(_fmt(agg[group][k][metric], digits) for k in keys) + " |")
    return "\n".join(lines)


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def environment() -> dict:
    from importlib.metadata import version

    import noisereduce
    import pyrnnoise  # noqa: F401

    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.uname().machine, "cpu_count": os.cpu_count(),
            "noisereduce": getattr(noisereduce, "__version__", version("noisereduce")),
            "pyrnnoise": version("pyrnnoise"), "threads": 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--model", help="shipped model name or .safetensors path (omit: peers only)")
    ap.add_argument("--testset", type=Path, default=TESTSET)
    ap.add_argument("--out", type=Path, help=f"JSON (and .md beside it) to write (default: {FULL_RUN}, the card's "
                                              f"full run, for that run only: any other needs --out)")
    ap.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    # positive: --limit 0 scored everything, --speed-repeats 0 failed after it
    ap.add_argument("--limit", type=positive, help="score only N mixtures, spread over the set (quick checks)")
    ap.add_argument("--speed-seconds", type=float, default=60.0)
    ap.add_argument("--speed-repeats", type=positive, default=3)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args(argv)
    model_path = resolve_arg(ap, args.model, "--model", family="denoiser") if args.model is not None else None
    if args.out is None:  # any other run replaced the full run the model card quotes (a quick check, val scores)
        shipped = resolve_arg(ap, DEFAULT_DENOISER)
        partial = [why for why, bad in (
            ("--limit scores part of the test set", args.limit),
            (f"--model {args.model} is not the shipped {DEFAULT_DENOISER}",
             model_path is not None and model_path.resolve() != shipped.resolve()),
            ("--speed-seconds/--speed-repeats are not the card's (60, 3)", (args.speed_seconds, args.speed_repeats) != (60.0, 3)),
            (f"--testset {args.testset} is not the card's test set ({TESTSET})", args.testset.resolve() != TESTSET.resolve()),
            (f"--methods {args.methods} leaves some out", args.methods and not set(METHODS) <= set(args.methods.split(","))),
            ("--no-speed measures no speed", args.no_speed),
            ("without --model no model of ours is scored", args.model is None)) if bad]
        if partial:
            ap.error(f"{'; '.join(partial)}: give --out (the default, {FULL_RUN}, holds the card's full run: "
                     f"--model on {TESTSET}, every method, speed measured)")
        args.out = FULL_RUN
    if not (args.testset / "meta.json").is_file():  # not a FileNotFoundError traceback
        ap.error(f"--testset {args.testset}: no meta.json there; build the corpus first "
                 f"(python recipes/build_corpus.py --ready, docs/corpus.md)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)

    methods, model_info = build_methods(args.model, args.methods.split(",") if args.methods else None, model_path)
    items, _ = load_testset(args.testset, args.limit)
    t0 = time.time()
    rows = evaluate(methods, args.testset, items)
    result = {"testset": str(args.testset), "mixtures": len(items), "model": model_info,
              "environment": environment(), "quality": aggregate(rows)}
    if not args.no_speed:
        x, sr = speed_signal(args.testset, items, args.speed_seconds)
        result["speed"] = measure_speed(methods, x, sr, args.speed_repeats)
    result["per_file"] = rows
    result["elapsed_s"] = round(time.time() - t0, 1)
    result["command"] = " ".join(["python", "benchmarks/denoise_bench.py", *(argv if argv is not None else sys.argv[1:])])
    write_json(args.out, result)
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
