"""A sparse, overcomplete autoencoder whose decoder is a non-negative convolutive dictionary.

Decoder: *linear* in magnitude::

    n[f, t]  ~  V[f, t] = sum_u sum_l W[u, f, l] * h[u, t - l + p]        (p = (L - 1) / 2)

where ``n = |X| / level`` is the magnitude STFT divided by its moving level (so the model does
not care how loud the recording is), and every atom ``W[u] [F, L]`` is non-negative with unit L2
norm (the scale lives in ``h``). Each latent unit ``u`` contributes exactly one component
spectrogram ``V_u`` -- its atom convolved with its activation over time -- and the components
add up to the reconstruction. :mod:`audioae.decompose` turns that additivity into component
waveforms with soft masks.

Encoder, tied to the decoder (no weights of its own):

1. a matched filter through the dictionary (the decoder's adjoint, ``W^T n``) scores every
   unit at every frame; the ``topk`` best-scoring units of a frame form its support (the code
   is sparse by construction: at most ``topk`` of ``code_dim`` units per frame);
2. ``refine_steps`` multiplicative updates of non-negative sparse coding (Lee & Seung's
   KL-divergence rule, with an optional L1 shrinkage ``sparsity_weight``) fit the activations on
   that support. Multiplicative updates keep zeros at zero and values non-negative, and each
   step lowers the KL divergence between ``n`` and ``V`` for any dictionary, which is what makes
   training the dictionary through them stable (an amortised ReLU encoder trained against a
   non-negative decoder lost most of its units in our trials).

Per-signal fit (optional, :meth:`SparseDictionary.fit_signal`): a few joint multiplicative
updates of the atoms *and* the activations on one signal, starting from the learned dictionary
and the encoder's code -- NMF's per-signal fit, but from a learned start, so a few steps go far.

Training (the library's :func:`audioae.train.fit_arrays`) backpropagates the MSE between the
compressed reconstruction and the compressed input through the unrolled updates into ``W``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..spectral import building_on_meta, compress, decompress, with_magnitude
from .base import SpectralAutoencoder, SpectralConfig

MAG_FLOOR = 1e-3  # added to level-normalised magnitudes before compression: -60 dB under the level
LEVEL_FLOOR = 1e-6  # keeps the level of digital silence above zero
DIV_EPS = 1e-6  # keeps the multiplicative updates' ratios finite
# Steps of the unrolled updates (every encode) and of the per-signal fit. A checkpoint's config
# sets both, and its refine_steps of 10**9 held decompose forever.
MAX_REFINE_STEPS = 100
# Each fit step costs about one encoder pass over the whole recording: 1000 would hold a 3-minute
# call for minutes. Also the most a request (CLI or server) may ask for (decompose.check_options).
MAX_FIT_STEPS = 100
# Frame-local work on a long signal (the encoder; decompose's STFT and features) runs in blocks of
# this many frames (16 s at 16 kHz, hop 128), with a stop check before each: run whole, they held
# the device past a caller's deadline (a 1 s Denoise queued behind an abandoned 550 s Decompose
# waited 1.1 s; in blocks 0.03 s: benchmarks/decompose_deadline.py).
BLOCK_FRAMES = 2048


@dataclass(frozen=True)
class SparseDictConfig(SpectralConfig):
    code_dim: int = 320  # units; more than the 257 bins of a 512-point frame: overcomplete
    code_activation: str = "relu"  # the code is non-negative (multiplicative updates keep it so)
    sparsity: str = "topk"  # topk: at most `topk` units per frame; l1/none: every unit may be active
    # Units per frame. 0 (the default): a tenth of code_dim, at least 1 -- 32 of the default 320.
    # A fixed default of 32 kept every unit of a code_dim under 32, silently dense; a topk the
    # user sets above code_dim is refused instead (models.sparsity.check_topk).
    topk: int = 0
    sparsity_weight: float = 0.0  # L1 shrinkage inside the multiplicative updates
    output: str = "magnitude"
    atom_frames: int = 3  # frames one atom spans (convolutive); 1 gives NMF's per-frame dictionary
    refine_steps: int = 4  # multiplicative updates after the matched filter
    fit_steps: int = 0  # decompose's default per-signal fit (joint atom + code updates); 0: none
    level_frames: int = 63  # magnitudes are divided by a moving RMS level over this many frames (~0.5 s)
    init_seed: int = 0  # seed of the atoms' initial shapes (bumps spread over log-frequency)

    def __post_init__(self):
        if self.topk == 0 and isinstance(self.code_dim, int):  # a non-int code_dim: the shared checks say so
            # resolved here, so a saved config holds the number its model ran with
            object.__setattr__(self, "topk", default_topk(self.code_dim))
        super().__post_init__()
        if self.sparsity not in ("topk", "l1", "none"):
            raise ValueError(f"sparse_dict sparsity must be topk, l1 or none, got {self.sparsity!r}")
        if self.output != "magnitude":
            raise ValueError("sparse_dict outputs magnitudes (output='magnitude')")
        if self.input != "spectrogram":
            raise ValueError("sparse_dict works on spectrograms (input='spectrogram')")
        if not 1 <= self.refine_steps <= MAX_REFINE_STEPS:
            raise ValueError(f"refine_steps must be within 1..{MAX_REFINE_STEPS}, got {self.refine_steps}")
        if not 0 <= self.fit_steps <= MAX_FIT_STEPS:
            raise ValueError(f"fit_steps must be within 0..{MAX_FIT_STEPS}, got {self.fit_steps}")
        for name in ("atom_frames", "level_frames"):
            v = getattr(self, name)
            if v < 1 or v % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {v}")

    def _weight_unread(self) -> bool:
        return False  # the L1 shrinkage of the multiplicative updates reads it under every sparsity

    def _is_default(self, name: str) -> bool:
        return name == "topk" and self.topk == default_topk(self.code_dim)  # resolved from 0 above


def default_topk(code_dim: int) -> int:
    """The units per frame a sparse_dict keeps when its config leaves ``topk`` at 0: a tenth of
    ``code_dim``, at least 1 (32 of the default 320)."""
    return max(1, code_dim // 10)


def frame_blocks(n: int, halo: int, block: int = BLOCK_FRAMES) -> Iterator[tuple[int, int, int, int]]:
    """``(lo, a, b, hi)`` covering frames ``0 .. n`` in blocks ``a .. b`` of ``block`` frames, each
    with the ``halo`` frames either side that it reads (``lo .. hi``, within ``0 .. n``): a
    computation whose output frame ``t`` reads input frames ``t - halo .. t + halo`` only gives,
    run on ``lo .. hi`` and cut to ``a - lo .. b - lo``, what it gives on the whole (to float
    rounding). One block, ``(0, 0, n, n)``, where ``n <= block``."""
    for a in range(0, max(n, 1), block):
        b = min(a + block, n)
        yield max(0, a - halo), a, b, min(n, b + halo)


def _initial_atoms(config: SparseDictConfig) -> torch.Tensor:
    """Initial atoms ``[U, F, L]`` (unit norm): Gaussian bumps at log-spaced random centres with
    random widths -- a wavelet-like start that training shapes into harmonic and noise atoms."""
    g = torch.Generator().manual_seed(config.init_seed)
    u, f, length = config.code_dim, config.n_bins, config.atom_frames
    centre = torch.exp(torch.rand(u, generator=g) * math.log(f - 1))  # [U] bins, 1 .. F-1
    width = torch.exp(torch.rand(u, generator=g) * math.log(f / 4))  # [U] bins, 1 .. F/4
    bins = torch.arange(f, dtype=torch.float32)
    bump = torch.exp(-0.5 * ((bins[None] - centre[:, None]) / width[:, None]) ** 2)  # [U, F]
    w = bump[:, :, None].expand(u, f, length) + 1e-3 * torch.rand(u, f, length, generator=g)  # [U, F, L]
    return w / w.flatten(1).norm(dim=1)[:, None, None]


class SparseDictionary(SpectralAutoencoder):
    """Tied sparse encoder + non-negative convolutive dictionary decoder.

    ``forward(feats [B, F, N]) -> (compress(V) [B, F, N], h [B, U, N])``; ``h`` is in units of
    the local level. Offline only (the encoder and the level look ahead). Phase is not modelled:
    component waveforms take the input's phase through soft masks (:mod:`audioae.decompose`).
    """

    registry_name = "sparse_dict"
    config: SparseDictConfig

    def __init__(self, config: SparseDictConfig):
        super().__init__(config)
        shape = (config.code_dim, config.n_bins, config.atom_frames)
        self.atoms_raw = nn.Parameter(torch.empty(shape) if building_on_meta() else _initial_atoms(config))  # [U, F, L]
        self._atoms_cache: tuple | None = None

    # ---- features ------------------------------------------------------------------------------
    def level(self, mag: torch.Tensor) -> torch.Tensor:
        """Moving RMS level ``[B, 1, N]`` of magnitudes ``mag [B, F, N]`` (over frequency and
        ``level_frames`` frames)."""
        k = self.config.level_frames
        power = mag.pow(2).mean(1, keepdim=True)  # [B, 1, N]
        power = F.avg_pool1d(power, k, stride=1, padding=k // 2, count_include_pad=False)  # [B, 1, N]
        return power.add(LEVEL_FLOOR**2).sqrt()

    def normalized_magnitudes(self, spec: torch.Tensor) -> torch.Tensor:
        """complex ``[B, F, N]`` -> ``|X| / level`` ``[B, F, N]``: what the dictionary explains."""
        mag = spec.abs()  # [B, F, N]
        return mag / self.level(mag)

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """complex ``[B, F, N]`` -> compressed level-normalised magnitudes ``[B, F, N]``.

        :data:`MAG_FLOOR` makes the loss ignore what lies more than 60 dB under the local level.
        """
        c = self.config
        return compress(self.normalized_magnitudes(spec) + MAG_FLOOR, c.compression, c.compression_power)

    def _magnitudes_of(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        return (decompress(x, c.compression, c.compression_power) - MAG_FLOOR).clamp_min(0)  # [B, F, N]

    # ---- dictionary, encoder, decoder ---------------------------------------------------------
    def dictionary(self) -> torch.Tensor:
        """The atoms ``[U, F, L]``: non-negative, unit L2 norm each."""
        raw = self.atoms_raw
        key = (raw.data_ptr(), raw._version, raw.device)  # optimizer steps and loads bump _version
        if not torch.is_grad_enabled() and self._atoms_cache is not None and self._atoms_cache[0] == key:
            return self._atoms_cache[1]  # inference calls this many times per input
        # |raw| rather than softplus(raw): an Adam step moves an entry by ~lr in absolute terms,
        # and an entry that crosses zero comes back (relu's would stay dead).
        w = raw.abs()  # [U, F, L]
        w = w / w.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]
        if not torch.is_grad_enabled():
            self._atoms_cache = (key, w.detach())
        return w

    @property
    def _pad(self) -> int:
        return (self.config.atom_frames - 1) // 2

    def encode(self, x: torch.Tensor, stop: Callable[[], None] | None = None) -> torch.Tensor:
        """Features ``x [B, F, N]`` -> non-negative sparse code ``h [B, U, N]`` (units of the
        local level: multiply by :meth:`level` for absolute magnitudes). A long signal's encoding
        takes seconds: it runs in blocks of frames (:func:`frame_blocks`; the code of a frame reads
        the frames within ``p (2 refine_steps + 1)`` of it), and ``stop()`` is called before each
        refinement, as in :meth:`fit_signal`, and before each block after the first."""
        halo = self._pad * (2 * self.config.refine_steps + 1)  # the matched filter's p, then 2p a step
        parts = []
        # blocks of at least 4 halos: wide atoms times many refinements would encode each frame ~4x
        for lo, a, b, hi in frame_blocks(x.shape[-1], halo, max(BLOCK_FRAMES, 4 * halo)):
            if a and stop is not None:
                stop()
            parts.append(self._encode_block(x[..., lo:hi], stop)[..., a - lo : b - lo])  # [B, U, b - a]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def _encode_block(self, x: torch.Tensor, stop: Callable[[], None] | None) -> torch.Tensor:
        """:meth:`encode` of features ``x [B, F, N]`` at once."""
        c = self.config
        n = self._magnitudes_of(x)  # [B, F, N]
        w = self.dictionary()  # [U, F, L]
        match = F.conv1d(n, w, padding=self._pad)  # [B, U, N]: the decoder's adjoint
        h = match.clamp_min(0) / c.code_dim  # [B, U, N]; any positive scale: the updates rescale
        if c.sparsity == "topk" and c.topk < c.code_dim:
            kth = match.topk(c.topk, dim=1).values[:, -1:]  # [B, 1, N]
            h = h * (match >= kth).to(h.dtype)
        # KL multiplicative updates: h <- h * W^T(n / V) / (W^T 1 + lambda). Interior frames see
        # every atom frame, so W^T 1 is the atom's sum (edges are off by at most L-1 frames).
        denom = w.sum(dim=(1, 2))[None, :, None] + c.sparsity_weight  # [1, U, 1]
        for _ in range(c.refine_steps):
            if stop is not None:
                stop()
            v = self.magnitudes(h) + DIV_EPS  # [B, F, N]
            h = h * F.conv1d(n / v, w, padding=self._pad) / denom  # [B, U, N]
        return h

    def fit_signal(self, x: torch.Tensor, h: torch.Tensor, steps: int,
                   stop: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapt atoms and code to one signal: ``steps`` joint KL multiplicative updates from the
        learned atoms and the encoder's code ``h [B, U, N]`` (features ``x [B, F, N]``).

        Returns ``(h [B, U, N], atoms [U, F, L])``; atoms stay non-negative with unit norm (the
        scale moves into ``h``), zeros in ``h`` stay zero (the support is the encoder's), and
        atoms of units this signal does not use are left as learned. Pass the atoms to the
        per-unit views (``atoms=``) to use them. Each step runs in blocks of frames
        (:meth:`_fit_step`); ``stop()`` is called before each step and before each block after
        the first: it may raise to end the fit (the server's caller went away).
        """
        n = self._magnitudes_of(x)  # [B, F, N]
        w = self.dictionary()  # [U, F, L]
        for _ in range(steps):
            if stop is not None:
                stop()
            h, w = self._fit_step(n, h, w, stop)
        return h, w

    def _fit_step(self, n: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                  stop: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One joint update of :meth:`fit_signal` (magnitudes ``n [B, F, N]``), in blocks of frames
        (:func:`frame_blocks`), ``stop()`` before each after the first: uncut, one step over 550 s ran
        on 2.15 s past a stop (docs/decomposition.md). The code's update is frame-local (a frame's reads the
        ratio ``n / V`` within ``p`` frames of it, and ``V`` there the code within ``2p``); the
        atoms' is a sum over frames, added up block by block, and applied after the last."""
        p, lam = self._pad, self.config.sparsity_weight
        h_denom = (w.sum(dim=(1, 2))[None, :, None] + lam).clamp_min(DIV_EPS)  # [1, U, 1]
        h_new = torch.empty_like(h)  # [B, U, N]
        w_num = torch.zeros_like(w)  # [U, F, L]
        used = w.new_zeros(w.shape[0], 1, w.shape[2])  # [U, 1, L]: W's update denominator
        for lo, a, b, hi in frame_blocks(h.shape[-1], 2 * p, max(BLOCK_FRAMES, 8 * p)):
            if a and stop is not None:
                stop()
            hb = h[..., lo:hi]  # [B, U, hi - lo]
            # Both factors from one ratio n / V (one decoder pass per step instead of two).
            ratio = n[..., lo:hi] / (self.magnitudes(hb, w) + DIV_EPS)  # [B, F, hi - lo]
            h_new[..., a:b] = (hb * F.conv1d(ratio, w, padding=p) / h_denom)[..., a - lo : b - lo]
            hs = self.shifted_code(hb)[:, :, a - lo : b - lo]  # [B, U, b - a, L]
            w_num += torch.einsum("bfn,bunl->ufl", ratio[..., a - lo : b - lo], hs)
            used += hs.sum(dim=(0, 2))[:, None, :]
        # An atom this signal drives to zero stays zero (clamped: no 0/0), and so does its code.
        w = torch.where(used > 0, w * w_num / (used + DIV_EPS), w)
        scale = w.flatten(1).norm(dim=1).clamp_min(1e-12)  # [U]
        return h_new * scale[None, :, None], w / scale[:, None, None]

    def magnitudes(self, h: torch.Tensor, atoms: torch.Tensor | None = None) -> torch.Tensor:
        """Code ``h [B, U, N]`` -> magnitude reconstruction ``V [B, F, N]`` (level-normalised)."""
        return F.conv_transpose1d(h, self.dictionary() if atoms is None else atoms, padding=self._pad)  # [B, F, N]

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, U, N]`` -> compressed magnitudes ``[B, F, N]`` (comparable with :meth:`features`)."""
        c = self.config
        return compress(self.magnitudes(h) + MAG_FLOOR, c.compression, c.compression_power)

    def estimate_spec(self, spec: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The reconstruction as a complex STFT: the model's magnitudes back at the input's
        level, with the input's phase."""
        return with_magnitude(spec, self._magnitudes_of(out) * self.level(spec.abs()))

    def sparsity_loss(self, h: torch.Tensor) -> torch.Tensor:
        """Zero: sparsity is built into the encoder (top-k support, L1 shrinkage in the updates)."""
        return h.new_zeros(())

    # ---- per-unit views ----------------------------------------------------------------------------
    def shifted_code(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, U, N]`` -> ``[B, U, N, L]`` with ``[..., n, l] = h[..., n - l + p]`` (zeros outside):
        the activation each atom frame ``l`` meets at output frame ``n``."""
        length = self.config.atom_frames
        hp = F.pad(h, (length - 1 - self._pad, self._pad))  # [B, U, N + L - 1]
        return hp.unfold(-1, length, 1).flip(-1)  # [B, U, N, L]

    def unit_magnitudes(self, h: torch.Tensor, units: torch.Tensor | list[int] | None = None,
                        atoms: torch.Tensor | None = None) -> torch.Tensor:
        """Per-unit component spectrograms ``V_u [B, U', F, N]`` for ``units`` (all by default);
        they sum over ``U'`` to :meth:`magnitudes` when every unit is included.

        Memory is ``U' * F * N`` floats per item: callers chunk ``units`` for long inputs.
        """
        w = self.dictionary() if atoms is None else atoms  # [U, F, L]
        if units is not None:
            idx = torch.as_tensor(units, dtype=torch.long, device=h.device)
            w, h = w[idx], h[:, idx]  # [U', F, L], [B, U', N]
        # einsum batches over units with a GEMM each; a grouped conv_transpose1d is ~6x slower here.
        return torch.einsum("ufl,bunl->bufn", w, self.shifted_code(h))  # [B, U', F, N]

    def _summed_in_blocks(self, per_unit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], h: torch.Tensor,
                          weight: torch.Tensor, stop: Callable[[], None] | None) -> torch.Tensor:
        """``per_unit(h, weight)``, a sum over frames ``[U]``, in blocks of frames (:func:`frame_blocks`),
        ``stop()`` called before each after the first: a frame's ``V_u`` reads the code within ``p``
        frames of it, so each block takes that halo of code and the weight of its own frames only."""
        parts = []
        for lo, a, b, hi in frame_blocks(h.shape[-1], self._pad):
            if a and stop is not None:
                stop()
            w = weight[..., lo:hi]
            if (lo, hi) != (a, b):  # the halo's frames are its neighbours' to count
                w = w.clone()
                w[..., : a - lo] = 0
                w[..., b - lo :] = 0
            parts.append(per_unit(h[..., lo:hi], w))  # [U]
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)

    def unit_energies(self, h: torch.Tensor, weight: torch.Tensor, atoms: torch.Tensor | None = None,
                      stop: Callable[[], None] | None = None) -> torch.Tensor:
        """``sum_{b,f,n} weight * V_u^2`` for every unit ``[U]``, without forming ``V_u``; in blocks
        of frames, ``stop()`` asked between them (seconds for a long recording, uncut).

        ``V_u[f, n]^2 = sum_{l,m} W[u,f,l] W[u,f,m] hs[u,n,l] hs[u,n,m]``, so the sum over ``f``
        is a GEMM of the atom products with ``weight [B, F, N]``: ``L (L + 1) / 2`` GEMMs in all.
        """
        w = self.dictionary() if atoms is None else atoms  # [U, F, L]
        return self._summed_in_blocks(lambda h, weight: self._unit_energies(h, weight, w), h, weight, stop)

    def _unit_energies(self, h: torch.Tensor, weight: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        hs = self.shifted_code(h)  # [B, U, N, L]
        total = h.new_zeros(h.shape[1])
        length = self.config.atom_frames
        for a in range(length):
            for b in range(a, length):
                proj = torch.matmul((w[:, :, a] * w[:, :, b])[None], weight)  # [B, U, N]
                term = (proj * hs[..., a] * hs[..., b]).sum(dim=(0, 2))  # [U]
                total = total + (term if a == b else 2 * term)
        return total

    def unit_projections(self, h: torch.Tensor, weight: torch.Tensor, atoms: torch.Tensor | None = None,
                         stop: Callable[[], None] | None = None) -> torch.Tensor:
        """``sum_{b,f,n} weight * V_u`` for every unit ``[U]``, without forming ``V_u``: linear in
        ``V_u``, so a group's is the sum of its units'. The decoder's adjoint (the encoder's
        matched filter) of ``weight``, against the code; in blocks of frames, as :meth:`unit_energies`."""
        w = self.dictionary() if atoms is None else atoms  # [U, F, L]
        return self._summed_in_blocks(
            lambda h, weight: (h * F.conv1d(weight, w, padding=self._pad)).sum(dim=(0, 2)), h, weight, stop)  # [U]

    # ---- what the dictionary looks like ----------------------------------------------------
    def atom_spectra(self, atoms: torch.Tensor | None = None) -> torch.Tensor:
        """Each atom summed over its frames: ``[U, F]`` (what a person plots)."""
        return (self.dictionary() if atoms is None else atoms).sum(-1)

    def atom_frequencies(self, atoms: torch.Tensor | None = None) -> torch.Tensor:
        """Dominant frequency of each atom in Hz ``[U]`` (its spectral peak)."""
        c = self.config
        return self.atom_spectra(atoms).argmax(-1).float() * (c.sample_rate / c.n_fft)

    def describe(self) -> dict:
        d = super().describe()
        c = self.config
        d.update({"atom_frames": c.atom_frames, "n_fft": c.n_fft, "hop_length": c.hop_length,
                  "topk": c.topk if c.sparsity == "topk" else None, "refine_steps": c.refine_steps,
                  "overcomplete": round(c.code_dim / c.n_bins, 2)})
        return d
