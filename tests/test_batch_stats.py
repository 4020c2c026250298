"""How often the folder tool asks the file system about each file: a folder of 100,000 recordings
on network storage pays for every stat. os.stat is watched as it runs (each call goes through)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_tree import noisy_signal

from audioae.audio import walk_audio
from audioae.batch import DenoiseOptions, FileDenoiser, FileTask, run_denoise
from audioae.checkpoint import load_checkpoint


class _CountedEntry:
    """A folder listing's entry whose ``stat()`` is counted in ``asked`` (os.DirEntry's methods
    cannot be replaced: its type is built in); everything else is the entry's own."""

    def __init__(self, entry: os.DirEntry, asked: Counter):
        self._entry, self._asked = entry, asked

    def stat(self, *args, **kwargs):
        self._asked[self._entry.path] += 1
        return self._entry.stat(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._entry, name)

    def __fspath__(self):
        return self._entry.path


class _CountedListing:
    """os.scandir's iterator, its entries counted (:class:`_CountedEntry`)."""

    def __init__(self, listing, asked: Counter):
        self._listing, self._asked = listing, asked

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._listing.__exit__(*exc)

    def __iter__(self):
        return (_CountedEntry(e, self._asked) for e in self._listing)

    def close(self):
        self._listing.close()


@pytest.fixture
def stats(monkeypatch) -> Counter:
    """The paths the file system is asked about from now on, counted: os.stat and os.lstat
    (os.path.isfile, getsize, exists, islink, realpath and Path.stat, is_symlink go through them)
    and a folder listing's entries' ``stat()`` (walk_audio's way to tell a named pipe). Each call
    goes through to the real one."""
    asked: Counter = Counter()
    real_stat, real_lstat, real_scandir = os.stat, os.lstat, os.scandir

    def key(path):
        return os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else path

    def stat(path, *args, **kwargs):
        asked[key(path)] += 1
        return real_stat(path, *args, **kwargs)

    def lstat(path, *args, **kwargs):
        asked[key(path)] += 1
        return real_lstat(path, *args, **kwargs)

    def scandir(*args, **kwargs):
        return _CountedListing(real_scandir(*args, **kwargs), asked)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "scandir", scandir)
    return asked


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_the_folder_search_stats_no_regular_file_and_still_passes_over_pipes_and_devices(tmp_path, stats, caplog):
    """walk_audio stat'ed every audio file it found, on top of listing its folder, to pass over
    named pipes and devices: the listing tells a regular file without one."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for rel in ("a.wav", "b.flac", "sub/c.mp3", ".hidden.wav", "x.m4a", "notes.txt"):
        (src / rel).write_bytes(b"not decoded by the search")
    (src / "link.wav").symlink_to(src / "a.wav")
    (src / "broken.wav").symlink_to(src / "nowhere.wav")
    (src / "sub" / "up").symlink_to(src, target_is_directory=True)  # a loop
    os.mkfifo(src / "pipe.wav")
    (src / "zero.ogg").symlink_to("/dev/zero")
    caplog.set_level(logging.WARNING)
    found = walk_audio(src)
    assert [rel for _, rel in found] == ["a.wav", "b.flac", "broken.wav", "link.wav", "sub/c.mp3"]
    assert [p for p, _ in found] == [src / rel for _, rel in found]
    assert f"{src}: passed over 2 name(s) that are no regular file (e.g. {src / 'pipe.wav'}: a named pipe)" \
        in caplog.text
    assert "passed over 1 .m4a file(s)" in caplog.text
    assert "sub/up: skipped, its files were searched already under another name (a link loop?)" in caplog.text
    # a named pipe and a link to a device are stat'ed (from their entries: that is how they are told),
    # a regular file is not, nor is a link to one (its entry's is_dir stat'ed the target, and keeps it)
    assert sorted(Path(p).name for p in stats if Path(p).suffix in (".wav", ".flac", ".mp3", ".ogg")) == \
        ["broken.wav", "pipe.wav", "zero.ogg"], stats


def test_a_fresh_output_folder_s_outputs_are_stat_ed_once_when_the_job_is_planned(tmp_path, causal_ckpt, stats):
    """In a folder no job had written to, each output was stat'ed to find files someone else put
    there, then again to find the outputs done: once now (plan_tasks asks twice before, in
    refusing an output that is an input: Path.exists, then Path.resolve's own stat, and resolve's
    lstat of each folder above it: one lstat now, and its folder resolved once for all its files)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(src / name, noisy_signal(np.random.default_rng(0), 0.3, 16000, 1), 16000)
    sf.write(out / "a.wav", np.zeros(1600, np.float32), 16000)  # someone's own, not a denoise run's
    stats.clear()  # (soundfile asks too, writing)
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (s["skipped"], s["ok"]) == (1, 1)
    assert stats[str(out / "a.wav")] <= 2, stats  # 4 before: Path.exists, resolve (an lstat, a stat), split_done


def test_an_mp3_input_is_stat_ed_once_for_its_bitrate_and_length(tmp_path, causal_ckpt, stats):
    """An MP3 was mapped to count its frames, then stat'ed again for its size (its bitrate):
    the mapping gives both."""
    sf.write(tmp_path / "in.mp3", noisy_signal(np.random.default_rng(0), 0.5, 16000, 1), 16000, format="MP3")
    task = FileTask(str(tmp_path / "in.mp3"), str(tmp_path / "out" / "in.mp3"), "in.mp3")
    stats.clear()  # (soundfile asks too, writing)
    assert FileDenoiser(load_checkpoint(causal_ckpt)).run(task).status == "ok"
    # _open's check that it still exists (libsndfile would say "System error."; its stat is kept,
    # to tell whether the file changed while it was read), soundfile's own os.path.isfile as it
    # opens a path, and that check, once the file is read
    assert stats[task.input] <= 3, stats  # 3, then 2, before that check


def test_the_plan_stats_each_input_once_and_asks_no_folder_what_its_listing_told(tmp_path, stats):
    """plan_tasks asked each input isdir, then stat'ed it, then resolved a folder once per other
    input folder; the folder search resolved each folder it pruned again (the walk had) and asked
    each whether it held a journal folder (isdir), which its listing had told."""
    from audioae.batch import plan_tasks
    from audioae.batch.journal import JOURNAL_NAME

    src, other = tmp_path / "in", tmp_path / "other"
    for sub in ("a", "b", "c"):
        (src / sub).mkdir(parents=True)
        sf.write(src / sub / "x.wav", np.zeros(160, np.float32), 16000)
    other.mkdir()
    sf.write(other / "y.wav", np.zeros(160, np.float32), 16000)
    sf.write(tmp_path / "solo.wav", np.zeros(160, np.float32), 16000)
    stats.clear()
    tasks = plan_tasks([src, other, tmp_path / "solo.wav"], tmp_path / "out")
    assert sorted(t.rel for t in tasks) == ["a/x.wav", "b/x.wav", "c/x.wav", "solo.wav", "y.wav"]
    assert not any(Path(p).name == JOURNAL_NAME for p in stats), stats  # 1 each before
    # (Python 3.11: a resolve is a realpath, whose lstat of each folder on the way counts, and a stat)
    assert all(1 <= stats[str(src / sub)] <= 2 for sub in ("a", "b", "c")), stats  # the walk's realpath, its islink (6)
    assert 1 <= stats[str(other)] <= 4, stats  # its stat, its resolve, the walk's realpath (15: one input folder more)
    assert 1 <= stats[str(src)] <= 7, stats  # and every realpath below it (22)
