"""Read a `wmpo export lerobot` dataset with LeRobot's own reader and compare it with its source.

The reader is lerobot-dataset 0.4.4 (module ``ledataset``: LeRobot's LeRobotDataset as a standalone
package). It cannot live in the project's venv (it pins numpy < 2.3 through opencv,
huggingface-hub < 0.36, packaging < 26), so scripts/lerobot_reader_check.sh runs this file in a
side venv that borrows the project's torch. What runs is ledataset's own code: its metadata
loader (info.json, tasks, episodes, stats), its parquet loading and its ``__getitem__`` (episode
lookup, the ``from_timestamp`` shift into shared mp4 files, the timestamp tolerance). Only its
video backend is replaced: torchcodec needs the system's FFmpeg libraries and torchvision >= 0.24
has no video reader (and its PyPI wheel is built for CUDA torch), so frames are decoded with PyAV,
nearest frame per timestamp, within ledataset's tolerance.

    python scripts/lerobot_reader_check.py LEROBOT_DIR WMPO_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import torch
from ledataset.datasets import lerobot_dataset
from ledataset.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wmpo.data.episodes import EpisodeDataset  # noqa: E402

_decoded: dict[str, list[tuple[float, np.ndarray]]] = {}


def decode_pyav(video_path: Path | str, timestamps: list[float], tolerance_s: float,
                backend: str | None = None) -> torch.Tensor:
    """ledataset's decode_video_frames contract: (N, 3, H, W) float in [0, 1], one per timestamp."""
    key = str(video_path)
    if key not in _decoded:  # decode each shared file once
        with av.open(key) as c:
            stream = c.streams.video[0]
            _decoded[key] = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(stream)]
    times = np.array([t for t, _ in _decoded[key]])
    out = []
    for ts in timestamps:
        i = int(np.abs(times - ts).argmin())
        if abs(times[i] - ts) >= tolerance_s:
            raise AssertionError(f"{video_path}: no frame within {tolerance_s}s of t={ts} (nearest {times[i]})")
        out.append(torch.from_numpy(_decoded[key][i][1]).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def main(root: str, source: str) -> int:
    meta = LeRobotDatasetMetadata("local/export", root=root)
    print(f"metadata: {meta.total_episodes} episodes, {meta.total_frames} frames, fps {meta.fps}, "
          f"video keys {meta.video_keys}, {len(meta.tasks)} tasks, stats for {sorted(meta.stats)}")
    lerobot_dataset.decode_video_frames = decode_pyav
    ds = LeRobotDataset("local/export", root=root)
    print(f"hf_dataset: {len(ds.hf_dataset)} rows, columns {list(ds.hf_dataset.features)}")
    wm = EpisodeDataset.load(source)
    key = meta.video_keys[0]
    n = mx = 0
    abs_sum = sq_sum = 0.0
    for i in range(len(ds)):
        item = ds[i]
        e, f = int(item["episode_index"]), int(item["frame_index"])
        ep = wm.episode(e)
        action = item["action"].numpy()
        want = ep.actions[f] if f < ep.length else np.zeros(4, np.float32)
        if action.tobytes() != want.tobytes():
            print(f"row {i}: action {action} != wmpo's {want}")
            return 1
        if item["task"] != (ep.meta.get("instruction") or ep.meta["task"]):
            print(f"row {i}: task {item['task']!r} != wmpo's {ep.meta.get('instruction')!r}")
            return 1
        got = (item[key].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
        d = got - ep.frames[f].astype(np.int16)
        mx = max(mx, int(np.abs(d).max()))
        abs_sum += float(np.abs(d).sum())
        sq_sum += float((d.astype(np.float64) ** 2).sum())
        n += d.size
    psnr = 10 * np.log10(255**2 / (sq_sum / n)) if sq_sum else float("inf")
    print(f"ds[i] for all {len(ds)} rows: actions and tasks identical to {source}; frames max abs {mx}, "
          f"mean abs {abs_sum / n:.4f}, PSNR {psnr:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
