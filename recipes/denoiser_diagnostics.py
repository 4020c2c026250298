#!/usr/bin/env python3
"""Where a mask / deep-filter denoiser loses PESQ, measured on the val split only.

    python recipes/denoiser_diagnostics.py split --model denoiser-small > benchmarks/results/val/split.json
    python recipes/denoiser_diagnostics.py postproc --model denoiser-small > benchmarks/results/val/postproc.jsonl
    python recipes/denoiser_diagnostics.py gate --model runs/denoiser-small-gate/last.safetensors
    python recipes/denoiser_diagnostics.py swap --model runs/denoiser-small-stage9.safetensors --other FINETUNED
    python recipes/denoiser_diagnostics.py lookahead --model runs/denoiser-small-lookahead/ema.safetensors
    python recipes/denoiser_diagnostics.py oracle > benchmarks/results/val/oracle.json

``split``: the model's output is linear in the noisy STFT once its mask and filter taps are fixed
(they are computed from the noisy input), so the same mask and taps applied to the clean part
and to the noise part of each val mixture (``corpus/val/mixtures``, every second one) tell how
much PESQ the speech distortion alone costs (PESQ of the filtered speech) and how much the
residual noise alone costs (PESQ of clean + filtered noise), overall and per SNR.

``postproc``: simple changes to the mask after the network (smoothing across frequency or time,
a gain floor) scored on the 48 fixed val mixtures of ``recipes/compare_checkpoints.py``, each
through ``denoise()`` as ``audioae denoise`` runs it (with its level lift;
so are ``swap``'s scores).

``swap``: the model with one part of its weights (encoder, code layers, decoder GRU, output
layer, or only the output's mask rows or filter-tap rows) taken from ``--other``, a fine-tuning
of it, scored like ``postproc``: which part of the fine-tuning moved the scores.

``gate``: for a model with an input gate (``model.config.input_gate``), the gate's mean and
maximum over the frames of each val mixture, averaged per noise type and per SNR: where the
model chose to keep the input.

``lookahead``: for a look-ahead model (``model.config.lookahead``), the mean absolute input weight
on the current frame's compressed magnitudes and on the look-ahead frame's: whether training
taught the network to listen to the new input (grown models start it at zero).

``oracle``: on every val mixture, the model against two ideal outputs of its own form at its
own STFT (the ideal [0, 1] magnitude mask with the noisy phase; the same with the clean STFT in
the deep filter's low bins), per noise type and SNR: the headroom the output form leaves.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from audioae import pretrained
from audioae.data.mixing import corpus_missing
from audioae.enhance import denoise, estimate_clips, model_input
from audioae.metrics import pesq_wb
from audioae.pretrained import resolve_arg
from audioae.spectral import apply_mask
from audioae.train import load_run_config, make_validation_set, score_denoised

REPO = Path(__file__).resolve().parents[1]  # defaults found from any folder, not the current one's

SR = 16000


def filtered_parts(model, noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(output, filtered speech, filtered noise)`` of one mono mixture at the model's rate: the
    mask and taps come from the mixture, then are applied to each part; the two parts sum to the
    output (the filter is linear in its input)."""
    x = torch.from_numpy(np.stack([noisy, clean, noisy - clean]))  # [3, T]: mixture, speech, noise
    with torch.inference_mode():
        spec = model.stft(x)  # [3, F, N]
        # mask and taps from the mixture only, computed as denoise computes them (its level lift included)
        mix_spec, mix_feats = model_input(model, x[:1])  # [1, F, N], [1, F', N]
        mixture = estimate_clips(model, [mix_spec], [mix_feats])[0]
        ests = [mixture.est, *(model.estimate_spec(spec[i : i + 1], mixture.out.float()) for i in (1, 2))]
        y, speech, noise = (model.stft.inverse(e, x.shape[-1])[0].numpy() for e in ests)
    return y, speech, noise


def split(model, root: Path) -> dict:
    meta = json.loads((root / "meta.json").read_text())["mixtures"][::2]
    rows = []
    for m in meta:
        noisy = sf.read(root / "noisy" / m["file"], dtype="float32")[0]
        clean = sf.read(root / "clean" / m["file"], dtype="float32")[0]
        y, speech, noise = filtered_parts(model, noisy, clean)
        rows.append({"snr_db": m["snr_db"], "pesq_input": pesq_wb(noisy, clean, SR), "pesq_output": pesq_wb(y, clean, SR),
                     "pesq_speech_only": pesq_wb(speech, clean, SR), "pesq_noise_only": pesq_wb(clean + noise, clean, SR)})
    keys = [k for k in rows[0] if k.startswith("pesq")]
    return {"mixtures": str(root), "overall": _means(rows, keys, digits=3),
            "per_snr": _grouped(rows, "snr_db", keys, digits=3)}


def _means(rows: list[dict], keys, digits: int | None = None) -> dict:
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {k: round(v, digits) if digits is not None else v for k, v in means.items()} | {"n": len(rows)}


def _grouped(rows: list[dict], field: str, keys, digits: int | None = None) -> dict:
    """``_means`` per value of ``field`` (SNRs as "-5", "0", ...), in sorted order."""
    name = (lambda v: f"{v:g}") if field == "snr_db" else str
    return {name(v): _means([r for r in rows if r[field] == v], keys, digits) for v in sorted({r[field] for r in rows})}


def _freq_smooth(kernel: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    w = torch.tensor(kernel, dtype=torch.float32)
    w = (w / w.sum())[None, None, :, None]  # [1, 1, k, 1]
    pad = len(kernel) // 2
    return lambda m: F.conv2d(F.pad(m[:, None], (0, 0, pad, pad), mode="replicate"), w)[:, 0]  # [B, F, N]


def _release(a: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A mask that falls no faster than ``a`` per frame (causal)."""
    def f(m: torch.Tensor) -> torch.Tensor:
        out = m.clone()
        for t in range(1, m.shape[-1]):
            out[..., t] = torch.maximum(m[..., t], a * out[..., t - 1])
        return out
    return f


def _valin_post_filter(beta: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """PercepNet's gain post-filter (Valin et al. 2020; DeepFilterNet's ``mask_pf``): low gains
    pushed lower, 1 kept."""
    def f(m: torch.Tensor) -> torch.Tensor:
        m_sin = m * torch.sin(torch.pi * m / 2)
        return (1 + beta) * m / (1 + beta * (m / m_sin.clamp_min(1e-12)).pow(2))
    return f


def _band_power(factor: float, lo_hz: float, hi_hz: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The mask raised to a power rising from 1 below ``lo_hz`` to ``factor`` above ``hi_hz``."""
    def f(m: torch.Tensor) -> torch.Tensor:
        hz = torch.linspace(0, SR / 2, m.shape[1])  # [F]
        ramp = ((hz - lo_hz) / (hi_hz - lo_hz)).clamp(0, 1)  # [F]
        return m.pow((1 + (factor - 1) * ramp)[:, None])  # [B, F, N]
    return f


VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "none": None, "freq [1 2 1]": _freq_smooth([1, 2, 1]), "freq [1 2 3 2 1]": _freq_smooth([1, 2, 3, 2, 1]),
    "floor 0.05": lambda m: m.clamp_min(0.05), "floor 0.1": lambda m: m.clamp_min(0.1), "release 0.5": _release(0.5),
    # Later: a lower floor, the mask power moved either way, and a deeper cut only where the mask
    # is already low (downward expansion below 0.1).
    "floor 0.03": lambda m: m.clamp_min(0.03), "power x1.25": lambda m: m.pow(1.25),
    "power x0.875": lambda m: m.pow(0.875), "expand below 0.1": lambda m: torch.where(m < 0.1, m * m / 0.1, m),
    # Eleventh session: the post-filter of PercepNet/DeepFilterNet, and a power that differs by
    # band (more suppression above 2-6 kHz, or less).
    "post-filter 0.02": _valin_post_filter(0.02), "post-filter 0.05": _valin_post_filter(0.05),
    "power x1.43 above 2-6 kHz": _band_power(1 / 0.7, 2000, 6000), "power x0.86 above 0.5-4 kHz": _band_power(0.6 / 0.7, 500, 4000),
}


def _val_set(model, config: str, examples: int, seed: int):
    """The fixed val mixtures of ``recipes/compare_checkpoints.py`` (``config``'s val split)."""
    run = load_run_config(config)
    return make_validation_set(model, dataclasses.replace(run.data, val_examples=examples), seed=seed)


def postproc(model, config: str, examples: int = 48, seed: int = 1234):
    val_set = _val_set(model, config, examples, seed)
    n_bins, head = model.config.n_bins, type(model).head
    for name, fn in VARIANTS.items():
        def patched(self, y, fn=fn):
            out = head(self, y)  # [B, F + taps, N]
            return out if fn is None else torch.cat([fn(out[:, :n_bins]), out[:, n_bins:]], dim=1)
        model.head = patched.__get__(model)  # this instance only
        scores = score_denoised(model, val_set)  # what denoise() outputs with this head
        yield {"variant": name, **{k: round(v, 4) for k, v in scores.items()}}
    del model.head


SWAP_GROUPS: dict[str, Callable[[str], bool]] = {
    "encoder": lambda k: k.startswith("enc_"), "code": lambda k: k.startswith(("to_code", "dec_in")),
    "decoder GRU": lambda k: k.startswith("dec_rnn"), "output layer": lambda k: k.startswith("to_out")}


def swap(model, other, config: str, examples: int = 48, seed: int = 1234):
    """``model`` with one part of its weights taken from ``other`` (a fine-tuning of it), part
    by part, and the output layer's mask rows and filter-tap rows each alone: which part of a
    fine-tuning moved the val scores."""
    val_set = _val_set(model, config, examples, seed)
    mine, theirs, n_bins = model.state_dict(), other.state_dict(), model.config.n_bins
    cases = [(name, pick, slice(None)) for name, pick in SWAP_GROUPS.items()]
    cases += [("output layer, mask rows", SWAP_GROUPS["output layer"], slice(0, n_bins)),
              ("output layer, filter-tap rows", SWAP_GROUPS["output layer"], slice(n_bins, None))]
    for name, pick, rows in cases:
        mixed = {k: v.clone() for k, v in mine.items()}
        for k in (k for k in mixed if pick(k)):
            mixed[k][rows] = theirs[k][rows]
        trial = copy.deepcopy(model)
        trial.load_state_dict(mixed)
        yield {"swapped": name, **{k: round(v, 4) for k, v in score_denoised(trial.eval(), val_set).items()}}


def gate(model, root: Path) -> dict:
    if not model.config.input_gate:
        raise SystemExit("gate: this model has no input gate (model.config.input_gate)")
    rows = []
    for m in json.loads((root / "meta.json").read_text())["mixtures"]:
        noisy = torch.from_numpy(sf.read(root / "noisy" / m["file"], dtype="float32")[0])[None]  # [1, T]
        with torch.inference_mode():
            spec, feats = model_input(model, noisy)  # [1, F, N], [1, F', N]: the features denoise feeds it
            out = estimate_clips(model, [spec], [feats])[0].out  # [1, F_out, N], the network run as denoise runs it
        g = out[0, -1]  # [N]: the gate row
        rows.append({"noise_type": m["noise_type"], "snr_db": m["snr_db"], "mean": float(g.mean()), "max": float(g.max())})
    keys = ("mean", "max")
    return {"mixtures": str(root), "overall": _means(rows, keys),
            "per_noise_type": _grouped(rows, "noise_type", keys), "per_snr": _grouped(rows, "snr_db", keys)}


def lookahead(model) -> dict:
    """Mean |weight| of the first layer on the current frame's magnitudes and on the look-ahead's."""
    if not model.config.lookahead:
        raise SystemExit("lookahead: this model has no look-ahead input (model.config.lookahead)")
    w, f = model.enc_in.weight.detach(), model.config.n_bins  # [H, F'], look-ahead rows last
    return {"current_frame_mean_abs": round(float(w[:, :f].abs().mean()), 4),
            "lookahead_mean_abs": round(float(w[:, -f:].abs().mean()), 4)}


def oracle_outputs(model, noisy: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
    """What the model's output form could reach with perfect estimates, at its own STFT: the
    ideal [0, 1] magnitude mask on the noisy STFT (noisy phase everywhere), and that mask above
    the deep filter's bins with the clean STFT itself below them (a filter that is exact there)."""
    x = torch.from_numpy(np.stack([noisy, clean]))  # [2, T]
    with torch.no_grad():
        mix, speech = model.stft(x)  # [F, N] complex each
        ideal_mask = apply_mask(mix, (speech.abs() / mix.abs().clamp_min(1e-8)).clamp(max=1.0))  # [F, N]
        ideal_df = ideal_mask.clone()
        ideal_df[: model.config.df_bins] = speech[: model.config.df_bins]
        return {name: model.stft.inverse(s[None], x.shape[-1])[0].numpy()
                for name, s in (("ideal_mask", ideal_mask), ("ideal_mask_and_filter", ideal_df))}


def oracle(model, root: Path) -> dict:
    """PESQ, STOI and SI-SDR of the input, the model and the two ideal outputs above, per val
    mixture: how far the model is from what its output form allows."""
    from audioae.metrics import si_sdr, stoi

    rows = []
    for m in json.loads((root / "meta.json").read_text())["mixtures"]:
        noisy = sf.read(root / "noisy" / m["file"], dtype="float32")[0]
        clean = sf.read(root / "clean" / m["file"], dtype="float32")[0]
        y = denoise(model, noisy, SR)  # [T]: the one inference path, level lift included
        row = {"noise_type": m["noise_type"], "snr_db": m["snr_db"]}
        for name, sig in {"input": noisy, "model": y, **oracle_outputs(model, noisy, clean)}.items():
            row |= {f"pesq_{name}": pesq_wb(sig, clean, SR), f"stoi_{name}": stoi(sig, clean, SR),
                    f"si_sdr_{name}": si_sdr(sig, clean)}
        rows.append(row)
    keys = [k for k in rows[0] if k.split("_")[0] in ("pesq", "stoi", "si")]
    return {"mixtures": str(root), "overall": _means(rows, keys, digits=3),
            "per_noise_type": _grouped(rows, "noise_type", keys, digits=3), "per_snr": _grouped(rows, "snr_db", keys, digits=3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("what", choices=("split", "postproc", "gate", "swap", "lookahead", "oracle"))
    ap.add_argument("--model", default=None, help="shipped name or .safetensors (default: the shipped denoiser)")
    ap.add_argument("--other", help="swap: the fine-tuned checkpoint whose parts are swapped in")
    ap.add_argument("--mixtures", type=Path, default=REPO / "corpus" / "val" / "mixtures")
    ap.add_argument("--config", default=str(REPO / "configs" / "denoiser-small.toml"), help="run config whose [data] gives the val split")
    args = ap.parse_args(argv)
    if args.what == "swap" and not args.other:
        ap.error("swap needs --other")
    model_path = resolve_arg(ap, args.model, "--model", family="denoiser")
    other_path = resolve_arg(ap, args.other, "--other", family="denoiser") if args.what == "swap" else None
    if args.what in ("split", "gate", "oracle") and not (args.mixtures / "meta.json").is_file():
        # not a FileNotFoundError traceback on meta.json
        ap.error(f"--mixtures {args.mixtures}: no meta.json there; "
                 f"{corpus_missing(args.mixtures) or 'build the mixtures: python recipes/build_corpus.py --stages val_mixtures'}")
    if args.what in ("swap", "postproc"):
        data = load_run_config(args.config).data
        missing = corpus_missing(data.val_clean_dir, data.val_noise_dir)
        if missing:
            ap.error(f"--config {args.config}: {missing}")
    torch.set_num_threads(1)
    model = pretrained.load(model_path).eval()
    if args.what == "split":
        print(json.dumps(split(model, args.mixtures), indent=1))
    elif args.what == "gate":
        print(json.dumps(gate(model, args.mixtures), indent=1))
    elif args.what == "oracle":
        print(json.dumps(oracle(model, args.mixtures), indent=1))
    elif args.what == "lookahead":
        print(json.dumps({"model": args.model, **lookahead(model)}))
    elif args.what == "swap":
        for row in swap(model, pretrained.load(other_path).eval(), args.config):
            print(json.dumps(row), flush=True)
    else:
        for row in postproc(model, args.config):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
