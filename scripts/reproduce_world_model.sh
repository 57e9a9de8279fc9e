#!/bin/sh
# Reproduce the bundled world model (checkpoints/world-model) from nothing:
#   collect action-diverse MetaWorld data -> train the autoencoder -> train the DiT -> evaluate.
# Full recipe: about 3.5 hours on 2 CPU cores: data 15 min, autoencoder 12 min, DiT 70 min,
# DiT fine-tune 75 min, evals 15 min.
# QUICK=1: a few-minute smoke recipe (small data, short training; numbers are not meaningful).
# Background-friendly: every stage logs to runs/<name>/train_log.jsonl and resumes when rerun.
set -e
export PATH="$PWD/.venv/bin:$PATH"
RUNS=${RUNS:-runs}
if [ "${QUICK:-0}" = "1" ]; then
    DATA=${DATA:-$RUNS/quick-data}
    wmpo collect --out "$DATA/wm-perturbed" --tasks push-v3,door-open-v3 --source perturbed --episodes 6 --seed-start 1000
    wmpo collect --out "$DATA/wm-random-walk" --tasks push-v3,door-open-v3 --source random-walk --episodes 4 --seed-start 2000 --max-steps 80
    wmpo train autoencoder --data "$DATA"/wm-* --out "$RUNS/quick-ae" --steps 200
    wmpo train world-model --data "$DATA"/wm-* --autoencoder "$RUNS/quick-ae" --out "$RUNS/quick-wm" --steps 300 --batch-size 16
    wmpo eval world-model --checkpoint "$RUNS/quick-wm" --tasks push-v3 --cases 4 --json "$RUNS/quick-wm/eval.json"
    exit 0
fi
DATA=${DATA:-datasets}
# The policy rollouts in the world-model data come from a base policy; the bundled world model
# used an earlier 5-demo policy (its sha is in datasets/wm-policy/meta/manifest.json).
OUT="$DATA" scripts/collect_world_model_data.sh
wmpo collect --out "$DATA/expert" --tasks policy --source expert --episodes 100
BASE_DATA="$DATA/wm-perturbed $DATA/wm-random-walk $DATA/wm-noisy $DATA/wm-policy $DATA/expert"
# shellcheck disable=SC2086
wmpo train autoencoder --data $BASE_DATA --out "$RUNS/ae" --steps "${AE_STEPS:-2200}"
# shellcheck disable=SC2086
wmpo train world-model --data $BASE_DATA --autoencoder "$RUNS/ae" --out "$RUNS/wm" \
    --steps "${WM_STEPS:-6000}" --batch-size 32 --lr 4e-4
# The bundled checkpoint's second stage: 6000 more steps from the first, with 300 more
# random-walk episodes (the bundled base stopped at 5000 of 6000 steps: WM_STEPS=5000 matches it).
wmpo collect --out "$DATA/wm-random-walk-2" --tasks policy --source random-walk --episodes 60 \
    --seed-start 5000 --max-steps 80 --workers "${WORKERS:-2}"
# shellcheck disable=SC2086
wmpo train world-model --data $BASE_DATA "$DATA/wm-random-walk-2" --autoencoder "$RUNS/wm" --init "$RUNS/wm" \
    --out "$RUNS/wm-ft" --steps "${FT_STEPS:-6000}" --batch-size 32 --lr 3e-4 --save-every 250
for G in 1 3; do
    wmpo eval world-model --checkpoint "$RUNS/wm-ft" --cases 8 --action-guidance "$G" \
        --strip "$RUNS/wm-ft/strip_g$G.png" --json "$RUNS/wm-ft/eval_g$G.json"
done
