"""`/v1/imagine` as queue work: the payload, the worker's handler and the result.

Imagine requests (HTTP and gRPC, not the streaming variant) go through the
work queue named `simulator.imagine` (`services.common.queues`): Redis Streams
when WMPO_REDIS_URL is set, so any replica's engine may run a request that
another replica accepted; the in-process queue otherwise (the embedded
default), with the same idempotency, retry and dead-letter rules.

The accepting replica validates the request with its own engine's model facts
(so a bad request is a 4xx before anything is queued) and fixes the seed
(given, or derived from the request id) before enqueuing, so every delivery of
a request, on any replica, computes the same frames. The worker checks only that
the payload is well formed (it crossed Redis) and admits the work into its engine;
replicas serve the same model (their provenance says which); in queue mode it
waits for engine capacity instead of refusing (the queue is the buffer), while
in process a full engine is the caller's 429, as before.

Verify before execute (`verify`) is not part of the payload: the accepting
replica asks the judge after the queue's result (`SimulatorRuntime.imagine`),
so workers need no judge and a stored result is judged again on a retry.

What stays replica-local, and why:
- sessions, groups and replay: their rollout state (latents, KV caches, RNG
  state) lives in the memory of the replica that opened them and is not worth
  shipping per step, so a trainer talks to one replica per session (e.g.
  session affinity at the load balancer);
- `/v1/imagine/stream`: chunks go straight to the open connection of the
  replica that accepted it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.queues import Handler, Payload
from services.simulator.engine import ImagineResult, ImagineRun, SimulatorEngine

IMAGINE_QUEUE = "simulator.imagine"
# How often a queue worker whose engine is full looks again for capacity.
_CAPACITY_POLL_S = 0.01


def imagine_payload(frame: np.ndarray, candidates: np.ndarray, seed: int) -> Payload:
    """The queued form of a validated request: (1, H, W, 3) uint8, (N, C, K, 4) float32, seed."""
    return {"start_frames": frame, "candidates": candidates, "seed": int(seed)}


def _array(payload: Payload, key: str, dtype: str, ndim: int) -> np.ndarray:
    value = payload.get(key)
    if not isinstance(value, np.ndarray) or value.dtype.name != dtype or value.ndim != ndim:
        raise InvalidArgument(f"malformed imagine payload: {key} must be a {ndim}-D {dtype} array")
    return value


def _parse(payload: Payload) -> tuple[np.ndarray, np.ndarray, int]:
    seed = payload.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidArgument("malformed imagine payload: seed must be an integer")
    return (
        _array(payload, "start_frames", "uint8", 4),
        _array(payload, "candidates", "float32", 4),
        seed,
    )


async def _admit(
    engine: SimulatorEngine,
    frame: np.ndarray,
    candidates: np.ndarray,
    seed: int,
    wait_for_capacity: bool,
) -> ImagineRun:
    while True:
        try:
            # The runtime validated the request before queueing it; the worker only admits it.
            return engine.start_imagine(frame, candidates, seed)
        except ResourceExhausted:
            if not wait_for_capacity:
                raise
            await asyncio.sleep(_CAPACITY_POLL_S)


def imagine_handler(engine: SimulatorEngine, *, wait_for_capacity: bool) -> Handler:
    """The queue handler running imagine payloads on `engine`."""

    async def handle(payload: Payload) -> Payload:
        frame, candidates, seed = _parse(payload)
        run = await _admit(engine, frame, candidates, seed, wait_for_capacity)
        result = await run.collect()
        return {
            "frames": result.frames,
            "seed": result.seed,
            "provenance": result.provenance,
            "timing": result.timing,
        }

    return handle


def imagine_result(payload: Payload, elapsed_s: float) -> ImagineResult:
    """The caller's result: the worker's frames, seed and provenance; timing from both sides.

    `timing.total` is the caller's end-to-end time; `dispatch` is the part spent
    outside the worker's run (waiting on the queue, transfer); `queue`,
    `encode`, `denoise` are the worker's (for a stored result: the original run's).
    """
    timing: dict[str, Any] = dict(payload["timing"])
    worker_total = float(timing.get("total", 0.0))
    timing["total"] = elapsed_s
    timing["dispatch"] = max(0.0, elapsed_s - worker_total)
    return ImagineResult(
        frames=payload["frames"],
        seed=int(payload["seed"]),
        provenance=dict(payload["provenance"]),
        timing={k: float(v) for k, v in timing.items()},
    )
