"""The learned decomposition: sparse dictionary model, components that sum to the input,
grouping, ranking, separation of known parts, the shipped model, and the CLI."""

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch

from audioae import decomposition_folder as folder
from audioae.audio import read_audio, write_audio
from audioae.checkpoint import save_checkpoint
from audioae.cli import main
from audioae.decompose import (
    GROUPS,
    MAX_FIT_STEPS,
    _energy_band,
    _sample_blocks,
    _spectrum_and_features,
    active_spans,
    check_options,
    cluster_label,
    decompose,
    summarize,
)
from audioae.models import build_model
from audioae.pretrained import DEFAULT_DECOMPOSER, HERE, load
from audioae.spectral import window_samples
from audioae.train import fit_arrays

TINY = {"n_fft": 256, "hop_length": 64, "code_dim": 48, "topk": 6, "refine_steps": 3}
SR = 16000


def tiny_model(**extra):
    return build_model("sparse_dict", {**TINY, **extra}).eval()


def error_db(dec, x: np.ndarray) -> float:
    """The sum-to-input error as a caller would compute it: float32 arrays, plain sums."""
    err = dec.components.sum(0) + dec.residual - (x if x.ndim == 2 else x[None])
    return 10 * np.log10(float((err.astype(np.float64) ** 2).sum()) / float((x.astype(np.float64) ** 2).sum()))


def tone(seconds: float, sr: int, hz: float = 700.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise_bursts(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """White noise switched on for 120 ms in every 500 ms."""
    n = round(seconds * sr)
    noise = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.2
    on = (np.arange(n) / sr) % 0.5 < 0.12
    return noise * on


def where_asked() -> str:
    """In a stop predicate: what the stop would say (``check_stop``'s ``where``), or ""."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "check_stop":
        frame = frame.f_back
    return frame.f_locals["where"] if frame is not None else ""


def counting_stop() -> tuple[list, Callable[[float], bool]]:
    """``(asked, stop_at)``: ``stop_at(n)`` is a stop predicate whose n-th question says stop;
    ``asked`` holds one entry per question (clear it between calls)."""
    asked: list = []

    def stop_at(n: float) -> bool:
        asked.append(1)
        return len(asked) >= n

    return asked, stop_at


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ---- the model ------------------------------------------------------------------------------------
def test_code_is_nonnegative_sparse_and_components_add_up():
    model = tiny_model()
    x = model.example_input(2)
    with torch.no_grad():
        h = model.encode(x)  # [B, U, N]
        assert (h >= 0).all()
        assert int((h > 0).sum(1).max()) <= TINY["topk"]
        assert (model.dictionary() >= 0).all()
        per_unit = model.unit_magnitudes(h)  # [B, U, F, N]
        torch.testing.assert_close(per_unit.sum(1), model.magnitudes(h), rtol=1e-4, atol=1e-5)
        weight = torch.rand(x.shape)
        brute = (per_unit.pow(2) * weight[:, None]).sum(dim=(0, 2, 3))
        torch.testing.assert_close(model.unit_energies(h, weight), brute, rtol=1e-4, atol=1e-6)
        linear = (per_unit * weight[:, None]).sum(dim=(0, 2, 3))  # what --top K ranks groups by
        torch.testing.assert_close(model.unit_projections(h, weight), linear, rtol=1e-4, atol=1e-5)


def test_config_rejects_what_the_model_cannot_do():
    with pytest.raises(ValueError, match="odd"):
        build_model("sparse_dict", {"atom_frames": 2})
    with pytest.raises(ValueError, match="topk, l1 or none"):
        build_model("sparse_dict", {"sparsity": "kl", "code_activation": "sigmoid"})


# ---- sum to input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sr", "length", "channels"), [(8000, 8001, 0), (16000, 16003, 1), (44100, 44101, 2),
                                                        (48000, 33333, 2), (22050, 777, 1)])
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("fit", [0, 5])
def test_components_sum_to_the_input_at_any_rate_and_length(sr, length, channels, group, fit, rng):
    model = tiny_model()
    shape = (length,) if channels == 0 else (channels, length)
    x = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    x += tone(length / sr, sr, 440.0)[:length]
    dec = decompose(model, x, sr, group=group, groups=None if group == "none" else 4, fit_steps=fit)
    assert dec.fit_steps == fit
    c = 1 if channels == 0 else channels
    k = len(dec.labels)
    assert dec.components.shape == (k, c, length)
    assert dec.components.dtype == np.float32
    assert dec.residual.shape == (c, length)
    assert k > 0 and len(dec.units) == k and dec.energy_share.shape == (k,)
    assert error_db(dec, x) < -90
    assert dec.error_db < -90
    # The components carry real signal (the residual is not just the whole input).
    assert dec.energy_share.sum() > 0.2


def test_top_k_moves_the_rest_into_the_residual(rng):
    model = tiny_model()
    x = (0.1 * rng.standard_normal(12345)).astype(np.float32)
    full = decompose(model, x, SR)
    top = decompose(model, x, SR, top_k=3)
    assert len(top.labels) == 3 < len(full.labels)
    assert top.residual_share > full.residual_share
    assert error_db(top, x) < -90


def test_components_are_ranked_by_energy_and_shares_add_up(rng):
    model = tiny_model()
    x = (0.1 * rng.standard_normal((2, 9000))).astype(np.float32) + tone(9000 / SR, SR)
    for group in GROUPS:
        dec = decompose(model, x, SR, group=group, groups=None if group == "none" else 4)
        share = dec.energy_share
        assert np.all(np.diff(share) <= 1e-7), f"{group}: not ranked by energy: {share}"
        recomputed = (dec.components.astype(np.float64) * x[None]).sum(axis=(1, 2)) / (x.astype(np.float64) ** 2).sum()
        np.testing.assert_allclose(share, recomputed, rtol=1e-4, atol=1e-7)
        assert share.sum() + dec.residual_share == pytest.approx(1.0, abs=1e-5)


def test_groups_partition_the_units(rng):
    model = tiny_model()
    x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    for group in ("none", "cluster"):
        dec = decompose(model, x, SR, group=group, groups=None if group == "none" else 4)
        flat = [u for g in dec.units for u in g]
        assert len(flat) == len(set(flat)), f"{group}: a unit in two components"
        assert len(dec.labels) == len(dec.units) > 0
        # labelled once, in rank order, by what each component's waveform holds
        if group == "none":
            assert dec.labels == [f"unit {g[0]} (~{hz:.0f} Hz)" for g, hz in zip(dec.units, dec.dominant_hz, strict=True)]
        else:
            assert all(label.startswith(f"cluster {i + 1} (") for i, label in enumerate(dec.labels)), dec.labels


@pytest.mark.parametrize("sr", [16000, 44100])
def test_band_components_are_band_limited_and_partition_the_frequencies(sr, rng):
    """Bands split what the units explain by frequency (was: units grouped by their atom's peak,
    and a "band 0-62 Hz" held energy up to 4 kHz: 11-37% of it in its band)."""
    model = tiny_model()
    n = sr  # one second
    x = (0.1 * rng.standard_normal(n)).astype(np.float32) + tone(1.0, sr, 700.0)
    dec = decompose(model, x, sr, group="band", groups=4, fit_steps=0)
    assert 2 <= len(dec.labels) <= 4 and all(re.fullmatch(r"band \d+-\d+ Hz", label) for label in dec.labels)
    bins = sorted(dec.band_bins)
    assert all(a[1] <= b[0] for a, b in zip(bins[:-1], bins[1:], strict=True)), bins  # disjoint bins
    assert error_db(dec, x) < -90
    freqs = np.fft.rfftfreq(n, 1 / sr)
    for label, comp in zip(dec.labels, dec.components, strict=True):
        lo, hi = map(float, re.search(r"(\d+)-(\d+) Hz", label).groups())
        power = np.abs(np.fft.rfft(comp[0].astype(np.float64))) ** 2
        inside = power[(freqs >= lo) & (freqs < hi)].sum() / power.sum()
        assert inside > 0.9, f"{label}: {100 * inside:.0f}% of its energy in its band"


@pytest.mark.parametrize(("sr", "most"), [(SR, 7), (SR // 2, 6)])
def test_more_octave_bands_than_the_frames_resolve_are_capped(rng, caplog, sr, most):
    # was: --groups 50 split the 0 Hz bin off as "band 0-0 Hz" and left 41 bands empty unsaid; then
    # the lowest band was the 0 Hz bin alone ("band 0-31 Hz" of an 8 kHz file with the shipped model)
    x = (0.1 * rng.standard_normal(sr)).astype(np.float32)
    dec = decompose(tiny_model(), x, sr, group="band", groups=48)  # 256-point frames: 62.5 Hz bins; 48: its units
    assert f"48 octave bands asked; {most} fit the model's {SR / 256:.1f} Hz frequency bins" in caplog.text
    assert len(dec.labels) <= most and "band 0-0 Hz" not in dec.labels
    assert min(lo for lo, _ in dec.band_bins) == 0
    assert all(hi >= 2 for lo, hi in dec.band_bins if lo == 0)  # the lowest band holds a bin above 0 Hz


def test_bands_end_at_the_inputs_nyquist_frequency(rng):
    """An 8 kHz file decomposed by a 16 kHz model had a "band 4000-8000 Hz" above its own band."""
    model = tiny_model()
    msr = model.config.sample_rate
    x = (0.1 * rng.standard_normal(msr // 2)).astype(np.float32)
    dec = decompose(model, x, msr // 2, group="band", groups=4)
    tops = [float(label.split()[1].split("-")[1]) for label in dec.labels]
    assert max(tops) == msr / 4, dec.labels
    sum_err = np.abs(dec.components.sum(0) + dec.residual - x).max()
    assert sum_err < 1e-5


def _voiced(seconds: float, sr: int) -> np.ndarray:
    """A voice-like signal: 19 harmonics of a gliding 120 Hz, on 3 times a second, and noise
    bursts; its clusters' shares are close enough for the units' cross terms to reorder them."""
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 20)) * (np.sin(2 * np.pi * 3 * t) > 0)
    bursts = np.random.default_rng(0).standard_normal(t.size) * 0.05 * ((t % 1) < 0.2)
    return (0.2 * voice + bursts).astype(np.float32)


@pytest.mark.parametrize(("group", "k"), [("cluster", 3), ("none", 16)])  # bands: no signal found that reorders
def test_top_k_keeps_the_strongest_components_by_their_share(group, k):
    """--top K picked by the units' masked energies, which leave out the cross terms between a
    group's units, and kept weaker components than it dropped (clusters 1, 3 and 5 for --top 3;
    the 18th unit for the 16th). The K kept are now the K largest shares of the whole."""
    model, x = load(DEFAULT_DECOMPOSER), _voiced(3.0, 16000)
    everything = decompose(model, x, 16000, group=group, fit_steps=0)
    top = decompose(model, x, 16000, group=group, fit_steps=0, top_k=k)
    assert sorted(top.units) == sorted(everything.units[:k])
    np.testing.assert_allclose(top.energy_share, everything.energy_share[:k], rtol=1e-4)


def test_a_decomposition_asks_stop_inside_its_first_stages_too(rng):
    """The server's stop() was first asked after the whole signal was encoded: the Denoise behind
    a 550 s clip's Decompose past its deadline waited 9.1 s (benchmarks/decompose_deadline.py).
    Now it is asked before the work, before encoding, at each refinement and after; asking
    changes nothing."""
    from audioae.enhance import Stopped

    model = tiny_model()
    x = (tone(1.0, SR) + noise_bursts(1.0, SR))[None]
    asked, stop_at = counting_stop()

    for n, where in ((1, "before it began"), (2, "before encoding"), (3, "while encoding"),
                     (model.config.refine_steps + 4, "before the units' energies")):
        asked.clear()
        with pytest.raises(Stopped, match=f"decomposition stopped {where}"):
            decompose(model, x, SR, fit_steps=0, stop=lambda n=n: stop_at(n))
    asked.clear()
    dec = decompose(model, x, SR, fit_steps=0, stop=lambda: stop_at(math.inf))
    np.testing.assert_array_equal(dec.components, decompose(model, x, SR, fit_steps=0).components)


def test_a_long_decomposition_asks_stop_in_every_block_of_its_spectrogram_and_code():
    """The STFT, the features and the encoder's matched filter of a long signal ran uncut before
    the first stop question (benchmarks/decompose_deadline.py): now they run in blocks of frames,
    stop asked before each block after the first, and the blocks give what the whole did."""
    from audioae.enhance import Stopped
    from audioae.models.sparse_dict import BLOCK_FRAMES

    model = tiny_model()
    x = (tone(20.0, SR) + noise_bursts(20.0, SR))[None]  # [1, T]
    frames = model.stft.num_frames(x.shape[-1])
    assert 2 * BLOCK_FRAMES < frames <= 3 * BLOCK_FRAMES  # three blocks
    asked, stop_at = counting_stop()

    # 1: before it began; 2, 3: the spectrogram's blocks 2 and 3; 4: before encoding; then the
    # encoder's 3 blocks: each one's refinements, and before blocks 2 and 3; then before the fit
    last = 4 + 3 * model.config.refine_steps + 2
    for n, where in ((2, f"at frame {BLOCK_FRAMES} of {frames} of its spectrogram"),
                     (3, f"at frame {2 * BLOCK_FRAMES} of {frames}"), (4, "before encoding"),
                     (last, "while encoding"), (last + 1, "before the fit")):
        asked.clear()
        with pytest.raises(Stopped, match=f"decomposition stopped {where}"):
            decompose(model, x, SR, fit_steps=0, stop=lambda n=n: stop_at(n))

    z = torch.from_numpy(x)
    with torch.inference_mode():
        spec, feats = _spectrum_and_features(model, z, None)
        whole = model.stft(z)
        torch.testing.assert_close(spec, whole, rtol=0, atol=0)
        torch.testing.assert_close(feats, model.features(whole), rtol=1e-6, atol=1e-6)
        code = model.encode(feats)
        whole_code = model._encode_block(feats, None)
    assert code.shape == whole_code.shape
    torch.testing.assert_close(code, whole_code, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [0, 1, 2])  # 0: a [T] array
@pytest.mark.parametrize(("orig", "new", "length", "block"), [
    (44100, 16000, 100_003, 10_000), (16000, 44100, 36_293, 5_000), (44100, 16000, 4410, 441),
    (16000, 44100, 1_600_004, 1 << 18),  # torchaudio's float32 length is one short of the exact here
    (48000, 44100, 9_601, 100_000),  # one block: the whole's resample
])
def test_resampling_in_blocks_gives_the_whole_signal_resample(orig, new, length, block, channels):
    """The halo of each block (the kernel's width) reads what the whole-signal convolution reads:
    same samples to float rounding, same length, a stop question before each block but the first."""
    from audioae.audio import resample, resample_in_blocks

    shape = (length,) if channels == 0 else (channels, length)
    x = torch.from_numpy(np.random.default_rng(length).standard_normal(shape).astype(np.float32))
    asked = []
    blocked = resample_in_blocks(x, orig, new, stop=lambda: asked.append(1), block=block)
    whole = resample(x, orig, new)
    assert blocked.shape == whole.shape
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-6)
    a = orig // math.gcd(orig, new)
    blocks = -(-(length // a + 1) // max(1, block // a)) if length > block // a * a else 1
    assert len(asked) == blocks - 1
    if blocks > 1:  # and back: the round trip of the blocked is the whole's
        back = resample_in_blocks(blocked, new, orig, block=block)
        torch.testing.assert_close(back, resample(whole, new, orig), rtol=0, atol=1e-5)


def test_a_long_input_at_another_rate_asks_stop_while_it_is_resampled():
    """A 550 s recording at 44.1 kHz was resampled whole before the next stop question: decompose
    ran on 0.1-0.3 s past its stop (benchmarks/results/decompose-deadline-resample-before.json)."""
    from audioae.enhance import Stopped

    model = tiny_model()
    sr = 44100
    x = np.tile(tone(1.0, sr) + noise_bursts(1.0, sr), 30)[None]  # 30 s: more than one block of 2^20 samples
    asked, stop_at = counting_stop()

    with pytest.raises(Stopped, match="decomposition stopped while resampling"):
        decompose(model, x, sr, fit_steps=0, stop=lambda: stop_at(2))  # 1: before it began; 2: after a block
    assert len(asked) == 2


def test_a_long_decomposition_asks_stop_while_it_resamples_its_components_back():
    """Each component was inverted and resampled back to the caller's rate whole, the next stop
    question at the next component (benchmarks/results/decompose-deadline-tail-before.json). Now
    stop is asked before each component's resampling and before each of its blocks but the first;
    the blocks give the whole's samples (test_resampling_in_blocks_gives_the_whole_signal_resample)."""
    from audioae.enhance import Stopped

    model, sr = tiny_model(), 44100
    x = np.tile(tone(1.0, sr) + noise_bursts(1.0, sr), 70)[None]  # 70 s: two blocks of 2^20 samples at 16 kHz
    asked, stop_at = counting_stop()

    said = []
    dec = decompose(model, x, sr, fit_steps=0, top_k=2, stop=lambda: said.append(where_asked()) or False)
    assert error_db(dec, x) < -90 and len(dec.labels) == 2
    # the last question there: the 2nd block of the last component's resampling
    last = max(i for i, where in enumerate(said, 1) if "while resampling component" in where)
    for n in (last, last - 1):  # and the one before it, before that resampling began
        asked.clear()
        with pytest.raises(Stopped, match="decomposition stopped while resampling component 2 of 2"):
            decompose(model, x, sr, fit_steps=0, top_k=2, stop=lambda n=n: stop_at(n))
        assert len(asked) == n
    # then each resampled component is copied out in blocks, a stop question before each
    step = _sample_blocks(dec.components[:1])
    assert x.shape[-1] > step  # two blocks a component
    copies = [w for w in said if "copying component" in w]
    assert len(copies) == 2 * -(-x.shape[-1] // step)
    with pytest.raises(Stopped, match=f"decomposition stopped copying component 2 of 2, at sample {step} of"):
        decompose(model, x, sr, fit_steps=0, top_k=2,
                  stop=lambda: f"copying component 2 of 2, at sample {step} " in where_asked())


def test_clusters_ask_stop_before_each_is_inverted_and_in_every_block_of_frames():
    """A long input's clusters were inverted one after another with no stop question between them,
    and each inverse STFT uncut. 20 s: one cluster per batch, each inverse in three blocks."""
    from audioae.enhance import Stopped
    from audioae.models.sparse_dict import BLOCK_FRAMES

    model = tiny_model()
    x = (tone(20.0, SR) + noise_bursts(20.0, SR))[None]
    frames = model.stft.num_frames(x.shape[-1])
    assert 2 * BLOCK_FRAMES < frames <= 3 * BLOCK_FRAMES
    said = []
    decompose(model, x, SR, group="cluster", groups=3, fit_steps=0, stop=lambda: said.append(where_asked()) or False)
    batches = [w for w in said if "at cluster" in w]
    assert batches == [f"decomposition stopped at cluster {k} of 3" for k in (1, 2, 3)]
    assert sum("inverting cluster" in w for w in said) == 3 * 2  # before each block but the first
    with pytest.raises(Stopped, match="decomposition stopped at cluster 2 of 3"):
        decompose(model, x, SR, group="cluster", groups=3, fit_steps=0,
                  stop=lambda: "at cluster 2 of" in where_asked())
    with pytest.raises(Stopped, match=f"decomposition stopped inverting cluster 2 of 3, at frame {2 * BLOCK_FRAMES} of {frames}"):
        decompose(model, x, SR, group="cluster", groups=3, fit_steps=0,
                  stop=lambda: f"cluster 2 of 3, at frame {2 * BLOCK_FRAMES} " in where_asked())


def test_each_components_masks_and_inverse_stft_ask_stop_in_every_block_of_frames():
    """One component's masks and inverse STFT ran uncut (550 s at 44.1 kHz: 0.8-1.0 s past a
    stop, docs/decomposition.md): now in blocks of frames, stop asked before each but the first."""
    from audioae.enhance import Stopped
    from audioae.models.sparse_dict import BLOCK_FRAMES

    model = tiny_model()
    x = (tone(20.0, SR) + noise_bursts(20.0, SR))[None]
    frames = model.stft.num_frames(x.shape[-1])
    assert 2 * BLOCK_FRAMES < frames <= 3 * BLOCK_FRAMES
    said = []
    decompose(model, x, SR, fit_steps=0, top_k=2, stop=lambda: said.append(where_asked()) or False)
    assert [w for w in said if "masking and inverting" in w] == [
        f"decomposition stopped masking and inverting component {k} of 2, at frame {a} of {frames}"
        for k in (1, 2) for a in (BLOCK_FRAMES, 2 * BLOCK_FRAMES)]
    with pytest.raises(Stopped, match=f"masking and inverting component 2 of 2, at frame {2 * BLOCK_FRAMES} of {frames}"):
        decompose(model, x, SR, fit_steps=0, top_k=2,
                  stop=lambda: f"component 2 of 2, at frame {2 * BLOCK_FRAMES} " in where_asked())


@pytest.mark.parametrize("channels", [1, 2])
def test_masked_inverse_stft_in_blocks_gives_the_whole_signal_inverse(channels):
    """Each block overlap-adds the frames whose windows reach its samples: the components, their
    envelopes and dominant frequencies are the whole computation's, one unit, a group of units,
    a band, and the clusters' waveforms alike, length for length."""
    from audioae.decompose import PEAK_WINDOW, _component_waveforms, _group_waves, _mask_weights, _tones_and_peak
    from audioae.models.sparse_dict import BLOCK_FRAMES

    model = tiny_model()
    x = np.stack([tone(17.0, SR) + noise_bursts(17.0, SR), noise_bursts(17.0, SR, seed=1)])[:channels]
    x = x[:, :-37]  # a length that is no whole number of hops
    length = x.shape[-1]
    with torch.inference_mode():
        spec, feats = _spectrum_and_features(model, torch.from_numpy(x), None)  # [C, F, N]
        assert spec.shape[-1] > BLOCK_FRAMES  # two blocks
        mag = spec.abs()
        h, atoms = model.encode(feats), model.dictionary()
        denom, _, _ = _mask_weights(model, h, atoms, mag, model.level(mag), mag.pow(2), None)
        energy = h.sum(dim=(0, 2))  # [U]
        units = [int(u) for u in torch.argsort(energy, descending=True)[:3]]
        groups = [[units[0]], [units[1]], units]
        numerators = [model.magnitudes(h[:, g], atoms[g]) for g in groups]  # [C, F, N] each
        explained = model.magnitudes(h[:, units], atoms[units])
        bins = [(0, 20), (20, model.config.n_fft // 2 + 1)]
        band_numerators = [torch.zeros_like(explained).index_copy_(1, torch.arange(a, b), explained[:, a:b])
                           for a, b in bins]
        for args, nums in (((groups,), numerators), (([units, units], explained, bins), band_numerators)):
            comps, dom, _, envs, _ = _component_waveforms(model, h, atoms, spec, denom, args[0], SR, length, length,
                                                       *args[1:])
            for k, v in enumerate(nums):
                mask = v / denom  # [C, F, N]: the whole's mask
                whole = model.stft.inverse(spec * mask, length)  # [C, T]
                assert comps[k].shape == (channels, length)
                torch.testing.assert_close(torch.from_numpy(comps[k]), whole, rtol=0, atol=1e-6)
                power = model.stft(whole).abs().pow(2).sum(0)  # [F, N]: the waveform's, as a file holds it
                torch.testing.assert_close(torch.from_numpy(envs[k]), power.sum(0), rtol=1e-4, atol=1e-9)
                n = PEAK_WINDOW * model.config.n_fft  # the resolving spectrum's, whole: one STFT
                resolving = torch.stft(whole.double(), n, n // 2, window=torch.hann_window(n, dtype=torch.float64),
                                       center=False, return_complex=True).abs().pow(2).sum((0, 2))  # [F']
                _, whole_dom = _tones_and_peak(power.sum(-1, dtype=torch.float64).numpy(), SR / model.config.n_fft,
                                               resolving.numpy(), SR / n)
                assert dom[k] == pytest.approx(whole_dom, abs=1e-3)
        waves = _group_waves(model, h, atoms, spec, denom, groups, length)  # [K, C, T]
        for k, v in enumerate(numerators):
            torch.testing.assert_close(waves[k], model.stft.inverse(spec * (v / denom), length), rtol=0, atol=1e-6)


def test_a_fit_asks_stop_before_each_step():
    """Stop is asked before each fit step (and inside each on a long signal: the next test)."""
    from audioae.enhance import Stopped

    model = tiny_model()
    x = (tone(1.0, SR) + noise_bursts(1.0, SR))[None]
    asked, stop_at = counting_stop()

    before_fit = model.config.refine_steps + 3  # before it began, before encoding, each refinement
    for n, where in ((before_fit, "before the fit"), (before_fit + 1, "during the fit"),
                     (before_fit + 3, "during the fit"), (before_fit + 4, "before the units' energies")):
        asked.clear()
        with pytest.raises(Stopped, match=f"decomposition stopped {where}"):
            decompose(model, x, SR, fit_steps=3, stop=lambda n=n: stop_at(n))


def _whole_fit_step(model, n: torch.Tensor, h: torch.Tensor, w: torch.Tensor):
    """A fit step over every frame at once, as fit_signal took it before its blocks."""
    p, lam = model._pad, model.config.sparsity_weight
    ratio = n / (model.magnitudes(h, w) + 1e-6)
    hs = model.shifted_code(h)
    used = hs.sum(dim=(0, 2))[:, None, :]
    h_new = h * torch.nn.functional.conv1d(ratio, w, padding=p) / (w.sum(dim=(1, 2))[None, :, None] + lam).clamp_min(1e-6)
    w = torch.where(used > 0, w * torch.einsum("bfn,bunl->ufl", ratio, hs) / (used + 1e-6), w)
    scale = w.flatten(1).norm(dim=1).clamp_min(1e-12)
    return h_new * scale[None, :, None], w / scale[:, None, None]


@pytest.mark.parametrize("extra", [{}, {"atom_frames": 5}])
def test_a_fit_step_asks_stop_in_every_block_and_the_blocks_give_the_whole_step(extra):
    """A fit step had no stop question in it (550 s: 2.15 s past a stop, docs/decomposition.md): now
    each step runs in blocks of frames, stop asked before each block but the first, and the
    blocks give the whole step's code and atoms to float rounding (stereo: one set of atoms)."""
    from audioae.enhance import Stopped
    from audioae.models.sparse_dict import BLOCK_FRAMES

    model = tiny_model(**extra)
    x = np.stack([tone(20.0, SR) + noise_bursts(20.0, SR), noise_bursts(20.0, SR, seed=1)])  # [2, T]
    with torch.inference_mode():
        feats = model.features(model.stft(torch.from_numpy(x)))  # [2, F, N]
        blocks = -(-feats.shape[-1] // BLOCK_FRAMES)
        assert blocks == 3
        h0 = model.encode(feats)
        asked = []
        h, atoms = model.fit_signal(feats, h0, 2, stop=lambda: asked.append(1))
        assert len(asked) == 2 * blocks  # before each step, and before its blocks 2 and 3
        n = model._magnitudes_of(feats)
        wh, ww = _whole_fit_step(model, n, *_whole_fit_step(model, n, h0, model.dictionary()))
    torch.testing.assert_close(h, wh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(atoms, ww, rtol=1e-4, atol=1e-6)

    said = []

    def stop_in_fit(nth: int) -> bool:  # says stop at the nth question asked during the fit
        said.append(where_asked())
        return sum("during the fit" in w for w in said) >= nth

    for nth in (2, blocks, blocks + 2):  # inside step 1, at its last block, inside step 2
        said.clear()
        with pytest.raises(Stopped, match="decomposition stopped during the fit"):
            decompose(model, x, SR, fit_steps=2, stop=lambda nth=nth: stop_in_fit(nth))
        assert said[-1].endswith("during the fit") and sum("during the fit" in w for w in said) == nth


def test_the_masks_ask_stop_in_every_block_and_the_blocks_give_the_whole():
    """The masks' denominator and weights had no stop question (550 s: 0.79 s past a stop,
    docs/decomposition.md): now in blocks of frames, stop asked before each but the first."""
    from audioae.decompose import MASK_FLOOR, _mask_weights
    from audioae.enhance import Stopped
    from audioae.models.sparse_dict import BLOCK_FRAMES

    model = tiny_model()
    x = (tone(20.0, SR) + noise_bursts(20.0, SR))[None]
    frames = model.stft.num_frames(x.shape[-1])
    with pytest.raises(Stopped, match=f"decomposition stopped at frame {2 * BLOCK_FRAMES} of {frames} of its masks"):
        decompose(model, x, SR, fit_steps=1, stop=lambda: "of its masks" in where_asked()
                  and str(2 * BLOCK_FRAMES) in where_asked())
    with torch.inference_mode():
        spec, feats = _spectrum_and_features(model, torch.from_numpy(x), None)
        mag = spec.abs()
        level = model.level(mag)
        h, atoms = model.fit_signal(feats, model.encode(feats), 1)
        denom, share_weight, weight = _mask_weights(model, h, atoms, mag, level, mag.pow(2), None)
        whole = torch.maximum(model.magnitudes(h, atoms), MASK_FLOOR * mag / level).clamp_min(1e-12)
    torch.testing.assert_close(denom, whole, rtol=1e-6, atol=0)
    torch.testing.assert_close(share_weight, mag.pow(2) / whole, rtol=1e-6, atol=0)
    torch.testing.assert_close(weight, mag.pow(2) / whole / whole, rtol=1e-6, atol=0)


def test_the_residual_energies_and_ranking_ask_stop_in_every_block_of_samples():
    """After the last component, the residual, the energies and the ranking (a copy of every
    waveform) had no stop question (550 s at 44.1 kHz: 5-7 s past a stop, docs/decomposition.md): now
    in blocks of samples, a stop question before each; the sums are the whole's to rounding."""
    from audioae.enhance import Stopped

    model = tiny_model()
    x = _voiced(40.0, SR)[None]  # [1, T]: its units' shares do not give the final order
    said = []
    dec = decompose(model, x, SR, group="none", fit_steps=0, stop=lambda: said.append(where_asked()) or False)
    step = _sample_blocks(dec.components)
    blocks = -(-x.shape[-1] // step)
    assert blocks >= 2
    assert sum("summing the components" in w for w in said) == blocks
    assert sum("ranking the components" in w for w in said) == blocks  # this input's ranking moves some
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(dec.residual, (x64 - dec.components.sum(0, dtype=np.float64)).astype(np.float32))
    shares = (dec.components.astype(np.float64) * x64).sum(axis=(1, 2)) / (x64**2).sum()
    np.testing.assert_allclose(dec.energy_share, shares, rtol=1e-5, atol=1e-9)
    assert (np.diff(dec.energy_share) <= 0).all()
    for where in ("summing the components", "ranking the components"):
        with pytest.raises(Stopped, match=f"decomposition stopped {where}, at sample {step} of {x.shape[-1]}"):
            decompose(model, x, SR, group="none", fit_steps=0,
                      stop=lambda where=where: f"{where}, at sample {step} " in where_asked())


@pytest.mark.parametrize("extra", [{"atom_frames": 5}, {"refine_steps": 4}])
def test_blocks_give_what_the_whole_gives_for_stereo_and_wider_receptive_fields(extra):
    """The halos cover what a frame reads: wider atoms and more refinements widen it."""
    from audioae.decompose import _spectrum_and_features
    from audioae.models.sparse_dict import BLOCK_FRAMES

    model = tiny_model(**extra)
    x = np.stack([tone(17.0, SR), noise_bursts(17.0, SR)])  # [2, T]: stereo, two blocks
    z = torch.from_numpy(x)
    assert model.stft.num_frames(z.shape[-1]) > BLOCK_FRAMES
    with torch.inference_mode():
        spec, feats = _spectrum_and_features(model, z, None)
        whole = model.stft(z)
        torch.testing.assert_close(spec, whole, rtol=0, atol=0)
        torch.testing.assert_close(feats, model.features(whole), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model.encode(feats), model._encode_block(feats, None), rtol=1e-5, atol=1e-6)
        h, atoms = model.encode(feats), model.dictionary()
        weight = torch.rand_like(feats)  # [2, F, N]
        asked = []
        blocked = model.unit_energies(h, weight, atoms, stop=lambda: asked.append(1))
        torch.testing.assert_close(blocked, model._unit_energies(h, weight, atoms), rtol=1e-5, atol=1e-6)
        whole = (h * torch.nn.functional.conv1d(weight, atoms, padding=model._pad)).sum(dim=(0, 2))
        torch.testing.assert_close(model.unit_projections(h, weight, atoms, stop=lambda: asked.append(1)), whole,
                                   rtol=1e-5, atol=1e-5)
        blocks = -(-h.shape[-1] // BLOCK_FRAMES)
        assert blocks > 1 and len(asked) == 2 * (blocks - 1)  # a stop question before each block but the first


def _kl(n: torch.Tensor, v: torch.Tensor) -> float:
    v = v + 1e-6
    return float((n * torch.log((n + 1e-12) / v) - n + v).sum())


def test_fitting_a_signal_lowers_the_divergence_and_keeps_the_constraints(rng):
    """The per-signal fit: lower KL divergence than the encoder alone, non-negative unit-norm
    atoms, the encoder's support kept, unused atoms untouched."""
    model = tiny_model()
    x = torch.from_numpy((0.05 * rng.standard_normal(16000)).astype(np.float32) + tone(1.0, SR, 523.0))[None]
    with torch.no_grad():
        feats = model.features(model.stft(x))  # [1, F, N]
        n = model._magnitudes_of(feats)
        h0 = model.encode(feats)
        h, atoms = model.fit_signal(feats, h0, 10)
        w0 = model.dictionary()
        assert _kl(n, model.magnitudes(h, atoms)) < 0.9 * _kl(n, model.magnitudes(h0))
    assert (atoms >= 0).all() and (h >= 0).all()
    norms = atoms.flatten(1).norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-5)
    assert not h[h0 == 0].any()
    unused = h0.sum(dim=(0, 2)) == 0
    assert unused.any() and torch.allclose(atoms[unused], w0[unused], atol=1e-7)
    assert not torch.equal(atoms[~unused], w0[~unused])


def test_scaling_the_input_scales_the_components(rng):
    """The model divides by the local level, so the decomposition does not depend on loudness."""
    model = tiny_model()
    x = (0.05 * rng.standard_normal(8000)).astype(np.float32) + tone(0.5, SR)
    a = decompose(model, x, SR)
    b = decompose(model, 4 * x, SR)
    assert a.labels == b.labels
    np.testing.assert_allclose(4 * a.components, b.components, rtol=1e-3, atol=1e-5)


def test_a_long_input_gets_a_memory_estimate_before_the_work(monkeypatch, caplog):
    """The estimate grows with samples x channels (was: with the duration alone, so 10 minutes of
    44.1 kHz stereo, 5.1 GB, went unwarned and 10.5 of 16 kHz mono got "roughly 3 GB" for 2.35)."""
    from audioae.decompose import memory_estimate

    minute = 60 * 16000
    mono = memory_estimate(1, 10 * minute, 16000, 16000, 8)
    assert memory_estimate(2, 10 * minute, 16000, 16000, 8) == pytest.approx(2 * mono)
    assert memory_estimate(1, 20 * minute, 16000, 16000, 8) == pytest.approx(2 * mono)
    # at 44.1 kHz the model still works at 16 kHz: more than 16 kHz's, less than 44.1/16 times it
    wide = memory_estimate(1, 10 * 60 * 44100, 44100, 16000, 8)
    assert 1.3 * mono < wide < 2.0 * mono
    assert memory_estimate(1, 10 * minute, 16000, 16000, 320) > 5 * mono  # every unit kept: its waveforms
    # the researcher's two runs (peak RSS 5.1 and 2.35 GB, of them ~0.7 GB the loaded model)
    assert 4.0e9 < memory_estimate(2, 10 * 60 * 44100, 44100, 16000, 8) < 6.0e9
    assert 1.4e9 < memory_estimate(1, 630 * 16000, 16000, 16000, 8) < 2.4e9
    monkeypatch.setattr("audioae.decompose.LONG_BYTES", memory_estimate(1, SR, SR, SR, 3) * 1.5)
    decompose(tiny_model(), np.zeros((2, SR), np.float32), SR, top_k=3, group="cluster", groups=4)
    assert "decomposing 0.0 minutes of 2 channels at 16000 Hz at once needs roughly 0.0 GB" in caplog.text
    caplog.clear()
    decompose(tiny_model(), np.zeros((1, SR), np.float32), SR, top_k=3, group="cluster", groups=4)
    assert "needs roughly" not in caplog.text  # the same length, one channel


def test_silence_and_bad_arguments():
    model = tiny_model()
    dec = decompose(model, np.zeros((2, 4000), np.float32), SR)
    assert dec.components.shape == (0, 2, 4000)
    assert not dec.residual.any()
    assert dec.error_db == -np.inf and dec.error_text == "exact"  # not the ratio of two epsilons
    with pytest.raises(ValueError, match="group"):
        decompose(model, np.ones(100, np.float32), SR, group="wavelet")
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        decompose(model, np.ones(100, np.float32), SR, top_k=-1)
    with pytest.raises(ValueError, match="fit_steps"):
        decompose(model, np.ones(100, np.float32), SR, fit_steps=-1)
    with pytest.raises(ValueError, match="sparse_dict model .*decomposer-small.*a linear model"):
        decompose(build_model("linear", {"n_fft": 128, "hop_length": 32}), np.ones(100, np.float32), SR)


def test_the_api_takes_what_the_cli_and_check_options_take():
    """top_k=0 raised "top_k must be at least 1" where --top 0, the server and check_options mean
    every component; decompose's n_groups was check_options' groups."""
    model = tiny_model()
    x = (0.05 * np.random.default_rng(0).standard_normal(SR // 2)).astype(np.float32) + tone(0.5, SR)
    every = decompose(model, x, SR, group="none", top_k=None, fit_steps=0)
    assert len(decompose(model, x, SR, group="none", top_k=0, fit_steps=0).labels) == len(every.labels) > 1
    assert len(decompose(model, x, SR, group="none", top_k=1, fit_steps=0).labels) == 1
    options = check_options(model, group="cluster", groups=3, top_k=0, fit_steps=0)
    assert options.kwargs() == {"group": "cluster", "groups": 3, "top_k": None, "fit_steps": 0}
    new = decompose(model, x, SR, **options.kwargs())
    with pytest.warns(DeprecationWarning, match="now decompose\\(groups=") as said:
        old = decompose(model, x, SR, group="cluster", n_groups=3, fit_steps=0)
    assert said[0].filename == __file__  # points at the caller
    assert old.labels == new.labels and old.groups_asked == 3
    assert options.groups == 3  # the field is named as the keyword it fills (was n_groups)
    with pytest.raises(TypeError, match="both groups=4 and its deprecated old name n_groups=3"):
        decompose(model, x, SR, group="cluster", groups=4, n_groups=3, fit_steps=0)  # 3 was used, unsaid


def test_a_direct_call_groups_as_check_options_does_and_refuses_what_it_refuses():
    """decompose() asked a 4-unit model for 8 groups where check_options (the CLI's and the
    server's path) asked for 4 (up to 7 bands against 4), and took groups=50 and fit_steps=1000, which
    check_options refuses: one check now, the same defaults and messages."""
    model = tiny_model(code_dim=4, topk=2)  # fewer units than the 8 groups asked by default
    x = (0.05 * np.random.default_rng(0).standard_normal(SR // 2)).astype(np.float32) + tone(0.5, SR, 440.0)
    for group in ("band", "cluster"):
        direct = decompose(model, x, SR, group=group, fit_steps=0)
        checked = decompose(model, x, SR, **check_options(model, group=group, fit_steps=0).kwargs())
        assert direct.groups_asked == checked.groups_asked == 4
        assert direct.labels == checked.labels and direct.units == checked.units
        assert direct.band_bins == checked.band_bins
        np.testing.assert_array_equal(direct.components, checked.components)
    assert len(decompose(model, x, SR, group="band", fit_steps=0).labels) <= 4  # was 7
    for kw in ({"group": "band", "groups": 50}, {"group": "cluster", "groups": 5}, {"group": "band", "groups": 0},
               {"fit_steps": MAX_FIT_STEPS + 1}, {"fit_steps": -1}, {"top_k": -1}, {"group": "wavelet"},
               {"groups": 3}, {"group": "none", "groups": 0}, {"group": "none", "groups": 10**6}):
        with pytest.raises(ValueError) as refused:
            check_options(model, **kw)
        with pytest.raises(ValueError) as direct_refused:
            decompose(model, x, SR, **kw)
        assert str(direct_refused.value) == str(refused.value), kw
    # groups under group "none" (decompose(m, x, sr, groups=4), group forgotten) was taken and
    # ignored: per-unit components, unsaid. What check_options passes on is taken as it is.
    with pytest.raises(ValueError, match="groups counts bands or clusters: set group to band or cluster"):
        decompose(model, x, SR, groups=4, fit_steps=0)
    assert check_options(model, fit_steps=0).kwargs()["groups"] is None
    none = decompose(model, x, SR, **check_options(model, fit_steps=0).kwargs())
    assert none.groups_asked is None and none.labels == decompose(model, x, SR, fit_steps=0).labels


def test_audio_shorter_than_one_window_is_refused_not_decomposed_into_padding():
    from audioae.audio import AudioError

    model = tiny_model()
    window = model.config.n_fft / model.config.sample_rate
    with pytest.raises(AudioError, match="shorter than the model's .* analysis window: too short to decompose"):
        decompose(model, tone(0.5 * window, SR), SR)
    assert decompose(model, tone(window, SR), SR).residual.shape[-1] == int(window * SR)
    # the comparison `audioae inspect` makes too, in whole samples: 256 at 16 kHz is 705.6 at 44.1 kHz
    for sr, least in ((44100, 706), (22050, 353), (8000, 128)):
        assert window_samples(model.config.n_fft, model.config.sample_rate, sr) == least
        with pytest.raises(AudioError, match="too short to decompose"):
            decompose(model, np.ones(least - 1, np.float32) * 0.1, sr)
        assert decompose(model, np.ones(least, np.float32) * 0.1, sr).residual.shape[-1] == least


def test_summary_says_when_each_component_is_active():
    model = tiny_model()
    x = np.zeros(SR, np.float32)
    x[SR // 2 :] = tone(0.5, SR)
    dec = decompose(model, x, SR, top_k=2)
    summary = summarize(dec)
    assert json.loads(json.dumps(summary)) == summary  # JSON-ready
    first = summary["components"][0]
    assert first["active_seconds"], "the strongest component is active somewhere"
    start = first["active_seconds"][0][0]
    assert 0.4 < start < 0.55, f"the tone starts at 0.5 s, the summary says {start}"
    assert first["active_seconds"][-1][1] == 1.0  # the tone lasts to the end, and no span past it (was 1.008)
    assert abs(first["dominant_hz"] - 700) < 100


def test_active_spans_count_every_span_and_keep_the_first_and_last():
    """3 minutes of bursts read "0.00-48.82 s": the list was cut at its first 50 spans."""
    rate = 100.0  # frames per second
    env = np.zeros(18000)
    for start in range(50, 18000, 100):  # 180 bursts of 0.3 s ...
        env[start : start + 30] = 1.0
    env[10000:11000] = 0.0  # ... but for a 10 s pause
    spans, count = active_spans(env, rate)
    assert count == 170 and len(spans) == folder.MAX_SPANS
    # the 49 longest gaps kept: the pause, then the earliest 48 of the equal ones
    assert spans[:48] == [[i + 0.5, i + 0.8] for i in range(48)]
    assert spans[48:] == [[48.5, 99.8], [110.5, 179.8]]
    few, count = active_spans(env[:2000], rate)
    assert count == len(few) == 20 and few[1] == [1.5, 1.8]  # under the cap: every span as it is
    # Equal gaps only (3 minutes of a burst a second): was one span, 0.5-179.8 s, as every gap was
    # bridged at once
    regular = np.zeros(18000)
    for start in range(50, 18000, 100):
        regular[start : start + 30] = 1.0
    spans, count = active_spans(regular, rate)
    assert count == 180 and len(spans) == folder.MAX_SPANS
    assert spans[:49] == [[i + 0.5, i + 0.8] for i in range(49)] and spans[49] == [49.5, 179.8]


def test_active_spans_leave_out_empty_spans_and_the_padding_at_the_ends():
    """A component heard from 0.5 to 2.8 s read "0.00-3.00 s": one frame at 0 s (its window half
    zero padding) and a [3.0, 3.0] span clipped to the signal's end."""
    rate = 125.0
    env = np.zeros(376)  # frames of a 3 s signal: the last is centred at 3.0 s
    env[0], env[62:350], env[375] = 1.0, 1.0, 1.0
    assert active_spans(env, rate, duration=3.0) == ([[0.0, 0.008], [0.496, 2.8]], 2)  # no [3.0, 3.0]
    assert active_spans(env, rate, duration=3.0, edge_frames=2) == ([[0.496, 2.8]], 1)
    ends_only = np.zeros(376)
    ends_only[:2], ends_only[374:] = 1.0, 1.0
    assert active_spans(ends_only, rate, duration=3.0, edge_frames=2)[0] == [[0.0, 0.016], [2.992, 3.0]]
    env[1:3], env[372:375] = 1.0, 1.0  # what a step spreads over: 3 frames at the start, 4 at the end
    assert active_spans(env, rate, duration=3.0, edge_frames=5) == ([[0.496, 2.8]], 1)
    for none in (0, -1):  # 0 kept every gap but one
        with pytest.raises(ValueError, match="max_spans must be at least 1"):
            active_spans(env, rate, max_spans=none)


def test_spans_from_the_files_ends_are_left_out_shipped():
    """A tone cut off at full level with noise bursts from 0.5 to 0.8 s in every second: the
    bursts' cluster read [[0.0, 0.024], [0.488, 0.816], ..., [2.984, 3.0]], "0.00-3.00 s", as the
    edge rule counted only the 2 frames whose window reads the zero padding, not the 3 or 4 that
    the inverse STFT and the envelope's STFT spread the step over."""
    from audioae.decompose import edge_frames

    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    # 48 ms at 125 frames per second: the input's windows, the masks' reach through the code (1
    # frame here: atom_frames 3; was left out, 5), the inverse STFT and the envelope's windows
    assert edge_frames(model.config) == 6
    assert edge_frames(dataclasses.replace(model.config, atom_frames=7)) == 8
    t = np.arange(3 * SR) / SR
    noise = np.random.default_rng(0).standard_normal(t.size) * 0.3 * ((t % 1.0 >= 0.5) & (t % 1.0 < 0.8))
    x = (tone(3.0, SR, 440.0) + noise).astype(np.float32)
    entries = summarize(decompose(model, x, SR, group="cluster"))["components"]
    bursts = [e for e in entries if e["active_spans"] == 3]
    assert bursts, [(e["label"], e["active_seconds"]) for e in entries]
    for e in bursts:
        assert 0.45 < e["active_seconds"][0][0] < 0.5 and 2.8 < e["active_seconds"][-1][1] < 2.85, e
    # clicks every 0.25 s on two tones: the last click is at 2.75 s, no span at [2.976, 3.0]
    clicks = np.zeros_like(t)
    clicks[:: SR // 4] = 0.8
    x = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1500 * t) + clicks).astype(np.float32)
    entries = summarize(decompose(model, x, SR, group="cluster"))["components"]
    clicked = [e for e in entries if e["active_spans"] > 3]
    assert clicked, [(e["label"], e["active_seconds"]) for e in entries]
    for e in clicked:
        # 11: the click at 0 s lies within the edge frames, where it cannot be told from the step
        # of a signal cut off at full level
        assert e["active_spans"] == 11 and 2.75 < e["active_seconds"][-1][1] < 2.8, e


def test_summary_and_table_give_the_span_count_and_the_true_last_time(tmp_path):
    model = tiny_model()
    sr, seconds = 8000, 16.0
    x = noise_bursts(seconds, sr, seed=3)  # 32 bursts of 120 ms, and 32 more between them
    x = x + np.roll(noise_bursts(seconds, sr, seed=5), round(0.25 * sr))
    dec = decompose(model, x, sr, group="cluster", groups=1, fit_steps=0)
    entry = summarize(dec)["components"][0]
    assert entry["active_spans"] == 64 and len(entry["active_seconds"]) <= folder.MAX_SPANS
    first, last = entry["active_seconds"][0][0], entry["active_seconds"][-1][1]
    assert first == 0.0 and 15.85 < last < 15.9  # the last burst ends at 15.87 s
    summary = {"error_db": -150.0, "residual_energy_share": 0.1, "components": [entry]}
    header, row = folder.describe(summary, tmp_path)[1:]
    assert header.split() == ["#", "energy", "dominant", "active", "spans", "first-last", "label"]
    assert row.split()[5:8] == ["64", f"0.00-{last:.2f}", "s"], row
    # from a server, whose answer carries at most 50 spans and no count: "50+"
    remote = folder.component_entry(0, "x", [1], 0.5, 100.0, 0.5, [[i, i + 0.5] for i in range(50)])
    assert remote["active_spans"] is None
    assert folder.describe({**summary, "components": [remote]}, tmp_path)[2].split()[5] == "50+"


# ---- separation of known parts --------------------------------------------------------------------
def _separation(dec, parts: dict[str, np.ndarray]) -> dict[str, tuple[int, float]]:
    """For each part: the component closest to it (cosine) and that cosine."""
    comps = dec.components[:, 0].astype(np.float64)
    out = {}
    for name, p in parts.items():
        cos = [cosine(c, p.astype(np.float64)) for c in comps]
        out[name] = (int(np.argmax(cos)), float(np.max(cos)))
    return out


@pytest.fixture(scope="module")
def trained_tiny():
    """A tiny model trained here (fit_arrays, a few hundred steps) on tones and noise bursts."""
    torch.manual_seed(0)
    model = build_model("sparse_dict", {**TINY, "code_dim": 32, "topk": 4}).train()
    rng = np.random.default_rng(1)
    wavs = []
    for i in range(48):
        t = np.arange(SR // 2) / SR
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) if i % 3 != 1 else np.zeros(SR // 2)
        if i % 3 != 0:
            x = x + noise_bursts(0.5, SR, seed=i)
        wavs.append(x.astype(np.float32))
    with torch.no_grad():
        feats = model.features(model.stft(torch.from_numpy(np.stack(wavs))))  # [E, F, N]
    losses = fit_arrays(model, feats, steps=250, batch_size=8, lr=3e-3, seed=0)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    return model.eval()


def test_tone_and_noise_bursts_go_to_different_components_tiny_trained(trained_tiny):
    x_tone, x_noise = tone(1.5, SR, 1000.0), noise_bursts(1.5, SR, seed=99)
    dec = decompose(trained_tiny, x_tone + x_noise, SR, group="cluster", groups=2)
    sep = _separation(dec, {"tone": x_tone, "noise": x_noise})
    assert sep["tone"][0] != sep["noise"][0], sep
    assert sep["tone"][1] > 0.8 and sep["noise"][1] > 0.6, sep


def test_shipped_model_separates_a_tone_from_noise_bursts():
    """Uses the shipped decomposer; fails (never skips) when the file is missing."""
    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    x_tone, x_noise = tone(2.0, SR, 1000.0), noise_bursts(2.0, SR, seed=7)
    mix = x_tone + x_noise
    units = decompose(model, mix, SR, group="none")
    sep = _separation(units, {"tone": x_tone, "noise": x_noise})
    assert sep["tone"][0] != sep["noise"][0], sep
    best_tone = units.components[sep["tone"][0], 0]
    assert cosine(best_tone, x_tone) > 0.8
    assert abs(cosine(best_tone, x_noise)) < 0.2
    clusters = decompose(model, mix, SR, group="cluster", groups=2)
    sep = _separation(clusters, {"tone": x_tone, "noise": x_noise})
    assert sep["tone"][0] != sep["noise"][0], sep
    assert sep["tone"][1] > 0.9 and sep["noise"][1] > 0.8, sep
    # named by what they hold: the tone by its frequency, the broadband bursts by their band
    # (was "~<peak> Hz" for both: a noise has no one frequency)
    tone_label, noise_label = clusters.labels[sep["tone"][0]], clusters.labels[sep["noise"][0]]
    assert re.fullmatch(r"cluster \d \(~(96[0-9]|10[0-4][0-9]) Hz, \d+ units?\)", tone_label), tone_label
    lo, hi = map(int, re.fullmatch(r"cluster \d \((\d+)-(\d+) Hz, \d+ units?\)", noise_label).groups())
    assert hi > 4 * max(lo, 1), noise_label


def test_clusters_that_are_pieces_of_one_sound_are_merged_shipped():
    """Was: clustering always made --groups clusters: a steady 440 Hz tone came out as 8, four of
    them at ~406-438 Hz holding 67%, 18%, 7% and 3% of the energy, the rest slivers of its ends."""
    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    dec = decompose(model, tone(2.0, SR, 440.0), SR, group="cluster", groups=8)
    assert len(dec.labels) < 8 and dec.energy_share[0] > 0.9, (dec.labels, dec.energy_share)
    assert re.fullmatch(r"cluster 1 \(~4[0-4]\d Hz, \d+ units\)", dec.labels[0]) and dec.groups_asked == 8
    assert (dec.energy_share[1:] < 0.01).all()  # the rest: slivers of its ends, each a sound of its own
    from audioae.decompose import SAME_SOUND

    c = dec.components.reshape(len(dec.labels), -1).astype(np.float64)
    norm = np.linalg.norm(c, axis=1)
    assert ((c @ c.T / np.outer(norm, norm))[~np.eye(len(c), dtype=bool)] <= SAME_SOUND).all()
    assert error_db(dec, tone(2.0, SR, 440.0)) < -90
    two = decompose(model, tone(2.0, SR, 440.0) + tone(2.0, SR, 1500.0), SR, group="cluster", groups=8)
    strong = sorted(two.dominant_hz[two.energy_share > 0.01])
    assert len(strong) == 2 and abs(strong[0] - 440) < 50 and abs(strong[1] - 1500) < 50, two.labels
    # distinct sounds stay apart: the clusters of a voice in pink noise are as many as asked
    wav, sr, _ = read_audio(HERE / "examples" / "voice-pink-0dB.wav")
    assert len(decompose(model, wav, sr, group="cluster", groups=8).labels) == 8


def test_the_groups_help_promises_no_one_cluster_per_tone_shipped(capsys):
    """--groups said "a lone tone is one cluster": a 440 Hz tone with a click every 0.25 s gives
    two ~440 Hz clusters (88% and 6% of the energy), their waveforms 0.898 alike, under the 0.9
    that merges pieces of one sound. The help promises what holds, the threshold stays."""
    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    x = tone(3.0, SR, 440.0)
    x[(np.arange(1, 12) * 0.25 * SR).astype(int)] += 0.9
    dec = decompose(model, x, SR, group="cluster", groups=8)
    tones = [label for label in dec.labels if re.fullmatch(r"cluster \d \(~4[34]\d Hz, \d+ units?\)", label)]
    assert len(tones) >= 2, dec.labels  # one tone, two clusters
    with pytest.raises(SystemExit):
        main(["decompose", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "a lone tone is one cluster" not in said
    assert "nearly proportional" in said and "one sound may still come out as several clusters" in said


def _decomposed_chord(level: float):
    """3 s of a C-E-G chord (each note at ``level``) decomposed by the shipped model into
    clusters: ``(decomposition, the notes' Hz, the FFT bins' Hz of a component's waveform)``."""
    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    notes = np.array([261.63, 329.63, 392.0])
    t = np.arange(3 * SR) / SR
    chord = sum(level * np.sin(2 * np.pi * f * t) for f in notes).astype(np.float32)
    return decompose(model, chord, SR, group="cluster"), notes, np.fft.rfftfreq(chord.size, 1 / SR)


def test_a_components_dominant_frequency_is_what_its_waveform_holds_shipped():
    """In a C-E-G chord, "cluster 6 (~250 Hz)" held 62% of its energy at 392 Hz and "cluster 4
    (~281 Hz)" lay between two notes: both were read off the masked STFT power, not the waveform
    the component file holds. Each component's dominant frequency now names a note of the chord
    (within 10 Hz: its peak is interpolated between bins) holding a large share of its file's energy."""
    dec, notes, freqs = _decomposed_chord(0.15)
    for k, hz in enumerate(dec.dominant_hz):
        power = np.abs(np.fft.rfft(dec.components[k, 0].astype(np.float64))) ** 2  # [F] of the waveform
        near = int(np.argmin(np.abs(notes - hz)))
        share = power[np.abs(freqs - notes[near]) < 8].sum() / power.sum()
        assert abs(hz - notes[near]) < 10 and share > 0.4, (dec.labels[k], hz, share)


def test_pieces_of_one_sound_are_waveforms_nearly_proportional():
    from audioae.decompose import _same_sound

    t = np.arange(8000) / SR
    a, b = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)
    noise = np.random.default_rng(0).standard_normal(len(t))
    waves = np.stack([0.5 * a, b, 2 * a, 0.1 * b + 0.001 * noise, noise, 0.3 * a + 0.3 * noise])  # [K, T]
    assert _same_sound(torch.from_numpy(waves[:, None].astype(np.float32))) == [[0, 2], [1, 3], [4], [5]]
    # 5 is 0.82 alike with the noise, 0.58 with the tone
    assert _same_sound(torch.from_numpy(waves[:, None].astype(np.float32)), threshold=0.7) == [[0, 2], [1, 3], [4, 5]]


def test_the_summary_and_the_table_say_when_fewer_groups_than_asked_came(tmp_path, capsys):
    src = tmp_path / "tone.wav"
    write_audio(src, tone(2.0, SR, 440.0)[None], SR, subtype="FLOAT")
    assert main(["decompose", str(src), "-o", str(tmp_path / "d")]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    made = len(summary["components"])
    assert summary["group"] == "cluster" and summary["groups"] == 8 and made < 8
    assert (f"({made} of the 8 clusters asked (--groups): the others were pieces of the same sounds, merged"
            in capsys.readouterr().out)
    assert main(["decompose", str(src), "-o", str(tmp_path / "d"), "--top", "2"]) == 0  # --top kept fewer
    assert "asked (--groups)" not in capsys.readouterr().out
    assert main(["decompose", str(src), "-o", str(tmp_path / "b"), "--group", "band", "--groups", "20"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["groups"] == 20 and "of the 20 bands asked (--groups)" in capsys.readouterr().out
    assert main(["decompose", str(src), "-o", str(tmp_path / "n"), "--group", "none"]) == 0
    assert json.loads((tmp_path / "n" / "summary.json").read_text())["groups"] is None
    assert "asked (--groups)" not in capsys.readouterr().out


def test_cluster_labels_give_a_band_where_the_energy_spreads_over_more_than_an_octave():
    spectra = np.zeros((3, 257))
    spectra[0, 32] = 1.0  # one bin
    spectra[1, 10:200] = 1.0  # flat over 190 bins: its middle 80% lies within bins 28..180
    spectra[2, 0] = 1.0  # all at 0 Hz
    bands = _energy_band(spectra)
    assert bands.tolist() == [[32, 32], [28, 180], [0, 0]]
    assert cluster_label(1, 500.0, (500.0, 500.0), 3, [500.0]) == "cluster 1 (~500 Hz, 3 units)"
    assert cluster_label(2, 262.0, (250.0, 340.0), 2, [262.0, 329.6]) == "cluster 2 (~262+330 Hz, 2 units)"
    # no tone: the band, and the dominant frequency beside it when it lies outside
    assert cluster_label(2, 1000.0, (900.0, 1700.0), 1) == "cluster 2 (900-1700 Hz, 1 unit)"
    assert cluster_label(3, 1000.0, (781.25, 7218.75), 60) == "cluster 3 (780-7200 Hz, 60 units)"
    assert cluster_label(3, 168.0, (190.0, 1600.0), 76) == "cluster 3 (190-1600 Hz, peak 168 Hz, 76 units)"
    assert cluster_label(4, 0.0, (0.0, 31.25), 27) == "cluster 4 (0-31 Hz, 27 units)"


def test_a_bin_two_tone_lobes_share_is_counted_once():
    """Peaks two bins apart share the bin between them: counted in both lobes, two peaks holding
    47% of the energy passed the half a label needs."""
    from audioae.decompose import _tone_peaks

    p = np.full(40, 0.53 / 35)  # the rest of the energy, flat
    p[9:14] = [0.005, 0.17, 0.12, 0.17, 0.005]  # peaks at bins 10 and 12; bin 11 in both lobes
    assert 0.29 < p[9:12].sum() / p.sum() and 0.29 < p[11:14].sum() / p.sum()  # each a tone on its own
    assert p[9:14].sum() / p.sum() < 0.5
    assert _tone_peaks(p) == []
    p[[10, 12]] += 0.05  # now the union holds more than half
    assert p[9:14].sum() / p.sum() > 0.5 and len(_tone_peaks(p)) == 2


def test_a_peak_in_the_bands_edge_bins_is_in_the_band():
    """The band's edges are its first and last bins' centres: a peak interpolated a little above
    the top bin's centre read "1000-2000 Hz, peak 1010 Hz"."""
    assert cluster_label(2, 1010.0, (1000.0, 2000.0), 5, bin_hz=31.25) == "cluster 2 (1000-2000 Hz, 5 units)"
    assert cluster_label(2, 2014.0, (1000.0, 2000.0), 5, bin_hz=31.25) == "cluster 2 (1000-2000 Hz, 5 units)"
    assert cluster_label(2, 960.0, (1000.0, 2000.0), 5, bin_hz=31.25) == "cluster 2 (1000-2000 Hz, peak 960 Hz, 5 units)"


def test_labels_name_the_tones_a_component_holds_and_no_tone_in_a_sweep():
    """Through the shipped model's STFT: C and E alike read "~262 Hz" (named by the stronger);
    a chirp's stretch within an octave read "~901 Hz", its flat top's highest bin."""
    from audioae.decompose import _tone_peaks, _waveform_spectra

    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    bin_hz = SR / model.config.n_fft
    t = np.arange(2 * SR) / SR
    waves = np.stack([
        np.sin(2 * np.pi * 261.63 * t) + np.sin(2 * np.pi * 329.63 * t),  # two notes alike
        np.sin(2 * np.pi * 392.0 * t) + 0.8 * np.sin(2 * np.pi * 261.63 * t) + 0.3 * np.sin(2 * np.pi * 329.63 * t),
        np.sin(2 * np.pi * (650 * t + 175 * t**2)),  # a sweep, 650-1350 Hz
        np.random.default_rng(0).standard_normal(t.size),  # white noise
    ])[:, None].astype(np.float32)
    spectra, _ = _waveform_spectra(model, torch.from_numpy(waves), lambda a: None)
    tones = [[round(b * bin_hz) for b in _tone_peaks(row)] for row in spectra.numpy()]
    assert len(tones[0]) == 2 and abs(tones[0][0] - 262) <= 3 and abs(tones[0][1] - 330) <= 3, tones
    assert len(tones[1]) == 2 and abs(tones[1][0] - 392) <= 3 and abs(tones[1][1] - 262) <= 3, tones  # E: 5%
    assert tones[2] == [] and tones[3] == [], tones


def test_pink_and_brown_noise_clusters_are_named_by_a_band_not_a_tone_shipped():
    """Noise through the shipped model's one-bin atoms has sharp spectral peaks: with the tone test
    alone, 3 s of pink noise read "cluster 5 (~74 Hz, 10 units)"; a tone's energy lies within an
    octave, these clusters' did not (31-750 Hz)."""
    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    n = 3 * SR
    for seed in range(3):
        for alpha in (1.0, 2.0):  # pink, brown
            spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
            f = np.arange(spectrum.size, dtype=np.float64)
            f[0] = 1.0
            x = np.fft.irfft(spectrum / f ** (alpha / 2), n)
            dec = decompose(model, (0.1 * x / x.std()).astype(np.float32), SR, group="cluster", fit_steps=0)
            assert not [label for label in dec.labels if "~" in label], (seed, alpha, dec.labels)


def test_cluster_labels_agree_with_what_the_components_hold_shipped():
    """A chord's clusters are named by every note holding at least a third of their energy, and a
    chirp's band holds its dominant frequency or says where it lies ("190-1600 Hz" was dominant
    at 168 Hz, "1100-7200 Hz" at 441 Hz)."""
    dec, notes, freqs = _decomposed_chord(0.1)
    seen: set[int] = set()  # the notes some cluster was checked against: none would check no label
    for k, label in enumerate(dec.labels):
        power = np.abs(np.fft.rfft(dec.components[k, 0].astype(np.float64))) ** 2
        held = {round(f) for f in notes if power[np.abs(freqs - f) < 8].sum() > power.sum() / 3}
        seen |= held
        named = re.fullmatch(r"cluster \d \(~([\d+]+) Hz, \d+ units?\)", label)
        assert named, label
        named = [int(hz) for hz in named.group(1).split("+")]
        assert all(any(abs(n - h) <= 4 for n in named) for h in held), (label, held)
        assert abs(named[0] - dec.dominant_hz[k]) < 1, (label, dec.dominant_hz[k])
        # every tone named is a note, to the Hz: E read "~333" beside C's and G's lobes
        assert all(np.abs(notes - n).min() <= 1 for n in named), label
    assert seen, dec.labels
    t = np.arange(3 * SR) / SR
    chirp = (0.3 * np.sin(2 * np.pi * (100 * t + 650 * t**2))).astype(np.float32)
    dec = decompose(load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER), chirp, SR, group="cluster")
    assert dec.labels
    for label, hz in zip(dec.labels, dec.dominant_hz, strict=True):
        band = re.fullmatch(r"cluster \d \((\d+)-(\d+) Hz(, peak (\d+) Hz)?, \d+ units?\)", label)
        assert band, label
        lo, hi = float(band.group(1)), float(band.group(2))
        if band.group(3):
            assert int(band.group(4)) == round(hz) and not 0.95 * lo <= hz <= 1.05 * hi, (label, hz)
        else:
            assert 0.95 * lo <= hz <= 1.05 * hi, (label, hz)  # the edges are rounded to 2 figures


def test_one_cluster_of_a_chord_is_named_by_its_three_notes_shipped():
    """C, E and G in one cluster (--groups 1 --fit 0), at 32, 37 and 31% of its energy, read
    "cluster 1 (250-410 Hz, 30 units)", dominant 338 Hz, no note of the chord: tones 68 and 62
    Hz apart fill each other's neighbours in the model's 31.25 Hz bins, so no peak was sharp."""
    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    notes = np.array([261.63, 329.63, 392.0])
    t = np.arange(3 * SR) / SR
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in notes).astype(np.float32)
    dec = decompose(model, chord, SR, group="cluster", groups=1, fit_steps=0)
    named = re.fullmatch(r"cluster 1 \(~(\d+)\+(\d+)\+(\d+) Hz, \d+ units\)", dec.labels[0])
    assert named, dec.labels
    named = [int(hz) for hz in named.groups()]
    assert sorted(np.abs(notes[:, None] - np.array(named)[None]).argmin(0)) == [0, 1, 2]  # each note once
    assert np.abs(notes[:, None] - np.array(named)[None]).min(0).max() <= 1, dec.labels
    assert abs(dec.dominant_hz[0] - notes[1]) < 1 and named[0] == 330  # E holds the most
    summary = summarize(dec)
    assert folder.hz_text(summary["components"][0]["dominant_hz"]) == str(named[0])


def test_resolving_spectra_in_blocks_are_the_whole_and_ask_stop_between_them(monkeypatch):
    """The longer windows that resolve close tones are taken in blocks of frames, a stop question
    before each but the first, and add up to the whole signal's spectrum."""
    import audioae.decompose as dmod

    model = tiny_model()
    y = torch.from_numpy(np.stack([tone(2.0, SR, 440.0) + noise_bursts(2.0, SR), tone(2.0, SR, 1000.0)])[:, None])
    whole = dmod._resolving_spectra(model, y, lambda a: pytest.fail("one block: no question"))  # [2, F']
    monkeypatch.setattr(dmod, "CHUNK_FLOATS", 2 * dmod.PEAK_WINDOW * model.config.n_fft * 10)  # 10 frames a block
    asked = []
    blocked = dmod._resolving_spectra(model, y, asked.append)
    torch.testing.assert_close(blocked, whole, rtol=1e-9, atol=0)
    n = dmod.PEAK_WINDOW * model.config.n_fft
    frames = 1 + (y.shape[-1] - n) // (n // 2)
    assert asked == [a * (n // 2) // model.config.hop_length for a in range(10, frames, 10)] and asked
    assert dmod._resolving_spectra(model, y[..., : n - 1], asked.append) is None  # shorter than one window
    # the rule is tried on the resolving spectrum first, on the model's bins after
    tones, dominant = dmod._tones_and_peak(np.ones(129), SR / model.config.n_fft, whole[1].numpy(), SR / n)
    assert len(tones) == 1 and abs(dominant - 1000) < 1 and tones[0] == dominant


def test_a_library_call_without_a_rate_is_told_of_its_argument_not_a_request_field():
    """decompose(m, wav, 0) said "<pcm>: the sample rate is unset (0); ... (in a request:
    Pcm.sample_rate)", the server's words; the server's stay (tests/test_server.py)."""
    from audioae.audio import AudioError

    with pytest.raises(AudioError) as caught:
        decompose(tiny_model(), tone(1.0, SR), 0)
    assert str(caught.value) == "wav: sr is 0; pass the audio's sample rate in Hz, 1000..384000"
    with pytest.raises(AudioError, match=re.escape("wav: sample rate 500 Hz is outside 1000..384000 Hz")):
        decompose(tiny_model(), tone(1.0, SR), 500)


def test_one_component_is_counted_in_the_singular():
    """--groups 1 printed "1 components + residual", and the figure's title said so too."""
    from audioae.decompose import Decomposition
    from audioae.plots import _input_title

    assert folder.describe(_summary_of(1), "d")[0].startswith("1 component + residual (50.0% of the energy)")
    assert folder.describe(_summary_of(2), "d")[0].startswith("2 components + residual")
    dec = Decomposition(components=np.zeros((1, 1, 10), np.float32), residual=np.zeros((1, 10), np.float32),
                        labels=["cluster 1 (~440 Hz, 3 units)"], units=[[0, 1, 2]], activations=np.zeros((3, 1)),
                        energy_share=np.ones(1), frame_rate=125.0, sample_rate=SR, residual_share=0.0, error_db=-150.0)
    assert ": 1 component (all drawn below) + residual" in _input_title(dec, SR, 1.0, 1, 1)


def test_a_label_and_the_table_round_the_dominant_frequency_alike():
    """62.5 Hz read "unit 254 (~63 Hz)" in the label (62.50x, half up) and 62 Hz in the table
    (summary.json's 62.5, half to even)."""
    from audioae.decompose import _labels

    dom = np.array([62.5, 28.53, 62.4999], np.float32)
    labels = _labels("none", [[254], [2], [7]], dom, np.zeros((3, 2)), [[], [], []], None, 31.25)
    assert labels == ["unit 254 (~63 Hz)", "unit 2 (~29 Hz)", "unit 7 (~63 Hz)"]
    entries = [folder.component_entry(k, labels[k], [0], 0.1, round(float(dom[k]), 1), 1.0, [[0.0, 1.0]])
               for k in range(3)]
    lines = folder.describe(folder.summary(sample_rate=SR, channels=1, samples=SR, group="none", fit_steps=0,
                                           frame_rate=125.0, error_db=-150.0, residual_share=0.1,
                                           components=entries), "d")
    for line, label in zip(lines[-3:], labels, strict=True):
        assert re.search(r"%\s+(\d+) Hz", line).group(1) == re.search(r"~(\d+) Hz", label).group(1), line
    assert cluster_label(1, 62.5, (62.5, 62.5), 2, [62.5, 100.0]) == "cluster 1 (~63+100 Hz, 2 units)"


def test_shipped_decomposer_is_small_checked_and_documented():
    path = HERE / f"{DEFAULT_DECOMPOSER}.safetensors"
    assert path.is_file(), "the default decomposition model is not shipped"
    assert path.stat().st_size < 5e6
    assert (HERE / f"{DEFAULT_DECOMPOSER}.safetensors.sha256").is_file()
    assert (HERE / f"{DEFAULT_DECOMPOSER}.md").is_file()
    model = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER)
    assert model.registry_name == "sparse_dict"
    assert model.config.code_dim > model.config.n_bins  # overcomplete


# ---- the CLI -------------------------------------------------------------------------------------------
def test_a_silent_input_is_drawn_dark_and_its_sum_is_exact(tmp_path, capsys):
    import matplotlib.image

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), ckpt)
    src = tmp_path / "silence.wav"
    write_audio(src, np.zeros((1, SR), np.float32), SR, subtype="PCM_16")
    assert main(["decompose", str(src), "-o", str(tmp_path / "o"), "--model", str(ckpt), "--plot"]) == 0
    out = capsys.readouterr().out
    # the residual's share was "0.0% of the energy", as if the components held it all
    assert "residual (silent input), sum-to-input error exact" in out and "a silent input has nothing" in out
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["residual_energy_share"] is None
    rgb = matplotlib.image.imread(tmp_path / "o" / "decomposition.png")[..., :3]
    top_of_magma = (rgb[..., 0] > 0.9) & (rgb[..., 1] > 0.9) & (rgb[..., 2] < 0.8)  # magma's brightest yellow
    # it filled the whole input panel: silence drawn as the loudest level (the colour bar's top is that yellow)
    assert top_of_magma.mean() < 0.01


def test_a_silent_inputs_figure_says_so_and_spans_the_input(monkeypatch):
    """A silent 2 s input: empty panels said nothing, and the activations' axis ran 0-1 s."""
    from audioae import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    model, x = tiny_model(), np.zeros(2 * SR, np.float32)
    dec = decompose(model, x, SR, group="cluster")
    assert not dec.labels and math.isnan(dec.residual_share) and summarize(dec)["residual_energy_share"] is None
    plots.plot_decomposition(dec, x, SR, model, "f.png")
    ax_in, ax_atoms, ax_acts = (ax for ax in figures[0].axes if ax.get_label() != "<colorbar>")
    assert "no components + residual (silent input)" in ax_in.get_title()
    assert ax_acts.get_xlim() == (0.0, 2.0)
    for ax in (ax_atoms, ax_acts):
        assert [t.get_text() for t in ax.texts] == ["silent input: no components"]


def test_cli_decompose_writes_every_file(tmp_path, capsys):
    sr = 22050
    x = np.stack([tone(1.0, sr) + noise_bursts(1.0, sr), 0.5 * tone(1.0, sr)])  # stereo, not the model's rate
    src = tmp_path / "in.wav"
    write_audio(src, x, sr, subtype="FLOAT")
    out = tmp_path / "parts"
    assert main(["decompose", str(src), "-o", str(out), "--top", "5", "--plot"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["components"]) == 5
    total = read_audio(out / summary["residual_file"])[0].astype(np.float64)
    for entry in summary["components"]:
        wav, file_sr, _ = read_audio(out / entry["file"])
        assert file_sr == sr and wav.shape == x.shape
        assert {"energy_share", "dominant_hz", "active_seconds", "units", "label"} <= set(entry)
        total += wav
    err = ((total - x) ** 2).sum() / (x.astype(np.float64) ** 2).sum()
    assert 10 * np.log10(err) < -90, "the written files do not add up to the input"
    png = (out / "decomposition.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "components + residual" in capsys.readouterr().out


def test_cli_decompose_with_groups_and_a_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), ckpt)
    src = tmp_path / "in.wav"
    write_audio(src, tone(0.5, 8000)[None], 8000, subtype="PCM_16")
    assert main(["decompose", str(src), "-o", str(tmp_path / "o"), "--model", str(ckpt), "--group", "band",
                 "--groups", "3", "--fit", "4"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["group"] == "band" and 1 <= len(summary["components"]) <= 3
    assert summary["fit_steps"] == 4
    assert all((tmp_path / "o" / c["file"]).is_file() for c in summary["components"])
    assert main(["decompose", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "x")]) == 2
    assert main(["decompose", str(tmp_path), "-o", str(tmp_path / "x")]) == 2
    assert "is a folder; name an audio file" in capsys.readouterr().err
    for flag, value, text in (("--top", "-1", "--top: must be 0 or more"), ("--groups", "0", "--groups: must be 1"),
                              ("--top", "all", "expected a whole number, got 'all'")):
        with pytest.raises(SystemExit):
            main(["decompose", str(src), "-o", str(tmp_path / "x"), flag, value])
        assert text in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_decompose_rerun_leaves_only_the_new_files(tmp_path, capsys):
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), ckpt)
    x = (tone(0.5, SR) + noise_bursts(0.5, SR))[None]
    src, out = tmp_path / "in.wav", tmp_path / "parts"
    write_audio(src, x, SR, subtype="FLOAT")
    out.mkdir()
    keep = [out / "notes.txt", out / "1_mine.wav", out / "take_01.wav", out / "01_mine.flac"]  # not its names
    for f in keep:
        f.write_bytes(b"mine")
    base = ["decompose", str(src), "-o", str(out), "--model", str(ckpt), "--group", "none", "--fit", "0"]
    assert main([*base, "--top", "5", "--plot"]) == 0
    assert len(list(out.glob("[0-9][0-9]_*.wav"))) == 5 and (out / "decomposition.png").is_file()
    assert main([*base, "--top", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    names = sorted(f.name for f in out.glob("[0-9][0-9]_*.wav"))
    assert names == sorted(c["file"] for c in summary["components"]) and len(names) == 2
    assert not (out / "decomposition.png").exists()  # the old figure showed the old components
    total = read_audio(out / "residual.wav")[0].astype(np.float64)
    for name in names:
        total += read_audio(out / name)[0]
    err = ((total - x) ** 2).sum() / (x.astype(np.float64) ** 2).sum()
    assert 10 * np.log10(err) < -90, "the folder's WAVs do not add up to the input"
    assert all(f.read_bytes() == b"mine" for f in keep)
    assert not list(out.glob(".*.part")) and not list(out.glob(".audioae-*"))
    # Files of its names that the decomposition there did not write: a rerun deleted them (or
    # replaced a figure). They are left alone, and one the new run would write over is refused.
    theirs = [out / "2024_interview.wav", out / "decomposition.png"]
    for f in theirs:
        f.write_bytes(b"mine")
    assert main([*base, "--top", "3"]) == 0
    assert all(f.read_bytes() == b"mine" for f in theirs)
    capsys.readouterr()
    import audioae.decompose as decompose_module

    computed = []
    with pytest.MonkeyPatch.context() as mp:  # refused before the work (a fixed name), not after it
        mp.setattr(decompose_module, "decompose", lambda *a, **k: computed.append(1))
        assert main([*base, "--top", "3", "--plot"]) == 2
    assert "refusing to replace decomposition.png in" in capsys.readouterr().err and not computed
    assert (out / "decomposition.png").read_bytes() == b"mine" and not list(out.glob(".audioae-*"))
    assert len(json.loads((out / "summary.json").read_text())["components"]) == 3  # the earlier result stays


def _summary_of(k: int) -> dict:
    """A summary of ``k`` components of 4,000 samples at 16 kHz, as decompose writes one."""
    entries = [folder.component_entry(i, f"part {i}", [i], 0.1, 100.0, 1.0, [[0.0, 0.25]]) for i in range(k)]
    return folder.summary(sample_rate=16000, channels=1, samples=4000, group="none", fit_steps=0,
                          frame_rate=125.0, error_db=None, residual_share=0.5, components=entries)


def test_a_rerun_after_a_decomposition_saved_without_audio_leaves_others_files_alone(tmp_path):
    """A summary.json of components without files (client decompose --no-audio) made the rerun
    clear every file of a decomposition's names, someone's 2024_interview.wav among them."""
    out = tmp_path / "parts"
    x = np.random.default_rng(0).standard_normal((1, 4000)).astype(np.float32) * 0.1

    folder.write_folder(out, _summary_of(2), np.zeros((3, 5), np.float32), None, None, 16000)  # no audio
    (out / "2024_interview.wav").write_bytes(b"mine")
    comps = np.stack([x / 4, x / 4])  # [K, 1, T]
    folder.write_folder(out, _summary_of(2), np.zeros((3, 5), np.float32), comps, x - comps.sum(0), 16000)
    assert (out / "2024_interview.wav").read_bytes() == b"mine"
    assert (out / "residual.wav").is_file() and len(list(out.glob("0[12]_part_*.wav"))) == 2


# A decomposition of x = rng(0) noise [1, 4000] into K pieces plus a residual, written by the
# folder writer; argv: OUT K [FUNCTION N]: SIGKILL this process at the N-th call of
# decomposition_folder.FUNCTION (write_audio: while writing; _move: while moving files in).
WRITER = """
import os, signal, sys
import numpy as np
from audioae import decomposition_folder as folder

def write(out, k):
    x = np.random.default_rng(0).standard_normal((1, 4000)).astype(np.float32) * 0.1
    comps = np.stack([x * (i + 1) / (2 * k * k) for i in range(k)])  # [K, 1, T]
    entries = [folder.component_entry(i, f"part {i}", [i], 0.1, 100.0, 1.0, [[0.0, 0.25]]) for i in range(k)]
    summary = folder.summary(sample_rate=16000, channels=1, samples=4000, group="none", fit_steps=0,
                             frame_rate=125.0, error_db=None, residual_share=0.5, components=entries)
    folder.write_folder(out, summary, np.zeros((3, 5), np.float32), comps, x - comps.sum(0), 16000)

if __name__ == "__main__":
    if len(sys.argv) > 3:
        name, n = sys.argv[3], int(sys.argv[4])
        real, calls = getattr(folder, name), [0]
        def stop(*args, **kw):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kw)
        setattr(folder, name, stop)
    write(sys.argv[1], int(sys.argv[2]))
"""


def _write_killed(tmp_path, out, k: int, *kill) -> int:
    import subprocess
    import sys

    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.run([sys.executable, str(script), str(out), str(k), *map(str, kill)], timeout=120).returncode


def _complete(out) -> int:
    """The number of components of the complete decomposition in ``out`` (its files add up)."""
    summary = json.loads((out / "summary.json").read_text())
    names = sorted(f.name for f in out.glob("*.wav"))
    assert names == sorted([c["file"] for c in summary["components"]] + ["residual.wav"])
    x = np.random.default_rng(0).standard_normal((1, 4000)).astype(np.float32) * 0.1
    total = sum(read_audio(out / name)[0].astype(np.float64) for name in names)
    assert np.abs(total - x).max() < 1e-6
    return len(summary["components"])


@pytest.mark.parametrize(("function", "call", "after"), [
    ("write_audio", 2, 5),  # writing the new components: the old result is untouched
    ("_move", 1, 5), ("_move", 4, 5),  # moving the old files aside: undone
    ("_move", 9, 5),  # about to mark them all aside: undone
    ("_move", 10, 2), ("_move", 12, 2),  # moving the new files in: finished
])
def test_a_killed_rerun_leaves_the_earlier_or_the_new_decomposition_never_neither(tmp_path, function, call, after):
    """Was: a rerun deleted the earlier files first, so a run killed mid-way lost both, and its
    component WAVs without summary.json were then refused as someone else's."""
    out = tmp_path / "parts"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _write_killed(tmp_path, out, 5) == 0 and _complete(out) == 5
    assert _write_killed(tmp_path, out, 2, function, call) == -9  # really killed, there
    if function == "write_audio":
        assert _complete(out) == 5  # as it was, before anything else runs
    folder.check_folder(out)  # the next run's check finishes or undoes what the killed one left
    assert _complete(out) == after
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == []
    assert _write_killed(tmp_path, out, 3) == 0 and _complete(out) == 3  # and the rerun works
    assert (out / "notes.txt").read_text() == "mine"


def test_a_rerun_after_a_killed_one_cleans_up_and_an_error_keeps_the_old_result(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), ckpt)
    x = (tone(0.5, SR) + noise_bursts(0.5, SR))[None]
    src, out = tmp_path / "in.wav", tmp_path / "parts"
    write_audio(src, x, SR, subtype="FLOAT")
    assert _write_killed(tmp_path, out, 4, "write_audio", 3) == -9  # a first run killed while writing
    assert (out / folder.STAGE).is_dir() and not (out / "summary.json").exists()
    base = ["decompose", str(src), "-o", str(out), "--model", str(ckpt), "--fit", "0"]
    assert main([*base, "--top", "3"]) == 0  # was refused: "no summary.json of one"
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == []
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    calls = []

    def failing(path, *args, **kw):  # the disk fills up on the second component
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(folder, "write_audio", failing)
    assert main([*base, "--top", "5", "--plot"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # the earlier result, whole


# `audioae decompose ARGS...` that stops, holding its folder, at its first call of FUNCTION
# (decompose: computing; write_audio: writing into .audioae-new), prints "paused" and goes on when
# a line arrives on stdin; argv: FUNCTION ARGS...
PAUSED_RUN = """
import sys
from audioae import decompose, decomposition_folder
from audioae.cli import main

name = sys.argv[1]
module = decompose if name == "decompose" else decomposition_folder
real = getattr(module, name)

def pause(*args, **kw):
    setattr(module, name, real)  # once
    print("paused", flush=True)
    sys.stdin.readline()
    return real(*args, **kw)

setattr(module, name, pause)
sys.exit(main(sys.argv[2:]))
"""
CLI = "import sys; from audioae.cli import main; sys.exit(main(sys.argv[1:]))"


def _two_runs(tmp_path):
    """A tiny model, an input and the argv of a decomposition of it into tmp_path/parts."""
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), ckpt)
    src = tmp_path / "in.wav"
    write_audio(src, (tone(0.5, SR) + noise_bursts(0.5, SR))[None], SR, subtype="FLOAT")
    out = tmp_path / "parts"
    (tmp_path / "paused.py").write_text(PAUSED_RUN)
    return out, ["decompose", str(src), "-o", str(out), "--model", str(ckpt), "--group", "none", "--fit", "0"]


def _added_up(out, x) -> int:
    """The number of components in ``out``, whose WAVs add up to ``x``; nothing hidden is left."""
    summary = json.loads((out / "summary.json").read_text())
    names = sorted(f.name for f in out.glob("*.wav"))
    assert names == sorted([c["file"] for c in summary["components"]] + ["residual.wav"])
    total = sum(read_audio(out / name)[0].astype(np.float64) for name in names)
    assert ((total - x) ** 2).sum() < 1e-9 * (x.astype(np.float64) ** 2).sum()  # -90 dB
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == []
    return len(summary["components"])


@pytest.mark.parametrize("where", ["decompose", "write_audio"])  # computing; writing into .audioae-new
def test_a_second_run_into_a_folder_in_use_is_refused_at_once_and_the_first_completes(tmp_path, where):
    """Was: no lock; the second run's start deleted the first one's .audioae-new (as a killed run's),
    and their moves could interleave."""
    import subprocess
    import sys

    out, base = _two_runs(tmp_path)
    first = subprocess.Popen([sys.executable, str(tmp_path / "paused.py"), where, *base, "--top", "4"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "paused\n", first.stderr.read()
        second = subprocess.run([sys.executable, "-c", CLI, *base, "--top", "2"], capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"{out} is being written by another decomposition (pid {first.pid})" in second.stderr
        first.stdin.write("go\n")
        first.stdin.flush()
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    x = (tone(0.5, SR) + noise_bursts(0.5, SR))[None]
    assert _added_up(out, x) == 4  # the first run's, whole


def test_a_run_killed_while_it_holds_the_folder_leaves_no_lock_behind(tmp_path):
    import signal
    import subprocess
    import sys

    out, base = _two_runs(tmp_path)
    first = subprocess.Popen([sys.executable, str(tmp_path / "paused.py"), "write_audio", *base, "--top", "4"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "paused\n", first.stderr.read()
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # what it left: its half-written decomposition and its lock file, the lock itself gone with it
    assert (out / folder.STAGE).is_dir() and (out / folder.LOCK).read_text() == f"{first.pid}\n"
    second = subprocess.run([sys.executable, "-c", CLI, *base, "--top", "2"], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr
    x = (tone(0.5, SR) + noise_bursts(0.5, SR))[None]
    assert _added_up(out, x) == 2


def test_a_hold_reads_the_earlier_summary_once_and_knows_the_files_it_wrote_itself(tmp_path, monkeypatch):
    """summary.json was read for claim()'s checks and again for the swap; no other run writes the
    folder under the hold, so once is enough. A second write under the same hold replaces the
    first's files (the claim knows them), and leaves someone's file of a decomposition's name alone."""
    out = tmp_path / "parts"
    x = np.random.default_rng(0).standard_normal((1, 4000)).astype(np.float32) * 0.1

    folder.write_folder(out, _summary_of(1), np.zeros((3, 5), np.float32), (x / 2)[None], x / 2, 16000)
    reads = []
    read = folder._read_summary
    monkeypatch.setattr(folder, "_read_summary", lambda path: reads.append(path) or read(path))
    with folder.claim(out, residual=True) as held:
        (out / "05_part_4.wav").write_bytes(b"mine")  # a name the earlier decomposition did not write
        folder.write_folder(held, _summary_of(3), np.zeros((3, 5), np.float32), np.stack([x / 4] * 3), x / 4, 16000)
        assert (out / "03_part_2.wav").exists()
        folder.write_folder(held, _summary_of(1), np.zeros((3, 5), np.float32), (x / 2)[None], x / 2, 16000)
    assert reads == [out]
    assert sorted(f.name for f in out.iterdir()) == ["01_part_0.wav", "05_part_4.wav", "activations.npy",
                                                      "residual.wav", "summary.json"]
    assert (out / "05_part_4.wav").read_bytes() == b"mine"
    np.testing.assert_array_equal(read_audio(out / "01_part_0.wav")[0] + read_audio(out / "residual.wav")[0], x)


def test_multichannel_activations_are_one_matrix_the_mean_over_the_channels(tmp_path):
    """docs/decomposition.md and the proto say so: activations.npy is [U, N] for any channel count,
    each channel coded on its own (no fit: the fit adapts one set of atoms to every channel) and
    the codes averaged."""
    model = tiny_model()
    x = np.stack([tone(1.0, SR, 440.0) + noise_bursts(1.0, SR), tone(1.0, SR, 1000.0)])  # [2, T]
    both = decompose(model, x, SR, fit_steps=0)
    alone = [decompose(model, x[c], SR, fit_steps=0).activations for c in range(2)]
    assert both.activations.shape == (model.config.code_dim, alone[0].shape[-1])
    np.testing.assert_allclose(both.activations, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-7)
    ckpt, src = tmp_path / "tiny.safetensors", tmp_path / "stereo.wav"
    save_checkpoint(model, ckpt)
    write_audio(src, x, SR, subtype="FLOAT")
    assert main(["decompose", str(src), "-o", str(tmp_path / "d"), "--model", str(ckpt), "--fit", "0"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "d" / "activations.npy"), both.activations, rtol=1e-5, atol=1e-7)


def test_component_files_past_99_are_numbered_to_the_counts_width_and_list_in_rank_order(tmp_path):
    """229 components were written 01_ .. 99_, 100_ .. 229_: a listing by name read 09_, 100_, 10_."""
    out = tmp_path / "parts"
    x = np.zeros((1, 4000), np.float32)
    folder.write_folder(out, _summary_of(101), np.zeros((3, 5), np.float32), np.zeros((101, 1, 4000), np.float32), x,
                        16000)
    summary = json.loads((out / "summary.json").read_text())
    files = [entry["file"] for entry in summary["components"]]
    assert files[0] == "001_part_0.wav" and files[9] == "010_part_9.wav" and files[100] == "101_part_100.wav"
    assert sorted(f.name for f in out.iterdir() if f.name[0].isdigit()) == files
    assert all(folder.writes(name) for name in files)  # a rerun clears them
    folder.write_folder(out, _summary_of(3), np.zeros((3, 5), np.float32), np.zeros((3, 1, 4000), np.float32), x, 16000)
    assert sorted(f.name for f in out.iterdir() if f.name[0].isdigit()) == ["01_part_0.wav", "02_part_1.wav",
                                                                          "03_part_2.wav"]  # under 100: as before


def test_a_held_folder_is_neither_recovered_nor_written_by_another_hold(tmp_path):
    """Recovery is for what a killed run left: under another run's hold, .audioae-new is that run's
    work in progress (was: check_folder, which `audioae client decompose` runs before its call,
    deleted it)."""
    from audioae.client import DecomposeResult, save_decomposition

    out = tmp_path / "parts"
    x = np.random.default_rng(0).standard_normal((1, 4000)).astype(np.float32) * 0.1
    result = DecomposeResult(model="m", activations=np.zeros((3, 5), np.float32), frame_rate=125.0, labels=["a"],
                             units=[[0]], energy_share=np.array([0.5]), components=x[None] / 2, residual=x / 2,
                             sample_rate=16000, channels=1, samples=4000, dominant_hz=[100.0],
                             active_fraction=[1.0], active_seconds=[[[0.0, 0.25]]], active_spans=[1])
    with folder.claim(out) as held:
        (out / folder.STAGE).mkdir()
        (out / folder.STAGE / "01_a.wav").write_bytes(b"being written")
        for attempt in (lambda: folder.check_folder(out), lambda: save_decomposition(result, out),
                        lambda: folder.write_folder(out, {}, np.zeros((1, 1)), None, None, 16000)):
            with pytest.raises(folder.FolderBusy, match=re.escape(f"{out} is being written by another "
                                                                  f"decomposition (pid {os.getpid()})")):
                attempt()
        assert (out / folder.STAGE / "01_a.wav").read_bytes() == b"being written"
        (out / folder.STAGE / "01_a.wav").unlink()
        (out / folder.STAGE).rmdir()
        summary, files = save_decomposition(result, held)  # under the hold held here
    assert files[-1] == out / "summary.json" and _added_up(out, x) == 1
    assert folder.check_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # a check makes nothing


def test_a_folder_with_files_of_its_names_but_no_summary_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "takes"
    out.mkdir()
    (out / "03_take.wav").write_bytes(b"mine")
    src = tmp_path / "in.wav"
    write_audio(src, tone(0.5, SR)[None], SR)
    assert main(["decompose", str(src), "-o", str(out)]) == 2
    assert "holds 03_take.wav, names a decomposition writes" in capsys.readouterr().err
    assert (out / "03_take.wav").read_bytes() == b"mine" and len(list(out.iterdir())) == 1


def test_a_rerun_over_a_hand_edited_summary_does_not_crash_and_keeps_what_it_does_not_list(tmp_path, capsys):
    """A summary.json whose residual_file is a list ended the rerun in a bare "TypeError: unhashable
    type: 'list'"; a name that is no string names no file of the decomposition."""
    src = tmp_path / "in.wav"
    write_audio(src, tone(0.5, SR)[None], SR)
    for edited in ({"components": [{"file": ["x"]}], "residual_file": ["x"]},
                   {"components": ["x"], "residual_file": "residual.wav"},  # taken for "every file": 03_take.wav went
                   {"components": {"x": 1}, "residual_file": 7}):
        out = tmp_path / f"takes{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        (out / "summary.json").write_text(json.dumps(edited))
        (out / "03_take.wav").write_bytes(b"mine")
        assert main(["decompose", str(src), "-o", str(out), "--top", "1"]) == 0, capsys.readouterr().err
        assert (out / "03_take.wav").read_bytes() == b"mine", edited
        assert json.loads((out / "summary.json").read_text())["residual_file"] == "residual.wav"


def test_cli_decompose_refuses_a_file_or_a_folder_holding_the_input(tmp_path, capsys):
    src = tmp_path / "residual.wav"  # a name the decomposition writes into its folder
    write_audio(src, (tone(0.5, SR) + noise_bursts(0.5, SR))[None], SR, subtype="FLOAT")
    before = src.read_bytes()
    assert main(["decompose", str(src), "-o", str(tmp_path)]) == 2
    assert "has a name this command writes there" in capsys.readouterr().err
    assert src.read_bytes() == before
    (tmp_path / "taken").write_text("mine")
    assert main(["decompose", str(src), "-o", str(tmp_path / "taken")]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine"


def test_the_cli_and_the_server_share_one_check_of_the_options(tmp_path, capsys):
    """The CLI took --fit 1000 and --groups 500, which the server refuses; --fit -1 was refused
    only after the audio was read."""
    model = tiny_model()  # 48 units
    for kw, text in (({"fit_steps": MAX_FIT_STEPS + 1}, f"fit_steps must be 0..{MAX_FIT_STEPS} (unset: the model's default"),
                     ({"fit_steps": -1}, f"fit_steps must be 0..{MAX_FIT_STEPS}"),
                     ({"group": "cluster", "groups": 49}, "groups must be 1..48 (this model's units), got 49"),
                     ({"group": "band", "groups": 0}, "groups must be 1..48"),
                     ({"groups": 3}, "groups counts bands or clusters: set group to band or cluster"),
                     ({"top_k": -1}, "top_k must be >= 0 (0: all components), got -1"),
                     ({"group": "g" * 1000}, "unknown group 'ggg")):
        with pytest.raises(ValueError, match=re.escape(text)):
            check_options(model, **kw)
    with pytest.raises(ValueError, match="sparse_dict model"):
        check_options(build_model("linear", {"n_fft": 128, "hop_length": 32}))
    assert check_options(model).kwargs() == {"group": "none", "groups": None, "top_k": None, "fit_steps": None}
    assert check_options(model, group="cluster").kwargs()["groups"] == 8  # min(8, units)
    assert check_options(model, group="band", groups=3, top_k=2, fit_steps=0).kwargs() == \
        {"group": "band", "groups": 3, "top_k": 2, "fit_steps": 0}

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(model, ckpt)
    src = tmp_path / "in.wav"
    src.write_bytes(b"not audio")  # a refusal of the options comes first: the audio is not read
    base = ["decompose", str(src), "-o", str(tmp_path / "o"), "--model", str(ckpt)]
    for flags, text in ((["--fit", "1000"], "--fit must be 0..100"), (["--fit", "-1"], "--fit must be 0..100"),
                        (["--groups", "500"], "--groups must be 1..48 (this model's units), got 500"),
                        (["--group", "none", "--groups", "4"], "--groups counts bands or clusters: set --group to band")):
        assert main([*base, *flags]) == 2
        assert text in capsys.readouterr().err
    assert main(base) == 2
    assert "cannot read audio" in capsys.readouterr().err
    src.write_bytes(b"")  # was "cannot read audio (Format not recognised.)"
    assert main(base) == 2
    assert f"{src}: empty file (0 bytes)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_figure_stops_at_the_models_band_and_says_how_it_shows_channels(tmp_path, monkeypatch):
    """At 44.1 kHz the component panels ran to 22 kHz, where components hold nothing; stereo was
    drawn as the channels' mean unsaid; the log-frequency axis had only 10^2 and 10^3 ticks."""
    from audioae import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    sr = 44100
    x = np.stack([tone(0.5, sr, 440.0), noise_bursts(0.5, sr)])  # [2, T]
    model = tiny_model()
    plots.plot_decomposition(decompose(model, x, sr, group="band", groups=3, fit_steps=0), x, sr, model, "f.png")
    axes = panels(figures[0])
    assert "every panel: the mean of its 2 channels" in axes[0].get_title()
    assert axes[0].get_ylim()[1] > 20000 and any("8000 Hz" in t.get_text() for t in axes[0].texts)
    assert [ax.get_ylim()[1] for ax in axes[3:]] == [8000.0] * (len(axes) - 3)
    labels = [t.get_text() for t in axes[1].get_xticklabels()]
    assert {"100", "200", "500", "1k", "2k", "5k"} <= set(labels), labels
    plots.plot_decomposition(decompose(model, x[0], SR, fit_steps=0), x[0], SR, model, "f.png")  # mono, 16 kHz
    assert "mean" not in panels(figures[1])[0].get_title() and not panels(figures[1])[0].texts
    # An 8 kHz file holds nothing above 4 kHz: its atoms and spectrograms ran to 8 kHz
    plots.plot_decomposition(decompose(model, x[0, : sr // 4], 8000, group="band", groups=3, fit_steps=0),
                             x[0, : sr // 4], 8000, model, "f.png")
    axes = panels(figures[2])
    assert axes[1].get_xlim()[1] == 4000.0 and [ax.get_ylim()[1] for ax in axes[:1] + axes[3:]] == [4000.0] * (len(axes) - 2)


def test_a_log_frequency_spectrogram_keeps_a_one_bin_line_at_high_frequencies():
    """Drawn bin by bin on a log axis, a 12 kHz tone's bin was a twentieth of a pixel: it vanished."""
    from audioae.plots import LOG_ROWS, _log_rows

    bin_hz = 48000 / 2048
    db = np.full((1025, 3), -120.0)
    db[512] = 0.0  # 12 kHz
    db[5] = -10.0  # 117 Hz: low rows are narrower than a bin
    edges, rows = _log_rows(db, bin_hz, 24000.0)
    assert rows.shape == (LOG_ROWS, 3) and edges[0] == bin_hz / 2 and edges[-1] == pytest.approx(24000.0)
    line = np.flatnonzero(rows[:, 0] == 0.0)
    assert len(line) == 1 and edges[line[0]] <= 12000 < edges[line[0] + 1]
    low = np.flatnonzero(rows[:, 0] == -10.0)
    assert len(low) >= 1 and edges[low[0]] <= 5.5 * bin_hz and edges[low[-1] + 1] >= 4.5 * bin_hz


def panels(fig) -> list:
    """A figure's axes but its colour bars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_the_figure_says_how_many_components_it_draws_and_on_what_scale(monkeypatch):
    """A chord's 44 units were drawn as 8 panels titled "44 components + residual", on a linear
    0-8000 Hz axis where a chord at 250-400 Hz fills the bottom twentieth, with no colour bar,
    and the stacked atoms and activations numbered 1..8 without saying what the numbers are."""
    from audioae import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    model = tiny_model()
    t = np.arange(SR) / SR
    x = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0)).astype(np.float32)
    dec = decompose(model, x, SR, group="none", top_k=None, fit_steps=0)
    assert len(dec.labels) > 8
    plots.plot_decomposition(dec, x, SR, model, "f.png")
    fig = figures[0]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2 and all("dB" in ax.get_ylabel() for ax in bars)  # the input's, and the components'
    axes = panels(fig)
    assert f"{len(dec.labels)} components (the 8 strongest drawn below)" in axes[0].get_title()
    assert f"the 8 strongest of {len(dec.labels)} components" in axes[1].get_title()
    assert all(ax.get_ylabel() == "component" for ax in axes[1:3])
    spectrograms = [axes[0], *axes[3:]]
    assert len(spectrograms) == 9 and all(ax.get_yscale() == "log" and ax.get_xlabel() for ax in spectrograms)


def test_cli_inspect_draws_the_dictionary(tmp_path, capsys):
    import matplotlib.image

    png = tmp_path / "dict.png"
    assert main(["inspect", "-o", str(png)]) == 0
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 500 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "sparse_dict" and info["code_dim"] == 320
    ckpt = tmp_path / "lin.safetensors"
    save_checkpoint(build_model("linear", {"n_fft": 128, "hop_length": 32}), ckpt)
    assert main(["inspect", str(ckpt), "-o", str(tmp_path / "x.png")]) == 2


def test_every_panel_of_the_dictionary_figure_says_what_its_axes_are(monkeypatch):
    """The "16 atoms in time-frequency" panel had neither axis labelled."""
    from audioae import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.plot_dictionary(load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER), "d.png")
    axes = [ax for ax in figures[0].axes if ax.get_label() != "<colorbar>"]
    assert axes and all(ax.get_xlabel() and ax.get_ylabel() for ax in axes), \
        [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in axes]
    atoms = next(ax for ax in axes if "16 atoms" in ax.get_title())
    assert atoms.get_ylabel() == "Hz" and "3 frames of 8 ms" in atoms.get_xlabel()
    assert len(atoms.get_xticklabels()) == 16  # the units drawn


def test_client_decompose_help_names_its_input_its_folder_and_says_it_draws_no_figure(capsys):
    """The help said "INPUT.components/" where it writes song.components/ for song.wav, the input
    had no help, and nothing said that, unlike audioae decompose, it draws no figure."""
    with pytest.raises(SystemExit):
        main(["client", "decompose", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "song.wav -> song.components/" in text and "INPUT.components" not in text
    assert "input the recording to send" in text
    with pytest.raises(SystemExit):
        main(["client", "-h"])
    assert "no figure" in " ".join(capsys.readouterr().out.split())


def test_the_cli_default_group_count_is_the_librarys():
    """The CLI spells the default out (importing decompose would load torch for --help)."""
    from audioae import cli
    from audioae import decompose as dec_module

    assert cli.DEFAULT_GROUPS == dec_module.DEFAULT_GROUPS


def test_decompose_leaves_the_callers_model_as_it_was():
    model = tiny_model().train()  # .cpu().eval() works in place: it switched the caller's model to eval
    decompose(model, tone(0.5, SR), SR, fit_steps=0)
    assert model.training
