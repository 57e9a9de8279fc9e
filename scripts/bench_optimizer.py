"""Latency and batched throughput of the action optimizer's planner on this machine.

Measured side by side in one run, medians over repeats (the dev machines are shared and noisy):
- one plan's latency at ``--steps`` optimization steps (e.g. 100 from a random latent, 15 from
  the policy's chunks), split into prepare / optimize / finish;
- plans per second with 1 plan at a time vs ``--concurrent`` plans optimized together (one
  batched forward + backward per step, as the service's engine runs them).

    python scripts/bench_optimizer.py --generator checkpoints/plan-generator \\
        --trajectory-vae checkpoints/trajectory-vae --inverse-dynamics checkpoints/inverse-dynamics
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from wmpo.optimize.planner import Planner, PlannerConfig, PlanRequest


def requests(planner: Planner, n: int, steps: int, seed: int) -> list[PlanRequest]:
    rng = np.random.default_rng(seed)
    size = planner.image_size
    return [PlanRequest(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "press the button",
                        steps=steps, seed=seed + i) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", required=True)
    ap.add_argument("--trajectory-vae", required=True)
    ap.add_argument("--inverse-dynamics", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=[15, 100])
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--throughput-steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    planner = Planner.load(a.generator, a.trajectory_vae, a.inverse_dynamics, PlannerConfig())
    planner.plan(requests(planner, 1, 1, 0))  # warm-up (and the instruction's embedding)
    out: dict[str, object] = {"threads": a.threads, "provenance": planner.provenance()}
    for steps in a.steps:
        runs = [planner.plan(requests(planner, 1, steps, 100 + r))[0].timing for r in range(a.repeats)]
        out[f"latency_{steps}_steps"] = {k: round(statistics.median(t[k] for t in runs), 3) for k in runs[0]}
    per: dict[int, float] = {}
    for n in (1, a.concurrent):
        rates = []
        for r in range(a.repeats):
            t0 = time.perf_counter()
            planner.plan(requests(planner, n, a.throughput_steps, 1000 + r))
            rates.append(n / (time.perf_counter() - t0))
        per[n] = statistics.median(rates)
    out["plans_per_second"] = {str(n): round(v, 3) for n, v in per.items()}
    out["batching_speedup"] = round(per[a.concurrent] / per[1], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
