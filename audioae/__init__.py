"""audioae: sparse and denoising autoencoders over spectrograms.

Public API: the modules the CLI (``audioae.cli``), the gRPC service (``audioae.server``) and the
folder engines (``audioae.batch``) import, and what scripts may build on:

- :mod:`audioae.audio`                 read/write/encode audio files, resample (whole, or streaming: StreamingResampler)
- :mod:`audioae.spectral`              STFT / iSTFT, compression, masks, streaming STFT
- :mod:`audioae.models`                the registry of autoencoder families (``models.image``: the image family)
- :mod:`audioae.checkpoint`            safetensors checkpoints: config, versions, sha256
- :mod:`audioae.pretrained`            the shipped models by name, the example recordings
- :mod:`audioae.enhance`               the inference functions: denoise, denoise_batch, StreamingDenoiser, audio_code
- :mod:`audioae.device`                pick_device; out-of-memory detection and release
- :mod:`audioae.decompose`             components from a sparse model; grouping; sum-to-input
- :mod:`audioae.decomposition_folder`  the folder a decomposition is written into (local and client alike)
- :mod:`audioae.client`                the gRPC client (re-exports :mod:`audioae.wire`)
- :mod:`audioae.wire`                  the wire codec client and server share: messages <-> arrays, token files
- :mod:`audioae.config`                typed config fields; the KEY=VALUE (``--set``) parser
- :mod:`audioae.isolation`             one call in a child process (a codec that may crash on a file)
- :mod:`audioae.fileio`                atomic writes, output-folder checks
- :mod:`audioae.evaluate`, :mod:`audioae.metrics`  ``audioae eval``; SI-SDR, PESQ, STOI
- :mod:`audioae.plots`                 the figures of ``decompose --plot`` and ``inspect``
- :mod:`audioae.inspection`            what ``audioae inspect`` draws and reports (inspect_dictionary, inspect_denoising)
- :mod:`audioae.train`                 training: ``train`` (run configs) and ``fit_arrays`` (tensors); a module per concern
- :mod:`audioae.v1`                    the generated gRPC code of ``proto/audioae/v1/audioae.proto``

The applications on top: :mod:`audioae.cli`, :mod:`audioae.server`, :mod:`audioae.batch`,
:mod:`audioae.images` (the course's image experiments).
"""

__version__ = "0.1.0"
