"""audioae: sparse and denoising autoencoders over spectrograms.

Public API (what the CLI, the server and the batch engines import):

- :mod:`audioae.audio`       read/write audio files, resample
- :mod:`audioae.spectral`    STFT / iSTFT, compression, masks
- :mod:`audioae.models`      the registry of autoencoder families
- :mod:`audioae.checkpoint`  safetensors checkpoints
- :mod:`audioae.enhance`     the pure denoising functions
- :mod:`audioae.train`       the training loop
"""

__version__ = "0.1.0"
