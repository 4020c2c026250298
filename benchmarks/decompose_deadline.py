"""How long a Decompose whose caller's deadline has passed keeps the device worker busy.

A server with its shipped models (one torch thread) gets a Decompose of a long clip with a
0.5 s deadline, then at once a 1 s Denoise; the Denoise's wait is the work the abandoned
Decompose still did (nobody reads its answer). Each length runs twice, the first as warm-up.

    python benchmarks/decompose_deadline.py --seconds 100 300 550 --out benchmarks/results/decompose-deadline.json
    git worktree add /tmp/before a825310~1 && python benchmarks/decompose_deadline.py --checkout /tmp/before ...
    (decompose-deadline-before.json; the blocks' before: 009dee6~1, decompose-deadline-blocks-before.json)

A deadline past the encoder, in the units' energies (blocked in 402d261; before: 402d261~1)::

    python benchmarks/decompose_deadline.py --seconds 550 --fit-steps 0 --deadline 8 --out ...  (--checkout: before)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_process import running_server  # noqa: E402

from audioae.v1 import audioae_pb2 as pb  # noqa: E402
from audioae.v1 import audioae_pb2_grpc as pbg  # noqa: E402

SR = 16000


def pcm(seconds: float, seed: int = 0) -> pb.Audio:
    t = np.arange(int(SR * seconds)) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return pb.Audio(pcm=pb.Pcm(data=x.astype("<f4").tobytes(), format=pb.FLOAT32, sample_rate=SR, channels=1))


def abandoned_decompose(stub, seconds: float, deadline: float = 0.5, fit_steps: int | None = None) -> dict:
    """The Decompose's status and time, and how long the Denoise behind it took."""
    t0 = time.perf_counter()
    request = pb.DecomposeRequest(audio=pcm(seconds), top_k=5)
    if fit_steps is not None:  # 0: the deadline can fall past the encoder, in the units' sums
        request.fit_steps = fit_steps
    try:
        stub.Decompose(request, timeout=deadline)
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
    t1 = time.perf_counter()
    stub.Denoise(pb.DenoiseRequest(audio=pcm(1.0, seed=1)), timeout=120)
    return {"seconds": seconds, "decompose": code, "decompose_s": round(t1 - t0, 3),
            "next_denoise_s": round(time.perf_counter() - t1, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[100.0, 300.0, 550.0])
    p.add_argument("--out", type=Path)
    p.add_argument("--checkout", type=Path, help="run the server of another checkout (e.g. a worktree of an older commit)")
    p.add_argument("--deadline", type=float, default=0.5, help="the Decompose's deadline, seconds")
    p.add_argument("--fit-steps", type=int, help="the Decompose's fit steps (default: the model's)")
    args = p.parse_args(argv)
    where = {}
    if args.checkout:
        where = {"cwd": str(args.checkout), "env": {**os.environ, "PYTHONPATH": str(args.checkout)}}
    rows = []
    mb = 512 << 20  # a 550 s float32 clip is 35 MB
    with running_server("--threads", "1", "--max-request-mb", "512", **where) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", mb),
                                                                  ("grpc.max_receive_message_length", mb)]) as ch:
            stub = pbg.AudioAEStub(ch)
            for seconds in args.seconds:
                for run in ("warm-up", "measured"):
                    row = {"run": run, **abandoned_decompose(stub, seconds, args.deadline, args.fit_steps)}
                    print(json.dumps(row), flush=True)
                    if run == "measured":
                        rows.append(row)
                    time.sleep(1.0)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
