#!/bin/sh
# World model with motion conditioning (issue 15, fourth route): the play fine-tune trained
# further exactly as the self-forcing control (scripts/train_world_model_sf.sh with SF=0: same
# data, steps, schedule, seed), with one change: each generated frame also reads the
# displacement commanded since the last context frame (--motion-conditioning; the new inputs
# start at zero weight, so step 0 is the play fine-tune itself). Resumable the same way.
# Background: nohup scripts/train_world_model_motion.sh > runs/world-model-motion.out 2>&1 &
SF=0 NAME=${NAME:-world-model-motion} EXPORT=${EXPORT:-runs/world-model-motion/export} \
    EXTRA_ARGS="--motion-conditioning" exec "$(dirname "$0")/train_world_model_sf.sh"
