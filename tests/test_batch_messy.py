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
import test_output_paths
from audio_tree import outputs

from audioae.batch import DenoiseOptions, read_manifest, run_denoise
from audioae.batch.job import _refuse_own_names, own_name_clash
from audioae.batch.plan import FileTask
from audioae.cli import main

case_blind_disk = test_output_paths.case_blind_disk  # a fixture: a FAT card, whose names ignore case, mounted with FUSE


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


def test_a_link_to_a_folder_holding_another_input_skips_that_input(tmp_path, causal_ckpt):
    """Was: inputs ``A`` and ``P/B`` with ``A/l_parent -> P`` were refused: "P/B/b.wav is among the
    inputs twice ... the inputs overlap". Inputs that really overlap are still refused."""
    a, p = tmp_path / "A", tmp_path / "P"
    _wav(a / "a.wav")
    _wav(p / "p.wav", seed=1)
    _wav(p / "B" / "b.wav", seed=2)
    (a / "l_parent").symlink_to(p, target_is_directory=True)
    s = run_denoise([a, p / "B"], tmp_path / "out", _opts(causal_ckpt))
    assert (s["files"], s["ok"], s["error"]) == (3, 3, 0)
    assert outputs(tmp_path / "out") == {"a.wav", "l_parent/p.wav", "b.wav"}
    with pytest.raises(ValueError, match="the inputs overlap"):
        run_denoise([p, p / "B"], tmp_path / "out2", _opts(causal_ckpt))


def test_a_folder_reached_through_two_links_is_no_loop_and_an_unlisted_one_counts_once(tmp_path, causal_ckpt,
                                                                                       caplog, monkeypatch):
    """Was: ``X/deep`` reached through two links was warned of as "a link loop?", and a folder that
    cannot be listed, with a link to it, was left out twice."""
    r, x = tmp_path / "r", tmp_path / "x"
    _wav(r / "a.wav")
    _wav(x / "deep" / "d.wav")
    # the link to x/deep is followed first: x's own deep/ is then reached a second time (the old
    # walk warned "a link loop?" there)
    (r / "l1").symlink_to(x / "deep", target_is_directory=True)
    (r / "l2").symlink_to(x, target_is_directory=True)
    s = run_denoise([r], tmp_path / "out", _opts(causal_ckpt))
    assert outputs(tmp_path / "out") == {"a.wav", "l1/d.wav"}
    assert "link loop" not in caplog.text
    locked = r / "locked"
    _wav(locked / "c.wav")
    (r / "to_locked").symlink_to(locked, target_is_directory=True)
    scandir = os.scandir

    def refusing(path):  # as a folder this user may not read (root reads any)
        if os.path.realpath(path) == str(locked.resolve()):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr("audioae.audio.walk.os.scandir", refusing)  # where walk_audio looks it up
    s = run_denoise([r], tmp_path / "out3", _opts(causal_ckpt))
    assert [e["path"] for e in s["left_out"]] == [str(locked)]


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


def test_a_folder_once_used_as_output_leaves_out_a_marked_output_and_is_skipped_while_written(tmp_path, causal_ckpt):
    """Was: an output renamed into place just before a kill (its in-flight marker there, no
    manifest line yet) was denoised again as a recording, and so were the outputs a running job
    was writing into the folder."""
    from audioae.batch.job import LOCK_NAME
    from audioae.batch.journal import JOURNAL_NAME, Journal
    from audioae.batch.manifest import MadeWith
    from audioae.fileio import hold_folder

    r, day1 = tmp_path / "r", tmp_path / "r" / "day1"
    _wav(r / "a.wav")
    _wav(r / "c.wav", seed=2)
    s = run_denoise([r], day1, _opts(causal_ckpt))
    assert (s["files"], s["ok"]) == (2, 2)
    # as a kill left it: day1/a.wav renamed into place, its marker there, its manifest line not written
    made = day1 / "a.wav"
    made.unlink()
    Journal(day1 / JOURNAL_NAME, MadeWith(str(causal_ckpt), "0" * 64, 1.0)).started(
        str((r / "a.wav").resolve()), output=str(made.resolve()))
    _wav(made, seed=5)
    manifest = day1 / "audioae-manifest.jsonl"  # c.wav's line kept, a.wav's not yet written
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines() if "c.wav" in line))
    _wav(day1 / "b.wav", seed=1)  # a recording put there since
    s = run_denoise([r], tmp_path / "clean", _opts(causal_ckpt))
    assert outputs(tmp_path / "clean") == {"a.wav", "c.wav", "day1/b.wav"}  # not day1/a.wav: a finished output
    with hold_folder(day1, LOCK_NAME, "another audioae denoise job"):  # a job writing into day1 now
        s = run_denoise([r], tmp_path / "clean2", _opts(causal_ckpt))
    assert outputs(tmp_path / "clean2") == {"a.wav", "c.wav"}


def test_a_folder_whose_job_was_killed_on_its_first_file_is_searched(tmp_path, causal_ckpt):
    """A folder holding only an in-flight folder (a job writing into it killed before any output
    was finished: no manifest, no finished marker) holds recordings, not outputs: it was skipped
    whole, "its manifest names none of them", with no manifest there."""
    from audioae.batch.journal import JOURNAL_NAME

    r = tmp_path / "r"
    _wav(r / "sub" / "a.wav")
    (r / "sub" / JOURNAL_NAME).mkdir()
    run_denoise([r], tmp_path / "clean", _opts(causal_ckpt))
    assert outputs(tmp_path / "clean") == {"sub/a.wav"}


@pytest.mark.parametrize("name", ["audioae-manifest.jsonl", ".audioae.lock", ".audioae-overwrite.json",
                                  ".audioae-inflight", ".a.wav.part", ".b.wav.x1y2z3w4.part"])
def test_own_name_clash_names_the_tools_files(name):
    assert own_name_clash(name)
    assert own_name_clash(f"sub/{name}")
    assert not own_name_clash("a.wav") and not own_name_clash("audioae-manifest.wav")
    # The job's own check (_refuse_own_names) refuses the same outputs, naming that clash, and keeps the rest.
    rels = [name, f"sub/{name}", "a.wav", "audioae-manifest.wav"]
    kept, refused = _refuse_own_names([FileTask(f"/in/{rel}", f"/out/{rel}", rel) for rel in rels])
    assert [t.rel for t in kept] == ["a.wav", "audioae-manifest.wav"]
    assert [(r.input, r.output, r.status) for r in refused] == [(f"/in/{rel}", f"/out/{rel}", "error")
                                                                for rel in rels[:2]]
    for rel, r in zip(rels[:2], refused, strict=True):
        assert f"would clash with a file the tool keeps in the output folder: {own_name_clash(rel)}; " in r.error


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


def test_a_folder_named_as_the_tools_own_file_is_the_one_to_rename(tmp_path, causal_ckpt):
    """Was: in/audioae-manifest.jsonl/x.wav (a folder search) said "rename the input (e.g. to a name
    ending in .wav)", of a file already so named."""
    src = tmp_path / "in"
    _wav(src / "a.wav")
    _wav(src / "audioae-manifest.jsonl" / "x.wav", seed=1)
    s = run_denoise([src], tmp_path / "o", _opts(causal_ckpt))
    assert (s["files"], s["ok"], s["error"]) == (2, 1, 1)
    error = s["errors"][0]["error"]
    assert "clash with a file the tool keeps in the output folder: the manifest (audioae-manifest.jsonl)" in error
    assert error.endswith(f"; rename the folder {(src / 'audioae-manifest.jsonl').resolve()} and run again")


def test_a_link_named_as_the_tools_own_file_is_named_as_found_to_be_renamed(tmp_path, causal_ckpt, monkeypatch):
    """Was: a link in/audioae-manifest.jsonl -> ../takes made the error say "rename the folder
    audioae-manifest.jsonl" (relative to the input folder, a name the user's shell does not
    have), and a link to a folder of that name named its target, whose renaming left the link
    dangling and its files out of the next run without a word."""
    src = tmp_path / "in"
    _wav(src / "a.wav")
    _wav(tmp_path / "takes" / "x.wav", seed=1)
    _wav(tmp_path / "elsewhere" / "audioae-manifest.jsonl" / "deep" / "y.wav", seed=2)
    (src / "audioae-manifest.jsonl").symlink_to(tmp_path / "takes", target_is_directory=True)
    (src / "sub").mkdir()
    (src / "sub" / "audioae-manifest.jsonl").symlink_to(tmp_path / "elsewhere" / "audioae-manifest.jsonl",
                                                        target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for given in ("in", str(src)):  # relative to the current folder, or not: named as found, from there
        s = run_denoise([given], tmp_path / f"o-{len(given)}", _opts(causal_ckpt))
        assert (s["files"], s["ok"], s["error"]) == (3, 1, 2)
        fixes = sorted(e["error"].rpartition("; ")[2] for e in s["errors"])
        assert fixes == [f"rename the folder {src / 'audioae-manifest.jsonl'} and run again",
                         f"rename the folder {src / 'sub' / 'audioae-manifest.jsonl'} and run again"], fixes


def test_a_second_name_of_a_file_is_denoised_once_and_reported_as_such(tmp_path, causal_ckpt):
    """Was: two names of one file with one output (a link to it, a hard link; named, or one named
    and one found) gave one output, and the second name was neither counted nor named: "1 file:
    1 denoised" for two names given, or, for a hard link, the job refused "two inputs map to the
    same output"."""
    src, out = tmp_path / "in", tmp_path / "o"
    first = _wav(src / "x.wav")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "x.wav").symlink_to(first)
    (tmp_path / "hard").mkdir()
    os.link(first, tmp_path / "hard" / "x.wav")
    args = ["denoise", str(src), str(tmp_path / "linked" / "x.wav"), str(tmp_path / "hard" / "x.wav"), "-o", str(out)]
    for run, done in enumerate(("1 denoised, 0 skipped", "0 denoised, 1 skipped")):
        proc = _cli(causal_ckpt, *args)
        assert proc.returncode == 0, proc.stderr
        assert (f"3 files: {done} (already done), 0 failed, 2 second names of a file (done once, under its "
                f"first)") in proc.stdout
        came = (f"denoised once to {out / 'x.wav'}", f"skipped once, its output {out / 'x.wav'} was there already")
        for name in ("linked", "hard"):
            assert f"  second name: {tmp_path / name / 'x.wav'}: the same file as {first}, {came[run]}" in proc.stderr
        recs = {r["input"]: r for r in read_manifest(out / "audioae-manifest.jsonl")}
        assert recs[str(first)]["status"] == ("ok", "skipped")[run]
        for name in ("linked", "hard"):
            assert recs[str(tmp_path / name / "x.wav")]["status"] == "duplicate"
            assert recs[str(tmp_path / name / "x.wav")]["output"] == str(out / "x.wav")
        assert sorted(p.name for p in out.iterdir()) == ["audioae-manifest.jsonl", "x.wav"]
    s = run_denoise([tmp_path / "hard" / "x.wav", src], tmp_path / "o2", _opts(causal_ckpt))  # the hard link first
    assert (s["files"], s["ok"], s["duplicate"]) == (2, 1, 1)
    assert s["duplicates"] == [{"input": str(first), "of": str(tmp_path / "hard" / "x.wav"),
                                "output": str(tmp_path / "o2" / "x.wav"), "status": "ok"}]


def _second_name(kind: str, first: Path, name: Path) -> Path:
    name.parent.mkdir(parents=True, exist_ok=True)
    if kind == "hard":
        os.link(first, name)
    else:
        name.symlink_to(first)
    return name


@pytest.mark.parametrize("kind", ["hard", "symlink"])
def test_the_record_of_an_output_follows_its_file_whichever_name_comes_first(tmp_path, causal_ckpt, kind):
    """Which of two names of a file is denoised is the one planned first, so it follows the order
    of the inputs. Was: a rerun with the names swapped found no record under the new first name
    (a symlink's was carried over one way only), recorded it "skipped" without what made its
    output, and recorded the old first name's "ok" line over as a second name: the run after, with
    another model, skipped the output as "already done" and exited 0, the first model's output kept."""
    import torch

    from audioae.checkpoint import save_checkpoint
    from audioae.models import build_model

    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), other)
    a, out = tmp_path / "a", tmp_path / "o"
    first = _wav(a / "x.wav")
    b = _second_name(kind, first, tmp_path / "b" / "x.wav").parent
    s = run_denoise([a, b], out, _opts(causal_ckpt))
    assert (s["ok"], s["duplicate"]) == (1, 1)
    (line,) = [r for r in read_manifest(out / "audioae-manifest.jsonl") if r["input"] == str(first)]
    made = {k: line[k] for k in ("sha256", "input_size", "duration")}
    assert all(made.values()), made
    for inputs in ([b, a], [a, b], [b, a]):
        s = run_denoise(inputs, out, _opts(causal_ckpt))
        assert (s["skipped"], s["duplicate"], s["left_out"]) == (1, 1, []), s
        recs = {r["input"]: r for r in read_manifest(out / "audioae-manifest.jsonl")}
        assert {k: recs[str(inputs[0] / "x.wav")][k] for k in made} == made, recs  # under the name done
        assert recs[str(inputs[1] / "x.wav")]["status"] == "duplicate"
    for inputs in ([a, b], [b, a]):
        with pytest.raises(ValueError, match="made with other settings"):
            run_denoise(inputs, out, _opts(other))


@pytest.mark.parametrize("how", ["folder-renamed", "first-hard-link-deleted"])
def test_the_record_follows_its_file_when_the_old_name_is_gone(tmp_path, causal_ckpt, how):
    """Where the old name no longer exists, which file it named cannot be asked. Was: the record
    stayed under the gone name, the rerun recorded the output "skipped" with nothing of what made
    it, and the run after, with another model, skipped it as "already done" and exited 0."""
    import torch

    from audioae.checkpoint import save_checkpoint
    from audioae.models import build_model

    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), other)
    a, out = tmp_path / "a", tmp_path / "o"
    first = _wav(a / "x.wav")
    if how == "folder-renamed":
        s = run_denoise([a], out, _opts(causal_ckpt))
        a.rename(tmp_path / "a2")
        inputs = [tmp_path / "a2"]
    else:
        b = _second_name("hard", first, tmp_path / "b" / "x.wav").parent
        s = run_denoise([a, b], out, _opts(causal_ckpt))
        first.unlink()
        inputs = [b]
    assert s["ok"] == 1
    made = {k: read_manifest(out / "audioae-manifest.jsonl")[0][k] for k in ("sha256", "input_size", "duration")}
    s = run_denoise(inputs, out, _opts(causal_ckpt))
    assert (s["skipped"], s["left_out"]) == (1, []), s
    recs = {r["input"]: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert {k: recs[str(inputs[0] / "x.wav")][k] for k in made} == made, recs
    with pytest.raises(ValueError, match="made with other settings"):
        run_denoise(inputs, out, _opts(other))


@pytest.mark.parametrize("moved", ["project", "output", "input", "project-after-a-broken-rerun"])
def test_the_records_follow_a_moved_project(tmp_path, causal_ckpt, moved):
    """A project moved (``mv proj proj2``, a card mounted elsewhere) with its input and output
    folders. Was: its manifest's lines named the old paths, so the rerun with another --strength
    was not refused ("3 files: 0 denoised, 3 skipped", exit 0, the old outputs kept), its lines
    said nothing of what made the outputs ("model": "", "strength": null: no later run was
    checked), the old lines stayed beside them, and a stopped --overwrite was not gone on with.
    Only the input folder or only the output folder moved was refused already."""
    from audioae.batch.overwrite import OVERWRITE_NAME

    proj = tmp_path / "proj"
    for rel in ("a.wav", "sub/b.wav", "sub/deep/c.wav"):
        _wav(proj / "raw" / rel, seed=len(rel))
    s = run_denoise([proj / "raw"], proj / "clean", _opts(causal_ckpt))
    assert s["ok"] == 3
    made = {Path(r["output"]).relative_to(proj / "clean").as_posix(): {k: r[k] for k in ("sha256", "strength", "input_size")}
            for r in read_manifest(proj / "clean" / "audioae-manifest.jsonl")}
    if moved == "project-after-a-broken-rerun":  # the lines a rerun wrote before 2026-12-08, old ones kept
        lines = read_manifest(proj / "clean" / "audioae-manifest.jsonl")
        broken = [{**r, "input": r["input"].replace("/proj/", "/proj2/"), "output": r["output"].replace("/proj/", "/proj2/"),
                   "status": "skipped", "model": "", "sha256": "", "strength": None} for r in lines]
        (proj / "clean" / "audioae-manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines + broken))
    if moved == "input":
        src, out = (proj / "raw").rename(tmp_path / "raw2"), proj / "clean"
    elif moved == "output":
        src, out = proj / "raw", (proj / "clean").rename(tmp_path / "clean2")
    else:
        proj = proj.rename(tmp_path / "proj2")
        src, out = proj / "raw", proj / "clean"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    with pytest.raises(ValueError, match="3 output.s. made with other settings"):
        run_denoise([src], out, _opts(causal_ckpt, strength=0.5))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == stamps
    s = run_denoise([src], out, _opts(causal_ckpt))
    assert (s["skipped"], s["ok"], s["left_out"]) == (3, 0, []), s
    lines = read_manifest(out / "audioae-manifest.jsonl")
    assert sorted((r["input"], r["output"]) for r in lines) == sorted(
        (str(src / rel), str(out / rel)) for rel in made)  # one line per input, under the names now
    assert {Path(r["output"]).relative_to(out).as_posix(): {k: r[k] for k in ("sha256", "strength", "input_size")}
            for r in lines} == made
    with pytest.raises(ValueError, match="made with other settings"):  # and the run after is checked too
        run_denoise([src], out, _opts(causal_ckpt, strength=0.5))

    # A stopped --overwrite (its record left, as a stop leaves it), then the project moved again.
    s = run_denoise([src], out, _opts(causal_ckpt, strength=0.5, overwrite=True))
    assert s["ok"] == 3
    line = read_manifest(out / "audioae-manifest.jsonl")[0]
    (out / OVERWRITE_NAME).write_text(json.dumps({"id": line["overwrite_run"], "started": "2026-12-07 10:00:00", "made": {
        k: line[k] for k in ("model", "sha256", "strength")}}) + "\n")
    stamps = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    moved_again = tmp_path / "proj3"
    moved_again.mkdir()
    src, out = src.rename(moved_again / "raw"), out.rename(moved_again / "clean")
    s = run_denoise([src], out, _opts(causal_ckpt, strength=0.5, overwrite=True))
    assert (s["skipped"], s["ok"]) == (3, 0), s  # gone on with: what it had remade is kept
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*.wav")} == stamps
    assert len(read_manifest(out / "audioae-manifest.jsonl")) == 3


@pytest.mark.parametrize("how", ["copied-then-deleted", "edited-after-the-move"])
def test_the_records_follow_a_project_copied_then_deleted_or_edited_after_its_move(tmp_path, causal_ckpt, how):
    """A project moved by copying it and deleting the original (``cp -r proj proj2 && rm -rf proj``,
    rsync or scp without keeping times: every input has a new time), or moved and then one input
    edited. Was: a record followed a gone input only where its size and time matched, so the rerun
    with another --strength was not refused, its lines were "skipped" ones that said nothing of what
    made the outputs, and the old paths' lines stayed. Now the lines follow by where the inputs lie
    (the output's path under OUT is the input's under its folder), and the recorded size and time
    name the inputs that are not the files their outputs were made from."""
    proj = tmp_path / "proj"
    for rel in ("a.wav", "sub/b.wav"):
        _wav(proj / "raw" / rel, seed=len(rel))
    assert run_denoise([proj / "raw"], proj / "clean", _opts(causal_ckpt))["ok"] == 2
    made = {Path(r["output"]).relative_to(proj / "clean").as_posix(): {k: r[k] for k in ("sha256", "strength", "input_size",
                                                                                       "input_mtime_ns")}
            for r in read_manifest(proj / "clean" / "audioae-manifest.jsonl")}
    moved = tmp_path / "proj2"
    if how == "copied-then-deleted":
        shutil.copytree(proj, moved, copy_function=shutil.copyfile)  # cp -r: the files' times are not kept
        for p in (moved / "raw").rglob("*.wav"):  # later than the outputs' however fast the copy
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
        shutil.rmtree(proj)
        changed = ["a.wav", "sub/b.wav"]
    else:
        proj.rename(moved)
        _wav(moved / "raw" / "a.wav", seconds=0.7, seed=9)
        changed = ["a.wav"]
    src, out = moved / "raw", moved / "clean"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    with pytest.raises(ValueError, match="2 output.s. made with other settings"):
        run_denoise([src], out, _opts(causal_ckpt, strength=0.5))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == stamps
    for _ in range(2):  # the run after names them too: their lines keep the sizes and times recorded
        s = run_denoise([src], out, _opts(causal_ckpt))
        assert (s["skipped"], s["ok"]) == (2, 0), s
        assert sorted(Path(x["path"]).relative_to(src).as_posix() for x in s["left_out"]) == changed, s
        assert all(x["why"].startswith("changed after its output") for x in s["left_out"]), s
        lines = read_manifest(out / "audioae-manifest.jsonl")
        assert sorted((r["input"], r["output"]) for r in lines) == sorted(
            (str(src / rel), str(out / rel)) for rel in made)  # one line per input, under the new paths
        assert {Path(r["output"]).relative_to(out).as_posix(): {k: r[k] for k in made["a.wav"]} for r in lines} == made
    with pytest.raises(ValueError, match="2 output.s. made with other settings"):
        run_denoise([src], out, _opts(causal_ckpt, strength=0.5))


@pytest.mark.parametrize("moved", ["project", "output"])
def test_a_moved_out_s_line_goes_to_the_output_its_input_bears_out(tmp_path, causal_ckpt, moved):
    """An OUT named ``o`` moved, and the inputs now hold both ``x.wav`` and ``o/x.wav``: the line of
    ``o/x.wav`` (old OUT ``proj/o``) reads as ``o/x.wav`` under ``proj`` or as ``x.wav`` under ``proj/o``,
    one vote each. Was: the tie took the shallower reading, which its input (``raw/x.wav``) does not
    bear out, so x.wav's record went to o/x.wav's output: x.wav's line said nothing of what made it,
    and another --strength was not refused over it. With the inputs where they were (only OUT
    moved), x.wav's line is found by its input's name all the same."""
    proj = tmp_path / "proj"
    _wav(proj / "raw" / "x.wav", seed=1)
    out = proj / "o" if moved == "project" else tmp_path / "a" / "o"
    assert run_denoise([proj / "raw"], out, _opts(causal_ckpt, strength=0.7))["ok"] == 1
    made = {k: read_manifest(out / "audioae-manifest.jsonl")[0][k] for k in ("sha256", "strength", "input_size")}
    if moved == "project":  # o/x.wav the same file's copy, its size and time too
        (proj / "raw" / "o").mkdir()
        shutil.copy2(proj / "raw" / "x.wav", proj / "raw" / "o" / "x.wav")
        proj = proj.rename(tmp_path / "proj2")
        out = (proj / "o").rename(proj / "clean")
    else:
        _wav(proj / "raw" / "o" / "x.wav", seed=3)
        (tmp_path / "b").mkdir()
        out = out.rename(tmp_path / "b" / "clean")
    s = run_denoise([proj / "raw"], out, _opts(causal_ckpt, strength=0.7))
    assert (s["skipped"], s["ok"], s["left_out"]) == (1, 1, []), s
    recs = {r["output"]: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert sorted(recs) == [str(out / "o" / "x.wav"), str(out / "x.wav")]
    assert recs[str(out / "x.wav")]["input"] == str(proj / "raw" / "x.wav")
    assert {k: recs[str(out / "x.wav")][k] for k in made} == made
    with pytest.raises(ValueError, match="2 output.s. made with other settings"):
        run_denoise([proj / "raw"], out, _opts(causal_ckpt, strength=0.5))


def test_a_record_is_not_taken_by_an_output_of_the_same_name_elsewhere_in_out(tmp_path, causal_ckpt):
    """The relative match of a moved OUT never reads a line of this OUT's own sub/x.wav as x.wav's."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "o"
    _wav(a / "sub" / "x.wav")
    _wav(b / "x.wav", seconds=0.7)
    assert run_denoise([a], out, _opts(causal_ckpt))["ok"] == 1
    s = run_denoise([b], out, _opts(causal_ckpt))  # x.wav, not sub/x.wav: denoised, nothing renamed
    assert s["ok"] == 1, s
    recs = {r["input"]: r["output"] for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert recs == {str(a / "sub" / "x.wav"): str(out / "sub" / "x.wav"), str(b / "x.wav"): str(out / "x.wav")}


def test_a_second_name_says_what_came_of_its_first(tmp_path, causal_ckpt):
    """Was: a second name's line was written before any file was denoised, and it and stderr said
    "denoised once to OUTPUT" of a file that failed under its first name, into an output that
    was never written."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "o"
    a.mkdir()
    (a / "x.wav").write_bytes(b"RIFF not audio" * 10)
    _second_name("hard", a / "x.wav", b / "x.wav")
    proc = _cli(causal_ckpt, "denoise", str(a), str(b), "-o", str(out))
    assert proc.returncode == 1
    assert "2 files: 0 denoised, 0 skipped (already done), 1 failed, 1 second name of a file" in proc.stdout
    assert (f"  second name: {b / 'x.wav'}: the same file as {a / 'x.wav'}, not denoised, it failed "
            f"(above)") in proc.stderr
    assert "denoised once" not in proc.stderr
    recs = {r["input"]: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert recs[str(b / "x.wav")]["status"] == "duplicate"
    assert recs[str(b / "x.wav")]["error"].endswith("not denoised, it failed under that name")
    assert not (out / "x.wav").exists()


def test_a_second_name_reached_twice_is_reported_once(tmp_path):
    """Was: a second name found in its folder and named too (``a/y.wav b b/y.wav``) was reported
    twice, "2 second names", its line twice."""
    from audioae.batch import plan_tasks

    first = _wav(tmp_path / "a" / "y.wav")
    b = _second_name("hard", first, tmp_path / "b" / "y.wav").parent
    twice: list[tuple[str, str, str]] = []
    tasks = plan_tasks([first, b, b / "y.wav"], tmp_path / "o", duplicates=twice)
    assert [t.input for t in tasks] == [str(first)]
    assert twice == [(str(b / "y.wav"), str(first), str(tmp_path / "o" / "y.wav"))]


def test_a_second_name_on_a_card_is_reported_under_the_output_written(case_blind_disk, tmp_path):
    """Where OUT ignores case, a/Take.wav and its hard link b/take.wav make one output, Take.wav
    (the first name's). Was: the second name was reported denoised to take.wav."""
    from audioae.batch import plan_tasks

    first = _wav(tmp_path / "a" / "Take.wav")
    name = _second_name("hard", first, tmp_path / "b" / "take.wav")
    twice: list[tuple[str, str, str]] = []
    plan_tasks([first.parent, name.parent], case_blind_disk / "o", duplicates=twice)
    assert twice == [(str(name), str(first), str(case_blind_disk / "o" / "Take.wav"))]


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


def test_an_empty_ogg_becomes_an_empty_output_and_an_empty_opus_is_refused_clearly(tmp_path, causal_ckpt):
    """Was: every Ogg of 0 samples failed on every run ("... may be cut short"), libsndfile's own
    empty Vorbis file too. libsndfile writes an empty Opus file it cannot open again ("malformed"):
    that one fails, saying it cannot be read."""
    src, out = tmp_path / "in", tmp_path / "out"
    _wav(src / "a.wav")
    sf.write(src / "empty.ogg", np.zeros((0, 2), np.float32), 44100, format="OGG", subtype="VORBIS")
    s = run_denoise([src], out, _opts(causal_ckpt))
    assert (s["files"], s["ok"], s["error"]) == (2, 2, 0)
    info = sf.info(out / "empty.ogg")
    assert (info.frames, info.samplerate, info.channels, info.subtype) == (0, 44100, 2, "VORBIS")
    sf.write(src / "empty.opus", np.zeros((0, 1), np.float32), 48000, format="OGG", subtype="OPUS")
    s = run_denoise([src], tmp_path / "out2", _opts(causal_ckpt))
    assert (s["files"], s["ok"], s["error"]) == (3, 2, 1)
    recs = {Path(r["input"]).name: r for r in read_manifest(tmp_path / "out2" / "audioae-manifest.jsonl")}
    assert recs["empty.opus"]["error"].startswith(f"{src / 'empty.opus'}: ")
    assert "malformed" in recs["empty.opus"]["error"]


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
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # was "loop is a link to loop, which does not exist"
    assert main(["denoise", str(src), "-o", str(tmp_path / "loop"), "--model", str(causal_ckpt)]) == 2
    assert (f"cannot make the output folder {tmp_path / 'loop'}: {tmp_path / 'loop'} is a symbolic link loop (it "
            f"leads back to itself through {tmp_path / 'loop'})") in capsys.readouterr().err
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
    # counted once: left out, not also skipped as done (was "2 skipped (already done), 0 failed, 1 left out")
    assert "2 files: 0 denoised, 1 skipped (already done), 0 failed, 1 left out;" in proc.stdout
    assert f"left out: {src / 'a.wav'}: changed after its output a.wav was made" in proc.stderr
    os.mkfifo(src / "pipe.wav")
    s = run_denoise([src], out, _opts(causal_ckpt, overwrite=True))
    assert s["left_out"] == [{"path": str(src / "pipe.wav"), "why": "a named pipe, not a file"}]
