"""What `audioae eval` costs: seconds of PESQ (wb) and STOI on one pair of a given length.

    python benchmarks/metric_speed.py [--seconds 600] [--out benchmarks/results/metric-speed.json]

The pair is generated speech-like signal (``audioae.data.synthetic.speech_like``, 10 s pieces)
and the same with white noise at 0.05; the metrics are ``audioae.metrics.pesq_wb`` and ``stoi``,
the ones `audioae eval` runs on every pair, timed once each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_args import check_one_sample, positive_seconds  # noqa: E402 (run as a script: benchmarks/ is on the path)

from audioae.data.synthetic import speech_like
from audioae.fileio import atomic_write_json
from audioae.metrics import pesq_wb, stoi


def time_metrics(seconds: float, sr: int = 16000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pieces = max(1, round(seconds / 10))
    clean = np.concatenate([speech_like(rng, seconds / pieces, sr) for _ in range(pieces)]).astype(np.float32)  # [T]
    enhanced = (clean + 0.05 * rng.standard_normal(len(clean))).astype(np.float32)  # [T]
    out = {"seconds_of_audio": round(len(clean) / sr, 3), "sample_rate": sr}
    for name, fn in (("pesq", pesq_wb), ("stoi", stoi)):
        t0 = time.perf_counter()
        value = fn(enhanced, clean, sr)
        wall = time.perf_counter() - t0
        out[name] = {"value": round(float(value), 4), "wall_s": round(wall, 2),
                     "wall_s_per_audio_s": round(wall / (len(clean) / sr), 4)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=positive_seconds, default=600.0, help="length of the pair (default: 600)")
    p.add_argument("--out", default="benchmarks/results/metric-speed.json")
    args = p.parse_args()
    check_one_sample(p, args.seconds, 16000)  # time_metrics' rate
    result = time_metrics(args.seconds)
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
