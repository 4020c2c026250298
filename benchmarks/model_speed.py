r"""Seconds of audio per second of wall time for several denoisers, timed in turn on one file.

    python benchmarks/model_speed.py MODEL... [--seconds 60] [--rounds 3] \
        [--out benchmarks/results/model-speed.json]

This VM's speed drifts by a third from one hour to the next, so two models timed in separate
benchmark runs cannot be compared; timed round-robin in one process, they can. Each round times
every model once on the same noise file, on one thread, with the held-out benchmark's own
method and timing (``denoise_bench.audioae_method``, ``denoise_bench.measure_speed``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from bench_args import check_one_sample, positive, positive_seconds  # noqa: E402 (run as a script: benchmarks/ is on the path)
from denoise_bench import audioae_method, measure_speed  # a sibling script: run as benchmarks/model_speed.py

from audioae.fileio import atomic_write_json
from audioae.pretrained import resolve_arg


def time_models(paths: dict[str, Path], seconds: float, rounds: int, sr: int = 16000) -> dict[str, list[float]]:
    """× real time of each model (name -> its checkpoint file) in each round, the models taking
    turns within a round."""
    x = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)  # [T]
    methods = {n: audioae_method(n, path)[0] for n, path in paths.items()}
    speeds: dict[str, list[float]] = {n: [] for n in paths}
    for _ in range(rounds):
        for n, fn in methods.items():
            speeds[n].append(measure_speed({n: fn}, x, sr, repeats=1)[n]["x_realtime"])
    return speeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="shipped model names or checkpoint paths")
    p.add_argument("--seconds", type=positive_seconds, default=60.0)
    p.add_argument("--rounds", type=positive, default=3)
    p.add_argument("--out", default="benchmarks/results/model-speed.json")
    args = p.parse_args()
    check_one_sample(p, args.seconds, 16000)  # time_models' rate
    paths = {spec: resolve_arg(p, spec, family="denoiser") for spec in args.models}  # every one before any is timed
    speeds = time_models(paths, args.seconds, args.rounds)
    res = {"seconds_audio": args.seconds, "rounds": args.rounds, "threads": 1,
           "x_realtime": {n: [round(v, 1) for v in vs] for n, vs in speeds.items()},
           "median": {n: round(statistics.median(vs), 1) for n, vs in speeds.items()}}
    for n, vs in speeds.items():
        print(f"{n}: median {statistics.median(vs):.1f}x real time ({', '.join(f'{v:.1f}' for v in vs)})")
    atomic_write_json(args.out, res)


if __name__ == "__main__":
    main()
