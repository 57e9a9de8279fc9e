#!/bin/sh
# A candidate world model next to the bundled one on issue 15's held-out rows, in one command:
# judge F1 per task on its imagined replays (the bundled judge), pixel fidelity of those replays
# (whole frame and moving pixels, scripts/replay_fidelity.py), and counterfactual action following
# (wmpo eval world-model, 12 cases per policy task). The test sets are the ones of
# results/world-model-ceiling (seeded; rebuilt when missing). Everything is written to OUT.
#
#   scripts/eval_world_model_candidate.sh runs/my-world-model results/my-world-model/eval
#
# BASELINE (default checkpoints/world-model) is evaluated the same way, with the same seeds, unless
# BASELINE=none. JUDGE (default checkpoints/judge) reads the candidate's replays, BASELINE_JUDGE
# (default: the same) the baseline's: a world model with the judge retrained on its replays
# (scripts/retrain_judge.sh). About 13 min per model on 2 idle cores (the 200- and 90-episode
# imaginations, one thread each side by side, 4 min; the judge and fidelity 2 min; action
# following 3-6 min).
# Run nothing else beside it: the 2-thread steps slow several-fold on a shared core.
set -e
[ $# -eq 2 ] || { echo "usage: $0 CHECKPOINT OUT_DIR" >&2; exit 2; }
CKPT=$1
OUT=$2
BASELINE=${BASELINE:-checkpoints/world-model}
JUDGE=${JUDGE:-checkpoints/judge}
BASELINE_JUDGE=${BASELINE_JUDGE:-$JUDGE}
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
[ -f "$CKPT/config.json" ] || { echo "$CKPT: not a world model checkpoint (no config.json)" >&2; exit 2; }
mkdir -p "$OUT"

# The held-out test sets (collect skips the episodes already on disk).
OMP_NUM_THREADS=1 wmpo collect --out datasets/judge-test --tasks policy --source policy \
    --checkpoint checkpoints/policy-base --temperature 1.0 --episodes 40 --seed-start 40000 --workers 2
OMP_NUM_THREADS=1 wmpo collect --out datasets/judge-test-noisy --tasks door-open-v3,push-v3,pick-place-v3 \
    --source noisy --noise-std 0.4 --episodes 30 --seed-start 42000 --workers 2

evaluate() {  # $1 checkpoint, $2 tag, $3 judge; replays are kept per weights (reused only for the same sha)
    sha=$(sha256sum "$1/model.safetensors" | cut -c1-12)
    for d in judge-test judge-test-noisy; do
        if [ ! -f "datasets/$d-imagined-$sha/meta/manifest.json" ]; then
            rm -rf "datasets/$d-imagined-$sha"
            OMP_NUM_THREADS=1 wmpo imagine-dataset --data "datasets/$d" --out "datasets/$d-imagined-$sha" \
                --world-model "$1" --seed 2 &
            pids="$pids $!"
        fi
    done
    for p in $pids; do wait "$p"; done  # each job's status: a failed imagination stops the script
    pids=
    OMP_NUM_THREADS=2 wmpo eval judge --checkpoint "$3" --data "datasets/judge-test-imagined-$sha" \
        "datasets/judge-test-noisy-imagined-$sha" --json "$OUT/judge-imagined-$2.json"
    for d in judge-test judge-test-noisy; do
        python scripts/replay_fidelity.py --real "datasets/$d" --replays "datasets/$d-imagined-$sha" \
            --json "$OUT/fidelity-$d-$2.json"
    done
    OMP_NUM_THREADS=2 wmpo eval world-model --checkpoint "$1" --tasks policy --cases 12 \
        --json "$OUT/action-following-$2.json"
}

evaluate "$CKPT" candidate "$JUDGE"
[ "$BASELINE" = none ] || evaluate "$BASELINE" baseline "$BASELINE_JUDGE"
echo "written to $OUT: judge-imagined-*.json, fidelity-*.json, action-following-*.json"
