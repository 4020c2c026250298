"""The folder search (:func:`walk_audio`) and the extension tables it and output names go by:
which extensions are audio this package reads, writes, or passes over."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Collection
from pathlib import Path

import soundfile as sf

from .checks import AudioError

log = logging.getLogger("audioae.audio")  # the name it had as one module

# Extension -> soundfile container: the audio a folder search takes and an output name may ask
# for, where this machine's libsndfile has the container (MP3 from libsndfile 1.1; the soundfile
# wheels bring 1.2). libsndfile keeps the length of an MP3 it wrote through a round trip (its LAME
# header); one it would cut short is refused (scan_coded).
_NAMED = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3", ".aif": "AIFF", ".aiff": "AIFF",
          ".au": "AU", ".caf": "CAF", ".w64": "W64", ".rf64": "RF64",
          # other names of those containers, so that a folder search takes them too
          ".wave": "WAV", ".bwf": "WAV", ".aifc": "AIFF", ".snd": "AU", ".oga": "OGG"}

CONTAINERS = {ext: fmt for ext, fmt in _NAMED.items() if fmt in sf.available_formats()}

# Ogg Opus (voice messages) is read by its contents; never written by name: Ogg's default is Vorbis.
READ_ONLY = (".opus",) if sf.check_format("OGG", "OPUS") else ()

AUDIO_EXTENSIONS = (*CONTAINERS, *READ_ONLY)  # what a folder search takes

def container_for(path: str | os.PathLike) -> str:
    """The soundfile container a path's extension names (:data:`CONTAINERS`: WAV, FLAC, OGG, MP3,
    AIFF, ...). Any other name is refused: a WAV written as ``out.m4a`` would be mislabelled."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise AudioError(f"{path}: audio is written as {', '.join(CONTAINERS)}; "
                         f"got {suffix or 'no extension'}")
    return CONTAINERS[suffix]

# Audio a folder search passes over (libsndfile reads none of it): counted, so a folder of M4As
# does not come back as "0 files" without a word on why.
OTHER_AUDIO = (*(ext for ext in (*_NAMED, ".opus") if ext not in AUDIO_EXTENSIONS),
               ".m4a", ".aac", ".wma", ".mp4", ".amr", ".3gp", ".webm")

def is_audio_name(path: str | os.PathLike) -> bool:
    """Whether ``path``'s extension names audio (one this package reads, or one it passes over):
    a name a report, a figure or an output folder must not take."""
    return Path(path).suffix.lower() in (*AUDIO_EXTENSIONS, *OTHER_AUDIO)

def not_a_file(path: str | os.PathLike) -> str:
    """What ``path`` is when it exists (through links) but is neither a regular file nor a folder:
    "a named pipe", "a device", "a socket"; "" otherwise (a broken link too: reading it says so)."""
    try:
        return _special_kind(os.stat(path).st_mode)
    except OSError:
        return ""

def _special_kind(mode: int) -> str:
    """:func:`not_a_file` of a file of this ``st_mode``."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return ""

def _entry_not_a_file(entry: os.DirEntry) -> str:
    """:func:`not_a_file` of a folder listing's entry, from what the listing told: no stat for a
    regular file that is no link (its type came with the listing), and a link's target was stat'ed
    (and kept) by the entry's is_dir."""
    try:
        if entry.is_file():
            return ""
        return _special_kind(entry.stat().st_mode)
    except OSError:  # a broken link, a link loop: reading it says so
        return ""

def _listed(top: str, unlisted: Callable[[OSError], None]) -> tuple[list[str], list[os.DirEntry]] | None:
    """``(folders, other entries)`` in ``top``, split as os.walk splits them (an entry whose kind
    cannot be told is no folder); None, after ``unlisted(exc)``, where ``top`` cannot be listed."""
    dirs, others = [], []
    try:
        with os.scandir(top) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    dirs.append(entry.name)
                else:
                    others.append(entry)
    except OSError as exc:
        unlisted(exc)
        return None
    try:  # listed, but searchable? (read without execute permission: every open in it fails)
        os.lstat(os.path.join(top, os.curdir))
    except PermissionError as exc:
        unlisted(PermissionError(exc.errno, f"{exc.strerror}: its entries cannot be opened", top))
        return None
    except OSError:  # gone meanwhile: the rest is looked at as it comes
        pass
    return dirs, others

def walk_audio(folder: str | os.PathLike,
               prune: Callable[[Path, Path, list[str], list[str]], bool] = lambda here, real, files, folders: False,
               searched_elsewhere: Collection[Path] = (),
               left_out: list[tuple[str, str]] | None = None) -> list[tuple[Path, str]]:
    """Every audio file under ``folder`` (:data:`AUDIO_EXTENSIONS`: WAV, FLAC, OGG, MP3, ...;
    recursive; hidden names skipped) with its path
    relative to ``folder`` (posix). Linked folders are followed (shared storage is often linked
    in), each real folder once, so a link loop ends: the real folders first, under their own
    names, each folder's files in name order, then the links whose targets were not searched;
    no folder reached through a link is searched where it lies in ``searched_elsewhere`` (the
    real paths of the job's other input folders), nor twice. Real folders go first so that ``a_latest -> z_2024``
    does not take z_2024's place: in plain name order its outputs would go under the link's
    name, and once the link moved on to z_2025, that folder would be skipped as searched already.
    ``prune(here, real, filenames, folders)`` returning True skips a folder and everything under
    it: ``real`` is ``here``'s real path, ``filenames`` and ``folders`` its listing's names (hidden
    ones too), so that the caller asks the file system nothing the walk knows. Other audio kinds are counted in one warning.
    ``left_out``: where each folder that cannot be listed and each audio name that is no regular
    file (a named pipe) is appended, as ``(path, why)``, for the caller to count (the folder tool
    fails a job that left any out).

    The one folder search: the folder tool and ``eval`` must see the same files, or a file
    denoised from a linked folder would have no reference to be scored against."""
    folder = Path(folder)
    found, skipped, seen, special = [], {}, set(), []

    def unlisted(exc: OSError) -> None:  # os.walk would pass over such a folder without a word
        log.warning("%s: cannot list this folder (%s); the files in it are left out", exc.filename,
                    exc.strerror or exc)
        if left_out is not None:
            left_out.append((os.fsdecode(exc.filename), f"cannot list this folder ({exc.strerror or exc})"))

    def searched(here: str, real: Path, via_link: bool) -> bool:
        """Whether the folder ``here`` (real path ``real``) is searched already, or, reached through
        a link, is searched as (part of) another input: one check for every folder, where until
        2026-12-07 a folder reached through two links was warned of as "a link loop?", and a
        link to a folder that holds another input searched that input twice (the job refused)."""
        if real in seen:
            if Path(os.path.realpath(os.path.dirname(here))).is_relative_to(real):
                log.warning("%s: skipped, its files were searched already under another name (a link loop?)", here)
            else:
                log.info("%s: not followed, it leads to %s, searched under another name", here, real)
            return True
        if via_link and any(real.is_relative_to(other) for other in searched_elsewhere):
            log.info("%s: not followed, it leads to %s, searched as part of another input", here, real)
            return True
        return False

    # os.walk(folder, followlinks=True) by hand, top down: its listing's entries tell a regular
    # file from a named pipe without a stat per file (os.walk keeps only their names).
    # (path, reached through a link); links to folders: once every real folder is searched
    pending: list[tuple[str, bool]] = [(os.fspath(folder), False)]
    links: list[str] = []
    while pending or links:
        dirpath, via_link = pending.pop() if pending else (links.pop(), True)
        real = Path(os.path.realpath(dirpath))
        if searched(dirpath, real, via_link):
            continue
        seen.add(real)  # before listing: a link to a folder that cannot be listed is not counted again
        listed = _listed(dirpath, unlisted)
        if listed is None:
            continue
        dirnames, entries = listed
        here = Path(dirpath)
        if prune(here, real, [e.name for e in entries], dirnames):
            continue
        subfolders = [os.path.join(dirpath, d) for d in sorted((d for d in dirnames if not d.startswith(".")),
                                                               reverse=True)]
        linked = [os.path.islink(d) for d in subfolders]  # one lstat each
        pending.extend((d, via_link) for d, is_link in zip(subfolders, linked, strict=True) if not is_link)
        # popped from the end: the first found first
        links[:0] = [d for d, is_link in zip(subfolders, linked, strict=True) if is_link]
        for entry in sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name):
            suffix = Path(entry.name).suffix.lower()
            if suffix in OTHER_AUDIO:
                skipped[suffix] = skipped.get(suffix, 0) + 1
            elif suffix in AUDIO_EXTENSIONS:  # a broken link too: reading it reports it
                if what := _entry_not_a_file(entry):
                    special.append((here / entry.name, what))
                    if left_out is not None:
                        left_out.append((str(here / entry.name), f"{what}, not a file"))
                    continue
                found.append((here / entry.name, (here / entry.name).relative_to(folder).as_posix()))
    if special:  # a named pipe's read waits for a writer: one hung the whole job
        log.warning("%s: passed over %d name(s) that are no regular file (e.g. %s: %s)", folder, len(special),
                    *special[0])
    if skipped:
        kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(skipped.items()))
        log.warning("%s: passed over %s file(s): libsndfile reads none of these; convert them (e.g. ffmpeg "
                    "-i in.m4a out.flac). The folder search takes %s", folder, kinds, "/".join(AUDIO_EXTENSIONS))
    return found
