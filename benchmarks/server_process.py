"""A `python -m audioae.server` for a benchmark: started on a free port, ready, stopped at the end.

    with running_server("--threads", "1") as (proc, port):
        ...
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def running_server(*args: str, cwd: str | None = None, env: dict | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    """The server process and its port, once it has said "ready:" (its models loaded). ``cwd`` and
    ``env``: run it from another checkout."""
    proc = subprocess.Popen([sys.executable, "-m", "audioae.server", "--port", "0", *args],
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    try:
        port = None
        for line in iter(proc.stderr.readline, ""):
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            if "ready:" in line:
                break
        if port is None:
            raise RuntimeError(f"the server did not start (exit {proc.poll()})")
        # keep reading its log: a full pipe would block the server's next warning
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield proc, port
    finally:
        proc.terminate()
        proc.wait()
