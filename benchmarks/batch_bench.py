"""Folder-job benchmark: files/s and x real time of the local and Ray engines on this machine, and
the peak memory (RSS) of `audioae denoise` on a long generated file.

    python benchmarks/batch_bench.py                    # writes benchmarks/results/batch.json
    python benchmarks/batch_bench.py --long-minutes 5   # quicker

The model is the shipped `denoiser-small` when it exists, else a randomly initialised `recurrent`
model of the same class and size (hidden=160, ~412 k parameters): speed does not depend on the
weights. Every engine runs with one torch thread per worker. Ray is timed twice: `ray.init` alone
(once), and each pipeline including its actor start-up, which is the overhead a user pays per job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from bench_args import description  # noqa: E402 (run as a script: benchmarks/ is on the path)

from audioae.batch import DenoiseOptions, run_denoise
from audioae.checkpoint import save_checkpoint
from audioae.data.synthetic import noise, speech_like
from audioae.models import build_model
from audioae.pretrained import DEFAULT_DENOISER, shipped

HERE = Path(__file__).resolve().parent


def make_model(work: Path) -> tuple[str, str]:
    if DEFAULT_DENOISER in shipped():
        return DEFAULT_DENOISER, f"shipped {DEFAULT_DENOISER}"
    torch.manual_seed(0)
    model = build_model("recurrent", {"hidden": 160})
    path = work / "stand-in.safetensors"
    save_checkpoint(model, path)
    return str(path), f"stand-in: random-init recurrent hidden=160 ({model.num_parameters():,} parameters)"


def make_files(folder: Path, n: int, seconds: float, sr: int, channels: int, seed: int) -> float:
    """``n`` noisy speech-like PCM_16 WAV files in two sub-folders; returns the seconds of audio."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        chans = [speech_like(rng, seconds, sr) + 0.3 * noise(rng, seconds, sr) for _ in range(channels)]
        x = np.stack(chans, 1)
        path = folder / f"spk{i % 2}" / f"f{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.8 * x / np.abs(x).max(), sr, subtype="PCM_16")
    return n * seconds


def make_long_file(path: Path, minutes: float, sr: int, channels: int) -> float:
    """A long PCM_16 WAV written a minute at a time (a minute of speech, fresh noise each minute)."""
    rng = np.random.default_rng(7)
    speech = speech_like(rng, 60.0, sr)
    with sf.SoundFile(path, "w", sr, channels, "PCM_16") as f:
        left = int(minutes * 60 * sr)
        while left > 0:
            n = min(left, len(speech))
            chans = [speech[:n] + 0.3 * noise(rng, n / sr, sr, "pink")[:n] for _ in range(channels)]
            block = np.stack(chans, 1)
            f.write(0.45 * block)
            left -= n
    return minutes * 60


def time_engine(name: str, src: Path, out: Path, audio_seconds: float, nfiles: int, **opts) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_denoise([src], out, DenoiseOptions(progress=False, threads=1, **opts))
    wall = time.perf_counter() - t0
    assert s["ok"] == nfiles and s["error"] == 0, s
    row = {"engine": name, "workers": opts.get("workers", 1), "files": nfiles, "audio_seconds": audio_seconds,
           "wall_seconds": round(wall, 2), "files_per_second": round(nfiles / wall, 2),
           "x_realtime": round(audio_seconds / wall, 1)}
    print(json.dumps(row), flush=True)
    return row


def same_outputs(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*.wav"))
    return bool(files) and all(np.array_equal(sf.read(a / f)[0], sf.read(b / f)[0]) for f in files) and \
        files == sorted(p.relative_to(b) for p in b.rglob("*.wav"))


# Started from a small launcher process: a child's ru_maxrss counts the memory of the process it was
# forked from (Linux keeps the pre-exec high-water mark), so forking from this big process would
# inflate it by this process's own size.
LAUNCHER = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """Run a command; returns (peak RSS in MiB of that process, wall seconds)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True, check=True)
    code, maxrss_kib = map(int, out.stdout.split())
    if code != 0:
        raise RuntimeError(f"{args} failed with exit code {code}")
    return maxrss_kib / 1024, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--work", default="/tmp", help="where the scratch folder audioae-batch-bench/ goes (it is "
                                                   "deleted before and after; nothing else there is touched)")
    ap.add_argument("--files", type=int, default=48, help="medium files")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each medium file")
    ap.add_argument("--small-files", type=int, default=200, help="1-second files (per-file overhead)")
    ap.add_argument("--long-minutes", type=float, default=60.0)
    ap.add_argument("--long-sr", type=int, default=48000)
    ap.add_argument("--long-channels", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "batch.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    # A folder of its own under --work: `--work victim` deleted victim and everything in it.
    work = Path(args.work) / "audioae-batch-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model, model_desc = make_model(work)
    sets = [  # (label, folder, files, seconds of audio)
        (f"{args.files} x {args.seconds:g} s, 16 kHz mono", work / "medium", args.files,
         make_files(work / "medium", args.files, args.seconds, 16000, 1, 0)),
        (f"{args.small_files} x 1 s, 16 kHz mono", work / "small", args.small_files,
         make_files(work / "small", args.small_files, 1.0, 16000, 1, 1)),
    ]
    cpus = os.cpu_count() or 1
    results: dict = {"machine": {"cpus": cpus, "load_average_at_start": os.getloadavg(),
                                 "python": platform.python_version(), "torch": torch.__version__,
                                 "platform": platform.platform()},
                     "model": model_desc, "threads_per_worker": 1, "runs": [], "command": " ".join(sys.argv)}
    worker_counts = sorted({1, min(2, cpus)})
    for i, (label, src, n, secs) in enumerate(sets):
        for w in worker_counts:
            row = time_engine("local", src, work / f"out{i}-local-{w}", secs, n, model=model, workers=w)
            results["runs"].append({"set": label, **row})
    if not args.no_ray:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
        results["ray"] = {"version": ray.__version__, "init_seconds": round(time.perf_counter() - t0, 2)}
        for i, (label, src, n, secs) in enumerate(sets):
            for w in worker_counts:
                row = time_engine("ray", src, work / f"out{i}-ray-{w}", secs, n, model=model, engine="ray",
                                  workers=w)
                results["runs"].append({"set": label, **row})
            same = same_outputs(work / f"out{i}-local-1", work / f"out{i}-ray-1")
            results["ray"][f"identical_to_local ({label})"] = same
        ray.shutdown()
    # Peak memory of the CLI (a fresh process each): a 1-second file (the baseline: Python, torch,
    # the model) and the long file (streamed in blocks).
    tiny = work / "tiny"
    make_files(tiny, 1, 1.0, args.long_sr, args.long_channels, 2)
    cli = [sys.executable, "-m", "audioae.cli", "denoise", "--model", model, "--no-progress"]
    base_rss, _ = peak_rss_mb([*cli, str(tiny), "-o", str(work / "out-tiny")])
    long_path = work / "long.wav"
    long_secs = make_long_file(long_path, args.long_minutes, args.long_sr, args.long_channels)
    long_rss, long_wall = peak_rss_mb([*cli, str(long_path), "-o", str(work / "out-long")])
    out_info = sf.info(work / "out-long" / "long.wav")
    decoded_mb = long_secs * args.long_sr * args.long_channels * 4 / 2**20
    results["long_file"] = {
        "minutes": args.long_minutes, "sample_rate": args.long_sr, "channels": args.long_channels,
        "file_mb": round(long_path.stat().st_size / 2**20, 1),
        "whole_file_as_float32_mb": round(decoded_mb, 1),
        "peak_rss_mb": round(long_rss, 1), "baseline_peak_rss_mb_1s_file": round(base_rss, 1),
        "wall_seconds": round(long_wall, 1), "x_realtime": round(long_secs / long_wall, 1),
        "output_frames_equal_input": out_info.frames == sf.info(long_path).frames,
    }
    print(json.dumps(results["long_file"]), flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
