"""What every autoencoder shares: the config fields for input, sparsity and corruption, and the
``encode``/``decode``/``forward`` contract; for spectrogram models also the STFT, the output head
(mask, magnitude or mask plus deep filter) and streaming.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..config import refuse_non_finite, typed_fields
from ..spectral import STFT, apply_mask, compress, decompress, frames_latency_seconds, with_magnitude
from .corruption import CORRUPTIONS
from .sparsity import PENALTIES, check_topk, keep_topk, sparsity_penalty

# Bounds on sizes that a checkpoint's config sets and its weights do not bound, while inference
# allocates by them: with n_fft 65536 and hop 1 (under 1 MB of weights), each 4 s of 16 kHz audio
# would be 17 GB of STFT frames. (The sample rate's bound is in audio/checks.py: at 10**8 Hz a 1 s clip is
# resampled to 10**8 samples, whose STFT alone, at n_fft 512 and hop 128, is 781,251 x 257 complex64, 1.6 GB.)
MAX_N_FFT = 65536  # 4 s at 16 kHz: no frame-by-frame model needs a longer window
MAX_OVERLAP = 16  # n_fft / hop_length: frames hold this many times the audio's samples (shipped: at most 4)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Fields shared by every family. Subclasses add their architecture."""

    input: str = "spectrogram"  # spectrogram | vector | image
    code_dim: int = 64  # units per code vector; may exceed the input size (overcomplete)
    code_activation: str = "relu"  # relu | sigmoid | tanh | none
    # Sparsity of the code.
    sparsity: str = "none"  # none | l1 | l2 | kl | topk
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.05  # target mean activation for kl
    topk: int = 0  # units kept per code vector for topk
    # Corruption seen during training (denoising autoencoder); the target stays clean.
    corruption: str = "none"  # none | gaussian | patches | mix
    snr_low: float = -5.0  # dB, for gaussian (mix, in audioae train: data.snr_low and snr_high)
    snr_high: float = 20.0
    noise_std: float = 0.3  # for gaussian on vector/image inputs
    patch_fraction: float = 0.15  # share of the input darkened by patches
    patch_size: tuple[int, int] = (16, 8)  # (frequency bins, frames) or (rows, cols)

    def __post_init__(self):
        refuse_non_finite(self)  # nan passes every comparison below: mask_power=nan gave NaN audio
        if self.sparsity not in PENALTIES:
            raise ValueError(f"sparsity must be one of {PENALTIES}, got {self.sparsity!r}")
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {self.corruption!r}")
        # the KL penalty's log of it and of 1 - it: NaN outside (only KL reads it: another model's unused value loads)
        if self.sparsity == "kl" and not 0 < self.sparsity_target < 1:
            raise ValueError(f"sparsity_target must be within (0, 1), got {self.sparsity_target}")
        if self.sparsity == "kl" and self.code_activation != "sigmoid":
            raise ValueError("the kl sparsity penalty needs code_activation='sigmoid' (codes in (0, 1))")
        for name in ("topk", "sparsity_weight", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative, got {getattr(self, name)}")
        if self.sparsity == "topk" and self.topk <= 0:
            raise ValueError(f"sparsity='topk' needs topk > 0, got {self.topk}")
        if self.code_dim <= 0:
            raise ValueError(f"code_dim must be positive, got {self.code_dim}")
        # Only where top-k is on: a saved config's unused topk (sparsity l1 or none) still loads.
        check_topk(self.sparsity, self.topk, self.code_dim)
        if self.snr_low > self.snr_high:
            raise ValueError(f"snr_low ({self.snr_low}) is above snr_high ({self.snr_high})")
        if not 0 <= self.patch_fraction <= 1 or min(self.patch_size) < 1:
            raise ValueError(f"need 0 <= patch_fraction <= 1 and a patch_size of at least 1, "
                             f"got {self.patch_fraction} and {self.patch_size}")

    def unread_settings(self) -> list[str]:
        """Settings given a value other than their default that nothing reads under the others,
        each as a sentence naming the field and what would read it. ``audioae train`` refuses
        them (a penalty without a weight trained with no sparsity, in silence); the config itself
        still builds, so a checkpoint saved with one loads."""
        c, why = self, []
        default = {f.name: f.default for f in dataclasses.fields(c)}
        if c.sparsity in ("l1", "l2", "kl") and c.sparsity_weight == 0:
            why.append(f"sparsity = {json.dumps(c.sparsity)} adds no penalty while sparsity_weight is 0 (its default): "
                       f"set sparsity_weight above 0 (e.g. 0.01), or sparsity = \"none\"")
        if c.sparsity_weight != 0 and self._weight_unread():
            why.append(f"sparsity_weight = {c.sparsity_weight:g} is read only by sparsity \"l1\", \"l2\" or \"kl\", "
                       f"and sparsity is {json.dumps(c.sparsity)}")
        read_by = {"topk": ("sparsity", "topk"), "sparsity_target": ("sparsity", "kl"),
                   "patch_fraction": ("corruption", "patches"), "patch_size": ("corruption", "patches")}
        read_by |= self._read_by()
        for name, (switch, reading) in read_by.items():
            if getattr(c, switch) != reading and getattr(c, name) != default[name] and not self._is_default(name):
                why.append(f"{name} = {json.dumps(getattr(c, name))} is read only with {switch} = "
                           f"{json.dumps(reading)}, and this model has {switch} = {json.dumps(getattr(c, switch))}")
        return why

    def _weight_unread(self) -> bool:
        """Whether ``sparsity_weight`` goes unread: the penalties l1, l2 and kl read it."""
        return self.sparsity not in ("l1", "l2", "kl")

    def _read_by(self) -> dict[str, tuple[str, object]]:
        """A subclass's own ``field -> (switch, value)``: the field is read only while the config
        field ``switch`` holds ``value`` (``"df_order": ("output", "deepfilter")``)."""
        return {}

    def _is_default(self, name: str) -> bool:
        """Whether ``name`` holds the value its default resolves to (a default computed in
        ``__post_init__``, as sparse_dict's topk)."""
        return False

    def require_positive(self, *names: str) -> None:
        """Sizes a layer is built from: torch's own message for 0 or -3 names no config field."""
        for name in names:
            value = getattr(self, name)
            if any(v <= 0 for v in (value if isinstance(value, tuple) else (value,))):
                raise ValueError(f"{name} must be positive, got {value}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        return cls(**typed_fields(cls, d, cls.__name__))

    def replace(self, **changes) -> AutoencoderConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SpectralConfig(AutoencoderConfig):
    """Spectrogram front end. Sample rate, FFT size and hop live in every audio checkpoint."""

    sample_rate: int = 16000
    n_fft: int = 512  # 32 ms at 16 kHz
    hop_length: int = 128  # 8 ms
    compression: str = "power"  # log | power | none, on magnitudes
    compression_power: float = 0.3  # for power compression
    # mask: a [0, 1] gain on the noisy STFT; magnitude: compressed magnitudes; deepfilter: the
    # mask plus, on the lowest ``df_bins`` bins, a causal complex filter over the last
    # ``df_order`` noisy frames (deep filtering, Schroeter et al. 2022), which can resolve
    # harmonics finer than a bin and correct phase, where a real mask cannot.
    output: str = "mask"
    df_order: int = 3
    df_bins: int = 96
    # The mask is raised to this power (mask and deepfilter heads): below 1 suppresses less. An
    # inference knob a shipped model may set after training (chosen on validation data).
    mask_power: float = 1.0
    # One more output row per frame: a learned share of the unprocessed input mixed back into
    # that frame's estimate ("keep the input when unsure": speech on speech at low SNR, where a
    # mask removes the wrong talker). Mask and deepfilter heads; it starts closed (see head).
    input_gate: bool = False
    # Look-ahead in samples: the input also holds the compressed magnitudes of a frame this much
    # later than the one estimated (spectral.STFT.ahead), which tells an onset before it arrives.
    # Adds that much to the algorithmic latency; at most n_fft/2.
    lookahead: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.require_positive("sample_rate", "compression_power")
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:  # the rates audio may have
            raise ValueError(f"sample_rate must be within {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {self.sample_rate}")
        if self.n_fft % 2 or not 2 <= self.n_fft <= MAX_N_FFT:  # first: a bad n_fft skews lookahead's bound
            raise ValueError(f"n_fft must be even and within 2..{MAX_N_FFT}, got {self.n_fft}")
        if not 0 < self.hop_length <= self.n_fft // 2:
            raise ValueError(f"need 0 < hop <= n_fft/2 = {self.n_fft // 2}, got hop_length={self.hop_length}")
        if self.n_fft > MAX_OVERLAP * self.hop_length:
            raise ValueError(f"hop_length must be at least n_fft/{MAX_OVERLAP} = {math.ceil(self.n_fft / MAX_OVERLAP)}, "
                             f"got {self.hop_length}")
        if self.compression not in ("log", "power", "none"):
            raise ValueError(f"compression must be log, power or none, got {self.compression!r}")
        if not 0 <= self.lookahead <= self.n_fft // 2:
            raise ValueError(f"lookahead must be within [0, n_fft/2 = {self.n_fft // 2}] samples, got {self.lookahead}")
        if self.output not in ("mask", "magnitude", "deepfilter"):
            raise ValueError(f"output must be mask, magnitude or deepfilter, got {self.output!r}")
        if self.input_gate and self.output == "magnitude":
            raise ValueError("input_gate needs a mask or deepfilter output, not magnitude")
        if self.mask_power <= 0:
            raise ValueError(f"mask_power must be positive, got {self.mask_power}")
        if self.output == "deepfilter" and not (1 <= self.df_bins <= self.n_bins and self.df_order >= 1):
            raise ValueError(f"deepfilter needs 1 <= df_bins <= {self.n_bins} and df_order >= 1")

    def _read_by(self) -> dict[str, tuple[str, object]]:
        read = ("output", "deepfilter")
        return {**super()._read_by(), "df_order": read, "df_bins": read}

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def deep_filter(self) -> bool:
        return self.output == "deepfilter"

    @property
    def n_features(self) -> int:
        """Input rows per frame: compressed magnitudes, plus the compressed complex values (real,
        imaginary) of the deep-filtered bins, which carry the phase the filter needs, plus the
        look-ahead frame's compressed magnitudes."""
        return self.n_bins * (2 if self.lookahead else 1) + (2 * self.df_bins if self.deep_filter else 0)

    @property
    def n_outputs(self) -> int:
        """Decoder rows per frame: the mask or magnitudes, plus complex filter taps."""
        return self.n_bins + (2 * self.df_order * self.df_bins if self.deep_filter else 0) + int(self.input_gate)


# The input gate (SpectralConfig.input_gate) is sigmoid(GATE_GAIN * y - GATE_OFFSET): closed at
# y = 0, sigmoid(-8) = 3.4e-4, and the gain lets it open within a fine-tuning phase (at a
# fine-tuning rate, Adam moves a unit-gain logit far too slowly to travel 8).
GATE_GAIN, GATE_OFFSET = 16.0, 8.0


def activate_code(h: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "relu":
        return torch.relu(h)
    if kind == "sigmoid":
        return torch.sigmoid(h)
    if kind == "tanh":
        return torch.tanh(h)
    if kind == "none":
        return h
    raise ValueError(f"unknown code_activation {kind!r}; choose relu, sigmoid, tanh or none")


class Autoencoder(nn.Module):
    """Base of every registered model: ``encode(x) -> h``, ``decode(h) -> x̂``, ``forward(x) -> (x̂, h)``."""

    registry_name: str = ""
    config: AutoencoderConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode(x)
        return self.decode(h), h

    def finish_code(self, h: torch.Tensor) -> torch.Tensor:
        """Code activation, then the top-k constraint when configured."""
        h = activate_code(h, self.config.code_activation)
        if self.config.sparsity == "topk":
            h = keep_topk(h, self.config.topk)
        return h

    def sparsity_loss(self, h: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.sparsity_weight == 0:
            return h.new_zeros(())
        return c.sparsity_weight * sparsity_penalty(h, c.sparsity, c.sparsity_target)

    def with_config(self, **changes) -> Autoencoder:
        """The same weights under a config with ``changes`` (inference knobs such as a mask power
        or a top-k). Loaded strictly: a change the weights do not fit fails here."""
        other = type(self)(self.config.replace(**changes))
        other.load_state_dict(self.state_dict())
        return other.train(self.training)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """A small random input of the right shape for ``forward`` (tests and warm-up)."""
        raise NotImplementedError

    @property
    def latency_seconds(self) -> float | None:
        """Algorithmic latency, or None when the model sees the whole input (non-causal)."""
        return None

    @property
    def code_frame_rate(self) -> float | None:
        """Code frames per second of audio (None: not an audio model), to put a code's frames on a
        time axis: a gRPC client had no hop length to compute it from."""
        return None

    def describe(self) -> dict:
        return {
            "family": self.registry_name,
            "input": self.config.input,
            "code_dim": self.config.code_dim,
            "parameters": self.num_parameters(),
            "sparsity": self.config.sparsity,
            "corruption": self.config.corruption,
            "latency_ms": None if self.latency_seconds is None else round(1000 * self.latency_seconds, 2),
            "sample_rate": getattr(self.config, "sample_rate", None),
            "code_frame_rate": self.code_frame_rate,
        }


class SpectralAutoencoder(Autoencoder):
    """An autoencoder over compressed STFT magnitudes ``[B, F, N]``, with a mask or magnitude head.

    Phase: mask and magnitude models reuse the input's (noisy) phase; a deep-filter model also
    sees and corrects the phase of its lowest bins.
    """

    config: SpectralConfig
    causal: bool = False
    supports_deep_filter: bool = False
    supports_input_gate: bool = False
    supports_lookahead: bool = False

    def __init__(self, config: SpectralConfig):
        super().__init__()
        if config.lookahead and not self.supports_lookahead:
            raise ValueError(f"{self.registry_name} has no look-ahead input; lookahead needs the recurrent family")
        if config.deep_filter and not self.supports_deep_filter:
            raise ValueError(f"{self.registry_name} has no deepfilter output; use mask or magnitude")
        if config.input_gate and not self.supports_input_gate:
            raise ValueError(f"{self.registry_name} has no input gate; input_gate needs the recurrent family")
        self.config = config
        self.stft = STFT(config.n_fft, config.hop_length)

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """Compressed magnitudes ``[B, F, 37]`` of random noise (37 frames: odd on purpose)."""
        g = torch.Generator().manual_seed(seed)
        wav = 0.1 * torch.randn(batch, 36 * self.config.hop_length, generator=g)  # [B, T]
        return self.analyze(wav)[1]

    # ---- features and reconstruction -------------------------------------------------------
    def analyze(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wav [B, T]`` -> ``(spec [B, F, N] complex, features [B, F', N])``: what every offline
        caller feeds the model (:meth:`features` of the STFT and, with look-ahead, of the later frames)."""
        spec = self.stft(wav)  # [B, F, N]
        return spec, self.features_of(spec, wav)

    def features_of(self, spec: torch.Tensor, wav: torch.Tensor | None) -> torch.Tensor:
        """:meth:`features` of ``spec [B, F, N]``, the STFT of ``wav [B, T]`` (or a corruption of
        it): the look-ahead frames come from ``wav``, which only a look-ahead model needs."""
        if not self.config.lookahead:
            return self.features(spec)
        if wav is None:
            raise ValueError(f"this model looks {self.config.lookahead} samples ahead: its input needs the waveform")
        return self.features(spec, self.stft.ahead(wav, self.config.lookahead))

    def features(self, spec: torch.Tensor, ahead: torch.Tensor | None = None) -> torch.Tensor:
        """complex ``[B, F, N]`` -> compressed magnitudes ``[B, F, N]`` (deep filter: ``[B, F + 2D, N]``;
        look-ahead: then the compressed magnitudes of ``ahead [B, F, N]``, ``STFT.ahead``).

        Frame by frame (no state across frames), so streaming computes the same features."""
        c = self.config
        mag = compress(spec.abs(), c.compression, c.compression_power)  # [B, F, N]
        rows = [mag]
        if c.deep_filter:
            low = spec[:, : c.df_bins]  # [B, D, N]
            unit = low / low.abs().clamp_min(1e-8)  # [B, D, N] phase only
            low_c = mag[:, : c.df_bins] * unit  # [B, D, N] compressed complex
            rows += [low_c.real, low_c.imag]
        if c.lookahead:
            if ahead is None or ahead.shape != spec.shape:
                raise ValueError(f"this model looks {c.lookahead} samples ahead: it needs the look-ahead frames "
                                 "of the same shape as spec (analyze(wav) or stft.ahead(wav, lookahead))")
            rows.append(compress(ahead.abs(), c.compression, c.compression_power))  # [B, F, N]
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)  # [B, F', N]

    def head(self, y: torch.Tensor) -> torch.Tensor:
        """Raw decoder output -> mask in [0, 1] (plus filter taps in [-1, 1], plus the input gate
        in [0, 1]) or compressed magnitude."""
        c = self.config
        if c.output == "magnitude":
            return y
        mask = torch.sigmoid(y[:, : c.n_bins])  # [B, F, N]
        if c.mask_power != 1.0:
            mask = mask.pow(c.mask_power)
        rows = [mask]
        if c.deep_filter:
            rows.append(torch.tanh(y[:, c.n_bins : c.n_bins + 2 * c.df_order * c.df_bins]))  # [B, 2KD, N]
        if c.input_gate:
            # A zero-initialised row (a gate grown onto a trained model) starts closed, 3e-4 of
            # the input, so growing it keeps the model's output.
            rows.append(torch.sigmoid(GATE_GAIN * y[:, -1:] - GATE_OFFSET))  # [B, 1, N]
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)  # [B, F', N]

    @property
    def spec_context_frames(self) -> int:
        """Past input frames :meth:`estimate_spec` reads beyond the frames it estimates."""
        return self.config.df_order - 1 if self.config.deep_filter else 0

    def estimate_spec(self, spec: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Apply the decoder's output ``[B, F', N]`` to the input STFT, keeping the input's phase
        (except for a deep filter's bins).

        ``spec`` is ``[B, F, N]``, or ``[B, F, P + N]`` with ``P <= spec_context_frames`` earlier
        frames in front (streaming passes them; missing ones count as silence, as at the start).
        """
        c = self.config
        n = out.shape[-1]
        past, spec = spec[..., : spec.shape[-1] - n], spec[..., spec.shape[-1] - n :]  # [B, F, P], [B, F, N]
        if c.output == "magnitude":
            return with_magnitude(spec, decompress(out, c.compression, c.compression_power))
        if c.input_gate:
            out, gate = out[:, :-1], out[:, -1:]  # [B, F', N], [B, 1, N]
        est = apply_mask(spec, out) if c.output == "mask" else self._deep_filter(spec, past, out)  # [B, F, N]
        if c.input_gate:
            est = est + gate * (spec - est)  # [B, F, N]
        return est

    def _deep_filter(self, spec: torch.Tensor, past: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        c = self.config
        k, d, n = c.df_order, c.df_bins, spec.shape[-1]
        est = apply_mask(spec, out[:, : c.n_bins])  # [B, F, N]
        taps = out[:, c.n_bins :].reshape(out.shape[0], k, 2, d, n).to(spec.real.dtype)  # [B, K, 2, D, N]
        taps = torch.complex(taps[:, :, 0], taps[:, :, 1])  # [B, K, D, N]
        hist = torch.cat([past[:, :d, max(0, past.shape[-1] - (k - 1)) :], spec[:, :d]], dim=-1)  # [B, D, P' + N]
        hist = torch.nn.functional.pad(hist, (k - 1 + n - hist.shape[-1], 0))  # [B, D, K - 1 + N]
        filtered = sum(taps[:, j] * hist[..., k - 1 - j : k - 1 - j + n] for j in range(k))  # [B, D, N]
        return torch.cat([est[:, :d] + filtered, est[:, d:]], dim=1)  # [B, F, N]

    # ---- code frames ------------------------------------------------------------------------
    @property
    def code_stride(self) -> int:
        """STFT frames per code frame (conv1d: its pooling)."""
        return 1

    @property
    def code_frame_rate(self) -> float | None:
        """Code frame ``j`` stands for STFT frames ``j * code_stride ..``, frame ``i`` centred at
        sample ``i * hop_length``; None for a model that takes no spectrogram (``linear`` of
        vectors: the config's sample rate and hop mean nothing there)."""
        if self.config.input != "spectrogram":
            return None
        return self.config.sample_rate / self.config.hop_length / self.code_stride

    # ---- latency and streaming --------------------------------------------------------------
    @property
    def lookahead_frames(self) -> int:
        return 0

    @property
    def latency_seconds(self) -> float | None:
        if not self.causal:
            return None
        c = self.config
        return frames_latency_seconds(c.n_fft, c.hop_length, self.lookahead_frames, c.sample_rate, c.lookahead)

    def stream_init(self, batch: int):
        """State for :meth:`stream_step`; only causal models stream."""
        if not self.causal:
            raise ValueError(f"{self.registry_name} is not causal; set causal=True to stream")
        return {"feats": None, "pos": 0}

    def stream_step(self, feats: torch.Tensor, state, final: bool = False):
        """Feed ``feats [B, F, n]`` new frames; return ``(out [B, F, m], state)`` for the next
        ``m`` frames whose outputs are final (in order).

        Default: recompute the model over a context buffer long enough to cover its receptive
        field; exact because a causal model's outputs depend only on that window. Recurrent
        models override this with their hidden state.
        """
        buf = feats if state["feats"] is None else torch.cat([state["feats"], feats], dim=-1)  # [B, F, L]
        start = state["pos"]  # absolute frame index of buf[..., 0]
        done = state.get("done", 0)  # frames already emitted
        block = self.stream_block
        # An output is final once its whole pooling block has arrived (or the stream has ended).
        usable = start + buf.shape[-1] if final else ((start + buf.shape[-1]) // block) * block
        if usable <= done or buf.shape[-1] == 0:
            return feats.new_zeros(feats.shape[0], feats.shape[1], 0), {"feats": buf, "pos": start, "done": done}
        out, _ = self(buf)  # [B, F, L]
        emitted = out[..., done - start : usable - start]
        # Keep enough past frames, aligned to the pooling block, for the next call.
        keep_from = max(start, ((usable - self.receptive_field) // block) * block)
        new_state = {"feats": buf[..., keep_from - start :], "pos": keep_from, "done": usable}
        return emitted, new_state

    @property
    def stream_block(self) -> int:
        return 1

    @property
    def receptive_field(self) -> int:
        """Past frames an output can depend on (causal models)."""
        return 0


def takes_audio(model: Autoencoder) -> bool:
    """Whether ``model`` works on audio (a spectrogram model: it denoises, streams when causal,
    decomposes when it is a dictionary); image models do not."""
    return isinstance(model, SpectralAutoencoder) and model.config.input == "spectrogram"
