"""What reading the inputs' headers in a child process costs the folder job's progress bar.

    python benchmarks/header_reads.py [--files 2000] [--repeats 5] [--out benchmarks/results/header-reads.json]

Writes ``--files`` short WAV files to a temporary folder, then times ``audioae.audio.header_shapes``
over them in this process (the alternative for the progress bar) against
``audioae.batch.job.header_seconds`` (a spawned child process: its start, its imports, the pipe).
Run it as a script: a spawned child imports the main module again, and this one is light, as
``audioae.cli`` is.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()

    import numpy as np
    import soundfile as sf

    from audioae.audio import header_shapes
    from audioae.batch.job import header_seconds
    from audioae.batch.plan import plan_tasks
    from audioae.fileio import atomic_write_json

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.files):
            sf.write(Path(tmp) / f"{i:05d}.wav", np.zeros(1600, np.float32), 16000)
        tasks = plan_tasks([tmp], Path(tmp) / "out")
        in_process, in_child = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            header_shapes([t.input for t in tasks])
            in_process.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            header_seconds(tasks)
            in_child.append(time.perf_counter() - t0)
    result = {"files": args.files, "repeats": args.repeats,
              "in_process_median_s": round(statistics.median(in_process), 3),
              "in_child_median_s": round(statistics.median(in_child), 3)}
    print(result)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
