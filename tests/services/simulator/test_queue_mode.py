"""Queue mode of the simulator against a real Redis (REDIS_URL), with the tiny world model.

Replicas are separate runtimes (own engine, own model, own Redis connections)
in one process, sharing the stream through Redis exactly as separate pods
would. "Killing" a replica cancels its worker task after it took a message
(XREADGROUP) and while the model is running: nothing is acknowledged, as when
a process dies (tests/services/common/test_queues.py also SIGKILLs a real
worker process). Idle times are short (0.6 s) so recovery fits the budget.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from wmpo_client.codec import from_json, to_json

from services.cli import main
from services.common.queues import QueueConfig, RedisWorkQueue
from services.simulator.engine import (
    EngineConfig,
    SimulatorEngine,
    check_imagine_input,
    seed_for_request,
)
from services.simulator.http_api import create_simulator_app
from services.simulator.imagine_queue import IMAGINE_QUEUE, imagine_handler
from services.simulator.runtime import SimulatorRuntime
from services.simulator.server import build_worker_app
from services.simulator.settings import SimulatorSettings
from tests.services.simulator.conftest import KEY, CountingModel, actions, frames, settings
from wmpo.errors import ConfigError

AUTH = {"x-api-key": KEY}
Backend = tuple[str, str, str]  # kind, Redis URL, key prefix


def queue_settings(redis_url: str, prefix: str, **overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "queue_prefix": prefix,
        "queue_min_idle_s": 0.6,
        "queue_retry_delay_s": 0.05,
    }
    values.update(overrides)
    return settings(**values)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Both queue paths; only the Redis one needs (and checks) REDIS_URL."""
    if request.param == "memory":
        return "memory", "", ""
    return "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


def settings_for(backend: Backend, **overrides: Any) -> SimulatorSettings:
    kind, redis_url, prefix = backend
    if kind == "redis":
        return queue_settings(redis_url, prefix, **overrides)
    return settings(queue_retry_delay_s=0.05, **overrides)


def imagine_body(n: int = 2, chunks: int = 1, seed: int | None = 3, **extra: Any) -> dict:
    body: dict[str, Any] = {
        "start_frames": to_json(frames()[0]),
        "candidates": to_json(actions(n, chunks, 8)),
    }
    if seed is not None:
        body["seed"] = seed
    return body | extra


def candidate_frames(body: dict) -> list[np.ndarray]:
    return [from_json(c["frames"]) for c in body["candidates"]]


class Keys:
    """The imagine queue's Redis keys under a test prefix."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.r = redis.Redis.from_url(redis_url, decode_responses=True)
        self.base = f"{prefix}:{{{IMAGINE_QUEUE}}}"
        self.stream = f"{self.base}:requests"
        self.dead = f"{self.base}:dead"

    def results(self) -> list[str]:
        return list(self.r.scan_iter(match=f"{self.base}:result:*"))

    def pending(self) -> list[dict[str, Any]]:
        return self.r.xpending_range(self.stream, "workers", "-", "+", 10)


def test_in_process_and_redis_paths_give_identical_results(
    world_model, redis_url: str, redis_prefix: str
) -> None:
    frame, cands = frames(3)[0], actions(3, 2, 8, seed=4)
    inputs = check_imagine_input(frame, cands)

    async def run(s: SimulatorSettings) -> list[Any]:
        runtime = SimulatorRuntime(world_model, s)
        await runtime.start()
        try:
            return [
                await runtime.imagine(inputs, seed=11, request_id="same-1"),
                await runtime.imagine(inputs, request_id="same-2"),  # seed from the id
                await runtime.imagine(inputs, horizon_chunks=1, seed=12),
            ]
        finally:
            await runtime.stop()

    async def direct() -> Any:
        engine = SimulatorEngine(world_model, EngineConfig(max_wait_ms=20.0))
        await engine.start()
        try:
            return await engine.imagine(frame, cands, seed=11)
        finally:
            await engine.stop()

    local = asyncio.run(run(settings()))
    remote = asyncio.run(run(queue_settings(redis_url, redis_prefix)))
    for a, b in zip(local, remote, strict=True):
        assert a.frames.dtype == b.frames.dtype == np.uint8
        assert np.array_equal(a.frames, b.frames)
        assert a.seed == b.seed and a.provenance == b.provenance
    assert local[0].frames.shape == (3, 8, 64, 64, 3) and local[2].frames.shape == (3, 4, 64, 64, 3)
    assert local[1].seed == seed_for_request("same-2") != local[0].seed
    assert np.array_equal(asyncio.run(direct()).frames, local[0].frames)
    assert set(remote[0].timing) == {"queue", "encode", "denoise", "total", "dispatch"}


def test_a_replica_killed_mid_request_is_finished_by_another(
    world_model, redis_url: str, redis_prefix: str
) -> None:
    keys = Keys(redis_url, redis_prefix)
    body = imagine_body(n=2, chunks=2, seed=7, request_id="kill-1")

    async def reference() -> np.ndarray:
        engine = SimulatorEngine(world_model, EngineConfig(max_wait_ms=20.0))
        await engine.start()
        try:
            return (await engine.imagine(frames()[0], actions(2, 2, 8), seed=7)).frames
        finally:
            await engine.stop()

    want = asyncio.run(reference())

    async def scenario() -> None:
        api_settings = queue_settings(redis_url, redis_prefix, queue_worker=False)
        api_model = CountingModel(world_model)
        api = SimulatorRuntime(api_model, api_settings)  # type: ignore[arg-type]
        app = create_simulator_app(api_settings, api)
        # The doomed replica, from the pieces a runtime runs: queue + engine + handler.
        doomed_settings = queue_settings(redis_url, redis_prefix, queue_consumer="doomed")
        doomed_model = CountingModel(world_model, gated=True)
        doomed_engine = SimulatorEngine(doomed_model, EngineConfig.from_settings(doomed_settings))  # type: ignore[arg-type]
        doomed_queue = RedisWorkQueue(QueueConfig.from_settings(IMAGINE_QUEUE, doomed_settings))
        rescuer_model = CountingModel(world_model)
        rescuer = SimulatorRuntime(
            rescuer_model,  # type: ignore[arg-type]
            queue_settings(redis_url, redis_prefix, queue_consumer="rescuer"),
        )
        await api.start()
        await doomed_queue.start()
        await doomed_engine.start()
        handler = imagine_handler(doomed_engine, wait_for_capacity=True)
        doomed = asyncio.create_task(doomed_queue.serve(handler))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
                request = asyncio.create_task(c.post("/v1/imagine", json=body, headers=AUTH))
                # The doomed replica took the message and is inside the model ...
                assert await asyncio.to_thread(doomed_model.entered.wait, 10)
                [pending] = keys.pending()
                assert pending["consumer"] == "doomed"
                # ... when it dies: no result, no XACK.
                doomed.cancel()
                await asyncio.gather(doomed, return_exceptions=True)
                assert len(keys.pending()) == 1 and keys.results() == []
                await rescuer.start()  # claims it after min_idle_s and runs it
                resp = await request
                assert resp.status_code == 200, resp.text[:300]
                got = candidate_frames(resp.json())
                assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
                assert resp.json()["seed"] == 7 and resp.json()["request_id"] == "kill-1"

                # Exactly one run finished and one result exists; nothing left behind.
                assert rescuer_model.calls == [2, 2] and api_model.calls == []
                assert doomed_model.calls == [2]  # the killed run never got past chunk 1
                stats = rescuer.imagine_queue.stats
                assert (stats.claimed, stats.completed, stats.duplicates) == (1, 1, 0)
                assert doomed_queue.stats.completed == 0
                assert len(keys.results()) == 1 and keys.pending() == []
                assert keys.r.xlen(keys.stream) == 0 and keys.r.xlen(keys.dead) == 0

                # A retry with the same id: the stored result, no new model call.
                again = await c.post("/v1/imagine", json=body, headers=AUTH)
                assert again.status_code == 200
                assert all(
                    np.array_equal(g, w)
                    for g, w in zip(candidate_frames(again.json()), want, strict=True)
                )
                assert rescuer_model.calls == [2, 2]
        finally:
            doomed_model.gate.set()
            doomed.cancel()
            await asyncio.gather(doomed, return_exceptions=True)
            await doomed_engine.stop()
            await doomed_queue.close()
            await rescuer.stop()
            await api.stop()
            keys.r.close()

    asyncio.run(scenario())


def test_idempotent_retries_return_the_stored_result_without_recomputing(
    backend: Backend, world_model
) -> None:
    model = CountingModel(world_model)
    s = settings_for(backend)
    app = create_simulator_app(s, SimulatorRuntime(model, s))  # type: ignore[arg-type]
    with TestClient(app) as c:
        body = imagine_body(n=2, seed=None, request_id="idem-1")
        first = c.post("/v1/imagine", json=body, headers=AUTH)
        assert first.status_code == 200, first.text[:300]
        assert model.calls == [2]
        again = c.post("/v1/imagine", json=body, headers=AUTH)
        assert again.status_code == 200 and model.calls == [2]
        assert again.json()["candidates"] == first.json()["candidates"]
        assert again.json()["seed"] == first.json()["seed"] == seed_for_request("idem-1")
        other = c.post("/v1/imagine", json=imagine_body(n=1, request_id="idem-1"), headers=AUTH)
        assert other.status_code == 400
        assert "already used for a different request" in other.json()["error"]["message"]
        assert model.calls == [2]


def test_a_request_that_always_fails_is_dead_lettered_with_a_clear_error(
    backend: Backend, world_model
) -> None:
    model = CountingModel(world_model)
    model.fail_calls = set(range(1, 100))  # the backend fails every call
    s = settings_for(backend, queue_max_deliveries=3)
    runtime = SimulatorRuntime(model, s)  # type: ignore[arg-type]
    with TestClient(create_simulator_app(s, runtime), raise_server_exceptions=False) as c:
        resp = c.post("/v1/imagine", json=imagine_body(n=1, request_id="dead-1"), headers=AUTH)
        assert resp.status_code == 500
        error = resp.json()["error"]
        assert error["code"] == "INTERNAL"
        assert "request dead-1 failed on 3 delivery attempts" in error["message"]
        assert "dead-letter" in error["message"]
        assert "secret" not in resp.text and "Traceback" not in resp.text
        assert model.calls == [1, 1, 1]
    if backend[0] == "redis":
        keys = Keys(backend[1], backend[2])
        [(_, entry)] = keys.r.xrange(keys.dead)
        assert entry["rid"] == "dead-1" and entry["deliveries"] == "3"
        assert keys.r.xlen(keys.stream) == 0
        keys.r.close()
    else:
        [dead] = runtime.imagine_queue.dead_letters  # type: ignore[attr-defined]
        assert dead.request_id == "dead-1" and dead.deliveries == 3


def test_a_pure_worker_runs_an_api_replicas_work(
    world_model, redis_url: str, redis_prefix: str
) -> None:
    keys = Keys(redis_url, redis_prefix)
    api_settings = queue_settings(redis_url, redis_prefix, queue_worker=False)
    worker_settings = queue_settings(redis_url, redis_prefix, queue_consumer="pure-worker")
    api_model, worker_model = CountingModel(world_model), CountingModel(world_model)
    worker = SimulatorRuntime(worker_model, worker_settings, consume=True)  # type: ignore[arg-type]
    api = SimulatorRuntime(api_model, api_settings)  # type: ignore[arg-type]
    with (
        TestClient(build_worker_app(worker, worker_settings)) as w,
        TestClient(create_simulator_app(api_settings, api)) as c,
    ):
        assert w.get("/healthz").status_code == 200
        assert w.get("/readyz").json() == {"status": "ready"}
        assert w.post("/v1/imagine", json={}, headers=AUTH).status_code == 404  # no API
        resp = c.post("/v1/imagine", json=imagine_body(n=2, seed=5), headers=AUTH)
        assert resp.status_code == 200, resp.text[:300]
        assert worker_model.calls == [2] and api_model.calls == []
        # The accepting replica validates: a bad request is a 4xx and is never queued.
        bad = imagine_body()
        bad["candidates"] = to_json(actions(2, 3))
        resp = c.post("/v1/imagine", json=bad, headers=AUTH)
        assert resp.status_code == 400 and "K=3" in resp.json()["error"]["message"]
        assert keys.r.xlen(keys.stream) == 0 and len(keys.results()) == 1
    keys.r.close()
    with pytest.raises(ConfigError, match="needs Redis"):
        build_worker_app(SimulatorRuntime(world_model, settings()), settings())


def test_cli_worker_flag_needs_redis(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["serve", "simulator", "--worker", "--dev", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --worker consumes imagine work from Redis")
    assert err.count("\n") == 1
