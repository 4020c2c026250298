"""The folder a decomposition is written into: one layout for ``audioae decompose`` (computed
here) and ``audioae client decompose`` (computed by a server).

- ``01_<label>.wav``, ``02_<label>.wav``, ...: one float32 WAV per component, strongest first;
- ``residual.wav``: the rest; the component files plus the residual add up to the input;
- ``activations.npy``: ``[U, N]`` latent activations over frames;
- ``summary.json``: what :func:`audioae.decompose.summarize` describes, plus the file names;
- ``decomposition.png``: the local command's figure, with ``--plot``.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np

from .audio import write_audio
from .fileio import atomic_write_bytes, check_output_folder

COMPONENT_FILE = re.compile(r"\d{2,}_[A-Za-z0-9_]*\.wav")  # 01_<label>.wav, as component_file_name writes
OTHER_FILES = ("residual.wav", "summary.json", "activations.npy", "decomposition.png")
# What the client wrote until 2026-12-06 (component_00_<label>.wav, decomposition.json): cleared
# too, so that a rerun into a folder an older client wrote still adds up to its input.
_OLD_CLIENT_COMPONENT = re.compile(r"component_\d{2,}_[\w-]*\.wav")
_OLD_CLIENT_FILES = ("decomposition.json",)


def writes(name: str) -> bool:
    """Whether a decomposition writes or clears a file of this name in its folder; a rerun
    removes these first, so that no component of an earlier, larger decomposition is left to
    break the sum. Any other file in the folder is left alone."""
    return (name in OTHER_FILES or name in _OLD_CLIENT_FILES or bool(COMPONENT_FILE.fullmatch(name))
            or bool(_OLD_CLIENT_COMPONENT.fullmatch(name)))


def check_folder(out: str | os.PathLike, inputs=()) -> Path:
    """The folder a decomposition may be written into, checked before any work: besides
    :func:`audioae.fileio.check_output_folder`'s checks, a folder holding files of the names a
    decomposition writes (``01_intro.wav``, ``residual.wav``, ...) must be a decomposition's own
    (its ``summary.json``), since a rerun clears those names; someone's ``03_take.wav`` in any other
    folder is refused, not deleted."""
    out = check_output_folder(out, writes, inputs)
    if not out.is_dir() or _is_decomposition(out):
        return out
    theirs = sorted(f.name for f in out.iterdir() if writes(f.name) and f.is_file())
    if theirs:
        shown = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        raise ValueError(f"refusing to write into {out}: it holds {shown}, names a decomposition writes and "
                         f"replaces, but no summary.json of one, so they are not an earlier decomposition's; "
                         f"choose an empty or new folder")
    return out


def _is_decomposition(out: Path) -> bool:
    """Whether ``out`` holds a summary this module wrote (or the older client's decomposition.json)."""
    if (out / "decomposition.json").is_file():
        return True
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "components" in summary and "residual_file" in summary


def component_entry(index: int, label: str, units: list[int], energy_share: float, dominant_hz: float,
                    active_fraction: float, active_seconds: list[list[float]]) -> dict:
    """One component in ``summary.json``."""
    return {"index": index, "label": label, "units": units, "energy_share": energy_share,
            "dominant_hz": dominant_hz, "active_fraction": active_fraction, "active_seconds": active_seconds}


def summary(*, sample_rate: int, channels: int, samples: int, group: str, fit_steps: int, frame_rate: float,
            error_db: float | None, residual_share: float, components: list[dict]) -> dict:
    """``summary.json`` before the file names: the same keys whether the decomposition was
    computed here (:func:`audioae.decompose.summarize`) or by a server (the client's)."""
    return {
        "sample_rate": sample_rate,
        "channels": channels,
        "samples": samples,
        "seconds": round(samples / max(sample_rate, 1), 4),
        "group": group,
        "fit_steps": fit_steps,
        "frame_rate": frame_rate,
        "error_db": error_db,
        "residual_energy_share": residual_share,
        "components": components,
    }


def component_file_name(index: int, label: str) -> str:
    """``01_cluster_1_219_Hz_1_unit.wav`` for component ``index`` 0: numbered as people count."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")[:80]  # labels are short; names stay < 255 bytes
    return f"{index + 1:02d}_{slug}.wav"


def write_components(out: str | os.PathLike, summary: dict, activations: np.ndarray,
                     components: np.ndarray | None, residual: np.ndarray | None, sample_rate: int) -> list[Path]:
    """Clear an earlier decomposition's files from ``out``, then write ``activations [U, N]``
    and, when given, ``components [K, C, T]`` and ``residual [C, T]`` at ``sample_rate``. Sets
    each summary entry's ``file`` and the summary's ``residual_file``. ``summary.json`` is
    written last, by :func:`write_summary`, so that its presence means the rest is there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if writes(f.name) and f.is_file():
            f.unlink()
    buf = io.BytesIO()
    np.save(buf, np.asarray(activations, np.float32))
    written = [out / "activations.npy"]
    atomic_write_bytes(written[0], buf.getvalue())
    if components is None or residual is None:
        summary["residual_file"] = None
        return written
    for comp, entry in zip(components, summary["components"], strict=True):
        entry["file"] = component_file_name(entry["index"], entry["label"])
        write_audio(out / entry["file"], comp, sample_rate, subtype="FLOAT")  # float: the files sum to the input
        written.append(out / entry["file"])
    write_audio(out / "residual.wav", residual, sample_rate, subtype="FLOAT")
    summary["residual_file"] = "residual.wav"
    return [*written, out / "residual.wav"]


def write_summary(out: str | os.PathLike, summary: dict) -> Path:
    path = Path(out) / "summary.json"
    atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


def describe(summary: dict, out: str | os.PathLike) -> list[str]:
    """The lines both commands print: a headline, then one line per component."""
    error = "exact" if summary["error_db"] is None else f"{summary['error_db']:.0f} dB"  # None: a silent input
    lines = [f"{len(summary['components'])} components + residual "
             f"({100 * summary['residual_energy_share']:.1f}% of the energy), sum-to-input error {error} -> {out}"]
    for entry in summary["components"]:
        spans = entry["active_seconds"]
        when = f"{spans[0][0]:.2f}-{spans[-1][1]:.2f} s" if spans else "-"
        lines.append(f"  {entry['index'] + 1:>3}  {100 * entry['energy_share']:6.2f}%  {entry['dominant_hz']:7.0f} Hz  "
                     f"{when:<14} {entry['label']}")
    return lines
