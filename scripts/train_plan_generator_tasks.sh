#!/bin/sh
# The plan generator fine-tuned on the 5 policy tasks (issue 17), with the null plan only on
# windows of episodes that reached their task (--plan-drop-on successes): the instruction-only
# future, the optimizer's target, then learns what doing the task looks like rather than the
# average of play. From the bundled plan generator; 2,000 steps of 16 windows, about 25 minutes
# of one thread. The three datasets are seeded and resumable (rerun to finish a collection):
# the policy's and the noisy expert's as scripts/collect_world_model_data.sh collects them, plus
# 40 scripted-expert episodes per task.
# Background: nohup scripts/train_plan_generator_tasks.sh > runs/plan-generator-tasks.out 2>&1 &
set -e
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
W=${WORKERS:-1}
OUT=${OUT:-runs/plan-generator-tasks/train}
DROP_ON=${DROP_ON:-successes}
wmpo collect --out datasets/wm-policy --tasks policy --source policy --checkpoint checkpoints/policy-base \
    --temperature 1.0 --episodes 30 --seed-start 4000 --workers "$W"
wmpo collect --out datasets/wm-noisy --tasks policy --source noisy --noise-std 0.5 --episodes 40 --seed-start 3000 --workers "$W"
wmpo collect --out datasets/pg-expert --tasks policy --source expert --episodes 40 --seed-start 5000 --workers "$W"
exec wmpo train world-model --data datasets/wm-policy datasets/wm-noisy datasets/pg-expert \
    --autoencoder checkpoints/world-model --init checkpoints/plan-generator \
    --trajectory-vae checkpoints/trajectory-vae --out "$OUT" ${EXPORT:+--export "$EXPORT"} \
    --batch-size 16 --lr 1e-4 --warmup 100 --lr-schedule wsd --steps "${STEPS:-2000}" --window 8 \
    --moving-weight 2 --moving-threshold 0.1 --save-every 100 --eval-every 500 --log-every 25 \
    --plan-drop-on "$DROP_ON" --plan-drop-max 0.8 \
    --data-command "scripts/train_plan_generator_tasks.sh (its three wmpo collect commands)"
