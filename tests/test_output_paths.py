"""Output paths that would have cost a user files: an empty -o, a folder of someone else's
files under the names a decomposition writes and clears, and names that differ only in case on a
disk that ignores case."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from audioae.cli import main


def _wav(path, seconds: float = 0.5, sr: int = 16000) -> None:
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)


def test_an_empty_output_path_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch, capsys):
    """`-o "$OUT"` with OUT unset: Path("") is ".", where denoise would write and decompose clear."""
    src = tmp_path / "in"
    src.mkdir()
    _wav(src / "a.wav")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "01_my_take.wav").write_bytes(b"mine")
    monkeypatch.chdir(cwd)
    for cmd in (["denoise", str(src), "-o", ""], ["decompose", str(src / "a.wav"), "-o", "", "--fit", "0"]):
        assert main(cmd) == 2
        assert "the output path is empty (an unset shell variable?)" in capsys.readouterr().err
    assert sorted(p.name for p in cwd.iterdir()) == ["01_my_take.wav"]
    assert (cwd / "01_my_take.wav").read_bytes() == b"mine"


def test_decompose_refuses_a_folder_of_foreign_files_with_its_names_and_clears_its_own(tmp_path, capsys):
    src = tmp_path / "in.wav"
    _wav(src)
    out = tmp_path / "recordings"
    out.mkdir()
    theirs = {"03_take.wav": b"take", "residual.wav": b"res", "summary.json": b'{"mine": 1}'}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    assert main(["decompose", str(src), "-o", str(out), "--fit", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to write into" in err and "03_take.wav, residual.wav" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == theirs

    own = tmp_path / "parts"  # a decomposition's own folder: a rerun replaces its files
    assert main(["decompose", str(src), "-o", str(own), "--fit", "0", "--top", "3"]) == 0
    assert main(["decompose", str(src), "-o", str(own), "--fit", "0", "--top", "2"]) == 0
    assert len(list(own.glob("[0-9][0-9]_*.wav"))) == 2


def test_inputs_without_audio_are_an_error_and_make_no_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    assert main(["denoise", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    assert "nothing to denoise: no .wav/.flac/.ogg/.mp3/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # and no manifest path printed that does not exist


def test_an_output_folder_under_a_file_is_named_not_a_bare_errno(tmp_path, capsys):
    """(A file where one output's folder would go: test_batch's
    test_an_output_folder_name_taken_by_a_file_fails_those_files_not_the_job.)"""
    src = tmp_path / "in"
    src.mkdir()
    _wav(src / "a.wav")
    (tmp_path / "afile").write_text("mine")
    assert main(["denoise", str(src), "-o", str(tmp_path / "afile" / "sub")]) == 2
    err = capsys.readouterr().err
    assert f"cannot make the output folder {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file" in err


def test_ray_only_options_with_the_local_engine_are_refused(tmp_path, capsys):
    _wav(tmp_path / "a.wav")
    assert main(["denoise", str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), "--gpus-per-worker", "1"]) == 2
    assert "--gpus-per-worker is for --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def case_blind_disk(tmp_path):
    """A FAT file system, as on an SD card (names ignore case), mounted with FUSE: a real disk of
    that kind, which this kernel cannot mount itself. Skipped without fusefat and dosfstools
    (``apt-get install fusefat dosfstools``) or where FUSE mounts are not allowed."""
    if not all(shutil.which(tool) for tool in ("fusefat", "mkfs.vfat", "fusermount")):
        pytest.skip("a case-insensitive disk needs fusefat and dosfstools (apt-get install fusefat dosfstools)")
    image, mount = tmp_path / "card.img", tmp_path / "card"
    with open(image, "wb") as f:
        f.truncate(40 << 20)
    subprocess.run(["mkfs.vfat", str(image)], check=True, capture_output=True)
    mount.mkdir()
    run = subprocess.run(["fusefat", "-o", "rw+", str(image), str(mount)], capture_output=True, text=True)
    if run.returncode != 0 or not os.path.ismount(mount):
        pytest.skip(f"cannot mount a FAT image with FUSE here: {run.stderr.strip()[-300:]}")
    try:
        yield mount
    finally:
        subprocess.run(["fusermount", "-u", str(mount)], capture_output=True)


def test_names_on_a_fat_card_ignore_case_and_elsewhere_do_not(case_blind_disk, tmp_path):
    from audioae.batch.plan import ignores_case

    assert ignores_case(case_blind_disk) and ignores_case(case_blind_disk / "not" / "made" / "yet")
    (case_blind_disk / "Take.wav").write_bytes(b"x")  # asked of a name already there, too
    assert ignores_case(case_blind_disk)
    assert not ignores_case(tmp_path) and not ignores_case(tmp_path / "new")
    assert sorted(p.name for p in case_blind_disk.iterdir()) == ["Take.wav"]  # no probe left behind


def test_inputs_whose_names_differ_only_in_case_are_refused_for_a_card_and_kept_apart_elsewhere(
        case_blind_disk, tmp_path, capsys):
    """Until 2026-12-07 Take.wav and take.wav were both reported denoised into a card, where they
    are one file: one output replaced the other."""
    src = tmp_path / "in"
    src.mkdir()
    _wav(src / "Take.wav", 0.5)
    _wav(src / "take.wav", 0.25)
    assert main(["denoise", str(src), "-o", str(case_blind_disk / "clean"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "two inputs map to outputs whose names differ only in case" in err and "ignores case" in err, err
    assert not (case_blind_disk / "clean").exists()
    assert main(["denoise", str(src), "-o", str(tmp_path / "clean"), "--no-progress"]) == 0  # a disk that tells them apart
    assert {p.name: sf.info(p).frames for p in (tmp_path / "clean").glob("*.wav")} == {"Take.wav": 8000, "take.wav": 4000}


def test_an_output_folder_that_is_the_input_folder_in_another_case_is_refused_on_a_card(case_blind_disk, capsys):
    """``-o IN`` for the card's folder ``in``: until 2026-12-07 its recordings counted as their own
    finished outputs, and with --overwrite each was replaced by its denoised copy."""
    src = case_blind_disk / "in"
    src.mkdir()
    _wav(src / "Take.wav")
    before = (src / "Take.wav").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["denoise", str(src), "-o", str(case_blind_disk / "IN"), "--no-progress", *extra]) == 2
        assert "is the input folder" in capsys.readouterr().err
    assert (src / "Take.wav").read_bytes() == before and sorted(p.name for p in src.iterdir()) == ["Take.wav"]


def test_the_plan_folds_case_where_the_output_disk_ignores_it(tmp_path, monkeypatch):
    """The plan's side of the case-insensitive disk, on every machine (the FUSE tests above need
    fusefat): told that the output's disk ignores case, it compares paths as that disk would."""
    from audioae.batch import plan

    src = tmp_path / "in"
    src.mkdir()
    _wav(src / "Take.wav")
    _wav(src / "take.wav")
    assert len(plan.plan_tasks([src], tmp_path / "out")) == 2  # a disk that tells them apart
    monkeypatch.setattr(plan, "ignores_case", lambda folder: True)
    with pytest.raises(ValueError, match="two inputs map to outputs whose names differ only in case"):
        plan.plan_tasks([src], tmp_path / "out")
    (src / "take.wav").unlink()
    with pytest.raises(ValueError, match="is the input folder"):
        plan.plan_tasks([src], tmp_path / "IN")
    with pytest.raises(ValueError, match="would overwrite an input"):
        plan.plan_tasks([src / "Take.wav"], tmp_path / "IN")  # OUT/Take.wav is in/Take.wav there


def test_an_output_that_leads_to_an_input_through_a_link_is_refused(tmp_path):
    """An output name already there as a link to an input, or inside a linked folder that is an
    input folder, would be written over that input: refused, as when the outputs are stat'ed
    (plan_tasks asks each output once, and resolves each output folder once)."""
    from audioae.batch import plan

    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    _wav(src / "a.wav")
    _wav(src / "sub" / "b.wav")
    out.mkdir()
    (out / "sub").symlink_to(src / "sub", target_is_directory=True)  # out/sub/b.wav is in/sub/b.wav
    with pytest.raises(ValueError, match=f"the output {out / 'sub' / 'b.wav'} would overwrite an input"):
        plan.plan_tasks([src], out)
    (out / "sub").unlink()
    (out / "a.wav").symlink_to(src / "a.wav")  # a link to the input, under its output's name
    with pytest.raises(ValueError, match=f"the output {out / 'a.wav'} would overwrite an input"):
        plan.plan_tasks([src], out)
    (out / "a.wav").unlink()
    (out / "sub").mkdir()
    _wav(out / "sub" / "b.wav", seconds=0.1)  # an earlier output: no input
    assert [t.rel for t in plan.plan_tasks([src], out)] == ["a.wav", "sub/b.wav"]
