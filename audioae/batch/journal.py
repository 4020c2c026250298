"""Which files a folder job was on when a process died, so that a rerun does not die on them too.

The decoders and encoders under libsndfile are C: a file one of them mishandles can kill the
process (SIGSEGV) rather than raise. The job then cannot report that file, and a rerun in the
same process would die on it again, every time. So before a file is denoised a marker naming it
is created in ``OUT/.audioae-inflight/``, and removed when the file is done: a marker left
behind names a file a process died on, a *suspect*. Suspects are denoised alone in a child
process (:mod:`.isolated`), where a crash costs that file only and is reported as its error; a
file that was innocent (the run was killed by hand while on it) just completes there.

One small file per file in flight, rather than one shared log: creating and removing files is
safe from many processes and, for the Ray engine, from many machines on shared storage, where
appends to one file are not.

A marker also says what the file's output is being made with (the job's model, its sha256 and
the strength) and which file held the output's name when it started (its inode, size and
modification time, or none; the output's path is kept relative to the output folder).
An output renamed into place is its ``.part`` file, so a marker whose output is now another file
names a *finished* file: not a suspect, but one whose manifest line may be missing, when the job
died between the rename and the line. So a marker of a finished file
stays until the job has written that line (:meth:`Journal.ended` after it), and a rerun
records, from the markers it finds, what made each such output (:meth:`Journal.finished`)
instead of calling it "skipped" with no settings.

Such a line must say all that the job's own would have: a marker also carries the ``--overwrite``
run the job makes outputs for, and once its file is done, what the engine said of it
(:meth:`Journal.done`: the time spent, the audio's length, a warning such as "a copy cut short",
the input as it was read). Without these a stopped Ray job, whose finished results wait in the
pipeline, recorded its finished files with no warning, and a resumed ``--overwrite`` redid them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ..fileio import atomic_write_text
from .manifest import FileResult, MadeWith

log = logging.getLogger(__name__)

JOURNAL_NAME = ".audioae-inflight"  # hidden, holds no audio names: never taken as an input

# What a finished file's marker keeps of its result (:meth:`Journal.done`), for its manifest line.
RESULT_FIELDS = ("seconds", "duration", "warning", "input_size", "input_mtime_ns")

DIED = "died"  # a process died while on the file
CRASHED = "crashed"  # and so did the process it was then isolated in


def _identity(path: str | os.PathLike) -> list[int] | None:
    """The file at ``path`` as ``[st_dev, st_ino, st_size, st_mtime_ns]`` (a list: it round-trips
    through JSON; compared by :func:`_same_file`), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _same_file(then: list, now: list[int]) -> bool:
    """Whether ``now`` is still the file a marker recorded as ``then``. The inode, not the device: a
    network mount's device number differs between the machines (a Ray actor, the driver) and the
    mounts (a reboot) reading a marker. Or the same size and modification time under another
    inode: a copy of the output folder (``cp -a``, ``rsync -a``) gives every file a new inode,
    and read by inode alone an interrupted ``--overwrite``'s earlier outputs would pass for
    finished ones, recorded as made by the new settings. An older marker holds
    ``[st_dev, st_ino]``: the inode alone."""
    return then[1:2] == now[1:2] or (len(then) == 4 and then[2:] == now[2:])


class Journal:
    """The markers of files in flight. Picklable (a path and the job's settings): worker processes
    and Ray actors mark too. ``made``: what this job makes outputs with, written into each marker
    of a file it denoises (None: markers without it, as older ones); ``overwrite_run``: the
    id of the ``--overwrite`` run it makes them for (:mod:`.overwrite`), if any."""

    def __init__(self, folder: str | os.PathLike, made: MadeWith | None = None, overwrite_run: str = ""):
        # Resolved as the tasks' outputs are (:func:`.plan.plan_tasks`): with a relative ``-o`` a line
        # recorded from a marker named its output "out/a.wav", no task's, and a resumed --overwrite
        # redid it.
        self.folder = Path(folder).resolve()
        self.made = made
        self.overwrite_run = overwrite_run
        self._warned = False

    def _marker(self, input_path: str) -> Path:
        return self.folder / (hashlib.sha1(os.fsencode(input_path)).hexdigest() + ".json")

    def _relative(self, output: str) -> str:
        """``output`` as a marker stores it: relative to the output folder (the journal's parent)
        when within it, so that the markers of a moved or copied output folder name its own
        files, not the ones they were written beside."""
        try:
            rel = os.path.relpath(output, self.folder.parent)
        except ValueError:  # another drive (Windows)
            return output
        return output if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel

    def _output(self, rec: dict) -> Path:
        """A marker's output path as this journal reads it (absolute in older markers)."""
        return self.folder.parent / rec["output"]

    def started(self, input_path: str, pid: int | None = None, output: str | None = None) -> None:
        """``pid``: the process on the file, when it is not this one (an isolated child).
        ``output``: where the file is being denoised to (None when nothing is written, e.g. a
        header read). A marker that cannot be written (a full disk) costs the protection, not the
        job: the file's own output then fails, and says why."""
        rec: dict = {"input": input_path, "pid": pid or os.getpid()}
        if pid is not None:  # a child on a file a process died on (or on its header): a suspect still
            rec["alone"] = True
        if output is not None and self.made is not None:
            rec.update(output=self._relative(output), replaces=_identity(output), **asdict(self.made),
                       overwrite_run=self.overwrite_run)
        marker = self._marker(input_path)
        try:
            self.folder.mkdir(exist_ok=True)
            marker.write_text(json.dumps(rec))
        except OSError as exc:
            with contextlib.suppress(OSError):
                marker.unlink(missing_ok=True)  # an empty marker would make an innocent file a suspect
            if not self._warned:
                self._warned = True
                log.warning("%s: cannot mark files in flight (%s); a file that crashes its decoder would "
                            "stop this job", self.folder, exc.strerror or exc)

    def done(self, result: FileResult) -> None:
        """``result``'s output is in place: its marker, which stays until the job records the file,
        now also keeps what the engine said of it, so that a line recorded from the marker (the
        result never reached the job) says it too. Written whole (atomically): a marker read
        half-written would make a finished file a suspect."""
        if result.status != "ok":
            return
        marker = self._marker(result.input)
        rec = self._load(marker)
        if rec is None:
            return
        rec["result"] = {k: getattr(result, k) for k in RESULT_FIELDS}
        try:
            atomic_write_text(marker, json.dumps(rec))
        except OSError as exc:  # the line recorded from the marker lacks these; the output is fine
            log.warning("%s: cannot note its result in its in-flight marker (%s)", result.input, exc.strerror or exc)

    def result(self, result: FileResult, crashed: bool = False) -> None:
        """What an engine does with a file's result: the marker of a file that failed goes
        (:meth:`ended`; ``crashed``: it stays a suspect); that of a finished file stays until the job
        has recorded it, and says what the manifest line must, should the job die before then
        (:meth:`done`)."""
        if result.status != "ok":
            self.ended(result.input, crashed=crashed)
        else:
            self.done(result)

    def ended(self, input_path: str, crashed: bool = False) -> None:
        """The file is done with: its marker goes. The engines call this for a file that failed
        (its marker would otherwise make it a suspect); for a finished file the job calls it once
        the file's manifest line is written. ``crashed``: it stays a suspect, for the next run."""
        if crashed:
            self.folder.mkdir(exist_ok=True)
            atomic_write_text(self._marker(input_path), json.dumps({"input": input_path, "crashed": True}))
        else:
            with contextlib.suppress(FileNotFoundError):
                self._marker(input_path).unlink()

    def interrupted(self, input_path: str) -> None:
        """The file's process was interrupted (Ctrl-C), not crashed on: its marker goes, unless
        its output was already renamed into place (then the job still has to record it)."""
        if self._finished(self._load(self._marker(input_path))) is None:
            self.ended(input_path)

    def stopped(self, input_path: str) -> None:
        """The job was stopped on purpose (Ctrl-C, SIGTERM) while the file was under way in a
        process it could not tell (a Ray actor, ended with the job's Ray): its marker no longer
        names a suspect. Flagged, not removed: the actor may yet rename the file's output into place
        as it ends, and the marker then says what made it. A file already denoised alone, because a
        process had died on it, stays a suspect."""
        marker = self._marker(input_path)
        rec = self._load(marker)
        if rec is None or rec.get("alone") or rec.get("crashed") or self._finished(rec) is not None:
            return
        rec["stopped"] = True
        with contextlib.suppress(OSError):  # left as it was: the file is denoised alone, which costs seconds
            atomic_write_text(marker, json.dumps(rec))

    def why(self, input_path: str) -> str | None:
        """DIED or CRASHED for a suspect, None for any other file (a finished one included)."""
        try:
            text = self._marker(input_path).read_text()
        except OSError:
            return None
        try:
            rec = json.loads(text)
        except ValueError:  # cut short as its process died: still a death
            return DIED
        if not isinstance(rec, dict):
            return DIED
        if self._finished(rec) is not None or rec.get("stopped"):
            return None
        return CRASHED if rec.get("crashed") else DIED

    def finished(self) -> Iterator[tuple[str, str, MadeWith]]:
        """``(input, output, made)`` for every marker whose output was renamed into place after
        the marker was written: files finished by a process or a job that may have died before
        recording them."""
        for rec, made in self._finished_markers():
            yield rec["input"], str(self._output(rec)), made

    def _finished_markers(self) -> Iterator[tuple[dict, MadeWith]]:
        """``(marker, made)`` for each marker :meth:`finished` names, each read once."""
        for _, rec in self._markers():
            made = self._finished(rec)
            if made is not None:
                yield rec, made

    def _markers(self) -> Iterator[tuple[Path, dict | None]]:
        """``(path, record)`` of every marker (None: unreadable), in name order."""
        try:
            markers = sorted(self.folder.glob("*.json"))
        except OSError:
            return
        for marker in markers:
            yield marker, self._load(marker)

    def forget_gone(self, planned: set[str]) -> None:
        """Remove the :meth:`stopped` markers of inputs that are gone: in neither ``planned`` (the
        job's inputs) nor the file system. A rerun marks anew only the files it plans, so such a
        marker stayed forever (and with it the folder). A suspect's marker stays, as does a stopped
        one whose file is still there (a job on other inputs into this folder may plan it)."""
        for marker, rec in self._markers():
            if (rec is None or not rec.get("stopped") or not isinstance(rec.get("input"), str)
                    or rec["input"] in planned or os.path.lexists(rec["input"]) or self._finished(rec) is not None):
                continue
            with contextlib.suppress(OSError):
                marker.unlink()

    def finished_results(self) -> Iterator[FileResult]:
        """The ``ok`` result of each file :meth:`finished` names, with what its marker kept: the
        settings, the ``--overwrite`` run and, when :meth:`done` noted it, the engine's result."""
        for rec, made in self._finished_markers():
            src, dst = rec["input"], str(self._output(rec))
            said = rec.get("result") if isinstance(rec.get("result"), dict) else {}
            kept = {k: said[k] for k in RESULT_FIELDS if said.get(k) is not None}
            run = rec.get("overwrite_run") if isinstance(rec.get("overwrite_run"), str) else ""
            yield FileResult(src, dst, "ok", **asdict(made), overwrite_run=run, **kept)

    @staticmethod
    def _load(marker: Path) -> dict | None:
        try:
            rec = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def _finished(self, rec: dict | None) -> MadeWith | None:
        """What made the marker's output, when that output was renamed into place after the
        marker was written (it is not the file its name held then)."""
        if rec is None or not isinstance(rec.get("output"), str) or not rec.get("sha256"):
            return None
        now, then = _identity(self._output(rec)), rec.get("replaces")
        if now is None or (isinstance(then, list) and _same_file(then, now)):
            return None
        try:
            return MadeWith(str(rec.get("model", "")), str(rec["sha256"]), float(rec["strength"]))
        except (KeyError, TypeError, ValueError):
            return None

    def tidy(self) -> None:
        """Remove the folder when no marker is left in it."""
        with contextlib.suppress(OSError):
            self.folder.rmdir()
