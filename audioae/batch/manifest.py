"""The JSON-lines manifest of a folder job (``OUT/audioae-manifest.jsonl``) and its summary.

One line per input file: ``input``, ``output``, ``status`` (ok | skipped | error | duplicate: a
second name of a file the job denoises once, under its first name's line), ``error``,
``seconds`` (wall time spent on it), ``duration`` (seconds of audio) and, for an output on disk,
what made it: ``model`` (the checkpoint), ``sha256`` (its bytes) and ``strength``, the input
it was made from: ``input_size`` and ``input_mtime_ns`` as the engine opened it, and the
``--overwrite`` run that made it, if one did (``overwrite_run``). Lines are
appended and flushed as files finish, so a killed run still leaves a record of what it
completed; at the end of a run the file is compacted (last line per input wins) and replaced
atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..fileio import atomic_write_text

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"  # a second name of an input (a link, a hard link) with the same output: done once
STATUSES = ("ok", "skipped", "error", DUPLICATE)
# What the "skipped" line of a file found under an output's name says, run after run.
FOUND_BEFORE_ANY_RUN = "found under its output's name before any run: not made by one"


@dataclass(frozen=True)
class FileResult:
    """What happened to one input file."""

    input: str
    output: str
    status: str  # ok | skipped | error | duplicate
    error: str = ""
    seconds: float = 0.0  # wall time spent on this file
    duration: float | None = None  # seconds of audio, when known
    # What made the output on disk (ok: this run; skipped: the run that wrote it, when recorded).
    model: str = ""
    sha256: str = ""
    strength: float | None = None
    # The input the output on disk was made from, as the engine opened it (size in bytes, mtime in ns):
    # a rerun tells a changed input by these, not by comparing its clock with the output's.
    input_size: int | None = None
    input_mtime_ns: int | None = None
    # Said of an output made all the same (ok, and carried forward on skipped lines): an input cut short.
    warning: str = ""
    # The --overwrite run that made the output on disk (its id; carried forward on skipped lines), so
    # that a rerun of a stopped one keeps what it had done (:mod:`.overwrite`); empty for any other run.
    overwrite_run: str = ""

    def to_json(self) -> str:
        d = asdict(self)
        d["seconds"] = round(d["seconds"], 4)
        if d["duration"] is not None:
            d["duration"] = round(d["duration"], 4)
        return json.dumps(d)


def made_by_runs(records: Iterable[dict]) -> set[str]:
    """The outputs a manifest's lines say a run made: every line's output but those of files found
    under an output's name before any run (:data:`FOUND_BEFORE_ANY_RUN`), which are someone's own."""
    return {r["output"] for r in records if isinstance(r.get("output"), str)
            and r.get("error") != FOUND_BEFORE_ANY_RUN}


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Every complete line of a manifest (a line cut short by a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "input" in rec:
                records.append(rec)
    return records


class ManifestWriter:
    """Appends one line per result and flushes it; :meth:`compact` rewrites the file at the end."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, result: FileResult) -> None:
        try:
            self._fh.write(result.to_json() + "\n")
            self._fh.flush()
        except OSError as exc:  # a full disk: stop the job, naming what could not be written
            raise OSError(exc.errno, f"{self.path}: cannot record {Path(result.input).name}'s result "
                                     f"({exc.strerror or exc}); the job stops here") from exc

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError:  # the line write() failed on: its error is the one reported
                pass

    def compact(self) -> None:
        """Keep the last line of each input (earlier runs' lines included), written atomically."""
        self.close()
        latest: dict[str, dict] = {}
        for rec in read_manifest(self.path):
            latest.pop(rec["input"], None)  # re-insert: order of the last update
            latest[rec["input"]] = rec
        try:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in latest.values()))
        except OSError as exc:  # a full disk: the appended lines are complete and read the same
            log.warning("%s: not compacted (%s); it keeps every line as appended, which reads the same",
                        self.path, exc.strerror or exc)


def failed_last(records: Iterable[dict]) -> set[str]:
    """Inputs whose latest record is an error."""
    latest = {r["input"]: r.get("status") for r in records}
    return {k for k, status in latest.items() if status == "error"}


def previous_durations(records: Iterable[dict]) -> dict[str, float]:
    """Audio durations earlier runs recorded (``records``: :func:`read_manifest`), so skipped files
    keep theirs in the manifest (a file's line after compaction may itself be a "skipped" one
    carrying it forward)."""
    return {r["input"]: r["duration"] for r in records
            if r.get("status") in ("ok", "skipped") and isinstance(r.get("duration"), int | float)}


def previous_warnings(records: Iterable[dict]) -> dict[str, str]:
    """Per input, the warning its output was made with (a "skipped" line carries it forward)."""
    return {r["input"]: r["warning"] for r in records
            if r.get("status") in ("ok", "skipped") and isinstance(r.get("warning"), str) and r["warning"]}


def previous_inputs(records: Iterable[dict]) -> dict[str, tuple[int, int]]:
    """Per input, ``(size, mtime_ns)`` of the file its output was made from, as earlier runs
    recorded it (a "skipped" line carries it forward). Older manifests record none."""
    return {r["input"]: (r["input_size"], r["input_mtime_ns"]) for r in records
            if r.get("status") in ("ok", "skipped") and isinstance(r.get("input_size"), int)
            and isinstance(r.get("input_mtime_ns"), int)}


@dataclass(frozen=True)
class MadeWith:
    """The settings an output was made with, as a manifest records them."""

    model: str
    sha256: str
    strength: float

    def differs(self, other: MadeWith) -> bool:
        return (self.sha256, self.strength) != (other.sha256, other.strength)  # the path may move

    def describe(self, precise: bool = False) -> str:
        """For people; ``precise``: the whole sha256 and the strength as Python reads it back (repr),
        for two settings that differ but read alike (0.3 and 0.30000000000000004 both print "0.3")."""
        if precise:
            return f"{Path(self.model).name} (sha256 {self.sha256}) at strength {self.strength!r}"
        return f"{Path(self.model).name} (sha256 {self.sha256[:12]}) at strength {self.strength:g}"


def previous_settings(records: Iterable[dict]) -> dict[str, MadeWith]:
    """Per input, what made its output according to earlier runs (``records``:
    :func:`read_manifest`; a "skipped" line carries forward what the line before it recorded, and
    so does an "error" line of a file whose earlier output stayed in place). Older manifests
    record none."""
    made = {}
    for r in records:
        if r.get("sha256") and isinstance(r.get("strength"), int | float):
            made[r["input"]] = MadeWith(str(r.get("model", "")), r["sha256"], float(r["strength"]))
    return made


def summarize(results: Iterable[FileResult], wall_seconds: float) -> dict:
    """Counts, audio processed and speed of one run, plus the failed files with their errors and
    the files denoised with a warning (an input cut short)."""
    results = list(results)
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    processed = sum(r.duration or 0.0 for r in results if r.status == "ok")
    return {
        "files": len(results),
        **counts,
        "audio_seconds": round(processed, 3),
        "wall_seconds": round(wall_seconds, 3),
        "files_per_second": round(counts["ok"] / wall_seconds, 3) if wall_seconds > 0 else math.nan,
        "realtime_factor": round(processed / wall_seconds, 2) if wall_seconds > 0 else math.nan,
        "errors": [{"input": r.input, "error": r.error} for r in results if r.status == "error"],
        "warnings": [{"input": r.input, "warning": r.warning} for r in results if r.status == "ok" and r.warning],
    }
