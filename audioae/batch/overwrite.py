"""An ``--overwrite`` run that was stopped, and the rerun that goes on where it stopped.

``--overwrite`` redoes every file, so a plain rerun of an interrupted one would start over (hours
of work redone), and a rerun without it would keep the older outputs it had not reached. So an
``--overwrite`` job writes ``OUT/.audioae-overwrite.json`` (its id, when it started, what it makes
outputs with) before its work and removes it when a job in ``OUT`` finishes (one that passed files
over for a full disk does not); each output it makes
or keeps carries its id in the manifest (``overwrite_run``). A record still there when the next
``--overwrite`` starts names a run that was stopped (Ctrl-C, a kill, a full disk). With the same
model and strength the new job goes on with that run: it keeps the outputs that run made, recorded
``ok`` (or kept, ``skipped``) under its id, from inputs unchanged since; the rest are redone. Any
other ``--overwrite`` (the earlier one finished, or other settings) starts a run of its own and
redoes everything.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..fileio import atomic_write_text
from .manifest import MadeWith, previous_inputs, previous_settings
from .plan import FileTask, SourceState, same_file, source_state

log = logging.getLogger(__name__)

OVERWRITE_NAME = ".audioae-overwrite.json"  # hidden, not an audio name: never taken as an input


@dataclass(frozen=True)
class OverwriteRun:
    """One ``--overwrite`` run, from its start until a job in its folder finishes."""

    id: str
    started: str  # UTC, "2026-12-07 14:26:00": said to people when a rerun goes on with it
    made: MadeWith


def stopped_overwrite(out: Path) -> OverwriteRun | None:
    """The ``--overwrite`` run whose record is in ``out``: one that was stopped before it finished
    (None: none, or a record that cannot be read, which only costs the rerun its head start)."""
    try:
        rec = json.loads((out / OVERWRITE_NAME).read_text())
        return OverwriteRun(str(rec["id"]), str(rec["started"]), MadeWith(**rec["made"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def overwrite_run(out: Path, now: MadeWith) -> tuple[OverwriteRun, bool]:
    """``(run, resumed)``: the stopped run to go on with, when it makes outputs as this job does
    (``resumed``), else a new one. Not written yet: :func:`begin` does that once the job's checks pass."""
    stopped = stopped_overwrite(out)
    if stopped is not None and not stopped.made.differs(now):
        return stopped, True
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return OverwriteRun(uuid.uuid4().hex, started, now), False


def begin(out: Path, run: OverwriteRun) -> None:
    """Record ``run`` as under way (written atomically: a rerun reads a whole record or none). One
    that cannot be written (a full disk) costs a rerun after a stop its head start, not this job."""
    try:
        atomic_write_text(out / OVERWRITE_NAME, json.dumps({"id": run.id, "started": run.started,
                                                            "made": asdict(run.made)}) + "\n")
    except OSError as exc:
        log.warning("%s: cannot record this --overwrite run (%s); if it is stopped, running it again redoes "
                    "every file", out / OVERWRITE_NAME, exc.strerror or exc)


def finished(out: Path) -> None:
    """A job in ``out`` finished: no ``--overwrite`` run there is stopped any more (one without
    ``--overwrite`` chose to keep the outputs the stopped one had not reached)."""
    try:
        (out / OVERWRITE_NAME).unlink(missing_ok=True)
    except OSError as exc:  # the job's work is done; only the next --overwrite's choice is at stake
        log.warning("%s: cannot remove (%s); delete it, or the next --overwrite with these settings keeps the "
                    "outputs this run made", out / OVERWRITE_NAME, exc.strerror or exc)


def remade(run: OverwriteRun, tasks: Sequence[FileTask], earlier: Iterable[dict]) -> list[FileTask]:
    """The tasks whose output ``run`` already made: their latest manifest line (``earlier``:
    :func:`~.manifest.read_manifest`'s) is ``ok`` or ``skipped`` under ``run``'s id with its
    settings, for this output, from an input that is still the file it was made from (a line
    without that record is redone), and the output is there. One stat per input and output."""
    latest = {r["input"]: r for r in earlier}
    kept = []
    for t in tasks:
        line = latest.get(t.input)
        if (line is None or line.get("status") not in ("ok", "skipped") or line.get("overwrite_run") != run.id
                or line.get("output") != t.output):
            continue
        made, then = previous_settings([line]).get(t.input), previous_inputs([line]).get(t.input)
        now = source_state(t.input)
        if made is None or made.differs(run.made) or then is None or now is None:
            continue
        if same_file(SourceState(*then), now) and os.path.isfile(t.output):
            kept.append(t)
    return kept


def previous_runs(records: Iterable[dict]) -> dict[str, str]:
    """Per input, the ``--overwrite`` run that made its output (a "skipped" line carries it forward)."""
    runs = {}
    for r in records:
        if r.get("status") in ("ok", "skipped"):  # a later line without one (a plain run's) ends it
            runs[r["input"]] = r["overwrite_run"] if isinstance(r.get("overwrite_run"), str) else ""
    return {name: run for name, run in runs.items() if run}
