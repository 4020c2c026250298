r"""What a DC offset in the recording costs the denoiser: the shipped pink-noise example with a
constant added, denoised, scored against its clean file (SI-SDR removes the mean, so the offset
itself does not count; what it does to the network's work does).

    python benchmarks/dc_offset.py [--model denoiser-small] [--offsets 0 0.01 0.02 0.05 0.1 0.2 0.5] \
        [--example voice-pink-0dB] [--out benchmarks/results/dc-offset.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_args import finite  # noqa: E402 (run as a script: benchmarks/ is on the path)

from audioae import pretrained
from audioae.audio import read_audio
from audioae.enhance import denoise
from audioae.fileio import atomic_write_json
from audioae.metrics import si_sdr
from audioae.pretrained import load, resolve_arg


def examples(root: Path) -> list[str]:
    """The shipped examples with a clean file beside the noisy one (their names without the suffix)."""
    def stems(folder: str) -> set[str]:
        return {f.stem for f in (root / folder).glob("*.*") if f.is_file()}
    return sorted(stems("examples") & stems("examples-clean"))


def main() -> None:
    root = Path(pretrained.__file__).parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="denoiser-small", help="a shipped model name or a .safetensors path")
    p.add_argument("--offsets", type=finite, nargs="+", default=[0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    p.add_argument("--example", default="voice-pink-0dB", choices=examples(root),
                   help="a shipped example with a clean file")
    p.add_argument("--out", default="benchmarks/results/dc-offset.json")
    args = p.parse_args()
    model_path = resolve_arg(p, args.model, "--model", family="denoiser")
    noisy, sr, _ = read_audio(next((root / "examples").glob(f"{args.example}.*")))
    clean, _, _ = read_audio(next((root / "examples-clean").glob(f"{args.example}.*")))
    noisy, clean = (x.mean(0) if x.ndim == 2 else x for x in (noisy, clean))  # [T] each
    model = load(model_path)
    rms = float(np.sqrt(np.mean(clean.astype(np.float64) ** 2)))
    rows = []
    for dc in args.offsets:
        y = denoise(model, noisy + np.float32(dc), sr)
        rows.append({"offset": dc, "offset_over_speech_rms": round(dc / rms, 2), "si_sdr": round(float(si_sdr(y, clean)), 2)})
        print(rows[-1])
    atomic_write_json(args.out, {"model": args.model, "example": args.example, "rows": rows})


if __name__ == "__main__":
    main()
