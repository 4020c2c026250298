"""Checkpoints from someone else: whatever a file's header and its sidecar say, loading it fails
with a CheckpointError naming the file before it allocates more than its own weights or reads
more than its header; configs refuse the sizes inference would allocate by."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from audioae.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_extra,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from audioae.cli import main as cli_main
from audioae.models import REGISTRY, build_model

TB = 2**40
SMALL = {"n_fft": 64, "hop_length": 16, "code_dim": 4}  # linear: 33 bins, 4 units


def _crafted(path, config, extra="{}", registry_name="linear"):
    """A file with the small linear model's own tensors under a metadata ``config`` of our choosing."""
    state = {k: v.contiguous() for k, v in build_model("linear", SMALL).state_dict().items()}
    meta = {"format_version": FORMAT_VERSION, "registry_name": registry_name, "extra": extra,
            "config": config if isinstance(config, str) else json.dumps(config)}
    save_file(state, str(path), metadata=meta)
    return path


def _sparse(path, size: int) -> None:
    """Extend ``path`` to ``size`` bytes without writing them (a hole: no disk is used)."""
    try:
        os.truncate(path, size)
    except OSError as exc:  # a file system without files this large
        pytest.skip(f"cannot make a sparse file of {size} bytes here: {exc}")


@pytest.mark.parametrize(("config", "text"), [
    # was the allocator's RuntimeError: the model was built (132 TB) before its weights were compared
    ({**SMALL, "code_dim": 10**12}, r"weights do not match the linear config: encoder\.weight is \[4, 33\] in the "
                                    r"file, \[1000000000000, 33\] in the config"),
    ({**SMALL, "n_fft": 2**40}, "n_fft must be even and within 2..65536, got 1099511627776"),
    ({**SMALL, "n_fft": -64}, "n_fft must be even"),  # was "lookahead must be within [0, n_fft/2 = -32]"
    ({**SMALL, "hop_length": 0}, "0 < hop <= n_fft/2"),  # was STFT's message, without the file's name
])
def test_a_config_its_weights_do_not_fit_is_refused_before_the_model_is_built(tmp_path, config, text):
    path = _crafted(tmp_path / "m.safetensors", config)
    with pytest.raises(CheckpointError, match=text) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))


def test_a_header_that_declares_a_terabyte_of_weights_is_refused_before_they_are_read(tmp_path):
    """A sparse file costs no disk and compresses to nothing; its header was believed and the whole
    file read into memory (a MemoryError, or on a large machine a terabyte of RAM)."""
    header = json.dumps({
        "__metadata__": {"format_version": FORMAT_VERSION, "registry_name": "linear", "config": json.dumps(SMALL)},
        "encoder.weight": {"dtype": "F32", "shape": [TB // 4], "data_offsets": [0, TB]},
    }).encode()
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    _sparse(path, 8 + len(header) + TB)
    with pytest.raises(CheckpointError, match=r"missing .*decoder\.weight.*encoder\.weight is \[274877906944\] "
                                              r"in the file, \[4, 33\] in the config"):
        load_checkpoint(path)


@pytest.mark.parametrize(("config", "extra", "text"), [
    ("[1, 2]", "{}", "its 'config' metadata is a JSON list, not an object"),
    ("[" * 100_000 + "]" * 100_000, "{}", "its 'config' metadata is not valid JSON .*recursion"),
    (json.dumps(SMALL), "{not json", "its 'extra' metadata is not valid JSON"),
    (json.dumps(SMALL), "[" * 100_000 + "]" * 100_000, "its 'extra' metadata is not valid JSON .*recursion"),
    (json.dumps({**SMALL, "pad": "x" * (1 << 20)}), "{}", "its 'config' metadata is 1,048,[0-9]+ characters long"),
])
def test_metadata_that_is_no_json_object_is_refused_by_every_reader(tmp_path, config, extra, text):
    """``read_metadata`` is where every reader starts (the folder tool reads the config's input
    before loading): it was a RecursionError, a JSONDecodeError without the file's name, or an
    AttributeError traceback from ``audioae denoise``."""
    path = _crafted(tmp_path / "m.safetensors", config, extra=extra)
    for read in (read_metadata, checkpoint_extra, load_checkpoint):
        with pytest.raises(CheckpointError, match=text):
            read(path)


def test_denoise_with_a_checkpoint_whose_config_is_a_list_is_an_error_not_a_traceback(tmp_path, capsys):
    path = _crafted(tmp_path / "m.safetensors", "[1, 2]")
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    assert cli_main(["denoise", str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), "--model", str(path),
                     "--no-progress"]) == 2  # was an AttributeError
    assert "its 'config' metadata is a JSON list, not an object" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "text"), [
    ({"__class__": "x"}, r"has no key\(s\) \['__class__'\]"),
    ({"code_dim": "4"}, "code_dim = '4': expected int"),
    ('{"mask_power": NaN}', "mask_power must be a finite number"),
    ({**SMALL, "sample_rate": 10**8}, "sample_rate must be within 1000..384000 Hz"),
    # was torch's "Overflow when unpacking long long" and a page of C++ stack frames
    ({**SMALL, "code_dim": 10**30}, r"code_dim = 10{30}: expected int \(an integer such as 2\) \(integers within ±2\*\*63\)$"),
    ({**SMALL, "mask_power": 10**400}, r"mask_power = 10{79}\.\.\. \(401 characters\): expected float"),
    ({**SMALL, "patch_size": [1, 10**20]}, r"patch_size = .*: expected tuple\[int, int\] \(a list of 2 integers such as \[2, 4\]\)"),
    ({**SMALL, "patch_size": json.loads("[" * 900 + "]" * 900)}, "invalid config for 'linear'"),  # not a RecursionError
])
def test_a_config_of_the_wrong_keys_types_or_values_names_them(tmp_path, config, text):
    with pytest.raises(CheckpointError, match=text):
        load_checkpoint(_crafted(tmp_path / "m.safetensors", config))


def test_an_unknown_family_is_named_and_nothing_is_looked_up_by_it(tmp_path):
    with pytest.raises(CheckpointError, match="unknown model family 'os.system'; registered: conv1d"):
        load_checkpoint(_crafted(tmp_path / "m.safetensors", SMALL, registry_name="os.system"))


def test_a_sidecar_is_read_no_further_than_its_hash(tmp_path):
    """A sidecar of a terabyte (sparse) after a right hash was read whole, as text."""
    path = tmp_path / "m.safetensors"
    digest = save_checkpoint(build_model("linear", SMALL), path)
    sidecar = tmp_path / "m.safetensors.sha256"
    assert sidecar.read_text().startswith(digest)
    _sparse(sidecar, TB)
    assert load_checkpoint(path).config.code_dim == 4


@pytest.mark.parametrize("content", [b"not-a-hash  m.safetensors\n", b"\xff\xfe" * 40, b"abc123  m.safetensors\n"])
def test_a_sidecar_without_a_sha256_is_named_as_the_fault(tmp_path, content):
    """It was "sha256 mismatch (expected not-a-hash...)": the checkpoint blamed for its sidecar
    (or a UnicodeDecodeError, without a name, for one that is not text)."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model("linear", SMALL), path)
    (tmp_path / "m.safetensors.sha256").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"m\.safetensors\.sha256: does not start with a sha256"):
        load_checkpoint(path)


def test_a_sidecar_that_lies_is_still_a_mismatch(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model("linear", SMALL), path)
    (tmp_path / "m.safetensors.sha256").write_text(hashlib.sha256(b"other").hexdigest() + "  m.safetensors\n")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_a_link_to_a_checkpoint_is_checked_against_the_sidecar_beside_its_target(tmp_path):
    """Was: the sidecar was looked for beside the link only, so a load through a link skipped it."""
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "m.safetensors"
    save_checkpoint(build_model("linear", SMALL), path)
    (tmp_path / "models" / "m.safetensors.sha256").write_text(hashlib.sha256(b"other").hexdigest() + "  m\n")
    link = tmp_path / "current.safetensors"
    link.symlink_to(path)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(link)


def test_a_sparsity_target_only_kl_reads_is_not_checked_for_other_penalties():
    """Was: a config whose unused sparsity_target lay outside (0, 1) no longer loaded, whatever its penalty."""
    assert build_model("linear", {**SMALL, "sparsity": "l1", "sparsity_target": 0.0}).config.sparsity_target == 0.0
    with pytest.raises(ValueError, match="sparsity_target must be within"):
        build_model("linear", {**SMALL, "sparsity": "kl", "code_activation": "sigmoid", "sparsity_target": 0.0})


@pytest.mark.parametrize(("name", "config", "text"), [
    ("linear", {"sample_rate": 10**8}, "sample_rate must be within 1000..384000 Hz, got 100000000"),
    ("linear", {"sample_rate": 999}, "sample_rate must be within"),
    ("linear", {"n_fft": 64, "hop_length": 2}, "hop_length must be at least n_fft/16 = 4, got 2"),
    ("conv1d", {"channels": (4,) * 11, "code_dim": 4}, "channels needs 1..10 levels, got 11"),
    ("recurrent", {"layers": 33, "hidden": 4, "code_dim": 4}, "layers must be at most 32, got 33"),
    ("image", {"image_size": (2048, 2048), "channels": (), "code_dim": 1}, "each side must be at most 1024"),
    ("sparse_dict", {"refine_steps": 10**9}, "refine_steps must be within 1..100"),
    ("sparse_dict", {"fit_steps": 101}, "fit_steps must be within 0..100"),
])
def test_sizes_that_no_weight_bounds_are_bounded_in_the_config(name, config, text):
    """Inference allocates or loops by these and the weights do not bound them: a checkpoint's
    config of sample_rate 10**8 had `audioae denoise` resample a 1 s clip to 10**8 samples (its STFT
    alone, at n_fft 512 and hop 128: 781,251 frames x 257 bins of complex64, 1.6 GB), and one of
    refine_steps 10**9 held decompose forever."""
    with pytest.raises(ValueError, match=text):
        build_model(name, config)


def test_loading_builds_shapes_on_meta_without_torchs_python_decompositions(tmp_path):
    """The shape check builds the model on the meta device; an op there without a C++ meta kernel
    (a Hann window, the dictionary's initial atoms, a dense image model's tied start) imported
    torch._dynamo, 1-2 s in every process that loads a checkpoint (`audioae denoise` of the
    examples went from 0.22 s to 1.5 s). Run in a fresh interpreter: tests before may import it."""
    import subprocess
    import sys

    configs = {
        "recurrent": [{}, {"cell": "lstm", "output": "deepfilter", "input_gate": True, "lookahead": 64}],
        "conv1d": [{"unpool": u} for u in ("nearest", "maxunpool", "transposed")],
        "linear": [{}],
        "sparse_dict": [{}],
        "image": [{}, {"channels": (), "code_dim": 16, "image_size": (8, 8), "unit_norm_atoms": True,
                       "output_activation": "none", "subtract_decoder_bias": True}],
    }
    # Each family skips such ops on meta in its own __init__ (spectral.building_on_meta): a family
    # left out of this list would go unchecked.
    assert set(configs) == set(REGISTRY), f"list every registered family: {sorted(set(REGISTRY) - set(configs))}"
    paths = []
    for name, cfgs in configs.items():
        for i, cfg in enumerate(cfgs):
            paths.append(str(tmp_path / f"{name}-{i}.safetensors"))
            save_checkpoint(build_model(name, cfg), paths[-1])
    code = ("import sys\nfrom audioae.checkpoint import load_checkpoint\nfrom audioae.pretrained import resolve\n"
            "for p in sys.argv[1:]:\n    load_checkpoint(resolve(p))\n"
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))")
    out = subprocess.run([sys.executable, "-c", code, *paths, "denoiser-small", "decomposer-small"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("below", ["", "sub/"])
def test_saving_under_a_file_names_the_requested_path_and_the_file_in_the_way(tmp_path, below):
    """Was a bare NotADirectoryError naming ``m.safetensors.sha256``, a path the caller never gave."""
    (tmp_path / "afile").write_text("not a folder")
    path = tmp_path / "afile" / f"{below}m.safetensors"
    with pytest.raises(NotADirectoryError) as err:
        save_checkpoint(build_model("linear", SMALL), path)
    text = str(err.value)
    assert f"cannot write {path}" in text and f"{tmp_path / 'afile'} is a file, not a folder" in text
    assert ".sha256" not in text


@pytest.mark.parametrize(("name", "config"), [
    ("sparse_dict", {"n_fft": 64, "hop_length": 16, "code_dim": 16, "sparsity": "topk", "topk": 16}),
    ("linear", {**SMALL, "sparsity": "topk", "topk": 4}),
])
def test_a_saved_topk_above_code_dim_loads_as_code_dim_with_identical_outputs(tmp_path, caplog, name, config):
    """sparse_dict's old default topk was 32 whatever the code_dim: checkpoints of a code_dim under 32
    hold topk 32, which kept every unit (as topk = code_dim does). They were refused on load once
    configs refused a topk above code_dim; they load again, with a warning naming the file."""
    model = build_model(name, config).eval()
    path = tmp_path / "old.safetensors"
    save_checkpoint(model, path)
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    meta["config"] = json.dumps({**json.loads(meta["config"]), "topk": 32})
    save_file(load_file(str(path)), str(path), metadata=meta)  # as an older audioae wrote it
    (tmp_path / "old.safetensors.sha256").write_text(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  old.safetensors\n")
    with caplog.at_level("WARNING", logger="audioae.checkpoint"):
        loaded = load_checkpoint(path)
    assert loaded.config.topk == config["code_dim"]
    assert str(path) in caplog.text and "topk 32" in caplog.text
    x = model.example_input()
    with torch.no_grad():
        for got, want in zip(loaded(x), model(x), strict=True):  # (reconstruction, code)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"topk \(32\) is above code_dim"):  # a user's setting still refuses
        build_model(name, {**config, "topk": 32})


def test_serve_refuses_two_checkpoints_of_one_name_before_binding_or_loading(tmp_path):
    """Was: `audioae serve --models runs/den/best.safetensors runs/dec/best.safetensors` bound its
    port ("listening on"), loaded the first model, and only then failed "two models named 'best'"."""
    import subprocess
    import sys

    paths = []
    for run in ("den", "dec"):
        (tmp_path / run).mkdir()
        paths.append(tmp_path / run / "best.safetensors")
        save_checkpoint(build_model("linear", {"code_dim": 4, "n_fft": 64, "hop_length": 16}), paths[-1])
    run = subprocess.run([sys.executable, "-m", "audioae.server", "--port", "0", "--models", *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "two models named 'best'; name them explicitly with NAME=PATH" in run.stderr, run.stderr
    assert "listening on" not in run.stderr and "loaded" not in run.stderr, run.stderr
