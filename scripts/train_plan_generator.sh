#!/bin/sh
# The action optimizer's plan generator (issue 17): the bundled world model fine-tuned with plan
# conditioning (trajectory-VAE tokens + the instruction through cross-attention, null plan,
# latent consistency) on the play data. Resumable like the world model v2 run: from
# runs/plan-generator/train/train_state.pt on the same machine, else from the compact state in
# checkpoints/plan-generator (replaced at every save). A new machine rebuilds the play data first
# (`wmpo collect-play`, seeded, ~25 minutes on one core; shared with scripts/train_world_model_v2.sh).
# Background: nohup scripts/train_plan_generator.sh > runs/plan-generator/train.out 2>&1 &
set -e
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${DATA:-datasets/play-v2}
STEPS=${STEPS:-4000}
wmpo collect-play --out "$DATA" --workers "${WORKERS:-1}"
exec wmpo train world-model --data "$DATA/train" --heldout-data "$DATA/heldout" \
    --autoencoder checkpoints/world-model --init checkpoints/world-model \
    --trajectory-vae checkpoints/trajectory-vae --out runs/plan-generator/train --export checkpoints/plan-generator \
    --batch-size 16 --lr 1e-4 --warmup 100 --lr-schedule wsd --steps "$STEPS" --window 8 \
    --moving-weight 2 --moving-threshold 0.1 --save-every 100 --eval-every 200 --log-every 25
