"""Recorded runs for the rollout viewer: the episode datasets under one directory, read-only.

A run is a wmpo episode dataset (`meta/info.json` + `data/shard-*.npz`, `wmpo.data.episodes`)
at most `MAX_DEPTH` directories below the runs directory (`WMPO_RUNS_DIR`). An imagined run
(`wmpo imagine-dataset`: every episode's `source.kind` is "imagined") names the real dataset
it replays (`source.from`); when that dataset is also a run here, each imagined episode is
paired with the real one of the same task and seed, so the page shows imagined vs real.

Routes (keyed, like the rest of the API):

- `GET /v1/runs` -> the runs (name, episodes, tasks, kind, paired real run);
- `GET /v1/runs/episodes?run=NAME` -> its episodes' metadata;
- `GET /v1/runs/episode?run=NAME&index=I` -> one episode's frames as PNG (and the paired real
  episode's frames at the imagined frame stride).

Nothing outside the runs directory can be read: a run name is path segments of
`[A-Za-z0-9._-]` that do not start with '.', resolved (symlinks too) and required to stay
inside the directory, and so is every shard file read. An unknown run and one outside read
the same (404). Episodes are read shard by shard: the listing reads only each shard's
episode metadata, an episode only its shard's columns.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from wmpo_client.codec import TensorJSON

from services.common.errors import InvalidArgument, NotFound, error_responses

MAX_DEPTH = 3  # run directories this deep below the runs directory are listed
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}"
RUN_NAME = re.compile(rf"^{_SEGMENT}(/{_SEGMENT}){{0,{MAX_DEPTH - 1}}}$")
_OUTPUT_MAX_BYTES = 2**62  # responses are bounded by the episode, not by the codec
RunName = Annotated[str, Query(max_length=400, description="A run's name (GET /v1/runs).")]
EpisodeIndex = Annotated[int, Query(ge=0, lt=2**31, description="Episode index.")]


@dataclass(frozen=True)
class _Episode:
    shard: Path
    rows: tuple[int, int]  # [start, end) rows of the episode in its shard
    meta: dict[str, Any]


@dataclass(frozen=True)
class _Run:
    name: str
    path: Path
    episodes: list[_Episode]
    stamp: tuple[tuple[str, float], ...]  # shard names and mtimes the listing was read from

    @property
    def imagined_from(self) -> str | None:
        sources = [e.meta.get("source") for e in self.episodes]
        if sources and all(isinstance(s, dict) and s.get("kind") == "imagined" for s in sources):
            origin = sources[0].get("from")
            return origin if isinstance(origin, str) else None
        return None


class RunOut(BaseModel):
    name: str
    kind: Literal["real", "imagined"] = Field(
        description="imagined: the world model's replays of a real dataset (wmpo imagine-dataset)."
    )
    episodes: int
    successes: int
    tasks: list[str]
    image_size: int | None
    real_run: str | None = Field(
        description="Imagined runs: the real run (under the runs directory) they replay; null "
        "if it is not there."
    )


class RunsOut(BaseModel):
    configured: bool = Field(description="False: no runs directory (WMPO_RUNS_DIR) is set.")
    runs: list[RunOut]


class EpisodeOut(BaseModel):
    index: int
    task: str
    instruction: str
    seed: int | None
    length: int = Field(description="Actions (the episode has length + 1 frames).")
    succeeded: bool
    frame_stride: int = Field(description="Environment steps between consecutive frames.")


class EpisodesOut(BaseModel):
    run: str
    kind: Literal["real", "imagined"]
    real_run: str | None
    episodes: list[EpisodeOut]


class RealEpisodeOut(BaseModel):
    run: str
    index: int
    frames: TensorJSON = Field(description="uint8 (T, H, W, 3) PNG, at the imagined stride.")
    success: list[bool]


class EpisodeFramesOut(BaseModel):
    run: str
    episode: EpisodeOut
    frames: TensorJSON = Field(description="uint8 (T, H, W, 3) PNG.")
    success: list[bool]
    real: RealEpisodeOut | None = Field(
        description="Imagined runs: the real episode it replays, frames subsampled to match."
    )


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


class RunStore:
    """Reads the runs under `root` (None: no runs directory; every run is unknown)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).resolve() if root else None
        self._cache: dict[str, _Run] = {}

    # ------------------------------------------------------------------ listing
    def names(self) -> list[str]:
        """Run names (relative paths) under the root, sorted; dot-directories are skipped."""
        if self.root is None or not self.root.is_dir():
            return []
        names: list[str] = []
        for top, dirs, _files in os.walk(self.root):  # followlinks=False: no symlinked trees
            rel = Path(top).relative_to(self.root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            if rel.parts and (Path(top) / "meta" / "info.json").is_file():
                names.append(rel.as_posix())
                dirs[:] = []  # a dataset's own folders are not runs
            elif len(rel.parts) >= MAX_DEPTH:
                dirs[:] = []
        return [n for n in names if RUN_NAME.match(n)]

    def _path(self, name: str) -> Path:
        if not RUN_NAME.match(name):
            raise InvalidArgument(
                f"run: {name[:120]!r} is not a run name (up to {MAX_DEPTH} path segments of "
                "letters, digits, '.', '_' and '-', none starting with '.')"
            )
        unknown = NotFound(f"no recorded run {name!r} in the runs directory")
        if self.root is None:
            raise NotFound("no runs directory is configured (set WMPO_RUNS_DIR)")
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or not (path / "meta" / "info.json").is_file():
            raise unknown
        return path

    def run(self, name: str) -> _Run:
        path = self._path(name)
        shards = [
            s for s in sorted((path / "data").glob("shard-*.npz")) if _inside(s, self.root or path)
        ]
        stamp = tuple((s.name, s.stat().st_mtime) for s in shards)
        cached = self._cache.get(name)
        if cached is not None and cached.path == path and cached.stamp == stamp:
            return cached
        episodes: list[_Episode] = []
        for shard in shards:
            episodes += _shard_episodes(shard)
        run = _Run(name, path, episodes, stamp)
        self._cache[name] = run
        return run

    def real_run(self, run: _Run) -> str | None:
        """The run an imagined run replays, if it is under the root too."""
        origin = run.imagined_from
        if origin is None or self.root is None:
            return None
        parts = [p for p in Path(origin).parts if p not in ("/", "")]
        candidates = []
        if Path(origin).is_absolute() and Path(origin).resolve().is_relative_to(self.root):
            candidates.append(Path(origin).resolve().relative_to(self.root).as_posix())
        # Relative to wherever the imagining command ran: try its trailing segments.
        candidates += ["/".join(parts[k:]) for k in range(len(parts))]
        for name in candidates:
            if RUN_NAME.match(name) and name != run.name:
                try:
                    self._path(name)
                except (NotFound, InvalidArgument):
                    continue
                return name
        return None

    def summary(self, name: str) -> RunOut:
        run = self.run(name)
        info = _read_info(run.path)
        return RunOut(
            name=name,
            kind="imagined" if run.imagined_from is not None else "real",
            episodes=len(run.episodes),
            successes=sum(bool(e.meta.get("succeeded")) for e in run.episodes),
            tasks=sorted({str(e.meta.get("task", "")) for e in run.episodes}),
            image_size=info.get("image_size") if isinstance(info.get("image_size"), int) else None,
            real_run=self.real_run(run),
        )

    # ----------------------------------------------------------------- episodes
    def episode_frames(self, name: str, index: int) -> EpisodeFramesOut:
        run = self.run(name)
        if not 0 <= index < len(run.episodes):
            raise NotFound(f"run {name!r} has {len(run.episodes)} episodes; no episode {index}")
        ep = run.episodes[index]
        frames, success = _read_rows(ep)
        real_out = None
        real_name = self.real_run(run)
        if real_name is not None:
            real_run = self.run(real_name)
            match = _paired_index(run, index, real_run)
            if match is not None:
                stride = _stride(ep.meta)
                real_frames, real_success = _read_rows(real_run.episodes[match])
                n = len(frames)
                real_out = RealEpisodeOut(
                    run=real_name,
                    index=match,
                    frames=_png(real_frames[::stride][:n], "real frames"),
                    success=[bool(s) for s in real_success[::stride][:n]],
                )
        return EpisodeFramesOut(
            run=name,
            episode=_episode_out(index, ep.meta),
            frames=_png(frames, "frames"),
            success=[bool(s) for s in success],
            real=real_out,
        )


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads((path / "meta" / "info.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _load(shard: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(shard, allow_pickle=False) as z:
            return {c: z[c] for c in columns}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise NotFound(f"dataset shard {shard.name} is unreadable ({type(exc).__name__})") from None


def _shard_episodes(shard: Path) -> list[_Episode]:
    cols = _load(shard, ("is_last", "episodes_json"))
    try:
        metas = json.loads(str(cols["episodes_json"]))
    except ValueError:
        raise NotFound(f"dataset shard {shard.name} has unreadable episode metadata") from None
    ends = (np.flatnonzero(cols["is_last"]) + 1).tolist()
    if not isinstance(metas, list) or len(metas) != len(ends):
        raise NotFound(f"dataset shard {shard.name} is inconsistent")
    starts = [0, *ends[:-1]]
    return [
        _Episode(shard, (s, e), m if isinstance(m, dict) else {})
        for m, s, e in zip(metas, starts, ends, strict=True)
    ]


def _read_rows(ep: _Episode) -> tuple[np.ndarray, np.ndarray]:
    cols = _load(ep.shard, ("frame", "success"))
    s, e = ep.rows
    return cols["frame"][s:e], cols["success"][s:e]


def _stride(meta: dict[str, Any]) -> int:
    stride = meta.get("frame_stride", 1)
    return stride if isinstance(stride, int) and stride >= 1 else 1


def _episode_out(index: int, meta: dict[str, Any]) -> EpisodeOut:
    seed = meta.get("seed")
    return EpisodeOut(
        index=index,
        task=str(meta.get("task", "")),
        instruction=str(meta.get("instruction", "")),
        seed=seed if isinstance(seed, int) else None,
        length=int(meta.get("length", 0)),
        succeeded=bool(meta.get("succeeded", False)),
        frame_stride=_stride(meta),
    )


def _key(meta: dict[str, Any]) -> tuple[str, str]:
    return str(meta.get("task")), json.dumps(meta.get("seed"))


def _paired_index(imagined: _Run, index: int, real: _Run) -> int | None:
    """The real episode an imagined one replays: same task and seed (the k-th imagined episode
    of a (task, seed) pairs with the k-th real one)."""
    key = _key(imagined.episodes[index].meta)
    nth = sum(_key(e.meta) == key for e in imagined.episodes[:index])
    matches = [i for i, e in enumerate(real.episodes) if _key(e.meta) == key]
    return matches[nth] if nth < len(matches) else None


def _png(frames: np.ndarray, name: str) -> TensorJSON:
    return TensorJSON.from_numpy(frames, name, "png", max_bytes=_OUTPUT_MAX_BYTES)


def runs_router(store: RunStore) -> APIRouter:
    """The read-only runs routes over `store`."""
    router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=error_responses(400, 404, 422))

    @router.get("", response_model=RunsOut, summary="Recorded runs under the runs directory")
    def list_runs() -> RunsOut:
        runs = []
        for name in store.names():
            try:
                runs.append(store.summary(name))
            except NotFound:  # an unreadable dataset is left out, not a failed listing
                continue
        return RunsOut(configured=store.root is not None, runs=runs)

    @router.get("/episodes", response_model=EpisodesOut, summary="A run's episodes")
    def list_episodes(run: RunName) -> EpisodesOut:
        summary = store.summary(run)
        episodes = store.run(run).episodes
        return EpisodesOut(
            run=run,
            kind=summary.kind,
            real_run=summary.real_run,
            episodes=[_episode_out(i, e.meta) for i, e in enumerate(episodes)],
        )

    @router.get("/episode", response_model=EpisodeFramesOut, summary="One episode's frames")
    def episode(run: RunName, index: EpisodeIndex) -> EpisodeFramesOut:
        return store.episode_frames(run, index)

    return router
