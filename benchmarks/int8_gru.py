r"""What dynamic int8 quantization of the GRUs would buy on CPU: speed of the network alone and
val quality, against float32, for each checkpoint given.

    python benchmarks/int8_gru.py runs/denoiser-small-stage9.safetensors [MORE.safetensors...] \
        [--rounds 5] [--quality] [--out benchmarks/results/int8-gru.json]

A probe for a decision, not a feature: ``torch.ao.quantization.quantize_dynamic`` says it is
deprecated (torchao's replacement quantizes Linear layers, not GRUs). Speed is the model's
forward pass on the features of a 60 s input on one thread, the two variants timed in turn;
``--quality`` also scores them on the 48 val mixtures of ``recipes/compare_checkpoints.py``, and
a third variant with the Linear layers quantized too.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
import warnings

import torch
from bench_args import positive  # noqa: E402 (run as a script: benchmarks/ is on the path)

from audioae.checkpoint import load_checkpoint
from audioae.fileio import atomic_write_json
from audioae.pretrained import resolve_arg
from audioae.train import load_run_config, make_validation_set, validate


def int8(model: torch.nn.Module, layers: set[type]) -> torch.nn.Module:
    """A copy with ``layers`` dynamically quantized to int8 (weights int8, activations per call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), layers, dtype=torch.qint8)


def forward_speed(variants: dict[str, torch.nn.Module], rounds: int, seconds: float = 60.0) -> dict[str, float]:
    """Median × real time of each variant's forward pass, timed in turn."""
    first = next(iter(variants.values()))
    x = 0.1 * torch.randn(1, int(seconds * first.config.sample_rate), generator=torch.Generator().manual_seed(0))  # [1, T]
    speeds: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        _, feat = first.analyze(x)  # [1, F', N]
        for _ in range(rounds):
            for name, m in variants.items():
                t = time.perf_counter()
                m(feat)
                speeds[name].append(seconds / (time.perf_counter() - t))
    return {k: round(statistics.median(v), 1) for k, v in speeds.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="shipped model names or checkpoint paths")
    p.add_argument("--rounds", type=positive, default=5)
    p.add_argument("--quality", action="store_true", help="also score both variants on the 48 val mixtures")
    p.add_argument("--out", default="benchmarks/results/int8-gru.json")
    args = p.parse_args()
    paths = {spec: resolve_arg(p, spec, family="recurrent denoiser") for spec in args.checkpoints}  # all before any is timed
    torch.set_num_threads(1)
    rows = []
    for path in args.checkpoints:
        model = load_checkpoint(paths[path]).eval()
        variants = {"float32": model, "gru_int8": int8(model, {torch.nn.GRU})}
        row = {"checkpoint": path, "parameters": model.num_parameters(), "hidden": model.config.hidden,
               "forward_x_realtime": forward_speed(variants, args.rounds)}
        if args.quality:  # the Linear layers too, for quality only: their int8 form has no parameters() to find the device by
            data = dataclasses.replace(load_run_config("configs/denoiser-small.toml").data, val_examples=48)
            val = make_validation_set(model, data, seed=1234)
            both = int8(model, {torch.nn.GRU, torch.nn.Linear})
            both.parameters = model.parameters  # validate() looks the device up through parameters()
            scored = {**variants, "gru_and_linear_int8": both}
            row["val48"] = {k: {m: round(v, 4) for m, v in validate(mm, val).items()} for k, mm in scored.items()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    atomic_write_json(args.out, {"threads": 1, "rounds": args.rounds, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
