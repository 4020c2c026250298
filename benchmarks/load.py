"""Closed-loop load on the gRPC service over loopback: N concurrent clients send M Denoise requests
(encoded WAV clips, like files) as fast as answers come back, then stop.

Reports requests/s, seconds of audio per second, latency p50/p95/p99, errors by status code,
the batch sizes the server formed, and the server's RSS before and after. By default it starts
the server itself (``python -m audioae.server``) on a free port with a random-init causal recurrent model
of the shipped denoiser's size (no training needed for throughput figures); ``--server`` points it
at a running one instead. ``--compare-unbatched`` runs a second server with batching off.

    python benchmarks/load.py --clients 16 --requests 2000 --seconds 3 --out benchmarks/results/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from bench_args import description  # noqa: E402 (run as a script: benchmarks/ is on the path)

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"hidden": 192, "code_dim": 96, "n_fft": 512, "hop_length": 128}  # the shipped denoiser's size


def make_model(path: Path, overrides: dict) -> dict:
    import torch

    from audioae.checkpoint import save_checkpoint
    from audioae.models import build_model

    torch.manual_seed(0)
    model = build_model("recurrent", overrides)
    save_checkpoint(model, path)
    return model.describe()


def make_clips(n: int, seconds: float, sr: int) -> list[bytes]:
    from audioae.audio import encode_audio
    from audioae.data.synthetic import speech_like

    rng = np.random.default_rng(0)
    clips = []
    for _ in range(n):
        x = speech_like(rng, seconds, sr) + 0.05 * rng.standard_normal(int(seconds * sr))
        clips.append(encode_audio(np.clip(x, -1, 1)[None].astype(np.float32), sr, subtype="PCM_16"))
    return clips


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return round(int(m.group(1)) / 1024, 1) if m else None


class ServerProcess:
    """``python -m audioae.server`` on a free port; waits for "ready", stops with SIGTERM (drain)."""

    def __init__(self, model_path: Path, extra: list[str], threads: int):
        cmd = [
            sys.executable,
            "-m",
            "audioae.server",
            "--port",
            "0",
            "--models",
            str(model_path),
            "--threads",
            str(threads),
            *extra,
        ]
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(
            target=lambda: [self.lines.put(ln) for ln in iter(self.proc.stderr.readline, "")], daemon=True
        ).start()
        self.port = int(self._wait(r"listening on [\d.]+:(\d+)").group(1))
        self._wait(r"ready:")

    def _wait(self, pattern: str, timeout: float = 120.0) -> re.Match:
        end = time.monotonic() + timeout
        seen = []
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise RuntimeError(f"server did not print {pattern!r}:\n{''.join(seen)}")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=120)


def run_load(
    target: str,
    clips: list[bytes],
    clients: int,
    requests: int,
    seconds: float,
    max_wall: float,
    timeout: float,
) -> dict:
    """``clients`` threads, each with its own channel, share a budget of ``requests`` calls."""
    import grpc

    from audioae.client import Client

    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    codes: Counter = Counter()
    batch_sizes: Counter = Counter()
    start = time.monotonic()
    deadline = start + max_wall

    def worker(k: int) -> None:
        with Client(target, timeout=timeout) as c:
            while True:
                with lock:
                    if issued[0] >= requests or time.monotonic() > deadline:
                        return
                    i = issued[0]
                    issued[0] += 1
                t0 = time.monotonic()
                try:
                    resp = c.denoise_bytes(clips[(i + k) % len(clips)])
                    code, bs = "OK", resp.batch_size
                except grpc.RpcError as exc:
                    code, bs = exc.code().name, None
                dt = time.monotonic() - t0
                with lock:
                    codes[code] += 1
                    if code == "OK":
                        latencies.append(dt)
                        batch_sizes[bs] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    lat = np.array(latencies) * 1000
    ok = codes.get("OK", 0)
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99)) if ok else (None, None, None)
    return {
        "requests": sum(codes.values()),
        "ok": ok,
        "wall_s": round(wall, 2),
        "requests_per_s": round(ok / wall, 2),
        "audio_s_per_s": round(ok * seconds / wall, 2),
        "latency_ms": {
            "p50": round(p50, 1),
            "p95": round(p95, 1),
            "p99": round(p99, 1),
            "mean": round(float(lat.mean()), 1),
            "max": round(float(lat.max()), 1),
        }
        if ok
        else None,
        "p99_over_p50": round(p99 / p50, 2) if ok else None,
        "errors_by_code": {k: v for k, v in codes.items() if k != "OK"},
        "batch_size_mean": round(sum(k * v for k, v in batch_sizes.items()) / max(ok, 1), 2),
        "batch_sizes": {str(k): v for k, v in sorted(batch_sizes.items())},
    }


def one_run(label: str, args, model_path: Path, clips: list[bytes], extra: list[str]) -> dict:
    srv = None
    target, pid = args.server, None
    if not args.server:
        srv = ServerProcess(model_path, extra, args.server_threads)
        target, pid = f"127.0.0.1:{srv.port}", srv.proc.pid
    rss_start = rss_mb(pid)
    print(f"[{label}] warm-up: {args.warmup} requests", file=sys.stderr)
    run_load(target, clips, args.clients, args.warmup, args.seconds, 600, args.timeout)
    rss_before = rss_mb(pid)
    print(
        f"[{label}] measuring: {args.clients} clients, {args.requests} requests of {args.seconds} s",
        file=sys.stderr,
    )
    result = run_load(target, clips, args.clients, args.requests, args.seconds, args.max_wall, args.timeout)
    rss_after = rss_mb(pid)
    result["server_rss_mb"] = {
        "start": rss_start,
        "before": rss_before,
        "after": rss_after,
        "growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2)
        if rss_before and rss_after
        else None,
    }
    if srv is not None:
        result["server_command"] = " ".join(srv.cmd[1:])
        result["server_exit_code"] = srv.stop()
    print(f"[{label}] {json.dumps(result)}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=description(__doc__))
    p.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    p.add_argument(
        "--model",
        help="checkpoint for the started server (default: random-init recurrent "
        "hidden=192 code_dim=96 n_fft=512 hop=128)",
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument(
        "--warmup",
        type=int,
        default=160,
        help="requests before measuring (lets batch sizes and the allocator reach steady state)",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="clip length")
    p.add_argument("--sr", type=int, default=16000)
    p.add_argument(
        "--max-wall", type=float, default=600.0, help="stop issuing requests after this many seconds"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="per-request deadline")
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of the started server")
    p.add_argument(
        "--server-args", default="", help="extra flags for the started server, e.g. '--max-delay-ms 5'"
    )
    p.add_argument("--compare-unbatched", action="store_true", help="also run a server with batching off")
    p.add_argument("--out", type=Path, help="write the results as JSON here (atomically)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(args.model) if args.model else Path(tmp) / "random-recurrent.safetensors"
        model = make_model(model_path, MODEL) if not args.model else None
        clips = make_clips(8, args.seconds, args.sr)
        extra = args.server_args.split()
        report = {
            "benchmark": "closed-loop Denoise over loopback gRPC, encoded WAV PCM_16 clips",
            "command": " ".join(["python benchmarks/load.py", *(argv if argv is not None else sys.argv[1:])]),
            "clients": args.clients,
            "requests": args.requests,
            "clip_seconds": args.seconds,
            "sample_rate": args.sr,
            "model": model or str(args.model),
            "model_note": "random init (untrained): throughput only" if model else "",
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            },
            "runs": {"batched": one_run("batched", args, model_path, clips, extra)},
        }
        if args.compare_unbatched and not args.server:
            report["runs"]["unbatched"] = one_run(
                "unbatched", args, model_path, clips, [*extra, "--max-batch-seconds", "0"]
            )
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=args.out.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp_path, args.out)
    print(text)
    return 0 if all(not r["errors_by_code"] for r in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
