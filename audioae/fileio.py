"""Atomic file writes for everything the tools produce: a temporary file in the same folder,
then ``os.replace``. A crash at any moment leaves the old file or the new one, never half of one
(rename is atomic on POSIX local filesystems; not guaranteed on NFS)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, and setting it on every write
# would briefly give other threads' new files a zero umask.
_FILE_MODE = 0o666 & ~_read_umask()


def default_file_mode() -> int:
    """0666 less the umask: what ``open()`` would give (mkstemp's temp files are 0600)."""
    return _FILE_MODE


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``.<name>.<random>.part`` beside ``path`` for binary writing; on a clean exit it is
    renamed to ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: object, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")
