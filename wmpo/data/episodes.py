"""On-disk episode format: columnar shards, atomic writes, a provenance manifest.

Layout of a dataset directory (close in spirit to LeRobotDataset v3: many episodes per
columnar file, metadata beside the data)::

    meta/info.json        format version, features (name, dtype, shape), image size, camera, fps
    meta/manifest.json    provenance: every collection run (command, source, versions, counts)
    data/shard-*.npz      one shard = several episodes, stored column by column

A shard holds one row per frame. An episode of T actions has T+1 rows: row t has the frame
seen at time t, the action taken after it (``action``; zeros on the last row, where
``is_last`` is true) and ``success``, the task's success flag in that frame. Columns:

    frame         (N, H, W, 3) uint8
    action        (N, 4) float32, in the env's [-1, 1] action space
    success       (N,) bool
    is_last       (N,) bool
    episode_index (N,) int32, index of the episode inside the shard
    frame_index   (N,) int32, t
    episodes_json ()  str, JSON list with one metadata dict per episode (task, instruction,
                      seed, source, camera, image_size, length, succeeded)

Writes are atomic: a shard is written to a temporary file in the same directory, fsynced,
and renamed; a crash leaves at most a ``.tmp`` file, which readers ignore. Shards are plain
``.npz`` (no pickle): loading is one read per shard and a concatenate.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wmpo.errors import DatasetError

FORMAT_VERSION = 1
ACTION_DIM = 4


@dataclass
class Episode:
    frames: np.ndarray  # (T+1, H, W, 3) uint8
    actions: np.ndarray  # (T, 4) float32
    success: np.ndarray  # (T+1,) bool: success flag of each frame
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = len(self.actions)
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise DatasetError(f"frames must be (T+1, H, W, 3) uint8, got {self.frames.shape} {self.frames.dtype}")
        if self.frames.shape[0] != t + 1 or self.success.shape != (t + 1,):
            raise DatasetError(
                f"episode with {t} actions needs {t + 1} frames and success flags, got "
                f"{self.frames.shape[0]} and {self.success.shape[0]}"
            )
        if self.actions.shape != (t, ACTION_DIM):
            raise DatasetError(f"actions must be (T, {ACTION_DIM}), got {self.actions.shape}")

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def succeeded(self) -> bool:
        return bool(self.success.any())


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data and checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()))


def write_shard(path: Path, episodes: list[Episode]) -> None:
    """Write ``episodes`` as one columnar shard, atomically."""
    if not episodes:
        raise DatasetError("a shard needs at least one episode")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("frame", "action", "success", "is_last", "episode_index", "frame_index")}
    metas = []
    for i, ep in enumerate(episodes):
        n = ep.length + 1
        cols["frame"].append(ep.frames)
        cols["action"].append(np.concatenate([ep.actions, np.zeros((1, ACTION_DIM))]).astype(np.float32))
        cols["success"].append(ep.success.astype(bool))
        last = np.zeros(n, bool)
        last[-1] = True
        cols["is_last"].append(last)
        cols["episode_index"].append(np.full(n, i, np.int32))
        cols["frame_index"].append(np.arange(n, dtype=np.int32))
        metas.append({**ep.meta, "length": ep.length, "succeeded": ep.succeeded})
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    arrays["episodes_json"] = np.array(json.dumps(metas))
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def _read_shard(path: Path) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise DatasetError(f"corrupt dataset shard {path}: {e}. Delete it and collect again.") from e
    need = {"frame", "action", "success", "is_last", "episode_index", "frame_index", "episodes_json"}
    if missing := need - set(arrays):
        raise DatasetError(f"dataset shard {path} lacks columns {sorted(missing)}")
    metas = json.loads(str(arrays.pop("episodes_json")))
    n = len(arrays["frame"])
    if any(len(v) != n for v in arrays.values()) or int(arrays["is_last"].sum()) != len(metas):
        raise DatasetError(f"dataset shard {path} is inconsistent (column lengths or episode count)")
    return arrays, metas


class EpisodeDataset:
    """All episodes of a dataset directory, loaded into memory as concatenated columns."""

    def __init__(self, root: Path, columns: dict[str, np.ndarray], episodes: list[dict[str, Any]]):
        self.root = root
        self.columns = columns
        self.episodes = episodes  # each has "start" (first row) and "length" (actions)

    @classmethod
    def load(cls, root: str | Path, tasks: list[str] | None = None) -> EpisodeDataset:
        root = Path(root)
        if not (root / "meta" / "info.json").exists():
            raise DatasetError(
                f"no dataset at {root} (missing meta/info.json). Create one with `wmpo collect --out {root}`."
            )
        shards = sorted((root / "data").glob("shard-*.npz"))
        parts: dict[str, list[np.ndarray]] = {}
        episodes: list[dict[str, Any]] = []
        row = 0
        for shard in shards:
            arrays, metas = _read_shard(shard)
            ends = np.flatnonzero(arrays["is_last"]) + 1
            starts = np.concatenate([[0], ends[:-1]])
            keep = np.zeros(len(arrays["frame"]), bool)
            for meta, s, e in zip(metas, starts, ends, strict=True):
                if tasks is not None and meta["task"] not in tasks:
                    continue
                keep[s:e] = True
                episodes.append({**meta, "start": row, "shard": shard.name})
                row += int(e - s)
            for k, v in arrays.items():
                parts.setdefault(k, []).append(v[keep])
        if not episodes:
            raise DatasetError(f"dataset {root} has no episodes" + (f" for tasks {tasks}" if tasks else ""))
        columns = {k: np.concatenate(v) for k, v in parts.items()}
        return cls(root, columns, episodes)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return len(self.columns["frame"])

    def episode(self, i: int) -> Episode:
        m = self.episodes[i]
        s, t = m["start"], m["length"]
        c = self.columns
        meta = {k: v for k, v in m.items() if k not in ("start", "shard", "length", "succeeded")}
        return Episode(c["frame"][s:s + t + 1], c["action"][s:s + t], c["success"][s:s + t + 1], meta)

    def by_task_seed(self) -> dict[tuple[str, int], int]:
        """Episode index by (task, seed): episodes load in shard order, which differs between a
        dataset and its replays (``wmpo imagine-dataset``), so pair them by this key."""
        return {(m["task"], m["seed"]): i for i, m in enumerate(self.episodes)}

    def summary(self) -> dict[str, Any]:
        per_task: dict[str, dict[str, int]] = {}
        for m in self.episodes:
            d = per_task.setdefault(m["task"], {"episodes": 0, "successes": 0, "frames": 0})
            d["episodes"] += 1
            d["successes"] += int(m["succeeded"])
            d["frames"] += m["length"] + 1
        return {"episodes": len(self), "frames": self.num_frames, "per_task": per_task}


def episode_key(meta: dict[str, Any]) -> str:
    """Identity of an episode for resuming collection: task, seed and source."""
    return json.dumps([meta["task"], meta["seed"], meta["source"]], sort_keys=True)


def existing_keys(root: Path) -> set[str]:
    keys: set[str] = set()
    for shard in sorted((Path(root) / "data").glob("shard-*.npz")):
        _, metas = _read_shard(shard)
        keys.update(episode_key(m) for m in metas)
    return keys


class ShardWriter:
    """Buffers episodes and writes them as atomic shards of ``episodes_per_shard``."""

    def __init__(self, root: str | Path, episodes_per_shard: int = 16, prefix: str = "") -> None:
        self.root = Path(root)
        self.episodes_per_shard = episodes_per_shard
        self.prefix = prefix
        self._buffer: list[Episode] = []
        self.shards_written: list[Path] = []

    def add(self, episode: Episode) -> None:
        self._buffer.append(episode)
        if len(self._buffer) >= self.episodes_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        name = f"shard-{self.prefix}{uuid.uuid4().hex[:12]}.npz"
        path = self.root / "data" / name
        write_shard(path, self._buffer)
        self.shards_written.append(path)
        self._buffer = []


def init_dataset(root: str | Path, image_size: int, camera: dict[str, Any], fps: int = 80) -> None:
    """Create ``meta/info.json`` (or check that an existing dataset matches)."""
    root = Path(root)
    camera = json.loads(json.dumps(camera))  # tuples -> lists, as stored
    info_path = root / "meta" / "info.json"
    info = {
        "format": "wmpo-episodes",
        "format_version": FORMAT_VERSION,
        "fps": fps,
        "image_size": image_size,
        "camera": camera,
        "features": {
            "frame": {"dtype": "uint8", "shape": [image_size, image_size, 3]},
            "action": {"dtype": "float32", "shape": [ACTION_DIM],
                       "names": ["dx", "dy", "dz", "gripper"]},
            "success": {"dtype": "bool", "shape": []},
            "is_last": {"dtype": "bool", "shape": []},
            "episode_index": {"dtype": "int32", "shape": []},
            "frame_index": {"dtype": "int32", "shape": []},
        },
    }
    if info_path.exists():
        old = json.loads(info_path.read_text())
        if old.get("image_size") != image_size or old.get("camera") != camera:
            raise DatasetError(
                f"dataset {root} was collected with image_size={old.get('image_size')} and camera "
                f"{old.get('camera')}; refusing to mix in image_size={image_size}, camera {camera}"
            )
        return
    atomic_write_json(info_path, info)


def init_dataset_like(data: str | Path, out: str | Path) -> None:
    """Create ``out`` with the frame format (image size, camera, fps) of the dataset at ``data``."""
    info = json.loads((Path(data) / "meta" / "info.json").read_text())
    init_dataset(out, info["image_size"], info["camera"], fps=info.get("fps", 80))


def append_manifest(root: str | Path, run: dict[str, Any]) -> None:
    path = Path(root) / "meta" / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"runs": []}
    manifest["runs"].append(run)
    atomic_write_json(path, manifest)


def write_cut_dataset(data: str | Path, out: str | Path, max_steps: int) -> dict[str, Any]:
    """A copy of ``data`` with every episode cut after ``max_steps`` actions, as if it had been run
    with that horizon: its label becomes whether it had succeeded by then (episodes that ended
    sooner are copied whole). GRPO judges rollouts cut at its horizon, so the judge learns and is
    calibrated on such prefixes from the same real rollouts, at no extra real-rollout cost."""
    if max_steps < 1:
        raise DatasetError(f"max_steps must be >= 1, got {max_steps}")
    src = EpisodeDataset.load(data)
    init_dataset_like(data, out)
    writer = ShardWriter(out, 16, prefix="cut-")
    successes = 0
    for i in range(len(src)):
        ep = src.episode(i)
        n = min(ep.length, max_steps)
        cut = Episode(ep.frames[:n + 1], ep.actions[:n], ep.success[:n + 1], {**ep.meta, "cut_at": max_steps})
        successes += cut.succeeded
        writer.add(cut)
    writer.flush()
    summary = {"episodes": len(src), "successes": int(successes), "max_steps": max_steps}
    append_manifest(out, {**summary, "source": "cut", "from": str(data)})
    return summary
