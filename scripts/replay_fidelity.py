"""Pixel fidelity of replay datasets against the real episodes they replay, per task: PSNR over
whole frames and over the pixels that moved (real frame vs the episode's first frame by more
than 20 in a channel: the arm, and the door or puck it moved), every frame after the first, at
the replays' stride. Judge-free: it says how far the imagined pixels are from the real ones
where the task happens, whatever a judge has learnt to read. Usage (rows pair by task and seed):

    python scripts/replay_fidelity.py --real datasets/judge-test-noisy --replays \\
        datasets/judge-test-noisy-rec datasets/judge-test-noisy-imagined-bundled [--json out.json]

Each cell is the median over the task's episodes of the episode's PSNR (its frames' squared
errors pooled).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from wmpo.data.episodes import EpisodeDataset
from wmpo.eval.metrics import moving_mask, psnr


def episode_psnr(real: np.ndarray, replay: np.ndarray) -> tuple[float, float]:
    """(whole-frame, moving-pixel) PSNR of a replay's frames after the first against the real
    frames at the same times ((N, H, W, 3) uint8 each, frame 0 the shared start)."""
    truth, im = torch.from_numpy(real[1:]), torch.from_numpy(replay[1:])
    whole = psnr(truth[None].flatten(1, 2), im[None].flatten(1, 2))  # pooled over the frames
    mask = moving_mask(truth, torch.from_numpy(real[0]))
    moving = psnr(truth[None].flatten(1, 2), im[None].flatten(1, 2), mask[None].flatten(1, 2))
    return float(whole), float(moving)


def fidelity(real: EpisodeDataset, replays: EpisodeDataset) -> dict[str, dict[str, float]]:
    """Per task: episodes, median whole-frame and moving-pixel PSNR."""
    index = replays.by_task_seed()
    per_task: dict[str, list[tuple[float, float]]] = {}
    for i, m in enumerate(real.episodes):
        key = (m["task"], m["seed"])
        if key not in index:
            raise SystemExit(f"no replay of {key[0]} seed {key[1]} in {replays.root}")
        rep = replays.episode(index[key])
        r = real.episode(i)
        times = np.arange(len(rep.frames)) * rep.meta["frame_stride"]
        per_task.setdefault(m["task"], []).append(episode_psnr(r.frames[times], rep.frames))
    return {t: {"episodes": len(v), "psnr": float(np.median([x[0] for x in v])),
                "moving_psnr": float(np.median([x[1] for x in v]))} for t, v in sorted(per_task.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", required=True, help="the real episodes")
    ap.add_argument("--replays", nargs="+", required=True, help="replay datasets of the same episodes")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    real = EpisodeDataset.load(a.real)
    result = {d: fidelity(real, EpisodeDataset.load(d)) for d in a.replays}
    tasks = sorted({t for r in result.values() for t in r})
    print("| replays | " + " | ".join(f"{t} PSNR / moving" for t in tasks) + " |")
    print("| --- " * (len(tasks) + 1) + "|")
    for d, r in result.items():
        print(f"| {d} | " + " | ".join(f"{r[t]['psnr']:.2f} / {r[t]['moving_psnr']:.2f}" for t in tasks) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({"real": a.real, "replays": result}, indent=2))


if __name__ == "__main__":
    main()
