#!/usr/bin/env bash
# Train the shipped speech denoiser from scratch, stage by stage as its model card tells
# (audioae/pretrained/denoiser-small.md; the numbers below are the card's stages).
#   bash recipes/train_denoiser.sh [MINUTES] [FINETUNE_MINUTES] [MORE_MINUTES] [DF_MINUTES] [DF_DECAY_MINUTES] \
#       [DF_MORE_MINUTES] [DF5_MINUTES] [PERCEPTUAL_MINUTES] [WIDEN_MINUTES] [GPU_MINUTES] [BABBLE_MINUTES] \
#       [EMA_MINUTES] [GPU2_MINUTES] [AUDIBLE_MINUTES]
# Each stage's export is written to runs/denoiser-small-stageN.safetensors (N = 3..10), never into
# the package. Only a run that completed stage 10 installs its export over the shipped
# audioae/pretrained/denoiser-small.safetensors; a shorter run (no CUDA GPU: it ends after stage 5)
# leaves the shipped model alone, and the recipe's last line says which happened.
# 0. installs the Debian packages and builds corpus/ (docs/corpus.md);
# 1. the GRU mask model (configs/denoiser-small.toml): MINUTES of wall time at lr 2e-3 on one
#    CPU thread, FINETUNE_MINUTES at lr 5e-4 and MORE_MINUTES at lr 4e-4 on two threads;
# 2. grows it into the deep-filter model (configs/denoiser-small-df.toml, train.init_from:
#    function-preserving) and trains DF_MINUTES at lr 1e-3 on one thread, then
#    DF_DECAY_MINUTES on two threads with the rate decaying (cosine) from 1e-3 to 5e-5, then
#    DF_MORE_MINUTES on one thread decaying from 5e-4 to 3e-5;
# 3. grows its 3-tap filter into a 5-tap one (configs/denoiser-small-df5.toml, function-preserving)
#    and trains DF5_MINUTES on one thread decaying from 5e-4 to 3e-5 over 9,000 steps, then
#    exports that run's best checkpoint (by validation SI-SDR) with the mask power chosen on the
#    validation split (recipes/compare_checkpoints.py --mask-power ...);
# 4. doubles the training babble (build_corpus.py --stages babble_extra) and fine-tunes stage 3
#    for PERCEPTUAL_MINUTES on one thread with differentiable PESQ and STOI terms and the mask
#    power in the loop (configs/denoiser-small-perceptual.toml; needs the `train` extra), then
#    exports that run's last checkpoint, chosen on the validation split;
# 5. widens that network's GRUs from 192 to 224 units (configs/denoiser-small-w224.toml,
#    function-preserving) and trains WIDEN_MINUTES more with stage 4's loss on one thread, then
#    exports that run's last checkpoint, chosen on the validation split.
# 6. adds the impacts noise family (build_corpus.py --stages synthetic, with or without a GPU);
#    on a CUDA GPU only: trains stage 5 GPU_MINUTES at batch 256 with stage 4's loss and 30%
#    two-noise examples (recipes/train_denoiser_gpu.sh, configs/denoiser-small-gpu.toml), then
#    exports that run's last weights 0.7 of the way from stage 5's (chosen on the validation
#    split). Without a GPU the recipe ends after stage 5 and says so; on a GPU machine of its own,
#    copy runs/denoiser-small-stage5.safetensors there with a packed copy of the corpus and run
#    recipes/train_denoiser_gpu.sh, which starts from that file. (The shipped stage ran on an H200
#    from a packed copy of the corpus: docs/corpus.md.)
# 7. after stage 6 (so also only with a GPU): trains it BABBLE_MINUTES more on one CPU thread with
#    babble drawn twice as often and SNRs of -10..15 dB (configs/denoiser-small-babble.toml),
#    then exports that run's best checkpoint halfway from stage 6's weights (chosen on the
#    validation split);
# 8. trains stage 7 EMA_MINUTES more on one CPU thread at lr 3e-4 with larger PESQ and STOI
#    weights and a moving average of the weights (configs/denoiser-small-s8.toml), and exports
#    the average;
# 9. trains stage 8 GPU2_MINUTES on the GPU with the same loss weights and average, then exports
#    that run's last weights 0.7 of the way from stage 8's with mask power 0.7 (chosen on the
#    validation split: benchmarks/results/denoiser-selection-s9.jsonl);
# 10. trains stage 9 AUDIBLE_MINUTES more on two CPU threads with the audible pink, brown and
#    modulated noise drawn twice as often (configs/denoiser-small-audible.toml), then exports that
#    run's moving average with mask power 0.7 (chosen on the validation split:
#    benchmarks/results/denoiser-selection-audible.jsonl). The shipped stages 1-9 trained on
#    coloured noise without synthetic.AUDIBLE_HZ's cut, which this recipe does not make (model card).
# Every phase resumes from its run folder's last.safetensors when rerun, and a phase that already
# ran to its end trains nothing again (a rerun with the same settings, MINUTES aside, and no more
# minutes than it ran): rerun from the top after a stop, it goes on in the stage it stopped in.
set -euo pipefail
usage() { sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; }  # the comment above, as help
case "${1:-}" in -h|--help) usage; exit 0;; -*) usage >&2; exit 2;; esac
cd "$(dirname "$0")/.."
MINUTES=${1:-80}
FINETUNE_MINUTES=${2:-12}
MORE_MINUTES=${3:-21}
DF_MINUTES=${4:-46}
DF_DECAY_MINUTES=${5:-25}
DF_MORE_MINUTES=${6:-38}
DF5_MINUTES=${7:-50}
PERCEPTUAL_MINUTES=${8:-72}
WIDEN_MINUTES=${9:-75}
GPU_MINUTES=${10:-6}
BABBLE_MINUTES=${11:-80}
EMA_MINUTES=${12:-35}
GPU2_MINUTES=${13:-7.5}
AUDIBLE_MINUTES=${14:-70}
MASK_POWER=${MASK_POWER:-0.8}  # chosen on the val split: recipes/compare_checkpoints.py --mask-power 0.8 0.9
# Stages 6 and 7's loss terms come with the `train` extra (torch-pesq, torch-stoi); the corpus
# build's silence trimming with the `recipes` extra (librosa).
python -c "import torch_pesq, torch_stoi, librosa" 2>/dev/null || pip install -e '.[train,recipes]'
if [ ! -f corpus/READY ]; then
  # apt-get needs root: sudo when this shell is not root already.
  if [ "$(id -u)" -eq 0 ]; then bash recipes/install_corpus_packages.sh; else sudo bash recipes/install_corpus_packages.sh; fi
  python recipes/build_corpus.py --ready
fi
audioae train configs/denoiser-small.toml --set train.max_minutes="$MINUTES"
audioae train configs/denoiser-small.toml --set train.max_minutes="$FINETUNE_MINUTES" \
  --set train.lr=5e-4 --set train.threads=2
audioae train configs/denoiser-small.toml --set train.max_minutes="$MORE_MINUTES" \
  --set train.lr=4e-4 --set train.threads=2
audioae train configs/denoiser-small-df.toml --set train.max_minutes="$DF_MINUTES"
audioae train configs/denoiser-small-df.toml --set train.max_minutes="$DF_DECAY_MINUTES" \
  --set train.threads=2 --set train.lr_final=5e-5 --set train.decay_steps=6000
audioae train configs/denoiser-small-df.toml --set train.max_minutes="$DF_MORE_MINUTES" \
  --set train.lr=5e-4 --set train.lr_final=3e-5 --set train.decay_steps=7000
audioae train configs/denoiser-small-df5.toml --set train.max_minutes="$DF5_MINUTES"
python recipes/export_model.py runs/denoiser-small-df5/best.safetensors runs/denoiser-small-stage3.safetensors \
  --set mask_power="$MASK_POWER"
python recipes/build_corpus.py --stages babble_extra
audioae train configs/denoiser-small-perceptual.toml --set train.max_minutes="$PERCEPTUAL_MINUTES"
python recipes/export_model.py runs/denoiser-small-perceptual/last.safetensors runs/denoiser-small-stage4.safetensors
audioae train configs/denoiser-small-w224.toml --set train.max_minutes="$WIDEN_MINUTES"
python recipes/export_model.py runs/denoiser-small-w224/last.safetensors runs/denoiser-small-stage5.safetensors
# stage 6's noise (impacts): built here, with or without a GPU, as a packed copy of corpus/ needs it
python recipes/build_corpus.py --stages synthetic
SHIPPED=audioae/pretrained/denoiser-small.safetensors
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "train_denoiser.sh: stopped after stage 5, its export in runs/denoiser-small-stage5.safetensors: stages 6-10" \
       "need a CUDA GPU. $SHIPPED (the shipped stage 10) is unchanged; to use stage 5 instead: audioae denoise" \
       "--model runs/denoiser-small-stage5.safetensors ... To train stage 6 on a GPU machine, copy" \
       "runs/denoiser-small-stage5.safetensors there with a packed copy of corpus/ (docs/corpus.md) and run" \
       "recipes/train_denoiser_gpu.sh, which starts from that file" >&2
  exit 0
fi
# train_denoiser_gpu.sh starts from stage 5's export (configs/denoiser-small-gpu.toml); said here too
bash recipes/train_denoiser_gpu.sh "$GPU_MINUTES" corpus runs/denoiser-small-gpu \
  --set train.init_from='"runs/denoiser-small-stage5.safetensors"'
python recipes/export_model.py runs/denoiser-small-gpu/last.safetensors runs/denoiser-small-stage6.safetensors \
  --base runs/denoiser-small-stage5.safetensors --alpha 0.7
audioae train configs/denoiser-small-babble.toml --set train.max_minutes="$BABBLE_MINUTES"
python recipes/export_model.py runs/denoiser-small-babble/best.safetensors runs/denoiser-small-stage7.safetensors \
  --base runs/denoiser-small-stage6.safetensors --alpha 0.5
audioae train configs/denoiser-small-s8.toml --set train.max_minutes="$EMA_MINUTES"
python recipes/export_model.py runs/denoiser-small-s8/ema.safetensors runs/denoiser-small-stage8.safetensors
bash recipes/train_denoiser_gpu.sh "$GPU2_MINUTES" corpus runs/denoiser-small-gpu2 \
  --set train.init_from='"runs/denoiser-small-stage8.safetensors"' --set train.pesq_weight=0.05 \
  --set train.stoi_weight=0.6 --set train.ema_decay=0.999 --set train.val_every=500
python recipes/export_model.py runs/denoiser-small-gpu2/last.safetensors runs/denoiser-small-stage9.safetensors \
  --base runs/denoiser-small-stage8.safetensors --alpha 0.7 --set mask_power=0.7
audioae train configs/denoiser-small-audible.toml --set train.max_minutes="$AUDIBLE_MINUTES"
python recipes/export_model.py runs/denoiser-small-audible/ema.safetensors runs/denoiser-small-stage10.safetensors \
  --set mask_power=0.7
# every stage ran: this is the shipped model retrained, so it takes the shipped one's place, exported
# as stage 10 was (an export of the export would nest its metadata one level deeper)
python recipes/export_model.py runs/denoiser-small-audible/ema.safetensors "$SHIPPED" --set mask_power=0.7
echo "train_denoiser.sh: all 10 stages ran; $SHIPPED now holds this run's stage 10" \
     "(runs/denoiser-small-stage10.safetensors); 'git checkout $SHIPPED*' restores the shipped one" >&2
