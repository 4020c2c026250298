"""Components from a sparse dictionary model: soft masks, grouping, and sum-to-input.

A :class:`~audioae.models.sparse_dict.SparseDictionary` explains the input's magnitude spectrogram
``|X|`` as a sum of unit spectrograms ``V_u`` (atom * activation). A group ``g`` of units (one
unit, or a cluster) gets the soft mask::

    M_g = V_g / max(V, |X|)        V_g = sum of its units' V_u,  V = sum over all units

applied to the input's complex STFT (the input's phase is kept), then inverted; an octave band
gets ``V_A / max(V, |X|)`` (``V_A``: every active unit) within its own bins and 0 elsewhere, so
band components are band-limited. The masks of all
groups add up to ``min(V, |X|) / |X| <= 1``: whatever the model does not explain stays in the
residual. Components are computed at the model's rate and resampled to the caller's; the
residual is *defined* as input minus the sum of the components, at the caller's rate and length,
so ``components.sum(0) + residual == input`` to float rounding whatever the resampler does. At a
caller's rate above the model's, the residual also holds everything above the model's band.

Pure functions: arrays in, arrays out, no file I/O (the CLI, the server and the benchmark share
them).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from .audio import AudioError, as_channels_first, check_pcm, fit_length, resample_in_blocks
from .config import quoted
from .decomposition_folder import DEFAULT_GROUPS, MAX_SPANS, component_entry, hz_text, summary
from .enhance import check_stop
from .models.sparse_dict import MAX_FIT_STEPS, SparseDictionary, frame_blocks  # MAX_FIT_STEPS: also a request's
from .spectral import framed_rfft, unfold_frames, window_samples

log = logging.getLogger(__name__)

GROUPS = ("none", "band", "cluster")
ACTIVE_SHARE = 1e-6  # units with less of the input's STFT energy than this are left in the residual
EXACT_DB = -90.0  # the sum-to-input contract
CHUNK_FLOATS = 1 << 20  # per-unit spectrograms in chunks of about this many floats: small chunks reuse freed memory instead of page-faulting in fresh 100 MB buffers (2x faster)
MASK_FLOOR = 1.0  # a bin's masks add up to min(1, V / (floor * |X|)): the rest goes to the residual
ACTIVITY_WEIGHT = 2.0  # clustering: when a unit is active counts this much more than its atom's shape
ACTIVE_DB = -30.0  # a component is "active" in frames within this much of its loudest frame
# A label names a tone where a local maximum of a component's power spectrum (31.25 Hz bins for
# decomposer-small) is this many times its neighbours' geometric mean, and its 3 bins hold this
# share of the energy. Measured with decomposer-small: the clusters of a C-E-G chord 1.5-4.8 (1.5:
# E, its lobe overlapping G's 2 bins away), those of a 100-4000 Hz chirp 1.0-1.3 (a flat top), a
# voice's in pink noise 1.4 (the broadband one) and 2.0-2.4. A Hann window's main lobe is 4 bins
# wide, so tones about 2 bins apart (C, E, G: 68 and 62 Hz) fill each other's neighbours: the one
# cluster of that chord (--groups 1 --fit 0) peaked 1.23 at E, flat as a chirp's top, and read
# "250-410 Hz". Through windows PEAK_WINDOW times longer (7.8 Hz bins, _resolving_spectra) the
# chord's notes peak 4.1-4.9 in every cluster, the chirp's clusters 1.0-1.1, the voice's 1.0-1.4
# (its harmonics glide): the rule is tried there first, then on the model's bins.
TONE_SHARPNESS = 1.5
TONE_SHARE = 0.2
PEAK_WINDOW = 4  # the resolving spectrum's window: this many times the model's n_fft (128 ms for decomposer-small)
# Clusters whose component waveforms have a cosine similarity above this are one sound cut in
# pieces, and are merged. Measured with decomposer-small in 8 clusters (docs/decomposition.md): the
# pieces of one steady tone 0.96-1.00; any other two clusters at most 0.78 (two at ~1 kHz in a 1 kHz
# tone with noise bursts), the clusters of white noise at most 0.68, those of a voice in pink noise
# at most 0.42.
SAME_SOUND = 0.9
# The whole recording is decomposed at once (the per-signal fit is global): memory grows with its
# samples times channels, at the model's rate (the spectrogram, code and masks) and at the
# caller's (the input, the residual and the component waveforms kept, float32). Set from peak RSS
# above a 1 s run of group "none" (0.71 GB; in clusters 0.85 GB), so they err high: between two
# long runs in clusters (defaults, a tone with noise bursts) peak RSS grew 2.4 MB/s at 16 kHz mono
# (estimate 3.4) and 6.9 MB/s at 44.1 kHz stereo (estimate 9.3); docs/decomposition.md. Kept:
# a warning that comes early is safe. Estimates above LONG_BYTES get a warning.
MODEL_BYTES_PER_SAMPLE = 170  # per channel and sample at the model's rate
CALLER_BYTES_PER_SAMPLE = 12  # per channel and sample at the caller's rate, besides 4 per kept component
LONG_BYTES = 1.5 * 2**30  # about 8 minutes of 16 kHz mono in 8 clusters, 2.9 of 44.1 kHz stereo

@dataclass
class Decomposition:
    """Component waveforms of one input, ranked by the energy attributed to them (largest first).

    The energy attributed to a component is its projection on the input, ``<c_k, x>``; these
    and the residual's add up to the input's energy ``|x|^2``.
    """

    components: np.ndarray  # [K, C, T] float32 component waveforms at the caller's rate
    residual: np.ndarray  # [C, T]; components.sum(0) + residual == input to float error
    labels: list[str]  # one per component
    units: list[list[int]]  # latent units behind each component
    activations: np.ndarray  # [U, N] latent activations over frames (mean over channels)
    energy_share: np.ndarray  # [K] <component, input> / |input|^2; with residual_share they sum to 1
    frame_rate: float  # frames per second of `activations`
    sample_rate: int = 0  # the caller's rate
    # [K] each waveform's spectral peak (interpolated between bins) and [K, N] its energy per frame:
    # measured on the component waveforms at the model's rate, what the files hold
    dominant_hz: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [K]
    envelopes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [K, N] energy/frame
    residual_share: float = 0.0  # <residual, input> / |input|^2; NaN for a silent input (no energy to share)
    error_db: float = -math.inf  # 10 log10(|sum + residual - input|^2 / |input|^2)
    group: str = "none"
    # [U, F, L] the atoms behind the components: the model's, or adapted to this signal when fitted.
    atoms: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    fit_steps: int = 0
    # group "band": each component's STFT bins [lo, hi) at the model's rate, [K] pairs; else empty
    band_bins: list[tuple[int, int]] = field(default_factory=list)
    # frames at each end of the envelopes that the STFT's zero padding can reach (decompose.edge_frames)
    edge_frames: int = 0
    # bands or clusters asked for (None: group "none"); fewer come back where fewer are distinct
    groups_asked: int | None = None

    @property
    def error_text(self) -> str:
        """The sum-to-input error for people: ``-171 dB``, or ``exact`` (a silent input)."""
        return f"{self.error_db:.0f} dB" if math.isfinite(self.error_db) else "exact"


def _on_cpu_for_inference(model: SparseDictionary) -> SparseDictionary:
    """``model`` itself when it is on the CPU in eval mode, else a copy that is: ``.cpu().eval()``
    works in place and moved, or switched out of training, the caller's own model."""
    on_cpu = all(t.device.type == "cpu" for t in model.parameters())
    if on_cpu and not model.training:
        return model
    with torch.inference_mode(False):  # a copy made inside decompose's inference mode would hold
        return copy.deepcopy(model).cpu().eval()  # inference tensors, which the atom cache cannot version


def _check_model(model) -> None:
    if not isinstance(model, SparseDictionary):
        family = getattr(model, "registry_name", type(model).__name__)
        raise ValueError(f"decompose needs a sparse_dict model (the shipped one is decomposer-small); this is a "
                         f"{family} model, which denoises or encodes but has no components")


@dataclass(frozen=True)
class Options:
    """What :func:`check_options` accepted, as :func:`decompose` takes it (``decompose(model,
    wav, sr, **options.kwargs())``)."""

    group: str
    # bands or clusters (8, or the model's units where fewer, unless asked), as decompose's
    # groups=; None under group "none", which has no count
    groups: int | None
    top_k: int | None  # None: every component
    fit_steps: int | None  # None: the model's default

    def kwargs(self) -> dict:
        """``decompose``'s keywords; ``groups`` None under group ``none``, where decompose refuses a count."""
        return {"group": self.group, "groups": self.groups, "top_k": self.top_k, "fit_steps": self.fit_steps}


def check_options(model, *, group: str = "none", groups: int | None = None, top_k: int = 0,
                  fit_steps: int | None = None, flags: bool = False) -> Options:
    """The one check of what a decomposition request asks for, with the limits and messages the
    CLI (``audioae decompose``) and the server (``Decompose``) share; call it before reading the
    audio. ``groups`` / ``fit_steps``: None when not given (``min(8, units)`` groups, the model's
    fit; ``groups`` stays None under group ``none``, which refuses a count); ``top_k`` 0: every
    component. ``flags``: name the CLI's flags (``--fit``) in messages, not
    the request's fields (``fit_steps``). Raises ValueError."""
    _check_model(model)
    name = {"group": "--group", "groups": "--groups", "top_k": "--top", "fit_steps": "--fit"} if flags else \
        {"group": "group", "groups": "groups", "top_k": "top_k", "fit_steps": "fit_steps"}
    if group not in GROUPS:
        raise ValueError(f"unknown {name['group']} {quoted(group)}; choose one of {', '.join(GROUPS)}")
    if top_k < 0:
        raise ValueError(f"{name['top_k']} must be >= 0 (0: all components), got {top_k}")
    if fit_steps is not None and not 0 <= fit_steps <= MAX_FIT_STEPS:
        raise ValueError(f"{name['fit_steps']} must be 0..{MAX_FIT_STEPS} (unset: the model's default, "
                         f"{model.config.fit_steps} for this one), got {fit_steps}")
    units = model.config.code_dim
    n_groups = None if group == "none" else min(DEFAULT_GROUPS, units)
    if groups is not None:
        if group == "none":
            raise ValueError(f"{name['groups']} counts bands or clusters: set {name['group']} to band or cluster, "
                             f"or leave {name['groups']} unset")
        if not 1 <= groups <= units:
            raise ValueError(f"{name['groups']} must be 1..{units} (this model's units), got {groups}")
        n_groups = groups
    return Options(group=group, groups=n_groups, top_k=top_k or None, fit_steps=fit_steps)


def _check_long_enough(samples: int, sr: int, model: SparseDictionary) -> None:
    """Refuse audio shorter than one analysis window: its "components" (a 31 Hz peak labelled
    120-6800 Hz, for one sample) describe the zero padding, not the signal."""
    if samples < window_samples(model.config.n_fft, model.config.sample_rate, sr):
        window = model.config.n_fft / model.config.sample_rate
        raise AudioError(f"the audio lasts {1000 * samples / sr:.1f} ms, shorter than the model's "
                         f"{1000 * window:.0f} ms analysis window: too short to decompose")


def memory_estimate(channels: int, samples: int, sr: int, model_sr: int, kept: int) -> float:
    """Roughly the bytes a decomposition of ``channels x samples`` at ``sr`` holds at its peak
    above the loaded model, ``kept`` components kept (its waveforms at ``sr``)."""
    model_samples = samples * model_sr / sr
    return channels * (model_samples * MODEL_BYTES_PER_SAMPLE + samples * (CALLER_BYTES_PER_SAMPLE + 4 * kept))


def _warn_if_long(channels: int, samples: int, sr: int, model_sr: int, kept: int) -> None:
    """Say what a long input will cost before the work starts: it is held whole. The bound is on
    memory, not minutes, whatever the rate and channels: 10 minutes of 44.1 kHz stereo peaks at 5.1 GB."""
    need = memory_estimate(channels, samples, sr, model_sr, kept)
    if need <= LONG_BYTES:
        return
    log.warning("decomposing %.1f minutes of %d channel%s at %d Hz at once needs roughly %.1f GB of memory; for a "
                "long recording, decompose a section of it (the gRPC service, on its defaults, takes at most 10 "
                "minutes)", samples / sr / 60, channels, "s" if channels > 1 else "", sr, need / 2**30)


def _unit_chunks(n_units: int, per_unit: int) -> int:
    return max(1, min(n_units, CHUNK_FLOATS // max(per_unit, 1)))


# ---- grouping -------------------------------------------------------------------------------------
def _band_edges(nyquist: float, n_bands: int, bin_hz: float) -> list[tuple[float, float]]:
    """Dyadic bands, like the levels of a wavelet multiresolution analysis: ``[0, ny/2^(n-1))``,
    then one octave each up to ``nyquist``. The lowest band reaches past the first STFT bin
    above 0 Hz (``bin_hz``), so it holds a frequency, not the 0 Hz bin alone: a "band 0-31 Hz" of
    an 8 kHz file held that bin only ("band 0-0 Hz" before that). With the model's 31.25 Hz bins
    and as many bands as fit, the lowest band is ``[0, 62.5)`` where ``nyquist`` is 62.5 Hz times
    a power of two (8 bands at 16 kHz, 7 at 8 kHz) and narrower elsewhere, down to 31.25 Hz:
    ``[0, 43.1)`` at 11025 Hz, ``[0, 46.9)`` at 12000 Hz."""
    most = math.ceil(math.log2(nyquist / bin_hz) - 1e-9)
    if n_bands > most:
        log.warning("%d octave bands asked; %d fit the model's %.1f Hz frequency bins below %.0f Hz (the lowest, "
                    "0-%.0f Hz, holds the 0 Hz bin and the next): using %d", n_bands, most, bin_hz, nyquist,
                    nyquist / 2 ** (most - 1), most)
        n_bands = most
    edges = [0.0] + [nyquist / 2**j for j in range(n_bands - 1, -1, -1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _band_split(model: SparseDictionary, h: torch.Tensor, atoms: torch.Tensor, explained: torch.Tensor,
                weight: torch.Tensor, share_weight: torch.Tensor, active: list[int], n_bands: int, floor: float,
                sr: int):
    """Octave bands of what the active units explain: band ``b`` keeps ``explained`` (``[C, F, N]``,
    their summed mask numerators) in its own STFT bins and nothing elsewhere, so the band
    components are band-limited and still add up to what the units explain (grouping units by
    their atom's peak left as little as 11% of a band component's energy in its band: broadband
    atoms peak anywhere). Bands end at the input's Nyquist frequency (``sr``; an 8 kHz file had a
    "4000-8000 Hz" band), the top one taking the bins above it. ``weight [C, F, N]``:
    ``(|X| / denominator)^2``; ``share_weight``: ``|X|^2 / denominator``. Returns per band with
    more masked energy than ``floor``: the units holding at least 1% of its unit energy, the
    label, the bins ``(lo, hi)`` and its share of the input (for ranking)."""
    c = model.config
    bin_hz = c.sample_rate / c.n_fft
    h_act, w_act = h[:, active], atoms[active]  # [C, A, N], [A, F, L]
    groups, labels, bins, shares = [], [], [], []
    bands = _band_edges(min(c.sample_rate, sr) / 2, n_bands, bin_hz)
    for lo_hz, hi_hz in bands:
        lo = math.ceil(lo_hz / bin_hz - 1e-9)
        hi = c.n_fft // 2 + 1 if hi_hz == bands[-1][1] else math.ceil(hi_hz / bin_hz - 1e-9)  # Nyquist: the top band's
        energy = float((explained[:, lo:hi].pow(2) * weight[:, lo:hi]).sum())
        if hi <= lo or energy <= floor:
            continue
        per_unit = model.unit_energies(h_act, weight[:, lo:hi], w_act[:, lo:hi]).numpy()  # [A]
        groups.append([u for u, e in zip(active, per_unit, strict=True) if e >= 0.01 * per_unit.sum()])
        labels.append(f"band {lo_hz:.0f}-{hi_hz:.0f} Hz")
        bins.append((lo, hi))
        shares.append(float((explained[:, lo:hi] * share_weight[:, lo:hi]).sum()))
    return groups, labels, bins, shares


def _log_pool(spectra: np.ndarray, n_out: int = 48) -> np.ndarray:
    """Pool ``[U, F]`` spectra into ``n_out`` log-spaced bands (so octaves weigh alike)."""
    f = spectra.shape[1]
    edges = np.unique(np.round(np.geomspace(1, f, n_out + 1)).astype(int))
    edges[0] = 0
    return np.stack([spectra[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:], strict=True)], 1)


def _unit_norm(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _cluster_groups(spectra: np.ndarray, acts: np.ndarray, energy: np.ndarray, active: list[int],
                    n_groups: int) -> list[list[int]]:
    """K-means over the active units, weighted by their energy. A unit is described by when it
    is active in this signal (its activation envelope, counted twice) and by its atom's shape on
    a log-frequency axis: units that rise and fall together -- the harmonics of one voice, the
    bands of one noise -- land in one group, and shape splits sources that move alike. Always
    ``n_groups`` groups when there are more active units (one each when not): k-means splits one
    sound too, which :func:`_same_sound` finds."""
    from sklearn.cluster import KMeans

    if len(active) <= n_groups:
        return [[u] for u in active]
    atom = _unit_norm(np.sqrt(_log_pool(spectra[active])))  # [A, 48]
    env = np.sqrt(acts[active])  # [A, N] compressed, so quiet units count
    env = _unit_norm(env - env.mean(1, keepdims=True))
    feats = np.concatenate([atom, ACTIVITY_WEIGHT * env], axis=1)
    labels_ = KMeans(n_clusters=n_groups, n_init=4, random_state=0).fit_predict(
        feats, sample_weight=np.maximum(energy[active], 1e-12))
    groups = [[u for u, lab in zip(active, labels_, strict=True) if lab == k] for k in range(n_groups)]
    return [g for g in groups if g]


def _group_masks(model: SparseDictionary, h: torch.Tensor, atoms: torch.Tensor, denom: torch.Tensor,
                 batch: list[list[int]], lo: int, hi: int, explained: torch.Tensor | None = None,
                 bins: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """The soft masks ``V_g / denom`` of frames ``lo .. hi`` of the groups in ``batch``: ``[k, C, F,
    hi - lo]``. With ``bins``, group ``j``'s numerator is ``explained [C, F, N]`` within ``bins[j]``
    only. A frame's ``V`` reads the code within ``model._pad`` frames of it: that halo is read
    and cut off, so the masks are the whole's (to float rounding)."""
    if bins is not None:
        v = explained.new_zeros((len(batch), *explained.shape[:-1], hi - lo))  # [k, C, F, hi - lo]
        for j, (a, b) in enumerate(bins):
            v[j, :, a:b] = explained[:, a:b, lo:hi]
        return v.div_(denom[None, ..., lo:hi])
    n, p = h.shape[-1], model._pad
    c0, c1 = max(0, lo - p), min(n, hi + p)
    code = h[..., c0:c1]  # [C, U, c1 - c0]
    if all(len(g) == 1 for g in batch):
        v = model.unit_magnitudes(code, [g[0] for g in batch], atoms).movedim(1, 0)  # [k, C, F, c1 - c0]
    else:
        v = torch.stack([model.magnitudes(code[:, g], atoms[g]) for g in batch])  # [k, C, F, c1 - c0]: V_g per group
    return v[..., lo - c0 : hi - c0].div_(denom[None, ..., lo:hi])  # [k, C, F, hi - lo]


def _inverse_frames(model: SparseDictionary, spec_ri: torch.Tensor, mask: torch.Tensor, lo: int, a: int, b: int,
                    z_len: int) -> torch.Tensor:
    """Samples ``a*hop .. b*hop`` (to ``z_len`` in the last block) of the inverse STFT of the
    input's STFT (``spec_ri [C, F, N, 2]``, its phase kept) under ``mask [k, C, F, hi - lo]``, the
    masks of frames ``lo .. hi``: ``[k, C, samples]``. A sample is overlap-added from the frames
    whose window reaches it, within ``_window_frames`` of its own: with that halo in ``lo .. hi``,
    these samples are the whole inverse's (to float rounding)."""
    hop, n, hi = model.config.hop_length, spec_ri.shape[-2], lo + mask.shape[-1]
    s = torch.view_as_complex(spec_ri[None, :, :, lo:hi] * mask[..., None])  # [k, C, F, hi - lo] complex
    # sample 0 of a block's inverse is frame lo's centre; the last block's runs to the signal's end
    length = z_len - lo * hop if hi == n else (hi - lo - 1) * hop
    y = model.stft.inverse(s, length)  # [k, C, length]
    end = z_len if b == n else b * hop
    return y[..., a * hop - lo * hop : end - lo * hop]  # [k, C, end - a*hop]


def _masked_blocks(model: SparseDictionary, h: torch.Tensor, atoms: torch.Tensor, spec_ri: torch.Tensor,
                   denom: torch.Tensor, batch: list[list[int]], z_len: int, ask: Callable[[int], None],
                   explained: torch.Tensor | None = None, bins: list[tuple[int, int]] | None = None):
    """The groups' masked inverse STFT, in blocks of frames (:func:`frame_blocks`): per block
    ``(samples (s0, s1), waves [k, C, s1 - s0])`` at the model's rate. ``ask(a)`` before each
    block but the first: uncut, one component's masks and inverse STFT of a 550 s input ran
    4.9-6.6 s past a stop on a loaded machine
    (benchmarks/results/decompose-deadline-components-before.json)."""
    n, hop = spec_ri.shape[-2], model.config.hop_length
    for lo, a, b, hi in frame_blocks(n, _window_frames(model.config)):
        if a:
            ask(a)
        mask = _group_masks(model, h, atoms, denom, batch, lo, hi, explained, bins)  # [k, C, F, hi - lo]
        waves = _inverse_frames(model, spec_ri, mask, lo, a, b, z_len)  # [k, C, s1 - s0]
        yield (a * hop, z_len if b == n else b * hop), waves


def _masked_waves(model: SparseDictionary, h: torch.Tensor, atoms: torch.Tensor, spec_ri: torch.Tensor,
                  denom: torch.Tensor, batch: list[list[int]], z_len: int, ask: Callable[[int], None],
                  explained: torch.Tensor | None = None, bins: list[tuple[int, int]] | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """The groups' masked inverse STFT at the model's rate, ``[k, C, T']`` (written into ``out``
    when given), from :func:`_masked_blocks`' blocks (``ask`` before each but the first)."""
    y = torch.empty((len(batch), spec_ri.shape[0], z_len)) if out is None else out  # [k, C, T']
    for (s0, s1), wave in _masked_blocks(model, h, atoms, spec_ri, denom, batch, z_len, ask, explained, bins):
        y[..., s0:s1] = wave
    return y


def _ask_at_frame(stop: Callable[[], bool] | None, n: int, a: int, where: str) -> None:
    check_stop(stop, f"decomposition stopped {where}, at frame {a} of {n}")


def _group_waves(model: SparseDictionary, h: torch.Tensor, atoms: torch.Tensor, spec: torch.Tensor,
                 denom: torch.Tensor, groups: list[list[int]], z_len: int,
                 stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """The groups' component waveforms at the model's rate, ``[K, C, T']`` (``spec [C, F, N]``: the
    input's STFT; ``denom``: the masks' denominator), ``stop`` asked before each batch of groups
    and each of its blocks of frames but the first."""
    spec_ri = torch.view_as_real(spec)  # [C, F, N, 2]
    n = spec.shape[-1]
    waves = torch.empty((len(groups), spec.shape[0], z_len))  # [K, C, T']
    step = _unit_chunks(len(groups), spec.numel() * 2)
    for lo in range(0, len(groups), step):
        # a long input's clusters are inverted in batches, each in blocks of frames
        check_stop(stop, f"decomposition stopped at cluster {lo + 1} of {len(groups)}")
        batch = groups[lo : lo + step]
        ask = partial(_ask_at_frame, stop, n, where=f"inverting cluster {lo + 1} of {len(groups)}")
        _masked_waves(model, h, atoms, spec_ri, denom, batch, z_len, ask, out=waves[lo : lo + len(batch)])
    return waves


def _same_sound(waves: torch.Tensor, threshold: float = SAME_SOUND) -> list[list[int]]:
    """Which of the groups whose waveforms are ``waves [K, C, T']`` are pieces of one sound: lists
    of their indices, one per sound. Pieces are groups whose waveforms are nearly proportional
    (cosine above ``threshold``): k-means cuts one steady tone into several clusters at the same
    frequency, which a listener cannot tell apart. Waveforms, not masked spectrograms, since the
    inverse STFT spreads a mask over the window's main lobe: the two strongest pieces of a 440 Hz
    tone took bins 13 and 14 of it, 0.43 alike as masked spectrograms, 1.00 as waveforms. The most
    alike pair is merged first, then again with the merged group (its inner products are the
    sums of its parts': exact, nothing recomputed), until no pair is that alike."""
    flat = waves.flatten(1)  # [K, C * T']
    gram = (flat @ flat.T).double().numpy()  # [K, K]
    parts = [[k] for k in range(len(gram))]
    alive = list(range(len(gram)))
    while len(alive) > 1:
        sub = gram[np.ix_(alive, alive)]
        norm = np.sqrt(np.maximum(np.diag(sub), 1e-300))
        cos = sub / np.outer(norm, norm)
        np.fill_diagonal(cos, -np.inf)
        i, j = np.unravel_index(np.argmax(cos), cos.shape)
        if cos[i, j] <= threshold:
            break
        a, b = alive[i], alive[j]
        gram[a, :] += gram[b, :]
        gram[:, a] += gram[:, b]  # after the row's sum: <a+b, a+b> = <a,a> + 2<a,b> + <b,b>
        parts[a] += parts[b]
        alive.remove(b)
    return [sorted(parts[k]) for k in alive]


def group_units(model: SparseDictionary, activations: np.ndarray, energy: np.ndarray, active: list[int],
                group: str, n_groups: int = DEFAULT_GROUPS, atoms: torch.Tensor | None = None) -> list[list[int]]:
    """Partition the active units: ``none`` (one per unit) or ``cluster`` (k-means over atom
    shape and activity); ``band`` splits frequencies, not units (:func:`_band_split`).
    ``activations [U, N]``, ``energy [U]``. Unlabelled: :func:`decompose` names the groups by
    their waveforms, once ranked."""
    if group == "none":
        return [[u] for u in active]
    if group == "cluster":
        spectra = model.atom_spectra(atoms).detach().numpy()
        return _cluster_groups(spectra, activations, energy, active, n_groups)
    raise ValueError(f"group_units groups units by none or cluster, got {group!r}")


# ---- the decomposition ------------------------------------------------------------------------------
def _window_frames(c) -> int:
    """Frames a window's half reaches across: those an STFT frame's samples are shared with."""
    return math.ceil(c.n_fft / (2 * c.hop_length))


def edge_frames(c) -> int:
    """Frames at each end of a component's envelope that the STFT's zero padding can reach: the
    input's frames centred within ``n_fft/2`` of an end read padding, the code reads them, a
    frame's mask ``V`` reads the code within ``(atom_frames - 1) / 2`` frames of it
    (``SparseDictionary._pad``), its masked inverse spreads ``n_fft/2`` further, and the
    envelope's own STFT frames read ``n_fft/2`` more. 6 for ``decomposer-small`` (48 ms; 8 with
    ``atom_frames=7``): a step at the start of a tone cut off at full level was active in its first
    3 frames, in its last 3 or 4 (the window's half alone, 2 frames, let them through). Until
    2026-12-07 the masks' reach through the code was left out (5, 40 ms)."""
    return _window_frames(c) - 1 + (c.atom_frames - 1) // 2 + math.ceil(c.n_fft / c.hop_length)


def _stft_blocks(model: SparseDictionary, x: torch.Tensor, halo: int,
                 ask: Callable[[int], None]) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """``model.stft(x)`` (``x [..., T']`` at the model's rate) in blocks of frames
    (:func:`frame_blocks`): per block ``(lo, a, b, spec)``, ``spec [..., F, hi - lo]`` its frames
    ``a .. b`` with ``halo`` frames either side (cut ``a - lo .. b - lo`` for the block's own, the
    whole's to float rounding when ``halo`` covers a window's half). ``ask(a)`` before each block
    but the first."""
    hop, length = model.config.hop_length, x.shape[-1]
    n = model.stft.num_frames(length)
    for lo, a, b, hi in frame_blocks(n, halo):
        if a:
            ask(a)
        # Frame lo + t of the whole is frame t of x[lo * hop:]. The slice's last frames read zeros
        # past its end (they are in the halo), except at the signal's end, as the whole's do.
        yield lo, a, b, model.stft(x[..., lo * hop : length if hi == n else (hi - 1) * hop])  # [..., F, hi - lo]


def _spectrum_and_features(model: SparseDictionary, z: torch.Tensor,
                           stop: Callable[[], bool] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.stft(z)`` and ``model.features`` of it (``z [C, T']`` at the model's rate -> complex
    ``[C, F, N]``, ``[C, F, N]``), in blocks of frames (:func:`_stft_blocks`), ``stop`` asked
    before each after the first (the caller asks before the first): a frame reads the samples
    within ``n_fft/2`` of its centre, and its features the frames within ``level_frames // 2`` of
    it (the level)."""
    c = model.config
    n = model.stft.num_frames(z.shape[-1])

    def ask(a: int) -> None:
        check_stop(stop, f"decomposition stopped at frame {a} of {n} of its spectrogram")

    specs, feats = [], []
    for lo, a, b, spec in _stft_blocks(model, z, _window_frames(c) + c.level_frames // 2, ask):  # [C, F, hi - lo]
        specs.append(spec[..., a - lo : b - lo])  # [C, F, b - a]
        feats.append(model.features(spec)[..., a - lo : b - lo])  # [C, F, b - a]
    return (specs[0], feats[0]) if len(specs) == 1 else (torch.cat(specs, -1), torch.cat(feats, -1))


@torch.inference_mode()
def decompose(model: SparseDictionary, wav: np.ndarray | torch.Tensor, sr: int, *, top_k: int | None = None,
              group: str = "none", groups: int | None = None, fit_steps: int | None = None,
              stop: Callable[[], bool] | None = None, n_groups: int | None = None) -> Decomposition:
    """Split ``wav`` (``[T]`` or ``[C, T]``, any rate) into components that sum to it.

    ``group``: ``none`` (one component per active unit), ``band`` (``groups`` band-limited
    dyadic bands; fewer where some hold nothing) or ``cluster`` (at most ``groups`` clusters:
    fewer when fewer units are active, and clusters that are pieces of one sound -- nearly
    proportional waveforms, :data:`SAME_SOUND` -- are merged). ``groups`` unset: 8, or the
    model's units where it has fewer. ``top_k``: keep only the ``top_k`` strongest
    components, the others join the residual; 0 or None: every component (as ``--top 0`` and the
    server's ``top_k``). ``n_groups``: the old name of ``groups``
    (deprecated; a DeprecationWarning; a TypeError beside ``groups``). The options go through
    :func:`check_options`, as the CLI's and the server's do, so a direct call takes and refuses
    what they take and refuse, with check_options' defaults, ``groups`` under group ``none``
    refused as there; the CLI's flags have
    defaults of their own (``--group cluster``, ``--top 16``). Components come back as ``[K, C, T]`` at the
    caller's rate and length (mono input gives ``C = 1``), ranked by energy; every channel shares
    the same units and groups (each channel gets its own masks). ``fit_steps``: joint atom and
    code updates on this signal (:meth:`SparseDictionary.fit_signal`; default: the model
    config's ``fit_steps``): purer components, at about 8 ms per step per 4 s of audio.
    ``stop()`` is asked between the stages, between the blocks of the long ones (the resampling,
    the spectrogram, the code, each fit step, the masks, the units' sums, each component's (or
    cluster's) masks and inverse STFT, the STFT measuring each component, each component's resampling back, the residual and
    energies, the ranking), before each fit step, each batch of clusters inverted and each batch
    of components; when it says True,
    :class:`audioae.enhance.Stopped` is raised (the server: the caller went away).

    The steps: :func:`_request` (the options), :func:`_analyse` (spectrogram, code, masks'
    weights, active units), :func:`_group` (bands or clusters), :func:`_keep_top` and
    :func:`_rank_and_label` (waveforms, residual, ranking, names).
    """
    options = _request(model, group, groups, top_k, fit_steps, n_groups)
    x = as_channels_first(wav)[0].cpu()  # [C, T]
    check_pcm(x.numpy(), sr, "wav", argument="sr")  # decompose's own parameters, not a request's fields
    _check_long_enough(x.shape[-1], sr, model)
    most = options.groups if group != "none" else model.config.code_dim  # components there can be
    _warn_if_long(x.shape[0], x.shape[-1], sr, model.config.sample_rate, min(options.top_k or most, most))
    model = _on_cpu_for_inference(model)
    steps = model.config.fit_steps if options.fit_steps is None else options.fit_steps
    analysis = _analyse(model, x, sr, steps, stop)
    grouped = _keep_top(_group(model, analysis, group, options.groups, sr, stop), options.top_k)
    check_stop(stop, "decomposition stopped before the components")
    return _rank_and_label(model, analysis, grouped, x, sr, options, steps, stop)


def _request(model, group: str, groups: int | None, top_k: int | None, fit_steps: int | None,
             n_groups: int | None) -> Options:
    """:func:`decompose`'s options, through :func:`check_options` (one check, one set of
    defaults for every caller: ``groups`` unset is ``min(8, units)``), after the ``n_groups=``
    shim. ``groups`` goes as given: under group ``none`` check_options refuses it, as it does the
    CLI's and the server's, and :meth:`Options.kwargs` passes None there."""
    if n_groups is not None:
        if groups is not None:  # which one was meant? The old name silently won.
            raise TypeError(f"decompose got both groups={groups} and its deprecated old name n_groups={n_groups}: "
                            f"give groups only")
        warnings.warn("decompose(n_groups=...) is now decompose(groups=...), as in check_options and the CLI's "
                      "--groups", DeprecationWarning, stacklevel=4)  # 4: past this, decompose and inference_mode's wrapper
        groups = n_groups
    return check_options(model, group=group, groups=groups, top_k=top_k or 0, fit_steps=fit_steps)


@dataclass
class _Analysis:
    """What the model makes of one input, at its rate: all the grouping and masking read."""

    spec: torch.Tensor  # [C, F, N] complex: the input's STFT (its phase is the components')
    z_len: int  # T': the input's samples at the model's rate
    h: torch.Tensor  # [C, U, N] the code (fitted to the signal when asked), level units
    atoms: torch.Tensor  # [U, F, L] the model's, or adapted to this signal
    denom: torch.Tensor  # [C, F, N] the masks' denominator
    share_weight: torch.Tensor  # [C, F, N] |X|^2 / denom: a mask numerator to a share of the input
    weight: torch.Tensor  # [C, F, N] |X|^2 / denom^2: a numerator squared to masked STFT energy
    unit_energy: torch.Tensor  # [U] masked STFT energy per unit
    active: list[int]  # units holding more than ACTIVE_SHARE of the input's STFT energy
    floor: float  # that energy: ACTIVE_SHARE * |X|^2 summed
    acts: np.ndarray  # [U, N] absolute magnitude units, mean over channels


def _analyse(model: SparseDictionary, x: torch.Tensor, sr: int, fit_steps: int,
             stop: Callable[[], bool] | None) -> _Analysis:
    """``x [C, T]`` at ``sr``: resampled to the model's rate, its spectrogram, code (fitted for
    ``fit_steps``), the masks' weights and the units' energies. Stops are checked between stages
    and inside the long ones: a long recording's first stages took seconds that a caller past its
    deadline no longer waited for (benchmarks/decompose_deadline.py)."""
    check_stop(stop, "decomposition stopped before it began")
    z = resample_in_blocks(x, sr, model.config.sample_rate,
                           stop=lambda: check_stop(stop, "decomposition stopped while resampling"))  # [C, T']
    spec, feats = _spectrum_and_features(model, z, stop)  # [C, F, N] complex, [C, F, N]
    check_stop(stop, "decomposition stopped before encoding")
    mag = spec.abs()  # [C, F, N]
    level = model.level(mag)  # [C, 1, N]
    h = model.encode(feats, stop=lambda: check_stop(stop, "decomposition stopped while encoding"))  # [C, U, N], level units
    atoms = model.dictionary()  # [U, F, L]
    check_stop(stop, "decomposition stopped before the fit")
    if fit_steps:
        h, atoms = model.fit_signal(feats, h, fit_steps, stop=lambda: check_stop(stop, "decomposition stopped during the fit"))
    power = mag.pow(2)  # [C, F, N]
    denom, share_weight, weight = _mask_weights(model, h, atoms, mag, level, power, stop)  # [C, F, N] each
    check_stop(stop, "decomposition stopped before the units' energies")
    unit_energy = model.unit_energies(h, weight, atoms, lambda: check_stop(stop, "decomposition stopped "
                                                                         "in the units' energies"))  # [U]: masked STFT energy
    check_stop(stop, "decomposition stopped before the grouping")
    total = float(power.sum())
    active = [u for u in range(h.shape[1]) if unit_energy[u] > ACTIVE_SHARE * total] if total > 0 else []
    acts = (h * level).mean(0).numpy()  # [U, N] absolute magnitude units, mean over channels
    return _Analysis(spec=spec, z_len=z.shape[-1], h=h, atoms=atoms, denom=denom, share_weight=share_weight,
                     weight=weight, unit_energy=unit_energy, active=active, floor=ACTIVE_SHARE * total, acts=acts)


@dataclass
class _Groups:
    """Groups of units, unranked: one component each."""

    units: list[list[int]]  # the units behind each group
    share: list[float]  # each one's share of the input, what --top picks by
    labels: list[str] | None = None  # bands' (their edges); None: named once ranked, by their waveforms
    bins: list[tuple[int, int]] | None = None  # group "band": each one's STFT bins [lo, hi)
    explained: torch.Tensor | None = None  # group "band": [C, F, N] the active units' mask numerators
    waves: torch.Tensor | None = None  # group "cluster": [K, C, T'] already inverted, at the model's rate


def _group(model: SparseDictionary, a: _Analysis, group: str, n_groups: int | None, sr: int,
           stop: Callable[[], bool] | None) -> _Groups:
    """The active units in bands (:func:`_band_split`), clusters (:func:`group_units`; those
    that are pieces of one sound merged) or one per unit, each with its share of the input."""
    if group == "band":
        if not a.active:
            return _Groups([], [], [], [])
        explained = model.magnitudes(a.h[:, a.active], a.atoms[a.active])  # [C, F, N]
        units, labels, bins, share = _band_split(model, a.h, a.atoms, explained, a.weight, a.share_weight, a.active,
                                                 n_groups, a.floor, sr)
        return _Groups(units, share, labels, bins, explained)
    units = group_units(model, a.acts, a.unit_energy.numpy(), a.active, group, n_groups, a.atoms)
    waves = None
    if group == "cluster" and len(units) > 1:
        # Clusters that are pieces of one sound are merged: masks, inverse STFT and resampling
        # are linear, so a merged cluster's waveform is the sum of its pieces'.
        waves = _group_waves(model, a.h, a.atoms, a.spec, a.denom, units, a.z_len, stop)  # [K, C, T']
        sounds = _same_sound(waves)
        if len(sounds) < len(units):
            log.info("%d clusters of %d asked: k-means cut %d sound(s) in pieces, merged", len(sounds),
                     n_groups, sum(len(p) > 1 for p in sounds))
            waves = torch.stack([waves[p].sum(0) for p in sounds])  # [K', C, T']: one per sound
        units = [[u for k in p for u in units[k]] for p in sounds]
    # the sum of the units' shares: cheap, no group spectrogram is formed twice
    unit_share = model.unit_projections(a.h, a.share_weight, a.atoms, lambda: check_stop(stop, "decomposition "
                                                                                         "stopped in the shares"))  # [U]
    return _Groups(units, [float(unit_share[g].sum()) for g in units], waves=waves)


def _keep_top(g: _Groups, top_k: int | None) -> _Groups:
    """``g``'s ``top_k`` largest shares (all when None), largest first; the final order is by the
    energy attributed to each waveform (:func:`_rank_and_label`). (By the units' masked
    energies alone, --top 3 kept clusters 1, 3 and 5: test_top_k_keeps_...)"""
    order = np.argsort(g.share, kind="stable")[::-1]  # [K]
    if top_k is not None:
        order = order[:top_k]
    return _Groups(
        units=[g.units[i] for i in order], share=[g.share[i] for i in order],
        labels=[g.labels[i] for i in order] if g.labels is not None else None,
        bins=[g.bins[i] for i in order] if g.bins is not None else None, explained=g.explained,
        waves=g.waves[torch.from_numpy(order.copy())] if g.waves is not None else None)  # [k, C, T']


def _rank_and_label(model: SparseDictionary, a: _Analysis, g: _Groups, x: torch.Tensor, sr: int, options: Options,
                    fit_steps: int, stop: Callable[[], bool] | None) -> Decomposition:
    """The groups' waveforms at the caller's rate (``x [C, T]``), the residual, ranked by the
    energy attributed to each and named, as a :class:`Decomposition`."""
    c = model.config
    comps, dom_hz, bands, envs, tones = _component_waveforms(model, a.h, a.atoms, a.spec, a.denom, g.units, sr,
                                                             x.shape[-1], a.z_len, g.explained, g.bins, g.waves,
                                                             stop)  # [K, C, T], [K], [K, 2], [K, N], K lists
    residual, energy, x_energy, err_energy, residual_energy = _residual_and_energies(x.numpy(), comps, stop)  # [C, T], [K]
    rank = np.argsort(-energy, kind="stable")  # [K]
    _rank_in_place(comps, rank, stop)
    energy, dom_hz, bands, envs = energy[rank], dom_hz[rank], bands[rank], envs[rank]
    groups = [g.units[i] for i in rank]
    labels = _labels(options.group, groups, dom_hz, bands, [tones[i] for i in rank],
                     [g.labels[i] for i in rank] if g.labels is not None else None, c.sample_rate / c.n_fft)
    silent = x_energy == 0
    x_energy = max(x_energy, 1e-30)
    # An exact sum (a silent input, say) is -inf dB, not whatever ratio two epsilons make.
    error_db = 10 * math.log10(err_energy / x_energy) if err_energy > 0 else -math.inf
    if error_db > EXACT_DB:
        log.warning("components sum to the input only within %.1f dB (contract: %.0f dB)", error_db, EXACT_DB)
    return Decomposition(
        components=comps, residual=residual, labels=labels, units=[sorted(u) for u in groups],
        activations=a.acts.astype(np.float32), energy_share=(energy / x_energy).astype(np.float32),
        frame_rate=c.sample_rate / c.hop_length, sample_rate=sr, dominant_hz=dom_hz, envelopes=envs,
        residual_share=math.nan if silent else residual_energy / x_energy,
        error_db=error_db, group=options.group, atoms=a.atoms.detach().numpy().astype(np.float32), fit_steps=fit_steps,
        band_bins=[g.bins[i] for i in rank] if g.bins is not None else [], edge_frames=edge_frames(c),
        groups_asked=None if options.group == "none" else options.groups,
    )


def _labels(group: str, units: list[list[int]], dom_hz: np.ndarray, bands: np.ndarray, tones: list[list[float]],
            band_labels: list[str] | None, bin_hz: float) -> list[str]:
    """The ranked components' names: clusters by what they sound like, in rank order; units by
    what the waveform holds (its atom's peak was off by up to a bin, or far off); bands by their
    edges. ``dom_hz [K]``, ``bands [K, 2]`` (Hz)."""
    if group == "cluster":
        return [cluster_label(i + 1, float(hz), (float(lo), float(hi)), len(u), t, bin_hz)
                for i, (hz, (lo, hi), u, t) in enumerate(zip(dom_hz, bands, units, tones, strict=True))]
    if group == "none":
        return [f"unit {u[0]} (~{hz_text(hz)} Hz)" for u, hz in zip(units, dom_hz, strict=True)]
    return band_labels


def _mask_weights(model: SparseDictionary, h: torch.Tensor, atoms: torch.Tensor, mag: torch.Tensor,
                  level: torch.Tensor, power: torch.Tensor, stop: Callable[[], bool] | None):
    """The masks' denominator ``max(V, floor |X| / level)`` (the model's level-normalised domain:
    a group's mask is ``V_g / denom``) and the weights ``|X|^2 / denom`` and ``|X|^2 / denom^2``,
    each ``[C, F, N]`` (``mag = |X|``, ``power = |X|^2 [C, F, N]``, ``level [C, 1, N]``). In
    blocks of frames (:func:`frame_blocks`: a frame's ``V`` reads the code within ``p`` frames of
    it), ``stop`` asked before each after the first: uncut, 550 s ran on 0.79 s past a stop
    (docs/decomposition.md)."""
    n = h.shape[-1]
    denom, share_weight, weight = torch.empty_like(mag), torch.empty_like(mag), torch.empty_like(mag)  # [C, F, N] each
    for lo, a, b, hi in frame_blocks(n, model._pad):
        if a:
            check_stop(stop, f"decomposition stopped at frame {a} of {n} of its masks")
        v = model.magnitudes(h[..., lo:hi], atoms)[..., a - lo : b - lo]  # [C, F, b - a]
        d = torch.maximum(v, MASK_FLOOR * mag[..., a:b] / level[..., a:b]).clamp_min(1e-12)  # [C, F, b - a]
        denom[..., a:b] = d
        # A component's share of the input, <c_k, x>, is close to sum(mask_k |X|^2): linear in the
        # mask, so the cross terms between a group's units count, as in the ranking of the waveforms.
        share = power[..., a:b] / d  # [C, F, b - a]: turns a mask numerator into that share
        share_weight[..., a:b] = share
        weight[..., a:b] = share / d  # turns a mask numerator squared into masked STFT energy
    return denom, share_weight, weight


def _sample_blocks(comps: np.ndarray) -> int:
    """Samples per block of the work on every component at once: about ``2 * CHUNK_FLOATS`` floats."""
    return max(1 << 12, 2 * CHUNK_FLOATS // max(1, comps.shape[0] * comps.shape[1]))


def _sample_spans(length: int, step: int, stop: Callable[[], bool] | None, doing: str) -> Iterator[tuple[int, int]]:
    """``(a, b)`` blocks of ``step`` samples of ``length``, ``stop`` asked before each: "decomposition
    stopped {doing}, at sample {a} of {length}"."""
    for a in range(0, length, step):
        check_stop(stop, f"decomposition stopped {doing}, at sample {a} of {length}")
        yield a, min(a + step, length)


def _residual_and_energies(x: np.ndarray, comps: np.ndarray, stop: Callable[[], bool] | None):
    """The residual ``x - comps.sum(0)`` ``[C, T]`` float32 (summed in float64), and in float64
    the energy attributed to each component ``<c_k, x>`` ``[K]``, ``|x|^2``, the sum-to-input
    error's energy ``|sum + residual - x|^2`` and ``<residual, x>``; ``x [C, T]``, ``comps
    [K, C, T]``. In blocks of samples, ``stop`` asked before each: uncut, with the ranking, a
    550 s call at 44.1 kHz ran on 5-8 s past a stop (docs/decomposition.md). Blocks change the
    sums only by float rounding.

    ``<c_k, x>``: with the residual's it sums to ``|x|^2`` exactly (soft-masked components share
    the input's phase, so ``|c_k|^2`` alone would leave out the cross terms and the shares would
    not add up); one component at a time, no ``[K, C, T]`` float64 copy."""
    length = x.shape[-1]
    residual = np.empty(x.shape, np.float32)
    energy = np.zeros(len(comps))
    x_energy = err_energy = residual_energy = 0.0
    for a, b in _sample_spans(length, _sample_blocks(comps), stop, "summing the components"):
        x64 = x[:, a:b].astype(np.float64)  # [C, b - a]
        comps_sum = comps[:, :, a:b].sum(0, dtype=np.float64)  # [C, b - a]
        res = (x64 - comps_sum).astype(np.float32)
        residual[:, a:b] = res
        energy += [float((comp[:, a:b].astype(np.float64) * x64).sum()) for comp in comps]
        res64 = res.astype(np.float64)
        x_energy += float((x64**2).sum())
        err_energy += float(((comps_sum + res64 - x64) ** 2).sum())
        residual_energy += float((res64 * x64).sum())
    return residual, energy, x_energy, err_energy, residual_energy


def _rank_in_place(comps: np.ndarray, rank: np.ndarray, stop: Callable[[], bool] | None) -> None:
    """``comps [K, C, T] = comps[rank]``, in place and in blocks of samples, ``stop`` asked before
    each: ``comps[rank]`` made a fresh copy of every waveform, uncut."""
    if (rank == np.arange(len(rank))).all():
        return
    for a, b in _sample_spans(comps.shape[-1], _sample_blocks(comps), stop, "ranking the components"):
        comps[:, :, a:b] = comps[rank, :, a:b]


def _component_waveforms(model: SparseDictionary, h: torch.Tensor, atoms: torch.Tensor, spec: torch.Tensor, denom: torch.Tensor,
                         groups: list[list[int]], sr: int, length: int, z_len: int,
                         explained: torch.Tensor | None = None, bins: list[tuple[int, int]] | None = None,
                         waves: torch.Tensor | None = None, stop: Callable[[], bool] | None = None):
    """Masked, inverted and resampled components ``[K, C, T]`` float32, their dominant
    frequencies ``[K]``, the bands holding the middle 80% of their energy ``[K, 2]`` (Hz), their
    energy envelopes ``[K, N]`` (model frames, summed over channels) and the tones each is mostly
    made of (Hz, :func:`_tones_and_peak`; ``[]`` for none), one list per component. With ``bins``,
    component ``k``'s mask numerator is ``explained [C, F, N]`` within ``bins[k]`` only. With
    ``waves [K, C, T']``, the groups' waveforms at the model's rate already inverted
    (:func:`_group_waves`), these are resampled instead. Masks and inverse STFT in blocks of
    frames (:func:`_masked_blocks`), then the resampling and the copy in blocks of samples,
    ``stop`` asked before each block but the first and before each batch of components.

    Frequencies, bands and envelopes are measured on the inverted waveforms
    (:func:`_waveform_spectra`, and :func:`_resolving_spectra` for tones), what the component
    files hold: the masked power ``M^2 |X|^2`` they were once taken from differs from it where
    masks swing fast from frame to frame (in a C-E-G chord, a cluster labelled ~250 Hz held 62%
    of its energy at 392 Hz)."""
    c = model.config
    n_ch, n_bins, n_frames = spec.shape
    spec_ri = torch.view_as_real(spec)  # [C, F, N, 2]
    out = np.zeros((len(groups), n_ch, length), np.float32)
    dom = np.zeros(len(groups), np.float32)
    spans = np.zeros((len(groups), 2), np.float32)
    bin_hz = c.sample_rate / c.n_fft
    envs = np.zeros((len(groups), n_frames), np.float32)
    tones: list[list[float]] = []
    step = _unit_chunks(len(groups), spec.numel() * 2)
    for lo in range(0, len(groups), step):
        check_stop(stop, f"decomposition stopped at component {lo + 1} of {len(groups)}")
        batch = groups[lo : lo + step]
        k = len(batch)
        ask = partial(_ask_at_frame, stop, n_frames, where=f"masking and inverting component {lo + 1} of {len(groups)}")
        y = (_masked_waves(model, h, atoms, spec_ri, denom, batch, z_len, ask, explained,
                           None if bins is None else bins[lo : lo + k])
             if waves is None else waves[lo : lo + k])  # [k, C, T']
        measuring = partial(ask, where=f"measuring the spectrum of component {lo + 1} of {len(groups)}")
        spectrum, envs[lo : lo + k] = _waveform_spectra(model, y, measuring)  # [k, F], [k, N]
        resolving = _resolving_spectra(model, y, measuring)  # [k, F'] or None
        spans[lo : lo + k] = _energy_band(spectrum.numpy()) * bin_hz
        for j in range(k):
            row_tones, dom[lo + j] = _tones_and_peak(spectrum[j].numpy(), bin_hz, None if resolving is None else
                                                     resolving[j].numpy(), c.sample_rate / (PEAK_WINDOW * c.n_fft))
            tones.append([float(dom[lo + j]), *row_tones[1:]] if row_tones else [])  # the first: dominant_hz as kept
        # After the inverse STFT, and in blocks with a stop question before each: uncut, a stop ran on
        # to the next component (benchmarks/results/decompose-deadline-tail-before.json).
        resampling = partial(check_stop, stop, f"decomposition stopped while resampling component {lo + 1} of "
                                               f"{len(groups)}")
        resampling()
        y = fit_length(resample_in_blocks(y, c.sample_rate, sr, stop=resampling), length).numpy()  # [k, C, T]
        # Copied in blocks, a stop question before each: the copy touches fresh pages of `out`,
        # which ran on past a stop, uncut (docs/decomposition.md).
        for a, b in _sample_spans(length, _sample_blocks(y), stop, f"copying component {lo + 1} of {len(groups)}"):
            out[lo : lo + len(batch), :, a:b] = y[..., a:b]
    return out, dom, spans, envs, tones


def _waveform_spectra(model: SparseDictionary, y: torch.Tensor, ask: Callable[[int], None]) -> tuple[torch.Tensor, np.ndarray]:
    """The power spectra ``[k, F]`` (float64, summed over frames and channels) and energy
    envelopes ``[k, N]`` (per model frame) of waveforms ``y [k, C, T']`` at the model's rate,
    through the model's STFT in blocks of frames (:func:`_stft_blocks`: a frame reads the samples
    within ``n_fft/2`` of its centre), ``ask(a)`` before each block but the first."""
    c = model.config
    spectrum = torch.zeros((y.shape[0], c.n_fft // 2 + 1), dtype=torch.float64)  # [k, F]
    envs = np.zeros((y.shape[0], model.stft.num_frames(y.shape[-1])), np.float32)  # [k, N]
    for lo, a, b, spec in _stft_blocks(model, y, _window_frames(c), ask):  # [k, C, F, hi - lo]
        spec = spec[..., a - lo : b - lo]  # [k, C, F, b - a]
        power = (spec.real.pow(2) + spec.imag.pow(2)).sum(1)  # [k, F, b - a]
        spectrum += power.sum(-1, dtype=torch.float64)
        envs[:, a:b] = power.sum(1).numpy()
    return spectrum, envs


def _resolving_spectra(model: SparseDictionary, y: torch.Tensor, ask: Callable[[int], None]) -> torch.Tensor | None:
    """The power spectra ``[k, F']`` (float64, summed over frames and channels) of waveforms ``y
    [k, C, T']`` at the model's rate through Hann windows :data:`PEAK_WINDOW` times the model's
    ``n_fft`` (half overlapping, each wholly inside the signal), fine enough to resolve tones a
    model's bin or two apart; None where ``y`` is shorter than one window. In blocks of frames,
    ``ask(a)`` (``a``: a model frame) before each block but the first."""
    c = model.config
    n = PEAK_WINDOW * c.n_fft
    hop, length = n // 2, y.shape[-1]
    if length < n:
        return None
    window = torch.hann_window(n, dtype=y.dtype)
    flat = y.reshape(-1, length)  # [k * C, T']
    frames = 1 + (length - n) // hop
    step = max(1, CHUNK_FLOATS // (y.shape[0] * y.shape[1] * n))  # frames per block
    spectrum = torch.zeros((y.shape[0], n // 2 + 1), dtype=torch.float64)  # [k, F']
    for a in range(0, frames, step):
        if a:
            ask(a * hop // c.hop_length)
        b = min(frames, a + step)
        framed = unfold_frames(flat[:, a * hop : (b - 1) * hop + n], n, hop)  # [k * C, n, b - a]
        spec = framed_rfft(framed, window, n)  # [k * C, F', b - a]
        power = (spec.real.pow(2) + spec.imag.pow(2)).reshape(*y.shape[:2], *spec.shape[1:])  # [k, C, F', b - a]
        spectrum += power.sum((1, 3), dtype=torch.float64)
    return spectrum


def _tones_and_peak(spectrum: np.ndarray, bin_hz: float, resolving: np.ndarray | None,
                    resolving_hz: float) -> tuple[list[float], float]:
    """``(tones Hz, dominant Hz)`` of one component from its spectrum through the model's STFT
    (``spectrum [F]``, ``bin_hz`` apart) and through longer windows (``resolving [F']``,
    ``resolving_hz`` apart; None for a signal shorter than one): the tones (:func:`_tone_peaks`)
    of the resolving spectrum, else of the model's (a voice's gliding harmonics are sharp only
    through its short window), strongest first; the dominant frequency is the first tone, else
    the model spectrum's peak (:func:`_peak_bins`). The tones 68 and 62 Hz apart of a C-E-G
    chord, one cluster, were no sharp peak in the model's bins and its dominant frequency read
    338 Hz, no note of it."""
    for p, hz in ((resolving, resolving_hz), (spectrum, bin_hz)):
        if p is not None:
            tones = [b * hz for b in _tone_peaks(p)]
            if tones:
                return tones, tones[0]
    return [], float(_peak_bins(spectrum[None])[0]) * bin_hz


def _peak_bins(spectrum: np.ndarray) -> np.ndarray:
    """``[k]`` the fractional bin of each ``spectrum [k, F]``'s peak: the vertex of a parabola
    through the log power of the top bin and its neighbours (a Hann window's main lobe is close
    to one), so that a 392 Hz tone reads ~392 Hz, not the 406 Hz of its top 31.25 Hz bin. A lone
    tone reads within 0.5 Hz in 31.25 Hz bins (262.05 for 261.63 Hz) and 0.1 Hz in
    :func:`_resolving_spectra`'s. The Hann window's own two-bin formula, exact for a lone tone,
    was tried and not taken: a voice's harmonic, whose lobe is wider than a tone's, read 228.6 Hz
    where its energy centres on 225.5 (the parabola: 224.5). E of a C-E-G chord read 333.0 Hz in the
    model's bins through C's and G's lobes beside it, not through the parabola: the resolving
    spectrum reads it 329.7."""
    top = spectrum.argmax(-1)  # [k]
    rows = np.arange(len(spectrum))
    inner = (top > 0) & (top < spectrum.shape[-1] - 1) & (spectrum[rows, top] > 0)
    peak = top.astype(np.float64)
    if inner.any():
        r, t = rows[inner], top[inner]
        left, mid, right = (np.log(np.maximum(spectrum[r, t + d], 1e-300)) for d in (-1, 0, 1))
        curve = left - 2 * mid + right  # < 0 at a strict maximum
        peak[inner] += np.where(curve < 0, 0.5 * (left - right) / np.where(curve < 0, curve, -1.0), 0.0)
    return peak.astype(np.float32)


def _energy_band(spectrum: np.ndarray, share: float = 0.8) -> np.ndarray:
    """``[k, 2]`` bin indices between which the middle ``share`` of each ``spectrum [k, F]``'s
    energy lies (from its (1-share)/2 to its (1+share)/2 point)."""
    cdf = np.cumsum(spectrum, axis=-1)
    cdf /= np.maximum(cdf[:, -1:], 1e-300)
    tail = (1 - share) / 2
    return np.stack([(cdf < tail).sum(-1), (cdf < 1 - tail).sum(-1)], axis=-1).astype(np.float32)


def _round_hz(hz: float) -> str:
    """Two significant figures for a band's edges: 780-7200 Hz, not 781-7219 Hz."""
    return f"{hz:.0f}" if hz < 100 else f"{float(f'{hz:.2g}'):.0f}"


def _tone_peaks(spectrum: np.ndarray, named: float = TONE_SHARE, tonal: float = 0.5, most: int = 3) -> list[float]:
    """The fractional bins of the tones that ``spectrum [F]`` (a power spectrum through a Hann
    window: the model's STFT, or :func:`_resolving_spectra`) is mostly made of, strongest bin
    first, or ``[]``. A tone is a local
    maximum at least :data:`TONE_SHARPNESS` times the geometric mean of its neighbours (a tone's
    main lobe; a sweep's or a noise's flat top is not) whose bin and neighbours hold at least
    ``named`` of the energy; at most ``most`` of them. ``[]`` unless the strongest bin is one
    and together they hold ``tonal`` of the energy (a bin two lobes share counted once; until
    2026-12-07 twice): the spectrum's peak (the dominant
    frequency, :func:`_peak_bins`) is then always the first."""
    p = np.asarray(spectrum, np.float64)
    total = p.sum()
    if total <= 0 or len(p) < 3:
        return []
    peaks: list[int] = []
    held: set[int] = set()  # the bins of the peaks' lobes, each counted once
    # Only a bin holding named / 3 of the energy can top a 3-bin lobe holding named: the others
    # are passed over at once, not one by one (a resolving spectrum has 1025 bins for decomposer-small).
    order = np.argsort(-p[2:-1], kind="stable") + 2  # beside the 0 Hz bin, pink noise's rise read as a tone
    for i in order[p[order] >= named * total / 3]:
        if len(peaks) == most:
            break
        if p[i] < p[i - 1] or p[i] < p[i + 1] or any(abs(i - j) < 2 for j in peaks):
            continue
        lobe = p[i - 1 : i + 2].sum() / total
        sharp = p[i] >= TONE_SHARPNESS * math.sqrt(max(p[i - 1] * p[i + 1], 0.0))
        if sharp and lobe >= named:
            peaks.append(int(i))
            held |= {int(i) - 1, int(i), int(i) + 1}  # two peaks 2 bins apart share the bin between them
    lobes = p[sorted(held)].sum() / total
    if not peaks or peaks[0] != int(p.argmax()) or lobes < tonal:
        return []
    frac = _peak_bins(np.stack([np.where(np.abs(np.arange(len(p)) - i) <= 1, p, 0.0) for i in peaks]))
    return frac.tolist()


def cluster_label(rank: int, dominant_hz: float, band_hz: tuple[float, float], units: int,
                  tones_hz: list[float] | tuple[float, ...] = (), bin_hz: float = 0.0) -> str:
    """``cluster 1 (~219 Hz, 3 units)`` for a component mostly made of one tone (its energy within an octave),
    ``cluster 2 (~262+330 Hz, 2 units)`` of two or three (``tones_hz``, strongest first: the
    first is its dominant frequency; :func:`_tone_peaks`), else ``cluster 4 (780-7200 Hz, 60
    units)``: the middle 80% of its energy (a noise, a sweep, a voice's harmonics have no one
    frequency), and ``peak 168 Hz`` beside it when the dominant frequency lies outside that
    band (a flat spectrum's highest bin may lie anywhere). ``band_hz``'s edges are the centres
    of its first and last bins (:func:`_energy_band`), ``bin_hz`` apart, so the band reaches half
    a bin past them: an interpolated peak of 1010 Hz in a top bin centred at 1000 Hz lies in
    "1000-2000 Hz". The dominant frequency alone would misname a component whose energy lies
    within an octave (a cluster holding C and E alike as "~262 Hz")."""
    lo, hi = band_hz
    if tones_hz and hi <= 2 * lo:  # a wider band is no tone's: pink noise through one-bin atoms has sharp peaks
        where = f"~{'+'.join(hz_text(hz) for hz in tones_hz)} Hz"
    else:
        where = f"{_round_hz(lo)}-{_round_hz(hi)} Hz"
        if not lo - bin_hz / 2 <= dominant_hz <= hi + bin_hz / 2:
            where += f", peak {hz_text(dominant_hz)} Hz"
    return f"cluster {rank} ({where}, {units} unit{'s' if units > 1 else ''})"


# ---- a summary people can read ------------------------------------------------------------------
def active_frames(envelope: np.ndarray, floor_db: float = ACTIVE_DB) -> np.ndarray:
    """``[N]`` bool: frames whose energy is within ``floor_db`` of the envelope's peak (none of a
    silent envelope)."""
    if envelope.size == 0 or envelope.max() <= 0:
        return np.zeros(envelope.shape, bool)
    return envelope >= envelope.max() * 10 ** (floor_db / 10)


def active_spans(envelope: np.ndarray, frame_rate: float, floor_db: float = ACTIVE_DB, min_gap: float = 0.05,
                 max_spans: int = MAX_SPANS, duration: float = math.inf, edge_frames: int = 0) -> tuple[list[list[float]], int]:
    """``([[start, end], ...] seconds, count)``: where ``envelope [N]`` (energy per frame) is within
    ``floor_db`` of its peak, gaps shorter than ``min_gap`` seconds bridged, and how many such
    spans there are. Past ``max_spans`` (summary.json stays small) only the ``max_spans - 1``
    longest gaps are kept (of equal ones, the earliest) and the others bridged: the spans still
    cover every active frame and the first and last times stay true (cutting the list at 50 made
    3 minutes of bursts read "0.00-48.82 s"; bridging every gap up to a length, 180 bursts a
    second apart read as one span).

    Ends are clipped to ``duration`` (the signal's: the last frame, centred near the end, would
    reach half a hop past it), and a span left empty by that (``[3.0, 3.0]``) is dropped. A span
    within the first or last ``edge_frames`` frames (:func:`edge_frames`: those the STFT's zero
    padding can reach) is dropped when the component is active elsewhere too: a signal cut off at
    full level starts with a step that every broadband unit answers, and a component heard from
    0.5 to 2.8 s read "0.00-3.00 s"."""
    if max_spans < 1:  # 0 kept every gap but one (max_spans - 1 = -1 of them), not none
        raise ValueError(f"max_spans must be at least 1, got {max_spans}")
    on = active_frames(envelope, floor_db).astype(np.int8)
    n = len(on)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on, [0]])))  # run starts and ends, alternating
    runs = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))  # frames [a, b)
    if edge_frames and len(runs) > 1:
        inner = [(a, b) for a, b in runs if not ((a == 0 and b <= edge_frames) or (b == n and a >= n - edge_frames))]
        runs = inner or runs  # active only at the ends: that is what it holds
    spans: list[list[float]] = []
    for a, b in runs:
        start, end = min(a / frame_rate, duration), min(b / frame_rate, duration)
        if end <= start:
            continue
        if spans and start - spans[-1][1] < min_gap:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    count = len(spans)
    if count > max_spans:
        # Keep the max_spans - 1 longest gaps (equal ones: the earliest) and bridge the rest. A
        # length threshold bridged every gap of its length at once: 180 bursts a second apart
        # read as one span, 0.49-179.82 s.
        gaps = [round(b[0] - a[1], 6) for a, b in zip(spans[:-1], spans[1:], strict=True)]  # equal in frames: equal
        kept = set(sorted(range(len(gaps)), key=lambda i: (-gaps[i], i))[: max_spans - 1])
        merged = [spans[0]]
        for i, span in enumerate(spans[1:]):
            if i in kept:
                merged.append(span)
            else:
                merged[-1] = [merged[-1][0], span[1]]
        spans = merged
    return [[round(a, 3), round(b, 3)] for a, b in spans], count


def summarize(dec: Decomposition) -> dict:
    """A JSON-ready description: per component its label, units, energy share, dominant
    frequency and when it is active."""
    comps = []
    duration = dec.residual.shape[-1] / dec.sample_rate
    for k in range(len(dec.labels)):
        env = dec.envelopes[k]
        on = active_frames(env)
        spans, count = active_spans(env, dec.frame_rate, duration=duration, edge_frames=dec.edge_frames)
        comps.append(component_entry(
            k, dec.labels[k], dec.units[k], round(float(dec.energy_share[k]), 6), round(float(dec.dominant_hz[k]), 1),
            round(float(on.mean()) if on.size else 0.0, 4), spans, active_spans=count))
    return summary(
        sample_rate=dec.sample_rate, channels=int(dec.residual.shape[0]), samples=int(dec.residual.shape[-1]),
        group=dec.group, groups=dec.groups_asked, fit_steps=dec.fit_steps, frame_rate=dec.frame_rate,
        error_db=round(dec.error_db, 2) if math.isfinite(dec.error_db) else None,
        residual_share=round(dec.residual_share, 6) if math.isfinite(dec.residual_share) else None,  # None: silent
        components=comps)
