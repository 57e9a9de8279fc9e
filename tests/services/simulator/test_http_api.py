"""The HTTP API end to end (FastAPI app + lifespan + engine + tiny world model)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from wmpo_client.codec import from_json, to_json

from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SimulatorRuntime
from tests.services.simulator.conftest import KEY, CountingModel, actions, frames, settings

AUTH = {"x-api-key": KEY}


def client_for(world_model: Any, **overrides: Any) -> TestClient:
    s = settings(**overrides)
    app = create_simulator_app(s, SimulatorRuntime(world_model, s))
    # raise_server_exceptions=False: see what a real client gets, 5xx included.
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(world_model) -> Iterator[TestClient]:
    with client_for(world_model, max_request_bytes=256 * 1024, max_sessions=8) as c:
        yield c


def imagine_body(n: int = 2, chunks: int = 1, seed: int | None = 3, **extra: Any) -> dict:
    body: dict[str, Any] = {
        "start_frames": to_json(frames()[0]),
        "instruction": "open the door",
        "candidates": to_json(actions(n, chunks, 8)),
    }
    if seed is not None:
        body["seed"] = seed
    return body | extra


def error(resp: httpx.Response) -> str:
    assert resp.status_code < 500, resp.text[:500]
    return resp.json()["error"]["message"]


def test_auth_is_required_but_not_for_health(client: TestClient) -> None:
    resp = client.post("/v1/imagine", json=imagine_body())
    assert resp.status_code == 401 and "missing API key" in error(resp)
    assert (
        client.post("/v1/imagine", json=imagine_body(), headers={"x-api-key": "x" * 20}).status_code
        == 401
    )
    assert client.get("/v1/sessions/s-1").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}


def test_imagine_returns_frames_provenance_and_judge_placeholders(client: TestClient) -> None:
    resp = client.post("/v1/imagine", json=imagine_body(n=2, chunks=2), headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [c["index"] for c in body["candidates"]] == [0, 1]
    first = from_json(body["candidates"][0]["frames"])
    assert first.shape == (8, 64, 64, 3) and first.dtype == np.uint8
    assert body["candidates"][0]["confidence"] is None
    assert body["verdict"] is None and body["best_candidate"] is None
    assert body["seed"] == 3 and body["provenance"]["seed"] == "3"
    assert body["provenance"]["world_model_sha256"] == "tiny"
    assert body["timing"]["total"] > 0 and body["request_id"]

    # PNG in, PNG out, same seed: the same frames.
    png_body = imagine_body(n=2, chunks=2, frame_encoding="png", request_id="req-1")
    png_body["start_frames"] = to_json(frames()[0], encoding="png")
    again = client.post("/v1/imagine", json=png_body, headers=AUTH).json()
    assert again["request_id"] == "req-1"
    assert "png" in again["candidates"][0]["frames"]
    assert np.array_equal(from_json(again["candidates"][0]["frames"]), first)


def test_streaming_imagine_sends_chunks_as_ndjson(client: TestClient) -> None:
    full = client.post("/v1/imagine", json=imagine_body(n=2, chunks=3), headers=AUTH).json()
    with client.stream(
        "POST", "/v1/imagine/stream", json=imagine_body(n=2, chunks=3), headers=AUTH
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in resp.iter_lines() if line]
    assert [e["event"] for e in events] == ["frames"] * 3 + ["result"]
    assert [e["chunk_index"] for e in events[:3]] == [0, 1, 2]
    streamed = np.concatenate([from_json(e["frames"]) for e in events[:3]], axis=1)
    assert streamed.shape == (2, 12, 64, 64, 3)
    assert np.array_equal(streamed[1], from_json(full["candidates"][1]["frames"]))
    result = events[-1]
    assert result["seed"] == 3 and result["candidates"][0]["frames"] is None
    assert client.app.state.runtime.engine.admitted_rows == 0  # type: ignore[attr-defined]

    # Validation happens before the stream starts: a real 4xx status.
    bad = client.post("/v1/imagine/stream", json=imagine_body(horizon_chunks=5), headers=AUTH)
    assert bad.status_code == 400 and "horizon_chunks=5" in error(bad)


def _tensor_with(array: np.ndarray, **changes: Any) -> dict:
    return to_json(array) | changes


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"candidates": to_json(actions(2, 8)[..., :3])}, 422, "last axis must be 4"),
        ({"candidates": to_json(np.full((1, 8, 4), np.nan, np.float32))}, 422, "non-finite"),
        ({"candidates": to_json(np.full((1, 8, 4), np.inf, np.float32))}, 422, "non-finite"),
        ({"candidates": to_json(actions(1, 8).astype(np.float16))}, 422, "dtype must be float32"),
        (
            {"candidates": _tensor_with(actions(1, 8), dtype="float64")},
            422,
            "body.candidates.dtype: Input should be",
        ),
        (
            {"candidates": _tensor_with(actions(1, 8), shape=[1, 8, 5])},
            422,
            "needs 160 bytes, got 128",
        ),
        ({"candidates": {"dtype": "float32", "shape": [2]}}, 422, "exactly one of 'data' or 'png'"),
        ({"candidates": to_json(actions(8))}, 422, "expected shape (N, C, K, 4)"),
        ({"start_frames": to_json(frames().astype(np.int32))}, 422, "dtype must be uint8"),
        ({"start_frames": to_json(frames(n=3))}, 422, "starts from one frame"),
        ({"start_frames": to_json(frames()[0, :32, :32])}, 400, "takes 64x64 frames, got 32x32"),
        ({"candidates": to_json(actions(1, 24))}, 400, "K=24 exceeds this model's maximum of 22"),
        ({"candidates": to_json(actions(1, 5))}, 400, "multiple of the model's frame stride 2"),
        ({"horizon_chunks": 2}, 400, "horizon_chunks=2 must be between 1 and the 1 chunks"),
        ({"seed": -1}, 422, "body.seed"),
        ({"seed": 2**63}, 422, "body.seed"),
        ({"request_id": "bad id!"}, 422, "body.request_id"),
        ({"frame_encoding": "jpeg"}, 422, "body.frame_encoding"),
        ({"surprise": 1}, 422, "body.surprise"),
        (
            {"candidates": to_json(actions(9, 8))},
            400,
            "9 rollouts in one request exceed the limit of 8",
        ),
    ],
)
def test_bad_imagine_requests_are_clear_4xx(
    world_model, client: TestClient, change: dict, status: int, message: str
) -> None:
    if "9 rollouts" in message:
        with client_for(world_model, max_queued_rollouts=8) as small:
            resp = small.post("/v1/imagine", json=imagine_body() | change, headers=AUTH)
    else:
        resp = client.post("/v1/imagine", json=imagine_body() | change, headers=AUTH)
    assert resp.status_code == status, resp.text[:500]
    assert message in error(resp)
    assert "Traceback" not in resp.text


def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    resp = client.post(
        "/v1/imagine", content=b"{not json", headers=AUTH | {"content-type": "application/json"}
    )
    assert resp.status_code == 422
    bad_b64 = imagine_body()
    bad_b64["candidates"]["data"] = "!!!"
    assert "not valid base64" in error(client.post("/v1/imagine", json=bad_b64, headers=AUTH))
    big = imagine_body()
    big["candidates"] = to_json(actions(64, 32, 8))  # ~260 KB of base64, over the 256 KiB limit
    resp = client.post("/v1/imagine", json=big, headers=AUTH)
    assert resp.status_code == 413 and "over the limit" in error(resp)
    huge_png = imagine_body()
    huge_png["start_frames"] = {"dtype": "uint8", "shape": [100000, 100000, 3], "png": [""]}
    resp = client.post("/v1/imagine", json=huge_png, headers=AUTH)
    assert resp.status_code == 422 and "over the limit" in error(resp)


def test_sessions_lifecycle(client: TestClient) -> None:
    created = client.post(
        "/v1/sessions",
        json={
            "start_frames": to_json(frames()[0]),
            "instruction": "push",
            "seed": 4,
            "group_size": 2,
        },
        headers=AUTH,
    )
    assert created.status_code == 200, created.text
    body = created.json()
    gid, members = body["group_id"], [s["session_id"] for s in body["sessions"]]
    assert gid and len(members) == 2
    assert from_json(body["observation"]).shape == (64, 64, 3)

    step = client.post(
        f"/v1/groups/{gid}/step", json={"actions": to_json(actions(2, 8))}, headers=AUTH
    )
    assert step.status_code == 200, step.text
    results = step.json()["results"]
    assert [r["session_id"] for r in results] == members
    assert results[0]["reward"] is None and results[0]["done"] is None
    assert from_json(results[0]["frames"]).shape == (4, 64, 64, 3)

    one = client.post(
        f"/v1/sessions/{members[0]}/step",
        json={"actions": to_json(actions(2, 8)), "frame_encoding": "png"},
        headers=AUTH,
    )
    assert one.status_code == 200 and one.json()["results"][0]["chunks_stepped"] == 3
    info = client.get(f"/v1/sessions/{members[0]}", headers=AUTH).json()
    assert info["chunks_stepped"] == 3 and info["group_id"] == gid and info["memory_bytes"] > 0

    replay = client.post(f"/v1/sessions/{members[0]}/replay", headers=AUTH)
    assert replay.status_code == 200, replay.text
    assert from_json(replay.json()["frames"]).shape == (12, 64, 64, 3)
    assert replay.json()["seed"] != 4
    seeded = client.post(f"/v1/sessions/{members[1]}/replay", json={"seed": 9}, headers=AUTH)
    assert seeded.json()["seed"] == 9

    bad = client.post(
        f"/v1/groups/{gid}/step", json={"actions": to_json(actions(3, 8))}, headers=AUTH
    )
    assert bad.status_code == 400 and "has 2 open sessions, got 3 rows" in error(bad)
    assert client.get(f"/v1/groups/{gid}", headers=AUTH).json()["sessions"][1]["group_index"] == 1

    closed = client.delete(f"/v1/sessions/{members[0]}", headers=AUTH).json()
    assert closed == {"closed_session_ids": [members[0]]}
    gone = client.get(f"/v1/sessions/{members[0]}", headers=AUTH)
    assert gone.status_code == 404 and "was closed" in error(gone)
    assert client.delete(f"/v1/groups/{gid}", headers=AUTH).json() == {
        "closed_session_ids": [members[1]]
    }

    for method, path in [
        ("GET", "/v1/sessions/s-unknown"),
        ("DELETE", "/v1/sessions/s-unknown"),
        ("POST", "/v1/sessions/s-unknown/replay"),
        ("GET", "/v1/groups/g-unknown"),
    ]:
        resp = client.request(method, path, headers=AUTH)
        assert resp.status_code == 404 and "does not exist" in error(resp)
    resp = client.post(
        "/v1/sessions/s-unknown/step", json={"actions": to_json(actions(8))}, headers=AUTH
    )
    assert resp.status_code == 404


def test_session_cap_is_429(world_model) -> None:
    with client_for(world_model, max_sessions=1) as c:
        body = {"start_frames": to_json(frames()[0])}
        assert c.post("/v1/sessions", json=body, headers=AUTH).status_code == 200
        resp = c.post("/v1/sessions", json=body, headers=AUTH)
        assert resp.status_code == 429 and "limit of 1" in error(resp)
        assert resp.json()["error"]["code"] == "RESOURCE_EXHAUSTED"


def test_full_queue_is_429_while_work_is_running(world_model) -> None:
    async def scenario() -> None:
        s = settings(max_queued_rollouts=2, max_wait_ms=0)
        model = CountingModel(world_model, gated=True)
        runtime = SimulatorRuntime(model, s)  # type: ignore[arg-type]
        app = create_simulator_app(s, runtime)
        await runtime.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
                first = asyncio.create_task(
                    c.post("/v1/imagine", json=imagine_body(n=2), headers=AUTH)
                )
                await asyncio.to_thread(model.entered.wait, 5)
                busy = await c.post("/v1/imagine", json=imagine_body(n=1), headers=AUTH)
                assert busy.status_code == 429 and "retry later" in error(busy)
                model.gate.set()
                assert (await first).status_code == 200
        finally:
            model.gate.set()
            await runtime.stop()

    asyncio.run(scenario())


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json", headers=AUTH).json()["paths"]
    for path in [
        "/v1/imagine",
        "/v1/imagine/stream",
        "/v1/sessions",
        "/v1/sessions/{session_id}/step",
        "/v1/sessions/{session_id}/replay",
        "/v1/sessions/{session_id}",
        "/v1/groups/{group_id}/step",
    ]:
        assert path in paths


def test_client_disconnect_drops_its_queued_work(world_model) -> None:
    """Raw ASGI calls, so the test decides when the client goes away."""

    async def call(app: Any, body: dict, gone: asyncio.Event | None) -> list[dict]:
        payload = json.dumps(body).encode()
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await (gone.wait() if gone else asyncio.Event().wait())
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/imagine",
            "raw_path": b"/v1/imagine",
            "root_path": "",
            "query_string": b"",
            "client": ("127.0.0.1", 1),
            "server": ("sim", 80),
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-api-key", KEY.encode()),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
        await app(scope, receive, send)
        return sent

    async def scenario() -> None:
        s = settings(max_batch_size=1, max_wait_ms=0)
        model = CountingModel(world_model, gated=True)
        runtime = SimulatorRuntime(model, s)  # type: ignore[arg-type]
        app = create_simulator_app(s, runtime)
        await runtime.start()
        try:
            gone = asyncio.Event()
            # Encodes and steps share the one model thread, in submission order: hold the
            # holder's encode until the leaver's encode is queued behind it, so the leaver's
            # rows are queued while the holder's step is held (under load the leaver's encode
            # could otherwise land behind that held step).
            model.start_gate = threading.Event()
            holder = asyncio.create_task(call(app, imagine_body(n=1), None))
            await asyncio.to_thread(model.start_entered.wait, 30)
            leaver = asyncio.create_task(call(app, imagine_body(n=3, seed=4), gone))
            executor = runtime.engine._batcher._executor  # test-only: the model thread's queue
            deadline = time.monotonic() + 30
            while executor is not None and executor._work_queue.qsize() < 1:
                assert time.monotonic() < deadline, "the leaver's encode was never queued"
                await asyncio.sleep(0.01)
            model.start_gate.set()
            await asyncio.to_thread(model.entered.wait, 5)
            while runtime.engine.queued_rows < 3:
                await asyncio.sleep(0.01)
            gone.set()  # the second client disconnects while its rows wait
            sent = await leaver
            assert sent[0]["status"] == 499
            assert runtime.engine.queued_rows == 0 and runtime.engine.stats.dropped_rows == 3
            model.gate.set()
            assert (await holder)[0]["status"] == 200
            assert model.calls == [1]
        finally:
            model.gate.set()
            await runtime.stop()

    asyncio.run(scenario())


def test_stream_failure_after_start_is_reported_in_band(world_model) -> None:
    model = CountingModel(world_model)
    model.fail_calls = {2}  # the second chunk fails
    s = settings()
    with TestClient(create_simulator_app(s, SimulatorRuntime(model, s))) as c:  # type: ignore[arg-type]
        resp = c.post("/v1/imagine/stream", json=imagine_body(n=1, chunks=3), headers=AUTH)
        events = [json.loads(line) for line in resp.text.splitlines()]
        assert resp.status_code == 200
        assert [e["event"] for e in events] == ["frames", "error"]
        assert events[1]["error"]["code"] == "INTERNAL"
        assert "secret" not in resp.text and "Traceback" not in resp.text
        assert c.app.state.runtime.engine.admitted_rows == 0  # type: ignore[attr-defined]


def test_a_retried_step_is_idempotent(client: TestClient) -> None:
    created = client.post(
        "/v1/sessions", json={"start_frames": to_json(frames()[0]), "seed": 2}, headers=AUTH
    ).json()
    sid = created["sessions"][0]["session_id"]
    body = {"actions": to_json(actions(8, seed=3)), "expected_chunks_stepped": 0}
    first = client.post(f"/v1/sessions/{sid}/step", json=body, headers=AUTH)
    assert first.status_code == 200 and first.json()["replayed"] is False
    retry = client.post(f"/v1/sessions/{sid}/step", json=body, headers=AUTH)  # same request
    assert retry.status_code == 200 and retry.json()["replayed"] is True
    a, b = (from_json(r.json()["results"][0]["frames"]) for r in (first, retry))
    assert a.shape == (4, 64, 64, 3) and np.array_equal(a, b)
    assert retry.json()["results"][0]["chunks_stepped"] == 1
    assert client.get(f"/v1/sessions/{sid}", headers=AUTH).json()["chunks_stepped"] == 1

    wrong = client.post(
        f"/v1/sessions/{sid}/step", json=body | {"expected_chunks_stepped": 5}, headers=AUTH
    )
    assert wrong.status_code == 409
    err = wrong.json()["error"]
    assert err["code"] == "FAILED_PRECONDITION"
    assert "has stepped 1 chunks, fewer than expected_chunks_stepped=5" in err["message"]
    negative = client.post(
        f"/v1/sessions/{sid}/step", json=body | {"expected_chunks_stepped": -1}, headers=AUTH
    )
    assert negative.status_code == 422 and "expected_chunks_stepped" in error(negative)

    # A group step names the count of every member.
    group = client.post(
        "/v1/sessions",
        json={"start_frames": to_json(frames()[0]), "seed": 2, "group_size": 2},
        headers=AUTH,
    ).json()
    gbody = {"actions": to_json(actions(2, 8, seed=4)), "expected_chunks_stepped": 0}
    g1 = client.post(f"/v1/groups/{group['group_id']}/step", json=gbody, headers=AUTH).json()
    g2 = client.post(f"/v1/groups/{group['group_id']}/step", json=gbody, headers=AUTH).json()
    assert (g1["replayed"], g2["replayed"]) == (False, True)
    for r1, r2 in zip(g1["results"], g2["results"], strict=True):
        assert np.array_equal(from_json(r1["frames"]), from_json(r2["frames"]))
    infos = client.get(f"/v1/groups/{group['group_id']}", headers=AUTH).json()["sessions"]
    assert [i["chunks_stepped"] for i in infos] == [1, 1]
    for gone in (sid, group["group_id"]):
        kind = "groups" if gone.startswith("g-") else "sessions"
        assert client.delete(f"/v1/{kind}/{gone}", headers=AUTH).status_code == 200
    step_doc = client.get("/openapi.json", headers=AUTH).json()["paths"]["/v1/sessions/{session_id}/step"]
    assert "409" in step_doc["post"]["responses"]


def test_the_documented_request_examples_work(client: TestClient) -> None:
    schemas = client.get("/openapi.json", headers=AUTH).json()["components"]["schemas"]

    def example(name: str, i: int = 0) -> dict:
        return schemas[name]["examples"][i]

    assert client.post("/v1/imagine", json=example("ImagineBody"), headers=AUTH).status_code == 200
    single = client.post("/v1/sessions", json=example("CreateSessionBody"), headers=AUTH).json()
    group = client.post("/v1/sessions", json=example("CreateSessionBody", 1), headers=AUTH).json()
    sid, gid = single["sessions"][0]["session_id"], group["group_id"]
    step = client.post(f"/v1/sessions/{sid}/step", json=example("StepSessionBody"), headers=AUTH)
    assert step.status_code == 200, step.text
    gstep = client.post(f"/v1/groups/{gid}/step", json=example("StepGroupBody"), headers=AUTH)
    assert gstep.status_code == 200, gstep.text
    client.delete(f"/v1/sessions/{sid}", headers=AUTH)
    client.delete(f"/v1/groups/{gid}", headers=AUTH)
