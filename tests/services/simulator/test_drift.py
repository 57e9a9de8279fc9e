"""The drift monitor: outcome reports (`POST /v1/outcomes`, gRPC ReportOutcome) compared with
what `/v1/imagine` imagined, the drift metrics, the JSONL log, the stores (memory and a real
Redis) and every bad input. Tiny random world model; the comparison itself is never mocked."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from wmpo_client.codec import from_json, to_json

from services.common.errors import Conflict
from services.simulator.drift import (
    PSNR_CAP_DB,
    Imagined,
    MemoryImaginedStore,
    RedisImaginedStore,
    psnr_db,
    summarize,
)
from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SimulatorRuntime
from tests.services.simulator.conftest import KEY, actions, frames, settings

AUTH = {"x-api-key": KEY}


def client_for(world_model: Any, **overrides: Any) -> TestClient:
    s = settings(**overrides)
    return TestClient(create_simulator_app(s, SimulatorRuntime(world_model, s)),
                      raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(world_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    log = tmp_path_factory.mktemp("drift") / "outcomes.jsonl"
    with client_for(world_model, drift_log=str(log), drift_window=50) as c:
        c.log_path = log  # type: ignore[attr-defined]
        yield c


def imagine(client: TestClient, rid: str = "", n: int = 2, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "start_frames": to_json(frames()[0]),
        "candidates": to_json(actions(n, 1, 8)),
        "seed": 1,
        "request_id": rid,
        **extra,
    }
    resp = client.post("/v1/imagine", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


def imagined_frames(result: dict[str, Any], candidate: int) -> np.ndarray:
    return from_json(result["candidates"][candidate]["frames"])


def report(client: TestClient, rid: str, candidate: int, real: np.ndarray, **extra: Any) -> Any:
    body = {"request_id": rid, "candidate": candidate, "frames": to_json(real, "frames"), **extra}
    return client.post("/v1/outcomes", json=body, headers=AUTH)


def message(resp: Any) -> str:
    assert 400 <= resp.status_code < 500, resp.text[:300]
    return resp.json()["error"]["message"]


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics", headers=AUTH).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} not exported")


def test_identical_frames_are_no_drift_and_noise_is_some(client: TestClient) -> None:
    result = imagine(client, "drift-same")
    fake = imagined_frames(result, 1)  # (T, H, W, 3)
    before = metric(client, "wmpo_outcomes_total", service="simulator", result="success")
    resp = report(client, "drift-same", 1, fake, success=True)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["frames_compared"] == len(fake) and out["candidate"] == 1
    assert out["psnr_db"] == [PSNR_CAP_DB] * len(fake) and out["psnr_mean_db"] == PSNR_CAP_DB
    assert out["perceptual"] == [0.0] * len(fake)
    assert out["world_model"] == "tiny" and out["success"] is True and not out["replayed"]
    assert out["confidence"] is None  # imagined without verify
    assert metric(client, "wmpo_outcomes_total", service="simulator", result="success") == before + 1

    # A noisy copy of the first two frames only (a prefix): finite PSNR, positive distance.
    result = imagine(client, "drift-noisy")
    fake = imagined_frames(result, 0)
    rng = np.random.default_rng(0)
    noisy = np.clip(fake[:2].astype(int) + rng.integers(-40, 41, fake[:2].shape), 0, 255)
    out = report(client, "drift-noisy", 0, noisy.astype(np.uint8)).json()
    assert out["frames_compared"] == 2 and out["success"] is None
    assert 10 < out["psnr_mean_db"] < 30
    assert out["psnr_db"] == [round(p, 4) for p in psnr_db(noisy.astype(np.uint8), fake[:2])]
    assert all(p > 0 for p in out["perceptual"])
    assert metric(client, "wmpo_drift_psnr_db_count", service="simulator") >= 2
    assert metric(client, "wmpo_drift_perceptual_rolling", service="simulator") > 0


def test_the_log_and_the_rolling_gauges_agree(client: TestClient) -> None:
    result = imagine(client, "drift-log")
    report(client, "drift-log", 0, imagined_frames(result, 0)[:1], success=False)
    rows = [json.loads(line) for line in client.log_path.read_text().splitlines()]  # type: ignore[attr-defined]
    assert rows[-1]["request_id"] == "drift-log" and rows[-1]["success"] is False
    summary = summarize(rows)
    assert summary.outcomes == metric(client, "wmpo_drift_window_outcomes", service="simulator")
    assert summary.psnr_mean_db == pytest.approx(
        metric(client, "wmpo_drift_psnr_rolling_db", service="simulator"))


def test_duplicate_report_is_idempotent_and_a_different_one_is_409(client: TestClient) -> None:
    result = imagine(client, "drift-dup")
    fake = imagined_frames(result, 0)
    first = report(client, "drift-dup", 0, fake, success=True).json()
    counted = metric(client, "wmpo_drift_psnr_db_count", service="simulator")
    again = report(client, "drift-dup", 0, fake, success=True)
    assert again.status_code == 200 and again.json() == {**first, "replayed": True}
    assert metric(client, "wmpo_drift_psnr_db_count", service="simulator") == counted  # once
    other = report(client, "drift-dup", 0, fake, success=False)
    assert other.status_code == 409 and "already reported" in message(other)
    assert report(client, "drift-dup", 1, fake).status_code == 409


def test_bad_outcomes_are_clear_4xx(client: TestClient) -> None:
    result = imagine(client, "drift-bad", n=2)
    fake = imagined_frames(result, 0)
    t = len(fake)

    resp = report(client, "never-imagined", 0, fake)
    assert resp.status_code == 404 and "never-imagined" in message(resp) and "TTL" in message(resp)
    resp = report(client, "drift-bad", 2, fake)
    assert resp.status_code == 400 and "candidate" in message(resp) and "0..1" in message(resp)
    resp = report(client, "drift-bad", 0, np.zeros((1, 32, 32, 3), np.uint8))
    assert resp.status_code == 400 and message(resp).startswith("frames:")
    resp = report(client, "drift-bad", 0, np.concatenate([fake, fake[:1]]))
    assert resp.status_code == 400 and f"imagined {t}" in message(resp)
    resp = report(client, "drift-bad", 0, np.zeros((64, 64, 3), np.uint8))  # not (T, H, W, 3)
    assert resp.status_code == 422 and "frames" in message(resp)
    resp = report(client, "drift-bad", 0, fake.astype(np.float32))
    assert resp.status_code == 422 and "frames" in message(resp) and "uint8" in message(resp)
    resp = report(client, "drift-bad", -1, fake)
    assert resp.status_code == 422 and "candidate" in message(resp)
    resp = client.post("/v1/outcomes", json={"candidate": 0, "frames": to_json(fake)}, headers=AUTH)
    assert resp.status_code == 422 and "request_id" in message(resp)
    # Nothing lost: after all that, the real report is still accepted.
    assert report(client, "drift-bad", 0, fake).status_code == 200


def test_outcomes_expire_and_the_store_is_bounded(world_model: Any) -> None:
    with client_for(world_model, outcome_ttl_s=0.5, outcome_max_records=2) as c:
        for rid in ("a", "b", "c"):
            imagine(c, rid)
        fake = imagined_frames(imagine(c, "d"), 0)
        resp = report(c, "a", 0, fake)  # pushed out by b, c, d
        assert resp.status_code == 404 and "'a'" in message(resp)
        assert report(c, "d", 0, fake).status_code == 200
        time.sleep(0.6)
        resp = report(c, "c", 0, fake)
        assert resp.status_code == 404 and "0.5 s" in message(resp)


def test_calibration_curve_and_error() -> None:
    rows = [{"psnr_mean_db": 20.0, "perceptual_mean": 0.1, "confidence": c, "success": s}
            for c, s in [(0.95, True), (0.92, True), (0.91, False), (0.15, False), (0.12, True)]]
    s = summarize(rows)
    top, low = s.calibration[9], s.calibration[1]
    assert top["count"] == 3 and top["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert low["count"] == 2 and low["success_rate"] == 0.5
    expected = 3 / 5 * abs(2 / 3 - (0.95 + 0.92 + 0.91) / 3) + 2 / 5 * abs(0.5 - 0.135)
    assert s.calibration_error == pytest.approx(expected, abs=1e-4)
    assert s.real_success_rate == 0.6 and s.calibrated == 5
    assert summarize([]).calibration_error is None


def test_verified_imagine_carries_the_confidence_into_the_outcome(world_model: Any) -> None:
    """With verify the executed candidate's judge confidence is kept; here the judge is the
    runtime's verification applied to a stored record, checked through the store."""
    store = MemoryImaginedStore(ttl_s=60, max_records=4)
    rec = Imagined(np.zeros((2, 4, 8, 8, 3), np.uint8), [0.2, 0.9], "x", 2, "h", time.time())

    async def run() -> None:
        await store.put("r", rec)
        got = await store.get("r")
        assert got is not None and got.confidences == [0.2, 0.9]
        assert await store.claim("r", "d1", {"k": 1}) is None
        assert await store.claim("r", "d1", {"k": 2}) == {"k": 1}
        with pytest.raises(Conflict):
            await store.claim("r", "d2", {"k": 3})

    asyncio.run(run())


def test_redis_store_is_shared_and_expires(redis_url: str, redis_prefix: str) -> None:
    rec = Imagined(np.arange(2 * 3 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 3, 8, 8, 3) % 251,
                   [0.5, 0.25], "open the drawer", 2, "sha", time.time())

    async def run() -> None:
        a = RedisImaginedStore(redis_url, redis_prefix, ttl_s=1.5)
        b = RedisImaginedStore(redis_url, redis_prefix, ttl_s=1.5)  # another replica
        await a.start()
        await b.start()
        try:
            await a.put("rid-1", rec)
            got = await b.get("rid-1")
            assert got is not None and np.array_equal(got.frames, rec.frames)
            assert got.confidences == [0.5, 0.25] and got.instruction == "open the drawer"
            assert await a.claim("rid-1", "d", {"psnr": 1.0}) is None
            assert await b.claim("rid-1", "d", {"psnr": 2.0}) == {"psnr": 1.0}
            with pytest.raises(Conflict):
                await b.claim("rid-1", "other", {})
            await asyncio.sleep(1.7)
            assert await b.get("rid-1") is None
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_a_streamed_imagine_takes_outcomes_too(client: TestClient) -> None:
    body = {"start_frames": to_json(frames()[0]), "candidates": to_json(actions(2, 2, 8)), "seed": 2,
            "request_id": "drift-stream"}
    lines = client.post("/v1/imagine/stream", json=body, headers=AUTH).text.splitlines()
    chunks = [json.loads(line) for line in lines if json.loads(line)["event"] == "frames"]
    streamed = np.concatenate([from_json(c["frames"]) for c in chunks], axis=1)  # (N, T, H, W, 3)
    out = report(client, "drift-stream", 1, streamed[1], success=False)
    assert out.status_code == 200, out.text
    assert out.json()["frames_compared"] == streamed.shape[1] == 8
    assert out.json()["psnr_mean_db"] == PSNR_CAP_DB


def test_replicas_share_what_was_imagined_through_redis(world_model: Any, redis_url: str,
                                                        redis_prefix: str) -> None:
    """Queue mode: replica A imagines (and runs the work), replica B takes the outcome."""
    s = {"redis_url": redis_url, "queue_prefix": redis_prefix, "queue_min_idle_s": 0.6,
         "queue_retry_delay_s": 0.05}
    with client_for(world_model, **s) as a, client_for(world_model, **s) as b:
        fake = imagined_frames(imagine(a, "shared-1"), 0)
        out = report(b, "shared-1", 0, fake, success=True)
        assert out.status_code == 200, out.text
        assert out.json()["psnr_mean_db"] == PSNR_CAP_DB
        again = report(a, "shared-1", 0, fake, success=True)  # the repeat, on the other replica
        assert again.status_code == 200 and again.json()["replayed"] is True
        assert report(a, "shared-1", 0, fake, success=False).status_code == 409
        assert report(b, "never", 0, fake).status_code == 404
