"""`audioae train` end to end, resume, and DDP with two gloo processes."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

from audioae.checkpoint import load_checkpoint
from audioae.cli import main
from audioae.enhance import denoise

REPO = Path(__file__).parent.parent
CONFIG = str(REPO / "configs" / "tiny-synthetic.toml")
SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.toml"))


@cache
def _load(path: Path):
    from audioae.train import load_run_config

    return load_run_config(str(path), ["train.max_minutes=1"])  # time-decayed phases need it


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.stem)
def test_every_config_in_the_repo_loads_and_its_init_weights_fit(path):
    """A config is only read when its (long) phase starts: a typo, a weight file that no longer
    fits, or a warm start from a run folder that no phase writes would surface on a GPU machine or
    an hour into a recipe."""
    from audioae.models import build_model
    from audioae.train import grow_into

    run = _load(path)
    model = build_model(run.model, run.model_config)
    assert run.train.select_by in run.train.metrics
    init = run.train.init_from
    if init.startswith("runs/"):  # an earlier phase's output: some config writes that folder,
        writers = {_load(c).train.out_dir for c in SHIPPED_CONFIGS}  # or the recipe exports it there
        exported = re.search(rf"^\s*python recipes/export_model\.py \S+ {re.escape(init)}( |$)",
                             (REPO / "recipes" / "train_denoiser.sh").read_text(), re.M)
        assert str(Path(init).parent) in writers or exported, f"{path.name}: no config or recipe step writes {init}"
    elif init:  # shipped weights: they must grow into this config's model
        grow_into(model, load_checkpoint(REPO / init).state_dict())


@pytest.mark.parametrize(("override", "text"), [("train.val_every=0", "train.val_every must be at least 1"),
                                                ("train.steps=-5", "train.steps must be at least 1"),
                                                ("train.batch_size=0", "train.batch_size must be at least 1"),
                                                ("train.lr=-1", "train.lr must be >= 0"),
                                                ("data.segment_seconds=0", "data.segment_seconds must be positive"),
                                                # was numpy's "zero-size array to reduction operation maximum"
                                                ("data.segment_seconds=0.0001", "data.segment_seconds=0.0001 is 0 samples at "
                                                 "the model's 8000 Hz, shorter than one STFT window (n_fft=256)"),
                                                ("data.val_seconds=0.01", "data.val_seconds=0.01 is 80 samples"),
                                                ("data.snr_low=30", "data.snr_low 30 is above data.snr_high"),
                                                ("model.family=conv1d", "[model] has no key(s) ['family']"),
                                                ("modle.name=conv1d", "unknown section(s) ['modle']"),
                                                ("model.name=transformer", "unknown model family 'transformer'"),
                                                ("train.steps.x=1", "train.steps is a value, not a section"),
                                                ("steps=5", "needs section.key=value"),
                                                ("model.config=3", "[model.config] table"),
                                                ("model.config.hidden=0", "[model.config] hidden must be positive, got 0"),
                                                ("train.stepz=3", "[train] has no key(s) ['stepz'] (did you mean 'steps'?)"),
                                                ("model.config.hidden=\"x\"", "[model.config] hidden = 'x': expected int"),
                                                ("model.config.sample_rate=0", "sample_rate must be positive"),
                                                # was accepted: a negative clip turned every step around
                                                ("train.grad_clip=-1", "train.grad_clip must be > 0, got -1"),
                                                ("train.grad_clip=0", "train.grad_clip must be > 0, got 0"),
                                                ("train.max_minutes=-1", "train.max_minutes must be >= 0"),
                                                ("train.seed=-1", "train.seed must be >= 0 and below 2**64, got -1"),
                                                ("train.threads=-1", "train.threads must be >= 0"),
                                                # was a crash as torch made them (exit 139, in jemalloc)
                                                ("train.threads=99999", "train.threads must be at most"),
                                                ("train.loader_threads=99999", "train.loader_threads must be at most"),
                                                ("train.weight_decay=nan", "train.weight_decay must be a finite number, got nan"),
                                                # was taken: the run wrote weights that give NaN and exited 0
                                                ("train.lr=inf", "train.lr must be a finite number, got inf"),
                                                ("data.snr_high=inf", "data.snr_high must be a finite number, got inf"),
                                                ("train.checkpoint_seconds=-5", "train.checkpoint_seconds must be > 0"),
                                                # was refused where the loop starts: after the folder was
                                                # made, and after --no-resume had cleared the earlier run
                                                ("train.amp_dtype=fp16", "train.amp_dtype must be auto, bfloat16 or float16"),
                                                # was taken as 1 (or 0) in silence
                                                ("data.reverb_prob=5", "data.reverb_prob is a share of the examples"),
                                                ("data.second_noise_prob=-0.5", "data.second_noise_prob is a share"),
                                                # was ignored (or a KeyError after training, as select_by)
                                                ('train.metrics=["si_sdr","pesqq"]',
                                                 "train.metrics: unknown ['pesqq']"),
                                                ("train.init_from=/nonexistent.safetensors", "nonexistent"),
                                                ("data.noise_weights={nosuch=2.0}", "the subfolders of data.noise_dir"),
                                                ("train.init_from=decomposer-small",  # a shipped name, as --model
                                                 "is a sparse_dict model and this run trains a recurrent one")])
def test_impossible_settings_are_refused_before_a_run_starts(tmp_path, capsys, override, text):
    # was: a ZeroDivisionError traceback (val_every, sample_rate), numpy's "need at least one
    # array to stack" (batch_size), torch's "input_size must be greater than zero" (hidden), or a
    # run of the default model written as if it had trained (steps; a misspelt section or key)
    assert main(["train", CONFIG, "--out", str(tmp_path / "run"), "--set", override]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_without_a_config_or_settings_says_what_to_give(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # was: 1,000 steps of a plain autoencoder into ./runs/default
    assert main(["train"]) == 2
    assert "name a run config, e.g. audioae train configs/tiny-synthetic.toml" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_train_command_writes_a_checkpoint_that_loads(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", CONFIG, "--out", str(out), "--steps", "6", "--set", "train.val_every=3",
               "--set", "train.progress=false", "--set", "model.config.hidden=16"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6
    model = load_checkpoint(out / "best.safetensors")
    assert model.config.hidden == 16 and model.config.sample_rate == 8000
    wav = torch.randn(1, 4001)
    assert denoise(model, wav, 8000).shape == wav.shape
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("val" in r and "stoi" in r["val"] for r in records)


def test_train_resumes_from_last_checkpoint(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=100", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "4"]) == 0
    first = load_checkpoint(out / "last.safetensors").state_dict()
    fresh = json.loads(capsys.readouterr().out)
    per_step = fresh["audio_seconds"] / 4
    assert main(["train", *common, "--steps", "7"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 7
    assert (fresh["resumed_at_step"], summary["resumed_at_step"]) == (None, 4)  # the summary said nothing of it
    assert summary["audio_seconds"] == pytest.approx(per_step * 3)  # only steps 5..7 ran: it resumed, not restarted
    resumed = load_checkpoint(out / "last.safetensors").state_dict()
    assert any(not torch.equal(first[k], resumed[k]) for k in first)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 7  # one record per step, none repeated
    capsys.readouterr()
    assert main(["train", *common, "--steps", "9", "--set", "model.config.hidden=24"]) == 2  # another shape
    assert "hidden: 16 there, 24 now" in capsys.readouterr().err
    assert load_checkpoint(out / "last.safetensors").config.hidden == 16  # the run is untouched

    recorded = (out / "run.json").read_text()
    assert main(["train", *common, "--steps", "5"]) == 0  # fewer steps than the run holds: nothing to do, said so
    assert json.loads(capsys.readouterr().out)["steps"] == 7
    assert "already holds 7 steps, train.steps is 5: nothing to train" in caplog.text
    assert (out / "run.json").read_text() == recorded  # still the settings that made the weights


def test_half_a_resume_point_or_another_signal_is_refused_not_started_over(tmp_path, capsys, caplog):
    """Was: without last.optim.safetensors a rerun started at step 0 and replaced best.safetensors
    in silence; a corrupt one was a traceback; a run at 8 kHz resumed at 16 kHz (same shapes)."""
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=100", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "4"]) == 0
    capsys.readouterr()
    best = (out / "best.safetensors").read_bytes()
    optim = (out / "last.optim.safetensors").read_bytes()
    (out / "last.optim.safetensors").unlink()
    assert main(["train", *common, "--steps", "6"]) == 2
    assert "holds last.safetensors but not last.optim.safetensors, and a resume needs both" in capsys.readouterr().err
    assert (out / "best.safetensors").read_bytes() == best
    (out / "last.optim.safetensors").write_bytes(optim[:1000])
    assert main(["train", *common, "--steps", "6"]) == 2
    assert "last.optim.safetensors: sha256 mismatch" in capsys.readouterr().err  # its .sha256 is still there
    (out / "last.optim.safetensors.sha256").unlink()  # as files written before 2026-12-07
    assert main(["train", *common, "--steps", "6"]) == 2
    assert "last.optim.safetensors: not a readable optimizer state" in capsys.readouterr().err
    (out / "last.optim.safetensors").write_bytes(optim)
    assert main(["train", *common, "--steps", "6", "--set", "model.config.sample_rate=16000"]) == 2
    assert "at another sample_rate: 8000 there, 16000 now" in capsys.readouterr().err
    assert main(["train", *common, "--steps", "6"]) == 0  # restored: it resumes
    assert json.loads(capsys.readouterr().out)["steps"] == 6
    assert main(["train", *common, "--steps", "3", "--no-resume"]) == 0  # starting over: one log per run
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and steps == sorted(steps), steps
    assert "starting over (--no-resume)" in caplog.text


def test_an_optimizer_state_of_another_model_is_refused_before_anything_is_written(tmp_path, capsys):
    """Was: another run's last.optim.safetensors (copied in with its .sha256) loaded, and the
    first step failed with torch's "The size of tensor a (24) must match the size of tensor b
    (16) at non-singleton dimension 0", after run.json had been rewritten."""
    common = [CONFIG, "--set", "train.val_every=100", "--set", "train.progress=false", "--steps", "1"]
    for name, hidden in (("run", 16), ("wider", 24)):
        assert main(["train", *common, "--out", str(tmp_path / name), "--set", f"model.config.hidden={hidden}"]) == 0
    out = tmp_path / "run"
    for name in ("last.optim.safetensors", "last.optim.safetensors.sha256"):
        (out / name).write_bytes((tmp_path / "wider" / name).read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", *common[:-1], "3", "--out", str(out), "--set", "model.config.hidden=16"]) == 2
    err = capsys.readouterr().err
    assert ("last.optim.safetensors: the optimizer state of another model (moments for parameter 0 of shape "
            "[24, 129], and this model's is [16, 129])") in err  # hidden units x 129 bins
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # Weights copied over the optimizer state (with their .sha256): was a KeyError traceback.
    for name in ("last.optim.safetensors", "last.optim.safetensors.sha256"):
        (out / name).write_bytes((out / name.replace(".optim", "")).read_bytes())
    assert main(["train", *common[:-1], "3", "--out", str(out), "--set", "model.config.hidden=16"]) == 2
    assert "last.optim.safetensors: not a readable optimizer state (it records no step)" in capsys.readouterr().err


def test_a_corrupt_resume_point_is_refused_and_a_torn_one_warned_of(tmp_path, capsys, caplog):
    """Was: a byte changed in last.safetensors' weights (or the optimizer state's) resumed in
    silence, from NaN weights too (20 steps later: "last.safetensors holds the last finite
    weights"). Weights of step 6 beside an optimizer state of step 4 (a run killed between the
    writes) still resume as step 4, now with a warning."""
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=100", "--set", "train.progress=false",
              "--set", "model.config.hidden=16", "--set", "train.ema_decay=0.5"]
    names = ("last.safetensors", "last.optim.safetensors", "last.ema.safetensors")
    assert main(["train", *common, "--steps", "4"]) == 0
    at4 = {n: (out / n).read_bytes() for n in names}
    assert main(["train", *common, "--steps", "6"]) == 0
    capsys.readouterr()
    at6 = {n: (out / n).read_bytes() for n in names}
    keep = {p.name: p.read_bytes() for p in out.iterdir()}

    def refused(text):
        assert main(["train", *common, "--steps", "8"]) == 2
        assert text in capsys.readouterr().err
        others = {n: b for n, b in keep.items() if n.removesuffix(".sha256") not in names}
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in others} == others
        assert all((out / n).is_file() for n in others)  # best, log, run.json untouched

    for name in names:
        changed = bytearray(at6[name])
        changed[-3] ^= 0xFF  # in the last tensor's data: the header still reads
        (out / name).write_bytes(changed)
        refused(f"{name}: sha256 mismatch")
        (out / name).write_bytes(at6[name])
    assert main(["train", *common, "--steps", "8"]) == 0  # restored: it resumes
    assert json.loads(capsys.readouterr().out)["resumed_at_step"] == 6
    for name in names[1:]:  # killed between the writes of one resume point: step 6 weights, a step 4 part
        for n in keep:  # the folder as it was at step 6
            (out / n).write_bytes(keep[n])
        (out / name).write_bytes(at4[name])
        (out / (name + ".sha256")).unlink(missing_ok=True)
        caplog.clear()
        assert main(["train", *common, "--steps", "8"]) == 0  # resumed, as it always was: with a warning
        assert f"last.safetensors is at step 6 and {name} at step 4: a resume point half written" in caplog.text
        step = 4 if name == "last.optim.safetensors" else 6  # the optimizer state's step is the run's
        assert json.loads(capsys.readouterr().out)["resumed_at_step"] == step


def test_each_truncated_part_of_a_resume_point_is_named_as_truncated(tmp_path, capsys):
    """Was: three messages for one fault. A truncated last.safetensors was "not a readable
    safetensors checkpoint" (its header read before its hash), last.optim.safetensors "not a
    readable optimizer state" (loaded before its hash), and only last.ema.safetensors a mismatch."""
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=100", "--set", "train.progress=false",
              "--set", "model.config.hidden=16", "--set", "train.ema_decay=0.5"]
    assert main(["train", *common, "--steps", "2"]) == 0
    capsys.readouterr()
    for name in ("last.safetensors", "last.optim.safetensors", "last.ema.safetensors"):
        whole = (out / name).read_bytes()
        (out / name).write_bytes(whole[:len(whole) // 2])
        assert main(["train", *common, "--steps", "3"]) == 2
        assert re.search(rf"{re.escape(name)}: sha256 mismatch \(.*\): the file was changed or truncated",
                         capsys.readouterr().err), name
        (out / name).write_bytes(whole)
    assert main(["train", *common, "--steps", "3"]) == 0  # restored: it resumes


def test_a_weight_average_of_another_model_is_refused_before_the_folder_changes(tmp_path, capsys):
    """Was: another run's last.ema.safetensors (copied in with its .sha256) was refused with torch's
    page of "size mismatch ..." lines, after log.jsonl was trimmed and the folder created."""
    common = [CONFIG, "--set", "train.val_every=1", "--set", "train.progress=false", "--set", "train.ema_decay=0.5"]
    out, other = tmp_path / "run", tmp_path / "other"
    assert main(["train", *common, "--out", str(out), "--set", "model.config.hidden=16", "--steps", "2"]) == 0
    assert main(["train", *common, "--out", str(other), "--set", "model.config.hidden=24", "--steps", "1"]) == 0
    for name in ("last.ema.safetensors", "last.ema.safetensors.sha256"):
        (out / name).write_bytes((other / name).read_bytes())
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", *common, "--out", str(out), "--set", "model.config.hidden=16", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "last.ema.safetensors: the weight average of a differently shaped model" in err
    assert "hidden: 24 there, 16 now" in err and "size mismatch" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_weight_average_starts_as_a_copy_resumes_and_is_what_validation_keeps(tmp_path, capsys):
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=1", "--set", "train.progress=false",
              "--set", "model.config.hidden=16", "--set", "train.ema_decay=0.25"]
    assert main(["train", *common, "--steps", "1"]) == 0
    w1 = load_checkpoint(out / "last.safetensors").state_dict()
    ema1 = load_checkpoint(out / "ema.safetensors").state_dict()
    assert all(torch.equal(ema1[k], w1[k]) for k in w1)  # the first update copies the weights
    assert main(["train", *common, "--steps", "2"]) == 0  # resumes the average from last.ema
    w2 = load_checkpoint(out / "last.safetensors").state_dict()
    ema2 = load_checkpoint(out / "ema.safetensors").state_dict()
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for k in w1:
        torch.testing.assert_close(ema2[k], 0.25 * w1[k] + 0.75 * w2[k])
    best = load_checkpoint(out / "best.safetensors").state_dict()  # validated: the average, never w2
    assert all(torch.equal(best[k], ema1[k]) for k in w1) or all(torch.equal(best[k], ema2[k]) for k in w1)
    capsys.readouterr()
    assert main(["train", *common[:-1], "train.ema_decay=1.0", "--steps", "1"]) == 2
    assert "train.ema_decay must be in [0, 1)" in capsys.readouterr().err
    # Was: a resume without the average left ema.safetensors at its old step, passing for the run's.
    before = {n: (out / n).read_bytes() for n in ("last.safetensors", "ema.safetensors", "run.json")}
    assert main(["train", *common[:-1], "train.ema_decay=0", "--steps", "3"]) == 2
    assert "trained with a weight average (last.ema.safetensors)" in capsys.readouterr().err
    assert all((out / n).read_bytes() == b for n, b in before.items())  # refused before anything was written
    # Starting over without an average: nothing of the earlier run is left to pass for the new one's.
    assert main(["train", *common[:-1], "train.ema_decay=0", "--steps", "1", "--no-resume"]) == 0
    assert not (out / "ema.safetensors").exists() and not (out / "last.ema.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "best.safetensors.sha256", "last.optim.safetensors",
                                                      "last.optim.safetensors.sha256", "last.safetensors",
                                                      "last.safetensors.sha256", "log.jsonl", "run.json", "summary.json"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_background_mixers_train_reproducibly_on_threads_and_processes(tmp_path, capsys):
    # train.loader_threads mixes on threads (train.loader_processes: in worker processes);
    # batches are taken in a fixed turn, so every run agrees, whichever the loader.
    weights = []
    for name, processes in (("a", "false"), ("b", "false"), ("c", "true")):
        rc = main(["train", CONFIG, "--out", str(tmp_path / name), "--steps", "5", "--set", "train.val_every=100",
                   "--set", "train.progress=false", "--set", "model.config.hidden=16",
                   "--set", "train.loader_threads=3", "--set", f"train.loader_processes={processes}",
                   "--set", "train.threads=1"])
        assert rc == 0
        weights.append(load_checkpoint(tmp_path / name / "last.safetensors").state_dict())
    capsys.readouterr()
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, capsys):
    # lr 1e20: the first update wrecks the weights and every later loss is NaN. Those updates are
    # skipped, and after MAX_NONFINITE_STEPS in a row training stops (not 200 steps of NaN) with
    # the last finite weights saved.
    from audioae.train import MAX_NONFINITE_STEPS

    out = tmp_path / "run"
    rc = main(["train", CONFIG, "--out", str(out), "--steps", "200", "--set", "train.lr=1e20",
               "--set", "train.val_every=1000", "--set", "train.progress=false", "--set", "model.config.hidden=16"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"non-finite for {MAX_NONFINITE_STEPS} steps in a row" in err
    assert f"up to step {MAX_NONFINITE_STEPS + 1}," in err
    weights = load_checkpoint(out / "last.safetensors").state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_a_diverged_float16_run_saves_no_collapsed_loss_scale(tmp_path, capsys, monkeypatch):
    """Was: the non-finite stop saved the resume point with the GradScaler's scale halved on every
    NaN step of the streak (65536 / 2**20), and a resume restored it, doubling only once per 2000
    steps. A CPU scaler, enabled, stands in for float16 AMP's CUDA one (the same class)."""
    from safetensors import safe_open

    from audioae.train import MAX_NONFINITE_STEPS

    real = torch.amp.GradScaler
    scalers = []

    def cpu_scaler(device, enabled=True):
        scalers.append(real("cpu", enabled=True))
        return scalers[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", cpu_scaler)
    out = tmp_path / "run"
    rc = main(["train", CONFIG, "--out", str(out), "--steps", "200", "--set", "train.lr=1e20",
               "--set", "train.val_every=1000", "--set", "train.progress=false", "--set", "model.config.hidden=16"])
    assert rc == 2
    assert f"non-finite for {MAX_NONFINITE_STEPS} steps in a row" in capsys.readouterr().err
    assert scalers and scalers[0].get_scale() < 65536.0 / 2 ** 10  # the streak did collapse it
    with safe_open(out / "last.optim.safetensors", "pt") as f:
        assert "loss_scale" not in f.metadata()  # so a resume starts again at the initial scale


@pytest.mark.filterwarnings("error::RuntimeWarning")  # was numpy's "Mean of empty slice" (STOI of NaN outputs)
def test_a_run_whose_validation_output_is_not_finite_stops_with_a_clear_error(tmp_path, capsys):
    """lr 1e10, 10 steps validated at the end: fewer bad steps than MAX_NONFINITE_STEPS, so the run
    exited 0 with "best_val": null and weights that give NaN. Validation now stops it."""
    out = tmp_path / "run"
    rc = main(["train", CONFIG, "--out", str(out), "--steps", "10", "--set", "train.lr=1e10",
               "--set", "train.val_every=10", "--set", "train.progress=false", "--set", "model.config.hidden=16"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "at step 10 the model's output on the validation set is not finite" in err, err
    assert "train.lr 10000000000.0 too high?" in err
    assert not (out / "best.safetensors").exists()


def test_a_float16_run_whose_gradients_overflow_at_every_scale_stops(tmp_path, capsys, monkeypatch):
    """Overflow skips are not bad steps, but a run where every scaled gradient is inf would halve
    the scale for ever and train nothing: MAX_SCALER_SKIPS in a row stop it, with the last applied
    weights kept and no collapsed scale saved."""
    from safetensors import safe_open

    from audioae.train import MAX_SCALER_SKIPS

    real = torch.amp.GradScaler

    class AlwaysOverflowing(real):
        def scale(self, outputs):
            return super().scale(outputs) * math.inf

    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: AlwaysOverflowing("cpu"))
    out = tmp_path / "run"
    rc = main(["train", CONFIG, "--out", str(out), "--steps", "200", "--set", "train.val_every=1000",
               "--set", "train.progress=false", "--set", "model.config.hidden=16"])
    assert rc == 2
    assert f"GradScaler skipped {MAX_SCALER_SKIPS} steps in a row on inf/NaN gradients" in capsys.readouterr().err
    with safe_open(out / "last.optim.safetensors", "pt") as f:
        assert "loss_scale" not in f.metadata()


@pytest.mark.parametrize("key, module", [("pesq_weight", "torch_pesq"), ("stoi_weight", "torch_stoi")])
def test_a_perceptual_loss_without_its_package_is_refused_before_anything_is_written(tmp_path, key, module):
    """Was: the corpus loaded and run.json written, then a bare ModuleNotFoundError at step 1. The
    package is made unimportable for real in a fresh interpreter (a None in sys.modules is what
    Python's import treats as absent)."""
    out = tmp_path / "run"
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from audioae.cli import main\n"
              f"sys.exit(main(['train', {CONFIG!r}, '--out', {str(out)!r}, '--set', 'train.{key}=0.1']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert f"train.{key}=0.1 needs torch-" in proc.stderr and "pip install -e '.[train]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_one_process_on_cuda_n_makes_it_the_current_device(tmp_path, monkeypatch):
    """Was: only DDP ranks called torch.cuda.set_device, so one process on cuda:1 left cuda:0 the
    current device (cuDNN handles, bare "cuda" tensors). No GPU needed: the call is recorded, and
    stops the run before anything else."""
    import audioae.train as train_module

    class Stop(Exception):
        pass

    calls = []

    def set_device(device):
        calls.append(device)
        raise Stop

    monkeypatch.setattr(train_module.runtime, "pick_device", lambda name: torch.device(name))
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    run = train_module.load_run_config(CONFIG, [f'train.out_dir="{tmp_path / "run"}"', 'train.device="cuda:1"'])
    with pytest.raises(Stop):
        train_module.train(run, resume=False)
    assert calls == [torch.device("cuda", 1)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_weight_average_lives_on_the_models_device_with_packed_recurrent_weights():
    """AveragedModel without device= deep-copied a CUDA GRU, whose copy's weights were no longer
    cuDNN's one packed buffer ("not part of single contiguous chunk of memory" on every call)."""
    import warnings

    from audioae.models import build_model
    from audioae.train import _weight_average

    model = build_model("recurrent", {"n_fft": 64, "hop_length": 16, "hidden": 16, "code_dim": 8}).cuda()
    ema = _weight_average(model, 0.9, None)
    assert {p.device for p in ema.module.parameters()} == {next(model.parameters()).device}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = denoise(ema.module.eval(), 0.1 * torch.randn(1, 1600), ema.module.config.sample_rate)
    assert y.shape == (1, 1600)


def test_decay_by_time_needs_a_time_budget(tmp_path, capsys):
    rc = main(["train", CONFIG, "--out", str(tmp_path / "run"), "--set", "train.decay_by_time=true"])
    assert rc == 2
    assert "decay_by_time needs train.max_minutes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_missing_relative_corpus_folder_says_where_it_was_looked_for(tmp_path, capsys, monkeypatch):
    """A config's relative paths are the current folder's: "corpus/train/speech: no such folder"
    alone did not say where it was looked for (a config run from another folder)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", CONFIG, "--out", str(tmp_path / "run"), "--set", 'data.clean_dir="corpus/speech"']) == 2
    err = capsys.readouterr().err
    assert f"corpus/speech: no such folder (a relative path: read from the current folder, {tmp_path})" in err, err


@pytest.mark.parametrize("key", ["clean_dir", "noise_dir", "val_clean_dir"])
def test_a_missing_or_empty_corpus_folder_leaves_no_run_folder(tmp_path, capsys, key):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile.wav").write_bytes(b"")
    for folder, said in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "no usable audio files"),
                         (tmp_path / "afile.wav", "a file, not a folder")):  # was "no such folder"
        rc = main(["train", CONFIG, "--out", str(tmp_path / "run"), "--set", f'data.{key}="{folder}"'])
        assert rc == 2
        assert f"{folder}: {said}" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()  # was: an empty run folder


def test_bad_config_key_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", CONFIG, "--out", str(tmp_path), "--set", "train.stepz=3"])
    assert rc == 2
    assert "no key(s) ['stepz'] (did you mean 'steps'?); valid: [" in capsys.readouterr().err
    assert main(["train", CONFIG, "--out", str(tmp_path), "--set", "model.config.hiden=3", "--set",
                 "model.config.qqq=1", "--set", "model.config.cod_dim=4"]) == 2
    assert "no key(s) ['cod_dim', 'hiden', 'qqq'] (did you mean 'code_dim' for 'cod_dim', 'hidden' for 'hiden'?)" \
        in capsys.readouterr().err


def test_a_config_that_is_not_toml_or_an_output_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.md").write_text("# a heading\nsome prose\n")
    assert main(["train", str(tmp_path / "notes.md"), "--out", str(tmp_path / "run")]) == 2
    assert "notes.md: not a TOML run config" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file")
    assert main(["train", CONFIG, "--out", str(tmp_path / "taken"), "--steps", "1"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_missing_binary_or_folder_config_is_named_as_a_run_config(tmp_path, capsys):
    """Were "[Errno 2] No such file or directory: ...", "[Errno 21] Is a directory: ..." and
    "'utf-8' codec can't decode byte ...": nothing said it was the run config."""
    (tmp_path / "bytes.toml").write_bytes(bytes(range(128, 256)))
    for path, text in [(tmp_path / "nope.toml", "nope.toml: no such run config (the example configs are in the source repository's configs/"),
                       (tmp_path, "a folder, not a run config; name a .toml file in it"),
                       (tmp_path / "bytes.toml", "bytes.toml: not a TOML run config ('utf-8' codec")]:
        assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
        assert text in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "text"), [
    ("train.lr=fast", "lr = 'fast': expected float (a number such as 0.25)"),
    ("train.steps=1.5", "steps = 1.5: expected int (an integer such as 2)"),
    ("model.config.hidden=abc", "hidden = 'abc': expected int (an integer such as 2)"),
    ("data.snr_low=true", "snr_low = True: expected float (a number such as 0.25)"),
    # was "expected tuple[str, ...]": Python's annotation, and no word on how to write a list
    ("train.metrics=si_sdr,stoi", "metrics = 'si_sdr,stoi': expected tuple[str, ...] (a list of texts such as "
                                  "[\"gru\", \"l1\"]); write a list in brackets: [\"si_sdr\", \"stoi\"]"),
    ("train.metrics=3", "metrics = 3: expected tuple[str, ...] (a list of texts such as"),
    # was the same words without a hint: the brackets were there, the quotes were not
    ("train.metrics=[si_sdr]", "metrics = '[si_sdr]': expected tuple[str, ...] (a list of texts such as "
                               "[\"gru\", \"l1\"]); each text in the list needs quotes: [\"si_sdr\"]"),
    ("train.metrics=si_sdr", "; write a list in brackets: [\"si_sdr\"]"),
    # was "family weights must be finite numbers >= 0, got {'white': 'x'}", naming no setting
    ('data.noise_weights={white="x"}', "data.noise_weights: each weight must be a number >= 0, as in "
                                       "{ babble = 2.0 }; got {'white': 'x'}")])
def test_a_value_of_the_wrong_type_is_a_clear_error(tmp_path, capsys, override, text):
    assert main(["train", CONFIG, "--out", str(tmp_path), "--set", override]) == 2
    assert text in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(("annotation", "text"), [
    # was "str (a text such as \"gru\") or float (a number such as 0.25)": taken for a union
    (dict[str, float], "dict[str, float] (a table such as { a = 1 })"),
    (tuple[dict[str, int], ...], "tuple[dict[str, int], ...] (a list of tables such as [{ a = 1 }, { b = 2 }])"),
    (set[int], "set[int]"),  # not known here: the annotation alone
    (int | str, "int (an integer such as 2) or str (a text such as \"gru\")"),
    (float | None, "float (a number such as 0.25), or the key left out for none"),
    (tuple[int, ...], "tuple[int, ...] (a list of integers such as [2, 4])"),
    (tuple[int, int], "tuple[int, int] (a list of 2 integers such as [2, 4])")])
def test_each_kind_of_annotation_is_described_in_words(annotation, text):
    from audioae.config import describe_type

    assert describe_type(annotation) == text


def test_ddp_two_gloo_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous (port 0 is not accepted)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}",
           "-m", "audioae.cli", "train", CONFIG, "--out", str(out), "--steps", "5", "--device", "cpu",
           "--set", "train.val_every=100", "--set", "train.progress=false", "--set", "model.config.hidden=16"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["replica_max_abs_diff"] == 0.0
    assert load_checkpoint(out / "last.safetensors").num_parameters() > 0


def _signal_once_logged(cmd: list[str], log, records: int, sig) -> tuple[int, str]:
    """Run ``cmd`` (one torch thread), send it ``sig`` once ``log`` holds ``records`` lines, and
    return its exit status and stderr; fails if it ends first or takes over two minutes."""
    import time

    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not log.is_file() or len(log.read_text().splitlines()) < records:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    return proc.returncode, err


def test_ctrl_c_or_sigterm_saves_whole_steps_and_the_same_command_resumes(tmp_path):
    """Training stops at a step boundary on SIGINT/SIGTERM and saves its resume point there,
    instead of losing everything since the last periodic checkpoint (here: never)."""
    import signal

    from audioae.checkpoint import checkpoint_extra

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "audioae.cli", "train", CONFIG, "--out", str(out), "--steps", "100000",
           "--set", "train.progress=false", "--set", "train.checkpoint_seconds=100000", "--set", "train.threads=1",
           "--set", "train.val_every=100000", "--set", "model.config.hidden=16"]
    steps = [0]
    # the second run mixes in a forked worker process, which inherits the handlers
    for sig, extra in ((signal.SIGINT, []), (signal.SIGTERM, ["--set", "train.loader_threads=1",
                                                              "--set", "train.loader_processes=true"])):
        # until this run has logged a step (one record every 50)
        returncode, err = _signal_once_logged([*cmd, *extra], out / "log.jsonl", len(steps), sig)
        assert returncode == 128 + sig, err[-2000:]
        said = re.search(rf"interrupted: {sig.name} at step (\d+); .*last.safetensors holds it", err)
        assert said, err[-2000:]
        steps.append(int(said.group(1)))
        assert checkpoint_extra(out / "last.safetensors")["step"] == steps[-1] > steps[-2]  # resumed, went on
    assert load_checkpoint(out / "last.safetensors").num_parameters() > 0


def test_init_from_grows_a_mask_model_into_a_deep_filter_one(tmp_path, capsys):
    """train.init_from: a deep-filter run starts from a mask run's weights, function-preserving
    (with lr 0 the grown model must still compute exactly what the mask model did)."""
    common = ["--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", "train.val_every=100"]
    assert main(["train", CONFIG, "--out", str(tmp_path / "mask"), "--steps", "3", *common]) == 0
    mask_ckpt = tmp_path / "mask" / "last.safetensors"
    assert main(["train", CONFIG, "--out", str(tmp_path / "df"), "--steps", "2", *common,
                 "--set", "model.config.output=deepfilter", "--set", "model.config.df_bins=20",
                 "--set", f"train.init_from={mask_ckpt}", "--set", "train.lr=0"]) == 0
    mask, grown = load_checkpoint(mask_ckpt), load_checkpoint(tmp_path / "df" / "last.safetensors")
    assert grown.config.deep_filter and not mask.config.deep_filter
    wav = torch.randn(1, 4001) * 0.1
    torch.testing.assert_close(denoise(grown, wav, 8000), denoise(mask, wav, 8000), atol=1e-6, rtol=0)


def test_cosine_decay_reaches_the_final_rate():
    from audioae.train import TrainConfig, decayed_lr

    tc = TrainConfig(lr=1e-3, lr_final=1e-4, decay_steps=100)
    assert decayed_lr(tc, 0.0) == 1e-3
    assert abs(decayed_lr(tc, 0.5) - 5.5e-4) < 1e-12
    assert decayed_lr(tc, 1.0) == decayed_lr(tc, 5.0) == 1e-4
    assert decayed_lr(tc, 0.30) > decayed_lr(tc, 0.31)


def test_decay_by_time_ends_at_the_final_rate(tmp_path, capsys):
    # A wall-time budget with decay_by_time: the last logged step runs at (about) lr_final.
    out = tmp_path / "run"
    rc = main(["train", CONFIG, "--out", str(out), "--steps", "100000", "--set", "train.max_minutes=0.1",
               "--set", "train.decay_by_time=true", "--set", "train.lr=1e-2", "--set", "train.lr_final=1e-4",
               # a cheap validation every 5 steps logs the rate often, however slow the machine
               "--set", "train.val_every=5", "--set", 'train.metrics=["si_sdr"]',
               "--set", "train.progress=false", "--set", "model.config.hidden=16"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] > 10
    assert abs(summary["final_lr"] - 1e-4) < 1e-4 * 0.05
    # and it got there by decaying: log.jsonl's rates (every 5 steps) never rise, and one lies
    # strictly between the two ends (a jump to lr_final at the start or the end would not)
    rates = [r["lr"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert any(1.05e-4 < r < 0.95e-2 for r in rates)


def test_a_split_run_resumes_its_clock_and_decays_over_the_whole_budget(tmp_path, capsys, caplog):
    # train.session_minutes: each invocation trains a slice of max_minutes and stops with a
    # resume point; the next one continues the run's clock, so the rate decays across all of
    # them and the run ends once max_minutes are done, at lr_final.
    out = tmp_path / "run"
    args = ["train", CONFIG, "--out", str(out), "--steps", "1000000", "--set", "train.max_minutes=0.06",
            "--set", "train.session_minutes=0.02", "--set", "train.decay_by_time=true", "--set", "train.lr=1e-2",
            "--set", "train.lr_final=1e-4", "--set", "train.val_every=100000", "--set", 'train.metrics=["si_sdr"]',
            "--set", "train.progress=false", "--set", "model.config.hidden=16"]
    summaries = []
    while not summaries or summaries[-1]["minutes_done"] < 0.06:
        assert len(summaries) < 8, summaries
        assert main(args) == 0
        summaries.append(json.loads(capsys.readouterr().out))
    first, second, final = summaries[0], summaries[1], summaries[-1]
    assert 0.02 <= first["minutes_done"] < 0.06 and first["final_lr"] > 2e-4  # stopped mid-schedule
    assert second["steps"] > first["steps"] and second["minutes_done"] > first["minutes_done"]  # resumed
    assert second["final_lr"] < first["final_lr"]  # and the decay went on from there
    assert abs(final["final_lr"] - 1e-4) < 1e-4 * 0.05
    assert main(args) == 0  # the budget is spent: one more invocation trains nothing and says so
    assert json.loads(capsys.readouterr().out)["steps"] == final["steps"]  # was one more step per call
    assert "the phase's budget is spent" in caplog.text


def test_a_new_schedule_under_session_minutes_gets_a_budget_of_its_own(tmp_path, capsys, caplog):
    """Was: a new phase under train.session_minutes carried the last phase's clock, so a stage
    after a spent one trained nothing and said "the run's budget is spent". Only a change of
    max_minutes alone continues a phase (its clock goes on); a resume that trains nothing reports
    the rate the run ended at, not train.lr."""
    out = tmp_path / "run"
    common = ["train", CONFIG, "--out", str(out), "--steps", "1000000", "--set", "train.val_every=100000",
              "--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", 'train.metrics=["si_sdr"]',
              "--set", "train.decay_by_time=true", "--set", "train.lr_final=1e-4"]
    assert main([*common, "--set", "train.max_minutes=0.02"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*common, "--set", "train.max_minutes=0.02"]) == 0  # spent: nothing trained, at lr_final
    again = json.loads(capsys.readouterr().out)
    assert again["steps"] == first["steps"] and again["final_lr"] == pytest.approx(1e-4)
    stage = [*common, "--set", "train.lr=1e-3", "--set", "train.max_minutes=0.05", "--set",
             "train.session_minutes=0.03"]
    assert main(stage) == 0
    second = capsys.readouterr()
    assert "a new phase (train.lr" in second.err and "start again here" in second.err
    second = json.loads(second.out)
    assert second["steps"] > first["steps"] and 0.03 <= second["phase_minutes"] < 0.05
    assert main(stage) == 0  # the same command: the phase goes on to its budget
    third = json.loads(capsys.readouterr().out)
    assert third["steps"] > second["steps"] and third["phase_minutes"] >= 0.05
    caplog.clear()
    assert main(stage) == 0
    assert "the phase's budget is spent (" in caplog.text
    assert json.loads(capsys.readouterr().out)["steps"] == third["steps"]
    raised = [*stage[:-4], "--set", "train.max_minutes=0.08", "--set", "train.session_minutes=0.03"]
    assert main(raised) == 0  # a larger budget alone: the phase's clock goes on
    fourth = capsys.readouterr()
    assert "continuing its phase, begun at step" in fourth.err and "train.max_minutes 0.05 -> 0.08" in fourth.err
    fourth = json.loads(fourth.out)
    assert fourth["steps"] > third["steps"] and fourth["phase_minutes"] >= 0.08 > third["phase_minutes"]


def test_the_input_is_scored_before_the_clock_starts(tmp_path, capsys, monkeypatch):
    """Was: the input's PESQ and STOI were scored at each invocation's first validation, inside the
    timed loop (~19 s of each 8.5-minute session on the GPU config's budget)."""
    import time

    import audioae.train as train_module

    scored, inputs_given = [], []
    input_scores, validate = train_module.input_scores, train_module.validate

    def slow_input_scores(*args):
        time.sleep(2.0)
        scored.append(input_scores(*args))
        return scored[-1]

    def recording_validate(model, val_set, metrics, inputs=False):
        inputs_given.append(inputs)
        return validate(model, val_set, metrics, inputs)

    monkeypatch.setattr(train_module.loop, "input_scores", slow_input_scores)
    monkeypatch.setattr(train_module.loop, "validate", recording_validate)
    assert main(["train", CONFIG, "--out", str(tmp_path / "run"), "--steps", "2", "--set", "train.val_every=1",
                 "--set", "train.progress=false", "--set", "model.config.hidden=16",
                 "--set", 'train.metrics=["si_sdr", "stoi"]']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(scored) == 1 and "stoi_in" in scored[0] and summary["seconds"] < 2.0
    assert inputs_given and all(isinstance(given, dict) and "stoi_in" in given for given in inputs_given)


def test_session_minutes_needs_a_budget_to_split(tmp_path, capsys):
    assert main(["train", CONFIG, "--out", str(tmp_path / "r"), "--set", "train.session_minutes=1"]) == 2
    assert "session_minutes splits train.max_minutes" in capsys.readouterr().err


def test_best_checkpoint_follows_the_select_by_metric(tmp_path, capsys):
    out = tmp_path / "run"
    # Settings where the two metrics peak at different steps (STOI at 2, SI-SDR at 6; refound
    # when the synthetic noise changed).
    rc = main(["train", CONFIG, "--out", str(out), "--steps", "12", "--set", "train.val_every=2",
               "--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", "train.lr=0.003",
               "--set", 'train.metrics=["si_sdr", "stoi"]', "--set", 'train.select_by="stoi"'])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    vals = {r["step"]: r["val"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val" in r}
    by_stoi = max(vals, key=lambda s: (vals[s]["stoi"], -s))  # the first step reaching the top STOI
    assert by_stoi != max(vals, key=lambda s: (vals[s]["si_sdr"], -s))  # (the two choices differ in this run)
    assert summary["select_by"] == "stoi" and summary["best_val"] == vals[by_stoi]["stoi"]
    from audioae.checkpoint import checkpoint_extra

    assert checkpoint_extra(out / "best.safetensors")["step"] == by_stoi


def test_select_by_must_be_a_validated_metric(tmp_path, capsys):
    rc = main(["train", CONFIG, "--out", str(tmp_path), "--steps", "1", "--set", 'train.metrics=["si_sdr"]',
               "--set", 'train.select_by="pesq"'])
    assert rc == 2
    assert "train.select_by='pesq' is not among train.metrics ['si_sdr']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_noise_settings_that_the_corruption_never_reads_are_refused(tmp_path, capsys):
    """Was: a config with a noise folder but the default corruption "none" trained a plain
    autoencoder on clean speech (val si_sdr_in scored the clean signal against itself: a number
    set by si_sdr's eps alone), the noise loaded and left unused; the SNR
    range of the other place (model.config for mix, data for gaussian) was ignored."""
    import numpy as np
    import soundfile as sf

    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "hiss.wav", 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32), 8000)
    common = [CONFIG, "--out", str(tmp_path / "run"), "--steps", "1", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    for settings, said in (
            ([f'data.noise_dir="{noise}"', 'model.config.corruption="none"'],
             "data.noise_dir: only corruption = \"mix\" reads it, and this model's corruption is 'none' (the default"),
            (["data.snr_low=10", "data.second_noise_prob=0.5", 'model.config.corruption="gaussian"'],
             "data.second_noise_prob, data.snr_low: only corruption = \"mix\" reads them"),
            (["model.config.snr_low=10"], "corruption \"mix\" draws its SNR from data.snr_low..snr_high (-5..20 dB); "
                                          "model.config sets {'snr_low': 10}")):
        assert main(["train", *common, *[a for s in settings for a in ("--set", s)]]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "run").exists()
    # the same range in both places, and the shipped configs, are fine
    from audioae.models import build_model
    from audioae.train import check_corruption_inputs, load_run_config

    run = load_run_config(CONFIG, ["model.config.snr_low=0", "data.snr_low=0"])
    check_corruption_inputs(run, build_model(run.model, run.model_config))
    for path in SHIPPED_CONFIGS:
        run = _load(path)
        check_corruption_inputs(run, build_model(run.model, run.model_config))


def test_a_resume_under_another_validation_starts_best_over_and_keeps_it_after(tmp_path, capsys, caplog):
    """Was: best.safetensors' score came from the optimizer state, so a run resumed with
    train.select_by="stoi" compared a STOI (below 1, as asserted below) with an SI-SDR in dB and never replaced
    best.safetensors again (nor did a harder validation set), and summary.best_val was that dB."""
    from audioae.checkpoint import checkpoint_extra

    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=2", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", *common, "--steps", "4", "--set", 'train.select_by="stoi"']) == 0
    summary = json.loads(capsys.readouterr().out)
    best = checkpoint_extra(out / "best.safetensors")
    assert best["step"] == 4 and summary["best_val"] == best["val"]["stoi"] < 1
    assert best["validation"]["level_lift"] == [-45.0, 40.0]  # how the network ran: the shipped lift
    assert "was scored under another validation (select_by: 'si_sdr' there, 'stoi' now)" in caplog.text
    # A harder validation (lower SNRs) scores below the recorded SI-SDR: it starts over too.
    assert main(["train", *common, "--steps", "6", "--set", "data.snr_high=-4"]) == 0
    best = checkpoint_extra(out / "best.safetensors")
    assert best["step"] == 6 and best["validation"]["snr"] == [-5.0, -4]
    # Under the same validation the recorded score stands: with lr 0 the weights of step 6 score
    # exactly it again, which does not replace the file.
    assert main(["train", *common, "--steps", "8", "--set", "data.snr_high=-4", "--set", "train.lr=0"]) == 0
    assert checkpoint_extra(out / "best.safetensors")["step"] == 6


def test_a_resume_from_a_best_scored_without_the_level_lift_starts_best_over(tmp_path, capsys, caplog):
    """The validation key names how validation runs the network (its level lift): a best.safetensors
    recorded without it (validation on unlifted features, whose scores differ from lifted ones on
    quiet input) was compared with lifted scores under an otherwise equal key, and a worse model
    could take the file. Here its recorded score is one no validation reaches, as an unlifted score
    above the lifted ones would be: the first validation of the resumed run replaces it all the same."""
    from audioae.checkpoint import checkpoint_extra, load_checkpoint, save_checkpoint
    from audioae.train import VALIDATION_LEVEL_LIFT

    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=2", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "2"]) == 0
    best = out / "best.safetensors"
    extra = checkpoint_extra(best)
    lift = [VALIDATION_LEVEL_LIFT.target_db, VALIDATION_LEVEL_LIFT.max_gain_db]
    assert extra["step"] == 2 and extra["validation"]["level_lift"] == lift == [-45.0, 40.0]
    del extra["validation"]["level_lift"]  # as a run before the field recorded it
    extra["val"]["si_sdr"] = 1000.0
    save_checkpoint(load_checkpoint(best), best, extra)
    capsys.readouterr()
    assert main(["train", *common, "--steps", "4"]) == 0
    assert (f"{best} was scored under another validation (level_lift: None there, [-45.0, 40.0] now): "
            "the first validation of this run replaces it") in caplog.text
    extra = checkpoint_extra(best)
    assert extra["step"] == 4 and extra["val"]["si_sdr"] < 1000 and extra["validation"]["level_lift"] == lift


def test_a_resume_with_other_model_settings_names_them(tmp_path, capsys, caplog):
    """Was: the same command with an edited config (same shapes) resumed without a word."""
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=100", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "2"]) == 0
    assert "resuming its run with other model settings" not in caplog.text
    assert main(["train", *common, "--steps", "3", "--set", 'model.config.sparsity="topk"',
                 "--set", "model.config.topk=2"]) == 0
    assert (f"{out}: resuming its run with other model settings (sparsity: 'none' there, 'topk' now; "
            "topk: 0 there, 2 now); --no-resume or another --out starts a new run instead") in caplog.text


def test_a_resume_given_an_init_from_its_run_did_not_start_from_says_it_is_unused(tmp_path, capsys, caplog):
    """Was: --set train.init_from=X on a folder holding a run resumed that run in silence (init_from
    seeds new runs only), and its run.json then named X as the run's start."""
    out, other = tmp_path / "run", tmp_path / "other"
    common = [CONFIG, "--set", "train.val_every=100", "--set", "train.progress=false", "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--out", str(other), "--steps", "1"]) == 0
    start = str(other / "last.safetensors")
    assert main(["train", *common, "--out", str(out), "--steps", "1"]) == 0
    capsys.readouterr()
    assert main(["train", *common, "--out", str(out), "--steps", "2", "--set", f"train.init_from={json.dumps(start)}"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_at_step"] == 1  # resumed, as before
    assert f"{out}: resuming its run, which did not start from train.init_from={start!r} (it started from random weights)" in caplog.text
    caplog.clear()
    # A phase resumed with the init_from it started from (the recipe's second call) hears nothing.
    grown = [*common, "--out", str(tmp_path / "grown"), "--set", f"train.init_from={json.dumps(start)}"]
    assert main(["train", *grown, "--steps", "1"]) == 0
    assert main(["train", *grown, "--steps", "2"]) == 0
    assert "did not start from train.init_from" not in caplog.text
    # Was: with run.json lost, the resume's record (settings_from_step) held its own init_from, and
    # every later resume with it took that for the run's start and said nothing.
    (tmp_path / "grown" / "run.json").unlink()
    for steps in ("3", "4"):
        caplog.clear()
        assert main(["train", *grown, "--steps", steps]) == 0
        assert (f"did not start from train.init_from={start!r} (run.json does not say what it started from)"
                in caplog.text), steps


def test_init_from_weights_of_another_signal_is_refused(tmp_path, capsys):
    """Was: an 8 kHz run's weights grew into a 16 kHz run (same shapes) in silence, and an n_fft
    256 run's into n_fft 512 with the STFT window "grown" too: a 256-point Hann window then 256
    zeros, which the new run's checkpoints carried (and the streaming STFT does not use)."""
    from audioae.checkpoint import save_checkpoint
    from audioae.models import build_model
    from audioae.train import grow_into, load_run_config

    run = load_run_config(CONFIG, ["model.config.hidden=16"])
    source = build_model(run.model, run.model_config)  # this config's model: it grows, unchanged
    save_checkpoint(source, tmp_path / "src.safetensors")
    common = [CONFIG, "--out", str(tmp_path / "run"), "--steps", "1", "--set", "train.progress=false",
              "--set", "model.config.hidden=16", "--set", f'train.init_from="{tmp_path / "src.safetensors"}"']
    for setting, said in (("model.config.sample_rate=16000", "sample_rate: 8000 there, 16000 now"),
                          ("model.config.n_fft=512", "n_fft: 256 there, 512 now"),
                          ('model.config.compression="log"', "compression: 'power' there, 'log' now")):
        assert main(["train", *common, "--set", setting]) == 2
        assert f"was trained on another signal ({said}): init_from grows a model at the same signal settings" \
            in capsys.readouterr().err
        assert not (tmp_path / "run").exists()
    wider = build_model(run.model, {**run.model_config, "n_fft": 512})
    with pytest.raises(ValueError, match=r"cannot grow stft.spec.window: \(256,\) -> \(512,\) is a fixed buffer"):
        grow_into(wider, source.state_dict())
    assert main(["train", *common, "--set", 'model.config.output="deepfilter"']) == 0  # growing still grows


def test_a_run_killed_before_its_first_resume_point_starts_over_cleanly(tmp_path, caplog):
    """Was: SIGKILL (an OOM kill) before the first periodic checkpoint left best.safetensors and
    log.jsonl, and the same command started over beside them: log.jsonl held every step twice,
    and the killed attempt's best.safetensors stood until the new run's first validation."""
    import signal

    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.progress=false", "--set", "train.threads=1",
              "--set", "train.val_every=2", "--set", "model.config.hidden=16"]
    _signal_once_logged([sys.executable, "-m", "audioae.cli", "train", *common, "--steps", "100000",
                         "--set", "train.checkpoint_seconds=100000"], out / "log.jsonl", 2, signal.SIGKILL)
    assert (out / "best.safetensors").is_file() and not (out / "last.safetensors").exists()
    assert main(["train", *common, "--steps", "2"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [2], steps
    assert "starting over (no resume point (last.safetensors)): removing the earlier run's best.safetensors, " \
           "log.jsonl" in caplog.text
    from audioae.checkpoint import checkpoint_extra

    assert checkpoint_extra(out / "best.safetensors")["step"] == 2


def test_a_kl_target_outside_zero_one_is_refused(tmp_path, capsys):
    """Was: sparsity_target=1.5 trained every step on a NaN loss (log of a negative number; its
    gradient 1/x is finite), log.jsonl said "loss": NaN, and the run reported 0 skipped steps;
    0 and 1 stopped after 20 steps with a non-finite error."""
    kl = ["--set", 'model.config.sparsity="kl"', "--set", 'model.config.code_activation="sigmoid"',
          "--set", "model.config.sparsity_weight=0.1", "--set", "train.progress=false"]
    for target in ("1.5", "0", "1"):
        assert main(["train", CONFIG, "--out", str(tmp_path / "run"), "--steps", "2", *kl,
                     "--set", f"model.config.sparsity_target={target}"]) == 2
        assert f"sparsity_target must be within (0, 1), got {target}\n" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scaled", [False, True], ids=["no_scaler", "grad_scaler"])
def test_a_nan_loss_is_never_stepped_on(scaled):
    """A NaN loss whose gradient is finite is a bad step like a NaN gradient: nothing is applied.
    Was (scaled): fp16 training's GradScaler skips a step only on non-finite gradients, so such a
    loss was applied, and counted as a skipped step. (A CPU scaler: the same class; the disabled
    one is what fp32 and bf16 training step through.)"""
    from audioae.models import build_model
    from audioae.train import _apply_gradients

    model = build_model("linear", {"code_dim": 4, "n_fft": 64, "hop_length": 16})
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True) if scaled else torch.amp.GradScaler("cuda", enabled=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.log(torch.tensor(-1.0)) + model.encoder.weight.sum()  # NaN, with gradient 1 everywhere
    scaler.scale(loss).backward()  # (a disabled scaler's scale is the loss itself)
    assert torch.isfinite(model.encoder.weight.grad).all()
    assert _apply_gradients(model, opt, scaler, 5.0, loss) == "bad"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    opt.zero_grad()
    loss = model.encoder.weight.sum()
    scaler.scale(loss).backward()
    assert _apply_gradients(model, opt, scaler, 5.0, loss) == "applied"  # a finite one is applied
    assert not torch.equal(before["encoder.weight"], model.encoder.weight)
    if scaled:
        opt.zero_grad()
        scale = scaler.get_scale()
        applied = model.encoder.weight.detach().clone()
        scaler.scale(model.encoder.weight.sum() * math.inf).backward()  # an overflow: the scaler's calibration
        # Was True ("applied"): the skip was invisible, and the EMA averaged in the same weights again
        assert _apply_gradients(model, opt, scaler, 5.0, torch.tensor(1.0)) == "overflow"
        assert scaler.get_scale() == scale / 2
        assert torch.equal(applied, model.encoder.weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_scaler_overflow_on_cpu_autocast_is_told(dtype):
    """The same verdict under autocast on the CPU (float16 where this torch has it), an inf
    gradient injected into the backward pass."""
    from audioae.train import _apply_gradients

    lin = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(4, 8)
    try:
        with torch.autocast("cpu", dtype=dtype):
            y = lin(x)
    except RuntimeError as exc:  # an older torch without this autocast dtype on the CPU
        pytest.skip(f"CPU autocast with {dtype}: {exc}")
    y.register_hook(lambda g: g * math.inf)  # the overflow an fp16 backward gives at too high a scale
    loss = y.float().square().mean()
    scaler.scale(loss).backward()
    before = lin.weight.detach().clone()
    assert _apply_gradients(lin, opt, scaler, 5.0, loss) == "overflow"
    assert torch.equal(before, lin.weight) and scaler.get_scale() == 512.0
    opt.zero_grad()
    with torch.autocast("cpu", dtype=dtype):
        loss = lin(x).float().square().mean()
    scaler.scale(loss).backward()
    assert _apply_gradients(lin, opt, scaler, 5.0, loss) == "applied"
    assert not torch.equal(before, lin.weight)


def test_float16_scaler_skips_are_counted_apart_and_leave_the_average_alone(tmp_path, capsys, monkeypatch):
    """Was: a step fp16's GradScaler skipped counted as applied: skipped_steps stayed 0, the EMA
    averaged the unchanged weights in, and nothing said it happened. Its first few skips are its
    calibration and must not stop the run. A CPU scaler, enabled, stands in for CUDA's (the same
    class); its first 3 scaled losses overflow (inf), as 65536 does for a float16 backward."""
    from torch.optim.swa_utils import AveragedModel

    real = torch.amp.GradScaler

    class Overflowing(real):
        calls = 0

        def scale(self, outputs):
            Overflowing.calls += 1
            return super().scale(outputs) * (math.inf if Overflowing.calls <= 3 else 1.0)

    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: Overflowing("cpu", init_scale=1024.0))
    updates = []
    update = AveragedModel.update_parameters
    monkeypatch.setattr(AveragedModel, "update_parameters", lambda self, m: (updates.append(1), update(self, m)))
    out = tmp_path / "run"
    assert main(["train", CONFIG, "--out", str(out), "--steps", "6", "--set", "train.val_every=1000",
                 "--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", "train.ema_decay=0.9"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6 and summary["skipped_steps"] == 0  # not bad steps: the run went on
    assert summary["scaler_skipped_steps"] == 3
    assert summary["final_loss_scale"] == 1024.0 / 8
    assert len(updates) == 3  # the average took the 3 applied steps only
    last = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    assert last["scaler_skipped"] == 3 and last["loss_scale"] == 128.0


def test_the_float16_loss_scale_goes_with_the_resume_point(tmp_path, caplog):
    """Was: last.optim.safetensors kept Adam's moments but not the GradScaler's scale, so a resumed
    float16 run started again at 65536 (overflow-skipped steps, or underflowing gradients for up to
    2000 steps after a run had backed off). A CPU scaler: the same class CUDA training uses."""
    from safetensors import safe_open

    from audioae.models import build_model
    from audioae.train import _load_optimizer, _save_resume_point

    model = build_model("linear", {"code_dim": 4, "n_fft": 64, "hop_length": 16})
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for factor in (math.inf, 1.0):  # an overflow halves the scale; a good step counts towards growth
        opt.zero_grad()
        scaler.scale(model.encoder.weight.sum() * factor).backward()
        scaler.step(opt)
        scaler.update()
    assert (scaler.get_scale(), scaler.state_dict()["_growth_tracker"]) == (512.0, 1)
    _save_resume_point(model, opt, 2, tmp_path, scaler=scaler)

    resumed = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    assert _load_optimizer(torch.optim.AdamW(model.parameters(), lr=0.1), tmp_path / "last.optim.safetensors",
                           resumed)[0] == 2
    assert resumed.state_dict() == scaler.state_dict()
    # float32 and bfloat16 runs keep none, and a float16 run resumed from one starts at its initial scale
    _save_resume_point(model, opt, 3, tmp_path, scaler=torch.amp.GradScaler("cuda", enabled=False))
    with safe_open(tmp_path / "last.optim.safetensors", "pt") as f:
        assert "loss_scale" not in f.metadata()
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with caplog.at_level("INFO", logger="audioae.train"):
        _load_optimizer(torch.optim.AdamW(model.parameters(), lr=0.1), tmp_path / "last.optim.safetensors", fresh)
    assert fresh.get_scale() == 1024.0 and "keeps no float16 loss scale: it starts again at 1024" in caplog.text


def test_a_resume_drops_the_log_records_of_steps_lost_with_a_killed_run(tmp_path, caplog):
    """Was: a run SIGKILLed between its resume point and the next kept the records of the steps
    after it in log.jsonl, and the resumed run logged those steps again: each one twice."""
    import signal

    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.progress=false", "--set", "train.threads=1",
              "--set", "train.val_every=2", "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "2"]) == 0  # the resume point: step 2
    _signal_once_logged([sys.executable, "-m", "audioae.cli", "train", *common, "--steps", "100000",
                         "--set", "train.checkpoint_seconds=100000"],
                        out / "log.jsonl", 4, signal.SIGKILL)  # steps 2 (the first run), 4, 6, 8
    assert main(["train", *common, "--steps", "4"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4], steps
    assert "past the resume point at step 2 (the steps after it were lost" in caplog.text


def test_starting_over_never_deletes_files_of_a_folder_that_is_no_run(tmp_path):
    """Was: a run into a folder holding someone's summary.json and log.jsonl, with no resume point
    there, removed them as "the earlier run's" (train.out_dir = "/" would have reached /log.jsonl)."""
    out = tmp_path / "papers"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}')
    (out / "log.jsonl").write_text("my notes\n")
    for extra in ([], ["--no-resume"]):
        assert main(["train", CONFIG, "--out", str(out), "--steps", "1", *extra]) == 2
        assert (out / "summary.json").read_text() == '{"mine": true}' and (out / "log.jsonl").read_text() == "my notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "summary.json"]


def test_run_json_keeps_the_starting_settings_and_lists_each_resume_with_what_it_changed(tmp_path, capsys):
    """Was: each resume rewrote run.json with its own settings, so the folder no longer said what
    the earlier steps were trained with (here: lr 0.003 for steps 1..2)."""
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=100", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "2", "--set", "train.lr=0.003"]) == 0
    started = json.loads((out / "run.json").read_text())
    assert started["train"]["lr"] == 0.003 and "resumes" not in started
    assert main(["train", *common, "--steps", "3", "--set", "train.lr=0.001"]) == 0
    assert main(["train", *common, "--steps", "4", "--set", "train.lr=0.001"]) == 0
    capsys.readouterr()
    record = json.loads((out / "run.json").read_text())
    assert {k: record[k] for k in ("model", "data", "train")} == started  # still what the run started with
    assert record["resumes"] == [
        {"step": 2, "changed": {"train.lr": {"was": 0.003, "now": 0.001}, "train.steps": {"was": 2, "now": 3}}},
        {"step": 3, "changed": {"train.steps": {"was": 3, "now": 4}}},  # lr as the resume before set it
    ]
    (out / "run.json").unlink()  # lost: the resume's settings are recorded as holding from its step
    assert main(["train", *common, "--steps", "5"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["settings_from_step"] == 4 and record["train"]["steps"] == 5 and "resumes" not in record


@pytest.mark.parametrize(("argv", "text"), [
    ([], "the following arguments are required: {train,models,examples,denoise,"),
    (["images"], "the following arguments are required: {report}"),
    (["client"], "the following arguments are required: {denoise,stream,decompose,models,health}"),
])
def test_a_missing_subcommand_is_named_by_its_choices(argv, text, capsys):
    """It was named by the parser's internal slot: "required: images_command"."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and text in capsys.readouterr().err


def _train_lines(err: str) -> list[str]:
    """What `audioae train` said on stderr for a person (the resume and the validations)."""
    return [line for line in err.splitlines() if line.startswith(("resumed from", "step "))]


def test_a_finished_run_rerun_says_nothing_to_train_once_before_reading_any_data(tmp_path, capsys, caplog,
                                                                                monkeypatch):
    """Was: `resumed from .../last.safetensors at step 200: continuing its phase from step 0` and then
    `nothing to train`, after loading the data and building the validation set (44 s for nothing).
    And one process wrote no summary.json, where torchrun's rank 0 did."""
    import audioae.train as train_module

    out = tmp_path / "run"
    cmd = ["train", CONFIG, "--out", str(out), "--steps", "2", "--set", "train.val_every=2", "--set",
           "train.progress=false", "--set", "model.config.hidden=16", "--set", 'train.metrics=["si_sdr"]']
    assert main(cmd) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "summary.json").read_text())
    assert written["steps"] == printed["steps"] == 2 and written["best_val"] == printed["best_val"]
    assert written["world_size"] == 1 and written["out_dir"] == str(out)
    before = _run_files(out)

    def refuse(*args, **kwargs):
        raise AssertionError("read the data with nothing to train")

    monkeypatch.setattr(train_module.loop, "_sources", refuse)
    monkeypatch.setattr(train_module.loop, "make_validation_set", refuse)
    assert main(cmd) == 0
    said = capsys.readouterr()
    assert "resumed from" not in said.err and "nothing to train" in said.err + caplog.text
    assert json.loads(said.out)["best_val"] == printed["best_val"]  # the folder's best, still reported
    assert _run_files(out) == before  # summary.json included: a call that trained nothing leaves it


def test_a_resume_with_the_same_schedule_continues_its_phase_and_new_settings_start_a_new_one(tmp_path, capsys):
    """Was: every resume restarted the cosine decay (decay_steps counted from the invocation), so
    the same command after an interruption took the rate back up. Settings that change the
    schedule still start a new phase (the fine-tuning stages of recipes/train_denoiser.sh)."""
    from audioae.train import TrainConfig, decayed_lr

    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=4", "--set", "train.progress=false",
              "--set", "model.config.hidden=16", "--set", "train.decay_steps=20", "--set", "train.lr=1e-2",
              "--set", "train.lr_final=1e-4", "--set", 'train.metrics=["si_sdr"]']
    assert main(["train", *common, "--steps", "8"]) == 0  # stopped part-way (as an interruption would)
    first = capsys.readouterr()
    lines = _train_lines(first.err)
    # one line per validation, shown by default, each score beside the unprocessed input's
    assert [line.split(":")[0] for line in lines] == ["step 4", "step 8"], first.err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    si_in = records[-1]["val"]["si_sdr_in"]
    assert f"(input {si_in:.2f})" in lines[-1] and lines[-1].endswith(" min")
    assert json.loads(first.out)["best_val_input"] == pytest.approx(si_in)

    assert main(["train", *common, "--steps", "20"]) == 0  # the same schedule: the phase goes on
    second = capsys.readouterr()
    assert _train_lines(second.err)[0].startswith(f"resumed from {out / 'last.safetensors'} at step 8: continuing "
                                                  f"its phase, begun at step 0 (")
    tc = TrainConfig(lr=1e-2, lr_final=1e-4, decay_steps=20)
    assert json.loads(second.out)["final_lr"] == pytest.approx(decayed_lr(tc, 19 / 20))  # was (19 - 8) / 20

    assert main(["train", *common, "--steps", "24", "--set", "train.lr=5e-3"]) == 0  # another lr: a new phase
    third = capsys.readouterr()
    assert "a new phase (train.lr 0.01 -> 0.005): the learning-rate decay and the max_minutes budget start " \
           "again here" in _train_lines(third.err)[0]
    tc = TrainConfig(lr=5e-3, lr_final=1e-4, decay_steps=20)
    assert json.loads(third.out)["final_lr"] == pytest.approx(decayed_lr(tc, 3 / 20))


def _phase_minutes(out: Path) -> float:
    from safetensors import safe_open

    with safe_open(out / "last.optim.safetensors", "pt") as f:
        return json.loads(f.metadata()["phase"])["minutes"]


def test_an_interrupted_time_budget_goes_on_and_a_spent_one_records_no_resume(tmp_path, capsys, caplog):
    """Was: after SIGTERM the same command started max_minutes and the time decay again, a call
    with the budget spent still added a resume record to run.json, and minutes_done went down."""
    import signal

    out = tmp_path / "run"
    args = [CONFIG, "--out", str(out), "--steps", "1000000", "--set", "train.max_minutes=0.6",
            "--set", "train.decay_by_time=true", "--set", "train.lr=1e-2", "--set", "train.lr_final=1e-4",
            "--set", "train.val_every=100000", "--set", 'train.metrics=["si_sdr"]', "--set", "train.progress=false",
            "--set", "model.config.hidden=16", "--set", "train.threads=1", "--set", "train.checkpoint_seconds=100000"]
    returncode, err = _signal_once_logged([sys.executable, "-m", "audioae.cli", "train", *args],
                                          out / "log.jsonl", 1, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, err[-2000:]
    before = _phase_minutes(out)
    assert 0 < before < 0.6
    assert main(["train", *args]) == 0  # the same command: the rest of the budget, not another one
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["seconds"] < 60 * (0.6 - before) + 5
    assert resumed["phase_minutes"] >= 0.6 and resumed["final_lr"] == pytest.approx(1e-4, rel=0.05)
    recorded = (out / "run.json").read_text()
    assert main(["train", *args]) == 0  # spent: nothing trained, nothing recorded, no fewer minutes
    spent = json.loads(capsys.readouterr().out)
    assert "the phase's budget is spent" in caplog.text
    assert spent["steps"] == resumed["steps"] and (out / "run.json").read_text() == recorded
    assert spent["minutes_done"] == resumed["minutes_done"]


def test_run_files_that_are_no_model_say_what_to_load_and_best_says_where_it_came_from(tmp_path, capsys):
    import soundfile as sf

    out = tmp_path / "run"
    assert main(["train", CONFIG, "--out", str(out), "--steps", "2", "--set", "train.val_every=2",
                 "--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", "train.ema_decay=0.5",
                 "--set", 'train.metrics=["si_sdr"]']) == 0
    capsys.readouterr()
    wav = tmp_path / "x.wav"
    sf.write(wav, 0.1 * torch.randn(8000).numpy(), 8000)
    assert main(["denoise", str(wav), "-o", str(tmp_path / "d"), "--model", str(out / "last.optim.safetensors")]) == 2
    assert "this is a training run's optimizer state (last.optim.safetensors), not a model; use best.safetensors " \
           "or last.safetensors" in capsys.readouterr().err
    assert load_checkpoint(out / "last.ema.safetensors").num_parameters() > 0  # the average is a model
    assert main(["models", str(out / "best.safetensors")]) == 0
    run = json.loads(capsys.readouterr().out)["extra"]["run"]
    assert run["out_dir"] == str(out) and run["train"]["steps"] == 2 and run["train"]["lr"] == 3e-3


def test_inspect_names_the_checkpoint_and_keeps_two_runs_figures_apart(tmp_path, capsys, monkeypatch):
    """Was: run1/best.safetensors and run2/best.safetensors both drew X.best.png, the second over
    the first, and the figure did not say which model it showed."""
    import soundfile as sf

    import audioae.plots as plots

    titles, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (titles.append([ax.get_title() for ax in fig.axes]),
                                                           save(fig, path))[1])
    for run in ("run1", "run2"):
        assert main(["train", CONFIG, "--out", str(tmp_path / run), "--steps", "1", "--set", "train.val_every=1",
                     "--set", "train.progress=false", "--set", "model.config.hidden=16",
                     "--set", 'train.metrics=["si_sdr"]']) == 0
    wav = tmp_path / "x.wav"
    sf.write(wav, 0.1 * torch.randn(8000).numpy(), 8000)
    monkeypatch.chdir(tmp_path)
    for run in ("run1", "run2"):
        assert main(["inspect", f"{run}/best.safetensors", "--audio", "x.wav"]) == 0
        assert f"output of {run}/best.safetensors" in titles[-1]
    capsys.readouterr()
    assert (tmp_path / "x.run1-best.png").is_file() and (tmp_path / "x.run2-best.png").is_file()


def test_stages_with_new_settings_each_get_their_own_time_budget(tmp_path, capsys, caplog):
    """recipes/train_denoiser.sh's stages rerun one folder with another lr and max_minutes each:
    every stage trains its own budget, as before phases were kept; the same command again does not."""
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--steps", "1000000", "--set", "train.val_every=100000",
              "--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", 'train.metrics=["si_sdr"]']
    assert main(["train", *common, "--set", "train.max_minutes=0.01"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["train", *common, "--set", "train.max_minutes=0.01", "--set", "train.lr=1e-3"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["steps"] > first["steps"] and second["phase_minutes"] >= 0.01
    assert second["minutes_done"] >= first["minutes_done"] + 0.01  # the run's minutes add up over its phases
    assert main(["train", *common, "--set", "train.max_minutes=0.01", "--set", "train.lr=1e-3"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == second["steps"]
    assert "the phase's budget is spent" in caplog.text


def _run_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_a_recipe_rerun_from_the_top_skips_the_phases_it_finished_and_goes_on_with_the_one_it_stopped_in(
        tmp_path, capsys, caplog):
    """Was: only the resume point's own phase was recorded, so after a recipe stopped in stage 3 a
    rerun from the top trained stages 1 and 2 again, as new phases over stage 3's weights."""
    out = tmp_path / "run"
    common = ["train", CONFIG, "--out", str(out), "--steps", "1000000", "--set", "train.val_every=100000",
              "--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", 'train.metrics=["si_sdr"]']
    stages = [[*common, "--set", "train.max_minutes=0.01"],
              [*common, "--set", "train.max_minutes=0.01", "--set", "train.lr=1e-3"],
              # a budget split over calls: the first call stops part-way, as a recipe stopped in stage 3
              [*common, "--set", "train.max_minutes=0.06", "--set", "train.lr=5e-4", "--set",
               "train.session_minutes=0.01"]]
    summaries = []
    for stage in stages:
        assert main(stage) == 0
        summaries.append(json.loads(capsys.readouterr().out))
    assert summaries[0]["steps"] < summaries[1]["steps"] < summaries[2]["steps"]
    assert summaries[2]["phase_minutes"] < 0.06  # stage 3 stopped before its end
    stopped = _run_files(out)

    for stage in stages[:2]:  # the recipe again from its top: stages 1 and 2 are done
        assert main(stage) == 0
        said = capsys.readouterr()
        lines = [line for line in said.err.splitlines() if line.strip()]
        assert len(lines) == 1 and "already ran to its end" in lines[0] and "nothing to train" in lines[0], said.err
        summary = json.loads(said.out)
        assert summary["steps"] == summaries[2]["steps"]
        assert summary["final_lr"] == 5e-4  # the rate the run is at (stage 3's), not the skipped stage's
        assert _run_files(out) == stopped  # weights, optimizer state, run.json and log untouched
    assert main(stages[2]) == 0  # stage 3 goes on where it stopped
    said = capsys.readouterr()
    assert f"at step {summaries[2]['steps']}: continuing its phase, begun at step {summaries[1]['steps']}" in said.err
    third = json.loads(said.out)
    assert third["steps"] > summaries[2]["steps"]

    # Stage 3 kept the list of finished phases in its own resume points: stage 2, rerun now, is done too.
    for _ in range(8):  # (each call trains 0.01 of its 0.06 minutes)
        if third["phase_minutes"] >= 0.06:
            break
        assert main(stages[2]) == 0
        third = json.loads(capsys.readouterr().out)
    assert third["phase_minutes"] >= 0.06
    finished = _run_files(out)
    assert main(stages[1]) == 0
    assert "already ran to its end" in capsys.readouterr().err and _run_files(out) == finished
    # A schedule the run never finished is a new phase, as before.
    assert main([*common, "--set", "train.max_minutes=0.01", "--set", "train.lr=2e-4"]) == 0
    said = capsys.readouterr()
    assert "a new phase (train.lr 0.0005 -> 0.0002" in said.err
    assert json.loads(said.out)["steps"] > third["steps"]
    assert load_checkpoint(out / "last.safetensors").num_parameters() > 0


def _staged_run(model_config: dict | None = None, data: dict | None = None, **train):
    from audioae.train import DataConfig, RunConfig, TrainConfig

    return RunConfig(model="recurrent", model_config=model_config or {"hidden": 16},
                     data=DataConfig(**(data or {})), train=TrainConfig(**train))


def test_a_phase_that_ended_at_its_steps_is_done_only_within_them():
    """A step-bounded phase (no max_minutes) is done for a rerun within the steps it reached; the
    same settings asked for more steps later are a new phase (a later stage may reuse a rate)."""
    from audioae.train import _finished_phase, _phase_done, _phase_of

    saved = _phase_of(_staged_run(steps=100, lr=1e-3), 0, 0.2)
    assert _phase_done(saved, 60) is None  # stopped at step 60 of 100: not done
    done = _phase_done(saved, 100)
    assert done["ended"] == "steps" and done["end_step"] == 100
    assert _finished_phase(_staged_run(steps=100, lr=1e-3), [done]) == done
    assert _finished_phase(_staged_run(steps=300, lr=1e-3), [done]) is None
    assert _finished_phase(_staged_run(steps=100, lr=2e-3), [done]) is None
    timed = _phase_done(_phase_of(_staged_run(steps=10**6, lr=1e-3, max_minutes=5), 100, 5.01), 900)
    assert timed["ended"] == "time" and timed["start_step"] == 100
    assert _finished_phase(_staged_run(steps=10**7, lr=1e-3, max_minutes=5), [done, timed]) == timed
    assert _finished_phase(_staged_run(steps=10**7, lr=1e-3, max_minutes=6), [done, timed]) is None


def test_a_finished_phase_is_done_only_for_a_rerun_with_every_setting_that_shapes_its_training():
    """Was: a finished phase was recognised by its schedule alone (lr, lr_final, decay_steps,
    decay_by_time, max_minutes), so a later stage that reused an earlier stage's schedule with
    another loss, data or model setting trained nothing and exited 0; and max_minutes had to match
    exactly, so an earlier stage rerun with another MINUTES trained again over the later stages'
    weights, while the phase being continued took a changed max_minutes as the same phase."""
    from audioae.train import _finished_phase, _phase_done, _phase_of, _resumed_phase

    stage = {"steps": 10**6, "lr": 1e-3, "max_minutes": 0.02}
    done = _phase_done(_phase_of(_staged_run(**stage), 0, 0.0203), 40)
    assert done["ended"] == "time"
    assert _finished_phase(_staged_run(**stage), [done]) == done
    for other in (_staged_run(**stage, sisdr_weight=1.0), _staged_run(data={"snr_low": -10.0}, **stage),
                  _staged_run({"hidden": 16, "mask_power": 2.0}, **stage), _staged_run(**stage, batch_size=4),
                  _staged_run(**stage, seed=1)):
        assert _finished_phase(other, [done]) is None
    # Where and how it runs, what it reports, and when it stops are no part of it.
    alike = _staged_run(**{**stage, "max_minutes": 0.01}, threads=1, loader_threads=2, progress=False,
                        val_every=7, checkpoint_seconds=5, out_dir="elsewhere", metrics=("si_sdr",),
                        session_minutes=0.005)
    assert _finished_phase(alike, [done]) == done  # fewer minutes than it ran: done
    assert _finished_phase(_staged_run(**{**stage, "max_minutes": 0.03}), [done]) is None  # more: a new phase
    assert _finished_phase(_staged_run(**{**stage, "max_minutes": 0.0}), [done]) is None  # no budget, more steps
    # A default given explicitly is the same setting; a record without an identity (2026-12-07) is never done.
    assert _finished_phase(_staged_run({"hidden": 16, "n_fft": 512}, **stage), [done]) == done
    assert _finished_phase(_staged_run(**stage), [{**done, "identity": None}]) is None

    # The phase a resume point is in: the same rule, and its new-phase line names what changed.
    saved = _phase_of(_staged_run(**stage), 0, 0.01)
    start, minutes, how, continuing = _resumed_phase(_staged_run(**{**stage, "max_minutes": 0.05}), 40, saved)
    assert continuing and (start, minutes) == (0, 0.01) and "train.max_minutes 0.02 -> 0.05" in how
    start, minutes, how, continuing = _resumed_phase(_staged_run(data={"snr_low": -10.0}, **stage,
                                                                 sisdr_weight=1.0), 40, saved)
    assert not continuing and (start, minutes) == (40, 0.0)
    assert "a new phase (data.snr_low -5.0 -> -10.0; train.sisdr_weight 0.0 -> 1.0)" in how


def test_a_split_phase_that_finds_its_corpus_at_another_path_continues():
    """Was: data.clean_dir and data.noise_dir were in the phase identity, so a phase split over
    machines (train.session_minutes; recipes/train_denoiser_gpu.sh DATA) that found the same corpus
    elsewhere in its next call started a new phase, its decay and budget from the start again
    (validation_key already left the folders' paths out for that reason)."""
    from audioae.train import _finished_phase, _phase_done, _phase_of, _resumed_phase

    stage = {"steps": 10**6, "lr": 1e-3, "max_minutes": 0.05}
    here = {"clean_dir": "corpus/train/speech", "noise_dir": "corpus/train/noise",
            "val_clean_dir": "corpus/val/speech", "val_noise_dir": "corpus/val/noise"}
    there = {k: v.replace("corpus/", "/mnt/.gpucorpus/") for k, v in here.items()}
    saved = _phase_of(_staged_run(data=here, **stage), 0, 0.02)
    start, minutes, how, continuing = _resumed_phase(_staged_run(data=there, **stage), 40, saved)
    assert continuing and (start, minutes) == (0, 0.02), how
    done = _phase_done(_phase_of(_staged_run(data=here, **stage), 0, 0.0503), 90)
    assert _finished_phase(_staged_run(data=there, **stage), [done]) == done
    # what is mixed still is: another SNR range is another phase, wherever the corpus is
    _, _, how, continuing = _resumed_phase(_staged_run(data={**there, "snr_low": -10.0}, **stage), 40, saved)
    assert not continuing and "data.snr_low" in how and "clean_dir" not in how


def test_a_later_stage_that_reuses_a_finished_schedule_with_another_loss_trains(tmp_path, capsys):
    """The CLI's side of the test above: stage 3 reuses stage 1's rate and budget with another loss
    (was: "already ran to its end", nothing trained, exit 0); stage 1 rerun with fewer minutes and
    another validation set is done, in one line (was: trained again over stage 3's weights, and
    best.safetensors' validation key warned of, for a call that validates nothing)."""
    out = tmp_path / "run"
    common = ["train", CONFIG, "--out", str(out), "--steps", "1000000", "--set", "train.val_every=100000",
              "--set", "train.progress=false", "--set", "model.config.hidden=16", "--set", 'train.metrics=["si_sdr"]',
              "--set", "train.lr=1e-3"]
    steps = []
    for extra in ([], ["--set", "train.lr=5e-4"], ["--set", "train.sisdr_weight=1.0"]):
        assert main([*common, "--set", "train.max_minutes=0.01", *extra]) == 0
        said = capsys.readouterr()
        steps.append(json.loads(said.out)["steps"])
    assert steps[0] < steps[1] < steps[2]  # stage 3 trained
    assert "a new phase (train.lr 0.0005 -> 0.001; train.sisdr_weight 0.0 -> 1.0)" in said.err
    finished = _run_files(out)
    assert main([*common, "--set", "train.max_minutes=0.005", "--set", "data.val_examples=2"]) == 0
    said = capsys.readouterr()
    lines = [line for line in said.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "already ran to its end" in lines[0], said.err
    assert json.loads(said.out)["steps"] == steps[2] and _run_files(out) == finished


def _deterministic_state() -> tuple:
    """What train.deterministic sets, read with torch's fp32_precision API only (a legacy
    allow_tf32 read after it raises)."""
    b = torch.backends
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            b.cudnn.benchmark, b.cudnn.deterministic, torch.get_float32_matmul_precision(),
            b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision, b.cudnn.conv.fp32_precision,
            b.cudnn.rnn.fp32_precision, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


@pytest.fixture
def medium_matmuls():
    """The caller's float32 matmul precision at "medium" for the test, and back afterwards."""
    b = torch.backends
    saved = (torch.get_float32_matmul_precision(), b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision)
    torch.set_float32_matmul_precision("medium")
    yield
    torch.set_float32_matmul_precision(saved[0])
    b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision = saved[1:]


def _deterministic_run(tmp_path: Path, name: str, *extra: str):
    from audioae.train import load_run_config

    return load_run_config(CONFIG, [f"train.out_dir={json.dumps(str(tmp_path / name))}", "train.steps=2",
                                    "train.val_every=2", "train.progress=false", 'train.metrics=["si_sdr"]',
                                    "train.deterministic=true", *extra])


def test_deterministic_sets_torch_for_the_run_and_gives_the_callers_settings_back(tmp_path, monkeypatch,
                                                                                   medium_matmuls):
    """Was: the matmul precision saved and restored through the legacy allow_tf32 flags, after
    which torch.get_float32_matmul_precision() raised ("mix of the legacy and new APIs"); and a
    seed of 2**32 (which the config takes) raised numpy's "Seed must be between 0 and 2**32 - 1"
    from the reseeding of numpy's global generator, leaving CUBLAS_WORKSPACE_CONFIG set."""
    from audioae.checkpoint import checkpoint_extra
    from audioae.train import train

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _deterministic_state()
    assert before[0] is False and before[4] == "medium"  # (else the run's settings pass for the caller's)
    during = []
    train(_deterministic_run(tmp_path, "a", "model.config.hidden=16", f"train.seed={2**32}"),
          report=lambda line: during.append(_deterministic_state()))
    assert _deterministic_state() == before  # the caller's settings are back
    assert during and set(during) == {(True, False, False, True, "highest", "ieee", "ieee", "ieee", "ieee",
                                       ":4096:8")}
    assert json.loads((tmp_path / "a" / "run.json").read_text())["train"]["deterministic"] is True
    assert checkpoint_extra(tmp_path / "a" / "best.safetensors")["run"]["train"]["deterministic"] is True


def test_a_deterministic_run_that_fails_gives_the_callers_settings_back(tmp_path, monkeypatch, medium_matmuls):
    from audioae.train import TrainConfig, train

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _deterministic_state()
    with pytest.raises(FileNotFoundError, match="no such folder"):  # raised in the run, with its settings on
        train(_deterministic_run(tmp_path, "a", "model.config.hidden=16",
                                 f"data.clean_dir={json.dumps(str(tmp_path / 'missing'))}"))
    assert _deterministic_state() == before
    with pytest.raises(ValueError, match=r"train.seed must be >= 0 and below 2\*\*64, got 18446744073709551616"):
        TrainConfig(seed=2**64)  # was torch's "Overflow when unpacking long long" at the run's start


def test_deterministic_refuses_maxunpool_before_the_run_starts(tmp_path, monkeypatch):
    """Was: torch's "max_unpooling2d_forward_out does not have a deterministic implementation" at
    the first step, after run.json was written."""
    import dataclasses

    from audioae.train import train

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run = _deterministic_run(tmp_path, "a", 'model.name="conv1d"', 'model.config.unpool="maxunpool"',
                             "model.config.channels=[8, 8]")
    run = dataclasses.replace(run, model_config={k: v for k, v in run.model_config.items() if k != "hidden"})
    with pytest.raises(ValueError, match='train.deterministic: model.config.unpool = "maxunpool" has no '
                                         'deterministic implementation'):
        train(run)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(("settings", "said"), [
    (['model.config.sparsity="l1"'], 'model.config.sparsity = "l1" adds no penalty while sparsity_weight is 0'),
    (["model.config.sparsity_weight=0.5"],
     'model.config.sparsity_weight = 0.5 is read only by sparsity "l1", "l2" or "kl", and sparsity is "none"'),
    (["model.config.topk=3"], 'model.config.topk = 3 is read only with sparsity = "topk", and this model has '
                              'sparsity = "none": nothing would read it'),
    (["model.config.df_order=5", "model.config.df_bins=20"],
     'model.config.df_order = 5 is read only with output = "deepfilter", and this model has output = "mask"; '
     'model.config.df_bins = 20 is read only'),
    (['model.config.sparsity="l1"', "model.config.sparsity_weight=0.1", "model.config.sparsity_target=0.2"],
     'model.config.sparsity_target = 0.2 is read only with sparsity = "kl"'),
    (["model.config.patch_fraction=0.3"], 'model.config.patch_fraction = 0.3 is read only with corruption = "patches", '
                                          'and this model has corruption = "mix"'),
])
def test_model_settings_that_nothing_reads_are_refused(tmp_path, capsys, settings, said):
    """Was: sparsity = "l1" with the default sparsity_weight = 0 trained with no sparsity term at
    all, and a weight under sparsity = "none" was ignored, as were the others here, in silence."""
    common = [CONFIG, "--out", str(tmp_path / "run"), "--steps", "1", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, *[a for s in settings for a in ("--set", s)]]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unread_model_settings_are_refused_for_a_run_but_a_checkpoint_holding_one_loads(tmp_path):
    """The config itself still builds: a checkpoint saved before the refusal, with sparsity "l1"
    and no weight, loads (the value changes nothing the model computes)."""
    from audioae.checkpoint import save_checkpoint
    from audioae.models import REGISTRY, build_model
    from audioae.pretrained import HERE
    from audioae.train import check_model_settings_read

    model = build_model("recurrent", {"hidden": 16, "code_dim": 8, "n_fft": 128, "hop_length": 32, "sparsity": "l1"})
    with pytest.raises(ValueError, match="sparsity_weight is 0"):
        check_model_settings_read(model)
    save_checkpoint(model, tmp_path / "old.safetensors")
    assert load_checkpoint(tmp_path / "old.safetensors").config.sparsity == "l1"
    for path in SHIPPED_CONFIGS:  # every shipped config and model passes
        run = _load(path)
        check_model_settings_read(build_model(run.model, run.model_config))
    for path in sorted(HERE.glob("*.safetensors")):
        assert load_checkpoint(path).config.unread_settings() == []
    for name in REGISTRY:  # and every family's defaults
        assert build_model(name).config.unread_settings() == [], name


def test_a_resumed_run_draws_the_batches_of_the_uninterrupted_one(tmp_path, capsys):
    """Was: the mixer was seeded from the resume step, so a run stopped at step 3 and resumed drew
    other batches than the same run trained in one go, and its losses differed from step 4 on."""
    common = ["--set", "train.val_every=2", "--set", "train.progress=false", "--set", "model.config.hidden=16",
              "--set", 'train.metrics=["si_sdr"]', "--set", "train.threads=1", "--set", "train.loader_threads=2"]
    assert main(["train", CONFIG, "--out", str(tmp_path / "once"), "--steps", "6", *common]) == 0
    assert main(["train", CONFIG, "--out", str(tmp_path / "split"), "--steps", "3", *common]) == 0
    assert main(["train", CONFIG, "--out", str(tmp_path / "split"), "--steps", "6", *common]) == 0
    capsys.readouterr()

    def losses(run: str) -> dict[int, float]:
        records = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records}

    once, split = losses("once"), losses("split")
    assert sorted(once) == [2, 4, 6] and sorted(split) == [2, 3, 4, 6]
    assert {k: split[k] for k in once} == once
    a, b = (load_checkpoint(tmp_path / run / "last.safetensors").state_dict() for run in ("once", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_json_records_the_value_in_effect_of_a_setting_left_at_its_default(tmp_path, capsys, caplog):
    """Was: {"was": None, "now": 0.8} for a mask_power the run had left at its default (1.0),
    while the resume's warning said "mask_power: 1.0 there, 0.8 now"."""
    out = tmp_path / "run"
    common = [CONFIG, "--out", str(out), "--set", "train.val_every=100", "--set", "train.progress=false",
              "--set", "model.config.hidden=16"]
    assert main(["train", *common, "--steps", "1"]) == 0
    assert main(["train", *common, "--steps", "2", "--set", "model.config.mask_power=0.8"]) == 0
    capsys.readouterr()
    assert "mask_power: 1.0 there, 0.8 now" in caplog.text
    assert json.loads((out / "run.json").read_text())["resumes"] == [
        {"step": 1, "changed": {"model.config.mask_power": {"was": 1.0, "now": 0.8}, "train.steps": {"was": 1, "now": 2}}}]


def test_inspect_into_a_folder_that_does_not_exist_makes_it(tmp_path, capsys):
    """Was: "-o figs" (a new folder, as the help allows OUT to be) failed "the name has no extension"."""
    import soundfile as sf

    assert main(["train", CONFIG, "--out", str(tmp_path / "run"), "--steps", "1", "--set", "train.val_every=1",
                 "--set", "train.progress=false", "--set", "model.config.hidden=16",
                 "--set", 'train.metrics=["si_sdr"]']) == 0
    sf.write(tmp_path / "x.wav", 0.1 * torch.randn(8000).numpy(), 8000)
    assert main(["inspect", str(tmp_path / "run" / "best.safetensors"), "--audio", str(tmp_path / "x.wav"),
                 "-o", str(tmp_path / "figs")]) == 0
    capsys.readouterr()
    assert [p.name for p in (tmp_path / "figs").iterdir() if p.suffix == ".png"] == ["x.run-best.png"]


def test_the_models_doc_lists_every_option():
    """docs/models.md has a row for every field of every family's config, [data] and [train],
    under that section's heading, with the field's default: a new option, or a changed default,
    must be documented."""
    import dataclasses

    from audioae.models import REGISTRY
    from audioae.models.base import AutoencoderConfig, SpectralConfig
    from audioae.train import DataConfig, TrainConfig

    doc = (REPO / "docs" / "models.md").read_text()
    sections = {m.group(1): m.group(0) for m in re.finditer(r"^#+ (.+)$\n(?:(?!^#).*\n?)*", doc, re.M)}

    def rows(heading: str) -> dict[str, str]:
        found = [text for title, text in sections.items() if title.startswith(heading)]
        assert len(found) == 1, f"docs/models.md needs one section {heading!r}"
        return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| `[^`]+` \| `([^`]*)` \|", found[0], re.M)}

    def default(f):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        return json.dumps(list(value) if isinstance(value, tuple) else value)

    def check(heading: str, cls, inherited=()):
        documented = rows(heading)
        for f in dataclasses.fields(cls):
            if f.name in inherited and f.default == inherited[f.name]:
                continue  # listed with the shared options
            assert documented.get(f.name) == default(f), f"{heading}: {f.name} = {default(f)}"

    shared = {f.name: f.default for f in dataclasses.fields(AutoencoderConfig)}
    spectral = {f.name: f.default for f in dataclasses.fields(SpectralConfig)}
    check("Every family", AutoencoderConfig)
    check("Every spectrogram family", SpectralConfig, shared)
    for name, fam in REGISTRY.items():
        check(f"`{name}`", fam.config, spectral if issubclass(fam.config, SpectralConfig) else shared)
    check("`[data]`", DataConfig)
    check("`[train]`", TrainConfig)
    assert "relative to the current folder" in doc
    assert "docs/models.md" in (REPO / "README.md").read_text()


def test_audioae_help_opens_with_what_the_tool_does_for_a_user(capsys):
    """Was the module docstring, written for developers: "The ``audioae`` command. Thin: parse, call
    the library, print results for people."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    said = capsys.readouterr().out
    assert done.value.code == 0 and "Thin:" not in said and "``" not in said
    assert "Denoise speech" in said and "audioae denoise audioae/pretrained/examples -o cleaned" in said
