"""Which files a folder job reads and where each one's output goes.

Folders are searched recursively for audio (WAV, FLAC, OGG, MP3, ...: what libsndfile here reads
and writes; not the outputs another run's manifest lists in the folder it wrote into); a file
named on the command line is taken as is. Each output keeps its
input's path relative to the folder it was found in (a file given directly goes to
``OUT/<name>``). The plan refuses, before any work starts, to overwrite an
input or to write two inputs to one output.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..audio import AUDIO_EXTENSIONS, is_audio_name, not_a_file, walk_audio
from ..fileio import check_named, check_output_folder, holder_of, missing, nearest_existing, temp_name
from .journal import JOURNAL_NAME, Journal
from .manifest import made_by_runs, read_manifest

log = logging.getLogger(__name__)

MANIFEST_NAME = "audioae-manifest.jsonl"
PART_SUFFIX = ".part"
LOCK_NAME = ".audioae.lock"  # held by a running job in its output folder (:func:`.job._run_in`)
CASE_PROBE_PREFIX = ".audioae-case-probe-"  # :func:`ignores_case`'s probe file


@dataclass(frozen=True)
class FileTask:
    """One input file and the output it becomes. Paths are absolute strings (they cross processes)."""

    input: str
    output: str
    rel: str  # the output's path relative to OUT, as shown to people
    # The input folder the file was found in, as given (absolute, links kept), "" for a file named
    # directly: with ``rel``, the path as the search found it, which a message may ask to rename.
    folder: str = ""


def part_path(output: str | os.PathLike) -> Path:
    """The temporary name an output is written under before it is renamed into place.

    Deterministic (``.<name>.part`` beside the output, shortened for a name near 255 bytes:
    :func:`~audioae.fileio.temp_name`), so a rerun finds and replaces what a
    killed run left behind. Hidden, and not an audio extension, so it is never taken as an input.
    """
    out = Path(output)
    return out.with_name(temp_name(out.name, PART_SUFFIX))


def _audio_in(folder: Path) -> list[Path]:
    """The audio files in ``folder`` and the folders under it."""
    return [p for p in folder.rglob("*") if is_audio_name(p) and p.is_file()]


def ignores_case(folder: Path) -> bool:
    """Whether names in ``folder`` (or, while it does not exist, its nearest existing parent) ignore
    case, as on the FAT and exFAT of SD cards and on macOS and Windows disks: ``Take.wav`` and
    ``take.wav`` are one file there. Asked of a name already there that changes with its case (its
    other case found, and not listed as a file of its own), else of a hidden probe file made and
    removed at once; False where neither can be asked."""
    here = nearest_existing(folder)
    if not here.is_dir():  # a file in the way: the plan refuses that folder anyway
        return False
    try:
        names = os.listdir(here)
    except OSError:
        names = []
    listed = set(names)
    for name in names:
        other = name.swapcase()
        # ASCII only: "straße".swapcase() is "STRASSE", another name, and vfat folds ASCII case alone
        if name.isascii() and other != name and other not in listed:
            return os.path.lexists(here / other)
    try:
        fd, probe = tempfile.mkstemp(prefix=CASE_PROBE_PREFIX, dir=here)
    except OSError:
        return False
    os.close(fd)
    try:
        return os.path.lexists(os.path.join(here, os.path.basename(probe).swapcase()))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _discover(folder: Path, out_dir: Path, recordings: set[str], fold: Callable[[Path], str] = str,
              elsewhere: Collection[Path] = (), left_out: list[tuple[str, str]] | None = None,
              ) -> list[tuple[Path, str]]:
    """Audio files under ``folder`` (audio.walk_audio: recursive, the real folders first and then
    the linked ones, each real folder once, none through a link into ``elsewhere``: the other
    input folders) with their relative paths,
    skipping OUT when it lies inside ``folder`` (a
    rerun would otherwise take its own outputs as inputs), and in a subfolder that holds
    another run's manifest, the outputs it lists (denoised copies, not recordings; the whole
    subfolder where its manifest cannot be read or lists none there, as for a folder moved
    since). Skipping such a subfolder whole would never again denoise a recording that sits in a
    folder once used as ``-o``. The audio files an OUT inside
    ``folder`` holds before any run (no manifest yet) are recordings: added to ``recordings``
    (as ``fold`` keys their real paths: :func:`plan_tasks`)."""
    made: set[str] = set()  # the outputs earlier runs' manifests list (real paths)

    resolved: dict[Path, Path] = {}  # each folder resolved once, not once per file in it (found_at)

    def prune(here: Path, real: Path, filenames: list[str], folders: list[str]) -> bool:
        resolved[here.absolute()] = real  # found_at's key, from the walk's own realpath
        if fold(real) == fold(out_dir):
            found = [] if MANIFEST_NAME in filenames else _audio_in(here)  # recordings, not earlier outputs
            if found:
                log.warning("%s: skipped, it is the output folder; the audio files already in it are not "
                            "denoised (denoise them into another folder)", here)
                recordings.update(fold(_real(f)) for f in found)
            return True
        journal = JOURNAL_NAME in folders  # the listing's word: no stat per folder
        if here != folder and (MANIFEST_NAME in filenames or LOCK_NAME in filenames or journal):
            if LOCK_NAME in filenames and holder_of(here, LOCK_NAME) is not None:
                # its outputs are being written now, before their manifest lines and markers say so
                log.warning("%s: skipped, an audioae denoise job is writing into it now; run again once it "
                            "has finished to denoise the recordings in it", here)
                return True
            if MANIFEST_NAME not in filenames and not journal:
                return False  # a lock file a killed job left, and nothing else: no outputs to leave out
            try:
                listed = {o for o in made_by_runs(read_manifest(here / MANIFEST_NAME)) if Path(o).is_relative_to(real)}
            except (OSError, UnicodeDecodeError):
                listed = set()
            # Outputs renamed into place by a job killed before their manifest lines: their markers say so.
            listed |= {str(found_at(Path(o))) for _, o, _ in Journal(here / JOURNAL_NAME).finished()}
            if not listed and MANIFEST_NAME not in filenames:
                return False  # a job killed on its first file: its markers name no finished output
            if not listed:
                log.warning("%s: skipped, it holds an earlier denoise run's outputs (%s) and its manifest names none "
                            "of them there; name it as an input to denoise it anyway", here, MANIFEST_NAME)
                return True
            log.info("%s: the %d output(s) its %s lists are left out, the other files in it searched", here,
                     len(listed), MANIFEST_NAME)
            made.update(listed)
        return False

    found = [(found_at(path, resolved), rel) for path, rel in walk_audio(folder, prune, elsewhere, left_out)]
    return [(src, rel) for src, rel in found if str(src) not in made] if made else found


def found_at(path: Path, resolved: dict[Path, Path] | None = None) -> Path:
    """An input's identity in the job (its manifest line, its in-flight marker): its real folder
    and its own name. A link to a file stays itself: resolved, a recording linked in beside
    itself or reached again through a linked folder was one input with two outputs, and the
    manifest, one line per input, recorded only one of them. For any other file this is its
    real path, as before; a broken link is named as the link it is. ``resolved``: folders already
    resolved (a folder walk's files share a few)."""
    parent = path.absolute().parent
    if resolved is None:
        return parent.resolve() / path.name
    if parent not in resolved:
        resolved[parent] = parent.resolve()
    return resolved[parent] / path.name


def names_one_file(a: Path, b: Path) -> bool:
    """Whether two names are one file: a link to the other, or a hard link (one inode); two
    dangling links, where they lead to one name."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return _real(a) == _real(b)


def _real(path: Path) -> Path:
    """The file ``path`` names, through every link (a link loop: itself; Path.resolve raises there)."""
    return Path(os.path.realpath(path))


def _existing_real(path: Path, folders: dict[Path, Path]) -> Path:
    """The file ``path`` names if something is there (through links: one lstat, and a realpath
    for a link or, once per folder in ``folders``, for the folder it is in), else ``path``.
    Path.exists then Path.resolve stat'ed each output twice, and resolve walked every folder above it."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):  # nothing there (or a name no file can have): nothing to overwrite
        return path
    return _real(path) if stat.S_ISLNK(st.st_mode) else found_at(path, folders)


def _unsearchable(path: Path) -> str:
    """Why ``path`` cannot be stat'ed for permission: the folder on its way this user may not
    search (enter), where one of them says so; else the system's words. The way through its
    links: a link into such a folder named the link's own folder, which this user may search."""
    whole = _real(path)  # through its links, as far as this user can follow them
    for here in (*reversed(whole.parents), whole):
        try:
            os.stat(here)
        except PermissionError:  # the folder it is in cannot be searched
            return f"Permission denied: this user may not search the folder {here.parent}"
        except OSError:
            break
    return "Permission denied"


_UNREACHABLE = -1  # :func:`_mode` of an input in a folder this user may not search


def _mode(item: str | os.PathLike) -> int:
    """An input's ``st_mode`` (through links), one stat: 0 where nothing is there (missing, a
    dangling link or a loop, a NUL in the name: :func:`plan_tasks` says which), :data:`_UNREACHABLE`
    where this user may not search a folder on its way."""
    try:
        return os.stat(item).st_mode
    except PermissionError:
        return _UNREACHABLE
    except (OSError, ValueError):
        return 0


def _check_output_folder(out: Path) -> None:
    """OUT is a folder: refuse an existing file, and a new name that looks like an audio file
    (``-o clean.wav`` would otherwise become a folder called ``clean.wav``)."""
    check_output_folder(out, owns=lambda name: False)  # inputs inside OUT: plan_tasks checks each output
    if not out.exists() and out.suffix.lower() in AUDIO_EXTENSIONS:
        raise ValueError(f"-o names an output folder, and {out} looks like a file name; to denoise one "
                         f"file give a folder, e.g. -o {out.parent / 'denoised'} (writes the file there under "
                         f"its own name)")


def plan_tasks(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
               left_out: list[tuple[str, str]] | None = None,
               duplicates: list[tuple[str, str, str]] | None = None) -> list[FileTask]:
    """Map every input file (folders searched recursively) to its output under ``out_dir``;
    ``left_out``: where the folder search appends what it could not take (``(path, why)``:
    :func:`~audioae.audio.walk_audio`); ``duplicates``: where a second name of a file planned
    already, which would have the same output (a link to it, a hard link: both named, or both
    found), is appended as ``(name, the first name, output)``: the file is denoised once.

    Raises FileNotFoundError for a missing input and ValueError when ``out_dir`` is a file or a
    new name with an audio extension, when an output would overwrite an input, when two
    inputs map to the same output, when overlapping inputs map one file to two outputs, or when
    the inputs hold no audio file at all.
    """
    if not inputs:
        raise ValueError("no inputs given")
    _check_output_folder(Path(check_named(out_dir)))
    out = Path(out_dir).resolve()
    # How paths compare where the outputs go: a disk that ignores case (an SD card's exFAT) makes
    # Take.wav and take.wav one file: two such inputs would both be "denoised" into one output,
    # and -o IN beside an input folder "in" would write the outputs over the inputs.
    case_blind = ignores_case(out)
    fold: Callable[[Path], str] = (lambda p: str(p).casefold()) if case_blind else str
    pairs: list[tuple[Path, str, str]] = []  # (input, rel, the folder it was found in)
    empty: list[Path] = []  # input folders without audio files
    recordings: set[str] = set()  # audio files in an OUT inside an input folder before any run (fold keys)
    # Each input stat'ed once, and each folder among them resolved once.
    given = [(Path(item), _mode(item)) for item in inputs]
    for p, mode in given:
        if mode == _UNREACHABLE:  # Path.is_dir raised it bare: "[Errno 13] Permission denied: 'in/a.wav'"
            raise ValueError(f"{p}: cannot be reached ({_unsearchable(p)}); give this user search (x) "
                             f"permission on that folder, or leave the input out")
    real = {p: p.resolve() for p, mode in given if stat.S_ISDIR(mode)}  # a link into one is not followed
    folders = list(real.values())
    for p, mode in given:
        if stat.S_ISDIR(mode):
            if fold(real[p]) == fold(out):
                raise ValueError(f"refusing to run: the output folder {out} is the input folder {p}; "
                                 f"outputs would overwrite inputs")
            found = _discover(p, out, recordings, fold, [f for f in folders if f != real[p]], left_out)
            if not found:
                empty.append(p)
            pairs.extend((src, rel, str(p.absolute())) for src, rel in found)
        elif stat.S_ISREG(mode):
            pairs.append((found_at(p), p.name, ""))
        elif what := not_a_file(p):  # reading a named pipe waits for a writer, a device's never ends
            raise ValueError(f"{p}: is {what}, not a file; denoise a recording saved to a file")
        else:
            raise FileNotFoundError(f"{p}: {missing(p)}")  # as a file found in a folder is told
    tasks, by_output, by_input = [], {}, {}
    second_names: set[Path] = set()
    # Names, and the files they are: found_at resolved each one's folder, so only a link differs
    # (an lstat per input, not a realpath's one per folder above it: thousands of inputs).
    input_set = {fold(src) for src, *_ in pairs} | {fold(_real(src)) for src, *_ in pairs if src.is_symlink()}
    out_folders: dict[Path, Path] = {}  # the output folders that exist, each resolved once
    for src, rel, folder in pairs:
        dst = out / rel
        if fold(dst) in input_set or fold(_existing_real(dst, out_folders)) in input_set:
            raise ValueError(f"refusing to run: the output {dst} would overwrite an input; "
                             f"choose an output folder outside the inputs")
        # A recording there would be skipped as this input's finished output, or replaced by --overwrite.
        if recordings and fold(_real(dst)) in recordings:
            raise ValueError(f"refusing to run: the output {dst} would overwrite a recording the output folder "
                             f"held before any run (it is inside the input folder, and is not denoised); "
                             f"choose another output folder")
        key = fold(dst)
        if key in by_output:
            first, first_dst = by_output[key]
            if src == first:
                continue  # the same name twice (e.g. a file and its folder)
            if names_one_file(first, src):  # another name of it: denoised once, the name reported
                # once per name (also one both found in its folder and named), with
                # the output as written (first_dst: on a disk that ignores case, not this name's casing)
                if duplicates is not None and src not in second_names:
                    second_names.add(src)
                    duplicates.append((str(src), str(first), str(first_dst)))
                continue
            if first_dst != dst:
                raise ValueError(f"two inputs map to outputs whose names differ only in case, {first_dst} and {dst} "
                                 f"(from {first} and {src}), and the disk of {out} ignores case (FAT, exFAT, macOS, "
                                 f"Windows): one output would replace the other. Denoise them into separate output "
                                 f"folders, or rename one")
            raise ValueError(f"two inputs map to the same output {dst}: {first} and {src}; "
                             f"denoise them into separate output folders")
        if src in by_input:  # one manifest line per input: the second output would go unrecorded
            raise ValueError(f"{src} is among the inputs twice, to become {by_input[src]} and {dst} (the inputs "
                             f"overlap: a folder, and a folder or file inside it); name it once, or denoise the "
                             f"overlapping inputs into separate output folders")
        by_output[key], by_input[src] = (src, dst), dst
        tasks.append(FileTask(str(src), str(dst), rel, folder))
    if not tasks:  # before the output folder is made: a typo'd or empty input folder is not a success
        raise ValueError(f"nothing to denoise: no {'/'.join(AUDIO_EXTENSIONS)} files in "
                         f"{', '.join(map(str, inputs))}")
    for p in empty:
        log.warning("%s: no %s files found", p, "/".join(AUDIO_EXTENSIONS))
    return tasks


class SourceState(NamedTuple):
    """What says an input is still the file that was opened: its size and modification time (not
    its inode, which some network and FUSE mounts do not keep stable between two stats)."""

    size: int
    mtime_ns: int


def source_state(path: str) -> SourceState | None:
    """The input at ``path`` as :class:`SourceState`, None when it cannot be stat'ed (its open says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return SourceState(st.st_size, st.st_mtime_ns)


COARSE_MTIME_NS = 2 * 10**9  # FAT keeps 2 s


def same_file(before: SourceState, now: SourceState) -> bool:
    """Whether ``now`` is still the file that was ``before``. A network mount may answer one stat
    from its cache, with the finer time the client set, and the next from the server, which keeps
    whole seconds (SFTP, and so sshfs; some cifs and NFS servers; FAT's 2 s): the same size with
    times within 2 s of each other, one of them whole seconds, is the same file. A rewrite of the
    same size within those 2 s goes unseen on such a mount, as one within its resolution always did."""
    if now == before:
        return True
    return (now.size == before.size and abs(now.mtime_ns - before.mtime_ns) < COARSE_MTIME_NS
            and 0 in (now.mtime_ns % 10**9, before.mtime_ns % 10**9))


def split_done(tasks: Sequence[FileTask], failed: Collection[str] = (),
               recorded: Mapping[str, tuple[int, int]] | None = None,
               ) -> tuple[list[FileTask], list[FileTask], list[FileTask]]:
    """``(todo, done, changed)``: an output that exists is complete (outputs only appear by an
    atomic rename), so a rerun skips it (``--overwrite`` has its own: :mod:`.overwrite`), unless the input's latest run
    failed (``failed``: an ``--overwrite`` whose input had gone bad left the earlier output in
    place, and that file must be tried again, not reported done).

    ``changed``: the done tasks whose input is no longer the file its output was made from: a
    recorder's numbering starts over, a new ZOOM0001.WAV replaces the old one, and the rerun keeps
    the old one's output. They are still skipped (outputs that exist are done); the job warns.
    An input is changed when it is not the file ``recorded`` holds for it by size and mtime
    (:func:`~.manifest.previous_inputs`; :func:`same_file`, as a file's own run checks it: a
    network mount's whole-second time of the same file is no change); without a record (an older manifest), when it
    was modified after its output was written, which a recorder whose FAT clock runs ahead of
    this machine's (local time taken as UTC) tripped on every rerun. One stat per output and per
    input of a done task."""
    recorded = recorded or {}
    todo, done, changed = [], [], []
    for t in tasks:
        out = None if t.input in failed else _stat_file(t.output)
        if out is None:
            todo.append(t)
            continue
        done.append(t)
        try:
            st = os.stat(t.input)
        except OSError:  # gone or unreadable: the file's own run says so
            continue
        then = recorded.get(t.input)
        if (then is not None and not same_file(SourceState(*then), SourceState(st.st_size, st.st_mtime_ns))) or \
                (then is None and st.st_mtime > out.st_mtime):
            changed.append(t)
    return todo, done, changed


def _stat_file(path: str) -> os.stat_result | None:
    """``path``'s stat if it is a regular file (through links), else None; as Path.is_file, a
    missing name, dangling link or link loop is None and any other error (permission) is raised."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return None
        raise
    except ValueError:  # e.g. a NUL in the name
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def remove_stale_parts(tasks: Sequence[FileTask]) -> int:
    """Delete the temporary files a killed run left for these outputs; returns how many."""
    n = 0
    for t in tasks:
        part = part_path(t.output)
        if part.exists():
            part.unlink()
            n += 1
    if n:
        log.info("removed %d unfinished .part file(s) from an earlier run", n)
    return n
