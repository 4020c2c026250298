#!/usr/bin/env python3
"""Score denoiser checkpoints on one fixed validation set, to choose which one to ship.

    python recipes/compare_checkpoints.py runs/denoiser-small/last.safetensors runs/denoiser-small-df/last.safetensors

Builds the validation mixtures of a run config's ``[data]`` section (the corpus's *val* split:
held-out voices and noises; never the test set) with ``--examples`` mixtures and a fixed seed,
so every checkpoint is scored on the same mixtures, and prints SI-SDR (and of the input), PESQ
and STOI per checkpoint as JSON lines. Each mixture goes through ``audioae denoise``'s own path
(``denoise()``, its level lift included), so the ranking is that of what users get; until
2026-12-08 it scored training validation's own forward pass, which skipped the lift. ``--mask-power`` also scores each checkpoint with its
mask raised to these powers (the ``mask_power`` knob of the model config). ``--base B --alpha
A...`` also scores each checkpoint's weights interpolated towards B's (``alpha * ckpt + (1 - alpha)
* B``: a fine-tuned model against the weights it started from; B is first grown into the
checkpoint's architecture where that grew, e.g. by an input gate). ``--split train`` builds the
same kind of mixtures from the train split instead: a model that scores much higher there than
on val has learned its training voices and noises rather than the task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

from audioae.checkpoint import CheckpointError, interpolate_weights, load_checkpoint
from audioae.config import check_thread_count
from audioae.data.mixing import corpus_missing
from audioae.pretrained import resolve_arg
from audioae.train import grown_like, load_run_config, make_validation_set, score_denoised

REPO = Path(__file__).resolve().parents[1]  # defaults found from any folder, not the current one's


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--config", default=str(REPO / "configs" / "denoiser-small.toml"), help="run config whose [data] gives the val split")
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--mask-power", type=float, nargs="*", default=[], help="also score these mask powers")
    ap.add_argument("--base", help="checkpoint to interpolate each checkpoint's weights towards")
    ap.add_argument("--alpha", type=float, nargs="*", default=[], help="interpolation weights of the checkpoint (with --base)")
    ap.add_argument("--split", choices=("val", "train"), default="val",
                    help="train: the same kind of mixtures from the train split's voices and noises, to see "
                         "whether a model does better on what it trained on (the test split is never used)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.examples < 1:
        ap.error(f"--examples must be at least 1, got {args.examples}")
    try:
        check_thread_count(args.threads, "--threads", least=1)
    except ValueError as exc:
        ap.error(str(exc))
    if not all(0 < p < math.inf for p in args.mask_power):  # here, not the model config's traceback after a scoring
        ap.error(f"--mask-power values must be finite numbers above 0, got {args.mask_power}")
    if any(not 0.0 <= a <= 1.0 for a in args.alpha):
        ap.error(f"--alpha values must be within [0, 1], got {args.alpha}")
    if args.base and not args.alpha:  # not ignored in silence
        ap.error("--base needs --alpha (the weights of each checkpoint to score)")
    if args.alpha and not args.base:
        ap.error("--alpha needs --base")
    # a shipped name too, as every audioae command takes one; a decomposer (no corruption: its input
    # is the clean speech) would score 90 dB in
    files = {path: resolve_arg(ap, path, family="denoiser") for path in args.checkpoints}
    base_file = resolve_arg(ap, args.base) if args.base else None
    torch.set_num_threads(args.threads)
    try:  # found, but does not load (its sha256, its weights)
        models = {path: load_checkpoint(file).eval() for path, file in files.items()}
        base = load_checkpoint(base_file) if base_file else None
    except CheckpointError as exc:
        ap.error(str(exc))
    rates = {path: getattr(m.config, "sample_rate", None) for path, m in models.items()}
    if len(set(rates.values())) > 1:  # the val set is made once, at the first checkpoint's rate
        ap.error(f"the checkpoints differ in sample rate ({rates}); compare one rate at a time")
    run = load_run_config(args.config)
    data = dataclasses.replace(run.data, val_examples=args.examples)
    if args.split == "train":
        data = dataclasses.replace(data, val_clean_dir=data.clean_dir, val_noise_dir=data.noise_dir)
    missing = corpus_missing(data.val_clean_dir, data.val_noise_dir)
    if missing:
        ap.error(f"--config {args.config}: {missing}")
    val_set = None
    for path, loaded in models.items():
        if val_set is None:  # the mixtures depend only on the data config, the seed and the rate
            try:  # the config's corpus folders are read from the current folder (the repo root, as a rule)
                val_set = make_validation_set(loaded, data, seed=args.seed)
            except (FileNotFoundError, ValueError) as exc:
                ap.error(f"--config {args.config}: {exc}")
        try:
            start = grown_like(loaded, base) if base is not None else None  # once per checkpoint, for every alpha
        except ValueError as exc:  # a base of another family or a larger one
            ap.error(f"--base {args.base} does not fit {path}: {exc}")
        for alpha in [None, *args.alpha]:
            model = loaded if alpha is None else interpolate_weights(loaded, start, alpha).eval()
            blend = {} if alpha is None else {"base": args.base, "alpha": alpha}
            for power in [None, *args.mask_power]:
                m = model if power is None else model.with_config(mask_power=power)
                scores = score_denoised(m, val_set)  # what `audioae denoise` makes of each mixture
                print(json.dumps({"checkpoint": path, **blend, "mask_power": m.config.mask_power,
                                  **{k: round(v, 4) for k, v in scores.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
