"""Peak server memory for multichannel, low-rate PCM: the requests that cost the most model work
per byte (every channel is upsampled to the model's 16 kHz and run as one row of its batch).

    python benchmarks/channel_memory.py [--out benchmarks/results/channel-memory.json]

Starts `python -m audioae.server` on its defaults (`--threads 1`), sends each request once with the
Python client and reads the server's peak resident memory (VmHWM, /proc) before and after it.
With the in-memory path chosen by a clip's seconds alone, the five requests grew
the server's peak by 2,469 MB, 1,575 MB of it on 8 channels x 115 s at 1 kHz
(`benchmarks/results/channel-memory-before.json`); with clips over 120 channel-seconds streamed in
pushes of at most 32 channel-seconds, and those over 1,200 (600 s of stereo) refused, the same
requests grow it by 264 MB (307 MB in the first run; `benchmarks/results/channel-memory.json`),
and the same clips sent as one stream message each by 108 MB more.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import grpc
import numpy as np
from server_process import running_server

from audioae.client import Client
from audioae.fileio import atomic_write_json

REQUESTS = {  # name: (channels, seconds, sample rate)
    "1 ch x 20 s at 16 kHz": (1, 20.0, 16000),
    "8 ch x 115 s at 1 kHz": (8, 115.0, 1000),
    "64 ch x 5 s at 16 kHz": (64, 5.0, 16000),
    "64 ch x 18 s at 1 kHz": (64, 18.0, 1000),
    "64 ch x 20 s at 1 kHz": (64, 20.0, 1000),
}


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    with running_server("--threads", "1") as (proc, port):
        rng = np.random.default_rng(0)
        with Client(f"127.0.0.1:{port}", timeout=600) as c:
            c.denoise(np.zeros(16000, np.float32), 16000)  # warm-up
            # each clip as a Denoise call, then the same clips as one StreamDenoise message each
            # (pushing a whole message at once, the server of commit c361bf3 grew its peak by 1.5 GB
            # on 8 ch x 115 s at 1 kHz, this script against it:
            # benchmarks/results/channel-memory-before-stream.json)
            calls = [(name, spec, False) for name, spec in REQUESTS.items()]
            calls += [(f"stream: {name}", spec, True) for name, spec in REQUESTS.items()]
            for name, (channels, seconds, sr), streamed in calls:
                x = (0.1 * rng.standard_normal((channels, int(seconds * sr)))).astype(np.float32)
                before = _status_kb(proc.pid, "VmHWM")
                t0 = time.perf_counter()
                try:
                    if streamed:
                        list(c.stream([x], sr, channels))
                    else:
                        c.denoise(x, sr)
                    outcome = "OK"
                except grpc.RpcError as exc:
                    outcome = f"{exc.code().name}: {exc.details()[:120]}"
                wall = time.perf_counter() - t0
                grew = (_status_kb(proc.pid, "VmHWM") - before) / 1024
                rows.append({"request": name, "float32_mb": round(x.nbytes / 2**20, 2), "outcome": outcome,
                             "wall_s": round(wall, 2), "peak_growth_mb": round(grew, 1)})
                print(rows[-1], flush=True)
    if args.out:
        atomic_write_json(args.out, {"server": "python -m audioae.server --threads 1 (defaults)", "rows": rows})


if __name__ == "__main__":
    main()
