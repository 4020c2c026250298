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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

from ..fileio import atomic_write_text

log = logging.getLogger(__name__)

JOURNAL_NAME = ".audioae-inflight"  # hidden, holds no audio names: never taken as an input

DIED = "died"  # a process died while on the file
CRASHED = "crashed"  # and so did the process it was then isolated in


class Journal:
    """The markers of files in flight. Picklable (a path): worker processes and Ray actors mark too."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._warned = False

    def _marker(self, input_path: str) -> Path:
        return self.folder / (hashlib.sha1(os.fsencode(input_path)).hexdigest() + ".json")

    def started(self, input_path: str, pid: int | None = None) -> None:
        """``pid``: the process on the file, when it is not this one (an isolated child). A marker
        that cannot be written (a full disk) costs the protection, not the job: the file's own
        output then fails, and says why."""
        marker = self._marker(input_path)
        try:
            self.folder.mkdir(exist_ok=True)
            marker.write_text(json.dumps({"input": input_path, "pid": pid or os.getpid()}))
        except OSError as exc:
            with contextlib.suppress(OSError):
                marker.unlink(missing_ok=True)  # an empty marker would make an innocent file a suspect
            if not self._warned:
                self._warned = True
                log.warning("%s: cannot mark files in flight (%s); a file that crashes its decoder would "
                            "stop this job", self.folder, exc.strerror or exc)

    def ended(self, input_path: str, crashed: bool = False) -> None:
        if crashed:  # stays a suspect, for the next run
            self.folder.mkdir(exist_ok=True)
            atomic_write_text(self._marker(input_path), json.dumps({"input": input_path, "crashed": True}))
        else:
            with contextlib.suppress(FileNotFoundError):
                self._marker(input_path).unlink()

    def why(self, input_path: str) -> str | None:
        """DIED or CRASHED for a suspect, None for any other file."""
        return self._read(self._marker(input_path))

    @staticmethod
    def _read(marker: Path) -> str | None:
        try:
            text = marker.read_text()
        except OSError:
            return None
        try:
            return CRASHED if json.loads(text).get("crashed") else DIED
        except (ValueError, AttributeError):  # cut short as its process died: still a death
            return DIED

    def tidy(self) -> None:
        """Remove the folder when no marker is left in it."""
        with contextlib.suppress(OSError):
            self.folder.rmdir()
