"""Collection throughput in the real simulator: frames/s with 1 and 2 worker processes.

Runs the same scripted-expert collection (same tasks and seeds) with 1 and then 2 workers,
side by side in one run, several times, and reports medians and the ratio.

    python scripts/bench_collect.py [--episodes 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile

from wmpo.data.collect import CollectConfig, collect
from wmpo.envs.tasks import POLICY_TASKS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    fps: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(a.repeats):
        for workers in (1, 2):
            out = tempfile.mkdtemp(prefix="wmpo-bench-")
            try:
                s = collect(CollectConfig(out=out, tasks=list(POLICY_TASKS), episodes=a.episodes,
                                          workers=workers), progress=False)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            fps[workers].append(s["frames"] / s["seconds"])
    med = {w: statistics.median(v) for w, v in fps.items()}
    print(json.dumps({"frames_per_second_median": med, "runs": fps,
                      "speedup_2_workers": med[2] / med[1],
                      "note": "includes worker start-up (spawn, imports) in the time"}, indent=2))


if __name__ == "__main__":
    main()
