"""Queue mode of the optimizer against a real Redis (REDIS_URL), with the tiny planner.

Two replicas in one process, sharing the stream through Redis exactly as two pods would: an
API-only replica (consume=False) that validates and enqueues, and a worker replica that plans.
Each test has its own key prefix; every key under it is deleted afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from services.common.errors import InvalidArgument
from services.optimizer.runtime import OptimizerRuntime
from services.optimizer.server import build_worker_app
from tests.services.optimizer.conftest import (
    HORIZON,
    INSTRUCTION,
    PLAN_FRAMES,
    SIZE,
    frames,
    settings,
)
from wmpo.errors import ConfigError


def queue_settings(redis_url: str, prefix: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {"redis_url": redis_url, "queue_prefix": prefix, "queue_min_idle_s": 0.6,
                              "queue_retry_delay_s": 0.05}
    values.update(overrides)
    return settings(**values)


def test_an_api_replica_enqueues_and_a_worker_replica_plans(planner, redis_url: str, redis_prefix: str) -> None:
    s = queue_settings(redis_url, redis_prefix)

    async def scenario() -> None:
        api = OptimizerRuntime(planner, s, consume=False)
        worker = OptimizerRuntime(planner, s, consume=True)
        await api.start()
        await worker.start()
        try:
            # Validation happens on the accepting replica: nothing is queued.
            with pytest.raises(InvalidArgument, match="frame: the planner takes 64x64"):
                await api.plan(frames(1, 0, 32)[0], INSTRUCTION, request_id="bad")
            before = len(planner.step_calls)
            one = await api.plan(frames(1, 1)[0], INSTRUCTION, steps=3, request_id="p-1",
                                 target_frames=frames(1, 2))
            assert len(planner.step_calls) - before == 3
            # A retry with the same id gets the stored plan: nothing runs again.
            again = await api.plan(frames(1, 1)[0], INSTRUCTION, steps=3, request_id="p-1",
                                   target_frames=frames(1, 2))
            assert len(planner.step_calls) - before == 3
            assert np.array_equal(one.result.actions, again.result.actions) and one.seed == again.seed
            # The same id for another request is refused.
            with pytest.raises(InvalidArgument, match="already used for a different request"):
                await api.plan(frames(1, 3)[0], INSTRUCTION, steps=3, request_id="p-1")
            # Plans from the API replica's callers meet in the worker's optimization steps: each
            # runs the most steps allowed, so one that reaches the worker late (a loaded machine)
            # still joins the others' later steps.
            mark = len(planner.step_calls)
            many = await asyncio.gather(*(api.plan(frames(1, i)[0], INSTRUCTION, steps=s.max_steps, seed=i)
                                          for i in range(3)))
            assert max(planner.step_calls[mark:]) >= 2, planner.step_calls[mark:]
            for out in (one, *many):
                r = out.result
                assert r.actions.shape == (HORIZON, 4) and np.abs(r.actions).max() <= 1
                assert r.frames.shape == (PLAN_FRAMES, SIZE, SIZE, 3) and len(r.objective) == out.steps
                assert out.timing["total_s"] >= out.timing["dispatch_s"] >= 0
            assert one.provenance["target"] == "goal_image"
            # The worker's own engine ran them; the API replica's never did.
            assert worker.engine.stats.plans_finished == 4 and api.engine.stats.plans_started == 0
            # The stream runs on the replica that holds it, even an API-only one.
            run = api.open_plan(frames(1, 5)[0], INSTRUCTION, steps=2)
            events = [e async for e in run.events()]
            assert len(events) == 3 and api.engine.stats.plans_finished == 1
            assert redis.Redis.from_url(redis_url).keys(f"{redis_prefix}:*")
        finally:
            await api.stop()
            await worker.stop()

    asyncio.run(scenario())


def test_a_pure_worker_serves_probes_only(planner, redis_url: str, redis_prefix: str) -> None:
    s = queue_settings(redis_url, redis_prefix)
    with TestClient(build_worker_app(OptimizerRuntime(planner, s, consume=True), s)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/plan", json={}, headers={"x-api-key": s.api_keys[0].get_secret_value()}
                           ).status_code == 404
    with pytest.raises(ConfigError, match="a queue worker needs Redis"):
        build_worker_app(OptimizerRuntime(planner, settings()), settings())


def test_http_plans_go_through_the_queue(planner, redis_url: str, redis_prefix: str) -> None:
    from wmpo_client.codec import from_json, to_json

    from services.optimizer.http_api import create_optimizer_app

    s = queue_settings(redis_url, redis_prefix)
    runtime = OptimizerRuntime(planner, s)  # both enqueues and consumes (WMPO_QUEUE_WORKER)
    auth = {"x-api-key": s.api_keys[0].get_secret_value()}
    body = {"frame": to_json(frames(1, 0)[0]), "instruction": INSTRUCTION, "steps": 2, "request_id": "h-1"}
    with TestClient(create_optimizer_app(s, runtime)) as client:
        first = client.post("/v1/plan", json=body, headers=auth)
        again = client.post("/v1/plan", json=body, headers=auth)
        assert first.status_code == again.status_code == 200, first.text[:300]
        a, b = first.json(), again.json()
        assert a["request_id"] == "h-1" and a["seed"] == b["seed"]  # the seed derived from the id
        assert np.array_equal(from_json(a["actions"]), from_json(b["actions"]))
        assert runtime.engine.stats.plans_finished == 1 and "dispatch_s" in a["timing"]
