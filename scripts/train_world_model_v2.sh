#!/bin/sh
# World model v2 (issue 15): task-agnostic play data over 43 MetaWorld tasks (7 held out),
# then the long, resumable DiT training. One command for every session and every machine:
#   1. collect-play is seeded and resumable: it rebuilds the same data on a new machine and
#      skips what is already on disk (about 25 minutes on one core the first time);
#   2. the trainer resumes exactly from runs/world-model-v2/train/train_state.pt when it is
#      there (same machine), else from the compact state in checkpoints/world-model-v2 (the
#      repository), else starts at step 0. Every --save-every steps it replaces
#      checkpoints/world-model-v2 (usable fp16 EMA world model + resume state, ~14 MB).
# Background: nohup scripts/train_world_model_v2.sh > runs/world-model-v2/train.out 2>&1 &
# Threads: OMP_NUM_THREADS (default 1: the dev machines' 2 cores are shared).
set -e
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${DATA:-datasets/play-v2}
OUT=${OUT:-runs/world-model-v2/train}
EXPORT=${EXPORT:-checkpoints/world-model-v2}
STEPS=${STEPS:-20000}
mkdir -p "$OUT"
wmpo collect-play --out "$DATA" --workers "${WORKERS:-1}"
exec wmpo train world-model --data "$DATA/train" --heldout-data "$DATA/heldout" \
    --autoencoder checkpoints/world-model --out "$OUT" --export "$EXPORT" \
    --preset play --batch-size 16 --lr 2e-4 --warmup 500 --lr-schedule wsd --steps "$STEPS" \
    --moving-weight 2 --moving-threshold 0.1 --save-every 50 --eval-every 100 --log-every 50
