"""`audioae eval`: pairing by relative path, metric values on constructed pairs, problems reported."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from audioae.cli import main
from audioae.data.synthetic import noise, speech_like
from audioae.evaluate import evaluate_folders, format_table, pair_folders
from audioae.metrics import si_sdr

SR = 16000


def at_snr(clean: np.ndarray, n: np.ndarray, snr_db: float) -> np.ndarray:
    n = n - n.mean()
    gain = np.sqrt((clean**2).sum() / ((n**2).sum() * 10 ** (snr_db / 10)))
    return (clean + gain * n).astype(np.float32)


@pytest.fixture
def folders(tmp_path):
    """clean/, noisy/ (5 dB SNR) and enhanced/ (15 dB SNR) for three files, two nested."""
    rng = np.random.default_rng(0)
    dirs = {k: tmp_path / k for k in ("clean", "noisy", "enhanced")}
    truth = {}
    for rel in ("a.wav", "spk1/b.wav", "spk1/deep/c.wav"):
        clean = speech_like(rng, 2.0, SR)
        n = noise(rng, 2.0, SR, "white")
        sigs = {"clean": clean, "noisy": at_snr(clean, n, 5.0), "enhanced": at_snr(clean, n, 15.0)}
        for k, x in sigs.items():
            (dirs[k] / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(dirs[k] / rel, x, SR, subtype="FLOAT")
        truth[rel] = (si_sdr(sigs["enhanced"], clean), si_sdr(sigs["noisy"], clean))
    return dirs, truth


def test_scores_pairs_by_relative_path(folders):
    dirs, truth = folders
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"])
    assert (rep["paired"], rep["scored"]) == (3, 3)
    assert not (rep["errors"] or rep["missing_enhanced"] or rep["extra_enhanced"] or rep["missing_noisy"])
    for f in rep["files"]:
        enh, noisy = truth[f["file"]]
        assert f["si_sdr"] == pytest.approx(enh, abs=1e-3)
        assert f["si_sdr"] == pytest.approx(15.0, abs=0.3)  # it was built at 15 dB SNR
        assert f["si_sdr_i"] == pytest.approx(enh - noisy, abs=1e-3)
        assert f["si_sdr_i"] == pytest.approx(10.0, abs=0.5)
        assert 1.0 <= f["pesq"] <= 4.65 and 0.0 <= f["stoi"] <= 1.0
    for m in ("si_sdr", "si_sdr_i", "pesq", "stoi"):
        assert rep["mean"][m] == pytest.approx(np.mean([f[m] for f in rep["files"]]))
    # Less noise scores better on every metric.
    worse = evaluate_folders(dirs["clean"], dirs["noisy"])
    for m in ("si_sdr", "pesq", "stoi"):
        assert rep["mean"][m] > worse["mean"][m]
    table = format_table(rep)
    assert "spk1/deep/c.wav" in table and "mean" in table
    # the units and which PESQ (was "SI-SDR  SI-SDRi  PESQ  STOI")
    assert table.splitlines()[0].split()[1:] == ["SI-SDR", "dB", "SI-SDRi", "dB", "PESQ", "wb", "STOI"]


def test_missing_extra_renamed_and_broken_files_are_reported(folders, tmp_path):
    dirs, _ = folders
    (dirs["enhanced"] / "spk1" / "b.wav").unlink()  # missing
    x, _ = sf.read(dirs["enhanced"] / "a.wav")
    (dirs["enhanced"] / "a.wav").unlink()
    sf.write(dirs["enhanced"] / "a.flac", x[: len(x) - 160], SR)  # other extension, 10 ms shorter
    sf.write(dirs["enhanced"] / "stray.wav", x, SR)  # no clean counterpart
    (dirs["noisy"] / "spk1" / "deep" / "c.wav").unlink()
    (dirs["clean"] / "broken.wav").write_bytes(b"not audio")
    (dirs["enhanced"] / "broken.wav").write_bytes(b"not audio")
    p = pair_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"])
    assert [r for r, *_ in p.pairs] == ["a.wav", "broken.wav", "spk1/deep/c.wav"]
    assert (p.missing_enhanced, p.extra_enhanced, p.missing_noisy) == (["spk1/b.wav"], ["stray.wav"],
                                                                       ["broken.wav", "spk1/deep/c.wav"])
    out = tmp_path / "report.json"
    rc = main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]),
               "--noisy", str(dirs["noisy"]), "--json", str(out)])
    assert rc == 1  # problems were found
    rep = json.loads(out.read_text())
    assert rep["scored"] == 2 and [e["file"] for e in rep["errors"]] == ["broken.wav"]
    # the message names the broken side's path once (was "error: broken.wav: <clean>/broken.wav: ...")
    assert f"\nerror: {dirs['clean'] / 'broken.wav'}: cannot read audio" in format_table(rep)
    only_broken = evaluate_folders(dirs["clean"] / "broken.wav", dirs["enhanced"] / "broken.wav")
    assert format_table(only_broken).splitlines()[0] == "0 of 1 pairs scored"  # no empty table above it
    a = next(f for f in rep["files"] if f["file"] == "a.wav")
    assert any("compared over the shorter" in n for n in a["notes"])
    c = next(f for f in rep["files"] if f["file"] == "spk1/deep/c.wav")
    assert c["si_sdr_i"] is None  # no noisy file for it (null: every row has the same keys)


def test_an_enhanced_file_without_a_clean_one_makes_the_exit_code_1(folders, capsys):
    # was: listed ("no clean file for: stray.flac") with exit code 0, while --help said
    # "Exits 1 if a file is missing or failed"
    dirs, _ = folders
    x, _ = sf.read(dirs["enhanced"] / "a.wav")
    sf.write(dirs["enhanced"] / "stray.flac", x, SR)
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"])]) == 1
    out = capsys.readouterr().out
    assert "3 of 3 pairs scored" in out and "no clean file for: stray.flac" in out
    (dirs["enhanced"] / "stray.flac").unlink()
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"])]) == 0


def test_eval_cli_json_to_stdout_and_no_pairs_is_an_error(folders, tmp_path, capsys):
    dirs, _ = folders
    rc = main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]), "--json", "-"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]), "--json", "-",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == rep  # the bar (on a terminal only) changes nothing
    assert rep["scored"] == 3 and "si_sdr_i" not in rep["mean"]
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(tmp_path / "empty")]) == 2
    assert main(["eval", "--clean", str(tmp_path / "nope"), "--enhanced", str(dirs["enhanced"])]) == 2


def test_three_files_are_one_pair_and_a_file_with_folders_is_an_error(folders, capsys):
    dirs, truth = folders
    rel = "spk1/b.wav"
    rc = main(["eval", "--clean", str(dirs["clean"] / rel), "--enhanced", str(dirs["enhanced"] / rel),
               "--noisy", str(dirs["noisy"] / rel), "--json", "-"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    (f,) = rep["files"]
    assert f["file"] == "b.wav" and f["si_sdr"] == pytest.approx(truth[rel][0], abs=1e-3)
    assert f["si_sdr_i"] == pytest.approx(truth[rel][0] - truth[rel][1], abs=1e-3)
    assert main(["eval", "--clean", str(dirs["clean"] / rel), "--enhanced", str(dirs["enhanced"])]) == 2
    assert "as files or all as folders" in capsys.readouterr().err


def test_a_pair_too_short_for_pesq_or_stoi_still_gets_its_si_sdr(folders):
    dirs, _ = folders
    rng = np.random.default_rng(1)
    # below one STOI frame (and one 32 ms SI-SDR frame); below STOI's 30 frames; one SI-SDR frame
    for rel, seconds in (("tiny.wav", 100 / SR), ("short.wav", 0.3), ("frame.wav", 520 / SR)):
        clean = speech_like(rng, seconds, SR)
        sf.write(dirs["clean"] / rel, clean, SR, subtype="FLOAT")
        sf.write(dirs["enhanced"] / rel, at_snr(clean, noise(rng, seconds, SR, "white"), 15.0), SR, subtype="FLOAT")
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"])
    # pystoi raised on the first and said 1e-5 for the second; tiny.wav is read, but nothing scores it
    assert (rep["read"], rep["scored"], rep["errors"]) == (6, 5, [])
    for rel in ("tiny.wav", "short.wav", "frame.wav"):
        f = next(f for f in rep["files"] if f["file"] == rel)
        assert f["pesq"] is None and f["stoi"] is None
        assert any(n.startswith("STOI could not score this pair") for n in f["notes"]), f["notes"]  # beside its file
        if rel != "tiny.wav":  # 100 samples: too short for SI-SDR too (the next test)
            assert f["si_sdr"] == pytest.approx(15.0, abs=1.0)
    assert 0.5 < rep["mean"]["stoi"] <= 1.0  # the three that could be scored
    for rel in ("tiny.wav", "frame.wav"):  # the C library's words, not b'...'
        f = next(f for f in rep["files"] if f["file"] == rel)
        assert "PESQ could not score this pair: Buffer needs to be at least 1/4 of a second long" in f["notes"]


def test_a_pair_shorter_than_one_frame_has_no_si_sdr(folders):
    # was: 100 samples scored 15 dB and one sample 0.000 dB, both averaged in
    dirs, truth = folders
    rng = np.random.default_rng(2)
    clean = speech_like(rng, 100 / SR, SR)
    pairs = {"tiny.wav": (clean, at_snr(clean, noise(rng, 100 / SR, SR, "white"), 15.0),
                          at_snr(clean, noise(rng, 100 / SR, SR, "white"), 5.0)),
             "one.wav": (np.array([0.3]), np.array([0.25]), np.array([0.1]))}
    for rel, sigs in pairs.items():
        for side, x in zip(("clean", "enhanced", "noisy"), sigs, strict=True):
            sf.write(dirs[side] / rel, np.asarray(x, np.float32), SR, subtype="FLOAT")
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"])
    assert (rep["read"], rep["errors"]) == (5, [])
    assert rep["scored"] == 3  # nothing scores the two: read, not scored
    for rel, samples in (("tiny.wav", 100), ("one.wav", 1)):
        f = next(f for f in rep["files"] if f["file"] == rel)
        assert f["si_sdr"] is None and f["si_sdr_i"] is None, f
        assert (f"SI-SDR (and so SI-SDRi) could not score this pair: {samples} samples at 16000 Hz, shorter than "
                f"one 32 ms frame (512 samples)") in f["notes"]
    # the mean is the three real pairs' alone
    assert rep["mean"]["si_sdr"] == pytest.approx(np.mean([enh for enh, _ in truth.values()]), abs=1e-3)
    assert rep["mean"]["si_sdr_i"] == pytest.approx(np.mean([e - n for e, n in truth.values()]), abs=1e-3)
    one = next(f for f in rep["files"] if f["file"] == "one.wav")  # one sample is not called silent
    assert not any("silent" in n for n in one["notes"]), one["notes"]
    lines = format_table(rep).splitlines()
    assert lines[lines.index(next(x for x in lines if x.startswith("tiny.wav")))].split()[1:3] == ["-", "-"]


def test_a_silent_reference_has_no_scores_and_says_why(folders, tmp_path, capsys):
    # was: SI-SDR 0.0 (-102.0 without --noisy), SI-SDRi 102.0 and STOI 0.0, all averaged in, no note
    dirs, truth = folders
    rng = np.random.default_rng(3)
    x = 0.1 * rng.standard_normal(SR).astype(np.float32)
    silences = {"zeros.wav": np.zeros(SR, np.float32), "dc.wav": np.full(SR, 0.25, np.float32),
                "faint.wav": (1e-9 * rng.standard_normal(SR)).astype(np.float32)}  # -180 dBFS
    for rel, ref in silences.items():
        sf.write(dirs["clean"] / rel, ref, SR, subtype="FLOAT")
        sf.write(dirs["enhanced"] / rel, x, SR, subtype="FLOAT")
        sf.write(dirs["noisy"] / rel, 2 * x, SR, subtype="FLOAT")
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"])
    assert (rep["read"], rep["scored"], rep["errors"]) == (6, 3, [])  # the three silent references: read only
    why = {"zeros.wav": "silent (all zeros)", "dc.wav": "silent (a constant offset, nothing else)",
           "faint.wav": "silent (RMS -180 dBFS after removing its mean, below -140 dBFS)"}
    for rel, said in why.items():
        f = next(f for f in rep["files"] if f["file"] == rel)
        assert all(f[m] is None for m in ("si_sdr", "si_sdr_i", "pesq", "stoi")), f
        assert f["notes"] == [f"SI-SDR (and so SI-SDRi) could not score this pair: the reference is {said}",
                              f"PESQ could not score this pair: the reference is {said}",
                              f"STOI could not score this pair: the reference is {said}"]
    assert rep["mean"]["si_sdr"] == pytest.approx(np.mean([enh for enh, _ in truth.values()]), abs=1e-3)
    assert rep["mean"]["si_sdr_i"] == pytest.approx(np.mean([e - n for e, n in truth.values()]), abs=1e-3)
    assert rep["mean"]["stoi"] > 0.5  # a 0.0 per silent pair would pull it down
    # the explorer's reproduction: one silent reference against noise, the JSON on stdout
    clean, enhanced = dirs["clean"] / "zeros.wav", dirs["enhanced"] / "zeros.wav"
    assert main(["eval", "--clean", str(clean), "--enhanced", str(enhanced), "--json", "-"]) == 1  # nothing scored
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert "audioae eval: no pair could be scored (0 of 1): see errors and notes in the JSON" in err
    (f,) = rep["files"]
    assert (f["si_sdr"], f["stoi"], rep["mean"]["si_sdr"], rep["mean"]["stoi"]) == (None, None, None, None)
    assert "SI-SDR could not score this pair: the reference is silent (all zeros)" in f["notes"]


def test_si_sdr_of_a_quiet_reference_is_the_same_as_of_a_loud_one():
    # scale invariance: si_sdr's fixed eps of 1e-8 scored this pair 1.0 dB at -120 dBFS
    from audioae.metrics import si_sdr_score

    rng = np.random.default_rng(4)
    clean = speech_like(rng, 1.0, SR).astype(np.float64)
    est = at_snr(clean.astype(np.float32), noise(rng, 1.0, SR, "white"), 15.0).astype(np.float64)
    loud = si_sdr_score(est, clean, SR)
    assert loud == pytest.approx(si_sdr(est, clean), abs=1e-6) and loud == pytest.approx(15.0, abs=0.5)
    for db in (-60, -100, -120):
        gain = 10 ** (db / 20) / np.sqrt(np.mean(clean**2))
        assert si_sdr_score(gain * est, gain * clean, SR) == pytest.approx(loud, abs=1e-3), db
        # and a quiet estimate of a loud reference (was: 0.07 dB for a perfect copy 120 dB down)
        assert si_sdr_score(gain * est, clean, SR) == pytest.approx(loud, abs=1e-3), db


def test_a_channel_mismatch_and_a_silent_output_are_noted_beside_their_file(folders, capsys):
    dirs, _ = folders
    x, _ = sf.read(dirs["enhanced"] / "a.wav")
    sf.write(dirs["enhanced"] / "a.wav", np.stack([x, x], 1), SR, subtype="FLOAT")  # stereo copy of a mono result
    sf.write(dirs["enhanced"] / "spk1" / "b.wav", np.zeros_like(x), SR, subtype="FLOAT")  # a model that gave silence
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"])]) == 0
    out = capsys.readouterr()
    assert "note: a.wav: enhanced has 2 channel(s), clean has 1: scored on the mono mixdown" in out.out
    assert "note: spk1/b.wav: PESQ could not score this pair: the estimate is silent (all zeros)" in out.out
    # was: SI-SDR 0 dB for silence, more than a noisy input at 0 dB SNR or below scores
    assert "note: spk1/b.wav: SI-SDR could not score this pair: the estimate is silent (all zeros)" in out.out
    assert "the means leave out the pairs a metric could not score (notes below say why): SI-SDR is over" in out.out
    assert "could not score" not in out.err  # not also as an anonymous warning above the table
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"])
    silent = next(f for f in rep["files"] if f["file"] == "spk1/b.wav")
    assert (silent["si_sdr"], silent["pesq"], silent["stoi"]) == (None, None, 0.0)
    assert rep["mean_of"]["si_sdr"] == rep["mean_of"]["pesq"] == rep["scored"] - 1
    assert rep["mean_of"]["stoi"] == rep["scored"]


def test_a_shorter_or_silent_or_missing_noisy_file_touches_only_the_si_sdr_improvement(folders, capsys):
    """--noisy cropped every metric to the noisy file's length (and a noisy file shorter than a
    frame blanked every score); a silent noisy file was said of "the estimate", beside the SI-SDR
    shown; a missing one left the key out of the JSON row (null, the docs say)."""
    dirs, truth = folders
    plain = {f["file"]: f for f in evaluate_folders(dirs["clean"], dirs["enhanced"])["files"]}
    x, _ = sf.read(dirs["noisy"] / "a.wav", dtype="float32")
    sf.write(dirs["noisy"] / "a.wav", x[: SR // 2], SR, subtype="FLOAT")  # 0.5 s of the 2 s pair
    sf.write(dirs["noisy"] / "spk1" / "b.wav", np.zeros_like(x), SR, subtype="FLOAT")
    (dirs["noisy"] / "spk1" / "deep" / "c.wav").unlink()
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"])
    rows = {f["file"]: f for f in rep["files"]}
    for rel in rows:  # the enhanced file's own scores are those without --noisy
        assert all(rows[rel][m] == plain[rel][m] for m in ("si_sdr", "pesq", "stoi")), rel
    short = rows["a.wav"]
    expected = si_sdr(sf.read(dirs["enhanced"] / "a.wav")[0][: SR // 2], sf.read(dirs["clean"] / "a.wav")[0][: SR // 2]) \
        - si_sdr(x[: SR // 2], sf.read(dirs["clean"] / "a.wav")[0][: SR // 2])
    assert short["si_sdr_i"] == pytest.approx(expected, abs=1e-3)
    assert "SI-SDRi over the first 0.50 s, as long as the noisy file; the other scores over 2.00 s" in short["notes"]
    assert rows["spk1/b.wav"]["si_sdr_i"] is None
    assert any("SI-SDRi could not score this pair: the noisy file is silent" in n for n in rows["spk1/b.wav"]["notes"])
    assert not any("the estimate" in n for n in rows["spk1/b.wav"]["notes"])
    assert "si_sdr_i" in rows["spk1/deep/c.wav"] and rows["spk1/deep/c.wav"]["si_sdr_i"] is None


def test_json_out_may_not_be_a_folder_or_an_audio_file(folders, capsys):
    dirs, _ = folders
    ref = dirs["clean"] / "a.wav"
    before = ref.read_bytes()
    base = ["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"])]
    assert main([*base, "--json", str(ref)]) == 2  # was: the report written over a reference
    assert "refusing to write the report over an audio file name" in capsys.readouterr().err
    assert ref.read_bytes() == before
    assert main([*base, "--json", str(dirs["noisy"])]) == 2  # was: IsADirectoryError traceback
    assert "is a folder; name the JSON file to write" in capsys.readouterr().err


def test_eval_searches_folders_as_the_folder_tool_does(folders, tmp_path, caplog):
    # was: a clean folder linked into the references was passed over (pathlib's rglob does not
    # follow links) while `audioae denoise` followed it, so its outputs had "no clean file";
    # hidden folders were searched, and MP3s were passed over without a word
    dirs, _ = folders
    shared = tmp_path / "shared"
    (dirs["clean"] / "spk1").rename(shared)
    (dirs["clean"] / "spk1").symlink_to(shared, target_is_directory=True)
    (dirs["enhanced"] / ".trash").mkdir()
    sf.write(dirs["enhanced"] / ".trash" / "old.wav", np.zeros(SR, np.float32), SR)
    (dirs["enhanced"] / "take.m4a").write_bytes(b"ftyp")
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"])
    assert (rep["paired"], rep["scored"]) == (3, 3)
    assert not (rep["missing_enhanced"] or rep["extra_enhanced"])
    assert "passed over 1 .m4a file(s)" in caplog.text


def read_crashing_on_b(path):
    """``read_audio``, but its process dies (a real SIGSEGV) on any file named b.wav, as it would in
    libsndfile on a file it mishandles. Module level: the reading process imports it."""
    import os
    import signal
    from pathlib import Path

    from audioae.audio import read_audio

    if Path(path).name == "b.wav":
        os.kill(os.getpid(), signal.SIGSEGV)
    return read_audio(path)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGSEGV"), reason="POSIX signals")
def test_a_file_that_kills_the_decoder_costs_its_row_not_the_evaluation(folders):
    from audioae.evaluate import IsolatedReader

    dirs, truth = folders
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"], reader=IsolatedReader(read_crashing_on_b))
    assert sorted(f["file"] for f in rep["files"]) == ["a.wav", "spk1/deep/c.wav"]  # read after b's crash
    assert [e["file"] for e in rep["errors"]] == ["spk1/b.wav"]
    assert "reading it killed the decoding process twice (its process was killed by SIGSEGV)" in rep["errors"][0]["error"]


def test_a_script_read_from_stdin_still_evaluates(folders):
    """A spawned child cannot start under `python -` (spawn imports __main__ again, from '<stdin>'):
    the reader says so once and reads in its own process, instead of calling every file a crash."""
    import subprocess
    import sys

    dirs, _ = folders
    script = (f"from audioae.evaluate import evaluate_folders\n"
              f"r = evaluate_folders({str(dirs['clean'])!r}, {str(dirs['enhanced'])!r})\n"
              f"print('scored', r['scored'], 'errors', len(r['errors']))\n")
    run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "scored 3 errors 0" in run.stdout
    assert run.stderr.count("cannot start a process to decode the files in") == 1


def test_another_extension_stands_in_only_for_a_file_no_clean_file_names(folders, capsys):
    """Was: with a.wav and a.flac clean and a.wav alone enhanced, a.flac was scored against a.wav
    (one output scored twice), its own missing output unreported, and the exit code 0."""
    dirs, _ = folders
    x, _ = sf.read(dirs["clean"] / "a.wav", dtype="float32")
    sf.write(dirs["clean"] / "a.flac", x, SR)
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"])
    assert sorted(f["file"] for f in rep["files"]) == ["a.wav", "spk1/b.wav", "spk1/deep/c.wav"]
    assert rep["missing_enhanced"] == ["a.flac"]
    (dirs["enhanced"] / "a.wav").rename(dirs["enhanced"] / "a.ogg")  # now one stands in, once
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"])
    assert (rep["paired"], len(rep["missing_enhanced"]), rep["extra_enhanced"]) == (3, 1, [])
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]), "--no-progress"]) == 1


def test_two_files_that_could_stand_for_one_clean_file_are_reported_not_one_picked(folders, capsys):
    """Clean a.wav with enhanced a.flac and a.ogg (no a.wav) paired with whichever the folder walk
    gave last, and called the other "no clean file for", without a word of the choice."""
    dirs, _ = folders
    x, _ = sf.read(dirs["enhanced"] / "a.wav", dtype="float32")
    (dirs["enhanced"] / "a.wav").unlink()
    sf.write(dirs["enhanced"] / "a.flac", x, SR)
    sf.write(dirs["enhanced"] / "a.ogg", x, SR)
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"])
    assert sorted(f["file"] for f in rep["files"]) == ["spk1/b.wav", "spk1/deep/c.wav"]
    assert rep["ambiguous"] == ["a.wav (enhanced: a.flac, a.ogg): keep one"] and rep["extra_enhanced"] == []
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]), "--no-progress"]) == 1
    assert "several files stand for: a.wav (enhanced: a.flac, a.ogg): keep one" in capsys.readouterr().out


def test_a_silent_pair_is_given_one_reason(tmp_path):
    """Was: SI-SDR and STOI said the reference is silent, PESQ that the estimate is."""
    for side in ("clean", "enhanced"):
        (tmp_path / side).mkdir()
        sf.write(tmp_path / side / "quiet.wav", np.zeros(SR, np.float32), SR)
    report = evaluate_folders(tmp_path / "clean", tmp_path / "enhanced")
    (f,) = report["files"]
    # Non-empty: all() over no notes is true, and a silent pair scored without a word would pass.
    assert f["notes"] and all(note.endswith("the reference is silent (all zeros)") for note in f["notes"]), f["notes"]
    # was "1 of 1 pairs scored" above a row of dashes
    assert "0 of 1 pairs scored; 1 more read, but no metric could score them" in format_table(report)


def test_a_report_that_could_not_be_written_is_refused_before_the_scoring(folders, unprivileged, tmp_path):
    """Was: every pair scored (minutes on a test set), then the report's write failed."""
    dirs, _ = folders
    shut = tmp_path / "shut"
    shut.mkdir()
    shut.chmod(0o555)
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "audioae.cli", "eval", "--clean", str(dirs["clean"]),
                           "--enhanced", str(dirs["enhanced"]), "--no-progress", "--json", str(shut / "new" / "s.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"--json {shut / 'new' / 's.json'}: cannot write the report there ({shut} takes no new files" in proc.stderr
    assert "pairs scored" not in proc.stdout


def test_an_unreadable_file_is_named_with_the_systems_reason(folders, unprivileged):
    """Was: "cannot read audio (System error.)"."""
    dirs, _ = folders
    (dirs["enhanced"] / "a.wav").chmod(0)
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "audioae.cli", "eval", "--clean", str(dirs["clean"]),
                           "--enhanced", str(dirs["enhanced"]), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {dirs['enhanced'] / 'a.wav'}: cannot read audio (Permission denied)" in proc.stdout


def test_an_unreadable_noisy_file_costs_only_the_si_sdr_improvement(folders, capsys):
    # was: "1 of 3 pairs scored", though the noisy file is for SI-SDRi alone
    dirs, truth = folders
    x, _ = sf.read(dirs["noisy"] / "a.wav")
    x[100] = np.nan
    sf.write(dirs["noisy"] / "a.wav", x, SR, subtype="FLOAT")
    (dirs["noisy"] / "spk1" / "b.wav").write_bytes(b"not audio")
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]),
                 "--noisy", str(dirs["noisy"]), "--json", "-"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert (rep["paired"], rep["scored"]) == (3, 3)
    assert sorted(e["file"] for e in rep["errors"]) == ["a.wav", "spk1/b.wav"]
    assert "NaN or Inf" in next(e["error"] for e in rep["errors"] if e["file"] == "a.wav")
    for f in rep["files"]:
        assert f["si_sdr"] == pytest.approx(truth[f["file"]][0], abs=1e-3)
        assert f["pesq"] is not None and f["stoi"] is not None
        broken = f["file"] != "spk1/deep/c.wav"
        assert (f["si_sdr_i"] is None) == broken
        assert any("its noisy file could not be read" in n for n in f["notes"]) == broken
    assert rep["mean_of"]["si_sdr_i"] == 1 and rep["mean_of"]["si_sdr"] == 3


def test_a_missing_file_among_three_is_named_as_missing(folders, capsys):
    # was: "give --clean, --enhanced and --noisy all as files or all as folders; not a file: enh/nope.wav"
    dirs, _ = folders
    nope = dirs["enhanced"] / "nope.wav"
    assert main(["eval", "--clean", str(dirs["clean"] / "a.wav"), "--enhanced", str(nope),
                 "--noisy", str(dirs["noisy"] / "a.wav")]) == 2
    err = capsys.readouterr().err
    assert f"error: {nope}: no such file" in err and "as folders" not in err


def test_eval_exits_1_when_no_pair_could_be_scored(folders, capsys):
    # was: exit 0 under an all-dash table, "0 of 1 pairs scored"
    dirs, _ = folders
    sf.write(dirs["clean"] / "a.wav", np.zeros(SR, np.float32), SR)  # silent: no metric is defined
    args = ["eval", "--clean", str(dirs["clean"] / "a.wav"), "--enhanced", str(dirs["enhanced"] / "a.wav")]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "0 of 1 pairs scored" in out
    assert "audioae eval: no pair could be scored (0 of 1): see the errors and notes above" in err
    args[2] = str(dirs["clean"] / "spk1" / "b.wav")  # a pair that scores: 0 as before
    args[4] = str(dirs["enhanced"] / "spk1" / "b.wav")
    assert main(args) == 0


@pytest.mark.parametrize("sr, said", [
    (8000, "PESQ is wide-band (P.862.2, 16 kHz) on 8000 Hz audio upsampled to 16 kHz: nothing above 4 kHz"),
    (48000, "PESQ on the pair resampled from 48000 Hz to 16 kHz (wide-band PESQ's rate)"),
    (16000, None),
])
def test_pesq_on_resampled_audio_is_noted(tmp_path, sr, said):
    # was: 8 kHz pairs got wide-band PESQ of an upsampled signal, 48 kHz ones PESQ at 16 kHz, unsaid
    rng = np.random.default_rng(0)
    clean = speech_like(rng, 2.0, sr)
    enhanced = at_snr(clean, noise(rng, 2.0, sr, "white"), 15.0)
    for name, x in (("c.wav", clean), ("e.wav", enhanced)):
        sf.write(tmp_path / name, x, sr, subtype="FLOAT")
    (f,) = evaluate_folders(tmp_path / "c.wav", tmp_path / "e.wav")["files"]
    assert f["pesq"] is not None
    pesq_notes = [n for n in f["notes"] if "PESQ" in n]
    if said is None:
        assert pesq_notes == []
    else:
        assert len(pesq_notes) == 1 and pesq_notes[0].startswith(said)


def test_an_ambiguous_only_clean_file_is_named_as_ambiguous(tmp_path, capsys):
    # was: "no files of A/enh pair with A/clean by relative path", the ambiguity it gives beside a pair unsaid
    x = speech_like(np.random.default_rng(0), 1.0, SR)
    for path in ("clean/y.wav", "enh/y.flac", "enh/y.ogg"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / path, x, SR)
    assert main(["eval", "--clean", str(tmp_path / "clean"), "--enhanced", str(tmp_path / "enh")]) == 2
    assert ("by relative path; several files stand for y.wav (enhanced: y.flac, y.ogg): keep one"
            in capsys.readouterr().err)


def test_audio_beyond_or_clipped_at_full_scale_is_noted(folders):
    # was: an enhanced float file peaking at 4.03 and one hard-clipped at +-1 scored without a word
    dirs, _ = folders
    a, _ = sf.read(dirs["enhanced"] / "a.wav", dtype="float32")
    a = 4.0 * a / np.abs(a).max()
    sf.write(dirs["enhanced"] / "a.wav", a, SR, subtype="FLOAT")
    b, _ = sf.read(dirs["enhanced"] / "spk1" / "b.wav", dtype="float32")
    sf.write(dirs["enhanced"] / "spk1" / "b.wav", np.clip(8 * b, -1, 1), SR, subtype="PCM_16")
    notes = {f["file"]: f["notes"] for f in evaluate_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"])["files"]}
    over = int((np.abs(a) > 1).sum())
    assert notes["a.wav"] == [f"enhanced peaks at 4.00 (+12.0 dBFS), beyond full scale: {over} sample(s) over 1.0 "
                              f"would clip as PCM or when played"]
    (said,) = notes["spk1/b.wav"]
    assert said.startswith("enhanced looks clipped: ") and " sample(s) at full scale, up to " in said
    assert notes["spk1/deep/c.wav"] == []  # speech below full scale: nothing to say


def test_loud_audio_that_is_not_clipped_gets_no_clipping_note():
    """A note for every peak-normalised tone buried the notes that matter: a 50 Hz sine at 0 dBFS
    touched full scale 3 samples running, and +1, -1, +1 counted as a run."""
    from audioae.evaluate import _note_levels

    t = np.arange(48000) / 48000
    sine = np.sin(2 * np.pi * 50 * t).astype(np.float32)[None]  # [1, T]
    sine /= np.abs(sine).max()
    pcm = np.round(sine * 32767) / 32768  # as a 16-bit file reads back
    alternating = np.tile(np.float32([1, -1]), 50)[None]  # [1, 100]
    clipped = np.clip(3 * sine, -1, 1)  # [1, T]
    for wav in (sine, pcm, alternating):
        notes = []
        _note_levels(wav, "enhanced", notes)
        assert notes == [], notes
    notes = []
    _note_levels(clipped, "enhanced", notes)
    assert len(notes) == 1 and notes[0].startswith("enhanced looks clipped: "), notes


def test_a_note_many_files_share_is_one_line_of_the_table():
    """A 48 kHz set printed its PESQ-rate note once per pair: a thousand lines."""
    from audioae.evaluate import _note_lines

    files = [{"file": f"{i}.wav", "notes": ["PESQ on the pair resampled"]} for i in range(3)]
    files[1]["notes"].append("enhanced looks clipped")
    assert _note_lines(files) == ["note: 3 files (0.wav, ...): PESQ on the pair resampled",
                                  "note: 1.wav: enhanced looks clipped"]


def test_a_pair_of_empty_files_is_a_note_not_an_error(folders, capsys):
    """Was: denoise makes an empty output of an empty recording and exits 0, and eval of the two
    said "error: e.wav: the audio is empty (0 samples)", exit 1. One empty side is still an error."""
    dirs, _ = folders
    for k in ("clean", "noisy", "enhanced"):
        sf.write(dirs[k] / "e.wav", np.zeros((0, 1), np.float32), SR, subtype="PCM_16")
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"], dirs["noisy"])
    assert (rep["paired"], rep["read"], rep["scored"], rep["empty"], rep["errors"]) == (4, 4, 3, 1, [])
    e = next(f for f in rep["files"] if f["file"] == "e.wav")
    assert e["empty"] and all(e[m] is None for m in ("si_sdr", "si_sdr_i", "pesq", "stoi"))
    assert main(["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]), "--no-progress"]) == 0
    assert "note: e.wav: clean and enhanced are both empty (0 samples): nothing to score" in capsys.readouterr().out
    # an empty pair alone: nothing scored, and nothing wrong
    only = {k: dirs[k].parent / f"only_{k}" for k in ("clean", "enhanced")}
    for d in only.values():
        d.mkdir()
        sf.write(d / "e.wav", np.zeros((0, 1), np.float32), SR, subtype="PCM_16")
    assert main(["eval", "--clean", str(only["clean"]), "--enhanced", str(only["enhanced"]), "--no-progress"]) == 0
    sf.write(dirs["enhanced"] / "e.wav", np.zeros(SR, np.float32) + 0.1, SR)  # one side empty: an error still
    rep = evaluate_folders(dirs["clean"], dirs["enhanced"])
    assert [err["error"] for err in rep["errors"]] == [f"{dirs['clean'] / 'e.wav'}: the audio is empty (0 samples)"]


def test_a_run_where_no_pair_could_be_read_says_nothing_was_scored(tmp_path, capsys):
    """The empty-pair mend counted on files read: with none read (an unreadable enhanced file) the
    "no pair could be scored" line was lost; the exit code was 1 either way."""
    clean, enhanced = tmp_path / "clean", tmp_path / "enhanced"
    clean.mkdir()
    enhanced.mkdir()
    sf.write(clean / "a.wav", speech_like(np.random.default_rng(0), 1.0, 16000), 16000)
    (enhanced / "a.wav").write_text("not audio")
    assert main(["eval", "--clean", str(clean), "--enhanced", str(enhanced)]) == 1
    assert "audioae eval: no pair could be scored (0 of 1)" in capsys.readouterr().err


@pytest.mark.parametrize("with_noisy", [False, True])
def test_the_means_name_every_metric_even_when_no_pair_could_be_read(tmp_path, capsys, with_noisy):
    """docs/batch.md: one key per metric, null where no file scored it (si_sdr_i with --noisy);
    with no pair read, ``mean`` and ``mean_of`` were ``{}``."""
    dirs = {k: tmp_path / k for k in ("clean", "enhanced", "noisy")}
    for d in dirs.values():
        d.mkdir()
    x = speech_like(np.random.default_rng(0), 1.0, SR)
    sf.write(dirs["clean"] / "a.wav", x, SR)
    sf.write(dirs["noisy"] / "a.wav", x, SR)
    (dirs["enhanced"] / "a.wav").write_text("not audio")
    args = ["eval", "--clean", str(dirs["clean"]), "--enhanced", str(dirs["enhanced"]), "--json", "-", "--no-progress"]
    assert main(args + (["--noisy", str(dirs["noisy"])] if with_noisy else [])) == 1
    rep = json.loads(capsys.readouterr().out)
    names = ["si_sdr", "si_sdr_i", "pesq", "stoi"] if with_noisy else ["si_sdr", "pesq", "stoi"]
    assert (rep["read"], rep["mean"], rep["mean_of"]) == (0, dict.fromkeys(names), dict.fromkeys(names, 0))
    table = format_table(rep)  # no empty table, and no "means leave out" line over nothing
    assert table.startswith("0 of 1 pairs scored\nerror: ") and "leave out" not in table, table


def test_si_sdr_does_not_depend_on_the_level_of_the_pair():
    """Scaling both signals by g leaves the score alone. With eps = 1e-8 * min(energy, 1), an
    identical pair scored 80.0 to 120.8 dB by its level, and an error 100 dB down 79.96 dB at a
    gain of 1e-3 but 99.99 dB at 0.5."""
    from audioae.metrics import _eps_for, si_sdr_score

    rng = np.random.default_rng(5)
    clean = speech_like(rng, 1.0, SR).astype(np.float64)
    err = noise(rng, 1.0, SR, "white").astype(np.float64)
    err *= 1e-5 * np.sqrt((clean**2).sum() / (err**2).sum())  # -100 dB
    est = at_snr(clean.astype(np.float32), noise(rng, 1.0, SR, "pink"), 10.0).astype(np.float64)
    gains = (1e-5, 1e-3, 0.5, 1.0, 40.0)
    for e, want in ((clean, 100.0), (clean + err, 96.99), (est, si_sdr(est, clean))):
        scores = [si_sdr_score(g * e, g * clean, SR) for g in gains]
        assert max(scores) - min(scores) < 1e-6, scores
        assert scores[0] == pytest.approx(want, abs=0.01), scores
    assert si_sdr(est, clean) == pytest.approx(10.0, abs=0.3)  # a real pair is far below the ceiling
    zeros = np.zeros(SR)
    # Silence: si_sdr_score refuses it before scoring (NaN and a reason). Called directly, si_sdr only
    # has to stay finite (no inf or NaN into a mean): the numbers mean nothing (0.0 dB for a silent
    # estimate, about -3096 dB for clean against a silent reference).
    for a, b in ((zeros, zeros), (zeros, clean), (clean, zeros)):
        assert math.isfinite(si_sdr(a, b, eps=_eps_for(b, a)))
        assert math.isnan(si_sdr_score(a, b, SR))
