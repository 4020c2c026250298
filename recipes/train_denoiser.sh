#!/usr/bin/env bash
# Train the shipped speech denoiser from scratch and export it into audioae/pretrained/.
#   bash recipes/train_denoiser.sh [MINUTES]
# 1. installs the Debian packages and builds corpus/ (docs/corpus.md), 2. trains
# configs/denoiser-small.toml on one CPU thread for MINUTES of wall time (resumable: rerun to
# continue from runs/denoiser-small/last.safetensors), 3. exports the best checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-75}
if [ ! -f corpus/READY ]; then
  bash recipes/install_corpus_packages.sh
  python recipes/build_corpus.py
fi
audioae train configs/denoiser-small.toml --set train.max_minutes="$MINUTES"
python recipes/export_model.py runs/denoiser-small/best.safetensors audioae/pretrained/denoiser-small.safetensors
