"""Clean speech and noise, mixed on the fly: random crops, gains and SNRs.

A :class:`Source` yields mono crops at the model's rate either from a folder of audio files
(loaded once, resampled, kept in memory: the corpora here are hours) or from the synthetic
generators. :class:`Mixer` draws ``(clean, noise)`` batches; the model's corruption setting
decides how they are combined (see :mod:`audioae.train`). :func:`mixed_batches` runs several
mixers on background threads or worker processes when the device outpaces one (a GPU at batch
256).
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import queue
import shutil
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..audio import AUDIO_EXTENSIONS, AudioError, read_audio, resample
from . import synthetic

log = logging.getLogger(__name__)


def list_audio(folder: str | Path) -> list[Path]:
    """The audio files under ``folder`` (recursive, sorted); links whose target is gone are left
    out and logged once."""
    folder = Path(folder)
    _refuse_not_a_folder(folder)
    named = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    files = [p for p in named if p.is_file()]
    kept = set(files)
    dangling = [p for p in named if p not in kept and p.is_symlink() and not p.exists()]  # one stat per file
    if dangling:  # a corpus moved or half deleted: without a word the run silently trains on less
        log.warning("%s: skipping %d link(s) whose target is gone, e.g. %s -> %s", folder, len(dangling),
                    dangling[0].relative_to(folder), dangling[0].readlink())
    return files


def _refuse_not_a_folder(folder: Path) -> None:
    # A config's relative paths are the current folder's, not the config file's: say which it was.
    where = "" if folder.is_absolute() else f" (a relative path: read from the current folder, {Path.cwd()})"
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: a file, not a folder{where}; name the folder that holds the audio")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder{where}")


def corpus_missing(*folders: str | Path) -> str | None:
    """What to tell a user whose training corpus is not there: the first of ``folders`` missing and
    how to build the corpus (it is not in the repository), or None when all are folders. For the
    scripts that read the corpus, to say so before any work rather than fail deep inside."""
    for folder in map(Path, folders):
        if not folder.is_dir():
            where = "" if folder.is_absolute() else f" (read from the current folder, {Path.cwd()})"
            return (f"{folder}: no such folder{where}. This reads the speech-denoiser corpus, which is built, "
                    f"not shipped: from the repository root, pip install -e '.[recipes]' && sudo sh "
                    f"recipes/install_corpus_packages.sh && python recipes/build_corpus.py --out corpus "
                    f"(Debian packages, about 2 GB; docs/corpus.md)")
    return None


SILENT_PEAK = 1e-4  # -80 dBFS: below it a clip counts as silent


def load_folder(folder: str | Path, sr: int, min_seconds: float = 0.25, threads: int = 8) -> list[np.ndarray]:
    """Every readable file of ``folder`` (recursive) as mono float32 at ``sr``, in file order;
    unreadable ones are logged and skipped. Decoded on ``threads`` threads (libsndfile and the
    resampler release the GIL): hours of Ogg load in seconds on a many-core machine."""
    return [clip for _, clip in _load_folder_with_paths(folder, sr, min_seconds, threads)]


def _load_folder_with_paths(folder: str | Path, sr: int, min_seconds: float = 0.25,
                            threads: int = 8) -> list[tuple[Path, np.ndarray]]:
    folder = Path(folder)
    paths = list_audio(folder)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        loaded = list(pool.map(partial(_load_mono, sr=sr), paths))
    pairs, short, silent = [], [], []
    for path, clip in zip(paths, loaded, strict=True):
        if clip is None:  # unreadable: _load_mono said why
            continue
        if len(clip) < min_seconds * sr:
            short.append(path)
        elif not np.abs(clip).max() > SILENT_PEAK:  # a silent "speech" file teaches nothing but silence
            silent.append(path)
        else:
            pairs.append((path, clip))
    for skipped, why in ((short, f"shorter than {min_seconds:g} s"), (silent, "silent (peak below -80 dBFS)")):
        if skipped:
            names = ", ".join(str(p.relative_to(folder)) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
            log.warning("%s: skipping %d file(s) %s: %s", folder, len(skipped), why, names)
    if not pairs:
        raise ValueError(f"{folder}: no usable audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return pairs


def bad_family_weights(weights: Mapping[str, object]) -> dict:
    """The entries of ``weights`` (``{"babble": 2.0}``) that are no finite number >= 0 (true and
    false among them): the one check of folder_source and of the run config's data.*_weights,
    which names the setting before any audio is loaded."""
    return {k: v for k, v in weights.items()
            if isinstance(v, bool) or not (isinstance(v, int | float) and 0 <= v < math.inf)}


def folder_source(folder: str | Path, sr: int, family_weights: Mapping[str, float] | None = None) -> Source:
    """A :class:`Source` over ``folder``'s files. ``family_weights`` (``{"babble": 2.0}``) makes
    the files under those first-level subfolders (families) that many times likelier to be drawn
    than their duration alone makes them: more of one condition without copying files."""
    folder = Path(folder)
    pairs = _load_folder_with_paths(folder, sr)
    weights = dict(family_weights or {})
    family_of = [_family(folder, p) for p, _ in pairs]  # "" for files at the top level
    families = set(family_of) - {""}
    unknown = sorted(set(weights) - families)
    if unknown:
        raise ValueError(f"{folder}: no family (subfolder) {unknown}; there are {sorted(families)}")
    bad = bad_family_weights(weights)
    if bad:
        raise ValueError(f"family weights must be finite numbers >= 0, got {bad}")
    per_clip = [float(weights.get(f, 1.0)) for f in family_of]
    return Source([c for _, c in pairs], name=str(folder), weights=per_clip)


def _family(folder: Path, path: Path) -> str:
    parts = path.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else ""


def _load_mono(path: Path, sr: int) -> np.ndarray | None:
    try:
        wav, file_sr, _ = read_audio(path)
    except AudioError as exc:
        log.warning("skipping %s", exc)
        return None
    return resample(wav.mean(0), file_sr, sr).numpy()  # float32 already: no second copy


class Source:
    """Random mono crops of ``n`` samples from loaded clips, or from a generator function."""

    def __init__(self, clips: list[np.ndarray] | None = None, generator=None, name: str = "",
                 weights: list[float] | None = None):
        if (clips is None) == (generator is None):
            raise ValueError("give clips or a generator")
        self.clips, self.generator, self.name = clips, generator, name
        if clips is not None:
            mass = np.array([len(c) for c in clips], dtype=np.float64)
            if weights is not None:  # per clip, on top of its length
                mass *= np.asarray(weights, dtype=np.float64)
            if not mass.sum() > 0:
                raise ValueError(f"{name or 'source'}: every clip has weight 0")
            # Long files are drawn proportionally more. A cumulative table and one uniform draw:
            # rng.choice(p=...) re-checks all of p on every call, O(files) under the GIL.
            self.cdf = np.cumsum(mass / mass.sum())

    def crop(self, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
        if self.generator is not None:
            return self.generator(rng, n / sr, sr)[:n]
        clip = self._draw(rng)
        if len(clip) <= n:  # join random clips rather than looping one (word-length clips exist)
            parts, total = [clip], len(clip)
            while total <= n:
                parts.append(self._draw(rng))
                total += len(parts[-1])
            clip = np.concatenate(parts)
        start = int(rng.integers(0, len(clip) - n + 1))
        return clip[start : start + n]

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        i = int(np.searchsorted(self.cdf, rng.random(), side="right"))
        return self.clips[min(i, len(self.clips) - 1)]  # min: the cdf's last entry may round below 1


@dataclass(frozen=True)
class MixConfig:
    segment_seconds: float = 2.0
    snr_low: float = -5.0
    snr_high: float = 20.0
    gain_db_low: float = -25.0  # level of the mixture's peak
    gain_db_high: float = -1.0
    reverb_prob: float = 0.0  # share of clean examples given a synthetic room
    # Share of examples whose noise is two recordings at once (typing over an air conditioner,
    # a door in a busy room); the second is 0-10 dB below the first before the SNR is set.
    second_noise_prob: float = 0.0


class Mixer:
    """Batches of ``(clean [B, T], noise [B, T], snr_db [B])`` drawn with a seeded generator
    (``seed`` None: none yet, for a subclass that sets one per batch, as :class:`StepMixer`)."""

    def __init__(self, speech: Source, noise: Source, sr: int, cfg: MixConfig, seed: int | None = 0):
        self.speech, self.noise, self.sr, self.cfg = speech, noise, sr, cfg
        self.rng = None if seed is None else np.random.default_rng(seed)

    def example(self) -> tuple[np.ndarray, np.ndarray, float]:
        n = int(self.cfg.segment_seconds * self.sr)
        clean = self.speech.crop(self.rng, n, self.sr).astype(np.float32)
        if self.cfg.reverb_prob > 0 and self.rng.random() < self.cfg.reverb_prob:
            clean = synthetic.reverberate(clean, synthetic.synthetic_rir(self.rng, self.sr))
        noise = self.noise.crop(self.rng, n, self.sr).astype(np.float32)
        if self.cfg.second_noise_prob > 0 and self.rng.random() < self.cfg.second_noise_prob:
            noise = self._add_second_noise(noise, n)
        snr = float(self.rng.uniform(self.cfg.snr_low, self.cfg.snr_high))
        # One gain for the pair so the SNR holds; sets the mixture's rough level.
        gain = 10 ** (self.rng.uniform(self.cfg.gain_db_low, self.cfg.gain_db_high) / 20)
        peak = max(np.abs(clean).max(), 1e-4)
        return clean * gain / peak, noise * gain / peak, snr

    def _add_second_noise(self, noise: np.ndarray, n: int) -> np.ndarray:
        other = self.noise.crop(self.rng, n, self.sr).astype(np.float32)
        rms = float(np.sqrt(np.mean(noise**2))) + 1e-9
        other_rms = float(np.sqrt(np.mean(other**2))) + 1e-9
        below = 10 ** (-self.rng.uniform(0.0, 10.0) / 20)
        return noise + other * (below * rms / other_rms)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ex = [self.example() for _ in range(batch_size)]
        clean = torch.from_numpy(np.stack([e[0] for e in ex]))  # [B, T]
        noise = torch.from_numpy(np.stack([e[1] for e in ex]))  # [B, T]
        snr = torch.tensor([e[2] for e in ex], dtype=torch.float32)  # [B]
        return clean, noise, snr


class StepMixer(Mixer):
    """A :class:`Mixer` whose n-th batch is drawn from a generator seeded by ``key`` and
    ``first_step + n * stride`` alone: the batch of a training step, however many batches came
    before it in this process. Each mixer of a loader (inline, thread or worker process) mixes its
    own steps in order, and the loader takes them in turn, so step s always gets the same batch."""

    def __init__(self, speech: Source, noise: Source, sr: int, cfg: MixConfig, key: tuple[int, ...],
                 first_step: int, stride: int = 1):
        super().__init__(speech, noise, sr, cfg, seed=None)  # each batch seeds its own
        self.key, self.next_step, self.stride = key, first_step, stride

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.rng = np.random.default_rng([*self.key, self.next_step])
        self.next_step += self.stride
        return super().batch(batch_size)


LOADER_MODES = ("inline", "threads", "processes")


@contextmanager
def mixed_batches(mixers: list[Mixer], batch_size: int, mode: str = "inline",
                  pin_memory: bool = False) -> Iterator[Iterator[tuple]]:
    """Endless ``Mixer.batch`` batches, taken from ``mixers`` in turn.

    ``mode`` "inline" mixes on the caller's thread; "threads" gives each mixer its own small
    queue filled on a background thread; "processes" runs each mixer in a worker process (a
    forked copy: the in-memory sources are shared, not copied). The batches are always taken
    round-robin, so the sequence depends on the mixers' seeds alone, never on timing or mode. A
    mixer's exception is raised where its batch would have been taken.

    Why processes: mixing is partly Python, so mixer threads hold the GIL, and a training loop
    that launches hundreds of small CUDA kernels a step waits for it between every two
    (``benchmarks/loader_contention.py`` measures it). ``pin_memory`` (processes only) pins each
    batch so that ``.to("cuda", non_blocking=True)`` overlaps with compute.
    """
    if mode not in LOADER_MODES:
        raise ValueError(f"loader mode must be one of {LOADER_MODES}, got {mode!r}")
    if mode == "processes" and not _shared_memory_fits(mixers, batch_size):
        mode = "threads"
    if mode == "inline":
        yield (mixers[i % len(mixers)].batch(batch_size) for i in itertools.count())
    elif mode == "threads":
        with _threaded_batches(mixers, batch_size) as batches:
            yield batches
    else:
        with _process_batches(mixers, batch_size, pin_memory) as batches:
            yield batches


@contextmanager
def _threaded_batches(mixers: list[Mixer], batch_size: int) -> Iterator[Iterator[tuple]]:
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(maxsize=2) for _ in mixers]

    def fill(mixer: Mixer, q: queue.Queue) -> None:
        while not stop.is_set():
            try:
                item = mixer.batch(batch_size)
            except Exception as exc:  # handed to the consumer, which raises it
                item = exc
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    workers = [threading.Thread(target=fill, args=(m, q), daemon=True, name=f"mixer-{k}")
               for k, (m, q) in enumerate(zip(mixers, queues, strict=True))]
    for w in workers:
        w.start()

    def take() -> Iterator[tuple]:
        for i in itertools.count():
            item = queues[i % len(queues)].get()
            if isinstance(item, Exception):
                raise item
            yield item

    try:
        yield take()
    finally:
        stop.set()
        for w in workers:
            w.join()


class _MixerStream(torch.utils.data.IterableDataset):
    """Worker ``k`` of a DataLoader yields mixer ``k``'s batches; the loader takes them in turn."""

    def __init__(self, mixers: list[Mixer], batch_size: int):
        self.mixers, self.batch_size = mixers, batch_size

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        mixer = self.mixers[info.id if info is not None else 0]
        while True:
            yield mixer.batch(self.batch_size)


PREFETCH_PER_WORKER = 2


@contextmanager
def _process_batches(mixers: list[Mixer], batch_size: int, pin_memory: bool) -> Iterator[Iterator[tuple]]:
    # fork shares the sources copy-on-write; spawn would pickle hours of audio into each worker.
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(
        _MixerStream(mixers, batch_size), batch_size=None, num_workers=len(mixers), pin_memory=pin_memory,
        prefetch_factor=PREFETCH_PER_WORKER, multiprocessing_context=context)
    batches = iter(loader)
    try:
        yield batches
    finally:
        batches._shutdown_workers()  # joins the workers now, not whenever the iterator is collected


def _shared_memory_fits(mixers: list[Mixer], batch_size: int) -> bool:
    """Worker processes hand batches over in /dev/shm; a container's default 64 MB holds less
    than one batch of 256 two-second crops. Too small: say so, and mix on threads instead."""
    cfg = mixers[0].cfg
    per_batch = 2 * batch_size * int(cfg.segment_seconds * mixers[0].sr) * 4  # clean + noise, float32
    need = per_batch * len(mixers) * (PREFETCH_PER_WORKER + 1) * 5 // 4  # in flight, a quarter to spare
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return True  # no /dev/shm (not Linux): torch shares memory its own way
    if free >= need:
        return True
    log.warning("mixer processes need about %d MB of /dev/shm, %d MB free: mixing on threads instead",
                need >> 20, free >> 20)
    return False


def synthetic_speech() -> Source:
    return Source(generator=synthetic.speech_like, name="synthetic speech")


def synthetic_noise() -> Source:
    return Source(generator=synthetic.noise, name="synthetic noise")
