"""A PNG strip of the same real episodes as the world model saw them: the real frames, the
autoencoder's reconstructions (``wmpo imagine-dataset --reconstruct``) and the imagined replays
(``wmpo imagine-dataset``), one row each, the last frames of each episode side by side.

Where the reconstruction shows the object and the replay does not, the dynamics model lost it,
not the latent. Usage (replay datasets of the real one's episodes; rows pair by task and seed):

    python scripts/replay_strip.py --real datasets/judge-test-noisy --rows \
        datasets/judge-test-noisy-rec datasets/judge-test-noisy-imagined-bundled \
        --task push-v3 --episodes 3 --frames 8 --out strip.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from wmpo.data.episodes import EpisodeDataset


def strip(real: EpisodeDataset, rows: list[EpisodeDataset], task: str, episodes: int, frames: int,
          successes_only: bool = True) -> np.ndarray:
    """(rows, frames) grid of images: per chosen episode, its real frames at the replays' stride,
    then each replay dataset's frames at the same times (the last ``frames`` of the episode)."""
    picked = [i for i, m in enumerate(real.episodes)
              if m["task"] == task and (m["succeeded"] or not successes_only)][:episodes]
    if not picked:
        raise SystemExit(f"no {'successful ' if successes_only else ''}{task} episode in {real.root}")
    index = [ds.by_task_seed() for ds in rows]
    grid = []
    for i in picked:
        r = real.episode(i)
        key = (task, r.meta["seed"])
        missing = [str(ds.root) for ds, ix in zip(rows, index, strict=True) if key not in ix]
        if missing:
            raise SystemExit(f"no replay of {task} seed {key[1]} in {', '.join(missing)}")
        replays = [ds.episode(ix[key]) for ds, ix in zip(rows, index, strict=True)]
        times = np.arange(len(replays[0].frames))[-frames:]
        grid.append(np.concatenate(list(r.frames[times * replays[0].meta["frame_stride"]]), axis=1))
        grid += [np.concatenate(list(e.frames[times]), axis=1) for e in replays]
    return np.concatenate(grid, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", required=True, help="the real episodes")
    ap.add_argument("--rows", nargs="+", required=True, help="replay datasets of the same episodes")
    ap.add_argument("--task", required=True)
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8, help="the last N frames at the replays' stride")
    ap.add_argument("--all", action="store_true", help="failures too (default: real successes only)")
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    img = strip(EpisodeDataset.load(a.real), [EpisodeDataset.load(d) for d in a.rows], a.task, a.episodes,
                a.frames, successes_only=not a.all)
    img = img.repeat(a.scale, axis=0).repeat(a.scale, axis=1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(a.out)
    print(f"wrote {a.out}: {img.shape[1]}x{img.shape[0]}")


if __name__ == "__main__":
    main()
