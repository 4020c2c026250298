"""Figures for decompositions and dictionaries (matplotlib's object API: a ``Figure`` on an Agg
canvas, no pyplot, so importing audioae sets no backend and keeps no figures; written atomically, in
the format the file's extension names, and never over a file that is not such a figure).

- :func:`plot_decomposition`: input spectrogram, the atoms behind the strongest components,
  their activations over time, and their spectrograms -- one PNG to read at a glance;
- :func:`plot_dictionary`: every atom of a :class:`~audioae.models.sparse_dict.SparseDictionary`,
  sorted by peak frequency, with where the atoms sit and how wide they are (a wavelet basis would
  show a constant bandwidth-to-frequency ratio);
- :func:`plot_denoising` (with :func:`denoising_view` and :func:`denoising_stats`): what a
  denoiser does to one recording: input and output spectrograms, the effective gain, the code.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .decompose import Decomposition
from .fileio import atomic_write_bytes
from .models.base import SpectralAutoencoder
from .models.sparse_dict import SparseDictionary
from .spectral import STFT

MAX_PANELS = 8  # component spectrograms shown (the strongest)


def _is_svg(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return start.startswith((b"<?xml", b"<svg", b"<!DOCTYPE svg", b"<!--")) and b"<svg" in head


# What a figure can be written as, by extension (matplotlib picks the writer from it), and how a
# file of that format begins: an existing file is replaced only by a figure of its own kind. Not
# offered: pgf (LaTeX code; needs a TeX install), raw and rgba (bare pixels: no header to know
# them by), and any Pillow cannot write here (see figure_formats).
_SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    "png": lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"),
    "pdf": lambda h: h.startswith(b"%PDF-"),
    "svg": _is_svg,
    "svgz": lambda h: h.startswith(b"\x1f\x8b"),  # gzip
    "eps": lambda h: h.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")),  # text, or with a DOS binary header
    "ps": lambda h: h.startswith(b"%!PS"),
    "jpg": lambda h: h.startswith(b"\xff\xd8\xff"),
    "jpeg": lambda h: h.startswith(b"\xff\xd8\xff"),
    "tif": lambda h: h.startswith((b"II*\x00", b"MM\x00*")),
    "tiff": lambda h: h.startswith((b"II*\x00", b"MM\x00*")),
    "webp": lambda h: h.startswith(b"RIFF") and h[8:12] == b"WEBP",
    "gif": lambda h: h.startswith((b"GIF87a", b"GIF89a")),
    "avif": lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"avif", b"avis"),
}
_PILLOW_FEATURE = {"jpg": "jpg", "jpeg": "jpg", "webp": "webp", "avif": "avif"}  # a library Pillow may lack


def figure_formats() -> list[str]:
    """Extensions a figure can be written under here (lower case, no dot), PNG first."""
    from PIL import features

    listed = FigureCanvasAgg.get_supported_filetypes()
    return [ext for ext in _SIGNATURES
            if ext in listed and (ext not in _PILLOW_FEATURE or features.check(_PILLOW_FEATURE[ext]))]


def figure_format(path: str | os.PathLike) -> str:
    """The format a figure at ``path`` is written in: its extension, if matplotlib can write it
    here (a ValueError naming those it can, if not)."""
    ext = Path(path).suffix.lower().removeprefix(".")
    formats = figure_formats()
    if ext in formats:
        return ext
    said = f".{ext} is not one of them" if ext else "the name has no extension"
    raise ValueError(f"{path}: a figure is written in the format its extension names: "
                     f"{', '.join('.' + f for f in formats)}; {said}")


def check_figure_path(path: str | os.PathLike) -> str:
    """:func:`figure_format` of ``path``, after making sure that writing there loses nothing: a
    file already there must be a figure in that format (one this module could have written, say
    by an earlier run), or empty. Anything else, a script named ``x.py`` or text named
    ``notes.png``, is refused (a ValueError)."""
    fmt = figure_format(path)
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{path}: is a folder; name the figure file to write")
    if p.exists() and not p.is_file():
        raise ValueError(f"{path}: exists and is not a regular file; choose another path")
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(4096)
        if head and not _SIGNATURES[fmt](head):
            raise ValueError(f"{path}: exists and is not a {fmt.upper()} file (not a figure this command could "
                             f"have written); refusing to replace it: choose another path, or delete the file first")
    return fmt


def _figure(**kwargs) -> Figure:
    """A ``Figure(**kwargs)`` on its own Agg canvas. Not pyplot's: ``matplotlib.use("Agg")`` at
    import switched the backend of every program that imported audioae (an interactive session's
    windows stopped showing), and pyplot keeps each figure until it is closed."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """``fig`` written atomically to ``path``, in the format its extension names (and only over a
    figure of that format: :func:`check_figure_path`)."""
    fmt = check_figure_path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _db(mag: np.ndarray) -> np.ndarray:
    return 20 * np.log10(mag + 1e-6)


def _colour_top(db: np.ndarray) -> float:
    """The dB value drawn brightest: the loudest bin, but never below -40 dB, so that silence
    (all at _db's -120 dB floor) is drawn dark instead of at the top of the scale."""
    return max(float(db.max()), -40.0)


def _spec_mag(wav: np.ndarray, sr: int) -> tuple[np.ndarray, float, float]:
    """Mono ``wav [T]`` -> ``(|STFT| [F, N], hop seconds, bin Hz)`` with a ~32 ms window."""
    n_fft = 2 ** max(6, round(math.log2(0.032 * sr)))
    stft = STFT(n_fft, n_fft // 4)
    mag = stft(torch.as_tensor(wav, dtype=torch.float32)).abs().numpy()  # [F, N]
    return mag, (n_fft // 4) / sr, sr / n_fft



def _show_spec(ax, db: np.ndarray, hop_s: float, bin_hz: float, vmax: float, title: str, t0: float = 0.0):
    """``db [F, N]`` drawn from ``t0`` s (the file's time of its first frame); returns the image."""
    extent = (t0, t0 + db.shape[1] * hop_s, 0, db.shape[0] * bin_hz)
    im = ax.imshow(db, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=vmax - 80, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("Hz", fontsize=8)
    ax.tick_params(labelsize=7)
    return im


def _hz_ticks(axis, lo: float, hi: float) -> None:
    """Readable ticks (50, 100, 200, 500 Hz, 1k, ...) on a log-frequency ``axis`` (``ax.xaxis`` or
    ``ax.yaxis``) from ``lo`` to ``hi``: matplotlib's own gave 10^2 and 10^3 only."""
    ticks = [m * 10**e for e in range(0, 6) for m in (1, 2, 5) if lo <= m * 10**e <= hi]
    axis.set_ticks(ticks)
    axis.set_ticklabels([f"{t / 1000:g}k" if t >= 1000 else f"{t:g}" for t in ticks])
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


MAX_COLUMNS = 1500  # frames drawn per spectrogram: a long input's are pooled (loudest kept) to this many
FLOOR_DB = -80.0  # the colour scale's bottom, re the input's loudest bin


def _pool_frames(db: np.ndarray, most: int = MAX_COLUMNS) -> np.ndarray:
    """``db [F, N]`` with its frames pooled to at most ``most`` columns, each the loudest of its
    frames (a click stays visible)."""
    n = db.shape[1]
    if n <= most:
        return db
    edges = np.linspace(0, n, most + 1).astype(int)
    return np.maximum.reduceat(db, edges[:-1], axis=1)


LOG_ROWS = 240  # rows of a log-frequency spectrogram: about a pixel each in a panel


def _log_rows(db: np.ndarray, bin_hz: float, top_hz: float, rows: int = LOG_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """``db [F, N]`` on ``rows`` log-spaced rows from half a bin to ``top_hz``: ``(edges [rows + 1]
    Hz, [rows, N])``. A row takes the loudest of the bins whose centres it holds, or the nearest
    bin where it holds none (low rows are narrower than a bin): drawn bin by bin, a 12 kHz tone's
    one bin was a twentieth of a pixel high, and vanished."""
    edges = np.geomspace(bin_hz / 2, top_hz, rows + 1)
    nearest = np.clip(np.round(np.sqrt(edges[:-1] * edges[1:]) / bin_hz).astype(int), 1, db.shape[0] - 1)
    out = db[nearest]  # [rows, N]
    bins = np.arange(1, db.shape[0])
    bins = bins[bins * bin_hz < top_hz]  # the 0 Hz bin has no place on a log axis; above top_hz, none shown
    np.maximum.at(out, np.searchsorted(edges, bins * bin_hz) - 1, db[bins])
    return edges, out


def _show_log_spec(ax, db: np.ndarray, seconds: float, bin_hz: float, top_hz: float, title: str):
    """``db [F, N]`` (dB re the input's loudest bin) on a log-frequency axis from half a bin to
    ``top_hz``, as librosa.display draws one: a chord at 250-400 Hz fills the panel instead of its
    bottom twentieth. The 0 Hz bin has no place on it and is left out. Returns the mesh (for a
    colour bar)."""
    f_edges, shown = _log_rows(_pool_frames(db), bin_hz, top_hz)  # [rows + 1], [rows, N']
    t_edges = np.linspace(0, seconds, shown.shape[1] + 1)
    mesh = ax.pcolormesh(t_edges, f_edges, shown, cmap="magma", vmin=FLOOR_DB, vmax=0, shading="flat", rasterized=True)
    ax.set_yscale("log")
    ax.set_ylim(bin_hz / 2, top_hz)
    _hz_ticks(ax.yaxis, bin_hz, top_hz)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("Hz", fontsize=8)
    ax.set_xlabel("time, s", fontsize=8)
    ax.tick_params(labelsize=7)
    return mesh


def _input_title(dec: Decomposition, sr: int, seconds: float, channels: int, shown: int) -> str:
    """The figure's headline: the input, how many components there are and how many are drawn."""
    from .decomposition_folder import residual_text

    mixed = f"; every panel: the mean of its {channels} channels" if channels > 1 else ""
    total = len(dec.labels)
    drawn = f"the {shown} strongest drawn below" if shown < total else "all drawn below"
    comps = f"{total} component{'' if total == 1 else 's'} ({drawn})" if total else "no components"
    return (f"input ({sr} Hz, {seconds:.2f} s{mixed}): {comps} + residual ({residual_text(dec.residual_share)}); "
            f"sum-to-input error {dec.error_text}")


def _empty_note(ax, dec: Decomposition) -> None:
    """Say why a panel without components is empty, instead of leaving a bare frame."""
    why = "silent input: no components" if not math.isfinite(dec.residual_share) else \
        "no components: nothing the model explains here"
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3")


def plot_decomposition(dec: Decomposition, wav: np.ndarray, sr: int, model: SparseDictionary,
                       path: str | os.PathLike, max_components: int = MAX_PANELS) -> Path:
    """One PNG: input spectrogram (top), the strongest components' atoms (left) and activations
    over time (right), then their spectrograms. ``wav`` is the input, ``[T]`` or ``[C, T]``; several
    channels are drawn as their mean (the titles say so). Spectrograms are in dB re the input's
    loudest bin, one colour scale for all (colour bars), on a log-frequency axis. Frequency axes
    stop at the file's Nyquist frequency; component panels and atoms at the model's where that is
    lower, as components do, and the input panel marks it."""
    x = np.asarray(wav, np.float32)
    channels = x.shape[0] if x.ndim == 2 else 1
    mono = x.mean(0) if x.ndim == 2 else x
    seconds = len(mono) / sr
    k = min(max_components, len(dec.labels))
    rows = 2 + max(1, math.ceil(k / 4))
    fig = _figure(figsize=(15, 3.2 * rows))
    grid = fig.add_gridspec(rows, 4, hspace=0.6, wspace=0.3)

    c = model.config
    model_top = min(c.sample_rate, sr) / 2  # components hold nothing above the model's (or the file's) Nyquist
    mag, _, bin_hz = _spec_mag(mono, sr)
    ref = float(mag.max()) or 1.0  # a silent input has no loudest bin: drawn at the floor, dark
    ax_in = fig.add_subplot(grid[0, :])
    mesh = _show_log_spec(ax_in, _db(mag / ref), seconds, bin_hz, sr / 2, _input_title(dec, sr, seconds, channels, k))
    _colour_bar(fig, mesh, ax_in, "dB re the input's loudest bin")  # as narrow as the components': time axes align
    if model_top < sr / 2:
        ax_in.axhline(model_top, color="white", ls="--", lw=0.8)
        ax_in.text(0.005, model_top, f" the model's band ends at {model_top:.0f} Hz: above, all is residual",
                   transform=ax_in.get_yaxis_transform(), color="white", fontsize=7, va="bottom")

    ax_atoms = fig.add_subplot(grid[1, :2])
    ax_acts = fig.add_subplot(grid[1, 2:])
    _draw_atoms_and_activations(ax_atoms, ax_acts, dec, model, k, model_top, seconds)

    comp_axes = []
    for i in range(k):
        ax = fig.add_subplot(grid[2 + i // 4, i % 4])
        cmag, _, _ = _spec_mag(dec.components[i].mean(0), sr)  # [F, N]
        mesh = _show_log_spec(ax, _db(cmag / ref), seconds, bin_hz, model_top,
                              f"{i + 1}: {dec.labels[i]} -- {100 * dec.energy_share[i]:.1f}%")
        comp_axes.append(ax)
    if comp_axes:
        _colour_bar(fig, mesh, comp_axes, "dB re the input's loudest bin")
    return _save(fig, path)


def _draw_atoms_and_activations(ax_atoms, ax_acts, dec: Decomposition, model: SparseDictionary, k: int,
                                top_hz: float, seconds: float) -> None:
    """The atoms behind components 1..k (log frequency, up to ``top_hz``) and their activations
    over the input's ``seconds``, each normalised and stacked at its component's number."""
    c = model.config
    spectra = dec.atoms.sum(-1)  # [U, F]: the atoms this decomposition used (adapted when fitted)
    freqs = np.arange(c.n_fft // 2 + 1) * c.sample_rate / c.n_fft
    within = (freqs > 0) & (freqs <= top_hz)  # 0 Hz has no place on a log axis; above top_hz the file holds nothing
    colors = matplotlib.colormaps["tab10"](np.arange(max(k, 1)) % 10)  # [k, 4] RGBA
    t_frames = np.arange(dec.activations.shape[1]) / dec.frame_rate
    for i in range(k):
        units = dec.units[i]
        weight = dec.activations[units].sum(1) + 1e-12  # [u]: how much each unit was used
        atom = (spectra[units] * weight[:, None]).sum(0) / weight.sum()  # [F]
        if dec.band_bins:  # a band component holds its units' atoms within its own bins only
            lo, hi = dec.band_bins[i]
            atom, inside = np.zeros_like(atom), atom
            atom[lo:hi] = inside[lo:hi]
        atom = atom[within]
        ax_atoms.plot(freqs[within], atom / (atom.max() + 1e-12) + i, color=colors[i], lw=1)
        act = dec.activations[units].sum(0)  # [N]
        ax_acts.plot(t_frames, act / (act.max() + 1e-12) + i, color=colors[i], lw=0.8)
    shown = f"the {k} strongest of {len(dec.labels)} components" if k < len(dec.labels) else "each component"
    atoms_title = f"atoms behind {shown} (normalised, stacked" + ("; within its band)" if dec.band_bins else ")")
    for ax, xlabel, title in ((ax_atoms, "Hz", atoms_title),
                              (ax_acts, "time, s", f"activations of {shown} over time (normalised, stacked)")):
        ax.set_yticks(np.arange(k) + 0.5)
        ax.set_yticklabels([f"{i + 1}" for i in range(k)], fontsize=7)
        ax.set_ylabel("component", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if not k:
            _empty_note(ax, dec)
    ax_atoms.set_xscale("log")
    ax_atoms.set_xlim(freqs[1], top_hz)
    _hz_ticks(ax_atoms.xaxis, freqs[1], top_hz)
    ax_acts.set_xlim(0, seconds)  # the input's length, also with nothing drawn (an empty plot's default is 0-1 s)


def atom_bandwidths(model: SparseDictionary) -> tuple[np.ndarray, np.ndarray]:
    """``(centre Hz [U], bandwidth Hz [U])``: each atom's power-weighted mean frequency and the
    standard deviation around it."""
    c = model.config
    p = model.atom_spectra().detach().numpy() ** 2  # [U, F]
    p = p / p.sum(1, keepdims=True).clip(1e-12)
    f = np.arange(p.shape[1]) * c.sample_rate / c.n_fft
    centre = p @ f
    spread = np.sqrt(np.maximum(p @ f**2 - centre**2, 0))
    return centre, spread


def octave_edges(sample_rate: int) -> list[float]:
    """``0``, then one octave each up to the Nyquist frequency: 8 bands."""
    return [0.0] + [sample_rate / 2 / 2**j for j in range(7, -1, -1)]


def dictionary_stats(model: SparseDictionary) -> dict:
    """What ``audioae inspect`` prints: atoms per octave band (by peak), and how bandwidth grows
    with centre frequency (slope and correlation of a straight line in log-log: wavelets give 1)."""
    centre, spread = atom_bandwidths(model)
    peak = model.atom_frequencies().detach().numpy()
    ok = (centre > 0) & (spread > 0)
    lc, ls = np.log(centre[ok]), np.log(spread[ok])
    edges = octave_edges(model.config.sample_rate)
    return {"atoms_per_octave": np.histogram(peak, bins=edges)[0].tolist(),
            "octave_edges_hz": [round(e, 1) for e in edges],
            "bandwidth_loglog_slope": round(float(np.polyfit(lc, ls, 1)[0]), 3),
            "bandwidth_loglog_correlation": round(float(np.corrcoef(lc, ls)[0, 1]), 3),
            "median_atom_bandwidth_hz": round(float(np.sort(spread)[len(spread) // 2]), 1),
            "median_atom_centre_hz": round(float(np.sort(centre)[len(centre) // 2]), 1)}


def atoms_by_peak(model: SparseDictionary) -> list[dict]:
    """Every atom as :func:`plot_dictionary` draws them, column by column (sorted by peak
    frequency): ``{"unit": u, "peak_hz": f}``, so that a unit ``decompose`` names (``unit 253``)
    can be found in the figure, which has no room for 320 unit ids."""
    peak = model.atom_frequencies().detach().numpy()  # [U]
    return [{"unit": int(u), "peak_hz": round(float(peak[u]), 1)} for u in _peak_order(peak)]


def _peak_order(peak: np.ndarray) -> np.ndarray:
    """The atoms' order in the dictionary figure and in :func:`atoms_by_peak`: by peak frequency."""
    return np.argsort(peak, kind="stable")


def plot_dictionary(model: SparseDictionary, path: str | os.PathLike) -> Path:
    """Every atom as a column (sorted by peak frequency, dB colour: :func:`atoms_by_peak` gives
    each column's unit), where the atoms' peaks sit by octave, and bandwidth against centre
    frequency."""
    c = model.config
    spectra = model.atom_spectra().detach().numpy()  # [U, F]
    peak = model.atom_frequencies().detach().numpy()
    order = _peak_order(peak)
    fig = _figure(figsize=(15, 9))
    grid = fig.add_gridspec(2, 3, height_ratios=[2, 1], hspace=0.35, wspace=0.3)
    ax = fig.add_subplot(grid[0, :])
    db = 20 * np.log10(spectra[order].T / spectra.max() + 1e-6)  # [F, U]
    im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-60, vmax=0,
                   extent=(0, len(order), 0, c.sample_rate / 2))
    ax.set_title(f"{model.registry_name}: {c.code_dim} atoms of {c.atom_frames} frame(s), sorted by peak "
                 f"frequency ({c.sample_rate} Hz, n_fft {c.n_fft}, hop {c.hop_length})", fontsize=10)
    ax.set_xlabel("atom, sorted by peak (each column's unit: the \"atoms\" list audioae inspect prints)")
    ax.set_ylabel("Hz")
    fig.colorbar(im, ax=ax, label="dB re the largest atom value", pad=0.01)

    ax_oct = fig.add_subplot(grid[1, 0])
    edges = octave_edges(c.sample_rate)
    counts = np.histogram(peak, bins=edges)[0]
    ax_oct.bar(range(len(counts)), counts, color="tab:blue")
    ax_oct.set_xticks(range(len(counts)))
    ax_oct.set_xticklabels([f"{lo:.0f}-{hi:.0f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)],
                           rotation=45, fontsize=7)
    ax_oct.set_title("atoms per octave band (by peak)", fontsize=9)
    ax_oct.set_xlabel("octave band, Hz", fontsize=8)
    ax_oct.set_ylabel("atoms", fontsize=8)

    centre, spread = atom_bandwidths(model)
    ax_bw = fig.add_subplot(grid[1, 1])
    ax_bw.scatter(centre, spread, s=6)
    ax_bw.set_xscale("log")
    ax_bw.set_yscale("log")
    ax_bw.set_xlabel("centre Hz", fontsize=8)
    ax_bw.set_ylabel("bandwidth Hz", fontsize=8)
    ax_bw.set_title("bandwidth vs centre (wavelets: a straight line)", fontsize=9)

    ax_ex = fig.add_subplot(grid[1, 2])
    w = model.dictionary().detach().numpy()  # [U, F, L]
    picks = order[np.linspace(0, len(order) - 1, 16).astype(int)]
    tiles = np.concatenate([np.pad(w[u], ((0, 0), (0, 1))) for u in picks], axis=1)  # [F, 16 * (L + 1)]
    ax_ex.imshow(20 * np.log10(tiles / w.max() + 1e-6), origin="lower", aspect="auto", cmap="magma",
                 vmin=-60, vmax=0, extent=(0, tiles.shape[1], 0, c.sample_rate / 2))
    ax_ex.set_title("16 atoms in time-frequency (frames across)", fontsize=9)
    span = w.shape[-1] + 1  # an atom's frames and the blank column after it
    ax_ex.set_xticks(np.arange(len(picks)) * span + w.shape[-1] / 2, [str(u) for u in picks], fontsize=6, rotation=90)
    ax_ex.set_xlabel(f"unit; {w.shape[-1]} frames of {1000 * c.hop_length / c.sample_rate:.0f} ms each", fontsize=8)
    ax_ex.set_ylabel("Hz", fontsize=8)
    return _save(fig, path)


def denoising_view(model: SpectralAutoencoder, wav: np.ndarray, sr: int, shown_from: int = 0,
                   shown_to: int | None = None, file_start_s: float = 0.0) -> dict:
    """What a spectrogram denoiser does to one recording, at the model's rate and STFT: the input
    and output magnitudes ``[F, N]`` (their ratio is the effective gain; for a deep filter it
    includes what the filter adds) and the latent code ``[K, N]``. ``wav`` is ``[T]`` or
    ``[C, T]`` (mixed to mono) at ``sr``. Above the model's band (``sr`` higher than its rate),
    ``above``: that band's edges and its energy in the input and in the denoised output (the band
    is kept at the gain the model gave the top of its own, :func:`audioae.enhance.with_high_band`).

    ``shown_from``, ``shown_to``: the samples of ``wav`` where the part shown begins and ends
    (default: its end). The model runs over all of ``wav`` and the view keeps the frames centred in
    the part: a causal model's state after the samples before the part is what a whole-file
    denoise had there (started cold at the part, the shipped denoiser's gain in a band differed by
    up to 9 dB, and a few seconds of context did not settle it), and the frames at its end see the
    samples after it, as they do in the whole file. ``t0_s``: the file time of the first frame
    kept (``file_start_s``: where ``wav`` begins)."""
    from .enhance import denoise_traced, has_high_band

    x = np.asarray(wav, np.float32)
    mono = torch.from_numpy(x.mean(0) if x.ndim == 2 else x)[None]  # [1, T]
    msr, hop = model.config.sample_rate, model.config.hop_length
    # One run of denoise's own path: what is drawn is what it computed, output included.
    y, trace = denoise_traced(model, mono, sr)  # [1, T] at sr; quantities at the model's rate
    spec, code, est = trace.spec, trace.code, trace.est  # [1, F, N], [1, K, N'], [1, F, N]
    shown_to = x.shape[-1] if shown_to is None else shown_to
    first = -(-shown_from * msr // (sr * hop))  # the frames centred in the part shown, both ends included
    kept = slice(first, max(first, shown_to * msr // (sr * hop)) + 1)  # the part's own STFT's count, or one fewer
    view = {"mag_in": spec[0, :, kept].abs().numpy(), "mag_out": est[0, :, kept].abs().numpy(),  # [F, N]
            "code": code[0, :, kept].numpy(),  # [K, N]
            "hop_s": hop / msr, "bin_hz": msr / model.config.n_fft, "t0_s": file_start_s + first * hop / msr}
    if sr < msr:  # above the file's Nyquist the model's input holds only the upsampler's images
        view["file_nyquist_hz"] = sr / 2
    if has_high_band(sr, model):
        y = torch.from_numpy(y)  # [1, T]: the mono mix, denoised
        e_in, total_in = _energy_above(mono[0, shown_from:shown_to], sr, msr / 2)
        view["above"] = {"from_hz": msr / 2, "to_hz": sr / 2, "energy_in": e_in, "energy_total_in": total_in,
                         "energy_out": _energy_above(y[0, shown_from:shown_to], sr, msr / 2)[0]}
    return view


def _energy_above(w: torch.Tensor, sr: int, from_hz: float) -> tuple[float, float]:
    """``(energy at and above from_hz, all of it)`` of ``w [T]``, from its spectrum (Parseval: the
    same scale for both). Was the input minus its round trip through the model's rate: on a file
    with next to nothing up there, that measured the resampler's own error (-50 to -60 dB under
    band-limited speech and hum), and a 16 kHz band the output raised 14.5 dB read -4.45 dB."""
    power = torch.fft.rfft(w.float()).abs().double().square()  # [T/2 + 1]: float32 FFT, half the memory
    freqs = torch.fft.rfftfreq(w.shape[-1], 1 / sr, dtype=torch.float64)  # [T/2 + 1]
    return float(power[freqs >= from_hz].sum()), float(power.sum())


def _gain_db(energy_out: float, energy_in: float) -> float | None:
    """Output over input energy in dB; None where the input is silent (a gain of nothing is
    undefined, and -200 dB would read as "removed everything")."""
    if energy_in <= 0:
        return None
    return round(10 * math.log10(max(float(energy_out) / float(energy_in), 1e-20)), 2)


# The band above the model's gets no gain (null) when the input holds less than this there, re its
# whole energy: resampling's own error reaches about that level (a round trip of band-limited speech
# and hum through 16 kHz left -50 to -60 dB above 8 kHz; upsampling the model's output adds some
# too), so the ratio would be the resampler's (a -101 dBFS band "raised" 14.5 dB by it), not the model's.
ABOVE_FLOOR_DB = -50.0


def denoising_stats(view: dict) -> dict:
    """Numbers behind the figure: energy removed, the gain per octave band (energy-weighted over
    frames), and how sparse the code is."""
    e_in, e_out, code = view["mag_in"] ** 2, view["mag_out"] ** 2, view["code"]  # [F, N], [F, N], [K, N]
    freqs = np.arange(e_in.shape[0]) * view["bin_hz"]
    bands = {}
    nyquist = float(freqs[-1])
    file_nyquist = view.get("file_nyquist_hz", np.inf)
    recorded = freqs < file_nyquist  # [F]: an 8 kHz file has nothing from 4 kHz up
    edges = octave_edges(round(2 * nyquist))
    edges[-1] += 1.0  # the Nyquist bin belongs to the top band
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        rows = (freqs >= lo) & (freqs < hi)
        if rows.any():
            rows &= recorded  # a band above the file's Nyquist: null, as for one the recording leaves silent
            top = min(hi, nyquist, file_nyquist if lo < file_nyquist else np.inf)  # what a band cut by it spans
            bands[f"{lo:.0f}-{top:.0f} Hz"] = (
                _gain_db(e_out[rows].sum(), e_in[rows].sum()) if rows.any() else None)
    if "above" in view:  # the file's band above the model's, as the output has it
        a = view["above"]
        floor = a["energy_total_in"] * 10 ** (ABOVE_FLOOR_DB / 10)
        bands[f"{a['from_hz']:.0f}-{a['to_hz']:.0f} Hz"] = (
            _gain_db(a["energy_out"], a["energy_in"]) if a["energy_in"] > floor else None)
    active = np.abs(code) > 1e-3 * max(float(np.abs(code).max()), 1e-12)  # [K, N]
    return {"frames": int(e_in.shape[1]), "gain_db": _gain_db(e_out[recorded].sum(), e_in[recorded].sum()),
            "gain_db_per_band": bands, "code_units": int(code.shape[0]),
            "code_active_share": round(float(active.mean()), 4),
            "code_units_never_active": int((~active.any(1)).sum())}


def _colour_bar(fig, im, ax, label: str) -> None:
    bar = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.02)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _blank_above(ax, nyquist_hz: float, top_hz: float) -> None:
    """Cover the panel above the file's Nyquist: what is drawn there is the upsampler's images of
    the band below, nothing the recording holds."""
    ax.axhspan(nyquist_hz, top_hz, facecolor="0.85", edgecolor="0.6", hatch="//", zorder=3)
    ax.text(0.5, (nyquist_hz + top_hz) / 2, f"above the file's {nyquist_hz / 1000:g} kHz Nyquist: not recorded",
            transform=ax.get_yaxis_transform(), ha="center", va="center", fontsize=8, zorder=4)


def plot_denoising(view: dict, path: str | os.PathLike, title: str = "", model: str = "") -> Path:
    """One PNG: input and output spectrograms, the effective gain, and the latent code over time;
    ``model`` (the checkpoint's path) names what made the output, so two runs' figures differ."""
    fig = _figure(figsize=(14, 13))
    axes = fig.subplots(4, 1, gridspec_kw={"hspace": 0.45})
    hop_s, bin_hz = view["hop_s"], view["bin_hz"]
    t0 = view.get("t0_s", 0.0)  # the file's time: --start 1 shows 1.0-2.5 s, not 0-1.5
    db_in, db_out = _db(view["mag_in"]), _db(view["mag_out"])  # [F, N]
    vmax = _colour_top(db_in)
    output = f"output of {model}" if model else "output"
    for ax, db, name in ((axes[0], db_in, f"input {title}".strip()), (axes[1], db_out, output)):
        im = _show_spec(ax, db, hop_s, bin_hz, vmax, name, t0)
        # one scale for both (the input's), so that what the model removed reads as darker
        _colour_bar(fig, im, ax, "dB (|STFT| magnitude)")
    f, n = db_in.shape
    span = (t0, t0 + n * hop_s)
    im = axes[2].imshow(np.clip(db_out - db_in, -40, 10), origin="lower", aspect="auto", cmap="RdBu_r",
                        norm=matplotlib.colors.TwoSlopeNorm(vmin=-40, vcenter=0, vmax=10),
                        extent=(*span, 0, f * bin_hz))
    axes[2].set_title("effective gain |output| / |input| (dB; white: kept, blue: removed, red: raised)", fontsize=9)
    axes[2].set_ylabel("Hz", fontsize=8)
    _colour_bar(fig, im, axes[2], "dB")
    if "file_nyquist_hz" in view:
        for ax in axes[:3]:
            _blank_above(ax, view["file_nyquist_hz"], f * bin_hz)
    code = view["code"]  # [K, N]
    im = axes[3].imshow(code, origin="lower", aspect="auto", cmap="viridis", extent=(*span, 0, code.shape[0]),
                        interpolation="nearest")
    axes[3].set_title(f"latent code ({code.shape[0]} units per frame)", fontsize=9)
    axes[3].set_ylabel("unit", fontsize=8)
    _colour_bar(fig, im, axes[3], "unit value")
    for ax in axes:
        ax.tick_params(labelsize=7)
    axes[3].set_xlabel("time in the file, s", fontsize=8)
    return _save(fig, path)
