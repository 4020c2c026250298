"""The folder tool on a messy folder: linked folders, a folder once used as -o, inputs named as the
tool's own files, empty recordings, names that are no UTF-8, and the errors people meet there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_tree import outputs

from audioae.batch import DenoiseOptions, read_manifest, run_denoise
from audioae.batch.job import own_name_clash
from audioae.cli import main


def _wav(path: Path, seconds: float = 0.5, sr: int = 16000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32)
    sf.write(path, x, sr, format="WAV", subtype="PCM_16")
    return path


def _opts(ckpt: Path, **kw) -> DenoiseOptions:
    return DenoiseOptions(model=str(ckpt), progress=False, **kw)


def _cli(ckpt: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audioae.cli", *args, *(["--model", str(ckpt), "--no-progress"]
                                                                         if args[0] == "denoise" else [])],
                          capture_output=True, text=True, env=env)


def test_a_real_folder_keeps_its_name_and_a_link_to_it_is_not_followed(tmp_path, causal_ckpt):
    """Was: ``a_latest -> z_2024`` was walked first (name order), the output went to
    ``c/a_latest/take1.wav``, z_2024 was skipped as "a link loop?", and once the link moved on to
    z_2025 that folder was never denoised (exit 0)."""
    r, c = tmp_path / "r", tmp_path / "c"
    _wav(r / "z_2024" / "take1.wav")
    (r / "a_latest").symlink_to("z_2024", target_is_directory=True)
    s = run_denoise([r], c, _opts(causal_ckpt))
    assert (s["files"], s["ok"]) == (1, 1)
    assert outputs(c) == {"z_2024/take1.wav"}
    _wav(r / "z_2025" / "take1.wav", seed=1)
    (r / "a_latest").unlink()
    (r / "a_latest").symlink_to("z_2025", target_is_directory=True)
    s = run_denoise([r], c, _opts(causal_ckpt))
    assert (s["files"], s["ok"], s["skipped"], s["error"]) == (2, 1, 1, 0)
    assert outputs(c) == {"z_2024/take1.wav", "z_2025/take1.wav"}
    # a link into another input folder is not followed either: its files are that input's
    other = tmp_path / "other"
    _wav(other / "x.wav")
    (r / "b_link").symlink_to(other, target_is_directory=True)
    s = run_denoise([r, other], tmp_path / "c2", _opts(causal_ckpt))
    assert outputs(tmp_path / "c2") == {"z_2024/take1.wav", "z_2025/take1.wav", "x.wav"}
    # a link to a folder searched nowhere else is followed, under the link's name
    elsewhere = tmp_path / "elsewhere"
    _wav(elsewhere / "y.wav")
    (r / "linked").symlink_to(elsewhere, target_is_directory=True)
    s = run_denoise([r], tmp_path / "c3", _opts(causal_ckpt))
    assert "linked/y.wav" in outputs(tmp_path / "c3")


def test_a_folder_once_used_as_output_keeps_its_recordings(tmp_path, causal_ckpt):
    """Was: after ``-o r/day1``, every later run skipped all of day1 ("holds an earlier run's
    outputs"), so the recording b.wav there was never denoised (exit 0)."""
    r = tmp_path / "r"
    _wav(r / "a.wav")
    _wav(r / "day1" / "b.wav", seed=1)
    s = run_denoise([r], r / "day1", _opts(causal_ckpt))
    assert (s["files"], s["ok"]) == (1, 1)  # a.wav into day1; b.wav is in the output folder
    s = run_denoise([r], tmp_path / "clean", _opts(causal_ckpt))
    assert (s["files"], s["ok"], s["error"]) == (2, 2, 0)
    assert outputs(tmp_path / "clean") == {"a.wav", "day1/b.wav"}  # not day1/a.wav: an earlier run's output
    # a manifest that lists nothing there (a folder moved since): the whole folder is still skipped
    moved = r / "moved"
    shutil.move(r / "day1", moved)
    s = run_denoise([r], tmp_path / "clean2", _opts(causal_ckpt))
    assert outputs(tmp_path / "clean2") == {"a.wav"}


@pytest.mark.parametrize("name", ["audioae-manifest.jsonl", ".audioae.lock", ".audioae-overwrite.json",
                                  ".audioae-inflight", ".a.wav.part", ".b.wav.x1y2z3w4.part"])
def test_own_name_clash_names_the_tools_files(name):
    assert own_name_clash(name)
    assert own_name_clash(f"sub/{name}")
    assert not own_name_clash("a.wav") and not own_name_clash("audioae-manifest.wav")


def test_inputs_named_as_the_tools_own_files_fail_and_leave_those_files_alone(tmp_path, causal_ckpt):
    """Was: an input named audioae-manifest.jsonl overwrote the manifest (every later run: "'utf-8'
    codec can't decode byte", exit 2), .audioae-overwrite.json's output was deleted at the end of
    the job, .audioae.lock was "a file no run made", and .a.wav.part's output was deleted by the
    rerun as a leftover while the summary said "2 skipped (already done)"."""
    src, out = tmp_path / "in", tmp_path / "o"
    names = ["audioae-manifest.jsonl", ".audioae.lock", ".audioae-overwrite.json", ".a.wav.part"]
    for i, name in enumerate(["a.wav", *names]):
        _wav(src / name, seed=i)
    args = ["denoise", *(str(src / n) for n in ["a.wav", *names]), "-o", str(out)]
    for run in range(2):
        proc = _cli(causal_ckpt, *args)
        assert proc.returncode == 1, proc.stderr
        done = "1 denoised, 0 skipped" if run == 0 else "0 denoised, 1 skipped"
        assert f"5 files: {done} (already done), 4 failed" in proc.stdout
        for n in names:
            assert f"{src / n}: not denoised, its output {n} would clash with a file the tool keeps" in proc.stderr
        assert proc.stderr.count("rename the input") == 4
        recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}  # still JSON lines
        assert recs["a.wav"]["status"] == ("ok" if run == 0 else "skipped")
        assert all(recs[n]["status"] == "error" for n in names)
        assert sorted(p.name for p in out.iterdir()) == ["a.wav", "audioae-manifest.jsonl"]


def test_an_empty_recording_becomes_an_empty_output(tmp_path, causal_ckpt):
    """Was: a valid WAV of 0 samples failed on every run ("the audio is empty"): the job never finished clean."""
    src, out = tmp_path / "in", tmp_path / "out"
    _wav(src / "a.wav")
    src.joinpath("sub").mkdir()
    sf.write(src / "sub" / "empty.wav", np.zeros((0, 2), np.float32), 22050, subtype="PCM_24")
    s = run_denoise([src], out, _opts(causal_ckpt))
    assert (s["files"], s["ok"], s["error"]) == (2, 2, 0)
    info = sf.info(out / "sub" / "empty.wav")
    assert (info.frames, info.samplerate, info.channels, info.subtype) == (0, 22050, 2, "PCM_24")
    s = run_denoise([src], out, _opts(causal_ckpt))
    assert (s["files"], s["skipped"], s["error"]) == (2, 2, 0)


def test_settings_that_print_alike_are_told_apart(tmp_path, causal_ckpt, capsys):
    """Was: "made ... at strength 0.3; this run asks for ... at strength 0.3"."""
    src, out = tmp_path / "in", tmp_path / "out"
    _wav(src / "a.wav")
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress",
                 "--strength", "0.3"]) == 0
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress",
                 "--strength", "0.30000000000000004"]) == 2
    err = capsys.readouterr().err
    assert "at strength 0.3 (e.g. a.wav); this run asks for" in err
    assert "at strength 0.30000000000000004. A rerun" in err
    assert main(["denoise", str(src), "-o", str(out), "--model", str(causal_ckpt), "--no-progress",
                 "--strength", "0.5"]) == 2
    assert "at strength 0.3 (e.g. a.wav); this run asks for" in capsys.readouterr().err  # short form otherwise


def test_eval_escapes_names_that_are_not_utf8(tmp_path):
    """Was: "audioae eval: error: 'utf-8' codec can't encode character '\\udce9'", exit 2, no table."""
    clean, enhanced = tmp_path / "c", tmp_path / "o"
    clean.mkdir()
    enhanced.mkdir()
    shutil.copy(_wav(tmp_path / "x.wav"), os.fsencode(clean) + b"/caf\xe9.wav")
    shutil.copy(_wav(tmp_path / "y.wav", seed=1), os.fsencode(enhanced) + b"/caf\xe9.wav")
    report = tmp_path / "r.json"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "audioae.cli", "eval", "--clean", str(clean), "--enhanced",
                           str(enhanced), "--json", str(report), "--no-progress"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "caf\\udce9.wav" in proc.stdout
    text = report.read_text(encoding="utf-8")
    text.encode("utf-8")  # no lone surrogate: valid Unicode for strict JSON readers
    assert json.loads(text)["files"][0]["file"] == "caf\\udce9.wav"


def test_errors_name_what_is_wrong(tmp_path, causal_ckpt, capsys):
    src = tmp_path / "in"
    _wav(src / "a.wav")
    (tmp_path / "dl").symlink_to(tmp_path / "nowhere")
    assert main(["denoise", str(src), "-o", str(tmp_path / "dl"), "--model", str(causal_ckpt)]) == 2
    assert (f"cannot make the output folder {tmp_path / 'dl'}: {tmp_path / 'dl'} is a link to {tmp_path / 'nowhere'}, "
            f"which does not exist") in capsys.readouterr().err
    (tmp_path / "self.wav").symlink_to(tmp_path / "self.wav")
    assert main(["denoise", str(tmp_path / "self.wav"), "-o", str(tmp_path / "o"), "--model", str(causal_ckpt)]) == 2
    assert f"{tmp_path / 'self.wav'}: a symbolic link loop" in capsys.readouterr().err
    # a dangling link named directly says what the same link found in a folder says
    (src / "dang.wav").symlink_to(tmp_path / "gone.wav")
    assert main(["denoise", str(src / "dang.wav"), "-o", str(tmp_path / "o"), "--model", str(causal_ckpt)]) == 2
    said = f"{src / 'dang.wav'}: a link to {tmp_path / 'gone.wav'}, which does not exist"
    assert said in capsys.readouterr().err
    assert main(["denoise", str(src), "-o", str(tmp_path / "o"), "--model", str(causal_ckpt), "--no-progress"]) == 1
    assert f"failed: {said}" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_says_so(tmp_path, causal_ckpt, unprivileged):
    """Was a bare "[Errno 13] Permission denied: '.../ro/new'"."""
    src, ro = tmp_path / "in", tmp_path / "ro"
    _wav(src / "a.wav")
    ro.mkdir()
    ro.chmod(0o555)
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o",
                           str(ro / "new"), "--model", str(causal_ckpt), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert (f"audioae denoise: error: cannot create the output folder {ro / 'new'}: permission denied (this user may "
            f"not write into {ro})") in proc.stderr
    assert "Errno" not in proc.stderr


def test_files_left_out_are_counted_and_fail_the_job(tmp_path, causal_ckpt, unprivileged):
    """Was: a folder that cannot be listed, a named pipe, an input changed since its output was made:
    warnings alone, "1 file: 1 denoised", exit 0."""
    src, out = tmp_path / "in", tmp_path / "out"
    _wav(src / "a.wav")
    _wav(src / "sealed" / "x.wav")
    (src / "sealed").chmod(0)
    cmd = [*unprivileged, sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out), "--model",
           str(causal_ckpt), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "1 file: 1 denoised, 0 skipped (already done), 0 failed, 1 left out;" in proc.stdout
    assert f"left out: {src / 'sealed'}: cannot list this folder (Permission denied)" in proc.stderr
    (src / "sealed").chmod(0o755)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # all there now: a clean finish
    _wav(src / "a.wav", seconds=0.7, seed=5)  # a new recording under the old name
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "0 failed, 1 left out;" in proc.stdout
    assert f"left out: {src / 'a.wav'}: changed after its output a.wav was made" in proc.stderr
    os.mkfifo(src / "pipe.wav")
    s = run_denoise([src], out, _opts(causal_ckpt, overwrite=True))
    assert s["left_out"] == [{"path": str(src / "pipe.wav"), "why": "a named pipe, not a file"}]
