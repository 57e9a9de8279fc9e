"""How well does the action optimizer recover the actions behind a real future? (issue 17)

For real episodes (start frame, the next P latent frames' real frames as the target clip, the
T real actions that produced them), every plan starts from a seeded random latent and is
optimized for --steps steps toward the real clip, batched; then its decoded actions are
compared with the real ones. Two routes, on the same plans and seeds:

- ``tokens``: through the plan generator's trajectory-latent cross-attention (MVISTA-4D's route);
- ``actions``: the latent decoded by the trajectory VAE into actions that drive an
  action-conditioned world model (``--world-model``; it must share the generator's autoencoder).

Reported per route: the action MSE per value before and after (random init), the objective
(latent MSE to the target clip) before and after, and two references that need no
optimization: the VAE's own reconstruction of the real actions (the floor of any latent) and
all-zero actions. Medians and means over the plans; one JSON with every plan.

    python scripts/optimizer_recovery.py --data datasets/expert-recovery --plans 16 --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wmpo.data.episodes import EpisodeDataset  # noqa: E402
from wmpo.optimize.planner import Planner, PlannerConfig, PlanRequest  # noqa: E402


def windows(data: list[str], n: int, horizon: int, stride: int, seed: int) -> list[dict]:
    """n (episode, start step) windows with `horizon` actions after the start, seeded."""
    rng = np.random.default_rng(seed)
    eps = [(d, i) for d in data for i in range(len(EpisodeDataset.load(d)))]
    out = []
    for j in rng.permutation(len(eps)):
        d, i = eps[j]
        ep = EpisodeDataset.load(d).episode(i)
        if ep.length < horizon:
            continue
        t0 = int(rng.integers(0, ep.length - horizon + 1))
        out.append({"data": d, "episode": i, "task": ep.meta.get("task"), "t0": t0,
                    "instruction": ep.meta.get("instruction", ep.meta.get("task", "")),
                    "frame": ep.frames[t0], "target": ep.frames[t0 + stride: t0 + horizon + 1: stride],
                    "actions": ep.actions[t0: t0 + horizon]})
        if len(out) == n:
            break
    return out


def run_route(planner: Planner, plans: list[dict], steps: int) -> list[dict]:
    reqs = [PlanRequest(p["frame"], p["instruction"], target_frames=p["target"], seed=k) for k, p in enumerate(plans)]
    problems = planner.prepare(reqs)
    real = torch.as_tensor(np.stack([p["actions"] for p in plans]))
    with torch.no_grad():
        before = ((planner.decode_actions(torch.stack([p.z for p in problems])) - real) ** 2).mean((1, 2))
    t = time.perf_counter()
    for _ in range(steps):
        planner.step(problems)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        after = ((planner.decode_actions(torch.stack([p.z for p in problems])) - real) ** 2).mean((1, 2))
    return [{"action_mse_before": float(b), "action_mse_after": float(a), "objective_first": p.trace[0],
             "objective_last": p.trace[-1], "seconds_per_step_batch": seconds / steps}
            for b, a, p in zip(before, after, problems, strict=True)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="datasets of real episodes (not trained on)")
    ap.add_argument("--generator", default=str(ROOT / "checkpoints" / "plan-generator"))
    ap.add_argument("--trajectory-vae", default=str(ROOT / "checkpoints" / "trajectory-vae"))
    ap.add_argument("--world-model", default=str(ROOT / "checkpoints" / "world-model"))
    ap.add_argument("--plans", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="outputs/optimizer_recovery.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = PlannerConfig(lr=a.lr)
    routes = {"tokens": Planner.load(a.generator, a.trajectory_vae, None, cfg),
              "actions": Planner.load(a.generator, a.trajectory_vae, None, cfg, world_model=a.world_model)}
    base = routes["tokens"]
    plans = windows(a.data, a.plans, base.horizon, base.generator.dit.config.frame_stride, a.seed)
    real = torch.as_tensor(np.stack([p["actions"] for p in plans]))
    with torch.no_grad():
        recon = ((base.decode_actions(base.vae.encode(real)[0]) - real) ** 2).mean((1, 2))
    result: dict = {"config": {**vars(a), "plans": len(plans)}, "references": {
        "vae_reconstruction_mse": [float(x) for x in recon],
        "zero_actions_mse": [float(x) for x in (real ** 2).mean((1, 2))]}, "routes": {}}
    for name, planner in routes.items():
        print(f"[{name}] {len(plans)} plans x {a.steps} steps", flush=True)
        result["routes"][name] = run_route(planner, plans, a.steps)
    result["plans"] = [{k: v for k, v in p.items() if k not in ("frame", "target", "actions")} for p in plans]

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    print(f"\n{len(plans)} real windows of {base.horizon} actions; median (mean) per plan")
    print("| route | action MSE before | after | objective first | last | s per batched step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in result["routes"].items():
        def col(k: str, rows: list[dict] = rows) -> str:
            xs = [r[k] for r in rows]
            return f"{med(xs):.4f} ({statistics.fmean(xs):.4f})"
        print(f"| {name} | {col('action_mse_before')} | {col('action_mse_after')} | {col('objective_first')} | "
              f"{col('objective_last')} | {rows[0]['seconds_per_step_batch']:.2f} |")
    for k, xs in result["references"].items():
        print(f"{k}: {med(xs):.4f} ({statistics.fmean(xs):.4f})")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
