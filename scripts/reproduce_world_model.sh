#!/bin/sh
# Reproduce the bundled world model (checkpoints/world-model) from nothing:
#   collect action-diverse MetaWorld data -> train the autoencoder -> train the DiT -> evaluate.
# Full recipe: about 2 hours on 2 CPU cores: data 10 min, autoencoder 12 min, DiT 70 min, eval.
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
wmpo train autoencoder --data "$DATA"/wm-* "$DATA/expert" --out "$RUNS/ae" --steps "${AE_STEPS:-2200}"
wmpo train world-model --data "$DATA"/wm-* "$DATA/expert" --autoencoder "$RUNS/ae" --out "$RUNS/wm" \
    --steps "${WM_STEPS:-6000}" --batch-size 32 --lr 4e-4
wmpo eval world-model --checkpoint "$RUNS/wm" --cases 10 --strip "$RUNS/wm/strip.png" --json "$RUNS/wm/eval.json"
