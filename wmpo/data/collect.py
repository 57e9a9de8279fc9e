"""Collect episodes in the real simulator with worker processes, into an episode dataset.

Seeds: training data uses seeds below ``EVAL_SEED_BASE``; evaluation uses seeds from it
upward, so evaluation layouts never appear in training data. Collection refuses eval seeds.

Collection resumes: episodes already in the dataset (same task, seed and source) are skipped,
so an interrupted run is finished by running the same command again.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wmpo.data.episodes import (
    Episode,
    ShardWriter,
    append_manifest,
    episode_key,
    existing_keys,
    init_dataset,
)
from wmpo.data.sources import ActionSource, make_source
from wmpo.errors import ConfigError, WmpoError

EVAL_SEED_BASE = 1_000_000


def source_rng(seed: int, source: dict[str, Any]) -> np.random.Generator:
    """The action-noise generator of one episode: fixed by its seed and its source."""
    salt = zlib.crc32(repr(sorted(source.items())).encode())
    return np.random.default_rng([seed, salt])


def run_episode(env: Any, source: ActionSource, seed: int, keep_frames: bool = True) -> Episode | dict[str, Any]:
    """Run one episode until success or ``env.max_steps``.

    Returns an ``Episode`` when ``keep_frames``, else a small dict (success, length), which
    is what evaluation needs.
    """
    frame, info = env.reset(seed=seed)
    source.reset(source_rng(seed, source.describe()))
    frames, actions, success = [frame], [], [info["success"]]
    done = False
    while not done:
        action = source.act(env, frame)
        frame, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        actions.append(action)
        success.append(info["success"])
        if keep_frames:
            frames.append(frame)
    if not keep_frames:
        return {"success": bool(any(success)), "length": len(actions), "seed": seed, "task": env.task}
    meta = {
        "task": env.task,
        "instruction": env.instruction,
        "seed": seed,
        "source": source.describe(),
        "camera": env.camera.to_dict(),
        "image_size": env.image_size,
        "max_steps": env.max_steps,
    }
    return Episode(np.stack(frames), np.asarray(actions, np.float32), np.asarray(success), meta)


@dataclass
class CollectConfig:
    out: str
    tasks: list[str]
    source: str = "expert"
    episodes: int = 10  # per task
    seed_start: int = 0
    workers: int = 2
    image_size: int = 64
    max_steps: int = 160
    noise_std: float = 0.5
    perturb_prob: float = 0.5
    checkpoint: str | None = None
    temperature: float = 1.0
    episodes_per_shard: int = 16

    def validate(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.seed_start < 0 or self.seed_start + self.episodes > EVAL_SEED_BASE:
            raise ConfigError(
                f"training seeds must lie in [0, {EVAL_SEED_BASE}); seeds from {EVAL_SEED_BASE} up "
                f"are reserved for evaluation (got {self.seed_start}..{self.seed_start + self.episodes - 1})"
            )


def _worker(cfg: CollectConfig, jobs: list[tuple[str, int]], wid: int, out_q: mp.Queue) -> None:
    from wmpo.envs import make_env

    try:
        source = make_source(cfg.source, noise_std=cfg.noise_std, perturb_prob=cfg.perturb_prob,
                             checkpoint=cfg.checkpoint, temperature=cfg.temperature)
        writer = ShardWriter(cfg.out, cfg.episodes_per_shard, prefix=f"w{wid}-")
        envs: dict[str, Any] = {}
        for task, seed in jobs:
            if task not in envs:
                envs[task] = make_env(task, image_size=cfg.image_size, max_steps=cfg.max_steps)
            ep = run_episode(envs[task], source, seed)
            writer.add(ep)
            out_q.put(("episode", task, ep.succeeded, ep.length + 1))
        writer.flush()
        for env in envs.values():
            env.close()
        out_q.put(("done", wid, None, 0))
    except Exception as e:  # reported to the parent, which fails the run loudly
        out_q.put(("error", wid, f"{type(e).__name__}: {e}", 0))


def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Collect ``cfg.episodes`` episodes per task. Returns a summary with throughput."""
    from wmpo.envs.metaworld_env import DEFAULT_CAMERA
    from wmpo.utils.checkpoint import environment_info

    cfg.validate()
    source = make_source(cfg.source, noise_std=cfg.noise_std, perturb_prob=cfg.perturb_prob,
                         checkpoint=cfg.checkpoint, temperature=cfg.temperature)
    desc = source.describe()
    out = Path(cfg.out)
    init_dataset(out, cfg.image_size, DEFAULT_CAMERA.to_dict())
    have = existing_keys(out)
    jobs = [
        (task, seed)
        for seed in range(cfg.seed_start, cfg.seed_start + cfg.episodes)
        for task in cfg.tasks
        if episode_key({"task": task, "seed": seed, "source": desc}) not in have
    ]
    skipped = cfg.episodes * len(cfg.tasks) - len(jobs)
    stats: dict[str, dict[str, int]] = {t: {"episodes": 0, "successes": 0} for t in cfg.tasks}
    frames = 0
    t0 = time.time()
    if jobs:
        n_workers = min(cfg.workers, len(jobs))
        ctx = mp.get_context("spawn")  # EGL contexts do not survive fork
        out_q: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(cfg, jobs[w::n_workers], w, out_q), daemon=True)
                 for w in range(n_workers)]
        for p in procs:
            p.start()
        bar = tqdm(total=len(jobs), desc=f"collect {desc['kind']}", unit="ep", disable=not progress)
        finished = 0
        while finished < n_workers:
            try:
                kind, a, b, n = out_q.get(timeout=5)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise WmpoError("a collection worker died; completed shards are kept, rerun to resume") from None
                continue
            if kind == "episode":
                stats[a]["episodes"] += 1
                stats[a]["successes"] += int(b)
                frames += n
                bar.update(1)
                bar.set_postfix(fps=f"{frames / (time.time() - t0):.0f}")
            elif kind == "done":
                finished += 1
            else:
                for p in procs:
                    p.terminate()
                raise WmpoError(f"collection worker {a} failed: {b}")
        bar.close()
        for p in procs:
            p.join()
    elapsed = time.time() - t0
    summary = {
        "source": desc,
        "tasks": cfg.tasks,
        "seeds": [cfg.seed_start, cfg.seed_start + cfg.episodes - 1],
        "episodes_collected": len(jobs),
        "episodes_skipped_existing": skipped,
        "per_task": stats,
        "frames": frames,
        "seconds": round(elapsed, 2),
        "frames_per_second": round(frames / elapsed, 1) if jobs else None,
        "workers": cfg.workers,
    }
    append_manifest(out, {**summary, "config": vars(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "environment": environment_info()})
    return summary
