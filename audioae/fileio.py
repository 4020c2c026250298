"""Atomic file writes for everything the tools produce: a temporary file in the same folder,
then ``os.replace``. A crash at any moment leaves the old file or the new one, never half of one
(rename is atomic on POSIX local filesystems; not guaranteed on NFS)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


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


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def temp_name(name: str, suffix: str, room: int = 0) -> str:
    """``.<name><suffix>``: the name of a temporary file beside ``name``. Where that would pass the
    file system's 255 bytes (``name`` itself may be up to 255), a prefix of ``name`` and a hash of
    all of it instead, so it is still one name per output; ``room``: bytes a caller appends
    (mkstemp's random letters)."""
    full = f".{name}{suffix}"
    if len(os.fsencode(full)) + room <= NAME_MAX:
        return full
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    keep = NAME_MAX - room - len(os.fsencode(suffix)) - len(digest) - 2  # the dot and the dash
    head = name
    while len(os.fsencode(head)) > keep:  # whole characters, so the name stays valid UTF-8
        head = head[:-1]
    return f".{head}-{digest}{suffix}"


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``.<name>.<random>.part`` beside ``path`` for binary writing; on a clean exit it is
    renamed to ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp puts 8 random letters between prefix and suffix.
    fd, tmp = tempfile.mkstemp(prefix=temp_name(path.name, ".", room=8 + len(".part")), suffix=".part",
                               dir=path.parent)
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


def output_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Where a one-file command writes ``src``'s result: ``dst``, or ``dst/<src's name>`` when
    ``dst`` is an existing folder (as ``cp`` does). Raises ValueError when that is ``src`` itself:
    an input is never overwritten."""
    src, dst = Path(src), Path(dst)
    if dst.is_dir():
        dst = dst / src.name
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise ValueError(f"refusing to write {dst}: it is the input; name another output file")
    return dst


def check_named(out: str | os.PathLike) -> str | os.PathLike:
    """Refuse an empty output path: ``Path("")`` is the current folder, and ``-o "$OUT"`` with
    ``OUT`` unset would write (and clear) there."""
    if os.fspath(out) == "":
        raise ValueError("the output path is empty (an unset shell variable?); name the output folder, "
                         "or . for the current one")
    return out


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` or its nearest ancestor that exists (a dangling link counts: it stops ``mkdir``
    too); a relative path that does not exist ends at the current folder."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("."))


def file_in_the_way(folder: str | os.PathLike) -> Path | None:
    """The nearest existing ancestor of ``folder`` (itself included) when it is not a folder:
    what stops ``mkdir`` with a bare "File exists" or "Not a directory"."""
    here = nearest_existing(folder)
    return None if here.is_dir() else here


def missing(path: str | os.PathLike) -> str:
    """Why nothing is at ``path``, in the words every tool uses: "a symbolic link loop (it leads
    back to itself through X)", "a link to X, which does not exist", or "no such file or folder"."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"a symbolic link loop (it leads back to itself through {os.readlink(path)})"
        return f"a link to {os.readlink(path)}, which does not exist"
    return "no such file or folder"


def check_output_folder(out: str | os.PathLike, owns: Callable[[str], bool],
                        inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check a folder a command writes several files into, before any work: it may not be an
    existing file, and no input may lie in it under a name the command writes or clears on a
    rerun (``owns(name)``). Raises ValueError with what to do instead."""
    out = Path(check_named(out))
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out} is an existing file; -o names the folder the files are written into")
    blocked = file_in_the_way(out)
    if blocked is not None and blocked.is_symlink() and not blocked.exists():  # a dangling link, not "a file"
        raise ValueError(f"cannot make the output folder {out}: {blocked} is {missing(blocked)}")
    if blocked is not None:
        raise ValueError(f"cannot make the output folder {out}: {blocked} is a file")
    for src in map(Path, inputs):
        if owns(src.name) and src.resolve().parent == out.resolve():
            raise ValueError(f"refusing to write into {out}: the input {src} has a name this command "
                             f"writes there; choose another output folder")
    return out


def cannot_write_into(folder: str | os.PathLike, exc: OSError) -> OSError:
    """``exc``, met creating a file of the tool's own in ``folder`` (a lock), said of the folder
    rather than of a file the user never made: "OUT: cannot write into this folder (Permission
    denied)", and on a read-only mount "OUT: cannot write into this folder (Read-only file system:
    the file system holding it is mounted read-only)". The same errno, so the same class."""
    why = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        why += ": the file system holding it is mounted read-only"
    return OSError(exc.errno, f"{folder}: cannot write into this folder ({why})")


def _open_theirs(folder: Path, path: Path, refused: PermissionError) -> int:
    """The lock file ``path``, which this user may not write, opened to read: another user's, held
    now or left by a killed run. Without one, the folder is read-only: said so, not "[Errno 13]
    ...: '.audioae.lock'", a file the user never made."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise cannot_write_into(folder, refused) from None
    except OSError as exc:
        raise PermissionError(exc.errno, f"{path}: cannot open this lock file ({exc.strerror}); delete it if no "
                                         f"audioae run is writing into the folder") from None


class FolderHeld(RuntimeError):
    """Another process holds the folder (:func:`hold_folder`)."""


def _lock_pid(fd: int) -> str:
    """The pid a held lock file holds (:func:`hold_folder` writes it), "" when it is unreadable."""
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return pid if pid.isdigit() else ""


def holder_of(folder: Path, lock_name: str) -> str | None:
    """The pid (as text, "" when unreadable) of the process holding ``folder`` by
    :func:`hold_folder`, None when no process holds it (or no lock can be asked here)."""
    try:
        import fcntl

        fd = os.open(folder / lock_name, os.O_RDONLY)
    except (ImportError, OSError):  # no lock file: nobody holds the folder
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while an exclusive hold lasts
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _lock_pid(fd)
    except OSError:  # a file system without flock
        return None
    finally:
        os.close(fd)


def _flock_exclusive(fcntl, fd: int, tries: int = 3) -> None:
    """``LOCK_EX | LOCK_NB`` on ``fd``, tried a few times 10 ms apart: :func:`holder_of`'s shared
    probe of a free folder holds the lock for an instant, and a job starting then was refused."""
    for left in range(tries - 1, -1, -1):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not left:
                raise
            time.sleep(0.01)


@contextmanager
def hold_folder(folder: Path, lock_name: str, holder: str, error: type[FolderHeld] = FolderHeld) -> Iterator[None]:
    """Hold ``folder`` exclusively while the block runs: an ``flock`` on ``folder/lock_name``,
    which holds this process's pid. Another hold, by any process, raises ``error`` at once,
    naming ``holder`` (what holds it, e.g. "another decomposition") and its pid. The system
    releases the lock when its holder exits or is killed, so no stale lock is ever left (a killed
    holder's file may stay, with a dead pid in it, until the next hold, by any user who may write
    into the folder); on leaving, the file is removed. Without ``fcntl`` (not POSIX) or on a file system without ``flock`` (some network
    mounts; a warning) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = folder / lock_name
    while True:
        theirs = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder's last holder made it and, leaving it empty, removed it
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except PermissionError as exc:
            fd, theirs = _open_theirs(folder, path, exc), True
        except OSError as exc:
            if exc.errno == errno.EROFS:  # a read-only mount: no lock can be made, nor any output
                raise cannot_write_into(folder, exc) from None
            raise
        try:
            _flock_exclusive(fcntl, fd)
        except BlockingIOError:
            pid = _lock_pid(fd)
            os.close(fd)
            pid = f" (pid {pid})" if pid else ""
            raise error(f"{folder} is being written by {holder}{pid}: one run at a time per folder; wait for it "
                        f"to finish, or choose another output folder") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            log.warning("%s: this file system takes no lock (%s): %s into the folder at the same time would "
                        "not be stopped", folder, exc.strerror, holder)
            with contextlib.suppress(OSError):
                path.unlink()
            yield
            return
        except BaseException:
            os.close(fd)
            raise
        # The last holder removes the file as it leaves: a lock taken on the file it removed holds
        # nothing (a third process would make a new file and lock that). Lock the one there now.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current and theirs:
            # Another user's file, left by a killed run (flock needs no write access): held now, it
            # goes as a leaving holder's does, and the next turn makes this process's own.
            try:
                path.unlink()
            except OSError as exc:
                os.close(fd)
                raise PermissionError(exc.errno, f"{folder}: cannot replace {lock_name}, left by another user's run "
                                                 f"that was killed ({exc.strerror}); delete it") from None
            current = False
        if current:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: a bare "[Errno 28] No space left on device" named nothing
            raise OSError(exc.errno, f"{folder}: cannot write {lock_name}, which holds the folder for this run "
                                     f"({exc.strerror})") from None
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still held: no one can have locked this file meanwhile
        os.close(fd)
