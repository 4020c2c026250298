"""How long a Decompose whose caller's deadline has passed keeps the device worker busy.

A server with its shipped models (one torch thread) gets a Decompose of a long clip with a
0.5 s deadline, then at once a 1 s Denoise; the Denoise's wait is the work the abandoned
Decompose still did (nobody reads its answer). Each length runs twice, the first as warm-up.

    python benchmarks/decompose_deadline.py --seconds 100 300 550 --out benchmarks/results/decompose-deadline.json
    git worktree add /tmp/before a825310~1 && python benchmarks/decompose_deadline.py --checkout /tmp/before ...
    (decompose-deadline-before.json; the blocks' before: 009dee6~1, decompose-deadline-blocks-before.json)

A deadline past the encoder, in the units' energies (blocked in 402d261; before: 402d261~1)::

    python benchmarks/decompose_deadline.py --seconds 550 --fit-steps 0 --deadline 8 --out ...  (--checkout: before)

A 44.1 kHz input (resampled to the model's rate in blocks since the change after bd51a2c): --rate
44100. Where a server's deadline falls in a 97 MB request's sending, parsing and work is not known
to the client, so ``--in-process`` calls ``decompose`` itself (one torch thread) with a stop that
turns true ``--stop-after`` seconds into the call, and reports how long it ran on after that
(``overrun_s``; docs/decomposition.md); the before of that, from a worktree::

    PYTHONPATH=/tmp/before python benchmarks/decompose_deadline.py --in-process --rate 44100 --seconds 550 ...

The final stage, each component's inverse STFT and resampling back (resampled in blocks after
a270a4a): ``--stop-from 'at component 1 of'`` counts ``--stop-after`` from that stage's first
stop question, wherever the load put it (decompose-deadline-tail{-before,}.json). The same way,
each stage cut in blocks on 2026-12-07 (before: a worktree of c82a8b5): the fit steps (``--stop-from
'during the fit'``), the masks (``--fit-steps 0 --stop-from 'before the fit'``) and the residual,
energies and ranking after the last component (``--stop-from 'while resampling component 5 of 5'``):
decompose-deadline-{fit,masks,end}{-before,}.json, commands in docs/decomposition.md. Each
component's masks and inverse STFT, cut in blocks of frames later that day (before: a worktree of
df5c707), the same ``--stop-from 'at component 1 of'``: decompose-deadline-components{-before,}.json;
and the join of ``resample_in_blocks``' blocks, now written in place (``--resample-tail --rate 44100``,
one torch thread): decompose-deadline-join{-before,}.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_args import description, sample_rate  # noqa: E402
from server_process import running_server  # noqa: E402

from audioae.v1 import audioae_pb2 as pb  # noqa: E402
from audioae.v1 import audioae_pb2_grpc as pbg  # noqa: E402

SR = 16000


def pcm(seconds: float, seed: int = 0, sr: int = SR) -> pb.Audio:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return pb.Audio(pcm=pb.Pcm(data=x.astype("<f4").tobytes(), format=pb.FLOAT32, sample_rate=sr, channels=1))


def abandoned_decompose(stub, seconds: float, deadline: float = 0.5, fit_steps: int | None = None,
                        sr: int = SR) -> dict:
    """The Decompose's status and time, and how long the Denoise behind it took."""
    t0 = time.perf_counter()
    request = pb.DecomposeRequest(audio=pcm(seconds, sr=sr), top_k=5)
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


def stopped_decompose(model, seconds: float, sr: int, after: float, fit_steps: int | None = None,
                      start: str | None = None) -> dict:
    """How long ``decompose`` runs on after its stop turns true ``after`` seconds into it, or
    ``after`` seconds after the first stop question asked at a place whose message holds ``start``."""
    from audioae.decompose import decompose
    from audioae.enhance import Stopped

    x = np.frombuffer(pcm(seconds, sr=sr).pcm.data, "<f4")
    deadline = math.inf if start else time.perf_counter() + after

    def stop() -> bool:
        nonlocal deadline
        # audioae.enhance.check_stop(stop, where) asks: its `where` names the place, in any version
        if deadline == math.inf and start in sys._getframe(1).f_locals.get("where", ""):
            deadline = time.perf_counter() + after
        return time.perf_counter() >= deadline

    try:
        decompose(model, x, sr, top_k=5, fit_steps=fit_steps, stop=stop)
        where = "OK"
    except Stopped as exc:
        where = str(exc)
    end = time.perf_counter()
    row = {"seconds": seconds, "stop_after_s": after, "stopped": where, "overrun_s": round(end - deadline, 3)}
    return {**row, "counted_from": start} if start else row


def resample_tail(seconds: float, orig: int, new: int) -> dict:
    """How long ``resample_in_blocks`` of a mono ``seconds`` clip works on after its last stop
    question (the join of its blocks, before they were written in place), and the whole call."""
    import torch

    from audioae.audio import resample_in_blocks

    x = torch.from_numpy(np.frombuffer(pcm(seconds, sr=orig).pcm.data, "<f4").copy())[None]  # [1, T]
    asked = [0.0]
    start = time.perf_counter()
    resample_in_blocks(x, orig, new, stop=lambda: asked.__setitem__(0, time.perf_counter()))
    end = time.perf_counter()
    return {"seconds": seconds, "from_hz": orig, "to_hz": new, "after_last_question_s": round(end - asked[0], 3),
            "call_s": round(end - start, 3)}


def resample_tails(args) -> list[dict]:
    """:func:`resample_tail` both ways between ``--rate`` and the model's, as decompose resamples."""
    import torch

    torch.set_num_threads(1)
    rows = []
    for seconds in args.seconds:
        for orig, new in ((args.rate, SR), (SR, args.rate)):
            for run in ("warm-up", "measured", "measured", "measured"):
                row = {"run": run, **resample_tail(seconds, orig, new)}
                print(json.dumps(row), flush=True)
                if run == "measured":
                    rows.append(row)
    return rows


def in_process(args) -> list[dict]:
    import torch

    from audioae.pretrained import DEFAULT_DECOMPOSER, load

    torch.set_num_threads(1)  # the server's --threads 1
    model = load(DEFAULT_DECOMPOSER)
    rows = []
    for seconds in args.seconds:
        for after in args.stop_after:
            for run in ("warm-up", "measured"):
                row = {"run": run, **stopped_decompose(model, seconds, args.rate, after, args.fit_steps, args.stop_from)}
                print(json.dumps(row), flush=True)
                if run == "measured":
                    rows.append(row)
    return rows


def write(out: Path | None, rows: list[dict]) -> None:
    """The rows, the command (PYTHONPATH too: an --in-process before) and the machine's load, which
    moves these figures: two cores shared with other work."""
    if out:
        command = shlex.join(["python", *sys.argv])  # quoted: --stop-from's text has spaces
        if os.environ.get("PYTHONPATH"):
            command = f"PYTHONPATH={os.environ['PYTHONPATH']} {command}"
        out.write_text(json.dumps({"command": command, "load_average_1_5_15": os.getloadavg(), "rows": rows},
                                  indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=description(__doc__))
    p.add_argument("--seconds", type=float, nargs="+", default=[100.0, 300.0, 550.0])
    p.add_argument("--out", type=Path)
    p.add_argument("--checkout", type=Path, help="run the server of another checkout (e.g. a worktree of an older commit)")
    p.add_argument("--deadline", type=float, default=0.5, help="the Decompose's deadline, seconds")
    p.add_argument("--fit-steps", type=int, help="the Decompose's fit steps (default: the model's)")
    p.add_argument("--rate", type=sample_rate, default=SR,
                   help=f"the Decompose's sample rate, Hz (default {SR}, the model's: no resampling)")
    p.add_argument("--in-process", action="store_true", help="call decompose in this process, no server: how long it runs on past its stop")
    p.add_argument("--stop-after", type=float, nargs="+", default=[0.05, 0.15, 0.25],
                   help="--in-process: seconds into the call at which its stop turns true")
    p.add_argument("--stop-from", metavar="TEXT",
                   help="--in-process: count --stop-after from the first stop question asked where a stop would say "
                        "TEXT (e.g. 'at component 1 of': the final stage, whatever the load made the stages before take)")
    p.add_argument("--resample-tail", action="store_true",
                   help="time only resample_in_blocks, --rate to the model's and back: how long it works after its last "
                        "stop question")
    args = p.parse_args(argv)
    if args.resample_tail:
        write(args.out, resample_tails(args))
        return 0
    if args.in_process:
        if args.checkout:
            p.error("--in-process runs the audioae it imports: set PYTHONPATH to the other checkout instead")
        write(args.out, in_process(args))
        return 0
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
                    row = {"run": run, **abandoned_decompose(stub, seconds, args.deadline, args.fit_steps, args.rate)}
                    print(json.dumps(row), flush=True)
                    if run == "measured":
                        rows.append(row)
                    time.sleep(1.0)
    write(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
