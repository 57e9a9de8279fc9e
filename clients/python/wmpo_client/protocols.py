"""The public interfaces of the clients: what code that drives the services may rely on.

`Simulator` is what the gymnasium envs, the verify-before-execute helper and the core's GRPO
code need from a simulator client; `SimulatorClient` (HTTP) and `GrpcSimulatorClient` both fit
it. `Judge` is what they need from a judge client; `JudgeClient` and `GrpcJudgeClient` fit it.
Typing against these (not against one transport's class) keeps callers transport-agnostic, and
a test double must implement the same calls. No runtime cost: plain `typing.Protocol`s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from wmpo_client.judge_results import GroupJudgement, JudgeResult
from wmpo_client.results import CreateSessionResult, ImagineResult, ReplayResult, StepOutcome


class Simulator(Protocol):
    """A sync simulator client: imagine, sessions and forked groups, replay."""

    def imagine(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> ImagineResult: ...

    def create_session(
        self,
        frame: np.ndarray,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult: ...

    def create_group(
        self,
        frame: np.ndarray,
        group_size: int,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult: ...

    def step(
        self,
        session_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome: ...

    def step_group(
        self,
        group_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome: ...

    def replay(
        self, session_id: str, seed: int | None = None, request_id: str | None = None
    ) -> ReplayResult: ...

    def close_session(self, session_id: str) -> list[str]: ...

    def close_group(self, group_id: str) -> list[str]: ...

    def close(self) -> None: ...


class Judge(Protocol):
    """A sync judge client: one video, or a group of rollouts with dual-noise verification."""

    def judge(
        self,
        frames: np.ndarray,
        instruction: str,
        *,
        kind: str | None = None,
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        request_id: str | None = None,
    ) -> JudgeResult: ...

    def judge_group(
        self,
        videos: Sequence[np.ndarray],
        instruction: str,
        *,
        replays: Mapping[int, np.ndarray] | None = None,
        kind: str | None = None,
        reward: str = "success",
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        max_flags: int | None = None,
        request_id: str | None = None,
    ) -> GroupJudgement: ...

    def close(self) -> None: ...
