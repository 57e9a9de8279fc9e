"""Does the plan generator's instruction-only future show the task done? (issue 17)

The action optimizer's main mode aims at the future the plan generator imagines from the
instruction alone (the null plan). Where that future does not show the task being done,
optimizing toward it can only take the policy's chunk away from success: the explanation the
closed-loop results give for the full method's loss. This measures it directly.

For real episodes that succeed (e.g. scripted-expert episodes on layouts no model trained on),
each window starts ``--lead`` env steps before the real success, so a successful continuation
exists and is inside the plan's horizon (T env steps). The success judge reads, per window:

- ``real``: the real frames from the window's start to the success frame (the judge's ceiling);
- ``instruction``: the plan generator's instruction-only future (the optimizer's target);
- ``real-plan``: the plan generator conditioned on the real actions' trajectory latent (what
  the plan tokens can show when given the right plan);
- ``world-model``: an action-conditioned world model imagining the real actions (a reference:
  the imagination the judge was trained on).

Past the real success the actions are padded with zeros (the episode ended there). Control
windows start at the episode's first frame where the success is more than ``T + --lead`` env
steps away (nothing in the window should look done). Rates per task with 95% Wilson
intervals; one JSON with every window and sample.

    python scripts/plan_target_check.py --data datasets/plan-target-expert --samples 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wmpo.data.episodes import EpisodeDataset  # noqa: E402
from wmpo.eval.stats import wilson_interval  # noqa: E402
from wmpo.judge.success import SuccessJudge  # noqa: E402
from wmpo.optimize.planner import TARGET_SEED_OFFSET, Planner, PlanRequest  # noqa: E402
from wmpo.sampling.plan import imagine_plan  # noqa: E402
from wmpo.sampling.world_model import TorchWorldModel  # noqa: E402

ROWS = ("real", "instruction", "real-plan", "world-model")


def windows(data: list[str], horizon: int, lead: int) -> list[dict]:
    """A 'done' window per successful episode (start ``lead`` steps before the success) and a
    'control' window at its first frame where the success lies beyond ``horizon + lead``."""
    out = []
    for d in data:
        ds = EpisodeDataset.load(d)
        for i in range(len(ds)):
            ep = ds.episode(i)
            if not ep.succeeded:
                continue
            s = int(np.flatnonzero(ep.success)[0])  # the frame index of the first success
            starts = [("done", max(0, s - lead))]
            if s > horizon + lead:
                starts.append(("control", 0))
            for kind, t0 in starts:
                acts = np.zeros((horizon, 4), np.float32)
                real = ep.actions[t0: t0 + horizon]
                acts[: len(real)] = real
                out.append({"data": d, "episode": i, "task": ep.meta.get("task"), "kind": kind, "t0": t0,
                            "success_step": s, "instruction": ep.meta.get("instruction", ep.meta.get("task", "")),
                            "frame": ep.frames[t0], "real_frames": ep.frames[t0: min(t0 + horizon, s) + 1],
                            "actions": acts})
    return out


def futures(planner: Planner, world_model: TorchWorldModel, wins: list[dict], seed: int) -> dict[str, list]:
    """The three imagined futures of every window as (n, H, W, 3) uint8 videos with the start
    frame first, one batched generation per row."""
    gen = planner.generator
    b = len(wins)
    start = gen.encode(np.stack([w["frame"] for w in wins]))
    text = planner.text([w["instruction"] for w in wins])
    seeds = [seed * 100_003 + k for k in range(b)]
    # The instruction-only target exactly as the planner makes it (its seed offset undone, so
    # the target's noise is `seeds`, as the real-plan row's).
    problems = planner.prepare([PlanRequest(w["frame"], w["instruction"], seed=s - TARGET_SEED_OFFSET)
                                for w, s in zip(wins, seeds, strict=True)])
    instr = torch.stack([p.target for p in problems])
    sampler = replace(gen.sampler, steps=planner.config.target_steps)  # as the planner's target
    with torch.no_grad():
        real_actions = torch.as_tensor(np.stack([w["actions"] for w in wins]))
        tokens = planner.vae.encode(real_actions)[0]
        plan = imagine_plan(gen.dit, start, tokens, torch.ones(b, dtype=torch.bool), text, seeds, sampler,
                            planner.chunks, planner.chunk_frames)
        rollouts = world_model.start(np.stack([w["frame"] for w in wins]), seeds)
        k = planner.vae.cfg.chunk_length
        wm = torch.cat([world_model.step(rollouts, real_actions[:, j: j + k].numpy())
                        for j in range(0, real_actions.shape[1], k)], 1)
    first = np.stack([w["frame"] for w in wins])[:, None]
    return {name: list(np.concatenate([first, gen.decode(z) if name != "world-model" else world_model.decode(z)], 1))
            for name, z in (("instruction", instr), ("real-plan", plan), ("world-model", wm))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="datasets of real episodes with successes")
    ap.add_argument("--generator", default=str(ROOT / "checkpoints" / "plan-generator"))
    ap.add_argument("--trajectory-vae", default=str(ROOT / "checkpoints" / "trajectory-vae"))
    ap.add_argument("--world-model", default=str(ROOT / "checkpoints" / "world-model"))
    ap.add_argument("--judge", default=str(ROOT / "checkpoints" / "judge"))
    ap.add_argument("--lead", type=int, default=24, help="env steps from a done window's start to the success")
    ap.add_argument("--samples", type=int, default=2, help="imagined futures per window (seeds 0..n-1)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="outputs/plan_target_check.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    planner = Planner.load(a.generator, a.trajectory_vae)
    world_model = TorchWorldModel.load(a.world_model)
    judge = SuccessJudge.load(a.judge)
    stride = planner.generator.frame_stride
    if world_model.frame_stride != stride:
        raise SystemExit("the world model and the generator must share a frame stride")
    wins = windows(a.data, planner.horizon, a.lead)
    if not wins:
        raise SystemExit("no successful episodes in --data")
    print(f"{len(wins)} windows ({sum(w['kind'] == 'done' for w in wins)} done), horizon {planner.horizon} "
          f"env steps, {a.samples} samples each", flush=True)
    real = judge.judge_many([w["real_frames"] for w in wins], [w["instruction"] for w in wins])
    rows: list[dict] = [{"window": j, "row": "real", "sample": 0, "success": v.success, "score": v.score}
                        for j, v in enumerate(real)]
    t = time.perf_counter()
    for sample in range(a.samples):
        for lo in range(0, len(wins), a.batch):
            part = wins[lo: lo + a.batch]
            for name, videos in futures(planner, world_model, part, sample * 7919 + lo).items():
                verdicts = judge.judge_many(videos, [w["instruction"] for w in part], [stride] * len(videos))
                rows += [{"window": lo + j, "row": name, "sample": sample, "success": v.success, "score": v.score}
                         for j, v in enumerate(verdicts)]
            print(f"  sample {sample}: {min(lo + a.batch, len(wins))}/{len(wins)} windows "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    table: dict = {}
    for kind in ("done", "control"):
        for task in sorted({w["task"] for w in wins}):
            idx = {j for j, w in enumerate(wins) if w["task"] == task and w["kind"] == kind}
            if not idx:
                continue
            for row in ROWS:
                hits = [r["success"] for r in rows if r["window"] in idx and r["row"] == row]
                lo_, hi_ = wilson_interval(sum(hits), len(hits))
                table.setdefault(kind, {}).setdefault(task, {})[row] = {
                    "success": sum(hits), "n": len(hits), "rate": sum(hits) / len(hits), "ci95": [lo_, hi_]}
    print("\nJudged success (the bundled judge's threshold) per task; n = windows x samples")
    for kind, tasks in table.items():
        print(f"\n{kind} windows" + (f" (start {a.lead} env steps before the real success)" if kind == "done"
                                     else " (the episode's start; success beyond the horizon)"))
        print("| task | " + " | ".join(ROWS) + " |")
        print("| --- |" + " --- |" * len(ROWS))
        for task, cells in tasks.items():
            print(f"| {task} | " + " | ".join(f"{cells[r]['success']}/{cells[r]['n']}" for r in ROWS) + " |")
    result = {"config": {**vars(a), "horizon": planner.horizon, "windows": len(wins),
                         "provenance": {**planner.provenance(), **world_model.provenance(), **judge.provenance()}},
              "table": table, "rows": rows,
              "windows": [{k: v for k, v in w.items() if k not in ("frame", "real_frames", "actions")} for w in wins]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
