"""A process that dies on a file (a codec library's SIGSEGV) costs that file only.

The deaths here are real: the test sends SIGSEGV, the signal a crashing decoder raises, to the
process the job's own in-flight marker says is on the file. Everything runs the real CLI in child
processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioae.audio import header_shapes
from audioae.batch import DenoiseOptions, FileTask, plan_tasks, read_manifest, run_denoise
from audioae.batch.job import header_seconds
from audioae.batch.journal import DIED, JOURNAL_NAME, Journal
from audioae.batch.overwrite import OVERWRITE_NAME

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSEGV") or os.name != "posix", reason="POSIX signals")


def _write_inputs(src: Path, seconds: dict[str, float]) -> None:
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, sec in seconds.items():
        sf.write(src / name, (0.1 * rng.standard_normal(int(16000 * sec))).astype(np.float32), 16000, subtype="PCM_16")


# Loaded by every Python process of a job the tests start (the job, its workers, an isolated
# child): each read of a file named SLOW_FILE waits 0.2 s, so that b.wav (300 s, 30 blocks) is
# still in flight whenever a test signals the job on seeing its marker. The tests assumed the
# work outlasted the signal; under load (2 cores shared) a job finished b.wav first.
SLOW_READS = """
import os
import soundfile

_read = soundfile.SoundFile.read


def read(self, *args, **kwargs):
    if os.path.basename(str(self.name)) == os.environ["AUDIOAE_TEST_SLOW_FILE"]:
        import time

        time.sleep(0.2)
    return _read(self, *args, **kwargs)


soundfile.SoundFile.read = read
"""


def _job_env(src: Path, slow: str = "b.wav") -> dict[str, str]:
    """The environment of a job a test starts on ``src``: one thread, and reads of ``slow`` slowed."""
    site = src.parent / "slow-reads"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_READS)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "AUDIOAE_TEST_SLOW_FILE": slow}


def _cli(src: Path, out: Path, causal_ckpt: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out), "--model", str(causal_ckpt),
           "--no-progress", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_job_env(src))


def _wait_for(found, proc: subprocess.Popen, what: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        hit = found()
        if hit:
            return hit
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"never saw {what}; exit {proc.poll()}: {proc.communicate()[1][-2000:]}")


def _text(path: Path) -> str:
    """``path``'s text, or "" while it is not there."""
    try:
        return path.read_text()
    except OSError:
        return ""


def _started(out: Path, name: str, other_than: tuple[int, ...] = ()):
    """The pid of the process the job's in-flight marker says is on ``name`` (not one of
    ``other_than``), once there is one."""
    def find():
        for marker in (out / JOURNAL_NAME).glob("*.json"):
            try:
                rec = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):  # being written
                continue
            if rec.get("input", "").endswith(name) and rec.get("pid") not in (None, *other_than):
                return rec["pid"]
        return None
    return find


def _statuses(out: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}


def test_a_file_the_job_died_on_is_isolated_then_reported_and_later_completed(tmp_path, causal_ckpt):
    src, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    _write_inputs(src, {"a.wav": 1.0, "b.wav": 300.0, "c.wav": 1.0})

    # 1. The job process dies on b (as on a decoder's SIGSEGV): no record of b but its marker.
    proc = _cli(src, out, causal_ckpt)
    pid = _wait_for(_started(out, "b.wav"), proc, "b.wav's in-flight marker")
    assert pid == proc.pid  # the in-process engine: the job itself is on the file
    os.kill(pid, signal.SIGSEGV)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in err and "batch" in err, err[-2000:]  # faulthandler's stack
    assert (out / "a.wav").is_file() and not (out / "b.wav").exists()

    # 2. The rerun denoises b alone in a child process; that child dies too: b is reported, c is done.
    proc = _cli(src, out, causal_ckpt)
    child = _wait_for(_started(out, "b.wav", other_than=(pid, proc.pid)), proc, "b.wav's isolated child process")
    os.kill(child, signal.SIGSEGV)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]  # some file failed; the job itself finished
    rows = _statuses(out)
    assert rows["c.wav"]["status"] == "ok" and rows["a.wav"]["status"] == "skipped"
    assert rows["b.wav"]["status"] == "error" and "killed by SIGSEGV" in rows["b.wav"]["error"], rows["b.wav"]
    assert "a process died on this file before" in err
    assert not (out / "b.wav").exists() and not list(out.glob(".*.part"))
    assert len(list((out / JOURNAL_NAME).iterdir())) == 1  # b stays a suspect for the next run

    # 3. The next run isolates b again; nothing kills it now, and its output is the in-process one.
    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (s["ok"], s["skipped"], s["error"]) == (1, 2, 0)
    assert not (out / JOURNAL_NAME).exists()  # nothing left to isolate
    run_denoise([src / "b.wav"], ref, DenoiseOptions(model=str(causal_ckpt), progress=False))
    np.testing.assert_array_equal(sf.read(out / "b.wav")[0], sf.read(ref / "b.wav")[0])


def headers_crashing_on_crash_wav(paths: list[str]) -> list:
    """``header_shapes``, but its process dies (a real SIGSEGV) on a file named crash.wav, as it
    would in libsndfile on a header it mishandles. Module level: the header process imports it."""
    if any(Path(p).name == "crash.wav" for p in paths):
        os.kill(os.getpid(), signal.SIGSEGV)
    return header_shapes(paths)


def test_a_header_that_kills_its_reader_costs_the_bar_one_file_and_that_file_is_isolated(tmp_path, causal_ckpt,
                                                                                           caplog):
    """The bar reads every header before any file is marked in flight: a header that crashes
    libsndfile would end the job, every run. Read in a process of its own, it costs the bar that
    file's seconds, and the file becomes a suspect, denoised alone (here it is innocent there)."""
    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 1.0, "crash.wav": 1.5, "c.wav": 2.0})
    tasks = plan_tasks([src], out)
    out.mkdir()  # as the job makes it before its bar
    journal = Journal(out / JOURNAL_NAME)
    seconds = header_seconds(tasks, journal, read=headers_crashing_on_crash_wav)
    assert {Path(k).name: v for k, v in seconds.items()} == {"a.wav": 1.0, "crash.wav": 0.0, "c.wav": 2.0}
    assert [Path(t.input).name for t in tasks if journal.why(t.input)] == ["crash.wav"]
    assert journal.why(str(src / "crash.wav")) == DIED
    assert "the process reading its header was killed by SIGSEGV" in caplog.text

    summary = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert summary["ok"] == 3 and summary["errors"] == []
    assert "crash.wav: a process died on this file before; denoising it in a process of its own" in caplog.text
    assert not (out / JOURNAL_NAME).exists()  # innocent after all: no suspect left


def test_a_worker_that_dies_costs_no_other_file(tmp_path, causal_ckpt):
    """With --workers, a dead worker used to break the pool and fail every file still queued."""
    src, out = tmp_path / "in", tmp_path / "out"
    names = {"a.wav": 1.0, "b.wav": 300.0, "c.wav": 1.0, "d.wav": 1.0, "e.wav": 1.0}
    _write_inputs(src, names)
    proc = _cli(src, out, causal_ckpt, "--workers", "2")
    worker = _wait_for(_started(out, "b.wav"), proc, "b.wav's in-flight marker")
    assert worker != proc.pid  # a pool worker is on it
    os.kill(worker, signal.SIGSEGV)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]  # b was innocent: alone in a process of its own it completes
    assert "a worker process died while on" in err
    rows = _statuses(out)
    assert {n: r["status"] for n, r in rows.items()} == dict.fromkeys(names, "ok")
    for name, sec in names.items():
        assert sf.info(out / name).frames == int(16000 * sec)
        st = (src / name).stat()  # each engine path records the input it opened (b's: its isolated child)
        assert (rows[name]["input_size"], rows[name]["input_mtime_ns"]) == (st.st_size, st.st_mtime_ns), rows[name]
    assert not (out / JOURNAL_NAME).exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (every write: no space left)")
def test_a_full_disk_stops_the_job_with_the_manifest_named_not_a_bare_errno(tmp_path):
    from audioae.batch import FileResult
    from audioae.batch.manifest import ManifestWriter

    writer = ManifestWriter("/dev/full")  # what a full disk answers every write with
    with pytest.raises(OSError, match=r"/dev/full: cannot record a\.wav's result \(No space left on device\)"):
        writer.write(FileResult(str(tmp_path / "a.wav"), str(tmp_path / "out" / "a.wav"), "ok"))
    writer.close()  # the unwritten line's error is the one reported, not a second one here


def test_a_marker_that_cannot_be_written_costs_the_protection_not_the_job(tmp_path, caplog):
    from audioae.batch.journal import Journal

    (tmp_path / "taken").write_text("a file where the marker folder would go")
    journal = Journal(tmp_path / "taken" / JOURNAL_NAME)
    journal.started("/x/a.wav")
    journal.started("/x/b.wav")
    assert journal.why("/x/a.wav") is None
    assert caplog.text.count("cannot mark files in flight") == 1  # once per job, not per file


def test_ctrl_c_makes_no_file_a_suspect(tmp_path, causal_ckpt):
    """Ctrl-C reaches the job and its workers (one process group); the files they were on are
    interrupted, not crashed on, and a rerun need not isolate them."""
    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 1.0, "b.wav": 300.0, "c.wav": 1.0})
    cmd = [sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out), "--model", str(causal_ckpt),
           "--no-progress", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=_job_env(src))
    _wait_for(_started(out, "b.wav"), proc, "b.wav's in-flight marker")
    # and a.wav recorded: a job stopped before any line has no manifest to name (it is removed, empty)
    _wait_for(lambda: "a.wav" in _text(out / "audioae-manifest.jsonl"), proc, "a.wav's manifest line")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert (f"interrupted: Ctrl-C; the outputs finished so far are complete and recorded in "
            f"{out / 'audioae-manifest.jsonl'}; run the same command again to go on: the files finished are "
            f"skipped") in err, err[-2000:]
    left = [p.read_text() for p in (out / JOURNAL_NAME).glob("*")]
    assert not left, f"interrupted files were left marked as suspects: {left}\n{err[-3000:]}"


@pytest.mark.parametrize("gap", [0.01, 0.05, 0.1])
def test_ctrl_c_pressed_twice_leaves_no_suspect_nor_part_file(tmp_path, causal_ckpt, gap):
    """Ctrl-C pressed twice quickly, with workers on files. Was: the second one landed in the pool's
    stop, which then never removed the files' in-flight markers nor their .part files; the rerun
    took them for files a process had died on (each isolated, a model load each)."""
    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 1.0, "b.wav": 300.0, "c.wav": 300.0, "d.wav": 1.0})
    cmd = [sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out), "--model", str(causal_ckpt),
           "--no-progress", "--workers", "2"]
    env = {**_job_env(src), "AUDIOAE_TEST_SLOW_FILE": "b.wav"}
    (src.parent / "slow-reads" / "sitecustomize.py").write_text(SLOW_READS.replace(
        '== os.environ["AUDIOAE_TEST_SLOW_FILE"]', 'in ("b.wav", "c.wav")'))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    _wait_for(_started(out, "b.wav"), proc, "b.wav's in-flight marker")
    _wait_for(_started(out, "c.wav"), proc, "c.wav's in-flight marker")  # both workers busy, each on a slow file
    _wait_for(lambda: list(out.glob(".*.part")), proc, "a .part file being written")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    time.sleep(gap)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)  # again, as people press it
    _, err = proc.communicate(timeout=120)
    # A second press once the job has ended, as Python exits, ends it at once (audioae.cli.run): 130,
    # or killed by SIGINT itself when it lands after Python has put the system's handler back at its
    # very end (a shell reports both as 130); never a KeyboardInterrupt traceback from an exit handler.
    assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT), err[-3000:]
    assert "interrupted: Ctrl-C" in err and "Traceback" not in err, err[-3000:]
    left = [p.name for p in (out / JOURNAL_NAME).glob("*")] if (out / JOURNAL_NAME).exists() else []
    assert not left, f"interrupted files were left marked as suspects: {left}\n{err[-3000:]}"
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part")), err[-3000:]


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited: no such process, or a zombie (where nothing reaps orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_job_stopped_by_a_signal_to_it_alone_leaves_no_worker_writing(tmp_path, causal_ckpt, sig):
    """kill PID (SIGTERM) or kill -9 reach the job alone, not its workers: its default SIGTERM
    ended it at once, and its workers went on, unlocked, and renamed b.wav's output into place
    seconds later (under a rerun too). SIGTERM now ends a job as Ctrl-C does (exit 143, the files
    under way marked interrupted); a worker whose job is gone exits at once."""
    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 1.0, "b.wav": 300.0, "c.wav": 1.0})
    proc = _cli(src, out, causal_ckpt, "--workers", "2")
    worker = _wait_for(_started(out, "b.wav"), proc, "b.wav's in-flight marker")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig), err[-2000:]
    deadline = time.monotonic() + 120  # to wait for its exit; an orphan went on and finished b.wav in seconds
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(worker), "b.wav's worker outlived its job"
    assert not (out / "b.wav").exists(), "a worker of the stopped job finished b.wav"
    if sig == signal.SIGTERM:
        assert "interrupted" in err and not list((out / JOURNAL_NAME).glob("*")), err[-2000:]


# Runs the real CLI, but the job's process SIGKILLs itself at the moment it would append the
# manifest line of NAME's finished output: after the output's rename, before its record, the
# window a kill (or a crash) of the job can fall in. argv: NAME, then the CLI's arguments.
KILL_BEFORE_RECORDING = """
import os, signal, sys
from audioae.batch.manifest import ManifestWriter

write = ManifestWriter.write

def write_or_die(self, result):
    if result.status == "ok" and os.path.basename(result.input) == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, result)

ManifestWriter.write = write_or_die
from audioae.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "pool"])
def test_a_job_killed_between_an_outputs_rename_and_its_manifest_line_records_what_made_it(tmp_path, causal_ckpt,
                                                                                            workers):
    """The rerun used to find a.wav's output, have no line for it, and record it "skipped" with
    empty settings: the manifest no longer said what made it, and a rerun with another strength
    kept it as it was instead of being refused. (In a pool the worker renames, the job records.)"""
    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 1.0, "b.wav": 1.0, "c.wav": 1.0})
    cmd = [sys.executable, "-c", KILL_BEFORE_RECORDING, "a.wav", "denoise", str(src), "-o", str(out),
           "--model", str(causal_ckpt), "--strength", "0.5", "--no-progress", "--workers", str(workers)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert sf.info(out / "a.wav").frames == 16000  # renamed into place, complete
    assert "a.wav" not in _statuses(out)  # and not recorded

    refused = r"\d output\(s\) made with other settings: .* at strength 0\.5 \(e\.g\. a\.wav\)"
    with pytest.raises(ValueError, match=refused):
        run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), strength=1.0, progress=False))

    s = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), strength=0.5, progress=False))
    assert s["error"] == 0 and s["skipped"] >= 1 and s["skipped"] + s["ok"] == 3  # a pool may have done b too
    rows = _statuses(out)
    sha = hashlib.sha256(causal_ckpt.read_bytes()).hexdigest()
    for name in ("a.wav", "b.wav", "c.wav"):
        assert (rows[name]["model"], rows[name]["sha256"], rows[name]["strength"]) == (str(causal_ckpt), sha, 0.5), \
            rows[name]
    assert rows["a.wav"]["status"] == "skipped"
    assert not (out / JOURNAL_NAME).exists()  # its marker has served, and is gone


def test_a_job_killed_before_an_overwrites_rename_leaves_the_earlier_settings_recorded(tmp_path, causal_ckpt):
    """A marker says which file held the output's name when its file started: an ``--overwrite``
    killed before its rename left the earlier output, and the manifest must go on saying what
    made that one, not what the killed run meant to make."""
    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 1.0, "b.wav": 300.0})
    run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), strength=1.0, progress=False))
    proc = _cli(src, out, causal_ckpt, "--overwrite", "--strength", "0.5")
    _wait_for(_started(out, "b.wav"), proc, "b.wav's in-flight marker")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _statuses(out)["a.wav"]["strength"] == 0.5  # redone and recorded before b started
    with pytest.raises(ValueError, match=r"1 output\(s\) made with other settings: .* at strength 1 \(e\.g\. b\.wav\)"):
        run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), strength=0.5, progress=False))
    assert _statuses(out)["b.wav"]["strength"] == 1.0


def test_a_stopped_overwrite_goes_on_where_it_stopped_and_a_new_one_redoes_everything(tmp_path, causal_ckpt,
                                                                                        caplog):
    """A rerun of an interrupted --overwrite redid every file (hours, for a big folder), and a run
    without it kept the older outputs it had not reached. The same --overwrite again now keeps
    what the stopped one remade, from inputs unchanged since, and redoes the rest; one with other
    settings, or one after a run that finished, redoes everything."""
    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 1.0, "a2.wav": 1.0, "b.wav": 300.0, "c.wav": 1.0})  # done in that order
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    assert run_denoise([src], out, opts)["ok"] == 4  # the older outputs, at strength 1

    def stopped_on_b(strength: str) -> str:
        proc = _cli(src, out, causal_ckpt, "--overwrite", "--strength", strength)
        _wait_for(_started(out, "b.wav"), proc, "b.wav's in-flight marker")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
        return err

    err = stopped_on_b("0.5")
    assert ("run the same command again to go on: the outputs this --overwrite remade are kept, the rest redone "
            "(without --overwrite, the older outputs not yet redone stay as they were)") in err, err[-2000:]
    rows = _statuses(out)
    assert [rows[n]["strength"] for n in ("a.wav", "a2.wav", "b.wav", "c.wav")] == [0.5, 0.5, 1.0, 1.0]
    first = rows["a.wav"]["overwrite_run"]
    assert first and (out / OVERWRITE_NAME).is_file()

    stopped_on_b("0.7")  # other settings: a new --overwrite, which redoes a and a2 again
    rows = _statuses(out)
    assert [rows[n]["strength"] for n in ("a.wav", "a2.wav", "b.wav", "c.wav")] == [0.7, 0.7, 1.0, 1.0]
    assert rows["a.wav"]["status"] == "ok" and rows["a.wav"]["overwrite_run"] not in ("", first)
    made_a = _stamp(out / "a.wav")
    sf.write(src / "a2.wav", np.zeros(24000, np.float32), 16000, subtype="PCM_16")  # a new take: its output is redone

    again = dataclasses.replace(opts, strength=0.7, overwrite=True)  # the same command, to its end
    s = run_denoise([src], out, again)
    assert (s["skipped"], s["ok"], s["error"]) == (1, 3, 0), s
    assert _stamp(out / "a.wav") == made_a  # kept as the stopped run made it
    assert ("which was stopped before it finished: the 1 output(s) it made (e.g. a.wav) are kept, the other files "
            f"redone; to redo every file, delete {out / OVERWRITE_NAME} and run again") in caplog.text
    assert sf.info(out / "a2.wav").frames == 24000
    rows = _statuses(out)
    assert rows["a.wav"]["status"] == "skipped" and {r["strength"] for r in rows.values()} == {0.7}
    assert len({r["overwrite_run"] for r in rows.values()}) == 1  # one run, in two jobs
    assert not (out / OVERWRITE_NAME).exists()  # it finished

    caplog.clear()
    s = run_denoise([src], out, again)  # after a run that finished: everything again
    assert (s["skipped"], s["ok"]) == (0, 4), s
    assert "going on with" not in caplog.text
    assert _stamp(out / "a.wav") != made_a


def test_a_stopped_overwrite_into_a_relative_folder_keeps_an_output_recorded_from_its_marker(
        tmp_path, causal_ckpt, monkeypatch):
    """With a relative ``-o``, the line recorded from a finished file's marker named its output as
    typed ("out/a.wav"), the tasks their resolved paths: the resumed --overwrite found no line of
    its run for a.wav and redid it."""
    from audioae.batch.manifest import FileResult, MadeWith
    from audioae.batch.overwrite import begin, overwrite_run

    monkeypatch.chdir(tmp_path)
    src, out = Path("in"), Path("out")
    _write_inputs(src, {"a.wav": 1.0, "b.wav": 1.0})
    opts = DenoiseOptions(model=str(causal_ckpt), progress=False)
    assert run_denoise([src], out, opts)["ok"] == 2
    line = _statuses(out)["a.wav"]
    now = MadeWith(line["model"], line["sha256"], line["strength"])
    # The stopped --overwrite, as it was killed: its record, and a.wav remade (renamed into place
    # after its marker was written) with no manifest line.
    run, _ = overwrite_run(out, now)
    begin(out, run)
    journal = Journal(out / JOURNAL_NAME, now, overwrite_run=run.id)
    a_in, a_out = line["input"], line["output"]
    journal.started(a_in, output=a_out)
    shutil.copy(a_out, a_out + ".part")
    os.replace(a_out + ".part", a_out)
    st = os.stat(a_in)
    journal.done(FileResult(a_in, a_out, "ok", seconds=0.1, duration=1.0, input_size=st.st_size,
                            input_mtime_ns=st.st_mtime_ns))
    made_a = _stamp(out / "a.wav")

    s = run_denoise([src], out, dataclasses.replace(opts, overwrite=True))
    assert (s["skipped"], s["ok"], s["error"]) == (1, 1, 0), s
    assert _stamp(out / "a.wav") == made_a
    rows = _statuses(out)
    assert rows["a.wav"]["output"] == a_out == str((tmp_path / "out" / "a.wav").resolve())
    assert {r["overwrite_run"] for r in rows.values()} == {run.id}


def _stamp(path: Path) -> tuple[int, int]:
    """A file's inode and modification time: another when an output is rewritten (a rename into place)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_a_marker_whose_output_was_renamed_into_place_names_a_finished_file_not_a_suspect(tmp_path):
    from audioae.batch.manifest import MadeWith

    out = tmp_path / "out"
    out.mkdir()
    made = MadeWith("m.safetensors", "ab" * 32, 0.5)
    journal = Journal(out / JOURNAL_NAME, made)
    (out / "old.wav").write_bytes(b"an earlier run's output")
    journal.started("/in/new.wav", output=str(out / "new.wav"))
    journal.started("/in/old.wav", output=str(out / "old.wav"))
    assert journal.why("/in/new.wav") == journal.why("/in/old.wav") == DIED  # in flight: suspects if left
    assert list(journal.finished()) == []
    for name in ("new.wav", "old.wav"):  # as _PartWriter.commit does
        (out / f".{name}.part").write_bytes(b"this run's output")
        os.replace(out / f".{name}.part", out / name)
    assert journal.why("/in/new.wav") is None and journal.why("/in/old.wav") is None  # done: nothing to isolate
    assert sorted(journal.finished()) == [("/in/new.wav", str(out / "new.wav"), made),
                                          ("/in/old.wav", str(out / "old.wav"), made)]
    journal.interrupted("/in/new.wav")  # Ctrl-C after the rename: the marker stays, to be recorded
    assert [src for src, _, _ in journal.finished()] == ["/in/new.wav", "/in/old.wav"]
    journal.ended("/in/new.wav")
    assert [src for src, _, _ in journal.finished()] == ["/in/old.wav"]


def test_a_finished_files_marker_keeps_what_its_manifest_line_must_say(tmp_path):
    """A line recorded from a marker (the job was stopped before the file's result reached it: a
    Ray batch's results travel together) was "ok" with no warning, no length and no --overwrite
    run: the "copy cut short" warning was never seen again, and a resumed --overwrite redid the
    file. The marker now carries the run, and what the engine said once the file was done."""
    from audioae.batch.manifest import FileResult, MadeWith

    out = tmp_path / "out"
    out.mkdir()
    made = MadeWith("m.safetensors", "ab" * 32, 0.5)
    journal = Journal(out / JOURNAL_NAME, made, overwrite_run="run-1")
    for name in ("cut.wav", "plain.wav"):
        journal.started(f"/in/{name}", output=str(out / name))
        (out / f".{name}.part").write_bytes(b"this run's output")
        os.replace(out / f".{name}.part", out / name)
    journal.done(FileResult("/in/cut.wav", str(out / "cut.wav"), "ok", seconds=1.5, duration=2.0,
                            warning="cut.wav: a copy cut short", input_size=100, input_mtime_ns=7))
    assert journal.why("/in/cut.wav") is None  # still a finished file, not a suspect
    got = {Path(r.input).name: r for r in journal.finished_results()}
    assert got["cut.wav"] == FileResult("/in/cut.wav", str(out / "cut.wav"), "ok", "", 1.5, 2.0, "m.safetensors",
                                        "ab" * 32, 0.5, 100, 7, "cut.wav: a copy cut short", "run-1")
    assert (got["plain.wav"].overwrite_run, got["plain.wav"].warning) == ("run-1", "")  # done() not reached


# The real CLI, which gets a real SIGINT as it plans the job: before its output folder or manifest exists.
CTRL_C_WHILE_PLANNING = """
import os, signal, sys
import audioae.batch.job as job

def plan_then_ctrl_c(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return []

job.plan_tasks = plan_then_ctrl_c
from audioae.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_before_the_manifest_exists_says_so_in_words(tmp_path):
    """It printed a bare "interrupted" where the docs promise "interrupted: Ctrl-C"."""
    src = tmp_path / "in"
    _write_inputs(src, {"a.wav": 1.0})
    run = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_PLANNING, "denoise", str(src), "-o",
                          str(tmp_path / "out"), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 128 + signal.SIGINT, run.stderr[-2000:]
    assert run.stderr.rstrip().splitlines()[-1] == "interrupted: Ctrl-C", run.stderr[-2000:]


def _an_overwrites_marker_edited(tmp_path: Path, edit) -> tuple[Path, Journal]:
    """``(out, journal)``: the marker of an ``--overwrite`` of /in/a.wav over an earlier run's
    output, its record changed by ``edit(rec)`` as another reader or an older version would see it."""
    from audioae.batch.manifest import MadeWith

    out = tmp_path / "out"
    out.mkdir()
    journal = Journal(out / JOURNAL_NAME, MadeWith("m.safetensors", "ab" * 32, 0.5))
    (out / "a.wav").write_bytes(b"an earlier run's output")
    journal.started("/in/a.wav", output=str(out / "a.wav"))
    marker = next((out / JOURNAL_NAME).glob("*.json"))
    rec = json.loads(marker.read_text())
    edit(rec)
    marker.write_text(json.dumps(rec))
    return out, journal


def test_a_marker_read_on_another_machine_still_names_its_suspect(tmp_path):
    """A Ray actor and the driver, or a run and its rerun after a reboot, see one NFS file under
    different device numbers (each mount gets its own). Was: an ``--overwrite`` marker whose
    earlier output was still in place read as a finished file there: its suspect went unisolated
    and the earlier output was recorded "ok", as made by the new settings."""

    def through_another_mount(rec: dict) -> None:
        rec["replaces"][0] += 1  # the same inode, another device number

    out, journal = _an_overwrites_marker_edited(tmp_path, through_another_mount)
    assert journal.why("/in/a.wav") == DIED
    assert list(journal.finished()) == []
    (out / ".a.wav.part").write_bytes(b"this run's output")
    os.replace(out / ".a.wav.part", out / "a.wav")
    assert journal.why("/in/a.wav") is None and [src for src, _, _ in journal.finished()] == ["/in/a.wav"]


def test_the_markers_of_a_copied_output_folder_name_the_copys_files_and_still_know_a_suspect(tmp_path):
    """Markers stored absolute output paths and told a finished output by its inode alone: in a
    copy of the folder (``cp -a``, ``rsync -a``: new inodes, same sizes and times) an interrupted
    ``--overwrite``'s earlier output read as finished, recorded as made by the new settings."""
    from audioae.batch.manifest import MadeWith

    out, copy = tmp_path / "out", tmp_path / "copy"
    out.mkdir()
    made = MadeWith("m.safetensors", "ab" * 32, 0.5)
    (out / "a.wav").write_bytes(b"an earlier run's output")
    Journal(out / JOURNAL_NAME, made).started("/in/a.wav", output=str(out / "a.wav"))
    shutil.copytree(out, copy)  # copy2: times kept, inodes new
    assert os.stat(copy / "a.wav").st_ino != os.stat(out / "a.wav").st_ino
    journal = Journal(copy / JOURNAL_NAME, made)
    assert journal.why("/in/a.wav") == DIED and list(journal.finished()) == []
    (copy / ".a.wav.part").write_bytes(b"this run's output")
    os.replace(copy / ".a.wav.part", copy / "a.wav")
    assert journal.why("/in/a.wav") is None
    assert list(journal.finished()) == [("/in/a.wav", str(copy / "a.wav"), made)]  # the copy's file, not out's
    assert Journal(out / JOURNAL_NAME, made).why("/in/a.wav") == DIED  # the original is untouched


def test_a_stopped_ray_job_keeps_an_earlier_jobs_suspect_it_never_reached(tmp_path):
    """A Ray job stopped on purpose flagged every unreported file's marker as stopped, the marker
    an earlier job left on dying too: the next local run denoised that file in its own process
    and could die on it again."""
    from audioae.batch.manifest import MadeWith
    from audioae.batch.ray_engine import _forget_stopped

    out = tmp_path / "out"
    out.mkdir()
    journal = Journal(out / JOURNAL_NAME, MadeWith("m.safetensors", "ab" * 32, 1.0))
    tasks = [FileTask(f"/in/{n}", str(out / n), n) for n in ("died.wav", "running.wav")]
    journal.started(tasks[0].input, output=tasks[0].output)  # an earlier job died on it
    suspects = {t.input for t in tasks if journal.why(t.input)}  # as run_ray takes them, before its actors
    journal.started(tasks[1].input, output=tasks[1].output)  # an actor was on it when the job was stopped
    _forget_stopped(journal, tasks, reported=set(), suspects=suspects)
    assert journal.why(tasks[0].input) == DIED
    assert journal.why(tasks[1].input) is None


def test_a_rerun_removes_the_stopped_markers_of_inputs_gone_since_and_keeps_the_rest(tmp_path, causal_ckpt):
    """A stopped Ray job flags the markers of the files its actors were on; a rerun marks anew only
    the files it plans, so the flagged marker of an input deleted in between stayed forever. Gone
    now; kept: the flagged marker of a file still there (a job on other inputs may plan it) and a
    suspect's."""
    from audioae.batch.manifest import MadeWith

    src, other, out = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    _write_inputs(src, {"a.wav": 0.5, "gone.wav": 0.5})
    _write_inputs(other, {"elsewhere.wav": 0.5, "suspect.wav": 0.5})
    made = MadeWith(str(causal_ckpt), hashlib.sha256(causal_ckpt.read_bytes()).hexdigest(), 1.0)
    out.mkdir()
    journal = Journal(out / JOURNAL_NAME, made)
    for path in (src / "gone.wav", other / "elsewhere.wav", other / "suspect.wav"):
        journal.started(str(path), output=str(out / path.name))
    for path in (src / "gone.wav", other / "elsewhere.wav"):  # as a stopped Ray job leaves them
        journal.stopped(str(path))
    (src / "gone.wav").unlink()
    summary = run_denoise([src], out, DenoiseOptions(model=str(causal_ckpt), progress=False))
    assert (summary["ok"], summary["error"]) == (1, 0), summary
    left = {json.loads(m.read_text())["input"] for m in (out / JOURNAL_NAME).glob("*.json")}
    assert left == {str(other / "elsewhere.wav"), str(other / "suspect.wav")}
    assert journal.why(str(other / "suspect.wav")) == DIED and journal.why(str(other / "elsewhere.wav")) is None


def test_a_marker_written_before_sizes_and_times_were_kept_is_read_by_its_inode(tmp_path):
    def as_written_until_2026_12_07(rec: dict) -> None:  # an absolute path, [st_dev, st_ino]
        rec.update(output=str(tmp_path / "out" / "a.wav"), replaces=rec["replaces"][:2])

    out, journal = _an_overwrites_marker_edited(tmp_path, as_written_until_2026_12_07)
    assert journal.why("/in/a.wav") == DIED
    (out / ".a.wav.part").write_bytes(b"this run's output")
    os.replace(out / ".a.wav.part", out / "a.wav")
    assert [dst for _, dst, _ in journal.finished()] == [str(out / "a.wav")]


@pytest.mark.parametrize("engine", ["in-process", "pool"])
def test_the_local_engines_note_a_finished_files_result_in_its_marker(tmp_path, engine, causal_ckpt):
    """The local engines, as Ray's actors do: a file finished but not yet recorded (the job killed
    in between) is recorded from its marker with the engine's warning and length, not "ok" alone."""
    from audio_tree import whole_and_cut

    from audioae.batch.isolated import Settings, run_marked
    from audioae.batch.local import _in_pool
    from audioae.batch.manifest import MadeWith
    from audioae.batch.process import BLOCK_SECONDS, FileDenoiser
    from audioae.checkpoint import load_checkpoint

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    whole_and_cut(src, 0.1 * np.sin(np.arange(16000) / 7.0).astype(np.float32), 16000)
    (task,) = [t for t in plan_tasks([src], out) if Path(t.input).name == "cut.wav"]
    out.mkdir()
    model = causal_ckpt
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    journal = Journal(out / JOURNAL_NAME, MadeWith(str(model), sha, 1.0), overwrite_run="run-1")
    settings = Settings(str(model), sha, "cpu", 1.0, 1, BLOCK_SECONDS)
    if engine == "in-process":
        den = FileDenoiser(load_checkpoint(model))
        (result,) = run_marked(den, [(task, None)], settings, journal)
    else:
        (result,) = _in_pool([task], settings, journal, workers=1)
    assert result.status == "ok" and "cut short" in result.warning, result
    (kept,) = journal.finished_results()  # the job "died" before recording it: what a rerun reads
    assert (kept.warning, kept.duration, kept.overwrite_run) == (result.warning, result.duration, "run-1")


def test_a_file_denoised_from_bytes_is_noted_once_with_the_input_as_read(tmp_path, causal_ckpt):
    """A Ray actor noted each finished file in its marker twice: first without the input's size and
    time (a file read as bytes), then again with them. Now once, complete. run_marked itself, in
    this process, without Ray (``tests/test_ray.py`` drives the actors)."""
    from audioae.batch.isolated import Settings, run_marked
    from audioae.batch.manifest import MadeWith
    from audioae.batch.process import BLOCK_SECONDS, FileDenoiser, made_from, source_state
    from audioae.checkpoint import load_checkpoint

    class NotingJournal(Journal):  # the job's journal, keeping each note of a finished file as made
        def __init__(self, *args):
            super().__init__(*args)
            self.notes: list[tuple] = []

        def done(self, result):
            self.notes.append((result.input, result.input_size, result.input_mtime_ns))
            super().done(result)

    src, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(src, {"a.wav": 0.5})
    (task,) = plan_tasks([src], out)
    out.mkdir()
    sha = hashlib.sha256(causal_ckpt.read_bytes()).hexdigest()
    journal = NotingJournal(out / JOURNAL_NAME, MadeWith(str(causal_ckpt), sha, 1.0))
    read = made_from(source_state(task.input))  # what a Ray actor adds to a file it was given as bytes

    def complete(r):
        return dataclasses.replace(r, **read) if r.input_size is None else r

    den = FileDenoiser(load_checkpoint(causal_ckpt))
    settings = Settings(str(causal_ckpt), sha, "cpu", 1.0, 1, BLOCK_SECONDS)
    (result,) = run_marked(den, [(task, Path(task.input).read_bytes())], settings, journal, complete)
    assert result.status == "ok"
    assert journal.notes == [(task.input, read["input_size"], read["input_mtime_ns"])]  # once, complete
    (kept,) = journal.finished_results()
    assert (kept.input_size, kept.input_mtime_ns) == (read["input_size"], read["input_mtime_ns"])
