"""Which files a folder job was on when a process died, so that a rerun does not die on them too.

The decoders and encoders under libsndfile are C: a file one of them mishandles can kill the
process (SIGSEGV) rather than raise. The job then cannot report that file, and a rerun in the
same process would die on it again, every time. So the local engine appends each file's start
and end to ``OUT/.audioae-journal.jsonl`` (one ``write`` each, which a crash cannot lose). A
file that started and never ended, or whose isolated run crashed, is a *suspect*; the next run
(or, with worker processes, the same run) denoises each suspect alone in a child process
(:mod:`.isolated`), where a crash costs that file only and is reported as its error. A file
that was innocent (the run was killed by hand while on it) just completes there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..fileio import atomic_write_text

JOURNAL_NAME = ".audioae-journal.jsonl"  # hidden, and not an audio name: never taken as an input

DIED = "died"  # a process died while on the file: no end was recorded
CRASHED = "crashed"  # its isolated run died too


class Journal:
    """Start and end events per input path. Picklable (a path), so worker processes append too."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def started(self, input_path: str) -> None:
        self._append({"start": input_path, "pid": os.getpid()})

    def ended(self, input_path: str, crashed: bool = False) -> None:
        self._append({"end": input_path, "crashed": crashed})

    def _append(self, record: dict) -> None:
        # O_APPEND and one write per line: lines from several processes never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)

    def records(self) -> list[dict]:
        """Every complete line (a line cut short by a dying process is ignored)."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def suspects(self) -> dict[str, str]:
        """``{input: DIED | CRASHED}`` for every file whose last event is a start, or an end that crashed."""
        state: dict[str, str | None] = {}
        for rec in self.records():
            if isinstance(rec.get("start"), str):
                state[rec["start"]] = DIED
            elif isinstance(rec.get("end"), str):
                state[rec["end"]] = CRASHED if rec.get("crashed") else None
        return {path: why for path, why in state.items() if why}

    def keep(self, suspects: dict[str, str]) -> None:
        """Rewrite the journal to hold only these suspects, or remove it when none remain: it
        records what a rerun must know, and does not grow with every run."""
        lines = [json.dumps({"start": path} if why == DIED else {"end": path, "crashed": True}) + "\n"
                 for path, why in sorted(suspects.items())]
        if lines:
            atomic_write_text(self.path, "".join(lines))
        else:
            self.path.unlink(missing_ok=True)
