#!/bin/sh
# World model with imagined context (issue 15, third route): the play fine-tune
# (checkpoints/world-model-play-ft) trained further on the same play data, with a fraction SF
# of the windows given a recent context the model imagines itself (wmpo train world-model
# --self-forcing). SF=0 is the control: the same steps, data and schedule with real context only.
# Resumable like scripts/train_world_model_play_ft.sh (from runs/$NAME/train/train_state.pt,
# else from the compact state in $EXPORT).
# Background: nohup scripts/train_world_model_sf.sh > runs/world-model-sf/train.out 2>&1 &
#             SF=0 NAME=world-model-sf-control EXPORT=runs/world-model-sf-control/export \
#               nohup scripts/train_world_model_sf.sh > runs/world-model-sf-control.out 2>&1 &
# EXTRA_ARGS: more trainer flags (scripts/train_world_model_motion.sh uses it).
set -e
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${DATA:-datasets/play-v2}
SF=${SF:-0.5}
NAME=${NAME:-world-model-sf}
EXPORT=${EXPORT:-checkpoints/$NAME}
STEPS=${STEPS:-1500}
mkdir -p "runs/$NAME"
wmpo collect-play --out "$DATA" --workers "${WORKERS:-1}"
exec wmpo train world-model --data "$DATA/train" --heldout-data "$DATA/heldout" \
    --autoencoder checkpoints/world-model --init checkpoints/world-model-play-ft \
    --out "runs/$NAME/train" --export "$EXPORT" \
    --batch-size 16 --lr 5e-5 --warmup 50 --lr-schedule wsd --steps "$STEPS" --window 8 \
    --moving-weight 2 --moving-threshold 0.1 --self-forcing "$SF" --self-forcing-steps 8 \
    --save-every 100 --eval-every 250 --log-every 25 $EXTRA_ARGS
