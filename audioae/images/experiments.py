"""The course's image experiments. Each function trains its small models on in-memory data with
:func:`audioae.train.fit_arrays` and returns ``(numbers, arrays, models)``: plain JSON-able
numbers for the report, arrays for the figure, and the trained models (saved as checkpoints).

Digits are scikit-learn's 8x8 digits, split once into a stratified train and test set; every
digit number is measured on the test set. Photograph numbers are measured on ``camera``, which
no model sees in training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..data.images import (
    TEST_PHOTOGRAPH,
    TRAIN_PHOTOGRAPHS,
    image_to_patches,
    load_digit_images,
    load_photograph,
    photograph_patches,
)
from ..models import Autoencoder, build_model
from ..models.image import UNPOOLING, ImageAutoencoder, corrupt_images
from ..models.sparsity import fraction_near_zero, hoyer_sparsity
from ..train import fit_arrays
from .inference import mse, psnr, reconstruct_image, run_batches

log = logging.getLogger(__name__)

Result = tuple[dict, dict, dict[str, Autoencoder]]

# What the settings are checked against before any work (tests compare them with the data).
DIGITS = 1797  # scikit-learn's 8x8 digits
DIGIT_PIXELS = 8 * 8  # PCA and the codes have at most this many dimensions
SMALLEST_PHOTOGRAPH = (172, "text")  # the shortest side of the report's photographs (text: 172 x 448)
MAX_SEED = 2**32 - 1  # scikit-learn's random_state
DECODING_UNPOOLING = ("nearest", "transposed")  # decode a bare code (generation needs it)
SPARSE_PENALTIES = ("none", "l1", "l2")  # of a ReLU code (kl needs sigmoid codes, topk a unit count)
FIGURE_INCHES = (17, 36)  # report.png, width x height
MAX_DPI = 600  # 10200 x 21600 pixels; matplotlib refuses 2**16 pixels per side
MAX_NOISE_STD = 1.0  # as large as the whole [0, 1] range; models.image.LEVEL_SPREAD is sized for it


@dataclass(frozen=True)
class ReportConfig:
    """Sizes and budgets of every experiment in ``audioae images report``."""

    seed: int = 0
    test_fraction: float = 1 / 3  # of the 1,797 digits
    # Training (Adam, MSE + the model's sparsity penalty, constant learning rate).
    digit_steps: int = 1200  # per digit model; about 5-10 s each on one CPU thread
    photo_steps: int = 1000  # per photograph-patch model; 16x16 patches cost ~4x an 8x8 digit
    linear_steps: int = 2000  # full-batch steps for the linear autoencoders (cheap)
    linear_lr: float = 3e-2  # full batches take a larger step; at 3e-3 the weakest directions lag
    # Then more steps at linear_lr / 10: Adam's constant step keeps jittering, which leaves the
    # 32-unit code (its eigenvalue is 1.6% above the next) 37 degrees off PCA's subspace after the
    # first 2000; 6000 more bring it within 1 degree, for about 5 s per code size.
    linear_fine_steps: int = 6000
    batch_size: int = 128  # digits
    photo_batch_size: int = 64  # photograph patches
    lr: float = 3e-3
    # Architecture of the convolutional models.
    channels: tuple[int, ...] = (16, 32)  # two levels: 8x8 digits -> 2x2, 16x16 patches -> 4x4
    unpool: str = "transposed"  # decoder of the digit and denoising models (maxunpool cannot decode bare codes)
    # Dimensionality reduction and features.
    code_sizes: tuple[int, ...] = (2, 4, 8, 16, 32)
    map_code_dim: int = 8  # the model whose codes are mapped in 2-D, shown and perturbed
    map_points: int = 0  # test digits in the 2-D maps; 0: all
    tsne_perplexity: float = 30.0
    # Photographs.
    image_scale: float = 0.5  # photographs are halved: more structure per 16x16 patch
    patch: int = 16
    patches_per_image: int = 400  # random training patches from each training photograph
    photo_code_dim: int = 64  # of 256 pixels
    noise_std: float = 0.2  # Gaussian corruption, pixels in [0, 1]
    dark_fraction: float = 0.15  # patches corruption: share of pixels darkened
    dark_patch: tuple[int, int] = (4, 4)
    # Sparse codes: an overcomplete ReLU code of the digits (a one-layer sparse autoencoder with
    # unit-norm atoms, see _sparse_model_config) and (penalty, weight) pairs.
    sparse_code_dim: int = 128
    sparse_steps: int = 3000  # about 1 s per 1,000 on one thread; 1,500 give nearly the same table
    # Weights in pairs of about the same test error, so L1 and L2 are compared fairly: L1 0.1 with
    # L2 0.5 (MSE about 0.002), L1 0.3 with L2 2 (about 0.0075).
    sparse_runs: tuple[tuple[str, float], ...] = (("none", 0.0), ("l1", 0.1), ("l1", 0.3), ("l2", 0.5),
                                                  ("l2", 2.0))
    # Generation.
    perturb_scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # times each code unit's std
    interpolation_steps: int = 9
    gaussian_samples: int = 500
    dpi: int = 90  # of report.png: 1530 x 3240 pixels

    @classmethod
    def quick(cls, **changes) -> ReportConfig:
        """Tiny settings for tests and smoke runs (about 20 s on one thread, numbers meaningless)."""
        small = dict(digit_steps=40, photo_steps=30, linear_steps=100, linear_fine_steps=50, code_sizes=(2, 8),
                     map_code_dim=8, map_points=120, tsne_perplexity=10.0, patches_per_image=30, photo_code_dim=16,
                     sparse_code_dim=32, sparse_steps=100, sparse_runs=(("none", 0.0), ("l1", 0.3), ("l2", 2.0)),
                     gaussian_samples=50, channels=(4, 8), dpi=40)
        small.update(changes)
        return cls(**small)

    def __post_init__(self):
        """Check every setting before any work: the report runs for minutes, and a setting that
        fails in an experiment or in the figure would lose every number computed before it.
        Messages name the field, the value and what it accepts."""

        def bad(name: str, accepts: str) -> ValueError:
            got = getattr(self, name)
            got = [list(v) if isinstance(v, tuple) else v for v in got] if isinstance(got, (list, tuple)) else got
            return ValueError(f"{name} = {got!r}: expected {accepts}")

        def seq(v) -> bool:
            return isinstance(v, (list, tuple))

        def number(name: str, low: float, high: float = float("inf"), *, low_open: bool = True,
                    whole: bool = False, accepts: str = "") -> None:
            v = getattr(self, name)
            ok = (isinstance(v, int) if whole else isinstance(v, (int, float))) and not isinstance(v, bool) \
                and math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
            if not ok:
                raise bad(name, accepts or (f"at least {low}" if whole else f"a number above {low}"))

        if not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise bad("seed", f"an integer within 0..{MAX_SEED} (scikit-learn's random_state)")
        for name in ("digit_steps", "photo_steps", "linear_steps", "batch_size", "photo_batch_size",
                     "patches_per_image", "photo_code_dim", "sparse_code_dim", "sparse_steps"):
            number(name, 1, low_open=False, whole=True)  # zero steps would report untrained models as results
        number("linear_fine_steps", 0, low_open=False, whole=True, accepts="an integer of at least 0")
        number("lr", 0, accepts="a positive learning rate")
        number("linear_lr", 0, accepts="a positive learning rate")

        # The digit split: sizes as scikit-learn's train_test_split makes them.
        number("test_fraction", 0, 1, accepts="a fraction strictly between 0 and 1")
        n_train, n_test = self.digit_split()
        if n_test < 10 or n_train < DIGIT_PIXELS:
            lo = math.ceil(1e4 * (10 - 1) / DIGITS + 1e-9) / 1e4  # both shown rounded inwards: accepted
            hi = math.floor(1e4 * (DIGITS - DIGIT_PIXELS) / DIGITS) / 1e4
            raise bad("test_fraction", f"within {lo:.4f}..{hi:.4f}: it leaves {n_train} train / "
                                       f"{n_test} test digits of the {DIGITS}, and the report needs at least 10 "
                                       f"test digits (one per class) and {DIGIT_PIXELS} training digits (PCA of "
                                       f"up to {DIGIT_PIXELS} components)")

        # Architecture: each level halves the image; the 8x8 digits allow three levels.
        levels = len(self.channels) if seq(self.channels) else 0
        if not (1 <= levels <= 3 and all(isinstance(c, int) and c >= 1 for c in self.channels)):
            raise bad("channels", "a list of 1 to 3 positive channel counts, one per level (each level halves "
                                  "the image; the digits are 8x8)")
        if self.unpool not in DECODING_UNPOOLING:
            raise bad("unpool", f"one of {', '.join(DECODING_UNPOOLING)}: the digit models decode perturbed codes "
                                "and maxunpool cannot decode a bare code (all three are compared in their own "
                                "experiment)")

        if not (seq(self.code_sizes) and self.code_sizes
                and all(isinstance(k, int) and 1 <= k <= DIGIT_PIXELS for k in self.code_sizes)):
            raise bad("code_sizes", f"a non-empty list of sizes within 1..{DIGIT_PIXELS} (the digits' pixels)")
        if len(set(self.code_sizes)) != len(self.code_sizes):
            raise bad("code_sizes", "a list without repeats (one model per size)")
        if self.map_code_dim not in self.code_sizes:
            # Named even when left at its default: changing code_sizes alone (8 not among them) lands here.
            near = min(self.code_sizes, key=lambda k: (abs(k - 8), k))
            raise bad("map_code_dim", f"one of code_sizes {list(self.code_sizes)} (the conv AE whose codes are mapped "
                                      f"in 2-D and perturbed; 8 unless set): set it with the code sizes, e.g. "
                                      f"--set map_code_dim={near}")
        if not (isinstance(self.map_points, int) and (self.map_points == 0 or self.map_points >= 10)):
            raise bad("map_points", "0 (every test digit) or at least 10")
        number("tsne_perplexity", 0, accepts="a positive perplexity")
        n_map = self.map_point_count()
        limit = (n_map - 1) / 3  # scikit-learn's t-SNE uses the 3 x perplexity nearest neighbours of each point
        if self.tsne_perplexity > limit:
            raise bad("tsne_perplexity", f"at most (points - 1) / 3 = {math.floor(100 * limit) / 100:g}: the 2-D "
                                         f"map has {n_map} points (map_points = {self.map_points}, {n_test} test "
                                         "digits) and t-SNE uses the 3 x perplexity nearest neighbours of each "
                                         "point, of which there are points - 1; lower it or raise map_points "
                                         "(0: every test digit)")

        # Photographs.
        if not (isinstance(self.patch, int) and self.patch >= 1 and self.patch % 2 ** levels == 0):
            raise bad("patch", f"a positive multiple of 2**levels = {2 ** levels} (channels {list(self.channels)})")
        number("image_scale", 0, 1, accepts="a factor in (0, 1] the photographs are shrunk by")
        side, photo = SMALLEST_PHOTOGRAPH
        if round(side * self.image_scale) < self.patch:
            raise bad("image_scale", f"at least {math.ceil(1e3 * self.patch / side) / 1e3:g}: the smallest photograph ('{photo}', {side} "
                                     f"pixels high) must keep at least one {self.patch}-pixel patch")
        # reconstruct_image refuses levels beyond what noise of std 1 makes of [0, 1] images.
        number("noise_std", 0, MAX_NOISE_STD, accepts=f"a positive standard deviation of at most {MAX_NOISE_STD:g} "
                                                      "(pixels are in [0, 1])")
        number("dark_fraction", 0, 1, accepts="a share of the pixels in (0, 1]")
        half = self.patch // 2
        if not (seq(self.dark_patch) and len(self.dark_patch) == 2
                and all(isinstance(d, int) and 1 <= d <= half for d in self.dark_patch)):
            raise bad("dark_patch", f"two sizes [rows, cols] within 1..patch / 2 = {half}: a darkened patch as "
                                    f"large as the {self.patch}x{self.patch} training patch blacks out whole inputs")

        # Sparse codes.
        runs = self.sparse_runs
        if not (seq(runs) and runs and all(
                seq(r) and len(r) == 2 and r[0] in SPARSE_PENALTIES and isinstance(r[1], (int, float))
                and not isinstance(r[1], bool) and math.isfinite(r[1]) and r[1] >= 0 for r in runs)):
            raise bad("sparse_runs", f"a non-empty list of [penalty, weight] pairs, penalty one of "
                                     f"{', '.join(SPARSE_PENALTIES)} and weight a number >= 0 (the codes are "
                                     "ReLU: kl needs sigmoid codes, topk a unit count)")
        names = [f"{p}-{w:g}" for p, w in runs]
        if len(set(names)) != len(names):
            raise bad("sparse_runs", "a list without repeats (one model per pair)")

        # Generation and the figure.
        if not (seq(self.perturb_scales) and self.perturb_scales
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                        for v in self.perturb_scales)
                and len(set(self.perturb_scales)) == len(self.perturb_scales)):
            raise bad("perturb_scales", "a non-empty list of different numbers >= 0 (times each code unit's std)")
        number("interpolation_steps", 3, low_open=False, whole=True,
               accepts="an integer of at least 3 (two ends and a middle)")
        if not (isinstance(self.gaussian_samples, int) and self.gaussian_samples >= 24):
            raise bad("gaussian_samples", "at least 24 (the figure shows 24)")
        inches_w, inches_h = FIGURE_INCHES
        number("dpi", 1, MAX_DPI, low_open=False, whole=True,
               accepts=f"an integer within 1..{MAX_DPI} (the figure is {inches_w} x {inches_h} inches: "
                       f"{MAX_DPI} dpi makes {inches_w * MAX_DPI} x {inches_h * MAX_DPI} pixels)")

        # Every model the experiments build, through the model's own checks: nothing can fail there later.
        from ..models import make_config

        configs = [("digit", _digit_model_config(self, k)) for k in self.code_sizes]
        configs += [("sparse", _sparse_model_config(self, p, w)) for p, w in runs]
        configs += [("photograph", _photo_model_config(self, unpool=u)) for u in UNPOOLING]
        configs += [("denoising", _photo_model_config(self, corruption=kind, noise_std=self.noise_std,
                                                      patch_fraction=self.dark_fraction,
                                                      patch_size=self.dark_patch)) for kind in ("gaussian", "patches")]
        for what, config in configs:
            try:
                make_config("image", config)
            except ValueError as exc:
                raise ValueError(f"these settings make an invalid {what} model ({exc})") from exc

    def digit_split(self) -> tuple[int, int]:
        """``(train, test)`` digit counts of the split (scikit-learn rounds the test share up)."""
        n_test = math.ceil(self.test_fraction * DIGITS)
        return DIGITS - n_test, n_test

    def map_point_count(self) -> int:
        """Test digits in the 2-D maps."""
        n_test = self.digit_split()[1]
        return n_test if self.map_points <= 0 else min(self.map_points, n_test)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# What each --set key means, for `audioae images report --help` (settings_help); the keys, defaults
# and --quick values come from ReportConfig itself, and a test holds this to its fields.
SETTING_MEANINGS = {
    "seed": "random seed: split, initialisation, batches, corruptions (also --seed)",
    "test_fraction": "share of the 1,797 digits held out as the test set",
    "digit_steps": "training steps of each digit model",
    "photo_steps": "training steps of each photograph-patch model",
    "linear_steps": "full-batch steps of each linear autoencoder",
    "linear_lr": "learning rate of the linear autoencoders",
    "linear_fine_steps": "then this many more steps at linear_lr / 10",
    "batch_size": "digits per batch",
    "photo_batch_size": "photograph patches per batch",
    "lr": "learning rate (Adam) of the other models",
    "channels": "conv channels per level, 1 to 3 levels (each halves the image)",
    "unpool": "decoder of the digit and denoising models: nearest or transposed",
    "code_sizes": "code sizes of PCA and the linear and conv autoencoders (1..64)",
    "map_code_dim": "the code size (one of code_sizes) whose codes are mapped in 2-D and perturbed",
    "map_points": "test digits in the 2-D maps; 0: all",
    "tsne_perplexity": "t-SNE perplexity, at most (points - 1) / 3",
    "image_scale": "factor the photographs are shrunk by, in (0, 1]",
    "patch": "side of the square photograph patches, in pixels (a multiple of 2**levels)",
    "patches_per_image": "random training patches from each training photograph",
    "photo_code_dim": "code size of the photograph models",
    "noise_std": "std of the Gaussian corruption (pixels in [0, 1]; at most 1)",
    "dark_fraction": "share of the pixels the patches corruption darkens",
    "dark_patch": "[rows, cols] of each darkened patch (at most patch / 2)",
    "sparse_code_dim": "units of the overcomplete sparse ReLU code",
    "sparse_steps": "training steps of each sparse model",
    "sparse_runs": "[penalty, weight] pairs of the sparse models; penalty none, l1 or l2",
    "perturb_scales": "code noise of the generation experiment, times each unit's std",
    "interpolation_steps": "images along each interpolation path (at least 3)",
    "gaussian_samples": "samples of the Gaussian fitted to the codes (at least 24)",
    "dpi": "resolution of report.png (1..600)",
}


def _setting_text(value, top: bool = True) -> str:
    """A setting as --set takes it (TOML): lists in brackets, strings quoted inside them."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_setting_text(v, False) for v in value) + "]"
    if isinstance(value, str):
        return value if top else f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_help() -> str:
    """The ``--set`` keys of ``audioae images report``, one per ReportConfig field: its default,
    its ``--quick`` value where that differs, and what it means (:data:`SETTING_MEANINGS`)."""
    default, quick = ReportConfig(), ReportConfig.quick()
    lines = ["--set KEY=VALUE keys (ReportConfig's fields): the default, the --quick value where it",
             "differs, and what it sets. Quote lists for the shell: --set 'code_sizes=[2,8,32]'", ""]
    for f in dataclasses.fields(ReportConfig):
        d, q = getattr(default, f.name), getattr(quick, f.name)
        value = _setting_text(d) + (f" (--quick: {_setting_text(q)})" if q != d else "")
        lines += [f"  {f.name} = {value}", f"      {SETTING_MEANINGS.get(f.name, '')}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Digits:
    """The fixed split: ``x [N, 1, 8, 8]`` in [0, 1], labels ``y [N]``."""

    x_train: torch.Tensor
    y_train: np.ndarray
    x_test: torch.Tensor
    y_test: np.ndarray

    @property
    def flat_train(self) -> np.ndarray:
        return self.x_train.reshape(len(self.x_train), -1).numpy()

    @property
    def flat_test(self) -> np.ndarray:
        return self.x_test.reshape(len(self.x_test), -1).numpy()


def load_digits_split(cfg: ReportConfig) -> Digits:
    from sklearn.model_selection import train_test_split

    x, y = load_digit_images(8)
    tr, te = train_test_split(np.arange(len(y)), test_size=cfg.test_fraction, random_state=cfg.seed, stratify=y)
    return Digits(x[tr], y[tr], x[te], y[te])


@dataclass
class Photos:
    train: torch.Tensor  # [N, 1, s, s] random patches of the training photographs
    test_image: torch.Tensor  # [H, W] the held-out photograph
    test_patches: torch.Tensor  # [P, 1, s, s] its non-overlapping grid


def load_photos(cfg: ReportConfig) -> Photos:
    train = photograph_patches(TRAIN_PHOTOGRAPHS, cfg.patch, cfg.patches_per_image, cfg.image_scale, cfg.seed)
    img = torch.from_numpy(load_photograph(TEST_PHOTOGRAPH, cfg.image_scale))
    grid, _ = image_to_patches(img, cfg.patch, cfg.patch)
    return Photos(train, img, grid)


# ---------------------------------------------------------------------------------------------
# Helpers


def _train(name: str, config: dict, x: torch.Tensor, cfg: ReportConfig, steps: int, *, batch_size: int,
           lr: float | None = None, seed_offset: int = 0, fine_steps: int = 0,
           init: Callable[[Autoencoder], None] | None = None) -> tuple[Autoencoder, dict]:
    """Build a model (then ``init(model)``, if given) and train it, then ``fine_steps`` more at a
    tenth of the learning rate; returns it with ``{"train_seconds", "final_loss", "parameters"}``."""
    torch.manual_seed(cfg.seed + seed_offset)
    model = build_model(name, config)
    if init is not None:
        init(model)
    t0 = time.perf_counter()
    lr = lr or cfg.lr
    # fit_arrays corrupts by the model's config (the denoising autoencoders)
    hist = fit_arrays(model, x, steps=steps, batch_size=batch_size, lr=lr, seed=cfg.seed + seed_offset)
    if fine_steps:
        hist += fit_arrays(model, x, steps=fine_steps, batch_size=batch_size, lr=lr / 10, seed=cfg.seed + seed_offset + 1)
    info = {"train_seconds": round(time.perf_counter() - t0, 3), "final_loss": float(np.mean(hist[-20:])),
            "parameters": model.num_parameters()}
    log.info("trained %s %s: %s", name, config, info)
    return model.eval(), info


def _digit_model_config(cfg: ReportConfig, code_dim: int, **extra) -> dict:
    return {"image_size": (8, 8), "channels": cfg.channels, "unpool": cfg.unpool, "code_dim": code_dim, **extra}


def _sparse_model_config(cfg: ReportConfig, penalty: str, weight: float) -> dict:
    """The course's sparse autoencoder in its usual form: one dense ReLU layer of
    ``sparse_code_dim`` units from the 64 pixels, a linear decoder whose columns (atoms) have
    unit norm, so a penalty on the code cannot be met by shrinking the code and growing the
    decoder (the conv autoencoder this replaced had free weights: L1 kept 14 of 128 units and
    used nearly all of them for every digit, a small dense code), and the encoder tied to the
    atoms at the start and fed ``x - b_d`` (b_d starts as the mean training digit, see
    sparse_codes), so every unit starts, and stays, active for some digits and not others (the
    conv autoencoder had 36 to 42 units dead from initialisation). No conv levels: they could
    take the code's scale back. Neither a warm-up of the penalty nor resampling of dead units
    is needed: no penalised run ends with a dead unit."""
    return {"image_size": (8, 8), "channels": (), "code_dim": cfg.sparse_code_dim, "code_activation": "relu",
            "output_activation": "none", "unit_norm_atoms": True, "subtract_decoder_bias": True,
            "sparsity": penalty, "sparsity_weight": weight}


def _photo_model_config(cfg: ReportConfig, **extra) -> dict:
    return {"image_size": (cfg.patch, cfg.patch), "channels": cfg.channels, "unpool": cfg.unpool,
            "code_dim": cfg.photo_code_dim, **extra}


def _logistic(train_x: np.ndarray, train_y: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
    return clf.fit(train_x, train_y)


def _one_per_class(labels: np.ndarray, classes=range(10)) -> np.ndarray:
    return np.array([int(np.flatnonzero(labels == c)[0]) for c in classes])


# ---------------------------------------------------------------------------------------------
# 1 + 2. Dimensionality reduction, 2-D maps, codes as features


def dimensionality(cfg: ReportConfig, digits: Digits) -> Result:
    """Test reconstruction error against code size for PCA, the linear and the convolutional
    autoencoder; logistic-regression accuracy on each one's codes and on raw pixels; 2-D maps."""
    from scipy.linalg import subspace_angles
    from sklearn.decomposition import PCA

    xtr, xte = digits.flat_train, digits.flat_test  # [N, 64]
    ytr, yte = digits.y_train, digits.y_test
    raw_clf = _logistic(xtr, ytr, cfg.seed)
    methods = ("pca", "linear", "conv")
    numbers: dict = {"code_sizes": list(cfg.code_sizes), "mse": {m: [] for m in methods},
                     "train_mse": {m: [] for m in methods},
                     "accuracy": {"raw_pixels": float(raw_clf.score(xte, yte)), **{m: [] for m in methods}},
                     "pca_explained_variance": [], "linear_pca_max_angle_deg": [],
                     "linear_encoder_pca_max_angle_deg": [], "linear_encoder_pca_max_angle_in_span_deg": [],
                     "train_seconds": {"linear": [], "conv": []},
                     "parameters": {"linear": [], "conv": []}, "test_pixel_variance": float(xte.var(0).mean())}
    arrays: dict = {"examples": _one_per_class(yte), "y_test": yte}
    models: dict[str, Autoencoder] = {}
    # The span of the centred training digits: 60 of the 64 pixel directions (4 pixels never vary).
    _, sv, vt = np.linalg.svd(xtr - xtr.mean(0), full_matrices=False)
    span = vt[sv > 1e-8 * sv[0]].T  # [64, r]
    numbers["data_span_dim"] = int(span.shape[1])

    def record(method: str, rec_tr, rec_te, code_tr, code_te) -> None:
        """Errors of the reconstructions and accuracy of a classifier on the codes."""
        numbers["mse"][method].append(mse(rec_te, xte))
        numbers["train_mse"][method].append(mse(rec_tr, xtr))
        numbers["accuracy"][method].append(float(_logistic(code_tr, ytr, cfg.seed).score(code_te, yte)))

    for k in cfg.code_sizes:
        pca = PCA(k, random_state=cfg.seed).fit(xtr)
        p_tr, p_te = pca.transform(xtr), pca.transform(xte)  # [N, k]
        rec_pca = pca.inverse_transform(p_te)  # [M, 64]
        record("pca", pca.inverse_transform(p_tr), rec_pca, p_tr, p_te)
        numbers["pca_explained_variance"].append(float(pca.explained_variance_ratio_.sum()))

        # Full batches: the linear autoencoder's optimum is PCA's subspace, and they get there.
        lin, info = _train("linear", {"input": "vector", "input_dim": xtr.shape[1], "code_dim": k},
                           torch.from_numpy(xtr), cfg, cfg.linear_steps, batch_size=len(xtr), lr=cfg.linear_lr,
                           fine_steps=cfg.linear_fine_steps)
        (l_rec_tr, l_tr), (l_rec_te, l_te) = (run_batches(lin, torch.from_numpy(v)) for v in (xtr, xte))
        record("linear", l_rec_tr, l_rec_te, l_tr.numpy(), l_te.numpy())
        # Same error is not the same subspace: the largest principal angle between the decoder's
        # columns and PCA's components says how far training got (0 degrees: PCA's subspace).
        def angle(basis: np.ndarray, pca=pca) -> float:
            return float(np.degrees(subspace_angles(basis, pca.components_.T).max()))

        decoder = lin.decoder.weight.detach().double().numpy()  # [64, k]
        numbers["linear_pca_max_angle_deg"].append(angle(decoder))
        # The encoder's rows are off PCA's subspace only along pixels that never vary (4 digit
        # pixels are 0 in every training digit): their weights get no gradient and keep their
        # random start. Within the data's span the rows agree with PCA as the decoder's columns do.
        encoder = lin.encoder.weight.detach().double().numpy().T  # [64, k]
        numbers["linear_encoder_pca_max_angle_deg"].append(angle(encoder))
        numbers["linear_encoder_pca_max_angle_in_span_deg"].append(angle(span @ (span.T @ encoder)))
        models[f"digits-linear-k{k}"] = lin
        for key in ("train_seconds", "parameters"):
            numbers[key]["linear"].append(info[key])

        conv, info = _train("image", _digit_model_config(cfg, k), digits.x_train, cfg, cfg.digit_steps,
                            batch_size=cfg.batch_size)
        (c_rec_tr, c_tr), (c_rec_te, c_te) = (run_batches(conv, v) for v in (digits.x_train, digits.x_test))
        record("conv", c_rec_tr.flatten(1), c_rec_te.flatten(1), c_tr.numpy(), c_te.numpy())
        models[f"digits-conv-k{k}"] = conv
        for key in ("train_seconds", "parameters"):
            numbers[key]["conv"].append(info[key])

        if k == cfg.map_code_dim:
            ex = arrays["examples"]
            arrays["recon"] = {"original": xte[ex], "pca": rec_pca[ex], "linear": l_rec_te[ex].numpy(),
                               "conv": c_rec_te[ex].flatten(1).numpy()}
            arrays["map_codes"], arrays["train_codes"] = c_te.numpy(), c_tr.numpy()
        if k == 2:
            arrays["code2"] = c_te.numpy()
    arrays.update(_maps(cfg, arrays["map_codes"], yte))
    arrays["raw_classifier"] = raw_clf
    numbers["map"] = {"code_dim": cfg.map_code_dim, "points": int(len(arrays["map_labels"])),
                      "tsne_perplexity": arrays["tsne_perplexity"],
                      "pca_explained_variance_2d": arrays["map_pca_explained"]}
    return numbers, arrays, models


def _maps(cfg: ReportConfig, codes: np.ndarray, labels: np.ndarray) -> dict:
    """PCA and t-SNE of ``codes [N, K]`` to 2-D."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(codes) if cfg.map_points <= 0 else min(cfg.map_points, len(codes))
    codes, labels = codes[:n], labels[:n]
    pca = PCA(2, random_state=cfg.seed).fit(codes)
    perplexity = cfg.tsne_perplexity  # ReportConfig refused values above (n - 1) / 3
    if perplexity > (n - 1) / 3:  # cannot happen for a checked config; never silently
        log.warning("tsne_perplexity %g lowered to %.4g: the map has only %d points", perplexity, (n - 1) / 3, n)
        perplexity = (n - 1) / 3
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=cfg.seed).fit_transform(codes)
    return {"map_pca": pca.transform(codes), "map_tsne": tsne, "map_labels": labels,
            "map_pca_explained": float(pca.explained_variance_ratio_.sum()), "tsne_perplexity": float(perplexity)}


# ---------------------------------------------------------------------------------------------
# 3. Denoising photographs


def _gaussian_filter_oracle(noisy: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """Best PSNR of a Gaussian blur over a few widths (chosen on the clean image: an upper bound)."""
    from scipy.ndimage import gaussian_filter

    best = max((psnr(gaussian_filter(noisy, s), clean), s)
               for s in (0.5, 0.75, 1.0, 1.5, 2.0))
    return best


def denoising(cfg: ReportConfig, photos: Photos, plain: ImageAutoencoder | None) -> Result:
    """Denoising autoencoders on photograph patches, one per corruption; PSNR on the held-out
    photograph before and after, beside the plain autoencoder (same architecture, clean training)."""
    numbers: dict = {"test_image": TEST_PHOTOGRAPH, "image_shape": list(photos.test_image.shape)}
    arrays: dict = {"clean": photos.test_image.numpy()}
    models: dict[str, Autoencoder] = {}
    clean = photos.test_image  # [H, W]
    for i, kind in enumerate(("gaussian", "patches")):
        config = _photo_model_config(cfg, corruption=kind, noise_std=cfg.noise_std,
                                     patch_fraction=cfg.dark_fraction, patch_size=cfg.dark_patch)
        model, info = _train("image", config, photos.train, cfg, cfg.photo_steps, batch_size=cfg.photo_batch_size,
                             seed_offset=10 + i)
        # The model's own corruption, with a fixed seed: the same test image every run.
        noisy = corrupt_images(clean[None, None], model.config, torch.Generator().manual_seed(cfg.seed + 4242))[0, 0]  # [H, W]
        out = reconstruct_image(model, noisy)  # [H, W]
        res = {"psnr_in": psnr(noisy, clean), "psnr_out": psnr(out, clean),
               "psnr_clean_through_model": psnr(reconstruct_image(model, clean), clean), **info}
        if kind == "gaussian":
            res["noise_std"] = cfg.noise_std
            best, sigma = _gaussian_filter_oracle(noisy.numpy(), clean.numpy())
            res["gaussian_filter_best_psnr"], res["gaussian_filter_best_sigma"] = best, sigma
        else:
            res["dark_fraction_measured"] = float((noisy == 0).double().mean() - (clean == 0).double().mean())
            res["dark_patch"] = list(cfg.dark_patch)
        if plain is not None:
            plain_out = reconstruct_image(plain, noisy)
            res["psnr_plain_autoencoder"] = psnr(plain_out, clean)
            arrays[f"{kind}_plain"] = plain_out.numpy()
        res["psnr_gain"] = res["psnr_out"] - res["psnr_in"]
        numbers[kind] = res
        arrays[f"{kind}_noisy"], arrays[f"{kind}_out"] = noisy.numpy(), out.numpy()
        models[f"photo-denoise-{kind}"] = model
    return numbers, arrays, models


# ---------------------------------------------------------------------------------------------
# 4. Sparse codes


def sparsity_numbers(h: torch.Tensor, top: int = 8) -> dict:
    """How sparse a code ``h [N, K]`` is. Active: at least 1e-3 of the largest activation (below
    it: near zero). A unit is live when it is active for at least one input, dead otherwise.

    Two kinds of sparsity: a penalty can silence whole units for every input (fewer live units,
    a smaller code) or make each input use few of many live units (an overcomplete sparse code).
    ``mean_active_units`` counts both; ``active_share_of_live`` (the mean share of live units
    active per input, which is also the mean share of inputs each live unit is active for) and
    ``live_units_active_under_half`` (live units active for fewer than half the inputs) tell
    them apart. ``top_energy_share`` is the mean share of an input's code energy (sum of h**2)
    in its ``top`` largest units: near 1 when each input is carried by a few units, whatever
    the threshold for "active" says of many tiny ones.
    """
    near_zero = fraction_near_zero(h)
    active = h.abs() >= 1e-3 * h.abs().max().clamp_min(1e-12)  # [N, K], the complement of near zero
    live = active.any(0)  # [K]
    n_live = int(live.sum())
    silent = h.abs().amax(1) == 0  # [N] code vectors with no active unit
    per_unit = active.double().mean(0)  # [K] share of inputs each unit is active for
    energy = h[~silent].double().pow(2)  # [M, K]
    top_share = energy.topk(min(top, h.shape[1]), dim=1).values.sum(1) / energy.sum(1)  # [M]
    return {"fraction_zero": float((h == 0).double().mean()), "fraction_near_zero": near_zero,
            "mean_active_units": (1 - near_zero) * h.shape[1],
            "live_units": n_live, "dead_units": h.shape[1] - n_live,
            "active_share_of_live": float(per_unit[live].mean()) if n_live else None,
            "live_units_active_under_half": int((per_unit[live] < 0.5).sum()),
            # Hoyer's measure is undefined for an all-zero vector: measured over the others.
            "hoyer": hoyer_sparsity(h[~silent]) if bool((~silent).any()) else None,
            "top_units": top, "top_energy_share": float(top_share.mean()) if len(top_share) else None,
            "silent_codes": int(silent.sum()), "mean_abs_code": float(h.abs().mean())}


def sparse_codes(cfg: ReportConfig, digits: Digits) -> Result:
    """An overcomplete ReLU code (more units than pixels) under no, L1 and L2 penalties, from the
    one-layer sparse autoencoder of :func:`_sparse_model_config`."""
    rows, codes, atoms = [], {}, {}
    models: dict[str, Autoencoder] = {}
    mean_digit = digits.x_train.flatten(1).mean(0)  # [64]
    h_init: list[torch.Tensor] = []  # each run's code of the test digits before training

    def init(model: ImageAutoencoder) -> None:
        with torch.no_grad():
            model.from_code.bias.copy_(mean_digit)  # b_d: the encoder starts on centred digits
        h_init.append(run_batches(model, digits.x_test)[1])  # [N, K]

    for i, (penalty, weight) in enumerate(cfg.sparse_runs):
        model, info = _train("image", _sparse_model_config(cfg, penalty, weight), digits.x_train, cfg,
                             cfg.sparse_steps, batch_size=cfg.batch_size, seed_offset=20 + i, init=init)
        rec, h = run_batches(model, digits.x_test)  # [N, 1, 8, 8], [N, K]
        rows.append({"penalty": penalty, "weight": weight, "mse": mse(rec, digits.x_test), "code_dim": h.shape[1],
                     **sparsity_numbers(h), "live_units_at_init": sparsity_numbers(h_init[i])["live_units"], **info})
        key = "none" if penalty == "none" else f"{penalty} {weight:g}"
        codes[key] = h.numpy()
        atoms[key] = model.atoms().detach().reshape(-1, 8, 8).numpy()  # [K, 8, 8]
        models[f"digits-sparse-{penalty}-{weight:g}"] = model
    numbers = {"runs": rows, "code_dim": cfg.sparse_code_dim, "steps": cfg.sparse_steps,
               "model": "one dense ReLU layer each way, unit-norm decoder columns (atoms), encoder tied to them at "
                        "the start and fed the digit minus the decoder's bias (the mean digit at the start)"}
    return numbers, {"codes": codes, "atoms": atoms}, models


# ---------------------------------------------------------------------------------------------
# 5. Unpooling


@torch.inference_mode()
def _inference_ms(model: Autoencoder, x: torch.Tensor, repeats: int = 5) -> float:
    """Best of ``repeats`` forward passes over ``x``, in ms per 1,000 inputs (the best is the
    least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_batches(model, x)
        best = min(best, time.perf_counter() - t0)
    return 1e6 * best / len(x)


def unpooling(cfg: ReportConfig, photos: Photos) -> Result:
    """The three unpooling methods with the same encoder, code size and training budget."""
    rows, recon = [], {}
    models: dict[str, Autoencoder] = {}
    test = photos.test_patches  # [P, 1, s, s]
    for method in UNPOOLING:
        # Same seed for all three: the same encoder initialisation and the same batches.
        model, info = _train("image", _photo_model_config(cfg, unpool=method), photos.train, cfg, cfg.photo_steps,
                             batch_size=cfg.photo_batch_size, seed_offset=30)
        rec, _ = run_batches(model, test)
        whole = reconstruct_image(model, photos.test_image)  # [H, W]
        rows.append({"method": method, "mse": mse(rec, test), "psnr": psnr(rec, test),
                     "psnr_whole_image_overlapping": psnr(whole, photos.test_image),
                     "inference_ms_per_1000": _inference_ms(model, test),
                     "decodes_bare_code": method != "maxunpool", **info})
        recon[method] = whole.numpy()
        models[f"photo-{method}"] = model
    numbers = {"runs": rows, "code_dim": cfg.photo_code_dim, "patch": cfg.patch, "test_patches": len(test)}
    return numbers, {"recon": recon, "clean": photos.test_image.numpy()}, models


# ---------------------------------------------------------------------------------------------
# 6. Generating similar objects


@torch.inference_mode()
def generation(cfg: ReportConfig, digits: Digits, model: ImageAutoencoder, train_codes: np.ndarray,
               classifier) -> Result:
    """Decode perturbed codes, interpolations between codes and samples of a Gaussian fitted to
    the training codes; a logistic regression on raw pixels says which digit each output looks like."""
    gen = torch.Generator().manual_seed(cfg.seed + 6)
    codes = torch.from_numpy(train_codes)  # [N, K]
    std = codes.std(0)  # [K]

    def predict(images: torch.Tensor) -> np.ndarray:
        return classifier.predict_proba(images.flatten(1).numpy())  # [M, 10]

    base_rec, h_test = run_batches(model, digits.x_test)  # [M, 1, 8, 8], [M, K]
    numbers: dict = {"code_dim": int(codes.shape[1]), "perturbation": [],
                     "reconstruction_label_kept": float((predict(base_rec).argmax(1) == digits.y_test).mean())}
    examples = _one_per_class(digits.y_test, (0, 2, 3, 5, 8))
    arrays: dict = {"perturbed": {}, "examples": examples, "example_labels": digits.y_test[examples].tolist(),
                    "base": base_rec[examples].numpy()}
    for scale in cfg.perturb_scales:
        out = model.decode(h_test + torch.randn(h_test.shape, generator=gen) * std * scale)  # [M, 1, 8, 8]
        numbers["perturbation"].append({"scale": scale,
                                        "label_kept": float((predict(out).argmax(1) == digits.y_test).mean()),
                                        "mse_to_reconstruction": mse(out, base_rec)})
        h_ex = h_test[examples]  # [E, K]
        draws = [model.decode(h_ex + torch.randn(h_ex.shape, generator=gen) * std * scale) for _ in range(6)]
        arrays["perturbed"][scale] = torch.stack(draws, 1).numpy()  # [E, 6, 1, 8, 8]

    pairs = [(0, 6), (3, 8), (1, 7), (4, 9)]
    t = torch.linspace(0, 1, cfg.interpolation_steps)  # [S]
    interp, pixel_interp, paths = [], [], []
    for a, b in pairs:
        ia, ib = _one_per_class(digits.y_test, (a, b))
        out = model.decode((1 - t)[:, None] * h_test[ia] + t[:, None] * h_test[ib])  # [S, 1, 8, 8]
        pix = (1 - t)[:, None, None, None] * digits.x_test[ia] + t[:, None, None, None] * digits.x_test[ib]
        p_code, p_pix = predict(out), predict(pix)  # [S, 10]
        interp.append(out.numpy())
        pixel_interp.append(pix.numpy())
        paths.append({"from": a, "to": b, "code_path_labels": p_code.argmax(1).tolist(),
                      "code_path_confidence": p_code.max(1).tolist(), "pixel_path_labels": p_pix.argmax(1).tolist(),
                      "pixel_path_confidence": p_pix.max(1).tolist()})
    numbers["interpolation"] = paths
    # Classifier confidence halfway: a blend of two digits' pixels is ambiguous; a decoded blend
    # of their codes tends to look like some digit.
    mid = cfg.interpolation_steps // 2
    numbers["interpolation_mid_confidence"] = {
        "code": float(np.mean([p["code_path_confidence"][mid] for p in paths])),
        "pixel": float(np.mean([p["pixel_path_confidence"][mid] for p in paths]))}
    arrays["interp"], arrays["pixel_interp"] = np.stack(interp), np.stack(pixel_interp)  # [P, S, 1, 8, 8]
    arrays["pairs"] = pairs

    cov = torch.cov(codes.T.double()) + 1e-6 * torch.eye(codes.shape[1], dtype=torch.float64)  # [K, K]
    dist = torch.distributions.MultivariateNormal(codes.mean(0).double(), covariance_matrix=cov)
    torch.manual_seed(cfg.seed + 7)
    samples = model.decode(dist.sample((cfg.gaussian_samples,)).float())  # [S, 1, 8, 8]
    proba = predict(samples)
    numbers["gaussian_samples"] = {
        "count": cfg.gaussian_samples, "mean_confidence": float(proba.max(1).mean()),
        "test_digits_mean_confidence": float(classifier.predict_proba(digits.flat_test).max(1).mean()),
        "label_histogram": np.bincount(proba.argmax(1), minlength=10).tolist()}
    arrays["samples"] = samples[:24].numpy()
    return numbers, arrays, {}
