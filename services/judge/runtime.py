"""The object both transports share: the judge engine and the judge work queue.

Built once per process (in the app lifespan, see `server`); HTTP and gRPC
handlers only decode, call `judge` / `judge_group` and map results and errors.
Validation lives here, so both transports refuse the same requests with the
same messages.

Requests go through a work queue (`judge_queue`): in process by default,
Redis Streams with WMPO_REDIS_URL. In queue mode a replica both enqueues and
consumes unless WMPO_QUEUE_WORKER=false (an API-only replica);
`wmpo serve judge --worker` runs a replica that only consumes.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from services.common.checks import check_instruction, require
from services.common.health import Readiness
from services.common.metrics import ServiceMetrics
from services.common.queues import QueueWorker, WorkQueue, make_queue
from services.judge.engine import (
    JudgeEngine,
    JudgeEngineConfig,
    check_video,
    vlm_config_from_settings,
)
from services.judge.judge_queue import (
    DEFAULT_MAX_FLAGS,
    JUDGE_QUEUE,
    REWARDS,
    GroupOutcome,
    JudgeOutcome,
    JudgeParams,
    group_payload,
    group_result,
    judge_handler,
    judge_payload,
    judge_result,
)
from services.judge.settings import MAX_INSTRUCTION_CHARS, JudgeSettings
from wmpo.judge.success import SuccessJudge

SERVICE = "judge"
VERSION = "0.1.0"

log = logging.getLogger("wmpo.judge.runtime")


class JudgeRuntime:
    def __init__(
        self,
        classifier: SuccessJudge | None,
        settings: JudgeSettings,
        *,
        consume: bool | None = None,
    ) -> None:
        """`classifier`: the loaded success classifier, or None (VLM only). `consume`: run
        queued work here (default: always in process; with Redis, `settings.queue_worker`)."""
        self.settings = settings
        self.metrics = ServiceMetrics(SERVICE)
        self.engine = JudgeEngine(
            classifier,
            vlm_config_from_settings(settings),
            JudgeEngineConfig.from_settings(settings),
            self.metrics,
        )
        self.queue_mode = settings.redis_url is not None
        self.queue: WorkQueue = make_queue(JUDGE_QUEUE, settings, self.metrics)
        self.consume = (
            True if not self.queue_mode else (settings.queue_worker if consume is None else consume)
        )
        self._worker: QueueWorker | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # The queue first: an unreachable Redis fails startup before the model runs.
        await self.queue.start()
        await self.engine.start()
        if self.consume:
            handler = judge_handler(self.engine, wait_for_capacity=self.queue_mode)
            self._worker = QueueWorker(self.queue, handler, "judge", log)
            self._worker.start()

    async def stop(self) -> None:
        if self._worker is not None:
            await self._worker.stop(self.settings.queue_drain_s)
            self._worker = None
        await self.engine.stop()
        await self.queue.close()

    def readiness(self) -> Readiness:
        if not self.engine.running:
            return Readiness(False, "the judge engine is not running")
        problem = self.queue.problem
        if problem:
            return Readiness(False, problem)
        if self._worker is not None and (problem := self._worker.problem):
            return Readiness(False, problem)
        return Readiness(True)

    # ------------------------------------------------------------ validation
    def params(
        self,
        kind: str | None,
        instruction: str,
        frame_stride: int,
        threshold: float | None,
        clip_temperature: float | None,
    ) -> JudgeParams:
        """Validate what a request asks for; `kind` None or "" is the deployment's default."""
        engine = self.engine
        checked = engine.require_kind(kind or engine.default_kind)
        check_instruction(instruction, MAX_INSTRUCTION_CHARS, "press the button from the top")
        stride = frame_stride or 1
        engine.check_stride(stride, checked)
        return JudgeParams(
            kind=checked,
            instruction=instruction,
            frame_stride=stride,
            threshold=engine.resolve_threshold(threshold, checked),
            clip_temperature=engine.resolve_temperature(clip_temperature, checked),
        )

    def _check(self, frames: np.ndarray, params: JudgeParams, name: str) -> np.ndarray:
        check_video(frames, name)
        self.engine.check_video(frames, params.kind, params.frame_stride, name)
        return np.ascontiguousarray(frames)

    # ------------------------------------------------------------ requests
    async def judge(
        self,
        frames: np.ndarray,
        instruction: str,
        *,
        kind: str | None = None,
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        request_id: str = "",
    ) -> JudgeOutcome:
        """Judge one video (T, H, W, 3); `request_id` makes retries idempotent."""
        params = self.params(kind, instruction, frame_stride, threshold, clip_temperature)
        video = self._check(frames, params, "frames")
        key = request_id or f"anon-{uuid.uuid4().hex}"
        started = time.perf_counter()
        out = await self.queue.submit(key, judge_payload(video, params))
        return judge_result(out, time.perf_counter() - started)

    async def judge_group(
        self,
        videos: list[np.ndarray],
        instruction: str,
        *,
        replays: dict[int, np.ndarray] | list[tuple[int, np.ndarray]] | None = None,
        kind: str | None = None,
        reward: str = "success",
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        max_flags: int | None = None,
        request_id: str = "",
    ) -> GroupOutcome:
        """Judge G rollouts (and replays of some, for dual-noise verification) and reward them."""
        params = self.params(kind, instruction, frame_stride, threshold, clip_temperature)
        g = len(videos)
        limit = self.settings.max_group_size
        require(1 <= g <= limit, f"a group has 1 to {limit} videos, got {g}")
        require(reward in REWARDS, f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        require(
            not (reward == "clip" and params.kind == "vlm"),
            "reward=clip needs clip scores, which only kind=classifier gives; use success or score",
        )
        flags = DEFAULT_MAX_FLAGS if max_flags is None else max_flags
        require(flags >= 0, f"max_flags must be >= 0, got {flags}")
        pairs = list(replays.items()) if isinstance(replays, dict) else list(replays or [])
        by_index: dict[int, np.ndarray] = {}
        for index, frames in pairs:
            require(
                0 <= index < g, f"replay index {index} is not a rollout of this group (0..{g - 1})"
            )
            require(index not in by_index, f"two replays for rollout {index}")
            by_index[index] = self._check(frames, params, f"replay {index}")
        checked = [self._check(v, params, f"video {i}") for i, v in enumerate(videos)]
        total = g + len(by_index)
        cap = self.settings.max_queued_videos
        require(
            total <= cap,
            f"{total} videos (rollouts + replays) in one request exceed the limit of {cap} "
            "(WMPO_MAX_QUEUED_VIDEOS); split the request",
        )
        key = request_id or f"anon-{uuid.uuid4().hex}"
        started = time.perf_counter()
        payload = group_payload(checked, by_index, params, reward, flags)  # type: ignore[arg-type]
        out = await self.queue.submit(key, payload)
        return group_result(out, time.perf_counter() - started)
