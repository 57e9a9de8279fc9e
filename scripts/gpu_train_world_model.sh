#!/usr/bin/env bash
# A short GPU burst of the world model's training (issue 15), for a machine with an NVIDIA GPU and
# a CUDA torch but without MetaWorld or the episodes: the data travels as one packed latent file.
#
# Where the episodes are (any machine after `make setup` and `wmpo collect-play`):
#     wmpo export latents --data datasets/play-v2/train --autoencoder checkpoints/world-model \
#         --out .gpu/train.npz
#     wmpo export latents --data datasets/play-v2/heldout --autoencoder checkpoints/world-model \
#         --out .gpu/heldout.npz
# On the GPU machine, from the repository root (torch, numpy, safetensors and tqdm are all it needs):
#     scripts/gpu_train_world_model.sh PACK_DIR OUT_DIR [BUDGET_SECONDS]
#
# It fine-tunes checkpoints/world-model-v2 (the CPU run's EMA) at batch 256 under bf16 autocast
# for BUDGET_SECONDS (default 420): after 60 steps the run's length, and with it the wsd schedule's
# decay, is fixed to what fits. OUT_DIR/world-model-v3 is replaced every 1000 steps (the usable
# fp16 world model + compact resume state) and OUT_DIR/train_log.jsonl holds the log.
set -euo pipefail
PACK="${1:?packed latent directory (train.npz, heldout.npz)}"
OUT="${2:?output directory}"
BUDGET="${3:-420}"
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
RUN=/tmp/wmpo-gpu-train
rm -rf "$RUN"
status=0
"$PY" -m wmpo.cli train world-model --data "$PACK/train.npz" --heldout-data "$PACK/heldout.npz" \
    --autoencoder checkpoints/world-model --init checkpoints/world-model-v2 --out "$RUN" \
    --export "$OUT/world-model-v3" --device cuda --time-budget "$BUDGET" \
    --batch-size 256 --lr 4e-4 --warmup 300 --lr-schedule wsd --steps 1000000 \
    --moving-weight 2 --moving-threshold 0.1 --save-every 1000 --eval-every 500 --log-every 100 \
    --val-batch 16 --data-command "wmpo collect-play --out datasets/play-v2 --scale 1" || status=$?
cp "$RUN/train_log.jsonl" "$OUT/" 2>/dev/null || true
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
exit "$status"
