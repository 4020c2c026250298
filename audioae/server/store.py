"""The models a server holds: loaded from shipped names or checkpoint paths, warmed up, described."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

import audioae.models
from audioae import pretrained
from audioae.checkpoint import load_checkpoint, read_metadata, sha256_file, sidecar_sha256
from audioae.config import quoted
from audioae.decompose import decompose
from audioae.enhance import StreamingDenoiser, audio_code, check_stop, denoise
from audioae.models import Autoencoder, takes_audio

from .errors import Abort

log = logging.getLogger(__name__)
# Every RPC that takes a model, in the order ListModels lists them; those of audio, with what each does.
RPCS = ("Denoise", "StreamDenoise", "Decompose", "Encode", "Decode")
AUDIO_RPCS = {"Denoise": "denoise", "StreamDenoise": "stream", "Decompose": "decompose"}
NO_MODELS = ("no models to serve: none are shipped yet; pass --models PATH.safetensors "
             "(a checkpoint written by `audioae train`)")


@dataclass
class ServedModel:
    name: str
    model: Autoencoder
    path: Path
    sha256: str
    version: str

    @property
    def is_audio(self) -> bool:
        """A spectrogram model: denoises and decomposes audio."""
        return takes_audio(self.model)

    @property
    def decomposes(self) -> bool:
        """A sparse dictionary model: :func:`audioae.decompose.decompose` takes it."""
        cls = getattr(audioae.models, "SparseDictionary", None)
        return cls is not None and isinstance(self.model, cls)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def streams(self) -> bool:
        return self.is_audio and bool(self.model.causal)

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.model.config, "sample_rate", 0) or 0) if self.is_audio else 0

    @property
    def code_frame_rate(self) -> float | None:
        """Code frames per second of audio (None: not a spectrogram model), as ``ListModels`` and
        ``Encode`` answer it."""
        return self.model.code_frame_rate  # (None for any model not over spectrograms)

    @property
    def decodes_codes(self) -> bool:
        """Whether ``Decode`` can serve it: a model that unpools with the encoder's max-pooling
        indices needs them besides the code, and they do not travel over the wire."""
        return getattr(self.model.config, "unpool", None) != "maxunpool"

    def refusal(self, rpc: str) -> str | None:
        """Why this model does not serve ``rpc`` (a clause naming it: "model 'x' ..."), None where it
        does: the one test that both ``ListModels``'s ``rpcs`` (:meth:`rpcs`) and the servicer's
        refusals read, so that neither lists nor answers what the other does not."""
        c = self.model.config
        if rpc in AUDIO_RPCS and not self.is_audio:
            return (f"model {self.name!r} ({self.model.registry_name}, input {c.input}) cannot "
                    f"{AUDIO_RPCS[rpc]} audio")
        if rpc == "Denoise" and self.decomposes:
            return (f"model {self.name!r} is a decomposition model ({self.model.registry_name}): its output would "
                    f"be its reconstruction of the input, noise included, not a denoised copy; use Decompose "
                    f"with it")
        if rpc == "StreamDenoise" and not self.streams:
            return f"model {self.name!r} is not causal and cannot stream"
        if rpc == "Decompose" and not self.decomposes:
            return (f"model {self.name!r} ({self.model.registry_name}) cannot decompose: that needs a sparse "
                    f"dictionary model (sparse_dict)")
        if rpc == "Decode" and not self.decodes_codes:
            return (f"model {self.name!r} unpools with the encoder's max-pooling indices, which are not part "
                    f"of the code and do not travel over the wire; Decode needs a model with unpool=nearest "
                    f"or transposed")
        return None

    def rpcs(self) -> list[str]:
        """The RPCs this model serves, as ``ListModels`` lists them (:meth:`refusal`)."""
        return [rpc for rpc in RPCS if self.refusal(rpc) is None]

    def info(self) -> dict:
        d = self.model.describe()
        return {
            "name": self.name,
            "family": d["family"],
            "input": d["input"],
            "sample_rate": self.sample_rate,
            "code_dim": int(d["code_dim"]),
            "parameters": int(d["parameters"]),
            "version": self.version,
            "sha256": self.sha256,
            "causal": self.streams,
            "latency_ms": float(d["latency_ms"] or 0.0),
            "rpcs": self.rpcs(),
            "code_frame_rate": self.code_frame_rate,  # None leaves it unset
        }


def _split_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare shipped name or path -> (None, spec). A path may hold
    "=" itself (``runs/lr=1e-3/best.safetensors``): an existing file, or a "NAME" with a slash in
    it, is a path."""
    if "=" not in spec or os.path.exists(spec):
        return None, spec
    name, path = spec.split("=", 1)
    if "/" in name or os.sep in name:
        return None, spec
    if not name.strip() or not path:
        raise ValueError(f"--models {spec!r}: NAME=PATH needs a name and a path")
    return name, path


class ModelStore:
    """Name -> :class:`ServedModel`. Names are shipped names, ``NAME=PATH`` names, or file stems."""

    def __init__(self, specs: tuple[str, ...] | list[str], device: torch.device,
                 stop: Callable[[], bool] | None = None):
        """``stop()``: checked between models here and in :meth:`warm_up` (a stop signal while
        the server starts); :class:`~audioae.enhance.Stopped` when it says so."""
        self.device = device
        self.stop = stop
        self.models: dict[str, ServedModel] = {}
        shipped = pretrained.shipped()  # looked for once, for every spec
        specs = list(specs) or self.shipped_defaults(shipped)
        if not specs:
            raise ValueError(NO_MODELS)
        named: dict[str, tuple[Path, str]] = {}
        for spec in specs:
            check_stop(stop, "stopped while loading the models")
            self._load(spec, named, shipped)
        # The models that Denoise (a sparse dictionary does not: ServedModel.refusal), causal ones
        # first, so that a call naming no model can both Denoise and StreamDenoise.
        served = list(self.models.values())
        denoisers = sorted((m for m in served if m.refusal("Denoise") is None), key=lambda m: not m.streams)
        # the models a call naming none may get, best first
        self.default_denoiser = self._default(pretrained.DEFAULT_DENOISER, [m.name for m in denoisers])
        self.default_decomposer = self._default(pretrained.DEFAULT_DECOMPOSER, self.serving("Decompose"))

    @staticmethod
    def check_specs(specs: tuple[str, ...] | list[str]) -> None:
        """Refuse a spec naming no shipped model nor checkpoint file, and an empty default, without
        loading anything: the server checks them before it binds its port."""
        shipped = pretrained.shipped()  # looked for once, for every spec
        if not specs and not ModelStore.shipped_defaults(shipped):
            raise ValueError(NO_MODELS)
        named: dict[str, tuple[Path, str]] = {}
        for spec in specs:  # two files named alike loaded the first model, then bound, then failed
            ModelStore._check_unique(spec, named, shipped)

    @staticmethod
    def _check_unique(spec: str, named: dict[str, tuple[Path, str]],
                      shipped: dict[str, Path]) -> tuple[str, Path]:
        """``spec``'s (served name, path); ValueError naming both paths, and how each got the name,
        when ``named`` (name -> (path, how it was named), which this adds to) already serves that name.
        ``shipped``: :func:`audioae.pretrained.shipped`'s answer, looked for once for all the specs."""
        given, target = _split_spec(spec)
        is_shipped = bool(target) and target in shipped  # (an empty name: resolve's refusal)
        # a shipped name as pretrained.resolve takes it, without looking for the shipped files again
        path = shipped[target] if is_shipped else pretrained.resolve(target)
        name = given or (target if is_shipped else path.name.removesuffix(".safetensors"))
        how = "by NAME=PATH" if given else "the shipped model's name" if is_shipped else "after its file name"
        if name in named:
            # Worded by how both specs got the name, naming both paths, so that the advice does not
            # depend on their order.
            first, first_how = named[name]
            explicit = [p for p, h in ((first, first_how), (path, how)) if h == "by NAME=PATH"]
            if len(explicit) == 2:
                advice = "each --models NAME=PATH needs a NAME of its own"
            elif explicit:
                bare = path if first_how == "by NAME=PATH" else first
                advice = f"give {bare} a NAME of its own with NAME=PATH, or the other another NAME"
            else:
                advice = "name them explicitly with NAME=PATH"
            raise ValueError(f"two models named {name!r}; {advice} ({first}: {first_how}; {path}: {how})")
        named[name] = (path, how)
        return name, path

    @staticmethod
    def shipped_defaults(shipped: dict[str, Path]) -> list[str]:
        """The shipped models served when --models names none; ``shipped``: :func:`audioae.pretrained.shipped`'s
        answer."""
        return [n for n in (pretrained.DEFAULT_DENOISER, pretrained.DEFAULT_DECOMPOSER) if n in shipped]

    @staticmethod
    def _default(preferred: str, candidates: list[str]) -> str:
        if preferred in candidates:
            return preferred
        return candidates[0] if candidates else ""

    def _load(self, spec: str, named: dict[str, tuple[Path, str]], shipped: dict[str, Path]) -> None:
        """Load ``spec``; ``named``: as :meth:`_check_unique` keeps it, over the specs loaded so far;
        ``shipped``: as :meth:`_check_unique` takes it."""
        name, path = self._check_unique(spec, named, shipped)
        if name in shipped and path.resolve() != shipped[name].resolve():
            # Callers asking for the shipped model by name would get this file, with nothing to tell them.
            log.warning("model name %r now means %s, not the shipped model of that name", name, path)
        meta = read_metadata(path)
        # Decomposition runs on the CPU (audioae.decompose moves its model there): keep sparse
        # dictionaries on the CPU so no call moves a shared model between devices.
        device = "cpu" if meta.get("registry_name") == "sparse_dict" else self.device
        model = load_checkpoint(path, map_location=device)
        digest = sidecar_sha256(path) or sha256_file(path)  # a sidecar was checked by the load
        self.models[name] = ServedModel(name, model, path, digest, meta.get("audioae_version", ""))
        log.info("loaded %s from %s (%s)", name, path, model.describe())

    # ---- lookup with the right status codes ------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        if name not in self.models:
            raise Abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {quoted(name)}; this server has: {', '.join(self.models) or '(none)'}",
            )
        return self.models[name]

    # what a call naming no model needs the server to hold, per RPC
    NEEDS = {"Denoise": "a spectrogram denoiser", "StreamDenoise": "a causal spectrogram denoiser",
             "Decompose": "a sparse dictionary model (sparse_dict)"}

    def serving(self, rpc: str) -> list[str]:
        """The names of the models that serve ``rpc``."""
        return [n for n, m in self.models.items() if m.refusal(rpc) is None]

    def for_rpc(self, rpc: str, name: str, default: str = "") -> ServedModel:
        """The model ``name`` (``default`` when "") if it serves ``rpc``; else INVALID_ARGUMENT saying
        why (:meth:`ServedModel.refusal`) and which models here do, NOT_FOUND for an unknown name."""
        if not name and not default:
            # As Encode/Decode without a model name: the request lacks an argument this server needs.
            # A default is empty only where no model can serve the purpose ("name one" would be no advice).
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"no model named, and this server holds no model that can {AUDIO_RPCS[rpc]}: that needs "
                        f"{self.NEEDS[rpc]}; it serves {', '.join(self.models) or 'none'}")
        m = self.get(name or default)
        why = m.refusal(rpc)
        if why is not None:
            # A model that only cannot stream may still Denoise; a decomposer's Denoise is never advised.
            instead = "use Denoise, or " if rpc == "StreamDenoise" and m.refusal("Denoise") is None else ""
            them = "models that stream" if rpc == "StreamDenoise" else f"models here that {AUDIO_RPCS[rpc]}"
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{why}; {instead}{them}: {', '.join(self.serving(rpc)) or '(none)'}")
        return m

    def denoiser(self, name: str) -> ServedModel:
        return self.for_rpc("Denoise", name, self.default_denoiser)

    def streamer(self, name: str) -> ServedModel:
        return self.for_rpc("StreamDenoise", name, self.default_denoiser)

    def decomposer(self, name: str) -> ServedModel:
        return self.for_rpc("Decompose", name, self.default_decomposer)

    # ---- warm-up ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def warm_up(self, batch_fn=None) -> None:
        """Run every model once on noise through each RPC it serves (:meth:`ServedModel.rpcs`), its
        batch path included, so that the first request does not pay for allocation and kernel
        selection."""
        rng = np.random.default_rng(0)
        for m in self.models.values():
            check_stop(self.stop, "stopped while warming up the models")
            try:
                warmed = self._warm_up_one(m, rng, batch_fn)
            except (RuntimeError, ValueError) as exc:
                # The library's error (a NaN output, say) cannot know which of several --models it was.
                raise RuntimeError(f"model {m.name!r} ({m.path}) failed its warm-up on noise: {exc}") from exc
            if warmed:
                log.info("warmed up %s: %s", m.name, ", ".join(warmed))

    @staticmethod
    def _warm_up_one(m: ServedModel, rng: np.random.Generator, batch_fn) -> list[str]:
        """Run ``m`` once on noise, half a second of it for audio, as each RPC it serves would (a
        sparse dictionary through ``decompose()``, not ``denoise()``, which it does not serve); the
        RPCs warmed, none for a model with no example
        input to run."""
        rpcs = m.rpcs()
        if m.is_audio:
            sr = m.sample_rate
            x = (0.1 * rng.standard_normal((1, sr // 2))).astype(np.float32)  # [1, T]
            if "Denoise" in rpcs:
                denoise(m.model, x, sr)
                if batch_fn is not None and m.streams:  # only causal models share batches (batch_key)
                    batch_fn(m.model, [(x, sr, 1.0), (x[:, : sr // 4], sr, 1.0)])
            if "StreamDenoise" in rpcs:
                s = StreamingDenoiser(m.model, sr, 1)
                s.push(x[:, : sr // 10])
                s.finish()
            if "Decompose" in rpcs:
                # One fit step (a call may ask for some whatever the model's default) and one
                # component: each stage runs, at a fraction of a full call's cost.
                decompose(m.model, x, sr, top_k=1, fit_steps=1)
            h = audio_code(m.model, x, sr)  # [1, code_dim, N], as Encode computes it
        else:
            try:
                inp = m.model.example_input(1).to(m.device)
            except NotImplementedError:
                return []
            h = m.model.encode(inp)  # [1, code_dim]
        if "Decode" in rpcs:
            m.model.decode(h)
        return rpcs
