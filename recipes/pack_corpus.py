"""Copy corpus folders as Opus-coded Ogg files: a compact copy to take to a machine that cannot
build the corpus itself (a rented GPU with no Debian packages and a transfer limit).

    python recipes/pack_corpus.py corpus/train/speech .gpucorpus/train/speech --quality 0.85
    python recipes/pack_corpus.py corpus/train/noise .gpucorpus/train/noise --quality 0.95

``--quality`` is libsndfile's Opus compression level (0 best, 1 smallest). ``--measure N``
scores the first N copies against their sources (bit rate, PESQ wb, SI-SDR) and prints JSON:
benchmarks/results/opus-coding.json holds it for 0.85, 0.9 and 0.95 on 40 training speech files.
Our models reach about 13 dB SI-SDR on the validation mixtures, so the coding error at 0.85 stays
well under what they learn to remove. Prints each subfolder's size so a transfer can be split by
folder. Rates Opus cannot code are resampled to 48 kHz. Existing outputs are kept (a rerun only
adds what is missing); each file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from audioae.audio import AudioError, read_audio, resample
from audioae.config import check_thread_count
from audioae.data.mixing import list_audio

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def pack_one(src: Path, dst: Path, quality: float) -> int:
    """Write ``src`` as Opus to ``dst``; returns the bytes written (0 if skipped)."""
    if dst.exists():
        return dst.stat().st_size
    try:
        wav, sr, _ = read_audio(src)
    except AudioError as exc:
        print(f"skipping {exc}")
        return 0
    mono = wav.mean(0)
    if sr not in OPUS_RATES:  # Opus codes these rates only; 48 kHz keeps the whole band
        mono, sr = resample(mono, sr, 48000).numpy(), 48000
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        sf.write(tmp, mono, sr, format="OGG", subtype="OPUS", compression_level=quality)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        print(f"skipping {src}: {exc}")
        return 0
    os.replace(tmp, dst)
    return dst.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--quality", type=float, default=0.85)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)  # checked below
    p.add_argument("--measure", type=int, default=0, metavar="N", help="score the first N copies against their sources")
    args = p.parse_args()
    if not 0.0 <= args.quality <= 1.0:  # libsndfile refused every file, and the run exited 0
        p.error(f"--quality must be within [0, 1] (0 best, 1 smallest), got {args.quality}")
    if not args.src.is_dir():
        p.error(f"{args.src}: no such folder")
    if args.measure < 0:
        p.error(f"--measure must be at least 0, got {args.measure}")
    try:  # not ThreadPoolExecutor's traceback, nor a thread per file
        check_thread_count(args.threads, "--threads", least=1)
    except ValueError as exc:
        p.error(str(exc))
    files = list_audio(args.src)
    jobs = [(f, args.dst / f.relative_to(args.src).with_suffix(".ogg")) for f in files]
    with ThreadPoolExecutor(args.threads) as pool:
        sizes = list(pool.map(lambda j: pack_one(*j, args.quality), jobs))
    per_folder: dict[str, int] = {}
    for (f, _), size in zip(jobs, sizes, strict=True):
        top = f.relative_to(args.src).parts[0]
        per_folder[top] = per_folder.get(top, 0) + size
    for name, size in sorted(per_folder.items()):
        print(f"{name:28s} {size / 2**20:7.1f} MiB")
    skipped = sum(1 for size in sizes if size == 0)
    print(f"{'all':28s} {sum(sizes) / 2**20:7.1f} MiB in {len(files) - skipped} files"
          + (f" ({skipped} skipped, above)" if skipped else ""))
    if files and skipped == len(files):
        raise SystemExit("pack_corpus: every file was skipped; nothing was written")
    if args.measure:  # the copies that were written (a skipped file has none)
        written = [job for job, size in zip(jobs, sizes, strict=True) if size]
        print(json.dumps(measure(written[: args.measure], args.quality)))


def measure(jobs: list[tuple[Path, Path]], quality: float) -> dict:
    """Mean bit rate, PESQ (wb) and SI-SDR of coded copies against their sources."""
    from audioae.metrics import pesq_wb, si_sdr

    seconds = size = 0.0
    pesq, sdr = [], []
    for src, dst in jobs:
        ref, sr, _ = read_audio(src)
        coded, coded_sr, _ = read_audio(dst)
        ref, coded = ref.mean(0), resample(coded.mean(0), coded_sr, sr).numpy()
        n = min(len(ref), len(coded))
        seconds += len(ref) / sr
        size += dst.stat().st_size
        if n >= sr:  # PESQ wants a second or more
            pesq.append(pesq_wb(coded[:n], ref[:n], sr))
            sdr.append(si_sdr(coded[:n], ref[:n]))
    scored = [v for v in pesq if math.isfinite(v)]  # PESQ finds no speech in some noise: NaN, not a score
    return {"quality": quality, "files": len(jobs), "kbit_per_s": 8 * size / seconds / 1000 if seconds else None,
            "pesq_wb": float(np.mean(scored)) if scored else None, "pesq_scored": len(scored),
            "si_sdr_db": float(np.mean(sdr)) if sdr else None, "scored": len(sdr)}


if __name__ == "__main__":
    main()
