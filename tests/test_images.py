"""The image autoencoders: the three unpooling methods train, denoising raises PSNR, the linear
autoencoder finds PCA's subspace, patches round-trip, and ``audioae images report`` writes its files."""

import json
import re

import numpy as np
import pytest
import torch

from audioae.checkpoint import load_checkpoint, save_checkpoint
from audioae.cli import main
from audioae.data.images import (
    TEST_PHOTOGRAPH,
    image_to_patches,
    load_digit_images,
    load_photograph,
    patches_to_image,
    photograph_patches,
)
from audioae.images import psnr, reconstruct_image
from audioae.models import build_model
from audioae.models.image import UNPOOLING, corrupt_images
from audioae.train import fit_arrays


@pytest.fixture(scope="module")
def digits():
    x, y = load_digit_images()
    return x, y


def _tiny_image(**extra):
    cfg = {"image_size": (8, 8), "channels": (8, 16), "code_dim": 8}
    cfg.update(extra)
    return build_model("image", cfg)


def _mse(model, x):
    with torch.no_grad():
        return float((model(x)[0] - x).pow(2).mean())


@pytest.mark.parametrize("unpool", UNPOOLING)
def test_each_unpooling_method_trains(digits, unpool):
    x = digits[0]
    train, test = x[:600], x[600:900]
    torch.manual_seed(0)
    model = _tiny_image(unpool=unpool)
    before = _mse(model, test)
    hist = fit_arrays(model, train, steps=150, batch_size=64, lr=1e-2, seed=0)
    after = _mse(model, test)
    assert np.mean(hist[-10:]) < 0.5 * np.mean(hist[:10])
    # Better than the best constant image (the mean digit): the code carries information.
    assert after < 0.8 * float((test - train.mean(0)).pow(2).mean()), (unpool, before, after)
    out, h = model(test[:5])
    assert out.shape == test[:5].shape and h.shape == (5, 8)


def test_maxunpool_cannot_decode_a_bare_code_but_the_others_can(digits):
    x = digits[0][:4]
    with torch.no_grad():
        h = _tiny_image(unpool="maxunpool").encode(x)
        with pytest.raises(ValueError, match="pooling indices"):
            _tiny_image(unpool="maxunpool").decode(h)
        for unpool in ("nearest", "transposed"):
            model = _tiny_image(unpool=unpool).eval()
            out, code = model(x)
            assert torch.equal(model.decode(code), out)


def test_transposed_unpooling_adds_parameters_and_nearest_does_not():
    counts = {u: _tiny_image(unpool=u).num_parameters() for u in UNPOOLING}
    assert counts["nearest"] == counts["maxunpool"]
    # One 3x3 transposed convolution per level: 16*16*9 + 16 and 8*8*9 + 8.
    assert counts["transposed"] - counts["nearest"] == 16 * 16 * 9 + 16 + 8 * 8 * 9 + 8


@pytest.mark.parametrize("unpool", UNPOOLING)
def test_image_checkpoint_round_trip(tmp_path, unpool):
    model = _tiny_image(unpool=unpool, sparsity="l1", sparsity_weight=0.1, code_activation="relu").eval()
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    x = model.example_input(3)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert loaded.config.unpool == unpool


def test_bad_inputs_and_configs_fail_clearly():
    model = _tiny_image()
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        model.encode(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"codes \[B, 8\]"):
        model.decode(torch.rand(2, 5))
    with pytest.raises(ValueError, match="multiples of 2\\*\\*levels"):
        build_model("image", {"image_size": (12, 12), "channels": (4, 8, 16)})
    with pytest.raises(ValueError, match="image corruption"):
        build_model("image", {"corruption": "mix"})
    with pytest.raises(ValueError, match="bundled"):
        load_photograph("eagle")  # in skimage.data, but fetched from the network


@pytest.mark.parametrize(("h", "w", "stride"), [(37, 50, 4), (16, 16, 16), (64, 23, 5)])
def test_patches_round_trip_any_size(h, w, stride):
    img = torch.rand(h, w)
    patches, padded = image_to_patches(img, 16, stride)
    assert patches.shape[1:] == (1, 16, 16)
    assert torch.allclose(patches_to_image(patches, padded, (h, w), stride), img, atol=1e-6)


def test_denoising_raises_psnr():
    torch.manual_seed(0)
    train = photograph_patches(("astronaut", "coffee", "brick", "coins"), size=16, per_image=150, seed=0)
    clean = torch.from_numpy(load_photograph(TEST_PHOTOGRAPH))[64:128, 64:128]  # held out  # [64, 64]
    model = build_model("image", {"channels": (8, 16), "code_dim": 32, "corruption": "gaussian",
                                  "noise_std": 0.2})
    noisy = corrupt_images(clean, model.config, torch.Generator().manual_seed(1))  # [64, 64]
    untrained = psnr(reconstruct_image(model, noisy), clean)
    fit_arrays(model, train, steps=250, batch_size=64, lr=3e-3, seed=0,
               corrupt=lambda b, g: corrupt_images(b, model.config, g))
    before, after = psnr(noisy, clean), psnr(reconstruct_image(model, noisy), clean)
    assert after > before + 2.0, (before, after, untrained)
    assert untrained < before  # the gain is learned, not a property of the architecture
    as_array = reconstruct_image(model, noisy.numpy().astype(np.float64))  # what skimage and PIL hand over
    torch.testing.assert_close(as_array, reconstruct_image(model, noisy), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="img / 255"):
        reconstruct_image(model, (noisy.numpy() * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=re.escape("img.mean(-1)")):
        reconstruct_image(model, noisy[..., None].expand(-1, -1, 3).numpy())
    with pytest.raises(ValueError, match=r"spans \d+\.\.255; for 0\.\.255 levels pass img / 255"):
        reconstruct_image(model, (clean * 255).round().clamp(0, 255).numpy().astype(np.float32))  # floats, 8-bit levels
    with pytest.raises(ValueError, match="NaN or Inf"):
        reconstruct_image(model, torch.where(clean > 0.5, clean, torch.nan))


def test_darkened_patches_corruption_darkens_about_the_fraction():
    x = torch.rand(8, 1, 16, 16) + 0.1
    cfg = build_model("image", {"corruption": "patches", "patch_fraction": 0.25, "patch_size": (4, 4)}).config
    y = corrupt_images(x, cfg, torch.Generator().manual_seed(0))
    dark = float((y == 0).float().mean())
    assert 0.1 < dark <= 0.25 + 1e-6  # patches may overlap: at most the fraction
    assert torch.equal(y[y != 0], x[y != 0])


def test_linear_autoencoder_matches_pca(digits):
    from sklearn.decomposition import PCA

    x = digits[0].reshape(len(digits[0]), -1)[:1000]  # [N, 64]
    k = 4  # the 4th and 5th eigenvalues are well apart (ratio 0.64): a well-defined subspace
    pca = PCA(k).fit(x.numpy())
    pca_mse = float(((pca.inverse_transform(pca.transform(x.numpy())) - x.numpy()) ** 2).mean())
    torch.manual_seed(0)
    lin = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": k})
    fit_arrays(lin, x, steps=600, batch_size=len(x), lr=3e-2, seed=0)  # full batch: converges tightly
    lin_mse = _mse(lin, x)
    assert lin_mse == pytest.approx(pca_mse, rel=0.01), (lin_mse, pca_mse)
    assert lin_mse >= pca_mse * (1 - 1e-4)  # PCA is optimal: nothing linear does better
    # Same subspace: the cosines of the principal angles between the decoder's columns and the
    # top-k principal components are all close to one.
    q_dec, _ = torch.linalg.qr(lin.decoder.weight.detach().double())  # [64, k]
    q_pca = torch.from_numpy(pca.components_.T).double()  # [64, k], orthonormal
    cosines = torch.linalg.svdvals(q_dec.T @ q_pca)
    assert float(cosines.min()) > 0.98, cosines


@pytest.mark.parametrize(("override", "text"), [("digit_steps=abc", "digit_steps = 'abc': expected int"),
                                                ("nope=1", "has no key(s) ['nope']"),
                                                ("code_sizes", "expected KEY=VALUE"),
                                                ("digit_steps=0", "digit_steps must be at least 1, got 0"),
                                                ("code_sizes=[]", "code_sizes must be a non-empty list"),
                                                ("code_sizes=[2,8,100]", "within 1..64 (the digits' pixels)")])
def test_report_overrides_are_checked_before_anything_runs(tmp_path, capsys, override, text):
    assert main(["images", "report", "-o", str(tmp_path / "r"), "--quick", "--set", override]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_into_an_existing_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    assert main(["images", "report", "-o", str(tmp_path / "taken"), "--quick"]) == 2  # was a FileExistsError traceback
    assert "is an existing file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine"


def test_report_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["images", "report", "-o", str(out), "--quick", "--threads", "1"]) == 0
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    numbers = json.loads((out / "report.json").read_text())
    for key in ("dimensionality", "denoising", "sparsity", "unpooling", "generation", "config", "seconds"):
        assert key in numbers
    d = numbers["dimensionality"]
    assert len(d["mse"]["pca"]) == len(d["mse"]["conv"]) == len(d["code_sizes"])
    assert 0.5 < d["accuracy"]["raw_pixels"] <= 1.0
    assert {r["method"] for r in numbers["unpooling"]["runs"]} == set(UNPOOLING)
    assert numbers["denoising"]["gaussian"]["psnr_in"] < 20
    assert "## Denoising" in (out / "summary.md").read_text()
    assert "## Denoising" in capsys.readouterr().out
    # Every saved model loads strictly and is listed.
    for rel in numbers["models"]:
        model = load_checkpoint(out / rel)
        with torch.no_grad():
            model(model.example_input(2))
