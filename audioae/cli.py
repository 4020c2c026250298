"""The ``audioae`` command. Thin: parse, call the library, print results for people.

Subcommands: train, models, denoise, eval, decompose, inspect, images, serve, client.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__


# ---- train -------------------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a spectrogram autoencoder from a TOML config",
                       description="Train from a TOML run config (see configs/) with section.key=value overrides.")
    p.add_argument("config", nargs="?", help="TOML file with [model], [data], [train] sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set train.steps=100 --set model.config.hidden=64")
    p.add_argument("--out", help="output folder (train.out_dir)")
    p.add_argument("--steps", type=int, help="train.steps")
    p.add_argument("--device", help="auto | cpu | cuda (train.device)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the folder has a checkpoint")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .train import load_run_config, train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={json.dumps(args.out)}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.device:
        overrides.append(f"train.device={json.dumps(args.device)}")
    run = load_run_config(args.config, overrides)
    summary = train(run, resume=not args.no_resume)
    print(json.dumps(summary, indent=2))
    return 0


# ---- models ------------------------------------------------------------------------------------
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered model families and the shipped models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    from .models import REGISTRY, build_model
    from .pretrained import describe_shipped

    families = []
    for name, fam in REGISTRY.items():
        m = build_model(name)
        families.append({"family": name, "summary": fam.summary, "input": m.config.input,
                         "default_parameters": m.num_parameters(),
                         "default_latency_ms": m.describe()["latency_ms"]})
    shipped = describe_shipped()
    if args.json:
        print(json.dumps({"families": families, "shipped": shipped}, indent=2))
        return 0
    print("Registered families (default config):")
    for f in families:
        lat = "offline" if f["default_latency_ms"] is None else f"{f['default_latency_ms']} ms"
        print(f"  {f['family']:<12} {f['input']:<12} {f['default_parameters']:>9,} params  {lat:<10} {f['summary']}")
    print("Shipped models:")
    if not shipped:
        print("  (none)")
    for s in shipped:
        lat = "offline" if s["latency_ms"] is None else f"{s['latency_ms']} ms"
        print(f"  {s['name']:<18} {s['family']:<10} {s['sample_rate'] or '-':>6} Hz  code {s['code_dim']:<4} "
              f"{s['parameters']:>9,} params  latency {lat}")
    return 0


# ---- subcommands owned by other modules register below (one function each) --------------------
# [denoise/eval]
# [decompose/inspect]
# [images]
# [serve/client]


COMMANDS = [_add_train, _add_models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audioae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"audioae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Library errors carry messages meant for people (AudioError, CheckpointError, config errors).
        print(f"audioae {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
