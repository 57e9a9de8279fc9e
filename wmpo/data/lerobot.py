"""LeRobotDataset v3.0 in and out: ``wmpo export lerobot`` and ``wmpo import lerobot``.

LeRobot v3.0 layout (what LeRobot's own writer produces; checked with ``lerobot-doctor``)::

    meta/info.json                    codebase_version "v3.0", fps, features, path templates, totals
    meta/stats.json                   per feature: min, max, mean, std, count (images per channel, [0, 1])
    meta/tasks.parquet                one row per task: task (the index) and task_index
    meta/episodes/chunk-000/file-000.parquet
                                      one row per episode: length, tasks, where its rows and video
                                      frames are (data/chunk_index, data/file_index,
                                      dataset_from_index/to_index, videos/<key>/chunk_index,
                                      file_index, from_timestamp, to_timestamp), stats/<feature>/<stat>
    data/chunk-XXX/file-XXX.parquet   one row per frame, many episodes per file (a row group each)
    videos/<key>/chunk-XXX/file-XXX.mp4
                                      many episodes per file, back to back; an episode's frames are
                                      the ones between its from_timestamp and to_timestamp

A file is closed and the next one opened when it passes ``data_files_size_in_mb`` (parquet) or
``video_files_size_in_mb`` (mp4); ``chunks_size`` files make a chunk directory.

Mapping. A wmpo episode of T actions has T+1 frames; it becomes T+1 rows, the last one with a
zero action and ``next.done`` true (wmpo's ``is_last``), which is how LeRobot marks an episode's
end. ``success`` is the task's success flag of that frame; any further per-frame column of a wmpo
shard (a reward, a judge score) is exported beside it. wmpo has no proprioceptive state, so there
is no ``observation.state``. Every episode's wmpo metadata (task, seed, source with its
checkpoint hashes) is kept as JSON in the episodes parquet (``wmpo/meta``), and the dataset's
provenance (its collection runs, sources and hashes) goes into info.json under ``wmpo``; import
restores both, so export then import gives back the same episodes. Imagined datasets
(``frame_stride`` > 1) are exported at their own frame rate, ``fps / frame_stride``.

Import reads any LeRobot v3 dataset with a video (or image) camera and a 4-D action: frames are
cropped to a square and resized to ``image_size``; the last row's action is dropped (wmpo keeps
T actions for T+1 frames); success labels come from ``success`` or ``next.success`` when the
dataset has them, else from ``--episodes-succeed`` (demonstration datasets) or stay false.

Other features (``observation.state``, further cameras) are not imported: wmpo's models see
one camera and act in 4-D; the summary lists them.

Both directions stream: one wmpo shard, or one LeRobot data file's columns and one episode's
frames, in memory at a time. Videos are encoded with libx264 at ``crf`` 0 in yuv444p by default:
no chroma subsampling and no quantization, so the only error left is the RGB -> YUV -> RGB
rounding (frames come back within 2 levels, 52.9 dB; docs/lerobot.md has the measurements).
``--codec av1 --pix-fmt yuv420p --crf 30`` gives the small files LeRobot's hub datasets use, at
a larger error (30 dB at 64x64); ``--pix-fmt rgb24`` is exact.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wmpo.data.episodes import (
    ACTION_DIM,
    Episode,
    _read_shard,
    atomic_write_json,
    init_dataset,
    write_shard,
)
from wmpo.errors import ConfigError, DatasetError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's default)
DATA_FILE_MB = 100  # LeRobot's defaults for when to start a new file
VIDEO_FILE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
# Columns every v3 data file has (LeRobot's DEFAULT_FEATURES).
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
# wmpo shard columns that are not exported as such (frames go to video, the rest is structure).
_SHARD_STRUCTURE = {"frame", "action", "success", "is_last", "episode_index", "frame_index"}
EPISODE_COLUMNS = ("episode_index", "length", "dataset_from_index", "dataset_to_index",
                   "data/chunk_index", "data/file_index")


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401 (pa.parquet is used below)
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ConfigError("LeRobot datasets need pyarrow: pip install pyarrow") from e
    return pa


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ConfigError("LeRobot videos need PyAV: pip install av") from e
    return av


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 == CHUNKS_SIZE else (chunk, file + 1)


@dataclass
class VideoSettings:
    codec: str = "libx264"
    pix_fmt: str = "yuv444p"
    crf: int = 0
    gop: int = 2  # LeRobot's default: a keyframe every 2 frames keeps random access by timestamp cheap

    def __post_init__(self) -> None:
        if self.pix_fmt == "rgb24" and self.codec == "libx264":  # lossless RGB needs x264's RGB flavour
            self.codec = "libx264rgb"

    @property
    def codec_name(self) -> str:
        """The name info.json gives the codec, as LeRobot writes it."""
        return "av1" if "av1" in self.codec else "h264"

    def check(self) -> None:
        av = _av()
        if self.codec not in ("libx264", "libx264rgb", "libsvtav1"):
            raise ConfigError(f"video codec {self.codec!r} is not supported; valid: libx264, libsvtav1")
        if self.codec not in av.codecs_available:
            raise ConfigError(f"video codec {self.codec!r} is not available in this PyAV build; try libx264")
        top = 63 if self.codec == "libsvtav1" else 51
        if not 0 <= self.crf <= top:
            raise ConfigError(f"--crf must be in [0, {top}] for {self.codec}, got {self.crf}")
        if self.pix_fmt not in ("yuv444p", "yuv420p", "rgb24"):
            raise ConfigError(f"--pix-fmt must be yuv444p, yuv420p or rgb24, got {self.pix_fmt!r}")
        if self.codec == "libsvtav1" and self.pix_fmt != "yuv420p":
            raise ConfigError(f"SVT-AV1 encodes yuv420p only, not {self.pix_fmt}; pass --pix-fmt yuv420p")


class _RunningStats:
    """min, max, mean, std and count of one feature, accumulated episode by episode (float64).
    Images are reduced per channel over all pixels, scaled to [0, 1], as LeRobot does."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    @staticmethod
    def reduce(x: np.ndarray, image: bool) -> dict[str, Any]:
        """Per-batch sums of ``x`` (rows first); images (N, H, W, C) reduce to (C, 1, 1)."""
        if image:
            v = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
            pixels = len(v)
            shape = (x.shape[-1], 1, 1)
            return {"n": len(x), "sum": (v.sum(0) / pixels * len(x)).reshape(shape),
                    "sumsq": ((v * v).sum(0) / pixels * len(x)).reshape(shape),
                    "min": v.min(0).reshape(shape), "max": v.max(0).reshape(shape)}
        v = x.astype(np.float64).reshape(len(x), -1)
        return {"n": len(x), "sum": v.sum(0), "sumsq": (v * v).sum(0), "min": v.min(0), "max": v.max(0)}

    def add(self, part: dict[str, Any]) -> None:
        if self.sum is None:
            self.sum, self.sumsq, self.min, self.max = part["sum"], part["sumsq"], part["min"], part["max"]
        else:
            self.sum = self.sum + part["sum"]
            self.sumsq = self.sumsq + part["sumsq"]
            self.min = np.minimum(self.min, part["min"])
            self.max = np.maximum(self.max, part["max"])
        self.n += part["n"]

    def result(self) -> dict[str, list[Any]]:
        assert self.sum is not None and self.sumsq is not None
        mean = self.sum / self.n
        std = np.sqrt(np.maximum(self.sumsq / self.n - mean * mean, 0.0))
        return {"min": np.asarray(self.min).tolist(), "max": np.asarray(self.max).tolist(),
                "mean": mean.tolist(), "std": std.tolist(), "count": [self.n]}


# --------------------------------------------------------------------------------------------
# export


def _wmpo_episodes(root: Path) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """(metadata, per-frame columns) of every episode of a wmpo dataset, one shard in memory."""
    for shard in sorted((root / "data").glob("shard-*.npz")):
        arrays, metas = _read_shard(shard)
        ends = np.flatnonzero(arrays["is_last"]) + 1
        starts = np.concatenate([[0], ends[:-1]])
        for meta, s, e in zip(metas, starts, ends, strict=True):
            yield meta, {k: v[s:e] for k, v in arrays.items()}


def _scan_wmpo(root: Path) -> tuple[int, set[int], list[str]]:
    """Episode count, frame strides and tasks (in first-seen order) from the shards' metadata only."""
    import zipfile

    count, strides, tasks = 0, set(), []
    for shard in sorted((root / "data").glob("shard-*.npz")):
        try:
            with zipfile.ZipFile(shard) as z, z.open("episodes_json.npy") as f:
                metas = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
        except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
            raise DatasetError(f"corrupt dataset shard {shard}: {e}") from e
        for m in metas:
            count += 1
            strides.add(int(m.get("frame_stride", 1)))
            text = m.get("instruction") or m.get("task")
            if text not in tasks:
                tasks.append(text)
    return count, strides, tasks


def _provenance(root: Path, sources: list[dict[str, Any]], seeds: dict[str, list[int]]) -> dict[str, Any]:
    manifest_path = root / "meta" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"runs": []}
    hashes = sorted({v for s in sources for k, v in s.items() if k.endswith("sha256") or k == "world_model"
                     if isinstance(v, str)})
    return {"exported_from": str(root), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "sources": sources, "seeds": seeds, "checkpoint_sha256": hashes, "runs": manifest["runs"]}


class _VideoWriter:
    """One camera's mp4 files: episodes appended back to back, a new file past the size limit."""

    def __init__(self, root: Path, key: str, fps: int, settings: VideoSettings, file_mb: float) -> None:
        self.root, self.key, self.fps, self.settings, self.file_mb = root, key, fps, settings, file_mb
        self.chunk, self.file = 0, 0
        self.container: Any = None
        self.stream: Any = None
        self.frames_in_file = 0
        self.bytes_in_file = 0

    def _open(self, height: int, width: int) -> None:
        av = _av()
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        s = self.settings
        self.stream = self.container.add_stream(s.codec, rate=self.fps, options={"crf": str(s.crf), "g": str(s.gop)})
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, s.pix_fmt
        self.stream.time_base = Fraction(1, self.fps)
        self.frames_in_file = 0
        self.bytes_in_file = 0

    def _mux(self, frame: Any) -> None:
        for packet in self.stream.encode(frame):
            self.bytes_in_file += packet.size
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            self._mux(None)
            self.container.close()
            self.container = None

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        """Append an episode's frames (N, H, W, 3) uint8; returns its episodes-parquet columns."""
        av = _av()
        if self.container is not None and self.bytes_in_file >= self.file_mb * 1024 * 1024:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.container is None:
            self._open(frames.shape[1], frames.shape[2])
        start = self.frames_in_file
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf = vf.reformat(format=self.settings.pix_fmt)
            vf.pts = self.frames_in_file
            self._mux(vf)
            self.frames_in_file += 1
        k = f"videos/{self.key}"
        return {f"{k}/chunk_index": self.chunk, f"{k}/file_index": self.file,
                f"{k}/from_timestamp": start / self.fps, f"{k}/to_timestamp": self.frames_in_file / self.fps}


class _DataWriter:
    """data/chunk-XXX/file-XXX.parquet: one row group per episode, a new file past the size limit."""

    def __init__(self, root: Path, file_mb: float) -> None:
        self.root, self.file_mb = root, file_mb
        self.chunk, self.file = 0, 0
        self.writer: Any = None
        self.path: Path | None = None

    def add(self, table: Any) -> dict[str, int]:
        pq = _pa().parquet
        if self.writer is not None and self.path is not None and \
                self.path.stat().st_size >= self.file_mb * 1024 * 1024:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.writer is None:
            self.path = self.root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="snappy")
        self.writer.write_table(table)
        return {"data/chunk_index": self.chunk, "data/file_index": self.file}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _feature(x: np.ndarray) -> dict[str, Any]:
    """info.json feature of a per-frame column (rows first)."""
    dtype = "bool" if x.dtype == bool else str(x.dtype)
    return {"dtype": dtype, "shape": list(x.shape[1:]) or [1], "names": None}


def _column(pa: Any, x: np.ndarray) -> Any:
    if x.ndim == 1:
        return pa.array(x)
    flat = x.reshape(len(x), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _tasks_table(pa: Any, tasks: list[str]) -> Any:
    """meta/tasks.parquet as LeRobot writes it (a pandas frame indexed by the task text): the
    pandas metadata makes ``pd.read_parquet`` give back that index, which LeRobot looks tasks up in."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _video_key(camera: dict[str, Any]) -> str:
    name = str(camera.get("name") or "main").replace("-", "_").replace(".", "_").replace("/", "_")
    return f"observation.images.{name}"


def export_lerobot(data: str | Path, out: str | Path, video: VideoSettings | None = None,
                   robot_type: str = "sawyer", data_file_mb: float = DATA_FILE_MB,
                   video_file_mb: float = VIDEO_FILE_MB, progress: bool = True) -> dict[str, Any]:
    """Write the wmpo dataset ``data`` as a LeRobotDataset v3.0 at ``out`` (created; must not exist).
    Written under ``<out>.partial`` and renamed at the end, so a crash leaves no half dataset."""
    pa = _pa()
    video = video or VideoSettings()
    video.check()
    data, out = Path(data), Path(out)
    info_path = data / "meta" / "info.json"
    if not info_path.exists():
        raise DatasetError(f"no wmpo dataset at {data} (missing meta/info.json)")
    winfo = _read_json(info_path)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose a new --out")
    n_episodes, strides, tasks = _scan_wmpo(data)
    if n_episodes == 0:
        raise DatasetError(f"dataset {data} has no episodes (no data/shard-*.npz)")
    if len(strides) > 1:
        raise DatasetError(f"dataset {data} mixes frame strides {sorted(strides)}; LeRobot needs one fps")
    stride = strides.pop()
    base_fps = int(winfo.get("fps", 80))
    if base_fps % stride:
        raise DatasetError(f"fps {base_fps} is not a multiple of the frame stride {stride}")
    fps = base_fps // stride
    key = _video_key(winfo.get("camera", {}))

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    task_index = {t: i for i, t in enumerate(tasks)}
    videos = _VideoWriter(tmp, key, fps, video, video_file_mb)
    rows = _DataWriter(tmp, data_file_mb)
    stats: dict[str, _RunningStats] = {}
    episode_rows: list[dict[str, Any]] = []
    features: dict[str, dict[str, Any]] = {}
    sources: list[dict[str, Any]] = []
    seeds: dict[str, list[int]] = {}
    index = 0
    try:
        bar = tqdm(_wmpo_episodes(data), total=n_episodes, desc="export lerobot", unit="episode",
                   disable=not progress)
        for ep, (meta, cols) in enumerate(bar):
            n = len(cols["frame"])
            text = meta.get("instruction") or meta.get("task")
            per_frame = {"action": cols["action"].astype(np.float32), "success": cols["success"].astype(bool),
                         "next.done": cols["is_last"].astype(bool)}
            for k, v in cols.items():  # reward, judge score, ...: whatever else the shard holds per frame
                if k not in _SHARD_STRUCTURE and v.dtype.kind in "biuf":
                    per_frame[k] = v
            frame_index = np.arange(n, dtype=np.int64)
            per_frame.update({
                "timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index,
                "episode_index": np.full(n, ep, np.int64), "index": np.arange(index, index + n, dtype=np.int64),
                "task_index": np.full(n, task_index[text], np.int64)})
            if not features:
                features = {key: {"dtype": "video", "shape": list(cols["frame"].shape[1:]),
                                  "names": ["height", "width", "channels"]},
                            **{k: _feature(v) for k, v in per_frame.items()}}
                features["action"]["names"] = ACTION_NAMES
                features.update({k: dict(v) for k, v in INDEX_FEATURES.items()})
            elif set(per_frame) | {key} != set(features):
                raise DatasetError(f"episode {ep} of {data} has columns {sorted(per_frame)}, the first had "
                                   f"{sorted(set(features) - {key})}")
            row: dict[str, Any] = {"episode_index": ep, "tasks": [text], "length": n}
            row.update(rows.add(pa.table({k: _column(pa, v) for k, v in per_frame.items()})))
            row.update({"dataset_from_index": index, "dataset_to_index": index + n})
            row.update(videos.add(cols["frame"]))
            for k, v in [(key, cols["frame"]), *per_frame.items()]:
                part = _RunningStats.reduce(v, image=k == key)
                stats.setdefault(k, _RunningStats()).add(part)
                one = _RunningStats()
                one.add(part)
                row.update({f"stats/{k}/{s}": x for s, x in one.result().items()})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        "wmpo/meta": json.dumps(meta, default=str)})
            episode_rows.append(row)
            if meta.get("source") not in sources:
                sources.append(meta.get("source"))
            seeds.setdefault(str(meta.get("task")), []).append(meta.get("seed"))
            index += n
    except BaseException:
        videos.close()
        rows.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    videos.close()
    rows.close()

    features[key]["info"] = {"video.height": features[key]["shape"][0], "video.width": features[key]["shape"][1],
                             "video.codec": video.codec_name,
                             "video.pix_fmt": video.pix_fmt, "video.is_depth_map": False, "video.fps": fps,
                             "video.channels": 3, "has_audio": False, "video.crf": video.crf}
    pq = pa.parquet
    ep_table = pa.Table.from_pylist(episode_rows)
    ep_path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(ep_table, ep_path)
    pq.write_table(_tasks_table(pa, tasks), tmp / "meta" / "tasks.parquet")
    atomic_write_json(tmp / "meta" / "stats.json", {k: s.result() for k, s in stats.items()})
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
        "total_episodes": len(episode_rows), "total_frames": index, "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": data_file_mb, "video_files_size_in_mb": video_file_mb,
        "fps": fps, "splits": {"train": f"0:{len(episode_rows)}"},
        "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features,
        "wmpo": {"format_version": winfo.get("format_version"), "fps": base_fps, "frame_stride": stride,
                 "image_size": winfo.get("image_size"), "camera": winfo.get("camera"),
                 **_provenance(data, sources, seeds)},
    }
    atomic_write_json(tmp / "meta" / "info.json", info)
    tmp.rename(out)
    return {"episodes": len(episode_rows), "frames": index, "tasks": len(tasks), "fps": fps, "video_key": key,
            "video": f"{video.codec} {video.pix_fmt} crf {video.crf}", "out": str(out)}


# --------------------------------------------------------------------------------------------
# import


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise DatasetError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None


def _read_parquet(path: Path, columns: list[str] | None = None) -> Any:
    pa = _pa()
    if not path.exists():
        raise DatasetError(f"{path} is missing")
    try:
        return pa.parquet.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path} is not a readable parquet file: {e}") from None


def _parquet_names(path: Path) -> list[str]:
    pa = _pa()
    try:
        return list(pa.parquet.read_schema(path).names)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path} is not a readable parquet file: {e}") from None


@dataclass
class _Source:
    """A checked LeRobot v3 dataset: what import needs from its metadata."""

    root: Path
    info: dict[str, Any]
    camera: str
    camera_kind: str  # "video" or "image"
    action_key: str
    episodes: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)


def _open_source(root: Path, camera: str | None, action_key: str) -> _Source:
    info_path = root / "meta" / "info.json"
    info = _read_json(info_path)
    if not isinstance(info, dict):
        raise DatasetError(f"{info_path} must hold a JSON object")
    version = str(info.get("codebase_version"))
    if not version.startswith("v3"):
        raise DatasetError(f"{info_path}: codebase_version is {info.get('codebase_version')!r}; wmpo reads "
                           "LeRobotDataset v3.x (convert older datasets with LeRobot's convert_dataset_v21_to_v30)")
    for k in ("fps", "features", "data_path"):
        if k not in info:
            raise DatasetError(f"{info_path} lacks the field {k!r}")
    features = info["features"]
    if action_key not in features:
        raise DatasetError(f"{info_path}: no {action_key!r} feature (features: {sorted(features)})")
    shape = list(features[action_key].get("shape", []))
    if shape != [ACTION_DIM]:
        raise DatasetError(f"{info_path}: feature {action_key!r} has shape {shape}; wmpo's actions are "
                           f"{ACTION_DIM}-D ({', '.join(ACTION_NAMES)} in [-1, 1])")
    cams = sorted(k for k, f in features.items() if f.get("dtype") in ("video", "image"))
    if not cams:
        raise DatasetError(f"{info_path}: no camera (no feature of dtype video or image)")
    if camera is None:
        camera = cams[0]
    elif camera not in cams:
        raise DatasetError(f"{info_path}: no camera {camera!r}; cameras: {cams}")
    kind = features[camera]["dtype"]
    if kind == "video" and not info.get("video_path"):
        raise DatasetError(f"{info_path}: camera {camera!r} is a video but video_path is not set")
    src = _Source(root, info, camera, kind, action_key)

    ep_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise DatasetError(f"{root / 'meta' / 'episodes'} holds no chunk-*/file-*.parquet")
    need = list(EPISODE_COLUMNS)
    if kind == "video":
        need += [f"videos/{camera}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    for path in ep_files:
        table = _read_parquet(path)
        if missing := [c for c in need if c not in table.column_names]:
            raise DatasetError(f"{path} lacks the columns {missing}")
        keep = need + [c for c in ("tasks", "wmpo/meta") if c in table.column_names]
        src.episodes.extend(table.select(keep).to_pylist())
    src.episodes.sort(key=lambda r: r["episode_index"])

    tasks_path = root / "meta" / "tasks.parquet"
    table = _read_parquet(tasks_path)
    text_col = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if text_col is None or "task_index" not in table.column_names:
        raise DatasetError(f"{tasks_path} needs task_index and task columns, has {table.column_names}")
    by_index = dict(zip(table.column("task_index").to_pylist(), table.column(text_col).to_pylist(), strict=True))
    src.tasks = [by_index[i] for i in sorted(by_index)]
    return src


class _VideoReader:
    """Decodes episodes' frames from shared mp4 files, keeping the file open between consecutive
    episodes so that a file is decoded once front to back."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.container: Any = None
        self.frames: Iterator[Any] | None = None
        self.next_time = 0.0

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container, self.frames, self.path = None, None, None

    def read(self, path: Path, start: float, n: int, fps: float, what: str) -> list[np.ndarray]:
        av = _av()
        tol = 0.5 / fps
        if not path.exists():
            raise DatasetError(f"{what}: video {path} is missing")
        try:
            if path != self.path or start < self.next_time - tol:
                self.close()
                self.container = av.open(str(path))
                self.path = path
                stream = self.container.streams.video[0]
                if start > tol:
                    self.container.seek(int(start / stream.time_base), stream=stream, backward=True)
                self.frames = self.container.decode(stream)
            assert self.frames is not None
            out: list[np.ndarray] = []
            for frame in self.frames:
                t = float(frame.pts * frame.time_base) if frame.pts is not None else float(frame.time or 0.0)
                if t < start - tol:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                self.next_time = t + 1.0 / fps
                if len(out) == n:
                    return out
        except av.FFmpegError as e:
            self.close()
            raise DatasetError(f"{what}: cannot decode video {path}: {e}") from None
        self.close()
        raise DatasetError(f"{what}: video {path} is shorter than the data: {n} frames from t={start:.3f}s "
                           f"needed, {len(out)} found")


def _square(frames: np.ndarray, size: int) -> np.ndarray:
    """Center-crop (N, H, W, 3) frames to a square and resize them to ``size`` (area filter)."""
    from PIL import Image

    n, h, w, _ = frames.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    frames = frames[:, top:top + s, left:left + s]
    if s == size:
        return np.ascontiguousarray(frames)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BOX)) for f in frames])


def _decode_images(column: Any, what: str) -> np.ndarray:
    """An image feature's parquet column (structs with PNG/JPEG bytes) as (N, H, W, 3) uint8."""
    import io

    from PIL import Image

    out = []
    for i, item in enumerate(column.to_pylist()):
        data = item.get("bytes") if isinstance(item, dict) else None
        if not data:
            raise DatasetError(f"{what}: row {i} has no embedded image bytes")
        out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(out)


def import_lerobot(data: str | Path, out: str | Path, image_size: int | None = None, camera: str | None = None,
                   action_key: str = "action", episodes_succeed: bool = False, max_episodes: int | None = None,
                   episodes_per_shard: int = 16, progress: bool = True) -> dict[str, Any]:
    """Read the LeRobot v3 dataset ``data`` into a wmpo dataset at ``out`` (created; must not exist)."""
    data, out = Path(data), Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose a new --out")
    if image_size is not None and image_size < 8:
        raise ConfigError(f"--image-size must be >= 8, got {image_size}")
    src = _open_source(data, camera, action_key)
    info = src.info
    fps = float(info["fps"])
    wmpo_info = info.get("wmpo") or {}
    shape = info["features"][src.camera].get("shape", [])
    if image_size is None:
        image_size = int(wmpo_info.get("image_size") or min(shape[:2] or [0]) or 0)
        if image_size < 8:
            raise DatasetError(f"{data}: camera {src.camera} has shape {shape}; pass --image-size")
    camera_meta = wmpo_info.get("camera") or {"name": src.camera}
    columns = [action_key, "frame_index", "task_index"] + [c for c in ("success", "next.success")
                                                           if c in info["features"]]
    if src.camera_kind == "image":
        columns.append(src.camera)
    episodes = src.episodes[:max_episodes] if max_episodes else src.episodes

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    init_dataset(tmp, image_size, camera_meta, fps=int(wmpo_info.get("fps") or round(fps)))
    pa = _pa()
    reader = _VideoReader()
    file_path: Path | None = None  # the data file in memory (one at a time, a few 100 MB at most)
    file_table: Any = None
    file_episodes = np.zeros(0, np.int64)
    buffer: list[Episode] = []
    shards = frames_total = successes = 0

    def flush() -> None:
        nonlocal buffer, shards
        if buffer:
            write_shard(tmp / "data" / f"shard-lerobot-{shards:06d}.npz", buffer)
            shards += 1
            buffer = []

    try:
        for row in tqdm(episodes, desc="import lerobot", unit="episode", disable=not progress):
            e = int(row["episode_index"])
            what = f"{data} episode {e}"
            path = data / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                   file_index=row["data/file_index"])
            if path != file_path:  # episodes of one file come one after another: read it once
                if not path.exists():
                    raise DatasetError(f"{what}: data file {path} is missing")
                names = _parquet_names(path)
                if missing := [c for c in columns + ["episode_index"] if c not in names]:
                    raise DatasetError(f"{path} lacks the columns {missing}")
                file_table, file_path = _read_parquet(path, columns=columns + ["episode_index"]), path
                file_episodes = np.asarray(file_table.column("episode_index").to_numpy())
            table = file_table.filter(pa.array(file_episodes == e)).select(columns)
            n = table.num_rows
            if n != row["length"] or n < 2:
                raise DatasetError(f"{what}: {path} has {n} rows, the episodes metadata says {row['length']}"
                                   + (" (an episode needs at least 2 frames)" if n < 2 else ""))
            order = np.argsort(np.asarray(table.column("frame_index").to_numpy()), kind="stable")
            try:
                actions = np.stack(table.column(action_key).to_numpy(zero_copy_only=False)).astype(np.float32)
            except ValueError as e2:
                raise DatasetError(f"{path}: column {action_key!r} is not a fixed-width vector: {e2}") from None
            actions = actions[order]
            if actions.shape != (n, ACTION_DIM):
                raise DatasetError(f"{path}: column {action_key!r} has width {actions.shape[1:]} in episode {e}; "
                                   f"wmpo's actions are {ACTION_DIM}-D")
            if src.camera_kind == "video":
                k = f"videos/{src.camera}"
                vpath = data / info["video_path"].format(video_key=src.camera, chunk_index=row[f"{k}/chunk_index"],
                                                         file_index=row[f"{k}/file_index"])
                frames = np.stack(reader.read(vpath, float(row[f"{k}/from_timestamp"]), n, fps, what))
            else:
                frames = _decode_images(table.column(src.camera), what)[order]
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise DatasetError(f"{what}: camera {src.camera} frames have shape {frames.shape[1:]}, not (H, W, 3)")
            frames = _square(frames, image_size)
            if "success" in columns:
                success = np.asarray(table.column("success").to_numpy(zero_copy_only=False), bool)[order]
            elif "next.success" in columns:  # success after row t's action: that of frame t + 1
                nxt = np.asarray(table.column("next.success").to_numpy(zero_copy_only=False), bool)[order]
                success = np.concatenate([[False], nxt[:-1]])
            else:
                success = np.zeros(n, bool)
                success[-1] = episodes_succeed
            meta = json.loads(row["wmpo/meta"]) if row.get("wmpo/meta") else None
            if meta is None:
                task_index = int(table.column("task_index")[0].as_py())
                text = src.tasks[task_index] if task_index < len(src.tasks) else (row.get("tasks") or [""])[0]
                meta = {"task": text, "instruction": text, "seed": e,
                        "source": {"kind": "lerobot", "dataset": str(data), "episode_index": e,
                                   "codebase_version": info["codebase_version"]},
                        "camera": camera_meta, "image_size": image_size}
            for k in ("length", "succeeded"):
                meta.pop(k, None)
            buffer.append(Episode(frames, actions[:-1], success, meta))
            frames_total += n
            successes += bool(success.any())
            if len(buffer) >= episodes_per_shard:
                flush()
        flush()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        reader.close()
    manifest = {"source": "lerobot", "from": str(data), "codebase_version": info["codebase_version"],
                "camera": src.camera, "episodes": len(episodes), "frames": frames_total, "successes": successes,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    runs = list(wmpo_info.get("runs") or []) + [manifest]
    atomic_write_json(tmp / "meta" / "manifest.json", {"runs": runs})
    tmp.rename(out)
    used = {src.camera, *columns, *INDEX_FEATURES, "next.done"}
    return {"episodes": len(episodes), "frames": frames_total, "successes": successes,
            "image_size": image_size, "camera": src.camera, "out": str(out),
            "not_imported": sorted(set(info["features"]) - used)}
