#!/bin/sh
# Reproduce the bundled world model (checkpoints/world-model) from nothing:
#   collect action-diverse MetaWorld data -> train the autoencoder -> train the DiT -> evaluate.
# Full recipe: about 1.5-2 hours on 2 CPU cores (see the manifest for the exact numbers).
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
OUT="$DATA" scripts/collect_world_model_data.sh
wmpo train autoencoder --data "$DATA"/wm-* --out "$RUNS/ae" --steps "${AE_STEPS:-3000}"
wmpo train world-model --data "$DATA"/wm-* --autoencoder "$RUNS/ae" --out "$RUNS/wm" --steps "${WM_STEPS:-5000}"
wmpo eval world-model --checkpoint "$RUNS/wm" --cases 20 --strip "$RUNS/wm/strip.png" --json "$RUNS/wm/eval.json"
