#!/usr/bin/env bash
# A GPU phase for the shipped speech denoiser (configs/denoiser-small-gpu.toml): stage 5 of its
# model card (runs/denoiser-small-stage5.safetensors, exported by recipes/train_denoiser.sh; on a
# GPU machine of its own, copy that file there from the CPU machine along with the packed corpus)
# trained further with stage 4's perceptual loss at batch 256 for MINUTES of wall time,
# the rate decaying with the time spent. Its runs (H200, 2026-11-27): the first went NaN (bf16,
# benchmarks/results/gpu-train-attempt.json); the second, fp32, trained finite but did not beat the
# shipped weights on val (gpu-train-perceptual.json); the third, fp32 with the fast perceptual
# proxies and the new training noise, 6 minutes, is stage 6 of its card (gpu-train-mixnoise.json);
# the fourth, 7.5 minutes from stage 8 with `--set
# train.init_from='"runs/denoiser-small-stage8.safetensors"' --set train.pesq_weight=0.05 --set
# train.stoi_weight=0.6 --set train.ema_decay=0.999 --set train.val_every=500`, is stage 9
# (gpu-train-s9.json, 12.9 steps/s). Choose the checkpoint and mask power afterwards on the val split, on
# any machine (recipes/compare_checkpoints.py), then export it (recipes/export_model.py).
# A machine lent in commands of at most 10 minutes: MINUTES for the whole run, OUT on the machine,
# and `--set train.session_minutes=8.5`; each command stops after 8.5 minutes with a resume point and
# the same command again resumes the run's clock (docs/corpus.md).
#   bash recipes/train_denoiser_gpu.sh [MINUTES] [DATA] [OUT] [--set section.key=value ...]
# DATA holds train/{speech,noise} and val/{speech,noise}: corpus/ (built by
# recipes/train_denoiser.sh) or a packed copy of it (recipes/pack_corpus.py), for a GPU machine
# that cannot install the Debian packages or take 1.5 GB.
set -euo pipefail
usage() { sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; }  # the comment above, as help
case "${1:-}" in -h|--help) usage; exit 0;; esac
# An option where MINUTES, DATA or OUT belongs: `12 --set ...` made DATA "--set" (and its value OUT)
for i in 1 2 3; do
  if [[ "${!i:-}" == -* ]]; then
    echo "train_denoiser_gpu.sh: ${!i} where $(echo MINUTES DATA OUT | cut -d' ' -f"$i") belongs; give MINUTES, DATA and OUT before any --set" >&2
    usage >&2; exit 2
  fi
done
cd "$(dirname "$0")/.."
MINUTES=${1:-7}
DATA=${2:-corpus}
OUT=${3:-runs/denoiser-small-gpu}
# The weights a new run starts from (configs/denoiser-small-gpu.toml's train.init_from, or a --set of
# it): an export of an earlier stage, made on the machine that trained that stage. Checked here to
# point at train_denoiser.sh and the copy step; a resume (OUT/last.safetensors) does not read it.
INIT=runs/denoiser-small-stage5.safetensors
args=("${@:4}")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  if [[ "${args[i]}" == --set && "${args[i+1]}" == train.init_from=* ]]; then
    INIT=${args[i+1]#train.init_from=}; INIT=${INIT//\"/}; INIT=${INIT//\'/}
  fi
done
if [[ "$INIT" == *.safetensors && ! -f "$INIT" && ! -f "$OUT/last.safetensors" ]]; then
  echo "train_denoiser_gpu.sh: $INIT, the weights this phase starts from, is missing: run" \
       "recipes/train_denoiser.sh (it exports it), or on a GPU machine of its own copy $INIT here from the" \
       "machine that ran the earlier stages, along with the packed corpus (docs/corpus.md)" >&2
  exit 2
fi
python3 -m audioae.cli train configs/denoiser-small-gpu.toml --out "$OUT" \
  --set train.max_minutes="$MINUTES" --set train.progress=false \
  --set data.clean_dir="\"$DATA/train/speech\"" --set data.noise_dir="\"$DATA/train/noise\"" \
  --set data.val_clean_dir="\"$DATA/val/speech\"" --set data.val_noise_dir="\"$DATA/val/noise\"" \
  "${@:4}"
