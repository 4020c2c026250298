"""``audioae eval``: score enhanced files against clean references, paired by relative path.

Per file and on average: SI-SDR, SI-SDR improvement over the noisy input (when a noisy folder is
given), wide-band PESQ and STOI (:mod:`audioae.metrics`). Metrics are computed on the mono
mixdown, the other files resampled to the clean file's rate; SI-SDR at that rate, PESQ at 16 kHz
(wide-band PESQ's rate: other rates are resampled, and the file's notes say so), STOI at its own
10 kHz (pystoi resamples). A metric that cannot score a pair (too short, a silent
reference) gives None, left out of the mean, and its reason goes into the file's notes. Files
present on one side only, and files that cannot be read, are reported rather than fatal. A pair
whose clean and enhanced files are both empty (0 samples: ``audioae denoise`` makes an empty output
of an empty recording) is not scored, and is a note, not an error; files
are decoded in a child process, so that one that crashes libsndfile (C) is reported too instead
of ending the evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import AudioError, AudioInfo, read_audio, resample, walk_audio
from .isolation import ProcessDied, Worker, answering_worker
from .metrics import SI_SDR_MIN_SECONDS, pesq_rate_note, score, si_sdr_improvement

log = logging.getLogger(__name__)

METRICS = ("si_sdr", "si_sdr_i", "pesq", "stoi")
HEADERS = {"si_sdr": "SI-SDR", "si_sdr_i": "SI-SDRi", "pesq": "PESQ", "stoi": "STOI"}
# the table's column heads: the unit, and which PESQ (wide-band, P.862.2); STOI is 0..1
COLUMNS = {"si_sdr": "SI-SDR dB", "si_sdr_i": "SI-SDRi dB", "pesq": "PESQ wb", "stoi": "STOI"}


def audio_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Relative path (posix) -> file, for every audio file under ``folder``: the folder tool's
    own search (audio.walk_audio), so eval pairs exactly the files a denoise run wrote."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return {rel: path for path, rel in walk_audio(folder)}


def _stem(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def _match(rel: str, files: dict[str, Path], by_stem: dict[str, list[str]]) -> list[str]:
    """``[rel]`` where ``files`` has the same relative path, else the paths with the same stem and
    another audio extension: none, one, or several (``y.flac`` and ``y.ogg`` for ``y.wav``), which
    the caller reports."""
    return [rel] if rel in files else by_stem.get(_stem(rel), [])


@dataclass
class Pairing:
    # (relative path, clean, enhanced, noisy or None)
    pairs: list[tuple[str, Path, Path, Path | None]] = field(default_factory=list)
    missing_enhanced: list[str] = field(default_factory=list)  # clean files without an enhanced one
    extra_enhanced: list[str] = field(default_factory=list)  # enhanced files without a clean one
    missing_noisy: list[str] = field(default_factory=list)
    # clean files that several enhanced or noisy files could stand for: "y.wav (enhanced: y.flac, y.ogg)"
    ambiguous: list[str] = field(default_factory=list)


def pair_folders(clean: str | os.PathLike, enhanced: str | os.PathLike,
                 noisy: str | os.PathLike | None = None) -> Pairing:
    """Pair files by relative path (an extension change, e.g. .wav -> .flac, still pairs). Three
    files instead of folders (``noisy`` optional) are one pair, named after the clean file."""
    given = [Path(p) for p in (clean, enhanced, noisy) if p is not None]
    if any(p.is_file() for p in given):
        absent = [str(p) for p in given if not p.exists()]
        if absent:  # a typo, not a folder among files: say "no such file"
            raise ValueError(f"{', '.join(absent)}: no such file")
        if not all(p.is_file() for p in given):
            missing = [str(p) for p in given if not p.is_file()]
            raise ValueError(f"give --clean, --enhanced and --noisy all as files or all as folders; "
                             f"not a file: {', '.join(missing)}")
        return Pairing(pairs=[(Path(clean).name, Path(clean), Path(enhanced), Path(noisy) if noisy else None)])
    c, e = audio_files(clean), audio_files(enhanced)
    n = audio_files(noisy) if noisy is not None else {}
    # Another extension stands in only for a file no clean file names exactly: with x.wav and
    # x.flac clean and only x.wav enhanced, x.flac was scored against x.wav, and its missing
    # output went unreported.
    # Two such (y.flac and y.ogg for y.wav) are reported, not one picked by the order of the walk.
    e_stem, n_stem = {}, {}
    for files, by_stem in ((e, e_stem), (n, n_stem)):
        for r in files:
            if r not in c:
                by_stem.setdefault(_stem(r), []).append(r)
    out, used = Pairing(), set()
    for rel, cpath in c.items():
        found = _match(rel, e, e_stem)
        if len(found) > 1:
            out.ambiguous.append(f"{rel} (enhanced: {', '.join(found)}): keep one")
            used.update(found)
            continue
        if not found or found[0] in used:
            out.missing_enhanced.append(rel)
            continue
        er = found[0]
        used.add(er)
        npath = None
        if noisy is not None:
            found = _match(rel, n, n_stem)
            if len(found) > 1:
                out.ambiguous.append(f"{rel} (noisy: {', '.join(found)}): keep one; scored without SI-SDRi")
            elif not found:
                out.missing_noisy.append(rel)
            else:
                npath = n[found[0]]
        out.pairs.append((rel, cpath, e[er], npath))
    out.extra_enhanced = [r for r in e if r not in used]
    return out


Reader = Callable[[Path], tuple[np.ndarray, int, AudioInfo]]  # read_audio's signature


class IsolatedReader:
    """``read_audio`` in a child process (:class:`audioae.isolation.Worker`): a file that kills
    the decoder costs its own row, not the evaluation. A file its process died on is read once
    more in a fresh one (the death may not have been the file's doing) before it is reported.
    ``read``: the function run there (module level, so the child can import it)."""

    def __init__(self, read: Reader = read_audio):
        self.read = read
        self.worker: Worker | None = None
        self.in_process = False  # no child process can start here: read as before, in this one

    def __call__(self, path: Path) -> tuple[np.ndarray, int, AudioInfo]:
        if self.in_process:
            return self.read(path)
        for _ in range(2):
            if self.worker is None:
                try:
                    self.worker = answering_worker()
                except ProcessDied as exc:  # not this file's doing: every file would be "crashed" on
                    log.warning("cannot start a process to decode the files in (%s); reading them in this one", exc)
                    self.in_process = True
                    return self.read(path)
            try:
                return self.worker.call(self.read, path)
            except ProcessDied as exc:
                died = exc
                self.close()
        raise AudioError(f"{path}: reading it killed the decoding process twice ({died}): the decoder crashes "
                         f"on this file; check it with ffprobe or sndfile-info")

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def _mono_at(path: Path, sr: int, length: int | None, channels: int, notes: list[str], label: str,
             read: Reader = read_audio) -> np.ndarray:
    """``path`` as mono float at ``sr``, cropped/padded to ``length`` (each change from the clean
    file's ``sr``, ``length`` and ``channels`` noted)."""
    wav, file_sr, info = read(path)  # [C, T]
    _note_levels(wav, label, notes)
    mono = wav.mean(0)
    if info.channels != channels:
        notes.append(f"{label} has {info.channels} channel(s), clean has {channels}"
                     + (": scored on the mono mixdown" if channels == 1 else ""))  # else said for clean
    if file_sr != sr:
        notes.append(f"{label} at {file_sr} Hz, resampled to {sr} Hz")
        mono = resample(mono, file_sr, sr).numpy()
    if length is not None and len(mono) != length:
        notes.append(f"{label} has {len(mono)} samples, clean has {length}: compared over the shorter")
    return mono.astype(np.float32)


FULL_SCALE = 1 - 2**-14  # within two 16-bit steps of 1 (a PCM file's +1 reads 32767/32768): full scale
# Samples in a row held at the file's own extreme: clipping holds it for runs; a peak-normalised
# tone or speech reaches it for a sample or two (a 50 Hz sine at 48 kHz, as 16-bit PCM: up to 2).
CLIPPED_RUN = 5


def _note_levels(wav: np.ndarray, label: str, notes: list[str]) -> None:
    """Note audio beyond full scale (a float file: saved as PCM or played it would clip) and audio
    clipped at it (runs of :data:`CLIPPED_RUN` samples held at the file's own extreme of one sign,
    at full scale): both scored silently before, though clipping is distortion every metric counts
    against the file."""
    peak = float(np.abs(wav).max()) if wav.size else 0.0  # [C, T]
    if peak > 1.0:
        over = int((np.abs(wav) > 1.0).sum())
        notes.append(f"{label} peaks at {peak:.2f} ({20 * math.log10(peak):+.1f} dBFS), beyond full scale: "
                     f"{over} sample(s) over 1.0 would clip as PCM or when played")
        return
    if peak < FULL_SCALE:
        return
    held = [wav == level for level in (wav.max(), wav.min()) if abs(level) >= FULL_SCALE]  # each [C, T]
    run = max(_longest_run(at) for at in held)  # per sign: +1, -1, +1 ... is no clipping
    if run >= CLIPPED_RUN:
        notes.append(f"{label} looks clipped: {sum(int(at.sum()) for at in held)} sample(s) at full scale, up to "
                     f"{run} in a row")


def _longest_run(flags: np.ndarray) -> int:
    """The most ``True`` in a row along the last axis of ``flags [C, T]``."""
    best = 0
    for row in flags:
        edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))  # +1 where a run starts, -1 after it
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        best = max(best, int((ends - starts).max()) if len(starts) else 0)
    return best


@contextlib.contextmanager
def _metric_warnings_as(notes: list[str]) -> Iterator[None]:
    """Why a metric could not score (logged by :mod:`audioae.metrics`) goes into this file's
    notes, printed beside its name, instead of an anonymous warning above the table."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger, handler = logging.getLogger("audioae.metrics"), Collect(logging.WARNING)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def score_pair(clean: Path, enhanced: Path, noisy: Path | None = None, read: Reader = read_audio) -> dict:
    """Metrics of one file: ``si_sdr``, ``pesq``, ``stoi`` (+ ``si_sdr_i`` with ``noisy``), ``notes``;
    ``noisy_error`` when the noisy file could not be read (its SI-SDRi is then NaN, the rest scored)."""
    notes: list[str] = []
    try:
        ref, sr, cinfo = read(clean)
    except AudioError as exc:
        if exc.empty and _is_empty(enhanced, read):  # denoise makes an empty output of an empty recording
            return {**{m: math.nan for m in ("si_sdr", "pesq", "stoi")},
                    **({"si_sdr_i": math.nan} if noisy is not None else {}), "seconds": 0.0, "empty": True,
                    "notes": ["clean and enhanced are both empty (0 samples): nothing to score"]}
        raise
    _note_levels(ref, "clean", notes)
    ref = ref.mean(0)
    if cinfo.channels > 1:
        notes.append(f"{cinfo.channels} channels: scored on the mono mixdown")
    est = _mono_at(enhanced, sr, len(ref), cinfo.channels, notes, "enhanced", read)
    n = min(len(ref), len(est))  # the enhanced file's own scores: the noisy one never crops them
    mix, noisy_error = None, None
    if noisy is not None:
        try:
            mix = _mono_at(noisy, sr, None, cinfo.channels, notes, "noisy", read)
        except AudioError as exc:  # the noisy file is for SI-SDRi alone: keep the pair
            noisy_error = str(exc)
            notes.append("SI-SDRi could not score this pair: its noisy file could not be read (see the error for it)")
    if mix is not None and len(mix) > n:
        notes.append(f"noisy has {len(mix)} samples, the scored pair {n}: compared over the shorter")
    with _metric_warnings_as(notes):
        if mix is None or len(mix) >= n:
            res = score(est[:n], ref[:n], sr, None if mix is None else mix[:n])
        else:  # a short noisy file cuts SI-SDRi alone, not every metric
            res = score(est[:n], ref[:n], sr)
            m = len(mix)
            if m < SI_SDR_MIN_SECONDS * sr:
                notes.append(f"SI-SDRi could not score this pair: the noisy file holds {m} samples at {sr} Hz, "
                             f"shorter than one {1000 * SI_SDR_MIN_SECONDS:.0f} ms frame")
                res["si_sdr_i"] = math.nan
            else:
                notes.append(f"SI-SDRi over the first {m / sr:.2f} s, as long as the noisy file; the other "
                             f"scores over {n / sr:.2f} s")
                res["si_sdr_i"] = si_sdr_improvement(est[:m], ref[:m], mix, sr,
                                                     label=f"SI-SDRi (over the noisy file's first {m / sr:.2f} s)")
    _note_pesq_rate(res, sr, notes)
    if noisy_error is not None:  # scored as without a noisy file; its SI-SDRi null, its error listed
        res["si_sdr_i"] = math.nan
    return {**{k: float(v) for k, v in res.items()}, "seconds": n / sr, "notes": notes,
            **({"noisy_error": noisy_error} if noisy_error is not None else {})}


def _is_empty(path: Path, read: Reader) -> bool:
    """Whether ``path`` is a file of 0 samples (and no sign of more: :func:`~audioae.audio.empty_audio`)."""
    try:
        read(path)
    except AudioError as exc:
        return exc.empty
    return False


def _note_pesq_rate(res: dict, sr: int, notes: list[str]) -> None:
    """Say when PESQ ran on resampled audio (8 kHz pairs get wide-band PESQ of an
    upsampled signal, 44.1/48 kHz ones are scored at 16 kHz: unsaid, that misleads)."""
    note = pesq_rate_note(sr)
    if note and math.isfinite(res["pesq"]):
        notes.append(note)


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def evaluate_folders(clean: str | os.PathLike, enhanced: str | os.PathLike,
                     noisy: str | os.PathLike | None = None, *, progress: bool = False,
                     reader: IsolatedReader | None = None) -> dict:
    """Score every pair; returns ``{"files", "mean", "mean_of", "errors", "missing_enhanced", "extra_enhanced",
    "missing_noisy", "paired"}`` (JSON-ready; NaN becomes None). ``progress``: a bar on stderr
    when it is a terminal (PESQ takes about 0.03 s per second of audio: a test set takes minutes).
    ``reader``: how files are decoded (default: an :class:`IsolatedReader` of ``read_audio``)."""
    pairing = pair_folders(clean, enhanced, noisy)
    reader = reader or IsolatedReader()
    try:
        files, errors = _score_pairs(pairing.pairs, reader, progress)
    finally:
        reader.close()
    if noisy is not None:  # a pair without its noisy file has no SI-SDRi: null, as the docs say, not absent
        for f in files:
            f.setdefault("si_sdr_i", None)
    # every metric the run scores, even when no pair could be read: its mean is then null (docs/batch.md)
    metrics = [m for m in METRICS if m != "si_sdr_i" or noisy is not None]
    mean = {m: _mean([f.get(m) for f in files]) for m in metrics}
    # how many files each mean is over: a pair a metric could not score (notes say why) is left out
    mean_of = {m: sum(f.get(m) is not None for f in files) for m in metrics}
    # "scored": pairs with at least one score; a pair read whose every metric was undefined (too
    # short, silent) is "read" only (so "10 of 10 pairs scored" never sits over 8 blank rows)
    scored = sum(any(f.get(m) is not None for m in METRICS) for f in files)
    return {"clean": str(clean), "enhanced": str(enhanced), "noisy": None if noisy is None else str(noisy),
            "paired": len(pairing.pairs), "read": len(files), "scored": scored,
            "empty": sum(bool(f.get("empty")) for f in files), "files": files, "mean": mean,
            "mean_of": mean_of,
            "errors": errors, "missing_enhanced": pairing.missing_enhanced,
            "extra_enhanced": pairing.extra_enhanced, "missing_noisy": pairing.missing_noisy,
            "ambiguous": pairing.ambiguous}


def _score_pairs(pairs: list, read: Reader, progress: bool) -> tuple[list[dict], list[dict]]:
    from tqdm import tqdm

    files, errors = [], []
    bar = tqdm(pairs, desc="eval", unit="pair", dynamic_ncols=True, disable=not progress or None)
    for rel, cpath, epath, npath in bar:
        try:
            res = score_pair(cpath, epath, npath, read)
        except AudioError as exc:
            errors.append({"file": rel, "error": str(exc)})
            continue
        except ValueError as exc:  # e.g. a metric refusing a too-short signal
            errors.append({"file": rel, "error": f"{cpath}: cannot score ({exc})"})
            continue
        if "noisy_error" in res:  # listed with the errors (exit 1), the pair's other scores kept
            errors.append({"file": rel, "error": res.pop("noisy_error")})
        files.append({"file": rel, **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                      for k, v in res.items()}})
    return files, errors


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _score_table(report: dict) -> list[str]:
    metrics = [m for m in METRICS if m in report["mean"]]
    width = max([len("mean"), *(len(f["file"]) for f in report["files"])])
    cols = {m: max(8, len(COLUMNS[m])) for m in metrics}
    head = f"{'file':<{width}}  " + "  ".join(f"{COLUMNS[m]:>{cols[m]}}" for m in metrics)
    lines = [head, "-" * len(head)]
    for f in report["files"]:
        lines.append(f"{f['file']:<{width}}  " + "  ".join(f"{_fmt(f.get(m)):>{cols[m]}}" for m in metrics))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{_fmt(report['mean'].get(m)):>{cols[m]}}" for m in metrics))
    return lines


def format_table(report: dict) -> str:
    """The report as a plain-text table for people, then the problems."""
    lines = _score_table(report) if report["files"] else []  # nothing scored: no empty table
    blank = report["read"] - report["scored"]
    lines.append(f"{report['scored']} of {report['paired']} pairs scored"
                 + (f"; {blank} more read, but no metric could score them (notes below say why)" if blank else ""))
    short = {HEADERS[m]: n for m, n in report.get("mean_of", {}).items() if n < report["scored"]}
    if short:
        lines.append("the means leave out the pairs a metric could not score (notes below say why): "
                     + ", ".join(f"{name} is over {n} of {report['scored']}" for name, n in short.items()))
    for key, label in (("missing_enhanced", "no enhanced file for"), ("extra_enhanced", "no clean file for"),
                       ("missing_noisy", "no noisy file for"), ("ambiguous", "several files stand for")):
        for rel in report.get(key, []):
            lines.append(f"{label}: {rel}")
    for err in report["errors"]:
        # A message that starts with the file's own path ("<clean>/sub/x.wav: cannot read ...")
        # says which side failed; the relative name before it would only repeat it.
        named = err["error"].split(": ", 1)[0].endswith(err["file"])
        lines.append(f"error: {err['error']}" if named else f"error: {err['file']}: {err['error']}")
    lines += _note_lines(report["files"])
    return "\n".join(lines)


def _note_lines(files: list[dict]) -> list[str]:
    """One line per note, a note that several files share once with their count: a 48 kHz set had
    its PESQ-rate note on every pair, a thousand lines burying the notes that matter."""
    by_note: dict[str, list[str]] = {}
    for f in files:
        for note in f.get("notes", []):
            by_note.setdefault(note, []).append(f["file"])
    return [f"note: {names[0]}: {note}" if len(names) == 1 else
            f"note: {len(names)} files ({names[0]}, ...): {note}" for note, names in by_note.items()]
