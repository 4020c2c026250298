#!/usr/bin/env python3
"""Gradient norm of each loss term at a checkpoint, on one training batch: how the weights of a
phase's loss terms were sized (configs/denoiser-small-perceptual.toml).

    python recipes/loss_gradients.py runs/shipped-phase7-denoiser-small.safetensors \
        --config configs/denoiser-small-perceptual.toml

Each term alone at weight 1 (SI-SDR at its phase-3 weight 0.002), on a batch mixed from the
config's training folders exactly as training mixes them; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from audioae.checkpoint import load_checkpoint
from audioae.data.mixing import MixConfig, Mixer
from audioae.pretrained import resolve_arg
from audioae.train import TrainConfig, _sources, batch_loss, corrupt_batch, load_run_config

REPO = Path(__file__).resolve().parents[1]  # defaults found from any folder, not the current one's

TERMS = {"spec": {"spectral_weight": 1.0}, "sisdr_0.002": {"sisdr_weight": 0.002},
         "pesq": {"pesq_weight": 1.0}, "stoi": {"stoi_weight": 1.0}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("checkpoint", help="a .safetensors path or a shipped model name")
    ap.add_argument("--config", default=str(REPO / "configs" / "denoiser-small-perceptual.toml"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = resolve_arg(ap, args.checkpoint, family="denoiser")  # a decomposer has no noisy input to take gradients on
    run = load_run_config(args.config)
    model = load_checkpoint(path).train()
    sr = model.config.sample_rate
    mix = MixConfig(run.data.segment_seconds, run.data.snr_low, run.data.snr_high)
    clean, noise, snr = Mixer(*_sources(run.data, sr, val=False), sr, mix, seed=args.seed).batch(args.batch)
    noisy, spec = corrupt_batch(model, clean, noise, snr)  # [B, T], [B, F, N]
    out = {}
    for name, weights in TERMS.items():
        model.zero_grad()
        loss, _ = batch_loss(model, clean, spec, TrainConfig(**{"spectral_weight": 0.0, **weights}), noisy=noisy)
        loss.backward()
        norm = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters() if p.grad is not None))
        out[name] = {"loss": round(float(loss.detach()), 4), "grad_norm": round(float(norm), 4)}
    print(json.dumps({"checkpoint": args.checkpoint, "batch": args.batch, "seed": args.seed, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
