"""Plans as queue work (queue mode): the payload, the worker's handler, the result.

With WMPO_REDIS_URL set, `/v1/plan` (HTTP and gRPC `Plan`) goes through the work queue named
`optimizer.plans` (`services.common.queues`, Redis Streams): any replica's engine may run a
plan another replica accepted, and plans from every replica's callers meet in the worker's
optimization steps. A `request_id` makes retries idempotent (the stored plan comes back);
without a `seed` the seed is derived from the request id, so a retry is the same request.
Without Redis plans run in the accepting process, straight on its engine (no queue).

The accepting replica validates the request against its own planner (a bad request is a 4xx
before anything is queued) and resolves the defaults (steps, seed) into the payload, so every
delivery plans the same way; the worker checks it again against its planner and, in queue
mode, waits for engine capacity instead of refusing (the queue is the buffer).

Streaming (`/v1/plan/stream`, `PlanStream`) does not go through the queue: its progress lines
come from the engine of the replica that holds the connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.queues import Handler, Payload
from services.optimizer.engine import OptimizerEngine, PlanOutcome
from wmpo.optimize.planner import Planner, PlanRequest, PlanResult

PLAN_QUEUE = "optimizer.plans"
# How often a queue worker whose engine is full looks again for capacity.
_CAPACITY_POLL_S = 0.01
_RESULT_TENSORS = ("actions", "prior_actions", "frames", "target_frames", "latent")


def plan_payload(req: PlanRequest, steps: int) -> Payload:
    return {
        "frame": np.ascontiguousarray(req.frame),
        "instruction": req.instruction,
        "target_frames": None if req.target_frames is None else np.ascontiguousarray(req.target_frames),
        "init_actions": None if req.init_actions is None else np.asarray(req.init_actions, np.float32),
        "steps": int(steps),
        "seed": int(req.seed),
    }


def _array(value: Any, what: str, dtype: str, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
        raise InvalidArgument(f"malformed plan payload: {what} must be a {ndim}-D {dtype} array")
    return value


def request_from_payload(payload: Payload) -> tuple[PlanRequest, int]:
    try:
        target, init = payload.get("target_frames"), payload.get("init_actions")
        req = PlanRequest(
            frame=_array(payload["frame"], "frame", "uint8", 3),
            instruction=str(payload["instruction"]),
            target_frames=None if target is None else _array(target, "target_frames", "uint8", 4),
            init_actions=None if init is None else _array(init, "init_actions", "float32", 2),
            steps=int(payload["steps"]),
            seed=int(payload["seed"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"malformed plan payload ({exc})") from None
    return req, int(payload["steps"])


def outcome_payload(out: PlanOutcome) -> Payload:
    r = out.result
    return {
        "actions": np.asarray(r.actions, np.float32),
        "prior_actions": np.asarray(r.prior_actions, np.float32),
        "frames": np.ascontiguousarray(r.frames),
        "target_frames": np.ascontiguousarray(r.target_frames),
        "latent": np.asarray(r.latent, np.float32),
        "objective": [float(x) for x in r.objective],
        "distance": [float(x) for x in r.distance],
        "steps": out.steps,
        "seed": out.seed,
        "provenance": out.provenance,
        "timing": out.timing,
    }


def outcome_from_payload(payload: Payload, elapsed_s: float) -> PlanOutcome:
    """The stored plan, with `total_s` the caller's end-to-end time and `dispatch_s` the part
    spent outside the worker's run (queue, transfer)."""
    timing = {k: float(v) for k, v in dict(payload["timing"]).items()}
    timing["dispatch_s"] = max(0.0, elapsed_s - timing.get("total_s", 0.0))
    timing["total_s"] = elapsed_s
    result = PlanResult(
        *(payload[name] for name in _RESULT_TENSORS[:4]),
        objective=list(payload["objective"]), distance=list(payload["distance"]),
        latent=payload["latent"], timing=timing, provenance=dict(payload["provenance"]),
    )
    return PlanOutcome(result, int(payload["steps"]), int(payload["seed"]), dict(payload["provenance"]), timing)


def plan_handler(engine: OptimizerEngine, planner: Planner, *, wait_for_capacity: bool) -> Handler:
    """The queue handler running plan payloads on `engine`."""

    async def handle(payload: Payload) -> Payload:
        started = time.perf_counter()
        req, steps = request_from_payload(payload)
        try:  # a worker re-checks against its own planner
            planner.check(req)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        while True:
            try:
                run = engine.open(req, steps)
                break
            except ResourceExhausted:
                if not wait_for_capacity:
                    raise
                await asyncio.sleep(_CAPACITY_POLL_S)
        try:
            out = await run.result()
        finally:
            run.close()
        out.timing["worker_s"] = time.perf_counter() - started
        return outcome_payload(out)

    return handle
