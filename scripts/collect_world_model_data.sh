#!/bin/sh
# Action-diverse world-model training data for the policy tasks (see README "World model").
# Resumable: rerun to finish an interrupted collection. About 10 minutes with 2 workers.
set -e
OUT=${OUT:-datasets}
POLICY=${POLICY:-checkpoints/policy-base}
W=${WORKERS:-2}
wmpo collect --out "$OUT/wm-perturbed" --tasks policy --source perturbed --perturb-prob 0.5 --noise-std 0.3 --episodes 60 --seed-start 1000 --workers "$W"
wmpo collect --out "$OUT/wm-random-walk" --tasks policy --source random-walk --episodes 30 --seed-start 2000 --max-steps 80 --workers "$W"
wmpo collect --out "$OUT/wm-noisy" --tasks policy --source noisy --noise-std 0.5 --episodes 40 --seed-start 3000 --workers "$W"
wmpo collect --out "$OUT/wm-policy" --tasks policy --source policy --checkpoint "$POLICY" --temperature 1.0 --episodes 30 --seed-start 4000 --workers "$W"
