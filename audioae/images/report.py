"""``audioae images report``: run every image experiment and write, atomically, into one folder:

- ``report.png``   the figure (one band per experiment);
- ``report.json``  every number, with the settings and library versions;
- ``summary.md``   the headline numbers as short tables;
- ``models/*.safetensors`` every trained model, in the registry's checkpoint format.

A rerun into the same folder replaces the earlier report: once every experiment has run, the
models the earlier ``report.json`` lists and this run does not write again are removed (all of
them with ``save_models=False``); other files in ``models/`` are left where they are, and named.
A run that fails removes none. The earlier ``report.png`` goes as soon as the new ``report.json``
replaces the earlier one (it drew the earlier numbers): a run that fails, in an experiment or
in drawing, leaves no figure.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import __version__
from ..checkpoint import CheckpointError, checkpoint_extra, save_checkpoint
from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from . import experiments
from .experiments import ReportConfig

log = logging.getLogger(__name__)

__all__ = ["ReportConfig", "run_report", "summary_markdown"]

MODEL_EXTRA = {"report": "audioae images report"}  # in every model's metadata: how a rerun knows its own
MODEL_ENTRY = re.compile(r"models/[\w.+-]+\.safetensors")  # report.json's "models" entries: files in models/


def _earlier_models(out: Path) -> list[str]:
    """The models an earlier report in ``out`` wrote, as its ``report.json`` lists them (relative
    paths; a failed report also lists, as ``earlier_models``, those of the report before it that
    it left). Entries of any other form (an edited file: ``../x``, ``/home/...``) are passed over."""
    try:
        report = json.loads((out / "report.json").read_text())
        listed = [*report.get("models", []), *report.get("earlier_models", [])]
    except (OSError, ValueError, AttributeError, TypeError):  # no earlier report, or not one this code wrote
        return []
    return [rel for rel in listed if isinstance(rel, str) and MODEL_ENTRY.fullmatch(rel)]


def _written_by_a_report(path: Path) -> bool:
    try:
        return checkpoint_extra(path).get("report") == MODEL_EXTRA["report"]
    except CheckpointError:
        return False


def _clear_earlier_models(out: Path, earlier: list[str], written: list[str], say: Callable[[str], None]) -> None:
    """Remove the models of ``earlier`` that this run did not write again (with their sha256
    sidecars): the new report.json would not list them, and they would pass for this run's. Only
    files that still are a report's checkpoints go; anything else in ``models/`` is named, not touched."""
    removed = []
    for rel in sorted(set(earlier) - set(written)):
        path = out / rel
        if path.is_file() and _written_by_a_report(path):  # else someone's since: named below, if a .safetensors
            path.unlink()
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        say(f"removed {len(removed)} model{'s' * (len(removed) != 1)} of the earlier report in {out} that this run "
            f"did not write: {', '.join(removed)}")
    listed = {Path(rel).name for rel in written}
    others = sorted({p.name for p in (out / "models").glob("*.safetensors")} - listed)
    if others:
        say(f"note: {out / 'models'} also holds {', '.join(others)}, not written by this run (left as "
            f"{'they are' if len(others) > 1 else 'it is'})")
    if removed:
        with contextlib.suppress(OSError):  # only when nothing else is left in it
            (out / "models").rmdir()


def _remove_earlier_figure(out: Path) -> bool:
    """Remove ``report.png`` of an earlier run, whose numbers this run's report.json replaces.
    Only a file (or link) goes: anything else there is someone's, and the atomic write of the new
    figure fails on it, saying so."""
    figure = out / "report.png"
    if figure.is_file() or figure.is_symlink():
        figure.unlink()
        return True
    return False


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
    earlier = _earlier_models(out)  # cleared when this run's report.json replaces that one, not before
    say = progress or log.info
    t_start, cpu_start = time.perf_counter(), time.process_time()
    seconds: dict[str, float] = {}
    numbers: dict = {}
    arrays: dict = {}
    models: dict = {}
    running = ["loading the data"]  # the step a failure is reported for

    def step(name: str, fn, *args):
        running[0] = name
        say(f"{name} ...")
        t0 = time.perf_counter()
        n, a, m = fn(*args)
        seconds[name] = round(time.perf_counter() - t0, 2)
        numbers[name], arrays[name] = n, a
        models.update(m)
        say(f"{name}: {seconds[name]:.1f} s")
        return n, a, m

    def write_models() -> None:
        for name, model in models.items():
            save_checkpoint(model, out / "models" / f"{name}.safetensors", MODEL_EXTRA)
        numbers["models"] = sorted(f"models/{name}.safetensors" for name in models)

    def write_numbers() -> dict:
        numbers["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
        # CPU seconds of this process: what the run costs when other processes share the cores.
        numbers["seconds"]["process_cpu"] = round(time.process_time() - cpu_start, 2)
        plain = _jsonable(numbers)
        atomic_write_json(out / "report.json", plain)
        atomic_write_text(out / "summary.md", summary_markdown(plain))
        return plain

    numbers["config"] = cfg.to_dict()
    numbers["seconds"] = seconds
    numbers["environment"] = {"audioae": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "python": platform.python_version(), "machine": platform.machine()}
    try:
        digits = experiments.load_digits_split(cfg)
        photos = experiments.load_photos(cfg)
        numbers["data"] = {"digits_train": len(digits.y_train), "digits_test": len(digits.y_test),
                           "photo_train_patches": len(photos.train), "photo_test_patches": len(photos.test_patches),
                           "train_photographs": list(experiments.TRAIN_PHOTOGRAPHS),
                           "test_photograph": experiments.TEST_PHOTOGRAPH}
        _, dim_arrays, dim_models = step("dimensionality", experiments.dimensionality, cfg, digits)
        _, _, unpool_models = step("unpooling", experiments.unpooling, cfg, photos)
        step("denoising", experiments.denoising, cfg, photos, unpool_models.get(f"photo-{cfg.unpool}"))
        step("sparsity", experiments.sparse_codes, cfg, digits)
        step("generation", experiments.generation, cfg, digits, dim_models[f"digits-conv-k{cfg.map_code_dim}"],
             dim_arrays["train_codes"], dim_arrays["raw_classifier"])
    except Exception as exc:  # minutes of work may lie behind: keep what the earlier experiments made
        numbers["failed"] = {"experiment": running[0], "error": f"{type(exc).__name__}: {exc}"}
        if save_models:
            write_models()
        # the earlier report's models it leaves, still its to clear: the next finished run does
        numbers["earlier_models"] = sorted(set(earlier) - set(numbers.get("models", [])))
        figure_removed = _remove_earlier_figure(out)
        write_numbers()
        say(f"{running[0]} failed; the numbers so far are in {out / 'report.json'} and {out / 'summary.md'}"
            + (f", the models so far in {out / 'models'}" if save_models and models else "")
            + ("; the earlier report's figure was removed (it drew the earlier numbers), and no figure is drawn "
               "for an incomplete report" if figure_removed else ""))
        raise

    if save_models:  # the trained models and the numbers first: a failure drawing the figure keeps them
        write_models()
    # When every experiment ran (a failed run lists the earlier models it left as earlier_models,
    # for the next finished run to clear), as this run's numbers replace the earlier report's.
    _clear_earlier_models(out, earlier, numbers.get("models", []), say)
    figure_removed = _remove_earlier_figure(out)  # until the new one is drawn, no figure is the right one
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
            + (f", the models in {out / 'models'}" if save_models else "")
            + ("; the earlier report's figure was removed (it drew the earlier numbers)" if figure_removed else ""))
        raise
    numbers = write_numbers()  # again, with the figure's seconds
    return numbers


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def summary_markdown(n: dict) -> str:
    """The headline numbers of a report as Markdown tables; a report cut short by a failed
    experiment (``n["failed"]``) shows the sections it has."""
    lines = ["# audioae images report", ""]
    if "failed" in n:
        lines += [f"**Incomplete**: {n['failed']['experiment']} failed ({n['failed']['error']}); the sections "
                  "below are the experiments that ran before it. No figure is drawn for an incomplete report.", ""]
    data = n.get("data")
    lines += [(f"Digits: {data['digits_train']} train / {data['digits_test']} test. Photographs: "
               f"{data['photo_train_patches']} training patches; every photograph number is on "
               f"'{data['test_photograph']}', never seen in training. " if data else "")
              + f"Total {n['seconds']['total']:.0f} s wall clock, {n['seconds']['process_cpu']:.0f} s CPU."]
    for name, section in (("dimensionality", _dimensionality_md), ("denoising", _denoising_md),
                          ("sparsity", _sparsity_md), ("unpooling", _unpooling_md), ("generation", _generation_md)):
        if name in n:
            lines += ["", *section(n[name])]
    return "\n".join([*lines, ""])


def _dimensionality_md(d: dict) -> list[str]:
    angles = d.get("linear_pca_max_angle_deg") or [None] * len(d["code_sizes"])
    lines = ["## Dimensionality reduction and codes as features (digits, test set)", "",
             "| code size | PCA MSE | linear AE MSE | linear AE over PCA | conv AE MSE "
             "| largest angle, linear AE decoder to PCA subspace (deg) | PCA acc. | linear AE acc. | conv AE acc. |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, k in enumerate(d["code_sizes"]):
        pca, lin = d["mse"]["pca"][i], d["mse"]["linear"][i]
        excess = "-" if not pca else f"{round(100 * (lin / pca - 1), 2) + 0.0:+.2f}%"  # + 0.0: no "-0.00%"
        angle = "-" if angles[i] is None else f"{angles[i]:.2f}"
        lines.append(f"| {k} | {_f(pca)} | {_f(lin)} | {excess} | {_f(d['mse']['conv'][i])} | {angle} | "
                     f"{_f(d['accuracy']['pca'][i], 3)} | {_f(d['accuracy']['linear'][i], 3)} | "
                     f"{_f(d['accuracy']['conv'][i], 3)} |")
    lines += ["", f"Logistic regression on the 64 raw pixels: {_f(d['accuracy']['raw_pixels'], 3)}."]
    enc, span = d.get("linear_encoder_pca_max_angle_deg"), d.get("linear_encoder_pca_max_angle_in_span_deg")
    if enc and span:  # reports written before these were measured lack them
        lines += ["", f"Angles are of the decoder's columns. The encoder's rows are {min(enc):.3g} to {max(enc):.3g} "
                      f"degrees off PCA's subspace; within the span of the training digits "
                      f"({d.get('data_span_dim', '?')} of 64 dimensions: the weights of pixels that never vary "
                      f"keep their random start), at most {max(span):.2g} degrees."]
    return lines


def _denoising_md(n: dict) -> list[str]:
    lines = ["## Denoising (PSNR in dB on the held-out photograph)", "",
             "| corruption | input | plain AE | denoising AE | gain over the input (denoising AE - input) |",
             "|---|---|---|---|---|"]
    for kind in ("gaussian", "patches"):
        r = n[kind]
        lines.append(f"| {kind} | {_f(r['psnr_in'])} | {_f(r.get('psnr_plain_autoencoder'))} | {_f(r['psnr_out'])} | "
                     f"{_f(r['psnr_gain'], 3)} |")
    g, p = n["gaussian"], n["patches"]
    if "gaussian_filter_best_psnr" in g:
        lines += ["", f"Gaussian blur, best width chosen on the clean image: {_f(g['gaussian_filter_best_psnr'])} dB "
                      f"(sigma {g['gaussian_filter_best_sigma']})."]
    if "dark_fraction_measured" in p:
        lines += ["", f"Noise std {_f(g.get('noise_std'))}; darkened share of the test image "
                      f"{_f(p['dark_fraction_measured'], 3)} ({'x'.join(map(str, p['dark_patch']))} patches)."]
    return lines


def _sparsity_md(n: dict) -> list[str]:
    k = n["code_dim"]
    top = next((r["top_units"] for r in n["runs"] if "top_units" in r), 8)
    lines = [f"## Sparse codes ({k} ReLU units, digits)", ""]
    if "model" in n:
        lines += [f"Model: {n['model']}; {n['steps']} steps each.", ""]
    lines += ["Live units: active on at least one test digit (the others are dead: silent for every input). "
              "Active: at least 1e-3 of the largest activation. Energy: the sum of a digit's squared code values.",
              "",
              f"| penalty | weight | test MSE | live units (of {k}) at initialisation | live units after training | "
              "active units per digit | active share of live units | live units active for under half the digits | "
              f"Hoyer | share of a digit's code energy in its {top} largest units |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in n["runs"]:
        lines.append(f"| {r['penalty']} | {_f(r['weight'])} | {_f(r['mse'])} | {_f(r.get('live_units_at_init'))} | "
                     f"{_f(r.get('live_units'))} | "
                     f"{r['mean_active_units']:.1f} | {_f(r.get('active_share_of_live'), 3)} | "
                     f"{_f(r.get('live_units_active_under_half'))} | {_f(r['hoyer'], 3)} | "
                     f"{_f(r.get('top_energy_share'), 3)} |")
    return lines


def _unpooling_md(u: dict) -> list[str]:
    lines = [f"## Unpooling ({u['patch']}x{u['patch']} photograph patches, {u['code_dim']}-unit code)", "",
             "Patch PSNR: over the held-out photograph's non-overlapping patch grid (what the model is trained "
             "on). Whole-image PSNR: overlapping patches averaged into the image (what the figure shows).", "",
             "| method | patch MSE | patch PSNR | whole-image PSNR | parameters | train s | ms per 1,000 patches |",
             "|---|---|---|---|---|---|---|"]
    for r in u["runs"]:
        lines.append(f"| {r['method']} | {_f(r['mse'])} | {_f(r['psnr'])} | "
                     f"{_f(r.get('psnr_whole_image_overlapping'))} | {r['parameters']:,} | {r['train_seconds']:.1f} | "
                     f"{r['inference_ms_per_1000']:.1f} |")
    return [*lines, "", "Max-unpooling passes the encoder's pooling indices to the decoder: information beside the "
                        "code."]


def _generation_md(gen: dict) -> list[str]:
    lines = [f"## Generation ({gen['code_dim']}-unit conv AE code)", "",
             "| code noise (x unit std) | label kept | MSE to the reconstruction |", "|---|---|---|"]
    for r in gen["perturbation"]:
        lines.append(f"| {r['scale']:g} | {_f(r['label_kept'], 3)} | {_f(r['mse_to_reconstruction'])} |")
    gs = gen["gaussian_samples"]
    mid = gen["interpolation_mid_confidence"]
    return [*lines, "", f"Reconstructions keep their label {_f(gen['reconstruction_label_kept'], 3)} of the time. "
                        f"Mid-path classifier confidence: code interpolation {_f(mid['code'], 3)}, pixel interpolation "
                        f"{_f(mid['pixel'], 3)}. Samples of a Gaussian fitted to the codes: confidence "
                        f"{_f(gs['mean_confidence'], 3)} (test digits {_f(gs['test_digits_mean_confidence'], 3)})."]
