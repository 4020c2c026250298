"""Copy a training checkpoint into the package as a shipped model (weights, metadata, sha256).

    python recipes/export_model.py runs/denoiser-small/best.safetensors audioae/pretrained/denoiser-small.safetensors
"""

from __future__ import annotations

import argparse
import json

from audioae.checkpoint import checkpoint_extra, load_checkpoint, save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    args = p.parse_args()
    model = load_checkpoint(args.src)
    extra = checkpoint_extra(args.src)
    digest = save_checkpoint(model, args.dst, {"trained": extra})
    print(json.dumps({"dst": args.dst, "sha256": digest, "parameters": model.num_parameters(), **extra}, indent=2))


if __name__ == "__main__":
    main()
