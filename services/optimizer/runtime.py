"""The object both transports share: the optimizer engine and the request checks.

Built once per process (in the app lifespan, see `server`); HTTP and gRPC handlers only
decode, call `open_plan` / `plan` and map results and errors. Validation lives here, so both
transports refuse the same requests with the same messages (InvalidArgument: 400 /
INVALID_ARGUMENT, each message naming the field).

Queue mode (`plan_queue`): with WMPO_REDIS_URL, unary plans go through a Redis Streams work
queue shared by the replicas; a replica both enqueues and consumes unless
WMPO_QUEUE_WORKER=false (an API-only replica), and `wmpo serve optimizer --worker` runs a
replica that only consumes. Without Redis plans run straight on this process's engine.
Streamed plans always run on the engine of the replica that holds the connection.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.checks import (
    check_dtype,
    check_finite,
    check_instruction,
    check_rgb_frames,
    require,
)
from services.common.errors import InvalidArgument
from services.common.health import Readiness
from services.common.metrics import ServiceMetrics
from services.common.queues import QueueWorker, WorkQueue, make_queue
from services.optimizer.engine import OptimizerEngine, OptimizerEngineConfig, PlanOutcome, PlanRun
from services.optimizer.plan_queue import (
    PLAN_QUEUE,
    outcome_from_payload,
    plan_handler,
    plan_payload,
)
from services.optimizer.settings import MAX_INSTRUCTION_CHARS, OptimizerSettings
from wmpo.optimize.planner import Planner, PlanRequest

SERVICE = "optimizer"
VERSION = "0.1.0"
SEED_LIMIT = 2**32  # the planner seeds torch generators with seed and seed + a constant

log = logging.getLogger("wmpo.optimizer.runtime")


def seed_for_request(request_id: str) -> int:
    """The seed of a queued plan that names none: derived from its request id, so a retry with
    the same id is the same request (same payload digest, same plan)."""
    digest = hashlib.sha256(f"wmpo-plan-seed:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % SEED_LIMIT


# ------------------------------------------------------------- validation
# Checks that need no model; the HTTP models and the gRPC servicer call them at decoding.


def check_frame(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    """uint8 (H, W, 3) or (1, H, W, 3) -> (H, W, 3)."""
    check_dtype(frame, np.uint8, name)
    if frame.ndim == 4 and frame.shape[0] == 1:
        frame = frame[0]
    require(
        frame.ndim == 3 and frame.shape[-1] == 3,
        f"{name}: expected one RGB frame (H, W, 3) or (1, H, W, 3), got shape {frame.shape}",
    )
    return frame


def check_target_frames(frames: np.ndarray, name: str = "target_frames") -> np.ndarray:
    """uint8 (n, H, W, 3), n >= 1."""
    check_rgb_frames(frames, name, "(n, H, W, 3)")
    require(frames.shape[0] >= 1, f"{name}: no frames (n=0); omit the field for a plan from text")
    return frames


def check_init_actions(actions: np.ndarray, name: str = "init_actions") -> np.ndarray:
    """float32 (T, 4), finite, in [-1, 1]."""
    check_dtype(actions, np.float32, name)
    require(
        actions.ndim == 2 and actions.shape[-1] == 4,
        f"{name}: expected (T, 4) actions (xyz delta, gripper), got shape {actions.shape}",
    )
    check_finite(actions, name)
    require(
        bool(np.all(np.abs(actions) <= 1)),
        f"{name}: actions must be in [-1, 1], got values up to {float(np.abs(actions).max()):.3g}",
    )
    return actions


@dataclass(frozen=True)
class PlannerInfo:
    """What a caller needs to build a request for this deployment."""

    horizon: int  # actions per plan (T)
    image_size: int  # frames are image_size x image_size
    plan_frames: int  # frames of the imagined future (P); target clips have 1..P frames
    max_steps: int
    default_steps: int
    residual_idm: bool
    provenance: dict[str, str]


class OptimizerRuntime:
    def __init__(self, planner: Planner, settings: OptimizerSettings, *, consume: bool | None = None) -> None:
        """`consume`: run queued plans here (queue mode only; default `settings.queue_worker`)."""
        self.settings = settings
        self.planner = planner
        self.metrics = ServiceMetrics(SERVICE)
        self.engine = OptimizerEngine(planner, OptimizerEngineConfig.from_settings(settings),
                                      self.metrics)
        self.queue_mode = settings.redis_url is not None
        self.queue: WorkQueue | None = (
            make_queue(PLAN_QUEUE, settings, self.metrics) if self.queue_mode else None
        )
        self.consume = self.queue_mode and (settings.queue_worker if consume is None else consume)
        self._worker: QueueWorker | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.queue is not None:  # first: an unreachable Redis fails startup
            await self.queue.start()
        await self.engine.start()
        if self.queue is not None and self.consume:
            handler = plan_handler(self.engine, self.planner, wait_for_capacity=True)
            self._worker = QueueWorker(self.queue, handler, "optimizer", log)
            self._worker.start()

    async def stop(self) -> None:
        if self._worker is not None:
            await self._worker.stop(self.settings.queue_drain_s)
            self._worker = None
        await self.engine.stop()
        if self.queue is not None:
            await self.queue.close()

    def readiness(self) -> Readiness:
        if not self.engine.running:
            return Readiness(False, "the optimizer engine is not running")
        if self.queue is not None and (problem := self.queue.problem):
            return Readiness(False, problem)
        if self._worker is not None and (problem := self._worker.problem):
            return Readiness(False, problem)
        return Readiness(True)

    def info(self) -> PlannerInfo:
        p = self.planner
        prov = {k: v if isinstance(v, str) else str(v) for k, v in p.provenance().items()
                if k != "planner"}
        return PlannerInfo(p.horizon, p.image_size, p.plan_frames, self.settings.max_steps,
                           self.settings.default_steps, p.idm is not None, prov)

    # ------------------------------------------------------------ validation
    def request(
        self,
        frame: np.ndarray,
        instruction: str,
        *,
        target_frames: np.ndarray | None = None,
        init_actions: np.ndarray | None = None,
        steps: int | None = None,
        seed: int | None = None,
        request_id: str = "",
    ) -> tuple[PlanRequest, int]:
        """Check a plan request against this deployment -> (the planner's request, steps).
        Without a seed: one derived from `request_id` if given (queue mode), else drawn."""
        size = self.planner.image_size
        frame = check_frame(frame)
        require(
            frame.shape[:2] == (size, size),
            f"frame: the planner takes {size}x{size} frames, got {frame.shape[0]}x{frame.shape[1]} "
            "(resize before sending)",
        )
        check_instruction(instruction, MAX_INSTRUCTION_CHARS, "push the puck to the goal")
        if target_frames is not None:
            target_frames = check_target_frames(target_frames)
            n, p = len(target_frames), self.planner.plan_frames
            require(
                target_frames.shape[1:3] == (size, size),
                f"target_frames: the planner takes {size}x{size} frames, got "
                f"{target_frames.shape[1]}x{target_frames.shape[2]} (resize before sending)",
            )
            require(n <= p, f"target_frames: 1 (a goal image) to {p} frames (the plan's future), got {n}")
        if init_actions is not None:
            init_actions = check_init_actions(init_actions)
            t = self.planner.horizon
            require(
                init_actions.shape == (t, 4),
                f"init_actions: this planner's horizon is {t} actions, expected shape ({t}, 4), "
                f"got {init_actions.shape}",
            )
        limit = self.settings.max_steps
        n_steps = self.settings.default_steps if steps is None else steps
        require(1 <= n_steps <= limit, f"steps must be in [1, {limit}] (WMPO_MAX_STEPS), got {n_steps}")
        if seed is None:
            seed = seed_for_request(request_id) if request_id else secrets.randbelow(SEED_LIMIT)
        require(0 <= seed < SEED_LIMIT, f"seed must be in [0, 2**32), got {seed}")
        req = PlanRequest(np.ascontiguousarray(frame), instruction, target_frames, init_actions,
                          n_steps, int(seed))
        try:
            self.planner.check(req)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return req, n_steps

    # ------------------------------------------------------------ plans
    def open_plan(self, frame: np.ndarray, instruction: str, **options: Any) -> PlanRun:
        """Validate and admit a plan (400 / 429 here, before any response starts) and run it
        on this replica's engine."""
        options.pop("request_id", None)
        req, steps = self.request(frame, instruction, **options)
        return self.engine.open(req, steps)

    async def plan(self, frame: np.ndarray, instruction: str, *, request_id: str = "",
                   **options: Any) -> PlanOutcome:
        """Plan to the end; a cancelled caller cancels the plan. In queue mode the plan goes
        through the shared queue (`request_id` makes a retry return the stored plan)."""
        if self.queue is None:
            run = self.open_plan(frame, instruction, **options)
            try:
                return await run.result()
            finally:
                run.close()
        req, steps = self.request(frame, instruction, request_id=request_id, **options)
        key = request_id or f"anon-{uuid.uuid4().hex}"
        started = time.perf_counter()
        out = await self.queue.submit(key, plan_payload(req, steps))
        return outcome_from_payload(out, time.perf_counter() - started)
