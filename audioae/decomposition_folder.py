"""The folder a decomposition is written into: one layout for ``audioae decompose`` (computed
here) and ``audioae client decompose`` (computed by a server).

- ``01_<label>.wav``, ``02_<label>.wav``, ...: one float32 WAV per component, strongest first,
  numbered to the count's width (``001_`` ... ``229_`` for 229), so that they list in order;
- ``residual.wav``: the rest; the component files plus the residual add up to the input;
- ``activations.npy``: ``[U, N]`` latent activations over frames (the mean over channels);
- ``summary.json``: what :func:`audioae.decompose.summarize` describes, plus the file names;
- ``decomposition.png``: the local command's figure, with ``--plot``.

A decomposition is written whole into ``.audioae-new/`` inside the folder first, then moved in
(:func:`write_folder`): a run killed at any point leaves the earlier decomposition or the new one,
and the next run finishes or undoes what a killed one left. One run at a time per folder: a run
holds the folder (:func:`claim`, an exclusive ``flock`` on ``.audioae-lock`` inside it) from its
checks to its last move, and a second one is refused at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .audio import write_audio
from .fileio import FolderHeld, atomic_write_bytes, check_output_folder, hold_folder

log = logging.getLogger(__name__)

COMPONENT_FILE = re.compile(r"\d{2,}_[A-Za-z0-9_]*\.wav")  # 01_<label>.wav (001_ past 99), as component_file_name writes
OTHER_FILES = ("residual.wav", "summary.json", "activations.npy", "decomposition.png")
# What older clients wrote (component_00_<label>.wav, decomposition.json): cleared
# too, so that a rerun into a folder an older client wrote still adds up to its input.
_OLD_CLIENT_COMPONENT = re.compile(r"component_\d{2,}_[\w-]*\.wav")
_OLD_CLIENT_FILES = ("decomposition.json",)
MAX_SPANS = 50  # active_seconds spans per component (summary.json size; the wire's Component.active says so too)
# Bands or clusters when none are asked for, by the CLI, the server, the library and the client
# alike (audioae.decompose.DEFAULT_GROUPS is this one: here the client, which loads no torch, has it too).
DEFAULT_GROUPS = 8
# What a decomposition keeps when none is asked for, by `audioae decompose`, `audioae client
# decompose` and Client.decompose alike: the 16 strongest components, units clustered. The RPC's
# own (every unit, ungrouped) runs to hundreds of waveforms: over the server's 1 GiB for a minute
# of 16 kHz mono on the shipped decomposer (320 units).
DEFAULT_TOP_K = 16
DEFAULT_GROUP = "cluster"
# Hidden folders inside the output folder while a decomposition is written (write_folder): the new
# one as it is written, and the earlier one's files while they move aside (".partial" until all are).
STAGE, ASIDE, ASIDE_PARTIAL = ".audioae-new", ".audioae-old", ".audioae-old.partial"
# Inside the output folder while a run holds it (claim): flock'd, and it holds the run's pid.
LOCK = ".audioae-lock"


class FolderBusy(FolderHeld):
    """Another run holds the output folder (:func:`claim`)."""


def writes(name: str) -> bool:
    """Whether a decomposition may write or clear a file of this name in its folder; a rerun
    removes the earlier decomposition's files of these names (those its summary.json lists)
    first, so that no component of an earlier, larger decomposition is left to break the sum.
    Any other file in the folder is left alone."""
    return (name in OTHER_FILES or name in _OLD_CLIENT_FILES or bool(COMPONENT_FILE.fullmatch(name))
            or bool(_OLD_CLIENT_COMPONENT.fullmatch(name)))


def check_folder(out: str | os.PathLike, inputs=()) -> Path:
    """The folder a decomposition may be written into, checked before any work (:func:`claim`'s
    checks, the folder held only while they run): besides
    :func:`audioae.fileio.check_output_folder`'s checks, a folder holding files of the names a
    decomposition writes (``01_intro.wav``, ``residual.wav``, ...) must be a decomposition's own
    (its ``summary.json``), since a rerun replaces those names; someone's ``03_take.wav`` in any
    other folder is refused, not deleted. What a killed run left half-moved is first finished or
    undone (:func:`recover`). Raises :class:`FolderBusy` while another run holds the folder."""
    with claim(out, inputs) as held:
        return held.path


class Claim:
    """An output folder this process holds (:func:`claim`): pass it where a folder is asked for
    (:func:`write_folder`, :func:`claim`) to write under the same hold."""

    def __init__(self, path: Path, listed: set[str] | None):
        self.path = path
        # The files of the decomposition in ``path`` (:func:`_listed`), read once under the hold:
        # no other run writes the folder while it lasts. None: no summary.json lists them.
        self.listed = listed

    def __repr__(self) -> str:
        return f"Claim({str(self.path)!r})"


@contextlib.contextmanager
def claim(out: str | os.PathLike | Claim, inputs=(), *, residual: bool = False,
          figure: bool = False) -> Iterator[Claim]:
    """Hold ``out`` for one decomposition, from its checks to its last move: the checks of
    :func:`check_folder` (before the folder is made), then an exclusive lock on the folder, then
    :func:`recover` and the checks for someone else's files, all under the lock: every file of a
    decomposition's names where no decomposition is, and the fixed names this one will write
    (``residual``: ``residual.wav``; ``figure``: ``decomposition.png``) where the earlier
    decomposition did not write them, before the work instead of after minutes of computing
    (:func:`_swap_in` refuses the component names, known only then). A second hold on
    the folder, by any process, raises :class:`FolderBusy` at once, naming the holder's pid: two
    runs would otherwise delete each other's ``.audioae-new`` or interleave their moves.

    The lock is ``flock`` on ``out/.audioae-lock``, which the system releases when the holder
    exits or is killed, so no stale lock is ever left (the file of a killed run may stay, with a
    dead pid in it, until the next run). On leaving, the file is removed, and so is ``out`` (and
    any folder made for it) when it was made here and nothing was written into it. ``out`` a
    :class:`Claim` already held: that hold, as it is. Without ``fcntl`` (not POSIX) there is no
    lock."""
    if isinstance(out, Claim):
        yield out
        return
    out = check_output_folder(out, writes, inputs)
    made = _make_folders(out)
    try:
        with hold_folder(out, LOCK, "another decomposition", FolderBusy):
            recover(out)
            earlier = _read_summary(out)  # once for both checks and the swap (Claim.listed)
            _refuse_theirs(out, earlier)
            listed = _listed(earlier)
            _refuse_theirs_early(out, listed, residual, figure)
            yield Claim(out, listed)
    finally:
        for folder in made:  # deepest first; one someone has written into meanwhile stays
            with contextlib.suppress(OSError):
                folder.rmdir()


def _make_folders(out: Path) -> list[Path]:
    """Make ``out`` and any missing parents; the folders made, deepest first."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    return missing


def _refuse_theirs(out: Path, earlier: object) -> None:
    if _is_decomposition(out, earlier):
        return
    theirs = sorted(f.name for f in out.iterdir() if writes(f.name) and f.is_file())
    if theirs:
        shown = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        raise ValueError(f"refusing to write into {out}: it holds {shown}, names a decomposition writes and "
                         f"replaces, but no summary.json of one (someone else's files, or what a run from "
                         f"before 2026-12-06 left when it was killed); move them away or delete them, or "
                         f"choose an empty or new folder")


def _read_summary(out: Path) -> object:
    """``out/summary.json`` parsed (any JSON value), or None where there is none or it is not JSON."""
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _is_decomposition(out: Path, summary: object) -> bool:
    """Whether ``out`` holds a summary this module wrote (``summary``: its summary.json, as
    :func:`_read_summary` read it), or the older client's decomposition.json."""
    if (out / "decomposition.json").is_file():
        return True
    return isinstance(summary, dict) and "components" in summary and "residual_file" in summary


def component_entry(index: int, label: str, units: list[int], energy_share: float, dominant_hz: float,
                    active_fraction: float, active_seconds: list[list[float]], *, active_spans: int | None = None) -> dict:
    """One component in ``summary.json``. ``active_spans``: how many spans it is active in, which
    is more than ``len(active_seconds)`` where the shortest gaps were bridged to keep at most
    MAX_SPANS; unknown (None) from a server that sent MAX_SPANS spans, whose answer has no count."""
    if active_spans is None and len(active_seconds) < MAX_SPANS:
        active_spans = len(active_seconds)
    return {"index": index, "label": label, "units": units, "energy_share": energy_share,
            "dominant_hz": dominant_hz, "active_fraction": active_fraction, "active_seconds": active_seconds,
            "active_spans": active_spans}


def summary(*, sample_rate: int, channels: int, samples: int, group: str, fit_steps: int, frame_rate: float,
            error_db: float | None, residual_share: float | None, components: list[dict], groups: int | None = None) -> dict:
    """``summary.json`` before the file names: the same keys whether the decomposition was
    computed here (:func:`audioae.decompose.summarize`) or by a server (the client's).
    ``groups``: the bands or clusters asked for (None: group ``none``, or not known); fewer come
    where fewer are distinct, and :func:`describe` says so. ``residual_share``: None for a silent
    input, which has no energy to share (``error_db`` None: the sum is exact)."""
    return {
        "sample_rate": sample_rate,
        "channels": channels,
        "samples": samples,
        "seconds": round(samples / max(sample_rate, 1), 4),
        "group": group,
        "groups": groups,
        "fit_steps": fit_steps,
        "frame_rate": frame_rate,
        "error_db": error_db,
        "residual_energy_share": residual_share,
        "components": components,
    }


def component_file_name(index: int, label: str, count: int) -> str:
    """``01_cluster_1_219_Hz_1_unit.wav`` for component ``index`` 0 of ``count``: numbered as people
    count, zero-padded to the width of ``count`` (at least 2 digits), so that a listing sorted by
    name is the ranking: ``001_`` .. ``229_`` of 229 (``09_``, ``100_``, ``10_`` was the listing
    of ``01_`` .. ``229_``)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")[:80]  # labels are short; names stay < 255 bytes
    return f"{index + 1:0{max(2, len(str(count)))}d}_{slug}.wav"


def write_folder(out: str | os.PathLike | Claim, summary: dict, activations: np.ndarray,
                 components: np.ndarray | None, residual: np.ndarray | None, sample_rate: int,
                 figure: Callable[[Path], object] | None = None) -> list[Path]:
    """Write a decomposition into ``out``: ``activations [U, N]``, and when given, ``components
    [K, C, T]`` and ``residual [C, T]`` at ``sample_rate``, ``figure(path)`` (which draws
    ``decomposition.png`` at ``path``) and ``summary`` (each entry's ``file``, the summary's
    ``residual_file`` and ``figure`` are set here). Returns the files, ``summary.json`` last.

    An earlier decomposition in ``out`` (those names only; other files stay) is replaced only once
    the new one is complete: everything is written into ``out/.audioae-new`` first, then the
    earlier files move into ``.audioae-old.partial`` (summary.json first), which is renamed
    ``.audioae-old``, then the new files move in (summary.json last) and the old ones are deleted.
    A run killed while writing leaves the earlier result untouched; one killed while moving
    leaves a state :func:`recover` undoes (before ``.audioae-old`` exists) or finishes (after).
    Both ways ``summary.json`` in ``out`` is a complete decomposition's.

    All of it under the folder's hold (:func:`claim`): ``out`` a :class:`Claim` this process
    holds, or a folder, held here for the write (:class:`FolderBusy` if another run holds it)."""
    with claim(out) as held:
        out = held.path
        stage = out / STAGE
        stage.mkdir()
        try:
            names = _write_files(stage, summary, activations, components, residual, sample_rate, figure)
            _swap_in(out, stage, held.listed)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped us matters more than this one
                recover(out)
                held.listed = _listed(_read_summary(out))  # recover may have finished the swap
            raise
        held.listed = _listed(summary)  # the folder's decomposition is now this one
        return [out / name for name in names]


def _write_files(folder: Path, summary: dict, activations: np.ndarray, components: np.ndarray | None,
                 residual: np.ndarray | None, sample_rate: int, figure: Callable[[Path], object] | None) -> list[str]:
    """The files of one decomposition into an empty ``folder``, ``summary.json`` last."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(activations, np.float32))
    atomic_write_bytes(folder / "activations.npy", buf.getvalue())
    names = ["activations.npy"]
    if components is None or residual is None:
        summary["residual_file"] = None
    else:
        for comp, entry in zip(components, summary["components"], strict=True):
            entry["file"] = component_file_name(entry["index"], entry["label"], len(summary["components"]))
            write_audio(folder / entry["file"], comp, sample_rate, subtype="FLOAT")  # float: the files sum to the input
            names.append(entry["file"])
        write_audio(folder / "residual.wav", residual, sample_rate, subtype="FLOAT")
        summary["residual_file"] = "residual.wav"
        names.append("residual.wav")
    if figure is not None:
        figure(folder / "decomposition.png")
        summary["figure"] = "decomposition.png"
        names.append("decomposition.png")
    atomic_write_bytes(folder / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return [*names, "summary.json"]


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)  # one place for every move, so that a test can stop a run between two


def _ours(folder: Path, listed: set[str] | None = None) -> list[Path]:
    """The files of a decomposition's names in ``folder`` (``listed``: only those), ``summary.json`` first."""
    return sorted((f for f in folder.iterdir() if writes(f.name) and f.is_file() and (listed is None or f.name in listed)),
                  key=lambda f: f.name != "summary.json")


def _listed(summary: object) -> set[str] | None:
    """The files a decomposition wrote, as its ``summary.json`` (``summary``, as :func:`_read_summary`
    read it) lists them; None where there is no such summary (an older client's folder): every
    file of a decomposition's names then. Entries of a hand-edited summary that name no file (a
    list, a string where an entry belongs) name none: taken for "every file", they deleted a
    user's 03_take.wav."""
    if not isinstance(summary, dict) or "components" not in summary:
        return None
    components = summary["components"] if isinstance(summary["components"], list) else []
    # a decomposition saved without audio (client --no-audio) lists components but no files
    named = [entry.get("file") for entry in components if isinstance(entry, dict)]
    named += [summary.get(k) for k in ("residual_file", "figure")]
    return {n for n in named if isinstance(n, str)} | {"summary.json", "activations.npy"}


def _not_ours(names: list[str], out: Path) -> ValueError:
    """The refusal to replace ``names`` in ``out``, files the earlier decomposition did not write."""
    them = "them" if len(names) > 1 else "it"
    return ValueError(f"refusing to replace {', '.join(names)} in {out}: the earlier decomposition there did not "
                      f"write {them}; move {them} away, or choose another folder")


def _refuse_theirs_early(out: Path, listed: set[str] | None, residual: bool, figure: bool) -> None:
    """:func:`claim`'s refusal of the fixed names this decomposition will write (``residual.wav``,
    ``decomposition.png``) where they hold files the earlier decomposition (its files: ``listed``)
    did not write."""
    if listed is None:  # no decomposition here: _refuse_theirs has checked every such name
        return
    names = [n for n, wanted in (("residual.wav", residual), ("decomposition.png", figure)) if wanted]
    theirs = [n for n in names if os.path.lexists(out / n) and n not in listed]
    if theirs:
        raise _not_ours(theirs, out)


def _swap_in(out: Path, stage: Path, listed: set[str] | None) -> None:
    # Only what the earlier decomposition wrote (``listed``) is replaced: someone's 2024_take.wav
    # or decomposition.png beside it has a decomposition's name but is not one of its files.
    earlier = _ours(out, listed)
    theirs = sorted({f.name for f in _ours(stage)} & set(os.listdir(out)) - {f.name for f in earlier})
    if theirs:
        raise _not_ours(theirs, out)
    partial, aside = out / ASIDE_PARTIAL, out / ASIDE
    partial.mkdir()
    for f in earlier:  # summary.json first: the folder then no longer claims a complete result
        _move(f, partial / f.name)
    _move(partial, aside)  # from here a killed run is finished, not undone: the new result is complete
    _move_in(stage, out)
    _remove(aside)
    _remove(stage)


def _move_in(folder: Path, out: Path) -> None:
    """Move a decomposition's files from ``folder`` (the new one, or the earlier one put back) into ``out``."""
    for f in reversed(_ours(folder)):  # summary.json last: its presence means the rest is there
        _move(f, out / f.name)


def _remove(folder: Path) -> None:
    """Delete one of this module's hidden folders: the files of its names and the temporary files
    of atomic writes; anything else (nothing this module writes) stops it, named."""
    for f in folder.iterdir():
        if f.is_file() and (writes(f.name) or (f.name.startswith(".") and f.name.endswith(".part"))):
            f.unlink()
    try:
        folder.rmdir()
    except OSError:
        raise ValueError(f"{folder} holds files a decomposition does not write ({', '.join(sorted(os.listdir(folder))[:5])}); "
                         f"move them out of it, then run again") from None


def recover(out: str | os.PathLike) -> None:
    """Finish or undo what a run killed inside :func:`write_folder` left in ``out``: the earlier
    decomposition's files half moved aside go back; a new one wholly written and partly moved in
    is moved in; an unfinished new one is deleted. Only under the folder's hold (:func:`claim`
    runs it): what another run is writing looks just like what a killed one left."""
    out = Path(out)
    partial, aside, stage = out / ASIDE_PARTIAL, out / ASIDE, out / STAGE
    if partial.is_dir():
        log.warning("%s: putting back the earlier decomposition a killed run had begun to replace", out)
        _move_in(partial, out)
        _remove(partial)
    if aside.is_dir():
        log.warning("%s: finishing the decomposition a killed run had begun to move in", out)
        if stage.is_dir():
            _move_in(stage, out)
        _remove(aside)
    if stage.is_dir():
        _remove(stage)


def fewer_groups(summary: dict) -> str | None:
    """Why a decomposition has fewer bands or clusters than were asked for (``summary["groups"]``),
    or None when it has as many, or ``top`` kept fewer, or the summary does not say (an older one)."""
    asked, made, top = summary.get("groups"), len(summary["components"]), summary.get("top")
    if not asked or made >= asked or (top is not None and made >= top):
        return None
    if "residual_energy_share" in summary and summary["residual_energy_share"] is None:
        return f"none of the {asked} {summary['group']}s asked (--groups): a silent input has nothing to decompose"
    if summary["group"] == "cluster":
        why = "the others were pieces of the same sounds, merged, or had no active unit"
    elif summary["group"] == "band":
        why = "the others hold no energy, or would be narrower than one of the model's frequency bins"
    else:
        return None
    return f"{made} of the {asked} {summary['group']}s asked (--groups): {why}"


def hz_text(hz: float) -> str:
    """A frequency in whole Hz as labels and the table print it, rounded as ``summary.json``
    keeps it (to 0.1 Hz) and then half up: the label and the table read one figure (62.5 Hz was
    ``unit 254 (~63 Hz)`` beside a dominant ``62 Hz``, the one rounded from 62.50x, the other
    from 62.5 half to even)."""
    return f"{math.floor(round(float(hz), 1) + 0.5):d}"


def residual_text(share: float | None) -> str:
    """The residual's share for people: ``12.3% of the energy``, or ``silent input`` (``None``:
    an input without energy has no shares; 0.0% read as if the components held it all)."""
    return "silent input" if share is None or not math.isfinite(share) else f"{100 * share:.1f}% of the energy"


def describe(summary: dict, out: str | os.PathLike) -> list[str]:
    """The lines both commands print: a headline, a header, then one line per component: its
    energy share, dominant frequency, share of frames active, number of active spans, and the
    first and last active time (gaps in between are in summary.json's ``active_seconds``)."""
    error = "exact" if summary["error_db"] is None else f"{summary['error_db']:.0f} dB"  # None: a silent input
    n = len(summary["components"])
    lines = [f"{n} component{'' if n == 1 else 's'} + residual ({residual_text(summary['residual_energy_share'])}), "
             f"sum-to-input error {error} -> {out}"]
    note = fewer_groups(summary)
    if note:
        lines.append(f"  ({note})")
    if summary["components"]:
        lines.append(f"  {'#':>3}  {'energy':>7}  {'dominant':>10}  {'active':>6}  {'spans':>5}  {'first-last':<15} label")
    for entry in summary["components"]:
        spans = entry["active_seconds"]
        count = entry.get("active_spans", len(spans))  # absent from an older summary.json
        when = f"{spans[0][0]:.2f}-{spans[-1][1]:.2f} s" if spans else "-"
        lines.append(f"  {entry['index'] + 1:>3}  {100 * entry['energy_share']:6.2f}%  {hz_text(entry['dominant_hz']):>7} Hz  "
                     f"{100 * entry['active_fraction']:5.0f}%  {len(spans) if count is None else count:>4}"
                     f"{'+' if count is None else ' '}  {when:<15} {entry['label']}")
    return lines
