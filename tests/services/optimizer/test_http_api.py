"""The optimizer's HTTP API end to end: uvicorn on a free loopback port (HTTP and gRPC in one
lifespan over one runtime) with the tiny planner, called with httpx over a real socket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from wmpo_client.codec import from_json, to_json

from tests.services.optimizer.conftest import (
    HORIZON,
    INSTRUCTION,
    KEY,
    PLAN_FRAMES,
    SIZE,
    frames,
    served,
)

AUTH = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def server(planner) -> Iterator[tuple[str, Any]]:
    with served(planner, max_concurrent_plans=2, max_steps=100) as (url, _, runtime):
        yield url, runtime


def body(**extra: Any) -> dict[str, Any]:
    return {"frame": to_json(frames(1, 0)[0], "frame", "png"), "instruction": INSTRUCTION,
            "steps": 2, "seed": 3} | extra


def error(resp: httpx.Response) -> dict[str, Any]:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    return resp.json()["error"]


def test_plan_returns_actions_frames_trace_provenance_and_timing(server) -> None:
    url, _ = server
    resp = httpx.post(f"{url}/v1/plan", json=body(include_target=True, frame_encoding="png"),
                      headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    out = resp.json()
    actions = from_json(out["actions"], "actions")
    assert actions.shape == (HORIZON, 4) and actions.dtype == np.float32 and np.abs(actions).max() <= 1
    assert from_json(out["prior_actions"], "prior").shape == (HORIZON, 4)
    future = from_json(out["frames"], "frames")
    assert future.shape == (PLAN_FRAMES, SIZE, SIZE, 3) and future.dtype == np.uint8
    assert "png" in out["frames"]
    assert from_json(out["target_frames"], "target").shape == (PLAN_FRAMES, SIZE, SIZE, 3)
    assert len(out["objective"]) == len(out["distance"]) == out["steps"] == 2 and out["seed"] == 3
    assert all(np.isfinite(out["objective"]))
    assert out["provenance"]["generator_sha256"] == "tiny-test" and out["provenance"]["init"] == "random"
    assert out["provenance"]["target"] == "instruction"
    assert out["timing"]["total_s"] >= out["timing"]["optimize_s"] > 0
    # A goal image and +ActionInit from the caller; the default steps (2 here).
    goal = body(target_frames=to_json(frames(1, 5)), init_actions=to_json(np.zeros((HORIZON, 4), np.float32)))
    del goal["steps"]
    out = httpx.post(f"{url}/v1/plan", json=goal, headers=AUTH, timeout=60).json()
    assert out["provenance"]["target"] == "goal_image" and out["provenance"]["init"] == "actions"
    assert out["steps"] == 2 and out["target_frames"] is None
    info = httpx.get(f"{url}/v1/planner", headers=AUTH).json()
    assert (info["horizon"], info["image_size"], info["plan_frames"]) == (HORIZON, SIZE, PLAN_FRAMES)


def test_stream_reports_progress_per_step_then_the_plan(server) -> None:
    url, _ = server
    with httpx.stream("POST", f"{url}/v1/plan/stream", json=body(steps=3), headers=AUTH, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert [e["event"] for e in events] == ["progress"] * 3 + ["result"]
    assert [e["step"] for e in events[:3]] == [1, 2, 3] and all(e["steps"] == 3 for e in events[:3])
    assert [e["objective"] for e in events[:3]] == events[-1]["objective"]
    assert from_json(events[-1]["actions"], "actions").shape == (HORIZON, 4)


def test_auth_like_the_other_services(server) -> None:
    url, _ = server
    assert httpx.post(f"{url}/v1/plan", json=body()).status_code == 401
    assert httpx.post(f"{url}/v1/plan/stream", json=body(), headers={"x-api-key": "x" * 20}).status_code == 401
    assert httpx.get(f"{url}/v1/planner").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"frame": to_json(frames(1, 0, 32)[0])}, 400, "frame: the planner takes 64x64 frames, got 32x32"),
        ({"frame": to_json(np.zeros((2, SIZE, SIZE, 3), np.uint8))}, 422, "frame: expected one RGB frame"),
        ({"frame": to_json(np.zeros((SIZE, SIZE, 3), np.float32))}, 422, "frame"),
        ({"target_frames": to_json(frames(2, 1, 32))}, 400, "target_frames: the planner takes 64x64"),
        ({"init_actions": to_json(np.full((HORIZON, 4), np.nan, np.float32))}, 422, "init_actions"),
        ({"init_actions": to_json(np.zeros((4, 4), np.float32))}, 400, "init_actions: this planner's horizon is 16"),
        ({"steps": 101}, 400, r"steps must be in [1, 100]"),
        ({"steps": 0}, 422, "steps"),
        ({"steps": 5000}, 422, "steps"),
        ({"instruction": ""}, 422, "instruction"),
        ({"instruction": "   "}, 400, "instruction is required"),
        ({"horizon": 3}, 422, "horizon: Extra inputs are not permitted"),
        ({"seed": -2}, 422, "seed"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server, change: dict[str, Any], status: int, message: str) -> None:
    url, _ = server
    resp = httpx.post(f"{url}/v1/plan", json=body(**change), headers=AUTH, timeout=60)
    assert resp.status_code == status, resp.text[:500]
    assert message in error(resp)["message"]
    # The stream validates (and admits) before its status line: the same 4xx, not an in-band error.
    resp = httpx.post(f"{url}/v1/plan/stream", json=body(**change), headers=AUTH, timeout=60)
    assert resp.status_code == status and message in error(resp)["message"]


def test_full_optimizer_is_429_with_retry_after_and_a_disconnect_cancels(server, planner) -> None:
    url, runtime = server
    engine = runtime.engine
    cancelled = engine.stats.plans_cancelled
    # Two long plans (100 steps) hold both slots (max_concurrent_plans=2); each stream is read to
    # its first progress line, so the plans are running when the third request comes.
    streams = [httpx.stream("POST", f"{url}/v1/plan/stream", json=body(steps=100, seed=i), headers=AUTH,
                            timeout=60) for i in range(2)]
    responses = [s.__enter__() for s in streams]
    try:
        lines = [r.iter_lines() for r in responses]  # kept: a dropped iterator closes its stream
        for it in lines:
            assert json.loads(next(it))["event"] == "progress"
        resp = httpx.post(f"{url}/v1/plan", json=body(steps=1), headers=AUTH, timeout=60)
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        assert "optimizer busy: 2 plans in flight, limit 2" in error(resp)["message"]
    finally:
        for s in streams:  # the clients go away mid-plan
            s.__exit__(None, None, None)
    deadline = time.monotonic() + 20
    while engine.admitted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.admitted == 0 and engine.stats.plans_cancelled >= cancelled + 2
    assert httpx.post(f"{url}/v1/plan", json=body(steps=1), headers=AUTH, timeout=60).status_code == 200


def test_two_concurrent_http_plans_share_step_calls(server, planner) -> None:
    url, runtime = server
    before = len(planner.step_calls)
    results: list[httpx.Response] = []

    def post(seed: int) -> None:
        results.append(httpx.post(f"{url}/v1/plan", json=body(steps=4, seed=seed), headers=AUTH, timeout=60))

    threads = [threading.Thread(target=post, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]
    calls = planner.step_calls[before:]
    assert sum(calls) == 8 and max(calls) == 2, calls
    assert max(r.json()["timing"]["mean_batch_plans"] for r in results) > 1


def test_a_failed_step_is_a_500_naming_the_request_id_and_the_service_goes_on(server, planner) -> None:
    url, runtime = server
    planner.fail = True
    try:
        resp = httpx.post(f"{url}/v1/plan", json=body(), headers={**AUTH, "x-request-id": "boom-1"}, timeout=60)
        with httpx.stream("POST", f"{url}/v1/plan/stream", json=body(), headers=AUTH, timeout=60) as r:
            assert r.status_code == 200  # validated and admitted; the failure comes in-band
            events = [json.loads(line) for line in r.iter_lines() if line]
    finally:
        planner.fail = False
    assert resp.status_code == 500 and "secret" not in resp.text
    assert resp.json()["error"]["message"] == "internal error; quote request id boom-1 when reporting it"
    assert events[-1]["event"] == "error" and events[-1]["error"]["code"] == "INTERNAL"
    assert "secret" not in json.dumps(events)
    assert runtime.engine.admitted == 0
    assert httpx.post(f"{url}/v1/plan", json=body(steps=1), headers=AUTH, timeout=60).status_code == 200
