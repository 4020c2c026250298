"""Learning tests on tiny problems: PCA, unpooling, denoising, sparsity."""

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from audioae.data import synthetic
from audioae.data.digits import load_digits_tensors
from audioae.metrics import si_sdr
from audioae.models import build_model
from audioae.models.conv1d import UNPOOLING
from audioae.models.sparsity import fraction_near_zero, hoyer_sparsity
from audioae.train import TrainConfig, batch_loss, corrupt_batch, fit_arrays


def test_linear_autoencoder_spans_pca_subspace_on_digits():
    x, _ = load_digits_tensors()  # [1797, 64]
    k = 8
    torch.manual_seed(0)
    model = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": k})
    fit_arrays(model, x, steps=2000, batch_size=len(x), lr=1e-2)
    with torch.no_grad():
        recon, _ = model(x)
    ae_mse = float((recon - x).pow(2).mean())

    pca = PCA(k).fit(x.numpy())
    pca_recon = pca.inverse_transform(pca.transform(x.numpy()))
    pca_mse = float(((pca_recon - x.numpy()) ** 2).mean())
    # The decoder's columns span the learned subspace; compare with the top-k principal axes.
    angles = np.degrees(subspace_angles(model.decoder.weight.detach().numpy(), pca.components_.T))
    assert angles.max() < 10.0, f"largest principal angle {angles.max():.1f} deg"
    assert ae_mse <= 1.05 * pca_mse, f"AE MSE {ae_mse:.5f} vs PCA {pca_mse:.5f}"


def _spectrogram_batch(n_fft=64, examples=8, seconds=0.5, sr=8000):
    rng = np.random.default_rng(0)
    wav = torch.from_numpy(np.stack([synthetic.speech_like(rng, seconds, sr) for _ in range(examples)]))
    return wav


@pytest.mark.parametrize("unpool", UNPOOLING)
def test_each_unpooling_choice_trains(unpool):
    torch.manual_seed(0)
    model = build_model("conv1d", {"unpool": unpool, "channels": (32, 32), "code_dim": 16, "n_fft": 64,
                                   "hop_length": 16, "sample_rate": 8000, "output": "magnitude",
                                   "code_activation": "none"})
    feats = model.features(model.stft(_spectrogram_batch()))  # [8, 33, N]
    history = fit_arrays(model, feats, steps=400, batch_size=8, lr=3e-3)
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < first / 10, f"{unpool}: loss {first:.4f} -> {last:.4f}"


def test_denoising_model_overfits_one_batch():
    torch.manual_seed(0)
    sr = 8000
    model = build_model("conv1d", {"channels": (64,), "code_dim": 64, "kernel_size": 5, "n_fft": 256,
                                   "hop_length": 64, "sample_rate": sr, "corruption": "mix"})
    rng = np.random.default_rng(1)
    clean = torch.from_numpy(np.stack([synthetic.speech_like(rng, 1.0, sr) for _ in range(4)]))  # [4, T]
    noise = torch.from_numpy(np.stack([synthetic.colored_noise(rng, 1.0, sr, 1.0) for _ in range(4)]))
    noisy, spec = corrupt_batch(model, clean, noise, torch.full((4,), -5.0))  # pink noise at -5 dB
    tc = TrainConfig(spectral_weight=1.0, sisdr_weight=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = batch_loss(model, clean, spec, tc)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out, _ = model(model.features(spec))
        est = model.stft.inverse(model.estimate_spec(spec, out), clean.shape[-1])
    gain = float((si_sdr(est, clean) - si_sdr(noisy, clean)).mean())
    assert gain >= 10.0, f"SI-SDR improvement {gain:.1f} dB"


def test_sparsity_penalty_makes_codes_sparser():
    x, _ = load_digits_tensors()
    codes = {}
    for penalty, weight in (("none", 0.0), ("l1", 0.05)):
        torch.manual_seed(0)
        model = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": 128,
                                       "code_activation": "relu", "sparsity": penalty,
                                       "sparsity_weight": weight})
        fit_arrays(model, x, steps=1500, batch_size=256, lr=3e-3)
        with torch.no_grad():
            codes[penalty] = model.encode(x)
    assert hoyer_sparsity(codes["l1"]) > hoyer_sparsity(codes["none"]) + 0.1
    assert fraction_near_zero(codes["l1"]) > fraction_near_zero(codes["none"])


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_loss_backward_has_no_nan_at_silent_bins():
    # Exactly zero STFT bins (digital silence) must not put a 0 * inf anywhere in the backward:
    # anomaly detection raises on any NaN a backward function returns, masked later or not.
    from audioae.losses import multires_stft_loss, spectral_loss

    re = torch.zeros(2, 9, 7)
    re[0, :, :3] = 0.5
    im = torch.zeros(2, 9, 7)
    re.requires_grad_(True)
    im.requires_grad_(True)
    est = torch.complex(re, im)  # [B, F, N], silent but for a few frames
    clean = torch.complex(torch.zeros(2, 9, 7), torch.zeros(2, 9, 7))
    clean[1, 4, 2] = 0.3  # a bin where the estimate is silent and the target is not
    wav = torch.zeros(2, 2048)
    wav[0, 1000:1100] = torch.linspace(0, 1, 100)
    wav.requires_grad_(True)
    with torch.autograd.detect_anomaly():
        (spectral_loss(est, clean) + multires_stft_loss(wav, torch.zeros(2, 2048))).backward()
    assert torch.isfinite(re.grad).all() and torch.isfinite(im.grad).all() and torch.isfinite(wav.grad).all()


def _speech_in_noise(seconds=2.0, sr=16000, examples=2, seed=0):
    rng = np.random.default_rng(seed)
    clean = torch.from_numpy(np.stack([synthetic.speech_like(rng, seconds, sr) for _ in range(examples)])).float()
    noise = torch.from_numpy(np.stack([synthetic.colored_noise(rng, seconds, sr, 1.0) for _ in range(examples)])).float()
    return clean, noise * (clean.std(-1, keepdim=True) / noise.std(-1, keepdim=True))  # [B, T] each, noise at 0 dB


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_perceptual_losses_rank_noise_levels_as_the_metrics_do():
    from audioae.losses import pesq_loss, stoi_loss
    from audioae.metrics import pesq_wb, stoi

    clean, noise = _speech_in_noise()
    proxies, metrics = [], []
    for level in (0.02, 0.1, 0.5):  # -34, -20 and -6 dB of pink noise
        est = clean + level * noise
        proxies.append((float(pesq_loss(est, clean, 16000)), float(stoi_loss(est, clean, 16000))))
        metrics.append((np.mean([pesq_wb(e, c, 16000) for e, c in zip(est.numpy(), clean.numpy(), strict=True)]),
                        np.mean([stoi(e, c, 16000) for e, c in zip(est.numpy(), clean.numpy(), strict=True)])))
    # More noise: both losses rise while both metrics fall, and the STOI loss is -STOI.
    assert proxies[0][0] < proxies[1][0] < proxies[2][0] and proxies[0][1] < proxies[1][1] < proxies[2][1]
    assert metrics[0][0] > metrics[1][0] > metrics[2][0] and metrics[0][1] > metrics[1][1] > metrics[2][1]
    for (_, neg_stoi), (_, true_stoi) in zip(proxies, metrics, strict=True):
        assert abs(-neg_stoi - true_stoi) < 0.02
    assert abs(float(pesq_loss(clean, clean, 16000))) < 1e-6


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_our_proxies_give_torch_pesq_and_torch_stoi_values_and_gradients():
    # audioae.losses swaps torch-pesq's sample-by-sample IIR filters for FFT filters and
    # torch-stoi's per-row VAD loop for one gather (both slow on a GPU); the numbers must not move.
    from torch_pesq import PesqLoss
    from torch_stoi import NegSTOILoss

    from audioae.losses import _pesq_proxy, _stoi_proxy

    clean, noise = _speech_in_noise(examples=4)
    clean[:, 4000:9000] = 0.0  # silent frames for the STOI VAD to drop, a different count per row
    clean[1, 12000:20000] = 0.0
    for (ours, theirs, pesq) in ((_pesq_proxy(16000, "cpu"), PesqLoss(1.0, sample_rate=16000), True),
                                 (_stoi_proxy(16000, "cpu"), NegSTOILoss(16000), False)):
        grads, values = [], []
        for module in (ours, theirs):
            est = (clean + 0.2 * noise).requires_grad_(True)
            value = module(clean, est) if pesq else module(est, clean)  # [B]
            value.sum().backward()
            values.append(value.detach())
            grads.append(est.grad)
        assert torch.allclose(values[0].float(), values[1].float(), atol=1e-3 if pesq else 1e-6), values
        # torch-pesq's float32 10th-order IIR is itself off in its last digits; the FFT filters
        # use impulse responses computed in float64.
        scale = grads[1].abs().max()
        assert (grads[0] - grads[1]).abs().max() < (5e-3 if pesq else 1e-5) * scale


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_perceptual_losses_ignore_autocast():
    # Mixed-precision training must not run the proxies in half precision (fp16 overflows in
    # PESQ's level alignment; bf16 moves STOI in its third decimal): CPU autocast shows the mechanism.
    from audioae.losses import pesq_loss, stoi_loss

    clean, noise = _speech_in_noise(examples=3)
    est = clean + 0.2 * noise
    full = (float(pesq_loss(est, clean, 16000)), float(stoi_loss(est, clean, 16000)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = (float(pesq_loss(est, clean, 16000)), float(stoi_loss(est, clean, 16000)))
    assert full == half


def test_pesq_loss_leaves_out_a_silent_output_instead_of_giving_nan():
    from audioae.losses import pesq_loss

    clean, _ = _speech_in_noise(examples=3)
    est = clean.clone()
    est[1] = 0.0  # the model muted one whole crop: the proxy's level alignment would divide by 0
    est.requires_grad_(True)
    loss = pesq_loss(est, clean, 16000)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(est.grad).all()
    assert float(est.grad[1].abs().max()) == 0.0
    # The muted row adds nothing: the loss is the other rows' sum over the whole batch.
    others = pesq_loss(est.detach()[[0, 2]], clean[[0, 2]], 16000)
    assert torch.allclose(loss.detach(), others * 2 / 3, rtol=1e-5)
    silent = torch.zeros_like(clean, requires_grad=True)
    assert float(pesq_loss(silent, clean, 16000).detach()) == 0.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_perceptual_terms_train_a_denoiser_through_batch_loss():
    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": 16000, "n_fft": 256, "hop_length": 128, "hidden": 32,
                                      "code_dim": 16, "corruption": "mix"})
    clean, noise = _speech_in_noise(seconds=1.0)
    _, spec = corrupt_batch(model, clean, noise, torch.zeros(2))
    tc = TrainConfig(spectral_weight=0.0, pesq_weight=1.0, stoi_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        loss, parts = batch_loss(model, clean, spec, tc)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(parts)
    assert set(history[0]) == {"pesq", "stoi"}
    assert history[-1]["pesq"] < history[0]["pesq"] - 0.2, (history[0], history[-1])
    assert history[-1]["stoi"] < history[0]["stoi"] - 0.01, (history[0], history[-1])


def test_data_reverb_prob_of_a_run_config_puts_the_validation_targets_in_a_room(tmp_path):
    """README: a run's `data.reverb_prob` gives clean examples a synthetic room. The key, set as
    `--set` sets it, reaches the validation set too: with 1 every target's clicks ring on between
    them, with 0 the targets are the dry clicks."""
    import soundfile as sf

    from audioae.train import load_run_config, make_validation_set

    speech = tmp_path / "speech"
    speech.mkdir()
    clicks = np.zeros(16000, np.float32)
    clicks[::1600] = 0.5  # a click every 100 ms: any 0.5 s crop holds five
    sf.write(speech / "clicks.wav", clicks, 16000, subtype="FLOAT")
    model = build_model("recurrent", {"hidden": 8, "code_dim": 4})  # 16 kHz: the file's rate, no resampling
    for prob in (0, 1):
        run = load_run_config(None, [f'data.clean_dir="{speech}"', f"data.reverb_prob={prob}",
                                     "data.val_examples=4", "data.val_seconds=0.5"])
        assert run.data.reverb_prob == prob
        clean, _, _ = make_validation_set(model, run.data)
        assert clean.shape == (4, 8000)
        sounding = (clean.abs() > 1e-6).float().mean(-1)  # [4]: share of samples not silent
        if prob:
            assert (sounding > 0.5).all(), sounding  # the room's tail fills the gaps
        else:
            assert (sounding <= 5 / 8000).all(), sounding  # the clicks alone


def test_fit_arrays_refuses_data_it_cannot_fit_and_stops_at_a_non_finite_loss():
    """Were silent: an empty set or batch_size=0 "trained" with a NaN loss every step, and a NaN
    in the data (or a diverging rate) left every weight NaN."""
    model = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": 8})
    x = torch.rand(50, 64)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for bad, kw, text in [(x[:0], {}, r"no data to fit: x has shape \(0, 64\)"),
                          (x, {"batch_size": 0}, "batch_size >= 1"),
                          (torch.where(x > 0.99, torch.nan, x), {}, "NaN or Inf in x"),
                          ((x * 255).round().to(torch.uint8), {}, "floating-point data")]:
        with pytest.raises(ValueError, match=text):
            fit_arrays(model, bad, steps=3, **kw)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    big = 1e19 * torch.ones(50, 64)  # squared error of 1e38 and more: inf in float32 at the first step
    with pytest.raises(ValueError, match="the loss is inf at step 1 of 3"):
        fit_arrays(model, big, steps=3)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert len(fit_arrays(model, x, steps=3)) == 3


def _quiet_mixture(model, dbfs: float, seconds: float = 2.0):
    """A validation set of one speech-like mixture at 5 dB SNR whose mix is at ``dbfs`` (RMS)."""
    rng = np.random.default_rng(0)
    sr = model.config.sample_rate
    clean = torch.from_numpy(synthetic.speech_like(rng, seconds, sr).astype(np.float32))[None]  # [1, T]
    noise = torch.from_numpy(synthetic.noise(rng, seconds, sr, "pink").astype(np.float32))[None]  # [1, T]
    noise = noise * clean.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt() / 10 ** (5 / 20)
    gain = 10 ** (dbfs / 20) / (clean + noise).pow(2).mean().sqrt()
    return clean * gain, noise * gain, torch.tensor([5.0])


@pytest.mark.parametrize("dbfs", [-25.0, -60.0])
def test_validation_scores_what_denoise_outputs_also_for_quiet_input(dbfs, monkeypatch):
    """Training validation (which keeps best.safetensors) runs the network as denoise() runs it,
    level lift included: at -60 dBFS the lift is much of the score, and validation without it (its
    former own path) scored the shipped denoiser 3.2 dB under what `audioae denoise` gave (SI-SDR
    4.48 against 7.67; docs/training.md, "Validation and progress")."""
    from audioae import pretrained, train
    from audioae.enhance import LevelLift, denoise
    from audioae.train import _val_mix, score_denoised, validate

    model = pretrained.load("denoiser-small").eval()
    val_set = _quiet_mixture(model, dbfs)
    clean, noisy, _ = _val_mix(model, val_set)
    served = si_sdr(denoise(model, noisy[0].numpy(), model.config.sample_rate), clean[0].numpy())
    validated = validate(model, val_set, ("si_sdr",))
    model.eval()  # validate() leaves a model in training mode, as the training loop wants it
    assert validated["si_sdr"] == pytest.approx(served, abs=1e-3)
    assert score_denoised(model, val_set, ("si_sdr",))["si_sdr"] == pytest.approx(served, abs=1e-6)
    unlifted = validate(model, val_set, ("si_sdr",), level_lift=LevelLift(max_gain_db=0.0))["si_sdr"]
    if dbfs == -25.0:  # trained levels: nothing lifted, the same scores to the bit
        assert unlifted == validated["si_sdr"]
    else:
        assert unlifted < served - 3
        # validate()'s default is the module's lift as it is at the call, not as it was at import
        monkeypatch.setattr(train.validation, "VALIDATION_LEVEL_LIFT", LevelLift(max_gain_db=0.0))
        assert validate(model, val_set, ("si_sdr",))["si_sdr"] == unlifted
