"""The module layout: the wire codec in audioae.wire (the server imports it, not the client),
device helpers in audioae.device, the streaming resampler in audioae.audio, and the audio code
as one library function (audio_code / code_input) that the server's Encode and warm-up call.
The old import paths keep working."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from audioae.audio import resample
from audioae.enhance import audio_code, code_input, model_input
from audioae.models import build_model


def test_the_old_import_paths_give_the_moved_objects():
    import audioae.audio
    import audioae.client
    import audioae.device
    import audioae.enhance
    import audioae.wire

    for name in ("DATATYPES", "AudioForm", "pcm_dtype", "pcm_bytes_to_array", "array_to_pcm_bytes", "float_audio",
                 "pcm_message", "audio_from_message", "audio_message", "pcm_seconds", "tensor_message",
                 "array_from_tensor", "check_token", "read_tokens", "is_loopback"):
        assert getattr(audioae.client, name) is getattr(audioae.wire, name), name
    for name in ("pick_device", "is_out_of_memory", "release_device_memory", "LIBRARY_ALLOC_FAILURES"):
        assert getattr(audioae.enhance, name) is getattr(audioae.device, name), name
    assert audioae.enhance.StreamingResampler is audioae.audio.StreamingResampler


def test_the_server_imports_the_codec_not_the_client_and_the_codec_no_torch():
    code = (
        "import sys\n"
        "import audioae.wire\n"
        "assert 'torch' not in sys.modules, 'audioae.wire imported torch'\n"
        "import audioae.server.servicer, audioae.server.auth\n"
        "assert 'audioae.client' not in sys.modules, 'the server imported the client'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def _tiny(causal: bool = True):
    torch.manual_seed(0)
    return build_model("recurrent", {"sample_rate": 8000, "n_fft": 128, "hop_length": 32, "hidden": 16,
                                     "code_dim": 8, "bidirectional": not causal}).eval()


@pytest.mark.parametrize("sr", [8000, 11025, 16000])  # the model's own rate (warm-up), and others (Encode)
@pytest.mark.parametrize("channels", [1, 2])
def test_audio_code_is_the_inline_computation_it_replaced_bit_for_bit(sr, channels):
    model = _tiny()
    wav = (0.1 * np.random.default_rng(sr + channels).standard_normal((channels, sr // 2))).astype(np.float32)
    with torch.inference_mode():
        # what the servicer's Encode computed inline (audio: resample, features, encode)
        z = resample(torch.from_numpy(wav), sr, model.config.sample_rate).to(next(model.parameters()).device)
        inp = model_input(model, z)[1]  # [C, F', N]
        h = model.encode(inp)  # [C, code_dim, N]
        if sr == model.config.sample_rate:  # what the store's warm-up computed: no resample
            warm = model.encode(model_input(model, torch.from_numpy(wav))[1])
            assert torch.equal(warm, h)
    assert torch.equal(code_input(model, wav, sr), inp)
    got = audio_code(model, wav, sr)
    assert got.shape == (channels, model.config.code_dim, inp.shape[-1])
    assert torch.equal(got, h)


# audioae.train's modules, each importing only from those before it (the package docstring's map)
TRAIN_ORDER = ("config", "loss", "validation", "growth", "records", "phases", "resume", "runtime", "loop", "arrays")


def test_the_train_packages_modules_import_only_from_those_below_them():
    import ast
    from pathlib import Path

    import audioae.train

    folder = Path(audioae.train.__file__).parent
    modules = {p.stem: p for p in folder.glob("*.py") if p.stem != "__init__"}
    assert set(modules) == set(TRAIN_ORDER), "place a new module of audioae/train/ in TRAIN_ORDER"
    for rank, name in enumerate(TRAIN_ORDER):
        tree = ast.parse(modules[name].read_text())
        siblings = {n.module or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                    for a in n.names}  # from .x import y, and from . import x
        above = siblings - set(TRAIN_ORDER[:rank])
        assert not above, f"audioae/train/{name}.py imports {sorted(above)}, which come after it"
