"""``audioae images report``: run every image experiment and write, atomically, into one folder:

- ``report.png``   the figure (one band per experiment);
- ``report.json``  every number, with the settings and library versions;
- ``summary.md``   the headline numbers as short tables;
- ``models/*.safetensors`` every trained model, in the registry's checkpoint format.
"""

from __future__ import annotations

import io
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import __version__
from ..checkpoint import save_checkpoint
from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from . import experiments
from .experiments import ReportConfig

log = logging.getLogger(__name__)

__all__ = ["ReportConfig", "run_report", "summary_markdown"]


def _jsonable(x):
    """Plain JSON: numpy scalars to Python, tuples to lists, non-finite floats to null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run_report(out_dir: str | os.PathLike, config: ReportConfig | None = None, *, save_models: bool = True,
               progress: Callable[[str], None] | None = None) -> dict:
    """Train the report's models, write its files into ``out_dir`` and return the numbers."""
    cfg = config or ReportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or log.info
    t_start, cpu_start = time.perf_counter(), time.process_time()
    seconds: dict[str, float] = {}
    numbers: dict = {}
    arrays: dict = {}
    models: dict = {}

    def step(name: str, fn, *args):
        say(f"{name} ...")
        t0 = time.perf_counter()
        n, a, m = fn(*args)
        seconds[name] = round(time.perf_counter() - t0, 2)
        numbers[name], arrays[name] = n, a
        models.update(m)
        say(f"{name}: {seconds[name]:.1f} s")
        return n, a, m

    digits = experiments.load_digits_split(cfg)
    photos = experiments.load_photos(cfg)
    _, dim_arrays, dim_models = step("dimensionality", experiments.dimensionality, cfg, digits)
    _, _, unpool_models = step("unpooling", experiments.unpooling, cfg, photos)
    step("denoising", experiments.denoising, cfg, photos, unpool_models.get(f"photo-{cfg.unpool}"))
    step("sparsity", experiments.sparse_codes, cfg, digits)
    step("generation", experiments.generation, cfg, digits, dim_models[f"digits-conv-k{cfg.map_code_dim}"],
         dim_arrays["train_codes"], dim_arrays["raw_classifier"])

    numbers["data"] = {"digits_train": len(digits.y_train), "digits_test": len(digits.y_test),
                       "photo_train_patches": len(photos.train), "photo_test_patches": len(photos.test_patches),
                       "train_photographs": list(experiments.TRAIN_PHOTOGRAPHS),
                       "test_photograph": experiments.TEST_PHOTOGRAPH}
    numbers["config"] = cfg.to_dict()
    numbers["seconds"] = seconds
    numbers["environment"] = {"audioae": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "python": platform.python_version(), "machine": platform.machine()}

    if save_models:  # the trained models and the numbers first: a failure drawing the figure keeps them
        for name, model in models.items():
            save_checkpoint(model, out / "models" / f"{name}.safetensors", {"report": "audioae images report"})
        numbers["models"] = sorted(f"models/{name}.safetensors" for name in models)

    def write_numbers() -> dict:
        numbers["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
        # CPU seconds of this process: what the run costs when other processes share the cores.
        numbers["seconds"]["process_cpu"] = round(time.process_time() - cpu_start, 2)
        plain = _jsonable(numbers)
        atomic_write_json(out / "report.json", plain)
        atomic_write_text(out / "summary.md", summary_markdown(plain))
        return plain

    write_numbers()
    say("drawing the figure ...")
    try:
        from .figure import draw

        fig = draw(numbers, arrays)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=cfg.dpi)
        atomic_write_bytes(out / "report.png", buf.getvalue())
    except Exception:
        say(f"drawing the figure failed; the numbers are in {out / 'report.json'} and {out / 'summary.md'}"
            + (f", the models in {out / 'models'}" if save_models else ""))
        raise
    numbers = write_numbers()  # again, with the figure's seconds
    return numbers


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def summary_markdown(n: dict) -> str:
    """The headline numbers of a report as Markdown tables."""
    d, lines = n["dimensionality"], []
    lines += ["# audioae images report", "",
              f"Digits: {n['data']['digits_train']} train / {n['data']['digits_test']} test. Photographs: "
              f"{n['data']['photo_train_patches']} training patches; every photograph number is on "
              f"'{n['data']['test_photograph']}', never seen in training. Total {n['seconds']['total']:.0f} s "
              f"wall clock, {n['seconds']['process_cpu']:.0f} s CPU.", "",
              "## Dimensionality reduction and codes as features (digits, test set)", "",
              "| code size | PCA MSE | linear AE MSE | conv AE MSE | PCA acc. | linear AE acc. | conv AE acc. |",
              "|---|---|---|---|---|---|---|"]
    for i, k in enumerate(d["code_sizes"]):
        lines.append(f"| {k} | {_f(d['mse']['pca'][i])} | {_f(d['mse']['linear'][i])} | {_f(d['mse']['conv'][i])} | "
                     f"{_f(d['accuracy']['pca'][i], 3)} | {_f(d['accuracy']['linear'][i], 3)} | "
                     f"{_f(d['accuracy']['conv'][i], 3)} |")
    lines += ["", f"Logistic regression on the 64 raw pixels: {_f(d['accuracy']['raw_pixels'], 3)}.", "",
              "## Denoising (PSNR in dB on the held-out photograph)", "",
              "| corruption | input | plain AE | denoising AE | gain |", "|---|---|---|---|---|"]
    for kind in ("gaussian", "patches"):
        r = n["denoising"][kind]
        lines.append(f"| {kind} | {_f(r['psnr_in'])} | {_f(r.get('psnr_plain_autoencoder'))} | {_f(r['psnr_out'])} | "
                     f"{_f(r['psnr_gain'], 3)} |")
    g = n["denoising"]["gaussian"]
    if "gaussian_filter_best_psnr" in g:
        lines += ["", f"Gaussian blur, best width chosen on the clean image: {_f(g['gaussian_filter_best_psnr'])} dB "
                      f"(sigma {g['gaussian_filter_best_sigma']})."]
    lines += ["", f"## Sparse codes ({n['sparsity']['code_dim']} ReLU units, digits)", "",
              "| penalty | weight | test MSE | near-zero share | active units | Hoyer |", "|---|---|---|---|---|---|"]
    for r in n["sparsity"]["runs"]:
        lines.append(f"| {r['penalty']} | {_f(r['weight'])} | {_f(r['mse'])} | {_f(r['fraction_near_zero'], 3)} | "
                     f"{r['mean_active_units']:.1f} | {_f(r['hoyer'], 3)} |")
    u = n["unpooling"]
    lines += ["", f"## Unpooling ({u['patch']}x{u['patch']} photograph patches, {u['code_dim']}-unit code)", "",
              "| method | test MSE | PSNR | parameters | train s | ms per 1,000 patches |", "|---|---|---|---|---|---|"]
    for r in u["runs"]:
        lines.append(f"| {r['method']} | {_f(r['mse'])} | {_f(r['psnr'])} | {r['parameters']:,} | "
                     f"{r['train_seconds']:.1f} | {r['inference_ms_per_1000']:.1f} |")
    lines += ["", "Max-unpooling passes the encoder's pooling indices to the decoder: information beside the code."]
    gen = n["generation"]
    lines += ["", f"## Generation ({gen['code_dim']}-unit conv AE code)", "",
              "| code noise (x unit std) | label kept | MSE to the reconstruction |", "|---|---|---|"]
    for r in gen["perturbation"]:
        lines.append(f"| {r['scale']:g} | {_f(r['label_kept'], 3)} | {_f(r['mse_to_reconstruction'])} |")
    gs = gen["gaussian_samples"]
    mid = gen["interpolation_mid_confidence"]
    lines += ["", f"Reconstructions keep their label {_f(gen['reconstruction_label_kept'], 3)} of the time. "
                  f"Mid-path classifier confidence: code interpolation {_f(mid['code'], 3)}, pixel interpolation "
                  f"{_f(mid['pixel'], 3)}. Samples of a Gaussian fitted to the codes: confidence "
                  f"{_f(gs['mean_confidence'], 3)} (test digits {_f(gs['test_digits_mean_confidence'], 3)}).", ""]
    return "\n".join(lines)
