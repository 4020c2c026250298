"""The folder tool (`audioae denoise`, local engine): paths, formats, errors, resume, kill safety."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_tree import _id3v2, noisy_signal, outputs, whole_and_cut, write_tree

from audioae.batch import (
    DenoiseOptions,
    FileDenoiser,
    FileResult,
    FileTask,
    plan_tasks,
    read_manifest,
    run_denoise,
)
from audioae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from audioae.cli import main
from audioae.data.synthetic import noise
from audioae.enhance import denoise
from audioae.models import build_model

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

# (relative path, sample rate, channels, container, subtype, seconds)
TREE = [
    ("top.wav", 16000, 1, "WAV", "PCM_16", 1.5),
    ("sub/stereo.wav", 44100, 2, "WAV", "PCM_24", 1.2),
    ("sub/deeper/low.flac", 22050, 1, "FLAC", "PCM_16", 1.0),
    ("sub/deeper/v.ogg", 16000, 1, "OGG", "VORBIS", 1.0),
    ("float.wav", 16000, 1, "WAV", "FLOAT", 0.8),
]


def make_tree(root: Path, seed: int = 0) -> Path:
    """The generated input tree: nested folders, three containers, a stereo 44.1 kHz file, a corrupt
    WAV and a file that is not audio."""
    write_tree(root, TREE, seed)
    (root / "sub" / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    (root / "sub" / "notes.txt").write_text("not audio, not an input")
    return root


@pytest.fixture(scope="session")
def bidir_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("models") / "tiny-bidir.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16, "bidirectional": True}), path)
    return path


def parts(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.part")]


def by_input(out: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}


def test_tree_keeps_paths_formats_lengths_and_reports_corrupt(tmp_path, causal_ckpt, capsys):
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"])
    assert rc == 1  # the corrupt file failed, nothing else did
    assert outputs(out) == {rel for rel, *_ in TREE}
    for rel, sr, ch, fmt, subtype, _ in TREE:
        i, o = sf.info(src / rel), sf.info(out / rel)
        got = (o.samplerate, o.channels, o.format, o.subtype, o.frames)
        assert got == (sr, ch, fmt, subtype, i.frames), rel
    stereo = sf.info(out / "sub/stereo.wav")
    assert (stereo.samplerate, stereo.channels, stereo.subtype) == (44100, 2, "PCM_24")
    assert not parts(out)
    recs = by_input(out)
    assert len(read_manifest(out / "audioae-manifest.jsonl")) == len(TREE) + 1  # one line per input
    assert recs["corrupt.wav"]["status"] == "error" and "corrupt.wav" in recs["corrupt.wav"]["error"]
    assert {recs[Path(rel).name]["status"] for rel, *_ in TREE} == {"ok"}
    assert recs["top.wav"]["duration"] == pytest.approx(1.5)
    err = capsys.readouterr().err
    assert "corrupt.wav" in err


def test_every_failure_line_names_its_file(tmp_path, causal_ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "odd-rate.wav", np.zeros(4410, np.float32), 44101)  # refused by the resampler, not the reader
    (src / "corrupt.wav").write_bytes(b"RIFF0000WAVEjunk")
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(causal_ckpt), "--no-progress"]) == 1
    failed = [ln for ln in capsys.readouterr().err.splitlines() if "failed:" in ln]
    assert len(failed) == 2
    assert f"failed: {src / 'corrupt.wav'}: " in failed[0]
    assert f"failed: {src / 'odd-rate.wav'}: a sample rate of 44101 Hz" in failed[1]


def test_streamed_file_equals_offline_denoise(tmp_path, causal_ckpt):
    """The chunked file path gives enhance.denoise's output on the whole file (float WAV: no rounding)."""
    src = make_tree(tmp_path / "in")
    model = load_checkpoint(causal_ckpt)
    den = FileDenoiser(model, strength=0.7, block_seconds=0.3)  # several blocks per file
    for rel in ("float.wav", "sub/stereo.wav"):
        res = den.run(FileTask(str(src / rel), str(tmp_path / "out" / rel), rel))
        assert res.status == "ok", res.error
        wav, sr = sf.read(src / rel, dtype="float32", always_2d=True)
        ref = denoise(model, wav.T, sr, strength=0.7)  # [C, T]
        got, _ = sf.read(tmp_path / "out" / rel, dtype="float32", always_2d=True)
        tol = 1e-5 if rel == "float.wav" else 2.0 / 2**23  # PCM_24 rounding
        np.testing.assert_allclose(got.T, np.clip(ref, -1, 1), atol=tol)


def test_a_file_libsndfile_cannot_seek_in_is_denoised_streamed_and_whole(tmp_path, causal_ckpt, bidir_ckpt):
    """GSM 6.10 WAV (old telephony recordings): libsndfile will not read "to the end" of a file it
    cannot seek in, and every such file failed with "frames must be specified"."""
    from audioae.audio import iter_blocks, read_audio

    src = tmp_path / "in" / "phone.wav"
    src.parent.mkdir()
    sf.write(src, noisy_signal(np.random.default_rng(3), 1.52, 8000, 1), 8000, subtype="GSM610")  # 76 GSM frames
    with sf.SoundFile(src) as f:
        assert not f.seekable() and f.frames == 12160  # the case this test is about
    wav, sr, _ = read_audio(src)
    assert wav.shape == (1, 12160) and sr == 8000
    np.testing.assert_array_equal(np.concatenate(list(iter_blocks(src, 5000)), axis=-1), wav)  # the client's reader
    for ckpt in (causal_ckpt, bidir_ckpt):  # streamed in blocks, and read whole
        model = load_checkpoint(ckpt)
        out = tmp_path / ckpt.stem / "phone.wav"
        res = FileDenoiser(model, block_seconds=0.3).run(FileTask(str(src), str(out), "phone.wav"))
        assert res.status == "ok", res.error
        info = sf.info(out)
        assert (info.subtype, info.frames, info.samplerate) == ("GSM610", 12160, 8000)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes in a name")
def test_a_file_name_that_is_not_utf8_is_read_and_written(tmp_path, causal_ckpt, bidir_ckpt):
    """A Latin-1 "café.wav" from an old disk: Python holds its 0xE9 byte as a surrogate, and
    soundfile, which encodes str paths as strict UTF-8, failed on every such file."""
    from audioae.audio import iter_blocks, read_audio

    src = tmp_path / "in"
    src.mkdir()
    name = os.fsdecode(b"caf\xe9.wav")
    sf.write(os.path.join(os.fsencode(src), b"caf\xe9.wav"), noisy_signal(np.random.default_rng(4), 0.5, 16000, 1),
             16000, subtype="PCM_16")
    assert read_audio(src / name)[0].shape == (1, 8000)
    assert sum(b.shape[-1] for b in iter_blocks(src / name, 3000)) == 8000  # the client's streaming reader
    for ckpt in (causal_ckpt, bidir_ckpt):  # streamed, and read whole
        out = tmp_path / ckpt.stem
        s = run_denoise([src], out, DenoiseOptions(model=str(ckpt), progress=False))
        assert (s["ok"], s["error"]) == (1, 0), s
        assert os.listdir(os.fsencode(out)).count(b"caf\xe9.wav") == 1  # the name's own bytes
        assert sf.info(os.path.join(os.fsencode(out), b"caf\xe9.wav")).frames == 8000
        assert run_denoise([src], out, DenoiseOptions(model=str(ckpt), progress=False))["skipped"] == 1  # resumes


def test_a_copy_cut_short_is_reported_as_one_and_leaves_nothing(tmp_path, causal_ckpt, bidir_ckpt):
    """A FLAC whose header opens but whose frames stop mid-way (an interrupted copy): the error
    was libsndfile's "LibsndfileError: Error : flac decoder lost sync." alone."""
    (tmp_path / "in").mkdir()
    _, src = whole_and_cut(tmp_path / "in", noisy_signal(np.random.default_rng(5), 2.0, 16000, 1), 16000, ext="flac")
    for ckpt, block, said in ((causal_ckpt, 0.25, r"cannot decode the audio after \d+ samples \("),  # streamed
                              (bidir_ckpt, 30.0, r"cannot decode the audio \(")):  # read whole
        out = tmp_path / ckpt.stem / "cut.flac"
        res = FileDenoiser(load_checkpoint(ckpt), block_seconds=block).run(FileTask(str(src), str(out), "cut.flac"))
        assert res.status == "error"
        assert re.search(said, res.error) and "truncated or corrupt" in res.error, res.error
        assert not out.parent.exists() or not any(out.parent.iterdir())  # no output, no .part
    from audioae.audio import AudioError, read_audio

    for source in (src, src.read_bytes()):  # eval, decompose, and the server reading a request
        with pytest.raises(AudioError, match=r"cannot decode the audio \(.*\): the file is truncated or corrupt"):
            read_audio(source)


def test_a_file_name_near_the_255_byte_limit_is_denoised(tmp_path, causal_ckpt):
    """Was: ".<name>.part" passed the file system's 255 bytes, and the whole job ended with
    "[Errno 36] File name too long" while it looked for an earlier run's .part files."""
    from audioae.fileio import NAME_MAX, atomic_write_bytes, temp_name

    src = tmp_path / "in"
    src.mkdir()
    names = ["x" * 251 + ".wav", "é" * 125 + "a.wav", "é" * 125 + "b.wav"]  # 255 bytes; two share 250
    for i, name in enumerate(names):
        sf.write(src / name, noisy_signal(np.random.default_rng(i), 0.3, 16000, 1), 16000, subtype="PCM_16")
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(causal_ckpt), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == sorted(names)
    parts = {temp_name(n, ".part") for n in names}
    assert len(parts) == 3 and all(len(os.fsencode(p)) <= NAME_MAX for p in parts)  # one per name, each fits
    atomic_write_bytes(tmp_path / names[1], b"data")  # mkstemp's random letters fit too
    assert (tmp_path / names[1]).read_bytes() == b"data"


def test_a_broken_link_or_a_file_gone_is_named_as_one(tmp_path, causal_ckpt):
    """Was: the link's missing target as the input, and libsndfile's "System error."."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "real.wav", noisy_signal(np.random.default_rng(6), 0.3, 16000, 1), 16000)
    (src / "broken.wav").symlink_to("nowhere.wav")
    (src / "self.wav").symlink_to("self.wav")
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (s["ok"], s["error"]) == (1, 2)
    recs = {Path(r["input"]).name: r for r in read_manifest(tmp_path / "out" / "audioae-manifest.jsonl")}
    assert recs["broken.wav"]["error"] == f"{src / 'broken.wav'}: a link to nowhere.wav, which does not exist"
    assert recs["self.wav"]["error"] == (f"{src / 'self.wav'}: a symbolic link loop (it leads back to itself "
                                         f"through self.wav)")  # was "a link to self.wav, which does not exist"
    gone = FileDenoiser(load_checkpoint(causal_ckpt)).run(FileTask(str(src / "gone.wav"), str(tmp_path / "g.wav"),
                                                                   "gone.wav"))
    assert gone.error == f"{src / 'gone.wav'}: no such file (moved or deleted since the job was planned?)"


def test_a_recording_whose_header_was_never_finished_is_not_called_empty(tmp_path, causal_ckpt):
    """A recorder that lost power leaves its WAV's sizes as 0: libsndfile reads 0 samples of a file
    that holds them all. Was: "the audio is empty (0 samples)", which invites deleting it."""
    from audioae.audio import AudioError, read_audio

    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "take.wav", noisy_signal(np.random.default_rng(7), 0.5, 16000, 1), 16000, subtype="PCM_16")
    raw = bytearray((src / "take.wav").read_bytes())
    at = raw.find(b"data")
    raw[4:8] = raw[at + 4 : at + 8] = bytes(4)  # the RIFF and data sizes as written before the first sample
    (src / "take.wav").write_bytes(raw)
    sf.write(src / "empty.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")  # really empty
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    recs = by_input(tmp_path / "out")
    unfinished = (f"{src / 'take.wav'}: its header says the audio is empty, but 16,000 bytes of it follow: a "
                  f"recording whose header was never finished")
    assert s["error"] == 1 and recs["take.wav"]["error"].startswith(unfinished)
    assert recs["empty.wav"]["status"] == "ok"  # really empty: an empty output (test_batch_messy.py)
    task = FileTask(str(src / "take.wav"), str(tmp_path / "o.wav"), "take.wav")  # bytes, as the Ray engine reads
    assert FileDenoiser(load_checkpoint(causal_ckpt)).run(task, bytes(raw)).error.startswith(unfinished)
    with pytest.raises(AudioError, match="header was never finished"):  # as audioae eval reads
        read_audio(src / "take.wav")
    with pytest.raises(AudioError, match="header was never finished"):  # bytes in a bytearray (was a TypeError)
        read_audio(raw, name="take.wav")


def test_strength_zero_returns_the_input(tmp_path, causal_ckpt):
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    run_denoise([src / "top.wav"], out, DenoiseOptions(model=str(causal_ckpt), strength=0.0, progress=False))
    a, _ = sf.read(src / "top.wav", dtype="int16")
    b, _ = sf.read(out / "top.wav", dtype="int16")
    np.testing.assert_array_equal(a, b)


def test_non_causal_model_goes_whole_file(tmp_path, bidir_ckpt):
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    s = run_denoise([src / "float.wav", src / "sub" / "stereo.wav"], out,
                    DenoiseOptions(model=str(bidir_ckpt), progress=False))
    assert (s["ok"], s["error"]) == (2, 0)
    model = load_checkpoint(bidir_ckpt)
    wav, sr = sf.read(src / "float.wav", dtype="float32", always_2d=True)
    got, _ = sf.read(out / "float.wav", dtype="float32", always_2d=True)
    np.testing.assert_allclose(got.T, denoise(model, wav.T, sr), atol=1e-6)
    assert sf.info(out / "stereo.wav").channels == 2  # a file given directly goes to OUT/<name>


def test_existing_output_is_skipped_and_overwrite_redoes_it(tmp_path, causal_ckpt, caplog):
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    sentinel = np.zeros(100, np.float32)
    sf.write(out / "top.wav", sentinel, 16000, subtype="PCM_16")  # a file of the user's under an output's name
    (out / "sub" / ".stereo.wav.part").write_bytes(b"half of a file from a killed run")
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    refused = (r"holds 1 file\(s\) under the names this job would write \(e\.g\. top\.wav\) that no denoise run "
               r"made: --overwrite would replace them")
    with pytest.raises(ValueError, match=refused):
        run_denoise([src], out, dataclasses.replace(opts, overwrite=True))  # was: replaced without a word
    assert sf.info(out / "top.wav").frames == 100
    s = run_denoise([src], out, opts)
    assert "skipped, not denoised; if they are not denoised copies of the inputs, move them" in caplog.text
    assert (s["skipped"], s["skipped_found"], s["ok"], s["error"]) == (1, 1, len(TREE) - 1, 1)
    assert by_input(out)["top.wav"]["error"] == "found under its output's name before any run: not made by one"
    with pytest.raises(ValueError, match=refused):  # and on the run after: a manifest is there now
        run_denoise([src], out, dataclasses.replace(opts, overwrite=True))
    assert sf.info(out / "top.wav").frames == 100
    (out / "top.wav").unlink()  # the user moves it away: the next run denoises it
    assert run_denoise([src], out, opts)["ok"] == 1
    assert sf.info(out / "top.wav").frames == sf.info(src / "top.wav").frames
    assert by_input(out)["top.wav"]["status"] == "ok"
    assert not parts(out)  # the stale .part was replaced by a complete output
    # A rerun: everything done is skipped; the corrupt file is tried (and fails) again.
    s = run_denoise([src], out, opts)
    assert (s["skipped"], s["ok"], s["error"]) == (len(TREE), 0, 1)
    assert len(read_manifest(out / "audioae-manifest.jsonl")) == len(TREE) + 1  # compacted
    run_denoise([src], out, opts)  # a third run: durations survive lines that were "skipped"
    assert by_input(out)["stereo.wav"]["duration"] == pytest.approx(1.2)
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), overwrite=True, progress=False))
    assert (s["skipped"], s["ok"]) == (0, len(TREE))
    assert sf.info(out / "top.wav").frames == sf.info(src / "top.wav").frames


def test_overwrite_keeps_the_permission_bits_of_the_output_it_replaces(tmp_path, causal_ckpt):
    """``--overwrite`` replaced a read-only (0444) output with a 0644 one: its owner's protection
    gone without a word. It replaces it, as ``cp -f`` and ``rsync`` do, and keeps its bits as
    rsync does."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [("a.wav", 16000, 1, "WAV", "PCM_16", 0.5), ("b.wav", 16000, 1, "WAV", "PCM_16", 0.5),
                     ("c.wav", 16000, 1, "WAV", "PCM_16", 0.5)])
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    assert run_denoise([src], out, opts)["ok"] == 3
    fresh = stat.S_IMODE((out / "c.wav").stat().st_mode)
    (out / "a.wav").chmod(0o444)
    (out / "b.wav").chmod(0o640)
    inodes = {n: (out / n).stat().st_ino for n in ("a.wav", "b.wav", "c.wav")}
    s = run_denoise([src], out, dataclasses.replace(opts, overwrite=True))
    assert s["ok"] == 3 and all((out / n).stat().st_ino != ino for n, ino in inodes.items())  # replaced
    assert {n: stat.S_IMODE((out / n).stat().st_mode) for n in inodes} == {"a.wav": 0o444, "b.wav": 0o640,
                                                                          "c.wav": fresh}


def test_an_input_changed_since_its_output_was_made_is_named_in_a_warning(tmp_path, causal_ckpt, caplog):
    """A recorder's numbering starts over and a new take replaces sub/stereo.wav. Was: the rerun
    kept the old take's output as "skipped (already done)" without a word."""
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    run_denoise([src], out, opts)
    caplog.clear()
    run_denoise([src], out, opts)
    assert "changed after their outputs were made" not in caplog.text
    write_tree(src, [("sub/stereo.wav", 44100, 2, "WAV", "PCM_24", 0.7)], seed=9)  # another take, same name
    made = (out / "sub" / "stereo.wav").stat().st_mtime
    os.utime(src / "sub" / "stereo.wav", (made + 10, made + 10))  # after its output, whatever the clock's grain
    s = run_denoise([src], out, opts)
    assert s["skipped"] == len(TREE)  # still skipped: outputs that exist are done
    assert "1 input(s) changed after their outputs were made (e.g. sub/stereo.wav)" in caplog.text
    assert run_denoise([src], out, dataclasses.replace(opts, overwrite=True))["ok"] == len(TREE)
    assert sf.info(out / "sub" / "stereo.wav").frames == sf.info(src / "sub" / "stereo.wav").frames


def test_an_input_whose_clock_runs_ahead_is_not_called_changed_and_one_rewritten_is(tmp_path, causal_ckpt, caplog):
    """A recorder's FAT card keeps local time, read here as UTC: its files can look modified hours
    after their outputs were written. Was: every rerun warned they had changed. The manifest now
    records each input's size and mtime as its output was made, and a rerun compares those."""
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    ahead = time.time() + 2 * 3600
    for rel, *_ in TREE:
        os.utime(src / rel, (ahead, ahead))  # two hours ahead of this machine's clock
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    run_denoise([src], out, opts)
    row = by_input(out)["top.wav"]
    st = (src / "top.wav").stat()
    assert (row["input_size"], row["input_mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    caplog.clear()
    assert run_denoise([src], out, opts)["skipped"] == len(TREE)
    assert "changed after their outputs were made" not in caplog.text
    assert by_input(out)["top.wav"]["input_mtime_ns"] == st.st_mtime_ns  # carried by the "skipped" line
    write_tree(src, [("top.wav", 16000, 1, "WAV", "PCM_16", 0.9)], seed=9)  # another take, same name
    os.utime(src / "top.wav", ns=(st.st_mtime_ns, st.st_mtime_ns))  # even with the same time
    run_denoise([src], out, opts)
    assert "1 input(s) changed after their outputs were made (e.g. top.wav)" in caplog.text


def test_a_manifest_without_input_records_falls_back_to_the_clocks_then_records_them(tmp_path, causal_ckpt, caplog):
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    run_denoise([src], out, opts)
    path = out / "audioae-manifest.jsonl"
    rows = read_manifest(path)
    for r in rows:  # as written before 2026-12-07
        r.pop("input_size", None)
        r.pop("input_mtime_ns", None)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    made = (out / "top.wav").stat().st_mtime
    os.utime(src / "top.wav", (made + 10, made + 10))  # after its output: looks changed by the clocks
    run_denoise([src], out, opts)
    assert "1 input(s) changed after their outputs were made (e.g. top.wav)" in caplog.text
    rows = by_input(out)
    assert "input_size" not in rows["top.wav"] or rows["top.wav"]["input_size"] is None  # left unrecorded
    assert rows["stereo.wav"]["input_size"] == (src / "sub" / "stereo.wav").stat().st_size  # the others adopted


def test_refuses_to_overwrite_inputs_or_merge_outputs(tmp_path, causal_ckpt, capsys):
    src = make_tree(tmp_path / "in")
    before = sorted(p.name for p in src.rglob("*"))
    model = ["--model", str(causal_ckpt), "--no-progress"]
    assert main(["denoise", str(src), "-o", str(src), *model]) == 2
    assert main(["denoise", str(src / "top.wav"), "-o", str(src), *model]) == 2
    assert "overwrite an input" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "top.wav").write_bytes((src / "top.wav").read_bytes())
    assert main(["denoise", str(src / "top.wav"), str(tmp_path / "other" / "top.wav"),
                 "-o", str(tmp_path / "o"), *model]) == 2
    assert "same output" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), *model]) == 2
    assert main(["denoise", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no.safetensors"),
                 "--no-progress"]) == 2
    assert sorted(p.name for p in src.rglob("*")) == before  # nothing written into the inputs


def test_overlapping_inputs_that_would_give_one_file_two_outputs_are_refused(tmp_path, causal_ckpt, capsys):
    """`in in/sub`: sub/stereo.wav became both OUT/sub/stereo.wav and OUT/stereo.wav. Was: both
    written, one manifest line between them (lines are per input), the summary counting two."""
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    model = ["--model", str(causal_ckpt), "--no-progress"]
    for inputs, name, nested_first in (([src, src / "sub"], "corrupt.wav", True),  # the first of sub/, sorted
                                       ([src / "sub" / "stereo.wav", src], "stereo.wav", False)):
        assert main(["denoise", *map(str, inputs), "-o", str(out), *model]) == 2
        two = [out / "sub" / name, out / name][:: 1 if nested_first else -1]
        assert (f"{src / 'sub' / name} is among the inputs twice, to become {two[0]} and {two[1]} (the inputs "
                f"overlap") in capsys.readouterr().err
    assert not out.exists()
    assert main(["denoise", str(src / "top.wav"), str(src), "-o", str(out), *model]) == 1  # one output: taken once
    assert len(read_manifest(out / "audioae-manifest.jsonl")) == len(TREE) + 1


def test_an_output_that_is_a_file_or_looks_like_one_is_refused(tmp_path, causal_ckpt, capsys):
    src = make_tree(tmp_path / "in")
    model = ["--model", str(causal_ckpt), "--no-progress"]
    before = (src / "top.wav").read_bytes()
    assert main(["denoise", str(src / "top.wav"), "-o", str(src / "top.wav"), *model]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert (src / "top.wav").read_bytes() == before
    assert main(["denoise", str(src / "top.wav"), "-o", str(tmp_path / "clean.wav"), *model]) == 2
    assert "looks like a file name" in capsys.readouterr().err
    assert not (tmp_path / "clean.wav").exists()
    (tmp_path / "set.wav").mkdir()  # an existing folder is a folder, whatever its name
    assert main(["denoise", str(src / "top.wav"), "-o", str(tmp_path / "set.wav"), *model]) == 0
    assert (tmp_path / "set.wav" / "top.wav").is_file()


def test_rerun_with_another_model_or_strength_is_refused_not_skipped(tmp_path, causal_ckpt, bidir_ckpt, capsys):
    """Skipping finished outputs made with other settings would hand back the old ones as if they
    were what the rerun asked for."""
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    first = DenoiseOptions(model=str(causal_ckpt), progress=False)
    run_denoise([src / "top.wav"], out, first)
    sha = hashlib.sha256(causal_ckpt.read_bytes()).hexdigest()
    rec = by_input(out)["top.wav"]
    assert (rec["model"], rec["sha256"], rec["strength"]) == (str(causal_ckpt), sha, 1.0)
    made = (out / "top.wav").read_bytes()
    for other in (DenoiseOptions(model=str(causal_ckpt), strength=0.5, progress=False),
                  DenoiseOptions(model=str(bidir_ckpt), progress=False)):
        with pytest.raises(ValueError, match=r"already holds 1 output\(s\) made with other settings: "
                                             r"tiny-causal.safetensors \(sha256 [0-9a-f]{12}\) at strength 1 "
                                             r"\(e.g. top.wav\).*pass --overwrite to redo them"):
            run_denoise([src], out, other)
        assert (out / "top.wav").read_bytes() == made and not (out / "sub").exists()  # nothing was done
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--strength", "0.5",
                 "--no-progress"]) == 2
    assert "made with other settings" in capsys.readouterr().err
    # The same bytes at another path are the same model; its skipped lines keep what made the output.
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(causal_ckpt.read_bytes())
    s = run_denoise([src], out, DenoiseOptions(model=str(copy), progress=False))
    assert s["skipped"] == 1 and s["ok"] == len(TREE) - 1
    assert by_input(out)["top.wav"]["model"] == str(causal_ckpt) and by_input(out)["stereo.wav"]["model"] == str(copy)
    assert by_input(out)["corrupt.wav"]["sha256"] == ""  # no output: nothing made it
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), strength=0.5, overwrite=True, progress=False))
    assert s["ok"] == len(TREE) and all(r["strength"] == 0.5 for r in by_input(out).values() if r["status"] == "ok")
    assert run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), strength=0.5, progress=False))["skipped"] == len(TREE)
    capsys.readouterr()
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--strength", "0.5", "--no-progress"]) == 1
    assert f"{len(TREE)} skipped (already done), 1 failed; nothing denoised (engine local)" in capsys.readouterr().out


def test_a_file_with_more_channels_than_taken_is_reported_like_any_bad_file(tmp_path, causal_ckpt):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "array.wav", np.zeros((1600, 65), np.float32), 16000)
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert s["errors"] == [{"input": str(src / "array.wav"), "error": "channels must be within 1..64, got 65"}]


def test_a_run_that_fails_before_any_file_leaves_no_output_folder(tmp_path, causal_ckpt):
    """A checkpoint whose bytes no longer match its .sha256 is refused when the engine loads it,
    after the folder was made: it used to stay, with a lock file and an empty manifest."""
    src = make_tree(tmp_path / "in")
    bad = tmp_path / "bad.safetensors"
    data = bytearray(causal_ckpt.read_bytes())
    data[-1] ^= 0xFF  # a weight's last byte
    bad.write_bytes(bytes(data))
    (tmp_path / "bad.safetensors.sha256").write_text(hashlib.sha256(causal_ckpt.read_bytes()).hexdigest())
    with pytest.raises(CheckpointError, match="sha256"):
        run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(bad), progress=False))
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is left as it was
    with pytest.raises(CheckpointError):
        run_denoise([src], tmp_path / "kept", DenoiseOptions(model=str(bad), progress=False))
    assert (tmp_path / "kept").is_dir()


def test_a_second_job_into_a_folder_in_use_is_refused_at_once_naming_the_holder(tmp_path, causal_ckpt):
    """One job at a time per output folder (a second one would delete the first one's .part
    files): the folder's lock names the holder's pid, and goes with it."""
    from audioae.batch.job import LOCK_NAME
    from audioae.fileio import FolderHeld, hold_folder

    src, out = make_tree(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    with hold_folder(out, LOCK_NAME, "another audioae denoise job"):  # as a running job holds it
        with pytest.raises(FolderHeld, match=re.escape(f"{out} is being written by another audioae denoise "
                                                       f"job (pid {os.getpid()})")):
            run_denoise([src], out, opts)
        assert not list(out.rglob("*.wav"))
    s = run_denoise([src], out, opts)
    assert s["ok"] > 0 and not (out / LOCK_NAME).exists()


def test_a_job_whose_outputs_another_running_job_may_write_is_refused(tmp_path, causal_ckpt, monkeypatch):
    """Each job held its own output folder only: a job into rec/ beside another into rec/sub/
    wrote the same .part files, and both failed files with "cannot write the output (No such
    file or directory)". A folder above the output, or one among its outputs, held by a running
    job now refuses the job; a lock file a finished or killed job left holds nothing."""
    from audioae.batch.job import LOCK_NAME
    from audioae.fileio import FolderHeld, hold_folder

    src, out = make_tree(tmp_path / "in"), tmp_path / "out"
    sub = out / "sub"  # make_tree's nested folder, so outputs of a job into out/ land there too
    sub.mkdir(parents=True)
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    with hold_folder(sub, LOCK_NAME, "another audioae denoise job"):  # a job into out/sub/ is running
        with pytest.raises(FolderHeld, match=re.escape(f"{sub} is being written by another audioae denoise job "
                                                       f"(pid {os.getpid()}), and it lies inside {out}")):
            run_denoise([src], out, opts)
    with hold_folder(out, LOCK_NAME, "another audioae denoise job"):  # a job into out/ is running
        with pytest.raises(FolderHeld, match=re.escape(f"{out} is being written by another audioae denoise job "
                                                       f"(pid {os.getpid()}), and it lies above {sub / 'deeper'}")):
            run_denoise([src / "sub"], sub / "deeper", opts)
    monkeypatch.chdir(tmp_path)  # and with relative paths, as people type them
    with hold_folder(sub, LOCK_NAME, "another audioae denoise job"):
        with pytest.raises(FolderHeld, match="and it lies inside"):
            run_denoise([src], Path("out"), opts)
    monkeypatch.chdir(sub)
    with hold_folder(out, LOCK_NAME, "another audioae denoise job"):
        with pytest.raises(FolderHeld, match="and it lies above"):
            run_denoise([src / "sub"], Path("deeper"), opts)
    assert not list(out.rglob("*.wav"))
    (sub / LOCK_NAME).write_text("12345\n")  # left by a killed job: nobody holds it
    assert run_denoise([src], out, opts)["ok"] > 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
@pytest.mark.timeout(120)  # before the fix the job waited on the pipe for ever
def test_a_named_pipe_or_a_device_under_an_audio_name_is_passed_over_not_waited_on(tmp_path, causal_ckpt, caplog):
    """A named pipe called take.wav in a folder hung the job for ever (its read waits for a
    writer); a link to /dev/zero failed as "empty file (0 bytes)"; a pipe named directly was "no
    such file or folder"."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", noisy_signal(np.random.default_rng(0), 0.5, 16000, 1), 16000)
    os.mkfifo(src / "pipe.wav")
    (src / "zero.wav").symlink_to("/dev/zero")
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (s["files"], s["ok"]) == (1, 1)
    assert "passed over 2 name(s) that are no regular file (e.g." in caplog.text
    with pytest.raises(ValueError, match="pipe.wav: is a named pipe, not a file"):
        run_denoise([src / "pipe.wav"], tmp_path / "out2", DenoiseOptions(model=str(causal_ckpt), progress=False))


def test_an_empty_file_and_a_cut_mp3_are_named_alike_read_from_a_path_or_from_bytes(tmp_path, causal_ckpt):
    """Read as bytes (the Ray engine's reads), an empty file was "Format not recognised."; read
    from its path, an MP3 cut to its first 500 bytes was "File does not exist or is not a regular
    file (possibly a pipe?).", of a file that exists."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(tmp_path / "whole.mp3", noisy_signal(np.random.default_rng(0), 1.0, 44100, 1), 44100)
    (src / "cut.mp3").write_bytes((tmp_path / "whole.mp3").read_bytes()[:500])
    (src / "empty.wav").write_bytes(b"")
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    for name, said in (("cut.mp3", "not an audio format libsndfile recognises"), ("empty.wav", "empty file (0 bytes)")):
        task = FileTask(str(src / name), str(tmp_path / "out" / name), name)
        for data in (None, (src / name).read_bytes()):
            result = den.run(task, data)
            assert result.status == "error" and f"cannot read audio ({said}" in result.error, (name, data is None, result)


def test_a_folder_under_an_outputs_name_fails_that_file_saying_so(tmp_path, causal_ckpt, capsys, caplog):
    """A folder called a.wav in a fresh output folder was counted among "files no run made" (to be
    skipped), then tried, failing with the rename's bare "(Is a directory)"; and a file of someone's
    under an output's name was summed into "skipped (already done)"."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(src / name, noisy_signal(np.random.default_rng(0), 0.5, 16000, 1), 16000)
    out = tmp_path / "out"
    (out / "a.wav").mkdir(parents=True)
    (out / "b.wav").write_bytes(b"someone's")
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "3 files: 1 denoised, 0 skipped (already done), 1 skipped (a file no run made under its output's " \
           "name), 1 failed" in captured.out, captured.out
    assert f"{out / 'a.wav'}: cannot write the output: a folder of that name is in the way" in captured.err
    assert "holds 1 file(s) under the names this job would write (e.g. b.wav)" in caplog.text


def test_progress_counts_seconds_of_audio_not_files(tmp_path):
    """A folder's files differ in length: a bar by files would sit at 4 of 5 through the long one."""
    from audioae.batch.job import Progress

    lengths = (1.0, 0.5, 30.0, 2.0)
    tasks = []
    for i, seconds in enumerate(lengths):
        sf.write(tmp_path / f"{i}.wav", np.zeros(int(seconds * 8000), np.float32), 8000)
        tasks.append(FileTask(str(tmp_path / f"{i}.wav"), str(tmp_path / "out" / f"{i}.wav"), f"{i}.wav"))
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    tasks.append(FileTask(str(tmp_path / "broken.wav"), str(tmp_path / "out" / "broken.wav"), "broken.wav"))
    stream = io.StringIO()
    bar = Progress(tasks, 3, enabled=True, stream=stream)
    assert bar.seconds == {t.input: s for t, s in zip(tasks, [*lengths, 0.0], strict=True)}
    bar.advance(FileResult(tasks[0].input, tasks[0].output, "ok", duration=1.0))
    bar.advance(FileResult(tasks[1].input, tasks[1].output, "ok", duration=0.5))
    bar.bar.refresh()
    assert " 4%|" in stream.getvalue().splitlines()[-1].split("\r")[-1]  # 1.5 of 33.5 s, not 2 of 5 files
    for t in tasks[2:]:
        bar.advance(FileResult(t.input, t.output, "error", "failed"))
    bar.close()
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith("denoise (3 done before): 100%|") and "34/34 s of audio" in last and "5/5 files" in last
    quiet = Progress(tasks, 0, enabled=False, stream=io.StringIO())
    assert quiet.seconds == {}  # --no-progress reads no headers


def test_the_bar_ends_at_its_total_when_the_total_rounds_down(tmp_path, recwarn):
    """The bar's total was the seconds of audio rounded to 1 ms, its steps each file's seconds
    unrounded: three files of 16,001 frames at 48 kHz (1.0000625 s, shown 1.0) took it past its
    end, with tqdm's "clamping frac to range [0, 1]" warning and a negative ETA."""
    from tqdm import TqdmWarning

    from audioae.batch.job import Progress

    tasks = []
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(tmp_path / name, np.zeros(16001, np.float32), 48000)
        tasks.append(FileTask(str(tmp_path / name), str(tmp_path / "out" / name), name))
    stream = io.StringIO()
    bar = Progress(tasks, 0, enabled=True, stream=stream)
    bar.bar.mininterval = bar.bar.miniters = 0  # drawn at every step
    for t in tasks:
        bar.advance(FileResult(t.input, t.output, "ok", duration=16001 / 48000))
        bar.bar.refresh()
        assert bar.bar.n <= bar.bar.total
    assert bar.bar.n == bar.bar.total
    bar.close()
    assert not [w for w in recwarn if issubclass(w.category, TqdmWarning)], [str(w.message) for w in recwarn]
    last = stream.getvalue().split("\r")[-1]
    assert "100%|" in last and "1/1 s of audio" in last and "-" not in last.split("[")[1], last


def test_the_bars_clock_starts_with_the_first_file_not_with_rays_start_up(tmp_path):
    """The bar's elapsed time and ETA counted Ray's start-up (20 s and more here) as work: its
    first ETA was minutes too long (00:23<16:08). Until the first result it says "starting", and
    a job that ends before one does not leave "starting" on its last line."""
    import io

    from audioae.batch.job import Progress

    tasks = []
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, np.zeros(16000, np.float32), 16000)
        tasks.append(FileTask(str(tmp_path / name), str(tmp_path / "out" / name), name))
    stream = io.StringIO()
    bar = Progress(tasks, 0, enabled=True, stream=stream)
    created = bar.bar.start_t
    bar.bar.refresh()
    assert stream.getvalue().split("\r")[-1].startswith("denoise (starting):")
    time.sleep(0.5)  # the engine starting
    bar.advance(FileResult(tasks[0].input, tasks[0].output, "ok", seconds=0.1, duration=1.0))
    assert bar.bar.start_t >= created + 0.4  # from when the first file started: 0.1 s before its result
    bar.bar.refresh()
    assert stream.getvalue().split("\r")[-1].startswith("denoise:")
    bar.close()
    stream = io.StringIO()
    unstarted = Progress(tasks, 0, enabled=True, stream=stream)
    unstarted.close()  # e.g. the Ray cluster could not be reached
    assert stream.getvalue().split("\r")[-1].startswith("denoise:"), stream.getvalue()


def test_the_real_time_factor_counts_only_the_audio_denoised(tmp_path, causal_ckpt):
    """The bar's real-time factor divided the seconds of every file passed, failed ones included:
    a tree of corrupt recordings whose headers read (a FLAC cut short, a WAV with NaN samples)
    ran "faster" the more of it failed."""
    from audioae.batch.job import Progress

    src = make_tree(tmp_path / "in")
    full = tmp_path / "full.flac"
    sf.write(full, noisy_signal(np.random.default_rng(5), 4.0, 16000, 1), 16000, subtype="PCM_16")
    (src / "cut.flac").write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # header: 4 s; decodes: not
    bad = noisy_signal(np.random.default_rng(6), 3.0, 16000, 1)
    bad[100] = np.nan
    sf.write(src / "nan.wav", bad, 16000, subtype="FLOAT")
    tasks = sorted(plan_tasks([src], tmp_path / "out"), key=lambda t: t.rel)
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    bar = Progress(tasks, 0, enabled=True, stream=io.StringIO())
    results = [den.run(t) for t in tasks]
    for r in results:
        bar.advance(r)
    bar.close()
    ok = [r for r in results if r.status == "ok"]
    assert len(ok) == len(TREE) and {Path(r.input).name for r in results if r.status == "error"} == {
        "corrupt.wav", "cut.flac", "nan.wav"}
    assert bar.bar.n == pytest.approx(sum(s for _, _, _, _, _, s in TREE) + 7.0, abs=0.01)  # the bar passes them all
    assert bar.denoised == pytest.approx(sum(s for _, _, _, _, _, s in TREE), abs=0.01)  # was 7 s more
    s = run_denoise([src], tmp_path / "job", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert s["error"] == 3 and s["audio_seconds"] == pytest.approx(bar.denoised, abs=0.01)  # the summary's, alike


def test_output_folder_inside_input_folder_is_not_read_back(tmp_path, causal_ckpt):
    src = make_tree(tmp_path / "in")
    out = src / "denoised"
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    assert run_denoise([src], out, opts)["ok"] == len(TREE)
    s = run_denoise([src], out, opts)  # its own outputs are not new inputs
    assert (s["files"], s["skipped"]) == (len(TREE) + 1, len(TREE))
    s = run_denoise([src], tmp_path / "again", opts)  # nor are they for a run into another folder
    assert (s["files"], s["ok"]) == (len(TREE) + 1, len(TREE))
    assert run_denoise([out], tmp_path / "twice", opts)["ok"] == len(TREE)  # unless named as an input


def test_recordings_already_in_an_output_folder_inside_the_input_are_named_as_skipped(tmp_path, causal_ckpt,
                                                                                     caplog):
    src = make_tree(tmp_path / "in")
    out = src / "sub"  # holds recordings of the tree, and no manifest yet
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    s = run_denoise([src], out, opts)
    assert s["files"] == sum(1 for rel, *_ in TREE if not rel.startswith("sub/"))  # sub/corrupt.wav skipped too
    assert "sub: skipped, it is the output folder; the audio files already in it are not denoised" in caplog.text
    caplog.clear()
    run_denoise([src], out, opts)  # now it holds this run's manifest: its outputs, nothing to say
    assert "it is the output folder" not in caplog.text


def test_permissions_that_stop_a_file_or_a_folder_are_named(tmp_path, causal_ckpt, unprivileged):
    """Was: "cannot read audio (System error.)", "cannot write the output (System error.)" (libsndfile
    keeps the errno to itself), and a folder that cannot be listed left out without a word."""
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    (out / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "deeper" / "low.flac").chmod(0)  # unreadable
    (out / "sub" / "deeper").chmod(0o555)  # v.ogg's output cannot be written there
    (src / "sealed").mkdir()
    sf.write(src / "sealed" / "x.wav", np.zeros(1600, np.float32), 16000)
    (src / "sealed").chmod(0)  # cannot be listed
    (src / "glass").mkdir()  # can be listed, but nothing in it opened: the job stopped at its first file
    sf.write(src / "glass" / "y.wav", np.zeros(1600, np.float32), 16000)
    (src / "glass").chmod(0o644)
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out),
                           "--model", str(causal_ckpt), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert f"{src / 'sealed'}: cannot list this folder (Permission denied); the files in it are left out" in proc.stderr
    assert (f"{src / 'glass'}: cannot list this folder (Permission denied: its entries cannot be opened); the files "
            f"in it are left out") in proc.stderr
    recs = by_input(out)
    assert recs["low.flac"]["error"] == f"{src / 'sub/deeper/low.flac'}: cannot read audio (Permission denied)"
    assert recs["v.ogg"]["error"] == f"{out / 'sub/deeper/v.ogg'}: cannot write the output (Permission denied)"
    assert "x.wav" not in recs and "y.wav" not in recs and not parts(out)


def test_a_file_named_in_a_folder_that_cannot_be_searched_is_a_usage_error(tmp_path, causal_ckpt, unprivileged):
    """A file named on the command line inside a folder without search (x) permission cannot be
    stat'ed: whether it exists cannot be told, as for a name that does not exist, which is refused
    before any work. Was: "[Errno 13] Permission denied: '.../glass/y.wav'", naming neither the
    folder nor what to do."""
    src, out = make_tree(tmp_path / "in"), tmp_path / "out"
    (src / "glass").mkdir()
    sf.write(src / "glass" / "y.wav", np.zeros(1600, np.float32), 16000)
    (src / "glass").chmod(0o644)  # listed, not searched
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "audioae.cli", "denoise", str(src / "top.wav"),
                           str(src / "glass" / "y.wav"), "-o", str(out), "--model", str(causal_ckpt),
                           "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"audioae denoise: error: {src / 'glass' / 'y.wav'}: cannot be reached (Permission "
                                   f"denied: this user may not search the folder {src / 'glass'}); give this user "
                                   f"search (x) permission on that folder, or leave the input out"), proc.stderr
    assert not out.exists()  # refused before the output folder is made
    # A link to it names the folder the link leads into, not the link's own (which can be searched).
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "y.wav").symlink_to(src / "glass" / "y.wav")
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "audioae.cli", "denoise", str(tmp_path / "links" / "y.wav"),
                           "-o", str(out), "--model", str(causal_ckpt), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"audioae denoise: error: {tmp_path / 'links' / 'y.wav'}: cannot be reached "
                                   f"(Permission denied: this user may not search the folder {src / 'glass'}); give "
                                   f"this user search (x) permission on that folder, or leave the input out"), proc.stderr


def test_a_read_only_output_folder_is_named_as_one(tmp_path, causal_ckpt, unprivileged):
    """Was: "[Errno 13] Permission denied: '.../out/.audioae.lock'", a file the user never made."""
    src, out = make_tree(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out),
                           "--model", str(causal_ckpt), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"{out}: cannot write into this folder (Permission denied)" in proc.stderr
    assert ".audioae.lock" not in proc.stderr and not list(out.iterdir())



def test_a_read_only_mount_is_named_as_one(tmp_path, monkeypatch):
    """Was: "audioae denoise: error: [Errno 30] Read-only file system: 'romnt/out/.audioae.lock'", a
    file the user never made. Root writes through permissions but not into a read-only mount, which
    a test cannot make: the wording is asked of the functions that give it, with an EROFS."""
    import errno

    from audioae.batch.job import _cannot_create
    from audioae.fileio import cannot_write_into, hold_folder

    ro = OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "out" / ".audioae.lock"))
    said = cannot_write_into(tmp_path / "out", ro)
    assert said.errno == errno.EROFS and str(said) == (
        f"[Errno 30] {tmp_path / 'out'}: cannot write into this folder (Read-only file system: the file system "
        f"holding it is mounted read-only)")
    denied = cannot_write_into(tmp_path / "out", PermissionError(errno.EACCES, "Permission denied"))
    assert isinstance(denied, PermissionError) and str(denied).endswith("cannot write into this folder (Permission denied)")
    new = tmp_path / "romnt" / "new"
    said = _cannot_create(new, OSError(errno.EROFS, os.strerror(errno.EROFS), str(new)))
    assert str(said) == (f"cannot create the output folder {new}: read-only file system ({tmp_path / 'romnt'} is on a "
                         f"file system mounted read-only); choose another output folder")
    assert "permission denied (this user may not write into" in str(
        _cannot_create(new, PermissionError(errno.EACCES, "Permission denied", str(new))))
    other = OSError(errno.ENOSPC, "No space left on device")
    assert _cannot_create(new, other) is other

    # the lock, as the job takes it, on a read-only mount
    real_open = os.open

    def read_only_open(path, flags, *args):
        if str(path).endswith(".audioae.lock") and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_open)
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match=r"out: cannot write into this folder \(Read-only file system: the file system "
                                      r"holding it is mounted read-only\)$") as caught, \
            hold_folder(tmp_path / "out", ".audioae.lock", "another audioae denoise job"):
        pass
    assert caught.value.errno == errno.EROFS and ".audioae.lock" not in str(caught.value)


def test_a_lock_file_another_user_cannot_write_is_taken_over_unless_held(tmp_path, causal_ckpt, unprivileged):
    """A killed run leaves its lock file, of its user's mode (644). Was: another user's run into the
    folder, which anyone may write into, was refused with "cannot write into this folder"."""
    from audioae.batch.job import LOCK_NAME
    from audioae.fileio import hold_folder

    src, out = make_tree(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    cmd = [*unprivileged, sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out),
           "--model", str(causal_ckpt), "--no-progress"]
    with hold_folder(out, LOCK_NAME, "a test"):  # held: still refused, naming the holder
        (out / LOCK_NAME).chmod(0o444)  # as another user's file looks to this one
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 2 and f"another audioae denoise job (pid {os.getpid()})" in proc.stderr, proc.stderr
    (out / LOCK_NAME).write_text("12345\n")  # left by a killed run
    (out / LOCK_NAME).chmod(0o444)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # the corrupt file fails, the others are denoised
    assert not (out / LOCK_NAME).exists() and (out / "top.wav").is_file()

def test_a_recording_in_an_output_folder_inside_the_input_is_never_taken_for_an_output(tmp_path, causal_ckpt,
                                                                                     capsys):
    """Was: in/clean/top.wav, a recording, was "skipped (already done)" as the output of in/top.wav,
    and --overwrite replaced it with that output."""
    src = make_tree(tmp_path / "in")
    out = src / "clean"
    out.mkdir()
    theirs = (src / "float.wav").read_bytes()
    (out / "top.wav").write_bytes(theirs)  # a recording, under the name in/top.wav's output would take
    for extra in ([], ["--overwrite"]):
        assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert f"the output {out / 'top.wav'} would overwrite a recording the output folder held before any run" in err
    assert (out / "top.wav").read_bytes() == theirs
    assert sorted(p.name for p in out.iterdir()) == ["top.wav"]


def test_a_recording_reached_by_two_names_gets_a_manifest_line_for_each_output(tmp_path, causal_ckpt):
    """A link beside the file and a linked folder: two outputs of one recording. Was: inputs were
    keyed by the file a link leads to, so the manifest (one line per input) recorded one of the
    three outputs, while the summary counted three files."""
    src = make_tree(tmp_path / "in")
    (src / "top-link.wav").symlink_to("top.wav")
    (src / "again").symlink_to(src / "sub" / "deeper", target_is_directory=True)
    (src / "sub" / "deeper" / "top.wav").symlink_to(src / "top.wav")
    out = tmp_path / "out"
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    recs = read_manifest(out / "audioae-manifest.jsonl")
    made = outputs(out)
    # the real folder is searched once, under its own name; the link to it is not followed (until 2026-12-07:
    # as again/, the name that came first)
    assert {"top.wav", "top-link.wav", "sub/deeper/top.wav"} <= made and "again/top.wav" not in made
    assert len(recs) == s["files"] == len(made) + 1  # + the corrupt file
    assert {Path(r["output"]).relative_to(out).as_posix() for r in recs if r["status"] == "ok"} == made
    assert (src / "top-link.wav").as_posix() in {r["input"] for r in recs}
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))  # each one done, once
    assert (s["skipped"], s["ok"]) == (len(made), 0)
    assert len(read_manifest(out / "audioae-manifest.jsonl")) == s["files"]



def test_a_rerun_over_a_manifest_that_named_linked_inputs_by_their_targets_keeps_what_made_them(
        tmp_path, causal_ckpt, bidir_ckpt):
    """Until 2026-12-06 a linked input (git-annex, DVC) was named by the file its link leads to.
    Was: a rerun over such a manifest found no line for the link's name, so it recorded its
    output "skipped" with empty settings, a rerun with another model was not refused, and the
    manifest kept two lines per file."""
    store, src, out = tmp_path / "store", tmp_path / "in", tmp_path / "out"
    write_tree(store, TREE[:2], seed=0)
    src.mkdir()
    (src / "top.wav").symlink_to(store / "top.wav")
    (src / "stereo.wav").symlink_to(store / "sub" / "stereo.wav")
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    run_denoise([src], out, opts)
    manifest = out / "audioae-manifest.jsonl"
    made = read_manifest(manifest)
    for r in made:  # as the run before 2026-12-06 wrote it
        r["input"] = os.path.realpath(r["input"])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in made))
    with pytest.raises(ValueError, match=r"already holds 2 output\(s\) made with other settings"):
        run_denoise([src], out, DenoiseOptions(model=str(bidir_ckpt), progress=False))
    assert run_denoise([src], out, opts)["skipped"] == 2
    recs = read_manifest(manifest)
    assert sorted(r["input"] for r in recs) == [str(src / "stereo.wav"), str(src / "top.wav")]
    assert all(r["sha256"] == made[0]["sha256"] and r["duration"] for r in recs)


def test_planning_resolves_each_input_once(tmp_path, monkeypatch):
    """A realpath costs an lstat per folder above the file, and a job plans thousands of files.
    Was: two per input (its folder, then the whole path again to compare it with outputs)."""
    from audioae.batch.plan import plan_tasks

    src = tmp_path / "in" / "a" / "b"
    src.mkdir(parents=True)
    for i in range(20):
        (src / f"{i}.wav").write_bytes(b"RIFF")
    (src / "link.wav").symlink_to(src / "0.wav")
    calls = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: calls.append(p) or realpath(p, **kw))
    assert len(plan_tasks([tmp_path / "in"], tmp_path / "out")) == 21
    assert len(calls) < 2 * 21, calls  # one per input (its folder's), and a few for the folders and the link

def test_default_model_or_clear_error(tmp_path, capsys, monkeypatch):
    import audioae.pretrained as pretrained

    src = make_tree(tmp_path / "in")
    assert pretrained.DEFAULT_DENOISER in pretrained.shipped()
    assert main(["denoise", str(src / "top.wav"), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    assert (tmp_path / "out" / "top.wav").is_file()
    # an install without the shipped weights (a slimmed package) is told to name a model
    monkeypatch.setattr(pretrained, "shipped", lambda: {})
    assert main(["denoise", str(src / "top.wav"), "-o", str(tmp_path / "out2"), "--no-progress"]) == 2
    assert f"{pretrained.DEFAULT_DENOISER!r} is not shipped" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_a_run_folder_named_as_the_model_lists_its_checkpoints(tmp_path, causal_ckpt, capsys):
    run = tmp_path / "run"  # what audioae train leaves: best, last and the optimizer state
    run.mkdir()
    for name in ("best.safetensors", "last.safetensors", "last.optim.safetensors"):
        (run / name).write_bytes(causal_ckpt.read_bytes())
    src = make_tree(tmp_path / "in")
    assert main(["denoise", str(src / "top.wav"), "-o", str(tmp_path / "out"), "--model", str(run)]) == 2
    assert "run: is a folder: name one of its checkpoints (best.safetensors, last.safetensors)" in capsys.readouterr().err


def test_ray_engine_without_ray_says_how_to_install(tmp_path, causal_ckpt, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra looks like
    src = make_tree(tmp_path / "in")
    rc = main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(causal_ckpt),
               "--engine", "ray"])
    assert rc == 2
    assert "pip install 'audioae[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_worker_processes_give_the_same_files(tmp_path, causal_ckpt):
    src = make_tree(tmp_path / "in")
    one = run_denoise([src], tmp_path / "one", DenoiseOptions(model=str(causal_ckpt), progress=False))
    two = run_denoise([src], tmp_path / "two",
                      DenoiseOptions(model=str(causal_ckpt), workers=2, progress=False))
    assert (one["ok"], one["error"]) == (two["ok"], two["error"]) == (len(TREE), 1)
    for rel, *_ in TREE:
        a, _ = sf.read(tmp_path / "one" / rel, dtype="float32")
        b, _ = sf.read(tmp_path / "two" / rel, dtype="float32")
        np.testing.assert_array_equal(a, b)



def test_a_pool_whose_workers_cannot_load_the_model_reports_every_file_and_stops(tmp_path, causal_ckpt):
    """Workers load the checkpoint themselves; if none can (here: it changed since the job
    checked it), each file gets that reason instead of the job waiting on workers for ever."""
    from audioae.batch.journal import Journal
    from audioae.batch.local import run_local
    from audioae.batch.plan import plan_tasks

    src = make_tree(tmp_path / "in")
    tasks = plan_tasks([src], tmp_path / "out")
    results = list(run_local(tasks, None, checkpoint=str(causal_ckpt), sha256="0" * 64,
                             journal=Journal(tmp_path / "out" / ".inflight"), workers=2))
    assert sorted(r.input for r in results) == sorted(t.input for t in tasks)
    assert {r.status for r in results} == {"error"}
    assert all(r.error.startswith("no worker process could start (") and "sha256" in r.error for r in results)
    assert not any((tmp_path / "out").rglob("*.wav"))


def test_a_failed_overwrite_keeps_the_old_output_and_the_next_run_tries_again(tmp_path, causal_ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sf.write(src / "x.wav", noisy_signal(np.random.default_rng(0), 1.0, 16000, 1), 16000)
    good = (src / "x.wav").read_bytes()
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    assert run_denoise([src], out, opts)["ok"] == 1
    before = (out / "x.wav").read_bytes()
    (src / "x.wav").write_bytes(b"not audio any more")
    s = run_denoise([src], out, dataclasses.replace(opts, overwrite=True))
    assert s["error"] == 1 and "(the output an earlier run made is left as it was)" in s["errors"][0]["error"]
    assert (out / "x.wav").read_bytes() == before
    (line,) = read_manifest(out / "audioae-manifest.jsonl")
    assert line["status"] == "error" and line["sha256"] and line["strength"] == 1.0  # what made the output
    s = run_denoise([src], out, opts)  # tried again, not "skipped (already done)" with no settings
    assert (s["error"], s["skipped"]) == (1, 0)
    assert read_manifest(out / "audioae-manifest.jsonl")[0]["sha256"] == line["sha256"]
    (src / "x.wav").write_bytes(good)
    assert run_denoise([src], out, opts)["ok"] == 1
    assert read_manifest(out / "audioae-manifest.jsonl")[0]["status"] == "ok"

QUANTUM = {"PCM_16": 2.0**-15, "PCM_24": 2.0**-23, "FLOAT": 0.0}  # rounding step of a subtype


def test_gpu_batch_path_on_cpu(tmp_path, causal_ckpt):
    """The GPU batching code, run on CPU: files of different rates, lengths and channel counts
    share one batch, each output equals the file denoised alone and is written in its format;
    a corrupt file is still an error."""
    src = make_tree(tmp_path / "in")
    model = load_checkpoint(causal_ckpt)
    den = FileDenoiser(model)
    items = [(FileTask(str(src / rel), str(tmp_path / "out" / rel), rel), None)
             for rel in [r for r, *_ in TREE] + ["sub/corrupt.wav"]]
    results = {Path(r.input).name: r for r in den._run_batched(items)}
    assert results["corrupt.wav"].status == "error"
    for rel, sr, ch, _fmt, subtype, _ in TREE:
        assert results[Path(rel).name].status == "ok", results[Path(rel).name].error
        o, i = sf.info(tmp_path / "out" / rel), sf.info(src / rel)
        assert (o.samplerate, o.channels, o.subtype, o.frames) == (sr, ch, subtype, i.frames)
        if subtype in QUANTUM:  # lossless outputs: the file denoised alone, up to rounding
            got, _ = sf.read(tmp_path / "out" / rel, dtype="float32", always_2d=True)
            x, _ = sf.read(src / rel, dtype="float32", always_2d=True)
            np.testing.assert_allclose(got.T, denoise(model, x.T, sr), atol=QUANTUM[subtype] + 1e-5)


def _batch_inputs(tmp_path: Path, specs: dict[str, tuple[int, int, float]]) -> list[tuple[FileTask, None]]:
    """Files named in ``specs`` (name: rate, channels, seconds) of noisy signal, as batch items."""
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    items = []
    for name, (sr, ch, seconds) in specs.items():
        sf.write(tmp_path / "in" / name, noisy_signal(rng, seconds, sr, ch), sr, subtype="FLOAT")
        items.append((FileTask(str(tmp_path / "in" / name), str(tmp_path / "out" / name), name), None))
    return items


TAGS = {"title": "Scene 12, take 3 – ünï", "artist": "field team", "comment": "by the river", "date": "2026-11-30"}


def test_a_recorders_text_tags_are_kept_by_every_writer(tmp_path, causal_ckpt, bidir_ckpt):
    """Was: the outputs had none (title, artist, comment, date in a WAV's INFO list, a FLAC's or an
    Ogg's comments), whatever the input had. MP3 keeps its ASCII ones (libsndfile garbles others)."""
    rng = np.random.default_rng(8)
    (tmp_path / "in").mkdir()
    items = []
    for name, fmt, subtype, sr in (("a.wav", "WAV", "PCM_24", 16000), ("b.flac", "FLAC", "PCM_16", 44100),
                                   ("c.ogg", "OGG", "VORBIS", 48000), ("d.mp3", "MP3", "MPEG_LAYER_III", 16000)):
        with sf.SoundFile(tmp_path / "in" / name, "w", sr, 2, subtype=subtype, format=fmt) as f:
            for key, value in TAGS.items():
                setattr(f, key, value)
            f.write(noisy_signal(rng, 0.5, sr, 2))
        items.append((FileTask(str(tmp_path / "in" / name), str(tmp_path / "out" / name), name), None))
    streamed, whole = FileDenoiser(load_checkpoint(causal_ckpt)), FileDenoiser(load_checkpoint(bidir_ckpt))
    for run in (lambda: [streamed.run(t) for t, _ in items], lambda: [whole.run(t) for t, _ in items],
                lambda: list(streamed._run_batched(items))):  # the GPU path, on CPU
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        assert {r.status for r in run()} == {"ok"}
        for name in ("a.wav", "b.flac", "c.ogg"):
            assert sf.SoundFile(tmp_path / "out" / name).copy_metadata() == TAGS, name
        mp3 = sf.SoundFile(tmp_path / "out" / "d.mp3").copy_metadata()
        assert (mp3["artist"], mp3["comment"], mp3.get("title")) == (TAGS["artist"], TAGS["comment"], "")


def test_gpu_batch_path_reports_a_clip_its_batch_cannot_take_and_denoises_the_rest(tmp_path, causal_ckpt):
    """Was: on a GPU, a 44101 Hz or a 65-channel file raised out of the batch and ended the whole
    job (the CPU path reports each as that file's error)."""
    items = _batch_inputs(tmp_path, {"a.wav": (16000, 1, 1.0), "odd-rate.wav": (44101, 1, 1.0),
                                     "many.wav": (8000, 65, 0.5), "b.wav": (16000, 2, 1.5)})
    results = {Path(r.input).name: r for r in FileDenoiser(load_checkpoint(causal_ckpt))._run_batched(items)}
    assert results["odd-rate.wav"].status == "error" and "44101 Hz cannot be resampled" in results["odd-rate.wav"].error
    assert results["many.wav"].status == "error" and "channels must be within 1..64, got 65" in results["many.wav"].error
    assert results["a.wav"].status == results["b.wav"].status == "ok"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav", "b.wav"]


def test_gpu_batch_out_of_memory_splits_the_batch_then_streams_a_file_alone(tmp_path, causal_ckpt, monkeypatch, caplog):
    # The device running out of memory cannot be caused on a CPU: it is raised for batches of more
    # than one file, and for one file ("big.wav") even alone, which must then stream.
    import audioae.batch.process as process

    real = process.denoise_batch

    def tight_memory(model, clips):
        if len(clips) > 1 or clips[0][0].shape[-1] > 16000 * 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, clips)

    monkeypatch.setattr(process, "denoise_batch", tight_memory)
    items = _batch_inputs(tmp_path, {"a.wav": (16000, 1, 1.0), "b.wav": (22050, 2, 1.0), "big.wav": (16000, 1, 3.0)})
    model = load_checkpoint(causal_ckpt)
    results = {Path(r.input).name: r for r in FileDenoiser(model)._run_batched(items)}
    assert {n: r.status for n, r in results.items()} == {"a.wav": "ok", "b.wav": "ok", "big.wav": "ok"}
    assert "a batch of 3 files failed (OutOfMemoryError" in caplog.text
    assert "big.wav: out of memory in a batch of its own; streaming it instead" in caplog.text
    for name, _ in [(Path(t.input).name, t) for t, _ in items]:
        x, sr = sf.read(tmp_path / "in" / name, dtype="float32", always_2d=True)
        got, _ = sf.read(tmp_path / "out" / name, dtype="float32", always_2d=True)
        np.testing.assert_allclose(got.T, denoise(model, x.T, sr), atol=1e-5)


def test_gpu_batches_are_capped_in_channel_seconds(tmp_path, causal_ckpt, monkeypatch):
    import audioae.batch.process as process

    monkeypatch.setattr(process, "BATCH_MAX_TOTAL", 10.0)  # 4-channel files of 1 s: two per batch, as 16 files would allow 6
    items = _batch_inputs(tmp_path, {f"f{i}.wav": (16000, 4 if i < 4 else 1, 1.0) for i in range(6)})
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    decoded = []
    for task, _ in items:
        with sf.SoundFile(task.input) as f:
            decoded.append(den._decode(task, None, f, time.perf_counter(), process._check_header(task, f, None)))
    sizes = [[round(d.channel_seconds) for d in g] for g in den._groups(decoded)]
    assert sizes == [[4, 4], [4, 4, 1, 1]]  # a third 4 would pass 10; two 1s fit beside


def test_killed_run_leaves_only_complete_outputs_and_rerun_finishes(tmp_path, causal_ckpt):
    rng = np.random.default_rng(3)
    src, out, n = tmp_path / "in", tmp_path / "out", 40
    src.mkdir()
    frames = {}
    for i in range(n):
        x = noisy_signal(rng, 4.0, 16000, 1)
        sf.write(src / f"f{i:02d}.wav", x, 16000, subtype="PCM_16")
        frames[f"f{i:02d}.wav"] = len(x)
    cmd = [sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out),
           "--model", str(causal_ckpt), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out.is_dir() and outputs(out)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = outputs(out) if out.is_dir() else set()
    assert 0 < len(done) < n, f"the kill should land mid-way through the job: {proc.stderr.read()[-2000:]}"
    for name in done:  # every output present is complete
        assert sf.info(out / name).frames == frames[name]
    assert all(p.name.endswith(".wav.part") for p in parts(out))  # only temp files besides
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (s["skipped"], s["ok"], s["error"]) == (len(done), n - len(done), 0)
    assert outputs(out) == set(frames) and not parts(out)
    for name, nframes in frames.items():
        assert sf.info(out / name).frames == nframes
    statuses = {Path(r["input"]).name: r["status"] for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert statuses == {name: ("skipped" if name in done else "ok") for name in frames}
    json.dumps(s)  # the summary is JSON-ready


def test_a_checkpoint_that_disagrees_with_its_sha256_file_is_refused(tmp_path, causal_ckpt):
    """The folder tool checks the .sha256 beside a checkpoint, as every load does, and writes nothing."""
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(causal_ckpt.read_bytes())
    (tmp_path / "model.safetensors.sha256").write_text("0" * 64 + "  model.safetensors\n")
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", (0.1 * noise(np.random.default_rng(0), 0.5, 16000)).astype(np.float32), 16000)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        run_denoise([src], out, DenoiseOptions(model=str(ckpt), progress=False))
    assert not (out / "a.wav").exists()


def test_a_model_not_trained_to_denoise_is_named_in_a_warning(tmp_path, caplog):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", noisy_signal(np.random.default_rng(0), 1.0, 16000, 1), 16000)
    torch.manual_seed(0)
    trained = tmp_path / "den.safetensors"  # corruption "mix": what denoiser configs train with
    save_checkpoint(build_model("recurrent", {"hidden": 16, "code_dim": 8, "corruption": "mix"}), trained)
    opts = DenoiseOptions(model=str(trained), progress=False)
    assert run_denoise([src], tmp_path / "out1", opts)["ok"] == 1
    assert "trained without corruption" not in caplog.text
    opts = DenoiseOptions(model="decomposer-small", progress=False)  # a plain sparse autoencoder
    assert run_denoise([src], tmp_path / "out2", opts)["ok"] == 1  # still runs: a reconstruction may be wanted
    assert "decomposer-small.safetensors was trained without corruption" in caplog.text


def test_an_image_model_is_refused_before_anything_is_written(tmp_path, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, noisy_signal(np.random.default_rng(0), 0.5, 16000, 1), 16000)
    image = tmp_path / "img.safetensors"
    save_checkpoint(build_model("image", {}), image)
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(image), "--no-progress"]) == 2
    assert "the image model takes image input and cannot denoise audio" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # not one error row per file: the job never started
    model = load_checkpoint(image)
    with pytest.raises(ValueError, match="denoising needs a spectrogram model; this is a 'image' model"):
        denoise(model, np.zeros(1600, np.float32), 16000)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path, causal_ckpt, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, noisy_signal(np.random.default_rng(0), 0.5, 16000, 1), 16000)
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(causal_ckpt), "--device", "cuda",
                 "--no-progress"]) == 2
    assert "device 'cuda' was asked for, but torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # was: an empty manifest and a lock file


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_denoise_takes_cuda_n_as_serve_and_train_do(tmp_path, causal_ckpt, capsys):
    """Was: argparse refused `denoise --device cuda:0` (choices auto/cpu/cuda) where serve and train
    took it. Without a GPU it reaches pick_device's refusal, as cuda does."""
    src = tmp_path / "a.wav"
    sf.write(src, noisy_signal(np.random.default_rng(0), 0.5, 16000, 1), 16000)
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(causal_ckpt), "--device", "cuda:0",
                 "--no-progress"]) == 2
    assert "device 'cuda:0' was asked for, but torch sees no CUDA device" in capsys.readouterr().err
    for command in (["denoise", str(src), "-o", str(tmp_path / "out")], ["train"], ["serve"]):
        with pytest.raises(SystemExit) as refused:  # one parser type: the same words on every command
            main([*command, "--device", "gpu"])
        assert refused.value.code == 2
        assert "expected auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_name_taken_by_a_file_fails_those_files_not_the_job(tmp_path, causal_ckpt):
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the outputs' folder belongs")
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    under_sub = [rel for rel, *_ in TREE if rel.startswith("sub/")]
    # was: the cleanup of the corrupt file's .part raised NotADirectoryError and ended the job
    assert (s["ok"], s["error"]) == (len(TREE) - len(under_sub), len(under_sub) + 1)
    recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert recs["top.wav"]["status"] == "ok" and recs["stereo.wav"]["status"] == "error"
    assert recs["stereo.wav"]["error"] == (f"{out / 'sub' / 'stereo.wav'}: cannot write the output: {out / 'sub'} "
                                           f"is a file, where its folder would go")  # was "(File exists)"
    assert (out / "sub").read_text() == "a file where the outputs' folder belongs"


@pytest.fixture
def small_disk(tmp_path):
    """A real 400 kB file system (tmpfs), where this machine lets the tests mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_fails_each_file_by_name_and_the_job_ends_cleanly(tmp_path, causal_ckpt, small_disk, capsys):
    """Was: libsndfile's "Error opening b'.../.x.wav.part': System error." per file, then a traceback
    from the manifest's final rewrite; then "(System error.); the disk holding it is full"; and a
    rerun on the disk filled to its last byte said only "[Errno 28] No space left on device"."""
    src = tmp_path / "in"
    rows = [(f"f{i}.wav", 16000, 1, "WAV", "PCM_16", 3.0) for i in range(6)]  # 96 kB each: four do not fit
    write_tree(src, rows)
    out = small_disk / "out"
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 1
    recs = read_manifest(out / "audioae-manifest.jsonl")
    failed = [r for r in recs if r["status"] == "error"]
    assert 1 <= len(failed) < len(rows) and len(recs) == len(rows)
    assert failed[0]["error"].startswith(f"{failed[0]['output']}: cannot write the output: the disk holding it is "
                                         f"full ("), failed[0]["error"]
    for r in failed[1:]:  # the files after it are passed over (test_files_that_cannot_fit_on_a_full_disk_...)
        assert r["error"].startswith(f"not attempted: the disk holding {out} is full ("), r["error"]
    assert not list(out.glob(".*.part"))  # and the job ended with its summary (exit 1), not a traceback
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb", buffering=0) as filler:  # to the last byte
        while True:
            filler.write(b"\0" * 512)
    capsys.readouterr()
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write .audioae.lock, which holds the folder for this run (No space left on device)" in err, err


@pytest.mark.parametrize("path", ["run", "batched", "streamed"])
def test_every_path_notes_a_write_that_found_the_disk_full(tmp_path, causal_ckpt, small_disk, path):
    """``disk_full`` (the files left are then passed over when they cannot fit) is set by the write
    that finds the disk full: one file's (CPU), a GPU batch's, and a long file's the GPU path streams."""
    from audioae.batch.process import says_disk_full

    write_tree(tmp_path / "in", [("big.wav", 16000, 1, "WAV", "PCM_16", 16.0)])  # 512 kB of output: over the disk
    task = FileTask(str(tmp_path / "in" / "big.wav"), str(small_disk / "big.wav"), "big.wav")
    den = FileDenoiser(load_checkpoint(causal_ckpt), batch_max_seconds=1.0 if path == "streamed" else 30.0)
    [r] = [den.run(task)] if path == "run" else den._run_batched([(task, None)])  # the GPU path, on CPU
    assert says_disk_full(r.error) and den.disk_full, r.error


@pytest.mark.parametrize("path", ["run", "batched"])
def test_an_empty_output_that_finds_the_disk_full_is_noted(tmp_path, causal_ckpt, small_disk, path):
    """Was: the write of an empty recording's empty output failed unnoted: the files after it were
    denoised to fail the same way rather than passed over."""
    from audioae.batch.process import says_disk_full

    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "e.wav", np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb", buffering=0) as filler:  # to the last byte
        while True:
            filler.write(b"\0" * 512)
    task = FileTask(str(src / "e.wav"), str(small_disk / "e.wav"), "e.wav")
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    [r] = [den.run(task)] if path == "run" else den._run_batched([(task, None)])
    assert says_disk_full(r.error) and den.disk_full, r.error


@pytest.mark.parametrize("workers", [1, 2])
def test_files_that_cannot_fit_on_a_full_disk_are_not_attempted_and_a_rerun_does_them(tmp_path, causal_ckpt,
                                                                                       small_disk, capsys, workers):
    """Once a write had found the disk full, every file left was still denoised, to fail the same
    way, each with its own line. Now the files whose outputs cannot fit are passed
    over, said once, and stay to do on the next run. With workers, the files the others are on
    when one finds the disk full fail too."""
    src = tmp_path / "in"
    rows = [(f"f{i}.wav", 16000, 1, "WAV", "PCM_16", 1.0) for i in range(8)]  # 32 kB each
    write_tree(src, rows)
    (small_disk / "filler").write_bytes(b"\0" * 250_000)  # room for about four outputs of eight
    out = small_disk / "out"
    cmd = ["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress", "--workers", str(workers)]
    assert main(cmd) == 1
    captured = capsys.readouterr()
    recs = read_manifest(out / "audioae-manifest.jsonl")
    assert sorted(r["input"] for r in recs) == [str(src / name) for name, *_ in rows]
    ok = [r for r in recs if r["status"] == "ok"]
    full = [r for r in recs if "cannot write the output" in r["error"]]  # was one per file after the first
    assert 1 <= len(full) <= workers and all("the disk holding it is full" in r["error"] for r in full)
    passed = [r for r in recs if r["error"].startswith("not attempted: ")]
    assert ok and passed and len(ok) + len(full) + len(passed) == len(rows)
    for r in passed:
        assert re.fullmatch(rf"not attempted: the disk holding {re.escape(str(out))} is full \(\d+ kB free, its "
                            rf"output needs 32 kB\)", r["error"]), r["error"]
    assert outputs(out) == {Path(r["output"]).name for r in ok} and not parts(out)
    assert not list(out.glob(".audioae-inflight/*.json"))  # a file passed over leaves no marker: no crash suspect
    assert f"{len(rows) - len(ok)} failed ({len(passed)} not attempted: the disk is full)" in captured.out
    assert captured.err.count("failed: ") == len(full) and captured.err.count("not attempted: ") == 1, captured.err
    assert f"  not attempted: {len(passed)} files, once a write had found the disk full (e.g. {passed[-1]['input']}: " \
           f"the disk holding {out} is full (" in captured.err
    (small_disk / "filler").unlink()  # room again: the rerun does every file left
    assert main(cmd) == 0
    assert outputs(out) == {name for name, *_ in rows}
    assert all(r["status"] in ("ok", "skipped") for r in read_manifest(out / "audioae-manifest.jsonl"))


def test_an_overwrite_that_a_full_disk_stopped_keeps_its_record_and_a_rerun_goes_on(tmp_path, causal_ckpt,
                                                                                      monkeypatch):
    """A job that ended with files passed over for want of space called its --overwrite run
    finished: "free some space and run the same command again" redid every file."""
    from audioae.batch import job
    from audioae.batch.overwrite import OVERWRITE_NAME, stopped_overwrite
    from audioae.batch.process import NOT_ATTEMPTED

    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [("a.wav", 16000, 1, "WAV", "PCM_16", 0.5), ("b.wav", 16000, 1, "WAV", "PCM_16", 0.5)])
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    assert run_denoise([src], out, opts)["ok"] == 2
    real = job._engine_results

    def full_after_a(todo, *args, **kwargs):  # a.wav done, then the disk is full
        yield from real(todo[:1], *args, **kwargs)
        for t in todo[1:]:
            yield FileResult(t.input, t.output, "error", f"{NOT_ATTEMPTED}the disk holding {out} is full")

    monkeypatch.setattr(job, "_engine_results", full_after_a)
    again = dataclasses.replace(opts, overwrite=True)
    s = run_denoise([src], out, again)
    assert (s["ok"], s["not_attempted"]) == (1, 1), s
    run = stopped_overwrite(out)
    assert run is not None
    made_a = (out / "a.wav").stat().st_mtime_ns
    monkeypatch.setattr(job, "_engine_results", real)
    s = run_denoise([src], out, again)  # space freed: the same command goes on
    assert (s["skipped"], s["ok"], s["error"]) == (1, 1, 0), s
    assert (out / "a.wav").stat().st_mtime_ns == made_a
    assert {r["overwrite_run"] for r in read_manifest(out / "audioae-manifest.jsonl")} == {run.id}
    assert not (out / OVERWRITE_NAME).exists()  # it finished


def test_an_overwrite_that_fails_before_any_file_leaves_no_folder(tmp_path, causal_ckpt, monkeypatch):
    """A job that made its folder and failed before any result (a Ray cluster not reached) removes
    the folder, its --overwrite record included: removed while the job still holds the folder, as
    a job started after it may have written its own."""
    from audioae.batch import job

    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [("a.wav", 16000, 1, "WAV", "PCM_16", 0.5)])

    def unreachable(*args, **kwargs):
        raise RuntimeError("cannot reach the Ray cluster")
        yield

    monkeypatch.setattr(job, "_engine_results", unreachable)
    with pytest.raises(RuntimeError, match="cannot reach"):
        run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False, overwrite=True))
    assert not out.exists()


def _free_space(monkeypatch, free) -> None:
    """Make every disk report ``free()`` bytes free (``shutil.disk_usage`` asks ``os.statvfs``)."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        return os.statvfs_result((*st[:4], free() // st.f_frsize, *st[5:]))

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_after_a_full_disk_only_a_file_that_cannot_fit_is_passed_over(tmp_path, causal_ckpt, monkeypatch):
    """Once a write had found the disk full, an output was taken to need its input's size: a WAV
    whose input held a 100 kB JUNK chunk (an output has none), or a FLAC (denoised audio codes
    differently), that would fit was "not attempted", and a small file's message said "0.0 MB"."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [("long.wav", 16000, 1, "WAV", "PCM_16", 2.0), ("small.wav", 16000, 1, "WAV", "PCM_16", 0.5),
                     ("big.flac", 16000, 1, "FLAC", "PCM_16", 50.0)])
    raw = (src / "small.wav").read_bytes()  # 16 kB of samples, and a 100 kB JUNK chunk before them
    junk = b"JUNK" + (100_000).to_bytes(4, "little") + bytes(100_000)
    (src / "junk.wav").write_bytes(raw[:4] + (len(raw) - 8 + len(junk)).to_bytes(4, "little") + raw[8:12] + junk
                                   + raw[12:])
    assert (src / "big.flac").stat().st_size > 1_100_000
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    den.disk_full = True  # as after a write that found the disk full
    free = 12 * 4096  # whole blocks
    _free_space(monkeypatch, lambda: free)

    def task(name):
        return FileTask(str(src / name), str(out / "sub" / name), f"sub/{name}")  # its folder is new

    r = den.run(task("long.wav"))
    assert r.error == f"not attempted: the disk holding {out} is full (49 kB free, its output needs 64 kB)"
    r = den.run(task("big.flac"))  # a compressed output: only under FULL_DISK_BYTES free
    assert r.error == f"not attempted: the disk holding {out} is full (49 kB free)"
    assert den.run(task("junk.wav")).status == "ok"  # its 16 kB fit
    free = 1_100_000  # space freed during the run
    assert den.run(task("big.flac")).status == "ok" and den.run(task("long.wav")).status == "ok"
    assert outputs(out) == {"sub/junk.wav", "sub/big.flac", "sub/long.wav"}


def test_after_a_full_disk_each_file_left_is_opened_once(tmp_path, causal_ckpt, monkeypatch):
    """The check for room opened each file left for its header, and its run opened it again."""
    from audioae.batch import process

    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [("a.wav", 16000, 1, "WAV", "PCM_16", 0.5), ("b.wav", 16000, 1, "WAV", "PCM_16", 0.5)])
    opened = []
    real_open = process._open
    monkeypatch.setattr(process, "_open", lambda task, *a: opened.append(task.rel) or real_open(task, *a))
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    den.disk_full = True  # as after a write that found the disk full; this disk has room for these
    assert den.run(FileTask(str(src / "a.wav"), str(out / "a.wav"), "a.wav")).status == "ok"
    [r] = den._run_batched([(FileTask(str(src / "b.wav"), str(out / "b.wav"), "b.wav"), None)])  # the GPU path
    assert r.status == "ok" and opened == ["a.wav", "b.wav"]


def test_the_gpu_path_writes_a_file_it_has_denoised_without_asking_for_room_again(tmp_path, causal_ckpt,
                                                                                   monkeypatch):
    """The batched (GPU) path, on CPU: a file that passed the check for room was checked again after
    its batch had run and passed over as "not attempted" when space had gone meanwhile, its work
    thrown away; its write says whether it fits."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tree(src, [("a.wav", 16000, 1, "WAV", "PCM_16", 0.5)])
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    den.disk_full = True
    asked = []
    _free_space(monkeypatch, lambda: 10**9 if not asked.append(1) and len(asked) == 1 else 0)  # then none
    [r] = den._run_batched([(FileTask(str(src / "a.wav"), str(out / "a.wav"), "a.wav"), None)])
    assert r.status == "ok" and (out / "a.wav").is_file()


def test_a_folder_search_takes_every_container_libsndfile_reads_and_counts_the_rest(tmp_path, causal_ckpt, caplog):
    """Until 2026-12-07 a folder search took WAV, FLAC and Ogg only: a folder of MP3s (or voice
    messages in Ogg Opus) came back as "nothing to denoise", though each file named alone was
    denoised. Outputs keep their container, subtype and length."""
    src = make_tree(tmp_path / "in")
    x = (0.1 * np.random.default_rng(0).standard_normal((24000, 2))).astype(np.float32)  # [T, 2], 0.5 s at 48 kHz
    kinds = {"sub/talk.mp3": ("MP3", "MPEG_LAYER_III"), "sub/deeper/take.MP3": ("MP3", "MPEG_LAYER_III"),
             "memo.aiff": ("AIFF", "PCM_24"), "note.opus": ("OGG", "OPUS"), "field.caf": ("CAF", "PCM_16")}
    for name, (fmt, subtype) in kinds.items():
        sf.write(src / name, x, 48000, format=fmt, subtype=subtype)
    (src / "sub" / "call.m4a").write_bytes(b"ftyp")  # no libsndfile reads these
    (src / "voice.WMA").write_bytes(b"0&")
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert s["files"] == len(TREE) + 1 + len(kinds)  # the tree (+ its corrupt WAV) and each of those
    for name, (fmt, subtype) in kinds.items():
        info = sf.info(tmp_path / "out" / name)
        assert (info.format, info.subtype, info.frames, info.channels) == (fmt, subtype, len(x), 2), name
    assert "passed over 1 .m4a, 1 .wma file(s): libsndfile reads none of these" in caplog.text


def test_linked_folders_are_followed_once_and_a_link_loop_ends(tmp_path, causal_ckpt, caplog):
    src = make_tree(tmp_path / "in")
    elsewhere = make_tree(tmp_path / "shared")  # e.g. storage linked into the tree
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    (src / "sub" / "up").symlink_to(src, target_is_directory=True)  # a loop back to the top
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (s["files"], s["ok"]) == (2 * (len(TREE) + 1), 2 * len(TREE))  # was: the linked folder left out silently
    assert outputs(tmp_path / "out") == {rel for rel, *_ in TREE} | {f"linked/{rel}" for rel, *_ in TREE}
    assert "sub/up: skipped, its files were searched already under another name (a link loop?)" in caplog.text


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`audioae models --json | head -1`: the pipe closes before the command writes."""
    proc = subprocess.Popen([sys.executable, "-m", "audioae.cli", "models", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the import of torch is done
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def _wavex_ms_adpcm(path: Path, x: np.ndarray, sr: int) -> None:
    """``x [T]`` as MS ADPCM in a WAVE_FORMAT_EXTENSIBLE file: libsndfile reads this pairing (the
    fmt chunk's subformat GUID is MS ADPCM's) but cannot write it. Made from the plain MS ADPCM WAV
    libsndfile writes, with its fmt chunk rewritten as the extensible form."""
    import struct

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="MS_ADPCM")
    data, pos, chunks = buf.getvalue(), 12, []
    while pos < len(data):  # RIFF chunks after "RIFF <size> WAVE"
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunks.append((data[pos : pos + 4], data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    fmt = dict(chunks)[b"fmt "]
    _, channels, rate, per_second, align, bits, _, per_block = struct.unpack("<HHIIHHHH", fmt[:20])
    ms_adpcm = struct.pack("<IHH8B", 2, 0, 0x10, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71)  # the subformat GUID
    # WAVE_FORMAT_EXTENSIBLE, cbSize 22, then samples per block where PCM has its valid bits, a channel mask
    extensible = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, per_second, align, bits, 22, per_block, 4) + ms_adpcm
    body = b"".join(name + struct.pack("<I", len(c)) + c + b"\0" * (len(c) & 1)
                    for name, c in ((n, extensible if n == b"fmt " else c) for n, c in chunks))
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)


def test_a_subtype_libsndfile_cannot_write_falls_back_to_the_containers_default(tmp_path, causal_ckpt, bidir_ckpt,
                                                                                 caplog):
    """docs/batch.md: "A subtype libsndfile cannot write falls back to the container's default
    (logged)": an MS ADPCM WAVE_FORMAT_EXTENSIBLE file comes back as the WAVEX default, PCM_16,
    with its rate and length, on the streamed path, the whole-file path and the GPU batch path."""
    from audioae.batch.process import output_format

    src = tmp_path / "in" / "adpcm.wav"
    src.parent.mkdir()
    _wavex_ms_adpcm(src, noisy_signal(np.random.default_rng(4), 1.0, 16000, 1)[:, 0], 16000)
    info = sf.info(src)
    assert (info.format, info.subtype) == ("WAVEX", "MS_ADPCM")  # readable ...
    assert not sf.check_format("WAVEX", "MS_ADPCM")  # ... and not writable: the case this test is about
    fallback = sf.default_subtype("WAVEX")
    assert fallback == "PCM_16"

    assert output_format("WAVEX", "PCM_24", "a.wav") == ("WAVEX", "PCM_24")  # a writable subtype is kept
    assert output_format("WAVEX", "MS_ADPCM", "a.wav") == ("WAVEX", fallback)
    assert "a.wav: cannot write subtype MS_ADPCM in WAVEX; writing PCM_16" in caplog.text

    x, _ = sf.read(src, dtype="float32", always_2d=True)
    for ckpt, path in ((causal_ckpt, "streamed"), (bidir_ckpt, "whole"), (causal_ckpt, "batched")):
        caplog.clear()
        model = load_checkpoint(ckpt)
        task = FileTask(str(src), str(tmp_path / path / "adpcm.wav"), "adpcm.wav")
        den = FileDenoiser(model, block_seconds=0.3)
        res = next(iter(den._run_batched([(task, None)]))) if path == "batched" else den.run(task)
        assert res.status == "ok", (path, res.error)
        o = sf.info(task.output)
        assert (o.format, o.subtype, o.samplerate, o.channels, o.frames) == ("WAVEX", fallback, 16000, 1, info.frames), path
        assert f"{src}: cannot write subtype MS_ADPCM in WAVEX; writing PCM_16" in caplog.text, path
        got, _ = sf.read(task.output, dtype="float32", always_2d=True)  # the denoised audio, rounded to 16 bits
        np.testing.assert_allclose(got.T, np.clip(denoise(model, x.T, 16000), -1, 1), atol=2.0**-15 + 1e-5)


@pytest.mark.parametrize("subtype", ["ULAW", "ALAW", "GSM610", "IMA_ADPCM", "MS_ADPCM"])
def test_samples_beyond_full_scale_are_clipped_in_every_non_float_subtype(tmp_path, subtype):
    # was: only PCM was clipped; u-law, A-law, GSM 6.10 and ADPCM turned such samples over
    # (1.5 came back as 0.17 in u-law), in the folder tool, write_audio and the server's answers
    from audioae.audio import read_audio, write_audio
    from audioae.batch.process import _PartWriter
    from audioae.client import AudioForm, audio_message

    sr = 8000
    square = np.where(np.arange(sr) % 200 < 100, 1.5, -1.5).astype(np.float32)[None]  # [1, T], 50% over
    task = FileTask("in.wav", str(tmp_path / "part.wav"), "part.wav")
    writer = _PartWriter(task, sr, 1, "WAV", subtype)
    writer.write(square)
    writer.commit()
    write_audio(tmp_path / "lib.wav", square, sr, subtype=subtype)
    answer = audio_message(square, AudioForm("encoded", sr, 1, "WAV", subtype))
    for name, y in (("folder", read_audio(tmp_path / "part.wav")[0]), ("write_audio", read_audio(tmp_path / "lib.wav")[0]),
                    ("answer", read_audio(answer.encoded)[0])):
        halves = y[0, : sr - sr % 200].reshape(-1, 2, 100)[:, :, 20:]  # [periods, +/-, steady part]
        assert halves[:, 0].mean() > 0.8 and halves[:, 1].mean() < -0.8, (name, halves[:, 0].mean())


def test_an_mp3s_output_keeps_its_bitrate(tmp_path, causal_ckpt):
    """libsndfile's default settings wrote an MP3 back whatever its bitrate (a 320 kbps one as a
    lossier copy). The output is now encoded at about the input's bitrate."""
    src = tmp_path / "in"
    src.mkdir()
    x = (0.1 * np.random.default_rng(0).standard_normal((3 * 44100, 2))).astype(np.float32)
    for kbps, level in ((320, 0.0), (128, 0.66), (64, 0.9)):  # libsndfile's CBR levels for those rates
        with sf.SoundFile(src / f"k{kbps}.mp3", "w", 44100, 2, format="MP3", compression_level=level,
                          bitrate_mode="CONSTANT") as f:
            f.write(x)
    mono = x[: 3 * 16000, :1]
    with sf.SoundFile(src / "k32-16k.mp3", "w", 16000, 1, format="MP3", compression_level=0.83,
                      bitrate_mode="CONSTANT") as f:
        f.write(mono)
    assert run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))["ok"] == 4
    for name in ("k320.mp3", "k128.mp3", "k64.mp3", "k32-16k.mp3"):
        size_in, size_out = (src / name).stat().st_size, (tmp_path / "out" / name).stat().st_size
        assert 0.8 < size_out / size_in < 1.25, (name, size_in, size_out)
        # and its length: at 16 kHz 32 kbps a constant bitrate wrote no header to trim the encoder's
        # delay by, and the output came back longer than the input, its audio late
        decoded = [len(sf.read(path, dtype="float32")[0]) for path in (src / name, tmp_path / "out" / name)]
        assert decoded[0] == decoded[1], (name, decoded)  # (a header without the tag only estimates the frames)


def test_a_short_mp3_comes_back_at_its_bitrate(tmp_path, causal_ckpt):
    """An MP3's bitrate was its frames' bytes over the length it decodes to, which its Info frame
    trims of the encoder's delay and padding (over 1,500 samples) that those bytes code too: a
    half-second 56 kbps file was read as 61 kbps and came back at 64. Now over the samples coded."""
    from audioae.audio import read_audio

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for sr, level, seconds in ((44100, 0.9, 0.5), (44100, 0.9, 0.2), (32000, 0.9, 0.5)):  # 56 kbps, constant
        t = np.arange(int(sr * seconds)) / sr
        x = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
        with sf.SoundFile(src / f"short-{sr}-{seconds}.mp3", "w", sr, 1, format="MP3", compression_level=level,
                          bitrate_mode="CONSTANT") as f:
            f.write(x)
        assert read_audio(src / f"short-{sr}-{seconds}.mp3")[2].kbps == pytest.approx(56, rel=0.01)
    assert run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))["ok"] == 3
    for path in sorted(src.iterdir()):
        out = tmp_path / "out" / path.name
        assert read_audio(out)[2].kbps == pytest.approx(56, rel=0.01), path.name
        assert out.stat().st_size == path.stat().st_size, path.name  # constant 56 kbps, as many frames
        assert len(sf.read(out)[0]) == len(sf.read(path)[0]), path.name



def test_an_8_khz_phone_mp3s_output_keeps_its_bitrate(tmp_path, causal_ckpt):
    """MPEG-2.5 (8, 11.025 and 12 kHz: phone and dictaphone MP3s) spans 8..64 kbps in libsndfile's
    levels, not MPEG-2's 8..160: a 64 kbps 8 kHz voice memo came back at 24 kbps, a 32 kbps one at
    16 (libsndfile's levels for those bitrates on MPEG-2's scale, 0.63 and 0.84, give them)."""
    from audioae.data.synthetic import speech_like

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for sr, level in ((8000, 0.0), (8000, 0.43), (11025, 0.0), (12000, 0.71)):  # 64, 40, 64, 24 kbps
        x = (0.3 * speech_like(rng, 6.0, sr) + 0.03 * noise(rng, 6.0, sr)).astype(np.float32)
        with sf.SoundFile(src / f"memo-{sr}-{level}.mp3", "w", sr, 1, format="MP3", compression_level=level,
                          bitrate_mode="CONSTANT") as f:
            f.write(x)
    assert run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))["ok"] == 4
    for path in sorted(src.iterdir()):
        size_in, size_out = path.stat().st_size, (tmp_path / "out" / path.name).stat().st_size
        assert 0.8 < size_out / size_in < 1.25, (path.name, size_in, size_out)
        decoded = [len(sf.read(p, dtype="float32")[0]) for p in (path, tmp_path / "out" / path.name)]
        assert decoded[0] == decoded[1], (path.name, decoded)

def _cut_short_copies(src: Path) -> None:
    """In ``src``: WAV, AIFF, AU and MP3 copies cut to half their bytes (headers claiming all of it:
    the MP3's Xing frame counts its frames), a complete WAV, and a complete WAV whose data size is a
    live recorder's placeholder."""
    from audio_tree import cut_short, live_wav

    x = noisy_signal(np.random.default_rng(3), 2.0, 16000, 1)  # [T, 1]
    for name, fmt in (("cut.wav", "WAV"), ("cut.aiff", "AIFF"), ("cut.au", "AU"), ("whole.wav", "WAV"),
                      ("live.wav", "WAV")):
        sf.write(src / name, x, 16000, format=fmt, subtype="PCM_16")
    sf.write(src / "cut.mp3", x, 16000, format="MP3")
    for name in ("cut.wav", "cut.aiff", "cut.au", "cut.mp3"):
        (src / name).write_bytes(cut_short((src / name).read_bytes()))
    (src / "live.wav").write_bytes(live_wav((src / "live.wav").read_bytes()))


def test_an_ogg_that_decodes_to_nothing_may_be_cut_short_and_says_so(tmp_path):
    """An Ogg holds its length at its end: one cut short decodes to less than it holds, or to
    nothing, which was reported as "the audio is empty (0 samples)" of a file of kilobytes; one
    that decodes in part was denoised short without a word (its last page is no end page)."""
    from audioae.audio import AudioError, read_audio

    whole, cut = whole_and_cut(tmp_path, noisy_signal(np.random.default_rng(3), 2.0, 16000, 1), 16000, ext="ogg",
                               subtype="VORBIS")
    with pytest.raises(AudioError, match=r"cut\.ogg: libsndfile decodes no audio from this Ogg file; if it should "
                                         r"hold some, it may be cut short"):
        read_audio(cut)
    most = tmp_path / "most.ogg"  # cut later: the pages before the cut decode, and it says it is cut
    most.write_bytes(whole.read_bytes()[: whole.stat().st_size * 9 // 10])
    wav, _, info = read_audio(most)
    assert info.cut is not None and 0 < wav.shape[-1] < 32000 and read_audio(whole)[2].cut is None
    assert info.cut.warning("most.ogg", "denoised") == ("most.ogg: its Ogg stream stops before its end page (a copy "
                                                        "cut short, or a recording that stopped mid-write?): "
                                                        "denoised what decodes of it")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav: the audio is empty \(0 samples\)"):
        read_audio(silent)


def test_a_copy_cut_short_is_denoised_with_a_warning(tmp_path, causal_ckpt, capsys):
    """A WAV, AIFF, AU or MP3 cut short (an interrupted copy) was denoised for the half it holds
    without a word, though its complete original may be elsewhere: its result, the manifest (a
    rerun's skipped line too) and the command's output now say so. A live recorder's placeholder
    size (0xFFFFFFFF) and a complete file say nothing."""
    src = tmp_path / "in"
    src.mkdir()
    _cut_short_copies(src)
    out = tmp_path / "out"
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 0
    err = capsys.readouterr().err
    recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert {n for n, r in recs.items() if r["status"] == "ok"} == {"cut.wav", "cut.aiff", "cut.au", "cut.mp3",
                                                                   "whole.wav", "live.wav"}
    why = r"\(a copy cut short, or a recording that stopped mid-write\?\)"
    for name in ("cut.wav", "cut.aiff", "cut.au"):
        warning = recs[name]["warning"]
        # 64,000: the audio's own bytes (an AIFF's SSND size counts 8 more: its offset and block size)
        assert re.fullmatch(rf"{re.escape(str(src / name))}: its header claims 64,000 bytes of audio but the file "
                            rf"holds 3\d,\d{{3}} {why}: denoised the 1.00 s it holds", warning), warning
        assert f"  warning: {warning}" in err
        assert sf.info(out / name).frames == sf.info(src / name).frames
    warning = recs["cut.mp3"]["warning"]  # libsndfile's frames are the Xing frame's count: 2 s
    assert re.fullmatch(rf"{re.escape(str(src / 'cut.mp3'))}: its header claims 2.00 s of audio but its frames hold "
                        rf"1.0\d s {why}: denoised what decodes of it", warning), warning
    assert len(sf.read(src / "cut.mp3")[0]) < 20000 <= sf.info(src / "cut.mp3").frames
    assert recs["whole.wav"]["warning"] == recs["live.wav"]["warning"] == ""
    assert sf.info(out / "live.wav").frames == 32000
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert s["skipped"] == 6 and s["warnings"] == []  # said when denoised, kept in the manifest
    again = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert again["cut.wav"]["status"] == "skipped" and again["cut.wav"]["warning"] == recs["cut.wav"]["warning"]
    batched = FileDenoiser(load_checkpoint(causal_ckpt))._run_batched(  # the GPU path, on CPU
        [(FileTask(str(src / "cut.wav"), str(tmp_path / "gpu" / "cut.wav"), "cut.wav"), None)])
    assert next(iter(batched)).warning == recs["cut.wav"]["warning"]


def test_a_folder_search_takes_every_name_of_the_containers_libsndfile_writes(tmp_path, causal_ckpt, capsys):
    """Was: a folder search passed over .bwf, .wave, .aifc, .oga and .snd files without a word
    ("0 files"), though named on the command line they denoised fine. Each output keeps its
    input's name and container."""
    src, out = tmp_path / "in", tmp_path / "out"
    made = {"take.bwf": ("WAV", "PCM_24"), "take.wave": ("WAV", "PCM_16"), "take.aifc": ("AIFF", "ULAW"),
            "take.oga": ("OGG", "VORBIS"), "take.snd": ("AU", "PCM_16"), "TAKE2.BWF": ("WAV", "FLOAT")}
    write_tree(src, [(name, 16000, 1, fmt, subtype, 0.6) for name, (fmt, subtype) in made.items()])
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 0
    assert "6 files: 6 denoised" in capsys.readouterr().out
    assert outputs(out) == set(made)
    for name, (fmt, subtype) in made.items():
        info = sf.info(out / name)
        assert (info.format, info.subtype, info.frames) == (fmt, subtype, sf.info(src / name).frames), name


def test_a_w64_or_rf64_copy_cut_short_is_denoised_with_a_warning(tmp_path, causal_ckpt, capsys):
    """W64 and RF64 hold their sizes in 64 bits, and libsndfile logs no claim against what the file
    holds for them: cut short, they were denoised for the half they hold without a word, where a
    WAV, AIFF or AU said so. Their headers' claims (a W64's data chunk, an RF64's ds64 chunk) are
    read now (from libsndfile's log, which says them in other words); complete ones, mono and
    stereo, say nothing. An RF64 with an odd-sized chunk and no pad byte after it (libsndfile reads
    it so; a padded one does not open) is told too: a walk of the header's chunks missed it."""
    from audio_tree import cut_short

    src = tmp_path / "in"
    src.mkdir()
    x = noisy_signal(np.random.default_rng(3), 2.0, 16000, 2)  # [T, 2]
    for fmt in ("W64", "RF64"):
        ext = fmt.lower()
        sf.write(src / f"cut.{ext}", x[:, :1], 16000, format=fmt, subtype="PCM_16")
        sf.write(src / f"whole.{ext}", x[:, :1], 16000, format=fmt, subtype="PCM_16")
        sf.write(src / f"whole2.{ext}", x, 16000, format=fmt, subtype="FLOAT")
        (src / f"cut.{ext}").write_bytes(cut_short((src / f"cut.{ext}").read_bytes()))
    rf64 = bytearray((src / "whole.rf64").read_bytes())
    at = rf64.find(b"data")
    odd = b"abcd" + (3).to_bytes(4, "little") + b"xyz"  # 3 bytes, no pad byte
    rf64[at:at] = odd
    rf64[20:28] = (int.from_bytes(rf64[20:28], "little") + len(odd)).to_bytes(8, "little")  # ds64's RIFF size
    (src / "odd.rf64").write_bytes(rf64)
    (src / "oddcut.rf64").write_bytes(cut_short(bytes(rf64)))
    out = tmp_path / "out"
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 0
    err = capsys.readouterr().err
    recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert all(r["status"] == "ok" for r in recs.values()) and len(recs) == 8, recs
    for name in ("cut.w64", "cut.rf64", "oddcut.rf64"):
        warning = recs[name]["warning"]
        assert re.fullmatch(rf"{re.escape(str(src / name))}: its header claims 64,000 bytes of audio but the file "
                            rf"holds 3\d,\d{{3}} \(a copy cut short, or a recording that stopped mid-write\?\): "
                            rf"denoised the 1.00 s it holds", warning), warning
        assert f"  warning: {warning}" in err
        assert sf.info(out / name).frames == sf.info(src / name).frames < 16000
    assert [recs[n]["warning"] for n in ("whole.w64", "whole.rf64", "whole2.w64", "whole2.rf64", "odd.rf64")] == [""] * 5


def test_a_coded_w64_or_an_rf64_without_its_sample_count_cut_short_is_warned(tmp_path, causal_ckpt):
    """Read from libsndfile's log, a W64's audio held was taken as its frames times its Block
    Align, which for IMA ADPCM and GSM 6.10 counts a block of hundreds of frames: cut in half it
    "held" all it claimed. An RF64's claim was its ds64 sample count times Block Align, which a
    writer may leave 0: a claim of nothing. Both were denoised for the half they hold without a
    word; their complete copies say nothing."""
    from audio_tree import cut_short

    src = tmp_path / "in"
    src.mkdir()
    x = noisy_signal(np.random.default_rng(3), 2.0, 16000, 1)
    for name, fmt, subtype in (("ima.w64", "W64", "IMA_ADPCM"), ("gsm.w64", "W64", "GSM610"),
                               ("nocount.rf64", "RF64", "PCM_16")):
        buf = io.BytesIO()
        sf.write(buf, x, 16000, format=fmt, subtype=subtype)
        raw = bytearray(buf.getvalue())
        if fmt == "RF64":
            assert raw[12:16] == b"ds64" and int.from_bytes(raw[36:44], "little") == 32000
            raw[36:44] = bytes(8)  # ds64's sample count, left 0
        (src / f"whole-{name}").write_bytes(raw)
        (src / f"cut-{name}").write_bytes(cut_short(bytes(raw)))
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert s["ok"] == 6, s
    recs = by_input(tmp_path / "out")
    for name in ("ima.w64", "gsm.w64", "nocount.rf64"):
        assert recs[f"whole-{name}"]["warning"] == ""
        warning = recs[f"cut-{name}"]["warning"]
        claim = re.search(r": its header claims ([\d,]+) bytes of audio but the file holds ([\d,]+) \(", warning)
        assert claim is not None, (name, warning)
        claimed, held = (int(n.replace(",", "")) for n in claim.groups())
        assert 0.4 < held / claimed < 0.55, warning


def test_an_ogg_cut_inside_its_header_pages_may_be_cut_short_and_says_so(tmp_path, causal_ckpt):
    """An Ogg cut before its audio pages does not open: libsndfile says "malformed" (or, cut in
    its first page, "unimplemented format"), which sent people looking for a broken encoder. Its
    stream stops before its end page: the error says it may be cut short. A complete Ogg whose
    header is damaged, and a FLAC cut short, say nothing of the kind."""
    from audioae.audio import AudioError, read_audio

    whole = tmp_path / "whole.ogg"
    sf.write(whole, noisy_signal(np.random.default_rng(3), 2.0, 16000, 1), 16000, format="OGG")
    data = whole.read_bytes()
    second = data.find(b"OggS", 4)  # the second page: the Vorbis comment and setup headers
    src = tmp_path / "in"
    src.mkdir()
    (src / "page.ogg").write_bytes(data[:20])  # inside the first page's header
    (src / "headers.ogg").write_bytes(data[: second + 40])  # inside the header pages
    damaged = bytearray(data)
    damaged[second + 30 : second + 60] = bytes(30)  # complete, its end page there: damaged, not cut
    (src / "damaged.ogg").write_bytes(damaged)
    flac = io.BytesIO()
    sf.write(flac, noisy_signal(np.random.default_rng(3), 2.0, 16000, 1), 16000, format="FLAC")
    (src / "cut.flac").write_bytes(flac.getvalue()[:30])
    hint = ("; its Ogg stream stops before its end page: it may be cut short (an interrupted copy or download, "
            "or a recording that stopped mid-write): use the complete file")
    with pytest.raises(AudioError) as info:
        read_audio(src / "headers.ogg")
    assert str(info.value) == f"{src / 'headers.ogg'}: cannot read audio (Supported file format but file is malformed.){hint}"
    with pytest.raises(AudioError, match="malformed.\\); its Ogg stream stops"):
        read_audio((src / "headers.ogg").read_bytes())  # bytes: the server's uploads
    out = tmp_path / "out"
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 1
    recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert {n: r["status"] for n, r in recs.items()} == dict.fromkeys(("cut.flac", "damaged.ogg", "headers.ogg",
                                                                        "page.ogg"), "error")
    assert recs["headers.ogg"]["error"].endswith(f"(Supported file format but file is malformed.){hint}")
    assert recs["page.ogg"]["error"].endswith(hint)
    assert "cut short" not in recs["damaged.ogg"]["error"] and "cut short" not in recs["cut.flac"]["error"]
    assert "cannot read audio" in recs["damaged.ogg"]["error"]


def test_a_44056_hz_recording_is_denoised_at_its_own_rate_and_length(tmp_path, causal_ckpt):
    """44.1 kHz pulled down for NTSC video: its 44 MB resampling filter was refused everywhere,
    for a real-time stream's sake (its 10 ms calls took 82 ms). A file is offline: denoised now,
    on the CPU's streamed blocks and the GPU path's batches (run here on the CPU) alike."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sr = 44056
    sf.write(src / "ntsc.wav", noisy_signal(np.random.default_rng(0), 1.3, sr, 2), sr, subtype="PCM_24")
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress"]) == 0
    info, before = sf.info(out / "ntsc.wav"), sf.info(src / "ntsc.wav")
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (sr, 2, before.frames, "PCM_24")
    streamed = sf.read(out / "ntsc.wav", dtype="float32")[0]
    assert np.abs(streamed).max() > 0
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    res = next(iter(den._run_batched([(FileTask(str(src / "ntsc.wav"), str(tmp_path / "gpu" / "ntsc.wav"),
                                                "ntsc.wav"), None)])))
    assert res.status == "ok", res.error
    batched = sf.read(tmp_path / "gpu" / "ntsc.wav", dtype="float32")[0]
    assert batched.shape == streamed.shape
    np.testing.assert_allclose(batched, streamed, atol=2 ** -20)  # PCM_24: a step either way


def _speechlike(seconds: float, sr: int) -> np.ndarray:
    """A voiced, syllable-modulated tone in light noise: ``[T]`` float32."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(1)
    voice = np.sin(2 * np.pi * 150 * t) + 0.5 * np.sin(2 * np.pi * 450 * t) + 0.25 * np.sin(2 * np.pi * 1350 * t)
    return (0.2 * voice * np.sin(2 * np.pi * 2 * t) ** 2 + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_an_opus_output_keeps_its_bitrate(tmp_path, causal_ckpt):
    """Ogg Opus outputs were encoded at libopus's default whatever the input (a 24 kbps voice note
    came back over twice its size, as this test finds on that default; a 128 kbps file lossier)."""
    src = tmp_path / "in"
    src.mkdir()
    x = _speechlike(4.0, 48000)
    for kbps, level in ((24, 0.928), (128, 0.512)):  # libsndfile's Opus levels for those rates
        with sf.SoundFile(src / f"k{kbps}.opus", "w", 48000, 1, format="OGG", subtype="OPUS",
                          compression_level=level) as f:
            f.write(x)
    assert run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))["ok"] == 2
    for name in ("k24.opus", "k128.opus"):
        size_in, size_out = (src / name).stat().st_size, (tmp_path / "out" / name).stat().st_size
        assert sf.info(tmp_path / "out" / name).subtype == "OPUS"
        assert 0.6 < size_out / size_in < 1.4, (name, size_in, size_out)


def test_a_vorbis_output_keeps_its_bitrate(tmp_path, causal_ckpt):
    """Ogg Vorbis outputs were encoded at libsndfile's default quality whatever the input's bitrate:
    far smaller than a high-quality input, outside this test's bound on that default."""
    src = tmp_path / "in"
    src.mkdir()
    x = _speechlike(4.0, 48000)
    y = _speechlike(4.0, 16000)
    for name, sr, wav, level in (("m48-q0.ogg", 48000, x, 0.0), ("m48-q10.ogg", 48000, x, 1.0),
                                 ("s16-q0.ogg", 16000, np.stack([y, np.roll(y, 100)], 1), 0.0),
                                 ("s16-q10.ogg", 16000, np.stack([y, np.roll(y, 100)], 1), 1.0)):
        sf.write(src / name, wav, sr, format="OGG", subtype="VORBIS", compression_level=level)
    assert run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))["ok"] == 4
    for name in ("m48-q0.ogg", "m48-q10.ogg", "s16-q0.ogg", "s16-q10.ogg"):
        size_in, size_out = (src / name).stat().st_size, (tmp_path / "out" / name).stat().st_size
        assert sf.info(tmp_path / "out" / name).subtype == "VORBIS"
        assert 0.7 < size_out / size_in < 1.4, (name, size_in, size_out)


@pytest.mark.parametrize(("sr", "channels"), [(8000, 1), (22050, 2), (24000, 1), (44100, 2), (88200, 2), (96000, 1),
                                              (48000, 4), (48000, 6)])
@pytest.mark.parametrize("level", [0.0, 1.0])  # the ends; libsndfile's default is 0.6
def test_vorbis_is_encoded_near_the_bitrate_asked(sr, channels, level):
    """encode_audio (the server's answers; the folder tool writes through the same settings) at a
    Vorbis file's own bitrate comes near its size, at rates and channel counts between and beside
    those audio.vorbis_compression was measured at. It was libsndfile's default quality, outside
    this test's bound."""
    from audioae.audio import encode_audio, read_audio

    wav = np.stack([np.roll(_speechlike(3.0, sr), 37 * c) for c in range(channels)])  # [C, T]
    buf = io.BytesIO()
    sf.write(buf, wav.T, sr, format="OGG", subtype="VORBIS", compression_level=level)
    question = buf.getvalue()
    kbps = read_audio(question)[2].kbps
    answer = encode_audio(wav, sr, format="OGG", subtype="VORBIS", kbps=kbps)
    assert 0.75 < len(answer) / len(question) < 1.33, (len(question), len(answer))


def test_a_vorbis_speech_recording_comes_back_at_its_quality(tmp_path, causal_ckpt):
    """The level was chosen from a table of mean bitrates measured on white noise; speech codes
    lower than noise at one quality, so real speech (the shipped example) coded at libsndfile's
    default level 0.6 came back at 0.92 (mono) or 0.8 (stereo): a lossier copy. The nominal
    bitrate in the header names the quality whatever the audio: the output's equals the input's."""
    from audioae.audio import vorbis_nominal_kbps

    x, sr = sf.read(REPO / "audioae/pretrained/examples/voice-effects-5dB-stereo-44k.wav", dtype="float32")
    src = tmp_path / "in"
    src.mkdir()
    for ch, level in ((1, 0.6), (2, 0.6), (2, 0.25)):
        sf.write(src / f"speech-{ch}ch-{level}.ogg", x[:, :ch], sr, format="OGG", subtype="VORBIS",
                 compression_level=level)
    assert run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))["ok"] == 3
    for path in sorted(src.iterdir()):
        nominal = vorbis_nominal_kbps(path)
        assert nominal and vorbis_nominal_kbps(tmp_path / "out" / path.name) == nominal, path.name


def test_tags_cover_art_and_chained_files_are_told_from_the_audio(tmp_path, causal_ckpt):
    """Cover art counted as audio: an MP3 with a cover, or a Vorbis file with a picture comment,
    came out at several times its bitrate. A second ID3 tag (the cover) was walked as
    MPEG frames, and the complete file refused as "files joined end to end", as was one with a tag after
    its audio (a sync word in the cover taken for a frame). A cut MP3 was recorded
    as its header's 2 s. Ogg files joined end to end were denoised as the first alone, unsaid."""
    from audioae.audio import read_audio

    src = tmp_path / "in"
    src.mkdir()
    x = _speechlike(2.0, 16000)[:, None]  # [T, 1]
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="MP3")
    mp3 = buf.getvalue()
    cover = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()  # holds MPEG sync words
    (src / "tagged.mp3").write_bytes(_id3v2(b"\x00" * 100) + _id3v2(cover) + mp3)
    (src / "tail.mp3").write_bytes(mp3 + b"APETAGEX" + bytes(24) + cover + b"APETAGEX" + bytes(24))  # a tag after it
    (src / "cut.mp3").write_bytes(mp3[: len(mp3) // 2])
    with sf.SoundFile(src / "comment.ogg", "w", 16000, 1, format="OGG") as f:
        f.comment = "picture " * 40_000  # a METADATA_BLOCK_PICTURE's size, in the comment header's pages
        f.write(x)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="OGG")
    (src / "joined.ogg").write_bytes(buf.getvalue() * 2)
    out = tmp_path / "out"
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert {n for n, r in recs.items() if r["status"] == "ok"} == {"tagged.mp3", "tail.mp3", "cut.mp3",
                                                                   "comment.ogg"}, recs
    assert re.search(r"joined\.ogg: Ogg streams joined end to end \(a chained Ogg\), of which libsndfile decodes only "
                     r"the first \(2.00 s\)", recs["joined.ogg"]["error"]), recs["joined.ogg"]
    for name in ("tagged.mp3", "tail.mp3"):  # the audio's bitrate, not the cover's
        assert 0.7 < (out / name).stat().st_size / len(mp3) < 1.4
    comment = read_audio(out / "comment.ogg")[2]  # (the comment is copied: its audio's bitrate, then)
    assert comment.kbps is not None and 0.7 < comment.kbps / read_audio(buf.getvalue())[2].kbps < 1.4
    held = len(sf.read(src / "cut.mp3")[0])
    assert abs(recs["cut.mp3"]["duration"] - held / 16000) < 0.1 and held < 20000  # its frames', not the header's 2 s
    assert s["error"] == 1


def test_mp3s_joined_end_to_end_are_refused_not_cut_short(tmp_path, causal_ckpt):
    """libsndfile decodes the length its first header gives: two MP3s joined with cat came out as
    the first one alone, reported denoised (a VBR file without its Xing header was cut short too)."""
    from audioae.audio import AudioError, read_audio

    src = tmp_path / "in"
    src.mkdir()
    x = (0.1 * np.random.default_rng(0).standard_normal((44100, 1))).astype(np.float32)  # 1 s
    sf.write(src / "one.mp3", x, 44100, format="MP3")
    (src / "two.mp3").write_bytes((src / "one.mp3").read_bytes() * 2)
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (s["ok"], s["error"]) == (1, 1)
    said = re.escape(f"{src / 'two.mp3'}: libsndfile decodes 1.00 s of this MPEG file, but its frames hold ") + \
        r"2\.\d\d s \(a VBR file without its Xing header, or files joined end to end\): convert it first"
    assert re.fullmatch(said + ".*", s["errors"][0]["error"]), s["errors"]
    assert not (tmp_path / "out" / "two.mp3").exists()
    with pytest.raises(AudioError, match=r"but its frames hold 2\.\d\d s"):
        read_audio(src / "two.mp3")  # the server's and eval's reader too
    assert read_audio(src / "one.mp3")[0].shape[-1] == 44100


def test_an_empty_file_and_one_libsndfile_cannot_read_are_told_apart(tmp_path, causal_ckpt):
    """Both were "cannot read audio (Format not recognised.)" in the folder tool."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "empty.wav").write_bytes(b"")
    (src / "call.m4a").write_bytes(b"\0\0\0\x20ftypM4A ")  # named directly: the folder search passes it over
    s = run_denoise([src / "empty.wav", src / "call.m4a"], tmp_path / "out",
                    DenoiseOptions(model=str(causal_ckpt), progress=False))
    why = {Path(e["input"]).name: e["error"] for e in s["errors"]}
    assert why["empty.wav"] == f"{src / 'empty.wav'}: cannot read audio (empty file (0 bytes))"
    assert why["call.m4a"] == (f"{src / 'call.m4a'}: cannot read audio (libsndfile does not read .m4a files: "
                               f"convert it, e.g. ffmpeg -i in.m4a out.flac)")


def test_a_script_without_a_main_guard_is_told_why_its_workers_stop(tmp_path, causal_ckpt):
    """Spawned workers import the script that started them: an unguarded run_denoise(workers=2)
    ran again in each, met the job's own folder lock there, and every file failed with a bare
    "no worker process could start (ProcessDied: its process exited with status 1)"."""
    src = tmp_path / "in"
    write_tree(src, TREE[:3])  # more files than one: a pool of workers
    script = tmp_path / "job.py"
    script.write_text(
        "import json\n"
        "from audioae.batch import DenoiseOptions, run_denoise\n"
        f"s = run_denoise([{str(src)!r}], {str(tmp_path / 'out')!r}, "
        f"DenoiseOptions(model={str(causal_ckpt)!r}, workers=2, progress=False))\n"
        "print(json.dumps(s['errors']))\n")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "RuntimeError: run_denoise was called while a process it spawned was starting" in run.stderr, \
        run.stderr[-2000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    assert errors and all('from a script, call run_denoise under if __name__ == "__main__":' in e["error"]
                          for e in errors), errors


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_an_input_cut_short_while_it_is_denoised_fails_and_leaves_no_output(tmp_path, causal_ckpt, bidir_ckpt, kind):
    """A file cut short (a copy started over it, a recorder still writing) while it was read gave an
    output of the part read, reported "ok" with the full duration its header gave when opened. It
    fails now, says why, and leaves nothing under its output's name; the next run tries it again."""
    from audioae.batch import process

    src = tmp_path / "in" / "take.wav"
    src.parent.mkdir()
    sf.write(src, noisy_signal(np.random.default_rng(0), 2.0, 16000, 1), 16000, subtype="PCM_16")
    task = FileTask(str(src), str(tmp_path / "out" / "take.wav"), "take.wav")
    model = load_checkpoint(causal_ckpt if kind == "causal" else bidir_ckpt)
    den = FileDenoiser(model, block_seconds=0.25)
    before = process.source_state(task.input)
    with process._open(task, None) as f:  # opened, header read: then the file is cut to half
        held = process._check_header(task, f, None)
        os.truncate(src, src.stat().st_size // 2)
        r = den._run_open(task, f, held, time.perf_counter(), before)
    assert r.status == "error", r
    assert "went from 64,044 to 32,022 bytes while it was being denoised" in r.error
    assert not Path(task.output).exists() and not parts(tmp_path / "out")
    # as it is now, it is denoised whole, and its result says which input it was made from
    r = den.run(task)
    assert r.status == "ok" and sf.info(task.output).frames == sf.info(src).frames == 16000 - 11
    assert (r.input_size, r.input_mtime_ns) == (src.stat().st_size, src.stat().st_mtime_ns)


def test_an_input_rewritten_in_place_while_it_is_denoised_fails(tmp_path, causal_ckpt):
    """Same size, other samples (a take saved again over the file): the output would mix the two."""
    from audioae.batch import process

    src = tmp_path / "take.wav"
    sf.write(src, noisy_signal(np.random.default_rng(0), 1.0, 16000, 1), 16000)
    at = 1_700_000_000 * 10**9 + 123_456_789  # a time to the nanosecond, as a local disk keeps it
    os.utime(src, ns=(at, at))
    task = FileTask(str(src), str(tmp_path / "out" / "take.wav"), "take.wav")
    den = FileDenoiser(load_checkpoint(causal_ckpt), block_seconds=0.25)
    before = process.source_state(task.input)
    with process._open(task, None) as f:
        held = process._check_header(task, f, None)
        sf.write(src, noisy_signal(np.random.default_rng(1), 1.0, 16000, 1), 16000)  # another take over it
        os.utime(src, ns=(at + 10**6, at + 10**6))  # 1 ms on: two writes within a clock tick can share a time
        assert src.stat().st_size == before.size
        r = den._run_open(task, f, held, time.perf_counter(), before)
    assert r.status == "error" and "was modified while it was being denoised" in r.error
    assert not Path(task.output).exists()


def test_a_network_mounts_whole_second_time_of_the_same_file_is_no_change(tmp_path):
    """sshfs (SFTP keeps whole seconds), and cifs and NFS mounts of servers that keep them, can
    answer one stat from the client's cache, to the nanosecond, and the next from the server: the
    same file, which would have failed as modified. The same size within 2 s, one of the two
    times whole seconds, is no change; a size, or finer times, that differ are."""
    from audioae.audio import AudioError
    from audioae.batch import process

    src = tmp_path / "take.wav"
    sf.write(src, np.zeros(1600, np.float32), 16000)
    at = 1_700_000_000 * 10**9
    os.utime(src, ns=(at + 700_000_000, at + 700_000_000))
    before = process.source_state(str(src))
    for then in (at, at + 10**9):  # the server's second, cut or rounded up (FAT's 2 s)
        os.utime(src, ns=(then, then))
        process.check_unchanged(str(src), before)
    for then in (at + 3 * 10**9, at + 700_000_001):
        os.utime(src, ns=(then, then))
        with pytest.raises(AudioError, match="was modified while it was being denoised"):
            process.check_unchanged(str(src), before)
    os.utime(src, ns=(at, at))
    with open(src, "ab") as fh:
        fh.write(b"\0\0")
    os.utime(src, ns=(at, at))
    with pytest.raises(AudioError, match="went from 3,244 to 3,246 bytes while it was being denoised"):
        process.check_unchanged(str(src), before)


def test_a_rerun_takes_a_network_mounts_whole_second_time_of_the_same_input_for_no_change(tmp_path):
    """A rerun compared the manifest's size and mtime with the input's exactly, where a file's own
    run allows a mount's whole-second time (sshfs, cifs, NFS): the same file read through the
    server's stat was warned about as changed since its output was made."""
    from audioae.batch.plan import split_done

    src, out = tmp_path / "take.wav", tmp_path / "out.wav"
    sf.write(src, np.zeros(1600, np.float32), 16000)
    sf.write(out, np.zeros(1600, np.float32), 16000)
    at = 1_700_000_000 * 10**9
    os.utime(src, ns=(at, at))  # as the server keeps it: whole seconds
    task = FileTask(str(src), str(out), "take.wav")
    size = src.stat().st_size
    for recorded, changed in (((size, at + 700_000_000), []), ((size, at + 3 * 10**9), [task]),
                              ((size + 2, at), [task])):
        assert split_done([task], recorded={str(src): recorded}) == ([], [task], changed)


def test_an_input_changed_while_the_gpu_path_reads_it_fails_and_one_read_whole_names_its_input(tmp_path, causal_ckpt):
    """The batched (GPU) path, on CPU: a short file is read whole before its batch runs. One cut
    short as it was read fails there; one read whole carries its size and mtime as it was opened
    to its result, which the manifest records as the input its output was made from."""
    from audioae.audio import AudioError
    from audioae.batch import process

    src = tmp_path / "take.wav"
    sf.write(src, noisy_signal(np.random.default_rng(0), 1.0, 16000, 1), 16000, subtype="PCM_16")
    task = FileTask(str(src), str(tmp_path / "out" / "take.wav"), "take.wav")
    den = FileDenoiser(load_checkpoint(causal_ckpt))
    before = process.source_state(task.input)
    with process._open(task, None) as f:
        held = process._check_header(task, f, None)
        os.truncate(src, before.size // 2)
        with pytest.raises(AudioError, match="went from 32,044 to 16,022 bytes while it was being denoised"):
            den._decode(task, None, f, time.perf_counter(), held, before)
    (r,) = den._run_batched([(task, None)])
    st = src.stat()
    assert r.status == "ok" and (r.input_size, r.input_mtime_ns) == (st.st_size, st.st_mtime_ns), r
