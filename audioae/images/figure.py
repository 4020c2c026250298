"""The report figure: one tall page, one band per experiment. Uses matplotlib's object API
(``Figure``, no pyplot): no global state, no display needed."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .experiments import FIGURE_INCHES

CMAP_DIGITS = "tab10"


def mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """``tiles [R, C, H, W]`` -> one ``[R*(H+gap)-gap, C*(W+gap)-gap]`` image, NaN in the gaps."""
    r, c, h, w = tiles.shape
    out = np.full((r * (h + gap) - gap, c * (w + gap) - gap), np.nan, dtype=np.float64)
    for i in range(r):
        for j in range(c):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = tiles[i, j]
    return out


def _gray(ax, img: np.ndarray, title: str = "", fontsize: int = 10) -> None:
    import matplotlib as mpl

    cmap = mpl.colormaps["gray"].with_extremes(bad="white")  # NaN: the gaps between tiles
    ax.imshow(np.clip(img, 0, 1), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def a_or_an(n: int) -> str:
    """The article before ``n`` read aloud: "an 8-unit code", "an 11-unit", "a 16-unit"."""
    s = str(n)
    return "an" if s.startswith("8") or (len(s) % 3 == 2 and s[:2] in ("11", "18")) else "a"


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, title: str, axis: str):
    """A 2-D map coloured by digit; ``axis`` names its two axes ("t-SNE 1", "t-SNE 2"). No
    ticks: the map's units mean nothing on their own (t-SNE's) or little (PCA's)."""
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=CMAP_DIGITS, vmin=-0.5, vmax=9.5, s=6, alpha=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    return sc


def _band_dimensionality(sf, n: dict, a: dict) -> None:
    axes = sf.subplots(1, 4, gridspec_kw={"width_ratios": [1.3, 1, 1, 1]})
    ks = n["code_sizes"]
    for key, label, style in (("pca", "PCA", "o-"), ("linear", "linear autoencoder", "s--"), ("conv", "conv autoencoder", "^-")):
        axes[0].plot(ks, n["mse"][key], style, label=label)
    _label_angles(axes[0], ks, n["mse"]["linear"], n.get("linear_pca_max_angle_deg"))
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].set_xticks(ks, [str(k) for k in ks])
    axes[0].set_xlabel("code size (of 64 pixels)")
    axes[0].set_ylabel("test MSE per pixel")
    axes[0].set_title("reconstruction error against code size", fontsize=10)
    axes[0].legend(fontsize=9)
    axes[0].grid(alpha=0.3)
    if "code2" in a:
        _scatter(axes[1], a["code2"], a["y_test"], "conv autoencoder with a 2-unit code", "code unit")
    else:
        axes[1].set_axis_off()
    k = n["map"]["code_dim"]
    _scatter(axes[2], a["map_pca"], a["map_labels"], f"conv AE's {k}-unit codes: PCA", "principal component")
    sc = _scatter(axes[3], a["map_tsne"], a["map_labels"], f"conv AE's {k}-unit codes: t-SNE", "t-SNE axis")
    cb = sf.colorbar(sc, ax=axes[3], ticks=range(10), fraction=0.05)
    cb.set_label("digit")


def _label_angles(ax, ks: list[int], mse: list[float], angles: list[float | None] | None) -> None:
    """Beside each linear AE point, the largest principal angle between its decoder's subspace
    (its columns; the encoder's rows are off it along pixels that never vary) and PCA's: equal
    error alone does not show it found PCA's subspace."""
    if not angles:
        return
    for k, err, angle in zip(ks, mse, angles, strict=True):
        if angle is not None and err is not None:
            ax.annotate(f"{angle:.2g}°", (k, err), textcoords="offset points", xytext=(4, 5), fontsize=8,
                        color="tab:orange")
    ax.plot([], [], " ", label="°: largest angle, linear AE's\ndecoder to PCA's subspace")  # a legend line, no marker


def _band_features(sf, n: dict, dim_arrays: dict) -> None:
    axes = sf.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    ks, acc = n["code_sizes"], n["accuracy"]
    for key, label, style in (("pca", "PCA features", "o-"), ("linear", "linear AE codes", "s--"), ("conv", "conv AE codes", "^-")):
        axes[0].plot(ks, acc[key], style, label=label)
    axes[0].axhline(acc["raw_pixels"], color="k", ls=":", label=f"raw pixels (64): {acc['raw_pixels']:.3f}")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(ks, [str(k) for k in ks])
    axes[0].set_xlabel("feature size")
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("logistic regression on codes", fontsize=10)
    axes[0].legend(fontsize=9, loc="lower right")
    axes[0].grid(alpha=0.3)
    r = dim_arrays["recon"]
    rows = [r["original"], r["pca"], r["linear"], r["conv"]]
    tiles = np.stack([np.asarray(x).reshape(-1, 8, 8) for x in rows])  # [4, 10, 8, 8]
    _gray(axes[1], mosaic(tiles), f"test digits and their reconstructions from {n['map']['code_dim']} numbers")
    axes[1].set_yticks([3.5 + 9 * i for i in range(4)], ["original", "PCA", "linear AE", "conv AE"])


def _band_denoising(sf, n: dict, a: dict) -> None:
    axes = sf.subplots(2, 4)
    for row, kind, label in ((0, "gaussian", f"Gaussian noise, std {n['gaussian'].get('noise_std', '')}"),
                             (1, "patches", "darkened patches")):
        res = n[kind]
        _gray(axes[row, 0], a["clean"], "clean (held out)")  # each row's: the rows are read one by one
        _gray(axes[row, 1], a[f"{kind}_noisy"], f"{label}: {res['psnr_in']:.1f} dB")
        if f"{kind}_plain" in a:
            _gray(axes[row, 2], a[f"{kind}_plain"], f"plain autoencoder: {res['psnr_plain_autoencoder']:.1f} dB")
        else:
            axes[row, 2].set_axis_off()
        _gray(axes[row, 3], a[f"{kind}_out"], f"denoising autoencoder: {res['psnr_out']:.1f} dB")


def _band_sparsity(sf, n: dict, a: dict) -> None:
    axes = sf.subplots(1, 6, gridspec_kw={"width_ratios": [1.3, 1, 1, 1, 0.5, 0.5]})
    runs = n["runs"]
    colors = {"none": "k", "l1": "tab:red", "l2": "tab:blue", "kl": "tab:green", "topk": "tab:purple"}
    # Active share of the live units, not of all: dead units (silent for every digit) make a code
    # smaller, not sparse, and the share of near-zero entries counts them as sparsity.
    shares = [r["active_share_of_live"] for r in runs if r.get("active_share_of_live") is not None]
    middle = (min(shares) + max(shares)) / 2 if shares else 0.5
    for r in runs:
        x = r.get("active_share_of_live")
        if x is None:  # every unit dead
            continue
        axes[0].scatter(x, r["mse"], color=colors.get(r["penalty"], "gray"), s=40)
        label = "none" if r["penalty"] == "none" else f"{r['penalty'].upper()} {r['weight']:g}"
        # Labels point into the plot, never over the tick labels; L1 and L2 pairs sit at about the
        # same error, so L1's go below its point and the others' above.
        left = x > middle
        below = r["penalty"] == "l1"
        axes[0].annotate(f"{label} ({r['live_units']} live)", (x, r["mse"]), textcoords="offset points",
                         xytext=(-5 if left else 5, -11 if below else 4), ha="right" if left else "left", fontsize=9)
    axes[0].margins(x=0.3, y=0.15)  # room for the labels
    axes[0].set_xlabel("share of the live units active per digit")
    axes[0].set_ylabel("test MSE per pixel")
    axes[0].set_title(f"{n['code_dim']}-unit ReLU code of 64 pixels", fontsize=10)
    axes[0].grid(alpha=0.3)
    codes = a["codes"]
    # The unpenalised code and the strongest L1 and L2 weights; a blank panel for any not run.
    pick = ["none" if "none" in codes else None] + [
        max((k for k in codes if k.startswith(p)), key=lambda k: float(k.split()[1]), default=None) for p in ("l1", "l2")]
    for ax, key in zip(axes[1:4], pick, strict=True):
        if key is None:
            ax.set_axis_off()
            continue
        h = codes[key][:40]  # [40, K]
        # Each on its own scale (a penalty shrinks the whole code), so each has its own colour bar.
        im = ax.imshow(h, aspect="auto", cmap="magma", interpolation="nearest", vmin=0, vmax=max(float(h.max()), 1e-12))
        sf.colorbar(im, ax=ax, fraction=0.08, pad=0.02).set_label("activation", fontsize=9)
        row = next(r for r in runs if (r["penalty"] == "none" if key == "none" else f"{r['penalty']} {r['weight']:g}" == key))
        top = "-" if row.get("top_energy_share") is None else f"{row['top_energy_share']:.2f}"
        ax.set_title(f"{key.upper()}: {row['mean_active_units']:.0f} of {n['code_dim']} units active per digit,\n"
                     f"{row.get('top_units', 8)} largest carry {top} of its energy", fontsize=10)
        ax.set_xlabel("code unit")
        ax.set_ylabel("test digit")
    # Atoms (decoder columns) of the same L1 and L2 models, the 24 most used first; signed, so
    # each on its own symmetric scale.
    for ax, key in zip(axes[4:], pick[1:], strict=True):
        atoms = a.get("atoms", {}).get(key)
        if atoms is None:
            ax.set_axis_off()
            continue
        use = (codes[key] ** 2).mean(0)  # [K]
        tiles = atoms[np.argsort(-use)[:24]]  # [24, 8, 8]
        tiles = tiles / np.abs(tiles).max(axis=(1, 2), keepdims=True).clip(1e-12)
        tiles = np.concatenate([tiles, np.full((24 - len(tiles), *tiles.shape[1:]), np.nan)])  # fewer than 24 units
        im = ax.imshow(mosaic(tiles.reshape(8, 3, *tiles.shape[1:])), cmap="RdBu_r", vmin=-1, vmax=1,
                       interpolation="nearest")
        bar = sf.colorbar(im, ax=ax, orientation="horizontal", fraction=0.04, pad=0.02, ticks=[-1, 0, 1])
        bar.set_label("weight / atom's\nlargest |weight|", fontsize=8)  # short lines: a narrow panel
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{key.upper()} atoms,\nmost used\nfirst", fontsize=10)  # short lines: a narrow panel


def _band_unpooling(sf, n: dict, a: dict) -> None:
    axes = sf.subplots(1, 5, gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.5]})
    h, w = a["clean"].shape
    crop = (slice(h // 4, h // 4 + h // 2), slice(w // 4, w // 4 + w // 2))
    _gray(axes[0], a["clean"][crop], "held-out photograph (crop)")
    for ax, r in zip(axes[1:4], n["runs"], strict=True):
        psnr_image = r["psnr_whole_image_overlapping"]
        _gray(ax, a["recon"][r["method"]][crop], f"{r['method']}: whole image {psnr_image:.1f} dB")
    axes[4].set_axis_off()
    cells = [[r["method"], f"{r['psnr']:.2f}", f"{r['psnr_whole_image_overlapping']:.2f}", f"{r['parameters']:,}",
              f"{r['train_seconds']:.1f}", f"{r['inference_ms_per_1000']:.1f}"] for r in n["runs"]]
    table = axes[4].table(cellText=cells, colLabels=["unpooling", "patch dB", "image dB", "params", "train s", "ms/1k"],
                          colWidths=[0.22, 0.15, 0.15, 0.17, 0.14, 0.14], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.6)
    # Short lines: the panel is a fifth of the page wide and a long title is clipped at its edge.
    axes[4].set_title(f"{n['test_patches']} held-out {n['patch']}x{n['patch']} patches, {n['code_dim']}-unit code.\n"
                      "Patch: the non-overlapping grid. Image: overlapping\n"
                      "patches averaged (the crops). Max-unpooling also\n"
                      "passes the pooling indices to the decoder.", fontsize=10)


def _band_generation(sf, n: dict, a: dict) -> None:
    m = sf.subplot_mosaic([["perturbed", "perturbed"], ["interp", "samples"]],
                          gridspec_kw={"height_ratios": [1, 1.6], "width_ratios": [1, 1]})
    axes = [m["perturbed"], m["interp"], m["samples"]]
    scales = list(a["perturbed"])
    e = len(a["examples"])
    blocks = [a["base"].reshape(e, 1, 8, 8)] + [a["perturbed"][s].reshape(e, -1, 8, 8) for s in scales]
    tiles = np.concatenate(blocks, axis=1)  # [E, 1 + 6*S, 8, 8]
    per = a["perturbed"][scales[0]].shape[1]
    _gray(axes[0], mosaic(tiles), f"perturbed codes: each digit's reconstruction, then {per} decodes of its code "
          "plus Gaussian noise per scale (σ: each unit's spread over the training codes)")
    # Tile column j is centred at 9j + 3.5 (8 pixels and a 1-pixel gap); column 0 is the reconstruction.
    axes[0].set_xticks([3.5] + [9 * (1 + per * i + (per - 1) / 2) + 3.5 for i in range(len(scales))],
                       ["recon-\nstruction"] + [f"noise {s:g}σ" for s in scales])
    for i in range(len(scales)):  # a line in the gap before each scale's first column
        axes[0].axvline(9 * (1 + per * i) - 1, color="tab:red", lw=1.5)
    axes[0].set_yticks([3.5 + 9 * i for i in range(e)], [str(d) for d in a["example_labels"]])
    interp, pix = a["interp"], a["pixel_interp"]  # [P, S, 1, 8, 8]
    rows = np.stack([x for pair in zip(interp, pix, strict=True) for x in pair])  # [2P, S, 1, 8, 8]
    _gray(axes[1], mosaic(rows.reshape(rows.shape[0], rows.shape[1], 8, 8)), "interpolation: code space / pixel space")
    axes[1].set_yticks([3.5 + 9 * i for i in range(len(rows))],
                       [f"{p[0]}→{p[1]} {kind}" for p in a["pairs"] for kind in ("code", "pixel")], fontsize=8)
    samples = a["samples"][:24].reshape(3, 8, 8, 8)
    g = n["gaussian_samples"]
    _gray(axes[2], mosaic(samples), f"samples of a Gaussian fitted to the codes\n"
          f"classifier confidence {g['mean_confidence']:.2f} (test digits {g['test_digits_mean_confidence']:.2f})")


def draw(numbers: dict, arrays: dict) -> Figure:
    """The whole report as one figure."""
    fig = Figure(figsize=FIGURE_INCHES, layout="constrained")
    bands = fig.subfigures(6, 1, height_ratios=[1, 1, 1.7, 1.1, 1, 1.6])
    titles = [
        "1. Dimensionality reduction: scikit-learn digits (8x8), test set",
        "2. Codes as features for another model",
        f"3. Denoising: trained on photograph patches, tested on the held-out '{numbers['denoising']['test_image']}'",
        "4. Sparse codes: L1 against L2",
        "5. The three unpooling methods",
        f"6. Generating similar digits from {a_or_an(numbers['generation']['code_dim'])} "
        f"{numbers['generation']['code_dim']}-unit code",
    ]
    _band_dimensionality(bands[0], numbers["dimensionality"], arrays["dimensionality"])
    _band_features(bands[1], numbers["dimensionality"], arrays["dimensionality"])
    _band_denoising(bands[2], numbers["denoising"], arrays["denoising"])
    _band_sparsity(bands[3], numbers["sparsity"], arrays["sparsity"])
    _band_unpooling(bands[4], numbers["unpooling"], arrays["unpooling"])
    _band_generation(bands[5], numbers["generation"], arrays["generation"])
    for band, title in zip(bands, titles, strict=True):
        band.suptitle(title, fontsize=14, fontweight="bold", x=0.01, ha="left")
    return fig
