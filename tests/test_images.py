"""The image autoencoders: the three unpooling methods train, denoising raises PSNR, the linear
autoencoder finds PCA's subspace, patches round-trip, and ``audioae images report`` writes its files."""

import dataclasses
import json
import re
import warnings

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
from audioae.models.image import UNPOOLING, check_grey_levels, corrupt_images
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


def _dense_sparse(**extra):
    """The report's sparse autoencoder, small: one dense layer each way, unit-norm atoms."""
    cfg = {"image_size": (8, 8), "channels": (), "code_dim": 16, "code_activation": "relu", "output_activation": "none",
           "unit_norm_atoms": True, "subtract_decoder_bias": True, "sparsity": "l1", "sparsity_weight": 0.1}
    cfg.update(extra)
    return build_model("image", cfg)


def test_unit_norm_atoms_leave_a_penalty_no_scale_to_dodge(digits):
    """With free decoder columns, h / c and c * W_d decode the same for an L1 penalty c times
    smaller: L1 then shrinks the code and kills units instead of sparsifying it. Unit-norm atoms
    make the stored scale irrelevant; the encoder starts tied to them with no bias."""
    torch.manual_seed(0)
    model = _dense_sparse().eval()
    w = model.from_code.weight  # [64, K]
    torch.testing.assert_close(w.norm(dim=0), torch.ones(16))
    assert torch.equal(model.to_code.weight, w.T) and not model.to_code.bias.any()
    x = digits[0][:8]  # [8, 1, 8, 8]
    with torch.no_grad():
        out, h = model(x)
        w.mul_(10.0)  # what the dodge does to the decoder
        torch.testing.assert_close(model.decode(h), out)
        torch.testing.assert_close(model.atoms().norm(dim=1), torch.ones(16))
        # The encoder sees x - b_d (b_d in pixels); the decoder adds b_d back.
        model.from_code.bias.fill_(0.25)
        torch.testing.assert_close(model.encode(x), torch.relu(model.to_code(x.flatten(1) - 0.25)))
        torch.testing.assert_close(model.decode(h), (h @ model.atoms() + 0.25).view(-1, 1, 8, 8))
    free = _dense_sparse(unit_norm_atoms=False, subtract_decoder_bias=False).eval()
    with torch.no_grad():
        out, h = free(x)
        free.from_code.weight.mul_(10.0)
        assert not torch.allclose(free.decode(h), out)  # free columns: the scale is the model's to move


def test_dense_sparse_autoencoder_round_trips_and_refuses_what_it_cannot_do(tmp_path):
    model = _dense_sparse().eval()
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    x = model.example_input(3)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert loaded.config.unit_norm_atoms and loaded.config.channels == ()
    with pytest.raises(ValueError, match="unit_norm_atoms needs channels=()"):
        _dense_sparse(channels=(4, 8))  # after conv levels the scale can move into the later layers
    with pytest.raises(ValueError, match="subtract_decoder_bias needs"):
        _dense_sparse(output_activation="sigmoid")  # the decoder's bias would be in logits, not pixels


def test_the_reports_l1_code_is_sparse_where_l2_only_shrinks():
    """The report's sparse-code runs (its penalty weights, half its steps: the table barely
    moves). L1 must make each digit use a small share of the 128 units, far smaller than L2 at
    about the same error, with the units alive: the old runs (a conv autoencoder with free
    decoder weights) did the opposite, L1 0.003 keeping 14 of 128 units live and using 97% of
    them for every digit, and 36 to 42 units were dead from initialisation."""
    from audioae.images import ReportConfig
    from audioae.images.experiments import load_digits_split, sparse_codes

    cfg = ReportConfig()
    cfg = dataclasses.replace(cfg, sparse_steps=cfg.sparse_steps // 2,
                              sparse_runs=tuple(r for r in cfg.sparse_runs if r[0] != "none"))
    numbers, arrays, _ = sparse_codes(cfg, load_digits_split(cfg))
    runs = {(r["penalty"], r["weight"]): r for r in numbers["runs"]}
    l1 = sorted((r for r in runs.values() if r["penalty"] == "l1"), key=lambda r: r["weight"])
    l2 = sorted((r for r in runs.values() if r["penalty"] == "l2"), key=lambda r: r["weight"])
    assert len(l1) >= 2 and len(l2) >= 2
    for r in runs.values():  # almost no dead unit, at the start or after training
        assert r["live_units_at_init"] >= 0.97 * r["code_dim"] and r["dead_units"] <= 0.03 * r["code_dim"], r
    for a in l1:
        b = min(l2, key=lambda r: abs(np.log(r["mse"] / a["mse"])))  # the L2 run of the nearest error
        assert 2 / 3 < a["mse"] / b["mse"] < 3 / 2, (a, b)  # a fair comparison
        assert a["active_share_of_live"] < 0.75 * b["active_share_of_live"], (a, b)
        assert a["top_energy_share"] > b["top_energy_share"] + 0.15, (a, b)
    # A stronger L1 uses fewer units per digit; a stronger L2 about as many, each smaller.
    assert l1[-1]["mean_active_units"] < 0.6 * l1[0]["mean_active_units"]
    assert l2[-1]["mean_active_units"] > 0.8 * l2[0]["mean_active_units"]
    assert l2[-1]["mean_abs_code"] < l2[0]["mean_abs_code"]
    assert {k: v.shape for k, v in arrays["atoms"].items()} == {f"{p} {w:g}": (128, 8, 8) for p, w in runs}


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
    with pytest.raises(ValueError, match=r"all of it \d+\.\.255; .* for 0\.\.255 levels pass img / 255"):
        reconstruct_image(model, (clean * 255).round().clamp(0, 255).numpy().astype(np.float32))  # floats, 8-bit levels
    with pytest.raises(ValueError, match="NaN or Inf"):
        reconstruct_image(model, torch.where(clean > 0.5, clean, torch.nan))


def test_patches_need_batched_images_and_say_which_shape():
    """Was a bare IndexError (from ``b = lead[0]``) for an unbatched image and for flat [B, D] images."""
    from audioae.models.corruption import darken_patches

    with pytest.raises(ValueError, match=re.escape("needs a batch [B, ..., H, W]") + ".*got shape \\[16, 16\\]"):
        darken_patches(torch.ones(16, 16), 0.15, (4, 4))
    cfg = build_model("image", {"corruption": "patches", "patch_fraction": 0.15}).config
    with pytest.raises(ValueError, match=re.escape("images [B, 1, 16, 16], got shape [8, 256]")):
        corrupt_images(torch.ones(8, 256), cfg)
    assert corrupt_images(torch.ones(8, 1, 16, 16), cfg).shape == (8, 1, 16, 16)  # the shape it asks for works


def test_an_l1_penalty_on_a_linear_image_code_warns_that_it_gives_no_zeros(tmp_path):
    """Was silent: sparsity "l1" with the image family's default linear code trained a code with no
    exact zero at all. The warning is not a refusal, and comes where the model is trained, once,
    pointing at the caller: from the config it pointed into the dataclass' ``__init__`` and fired
    on every load of such a checkpoint."""
    settings = {"image_size": (8, 8), "channels": (), "code_dim": 128, "sparsity": "l1", "sparsity_weight": 0.1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model("image", settings)  # building and loading stay quiet
        save_checkpoint(model, tmp_path / "l1.safetensors")
        load_checkpoint(tmp_path / "l1.safetensors")
    with pytest.warns(UserWarning, match="leaves no unit exactly zero.*code_activation='relu'") as said:
        model.train()
    assert len(said) == 1 and said[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.train()  # once per model
    with pytest.warns(UserWarning, match="leaves no unit exactly zero"):
        fit_arrays(build_model("image", settings), torch.rand(8, 1, 8, 8), steps=1)
    with torch.no_grad():
        assert not (model.encode(model.example_input(16)) == 0).any()  # what the warning says: no zeros
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relu = build_model("image", {**settings, "code_activation": "relu"})
        relu.train()
        build_model("image", {"sparsity": "l2", "sparsity_weight": 0.1}).train()  # L2 promises no zeros
    with torch.no_grad():
        assert (relu.encode(relu.example_input(16)) == 0).any()


def test_darkened_patches_corruption_darkens_about_the_fraction():
    x = torch.rand(8, 1, 16, 16) + 0.1
    cfg = build_model("image", {"corruption": "patches", "patch_fraction": 0.25, "patch_size": (4, 4)}).config
    y = corrupt_images(x, cfg, torch.Generator().manual_seed(0))
    assert 0.2 < float((y == 0).float().mean()) < 0.3
    assert torch.equal(y[y != 0], x[y != 0])


@pytest.mark.parametrize(("shape", "patch"), [((400, 1, 16, 16), (4, 4)), ((400, 1, 8, 8), (4, 4)),
                                              ((40, 64, 64), (4, 4)), ((100, 33, 20), (16, 8))])
@pytest.mark.parametrize("fraction", [0.01, 0.15, 0.5, 0.9])
def test_darkened_share_follows_the_fraction_for_any_size(shape, patch, fraction):
    """Counting patches missed the share once they overlapped (16x16 inputs, 4x4 patches: 0.12 dark
    at 0.15, 0.06 at 0.01, 0.60 at 1): the mean dark share is now the fraction asked for."""
    from audioae.models.corruption import darken_patches

    x = torch.rand(shape) + 0.1  # no zero of its own
    y = darken_patches(x, fraction, patch, torch.Generator().manual_seed(3))
    share = (y == 0).flatten(1).double().mean(1)  # [B] per example
    # Tolerance: 4 standard errors of the mean, and no less than a hundredth.
    tol = max(0.01, 4 * float(share.std()) / len(share) ** 0.5)
    assert float(share.mean()) == pytest.approx(fraction, abs=tol), (float(share.mean()), tol)
    assert torch.equal(y[y != 0], x[y != 0])  # the rest is untouched
    if len(shape) == 4:  # one mask for every channel
        assert torch.equal((y == 0).all(1), (y == 0).any(1))


def test_darkened_patches_edge_cases():
    from audioae.models.corruption import darken_patches

    x = torch.rand(4, 1, 16, 16) + 0.1
    assert darken_patches(x, 0.0, (4, 4)) is x  # fraction 0 darkened one patch per input
    assert not darken_patches(x, 1.0, (4, 4)).any()
    assert not darken_patches(x, 0.3, (4, 4)).equal(darken_patches(x, 0.3, (4, 4)))  # random without a generator
    gen = [torch.Generator().manual_seed(1) for _ in range(2)]
    assert darken_patches(x, 0.3, (4, 4), gen[0]).equal(darken_patches(x, 0.3, (4, 4), gen[1]))  # fixed with one
    spec = torch.randn(2, 65, 30, dtype=torch.complex64) + 0.1  # time-frequency patches of an STFT
    out = darken_patches(spec, 0.2, (16, 8), torch.Generator().manual_seed(0))
    assert out.dtype == spec.dtype and 0.1 < float((out == 0).double().mean()) < 0.3
    with pytest.raises(ValueError, match="fraction must be within 0..1"):
        darken_patches(x, 1.5, (4, 4))


@pytest.mark.parametrize("noise_std", [0.3, 0.5, 1.0])
def test_noisy_images_are_reconstructed_and_0_255_levels_are_refused(noise_std):
    """Gaussian noise pushes [0, 1] levels past either end (std 0.3 on 'camera': -1.2..1.95), which
    the old min/max guard refused after minutes of training; 8-bit levels must still be refused.
    1.0 is the largest noise_std the report accepts."""
    model = build_model("image", {"channels": (4, 8), "code_dim": 8, "corruption": "gaussian",
                                  "noise_std": noise_std})
    clean = torch.from_numpy(load_photograph(TEST_PHOTOGRAPH, 0.5))  # [256, 256]
    gen = torch.Generator().manual_seed(0)
    for img in (clean, torch.ones(64, 64), torch.zeros(64, 64)):  # the white and black ones are the worst cases
        noisy = corrupt_images(img[None, None], model.config, gen)[0, 0]  # [H, W]
        assert float(noisy.min()) < 0 or float(noisy.max()) > 1
        assert reconstruct_image(model, noisy).shape == img.shape
    for levels in (clean * 255, clean * 60, torch.zeros(64, 64).index_fill_(0, torch.arange(8), 255)):
        with pytest.raises(ValueError, match="for 0..255 levels pass img / 255"):
            reconstruct_image(model, levels)


def test_the_grey_level_check_takes_single_noisy_digits_and_widens_with_the_noise_std():
    """At std 1 the old band (98% within -3..4) refused a few in a thousand single noisy 8x8 digits; a model
    trained with noise_std 2 had its own training inputs refused. 0..255 digits stay refused."""
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images[:, None] / 16)  # [1797, 1, 8, 8] in [0, 1]
    for std in (1.0, 2.0):
        cfg = build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8,
                                    "corruption": "gaussian", "noise_std": std}).config
        for rep in range(2):
            noisy = corrupt_images(digits, cfg, torch.Generator().manual_seed(rep))
            for one in noisy:
                check_grey_levels(one, noise_std=cfg.noise_std)
        for one in digits * 255:
            with pytest.raises(ValueError, match="for 0..255 levels pass img / 255"):
                check_grey_levels(one, noise_std=cfg.noise_std)
    with pytest.raises(ValueError, match=r"98% within -4\.\.5 and all within \+-64"):
        check_grey_levels(corrupt_images(digits, cfg, torch.Generator().manual_seed(0)).flatten()[None] * 3)


def test_reconstruct_image_takes_an_image_as_noisy_as_its_model_was_trained_on():
    """A noise_std 2 model's reconstruct_image refused images noised as it was trained (std-1 band)."""
    from audioae.images import reconstruct_image

    model = build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8, "corruption": "gaussian",
                                  "noise_std": 2.0})
    img = torch.rand(32, 32, generator=torch.Generator().manual_seed(0))  # [H, W] in [0, 1]
    noisy = img + 2.0 * torch.randn(32, 32, generator=torch.Generator().manual_seed(1))  # [H, W]
    assert reconstruct_image(model, noisy).shape == (32, 32)
    with pytest.raises(ValueError, match="for 0..255 levels pass img / 255"):
        reconstruct_image(model, img * 255)


def test_the_report_denoises_with_strong_noise():
    """The denoising experiment with noise_std 0.3 and 0.5 (0.3 failed in reconstruct_image)."""
    from audioae.images import ReportConfig
    from audioae.images.experiments import denoising, load_photos

    cfg = ReportConfig.quick(photo_steps=3, patches_per_image=4, noise_std=0.3)
    photos = load_photos(cfg)
    for std in (0.3, 0.5):
        numbers, _, models = denoising(dataclasses.replace(cfg, noise_std=std), photos, None)
        assert numbers["gaussian"]["noise_std"] == std and numbers["gaussian"]["psnr_in"] < 12
        assert models["photo-denoise-gaussian"].config.noise_std == std
        assert numbers["patches"]["dark_fraction_measured"] == pytest.approx(cfg.dark_fraction, abs=0.01)


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


@pytest.fixture
def no_experiments(monkeypatch):
    """The report must not start: a refused setting costs no training and makes no folder."""
    import audioae.images

    def refuse(*args, **kwargs):
        raise AssertionError("run_report started: the settings were not checked first")

    monkeypatch.setattr(audioae.images, "run_report", refuse)


@pytest.mark.parametrize(("args", "text"), [
    (["--set", "digit_steps=abc"], "digit_steps = 'abc': expected int"),
    (["--set", "nope=1"], "has no key(s) ['nope']"),
    (["--set", "code_sizes"], "expected KEY=VALUE"),
    (["--set", "digit_steps=0"], "digit_steps = 0: expected at least 1"),
    (["--set", "code_sizes=[]"], "code_sizes = []: expected a non-empty list"),
    (["--set", "code_sizes=[2,8,100]"], "within 1..64 (the digits' pixels)"),
    # Each of these used to fail late (after minutes of training), or in a library whose message
    # names its own parameter (train_test_split's test_size, random_state), not the option.
    (["--set", "dpi=0"], "dpi = 0: expected an integer within 1..600"),
    (["--set", "test_fraction=1.5"], "test_fraction = 1.5: expected a fraction strictly between 0 and 1"),
    (["--seed", "-1"], "seed = -1: expected an integer within 0..4294967295"),
    (["--set", "channels=[]"], "channels = []: expected a list of 1 to 3 positive channel counts"),
    (["--set", "unpool=foo"], "unpool = 'foo': expected one of nearest, transposed"),
    (["--set", 'sparse_runs=[["l3",0.1]]'], "sparse_runs = [['l3', 0.1]]: expected a non-empty list of "
                                            "[penalty, weight] pairs, penalty one of none, l1, l2"),
    (["--set", "image_scale=0"], "image_scale = 0: expected a factor in (0, 1]"),
    (["--set", "noise_std=-1"], "noise_std = -1: expected a positive standard deviation"),
    (["--set", "tsne_perplexity=500"], "tsne_perplexity = 500: expected at most (points - 1) / 3 = 39.66: the "
                                       "2-D map has 120 points"),
])
def test_report_settings_are_checked_before_anything_runs(tmp_path, capsys, no_experiments, args, text):
    assert main(["images", "report", "-o", str(tmp_path / "r"), "--quick", "--no-models", *args]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("changes", "text"), [
    ({"test_fraction": 0.001}, "test_fraction = 0.001: expected within 0.0051..0.9643: it leaves 1795 train / 2 test"),
    ({"test_fraction": 1}, "it leaves 0 train / 1797 test"),
    ({"seed": 2**32}, "seed = 4294967296"),
    ({"channels": (4, 8, 16, 32)}, "channels = [4, 8, 16, 32]: expected a list of 1 to 3"),
    ({"channels": (4, 0)}, "channels = [4, 0]"),
    ({"unpool": "maxunpool"}, "maxunpool cannot decode a bare code"),
    ({"code_sizes": (2, 2, 8)}, "code_sizes = [2, 2, 8]: expected a list without repeats"),
    ({"map_code_dim": 4}, "map_code_dim = 4: expected one of code_sizes [2, 8]"),
    # Was reached with code_sizes alone and did not say how to fix it.
    ({"code_sizes": (2, 4)}, "map_code_dim = 8: expected one of code_sizes [2, 4] (the conv AE whose codes are "
                             "mapped in 2-D and perturbed; 8 unless set): set it with the code sizes, e.g. "
                             "--set map_code_dim=4"),
    ({"map_points": 5}, "map_points = 5: expected 0 (every test digit) or at least 10"),
    ({"map_points": 0, "tsne_perplexity": 200.0}, "at most (points - 1) / 3 = 199.33: the 2-D map has 599 points"),
    ({"tsne_perplexity": 0.0}, "tsne_perplexity = 0.0: expected a positive perplexity"),
    ({"lr": float("nan")}, "lr = nan: expected a positive learning rate"),
    ({"linear_lr": 0.0}, "linear_lr = 0.0: expected a positive learning rate"),
    ({"patches_per_image": 0}, "patches_per_image = 0: expected at least 1"),
    ({"photo_code_dim": 0}, "photo_code_dim = 0"),
    ({"sparse_code_dim": 0}, "sparse_code_dim = 0"),
    ({"sparse_steps": 0}, "sparse_steps = 0: expected at least 1"),
    ({"patch": 0}, "patch = 0: expected a positive multiple of 2**levels = 4"),
    ({"patch": 18}, "patch = 18"),
    ({"image_scale": 2.0}, "image_scale = 2.0: expected a factor in (0, 1]"),
    ({"image_scale": 0.05}, "image_scale = 0.05: expected at least 0.094: the smallest photograph ('text', 172"),
    ({"noise_std": 0.0}, "noise_std = 0.0"),
    ({"dark_fraction": 0.0}, "dark_fraction = 0.0: expected a share of the pixels in (0, 1]"),
    ({"dark_patch": (4, 40)}, "dark_patch = [4, 40]: expected two sizes [rows, cols] within 1..patch / 2 = 8"),
    # As large as the training patch: every training input was blacked out.
    ({"dark_patch": (16, 16)}, "dark_patch = [16, 16]: expected two sizes [rows, cols] within 1..patch / 2 = 8: a "
                               "darkened patch as large as the 16x16 training patch blacks out whole inputs"),
    ({"dark_patch": (9, 2)}, "dark_patch = [9, 2]"),
    ({"noise_std": 1.5}, "noise_std = 1.5: expected a positive standard deviation of at most 1"),
    ({"linear_fine_steps": -1}, "linear_fine_steps = -1: expected an integer of at least 0"),
    ({"sparse_runs": ()}, "sparse_runs = []"),
    ({"sparse_runs": (("kl", 0.1),)}, "kl needs sigmoid codes"),
    ({"sparse_runs": (("l1", -0.1),)}, "sparse_runs = [['l1', -0.1]]"),
    ({"sparse_runs": (("l1", 0.1), ("l1", 0.1))}, "expected a list without repeats"),
    ({"perturb_scales": ()}, "perturb_scales = []"),
    ({"perturb_scales": (1.0, -1.0)}, "perturb_scales = [1.0, -1.0]"),
    ({"interpolation_steps": 2}, "interpolation_steps = 2: expected an integer of at least 3"),
    ({"gaussian_samples": 3}, "gaussian_samples = 3: expected at least 24 (the figure shows 24)"),
    ({"dpi": 601}, "dpi = 601"),
])
def test_report_config_names_the_setting_its_value_and_what_it_accepts(changes, text):
    from audioae.images import ReportConfig

    with pytest.raises(ValueError) as err:
        ReportConfig.quick(**changes)
    assert text in str(err.value)


def test_report_config_accepts_its_limits():
    from audioae.images import ReportConfig

    ReportConfig()
    for changes in ({"test_fraction": 0.0051, "map_points": 0, "tsne_perplexity": 3.0},
                    {"test_fraction": 0.9643}, {"image_scale": 0.094}, {"tsne_perplexity": 39.66},
                    {"map_points": 0, "tsne_perplexity": 199.33}, {"seed": 2**32 - 1}, {"dpi": 600},
                    {"channels": (4, 8, 16)}, {"patch": 8, "dark_patch": (4, 4)},
                    {"dark_patch": (8, 1)}, {"noise_std": 1.0}, {"linear_fine_steps": 0}, {"unpool": "nearest"},
                    {"sparse_runs": (("l1", 0.01),)}, {"perturb_scales": (0.0,)}):
        ReportConfig.quick(**changes)


def test_report_config_limits_match_the_data():
    """The checks use the data's sizes without loading it: they must be the real ones."""
    from skimage import data
    from sklearn.model_selection import train_test_split

    from audioae.data.images import TRAIN_PHOTOGRAPHS
    from audioae.images import ReportConfig
    from audioae.images.experiments import DIGITS, SMALLEST_PHOTOGRAPH

    y = load_digit_images(8)[1]
    assert len(y) == DIGITS
    for fraction in (0.0051, 1 / 3, 0.9643):
        cfg = ReportConfig(test_fraction=fraction, tsne_perplexity=3.0)
        tr, te = train_test_split(np.arange(len(y)), test_size=fraction, random_state=0, stratify=y)
        assert cfg.digit_split() == (len(tr), len(te))
        assert len(set(y[te])) == 10  # every class in the test set: generation shows one of each
    sides = {name: min(np.asarray(getattr(data, name)()).shape[:2]) for name in (*TRAIN_PHOTOGRAPHS, TEST_PHOTOGRAPH)}
    name = min(sides, key=sides.get)
    assert SMALLEST_PHOTOGRAPH == (sides[name], name)
    assert min(load_photograph(name, 0.094).shape) >= 16  # the smallest scale accepted for 16-pixel patches


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
    # The perplexity asked for is the one used (it was once lowered silently).
    assert numbers["dimensionality"]["map"]["tsne_perplexity"] == numbers["config"]["tsne_perplexity"]
    assert numbers["denoising"]["gaussian"]["psnr_in"] < 20
    # The linear AE against PCA: the largest principal angle per code size, in both files.
    assert len(d["linear_pca_max_angle_deg"]) == len(d["code_sizes"])
    assert all(0 <= a <= 90 for a in d["linear_pca_max_angle_deg"])
    for r in numbers["sparsity"]["runs"]:
        assert r["live_units"] + r["dead_units"] == numbers["sparsity"]["code_dim"]
        assert r["mean_active_units"] <= r["live_units"] + 1e-3
        assert 0 < r["top_energy_share"] <= 1
    summary = (out / "summary.md").read_text()
    # The encoder's rows, off PCA's subspace only along the 4 pixels that are 0 in every training digit.
    assert d["data_span_dim"] == 60
    for full, in_span in zip(d["linear_encoder_pca_max_angle_deg"], d["linear_encoder_pca_max_angle_in_span_deg"],
                             strict=True):
        assert 0 <= in_span <= full <= 90
    for text in ("## Denoising", "largest angle, linear AE decoder to PCA", "The encoder's rows are",
                 "live units (of 32)", "active share of live",
                 "code energy in its 8 largest units", "whole-image PSNR"):
        assert text in summary, text
    assert "## Denoising" in capsys.readouterr().out
    # Every saved model loads strictly and is listed.
    for rel in numbers["models"]:
        model = load_checkpoint(out / rel)
        with torch.no_grad():
            model(model.example_input(2))


def test_a_late_failure_keeps_the_numbers_and_the_models(tmp_path, capsys):
    """Writing the figure fails after every experiment ran (here a folder sits where report.png
    goes; a full disk would do the same): report.json, summary.md and the models are already written."""
    out = tmp_path / "r"
    (out / "report.png").mkdir(parents=True)
    # Tiny budgets; no 'none' sparse run: the figure draws without it.
    tiny = ["digit_steps=3", "photo_steps=3", "linear_steps=3", "code_sizes=[8]", "patches_per_image=4",
            'sparse_runs=[["l1",0.01]]', "perturb_scales=[1.0]", "gaussian_samples=24"]
    args = ["images", "report", "-o", str(out), "--quick", "--threads", "1"]
    assert main(args + [a for t in tiny for a in ("--set", t)]) == 1  # failed after it started (was 2, a usage error's)
    err = capsys.readouterr().err
    assert f"drawing the figure failed; the numbers are in {out / 'report.json'}" in err
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["config"]["code_sizes"] == [8] and numbers["dimensionality"]["mse"]["conv"]
    assert "## Denoising" in (out / "summary.md").read_text()
    assert (out / "report.png").is_dir()  # untouched
    assert numbers["models"] and all((out / rel).is_file() for rel in numbers["models"])


def test_a_failed_experiment_keeps_the_earlier_numbers_and_models(tmp_path, monkeypatch):
    """A late experiment fails (as noise_std 0.3 once did in the denoising one): the models and
    numbers of the experiments before it are written, and report.json says what failed."""
    from audioae.images import ReportConfig, experiments, run_report

    def fail(*args):
        raise RuntimeError("out of luck")

    monkeypatch.setattr(experiments, "sparse_codes", fail)
    cfg = ReportConfig.quick(digit_steps=3, photo_steps=3, linear_steps=3, linear_fine_steps=0, code_sizes=(8,),
                             patches_per_image=4)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="out of luck"):
        run_report(out, cfg)
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["failed"] == {"experiment": "sparsity", "error": "RuntimeError: out of luck"}
    assert {"dimensionality", "unpooling", "denoising"} <= set(numbers) and "sparsity" not in numbers
    assert "photo-denoise-gaussian" in " ".join(numbers["models"])
    assert numbers["models"] and all((out / rel).is_file() for rel in numbers["models"])
    summary = (out / "summary.md").read_text()
    assert "**Incomplete**: sparsity failed (RuntimeError: out of luck)" in summary and "## Denoising" in summary
    assert "## Sparse codes" not in summary and not (out / "report.png").exists()


def test_sparsity_numbers_tell_dead_units_from_sparse_codes():
    from audioae.images.experiments import sparsity_numbers

    # 4 units: unit 0 active for every input, unit 1 for one of three, units 2 and 3 dead.
    h = torch.tensor([[1.0, 0, 0, 0], [0.5, 2, 0, 0], [1, 0, 0, 0]])  # [N, K]
    n = sparsity_numbers(h)
    assert (n["live_units"], n["dead_units"], n["live_units_active_under_half"]) == (2, 2, 1)
    assert n["mean_active_units"] == pytest.approx(4 / 3)
    assert n["active_share_of_live"] == pytest.approx((1 + 1 / 3) / 2)
    # Energy in the top unit: 1, 4/4.25 and 1 for the three rows.
    assert sparsity_numbers(h, top=1)["top_energy_share"] == pytest.approx((1 + 4 / 4.25 + 1) / 3)
    assert n["top_energy_share"] == 1.0  # top 8 of 4 units: all of it
    silent = sparsity_numbers(torch.zeros(3, 4))
    assert (silent["live_units"], silent["active_share_of_live"], silent["hoyer"]) == (0, None, None)
    assert silent["top_energy_share"] is None


def test_a_bare_set_key_is_answered_with_an_example_of_the_reports_own_keys(tmp_path, capsys):
    assert main(["images", "report", "-o", str(tmp_path / "r"), "--quick", "--set", "digit_steps"]) == 2
    assert "expected KEY=VALUE, e.g. digit_steps=3000" in capsys.readouterr().err  # was: mask_power=0.8
    assert not (tmp_path / "r").exists()


def test_a_rerun_removes_the_models_the_earlier_report_wrote_and_no_one_elses(tmp_path, capsys):
    """Was: a rerun with other code sizes (or --no-models) left the earlier run's models in models/,
    beside a report.json that described the new run."""
    import shutil

    out = tmp_path / "r"
    tiny = ["digit_steps=3", "photo_steps=3", "linear_steps=3", "linear_fine_steps=0", "patches_per_image=4",
            'sparse_runs=[["l1",0.01]]', "perturb_scales=[1.0]", "gaussian_samples=24"]
    args = ["images", "report", "-o", str(out), "--quick", "--threads", "1", *[a for t in tiny for a in ("--set", t)]]
    assert main([*args, "--set", "code_sizes=[2,8]"]) == 0
    first = json.loads((out / "report.json").read_text())["models"]
    assert {"models/digits-conv-k2.safetensors", "models/digits-conv-k8.safetensors"} <= set(first)
    models = out / "models"
    # Beside them: a file of the user's, a report's checkpoint outside models/ and edited entries
    # that lead to it.
    (models / "mine.safetensors").write_bytes(b"my weights")
    shutil.copy(models / "digits-conv-k8.safetensors", tmp_path / "victim.safetensors")
    report = json.loads((out / "report.json").read_text())
    report["models"] += ["models/../../victim.safetensors", str(tmp_path / "victim.safetensors")]
    (out / "report.json").write_text(json.dumps(report))
    capsys.readouterr()

    assert main([*args, "--set", "code_sizes=[8]"]) == 0
    err = capsys.readouterr().err
    assert (f"removed 2 models of the earlier report in {out} that this run did not write: "
            f"digits-conv-k2.safetensors, digits-linear-k2.safetensors") in err
    second = json.loads((out / "report.json").read_text())["models"]
    assert set(second) == set(first) - {"models/digits-conv-k2.safetensors", "models/digits-linear-k2.safetensors"}
    assert sorted(p.name for p in models.glob("*.safetensors")) == sorted(
        [rel.removeprefix("models/") for rel in second] + ["mine.safetensors"])
    assert not list(models.glob("*k2*"))  # the sha256 files too
    assert f"note: {models} also holds mine.safetensors, not written by this run (left as it is)" in err
    assert (tmp_path / "victim.safetensors").is_file()

    (models / "photo-nearest.safetensors").write_bytes(b"my own now")  # listed, but no report's checkpoint now
    assert main([*args, "--set", "code_sizes=[8]", "--no-models"]) == 0
    err = capsys.readouterr().err
    assert f"removed {len(second) - 1} models of the earlier report" in err
    assert "models" not in json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in models.glob("*.safetensors")) == ["mine.safetensors", "photo-nearest.safetensors"]
    assert len(list(models.iterdir())) == 3  # and the sha256 file of photo-nearest, not a report's model now
    assert "also holds mine.safetensors, photo-nearest.safetensors, not written by this run" in err
    assert (models / "photo-nearest.safetensors").read_bytes() == b"my own now"
    assert (tmp_path / "victim.safetensors").is_file()


def test_a_failed_rerun_removes_none_of_the_earlier_reports_models(tmp_path, monkeypatch, capsys):
    """A rerun that failed at any step removed the earlier report's models it had not written yet."""
    from audioae.images import experiments

    out = tmp_path / "r"
    tiny = ["digit_steps=3", "photo_steps=3", "linear_steps=3", "linear_fine_steps=0", "patches_per_image=4",
            'sparse_runs=[["l1",0.01]]', "perturb_scales=[1.0]", "gaussian_samples=24", "code_sizes=[2]", "map_code_dim=2"]
    args = ["images", "report", "-o", str(out), "--quick", "--threads", "1", *[a for t in tiny for a in ("--set", t)]]
    assert main(args) == 0
    before = sorted(p.name for p in (out / "models").glob("*.safetensors"))

    def broken(*a, **k):
        raise OSError("the photographs went away")

    monkeypatch.setattr(experiments, "load_photos", broken)
    assert main(args) == 1
    assert sorted(p.name for p in (out / "models").glob("*.safetensors")) == before and before
    monkeypatch.undo()  # and the next run that finishes clears them, as the failed one left them listed
    assert main([*args, "--no-models"]) == 0
    assert not list((out / "models").glob("*.safetensors"))


def test_reconstruct_image_refuses_a_model_that_is_no_grey_patch_model_and_an_empty_image():
    """Were an AttributeError ('LinearConfig' object has no attribute 'image_size'), a conv's
    channel error and numpy's IndexError."""
    img = torch.rand(20, 20)
    digits = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": 8})
    with pytest.raises(ValueError, match="needs an image model of grey-level patches; this model's family is linear"):
        reconstruct_image(digits, img)
    colour = build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8, "in_channels": 3})
    with pytest.raises(ValueError, match="family is image, with 3 input channels"):
        reconstruct_image(colour, img)
    grey = build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8})
    with pytest.raises(ValueError, match=re.escape("an empty image: shape (0, 0)")):
        reconstruct_image(grey, torch.zeros(0, 0))
    assert reconstruct_image(grey, img).shape == img.shape


def test_a_stride_past_the_patch_and_sizes_of_nothing_are_refused():
    """Were NaN pixels (a stride larger than the patch leaves gaps: 0 / 0 there), a 1x1
    photograph for a scale of 0 or below, and torch's interpolate error for a digit size of 0."""
    from audioae.data.images import load_digit_images, load_photograph

    grey = build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8})
    img = torch.rand(20, 20)
    for stride in (9, 20, -1):
        with pytest.raises(ValueError, match=re.escape(f"stride must be within 1..8 (the patch size), got {stride}")):
            reconstruct_image(grey, img, stride=stride)
    assert torch.isfinite(reconstruct_image(grey, img, stride=8)).all()
    for scale in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            load_photograph("text", scale)
    with pytest.raises(ValueError, match="size must be at least 1 pixel, got 0"):
        load_digit_images(0)


@pytest.mark.parametrize(("field", "value"), [("noise_std", -0.2), ("sparsity_weight", -1.0), ("topk", -3)])
def test_a_negative_setting_is_named_with_its_value(field, value):
    """Was "topk, sparsity_weight and noise_std cannot be negative", whichever one it was."""
    with pytest.raises(ValueError, match=re.escape(f"{field} cannot be negative, got {value}")):
        build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8, field: value})


def test_a_topk_above_the_code_size_is_refused():
    """topk 50 of 16 units was accepted and kept every unit: no sparsity at all."""
    with pytest.raises(ValueError, match=r"topk \(50\) is above code_dim \(16\).*within 1\.\.16"):
        build_model("image", {"sparsity": "topk", "topk": 50, "code_dim": 16})
    model = build_model("image", {"sparsity": "topk", "topk": 4, "code_dim": 16})
    with torch.no_grad():
        h = model.encode(model.example_input(3))  # [3, 16]
    assert ((h != 0).sum(1) <= 4).all()
    build_model("image", {"topk": 50, "code_dim": 16})  # topk unused without sparsity='topk': a loaded config's value


@pytest.mark.parametrize(("shape", "hint"), [((1, 32, 32), "img[0]"), ((3, 32, 32), "img.mean(0)"),
                                             ((32, 32, 3), "img.mean(-1)"), ((32, 32, 1), "img[..., 0]")])
def test_a_3d_image_is_told_which_axis_to_drop(shape, hint):
    """A channel-first [1, H, W] image was told to pass img.mean(-1), which averages its columns."""
    grey = build_model("image", {"image_size": (8, 8), "channels": (4,), "code_dim": 8})
    with pytest.raises(ValueError, match=re.escape(hint)) as info:
        reconstruct_image(grey, torch.rand(shape))
    assert ("mean(-1)" in str(info.value)) == (hint == "img.mean(-1)")


def test_a_failed_rerun_leaves_no_figure_of_the_earlier_numbers(tmp_path, monkeypatch, capsys):
    """A rerun that failed, in an experiment or in drawing, left the earlier run's report.png
    beside its own report.json: a figure of other numbers."""
    from audioae.images import figure

    out = tmp_path / "r"
    tiny = ["digit_steps=3", "photo_steps=3", "linear_steps=3", "linear_fine_steps=0", "patches_per_image=4",
            'sparse_runs=[["l1",0.01]]', "perturb_scales=[1.0]", "gaussian_samples=24", "code_sizes=[2]", "map_code_dim=2"]
    args = ["images", "report", "-o", str(out), "--quick", "--threads", "1", *[a for t in tiny for a in ("--set", t)]]
    assert main(args) == 0 and (out / "report.png").is_file()
    assert main([*args, "--set", "lr=1e6"]) == 1  # the loss turns NaN in the first experiment (was exit 2)
    assert not (out / "report.png").exists()
    assert "the earlier report's figure was removed" in capsys.readouterr().err
    assert "No figure is drawn for an incomplete report" in (out / "summary.md").read_text()

    assert main(args) == 0 and (out / "report.png").is_file()

    def broken(*a, **k):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(figure, "draw", broken)
    assert main(args) == 1
    assert not (out / "report.png").exists() and "failed" not in json.loads((out / "report.json").read_text())
    assert "the earlier report's figure was removed" in capsys.readouterr().err


def _doc_examples() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "images.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("number", range(len(_doc_examples())))
def test_the_docs_python_examples_run_as_written(number):
    """Each example of docs/images.md runs on its own (one used an undefined x, one torch and
    x_train, and corrupt_images was never imported)."""
    code = _doc_examples()[number]
    exec(compile(code, f"docs/images.md example {number + 1}", "exec"), {"__name__": "__doc_example__"})


def test_a_or_an_reads_the_number_aloud():
    from audioae.images.figure import a_or_an

    assert [a_or_an(n) for n in (2, 8, 11, 16, 18, 80, 110, 800, 1100, 11000)] == \
        ["a", "an", "an", "a", "an", "an", "a", "an", "a", "an"]


def test_the_figure_labels_its_maps_scales_and_groups(tmp_path, monkeypatch):
    """What report.png lacked: axis labels on the 2-D maps, a colour bar per code heat map (each on
    its own scale), a label on the perturbed strip's first column and lines between its noise
    scales, the linear AE's angle to PCA's subspace; "a 8-unit code"; the sparsity labels ran
    over the tick labels at --quick's 40 dpi; the second denoising row's clean image had no title,
    the atoms no colour scale, and summary.md's "gain" did not say over what."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from audioae.images import ReportConfig, figure, run_report

    drawn, draw = [], figure.draw

    def keep(numbers, arrays):  # the real figure, kept to look at
        drawn.append(draw(numbers, arrays))
        return drawn[-1]

    monkeypatch.setattr(figure, "draw", keep)
    cfg = ReportConfig.quick(digit_steps=3, photo_steps=3, linear_steps=3, linear_fine_steps=0, code_sizes=(2, 8),
                             patches_per_image=4, sparse_runs=(("none", 0.0), ("l1", 0.3), ("l2", 2.0)),
                             perturb_scales=(0.5, 1.0), gaussian_samples=24, map_code_dim=8)
    run_report(tmp_path / "r", cfg, save_models=False)
    fig = drawn[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    axes = fig.get_axes()
    labels = {(ax.get_xlabel(), ax.get_ylabel()) for ax in axes}
    for pair in (("code unit 1", "code unit 2"), ("principal component 1", "principal component 2"),
                 ("t-SNE axis 1", "t-SNE axis 2")):
        assert pair in labels
    assert sum(ax.get_ylabel() == "activation" for ax in axes) == 3  # a colour bar per heat map
    assert sum(ax.get_xlabel() == "weight / atom's\nlargest |weight|" for ax in axes) == 2  # L1's and L2's atoms
    assert sum(ax.get_title() == "clean (held out)" for ax in axes) == 2  # each denoising row's
    assert "| gain over the input (denoising AE - input) |" in (tmp_path / "r" / "summary.md").read_text()
    strip = next(ax for ax in axes if ax.get_title().startswith("perturbed codes"))
    assert [t.get_text() for t in strip.get_xticklabels()] == ["recon-\nstruction", "noise 0.5σ", "noise 1σ"]
    assert len(strip.get_lines()) == 2  # a line before each scale's columns
    error = next(ax for ax in axes if ax.get_title() == "reconstruction error against code size")
    assert sum(t.get_text().endswith("°") for t in error.texts) == 2  # one angle per code size
    # Whose codes the maps show: "PCA of the 8-unit codes" did not say they were the conv AE's.
    titles = {ax.get_title() for ax in axes}
    assert {"conv AE's 8-unit codes: PCA", "conv AE's 8-unit codes: t-SNE"} <= titles, titles
    assert any(s.get_text().endswith("from an 8-unit code") for s in (sf._suptitle for sf in fig.subfigs))
    codes = next(ax for ax in axes if ax.get_xlabel() == "share of the live units active per digit")
    inside = codes.get_window_extent(renderer)
    for label in codes.texts:
        box = label.get_window_extent(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, label.get_text()


def test_fit_arrays_trains_on_the_models_own_corruption_unless_told_otherwise(digits):
    """A config's corruption was ignored without corrupt=: a plain autoencoder was trained while
    the checkpoint said "gaussian" (docs/images.md's first example is such a config)."""
    from audioae.train import configured_corruption

    x = digits[0][:64]  # [64, 1, 8, 8]

    def first_input(model, **kw) -> torch.Tensor:
        seen = []
        fit_arrays(model, x, steps=1, batch_size=64, forward=lambda b: (seen.append(b), model(b))[1], **kw)
        return seen[0]

    noisy = _tiny_image(corruption="gaussian", noise_std=0.5)
    assert abs(float((first_input(noisy) - x).std()) - 0.5) < 0.02  # noise of its noise_std
    dark = _tiny_image(corruption="patches", patch_fraction=0.5, patch_size=(2, 2))
    assert abs(float((first_input(dark) == 0).float().mean() - (x == 0).float().mean())) > 0.2  # darkened
    assert torch.equal(first_input(_tiny_image()), x)  # corruption "none": the clean batch
    assert torch.equal(first_input(noisy, corrupt=lambda b, g: b), x)  # a corrupt= given is the one used
    vector = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": 8, "corruption": "gaussian"})
    assert configured_corruption(vector) is not None
    for family, config, text in [
            ("linear", {"input": "vector", "input_dim": 64, "code_dim": 8, "corruption": "patches"},
             "corruption 'patches' to its vector input"),
            ("linear", {"corruption": "gaussian"}, "corruption 'gaussian' to its spectrogram input"),
            ("sparse_dict", {"corruption": "mix"}, "corruption 'mix' to its spectrogram input")]:
        model = build_model(family, config)
        with pytest.raises(ValueError, match=re.escape(text) + ".*pass corrupt=, or build the model with corruption='none'"):
            configured_corruption(model)
        with pytest.raises(ValueError, match=re.escape(text)):
            fit_arrays(model, model.example_input(4), steps=1)


def test_fit_arrays_says_what_input_a_model_takes_and_takes_arrays_and_doubles(digits):
    """Were torch's "mat1 and mat2 shapes cannot be multiplied" (digits [N, 1, 8, 8] to a vector
    model), an AttributeError (a NumPy array), a dtype RuntimeError (float64), and a huge loss in
    silence (an image model given 0..255 levels)."""
    x = digits[0][:64]  # [64, 1, 8, 8]
    vector = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": 8})
    start = {k: v.clone() for k, v in vector.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape("takes x [N, 64], got shape [64, 1, 8, 8]: flatten with x.flatten(1)")):
        fit_arrays(vector, x, steps=1)
    assert all(torch.equal(v, start[k]) for k, v in vector.state_dict().items())
    image = _tiny_image()
    with pytest.raises(ValueError, match=re.escape("takes x [N, 1, 8, 8], got shape [64, 64]: reshape with "
                                                   "x.reshape(-1, 1, 8, 8)")):
        fit_arrays(image, x.flatten(1), steps=1)
    with pytest.raises(ValueError, match=re.escape("takes x [N, 1, 8, 8], got shape [64, 1, 16, 16]") + "$"):
        fit_arrays(image, torch.rand(64, 1, 16, 16), steps=1)
    with pytest.raises(ValueError, match=r"98% of x spans 0\.\.255 .*; for 0\.\.255 levels pass x / 255"):
        fit_arrays(image, x * 255, steps=1)
    assert len(fit_arrays(vector, x.flatten(1).numpy(), steps=2)) == 2
    assert len(fit_arrays(image, x.double(), steps=2)) == 2
    assert len(fit_arrays(image, np.require(x.numpy(), requirements="C").astype(">f4"), steps=2)) == 2  # byte-swapped
    assert all(p.dtype == torch.float32 for p in image.parameters())


def test_psnr_takes_arrays_and_refuses_images_of_other_shapes():
    """Were an AttributeError ('numpy.ndarray' object has no attribute 'double') and torch's
    broadcasting error, or a silent broadcast of [H, 1] against [1, W]."""
    a = np.zeros((4, 4))
    assert psnr(a, a) == float("inf")
    assert psnr(np.full((4, 4), 0.1), torch.zeros(4, 4)) == pytest.approx(20.0)
    for other in (torch.zeros(4, 5), torch.zeros(1, 4)):
        with pytest.raises(ValueError, match=re.escape(f"same shape, got (4, 4) and {tuple(other.shape)}")):
            psnr(torch.zeros(4, 4), other)


def test_photograph_patches_take_one_name_and_say_what_they_refuse():
    """A name alone ("coins") was read letter by letter ("unknown photograph 'c'"), per_image=0 was
    torch's "stack expects a non-empty TensorList", and a patch past a photograph's size did not
    say which photograph."""
    assert torch.equal(photograph_patches("coins", per_image=3), photograph_patches(("coins",), per_image=3))
    with pytest.raises(ValueError, match="per_image >= 1, got 1 photograph\\(s\\) and per_image=0"):
        photograph_patches("coins", per_image=0)
    with pytest.raises(ValueError, match="at least one photograph"):
        photograph_patches((), per_image=3)
    with pytest.raises(ValueError, match=re.escape("photograph 'text' at scale 0.5 (86, 224) is smaller than the patch size 200")):
        photograph_patches("text", size=200, per_image=2)


def test_a_thread_count_past_the_machines_cap_is_refused(tmp_path, capsys, monkeypatch):
    """`images report --threads 99999` crashed as torch made the threads (exit 139, in jemalloc);
    every thread setting is bounded by the same check, which names the machine's CPUs."""
    import os

    from audioae import config
    from audioae.batch import DenoiseOptions

    with pytest.raises(SystemExit) as stop:
        main(["images", "report", "-o", str(tmp_path / "r"), "--quick", "--threads", "99999"])
    assert stop.value.code == 2 and not (tmp_path / "r").exists()
    err = capsys.readouterr().err
    assert f"--threads: must be at most {config.max_threads()} on this machine ({os.cpu_count()} CPUs" in err
    (tmp_path / "in").mkdir()
    assert main(["denoise", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--threads", "99999"]) == 2
    assert "--threads must be at most" in capsys.readouterr().err
    DenoiseOptions(engine="ray", threads=99999).check()  # a Ray actor's: checked against the cluster's nodes
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert config.max_threads() == 256
    config.check_thread_count(256, "--threads")
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert config.max_threads() == config.MIN_THREADS_CAP


def test_images_report_help_lists_every_setting_with_its_default(capsys):
    """The --set keys, their defaults and meanings were only in ReportConfig's source."""
    from audioae.images import ReportConfig
    from audioae.images.experiments import SETTING_MEANINGS

    fields = [f.name for f in dataclasses.fields(ReportConfig)]
    assert list(SETTING_MEANINGS) == fields  # a new setting needs its meaning, in the class's order
    with pytest.raises(SystemExit) as stop:
        main(["images", "report", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    for name in fields:
        assert re.search(rf"^  {name} = \S", out, re.M), name
        assert SETTING_MEANINGS[name] in out
    assert "  digit_steps = 1200 (--quick: 40)\n" in out and "  code_sizes = [2,4,8,16,32] (--quick: [2,8])\n" in out


def test_the_docs_quote_every_set_that_holds_brackets():
    """`--set code_sizes=[2,4,8,16,32,48]` unquoted: zsh reads it as a file pattern ("no matches found")."""
    from pathlib import Path

    for doc in [Path(__file__).parents[1] / "README.md", *(Path(__file__).parents[1] / "docs").glob("*.md")]:
        unquoted = re.findall(r"--set [^'\"\s]*\[", doc.read_text())
        assert not unquoted, (doc.name, unquoted)
