"""The one spectral front end: STFT / iSTFT (torchaudio transforms), compression, masks.

Framing is ``center=True`` with *zero* padding (not reflect) so that the offline transform and the
streaming one in :class:`StreamingSTFT` produce the same frames: frame ``t`` covers samples
``[t*hop - n_fft/2, t*hop + n_fft/2)`` of the input, zeros outside it. A signal of ``T`` samples has
``1 + T // hop`` frames, and :meth:`STFT.inverse` always takes ``length=`` so that length in equals
length out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

LOG_EPS = 1e-4  # floor of the log compression: about -80 dB below a full-scale bin


def building_on_meta() -> bool:
    """Whether tensors made now land on the meta device: checkpoint loading builds a model there
    to learn its shapes before anything is allocated. Initialisation that computes from data is
    then skipped: on meta it computes nothing, and the first op torch runs there in Python
    imports torch._dynamo (1-2 s, in every process that loads a checkpoint)."""
    return torch.get_default_device().type == "meta"


def _hann(n: int, **kw) -> torch.Tensor:
    """The Hann window, on the default device, but on the CPU instead of meta (``Module.to`` moves
    it): under ``torch.device("meta")``, where checkpoint loading builds a model to learn its
    shapes, a meta Hann window goes through torch's Python decompositions, whose first use imports
    for 1-2 s. Always on the CPU, a model built under ``torch.device("cuda")`` had its window
    there and its weights on the GPU, and its STFT refused every input."""
    return torch.hann_window(n, device="cpu" if building_on_meta() else None, **kw)


class STFT(nn.Module):
    """Complex STFT and its length-exact inverse. The Hann window is a buffer of the transforms."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        if n_fft <= 0 or n_fft % 2 or not 0 < hop_length <= n_fft // 2:
            raise ValueError(f"need an even n_fft > 0 and 0 < hop <= n_fft/2, got n_fft={n_fft} hop={hop_length}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.spec = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, hop_length=hop_length, power=None, center=True, pad_mode="constant", window_fn=_hann
        )
        self.ispec = torchaudio.transforms.InverseSpectrogram(n_fft=n_fft, hop_length=hop_length, center=True,
                                                              window_fn=_hann)

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, length: int) -> int:
        return 1 + length // self.hop_length

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [..., T]`` -> complex ``[..., F, N]`` with ``F = n_fft/2+1``, ``N = 1 + T//hop``."""
        return self.spec(wav)

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """complex ``[..., F, N]`` -> ``[..., length]``."""
        return self.ispec(spec, length=length)

    def ahead(self, wav: torch.Tensor, offset: int) -> torch.Tensor:
        """:meth:`forward` with every frame ``offset`` samples later: frame ``t`` covers
        ``[t*hop - n_fft/2 + offset, t*hop + n_fft/2 + offset)``, zeros outside the signal; complex
        ``[..., F, 1 + T//hop]``. A causal model reads these frames to look ``offset`` samples ahead
        of the frame it estimates; ``offset = 0`` is :meth:`forward`."""
        n, lead = self.n_fft, wav.shape[:-1]
        x = F.pad(wav.reshape(-1, wav.shape[-1]), (n // 2 - offset, n // 2 + offset))  # [B', T + n_fft]
        window = self.spec.window.to(x.dtype)
        spec = torch.stft(x, n, self.hop_length, window=window, center=False, return_complex=True)  # [B', F, N]
        return spec.reshape(*lead, *spec.shape[-2:])  # [..., F, N]


def hann_energy(n_fft: int) -> float:
    """``sum w^2`` of the Hann window, in float64: a frame's ``|X|^2`` per bin (the mean over its
    ``n_fft`` bins) per unit mean square of its samples (Parseval: the ``n_fft`` bins' ``|X|^2``
    sum to ``n_fft * sum (w x)^2``; exactly the per-bin expectation for white noise)."""
    return float((torch.hann_window(n_fft, dtype=torch.float64) ** 2).sum())


def gain_frames(gains: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Frames whose inverse STFT is the gains as a signal: ``gains [B, 1, N]`` -> complex
    ``[B, F, N]``. Frame ``k`` is ``g_k * rfft(window)``: the iSTFT windows it again and divides by
    the summed squared windows, so sample ``t`` gets ``sum_k g_k w^2(t - k hop) / sum_k w^2(t - k
    hop)``, a smooth gain on exactly the samples (and with the same latency) the estimate's frames
    cover, offline and streamed alike."""
    return gains * torch.fft.rfft(window.float())[:, None]  # [B, F, N]


# ---- the training losses' transforms --------------------------------------------------------------
# Not the model's framing: the multi-resolution loss pads by reflection (torch.stft's default), and
# the STOI proxy frames as torch-stoi does (no padding, its last frame dropped by the caller). The
# trained models were trained with these numerics; they live here so that every transform is in
# one module, and are kept as they were.
def reflect_stft(x: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """``x [B, T]`` -> complex ``[B, n_fft/2+1, 1 + T//hop]``: Hann window, ``center=True`` with
    *reflect* padding (the multi-resolution STFT loss; see :class:`STFT` for the model's own)."""
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop_length, window=window, return_complex=True)


def unfold_frames(x: torch.Tensor, length: int, hop: int) -> torch.Tensor:
    """``x [B, T]`` -> ``[B, length, N]``, ``N = 1 + (T - length) // hop``, no padding: a strided
    view (torch-stoi's ``F.unfold`` ran an im2col kernel per row: on an H200, a third of a
    training step's GPU time)."""
    return x.unfold(-1, length, hop).transpose(1, 2)


def framed_rfft(framed: torch.Tensor, window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """``framed [B, L, N]`` (from :func:`unfold_frames`) windowed by ``window [L]`` -> complex
    ``[B, n_fft/2+1, N]`` (zero-padded to ``n_fft``)."""
    return torch.fft.rfft(framed * window[:, None], n=n_fft, dim=1)


def magnitude(spec: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``|spec|`` with a finite gradient everywhere, for losses: ``sqrt(re^2 + im^2 + eps^2)``.

    At an exactly zero bin (digital silence, common in TTS speech and synthetic noise) the chain
    ``abs() -> pow(0.3)`` has a 0 * inf in its backward: anomaly detection flags PowBackward0,
    though on CPU the final gradients still come out finite. It is the suspected cause of the
    first GPU run's NaN losses (unverified). Features keep ``abs()``: they need no gradient.
    """
    return torch.sqrt(spec.real.square() + spec.imag.square() + eps * eps)


def compress(mag: torch.Tensor, kind: str = "power", power: float = 0.3) -> torch.Tensor:
    """Compress magnitudes so loud and quiet bins weigh alike: ``log(m + eps)`` or ``m ** power``."""
    if kind == "log":
        return torch.log(mag + LOG_EPS)
    if kind == "power":
        return mag.clamp_min(0).pow(power)
    if kind == "none":
        return mag
    raise ValueError(f"unknown compression {kind!r}; choose log, power or none")


def decompress(feat: torch.Tensor, kind: str = "power", power: float = 0.3) -> torch.Tensor:
    """Inverse of :func:`compress` (clamped to non-negative magnitudes)."""
    if kind == "log":
        return (torch.exp(feat) - LOG_EPS).clamp_min(0)
    if kind == "power":
        return feat.clamp_min(0).pow(1.0 / power)
    if kind == "none":
        return feat.clamp_min(0)
    raise ValueError(f"unknown compression {kind!r}; choose log, power or none")


def apply_mask(spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale a complex spectrogram by a real mask: the result keeps the input's phase."""
    return spec * mask.to(spec.real.dtype)


def with_magnitude(spec: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """A spectrogram with magnitude ``mag`` and the phase of ``spec`` (the noisy phase is reused)."""
    phase = spec / spec.abs().clamp_min(1e-8)
    return phase * mag.to(spec.real.dtype)


class StreamingSTFT:
    """Chunk-by-chunk STFT and overlap-add iSTFT equal to :class:`STFT` on the whole signal.

    ``push(samples)`` returns the new complex frames; ``add_frames(frames)`` overlap-adds processed
    frames (in order; their leading shape may differ from the samples', the same in every call)
    and returns the output samples no later frame can change. ``finish()`` pads
    the tail exactly as the offline transform does and returns the remaining frames; after the
    caller has added them, ``drain()`` returns the rest of the output, cropped to the input length.
    Vectorised over frames (unfold/fold), so large chunks cost what the offline transform costs.

    ``offset`` samples shift every frame later (:meth:`STFT.ahead`'s look-ahead frames): frame
    ``t`` then covers ``[t*hop - n_fft/2 + offset, t*hop + n_fft/2 + offset)``.
    """

    def __init__(self, n_fft: int, hop_length: int, batch_shape: tuple[int, ...] = (), device=None,
                 offset: int = 0):
        if not 0 <= offset <= n_fft // 2:
            raise ValueError(f"offset must be within [0, n_fft/2], got {offset}")
        self.n_fft, self.hop = n_fft, hop_length
        self.pad = n_fft // 2 - offset
        self.tail = n_fft // 2 + offset
        self.device = device
        self.window = torch.hann_window(n_fft, device=device)
        self.batch_shape = tuple(batch_shape)
        self._in = self._zeros(self.pad)  # left zero padding of center=True
        self._frames_out = 0
        # Overlap carried into the next frames; shaped by the first frames added, whose leading
        # shape may differ from the analysis side's (the denoiser adds its gains as more rows).
        self._ola: torch.Tensor | None = None
        self._env = torch.zeros(n_fft - hop_length, device=device)
        self._emitted = -self.pad  # input coordinate of the first sample not yet emitted
        self._length = 0
        self._finished = False

    def _zeros(self, n: int) -> torch.Tensor:
        return torch.zeros(*self.batch_shape, n, device=self.device)

    def _take_frames(self, limit: int | None = None) -> torch.Tensor:
        m = max(0, (self._in.shape[-1] - self.n_fft) // self.hop + 1)
        if limit is not None:
            m = min(m, limit - self._frames_out)
        frames = self._in[..., : (m - 1) * self.hop + self.n_fft].unfold(-1, self.n_fft, self.hop) if m else None
        if frames is None:
            return torch.zeros(*self.batch_shape, self.n_fft // 2 + 1, 0, dtype=torch.complex64, device=self.device)
        self._in = self._in[..., m * self.hop :]
        self._frames_out += m
        return torch.fft.rfft(frames * self.window, dim=-1).transpose(-1, -2)  # [..., F, m]

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """``samples [..., n]`` -> the new complex frames ``[..., F, m]``."""
        if self._finished:
            raise RuntimeError("push after finish")
        self._length += samples.shape[-1]
        self._in = torch.cat([self._in, samples.to(self._in.dtype)], dim=-1)
        return self._take_frames()

    def finish(self) -> torch.Tensor:
        """Pad the tail with zeros (as ``center=True`` does; ``offset`` samples more, as
        :meth:`STFT.ahead` does) and return the last frames."""
        self._finished = True
        self._in = torch.cat([self._in, self._zeros(self.tail)], dim=-1)
        return self._take_frames(limit=1 + self._length // self.hop)

    def add_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Overlap-add processed complex frames ``[..., F, m]``; return the samples now final."""
        m = frames.shape[-1]
        if m == 0:
            return torch.zeros(*frames.shape[:-2], 0, device=self.device)
        if self._ola is None:
            self._ola = torch.zeros(*frames.shape[:-2], self.n_fft - self.hop, device=self.device)
        segs = torch.fft.irfft(frames.transpose(-1, -2), n=self.n_fft, dim=-1) * self.window  # [..., m, n_fft]
        span = (m - 1) * self.hop + self.n_fft
        lead = segs.shape[:-2]
        y = F.fold(segs.reshape(-1, m, self.n_fft).transpose(1, 2), (1, span), (1, self.n_fft),
                   stride=(1, self.hop)).reshape(*lead, span)  # [..., span]
        w2 = (self.window**2)[None, :, None].expand(1, self.n_fft, m)
        env = F.fold(w2, (1, span), (1, self.n_fft), stride=(1, self.hop)).reshape(span)
        carried = self._ola.shape[-1]
        y[..., :carried] += self._ola
        env[:carried] += self._env
        # Samples before the next frame's start are final.
        final = m * self.hop
        self._ola, self._env = y[..., final:], env[final:]
        return self._emit(y[..., :final] / env[:final].clamp_min(1e-11))

    def _emit(self, y: torch.Tensor) -> torch.Tensor:
        start = self._emitted
        self._emitted += y.shape[-1]
        lo = max(0, -start)  # drop the left padding region
        hi = y.shape[-1]
        if self._finished:
            hi = max(lo, min(hi, self._length - start))  # and anything past the input's end
        return y[..., lo:hi]

    def drain(self) -> torch.Tensor:
        """After ``finish`` and the last ``add_frames``: the remaining output samples."""
        if not self._finished:
            raise RuntimeError("drain before finish")
        if self._ola is None:  # no frame was ever added: the tail is silence, as it always was
            self._ola = self._zeros(self.n_fft - self.hop)
        n = min(max(0, self._length - self._emitted), self._ola.shape[-1])
        y = self._ola[..., :n] / self._env[:n].clamp_min(1e-11)
        self._ola, self._env = self._ola[..., n:], self._env[n:]
        return self._emit(y)


def frames_latency_seconds(n_fft: int, hop_length: int, lookahead_frames: int, sample_rate: int,
                           lookahead_samples: int = 0) -> float:
    """Algorithmic latency: one window plus the model's look-ahead in frames and in samples."""
    return (n_fft + lookahead_frames * hop_length + lookahead_samples) / sample_rate


def window_samples(n_fft: int, window_sr: int, sr: int) -> int:
    """An analysis window of ``n_fft`` samples at ``window_sr`` (a model's rate) in samples at
    ``sr``, rounded up, in whole numbers (no float boundary): audio of fewer samples is shorter
    than one window, and its spectrogram describes the STFT's zero padding, not the signal."""
    return -(-n_fft * sr // window_sr)
