"""Generated input trees for the folder-denoising tests (local engine and Ray), and the damaged
files the server, client and folder tests share (a copy cut short, a live recorder's WAV, an ID3 tag)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from audioae.data.synthetic import noise, speech_like


def noisy_signal(rng: np.random.Generator, seconds: float, sr: int, channels: int) -> np.ndarray:
    """``[T, C]`` speech-like signal plus noise, peak below 1."""
    chans = [speech_like(rng, seconds, sr) + 0.2 * noise(rng, seconds, sr, "pink") for _ in range(channels)]
    x = np.stack(chans, 1)
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


def write_tree(root: Path, tree, seed: int = 0) -> Path:
    """One file per ``(relative path, sample rate, channels, container, subtype, seconds)`` row."""
    rng = np.random.default_rng(seed)
    for rel, sr, ch, fmt, subtype, sec in tree:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, noisy_signal(rng, sec, sr, ch), sr, format=fmt, subtype=subtype)
    return root


def outputs(out: Path) -> set[str]:
    """Relative paths of the finished outputs (no manifest, lock, .part files or in-flight markers)."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
            and p.suffix != ".jsonl"}


def cut_short(data: bytes) -> bytes:
    """A file's bytes cut to half, its header still claiming all of it (an interrupted copy, a
    recorder that stopped mid-write)."""
    return data[: len(data) // 2]


def live_wav(wav: bytes) -> bytes:
    """A complete WAV whose data size is a live recorder's placeholder (0xFFFFFFFF: it claims none)."""
    live = bytearray(wav)
    at = live.find(b"data")
    live[at + 4 : at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    return bytes(live)


def whole_and_cut(folder: Path, x: np.ndarray, sr: int, ext: str = "wav", subtype: str = "PCM_16") -> tuple[Path, Path]:
    """``folder/whole.<ext>`` holding ``x`` ``[T]`` or ``[T, C]``, and ``folder/cut.<ext>``, its
    copy cut short (:func:`cut_short`)."""
    whole, cut = folder / f"whole.{ext}", folder / f"cut.{ext}"
    sf.write(whole, x, sr, subtype=subtype)
    cut.write_bytes(cut_short(whole.read_bytes()))
    return whole, cut


def _id3v2(payload: bytes) -> bytes:
    """An ID3v2.3 tag around ``payload`` (its size 7 bits a byte, "synchsafe")."""
    n = len(payload)
    return b"ID3\x03\x00\x00" + bytes((n >> s) & 0x7F for s in (21, 14, 7, 0)) + payload
