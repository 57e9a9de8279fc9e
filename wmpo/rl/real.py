"""The real simulator behind the simulator client's group interface: the online-GRPO baseline.

``RealGroupSimulator`` answers ``create_group`` / ``step_group`` / ``close_group`` like the
simulator service, but with G MetaWorld envs reset to the start's layout seed, so
``wmpo.rl.imagination.imagine_groups`` and the trainer run unchanged with the real physics as
the environment (the papers' online-GRPO baseline, with the same real-rollout budget).
``RealSuccessJudge`` is its true success signal: the simulator's own flag, not a classifier.
Frames are returned at the world model's stride so the policy sees the same kind of input.
A member that succeeded stops moving (its env is done); later chunks are masked by the judge's
``done_frame``, as in imagination.

The trainer calls a group simulator from a thread pool, but an offscreen MuJoCo renderer's EGL
context can only be current in one thread: every env is created, stepped and closed on this
simulator's one worker thread.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from wmpo.rl.imagination import StartState, VideoVerdict


@dataclass
class _Member:
    env: Any
    frame: np.ndarray
    done_frame: int | None = None  # index in the member's video (start frame = 0)
    frames_out: int = 0


@dataclass(frozen=True)
class _Created:
    group_id: str
    session_ids: list[str]


@dataclass(frozen=True)
class _StepResult:
    frames: np.ndarray


@dataclass(frozen=True)
class _Outcome:
    results: list[_StepResult]


class RealGroupSimulator:
    def __init__(self, frame_stride: int = 2) -> None:
        self.frame_stride = frame_stride
        self.groups: dict[str, list[str]] = {}
        self.members: dict[str, _Member] = {}
        self._ids = itertools.count()
        self.real_episodes = 0  # the real-rollout budget spent
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="real-sim")  # see the module docstring

    def create_group(self, start: StartState, group_size: int, seed: int | None = None,
                     max_chunks: int = 0) -> _Created:
        return self._thread.submit(self._create_group, start, group_size).result()

    def step_group(self, group_id: str, actions: np.ndarray) -> _Outcome:
        return self._thread.submit(self._step_group, group_id, actions).result()

    def close_group(self, group_id: str) -> list[str]:
        return self._thread.submit(self._close_group, group_id).result()

    def close(self) -> None:
        """Close every open env and stop the worker thread."""
        for gid in list(self.groups):
            self.close_group(gid)
        self._thread.shutdown()

    def _create_group(self, start: StartState, group_size: int) -> _Created:
        from wmpo.envs import make_env

        gid = f"real-{next(self._ids)}"
        ids: list[str] = []
        self.groups[gid] = ids  # registered first, so close() finds envs of a group that failed half-made
        for _ in range(group_size):
            env = make_env(start.task)
            sid = f"{gid}-{len(ids)}"
            self.members[sid] = _Member(env, env.reset(seed=start.seed)[0])
            ids.append(sid)
        self.real_episodes += group_size
        return _Created(gid, ids)

    def _step_group(self, group_id: str, actions: np.ndarray) -> _Outcome:
        results = []
        for sid, chunk in zip(self.groups[group_id], actions, strict=True):
            m = self.members[sid]
            frames = []
            for t, a in enumerate(chunk):
                if m.done_frame is None:
                    m.frame, _, terminated, truncated, info = m.env.step(a)
                    if info["success"]:
                        m.done_frame = m.frames_out + (t // self.frame_stride) + 1
                if (t + 1) % self.frame_stride == 0:
                    frames.append(m.frame)
            m.frames_out += len(frames)
            results.append(_StepResult(np.stack(frames)))
        return _Outcome(results)

    def _close_group(self, group_id: str) -> list[str]:
        ids = self.groups.pop(group_id, [])
        for sid in ids:
            self.members.pop(sid).env.close()
        return ids


class RealSuccessJudge:
    """The real simulator's success flag as the judge (``session_ids`` say whose video it is)."""

    def __init__(self, sim: RealGroupSimulator) -> None:
        self.sim = sim

    def judge_videos(self, videos: list[np.ndarray], instructions: list[str], frame_stride: int,
                     session_ids: list[str] | None = None) -> list[VideoVerdict]:
        if session_ids is None:
            raise ValueError("the real-simulator judge needs the session ids of the videos")
        out = []
        for sid in session_ids:
            done = self.sim.members[sid].done_frame
            out.append(VideoVerdict(done is not None, 1.0 if done is not None else 0.0, done))
        return out
