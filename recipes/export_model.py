"""Copy a training checkpoint into the package as a shipped model (weights, metadata, sha256).

    python recipes/export_model.py runs/denoiser-small/best.safetensors audioae/pretrained/denoiser-small.safetensors
    python recipes/export_model.py SRC DST --set mask_power=0.8   # change an inference knob of the config
    python recipes/export_model.py SRC DST --base B --alpha 0.5   # weights halfway from B's to SRC's
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audioae.checkpoint import checkpoint_extra, interpolate_weights, load_checkpoint, save_checkpoint
from audioae.config import parse_assignments, typed_fields
from audioae.train import grown_like


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config field to change (inference knobs only: the weights must still fit)")
    p.add_argument("--base", help="interpolate SRC's weights towards this checkpoint's (with --alpha)")
    p.add_argument("--alpha", type=float, help="weight of SRC in alpha * SRC + (1 - alpha) * BASE")
    args = p.parse_args()
    if (args.base is None) != (args.alpha is None):
        p.error("--base and --alpha go together")
    if Path(args.dst).resolve() == Path(args.src).resolve():
        p.error(f"DST is SRC ({args.src}): an export writes a new file and never replaces the checkpoint it reads")
    model = load_checkpoint(args.src)
    try:
        changes = typed_fields(type(model.config), parse_assignments(args.overrides),
                               f"--set: {type(model.config).__name__}")
    except ValueError as exc:
        p.error(str(exc))
    extra = checkpoint_extra(args.src)
    if args.base:
        model = interpolate_weights(model, grown_like(model, load_checkpoint(args.base)), args.alpha)
        extra = {**extra, "interpolated": {"base": args.base, "alpha": args.alpha,
                                           "base_trained": checkpoint_extra(args.base)}}
    if changes:
        try:
            model = model.with_config(**changes)
        except RuntimeError:  # load_state_dict: the weights no longer fit
            p.error(f"--set {', '.join(changes)}: changes the shapes of the weights; --set takes inference knobs "
                    f"only (such as mask_power)")
        except (ValueError, TypeError) as exc:  # the config's own checks
            p.error(f"--set: {exc}")
    digest = save_checkpoint(model, args.dst, {"trained": extra, **({"config_changes": changes} if changes else {})})
    print(json.dumps({"dst": args.dst, "sha256": digest, "parameters": model.num_parameters(), **extra}, indent=2))


if __name__ == "__main__":
    main()
