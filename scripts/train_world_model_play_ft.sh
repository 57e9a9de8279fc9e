#!/bin/sh
# World model v2, second route (issue 15): the bundled world model (preset small, patch 4)
# fine-tuned on the task-agnostic play data with per-frame actions. The plan generator's run
# showed that fine-tuning the bundled model on the play data fits both the play tasks and the 7
# held-out tasks better after ~1,000 steps than the from-scratch v2 run after 2,300
# (results/plan-generator/README.md). Resumable like scripts/train_world_model_v2.sh: from
# runs/world-model-play-ft/train/train_state.pt on the same machine, else from the compact state
# in checkpoints/world-model-play-ft (replaced at every save), else from step 0.
# Background: nohup scripts/train_world_model_play_ft.sh > runs/world-model-play-ft/train.out 2>&1 &
set -e
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${DATA:-datasets/play-v2}
STEPS=${STEPS:-3000}
mkdir -p runs/world-model-play-ft
wmpo collect-play --out "$DATA" --workers "${WORKERS:-1}"
exec wmpo train world-model --data "$DATA/train" --heldout-data "$DATA/heldout" \
    --autoencoder checkpoints/world-model --init checkpoints/world-model \
    --out runs/world-model-play-ft/train --export checkpoints/world-model-play-ft \
    --batch-size 16 --lr 1e-4 --warmup 100 --lr-schedule wsd --steps "$STEPS" --window 8 \
    --moving-weight 2 --moving-threshold 0.1 --save-every 100 --eval-every 200 --log-every 25
