"""What decoding uploads and encoding answers in codec processes costs the server.

    python benchmarks/codec_processes.py [--rounds 7] [--out benchmarks/results/codec-processes.json]

A real server (``python -m audioae.server --port 0 --threads 1``, the shipped models) answers ``Denoise``
calls with encoded uploads (answered in the same container), once with ``--codec-workers 2``
(the default: audioae/server/codecs.py) and once with ``--codec-workers 0`` (in the server's process,
as before). Per upload kind: the median wall time of a call over ``--rounds`` calls after one
warm-up call; the resident memory (VmRSS from /proc) of the codec processes (the server's
multiprocessing children; Linux only) before and after the calls, and of the server after them.
Then the three codec calls of the longest upload (header, decode, encode of the answer) timed
alone, with two codec processes and in this process: where their cost lies; and the longest
legitimate codec work (600 s of 48 kHz stereo as Ogg Vorbis and FLAC), which sets
``--codec-timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np
from server_process import running_server

from audioae.audio import encode_audio, read_audio
from audioae.client import Client
from audioae.data.synthetic import speech_like
from audioae.fileio import atomic_write_json

UPLOADS = (  # (name, seconds, rate, channels, container, subtype)
    ("10 s 16 kHz mono FLAC", 10, 16000, 1, "FLAC", "PCM_16"),
    ("10 s 48 kHz stereo Ogg Vorbis", 10, 48000, 2, "OGG", "VORBIS"),
    ("120 s 48 kHz stereo FLAC", 120, 48000, 2, "FLAC", "PCM_16"),
)


def _upload(seconds: float, sr: int, channels: int, fmt: str, subtype: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = np.stack([speech_like(rng, seconds, sr) for _ in range(channels)])  # [C, T]
    x = 0.5 * x / np.abs(x).max() + 0.01 * rng.standard_normal(x.shape)
    return encode_audio(x.astype(np.float32), sr, format=fmt, subtype=subtype)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()
                     if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    return kids


def measure(workers: int, uploads: dict[str, bytes], rounds: int) -> dict:
    out = {"codec_workers": workers, "calls": {}}
    with running_server("--threads", "1", "--codec-workers", str(workers)) as (proc, port):
        time.sleep(2)  # the codec processes finish starting
        out["codec_process_rss_mb_before_calls"] = [round(_rss_mb(k), 1) for k in _children(proc.pid)]
        with Client(f"127.0.0.1:{port}", timeout=300) as c:
            for name, data in uploads.items():
                c.denoise_bytes(data)  # warm-up
                walls = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    c.denoise_bytes(data)
                    walls.append(time.perf_counter() - t0)
                out["calls"][name] = {"upload_mb": round(len(data) / 2**20, 2),
                                      "median_s": round(statistics.median(walls), 4),
                                      "min_s": round(min(walls), 4)}
        out["server_rss_mb"] = round(_rss_mb(proc.pid), 1)
        out["codec_process_rss_mb_after_calls"] = [round(_rss_mb(k), 1) for k in _children(proc.pid)]
    return out


def codec_calls(data: bytes, rounds: int) -> dict:
    """The three codec calls of one encoded Denoise, timed alone (``audioae.server.codecs.Codecs`` with
    2 processes and in this one): where the cost of the processes lies."""
    from audioae.server.codecs import Codecs

    out = {}
    for workers in (2, 0):
        codecs = Codecs(workers)
        codecs.start()
        codecs.header(b"")  # the processes are up
        times: dict[str, list[float]] = {"header": [], "read": [], "encode": []}
        for _ in range(rounds):
            t0 = time.perf_counter()
            codecs.header(data)
            t1 = time.perf_counter()
            wav, sr, info = codecs.read(data)
            t2 = time.perf_counter()
            codecs.encode(wav, sr, format=info.format, subtype=info.subtype)
            t3 = time.perf_counter()
            for key, dt in (("header", t1 - t0), ("read", t2 - t1), ("encode", t3 - t2)):
                times[key].append(dt)
        codecs.close()
        out[f"codec_workers={workers}"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    return out


def longest_codec_calls(seconds: float = 600.0, sr: int = 48000) -> dict:
    """The longest legitimate codec work: the server's longest clip (``--max-audio-seconds``,
    600 s) of 48 kHz stereo noise, encoded and decoded once in this process, per container: what
    ``--codec-timeout`` must allow."""
    x = (0.1 * np.random.default_rng(0).standard_normal((2, int(seconds * sr)))).astype(np.float32)  # [2, T]
    out = {}
    for fmt, subtype in (("OGG", "VORBIS"), ("FLAC", "PCM_16")):
        t0 = time.perf_counter()
        data = encode_audio(x, sr, format=fmt, subtype=subtype)
        t1 = time.perf_counter()
        read_audio(data)
        t2 = time.perf_counter()
        out[f"{fmt}/{subtype}"] = {"encode_s": round(t1 - t0, 2), "decode_s": round(t2 - t1, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/codec-processes.json")
    args = p.parse_args()
    uploads = {name: _upload(*spec) for name, *spec in UPLOADS}
    longest = list(uploads)[-1]
    result = {"command": "python benchmarks/codec_processes.py", "rounds": args.rounds,
              "runs": [measure(2, uploads, args.rounds), measure(0, uploads, args.rounds)],
              "codec_calls_s": {longest: codec_calls(uploads[longest], args.rounds)},
              "longest_clip_codec_s": {"600 s 48 kHz stereo": longest_codec_calls()}}
    atomic_write_json(args.out, result)
    for run in result["runs"]:
        for name, r in run["calls"].items():
            print(f"codec_workers={run['codec_workers']}  {name:32s} {r['upload_mb']:6.2f} MB  "
                  f"median {r['median_s'] * 1000:8.1f} ms")
        print(f"  server {run['server_rss_mb']} MB, codec processes {run['codec_process_rss_mb_before_calls']} MB "
              f"before the calls, {run['codec_process_rss_mb_after_calls']} MB after")
    for name, by in result["codec_calls_s"].items():
        for how, t in by.items():
            print(f"{name}, {how}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()))
    for name, by in result["longest_clip_codec_s"].items():
        for container, t in by.items():
            print(f"{name} {container}: encode {t['encode_s']} s, decode {t['decode_s']} s")


if __name__ == "__main__":
    main()
