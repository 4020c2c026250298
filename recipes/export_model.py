"""Copy a training checkpoint into the package as a shipped model (weights, metadata, sha256).

    python recipes/export_model.py runs/denoiser-small/best.safetensors audioae/pretrained/denoiser-small.safetensors
    python recipes/export_model.py SRC DST --set mask_power=0.8   # change an inference knob of the config
    python recipes/export_model.py SRC DST --base B --alpha 0.5   # weights halfway from B's to SRC's
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audioae.checkpoint import (
    CheckpointError,
    checkpoint_extra,
    interpolate_weights,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    sidecar_sha256,
)
from audioae.config import parse_assignments, typed_fields
from audioae.pretrained import resolve_arg
from audioae.train import RESUME_FIXED, grown_like

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the checkpoint to export: a .safetensors path or a shipped model name")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config field to change (inference knobs only: the weights must still fit)")
    p.add_argument("--base", help="interpolate SRC's weights towards this checkpoint's (with --alpha; a path or a "
                   "shipped model name)")
    p.add_argument("--alpha", type=float, help="weight of SRC in alpha * SRC + (1 - alpha) * BASE")
    args = p.parse_args()
    if (args.base is None) != (args.alpha is None):
        p.error("--base and --alpha go together")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:  # nan fails this too
        p.error(f"--alpha must be within [0, 1], got {args.alpha}")
    # a shipped name or a path, as elsewhere; a bad one said before anything is read
    src = resolve_arg(p, args.src)
    base = resolve_arg(p, args.base) if args.base is not None else None
    dst = Path(args.dst).resolve()
    for name, given, path in (("SRC", args.src, src), ("--base", args.base, base)):
        if path is not None and dst == path.resolve():
            p.error(f"DST is {name} ({given}): an export writes a new file and never replaces a checkpoint it reads")
    if dst.is_dir():
        p.error(f"DST {args.dst} is a folder; name the .safetensors file to write")
    try:
        model = load_checkpoint(src)
        changes = typed_fields(type(model.config), parse_assignments(args.overrides),
                               f"--set: {type(model.config).__name__}")
        extra = checkpoint_extra(src)
        if base is not None:
            base_model = load_checkpoint(base)
            if base_model.registry_name != model.registry_name:
                p.error(f"--base {args.base} is a {base_model.registry_name} model and SRC a {model.registry_name} one")
            model = interpolate_weights(model, grown_like(model, base_model), args.alpha)
            extra = {**extra, "interpolated": {"base": args.base, "alpha": args.alpha,
                                               "base_trained": checkpoint_extra(base)}}
    except (CheckpointError, ValueError, OSError) as exc:  # a missing file, a base that does not fit
        p.error(str(exc))
    signal = sorted(set(changes) & set(RESUME_FIXED))  # the weights would load, and hear another signal
    if signal:
        p.error(f"--set {', '.join(signal)}: defines the signal the weights were trained on; --set takes inference knobs only (such as mask_power)")
    before = read_metadata(args.dst)["registry_name"] if dst.is_file() else None  # its header: no weights read
    if before is not None and before != model.registry_name:  # e.g. a decomposer over the shipped denoiser
        p.error(f"DST {args.dst} holds a {before} model and this export a {model.registry_name} one; remove "
                f"DST first if that is meant")
    if changes:
        try:
            model = model.with_config(**changes)
        except RuntimeError:  # load_state_dict: the weights no longer fit
            p.error(f"--set {', '.join(changes)}: changes the shapes of the weights; --set takes inference knobs "
                    f"only (such as mask_power)")
        except (ValueError, TypeError) as exc:  # the config's own checks
            p.error(f"--set: {exc}")
    old_digest = sidecar_sha256(args.dst) if before is not None else None
    meta = {"trained": extra, **({"config_changes": changes} if changes else {})}
    digest = save_checkpoint(model, args.dst, meta)
    print(json.dumps({"dst": args.dst, "sha256": digest, **({"replaced_sha256": old_digest} if before else {}),
                      "parameters": model.num_parameters(), **meta}, indent=2))


if __name__ == "__main__":
    main()
