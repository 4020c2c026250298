"""Shape, length and round-trip tests over the whole registry."""

import json
import re

import numpy as np
import pytest
import torch

from audioae.checkpoint import CheckpointError, interpolate_weights, load_checkpoint, save_checkpoint
from audioae.enhance import StreamingDenoiser, denoise
from audioae.models import REGISTRY, SpectralAutoencoder, UnknownModelError, build_model
from audioae.models.conv1d import UNPOOLING
from audioae.models.sparse_dict import default_topk
from audioae.pretrained import HERE

TINY = {
    "conv1d": {"channels": (24, 16), "code_dim": 8, "n_fft": 128, "hop_length": 32},
    "recurrent": {"hidden": 16, "code_dim": 8, "n_fft": 128, "hop_length": 32},
    "linear": {"code_dim": 8, "n_fft": 128, "hop_length": 32},
}


def tiny(name: str, **extra):
    cfg = dict(TINY.get(name, {}))
    cfg.update(extra)
    return build_model(name, cfg).eval()


def _variants():
    for name in REGISTRY:
        if REGISTRY[name].config().input != "spectrogram":
            continue  # image models have their own shape tests (tests/test_images.py)
        if name == "conv1d":
            for unpool in UNPOOLING:
                for causal in (False, True):
                    yield name, {"unpool": unpool, "causal": causal}
        elif name == "recurrent":
            for extra in ({}, {"bidirectional": True}, {"cell": "lstm"}, {"output": "deepfilter", "df_bins": 20}):
                yield name, extra
        else:
            yield name, {}


VARIANTS = list(_variants())


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=[f"{n}-{e}" for n, e in VARIANTS])
@pytest.mark.parametrize("length", [1, 333, 8001])
def test_output_length_equals_input_length(name, extra, length):
    model = tiny(name, **extra)
    assert isinstance(model, SpectralAutoencoder)
    wav = 0.1 * torch.randn(2, length)
    y = denoise(model, wav, model.config.sample_rate)
    assert y.shape == wav.shape
    assert np.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_save_load_round_trip_gives_same_outputs(name, tmp_path):
    model = tiny(name)
    x = model.example_input(2)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    with torch.no_grad():
        out_a, h_a = model(x)
        out_b, h_b = loaded(x)
    assert torch.equal(out_a, out_b)
    assert torch.equal(h_a, h_b)


def test_tampered_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny("recurrent"), path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip a weight byte: sha256 must catch it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_overwriting_a_checkpoint_never_leaves_the_old_hash_beside_it(tmp_path):
    """The old .sha256 is removed before the new weights land: saving without a hash file over a
    checkpoint that had one (as training's last/best do) must leave a loadable file."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny("recurrent"), path)
    torch.manual_seed(1)
    other = tiny("recurrent")
    save_checkpoint(other, path, write_sha256=False)
    assert not path.with_name(path.name + ".sha256").exists()
    assert torch.equal(load_checkpoint(path).state_dict()["to_out.bias"], other.state_dict()["to_out.bias"])


def test_truncated_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny("recurrent"), path, write_sha256=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated|not a readable"):
        load_checkpoint(path)


def test_checkpoint_with_wrong_shapes_fails_strictly(tmp_path):
    from safetensors.torch import save_file

    model = tiny("linear")
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, write_sha256=False)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder")}
    save_file(state, str(path), metadata=meta)  # a key missing
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


def test_unknown_family_lists_valid_names():
    with pytest.raises(UnknownModelError, match="registered: .*conv1d"):
        build_model("transformer")


@pytest.mark.parametrize(("name", "field", "text"), [
    ("recurrent", {"hidden": 0}, "hidden must be positive, got 0"),
    ("recurrent", {"layers": -1}, "layers must be positive"),
    ("recurrent", {"hop_length": 0}, "0 < hop <= n_fft/2"),
    ("recurrent", {"compression": "cube"}, "compression must be log, power or none"),
    ("recurrent", {"snr_low": 30.0}, "snr_low .* is above snr_high"),
    ("recurrent", {"patch_fraction": 2.0}, "patch_fraction"),
    ("conv1d", {"channels": (64, 0)}, r"channels must be positive, got \(64, 0\)"),
    ("image", {"in_channels": 0}, "in_channels must be positive"),
    ("linear", {"input_dim": -1}, "input_dim cannot be negative"),
])
def test_impossible_sizes_are_refused_naming_the_field(name, field, text):
    # was: torch's "Trying to create tensor with negative dimension", a ZeroDivisionError, or a
    # model built silently with an unknown compression or a zero hop
    with pytest.raises(ValueError, match=text):
        build_model(name, field)


def test_unknown_config_field_or_a_value_of_the_wrong_type_is_rejected():
    with pytest.raises(ValueError, match=r"has no key\(s\) \['hiddden'\]"):
        build_model("recurrent", {"hiddden": 3})
    with pytest.raises(ValueError, match="hidden = 'abc': expected int"):
        build_model("recurrent", {"hidden": "abc"})
    with pytest.raises(ValueError, match="patch_size = \\[16\\]: expected tuple"):
        build_model("recurrent", {"patch_size": [16]})
    cfg = build_model("recurrent", {"patch_size": [4, 2], "mask_power": 1}).config  # JSON and TOML have no tuples
    assert cfg.patch_size == (4, 2) and cfg.mask_power == 1


def test_every_model_reports_parameters_and_latency():
    causal = tiny("recurrent")
    assert causal.num_parameters() > 0
    assert causal.latency_seconds == pytest.approx((128) / 16000)
    conv = tiny("conv1d", causal=True)
    assert conv.lookahead_frames == 3  # two pooling levels: a block of 4 frames
    assert tiny("conv1d").latency_seconds is None


def test_a_vector_model_reports_no_audio_latency_or_rate():
    """A 64-pixel linear model once reported 32 ms and 16000 Hz (its config's audio defaults)."""
    vector = build_model("linear", {"input": "vector", "input_dim": 64, "code_dim": 8})
    assert vector.latency_seconds is None
    assert (vector.describe()["latency_ms"], vector.describe()["sample_rate"]) == (None, None)
    audio = tiny("linear").describe()
    assert audio["sample_rate"] == 16000 and audio["latency_ms"] > 0


def test_maxunpool_decode_needs_indices():
    model = tiny("conv1d", unpool="maxunpool")
    h = model.encode(model.example_input())
    with pytest.raises(ValueError, match="pooling indices"):
        model.decode(h)


def test_interpolated_weights_run_from_the_base_model_to_the_fine_tuned_one():
    torch.manual_seed(0)
    base = tiny("recurrent", output="deepfilter", df_order=2, df_bins=16)
    torch.manual_seed(1)
    tuned = tiny("recurrent", output="deepfilter", df_order=2, df_bins=16, mask_power=0.8)
    x = tuned.example_input()
    outputs = {}
    for alpha in (0.0, 0.5, 1.0):
        mixed = interpolate_weights(tuned, base, alpha).eval()
        assert mixed.config == tuned.config  # the fine-tuned model's config (its mask power) is kept
        with torch.no_grad():
            outputs[alpha] = mixed(x)[0]  # [B, F', N]
        for name, w in mixed.state_dict().items():
            expected = alpha * tuned.state_dict()[name] + (1 - alpha) * base.state_dict()[name]
            torch.testing.assert_close(w, expected)
    with torch.no_grad():
        torch.testing.assert_close(outputs[1.0], tuned(x)[0])
        torch.testing.assert_close(outputs[0.0], base.with_config(mask_power=0.8)(x)[0])
    assert not torch.allclose(outputs[0.5], outputs[0.0]) and not torch.allclose(outputs[0.5], outputs[1.0])


def test_interpolating_different_architectures_fails_clearly():
    with pytest.raises(CheckpointError, match="one architecture"):
        interpolate_weights(tiny("recurrent", hidden=16), tiny("recurrent", hidden=24), 0.5)
    with pytest.raises(CheckpointError, match="one architecture"):
        interpolate_weights(tiny("recurrent"), tiny("conv1d"), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_weights(tiny("recurrent"), tiny("recurrent"), 1.5)


def test_a_sha256_in_capitals_matches_and_a_blank_sidecar_is_named(tmp_path):
    import hashlib

    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny("recurrent"), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    load_checkpoint(path, expected_sha256=digest.upper())  # was "sha256 mismatch": hex has no case
    path.with_name(path.name + ".sha256").write_text("\n")
    with pytest.raises(CheckpointError, match=r"m\.safetensors\.sha256: empty"):  # was an IndexError
        load_checkpoint(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_model_built_under_a_cuda_device_context_runs_there():
    """Was "input and window must be on the same device": the STFT window was made on the CPU
    whatever the default device, so that checkpoint loading's meta build stayed quick."""
    cfg = dict(n_fft=64, hop_length=16, sample_rate=8000, channels=(8,), code_dim=8)
    with torch.device("cuda"):
        model = build_model("conv1d", cfg)
    assert {b.device.type for b in model.buffers()} == {"cuda"}
    assert denoise(model, torch.zeros(1, 800), 8000).shape == (1, 800)


def test_the_stft_window_is_made_on_the_cpu_under_the_meta_device():
    with torch.device("meta"):
        model = build_model("conv1d", dict(n_fft=64, hop_length=16, sample_rate=8000, channels=(8,), code_dim=8))
    assert {b.device.type for b in model.buffers()} == {"cpu"}
    assert {p.device.type for p in model.parameters()} == {"meta"}


# ---- top-k and the settings that cannot be negative, in every spectrogram family --------------
AUDIO_FAMILIES = tuple(name for name in REGISTRY if name != "image")  # a new family is tested here too


@pytest.mark.parametrize("name", AUDIO_FAMILIES)
def test_a_topk_above_code_dim_is_refused_naming_both(name):
    """Was accepted: keep_topk then keeps every unit, and the model trained with a dense code
    (the image family refused it already)."""
    with pytest.raises(ValueError, match=re.escape("topk (50) is above code_dim (16): every unit would be kept, "
                                                   "so the code would not be sparse; choose topk within 1..16")):
        tiny(name, sparsity="topk", topk=50, code_dim=16)
    assert tiny(name, sparsity="topk", topk=16, code_dim=16).config.topk == 16  # the bound itself is allowed


@pytest.mark.parametrize("name", AUDIO_FAMILIES)
@pytest.mark.parametrize("sparsity", ["none", "l1"])
def test_an_unused_topk_above_code_dim_still_builds_saves_and_loads(name, sparsity, tmp_path):
    """A saved config may carry a topk it never used (sparsity other than topk): it must load."""
    model = tiny(name, sparsity=sparsity, topk=50, code_dim=16)
    save_checkpoint(model, tmp_path / "m.safetensors")
    assert load_checkpoint(tmp_path / "m.safetensors").config.topk == 50


@pytest.mark.parametrize("name", AUDIO_FAMILIES)
@pytest.mark.parametrize(("field", "value"), [("topk", -3), ("sparsity_weight", -0.5), ("noise_std", -0.2)])
def test_a_negative_setting_is_refused_naming_the_field_and_value(name, field, value):
    """Was "topk, sparsity_weight and noise_std cannot be negative", whichever one it was."""
    with pytest.raises(ValueError, match=re.escape(f"{field} cannot be negative, got {value}")):
        tiny(name, **{field: value})


def test_sparse_dict_default_topk_is_a_tenth_of_its_code_dim():
    """The default topk was a fixed 32: with code_dim 16 the 'sparse' code kept all 16 units per
    frame, silently. Left at its default, topk is code_dim // 10 (at least 1): 32 of the default 320."""
    assert build_model("sparse_dict").config.topk == 32
    model = tiny("sparse_dict", code_dim=16)
    assert model.config.topk == default_topk(16) == 1
    assert tiny("sparse_dict", code_dim=5).config.topk == 1
    with torch.no_grad():
        h = model.encode(model.example_input())  # [B, U, N]
    assert int((h > 0).sum(dim=1).max()) <= 1
    assert int((h > 0).sum(dim=1).min()) == 1  # sparse, not silent
    set_by_user = tiny("sparse_dict", code_dim=16, topk=4)
    with torch.no_grad():
        assert int((set_by_user.encode(set_by_user.example_input()) > 0).sum(dim=1).max()) == 4


def test_a_saved_sparse_dict_holds_the_topk_it_ran_with(tmp_path):
    """The default is resolved in the config, so the checkpoint says the number, not 'default'."""
    model = tiny("sparse_dict", code_dim=24)
    assert json.loads(model.config.to_json())["topk"] == 2
    save_checkpoint(model, tmp_path / "d.safetensors")
    assert load_checkpoint(tmp_path / "d.safetensors").config == model.config


def test_the_shipped_models_still_load_under_the_topk_checks():
    dec = load_checkpoint(HERE / "decomposer-small.safetensors")
    assert (dec.config.sparsity, dec.config.topk, dec.config.code_dim) == ("topk", 64, 320)
    assert load_checkpoint(HERE / "denoiser-small.safetensors").config.topk == 0


# ---- the registry's contracts, for every family (a new one is tested here too) -----------------
SPECTRAL_BASE = {"code_dim": 8, "n_fft": 128, "hop_length": 32}  # a new spectrogram family's tiny sizes


def _causal_variants():
    """A tiny causal instance of every family that can be one: its ``causal`` field set where it
    has one (conv1d with each unpooling), as built otherwise (recurrent, linear)."""
    for name, fam in REGISTRY.items():
        fields = {f.name for f in fam.config.__dataclass_fields__.values()}
        if "n_fft" not in fields:
            continue  # no spectrogram, no stream (image)
        base = {**SPECTRAL_BASE, **TINY.get(name, {}), **({"causal": True} if "causal" in fields else {})}
        if "unpool" in fields:
            for unpool in UNPOOLING:
                yield name, {**base, "unpool": unpool}
        else:
            yield name, base


CAUSAL_VARIANTS = list(_causal_variants())


def _streamed_and_offline(model, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's output on 300 frames at once, and fed ``chunk_frames`` at a time through
    ``stream_init``/``stream_step`` (the contract :class:`~audioae.enhance.StreamingDenoiser` uses)."""
    g = torch.Generator().manual_seed(3)
    wav = 0.1 * torch.randn(1, 299 * model.config.hop_length, generator=g)  # [1, T]
    feats = model.analyze(wav)[1]  # [1, F', 300]
    with torch.no_grad():
        offline = model(feats)[0]  # [1, F'', 300]
        state, parts = model.stream_init(1), []
        n = feats.shape[-1]
        for i in range(0, n, chunk_frames):
            out, state = model.stream_step(feats[..., i : i + chunk_frames], state, final=i + chunk_frames >= n)
            parts.append(out)
    return torch.cat(parts, dim=-1), offline


@pytest.mark.parametrize(("name", "config"), CAUSAL_VARIANTS, ids=[f"{n}-{c.get('unpool', '')}" for n, c in CAUSAL_VARIANTS])
@pytest.mark.parametrize("chunk_frames", [1, 5, 64])
def test_every_causal_family_streams_like_offline(name, config, chunk_frames):
    """A causal model's streamed output equals its offline output (the ARCHITECTURE's streaming
    contract): the default ``stream_step`` keeps ``receptive_field`` past frames, aligned to
    ``stream_block``, so a family that declares too small a receptive field fails here."""
    model = build_model(name, config).eval()
    if not model.causal:
        pytest.skip(f"{name} built this way is not causal")
    streamed, offline = _streamed_and_offline(model, chunk_frames)
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)
    wav = 0.1 * torch.randn(1, 4000)  # and end to end, through the STFT, as the CLI and the server stream
    sd = StreamingDenoiser(model, model.config.sample_rate)
    whole = torch.cat([sd.push(wav[:, i : i + 300]) for i in range(0, wav.shape[-1], 300)] + [sd.finish()], -1)
    np.testing.assert_allclose(whole.numpy(), denoise(model, wav, model.config.sample_rate), atol=2e-5)


def test_a_family_with_too_small_a_receptive_field_fails_the_streaming_check():
    """The check above can fail: a conv1d that claims to see 2 past frames streams wrongly."""
    from audioae.models.conv1d import Conv1dAutoencoder

    class Shortsighted(Conv1dAutoencoder):
        receptive_field = 2

    model = Shortsighted(REGISTRY["conv1d"].config(**TINY["conv1d"], causal=True)).eval()
    streamed, offline = _streamed_and_offline(model, 1)
    assert not torch.allclose(streamed, offline, atol=1e-5, rtol=1e-5)


def test_every_registry_key_is_its_class_registry_name():
    """A checkpoint saves ``model.registry_name`` and loads by registry key: a subclass that forgot
    to set it saved under its parent's name and loaded as the parent, silently."""
    for name, fam in REGISTRY.items():
        assert fam.model.registry_name == name, f"{name}: {fam.model.__name__}.registry_name is {fam.model.registry_name!r}"
        assert build_model(name).registry_name == name


def test_a_family_registered_under_another_name_than_its_registry_name_is_refused(monkeypatch):
    from audioae.models import Family
    from audioae.models.linear import LinearAutoencoder, LinearConfig

    class Forgetful(LinearAutoencoder):  # registry_name inherited: "linear"
        pass

    monkeypatch.setitem(REGISTRY, "forgetful", Family(LinearConfig, Forgetful, "a subclass"))
    with pytest.raises(ValueError, match=re.escape("registry entry 'forgetful' builds Forgetful, whose registry_name "
                                                   "is 'linear'")):
        build_model("forgetful", TINY["linear"])


def test_a_family_whose_init_computes_from_weights_fails_to_load_naming_building_on_meta(monkeypatch, tmp_path):
    """Checkpoint loading builds the model on the meta device first: an ``__init__`` that reads a
    weight's value failed with torch's bare "Tensor.item() cannot be called on meta tensors"."""
    from audioae.models import Family
    from audioae.models.linear import LinearAutoencoder, LinearConfig

    class Computing(LinearAutoencoder):
        registry_name = "computing"

        def __init__(self, config):
            super().__init__(config)
            self.scale = float(self.encoder.weight.abs().max().item())  # reads a value: nothing on meta

    monkeypatch.setitem(REGISTRY, "computing", Family(LinearConfig, Computing, "reads its weights in __init__"))
    save_checkpoint(build_model("computing", TINY["linear"]), tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'c.safetensors'}: the computing model could not "
                                                        "be built on the meta device")) as caught:
        load_checkpoint(tmp_path / "c.safetensors")
    assert "building_on_meta()" in str(caught.value) and "docs/models.md" in str(caught.value)


def test_a_build_that_fails_on_meta_for_another_reason_keeps_its_own_error(monkeypatch, tmp_path):
    """Was: every RuntimeError of the meta build was put down to an __init__ computing from tensor
    values, with building_on_meta() as the fix, whatever torch had said."""
    from audioae.models import Family
    from audioae.models.linear import LinearAutoencoder, LinearConfig

    class Failing(LinearAutoencoder):
        registry_name = "failing"

        def __init__(self, config):
            super().__init__(config)
            if torch.get_default_device().type == "meta":
                raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED")

    monkeypatch.setitem(REGISTRY, "failing", Family(LinearConfig, Failing, "fails on meta"))
    save_checkpoint(build_model("failing", TINY["linear"]), tmp_path / "f.safetensors")
    with pytest.raises(CheckpointError, match=re.escape("could not be built on the meta device, where loading learns "
                                                        "its shapes before reading any weight (RuntimeError: cuDNN "
                                                        "error: CUDNN_STATUS_NOT_INITIALIZED)")) as caught:
        load_checkpoint(tmp_path / "f.safetensors")
    assert "building_on_meta" not in str(caught.value)


def test_a_family_names_the_switch_that_reads_a_setting_as_data():
    """``_read_by`` gives ``field -> (switch, value)``; the message is made from them (was: a
    sentence, whose switch was parsed back out of its text)."""
    import dataclasses

    from audioae.models.recurrent import RecurrentConfig

    @dataclasses.dataclass(frozen=True)
    class MaskOnly(RecurrentConfig):
        def _read_by(self):
            return {**super()._read_by(), "mask_power": ("output", "mask")}

    assert MaskOnly(output="deepfilter", mask_power=2.0).unread_settings() == [
        'mask_power = 2.0 is read only with output = "mask", and this model has output = "deepfilter"']
    assert MaskOnly(output="mask", mask_power=2.0).unread_settings() == []
