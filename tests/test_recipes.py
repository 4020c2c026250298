"""The corpus recipe and the denoising benchmark on generated signals: SNRs, lengths, layout."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audioae.data import synthetic

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bc = _load("build_corpus", ROOT / "recipes" / "build_corpus.py")
bench = _load("denoise_bench", ROOT / "benchmarks" / "denoise_bench.py")
diag = _load("denoiser_diagnostics", ROOT / "recipes" / "denoiser_diagnostics.py")
pack = _load("pack_corpus", ROOT / "recipes" / "pack_corpus.py")
SR = bc.SR


def _write(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, SR, subtype="FLOAT")


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_scale_to_snr_is_exact(snr):
    rng = np.random.default_rng(0)
    clean = synthetic.speech_like(rng, 2.0, SR)
    noise = synthetic.colored_noise(rng, 2.0, SR, 1.0)
    assert bc.measured_snr(clean, bc.scale_to_snr(clean, noise, snr)) == pytest.approx(snr, abs=1e-6)
    # and against a power ratio worked out here, not the recipe's own measure: 20 dB is 1/100 of the power
    scaled = bc.scale_to_snr(clean, noise, snr).astype(np.float64)
    assert np.mean(scaled**2) == pytest.approx(np.mean(clean.astype(np.float64) ** 2) / 10 ** (snr / 10), rel=1e-5)


def test_a_unit_sine_over_noise_at_a_tenth_of_its_amplitude_is_20_db():
    t = np.arange(SR) / SR
    sine = np.sqrt(2) * np.sin(2 * np.pi * 440 * t)  # power 1
    noise = np.sign(np.sin(2 * np.pi * 97 * t + 0.3))  # a square wave: power 1
    assert bc.measured_snr(sine, 0.1 * noise) == pytest.approx(20.0, abs=0.01)
    assert np.abs(bc.scale_to_snr(sine, noise, 20.0)).max() == pytest.approx(0.1, rel=1e-3)


def test_make_mixture_length_snr_and_level():
    rng = np.random.default_rng(1)
    speech = [synthetic.speech_like(rng, s, SR) for s in (0.7, 1.3, 2.1)]
    noise = [synthetic.clicks(rng, 0.4, SR), synthetic.hum(rng, 9.0, SR)]
    for seconds, snr in ((3.0, -5.0), (5.37, 10.0), (8.0, 0.0)):
        noisy, clean, _ = bc.make_mixture(rng, speech, noise, snr, seconds)
        assert noisy.shape == clean.shape == (int(round(seconds * SR)),)
        assert bc.measured_snr(clean, noisy - clean) == pytest.approx(snr, abs=1e-3)
        peak_db = 20 * np.log10(np.abs(noisy).max())
        assert -20.01 <= peak_db <= -0.99


def test_impacts_are_short_hits_and_only_in_the_training_and_val_splits(tmp_path, monkeypatch):
    x = bc.impacts(np.random.default_rng(0), 8.0, SR)
    assert x.shape == (8 * SR,) and np.isclose(np.abs(x).max(), 0.5)
    assert np.array_equal(x, bc.impacts(np.random.default_rng(0), 8.0, SR))
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)  # 10 ms frames
    energy = (frames**2).sum(1)
    assert (energy > 0.1 * energy.max()).mean() < 0.3  # hits, not a steady noise
    monkeypatch.setattr(bc, "SYNTH_FAMILIES", {"impacts": bc.impacts, "white": bc.SYNTH_FAMILIES["white"]})
    for split in ("train", "test"):
        bc.build_synthetic(tmp_path, split, per_family=1, seconds=1.0)
    assert (tmp_path / "train/noise/synthetic_impacts/impacts_000.wav").exists()
    assert [p.name for p in (tmp_path / "test/noise").iterdir()] == ["white"]  # test keeps its own families


def test_clean_clip_trims_silence_and_drops_silent_clips():
    rng = np.random.default_rng(2)
    voice = synthetic.speech_like(rng, 1.0, SR)
    padded = np.concatenate([np.zeros(SR), voice, np.zeros(SR)]).astype(np.float32)
    out = bc.clean_clip(padded, "speech")
    assert out is not None and len(voice) <= len(out) <= len(voice) + int(0.2 * SR)
    assert bc.clean_clip(np.full(SR, 1e-4, np.float32), "speech") is None  # -80 dBFS: silence
    assert bc.clean_clip(voice[: SR // 4], "speech") is None  # too short to be an utterance


def test_opensfx_reader_parses_the_cat_layout(tmp_path):
    def riff(x: np.ndarray) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, x, 22050, format="WAV", subtype="PCM_16")
        return buf.getvalue()

    def entry(name: bytes, x: np.ndarray) -> bytes:
        return bytes([len(name) + 1]) + name + b"\0" + riff(x)

    entries = [entry(b'"Horn". A test', np.full(300, 0.25)), entry(b"Wind", np.full(500, -0.5))]
    table, offset = b"", 8 * len(entries)
    for e in entries:
        table += struct.pack("<II", offset | 0x80000000, len(e))  # top bit: the format flag
        offset += len(e)
    cat = tmp_path / "sfx.cat"
    cat.write_bytes(table + b"".join(entries))
    got = list(bc.opensfx_samples(str(cat)))
    assert [(name, len(x), sr) for name, x, sr in got] == [("Horn", 300, 22050), ("Wind", 500, 22050)]
    assert got[1][1][0] == pytest.approx(-0.5, abs=1e-4)


def _tiny_corpus(root: Path, split: str = "test") -> None:
    rng = np.random.default_rng(3)
    for spk in ("alice", "bob", "carol"):
        for k in range(3):
            _write(root / split / "speech" / spk / f"{k}.wav", synthetic.speech_like(rng, rng.uniform(0.6, 2.0), SR))
    for fam in ("white", "clicks"):
        _write(root / split / "noise" / fam / "a.wav", synthetic.noise(rng, 10.0, SR, fam))
    if split != "test":
        bc.build_babble(root, split, 2, 9.0)
        return
    for spk in ("alice", "bob", "carol"):
        bc.build_babble(root, "test", 1, 9.0, exclude=spk)


def test_build_test_mixtures_layout_and_labels(tmp_path):
    _tiny_corpus(tmp_path)
    bc.build_mixtures(tmp_path, "test", snrs=(-5.0, 10.0), per_cell=2)
    mix = tmp_path / "test" / "mixtures"
    meta = json.loads((mix / "meta.json").read_text())
    assert meta["noise_types"] == ["babble", "clicks", "white"]
    assert len(meta["mixtures"]) == 3 * 2 * 2
    for item in meta["mixtures"]:
        noisy, sr = sf.read(str(mix / "noisy" / item["file"]), dtype="float32")
        clean, _ = sf.read(str(mix / "clean" / item["file"]), dtype="float32")
        assert sr == SR and len(noisy) == len(clean) == int(round(item["seconds"] * SR))
        assert 3.0 <= item["seconds"] <= 8.0
        assert bc.measured_snr(clean, noisy - clean) == pytest.approx(item["snr_db"], abs=0.01)
    # babble for a mixture comes from babble built without that mixture's speaker
    babble = sorted((tmp_path / "test" / "noise" / "babble").glob("*.wav"))
    assert [p.name for p in babble] == [f"babble_no-{s}_000.wav" for s in ("alice", "bob", "carol")]


def test_val_mixtures_come_from_the_val_split_with_their_own_seeds(tmp_path):
    _tiny_corpus(tmp_path, "val")
    _tiny_corpus(tmp_path, "test")
    bc.build_mixtures(tmp_path, "val", snrs=(0.0, 10.0), per_cell=1)
    bc.build_mixtures(tmp_path, "test", snrs=(0.0, 10.0), per_cell=1)
    val, test = (json.loads((tmp_path / s / "mixtures" / "meta.json").read_text()) for s in ("val", "test"))
    assert val["noise_types"] == ["babble", "clicks", "white"] and len(val["mixtures"]) == 6
    for item in val["mixtures"]:  # babble from the split's own pool (not per speaker)
        noisy, _ = sf.read(str(tmp_path / "val" / "mixtures" / "noisy" / item["file"]), dtype="float32")
        clean, _ = sf.read(str(tmp_path / "val" / "mixtures" / "clean" / item["file"]), dtype="float32")
        assert bc.measured_snr(clean, noisy - clean) == pytest.approx(item["snr_db"], abs=0.01)
    # same names, different draws: the val set is not a copy of the test set's choices
    assert [m["file"] for m in val["mixtures"]] == [m["file"] for m in test["mixtures"]]
    assert [m["seconds"] for m in val["mixtures"]] != [m["seconds"] for m in test["mixtures"]]


# Runs SCRIPT ARGS... and kills it while it writes a file whose name holds TARGET ("": never): from
# its opening on, writes past one byte are over the file size limit, and SIGXFSZ (which Python
# ignores, so restored here) kills the process: a real kill in the middle of a real write.
# argv: TARGET SCRIPT ARGS...
KILLED_WRITING = """
import os, resource, runpy, signal, sys

target, script, *args = sys.argv[1:]

def hook(event, a):
    if event != "open" or not target or not isinstance(a[0], (str, bytes, os.PathLike)):
        return
    if target in os.path.basename(os.fsdecode(a[0])) and a[2] & (os.O_WRONLY | os.O_RDWR):
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

sys.addaudithook(hook)
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def test_a_build_killed_while_writing_its_manifest_or_ready_leaves_no_half_file(tmp_path):
    """Was: manifest.md and READY were written in place: a kill mid-write left a truncated
    manifest, or a READY that claims a complete corpus (train_denoiser.sh then trains on it)."""
    import signal
    import subprocess

    corpus = tmp_path / "corpus"
    _tiny_corpus(corpus)
    script = tmp_path / "killed_writing.py"
    script.write_text(KILLED_WRITING)

    def build(target: str, *args: str) -> int:
        return subprocess.run([sys.executable, str(script), target, str(ROOT / "recipes" / "build_corpus.py"),
                               "--out", str(corpus), "--stages", "summary", *args], capture_output=True,
                              timeout=300).returncode

    assert build("") == 0
    before = (corpus / "manifest.md").read_text()
    _write(corpus / "test" / "speech" / "dave" / "0.wav", synthetic.speech_like(np.random.default_rng(4), 1.0, SR))
    assert build("manifest.md", "--ready") == -signal.SIGXFSZ  # killed while writing manifest.md
    assert (corpus / "manifest.md").read_text() == before and not (corpus / "READY").exists()
    assert build("READY", "--ready") == -signal.SIGXFSZ  # killed while writing READY
    summary = json.loads((corpus / "manifest.json").read_text())
    assert "dave" in summary["test"]["speech"]
    assert (corpus / "manifest.md").read_text() == bc.summary_markdown(summary) != before
    assert not (corpus / "READY").exists()
    assert build("", "--ready") == 0
    assert (corpus / "READY").read_text() == "\n".join(bc.summary_lines(summary)) + "\n"


def test_benchmark_peers_keep_length_and_score(tmp_path):
    _tiny_corpus(tmp_path)
    bc.build_mixtures(tmp_path, "test", snrs=(0.0,), per_cell=1)
    mix = tmp_path / "test" / "mixtures"
    out = tmp_path / "res.json"
    bench.main(["--testset", str(mix), "--out", str(out), "--methods", "rnnoise,noisereduce_stationary,unprocessed",
                "--speed-seconds", "2", "--speed-repeats", "1"])
    res = json.loads(out.read_text())
    assert set(res["quality"]) == {"rnnoise", "noisereduce_stationary", "unprocessed"}
    assert res["quality"]["unprocessed"]["overall"]["si_sdr_i"] == pytest.approx(0.0, abs=1e-6)
    assert set(res["quality"]["rnnoise"]["per_noise_type"]) == {"babble", "clicks", "white"}
    assert set(res["speed"]) == {"rnnoise", "noisereduce_stationary"}  # no speed for doing nothing
    assert res["speed"]["rnnoise"]["x_realtime"] > 0
    assert out.with_suffix(".md").read_text().startswith("| method |")


def test_diagnostic_split_parts_sum_to_the_output_of_a_deep_filter_model():
    """The speech/noise split rests on the output being linear in the noisy STFT once the mask
    and taps are fixed: the filtered parts must add up to the model's output."""
    from audioae.models import build_model

    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": SR, "n_fft": 384, "hop_length": 192, "hidden": 16,
                                      "code_dim": 8, "output": "deepfilter", "df_order": 5, "df_bins": 96}).eval()
    rng = np.random.default_rng(0)
    clean = synthetic.speech_like(rng, 1.0, SR)
    noisy = (clean + 0.3 * synthetic.noise(rng, 1.0, SR, "pink")).astype(np.float32)
    y, speech, noise = diag.filtered_parts(model, noisy, clean)
    assert y.shape == speech.shape == noise.shape == noisy.shape
    np.testing.assert_allclose(speech + noise, y, atol=1e-5)
    assert np.abs(speech - clean).max() > 1e-3  # the mask did act on the speech


def test_diagnostic_oracle_keeps_clean_input_and_its_filter_bound_is_the_tighter():
    """The ideal mask of a clean input is 1 (output = input); on a noisy one, the clean STFT in
    the filter's bins can only come closer to the clean signal than the mask alone."""
    from audioae.metrics import si_sdr
    from audioae.models import build_model

    model = build_model("recurrent", {"sample_rate": SR, "n_fft": 384, "hop_length": 192, "hidden": 16,
                                      "code_dim": 8, "output": "deepfilter", "df_order": 5, "df_bins": 96}).eval()
    rng = np.random.default_rng(1)
    clean = synthetic.speech_like(rng, 1.0, SR)
    for out in diag.oracle_outputs(model, clean, clean).values():
        np.testing.assert_allclose(out, clean, atol=1e-5)
    noisy = (clean + 0.5 * synthetic.noise(rng, 1.0, SR, "white")).astype(np.float32)
    o = diag.oracle_outputs(model, noisy, clean)
    assert si_sdr(noisy, clean) + 5 < si_sdr(o["ideal_mask"], clean) < si_sdr(o["ideal_mask_and_filter"], clean)


def test_diagnostic_lookahead_reads_the_weights_on_each_input_group():
    """A model grown into a look-ahead one starts with zero weights on the new inputs."""
    from audioae.models import build_model
    from audioae.train import grow_into

    cfg = {"sample_rate": SR, "n_fft": 128, "hop_length": 64, "hidden": 16, "code_dim": 8}
    base = build_model("recurrent", cfg)
    grown = build_model("recurrent", {**cfg, "lookahead": 32})
    grow_into(grown, base.state_dict())
    res = diag.lookahead(grown)
    assert res["lookahead_mean_abs"] == 0 < res["current_frame_mean_abs"]
    with pytest.raises(SystemExit, match="no look-ahead input"):
        diag.lookahead(base)


def test_diagnostic_post_filter_and_band_power_keep_full_gains_and_cut_only_what_they_say():
    m = torch.tensor([0.05, 0.2, 0.5, 0.9, 1.0])[None, :, None].expand(1, 5, 3)  # [B, F, N]
    pf = diag.VARIANTS["post-filter 0.02"](m)
    assert torch.allclose(pf[:, -1], m[:, -1]) and (pf[:, :-1] < m[:, :-1]).all()  # 1 kept, lower gains cut
    # 257 bins over 0..8 kHz: bin 0 is below both ramps; the top bin is past both
    wide = torch.full((1, 257, 2), 0.5)  # [B, F, N]
    lifted = diag.VARIANTS["power x0.86 above 0.5-4 kHz"](wide)
    assert lifted[0, 0, 0] == 0.5 and torch.isclose(lifted[0, -1, 0], torch.tensor(0.5 ** (0.6 / 0.7)))
    cut = diag.VARIANTS["power x1.43 above 2-6 kHz"](wide)
    assert cut[0, 0, 0] == 0.5 and (cut[0, -1] < 0.5).all()


def test_diagnostic_swap_of_a_models_own_weights_changes_nothing():
    from audioae.models import build_model

    cfg = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "hidden": 16, "code_dim": 8,
           "output": "deepfilter", "df_order": 2, "df_bins": 16, "corruption": "mix"}
    torch.manual_seed(0)
    a, b = build_model("recurrent", cfg).eval(), build_model("recurrent", cfg).eval()
    config = str(ROOT / "configs" / "tiny-synthetic.toml")  # generated val mixtures, no corpus
    own = list(diag.swap(a, a, config, examples=3))
    other = list(diag.swap(a, b, config, examples=3))
    assert [r["swapped"] for r in own] == [r["swapped"] for r in other] and len(own) == 6
    assert len({r["si_sdr"] for r in own}) == 1  # every swap of a's own weights is a itself
    assert len({r["si_sdr"] for r in other}) == 6  # each part of b's moves the output its own way


def test_compare_checkpoints_scores_what_denoise_outputs(capsys):
    """The checkpoint to ship is chosen on denoise()'s output (score_denoised), not on a forward
    pass of the recipe's own: quiet input lifted as `audioae denoise` lifts it."""
    import dataclasses

    from audioae import pretrained
    from audioae.train import load_run_config, make_validation_set, score_denoised

    compare = _load("compare_checkpoints", ROOT / "recipes" / "compare_checkpoints.py")
    config = str(ROOT / "configs" / "tiny-synthetic.toml")  # generated val mixtures, no corpus
    assert compare.main(["denoiser-small", "--config", config, "--examples", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    model = pretrained.load("denoiser-small").eval()
    data = load_run_config(config).data
    val_set = make_validation_set(model, dataclasses.replace(data, val_examples=2), seed=1234)
    assert row["si_sdr"] == round(score_denoised(model, val_set)["si_sdr"], 4)


def test_pack_corpus_codes_every_readable_file_and_keeps_what_exists(tmp_path, monkeypatch, capsys):
    from audioae.metrics import si_sdr

    rng = np.random.default_rng(3)
    speech = synthetic.speech_like(rng, 2.0, SR).astype(np.float32)
    _write(tmp_path / "src" / "voice_a" / "one.wav", speech)
    _write(tmp_path / "src" / "voice_b" / "deep" / "two.wav", speech[::-1].copy())
    (tmp_path / "src" / "voice_b" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    monkeypatch.setattr(sys, "argv", ["pack_corpus.py", str(tmp_path / "src"), str(tmp_path / "dst"), "--quality", "0.85"])
    pack.main()
    out = capsys.readouterr().out
    assert "skipping" in out and "broken.wav" in out  # reported, not fatal
    coded, sr = sf.read(tmp_path / "dst" / "voice_a" / "one.ogg", dtype="float32")
    assert sr == SR and abs(len(coded) - len(speech)) < SR // 100
    n = min(len(coded), len(speech))
    assert si_sdr(coded[:n], speech[:n]) > 15.0  # Opus at quality 0.85 keeps the waveform
    assert (tmp_path / "dst" / "voice_b" / "deep" / "two.ogg").is_file()
    assert not list((tmp_path / "dst").rglob("*.part"))
    # A rerun keeps existing outputs untouched.
    kept = tmp_path / "dst" / "voice_a" / "one.ogg"
    os.utime(kept, ns=(10**9, 10**9))  # an old mtime: any rewrite would change it
    pack.main()
    assert kept.stat().st_mtime_ns == 10**9


def test_export_model_interpolates_towards_a_base_and_records_it(tmp_path):
    import subprocess

    from audioae.checkpoint import checkpoint_extra, interpolate_weights, load_checkpoint, save_checkpoint
    from audioae.models import build_model

    cfg = {"hidden": 16, "code_dim": 8, "n_fft": 128, "hop_length": 32}
    torch.manual_seed(0)
    save_checkpoint(build_model("recurrent", cfg), tmp_path / "base.safetensors", {"step": 1})
    torch.manual_seed(1)
    save_checkpoint(build_model("recurrent", cfg), tmp_path / "tuned.safetensors", {"step": 2})
    dst = tmp_path / "shipped.safetensors"
    subprocess.run([sys.executable, str(ROOT / "recipes" / "export_model.py"), str(tmp_path / "tuned.safetensors"),
                    str(dst), "--base", str(tmp_path / "base.safetensors"), "--alpha", "0.25",
                    "--set", "mask_power=0.8"], check=True, capture_output=True)
    shipped = load_checkpoint(dst)  # its sha256 file is checked on load
    expected = interpolate_weights(load_checkpoint(tmp_path / "tuned.safetensors"),
                                   load_checkpoint(tmp_path / "base.safetensors"), 0.25)
    for name, w in shipped.state_dict().items():
        torch.testing.assert_close(w, expected.state_dict()[name])
    assert shipped.config.mask_power == 0.8
    extra = checkpoint_extra(dst)
    assert extra["config_changes"] == {"mask_power": 0.8}
    assert extra["trained"]["interpolated"]["alpha"] == 0.25 and extra["trained"]["step"] == 2
    assert extra["trained"]["interpolated"]["base_trained"]["step"] == 1
    # was: a DST equal to --base replaced the base in silence, alpha 1.5 was a traceback after the
    # loads, and another family's model went over DST without a word
    before = (tmp_path / "base.safetensors").read_bytes()
    tuned, base = str(tmp_path / "tuned.safetensors"), str(tmp_path / "base.safetensors")
    for args, text in (([tuned, base, "--base", base, "--alpha", "0.5"], "DST is --base"),
                       ([tuned, str(dst), "--base", base, "--alpha", "1.5"], "--alpha must be within [0, 1], got 1.5"),
                       ([str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors")],
                        "no such checkpoint file"),
                       ([tuned, str(tmp_path / "y.safetensors"), "--set", "sample_rate=8000"],
                        "--set sample_rate: defines the signal the weights were trained on")):
        run = subprocess.run([sys.executable, str(ROOT / "recipes" / "export_model.py"), *args],
                             capture_output=True, text=True)
        assert run.returncode == 2 and text in run.stderr, run.stderr[-500:]
    assert (tmp_path / "base.safetensors").read_bytes() == before
    save_checkpoint(build_model("sparse_dict", {"code_dim": 8}), tmp_path / "dict.safetensors")
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "export_model.py"), str(tmp_path / "dict.safetensors"),
                          str(dst)], capture_output=True, text=True)
    assert run.returncode == 2 and "holds a recurrent model and this export a sparse_dict one" in run.stderr


def test_export_model_grows_an_ungated_base_before_interpolating_a_gated_model(tmp_path):
    """A fine-tuning that grew an input gate starts from weights without one: the base is grown
    (gate row zero: closed) and then interpolated, so the gate's row is alpha times the tuned one."""
    import subprocess

    from audioae.checkpoint import load_checkpoint, save_checkpoint
    from audioae.models import build_model

    cfg = {"hidden": 16, "code_dim": 8, "n_fft": 128, "hop_length": 32, "output": "deepfilter", "df_bins": 8}
    torch.manual_seed(0)
    base = build_model("recurrent", cfg)
    save_checkpoint(base, tmp_path / "base.safetensors", {"step": 1})
    torch.manual_seed(1)
    tuned = build_model("recurrent", {**cfg, "input_gate": True})
    save_checkpoint(tuned, tmp_path / "tuned.safetensors", {"step": 2})
    dst = tmp_path / "shipped.safetensors"
    subprocess.run([sys.executable, str(ROOT / "recipes" / "export_model.py"), str(tmp_path / "tuned.safetensors"),
                    str(dst), "--base", str(tmp_path / "base.safetensors"), "--alpha", "0.5"], check=True,
                   capture_output=True)
    shipped = load_checkpoint(dst)
    assert shipped.config.input_gate
    w, t, b = shipped.to_out.weight.detach(), tuned.to_out.weight.detach(), base.to_out.weight.detach()
    torch.testing.assert_close(w[-1], 0.5 * t[-1])  # the base's grown gate row is zero
    torch.testing.assert_close(w[:-1], 0.5 * t[:-1] + 0.5 * b)


def test_export_model_refuses_what_would_break_or_replace_a_checkpoint(tmp_path, monkeypatch, capsys):
    """Was: tracebacks for a shape-changing or non-JSON --set, and DST = SRC rewrote the source."""
    from audioae.checkpoint import save_checkpoint
    from audioae.models import build_model

    export = _load("export_model", ROOT / "recipes" / "export_model.py")
    src = tmp_path / "run" / "best.safetensors"
    src.parent.mkdir()
    save_checkpoint(build_model("recurrent", {"hidden": 16, "code_dim": 8, "n_fft": 128, "hop_length": 32}), src)
    sidecar = src.parent / "best.safetensors.sha256"
    before = src.read_bytes(), sidecar.read_bytes()
    dst = tmp_path / "out.safetensors"
    same = tmp_path / "run" / ".." / "run" / "best.safetensors"
    for target, extra, said in ((dst, ["--set", "hidden=32"], "--set hidden: changes the shapes of the weights"),
                                (dst, ["--set", "mask_power=abc"], "RecurrentConfig mask_power = 'abc': expected float"),
                                (dst, ["--set", "mask_power"], "--set 'mask_power': expected KEY=VALUE"),
                                (dst, ["--set", "mask_power=-1"], "--set: mask_power must be positive, got -1"),
                                (dst, ["--set", "maskpower=0.7"], "RecurrentConfig has no key(s) ['maskpower']"),
                                (same, ["--set", "mask_power=0.7"], "DST is SRC")):
        monkeypatch.setattr(sys, "argv", ["export_model.py", str(src), str(target), *extra])
        with pytest.raises(SystemExit) as stop:
            export.main()
        assert stop.value.code == 2 and said in capsys.readouterr().err
        assert not dst.exists() and (src.read_bytes(), sidecar.read_bytes()) == before


def test_train_decomposer_refuses_a_bad_set_before_making_its_run_folder(tmp_path, capsys):
    """Was: a JSONDecodeError or ValueError traceback, after the run folder was made."""
    recipe = _load("train_decomposer", ROOT / "recipes" / "train_decomposer.py")
    for item, said in (("topk=abc", "SparseDictConfig topk = 'abc': expected int"),
                       ("nope=3", "SparseDictConfig has no key(s) ['nope']"),
                       ("topk", "--set 'topk': expected KEY=VALUE"),
                       # fit_arrays refuses it (it was trained without, in silence)
                       ('corruption="gaussian"', "cannot apply this sparse_dict model's corruption 'gaussian'")):
        with pytest.raises(SystemExit) as stop:
            recipe.main(["--out", str(tmp_path / "run"), "--set", item])
        assert stop.value.code == 2 and said in capsys.readouterr().err
        assert not (tmp_path / "run").exists()


def test_train_decomposer_stops_at_a_non_finite_loss_ships_nothing_and_fails(tmp_path, monkeypatch):
    """A learning rate of 1e30 makes round 1's loss NaN (finite arguments: the recipe refuses inf and
    nan): the run stops there, with --ship leaves the shipped file unwritten, and exits 1 either way
    (it exited 0 without --ship)."""
    recipe = _load("train_decomposer", ROOT / "recipes" / "train_decomposer.py")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no espeak-ng: synthetic speech only
    shipped = tmp_path / "shipped" / "decomposer-small.safetensors"
    monkeypatch.setattr(recipe, "SHIPPED", shipped)  # never the package's own file, whatever happens
    tiny = ["--set", "code_dim=16", "--set", "topk=4", "--round-steps", "2", "--examples", "2", "--seconds", "0.1",
            "--batch-size", "2", "--speech-utterances", "3", "--max-rounds", "3", "--lr", "1e30"]
    for run, extra in ((tmp_path / "shipping", ["--ship"]), (tmp_path / "plain", [])):
        assert recipe.main(["--out", str(run), *tiny, *extra]) == 1
        progress = json.loads((run / "progress.json").read_text())
        assert progress["round"] == 1 and not math.isfinite(progress["losses"][-1])  # stopped at the first
        assert not shipped.exists() and not shipped.parent.exists()


def test_pack_corpus_measure_prints_strict_json_with_every_key(tmp_path, monkeypatch, capsys):
    """--measure's last line: valid JSON (no NaN where PESQ cannot score a silent file), and what
    benchmarks/results/opus-coding.json records: files measured, bit rate, PESQ and SI-SDR means and
    how many files each one scored (under a second: neither)."""
    rng = np.random.default_rng(5)
    _write(tmp_path / "src" / "a" / "speech.wav", synthetic.speech_like(rng, 2.0, SR).astype(np.float32))
    _write(tmp_path / "src" / "b" / "silent.wav", np.zeros(int(1.5 * SR), np.float32))  # PESQ: NaN
    _write(tmp_path / "src" / "b" / "short.wav", synthetic.speech_like(rng, 0.5, SR).astype(np.float32))
    monkeypatch.setattr(sys, "argv", ["pack_corpus.py", str(tmp_path / "src"), str(tmp_path / "dst"),
                                      "--measure", "5", "--threads", "1"])
    pack.main()
    last = capsys.readouterr().out.strip().splitlines()[-1]

    def refuse(constant: str):
        raise AssertionError(f"{constant} in the JSON")

    res = json.loads(last, parse_constant=refuse)
    assert set(res) == {"quality", "files", "kbit_per_s", "pesq_wb", "pesq_scored", "si_sdr_db", "scored"}
    assert res["quality"] == 0.85 and res["files"] == 3 and res["scored"] == 2 and res["pesq_scored"] == 1
    assert res["kbit_per_s"] > 0 and 1.0 < res["pesq_wb"] <= 4.65 and math.isfinite(res["si_sdr_db"])


# Stands in for espeak-ng (not installed here): `espeak-ng ... -w OUT TEXT` writes a short tone
# whose pitch follows TEXT into OUT, and appends TEXT to the file CALLS names.
FAKE_ESPEAK = """#!{python}
import sys, zlib
import numpy as np, soundfile as sf
args = sys.argv[1:]
text, out = args[-1], args[args.index("-w") + 1]
t = np.arange(4410) / 22050
sf.write(out, 0.5 * np.sin(2 * np.pi * (100 + zlib.crc32(text.encode()) % 900) * t), 22050)
with open({calls!r}, "a") as fh:
    fh.write(text + "\\n")
"""


def _fake_espeak(tmp_path: Path, monkeypatch):
    """espeak-ng on PATH (alone there); returns how many times it has run."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "espeak-calls.txt"
    bin_dir.mkdir()
    exe = bin_dir / "espeak-ng"
    exe.write_text(FAKE_ESPEAK.format(python=sys.executable, calls=str(calls)))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return lambda: len(calls.read_text().splitlines()) if calls.exists() else 0


def test_train_decomposer_remakes_a_speech_cache_made_with_other_settings(tmp_path, monkeypatch):
    """Was: a fresh run took whatever speech_pool.npz its folder held, however many utterances,
    from whatever seed."""
    recipe = _load("train_decomposer", ROOT / "recipes" / "train_decomposer.py")
    calls = _fake_espeak(tmp_path, monkeypatch)
    cache = tmp_path / "run" / "speech_pool.npz"
    two = recipe.espeak_pool(cache, 2, 0)
    assert len(two) == 2 and calls() == 2
    assert [c.tolist() for c in recipe.espeak_pool(cache, 2, 0)] == [c.tolist() for c in two] and calls() == 2
    assert len(recipe.espeak_pool(cache, 3, 0)) == 3 and calls() == 5  # was: the 2 cached ones
    other = recipe.espeak_pool(cache, 3, 1)
    assert calls() == 8 and [c.tolist() for c in other] != [c.tolist() for c in recipe.espeak_pool(cache, 3, 0)]
    assert calls() == 11


def test_train_decomposer_refuses_a_speech_cache_it_cannot_remake(tmp_path, monkeypatch, capsys):
    """Without espeak-ng a fresh run cannot remake a cache from other settings (or one from before
    2026-12-06, which says nothing of them): it refuses it, where it used to train on it. A resumed
    run keeps the one it began with."""
    recipe = _load("train_decomposer", ROOT / "recipes" / "train_decomposer.py")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no espeak-ng
    run = tmp_path / "run"
    tiny = ["--out", str(run), "--set", "code_dim=16", "--set", "topk=4", "--round-steps", "1", "--examples", "2",
            "--seconds", "0.1", "--batch-size", "2", "--speech-utterances", "3"]
    assert recipe.main([*tiny, "--max-rounds", "1"]) == 0  # synthetic speech only: no cache
    assert not (run / "speech_pool.npz").exists()
    old = np.random.default_rng(0).standard_normal((2, 800)).astype(np.float32)
    np.savez(run / "speech_pool.npz", u0000=old[0], u0001=old[1])  # what a run before 2026-12-06 left
    assert recipe.main([*tiny, "--max-rounds", "2"]) == 0  # resumed: the cache it began with
    assert json.loads((run / "progress.json").read_text())["round"] == 2
    (run / "last.safetensors").unlink()  # a fresh run in the same folder
    with pytest.raises(SystemExit) as stop:
        recipe.main([*tiny, "--max-rounds", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{run / 'speech_pool.npz'} holds espeak-ng utterances made before 2026-12-06" in err
    assert "espeak-ng is not installed to make this run's" in err


@pytest.mark.parametrize(("script", "args", "said"), [
    # bad arguments were tracebacks from deep inside, or (the first two) ran and did harm
    ("recipes/train_decomposer.py", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),  # trained nothing
    ("benchmarks/denoise_bench.py", ["--model", "denoiser-small", "--limit", "2"],
     "--limit scores part of the test set: give --out"),
    ("benchmarks/denoise_bench.py", ["--limit", "0", "--out", "x.json"], "argument --limit: must be 1 or more, got 0"),
    ("benchmarks/denoise_bench.py", ["--speed-repeats", "0", "--out", "x.json"],
     "argument --speed-repeats: must be 1 or more, got 0"),
    ("benchmarks/metric_speed.py", ["--seconds", "0"], "argument --seconds: must be more than 0 seconds, got 0"),
    ("benchmarks/metric_speed.py", ["--seconds", "0.00001"], "--seconds 1e-05 is less than one sample at 16000 Hz"),
    ("benchmarks/model_speed.py", ["--seconds", "0.00001", "denoiser-small"],
     "--seconds 1e-05 is less than one sample at 16000 Hz"),
    ("benchmarks/stream_chunks.py", ["--seconds", "0.00001", "--count", "0"],
     "--seconds 1e-05 is less than one sample at 16000 Hz"),
    ("benchmarks/odd_rates.py", ["--rates", "0"], "argument --rates: must be within 1000..384000 Hz, got 0"),
    ("benchmarks/stream_chunks.py", ["--chunk-ms", "0"], "argument --chunk-ms: must be more than 0 ms, got 0"),
    ("benchmarks/model_speed.py", ["--rounds", "0", "denoiser-small"], "argument --rounds: must be 1 or more, got 0"),
    ("benchmarks/int8_gru.py", ["nosuch"], "unknown model 'nosuch'"),
    ("recipes/compare_checkpoints.py", ["denoiser-small", "--mask-power", "-1"],
     "--mask-power values must be finite numbers above 0"),
    # any run but the card's full one replaced benchmarks/results/denoise.json (only --limit was refused)
    ("benchmarks/denoise_bench.py", ["--model", "denoiser-small", "--testset", "val", "--methods", "audioae", "--no-speed"],
     "--testset val is not the card's test set (corpus/test/mixtures); --methods audioae leaves some out; "
     "--no-speed measures no speed: give --out"),
    ("benchmarks/denoise_bench.py", [], "without --model no model of ours is scored: give --out"),
    ("benchmarks/denoise_bench.py", ["--model", "denoiser-small", "--speed-seconds", "5"],
     "--speed-seconds/--speed-repeats are not the card's (60, 3): give --out"),
    ("benchmarks/denoise_bench.py", ["--model", str(ROOT / "tests" / "data" / "nosuch.safetensors")],
     "nosuch.safetensors: no such checkpoint file"),
    # a model of the other kind: an AttributeError (int8_gru), numbers written (dc_offset), or taken
    ("benchmarks/int8_gru.py", ["decomposer-small"], "decomposer-small is a sparse_dict model trained without "
     "corruption (a decomposer), not a recurrent denoiser"),
    ("benchmarks/dc_offset.py", ["--model", "decomposer-small"], "--model: decomposer-small is a sparse_dict model "
     "trained without corruption (a decomposer), not a denoiser"),
    ("benchmarks/denoise_bench.py", ["--model", "decomposer-small"], "--model: decomposer-small is a sparse_dict"),
    ("benchmarks/model_speed.py", ["denoiser-small", "decomposer-small"], "decomposer-small is a sparse_dict"),
    ("benchmarks/decompose_bench.py", ["--model", "denoiser-small"], "--model: denoiser-small is a recurrent model "
     "(a denoiser), not a decomposer"),
    ("recipes/loss_gradients.py", ["decomposer-small"], "decomposer-small is a sparse_dict model trained without "
     "corruption (a decomposer), not a denoiser"),
    ("recipes/denoiser_diagnostics.py", ["swap", "--other", "decomposer-small"], "--other: decomposer-small is a "
     "sparse_dict model"),
    ("recipes/compare_checkpoints.py", ["denoiser-small", "decomposer-small"], "decomposer-small is a sparse_dict"),
    # thread counts: torch's "set_num_threads expects a positive integer" traceback (0, -1), or a crash making 99999
    ("recipes/compare_checkpoints.py", ["denoiser-small", "--threads", "0"], "--threads must be at least 1, got 0"),
    ("recipes/compare_checkpoints.py", ["denoiser-small", "--threads", "99999"], "--threads must be at most"),
    ("recipes/train_decomposer.py", ["--threads", "99999"], "--threads must be at most"),
    ("recipes/pack_corpus.py", [".", "dst", "--threads", "99999"], "--threads must be at most"),
    ("benchmarks/gpu_check.py", ["--dry-run", "--threads", "-1"], "--threads must be at least 0, got -1"),
    ("benchmarks/gpu_check.py", ["--dry-run", "--threads", "99999"], "--threads must be at most"),
])
def test_a_script_given_a_bad_argument_says_so_and_does_nothing(tmp_path, script, args, said):
    import subprocess

    run = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and said in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and not list(tmp_path.iterdir())  # nothing written where it ran


@pytest.mark.parametrize("script", ["recipes/lookahead_probe.sh", "recipes/train_denoiser.sh",
                                    "recipes/train_denoiser_gpu.sh", "recipes/install_corpus_packages.sh"])
def test_a_shell_recipe_asked_for_help_prints_its_usage_and_runs_nothing(tmp_path, script):
    """`lookahead_probe.sh --help` made a folder called --help and started two trainings."""
    import subprocess

    run = subprocess.run(["bash", str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-2000:]
    assert not list(tmp_path.iterdir())
    assert subprocess.run(["bash", str(ROOT / script), "--nosuch"], capture_output=True, timeout=60).returncode == 2


def test_the_denoiser_recipe_exports_to_its_runs_and_installs_only_after_the_last_stage():
    """Was: each stage exported over audioae/pretrained/denoiser-small.safetensors, so a run without
    a CUDA GPU, which stops after stage 5, left that stage in place of the shipped stage 10. Now the
    stages export to runs/ and one command, the recipe's last, installs stage 10 in the package;
    the stop without a GPU exits before it and says the shipped model is unchanged. Each stage
    starts from the weights the one before it left (was, after that change: the GPU config still
    read the package file, so the GPU stages run on their own started from the shipped stage 10);
    the install exports stage 10's run as stage 10's export was (was: an export of that export,
    its metadata one level deeper: extra.trained.config_changes)."""
    import shlex
    import tomllib

    text = (ROOT / "recipes" / "train_denoiser.sh").read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(code).replace("\\\n", " ")  # one line per command
    commands = [c.strip() for c in joined.splitlines() if c.strip()]
    exports = [c for c in commands if c.startswith("python recipes/export_model.py")]
    dsts = [c.split()[3] for c in exports]
    assert dsts == [f"runs/denoiser-small-stage{n}.safetensors" for n in range(3, 11)] + ['"$SHIPPED"']
    stage10, install = exports[-2].split(), exports[-1].split()
    assert install[:3] == stage10[:3] and install[4:] == stage10[4:]  # the same source and settings
    assert commands.index(exports[-1]) == commands.index(exports[-2]) + 1  # right after stage 10
    assert not any("audioae/pretrained" in c for c in commands if not c.startswith("SHIPPED=")), \
        "only the install (through $SHIPPED) writes into the package"
    assert all(not c.startswith("cp ") for c in commands)
    gpu = joined.index("torch.cuda.is_available()")
    no_gpu = joined[gpu:joined.index("\nfi\n", gpu)]
    assert "exit 0" in no_gpu and "is unchanged" in no_gpu  # stops before stage 6, says the package is untouched
    assert "runs/denoiser-small-stage5.safetensors there" in no_gpu  # and what a GPU machine needs
    assert joined.index("exit 0") < joined.index("stage6.safetensors")
    assert joined.index("--stages synthetic") < gpu  # the packed corpus needs it: built without a GPU too

    # Each stage after the first reads what the one before it left: its export, or (an export
    # without --base, the same weights) the checkpoint exported; stages 2-3, which export nothing,
    # the run folder of the stage before.
    def config(name):
        return tomllib.loads((ROOT / name).read_text())["train"]

    previous_out, last_export, checked = None, None, []
    for c in commands:
        words = shlex.split(c)
        if c.startswith("python recipes/export_model.py"):
            last_export = words[2:]
            continue
        if c.startswith("audioae train "):
            train = config(words[2])
            out = train["out_dir"]
        elif c.startswith("bash recipes/train_denoiser_gpu.sh "):
            train = config("configs/denoiser-small-gpu.toml")
            out = words[4]
        else:
            continue
        init = train.get("init_from", "")
        for flag, value in zip(words, words[1:], strict=False):
            if flag == "--set" and value.startswith("train.init_from="):
                init = tomllib.loads(f"v = {value.split('=', 1)[1]}")["v"]
        if out != previous_out and previous_out is not None:  # a new stage: it must start from the last one
            assert init, f"{c}: starts from no weights"
            if last_export is not None:
                allowed = {last_export[1]} | ({last_export[0]} if "--base" not in last_export else set())
            else:
                allowed = {f"{previous_out}/last.safetensors"}
            assert init in allowed, f"{c}: starts from {init}, not {allowed}"
            checked.append(init)
        previous_out, last_export = out, None
    assert len(checked) == 9  # stages 2-10
    assert checked[4:] == [f"runs/denoiser-small-stage{n}.safetensors" for n in range(5, 10)]  # 6-10: exports


def test_the_gpu_recipe_refuses_to_start_without_the_stage_it_starts_from(tmp_path):
    """Was: configs/denoiser-small-gpu.toml started from the package file, the shipped stage 10,
    so docs/corpus.md's GPU machine, given the packed corpus after a CPU run stopped at stage 5,
    trained stage 6 from stage 10 in silence. Now it starts from stage 5's export and says where
    to get it when it is missing (stage 9's --set init_from alike)."""
    import subprocess
    import tomllib

    gpu = tomllib.loads((ROOT / "configs/denoiser-small-gpu.toml").read_text())["train"]
    assert gpu["init_from"] == "runs/denoiser-small-stage5.safetensors"
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    script = (ROOT / "recipes/train_denoiser_gpu.sh").read_text()
    assert f"INIT={gpu['init_from']}\n" in script  # the file it checks is the config's
    (repo / "recipes/train_denoiser_gpu.sh").write_text(script)
    for extra, missing in (([], gpu["init_from"]),
                           (["--set", 'train.init_from="runs/denoiser-small-stage8.safetensors"',
                             "--set", "train.pesq_weight=0.05"], "runs/denoiser-small-stage8.safetensors")):
        run = subprocess.run(["bash", str(repo / "recipes/train_denoiser_gpu.sh"), "12", ".gpucorpus",
                              "runs/denoiser-small-gpu", *extra], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 2, run.stderr[-2000:]
        assert f"{missing}, the weights this phase starts from, is missing" in run.stderr
        assert "copy" in run.stderr and "packed corpus" in run.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["recipes"]  # nothing trained or written


@pytest.mark.parametrize("args, where", [(["12", "--set", "train.session_minutes=8.5"], "DATA"),
                                         (["12", "corpus", "--set", "train.session_minutes=8.5"], "OUT"),
                                         (["--set", "train.session_minutes=8.5"], "MINUTES")])
def test_the_gpu_recipe_refuses_an_option_where_a_folder_belongs(tmp_path, args, where):
    """Was: `train_denoiser_gpu.sh 12 --set train.session_minutes=8.5` trained with DATA "--set"
    and OUT "train.session_minutes=8.5" (only $1 was checked for an option)."""
    import subprocess

    run = subprocess.run(["bash", str(ROOT / "recipes/train_denoiser_gpu.sh"), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"where {where} belongs" in run.stderr and "[MINUTES] [DATA] [OUT]" in run.stderr, run.stderr
    assert not list(tmp_path.iterdir())


def test_build_corpus_says_to_install_the_recipes_extra_before_any_work(tmp_path, monkeypatch, capsys):
    """Was: docs/corpus.md's quick start never installed librosa, and the build failed on it only
    at the first clip, after the apt work."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "librosa" else find_spec(name, *a))
    monkeypatch.setattr(bc, "run", lambda *a, **k: pytest.fail("built without librosa"))
    assert bc.main(["--out", str(tmp_path / "corpus")]) == 2
    assert "pip install -e '.[recipes]'" in capsys.readouterr().err
