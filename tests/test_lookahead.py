"""Look-ahead input (``SpectralConfig.lookahead``): later frames, their streaming (a look-ahead
model streaming like offline: tests/test_deep_filter.py), the latency they add and no more, and
growing a trained model into one without changing what it computes."""

import numpy as np
import pytest
import torch

from audioae.enhance import denoise
from audioae.models import build_model
from audioae.spectral import STFT, StreamingSTFT
from audioae.train import TrainConfig, batch_loss, corrupt_batch, grow_into

SMALL = {"hidden": 16, "code_dim": 8, "n_fft": 128, "hop_length": 64, "output": "deepfilter", "df_bins": 12,
         "df_order": 3, "corruption": "mix"}
AHEAD = 32  # samples: 2 ms at 16 kHz


def _model(lookahead: int = AHEAD, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("recurrent", {**SMALL, "lookahead": lookahead}).eval()


def _listening(m):
    """``m`` with weights large enough that every input row, the look-ahead ones too, matters."""
    with torch.no_grad():
        m.enc_in.weight.normal_(0, 0.3)
        for p in m.to_out.parameters():
            p.normal_(0, 0.3)
    return m


def test_ahead_frames_are_the_stft_of_the_signal_shifted_earlier():
    stft = STFT(128, 64)
    x = torch.randn(2, 3000)  # [B, T]
    torch.testing.assert_close(stft.ahead(x, 0), stft(x))
    ahead = stft.ahead(x, AHEAD)  # [B, F, N]
    shifted = stft(torch.nn.functional.pad(x[:, AHEAD:], (0, AHEAD)))  # x[n + AHEAD], zeros after the end
    assert ahead.shape == stft(x).shape
    # Alike wherever neither transform's window reaches before the start (frames 1 on).
    torch.testing.assert_close(ahead[..., 1:], shifted[..., 1:])


@pytest.mark.parametrize("chunk", [1, 50, 999])
def test_streaming_ahead_frames_equal_offline(chunk):
    x = torch.randn(1, 2500)
    want = STFT(128, 64).ahead(x, AHEAD)
    s = StreamingSTFT(128, 64, (1,), offset=AHEAD)
    got = torch.cat([s.push(x[:, i : i + chunk]) for i in range(0, x.shape[-1], chunk)] + [s.finish()], -1)
    torch.testing.assert_close(got, want)


def test_lookahead_sees_exactly_its_latency_ahead():
    """A change of the input from sample ``s`` on leaves every output before ``s - latency`` as
    it was; with look-ahead it reaches the estimate of the frame whose own window ends before ``s``."""
    x = (0.1 * np.random.default_rng(2).standard_normal(4000)).astype(np.float32)
    y = x.copy()
    t = 30  # a frame: its window is [t*hop - n_fft/2, t*hop + n_fft/2), its look-ahead AHEAD later
    s = t * 64 + 64 + AHEAD // 2  # past frame t's window, within its look-ahead frame's
    y[s:] += 0.5
    for lookahead in (0, AHEAD):
        m = _listening(_model(lookahead))
        latency = round(m.latency_seconds * m.config.sample_rate)
        assert latency == m.config.n_fft + lookahead
        diff = np.abs(denoise(m, x, 16000) - denoise(m, y, 16000))
        assert diff[: s - latency + 1].max() == 0
        with torch.no_grad():
            (out_x, _), (out_y, _) = (m(m.analyze(torch.from_numpy(w)[None])[1]) for w in (x, y))  # [1, F', N]
        changed = (out_x[..., t] - out_y[..., t]).abs().max()
        assert changed > 1e-3 if lookahead else changed == 0


def test_growing_into_a_lookahead_model_keeps_its_function():
    base = _listening(_model(0))
    grown = _model(AHEAD, seed=1)
    assert grow_into(grown, base.state_dict()) == ["enc_in.weight"]
    assert grown.enc_in.weight.shape[1] == base.enc_in.weight.shape[1] + base.config.n_bins
    wav = (0.1 * np.random.default_rng(3).standard_normal(8000)).astype(np.float32)
    np.testing.assert_allclose(denoise(grown, wav, 16000), denoise(base, wav, 16000), atol=1e-6)


def test_training_step_feeds_the_noisy_waveform():
    m = _listening(_model()).train()
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(3, 4000, generator=g) * 0.1, torch.randn(3, 4000, generator=g) * 0.1
    noisy, spec = corrupt_batch(m, clean, noise, torch.zeros(3))
    with pytest.raises(ValueError, match="looks 32 samples ahead"):
        batch_loss(m, clean, spec, TrainConfig())
    loss, _ = batch_loss(m, clean, spec, TrainConfig(), noisy=noisy)
    loss.backward()
    assert m.enc_in.weight.grad[:, -m.config.n_bins :].abs().sum() > 0  # the look-ahead rows learn


def test_lookahead_config_is_checked():
    with pytest.raises(ValueError, match="lookahead must be within"):
        build_model("recurrent", {**SMALL, "lookahead": 65})
    with pytest.raises(ValueError, match="lookahead needs the recurrent family"):
        build_model("conv1d", {"n_fft": 128, "hop_length": 64, "lookahead": 16})
