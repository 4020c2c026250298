#!/usr/bin/env bash
# Does the 8 ms of look-ahead help? One random start of a small model (configs/denoiser-tiny-lookahead.toml)
# trained with and without look-ahead on the same batches, side by side on one thread each,
# then both scored on the 48 val mixtures (recipes/compare_checkpoints.py). Needs corpus/.
# SEED picks the random start and the batches (a replicate: another SEED).
#   bash recipes/lookahead_probe.sh [OUT] [SEED]
set -euo pipefail
usage() { sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; }  # the comment above, as help
case "${1:-}" in -h|--help) usage; exit 0;; -*) usage >&2; exit 2;; esac
cd "$(dirname "$0")/.."
OUT=${1:-runs/la-small}
SEED=${2:-0}
mkdir -p "$OUT"
python3 - "$OUT/init.safetensors" "$SEED" <<'PY'
import sys, torch
from audioae.checkpoint import save_checkpoint
from audioae.models import build_model
from audioae.train import load_run_config
torch.manual_seed(int(sys.argv[2]))
run = load_run_config("configs/denoiser-tiny-lookahead.toml")
save_checkpoint(build_model(run.model, {**run.model_config, "lookahead": 0}), sys.argv[1])
PY
for arm in lookahead:128 control:0; do
  python3 -m audioae.cli train configs/denoiser-tiny-lookahead.toml --set train.progress=false \
    --set model.config.lookahead="${arm#*:}" --set train.out_dir="\"$OUT/${arm%%:*}\"" \
    --set train.init_from="\"$OUT/init.safetensors\"" --set train.seed="$SEED" > "$OUT/${arm%%:*}.log" 2>&1 &
done
wait
python3 recipes/compare_checkpoints.py "$OUT"/lookahead/last.safetensors "$OUT"/control/last.safetensors \
  --config configs/denoiser-tiny-lookahead.toml
