"""The Ray Data engine (`audioae denoise --engine ray`) against the local engine, on one local Ray."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_tree import outputs, write_tree

from audioae.batch import DenoiseOptions, read_manifest, run_denoise
from audioae.checkpoint import save_checkpoint
from audioae.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray's own internals

ray = pytest.importorskip("ray", reason="Ray is an optional extra, not installed: pip install 'audioae[ray]'")

# (relative path, sample rate, channels, container, subtype, seconds)
TREE = [
    ("top.wav", 16000, 1, "WAV", "PCM_16", 1.0),
    ("sub/stereo.wav", 44100, 2, "WAV", "PCM_24", 1.0),
    ("sub/deeper/low.flac", 22050, 1, "FLAC", "PCM_16", 1.0),
    ("sub/deeper/v.ogg", 16000, 1, "OGG", "VORBIS", 1.0),
    ("float.wav", 16000, 1, "WAV", "FLOAT", 0.8),
]


@pytest.fixture(scope="session")
def ray_local():
    """ONE local Ray for the whole test session (starting one is slow)."""
    # "local": a Ray of its own even when a `ray start --head` cluster runs on this machine (which
    # ray.init would join, and then refuse num_cpus)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def make_tree(root: Path) -> Path:
    write_tree(root, TREE)
    (root / "sub" / "corrupt.flac").write_bytes(b"fLaC but then nothing sensible")
    return root


@pytest.fixture(scope="module")
def job(ray_local, tmp_path_factory):
    """The same tree through the local engine and through Ray."""
    root = tmp_path_factory.mktemp("rayjob")
    torch.manual_seed(0)
    ckpt = root / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    src = make_tree(root / "in")
    local = run_denoise([src], root / "local", DenoiseOptions(model=str(ckpt), progress=False))
    on_ray = run_denoise([src], root / "ray", DenoiseOptions(model=str(ckpt), engine="ray", progress=False))
    return root, ckpt, src, local, on_ray


def assert_same_files(a: Path, b: Path) -> None:
    assert outputs(a) == outputs(b) == {rel for rel, *_ in TREE}
    for rel in outputs(a):
        ia, ib = sf.info(a / rel), sf.info(b / rel)
        assert (ia.samplerate, ia.channels, ia.format, ia.subtype, ia.frames) == \
               (ib.samplerate, ib.channels, ib.format, ib.subtype, ib.frames), rel
        xa, _ = sf.read(a / rel, dtype="float32")
        xb, _ = sf.read(b / rel, dtype="float32")
        np.testing.assert_array_equal(xa, xb, err_msg=rel)
        if ia.format != "OGG" and ia.subtype != "FLOAT":  # Ogg serials and float PEAK chunks vary by run
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_ray_outputs_identical_to_local_and_corrupt_file_reported(job):
    root, _, _, local, on_ray = job
    counts = (len(TREE), 1, 0)  # ok, error, skipped
    assert (on_ray["ok"], on_ray["error"], on_ray["skipped"]) == (local["ok"], local["error"], 0) == counts
    assert_same_files(root / "local", root / "ray")
    recs = {Path(r["input"]).name: r for r in read_manifest(root / "ray" / "audioae-manifest.jsonl")}
    assert len(recs) == len(TREE) + 1
    assert recs["corrupt.flac"]["status"] == "error" and "corrupt.flac" in recs["corrupt.flac"]["error"]
    assert not list((root / "ray").rglob("*.part"))


def test_ray_results_name_the_input_as_it_was_read(job, tmp_path):
    """The read stage's size and mtime of each file it read as bytes reach run_ray's results: they
    came back without, and the job recorded the input as it found it before any work began."""
    from audioae.batch.journal import JOURNAL_NAME, Journal
    from audioae.batch.manifest import MadeWith
    from audioae.batch.plan import plan_tasks
    from audioae.batch.ray_engine import run_ray

    _, ckpt, src, _, _ = job
    data = ckpt.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    todo = [t for t in plan_tasks([src], out) if not t.input.endswith("corrupt.flac")]
    journal = Journal(out / JOURNAL_NAME, MadeWith(str(ckpt), sha, 1.0))
    results = list(run_ray(todo, model_bytes=data, sha256=sha, journal=journal))
    assert sorted(r.input for r in results) == sorted(t.input for t in todo)
    for r in results:
        st = os.stat(r.input)
        assert r.status == "ok" and (r.input_size, r.input_mtime_ns) == (st.st_size, st.st_mtime_ns), r


def _noting_journal(folder: Path, made, notes: Path):
    """A job's :class:`~audioae.batch.journal.Journal` that also appends each note of a finished
    file (``done``) to ``notes``, as ``[input, input_size]``, as it is made: Ray's actors note in
    their own processes, where no monkeypatch of the driver's reaches. The class is made here, so
    cloudpickle sends it by value and the actors need not import this test file."""
    from audioae.batch.journal import Journal

    class NotingJournal(Journal):
        def __init__(self, folder, made, notes):
            super().__init__(folder, made)
            self.notes = str(notes)

        def done(self, result):
            with open(self.notes, "a") as fh:
                fh.write(json.dumps([result.input, result.input_size]) + "\n")
            super().done(result)

    return NotingJournal(folder, made, notes)


def test_ray_notes_each_finished_file_in_its_marker_once_with_the_input_as_read(ray_local, tmp_path, monkeypatch):
    """A Ray actor noted each finished file in its marker twice: first without the input's size
    and time (a file read as bytes), then again with them. Now once, complete, whether the read
    stage passed the file's bytes or the actor streamed it from its path: driven through run_ray
    (read stage, RayDenoiser actors, results), each note counted as the actor makes it."""
    from audioae.batch.journal import JOURNAL_NAME
    from audioae.batch.manifest import MadeWith
    from audioae.batch.plan import plan_tasks
    from audioae.batch.ray_engine import run_ray

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    src = make_tree(tmp_path / "in")
    # Files above this size are streamed by the actor from their path: the 44.1 kHz stereo one (~265 kB)
    monkeypatch.setattr("audioae.batch.ray_engine.INLINE_MAX_BYTES", 64 * 1024)
    assert (src / "sub" / "stereo.wav").stat().st_size > 64 * 1024 > (src / "top.wav").stat().st_size
    data = ckpt.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    todo = [t for t in plan_tasks([src], out) if not t.input.endswith("corrupt.flac")]
    notes = tmp_path / "notes.jsonl"
    journal = _noting_journal(out / JOURNAL_NAME, MadeWith(str(ckpt), sha, 1.0), notes)
    results = list(run_ray(todo, model_bytes=data, sha256=sha, journal=journal))
    assert sorted(r.input for r in results if r.status == "ok") == sorted(t.input for t in todo)
    noted = [json.loads(line) for line in notes.read_text().splitlines()]
    assert sorted(name for name, _ in noted) == sorted(t.input for t in todo), noted  # each file once
    assert all(size == os.stat(name).st_size for name, size in noted), noted  # with the input as read
    kept = {r.input: r for r in journal.finished_results()}  # the job "died" before recording them
    for r in results:
        assert (kept[r.input].input_size, kept[r.input].input_mtime_ns) == (r.input_size, r.input_mtime_ns), r
        assert (kept[r.input].duration, kept[r.input].warning) == (r.duration, r.warning), r


def test_a_file_changed_between_the_read_stages_stat_and_its_read_is_an_error(tmp_path):
    """The read stage stats a file, then reads its bytes, which the actor denoises: a file still
    being copied or recorded would be denoised for the part read and recorded as the whole. Its
    size and mtime after the read are checked against the stat's, and a change is that file's
    error in the words the engines use where they read from the path."""
    from audioae.audio import AudioError
    from audioae.batch.process import source_state
    from audioae.batch.ray_engine import _read_file, _read_unchanged

    src = tmp_path / "take.wav"
    sf.write(src, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    row = _read_file({"input": os.fsencode(src)})
    st = src.stat()
    assert row["inline"] and row["data"] == src.read_bytes() and row["read_error"] == b""
    assert (row["input_size"], row["input_mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    before = source_state(str(src))  # stat'ed, then the copy goes on
    with open(src, "ab") as fh:
        fh.write(bytes(32000))
    with pytest.raises(AudioError, match=f"{src}: the file went from 32,044 to 64,044 bytes while it was being "
                                         f"denoised"):
        _read_unchanged(str(src), before)
    big = _read_file({"input": os.fsencode(src)}, inline_max_bytes=1000)  # streamed by the actor, which checks it
    assert not big["inline"] and big["data"] == b"" and big["input_size"] == -1


def test_ray_resumed_run_skips_finished_files(job, monkeypatch):
    root, ckpt, src, _, _ = job
    out = root / "resume"
    shutil.copytree(root / "ray", out)
    (out / "sub" / "stereo.wav").unlink()  # as if the first run died before this one
    # Files above this size skip the object store and are streamed by the actor from their path:
    # the redone 44.1 kHz stereo file (~265 kB) takes that branch.
    monkeypatch.setattr("audioae.batch.ray_engine.INLINE_MAX_BYTES", 64 * 1024)
    assert (src / "sub" / "stereo.wav").stat().st_size > 64 * 1024
    (out / "sub" / ".stereo.wav.part").write_bytes(b"what a killed run leaves")
    ray_data = logging.getLogger("ray.data")
    monkeypatch.setattr(ray_data, "level", logging.NOTSET)
    s = run_denoise([src], out, DenoiseOptions(model=str(ckpt), engine="ray", progress=False))
    assert (s["skipped"], s["ok"], s["error"]) == (len(TREE) - 1, 1, 1)
    assert ray_data.level == logging.NOTSET  # the job's quieting of Ray Data ends with it
    recs = {Path(r["input"]).name: r["status"] for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert recs["stereo.wav"] == "ok" and recs["top.wav"] == "skipped"
    assert_same_files(root / "local", out)
    assert not list(out.rglob("*.part"))


@pytest.mark.parametrize(("ask", "says"), [
    ({"threads": 3}, "; lower --threads$"),
    ({"gpus_per_worker": 1.0}, r"GPU\(s\) \(--gpus-per-worker\).*; lower --gpus-per-worker$"),
    ({"device": "cuda"}, r"GPU\(s\) \(--device cuda\).*; drop --device cuda$"),  # said --gpus-per-worker, never given
], ids=["threads", "gpus", "device-cuda"])
def test_actor_larger_than_any_node_is_refused_not_waited_for(job, ask, says, tmp_path):
    _, ckpt, src, _, _ = job  # the session's Ray has 2 CPUs and no GPU, and nothing adds nodes
    with pytest.raises(RuntimeError, match=says) as refused:
        run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(ckpt), engine="ray", progress=False, **ask))
    assert "no actor could ever start" in str(refused.value)
    assert not outputs(tmp_path / "out")


def test_unreachable_address_fails_in_seconds(tmp_path, monkeypatch):
    import socket

    from audioae.batch.ray_engine import _check_reachable

    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match=f"cannot reach the Ray cluster at '127.0.0.1:{port}'"):
        _check_reachable(f"127.0.0.1:{port}")
    # auto: the address of the cluster this machine last started, probed like HOST:PORT. A head
    # that was killed leaves it behind, and ray.init waited on it for minutes.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    with pytest.raises(RuntimeError, match="no `ray start` cluster is recorded"):  # was: any Ray running here
        _check_reachable("auto")
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    with pytest.raises(RuntimeError, match=rf"at 'auto' \(auto: 127\.0\.0\.1:{port}, from ray_current_cluster"):
        _check_reachable("auto")



def test_auto_joins_the_cluster_it_resolved_to_and_ray_address_auto_is_no_address(tmp_path, monkeypatch):
    """ray.init("auto") (Ray 2.60) prefers a single gcs_server running here, another job's own local
    Ray included, to the recorded cluster that was resolved and probed: ray.init is given that one.
    RAY_ADDRESS=auto went to ray.init("auto") unresolved and unprobed (Ray takes it as unset)."""
    import socket

    from audioae.batch.ray_engine import _check_reachable

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as head:  # someone answers at the recorded address
        recorded = f"127.0.0.1:{head.getsockname()[1]}"
        (tmp_path / "ray" / "ray_current_cluster").write_text(recorded)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        assert _check_reachable("auto") == recorded
        monkeypatch.setenv("RAY_ADDRESS", "auto")
        assert _check_reachable("auto") == recorded
    with pytest.raises(RuntimeError, match=rf"at 'auto' \(auto: {recorded}, from ray_current_cluster"):
        _check_reachable("auto")  # nobody answers there now
    (tmp_path / "ray" / "ray_current_cluster").unlink()
    with pytest.raises(RuntimeError, match="no `ray start` cluster is recorded"):
        _check_reachable("auto")


@pytest.mark.parametrize("env", ["ray://127.0.0.1:10001", "http://127.0.0.1:8265"])
def test_auto_resolving_to_a_ray_address_that_cannot_run_the_job_is_refused(env, monkeypatch):
    """--address auto takes RAY_ADDRESS first: a ray:// or http:// one there skipped the up-front
    refusal and failed later with "Name or service not known"."""
    from audioae.batch.ray_engine import check_address

    monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(ValueError, match=rf"--address auto resolves to RAY_ADDRESS {env}: "):
        check_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    check_address("auto")


@pytest.mark.parametrize(("ask", "says"), [
    ({"address": "ray://127.0.0.1:10001"}, "Ray Client .* cannot run this job.*ray job submit"),
    ({"address": "http://127.0.0.1:8265"}, "GCS address is HOST:PORT .* not a URL"),
    ({"device": "cpu", "gpus_per_worker": 0.5}, "--device cpu and --gpus-per-worker 0.5 contradict"),
    ({"device": "cuda:1"}, "--device cuda:1: on the Ray engine Ray assigns"),
], ids=["ray-client", "dashboard-url", "cpu-and-gpus", "cuda-index"])
def test_what_the_ray_engine_cannot_do_is_refused_before_anything_is_written(tmp_path, ask, says):
    """Ray Client failed every file ("'Worker' object has no attribute 'core_worker'": Ray Data's
    executor does not run under it); the dashboard's URL said "Name or service not known"; --device
    cpu with --gpus-per-worker ran the actors on cuda; cuda:1 silently became cuda."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", np.zeros(800, np.float32), 16000)
    with pytest.raises(ValueError, match=says):
        run_denoise([src], tmp_path / "out", DenoiseOptions(engine="ray", progress=False, **ask))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("address", "says"), [
    ("ray://127.0.0.1:10001", "--address ray://127.0.0.1:10001: Ray Client .* cannot run this job"),
    ("http://127.0.0.1:8265", "--address http://127.0.0.1:8265: the cluster's GCS address is HOST:PORT"),
], ids=["ray-client", "dashboard-url"])
def test_run_ray_called_directly_refuses_an_address_it_cannot_use(tmp_path, address, says):
    """run_denoise checks the address up front (check_request); a caller of run_ray itself is
    refused too, before ray.init, whether or not a Ray is already running."""
    import ray

    from audioae.batch.journal import Journal
    from audioae.batch.plan import FileTask
    from audioae.batch.ray_engine import run_ray

    running = ray.is_initialized()  # an earlier test's Ray, or none: refused either way
    with pytest.raises(ValueError, match=says):
        next(run_ray([FileTask(str(tmp_path / "a.wav"), str(tmp_path / "o" / "a.wav"), "a.wav")], model_bytes=b"",
                     sha256="", journal=Journal(tmp_path / "j"), address=address))
    assert ray.is_initialized() == running  # refused before ray.init


def test_a_stopped_jobs_ray_shutdown_outlasts_ctrl_c_pressed_again(tmp_path):
    """Ctrl-C pressed again broke off ray.shutdown: Ray's atexit shutdown then printed
    "Exception ignored in atexit callback ... KeyboardInterrupt" and the job exited 1."""
    run = subprocess.run([sys.executable, "-c", SHUTDOWN_UNDER_CTRL_C], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1],
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shut down: True" in run.stdout and "KeyboardInterrupt" not in run.stderr, (run.stdout, run.stderr[-3000:])
    pressed = int(run.stdout.split("pressed during shutdown:")[1].split()[0])
    assert pressed >= 1, run.stdout  # Ctrl-C did come while ray.shutdown ran
    assert "handler restored: True" in run.stdout, run.stdout  # Ctrl-C means Ctrl-C again afterwards


SHUTDOWN_UNDER_CTRL_C = """
import os, signal, sys, threading, time, ray
from audioae.batch.ray_engine import _shutdown
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
done, main, pressed = threading.Event(), threading.main_thread().ident, [0]
def in_ray_shutdown():
    f = sys._current_frames().get(main)
    while f is not None and not (f.f_code.co_name == "shutdown" and "ray" in f.f_code.co_filename):
        f = f.f_back
    return f is not None
def press():  # Ctrl-C, again and again, from the moment ray.shutdown runs until it is over
    while not in_ray_shutdown():
        time.sleep(0.001)
    while not done.is_set():
        os.kill(os.getpid(), signal.SIGINT)
        pressed[0] += 1
        time.sleep(0.05)
threading.Thread(target=press, daemon=True).start()
original = signal.getsignal(signal.SIGINT)
try:
    _shutdown(ray, stopped=True)
finally:
    done.set()
restored = signal.getsignal(signal.SIGINT) is original
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the presses still in flight
print("shut down:", not ray.is_initialized())
print("pressed during shutdown:", pressed[0])
print("handler restored:", restored)
"""


def test_a_job_that_cannot_reach_its_cluster_leaves_no_output_folder(tmp_path):
    """It used to leave OUT with a lock file and an empty manifest. (A process of its own: this
    one's Ray is already started, and a started Ray is joined, not an address.)"""
    import socket
    import subprocess
    import sys

    src = make_tree(tmp_path / "in")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "new" / "out"
    run = subprocess.run([sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out), "--engine", "ray",
                          "--address", f"127.0.0.1:{port}", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "cannot reach the Ray cluster" in run.stderr, run.stderr[-2000:]
    assert not out.exists() and (tmp_path / "new").is_dir()  # the parent it made stays; OUT does not
    # The same address in RAY_ADDRESS (as `ray job submit` sets it), no --address: was minutes of
    # Ray's own retries, since only --address was probed.
    run = subprocess.run([sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out), "--engine", "ray",
                          "--no-progress"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert run.returncode == 2 and f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in run.stderr, \
        run.stderr[-2000:]


STARTS_AND_FAILS = """
import logging, sys, ray, ray.data  # ray.data sets its loggers up as it is imported
from audioae.batch.journal import Journal
from audioae.batch.plan import FileTask
from audioae.batch.ray_engine import run_ray
out, level = sys.argv[1], logging.getLogger("ray.data").level
try:
    next(run_ray([FileTask(out + "/a.wav", out + "/b.wav", "b.wav")], model_bytes=b"", sha256="",
                 journal=Journal(out + "/j"), workers=0))
except ValueError as exc:
    print("refused:", exc)
print("ray left running:", ray.is_initialized(), "ray.data level kept:", logging.getLogger("ray.data").level == level)
"""


def test_a_job_whose_pipeline_cannot_be_built_shuts_down_its_own_ray(tmp_path):
    """A failure after ray.init and before the run (here Ray Data refusing an actor pool of none)
    left the job's own local Ray running, and Ray Data's loggers quieted, in the process that
    called it. (A process of its own: this one's Ray is the session's, joined, not started.)"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    run = subprocess.run([sys.executable, "-c", STARTS_AND_FAILS, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "refused:" in run.stdout and "ray left running: False ray.data level kept: True" in run.stdout, \
        (run.stdout, run.stderr[-3000:])


@pytest.mark.filterwarnings("error::UserWarning")  # one file: the read stage asked for 2 tasks, Ray warned
def test_a_file_name_that_is_not_utf8_goes_through_ray_as_bytes(job, tmp_path, capfd, caplog):
    """Arrow columns are UTF-8: a Latin-1 name made Ray Data pickle the path columns instead, with
    a warning from every stage. Paths now travel as the file system's bytes."""
    import os

    _, ckpt, _, _, _ = job
    src = tmp_path / "in"
    src.mkdir()
    name = b"caf\xe9.wav"
    sf.write(os.path.join(os.fsencode(src), name), np.zeros(8000, np.float32) + 0.01, 16000, subtype="PCM_16")
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(ckpt), engine="ray", progress=False))
    assert (s["ok"], s["error"]) == (1, 0)
    assert os.listdir(os.fsencode(tmp_path / "out")).count(name) == 1
    recs = read_manifest(tmp_path / "out" / "audioae-manifest.jsonl")
    assert [r["input"] for r in recs] == [os.path.join(str(src), os.fsdecode(name))]
    assert "ArrowConversionError" not in capfd.readouterr().err + caplog.text


def test_a_copy_cut_short_keeps_its_warning_through_ray(job, tmp_path):
    """The warning crosses Ray's columns as the local engine records it."""
    from test_batch import _cut_short_copies

    _, ckpt, _, _, _ = job
    src = tmp_path / "in"
    src.mkdir()
    _cut_short_copies(src)
    s = run_denoise([src], tmp_path / "out", DenoiseOptions(model=str(ckpt), engine="ray", progress=False))
    assert (s["ok"], s["error"]) == (6, 0)
    assert sorted(Path(w["input"]).name for w in s["warnings"]) == ["cut.aiff", "cut.au", "cut.mp3", "cut.wav"]
    recs = {Path(r["input"]).name: r["warning"] for r in read_manifest(tmp_path / "out" / "audioae-manifest.jsonl")}
    assert "(a copy cut short, or a recording that stopped mid-write?)" in recs["cut.wav"] and recs["whole.wav"] == ""


def _in_flight(out: Path, name: str, other_than: set[int]) -> int | None:
    """The pid the job's in-flight marker names for ``name``, when it is not one of ``other_than``."""
    from audioae.batch.journal import JOURNAL_NAME

    for marker in (out / JOURNAL_NAME).glob("*.json"):
        try:
            rec = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):  # being written
            continue
        if rec.get("input", "").endswith(name) and rec.get("pid") not in other_than:
            return rec.get("pid")
    return None


def test_a_file_that_kills_its_actor_is_isolated_not_retried_forever(ray_local, tmp_path):
    """Ray restarts a dead actor and retries its batch with no limit, so a file that crashes its
    decoder would kill actor after actor. Here the actor on b.wav and then the process b.wav is
    isolated in both get a real SIGSEGV: b is reported, the job ends, the other files are done."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    names = {"a.wav": 1.0, "b.wav": 300.0, "c.wav": 1.0}
    for name, sec in names.items():
        sf.write(src / name, (0.1 * rng.standard_normal(int(16000 * sec))).astype(np.float32), 16000, subtype="PCM_16")
    summary = {}
    job = threading.Thread(target=lambda: summary.update(
        run_denoise([src], out, DenoiseOptions(model=str(ckpt), engine="ray", progress=False))))
    job.start()
    killed = {os.getpid()}
    deadline = time.monotonic() + 180
    while len(killed) < 3 and job.is_alive() and time.monotonic() < deadline:  # the actor, then the isolated child
        pid = _in_flight(out, "b.wav", killed)
        if pid is not None:
            os.kill(pid, signal.SIGSEGV)
            killed.add(pid)
        time.sleep(0.005)
    job.join(300)
    assert len(killed) == 3, f"killed {killed - {os.getpid()}}; the job {'runs' if job.is_alive() else 'ended'}"
    assert not job.is_alive()
    assert (summary["ok"], summary["error"]) == (2, 1), summary
    recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert "killed by SIGSEGV" in recs["b.wav"]["error"], recs["b.wav"]
    for name in ("a.wav", "c.wav"):
        assert sf.info(out / name).frames == int(16000 * names[name])
    assert not (out / "b.wav").exists()


# The real CLI on the Ray engine, whose driver SIGKILLs itself when it would append the manifest
# line of the first finished output (after an actor renamed it into place, before the driver
# records it), having first written every process under it (the local Ray it started) to argv[1]
# as {pid: [start time, command line]}. Then argv[2:]: the CLI's arguments.
KILL_DRIVER_BEFORE_RECORDING = """
import json, os, signal, sys
from audioae.batch.manifest import ManifestWriter

def processes_under(root):
    stats = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                stats[int(d)] = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            pass
    found, todo = {}, [root]
    while todo:
        p = todo.pop()
        for pid, fields in stats.items():
            if int(fields[1]) == p and pid not in found:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read().replace(b"\\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
                found[pid] = [fields[19], cmdline]
                todo.append(pid)
    return found

write = ManifestWriter.write

def write_or_die(self, result):
    if result.status == "ok":
        with open(sys.argv[1], "w") as f:
            json.dump(processes_under(os.getpid()), f)
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, result)

ManifestWriter.write = write_or_die
from audioae.cli import main
sys.exit(main(sys.argv[2:]))
"""
# Ray 2.60's two agents outlive a SIGKILLed driver by about a minute: they see their raylet die at
# once, then wait out a 60 s timeout reporting that to the GCS, which died with the driver
# (ray._private.utils.publish_error_to_driver). Documented in docs/batch.md.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _alive(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (/proc's clock ticks: not
    a reused pid), and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and fields[19] == started


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes from /proc")
def test_a_driver_killed_between_an_outputs_rename_and_its_line_leaves_it_recorded_and_no_ray_workers(
        ray_local, tmp_path):
    """The driver records what an actor finished. Killed in between (here with SIGKILL, with the
    local Ray it started, as `--engine ray` without --address does), the rerun used to call those
    outputs "skipped" with empty settings. And what of its Ray outlives it: the GCS, raylet,
    actors and tasks do not; Ray's two agents do, for about a minute."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    src, out, listed = tmp_path / "in", tmp_path / "out", tmp_path / "ray-processes.json"
    src.mkdir()
    names = ("a.wav", "b.wav", "c.wav")
    for i, name in enumerate(names):
        sf.write(src / name, 0.1 * np.random.default_rng(i).standard_normal(16000).astype(np.float32), 16000,
                 subtype="PCM_16")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    cmd = [sys.executable, "-c", KILL_DRIVER_BEFORE_RECORDING, str(listed), "denoise", str(src), "-o", str(out),
           "--engine", "ray", "--model", str(ckpt), "--strength", "0.5", "--no-progress"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**env, "OMP_NUM_THREADS": "1"},
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    ray_processes = {int(pid): (t, c) for pid, (t, c) in json.loads(listed.read_text()).items()}  # [start, cmdline]
    try:
        assert any("raylet" in c for _, c in ray_processes.values()), ray_processes
        deadline = time.monotonic() + 180  # they go within seconds; the bound only ends a failing test
        while time.monotonic() < deadline:
            left = {pid: c for pid, (t, c) in ray_processes.items() if _alive(pid, t) and c not in RAY_AGENTS}
            if not left:
                break
            time.sleep(0.5)
        assert not left, f"outlived the killed driver: {left}"

        finished = [n for n in names if (out / n).is_file()]
        assert finished and not read_manifest(out / "audioae-manifest.jsonl")  # written, none recorded
        with pytest.raises(ValueError, match=r"made with other settings: .* at strength 0\.5"):
            run_denoise([src], out, DenoiseOptions(model=str(ckpt), engine="ray", strength=1.0, progress=False))
        s = run_denoise([src], out, DenoiseOptions(model=str(ckpt), engine="ray", strength=0.5, progress=False))
        assert (s["skipped"], s["ok"] + s["skipped"], s["error"]) == (len(finished), 3, 0)
        sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        rows = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
        for name in names:
            assert (rows[name]["model"], rows[name]["sha256"], rows[name]["strength"]) == (str(ckpt), sha, 0.5), \
                rows[name]
    finally:  # leave nothing of that Ray behind (the agents would go by themselves, a minute later)
        for pid, (started, _) in ray_processes.items():
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_sigterm_ends_a_ray_job_as_ctrl_c_does(tmp_path):
    """ray.init put its own SIGTERM handler (sys.exit) in place of the CLI's: `kill` of a Ray job
    exited 15 without a word, where the local engine's job ends as Ctrl-C does (exit 143). And
    what the stop left: a file finished in the actor's batch before the one under way was recorded
    from its marker without its "copy cut short" warning or its length, and the marker of the one
    under way (Ray ends its actors without unwinding them) made it a suspect, "a process died on
    this file before". Two files cut short, the same length: whichever the actor takes first."""
    from audio_tree import cut_short
    from test_batch_crash import _job_env, _wait_for

    from audioae.batch.journal import JOURNAL_NAME, Journal

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = ("a.wav", "b.wav")
    for i, name in enumerate(names):  # long enough that the second is still under way when the signal comes
        sf.write(src / name, 0.1 * np.random.default_rng(i).standard_normal(16000 * 300).astype(np.float32), 16000,
                 subtype="PCM_16")
        (src / name).write_bytes(cut_short((src / name).read_bytes()))  # its header claims 300 s
    env = {k: v for k, v in _job_env(src).items() if k != "RAY_ADDRESS"}  # its own local Ray
    cmd = [sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(out), "--engine", "ray",
           "--model", str(ckpt), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    journal = Journal(out / JOURNAL_NAME)

    def one_done_one_under_way() -> tuple[str, str] | None:
        done = [n for n in names if (out / n).is_file()]
        going = [n for n in names if n not in done and journal.why(str(src / n))]  # marked, not finished
        return (done[0], going[0]) if len(done) == 1 and going else None

    done, going = _wait_for(one_done_one_under_way, proc, "one output and the other file's marker", seconds=240)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted" in err
    recs = {Path(r["input"]).name: r for r in read_manifest(out / "audioae-manifest.jsonl")}
    assert recs.get(done, {}).get("status") == "ok", (recs, err[-3000:])
    assert "a copy cut short" in recs[done]["warning"] and recs[done]["duration"] is not None, recs[done]
    assert going not in recs and journal.why(str(src / going)) is None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token_cluster(tmp_path):
    """A `ray start --head` cluster with token authentication, found as ray.init finds one (its
    address in RAY_TMPDIR/ray/ray_current_cluster): ``(env, address, token)``. RAY_TMPDIR is a
    short folder of this test's (Unix socket paths are short), so no other Ray sees it."""
    import secrets
    import tempfile

    tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    token, port = secrets.token_hex(32), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_TMPDIR=tmp, HOME=str(tmp_path))  # no ~/.ray/auth_token of this machine's
    head = subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                           f"--ray-client-server-port={_free_port()}"], env={**env, "RAY_AUTH_MODE": "token",
                          "RAY_AUTH_TOKEN": token}, capture_output=True, text=True, timeout=180,
                          start_new_session=True)  # its processes keep this session's id: stopped below by it
    try:
        assert head.returncode == 0, head.stderr[-2000:]
        yield env, f"127.0.0.1:{port}", token
    finally:
        _stop_session(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop_session(tmp: str) -> None:
    """Kill the processes of the head started with RAY_TMPDIR=``tmp`` (not `ray stop`: it stops
    every Ray on the machine)."""
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
            if tmp.encode() in cmdline:
                os.killpg(os.getpgid(int(d)), signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the head's processes in /proc")
def test_without_an_address_a_job_starts_its_own_ray_and_a_refused_token_says_so(token_cluster, tmp_path):
    """Without --address a job joined any `ray start --head` cluster on the machine (ray.init's
    address=None finds it), took it for its own local Ray, and warned that actors "wait until an
    autoscaler adds nodes". And a cluster that wants a token said only "cannot reach"."""
    env, address, token = token_cluster
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("recurrent", {"hidden": 32, "code_dim": 16}), ckpt)
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", np.zeros(8000, np.float32) + 0.01, 16000, subtype="PCM_16")
    cmd = [sys.executable, "-m", "audioae.cli", "denoise", str(src), "--engine", "ray", "--model", str(ckpt),
           "--no-progress", "--workers", "2", "-o"]
    sessions = Path(env["RAY_TMPDIR"], "ray")
    before = set(sessions.glob("session_2*"))
    run = subprocess.run([*cmd, str(tmp_path / "own")], env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(set(sessions.glob("session_2*")) - before) == 1, "the job joined the head instead of its own Ray"
    assert "autoscaler" not in run.stderr, run.stderr[-3000:]

    run = subprocess.run([*cmd, str(tmp_path / "joined"), "--address", address], env=env, capture_output=True,
                         text=True, timeout=400)
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"the Ray cluster at '{address}' refused this job: authentication failed" in run.stderr, \
        run.stderr[-3000:]
    assert "RAY_AUTH_TOKEN" in run.stderr and not (tmp_path / "joined").exists()
