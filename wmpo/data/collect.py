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
from collections.abc import Callable
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
        if hasattr(source, "observe"):  # sources that report what really happened (drift)
            source.observe(frame, bool(info["success"]))
        actions.append(action)
        success.append(info["success"])
        if keep_frames:
            frames.append(frame)
    if not keep_frames:
        stats = source.episode_stats() if hasattr(source, "episode_stats") else {}
        return {"success": bool(any(success)), "length": len(actions), "seed": seed, "task": env.task, **stats}
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


@dataclass
class SourceSpec:
    """How to build an action source inside a worker process (sources hold envs/models)."""

    kind: str = "expert"
    noise_std: float = 0.5
    perturb_prob: float = 0.5
    checkpoint: str | None = None
    temperature: float = 1.0
    simulator_url: str | None = None  # verified-policy: the simulator service with a judge
    candidates: int = 4
    max_attempts: int = 3
    # optimizer: generator, vae, idm, variant, steps, execute_chunks, world_model (wmpo.optimize.source)
    optimizer: dict[str, Any] | None = None

    def build(self) -> ActionSource:
        return make_source(self.kind, noise_std=self.noise_std, perturb_prob=self.perturb_prob,
                           checkpoint=self.checkpoint, temperature=self.temperature,
                           simulator_url=self.simulator_url, candidates=self.candidates,
                           max_attempts=self.max_attempts, optimizer=self.optimizer)


def _worker(spec: SourceSpec, env_kwargs: dict[str, Any], jobs: list[tuple[str, int]],
            store: tuple[str, int] | None, wid: int, out_q: mp.Queue) -> None:
    from wmpo.envs import make_env

    if spec.kind in ("policy", "verified-policy", "optimizer"):
        import torch

        torch.set_num_threads(1)  # one core per worker process
    try:
        source = spec.build()
        writer = ShardWriter(store[0], store[1], prefix=f"w{wid}-") if store else None
        envs: dict[str, Any] = {}
        for task, seed in jobs:
            if task not in envs:
                envs[task] = make_env(task, **env_kwargs)
            result = run_episode(envs[task], source, seed, keep_frames=writer is not None)
            if writer is not None:
                writer.add(result)
                result = {"task": task, "seed": seed, "success": result.succeeded,
                          "length": result.length}
            out_q.put(("episode", wid, result))
        if writer is not None:
            writer.flush()
        for env in envs.values():
            env.close()
        out_q.put(("done", wid, None))
    except Exception as e:  # reported to the parent, which fails the run loudly
        out_q.put(("error", wid, f"{type(e).__name__}: {e}"))


def run_episodes(
    spec: SourceSpec,
    jobs: list[tuple[str, int]],
    env_kwargs: dict[str, Any],
    workers: int,
    store: tuple[str, int] | None = None,
    desc: str = "episodes",
    progress: bool = True,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``jobs`` (task, seed) in ``workers`` processes; returns one result dict per episode
    (task, seed, success, length), in completion order. With ``store=(dir, per_shard)`` the
    episodes are also written to that dataset; ``on_episode`` sees each result as it arrives."""
    if not jobs:
        return []
    n_workers = max(1, min(workers, len(jobs)))
    ctx = mp.get_context("spawn")  # EGL contexts do not survive fork
    out_q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(spec, env_kwargs, jobs[w::n_workers], store, w, out_q),
                         daemon=True) for w in range(n_workers)]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    t0 = time.time()
    frames = 0
    finished = 0
    with tqdm(total=len(jobs), desc=desc, unit="ep", disable=not progress) as bar:
        try:
            while finished < n_workers:
                try:
                    kind, wid, payload = out_q.get(timeout=5)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise WmpoError("a worker process died; rerun to resume") from None
                    continue
                if kind == "episode":
                    results.append(payload)
                    if on_episode is not None:
                        on_episode(payload)
                    frames += payload["length"] + 1
                    bar.update(1)
                    bar.set_postfix(fps=f"{frames / (time.time() - t0):.0f}")
                elif kind == "done":
                    finished += 1
                else:
                    raise WmpoError(f"worker {wid} failed: {payload}")
        finally:
            for p in procs:
                if p.is_alive() and finished < n_workers:
                    p.terminate()
                p.join()
    return results


def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Collect ``cfg.episodes`` episodes per task. Returns a summary with throughput."""
    from wmpo.envs.metaworld_env import DEFAULT_CAMERA
    from wmpo.utils.checkpoint import environment_info

    cfg.validate()
    spec = SourceSpec(cfg.source, cfg.noise_std, cfg.perturb_prob, cfg.checkpoint, cfg.temperature)
    desc = spec.build().describe()
    out = Path(cfg.out)
    init_dataset(out, cfg.image_size, DEFAULT_CAMERA.to_dict())
    have = existing_keys(out)
    jobs = [
        (task, seed)
        for seed in range(cfg.seed_start, cfg.seed_start + cfg.episodes)
        for task in cfg.tasks
        if episode_key({"task": task, "seed": seed, "source": desc}) not in have
    ]
    t0 = time.time()
    results = run_episodes(spec, jobs, {"image_size": cfg.image_size, "max_steps": cfg.max_steps},
                           cfg.workers, store=(str(out), cfg.episodes_per_shard),
                           desc=f"collect {desc['kind']}", progress=progress)
    elapsed = time.time() - t0
    stats = {t: {"episodes": 0, "successes": 0} for t in cfg.tasks}
    for r in results:
        stats[r["task"]]["episodes"] += 1
        stats[r["task"]]["successes"] += int(r["success"])
    frames = sum(r["length"] + 1 for r in results)
    summary = {
        "source": desc,
        "tasks": cfg.tasks,
        "seeds": [cfg.seed_start, cfg.seed_start + cfg.episodes - 1],
        "episodes_collected": len(jobs),
        "episodes_skipped_existing": cfg.episodes * len(cfg.tasks) - len(jobs),
        "per_task": stats,
        "frames": frames,
        "seconds": round(elapsed, 2),
        "frames_per_second": round(frames / elapsed, 1) if jobs else None,
        "workers": cfg.workers,
    }
    append_manifest(out, {**summary, "config": vars(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "environment": environment_info()})
    return summary
