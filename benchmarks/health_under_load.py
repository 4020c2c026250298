"""Health checks and refusals while encoded uploads crowd a small server.

    python benchmarks/health_under_load.py [--repo PATH] [--out benchmarks/results/health-under-load.json]

Starts `python -m audioae.server --threads 1 --max-queue 2 --max-streams 1 --codec-workers 1
--max-batch-seconds 0` (the shipped denoiser), sends 20 concurrent Denoise calls of a 60 s
16 kHz Ogg Vorbis upload while a 21st thread polls Health/Check every 50 ms, and counts each
outcome. ``--repo``: run the server from another checkout (a worktree of an older commit), to
compare: e.g. one whose gRPC thread pool and concurrency cap are both 2 x max-queue +
max-streams + 8, and which counts uploads waiting for a codec process in neither.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from server_process import running_server

from audioae.audio import encode_audio
from audioae.client import Client
from audioae.fileio import atomic_write_json

SERVER_ARGS = ("--threads", "1", "--max-queue", "2", "--max-streams", "1", "--codec-workers", "1",
               "--max-batch-seconds", "0")


def _outcome(exc: grpc.RpcError) -> str:
    details = exc.details() or ""
    if "Concurrent RPC limit exceeded" in details:
        return f"{exc.code().name}: gRPC's concurrency cap"
    if "calls in progress" in details:
        return f"{exc.code().name}: the server's busy refusal"
    if "waiting for the device" in details:
        return f"{exc.code().name}: the full device queue"
    return f"{exc.code().name}: {details[:60]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=None, help="a checkout to run the server from (default: this one)")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    upload = encode_audio((0.1 * rng.standard_normal((1, 60 * 16000))).astype(np.float32), 16000,
                          format="OGG", subtype="VORBIS")
    calls, health = collections.Counter(), collections.Counter()
    done = threading.Event()
    env = {**os.environ, "PYTHONPATH": str(Path(args.repo).resolve())} if args.repo else None
    with running_server(*SERVER_ARGS, cwd=args.repo, env=env) as (_, port):
        target = f"127.0.0.1:{port}"

        def call() -> None:
            with Client(target, timeout=300) as c:
                try:
                    c.denoise_bytes(upload)
                    calls["OK"] += 1
                except grpc.RpcError as exc:
                    calls[_outcome(exc)] += 1

        def poll() -> None:
            with Client(target, timeout=10) as c:
                while not done.is_set():
                    try:
                        health[c.health()] += 1
                    except grpc.RpcError as exc:
                        health[_outcome(exc)] += 1
                    time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        workers = [threading.Thread(target=call) for _ in range(args.calls)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done.set()
        poller.join()
    result = {"server_args": list(SERVER_ARGS), "repo": args.repo or ".", "calls": dict(calls),
              "health_checks": dict(health)}
    print(result)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
