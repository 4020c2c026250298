"""The denoiser at input levels below and above those it was trained on, with and without the
level tracker that lifts quiet recordings' features (:class:`audioae.enhance.LevelTracker`).

    python benchmarks/input_level.py [--model denoiser-small] [--mixtures corpus/val/mixtures] \
        [--count 48] [--gains-db 0 -10 -20 -30 -40 -50 -60] [--target-db -45] \
        [--out benchmarks/results/val/input-level.json]

Each noisy mixture is scaled by each gain, denoised, scaled back and scored against its clean
file (SI-SDR, SI-SDR improvement, PESQ wb, STOI), once with the lift (at ``--target-db``,
default the shipped ``LevelLift().target_db``) and once with it turned off
(``level_lift=LevelLift(max_gain_db=0)``: the network sees the frames as they are, the behaviour
before the tracker). The mixtures' own levels are reported too: the gains are relative to them.
``--count 0``: every mixture.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from bench_args import count, description  # noqa: E402 (run as a script: benchmarks/ is on the path)
from stream_chunks import mixture_names  # the same evenly spaced choice of mixtures

from audioae import enhance
from audioae.audio import read_audio
from audioae.enhance import LevelLift, denoise
from audioae.fileio import atomic_write_json
from audioae.metrics import score
from audioae.pretrained import load, resolve_arg


def run(model, pairs: list[tuple[np.ndarray, np.ndarray, int]], gains_db: list[float],
        level_lift: LevelLift) -> dict[str, dict]:
    """Mean scores per gain over ``(noisy [T], clean [T], sr)`` pairs, denoised with ``level_lift``
    (passed to the call, nothing patched)."""
    rows: dict[str, list[dict]] = {f"{g:+g} dB": [] for g in gains_db}
    for noisy, clean, sr in pairs:
        for g in gains_db:
            scale = 10 ** (g / 20)
            out = denoise(model, scale * noisy, sr, level_lift=level_lift) / scale  # [T]
            rows[f"{g:+g} dB"].append(score(out, clean, sr, noisy))
    return {k: {m: float(np.nanmean([r[m] for r in v])) for m in v[0]} for k, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=description(__doc__))
    p.add_argument("--model", default="denoiser-small", help="a shipped model name or a .safetensors path")
    p.add_argument("--mixtures", default="corpus/val/mixtures", help="a folder with noisy/ and clean/")
    p.add_argument("--count", type=count, default=48, help="mixtures, evenly spaced (0: all)")
    p.add_argument("--gains-db", type=float, nargs="+", default=[0, -10, -20, -30, -40, -50, -60])
    p.add_argument("--target-db", type=float, default=LevelLift().target_db, help="the tracker's target level")
    p.add_argument("--out", default="benchmarks/results/val/input-level.json")
    args = p.parse_args(argv)
    model_path = resolve_arg(p, args.model, "--model", family="denoiser")
    folder = Path(args.mixtures)
    names = mixture_names(folder, args.count or 10**9)
    if not names:
        print(f"no mixtures in {folder}/noisy (build the corpus: recipes/build_corpus.py)", file=sys.stderr)
        return 2
    model = load(model_path)
    pairs = []
    for name in names:  # read once: both runs and every gain use them
        noisy, sr, _ = read_audio(folder / "noisy" / name)
        pairs.append((noisy[0], read_audio(folder / "clean" / name)[0][0], sr))
    levels = [10 * np.log10(np.mean(noisy**2)) for noisy, _, _ in pairs]
    lifted = LevelLift(target_db=args.target_db)
    t0 = time.perf_counter()
    report = {
        "command": "python benchmarks/input_level.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": str(model_path), "mixtures": str(folder), "files": len(names),
        "mixture_level_dbfs": {"mean": float(np.mean(levels)), "min": float(np.min(levels)),
                               "max": float(np.max(levels))},
        "tracker": {"target_db": args.target_db, "max_gain_db": lifted.max_gain_db,
                    "release_s": enhance.LEVEL_RELEASE_S},
        "lifted": run(model, pairs, args.gains_db, lifted),
        "not_lifted": run(model, pairs, args.gains_db, LevelLift(target_db=args.target_db, max_gain_db=0.0)),
    }
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(args.out, report)
    print(f"{len(names)} mixtures at {report['mixture_level_dbfs']['mean']:.1f} dBFS on average "
          f"({report['mixture_level_dbfs']['min']:.1f}..{report['mixture_level_dbfs']['max']:.1f}); "
          f"target {args.target_db:g} dB")
    print("gain      lifted: SI-SDR SI-SDRi  PESQ   STOI     not lifted: SI-SDR SI-SDRi  PESQ   STOI")
    for k in report["lifted"]:
        a, b = report["lifted"][k], report["not_lifted"][k]
        print(f"{k:>8}  {a['si_sdr']:14.2f} {a['si_sdr_i']:7.3f} {a['pesq']:5.3f} {a['stoi']:6.4f}  "
              f"{b['si_sdr']:18.2f} {b['si_sdr_i']:7.3f} {b['pesq']:5.3f} {b['stoi']:6.4f}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
