"""What background mixing costs the training loop's own thread: mixer threads against processes.

    python benchmarks/loader_contention.py --workers 4 --out benchmarks/results/loader-contention.json

A CUDA training step is hundreds of small kernel launches from one Python thread, a few
microseconds each, and the GPU waits whenever that thread does. Mixing (``audioae.data.mixing``)
is partly Python, so mixer *threads* hold the GIL the launching thread needs between every two
launches; mixer *processes* (``train.loader_processes``) do not. This runs the training corpus's
mixers (``--config``'s ``[data]``) at full speed in each mode while the main thread takes their
batches and, after each batch, times ``--ops`` tiny torch operations (an add on 64 numbers,
about as long as a kernel launch): microseconds per operation, against the same with no mixer
running, and batches per second delivered. No GPU needed; the mechanism is the same. It also
counts the operations one training step of the GPU phase dispatches from Python (its forward
and losses, ``configs/denoiser-small-gpu.toml``; the backward runs in autograd's own threads),
which turns microseconds per operation into milliseconds per step. A process
delivers a little fewer batches than a thread (each batch is copied into shared memory), which a
dozen workers more than cover at a GPU's 13 batches a second.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_args import description  # noqa: E402 (run as a script: benchmarks/ is on the path)

from audioae.data.mixing import MixConfig, Mixer, corpus_missing, mixed_batches
from audioae.fileio import atomic_write_json
from audioae.train import _sources, load_run_config

REPO = Path(__file__).resolve().parents[1]  # defaults found from any folder, not the current one's


def microseconds_per_op(ops: int) -> float:
    x = torch.zeros(64)
    t = time.perf_counter()
    for _ in range(ops):
        x = x + 1
    return (time.perf_counter() - t) / ops * 1e6


def python_ops_per_step(config: str = str(REPO / "configs" / "denoiser-small-gpu.toml"), batch: int = 4) -> int:
    """Top-level operations of one forward-and-losses pass of the shipped model under the GPU
    phase's loss (the same count at any batch size)."""
    from torch.profiler import ProfilerActivity, profile

    from audioae import pretrained
    from audioae.train import batch_loss, corrupt_batch

    tc = load_run_config(config, ["train.max_minutes=1"]).train
    model = pretrained.load(None).train()
    g = torch.Generator().manual_seed(0)
    clean, noise = (0.1 * torch.randn(batch, 32000, generator=g) for _ in range(2))  # [B, T] each
    snr = torch.zeros(batch)  # [B]

    def forward_and_losses() -> None:
        with torch.no_grad():
            _, spec = corrupt_batch(model, clean, noise, snr)
        batch_loss(model, clean, spec, tc)

    forward_and_losses()  # warm-up: lazy module and proxy set-up is not a step's work
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_and_losses()
    return sum(1 for e in prof.events() if e.cpu_parent is None)


def run_mode(mode: str, mixers: list[Mixer], batch: int, batches: int, ops: int) -> dict:
    per_op, waits = [], 0.0
    t0 = time.perf_counter()
    with mixed_batches(mixers, batch, mode) as stream:
        next(stream)  # workers started and their first batches made
        t0 = time.perf_counter()
        for _ in range(batches):
            t = time.perf_counter()
            next(stream)
            waits += time.perf_counter() - t
            per_op.append(microseconds_per_op(ops))
    wall = time.perf_counter() - t0
    return {"us_per_op_median": float(np.median(per_op)), "us_per_op_mean": float(np.mean(per_op)),
            "batches_per_s": batches / wall, "waiting_for_batches_s": waits, "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--config", default=str(REPO / "configs" / "denoiser-small-s8.toml"), help="run config whose [data] is mixed")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--ops", type=int, default=2000, help="tiny operations timed after each batch")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    run = load_run_config(args.config)
    d = run.data
    missing = corpus_missing(d.clean_dir, d.noise_dir)  # not a FileNotFoundError traceback after the op timing
    if missing:
        ap.error(missing)
    sr = run.model_config.get("sample_rate", 16000)
    sources = _sources(d, sr, val=False)
    mix = MixConfig(d.segment_seconds, d.snr_low, d.snr_high, reverb_prob=d.reverb_prob,
                    second_noise_prob=d.second_noise_prob)
    res = {"command": " ".join(["python benchmarks/loader_contention.py", *(sys.argv[1:] if argv is None else argv)]),
           "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(), "torch": torch.__version__},
           "config": args.config, "workers": args.workers, "batch": args.batch, "ops": args.ops,
           "no_loader_us_per_op": float(np.median([microseconds_per_op(args.ops) for _ in range(args.batches)]))}
    res["python_ops_per_step"] = ops = python_ops_per_step()
    print(f"no loader: {res['no_loader_us_per_op']:.1f} us per op; {ops} operations per step from Python", flush=True)
    res["no_loader_ms_per_step"] = ops * res["no_loader_us_per_op"] / 1000
    for mode in ("threads", "processes"):
        mixers = [Mixer(*sources, sr, mix, seed=k) for k in range(args.workers)]
        res[mode] = run_mode(mode, mixers, args.batch, args.batches, args.ops)
        res[mode]["ms_per_step_median"] = ops * res[mode]["us_per_op_median"] / 1000
        print(mode, {k: round(v, 2) for k, v in res[mode].items()}, flush=True)
    if args.out:
        atomic_write_json(args.out, res)


if __name__ == "__main__":
    main()
