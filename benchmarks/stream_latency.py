"""How much audio a stream holds back: after each push of a chunk, the input sent minus the output
returned, per sample rate and chunk size (the shipped denoiser, one second of noise, pushes after
the first 0.3 s counted).

    python benchmarks/stream_latency.py [--out benchmarks/results/stream-latency.json]

The model's own latency is one 24 ms window (a hop of it still to come when a frame completes),
plus, at a rate other than the model's, the two resamplers' kernels: about 13 samples of the lower
of the two rates (under 1 ms above 16 kHz, 13 ms at 1 kHz). ``bound_ms`` is that sum, which the
largest hold-back stays under: ``ListModels``' ``latency_ms`` + :func:`resampling_reach_ms`. A resampler answering whole blocks of
441 input samples at 44.1, 22.05 and 11.025 kHz, with a block of context to spare, would hold back
60-80, 100-120 and 200-240 ms (``audioae.audio.StreamingResampler`` does not).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from audioae import pretrained
from audioae.audio import StreamingResampler
from audioae.enhance import StreamingDenoiser
from audioae.fileio import atomic_write_json

RATES = (1000, 8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
CHUNKS_MS = (1, 10)


def resampling_reach_ms(sr: int, model_sr: int) -> float:
    """How much more a stream at ``sr`` holds back than one at the model's rate: each resampler
    answers an output sample once the input reaches its kernel's half-width past it."""
    if sr == model_sr:
        return 0.0
    return 1000 * (StreamingResampler(sr, model_sr, 1).width / sr + StreamingResampler(model_sr, sr, 1).width / model_sr)


def held_back_ms(model, sr: int, chunk_ms: int, seconds: float = 1.0, skip: float = 0.3) -> tuple[float, float]:
    """(min, max) ms of audio held back after a push, over the pushes after ``skip`` seconds."""
    n = max(1, sr * chunk_ms // 1000)
    x = (0.1 * np.random.default_rng(0).standard_normal((1, int(sr * seconds)))).astype(np.float32)  # [1, T]
    s = StreamingDenoiser(model, sr, 1)
    sent = returned = 0
    lags = []
    for i in range(0, x.shape[-1], n):
        returned += s.push(x[:, i : i + n]).shape[-1]
        sent = min(i + n, x.shape[-1])
        if sent > skip * sr:
            lags.append(1000 * (sent - returned) / sr)
    return min(lags), max(lags)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = pretrained.load(None)
    rows = []
    for sr in RATES:
        for ms in CHUNKS_MS:
            lo, hi = held_back_ms(model, sr, ms)
            bound = 1000 * model.latency_seconds + resampling_reach_ms(sr, model.config.sample_rate)
            rows.append({"sample_rate": sr, "chunk_ms": ms, "held_back_ms_min": round(lo, 1), "held_back_ms_max": round(hi, 1),
                         "bound_ms": round(bound, 1)})
            print(rows[-1], flush=True)
    if args.out:
        atomic_write_json(args.out, {"model": pretrained.DEFAULT_DENOISER, "rows": rows})


if __name__ == "__main__":
    main()
