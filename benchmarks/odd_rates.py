r"""What a sample rate that shares few factors with the model's 16 kHz costs: the size of
torchaudio's resampling filter for it, the speed of `denoise` on a file at that rate (one thread),
the wall time of a 10 ms streaming call (median), against a standard rate, and what a new rate's first
0.5 s clip costs (its filter banks built: what a server would pay per new rate) with the process's
peak memory after it (the banks kept add up).

    python benchmarks/odd_rates.py [--model denoiser-small] \
        [--rates 44100 48000 5512 47952 44056 15932 24885 63512] \
        [--seconds 20] [--out benchmarks/results/odd-rates.json]

It prints a line per rate; ``--out`` writes the figures as JSON too. ``benchmarks/results/odd-rates.json``
holds the stored run: name it to replace that on purpose (a run for a look, without ``--out``, leaves it
as it is).

It takes minutes, not seconds: 5.6 minutes with ``--seconds 3`` on a shared 2-core machine
(2026-12-07), so ``--seconds`` shortens little of it; fewer ``--rates`` do.

Rates over the bounds are measured too (both are lifted for the run), to show why they are refused:
:data:`audioae.audio.MAX_RESAMPLE_FILTER_BYTES` for real-time streams (``stream_accepted``),
:data:`audioae.audio.MAX_OFFLINE_RESAMPLE_FILTER_BYTES` for files and clips (``offline_accepted``).
A server holds every call to the stream's bound (``check_resample(served=True)``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
from bench_args import check_one_sample, positive_seconds, sample_rate  # noqa: E402 (run as a script: benchmarks/ is on the path)

from audioae.audio import resampling  # its limits are patched where check_resample reads them
from audioae.enhance import StreamingDenoiser, denoise
from audioae.fileio import atomic_write_json
from audioae.pretrained import load, resolve_arg


def measure(model, sr: int, seconds: float, limits: tuple[int, int]) -> dict:
    """``limits``: the (stream, offline) bounds in force outside the run."""
    x = (0.1 * np.random.default_rng(0).standard_normal(int(sr * seconds))).astype(np.float32)  # [T]
    t0 = time.perf_counter()
    denoise(model, x[: sr // 2], sr)  # a new rate's first clip: its filter banks built and kept (audioae.audio.resampler)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    denoise(model, x, sr)
    offline = seconds / (time.perf_counter() - t0)
    s, step, calls = StreamingDenoiser(model, sr, 1), sr // 100, []
    for i in range(0, min(len(x), 3 * sr), step):
        t0 = time.perf_counter()
        s.push(x[i : i + step])
        calls.append(time.perf_counter() - t0)
    msr = model.config.sample_rate
    size = max(resampling.resample_filter_bytes(sr, msr), resampling.resample_filter_bytes(msr, sr))  # as check_resample
    return {"sample_rate": sr, "filter_mb": round(size / 1e6, 2), "stream_accepted": size <= limits[0],
            "offline_accepted": size <= limits[1], "first_0.5s_clip_s": round(first, 3),
            "peak_rss_mb_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,  # Linux: kB
            "offline_x_realtime": round(offline, 1), "stream_10ms_call_ms_p50": round(1000 * statistics.median(calls), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="denoiser-small", help="a shipped model name or a .safetensors path")
    p.add_argument("--rates", type=sample_rate, nargs="+", default=[44100, 48000, 5512, 47952, 44056, 15932, 24885, 63512])
    p.add_argument("--seconds", type=positive_seconds, default=20.0)
    p.add_argument("--out", default=None, help="write the figures as JSON here (the stored run: "
                   "benchmarks/results/odd-rates.json); without it they are printed only")
    args = p.parse_args()
    check_one_sample(p, args.seconds, min(args.rates))
    model_path = resolve_arg(p, args.model, "--model", family="denoiser")
    torch.set_num_threads(1)
    model = load(model_path)
    limits = resampling.MAX_RESAMPLE_FILTER_BYTES, resampling.MAX_OFFLINE_RESAMPLE_FILTER_BYTES
    resampling.MAX_RESAMPLE_FILTER_BYTES = resampling.MAX_OFFLINE_RESAMPLE_FILTER_BYTES = 10**12  # measure the refused ones too
    rows = []
    for sr in args.rates:
        rows.append(measure(model, sr, args.seconds, limits))
        print(rows[-1], flush=True)
    if not args.out:
        return
    atomic_write_json(args.out, {"model": args.model, "stream_limit_mb": limits[0] / 1e6,
                                 "offline_limit_mb": limits[1] / 1e6, "seconds": args.seconds, "rows": rows,
                                 "command": "python benchmarks/odd_rates.py" + (f" --rates {' '.join(map(str, args.rates))}"
                                                                               if args.rates != p.get_default("rates") else "")})


if __name__ == "__main__":
    main()
