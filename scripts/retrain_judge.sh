#!/bin/sh
# The bundled judge's recipe (results/judge-retrain/) for any world model, in one command: real
# rollouts of the base policy, the noisy expert and four weaker policies (d1, d3, d10, d30: 1-30
# demonstrations per task), each once more as this world model's imagined replay, and a success
# classifier trained on all of them (threshold chosen on validation, real and imagined).
#
#   scripts/retrain_judge.sh checkpoints/world-model runs/judge-tasks
#
# Everything it builds is reused when present: datasets (collect skips episodes on disk), the
# policies (runs/policies/dN), and replays (kept per world model weights: *-imagined-<sha12>).
# Cost on 2 idle cores from nothing, as measured (2026-12-07): 70 min (collection 11, the four
# policies 25, imagination 12, the judge 22 of which 5.5 are its autoencoder reconstructions).
set -e
[ $# -eq 2 ] || { echo "usage: $0 WORLD_MODEL OUT_DIR" >&2; exit 2; }
WM=$1
OUT=$2
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
[ -f "$WM/config.json" ] || { echo "$WM: not a world model checkpoint (no config.json)" >&2; exit 2; }
sha=$(sha256sum "$WM/model.safetensors" | cut -c1-12)

collect() { OMP_NUM_THREADS=1 wmpo collect --workers 2 "$@"; }
collect --out datasets/judge-train --tasks policy --source policy --checkpoint checkpoints/policy-base \
    --temperature 1.0 --episodes 60 --seed-start 20000
collect --out datasets/judge-val --tasks policy --source policy --checkpoint checkpoints/policy-base \
    --temperature 1.0 --episodes 24 --seed-start 30000
collect --out datasets/judge-train-noisy --tasks policy --source noisy --noise-std 0.4 --episodes 24 \
    --seed-start 21000
collect --out datasets/expert --tasks policy --source expert --episodes 40

# The four weaker policies (results/policy-imagination/), two at a time on one thread each.
policy() {
    [ -f "runs/policies/d$1/model.safetensors" ] && return 0
    OMP_NUM_THREADS=1 wmpo train policy --data datasets/expert --out "runs/policies/d$1" \
        --demos-per-task "$1" --steps 2000 > "runs/policies/d$1.log" 2>&1
}
mkdir -p runs/policies
for pair in "1 3" "10 30"; do
    pids=
    for n in $pair; do policy "$n" & pids="$pids $!"; done
    for p in $pids; do wait "$p"; done  # each job's status: a failed training stops the script
done
for n in 1 3 10 30; do
    collect --out "datasets/judge-train-d$n" --tasks policy --source policy --checkpoint "runs/policies/d$n" \
        --temperature 1.0 --episodes 12 --seed-start $((24000 + 100 * n))
done

imagine() {  # $1 dataset, $2 seed: this world model's replays, two datasets at a time
    dst="datasets/$1-imagined-$sha"
    [ -f "$dst/meta/manifest.json" ] && return 0
    rm -rf "$dst"
    OMP_NUM_THREADS=1 wmpo imagine-dataset --data "datasets/$1" --out "$dst" --world-model "$WM" \
        --seed "$2" > "$dst.log" 2>&1
}
for pair in "judge-train:0 judge-val:1" "judge-train-d1:0 judge-train-d3:0" "judge-train-d10:0 judge-train-d30:0"; do
    pids=
    for item in $pair; do imagine "${item%:*}" "${item#*:}" & pids="$pids $!"; done
    for p in $pids; do wait "$p"; done
done

data="datasets/judge-train datasets/judge-train-noisy datasets/judge-train-imagined-$sha"
for n in 1 3 10 30; do data="$data datasets/judge-train-d$n datasets/judge-train-d$n-imagined-$sha"; done
# shellcheck disable=SC2086  # the dataset list is meant to split
OMP_NUM_THREADS=2 wmpo train judge --data $data --val-data datasets/judge-val "datasets/judge-val-imagined-$sha" \
    --out "$OUT" --steps 1500 --world-model "$WM"
echo "judge written to $OUT (world model $WM, sha $sha)"
