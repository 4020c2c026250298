"""Encode of audio against a real server on 127.0.0.1: the code of the features denoising feeds
the network (:func:`audioae.enhance.model_input`), quiet input lifted as there. Until 2026-12-07
it encoded the unlifted features, so below about -45 dBFS its code was not the code of what
``Denoise`` and ``inspect`` compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioae.checkpoint import load_checkpoint
from audioae.client import Client
from audioae.data.synthetic import speech_like
from audioae.enhance import model_input
from audioae.server import AudioServer, ServerConfig


@pytest.fixture(scope="module")
def client(causal_ckpt):  # the tiny causal recurrent model of conftest
    srv = AudioServer(ServerConfig(port=0, models=(str(causal_ckpt),), metrics_port=0, torch_threads=1,
                                   max_delay_ms=5, drain_seconds=5))
    srv.start()
    srv.load()
    try:
        with Client(f"127.0.0.1:{srv.port}", timeout=60) as c:
            yield c
    finally:
        srv.stop()


def test_encode_of_quiet_audio_is_the_code_of_what_denoising_feeds_the_network(client, causal_ckpt):
    tiny = load_checkpoint(causal_ckpt).eval()
    rng = np.random.default_rng(0)
    loud = np.stack([speech_like(rng, 0.5, 16000) for _ in range(2)])  # [C, T]
    x = (loud / np.abs(loud).max() * 10 ** (-65 / 20)).astype(np.float32)  # peaks at -65 dBFS: lifted
    h = client.encode_audio(x, 16000, model="tiny-causal")
    with torch.inference_mode():
        lifted = tiny.encode(model_input(tiny, torch.from_numpy(x))[1]).numpy()
        unlifted = tiny.encode(tiny.analyze(torch.from_numpy(x))[1]).numpy()
    assert np.abs(lifted - unlifted).max() > 1e-2  # the lift matters here: the check below can tell
    np.testing.assert_allclose(h, lifted, atol=1e-5)
