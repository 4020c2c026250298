"""Copy a training checkpoint into the package as a shipped model (weights, metadata, sha256).

    python recipes/export_model.py runs/denoiser-small/best.safetensors audioae/pretrained/denoiser-small.safetensors
    python recipes/export_model.py SRC DST --set mask_power=0.8   # change an inference knob of the config
    python recipes/export_model.py SRC DST --base B --alpha 0.5   # weights halfway from B's to SRC's
"""

from __future__ import annotations

import argparse
import json

from audioae.checkpoint import checkpoint_extra, interpolate_weights, load_checkpoint, save_checkpoint
from audioae.train import grown_like


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                   help="config field to change (inference knobs only: the weights must still fit)")
    p.add_argument("--base", help="interpolate SRC's weights towards this checkpoint's (with --alpha)")
    p.add_argument("--alpha", type=float, help="weight of SRC in alpha * SRC + (1 - alpha) * BASE")
    args = p.parse_args()
    if (args.base is None) != (args.alpha is None):
        p.error("--base and --alpha go together")
    model = load_checkpoint(args.src)
    extra = checkpoint_extra(args.src)
    if args.base:
        model = interpolate_weights(model, grown_like(model, load_checkpoint(args.base)), args.alpha)
        extra = {**extra, "interpolated": {"base": args.base, "alpha": args.alpha,
                                           "base_trained": checkpoint_extra(args.base)}}
    changes = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.overrides)}
    if changes:
        model = model.with_config(**changes)
    digest = save_checkpoint(model, args.dst, {"trained": extra, **({"config_changes": changes} if changes else {})})
    print(json.dumps({"dst": args.dst, "sha256": digest, "parameters": model.num_parameters(), **extra}, indent=2))


if __name__ == "__main__":
    main()
