"""The deep-filter head: causal taps, streaming equal to offline, and growing a mask model into it."""

import numpy as np
import pytest
import torch

from audioae.enhance import StreamingDenoiser, denoise
from audioae.models import build_model
from audioae.train import grow_into

SMALL = {"hidden": 16, "code_dim": 8, "n_fft": 128, "hop_length": 64}


def _df_model(**extra):
    return build_model("recurrent", {**SMALL, "output": "deepfilter", "df_bins": 12, "df_order": 3, **extra}).eval()


def test_taps_reach_back_in_time_only():
    """Mask 0 and a single real tap of 1 at delay j must give the input ``j`` frames earlier on the
    filtered bins (zeros before the start) and silence above them."""
    m = _df_model()
    c = m.config
    spec = torch.randn(2, c.n_bins, 9, dtype=torch.complex64)  # [B, F, N]
    for delay in range(c.df_order):
        out = torch.zeros(2, c.n_outputs, 9)  # [B, F', N]
        taps = out[:, c.n_bins :].view(2, c.df_order, 2, c.df_bins, 9)
        taps[:, delay, 0] = 1.0  # real part of tap `delay`
        est = m.estimate_spec(spec, out)  # [B, F, N]
        want = torch.zeros_like(spec[:, : c.df_bins])
        want[..., delay:] = spec[:, : c.df_bins, : 9 - delay]
        torch.testing.assert_close(est[:, : c.df_bins], want)
        assert est[:, c.df_bins :].abs().max() == 0


def test_context_frames_continue_the_filter():
    """Estimating the second half with the first half's last frames in front equals estimating all."""
    m = _df_model()
    c = m.config
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(1, c.n_bins, 10, dtype=torch.complex64, generator=g)  # [B, F, N]
    out = torch.rand(1, c.n_outputs, 10, generator=g) * 2 - 1  # [B, F', N]
    whole = m.estimate_spec(spec, out)
    tail = m.estimate_spec(spec[..., 6 - m.spec_context_frames :], out[..., 6:])
    torch.testing.assert_close(tail, whole[..., 6:])


@pytest.mark.parametrize(("sr", "df_order"), [(44100, 3), (16000, 5)])  # 16 kHz: no resampler to gather
# samples into blocks, so small chunks bring one frame at a time; 5 taps (the shipped model's) read
# more past frames than that
@pytest.mark.parametrize("lookahead", [0, 32])
@pytest.mark.parametrize("chunk", [1, 100, 4410])
def test_deep_filter_streams_like_offline(chunk, lookahead, sr, df_order):
    m = _df_model(lookahead=lookahead, df_order=df_order)  # look-ahead: tests/test_lookahead.py
    with torch.no_grad():
        for p in m.to_out.parameters():  # non-trivial taps
            p.normal_(0, 0.3)
        m.enc_in.weight.normal_(0, 0.3)  # every input heard, the look-ahead rows too
    wav = (0.1 * np.random.default_rng(1).standard_normal((2, 22050))).astype(np.float32)
    offline = denoise(m, wav, sr)
    sd = StreamingDenoiser(m, sr, channels=2)
    streamed = np.concatenate([sd.push(wav[:, i : i + chunk]) for i in range(0, wav.shape[1], chunk)] + [sd.finish()], -1)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=2e-6)


def test_growing_a_mask_model_keeps_its_function():
    mask = build_model("recurrent", {**SMALL}).eval()
    with torch.no_grad():
        for p in mask.parameters():
            p.normal_(0, 0.3)
    grown = _df_model()
    names = grow_into(grown, mask.state_dict())
    assert set(names) == {"enc_in.weight", "to_out.weight", "to_out.bias"}
    wav = torch.randn(2, 4000) * 0.1
    sr = mask.config.sample_rate
    torch.testing.assert_close(denoise(grown, wav, sr), denoise(mask, wav, sr), atol=1e-6, rtol=0)


@pytest.mark.parametrize("extra", [{"output": "deepfilter", "df_bins": 12}, {"cell": "lstm", "bidirectional": True,
                                                                          "layers": 2}])
def test_widening_the_hidden_layer_keeps_the_function_and_the_new_units_learn(extra):
    """hidden 16 -> 24 gate by gate (GRU: 3 gates, LSTM: 4; two directions, two layers): the same
    outputs, and the new units' outgoing weights get a gradient at once (their incoming weights
    keep a random init, so they are not dead)."""
    torch.manual_seed(0)
    small = build_model("recurrent", {**SMALL, **extra}).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.normal_(0, 0.3)
    wide = build_model("recurrent", {**SMALL, **extra, "hidden": 24}).eval()
    grow_into(wide, small.state_dict())
    x = small.example_input(batch=2)  # [B, F', N]
    with torch.no_grad():
        torch.testing.assert_close(wide(x)[0], small(x)[0], atol=1e-6, rtol=0)
    wide(x)[0].square().mean().backward()
    dirs = 2 if extra.get("bidirectional") else 1
    new_cols = wide.to_out.weight.grad.reshape(-1, dirs, 24)[:, :, 16:]  # from the 8 new units of each direction
    assert new_cols.abs().sum() > 0


def test_grow_refuses_what_does_not_fit():
    big = build_model("recurrent", {**SMALL, "hidden": 24})
    with pytest.raises(ValueError, match="cannot grow"):
        grow_into(build_model("recurrent", SMALL), big.state_dict())


def test_only_models_with_a_deep_filter_head_accept_it():
    with pytest.raises(ValueError, match="no deepfilter output"):
        build_model("conv1d", {"channels": (8,), "code_dim": 4, "n_fft": 128, "hop_length": 32, "output": "deepfilter",
                                "df_bins": 12})
    with pytest.raises(ValueError, match="df_bins"):
        build_model("recurrent", {**SMALL, "output": "deepfilter", "df_bins": 1000})


@pytest.mark.parametrize("output", ["mask", "deepfilter"])
def test_mask_power_raises_the_mask_and_leaves_the_taps(output):
    extra = {"output": output, "df_bins": 12} if output == "deepfilter" else {}
    base = build_model("recurrent", {**SMALL, **extra}).eval()
    soft = base.with_config(mask_power=0.5)
    x = base.example_input(2)
    with torch.no_grad():
        a, b = base(x)[0], soft(x)[0]
    f = base.config.n_bins
    torch.testing.assert_close(b[:, :f], a[:, :f].sqrt())
    torch.testing.assert_close(b[:, f:], a[:, f:])
    with pytest.raises(ValueError, match="mask_power"):
        build_model("recurrent", {**SMALL, "mask_power": 0.0})


@pytest.mark.parametrize("output", ["mask", "deepfilter"])
def test_an_open_input_gate_returns_the_input_and_a_closed_one_the_estimate(output):
    m = build_model("recurrent", {**SMALL, "output": output, "df_bins": 12, "input_gate": True}).eval()
    ungated = build_model("recurrent", {**SMALL, "output": output, "df_bins": 12}).eval()
    c = m.config
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(2, c.n_bins, 7, dtype=torch.complex64, generator=g)  # [B, F, N]
    out = torch.rand(2, c.n_outputs, 7, generator=g)  # [B, F', N]: mask (and taps) in [0, 1]
    out[:, -1] = 1.0
    torch.testing.assert_close(m.estimate_spec(spec, out), spec)
    out[:, -1] = 0.0
    torch.testing.assert_close(m.estimate_spec(spec, out), ungated.estimate_spec(spec, out[:, :-1]))
    out[:, -1, 3] = 0.25  # one frame a quarter of the way back to the input
    half = m.estimate_spec(spec, out)
    est = ungated.estimate_spec(spec, out[:, :-1])
    torch.testing.assert_close(half[..., 3], 0.75 * est[..., 3] + 0.25 * spec[..., 3])
    torch.testing.assert_close(half[..., 4:], est[..., 4:])


def test_a_gate_grown_onto_a_trained_model_starts_closed_and_learns():
    base = _df_model()
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.3)
    gated = _df_model(input_gate=True)
    assert set(grow_into(gated, base.state_dict())) == {"to_out.weight", "to_out.bias"}
    x = base.example_input(batch=2)  # [B, F', N]
    gate = gated(x)[0][:, -1]  # [B, N]
    torch.testing.assert_close(gate, torch.full_like(gate, float(torch.sigmoid(torch.tensor(-8.0)))))
    wav = torch.randn(2, 4000) * 0.1
    sr = base.config.sample_rate
    torch.testing.assert_close(denoise(gated, wav, sr), denoise(base, wav, sr), atol=1e-3 * wav.abs().max().item(), rtol=0)
    spec, feats = gated.analyze(wav)  # [B, F, N], [B, F', N]: training's differentiable path
    gated.stft.inverse(gated.estimate_spec(spec, gated(feats)[0]), wav.shape[-1]).square().mean().backward()
    assert gated.to_out.weight.grad[-1].abs().sum() > 0  # the gate's row gets a gradient at once


@pytest.mark.parametrize("chunk", [1, 4410])
def test_a_gated_model_streams_like_offline(chunk):
    m = _df_model(input_gate=True)
    with torch.no_grad():
        for p in m.to_out.parameters():
            p.normal_(0, 0.3)
        m.to_out.bias[-1] = 0.5  # logit 16 * 0.5 - 8 = 0: a gate near half open, varying frame by frame
    wav = (0.1 * np.random.default_rng(2).standard_normal((1, 22050))).astype(np.float32)
    offline = denoise(m, wav, 44100)
    sd = StreamingDenoiser(m, 44100, channels=1)
    streamed = np.concatenate([sd.push(wav[:, i : i + chunk]) for i in range(0, wav.shape[1], chunk)] + [sd.finish()], -1)
    np.testing.assert_allclose(streamed, offline, atol=2e-6)


def test_only_recurrent_mask_heads_take_an_input_gate():
    with pytest.raises(ValueError, match="no input gate"):
        build_model("conv1d", {"channels": (8,), "code_dim": 4, "n_fft": 128, "hop_length": 32, "input_gate": True})
    with pytest.raises(ValueError, match="input_gate needs a mask or deepfilter output"):
        build_model("recurrent", {**SMALL, "output": "magnitude", "input_gate": True})
