#!/usr/bin/env python3
"""Build the speech-denoiser corpus under ``corpus/`` from installed Debian packages.

Run ``recipes/install_corpus_packages.sh`` first (as root), then::

    nice -n 10 python recipes/build_corpus.py --out corpus

Layout (16 kHz mono WAV, one file per utterance or noise clip)::

    corpus/{train,val}/speech/<source>/*.wav     clean speech
    corpus/{train,val}/noise/<source>/*.wav      pure noise
    corpus/test/speech/<speaker>/*.wav           held-out speakers
    corpus/test/noise/<type>/*.wav               held-out noise, one folder per labelled type
    corpus/test/mixtures/{noisy,clean}/*.wav     fixed test pairs; meta.json gives SNR and type
    corpus/manifest.json                         every source: split, files, seconds

Which package goes to which split is fixed in :data:`PACKAGE_SOURCES` and the voice lists below,
never drawn at random, so reruns (and later additions) never move a file between splits.
``asterisk-core-sounds-{fr,it,ru}-*`` and ``openttd-opensfx`` feed the test split only.
Every stage skips outputs that already exist, so an interrupted build resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audioae.audio import read_audio, resample, write_audio
from audioae.data import synthetic
from audioae.fileio import atomic_write_text

log = logging.getLogger("build_corpus")

SR = 16000
SPLITS = ("train", "val", "test")
AUDIO_RE = re.compile(r"\.(wav|ogg|flac|g722|gsm|mp3|wv)$", re.IGNORECASE)
ARCHIVE_SEP = "::"  # "archive.zip::member.ogg" names a file inside a zip archive
SPEECH_TOP_DB = 35.0  # trim threshold below the clip's peak for speech edges
NOISE_TOP_DB = 50.0
MIN_RMS_DB = -50.0  # a clip quieter than this (dBFS, after trimming) is treated as silence
NOISE_CHUNK_SECONDS = 15.0  # long noise files (music, ambience) are cut into pieces this long
NOISE_CAP_SECONDS = 900.0  # at most this much audio from one noise source: keeps the mix balanced
TEST_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
TEST_PER_CELL = 4  # mixtures per (noise type, SNR)
VAL_PER_CELL = 2  # the val split has 12 noise folders: 144 pairs


# --------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class PackageSource:
    """Audio files of one Debian package (``dpkg -L``), filtered by path regexes.

    ``val_regex`` moves matching files of a training source to the validation split (used for
    whole fillets levels, so no sentence is in both)."""

    name: str
    package: str
    kind: str  # "speech" | "noise"
    split: str  # "train" | "val" | "test"
    include: str = ""
    exclude: str = ""
    val_regex: str = ""
    note: str = ""
    archive: str = ""  # regex of a zip archive in the package whose members are the audio files


_FILLETS_VAL_LEVELS = r"/sound/(cabin1|city|elk|hanoi|party1|steel|windoze)/"

PACKAGE_SOURCES: tuple[PackageSource, ...] = (
    # real speech
    PackageSource("asterisk_en_allison", "asterisk-core-sounds-en-g722", "speech", "train", r"\.g722$",
                  note="US English studio prompts, one female voice, G.722"),
    PackageSource("asterisk_es_allison", "asterisk-core-sounds-es-g722", "speech", "train", r"\.g722$",
                  note="Mexican Spanish studio prompts, G.722"),
    PackageSource("fillets_cs", "fillets-ng-data-cs", "speech", "train", r"\.ogg$", val_regex=_FILLETS_VAL_LEVELS,
                  note="Czech game dialogs, many voice actors, 22 kHz"),
    PackageSource("fillets_nl", "fillets-ng-data-nl", "speech", "train", r"\.ogg$", val_regex=_FILLETS_VAL_LEVELS,
                  note="Dutch game dialogs, many voice actors, 22 kHz"),
    PackageSource("asterisk_es_co", "asterisk-prompt-es-co", "speech", "train", r"\.gsm$",
                  note="Colombian Spanish prompts, GSM 8 kHz (narrow-band)"),
    PackageSource("asterisk_it_menardi", "asterisk-prompt-it-menardi-wav", "speech", "train", r"\.wav$",
                  note="Italian prompts, one female voice, 8 kHz (narrow-band)"),
    PackageSource("klettres", "klettres-data", "speech", "train", r"\.(ogg|wav)$",
                  note="letters and syllables spoken by native speakers of ~20 languages (added after READY)"),
    PackageSource("ktuberling", "ktuberling-data", "speech", "train", r"\.(ogg|wav)$",
                  note="object names spoken in ~25 languages, many speakers (added after READY)"),
    PackageSource("asterisk_fr_armelle", "asterisk-prompt-fr-armelle", "speech", "val", r"\.gsm$",
                  note="French prompts, one female voice, GSM 8 kHz (narrow-band); validation speaker"),
    # held-out speakers: evaluation only
    PackageSource("asterisk_fr_june", "asterisk-core-sounds-fr-g722", "speech", "test", r"\.g722$",
                  note="Canadian French prompts, reserved for evaluation"),
    PackageSource("asterisk_it_carlo", "asterisk-core-sounds-it-g722", "speech", "test", r"\.g722$",
                  note="Italian prompts (male), reserved for evaluation"),
    PackageSource("asterisk_ru_ivr", "asterisk-core-sounds-ru-g722", "speech", "test", r"\.g722$",
                  note="Russian prompts, reserved for evaluation"),
    PackageSource("pocketsphinx", "pocketsphinx-testdata", "speech", "test", r"\.wav$",
                  note="English read speech (LibriVox reader, card-game speaker); own held-out speakers"),
    # real noise
    PackageSource("fillets_sfx", "fillets-ng-data", "noise", "train", r"/sound/.*\.ogg$",
                  note="game sound effects"),
    PackageSource("fillets_music", "fillets-ng-data", "noise", "train", r"/music/.*\.ogg$", note="game music"),
    PackageSource("lugaru", "lugaru-data", "noise", "train", r"\.ogg$", note="game sound effects and music"),
    PackageSource("freegish", "freegish-data", "noise", "train", r"\.wav$", note="game sound effects"),
    PackageSource("btanks", "btanks-data", "noise", "train", r"\.ogg$", note="tank-game effects, ambience"),
    PackageSource("frozen_bubble", "frozen-bubble-data", "noise", "train", r"/snd/.*\.ogg$", note="game effects"),
    PackageSource("lincity", "lincity-ng-data", "noise", "train", r"\.ogg$", note="city-game effects and music"),
    PackageSource("etr", "extremetuxracer-data", "noise", "train", r"\.(ogg|wav)$", note="racing effects, music"),
    PackageSource("sound_icons", "sound-icons", "noise", "train", r"\.wav$", note="short UI sounds"),
    PackageSource("heroes", "heroes-sound-effects", "noise", "train", r"\.wav$", note="game sound effects"),
    PackageSource("moh_music", "asterisk-moh-opsound-wav", "noise", "train", r"\.wav$",
                  note="music on hold, 8 kHz"),
    PackageSource("teeworlds", "teeworlds-data", "noise", "train", r"\.wv$",
                  note="game effects and music, WavPack (added after READY)"),
    PackageSource("neverball", "neverball-common", "noise", "train", r"\.ogg$",
                  note="game effects and music (added after READY)"),
    PackageSource("warzone_sfx", "warzone2100-data", "noise", "train", r"::(audio/sfx|music)/", archive=r"\.wz$",
                  note="weapons, vehicles, explosions, interface, music (zip archive; added after READY)"),
    PackageSource("pingus", "pingus-data", "noise", "val", r"\.wav$", note="game effects; validation noise"),
    PackageSource("alienblaster", "alienblaster-data", "noise", "val", r"\.wav$", note="validation noise"),
    # held-out noise: evaluation only
    PackageSource("keyboard", "bucklespring-data", "noise", "test", r"\.wav$",
                  note="mechanical keyboard key presses; own held-out noise type"),
)

OPENSFX_CAT = "/usr/share/games/openttd/baseset/opensfx/opensfx.cat"  # openttd-opensfx: test only

# Text-to-speech voices. The split of each voice is fixed here.
ESPEAK_LANGS = ("en", "de", "es", "nl", "cs", "pl", "sv", "it", "fr", "eo", "sl", "bg", "ru")
ESPEAK_VAL_VARIANTS = ("Andy", "belinda", "f4", "m6", "steph2", "klatt4")
FLITE_VOICES = {"kal16": "train", "awb": "train", "rms": "train", "slt": "train", "kal": "val"}
FESTIVAL_VOICES = {  # voice command: (text language, split)
    "voice_kal_diphone": ("en", "train"),
    "voice_ked_diphone": ("en", "train"),
    "voice_cmu_us_slt_arctic_hts": ("en", "train"),
    "voice_lp_diphone": ("it", "train"),
    "voice_pc_diphone": ("it", "train"),
    "voice_czech_dita": ("cs", "train"),
    "voice_czech_machac": ("cs", "train"),
    "voice_czech_krb": ("cs", "train"),
    "voice_suo_fi_lj_diphone": ("en", "train"),
    "voice_hy_fi_mv_diphone": ("en", "train"),
    "voice_upc_ca_ona_hts": ("es", "train"),
}


# --------------------------------------------------------------------------------------------
# Audio helpers


def decode(path: str | Path) -> np.ndarray:
    """An audio file as mono float32 at 16 kHz: libsndfile for WAV/Ogg/FLAC (in-process, fast),
    ffmpeg for what libsndfile cannot read (G.722, GSM)."""
    if ARCHIVE_SEP in str(path):
        archive, member = str(path).split(ARCHIVE_SEP, 1)
        with zipfile.ZipFile(archive) as zf:
            x, sr = sf.read(io.BytesIO(zf.read(member)), dtype="float32", always_2d=True)
        return resample(x.mean(1), sr, SR).numpy()
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return resample(x.mean(1), sr, SR).numpy()
    except (sf.LibsndfileError, RuntimeError):
        pass
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def trim(x: np.ndarray, top_db: float) -> np.ndarray:
    """Cut leading and trailing silence (librosa), keeping 50 ms of margin on each side."""
    import librosa

    if len(x) == 0:
        return x
    _, (start, end) = librosa.effects.trim(x, top_db=top_db, frame_length=512, hop_length=128)
    margin = int(0.05 * SR)
    return x[max(0, start - margin) : min(len(x), end + margin)]


def clean_clip(x: np.ndarray, kind: str) -> np.ndarray | None:
    """Trimmed clip, or ``None`` when it is too short or near-silent to be useful."""
    x = np.nan_to_num(x.astype(np.float32))
    x = trim(x, SPEECH_TOP_DB if kind == "speech" else NOISE_TOP_DB)
    min_len = 0.5 if kind == "speech" else 0.15
    if len(x) < min_len * SR or rms_db(x) < MIN_RMS_DB:
        return None
    peak = float(np.abs(x).max())
    if peak > 1.0:
        x = x / peak
    return x


def save(path: Path, x: np.ndarray, subtype: str = "PCM_16") -> None:
    write_audio(path, x[None, :].astype(np.float32), SR, subtype=subtype)


def wav_seconds(path: Path) -> float:
    return sf.info(str(path)).duration


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80]


# --------------------------------------------------------------------------------------------
# Package sources


def package_files(package: str) -> list[str]:
    """Files a Debian package installed (``dpkg -L``); empty if it is not installed."""
    res = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("package %s is not installed: skipped (run recipes/install_corpus_packages.sh)", package)
        return []
    return sorted(p for p in res.stdout.splitlines() if AUDIO_RE.search(p) and os.path.isfile(p))


def archive_members(src: PackageSource) -> list[str]:
    """``archive::member`` names of the audio files inside a package's zip archives."""
    res = subprocess.run(["dpkg", "-L", src.package], capture_output=True, text=True)
    members = []
    for archive in sorted(p for p in res.stdout.splitlines() if re.search(src.archive, p) and os.path.isfile(p)):
        with zipfile.ZipFile(archive) as zf:
            members += [f"{archive}{ARCHIVE_SEP}{m}" for m in zf.namelist() if AUDIO_RE.search(m)]
    return sorted(members)


def source_jobs(src: PackageSource, out: Path) -> list[tuple[str, Path]]:
    """``(input file, output wav)`` pairs for one package source."""
    jobs = []
    for f in archive_members(src) if src.archive else package_files(src.package):
        if src.include and not re.search(src.include, f):
            continue
        if src.exclude and re.search(src.exclude, f):
            continue
        split = "val" if src.val_regex and re.search(src.val_regex, f) else src.split
        parts = Path(f).parts
        rel = safe_name("_".join(parts[-3:]) if src.kind == "speech" else "_".join(parts[-2:]))
        rel = re.sub(r"\.(wav|ogg|flac|g722|gsm|mp3|wv)$", "", rel, flags=re.IGNORECASE)
        jobs.append((f, out / split / src.kind / src.name / f"{rel}.wav"))
    return jobs


def convert_one(src: PackageSource, infile: str, outfile: Path) -> int:
    """Decode, trim, drop silence, and write; long noise files become several chunks. Returns the
    number of files written."""
    if outfile.exists() or outfile.with_name(outfile.stem + "_c000.wav").exists():
        return 0
    try:
        x = decode(infile)
    except subprocess.CalledProcessError as exc:
        log.warning("cannot decode %s: %s", infile, exc.stderr.decode(errors="replace").strip()[:200])
        return 0
    x = clean_clip(x, src.kind)
    if x is None:
        return 0
    chunk = int(NOISE_CHUNK_SECONDS * SR)
    if src.kind == "noise" and len(x) > 1.5 * chunk:
        pieces = [(i, clean_clip(x[start : start + chunk], "noise"))
                  for i, start in enumerate(range(0, len(x) - chunk // 3, chunk))]
        kept = [(i, piece) for i, piece in pieces if piece is not None]
        # Last chunk first: _c000 (the first, trimmed to start on sound) is written last, so its
        # presence above means the file is complete; a build killed mid-file redoes it.
        for i, piece in reversed(kept):
            save(outfile.with_name(f"{outfile.stem}_c{i:03d}.wav"), piece)
        return len(kept)
    save(outfile, x)
    return 1


def build_packages(out: Path, sources: tuple[PackageSource, ...], workers: int) -> None:
    for src in sources:
        jobs = source_jobs(src, out)
        if not jobs:
            continue
        with ThreadPoolExecutor(workers) as pool:  # ffmpeg runs in subprocesses: threads suffice
            written = sum(pool.map(convert_one, [src] * len(jobs), *zip(*jobs, strict=True)))
        log.info("%s (%s): %d inputs, %d new files", src.name, src.package, len(jobs), written)
        if src.kind == "noise":
            cap_source(out / src.split / "noise" / src.name)


def cap_source(folder: Path, cap: float = NOISE_CAP_SECONDS) -> None:
    """Keep at most ``cap`` seconds in a noise folder: drop chunks of the longest files first, so
    one album of music cannot outweigh every other noise (the trainer samples by duration)."""
    if not folder.is_dir():
        return
    files = sorted(folder.glob("*.wav"))
    total = sum(wav_seconds(f) for f in files)
    chunks = sorted((f for f in files if re.search(r"_c\d{3}\.wav$", f.name)), key=lambda f: (-int(f.stem[-3:]), f.name))
    for f in chunks:
        if total <= cap:
            break
        if f.stem.endswith("_c000"):
            continue  # every file keeps its first piece
        total -= wav_seconds(f)
        f.unlink()


# --------------------------------------------------------------------------------------------
# OpenTTD OpenSFX (held-out noise)


def opensfx_samples(path: str = OPENSFX_CAT) -> Iterator[tuple[str, np.ndarray, int]]:
    """``(name, mono samples, rate)`` for each WAV inside OpenTTD's ``opensfx.cat``.

    The file starts with a table of ``(offset, size)`` little-endian uint32 pairs (the offset's top
    bit is a format flag); each entry is a length-prefixed name followed by a RIFF WAV."""
    data = Path(path).read_bytes()
    count = (struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF) // 8
    for i in range(count):
        offset, size = struct.unpack_from("<II", data, 8 * i)
        offset &= 0x7FFFFFFF
        name_len = data[offset]
        name = data[offset + 1 : offset + 1 + name_len].rstrip(b"\0").decode("latin-1")
        try:
            x, sr = sf.read(io.BytesIO(data[offset + 1 + name_len : offset + size]), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError):
            continue  # the set holds one deliberately empty entry
        yield name.split('"')[1] if '"' in name else name, x.mean(1), sr


def build_opensfx(out: Path) -> None:
    folder = out / "test" / "noise" / "openttd"
    if not Path(OPENSFX_CAT).exists():
        log.warning("openttd-opensfx not installed: no openttd test noise")
        return
    n = 0
    for i, (name, x, sr) in enumerate(opensfx_samples()):
        target = folder / f"{i:02d}_{safe_name(name)}.wav"
        if target.exists():
            continue
        clip = clean_clip(resample(x, sr, SR).numpy(), "noise")
        if clip is not None:
            save(target, clip)
            n += 1
    log.info("openttd-opensfx: %d new test noise files", n)


# --------------------------------------------------------------------------------------------
# Text-to-speech


def fillets_sentences(lang: str) -> list[str]:
    """Dialog lines of Fish Fillets NG in one language (``fillets-ng-data`` scripts)."""
    root = Path("/usr/share/games/fillets-ng/script")
    pattern = re.compile(r'dialogId\("[^"]*",\s*"[^"]*",\s*"((?:[^"\\]|\\.)*)"\)' if lang == "en"
                         else r'dialogStr\("((?:[^"\\]|\\.)*)"\)')
    lines: list[str] = []
    for f in sorted(root.glob(f"*/dialogs_{lang}.lua" if lang != "en" else "*/dialogs_en.lua")):
        lines += [m.replace('\\"', '"') for m in pattern.findall(f.read_text(errors="replace"))]
    return [s for s in lines if 15 <= len(s) <= 220]


def fallback_sentences() -> list[str]:
    """English prose from the license texts every Debian system has."""
    text = " ".join(Path(p).read_text(errors="replace") for p in ("/usr/share/common-licenses/GPL-3",
                                                                  "/usr/share/common-licenses/Apache-2.0")
                    if Path(p).exists())
    parts = re.split(r"(?<=[.;:])\s+", re.sub(r"\s+", " ", text))
    return [p for p in parts if 20 <= len(p) <= 200 and not re.search(r"https?:|[<>{}]", p)]


def sentences(lang: str) -> list[str]:
    return fillets_sentences(lang) or (fallback_sentences() if lang == "en" else [])


def espeak_variants() -> list[str]:
    res = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True)
    return sorted({line.split()[4].split("/")[-1] for line in res.stdout.splitlines()[1:] if len(line.split()) >= 5})


# The TTS commands take the output path last, so that ``partial(command, ...)`` is a job.
def tts_espeak(text: str, voice: str, rate: int, pitch: int, path: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True, timeout=60)


def tts_flite(text: str, voice: str, path: Path) -> None:
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, capture_output=True, timeout=60)


def tts_festival(text: str, voice: str, path: Path, *, encoding: str = "latin-1") -> None:
    """Festival's ``text2wave`` reads 8-bit text: ISO-8859-2 for the Czech voices, Latin-1 otherwise."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding=encoding, errors="replace", delete=False) as fh:
        fh.write(text)
    try:
        subprocess.run(["text2wave", "-eval", f"({voice})", "-o", str(path), fh.name],
                       check=True, capture_output=True, timeout=120)
    finally:
        os.unlink(fh.name)


def synth_to(out_wav: Path, make: Callable[[Path], None]) -> bool:
    """Run one TTS command into a temp file, then trim and store it at 16 kHz."""
    if out_wav.exists():
        return False
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "tts.wav"
        try:
            make(raw)
            wav, sr, _ = read_audio(raw)
        except (subprocess.SubprocessError, OSError, ValueError) as exc:
            log.debug("TTS failed for %s: %s", out_wav.name, exc)
            return False
        x = clean_clip(resample(wav.mean(0), sr, SR).numpy(), "speech")
    if x is None:
        return False
    save(out_wav, x)
    return True


def _stable_rng(*keys: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256("/".join(keys).encode()).hexdigest()[:12], 16))


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def synthesize_all(jobs: list[tuple[Path, Callable[[Path], None]]], workers: int) -> int:
    """Run ``(target, tts_command)`` jobs in a thread pool (the work is in the subprocesses);
    returns how many new utterances were stored."""
    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(lambda job: synth_to(*job), jobs))


def build_espeak(out: Path, per_voice: int, workers: int) -> None:
    """espeak-ng: every variant speaks sentences in several languages, at varied rate and pitch.

    Variants in :data:`ESPEAK_VAL_VARIANTS` go to validation."""
    variants = espeak_variants()
    texts = {lang: sentences(lang) for lang in ESPEAK_LANGS}
    jobs = []
    for var in variants:
        split = "val" if var in ESPEAK_VAL_VARIANTS else "train"
        rng = _stable_rng("espeak", var)
        langs = [lang for lang in ESPEAK_LANGS if texts[lang]]
        for k in range(per_voice):
            lang = _pick(rng, langs)
            text = _pick(rng, texts[lang])
            rate, pitch = int(rng.integers(120, 200)), int(rng.integers(20, 80))
            target = out / split / "speech" / "espeak" / f"{safe_name(var)}_{lang}_{k:03d}.wav"
            jobs.append((target, partial(tts_espeak, text, f"{lang}+{var}", rate, pitch)))
    made = synthesize_all(jobs, workers)
    log.info("espeak-ng: %d variants, %d new utterances", len(variants), made)


def build_flite(out: Path, per_voice: int, workers: int) -> None:
    texts = sentences("en")
    jobs = []
    for voice, split in FLITE_VOICES.items():
        rng = _stable_rng("flite", voice)
        for k in range(per_voice):
            jobs.append((out / split / "speech" / "flite" / f"{voice}_{k:03d}.wav",
                         partial(tts_flite, _pick(rng, texts), voice)))
    made = synthesize_all(jobs, workers)
    log.info("flite: %d new utterances", made)


def festival_voices() -> set[str]:
    root = Path("/usr/share/festival/voices")
    return {f"voice_{d.name}" for d in root.glob("*/*") if d.is_dir()} if root.is_dir() else set()


def build_festival(out: Path, per_voice: int, workers: int) -> None:
    installed = festival_voices()
    jobs, voices = [], 0
    for voice, (lang, split) in FESTIVAL_VOICES.items():
        if voice not in installed:
            continue
        voices += 1
        texts = sentences(lang) or sentences("en")
        enc = "iso-8859-2" if lang == "cs" else "latin-1"
        rng = _stable_rng("festival", voice)
        for k in range(per_voice):
            jobs.append((out / split / "speech" / "festival" / f"{voice[6:]}_{k:03d}.wav",
                         partial(tts_festival, _pick(rng, texts), voice, encoding=enc)))
    made = synthesize_all(jobs, workers)
    log.info("festival: %d voices, %d new utterances", voices, made)


# --------------------------------------------------------------------------------------------
# Synthetic noise and babble


def modulated(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Coloured noise under a slow random envelope: non-stationary, like passing traffic or wind."""
    x = synthetic.colored_noise(rng, seconds, sr, float(rng.uniform(0.0, 2.0)))
    knots = np.abs(rng.standard_normal(max(2, int(seconds * rng.uniform(0.5, 4))))) + 0.05
    env = np.interp(np.linspace(0, len(knots) - 1, len(x)), np.arange(len(knots)), knots)
    y = x * env
    return (0.5 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def bursts(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Bursts of filtered noise 50-400 ms long: door slams, bangs, coughs."""
    n = int(seconds * sr)
    x = np.zeros(n, np.float32)
    for _ in range(max(1, int(seconds * rng.uniform(0.5, 3)))):
        length = int(rng.uniform(0.05, 0.4) * sr)
        pos = int(rng.integers(0, max(1, n - length)))
        burst = synthetic.colored_noise(rng, length / sr, sr, float(rng.uniform(0, 2)))[: n - pos]
        x[pos : pos + len(burst)] += burst * np.exp(-np.arange(len(burst)) / (len(burst) / rng.uniform(2, 6)))
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def impacts(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Struck objects in irregular trains, 1-12 hits a second: each hit a short noise transient
    and a few damped modes (300-7000 Hz, 3-60 ms) of one object, its strength varying per hit:
    footsteps, dishes, knocking, typing."""
    n = int(seconds * sr)
    x = np.zeros(n)
    freqs = rng.uniform(300, 7000, size=int(rng.integers(2, 6)))  # one object's modes
    decays = rng.uniform(0.003, 0.06, size=len(freqs))
    t = np.arange(int(0.3 * sr)) / sr
    hit = sum(rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) * np.exp(-t / d)
              for f, d in zip(freqs, decays, strict=True))
    hit[: int(0.002 * sr)] += rng.standard_normal(int(0.002 * sr)) * rng.uniform(0.2, 1.5)
    rate = rng.uniform(1, 12)
    pos = int(rng.exponential(sr / rate))
    while pos < n:
        m = min(len(hit), n - pos)
        x[pos : pos + m] += hit[:m] * rng.uniform(0.2, 1.0) * (1 + 0.05 * rng.standard_normal(m))
        pos += int(rng.exponential(sr / rate)) + int(0.02 * sr)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


SYNTH_FAMILIES: dict[str, Callable[[np.random.Generator, float, int], np.ndarray]] = {
    **synthetic.NOISE_FAMILIES,
    "modulated": modulated,
    "bursts": bursts,
    "impacts": impacts,
}
TEST_SYNTH_FAMILIES = ("white", "pink", "hum", "clicks", "tones")


def build_synthetic(out: Path, split: str, per_family: int, seconds: float) -> None:
    made = 0
    for family, fn in SYNTH_FAMILIES.items():
        if split == "test" and family not in TEST_SYNTH_FAMILIES:
            continue
        folder = out / split / "noise" / (family if split == "test" else f"synthetic_{family}")
        for k in range(per_family):
            target = folder / f"{family}_{k:03d}.wav"
            if target.exists():
                continue
            rng = _stable_rng("synthetic", split, family, str(k))  # a different seed per split
            x = fn(rng, seconds, SR) * 10 ** (rng.uniform(-12, 0) / 20)
            save(target, x.astype(np.float32), subtype="FLOAT")
            made += 1
    log.info("synthetic noise (%s): %d new clips", split, made)


def load_clips(folder: Path) -> list[np.ndarray]:
    return [sf.read(str(f), dtype="float32")[0] for f in sorted(folder.rglob("*.wav"))]


def babble_clip(rng: np.random.Generator, utterances: list[np.ndarray], seconds: float, talkers: int) -> np.ndarray:
    """``talkers`` streams of back-to-back utterances at random levels (±6 dB), summed."""
    n = int(seconds * SR)
    mix = np.zeros(n, np.float32)
    for _ in range(talkers):
        stream = np.zeros(n, np.float32)
        pos = int(rng.integers(0, SR))
        while pos < n:
            u = utterances[int(rng.integers(len(utterances)))]
            u = u / (np.sqrt(np.mean(u**2)) + 1e-9)
            take = min(len(u), n - pos)
            stream[pos : pos + take] = u[:take]
            pos += take + int(rng.uniform(0.05, 0.4) * SR)
        mix += stream * 10 ** (rng.uniform(-6, 6) / 20)
    return (0.5 * mix / (np.abs(mix).max() + 1e-9)).astype(np.float32)


def build_babble(out: Path, split: str, count: int, seconds: float, exclude: str = "") -> None:
    """Babble from 4-8 talkers of the split's own speakers (test: every speaker but ``exclude``)."""
    folder = out / split / "noise" / "babble"
    tag = f"babble_no-{exclude}" if exclude else "babble"
    todo = [k for k in range(count) if not (folder / f"{tag}_{k:03d}.wav").exists()]
    if not todo:  # a rerun: skip loading the split's speech
        return
    speech_root = out / split / "speech"
    utterances = [u for d in sorted(speech_root.iterdir()) if d.is_dir() and d.name != exclude for u in load_clips(d)]
    if not utterances:
        log.warning("no %s speech for babble", split)
        return
    made = 0
    for k in todo:
        target = folder / f"{tag}_{k:03d}.wav"
        rng = _stable_rng("babble", split, exclude, str(k))
        save(target, babble_clip(rng, utterances, seconds, int(rng.integers(4, 9))), subtype="FLOAT")
        made += 1
    log.info("babble (%s%s): %d new clips from %d utterances", split, f", without {exclude}" if exclude else "",
             made, len(utterances))


# --------------------------------------------------------------------------------------------
# Test mixtures


def scale_to_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that 10·log10(P_clean / P_noise) equals ``snr_db`` over the whole signal."""
    p_clean = np.mean(clean.astype(np.float64) ** 2)
    p_noise = np.mean(noise.astype(np.float64) ** 2) + 1e-20
    return (noise * np.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))).astype(np.float32)


def measured_snr(clean: np.ndarray, noise: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / (np.mean(noise.astype(np.float64) ** 2) + 1e-20)))


def concat_to_length(rng: np.random.Generator, clips: list[np.ndarray], n: int, gap: tuple[float, float]) -> np.ndarray:
    """Random clips of one pool back to back (gaps in seconds) until ``n`` samples, cropped to ``n``."""
    parts, total = [], 0
    while total < n:
        c = clips[int(rng.integers(len(clips)))]
        g = np.zeros(int(rng.uniform(*gap) * SR), np.float32)
        parts += [c, g]
        total += len(c) + len(g)
    return np.concatenate(parts)[:n].astype(np.float32)


def noise_track(rng: np.random.Generator, clips: list[np.ndarray], n: int) -> np.ndarray:
    """A noise signal of ``n`` samples: a random crop of a long clip, or short clips joined."""
    long = [c for c in clips if len(c) >= n]
    if long and rng.random() < 0.7:
        c = long[int(rng.integers(len(long)))]
        start = int(rng.integers(0, len(c) - n + 1))
        return c[start : start + n].astype(np.float32)
    return concat_to_length(rng, clips, n, (0.0, 0.05))


def make_mixture(rng: np.random.Generator, speech: list[np.ndarray], noise: list[np.ndarray], snr_db: float,
                 seconds: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``(noisy, clean, gain_db)``: speech and noise of exactly ``seconds`` at ``snr_db``, both
    scaled by one gain that puts the noisy peak between -20 and -1 dBFS."""
    n = int(round(seconds * SR))
    clean = concat_to_length(rng, speech, n, (0.1, 0.4))
    noise_sig = scale_to_snr(clean, noise_track(rng, noise, n), snr_db)
    noisy = clean + noise_sig
    gain_db = float(rng.uniform(-20, -1)) - float(20 * np.log10(np.abs(noisy).max() + 1e-9))
    g = np.float32(10 ** (gain_db / 20))
    return noisy * g, clean * g, gain_db


def build_mixtures(out: Path, split: str = "test", snrs: tuple[float, ...] = TEST_SNRS,
                   per_cell: int = TEST_PER_CELL) -> None:
    """Fixed noisy/clean pairs in ``<split>/mixtures``: every noise folder of the split at every
    SNR, ``per_cell`` each, 3-8 s long, each from one speaker (folder) of the split.

    ``test`` is the benchmark's set: held-out speakers, and babble never contains the target's
    own speaker. ``val`` is the same kind of set from the validation split, so checkpoints can be
    compared per noise type and SNR (``benchmarks/denoise_bench.py --model M --testset corpus/val/mixtures --out F``)
    without looking at the test set; its babble is the split's own."""
    mix_dir = out / split / "mixtures"
    if (mix_dir / "meta.json").exists():
        log.info("%s mixtures exist: kept (delete %s to rebuild)", split, mix_dir)
        return
    speakers = {d.name: load_clips(d) for d in sorted((out / split / "speech").iterdir()) if d.is_dir()}
    noise_root = out / split / "noise"
    types = sorted(d.name for d in noise_root.iterdir() if d.is_dir())
    noise_pools = {t: load_clips(noise_root / t) for t in types if t != "babble"}
    babble_files = sorted((noise_root / "babble").rglob("*.wav"))
    babble = {spk: [sf.read(str(f), dtype="float32")[0] for f in babble_files
                    if split != "test" or f"no-{spk}_" in f.name] for spk in speakers}
    meta = []
    names = sorted(speakers)
    # Speakers drawn in proportion to the square root of their speech: a 33 s speaker still
    # appears, without its few sentences being reused in a quarter of the mixtures.
    weights = np.sqrt([sum(len(c) for c in speakers[s]) for s in names])
    weights /= weights.sum()
    for t in types:
        for snr in snrs:
            for k in range(per_cell):
                keys = ("mixture", t, str(snr), str(k))
                rng = _stable_rng(*(keys if split == "test" else (split, *keys)))
                spk = names[int(rng.choice(len(names), p=weights))]
                pool = babble[spk] if t == "babble" else noise_pools[t]
                seconds = float(np.round(rng.uniform(3.0, 8.0), 2))
                noisy, clean, gain_db = make_mixture(rng, speakers[spk], pool, snr, seconds)
                name = f"{t}_{'m' if snr < 0 else 'p'}{abs(int(snr)):02d}dB_{k:02d}.wav"
                write_audio(mix_dir / "noisy" / name, noisy[None], SR, subtype="FLOAT")
                write_audio(mix_dir / "clean" / name, clean[None], SR, subtype="FLOAT")
                meta.append({"file": name, "noise_type": t, "snr_db": snr, "speaker": spk, "seconds": seconds,
                             "gain_db": round(gain_db, 2)})
    _write_json(mix_dir / "meta.json", {"sample_rate": SR, "snrs": list(snrs), "noise_types": types,
                                        "speakers": names, "mixtures": meta})
    log.info("%s mixtures: %d (%d types x %d SNRs x %d)", split, len(meta), len(types), len(snrs), per_cell)


# --------------------------------------------------------------------------------------------
# Manifest


def _write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def summarize(out: Path) -> dict:
    """Files and hours per split, kind and source folder; written to ``corpus/manifest.json``."""
    summary: dict = {}
    for split in SPLITS:
        for kind in ("speech", "noise"):
            root = out / split / kind
            if not root.is_dir():
                continue
            for d in sorted(p for p in root.iterdir() if p.is_dir()):
                files = sorted(d.rglob("*.wav"))
                secs = sum(wav_seconds(f) for f in files)
                summary.setdefault(split, {}).setdefault(kind, {})[d.name] = {"files": len(files), "seconds": round(secs, 1)}
    for split in ("val", "test"):
        mix = out / split / "mixtures" / "meta.json"
        if mix.exists():
            summary[f"{split}_mixtures"] = len(json.loads(mix.read_text())["mixtures"])
    _write_json(out / "manifest.json", summary)
    return summary


def write_manifest(out: Path) -> dict:
    """``corpus/manifest.json`` and ``manifest.md`` (each written whole or not at all, as every
    file here: a build killed while writing one leaves the one before); returns the summary."""
    summary = summarize(out)
    atomic_write_text(out / "manifest.md", summary_markdown(summary))
    return summary


def summary_markdown(summary: dict) -> str:
    """One table row per split, kind and source: files and minutes (for docs/corpus.md)."""
    rows = ["| split | kind | source | files | minutes |", "|---|---|---|---:|---:|"]
    for split in SPLITS:
        for kind, sources in summary.get(split, {}).items():
            for name, s in sources.items():
                rows.append(f"| {split} | {kind} | {name} | {s['files']} | {s['seconds'] / 60:.1f} |")
            total = sum(s["seconds"] for s in sources.values())
            files = sum(s["files"] for s in sources.values())
            rows.append(f"| **{split}** | **{kind}** | **all** | **{files}** | **{total / 60:.1f}** ({total / 3600:.2f} h) |")
    return "\n".join(rows) + "\n"


def summary_lines(summary: dict) -> list[str]:
    lines = []
    for split in SPLITS:
        for kind, sources in summary.get(split, {}).items():
            files = sum(s["files"] for s in sources.values())
            hours = sum(s["seconds"] for s in sources.values()) / 3600
            lines.append(f"{split}/{kind}: {files} files, {hours:.2f} h, {len(sources)} sources")
    for split in ("val", "test"):
        if f"{split}_mixtures" in summary:
            lines.append(f"{split}/mixtures: {summary[f'{split}_mixtures']} pairs")
    return lines


# --------------------------------------------------------------------------------------------

STAGES = ("packages", "opensfx", "espeak", "flite", "festival", "synthetic", "babble", "babble_test", "mixtures",
          "val_mixtures", "summary")
# Not in the default run: doubles the training babble (the one noise type whose STOI the model
# barely improves on val: 0.755 vs the input's 0.751). The shipped denoiser's stages 1-3 trained
# on the first 300 clips, its perceptual stages 4 and 5 on all 600 (recipes/train_denoiser.sh
# builds them before stage 4).
EXTRA_STAGES = ("babble_extra",)


def run(out: Path, stages: tuple[str, ...], workers: int, scale: float, only: tuple[str, ...] = ()) -> dict | None:
    """Build the ``stages``; returns the corpus summary when the summary stage ran."""
    def n(x: int) -> int:
        return max(1, int(round(x * scale)))

    if "packages" in stages:
        build_packages(out, tuple(s for s in PACKAGE_SOURCES if not only or s.name in only), workers)
    if "opensfx" in stages:
        build_opensfx(out)
    if "espeak" in stages:
        build_espeak(out, n(20), workers)
    if "flite" in stages:
        build_flite(out, n(120), workers)
    if "festival" in stages:
        build_festival(out, n(60), workers)
    if "synthetic" in stages:
        build_synthetic(out, "train", n(80), 8.0)
        build_synthetic(out, "val", n(8), 8.0)
        build_synthetic(out, "test", n(8), 10.0)
    if "babble" in stages:
        build_babble(out, "train", n(300), 8.0)
        build_babble(out, "val", n(40), 8.0)
    if "babble_extra" in stages:
        build_babble(out, "train", n(600), 8.0)  # clips 300-599: the first 300 stay as they are
    if "babble_test" in stages:
        test_speakers = sorted(d.name for d in (out / "test" / "speech").iterdir() if d.is_dir())
        for spk in test_speakers:
            build_babble(out, "test", n(6), 10.0, exclude=spk)
    if "mixtures" in stages:
        build_mixtures(out, "test")
    if "val_mixtures" in stages:
        build_mixtures(out, "val", per_cell=VAL_PER_CELL)
    if "summary" not in stages:
        return None
    summary = write_manifest(out)
    for line in summary_lines(summary):
        log.info("%s", line)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("corpus"))
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated package source names (default: all)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the number of generated clips")
    ap.add_argument("--ready", action="store_true", help="write corpus/READY with the summary at the end (after "
                    "the manifest; never half written)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)  # a shared machine: one thread per worker is plenty for short clips
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = sorted(set(stages) - set(STAGES) - set(EXTRA_STAGES))
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES + EXTRA_STAGES)}")
    if set(stages) - {"summary"} and importlib.util.find_spec("librosa") is None:
        # Before the packages stage's apt work and any clip: trim() needs it, and the build
        # failed on it only once the first clip was cut.
        print("build_corpus.py: librosa is missing (it trims the clips' silence); install the recipes extra "
              "first: pip install -e '.[recipes]'", file=sys.stderr)
        return 2
    only = tuple(s for s in args.only.split(",") if s)
    names = [source.name for source in PACKAGE_SOURCES]
    if set(only) - set(names):  # a typo built nothing and exited 0
        ap.error(f"unknown --only source(s) {sorted(set(only) - set(names))}; valid: {', '.join(names)}")
    summary = run(args.out, stages, args.workers, args.scale, only)
    if args.ready:
        # Last, and whole or not at all: READY claims a complete corpus (recipes/train_denoiser.sh
        # builds one unless it is there), so a build killed before it, or while writing it, leaves none.
        lines = summary_lines(summary or write_manifest(args.out))
        atomic_write_text(args.out / "READY", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
