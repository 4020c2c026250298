"""The explicit model registry: registry name -> (config class, model class)."""

from __future__ import annotations

from typing import NamedTuple

from .base import Autoencoder, AutoencoderConfig, SpectralAutoencoder, SpectralConfig, takes_audio
from .conv1d import Conv1dAutoencoder, Conv1dConfig
from .image import ImageAutoencoder, ImageConfig
from .linear import LinearAutoencoder, LinearConfig
from .recurrent import RecurrentAutoencoder, RecurrentConfig
from .sparse_dict import SparseDictConfig, SparseDictionary


class Family(NamedTuple):
    config: type[AutoencoderConfig]
    model: type[Autoencoder]
    summary: str


REGISTRY: dict[str, Family] = {
    "conv1d": Family(Conv1dConfig, Conv1dAutoencoder, "1D conv over spectrogram frames; 3 unpooling choices"),
    "recurrent": Family(RecurrentConfig, RecurrentAutoencoder, "GRU/LSTM encoder and decoder; streams"),
    "linear": Family(LinearConfig, LinearAutoencoder, "one linear layer each way: PCA's subspace"),
    "sparse_dict": Family(SparseDictConfig, SparseDictionary,
                          "sparse overcomplete code, non-negative convolutive dictionary: one component per unit"),
    "image": Family(ImageConfig, ImageAutoencoder, "2D conv over images/patches to a code vector; 3 unpooling choices"),
}


class UnknownModelError(KeyError, ValueError):
    """A registry name that does not exist; the message lists the valid ones. A ValueError too,
    so every caller that reports bad input reports this one."""

    def __str__(self) -> str:
        return str(self.args[0])


def family(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model family {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def make_config(name: str, overrides: dict | None = None) -> AutoencoderConfig:
    return family(name).config.from_dict(dict(overrides or {}))


def build_model(name: str, config: AutoencoderConfig | dict | None = None) -> Autoencoder:
    """Instantiate a registered family from its config (or a dict of overrides)."""
    fam = family(name)
    if fam.model.registry_name != name:  # checkpoints save registry_name and load by the registry key
        raise ValueError(f"registry entry {name!r} builds {fam.model.__name__}, whose registry_name is "
                         f"{fam.model.registry_name!r}: its checkpoints would load as that family; set "
                         f"registry_name = {name!r} on the class")
    if config is None or isinstance(config, dict):
        config = fam.config.from_dict(config or {})
    if not isinstance(config, fam.config):
        raise TypeError(f"{name} takes a {fam.config.__name__}, got {type(config).__name__}")
    return fam.model(config)


__all__ = [
    "REGISTRY",
    "Autoencoder",
    "AutoencoderConfig",
    "SpectralAutoencoder",
    "SpectralConfig",
    "UnknownModelError",
    "build_model",
    "family",
    "make_config",
    "takes_audio",
]
