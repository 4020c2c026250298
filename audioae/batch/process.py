"""Denoise one file (or, on a GPU, a batch of short files) into its output, atomically.

Causal models stream: the input is read in blocks (``SoundFile.blocks``), fed to
:class:`audioae.enhance.StreamingDenoiser` and written block by block to ``.<name>.part`` beside
the output, which is renamed into place at the end. Memory stays bounded whatever the length,
and the output equals :func:`audioae.enhance.denoise` on the whole file (to float tolerance).
Non-causal models read the whole file and call :func:`audioae.enhance.denoise` (which windows
long inputs itself). Either way the output keeps the input's sample rate, channel count,
container and subtype, and is written under a temporary name and renamed: a run killed at any
moment leaves either a complete output or a ``.part`` file, never a half-written output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ..audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SAMPLE_BYTES,
    AudioError,
    HeldAudio,
    check_channels,
    check_levels,
    check_pcm,
    check_resample,
    clips_at_full_scale,
    empty_audio,
    fs_path,
    held_audio,
    open_for_writing,
    read_all,
    read_blocks,
    sound_error_reason,
    unopened,
    write_frames,
)
from ..device import is_out_of_memory, release_device_memory
from ..enhance import (
    StreamingDenoiser,
    channel_seconds,
    denoise,
    denoise_batch,
)
from ..fileio import file_in_the_way, missing, nearest_existing
from ..models import SpectralAutoencoder
from .manifest import FileResult
from .plan import FileTask, SourceState, part_path, same_file, source_state

log = logging.getLogger(__name__)

BLOCK_SECONDS = 10.0  # read size of the streaming path: memory per channel ~ a few blocks
# On a GPU, files up to BATCH_MAX_SECONDS long (in channel-seconds: every channel runs through
# the model) are padded into shared batches of at most BATCH_FILES files and BATCH_MAX_TOTAL
# channel-seconds (16 mono files of 30 s; 64-channel files of 30 s would have made a batch of 8.5 h).
BATCH_MAX_SECONDS = 30.0
BATCH_FILES = 16  # causal models; non-causal ones go one by one
BATCH_MAX_TOTAL = BATCH_FILES * BATCH_MAX_SECONDS


def made_from(state: SourceState | None) -> dict[str, int]:
    """:class:`~.manifest.FileResult`'s ``input_size`` and ``input_mtime_ns`` for ``state`` (none for None)."""
    return {} if state is None else {"input_size": state.size, "input_mtime_ns": state.mtime_ns}


def changed_error(path: str, before: SourceState, now: SourceState | None) -> AudioError | None:
    """The error of the input at ``path``, ``before`` when it was opened and ``now`` after it was
    read (None: gone), where it is no longer that file; None where it is."""
    if now is not None and same_file(before, now):
        return None
    what = ("is gone" if now is None else f"went from {before.size:,} to {now.size:,} bytes"
            if now.size != before.size else "was modified")
    return AudioError(f"{path}: the file {what} while it was being denoised (still being recorded or copied?): "
                      f"its output was not kept; run again once it is complete to denoise it as it is then")


def check_unchanged(path: str, before: SourceState | None) -> None:
    """Raise :class:`AudioError` when the input at ``path`` is no longer the file it was before it
    was opened: a file cut short, rewritten or still being recorded while it was read would give
    an output of part of it, recorded as denoised in full."""
    if before is not None and (exc := changed_error(path, before, source_state(path))) is not None:
        raise exc


def _open(task: FileTask, data: bytes | None, before: SourceState | None = None) -> sf.SoundFile:
    """Open the input from its path, or from bytes a read stage already fetched; ``before``: its
    :func:`source_state`, when the caller asked (one stat of the file, not two)."""
    if data is None and before is None and not os.path.exists(task.input):  # libsndfile would say "System error."
        if os.path.islink(task.input):
            raise AudioError(f"{task.input}: {missing(task.input)}")
        raise AudioError(f"{task.input}: no such file (moved or deleted since the job was planned?)")
    if data is not None and not data:  # libsndfile: "Format not recognised.", where a path says empty
        raise AudioError(f"{task.input}: cannot read audio (empty file (0 bytes))")
    try:
        return sf.SoundFile(io.BytesIO(data) if data is not None else fs_path(task.input))
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as exc:
        # The path even for bytes read from it (the Ray engine's): its name says what kind it is.
        raise unopened(task.input, exc, task.input if data is None else data, in_memory=data is not None,
                       path=task.input) from exc


def _check_header(task: FileTask, f: sf.SoundFile, data: bytes | None) -> HeldAudio | None:
    """Refuse a header no output can be made from; else what its output needs to know. None: a
    file whose audio is empty (0 samples, and no sign of more: :func:`~audioae.audio.empty_audio`),
    whose output is empty too (:func:`_write_empty`)."""
    if not (MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE):
        raise AudioError(f"{task.input}: sample rate {f.samplerate} Hz is outside "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    source = task.input if data is None else data  # the bytes a read stage fetched, else the file
    if f.frames == 0:
        error = empty_audio(task.input, source, f.format)
        if error.empty:
            return None
        raise error  # an unfinished header, an Ogg cut short: the audio is not all there
    return held_audio(source, f, task.input)  # an MP3's frames or an Ogg's pages walked, mapped


def _write_empty(task: FileTask, f: sf.SoundFile, t0: float, before: SourceState | None) -> FileResult:
    """An input of 0 samples becomes an output of 0 samples, of its format, rate and channels,
    so that a folder holding one can finish clean (failing it would fail every run)."""
    fmt, subtype = output_format(f.format, f.subtype, task.input)
    writer = _PartWriter(task, f.samplerate, f.channels, fmt, subtype, f.copy_metadata())
    try:
        check_unchanged(task.input, before)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return FileResult(task.input, task.output, "ok", "", time.perf_counter() - t0, 0.0, **made_from(before))


def _warning(task: FileTask, held: HeldAudio) -> str:
    return "" if held.cut is None else held.cut.warning(task.input, "denoised")


def _failed(task: FileTask, exc: Exception, t0: float, duration: float | None = None) -> FileResult:
    with contextlib.suppress(OSError):  # e.g. its output folder's name is taken by a file
        part_path(task.output).unlink(missing_ok=True)
    msg = _error_text(exc)
    log.info("failed: %s", msg)
    return FileResult(task.input, task.output, "error", msg, time.perf_counter() - t0, duration)


def output_format(fmt: str, subtype: str, name: str = "") -> tuple[str, str]:
    """The input's container and subtype, or the container's default subtype when libsndfile
    cannot write that subtype (logged)."""
    if sf.check_format(fmt, subtype):
        return fmt, subtype
    fallback = sf.default_subtype(fmt)
    log.warning("%s: cannot write subtype %s in %s; writing %s", name, subtype, fmt, fallback)
    return fmt, fallback


@dataclass(frozen=True)
class _Decoded:
    """A short file read whole, waiting for its GPU batch."""

    task: FileTask
    data: bytes | None  # the file's bytes when a read stage fetched them (a retry streams from them)
    wav: np.ndarray  # [C, T]
    sr: int
    fmt: str
    subtype: str
    read_seconds: float
    tags: dict[str, str]
    kbps: float | None = None  # an MP3's, Opus's or Vorbis's bitrate, for its output's (open_for_writing)
    warning: str = ""  # _check_header's
    made_from: dict[str, int] = dataclasses.field(default_factory=dict)  # FileResult's input_size, input_mtime_ns

    @property
    def channel_seconds(self) -> float:
        return channel_seconds(self.wav, self.sr)


def _read_whole(task: FileTask, f: sf.SoundFile) -> np.ndarray:
    """All samples of an open file as ``[C, T]`` float32, validated like every other input."""
    wav = read_all(f, task.input)  # [C, T]
    check_pcm(wav, f.samplerate, task.input)
    return wav


class WriteError(OSError):
    """An output that could not be written; the message names it, and a full disk when it is one."""


FULL_DISK_BYTES = 1 << 20  # less free space than this beside an output that failed: say the disk is full
DISK_FULL = "the disk holding it is full"  # in the error of a file whose write found the disk full
NOT_ATTEMPTED = "not attempted: "  # how the error of a file passed over for want of space begins


def not_attempted(result: FileResult) -> bool:
    """Whether ``result`` is a file passed over once the disk was full (:data:`NOT_ATTEMPTED`)."""
    return result.status == "error" and result.error.startswith(NOT_ATTEMPTED)


def says_disk_full(error: str) -> bool:
    """Whether a per-file error says its write found the disk full (:func:`_cannot_write`'s words)."""
    return DISK_FULL in error and not error.startswith(NOT_ATTEMPTED)


def out_folder(task: FileTask) -> Path:
    """OUT, the folder the job writes ``task``'s output into (``task.rel`` is the output's path in it)."""
    return Path(task.output).parents[len(Path(task.rel).parts) - 1]


def size_text(n: int) -> str:
    """``n`` bytes for a person: kB under 1 MB (a small file's "0.0 MB" said nothing), else MB."""
    return f"{n // 1000} kB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


def no_room(task: FileTask, f: sf.SoundFile) -> FileResult | None:
    """The error of a file whose output cannot fit on the disk holding OUT, without denoising it;
    None when it may fit (or the free space cannot be told: its run says why it fails). Asked only
    after a write found the disk full, where every further file was denoised to fail the same way;
    ``f``: the input as the run that would denoise it opened it (opened here as well, each file
    left was opened twice). An uncompressed output (PCM WAV, AIFF, ...) needs its samples' bytes,
    known from the header: it is passed over when fewer are free. A compressed one's size is not
    known before it is coded (a FLAC of denoised audio may be far smaller or larger than its input;
    an MP3's cover art is not copied), so it is passed over only while the disk is full (under
    :data:`FULL_DISK_BYTES` free, as a failed write calls it): a small one that would fit there is
    passed over too. Free space as this user may use it (``shutil.disk_usage``: not root's
    reserved blocks)."""
    try:
        free = shutil.disk_usage(nearest_existing(Path(task.output).parent)).free
    except OSError:
        return None
    fmt, subtype = f.format, f.subtype if sf.check_format(f.format, f.subtype) else sf.default_subtype(f.format)
    size = SAMPLE_BYTES.get(subtype) if fmt != "FLAC" else None  # FLAC's subtypes name PCM widths
    need = None if size is None else f.frames * f.channels * size
    if free >= (FULL_DISK_BYTES if need is None else need):
        return None
    needs = "" if need is None else f", its output needs {size_text(need)}"
    return FileResult(task.input, task.output, "error",
                      f"{NOT_ATTEMPTED}the disk holding {out_folder(task)} is full ({size_text(free)} free{needs})")


def _cannot_write(task: FileTask, exc: Exception) -> WriteError:
    blocked = file_in_the_way(Path(task.output).parent)
    if blocked is not None:  # mkdir says only "File exists" / "Not a directory"
        return WriteError(f"{task.output}: cannot write the output: {blocked} is a file, where its folder would go")
    if os.path.isdir(task.output):  # the rename says only "Is a directory"
        return WriteError(f"{task.output}: cannot write the output: a folder of that name is in the way")
    # libsndfile says only "System error." (or names a codec) when the disk is full: look.
    try:
        free = shutil.disk_usage(Path(task.output).parent).free
    except OSError:
        free = None
    full = free is not None and free < FULL_DISK_BYTES
    reason = sound_error_reason(exc, path=part_path(task.output), writing=True)
    if full and (reason == "System error." or getattr(exc, "errno", None) == errno.ENOSPC):  # says nothing more
        return WriteError(f"{task.output}: cannot write the output: {DISK_FULL} ({size_text(free)} free)")
    note = f"; {DISK_FULL} ({size_text(free)} free)" if full else ""
    return WriteError(f"{task.output}: cannot write the output ({reason}){note}")


def _error_text(exc: Exception) -> str:
    """A per-file error for the manifest: our own errors say what happened in full; anything else
    also names its type."""
    return str(exc) if isinstance(exc, AudioError | WriteError) else f"{type(exc).__name__}: {exc}"


class _PartWriter:
    """Writes ``[C, n]`` blocks to the output's ``.part`` file; :meth:`commit` renames it into place.
    Any failure to write is a :class:`WriteError` naming the output. ``tags``: the input's text
    tags (``SoundFile.copy_metadata``), given to the output."""

    def __init__(self, task: FileTask, sr: int, channels: int, fmt: str, subtype: str,
                 tags: dict[str, str] | None = None, kbps: float | None = None):
        self.task, self.part = task, part_path(task.output)
        self.clip = clips_at_full_scale(fmt, subtype)
        self.f = None
        try:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            self.f = open_for_writing(fs_path(self.part), sr, channels, subtype=subtype, format=fmt, kbps=kbps)
        except AudioError as exc:  # a format the codec cannot hold at this rate
            raise WriteError(f"{task.output}: cannot write the output: {exc}") from exc
        except (sf.LibsndfileError, OSError) as exc:
            raise _cannot_write(task, exc) from exc
        self._tag(tags or {})

    def _tag(self, tags: dict[str, str]) -> None:
        """A recorder's title, date, comment...: kept, as the rest of the file's format is (they were
        dropped). Set before any audio: Ogg and FLAC write them in the header."""
        for key, value in tags.items():
            if self.f.format == "MP3" and not value.isascii():  # libsndfile writes UTF-8 into ID3's Latin-1 frames
                log.info("%s: tag %s not kept (libsndfile would garble its non-ASCII text)", self.task.output, key)
                continue
            try:
                setattr(self.f, key, value)
            except (sf.LibsndfileError, RuntimeError) as exc:  # one this container cannot hold
                log.info("%s: tag %s not kept (%s)", self.task.output, key, sound_error_reason(exc))

    def write(self, y: np.ndarray | torch.Tensor) -> None:
        y = np.asarray(y, dtype=np.float32)  # [C, n]
        if y.shape[-1] == 0:
            return
        if self.clip:
            y = np.clip(y, -1.0, 1.0)
        try:
            write_frames(self.f, np.ascontiguousarray(y.T))  # [n, C]; a non-causal model's whole file at once
        except (sf.LibsndfileError, OSError) as exc:
            raise _cannot_write(self.task, exc) from exc

    def commit(self) -> None:
        try:
            self.f.close()
            _keep_mode(self.part, self.task.output)
            os.replace(self.part, self.task.output)  # atomic on a local POSIX filesystem (not quite on NFS)
        except (sf.LibsndfileError, OSError) as exc:
            raise _cannot_write(self.task, exc) from exc

    def abort(self) -> None:
        with contextlib.suppress(sf.LibsndfileError, OSError):  # already failing: remove what we can
            if self.f is not None and not self.f.closed:
                self.f.close()
        self.part.unlink(missing_ok=True)


def _keep_mode(part: Path, output: str) -> None:
    """Give ``part`` the permission bits of the file it replaces under ``output``, as ``rsync``
    does (and ``cp`` over a file it may write): an output its owner made read-only (0444) was
    replaced by ``--overwrite`` with a 0644 one, writable again without a word."""
    try:
        st = os.lstat(output)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode) & 0o777  # not its set-id bits
    # A link under the name is replaced by the file, as ever; on a disk whose modes are fixed (FAT)
    # the two files' are already the same.
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(os.stat(part).st_mode) == mode:
        return
    try:
        os.chmod(part, mode)
    except OSError as exc:
        log.warning("%s: replaced without keeping its permission bits %o (%s)", output, mode, exc.strerror or exc)


class FileDenoiser:
    """Applies one loaded model to files. The local engine and every Ray actor hold one of these.

    ``run(task)`` never raises for a bad file: the failure comes back as a ``FileResult`` with
    status ``error``, and nothing is left at the output path.
    """

    def __init__(self, model: SpectralAutoencoder, strength: float = 1.0, *,
                 block_seconds: float = BLOCK_SECONDS, batch_max_seconds: float = BATCH_MAX_SECONDS,
                 batch_files: int = BATCH_FILES):
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be within [0, 1], got {strength}")
        self.model, self.strength = model.eval(), strength
        self.block_seconds = block_seconds
        self.batch_max_seconds, self.batch_files = batch_max_seconds, batch_files
        self.device = next(model.parameters()).device
        # Set once a write found the disk full: from then on a file whose output cannot fit is
        # passed over (:func:`no_room`) rather than denoised to fail the same way. The pool's
        # parent sets it in each worker too.
        self.disk_full = False

    def _noted(self, result: FileResult) -> FileResult:
        """``result``, having set :attr:`disk_full` where its write found the disk full: every
        result passes here (:meth:`run`, :meth:`_run_batched`), whichever write failed."""
        if result.status == "error" and says_disk_full(result.error):
            self.disk_full = True
        return result

    def _no_room(self, task: FileTask, f: sf.SoundFile) -> FileResult | None:
        return no_room(task, f) if self.disk_full else None

    def _write_empty(self, task: FileTask, f: sf.SoundFile, t0: float, before: SourceState | None) -> FileResult:
        """:func:`_write_empty`, a failure with its duration (0 s)."""
        try:
            return _write_empty(task, f, t0, before)
        except Exception as exc:  # one bad file must never stop the job
            return _failed(task, exc, t0, 0.0)

    # ---- one file -------------------------------------------------------------------------------
    def run(self, task: FileTask, data: bytes | None = None) -> FileResult:
        """Denoise one file into ``task.output``; ``data``: the file's bytes when already read."""
        return self._noted(self._run(task, data))

    def _run(self, task: FileTask, data: bytes | None = None) -> FileResult:
        t0 = time.perf_counter()
        try:
            before = source_state(task.input) if data is None else None  # bytes a read stage fetched cannot change
            with _open(task, data, before) as f:
                passed = self._no_room(task, f)
                if passed is not None:
                    return passed
                held = _check_header(task, f, data)
                if held is None:
                    return self._write_empty(task, f, t0, before)
                return self._run_open(task, f, held, t0, before)
        except Exception as exc:  # one bad file must never stop the job
            return _failed(task, exc, t0)

    def _run_open(self, task: FileTask, f: sf.SoundFile, held: HeldAudio, t0: float,
                  before: SourceState | None = None) -> FileResult:
        """:meth:`run` of a file opened and checked; ``before``: its :func:`source_state` from
        before it was opened (None: read from bytes, which do not change)."""
        duration = held.frames / f.samplerate
        try:
            if self.model.causal:
                self._stream(task, f, held.kbps, before)
            else:
                self._whole(task, f, held.kbps, before)
        except Exception as exc:  # one bad file must never stop the job
            return _failed(task, exc, t0, duration)
        return FileResult(task.input, task.output, "ok", "", time.perf_counter() - t0, duration,
                          warning=_warning(task, held), **made_from(before))

    @torch.inference_mode()
    def _stream(self, task: FileTask, f: sf.SoundFile, kbps: float | None = None,
                before: SourceState | None = None) -> None:
        sr, channels = f.samplerate, f.channels
        fmt, subtype = output_format(f.format, f.subtype, task.input)
        s = StreamingDenoiser(self.model, sr, channels, strength=self.strength, realtime=False)  # blocks of seconds
        writer = _PartWriter(task, sr, channels, fmt, subtype, f.copy_metadata(), kbps)
        try:
            block = max(1, int(self.block_seconds * sr))
            for x in read_blocks(f, block, task.input):  # [C, n]
                check_levels(x, task.input)
                writer.write(s.push(x))  # [C, m], m may be 0
            writer.write(s.finish())  # [C, rest]
            check_unchanged(task.input, before)  # before the output takes its name
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def _whole(self, task: FileTask, f: sf.SoundFile, kbps: float | None = None,
               before: SourceState | None = None) -> None:
        fmt, subtype = output_format(f.format, f.subtype, task.input)
        wav = _read_whole(task, f)  # [C, T]
        check_unchanged(task.input, before)
        y = denoise(self.model, wav, f.samplerate, strength=self.strength)  # [C, T]
        self._write_whole(task, y, f.samplerate, fmt, subtype, f.copy_metadata(), kbps)

    @staticmethod
    def _write_whole(task: FileTask, y: np.ndarray, sr: int, fmt: str, subtype: str,
                     tags: dict[str, str] | None = None, kbps: float | None = None) -> None:
        writer = _PartWriter(task, sr, y.shape[0], fmt, subtype, tags, kbps)
        try:
            writer.write(y)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    # ---- many files -----------------------------------------------------------------------------
    def run_many(self, items: Sequence[tuple[FileTask, bytes | None]]) -> Iterator[FileResult]:
        """Results for ``items`` (in no guaranteed order). On CPU: one file at a time. On a GPU:
        short files share batches (:func:`audioae.enhance.denoise_batch`), long ones stream one
        at a time."""
        if self.device.type == "cpu":
            for task, data in items:
                yield self.run(task, data)
            return
        yield from self._run_batched(items)

    def _run_batched(self, items: Sequence[tuple[FileTask, bytes | None]]) -> Iterator[FileResult]:
        for result in self._batched(items):
            yield self._noted(result)

    def _batched(self, items: Sequence[tuple[FileTask, bytes | None]]) -> Iterator[FileResult]:
        short: list[_Decoded] = []
        for task, data in items:
            t0 = time.perf_counter()
            try:
                before = source_state(task.input) if data is None else None
                with _open(task, data, before) as f:
                    done = self._no_room(task, f) or self._decode_or_stream(task, data, f, t0, before)
            except Exception as exc:
                yield FileResult(task.input, task.output, "error", _error_text(exc), time.perf_counter() - t0)
                continue
            if isinstance(done, FileResult):
                yield done
            else:
                short.append(done)
        short.sort(key=lambda d: d.wav.shape[-1])  # similar lengths together: less padding
        for group in self._groups(short):
            yield from self._batch(group)

    def _decode_or_stream(self, task: FileTask, data: bytes | None, f: sf.SoundFile, t0: float,
                          before: SourceState | None) -> _Decoded | FileResult:
        """A short file read whole for its batch; a long one denoised now, streamed (bounded memory)."""
        held = _check_header(task, f, data)
        if held is None:
            return self._write_empty(task, f, t0, before)
        if held.frames * f.channels / f.samplerate > self.batch_max_seconds:
            return self._run_open(task, f, held, t0, before)
        return self._decode(task, data, f, t0, held, before)

    def _decode(self, task: FileTask, data: bytes | None, f: sf.SoundFile, t0: float, held: HeldAudio,
                before: SourceState | None = None) -> _Decoded:
        """A short file read whole, with every check its batch would make (a clip the batch
        refused would fail its neighbours too): samples (as it is read), channel count, resampling."""
        fmt, subtype = output_format(f.format, f.subtype, task.input)
        wav = _read_whole(task, f)  # [C, T]
        check_unchanged(task.input, before)
        check_channels(wav.shape[0], task.input)
        check_resample(f.samplerate, self.model.config.sample_rate, target="the model's ")
        return _Decoded(task, data, wav, f.samplerate, fmt, subtype, time.perf_counter() - t0, f.copy_metadata(),
                        held.kbps, _warning(task, held), made_from(before))

    def _groups(self, short: list[_Decoded]) -> Iterator[list[_Decoded]]:
        """Consecutive runs of ``short`` of at most ``batch_files`` files and ``BATCH_MAX_TOTAL``
        channel-seconds. Only a causal model's outputs are independent of the end padding a
        shared batch adds: a non-causal one takes its files one by one."""
        size = self.batch_files if self.model.causal else 1
        group: list[_Decoded] = []
        total = 0.0  # the group's channel-seconds
        for d in short:
            if group and (len(group) == size or total + d.channel_seconds > BATCH_MAX_TOTAL):
                yield group
                group, total = [], 0.0
            group.append(d)
            total += d.channel_seconds
        if group:
            yield group

    def _batch(self, group: list[_Decoded]) -> Iterator[FileResult]:
        t0 = time.perf_counter()
        failed = None
        try:
            outs = denoise_batch(self.model, [(d.wav, d.sr, self.strength) for d in group])  # [C_i, T_i] each
        except Exception as exc:  # noqa: BLE001 (any failure: the files are retried, and each reports its own)
            # Only what the retries need: the traceback's frames hold the failed batch's tensors.
            failed = (is_out_of_memory(exc), f"{type(exc).__name__}: {exc}")
        if failed is not None:
            yield from self._retry(group, *failed)
            return
        share = (time.perf_counter() - t0) / len(group)
        for d, y in zip(group, outs, strict=True):
            t1 = time.perf_counter()
            duration = d.wav.shape[-1] / d.sr
            try:
                self._write_whole(d.task, y, d.sr, d.fmt, d.subtype, d.tags, d.kbps)
            except Exception as exc:
                yield FileResult(d.task.input, d.task.output, "error", _error_text(exc),
                                 d.read_seconds + share, duration)
                continue
            yield FileResult(d.task.input, d.task.output, "ok", "",
                             d.read_seconds + share + time.perf_counter() - t1, duration, warning=d.warning,
                             **d.made_from)

    def _retry(self, group: list[_Decoded], out_of_memory: bool, why: str) -> Iterator[FileResult]:
        """After a failed batch: a batch of several files splits into batches of one; one file alone
        streams from its input when the device ran out of memory (bounded memory), and otherwise
        reports the failure as its error."""
        if out_of_memory:
            release_device_memory()
        if len(group) > 1:
            log.warning("a batch of %d files failed (%s); doing them one by one", len(group), why)
            for d in group:
                yield from self._batch([d])
            return
        (d,) = group
        if out_of_memory:
            log.warning("%s: out of memory in a batch of its own; streaming it instead", d.task.input)
            yield self.run(d.task, d.data)
            return
        yield FileResult(d.task.input, d.task.output, "error", why, d.read_seconds, d.wav.shape[-1] / d.sr)
