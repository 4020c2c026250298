"""benchmarks/gpu_check.py's own machinery, on the CPU: the checks themselves need CUDA."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_dry_run_from_another_folder_writes_the_preflight_and_the_plan(tmp_path):
    """Was: the first JSON write came after proxy_speed, which a box without the [train] extra died
    in; and configs/ were read from the current folder."""
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(out.read_text())
    pre = res["preflight"]
    assert pre["torch"] == torch.__version__ and pre["repo"] == str(REPO.resolve())
    assert {"tf32_matmul", "tf32_cudnn", "cudnn", "cuda_build"} <= set(pre)
    assert set(pre["imports"]) >= {"torch_pesq", "torch_stoi"}
    assert res["planned"][:2] == ["max_abs_diff_cpu_vs_cuda", "amp_train"] and "loader_speed" not in res["planned"]


def test_a_failing_check_is_recorded_and_the_next_one_runs(gpu_check, tmp_path):
    out = str(tmp_path / "gpu.json")
    res: dict = {}

    def broken():
        raise ModuleNotFoundError("No module named 'torch_pesq'")

    def partial():  # keeps one result, then fails: what it kept stays
        gpu_check._keep(res, out, "finite_training", {"bfloat16": {"finite": True}})
        raise RuntimeError("CUDA error: out of memory")

    gpu_check._run_check(res, out, "proxy_speed", broken)
    gpu_check._run_check(res, out, "finite_training", partial)
    gpu_check._run_check(res, out, "folder", lambda: gpu_check._keep(res, out, "folder", {"cuda_ok": 40}))
    written = json.loads(Path(out).read_text())
    assert written["proxy_speed"] == {"error": "ModuleNotFoundError(\"No module named 'torch_pesq'\")"}
    assert written["finite_training"] == {"bfloat16": {"finite": True}, "error": "RuntimeError('CUDA error: out of memory')"}
    assert written["folder"] == {"cuda_ok": 40}
    assert set(written["check_seconds"]) == {"proxy_speed", "finite_training", "folder"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_preflight_is_written_before_the_refusal(gpu_check, tmp_path):
    out = tmp_path / "gpu.json"
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--only", "grpc", "--out", str(out)])
    assert "preflight" in json.loads(out.read_text())


def test_without_cuda_and_without_out_the_stored_results_are_left_alone(gpu_check, monkeypatch, tmp_path):
    """Was: `python benchmarks/gpu_check.py` on a machine without CUDA replaced the stored
    benchmarks/results/gpu.json with that machine's preflight before saying there was nothing to check."""
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)  # where the default --out would be
    monkeypatch.setattr(gpu_check, "pick_device", lambda name: torch.device("cpu"))
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--only", "grpc"])
    assert "no CUDA device: nothing to check" in str(stop.value.code)
    assert not list(tmp_path.iterdir())
