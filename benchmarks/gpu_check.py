"""One script for a machine with a GPU: does the CUDA path run, and how fast.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu.json

Checks (each prints a line and lands in the JSON):
1. ``pick_device("auto")`` picks CUDA; the shipped denoiser on CUDA gives the CPU's output
   (to 1e-3: cuDNN's GRU differs in the last bits).
2. ``audioae train`` runs a few steps with mixed precision (bf16/fp16 autocast) on CUDA, and
   resumes from its checkpoint for a few more; then the
   shipped denoiser's own architecture, from the shipped weights on synthetic batches of 64,
   trains 40 steps with bf16 autocast, fp16 autocast (GradScaler) and fp32, each reporting whether
   its loss stayed finite; and where bf16 does not, anomaly detection names the first operation
   whose backward gives NaN. (The first GPU training run, 2026-11-27 on an H200 with bf16
   autocast, had NaN losses from its first 50 steps.)
   Before those: one forward and backward of each perceptual proxy, torch-pesq's and torch-stoi's
   own against audioae's (FFT filters for PESQ's IIR filters, a vectorised STOI VAD); seconds
   per fp32 step at batch 256 with the spectral loss alone and with each perceptual term, and
   the operations taking the most device time in one step: the perceptual GPU phase ran at an
   eighth of the spectral-only phase's step rate.
3. Throughput: ``denoise`` one clip at a time against ``denoise_batch`` of 16 clips (what the
   server's batcher and the batch engine's GPU path do), in seconds of audio per second.
4. ``audioae denoise`` on a folder of 40 files (16/44.1/48 kHz, mono and stereo) and one at
   44101 Hz with ``--device cuda`` (GPU batches) against ``--device cpu``: the 40 ok and the odd
   one an error on both, the largest sample difference between the two, and the wall time of each.
5. The gRPC server on CUDA (a real server on 127.0.0.1): 32 concurrent Denoise calls (its batcher
   on the GPU) against the CPU's ``denoise`` of each clip, and one Decompose against the CPU's
   ``decompose``.
6. Training speed of the shipped denoiser's architecture on CUDA with autocast, on random
   batches (no corpus needed): steps and seconds of audio per second at several batch sizes and
   widths: what a GPU session could train in its minutes.

A few device minutes can go to chosen checks only (CUDA):

    python benchmarks/gpu_check.py --only proxy_speed finite_training --precisions float16

``--only loader_speed --data DIR`` (not in the full run: it needs the corpus) times the GPU phase
itself, 40 s each with its mixers on threads, in worker processes, and in processes with bf16
autocast: which of ``train.loader_processes`` and ``train.amp`` buys more steps per minute.

Before any check the JSON gets a ``preflight`` (torch, CUDA and cuDNN versions, the device, the
TF32 settings, which optional packages import); each check then writes its figures as it finishes,
with its seconds and peak of allocated device memory (``check_seconds``, ``max_memory_allocated_mb``).
A check that fails leaves ``{"error": ...}`` in its place (or beside what it had kept) and the next
one runs. ``--dry-run`` writes the preflight and the checks a run would make, on any machine: the
first command on a fresh GPU box. Paths are the repository's, from any folder.

The proxy timing alone also runs on a CPU (``--proxy-speed-only``), e.g. on one thread at
training's CPU batch:

    python benchmarks/gpu_check.py --proxy-speed-only --batch 32 --threads 1 \
        --out benchmarks/results/proxy-speed-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import math
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from audioae import pretrained
from audioae.config import check_thread_count
from audioae.device import pick_device
from audioae.enhance import denoise, denoise_batch
from audioae.fileio import atomic_write_json
from audioae.models import build_model
from audioae.train import batch_loss, corrupt_batch, load_run_config, train

REPO = Path(__file__).resolve().parent.parent  # configs and weights are found from any folder
# What the checks import beyond the core package: a fresh box without the [train] extra lost every
# figure to proxy_speed's ModuleNotFoundError before this was recorded first.
EXTRAS = {"torch_pesq": "train", "torch_stoi": "train", "pesq": "metrics", "pystoi": "metrics",
          "grpc": "server", "soundfile": "core"}


def _clips(n: int, seconds: float, sr: int = 16000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal((1, int(seconds * sr)))).astype(np.float32) for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="the JSON to write (default benchmarks/results/gpu.json, the stored results: "
                   "written there only on a CUDA machine)")
    p.add_argument("--proxy-speed-only", action="store_true", help="time the perceptual proxies on any device, then stop")
    p.add_argument("--batch", type=int, default=256, help="rows per proxy call (--proxy-speed-only)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--only", nargs="+", choices=ALL_CHECKS,
                   help="run just these checks (CUDA), e.g. to spend a few device minutes on one open question")
    p.add_argument("--dry-run", action="store_true",
                   help="write the preflight (versions, device, extras) and the checks a run would make, run none "
                        "(any machine): what to look at before spending device minutes")
    p.add_argument("--data", default=str(REPO / "corpus"), help="loader_speed's corpus (train/ and val/), e.g. a packed copy")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="finite_training's precisions (each takes about a minute on an H200)")
    args = p.parse_args(argv)
    try:
        check_thread_count(args.threads, "--threads", least=0)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = pick_device("auto")
    if args.out is None:
        if dev.type != "cuda" and not (args.proxy_speed_only or args.dry_run):
            # never replace the stored GPU results with this machine's preflight
            raise SystemExit("no CUDA device: nothing to check, and benchmarks/results/gpu.json (the stored GPU "
                             "results) left as it is; --dry-run --out FILE writes this machine's preflight")
        args.out = str(REPO / "benchmarks/results/gpu.json")
    res: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "device": str(dev)}
    _keep(res, args.out, "preflight", _preflight())
    if args.proxy_speed_only:
        res["threads"] = torch.get_num_threads()
        _run_check(res, args.out, "proxy_speed", lambda: _keep(res, args.out, "proxy_speed", _proxy_speed(dev, batch=args.batch)))
        return
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)

    def throughput() -> None:
        gpu_model = _model(None, str(dev))
        clips = _clips(64, 3.0)
        for label, warm, fn in (
                ("unbatched", 4, lambda cs: [denoise(gpu_model, c, 16000) for c in cs]),
                # warmed with batches of 16, the size it times: cuDNN picks its kernels per shape
                ("batched16", 16, lambda cs: [y for i in range(0, len(cs), 16)
                                              for y in denoise_batch(gpu_model, [(c, 16000, 1.0) for c in cs[i:i + 16]])])):
            fn(clips[:warm])
            _sync(dev)
            t = time.perf_counter()
            fn(clips)
            _sync(dev)
            _keep(res, args.out, f"{label}_audio_s_per_s", 64 * 3.0 / (time.perf_counter() - t))

    def first_nan_op() -> None:
        bf16 = res.get("finite_training", {}).get("bfloat16")
        if isinstance(bf16, dict) and not bf16.get("finite", True):
            _keep(res, args.out, "first_nan_op", _first_nan_op(dev))

    # every check, in the order a full run takes them; each records its own keys with _keep
    checks = {
        "max_abs_diff_cpu_vs_cuda": lambda: _keep(res, args.out, "max_abs_diff_cpu_vs_cuda", _cpu_vs(dev)),
        "amp_train": lambda: _amp_train(res, args.out),
        "proxy_speed": lambda: _keep(res, args.out, "proxy_speed", _proxy_speed(dev)),
        "loss_term_speed": lambda: _keep(res, args.out, "loss_term_speed", _loss_term_speed(dev)),
        "finite_training": lambda: _finite_training(res, args.out, precisions=args.precisions),
        "first_nan_op": first_nan_op,  # only where bf16 did not stay finite
        "throughput": throughput,
        "folder": lambda: _keep(res, args.out, "folder", _folder_cuda_vs_cpu()),
        "grpc": lambda: _keep(res, args.out, "grpc", _grpc_on_cuda(_model(None, "cpu"))),
        "train_speed": lambda: _keep(res, args.out, "train_speed", _train_speed(dev)),
        "loader_speed": lambda: _loader_speed(res, args.out, args.data),
    }
    assert tuple(checks) == ALL_CHECKS
    # loader_speed needs the corpus: only with --only loader_speed --data DIR
    chosen = [n for n in checks if n in args.only] if args.only else [n for n in checks if n != "loader_speed"]
    if args.dry_run:
        _keep(res, args.out, "planned", chosen)
        return
    if dev.type != "cuda":
        raise SystemExit(f"no CUDA device: nothing to check (the preflight is in {args.out})")
    for name in chosen:
        _run_check(res, args.out, name, checks[name])


def _run_check(res: dict, path: str, name: str, check) -> None:
    """Run one check; its error, if any, is recorded in its place ({"error": repr}, or beside the
    partial results it kept) and the next check runs. With its wall seconds and, on CUDA, its peak
    of allocated device memory."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a GPU box's one run: every other check must still be made
        traceback.print_exc()
        if isinstance(res.get(name), dict):
            res[name]["error"] = repr(exc)
        else:
            res[name] = {"error": repr(exc)}
        print(name, "failed:", repr(exc), flush=True)
        if cuda:  # an out-of-memory check must not leave its cached blocks to the next one
            torch.cuda.empty_cache()
    res.setdefault("check_seconds", {})[name] = round(time.perf_counter() - t, 2)
    if cuda:
        res.setdefault("max_memory_allocated_mb", {})[name] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    atomic_write_json(path, res)


def _preflight() -> dict:
    """What the machine is, before any check: versions, the device, the TF32 settings (they change
    fp32 figures), and which optional packages import."""
    out: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
                 "cuda_available": torch.cuda.is_available(), "cwd": os.getcwd(), "repo": str(REPO),
                 "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                 "float32_matmul_precision": torch.get_float32_matmul_precision(),
                 "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(device_count=torch.cuda.device_count(), device_name=props.name,
                   capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   bf16_supported=torch.cuda.is_bf16_supported())
    imports = {}
    for module, extra in EXTRAS.items():
        try:
            importlib.import_module(module)
            imports[module] = True
        except Exception as exc:  # a broken install is as useful to see as a missing one
            imports[module] = f"{extra}: {exc!r}"
    out["imports"] = imports
    return out


def _cpu_vs(dev: torch.device) -> float:
    """The largest sample difference between the shipped denoiser on the CPU and on ``dev``."""
    clip = _clips(1, 10.0)[0]
    return float(np.abs(denoise(_model(None, "cpu"), clip, 16000) - denoise(_model(None, str(dev)), clip, 16000)).max())


@functools.cache
def _model(name: str | None, device: str):
    """A shipped model on ``device``, loaded once for the checks that share it."""
    return pretrained.load(name, map_location=torch.device(device))


def _amp_train(res: dict, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = load_run_config(str(REPO / "configs/tiny-synthetic.toml"), [
            f"train.out_dir=\"{tmp}\"", "train.steps=20", "train.device=\"cuda\"", "train.progress=false",
            # pesq builds from source: a bare GPU image may lack it
            'train.metrics=["si_sdr", "stoi"]'])
        t = time.perf_counter()
        summary = train(run, resume=False)
        _keep(res, path, "amp_train", {**summary, "wall_s": time.perf_counter() - t})
        # the same command with more steps resumes: the optimizer state must reach the device too
        # (left on the CPU, the first resumed step fails)
        resumed = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=30))
        _keep(res, path, "amp_train_resumed", {"steps": train(resumed, resume=True)["steps"]})


def _keep(res: dict, path: str, key: str, value) -> None:
    """Print one finding and write everything so far: a later check that fails loses nothing."""
    res[key] = value
    print(key, value, flush=True)
    atomic_write_json(path, res)


def _folder_cuda_vs_cpu(n: int = 40) -> dict:
    import soundfile as sf

    from audioae.batch import DenoiseOptions, run_denoise

    rng = np.random.default_rng(1)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/in"
        for i in range(n):
            sr, ch = (16000, 1) if i % 3 == 0 else (44100, 2) if i % 3 == 1 else (48000, 1)
            x = 0.1 * rng.standard_normal((int(rng.uniform(1.0, 8.0) * sr), ch)).astype(np.float32)
            path = f"{src}/d{i % 4}/f{i:02d}.wav"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sf.write(path, x, sr, subtype="FLOAT")
        # one file no batch can take (a rate that cannot be resampled): it must
        # be that file's error on both devices, not the end of the --device cuda job
        sf.write(f"{src}/odd-rate.wav", 0.1 * rng.standard_normal(44101).astype(np.float32), 44101)
        for device in ("cuda", "cpu"):
            t = time.perf_counter()
            s = run_denoise([src], f"{tmp}/{device}", DenoiseOptions(device=device, progress=False))
            out[f"{device}_wall_s"] = time.perf_counter() - t
            out[f"{device}_ok"] = s["ok"]
            out[f"{device}_errors"] = [e["input"].rsplit("/", 1)[-1] for e in s["errors"]]
        diffs = []
        for i in range(n):
            rel = f"d{i % 4}/f{i:02d}.wav"
            a, _ = sf.read(f"{tmp}/cuda/{rel}", dtype="float32")
            b, _ = sf.read(f"{tmp}/cpu/{rel}", dtype="float32")
            diffs.append(float(np.abs(a - b).max()))
        out["max_abs_diff"] = max(diffs)
    return out


# --only's choices, in the order a full run takes them (loader_speed: only with --only)
ALL_CHECKS = ("max_abs_diff_cpu_vs_cuda", "amp_train", "proxy_speed", "loss_term_speed", "finite_training",
              "first_nan_op", "throughput", "folder", "grpc", "train_speed", "loader_speed")
# loader_speed's variants of the GPU phase (configs/denoiser-small-gpu.toml: fp32, 12 mixers)
LOADER_VARIANTS = {"threads": ["train.loader_processes=false"],
                   "processes": ["train.loader_processes=true"],
                   "processes_bf16": ["train.loader_processes=true", "train.amp=true", 'train.amp_dtype="bfloat16"']}


def _loader_speed(res: dict, path: str, data: str, seconds: float = 40.0, device: str = "cuda") -> None:
    """Steps per second of the GPU phase itself (its config, the corpus in ``data``, the shipped
    weights) with its mixers on threads, in worker processes, and in processes with bf16
    autocast, ``seconds`` of training each. Mixer threads hold the GIL that the training loop
    needs between kernel launches (benchmarks/loader_contention.py shows it on a CPU)."""
    out: dict = {}
    for label, over in LOADER_VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            run = load_run_config(str(REPO / "configs/denoiser-small-gpu.toml"), [
                f'train.out_dir="{tmp}"', f"train.max_minutes={seconds / 60}", "train.progress=false", f'train.device="{device}"',
                "train.val_every=100000", 'train.metrics=["si_sdr"]', 'train.select_by="si_sdr"',
                f'train.init_from="{REPO / "audioae/pretrained/denoiser-small.safetensors"}"',
                f'data.clean_dir="{data}/train/speech"', f'data.noise_dir="{data}/train/noise"',
                f'data.val_clean_dir="{data}/val/speech"', f'data.val_noise_dir="{data}/val/noise"',
                "data.val_examples=8", *over])
            summary = train(run, resume=False)
        # the final step validates (8 mixtures) inside the timed span: under a second of 40
        out[label] = {"steps": summary["steps"], "seconds": summary["seconds"],
                      "steps_per_s": summary["steps"] / summary["seconds"], "skipped_steps": summary["skipped_steps"]}
        _keep(res, path, "loader_speed", out)


PRECISIONS = {"bfloat16": ['train.amp_dtype="bfloat16"'], "float16": ['train.amp_dtype="float16"'],
              "float32": ["train.amp=false"]}


def _finite_training(res: dict, path: str, steps: int = 40, device: str = "cuda",
                     precisions=tuple(PRECISIONS)) -> None:
    """Each precision's result is kept as soon as it is known (on the H200 of 2026-11-27 this check
    ran over two minutes and was stopped with nothing written)."""
    out: dict = {}
    for label in precisions:
        over = PRECISIONS[label]
        with tempfile.TemporaryDirectory() as tmp:
            run = load_run_config(str(REPO / "configs/denoiser-small-w224.toml"), [  # the shipped architecture
                f'train.out_dir="{tmp}"', f"train.steps={steps}", f'train.device="{device}"', "train.progress=false",
                'train.metrics=["si_sdr"]', 'train.select_by="si_sdr"', "train.batch_size=64", "train.val_every=1000", "train.decay_steps=0",
                f'train.init_from="{REPO / "audioae/pretrained/denoiser-small.safetensors"}"', 'data.clean_dir=""',
                'data.noise_dir=""', 'data.val_clean_dir=""', 'data.val_noise_dir=""', *over])
            try:
                summary = train(run, resume=False)
                val = summary["best_val"]  # SI-SDR; None: validation was NaN (no best checkpoint)
                finite = summary["skipped_steps"] == 0 and val is not None and math.isfinite(val)
                out[label] = {"finite": finite, "skipped_steps": summary["skipped_steps"],
                              # float16: the steps its GradScaler skipped (its calibration) and its last scale
                              "scaler_skipped_steps": summary["scaler_skipped_steps"],
                              "final_loss_scale": summary["final_loss_scale"],
                              "val_si_sdr": val, "seconds": summary["seconds"]}
            except FloatingPointError as exc:
                out[label] = {"finite": False, "error": str(exc)}
        _keep(res, path, "finite_training", out)


def _proxy_speed(dev: torch.device, batch: int = 256, steps: int = 3) -> dict:
    """Seconds for one forward and backward of each perceptual proxy at batch 256 on 2 s rows:
    torch-pesq's and torch-stoi's own modules against audioae.losses' versions (FFT filters, a
    vectorised VAD), and the largest difference between their losses."""
    from torch_pesq import PesqLoss
    from torch_stoi import NegSTOILoss

    from audioae import losses

    ref = 0.1 * torch.randn(batch, 32000, device=dev) * torch.linspace(0, 1, 32000, device=dev)  # [B, T]
    ref[:, 8000:12000] = 0.0  # silent frames for the VAD to drop
    est = ref + 0.03 * torch.randn_like(ref)  # [B, T]
    mods = {"pesq_torch_pesq": PesqLoss(1.0, sample_rate=16000).to(dev), "pesq_audioae": losses._pesq_proxy(16000, str(dev)),
            "stoi_torch_stoi": NegSTOILoss(16000).to(dev), "stoi_audioae": losses._stoi_proxy(16000, str(dev))}
    out: dict = {"batch": batch}
    values = {}
    for label, mod in mods.items():
        pesq = label.startswith("pesq")
        call = functools.partial(_proxy_forward_backward, mod, ref, est, pesq)
        out[f"{label}_s"] = _seconds_per_call(call, steps, dev)
        with torch.no_grad():
            values[label] = mod(ref, est) if pesq else mod(est, ref)  # [B]
        print("proxy speed", label, out[f"{label}_s"], flush=True)
    out["pesq_max_abs_diff"] = float((values["pesq_torch_pesq"] - values["pesq_audioae"]).abs().max())
    out["stoi_max_abs_diff"] = float((values["stoi_torch_stoi"] - values["stoi_audioae"]).abs().max())
    return out


def _proxy_forward_backward(mod, ref: torch.Tensor, est: torch.Tensor, pesq: bool) -> None:
    e = est.clone().requires_grad_()  # [B, T]
    (mod(ref, e) if pesq else mod(e, ref)).sum().backward()  # torch-pesq takes (ref, deg), torch-stoi (est, ref)


def _loss_term_speed(dev: torch.device, batch: int = 256, steps: int = 5) -> dict:
    """Seconds per fp32 training step of the shipped denoiser at the GPU phase's batch size, with
    the spectral loss alone and with each perceptual term (configs/denoiser-small-gpu.toml), and
    the operations that take the most device time in one step with all terms: the GPU phase of
    2026-11-27 made 2.65 steps/s with the perceptual terms, where spectral-only runs made 22."""
    from dataclasses import replace

    from torch.profiler import ProfilerActivity, profile

    tc = load_run_config(str(REPO / "configs/denoiser-small-gpu.toml"), ["train.max_minutes=1"]).train
    variants = {"spectral_sisdr": replace(tc, pesq_weight=0.0, stoi_weight=0.0),
                "plus_pesq": replace(tc, stoi_weight=0.0), "plus_stoi": replace(tc, pesq_weight=0.0), "all": tc}
    model = pretrained.load(None, map_location=dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    clean = 0.1 * torch.randn(batch, 32000, device=dev)  # [B, T]
    noise = torch.randn(batch, 32000, device=dev)  # [B, T]
    snr = torch.full((batch,), 5.0, device=dev)  # [B]
    out: dict = {"batch": batch}
    for label, variant in variants.items():
        out[f"{label}_s_per_step"] = _seconds_per_call(
            lambda v=variant: _train_step(model, opt, clean, noise, snr, v, amp=False), steps, dev)
        print("loss term speed", label, out[f"{label}_s_per_step"], flush=True)
    # the same step with every term under bf16 autocast: what a GPU phase with train.amp would gain
    out["all_bf16_s_per_step"] = _seconds_per_call(lambda: _train_step(model, opt, clean, noise, snr, tc), steps, dev)
    print("loss term speed all_bf16", out["all_bf16_s_per_step"], flush=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        _train_step(model, opt, clean, noise, snr, tc, amp=False)
        _sync(dev)
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    top = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:15]
    out["top_ops_ms"] = [[e.key, round(getattr(e, key) / 1e3, 2), e.count] for e in top]
    return out


def _first_nan_op(dev: torch.device, steps: int = 40) -> str:
    """Train the shipped weights under bf16 autocast with anomaly detection: the error names the
    backward function that first returned NaN."""
    from audioae.data.mixing import MixConfig, Mixer, synthetic_noise, synthetic_speech

    run = load_run_config(str(REPO / "configs/denoiser-small-df5.toml"))
    model = pretrained.load(None, map_location=dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=run.train.lr)
    mixer = Mixer(synthetic_speech(), synthetic_noise(), 16000, MixConfig(), seed=0)
    with torch.autograd.detect_anomaly():
        for step in range(steps):
            clean, noise, snr = (t.to(dev) for t in mixer.batch(64))
            try:
                loss = _train_step(model, opt, clean, noise, snr, run.train)
            except RuntimeError as exc:
                return f"step {step}: {exc}"
            if not math.isfinite(loss):
                return f"step {step}: forward loss {loss} (the forward pass, not a backward op)"
    return f"none in {steps} steps"


def _grpc_on_cuda(cpu_model, n: int = 32, device: str = "cuda") -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from audioae.client import Client
    from audioae.decompose import decompose
    from audioae.server import AudioServer, ServerConfig

    out: dict = {}
    srv = AudioServer(ServerConfig(port=0, device=device, metrics_port=None))
    srv.start()
    srv.load()
    try:
        clips = [c[0] for c in _clips(n, 4.0)]
        with Client(f"127.0.0.1:{srv.port}", timeout=120) as c:
            c.wait_ready()
            c.denoise(clips[0], 16000)  # warm-up: cuDNN picks its kernels
            t = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                ys = list(pool.map(lambda x: c.denoise(x, 16000), clips))
            out["denoise_wall_s"] = time.perf_counter() - t
            out["denoise_audio_s_per_s"] = n * 4.0 / out["denoise_wall_s"]
            out["denoise_max_abs_diff_vs_cpu"] = max(
                float(np.abs(y - denoise(cpu_model, x, 16000)).max()) for x, y in zip(clips, ys, strict=True))
            dec_cpu = pretrained.load("decomposer-small")
            wav = clips[0][None]  # [1, T]
            got = c.decompose(wav, 16000, top_k=0, group="none", components=True, fit_steps=0)  # the library's
            want = decompose(dec_cpu, wav, 16000, fit_steps=0)
            out["decompose_components"] = int(len(got.components))
            out["decompose_sum_err"] = float(np.abs(got.components.sum(0) + got.residual - wav).max())
            out["decompose_max_abs_diff_vs_cpu"] = float(np.abs(got.components - want.components).max())
    finally:
        srv.stop()
    return out


def _train_speed(dev: torch.device, steps: int = 30, sizes=((192, 256, 384), (16, 64, 256))) -> dict:
    run = load_run_config(str(REPO / "configs/denoiser-small-df5.toml"))
    out: dict = {}
    for hidden in sizes[0]:
        for batch in sizes[1]:
            model = build_model(run.model, {**run.model_config, "hidden": hidden}).to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            seg = int(run.data.segment_seconds * 16000)
            clean = 0.1 * torch.randn(batch, seg, device=dev)  # [B, T]
            noise = torch.randn(batch, seg, device=dev)  # [B, T]
            snr = torch.full((batch,), 5.0, device=dev)  # [B]

            batch_args = (model, opt, clean, noise, snr, run.train)
            rate = 1.0 / _seconds_per_call(lambda a=batch_args: _train_step(*a), steps, dev, warmup=3)
            key = f"hidden{hidden}_batch{batch}"
            out[key] = {"steps_per_s": rate, "audio_s_per_s": rate * batch * run.data.segment_seconds}
            print("train speed", key, out[key])
    return out


def _train_step(model, opt, clean, noise, snr, tc, amp: bool = True) -> float:
    """One training step, under bf16 autocast unless ``amp`` is off."""
    with torch.no_grad():
        noisy, spec = corrupt_batch(model, clean, noise, snr)  # [B, T], [B, F, N]
    with torch.autocast(clean.device.type, dtype=torch.bfloat16, enabled=amp):
        loss, _ = batch_loss(model, clean, spec, tc, noisy=noisy)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _seconds_per_call(fn, calls: int, dev: torch.device, warmup: int = 1) -> float:
    """Wall seconds per call of ``fn`` after ``warmup`` untimed calls, the device synchronised
    before and after (CUDA runs asynchronously)."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(dev)
    return (time.perf_counter() - t) / calls


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
