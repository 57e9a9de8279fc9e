"""The main job on the embedded default: no Redis, no GPU, bundled checkpoints.

1. Collect a little real data: one scripted-expert episode per policy task in MetaWorld.
2. Evaluate the bundled base policy in the real simulator on held-out seeds.
3. Print a success table (95% Wilson intervals) and write a JSON report and a PNG strip.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from wmpo.data.collect import CollectConfig, SourceSpec, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.envs.tasks import POLICY_TASKS
from wmpo.errors import CheckpointError
from wmpo.eval.policy import EvalConfig, evaluate, format_table

BUNDLED_POLICY = Path(__file__).resolve().parent.parent / "checkpoints" / "policy-base"


def save_strip(ds: EpisodeDataset, path: Path, frames_per_episode: int = 8) -> None:
    """One row per episode: evenly spaced frames from start to end."""
    from PIL import Image

    rows = []
    for i in range(len(ds)):
        ep = ds.episode(i)
        idx = np.linspace(0, ep.length, frames_per_episode).round().astype(int)
        rows.append(np.concatenate(list(ep.frames[idx]), axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def run_demo(episodes: int = 20, workers: int = 2, out: str = "outputs/demo",
             checkpoint: Path = BUNDLED_POLICY) -> dict:
    out_dir = Path(out)
    if not (checkpoint / "model.safetensors").exists():
        raise CheckpointError(f"bundled policy missing at {checkpoint}; check out the repository fully")
    tasks = list(POLICY_TASKS)

    print(f"[1/3] collecting 1 scripted-expert episode per task in MetaWorld -> {out_dir / 'data'}")
    shutil.rmtree(out_dir / "data", ignore_errors=True)
    summary = collect(CollectConfig(out=str(out_dir / "data"), tasks=tasks, source="expert",
                                    episodes=1, workers=workers))
    ds = EpisodeDataset.load(out_dir / "data")
    save_strip(ds, out_dir / "expert_episodes.png")
    print(f"      {summary['frames']} frames at {summary['frames_per_second']} frames/s; "
          f"strip: {out_dir / 'expert_episodes.png'}")

    print(f"[2/3] evaluating the bundled base policy on {episodes} held-out seeds per task")
    report = evaluate(EvalConfig(tasks=tasks, source=SourceSpec("policy", checkpoint=str(checkpoint),
                                                                 temperature=0.0),
                                 episodes=episodes, workers=workers))
    print("[3/3] results (real MetaWorld, held-out seeds, greedy decoding)")
    print(format_table(report, f"base policy ({checkpoint.name})"))
    (out_dir / "report.json").write_text(json.dumps({"collection": summary, "base_policy": report}, indent=2))
    print(f"wrote {out_dir / 'report.json'}")
    return report
