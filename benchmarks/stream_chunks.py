r"""Streaming at real-time chunk sizes: the same output as offline, and what each call costs.

    python benchmarks/stream_chunks.py [--model denoiser-small] [--mixtures corpus/val/mixtures] \
        [--count 24] [--chunk-ms 10 20 100] [--rates 16000 48000] \
        [--out benchmarks/results/stream-chunks.json]

A live caller (``StreamDenoise``, :class:`audioae.enhance.StreamingDenoiser`) sends 10-20 ms at a
time: less than one hop of the shipped model, so most calls bring one frame or none. Two parts:

- **quality**: each noisy mixture (16 kHz) denoised offline and streamed in each chunk size;
  the largest sample difference and the mean SI-SDR, PESQ (wb) and STOI of both against the
  clean file. Streaming is exact by contract, so the metrics must agree.
- **cost**: one thread, a noise file at each rate pushed in each chunk size; × real time and the
  wall time of one call (median, 99th percentile, max), which a real-time caller must fit in its
  chunk length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_args import amount, check_one_sample, count, sample_rate  # noqa: E402 (run as a script: benchmarks/ is on the path)

from audioae.audio import header_shapes, read_audio
from audioae.enhance import StreamingDenoiser, denoise
from audioae.fileio import atomic_write_json
from audioae.metrics import score
from audioae.pretrained import load, resolve_arg


def stream(model, wav: np.ndarray, sr: int, chunk: int, times: list[float] | None = None) -> np.ndarray:
    """``wav [T]`` through a StreamingDenoiser in ``chunk``-sample calls; each call's wall time to ``times``."""
    s = StreamingDenoiser(model, sr, 1)
    out = []
    for i in range(0, len(wav), chunk):
        t0 = time.perf_counter()
        out.append(s.push(wav[i : i + chunk]))
        if times is not None:
            times.append(time.perf_counter() - t0)
    out.append(s.finish())
    return np.concatenate(out, -1)  # [T]: 1-D chunks come back 1-D, as denoise() answers


def mixture_names(folder: Path, count: int) -> list[str]:
    """``count`` file names of ``folder/noisy``, evenly spaced (over the noise types and SNRs)."""
    every = sorted(p.name for p in (folder / "noisy").glob("*.wav"))
    return every[:: max(1, len(every) // count)][:count]


def quality(model, folder: Path, names: list[str], chunk_ms: list[float]) -> dict:
    """Offline against streamed on the mixtures ``names`` of ``folder`` (noisy/ and clean/)."""
    rows: dict[str, list[dict]] = {"offline": [], **{f"{ms:g} ms": [] for ms in chunk_ms}}
    max_diff = {f"{ms:g} ms": 0.0 for ms in chunk_ms}
    for name in names:
        noisy, sr, _ = read_audio(folder / "noisy" / name)
        clean, _, _ = read_audio(folder / "clean" / name)
        offline = denoise(model, noisy[0], sr)  # [T]
        rows["offline"].append(score(offline, clean[0], sr))
        for ms in chunk_ms:
            key = f"{ms:g} ms"
            streamed = stream(model, noisy[0], sr, int(sr * ms / 1000))
            max_diff[key] = max(max_diff[key], float(np.abs(streamed - offline).max()))
            rows[key].append(score(streamed, clean[0], sr))
    mean = {k: {m: round(float(np.mean([r[m] for r in v])), 4) for m in v[0]} for k, v in rows.items()}
    return {"mixtures": len(names), "folder": str(folder), "mean": mean, "max_abs_difference": max_diff}


def cost(model, rates: list[int], chunk_ms: list[float], seconds: float) -> list[dict]:
    rows = []
    for sr in rates:
        x = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)  # [T]
        stream(model, x[:sr], sr, sr // 100)  # warm-up
        for ms in chunk_ms:
            times: list[float] = []
            t0 = time.perf_counter()
            stream(model, x, sr, int(sr * ms / 1000), times)
            wall = time.perf_counter() - t0
            ordered = sorted(times)
            rows.append({"sample_rate": sr, "chunk_ms": ms, "calls": len(times), "x_realtime": round(seconds / wall, 1),
                         "call_ms_p50": round(1000 * statistics.median(ordered), 3),
                         "call_ms_p99": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 3),
                         "call_ms_max": round(1000 * ordered[-1], 3)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="denoiser-small", help="a shipped model name or a .safetensors path")
    p.add_argument("--mixtures", default="corpus/val/mixtures", help="a folder with noisy/ and clean/ WAVs")
    p.add_argument("--count", type=count, default=24, help="mixtures scored (0: skip the quality part)")
    p.add_argument("--chunk-ms", type=lambda t: amount(t, "ms"), nargs="+", default=[10.0, 20.0, 100.0])
    p.add_argument("--rates", type=sample_rate, nargs="+", default=[16000, 48000])
    p.add_argument("--seconds", type=lambda t: amount(t, "seconds", zero_ok=True), default=20.0, help="audio pushed per rate and chunk size for the cost (0: skip the cost part)")
    p.add_argument("--out", default="benchmarks/results/stream-chunks.json")
    args = p.parse_args()
    model_path = resolve_arg(p, args.model, "--model", family="denoiser")
    used_rates = []  # every rate a chunk size is cut at: the mixtures' (from their headers) and --rates
    if args.count:
        folder = Path(args.mixtures)
        names = mixture_names(folder, args.count)
        if not names:
            p.error(f"--mixtures: no WAV in {folder / 'noisy'} (build the corpus: recipes/build_corpus.py)")
        missing = [n for n in names if not (folder / "clean" / n).is_file()]
        if missing:
            p.error(f"--mixtures: {len(missing)} of the chosen mixtures have no clean file, e.g. {folder / 'clean' / missing[0]}")
        used_rates += [shape[2] for shape in header_shapes([folder / "noisy" / n for n in names]) if shape]
    if args.seconds:
        used_rates += args.rates
        check_one_sample(p, args.seconds, min(args.rates))
    for ms in args.chunk_ms:
        if used_rates and int(min(used_rates) * ms / 1000) < 1:
            p.error(f"--chunk-ms {ms:g} is less than one sample at {min(used_rates)} Hz")
    torch.set_num_threads(1)  # the cost is per thread; a second thread beside other work only spins
    model = load(model_path).eval()
    report = {"model": str(model_path), "command": " ".join(["python", *sys.argv])}
    if args.count:
        report["quality"] = quality(model, folder, names, args.chunk_ms)
        print(report["quality"], flush=True)
    if args.seconds:
        report["cost_one_thread"] = cost(model, args.rates, args.chunk_ms, args.seconds)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
