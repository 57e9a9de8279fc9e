#!/usr/bin/env bash
# Serving speed before and after a change, side by side: `scripts/bench_serving.py` of
# revision REV (a git worktree) and of this checkout, alternating, N pairs, on the same
# world-model checkpoint (REV's), with the same settings. Extra arguments go to both runs.
#
#   scripts/bench_serving_compare.sh REV [PAIRS] [-- bench args]
#   scripts/bench_serving_compare.sh ac48424 3 -- --quick --repeats 5 --chunks 4 --requests 40
#
# Results: outputs/bench/compare/{before,after}-I.{json,log} and a summary of medians.
set -euo pipefail
REV=${1:?usage: $0 REV [PAIRS] [-- bench args]}
PAIRS=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
[ "${1:-}" = "--" ] && shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
OUT=$ROOT/outputs/bench/compare
BEFORE=$(mktemp -d)/before
git -C "$ROOT" worktree add -f --detach "$BEFORE" "$REV" >/dev/null
trap 'git -C "$ROOT" worktree remove --force "$BEFORE"' EXIT
mkdir -p "$OUT"
for i in $(seq 1 "$PAIRS"); do
  for side in before after; do
    dir=$ROOT; [ "$side" = before ] && dir=$BEFORE
    (cd "$dir" && MUJOCO_GL=egl PYTHONPATH="$dir:$dir/clients/python" "$PY" scripts/bench_serving.py \
      --checkpoint "$BEFORE/checkpoints/world-model" --out "$OUT/$side-$i.json" "$@" > "$OUT/$side-$i.log" 2>&1)
    echo "$side $i done $(date +%T)"
  done
done
"$PY" - "$OUT" <<'PYEOF'
import glob, json, statistics, sys
cols = ("batched frames/s", "batch-1 frames/s", "batching speedup", "HTTP overhead %", "gRPC overhead %")
print("| side | " + " | ".join(cols) + " |")
print("| --- |" + " --- |" * len(cols))
for side in ("before", "after"):
    runs = []
    for path in sorted(glob.glob(f"{sys.argv[1]}/{side}-*.json")):
        d = json.load(open(path))
        b, t = d["batching"], d["transports"]["overhead"]
        runs.append((b["frames_per_second_median"]["batched"], b["frames_per_second_median"]["single"],
                     b["speedup"], t["http"]["percent_of_in_process"], t["grpc"]["percent_of_in_process"]))
    for run in runs:
        print(f"| {side} | " + " | ".join(f"{x:.2f}" for x in run) + " |")
    print(f"| {side}, median of {len(runs)} | " + " | ".join(f"{statistics.median(c):.2f}" for c in zip(*runs)) + " |")
PYEOF
