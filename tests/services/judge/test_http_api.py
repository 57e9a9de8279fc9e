"""The judge's HTTP API end to end (FastAPI app + lifespan + queue + engine + tiny classifier)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from wmpo_client.codec import to_json

from services.judge.http_api import create_judge_app
from services.judge.runtime import JudgeRuntime
from tests.services.judge.conftest import INSTRUCTION, KEY, CountingJudge, settings
from wmpo.judge.rewards import clip_reward

AUTH = {"x-api-key": KEY}


def client_for(classifier: Any, **overrides: Any) -> TestClient:
    s = settings(**overrides)
    app = create_judge_app(s, JudgeRuntime(classifier, s))
    # raise_server_exceptions=False: see what a real client gets, 5xx included.
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(classifier) -> Iterator[TestClient]:
    with client_for(classifier, max_request_bytes=8 * 1024**2, max_group_size=8) as c:
        yield c


def judge_body(video: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"frames": to_json(video), "instruction": INSTRUCTION} | extra


def group_body(vids: list[np.ndarray], replays: dict[int, np.ndarray], **extra: Any) -> dict:
    return {
        "videos": [to_json(v) for v in vids],
        "replays": [{"index": i, "frames": to_json(v)} for i, v in replays.items()],
        "instruction": INSTRUCTION,
    } | extra


def error(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code < 500, resp.text[:500]
    return resp.json()["error"]


def test_auth_is_required_but_not_for_health(client: TestClient, videos) -> None:
    body = judge_body(videos.successes[0])
    resp = client.post("/v1/judge", json=body)
    assert resp.status_code == 401 and "missing API key" in error(resp)["message"]
    assert client.post("/v1/judge", json=body, headers={"x-api-key": "x" * 20}).status_code == 401
    bearer = {"authorization": f"Bearer {KEY}"}
    assert client.post("/v1/judge", json=body, headers=bearer).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}


def test_judge_returns_the_classifier_verdict_with_provenance_and_timing(
    client: TestClient, classifier, videos
) -> None:
    video = videos.successes[0]
    resp = client.post("/v1/judge", json=judge_body(video, request_id="r-1"), headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    (want,) = classifier.judge_many([video], [INSTRUCTION])
    v = body["verdict"]
    assert body["request_id"] == "r-1" and body["kind"] == "classifier"
    assert v["success"] == want.success and v["best_clip"] == want.best_clip
    assert v["score"] == pytest.approx(want.score, abs=1e-5)
    assert v["clip_scores"] == pytest.approx(want.clip_scores, abs=2e-4)
    assert v["done_clip"] == (-1 if want.done_clip is None else want.done_clip)
    assert v["done_frame"] == (-1 if want.done_frame is None else want.done_frame)
    assert v["clip_reward"] == pytest.approx(clip_reward(np.array(v["clip_scores"]), 0.25))
    assert v["threshold"] == classifier.threshold and v["vlm"] is None
    assert v["frames_used"] == want.frames_used
    prov = body["provenance"]
    assert prov["judge"] == "classifier" and prov["classifier_sha256"] == classifier.sha256
    assert prov["clip_temperature"] == "0.25" and prov["frame_stride"] == "1"
    assert {"queue", "model", "total", "dispatch"} <= set(body["timing"])

    # PNG frames, imagined-video stride, own threshold and temperature.
    png = judge_body(video, frame_stride=2, threshold=0.0, clip_temperature=10.0)
    png["frames"] = to_json(video, encoding="png")
    body2 = client.post("/v1/judge", json=png, headers=AUTH).json()
    v2 = body2["verdict"]
    assert v2["success"] and v2["threshold"] == 0.0 and v2["done_clip"] == 0
    # Stride 2: every frame is already at the classifier's spacing (about twice the clips).
    assert v2["frames_used"] == list(range(len(video)))
    assert v2["done_frame"] == 7  # the first clip (frames 0..7) already passes
    assert len(v2["clip_scores"]) > len(v["clip_scores"])
    assert body2["provenance"]["threshold"] == "0.0"


def test_a_request_id_makes_retries_idempotent(client: TestClient, videos) -> None:
    rt: JudgeRuntime = client.app.state.runtime  # type: ignore[attr-defined]
    body = judge_body(videos.failures[0], request_id="same-id")
    first = client.post("/v1/judge", json=body, headers=AUTH).json()
    hits = rt.queue.stats.stored_hits
    again = client.post("/v1/judge", json=body, headers=AUTH).json()
    assert again["verdict"] == first["verdict"] and rt.queue.stats.stored_hits == hits + 1
    other = judge_body(videos.failures[1], request_id="same-id")
    resp = client.post("/v1/judge", json=other, headers=AUTH)
    assert (
        resp.status_code == 400 and "already used for a different request" in error(resp)["message"]
    )


def test_group_applies_dual_noise_verification(client: TestClient, split) -> None:
    hi, lo, thr = split.high, split.low, split.threshold
    # Rollouts 0, 1 succeed; 2, 3 fail. Rollout 0's replay agrees, rollout 1's does not.
    body = group_body([hi, hi, lo, lo], {0: hi, 1: lo}, threshold=thr)
    resp = client.post("/v1/judge/group", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    g = resp.json()
    assert [r["verdict"]["success"] for r in g["rollouts"]] == [True, True, False, False]
    assert [r["raw_reward"] for r in g["rollouts"]] == [1.0, 1.0, 0.0, 0.0]
    assert [r["flagged"] for r in g["rollouts"]] == [False, True, False, False]
    # The hallucination gets the mean of the trustworthy rewards: advantage zero.
    assert g["rewards"] == pytest.approx([1.0, 1 / 3, 0.0, 0.0])
    assert g["rollouts"][1]["replay"]["success"] is False and g["rollouts"][2]["replay"] is None
    assert not g["discard"] and g["verified"] and g["needs_replay"] == []
    assert g["reward"] == "success" and g["kind"] == "classifier"

    # Three hallucinations in a group: more than max_flags=2, the group is discarded.
    body = group_body([hi, hi, hi, lo], {0: lo, 1: lo, 2: lo}, threshold=thr)
    g = client.post("/v1/judge/group", json=body, headers=AUTH).json()
    assert sum(r["flagged"] for r in g["rollouts"]) == 3 and g["discard"]
    assert g["rewards"] == pytest.approx([0.0] * 4)  # the mean of the one trusted (0)
    # ... unless the caller allows three.
    body["max_flags"] = 3
    assert not client.post("/v1/judge/group", json=body, headers=AUTH).json()["discard"]

    # Without replays nothing is flagged, and the successes to replay are named.
    body = group_body([lo, hi, hi], {}, threshold=thr, reward="score")
    g = client.post("/v1/judge/group", json=body, headers=AUTH).json()
    assert not g["verified"] and g["needs_replay"] == [1, 2]
    assert not any(r["flagged"] for r in g["rollouts"])
    assert g["rewards"] == pytest.approx([r["verdict"]["score"] for r in g["rollouts"]])

    # The clip reward: the temporally weighted clip scores of each rollout.
    body = group_body([hi, lo], {}, threshold=thr, reward="clip", clip_temperature=0.5)
    g = client.post("/v1/judge/group", json=body, headers=AUTH).json()
    for r in g["rollouts"]:
        assert r["reward"] == pytest.approx(clip_reward(np.array(r["verdict"]["clip_scores"]), 0.5))


def _tensor_with(array: np.ndarray, **changes: Any) -> dict:
    return to_json(array) | changes


FRAMES = np.zeros((9, 64, 64, 3), np.uint8)


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"frames": to_json(FRAMES.astype(np.float32))}, 422, "dtype must be uint8"),
        ({"frames": to_json(FRAMES[..., :2])}, 422, "expected RGB frames (T, H, W, 3)"),
        ({"frames": to_json(FRAMES[0])}, 422, "expected RGB frames (T, H, W, 3)"),
        ({"frames": to_json(FRAMES[:0])}, 422, "no frames (T=0)"),
        ({"frames": _tensor_with(FRAMES, shape=[9, 64, 64, 4])}, 422, "needs 147456 bytes"),
        ({"frames": _tensor_with(FRAMES, dtype="float64")}, 422, "body.frames.dtype"),
        ({"frames": {"dtype": "uint8", "shape": [1]}}, 422, "exactly one of 'data' or 'png'"),
        ({"frames": _tensor_with(FRAMES, data="***")}, 422, "not valid base64"),
        ({"frames": to_json(FRAMES[:, :32, :32])}, 400, "takes 64x64 frames, got 32x32"),
        ({"kind": "oracle"}, 422, "body.kind"),
        ({"kind": "vlm"}, 400, "no VLM endpoint configured"),
        ({"instruction": ""}, 422, "body.instruction"),
        ({"instruction": "x" * 1001}, 422, "body.instruction"),
        ({"frame_stride": 0}, 422, "body.frame_stride"),
        ({"frame_stride": 3}, 400, "must divide the classifier's frame stride 2"),
        ({"threshold": 1.5}, 422, "body.threshold"),
        ({"threshold": -0.1}, 422, "body.threshold"),
        ({"clip_temperature": 0}, 422, "body.clip_temperature"),
        ({"request_id": "bad id!"}, 422, "body.request_id"),
        ({"surprise": 1}, 422, "body.surprise"),
    ],
)
def test_bad_judge_requests_are_clear_4xx(
    client: TestClient, change: dict, status: int, message: str
) -> None:
    resp = client.post("/v1/judge", json=judge_body(FRAMES) | change, headers=AUTH)
    assert resp.status_code == status, resp.text
    err = error(resp)
    assert message in err["message"], err
    assert err["code"] in ("INVALID_ARGUMENT", "FAILED_PRECONDITION") and err["request_id"]


def test_non_json_numbers_and_bodies_are_4xx(client: TestClient) -> None:
    raw = b'{"frames": %s, "instruction": "x", "threshold": NaN}'
    body = raw % to_json(FRAMES).__repr__().replace("'", '"').encode()
    resp = client.post(
        "/v1/judge", content=body, headers=AUTH | {"content-type": "application/json"}
    )
    assert resp.status_code == 422 and "threshold" in error(resp)["message"]
    resp = client.post(
        "/v1/judge", content=b"{not json", headers=AUTH | {"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert client.post("/v1/judge", json=[1, 2], headers=AUTH).status_code == 422


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"videos": []}, "body.videos"),
        ({"replays": [{"index": 5, "frames": to_json(FRAMES)}]}, "replay index 5 is not a rollout"),
        ({"replays": [{"index": 0, "frames": to_json(FRAMES)}] * 2}, "two replays for rollout 0"),
        ({"replays": [{"index": -1, "frames": to_json(FRAMES)}]}, "body.replays.0.index"),
        (
            {"replays": [{"index": 0, "frames": to_json(FRAMES[:0])}]},
            "replay 0: the video has no frames",
        ),
        ({"videos": [to_json(FRAMES)] * 9}, "a group has 1 to 8 videos, got 9"),
        ({"reward": "vibes"}, "body.reward"),
        ({"max_flags": -1}, "body.max_flags"),
        ({"kind": "vlm", "reward": "score"}, "no VLM endpoint configured"),
    ],
)
def test_bad_group_requests_are_clear_4xx(client: TestClient, change: dict, message: str) -> None:
    resp = client.post("/v1/judge/group", json=group_body([FRAMES], {}) | change, headers=AUTH)
    assert 400 <= resp.status_code < 500, resp.text
    assert message in error(resp)["message"]


def test_oversized_bodies_are_413(client: TestClient) -> None:
    big = np.zeros((700, 64, 64, 3), np.uint8)  # 8.6 MB raw, over the 8 MiB limit
    resp = client.post("/v1/judge", json=judge_body(big), headers=AUTH)
    assert resp.status_code == 413 and error(resp)["code"] == "PAYLOAD_TOO_LARGE"


def test_too_many_frames_and_a_busy_judge_are_refused(classifier, videos) -> None:
    with client_for(classifier, max_video_frames=16, max_queued_videos=2) as c:
        resp = c.post("/v1/judge", json=judge_body(videos.successes[0]), headers=AUTH)
        assert (
            resp.status_code == 400 and "exceed the limit of 16 per video" in error(resp)["message"]
        )
        body = group_body([FRAMES] * 2, {0: FRAMES})
        resp = c.post("/v1/judge/group", json=body, headers=AUTH)
        assert resp.status_code == 400 and "3 videos (rollouts + replays)" in error(resp)["message"]


def test_concurrent_http_requests_are_batched_into_one_call(classifier, videos) -> None:
    """Many callers at once over HTTP: their videos meet in one classifier forward."""
    vids = [*videos.all, videos.successes[1][:20], videos.failures[1][:9]]

    async def scenario() -> tuple[list[dict], CountingJudge, JudgeRuntime]:
        model = CountingJudge(classifier)
        s = settings(max_wait_ms=300)
        rt = JudgeRuntime(model, s)  # type: ignore[arg-type]
        app = create_judge_app(s, rt)
        await rt.start()  # ASGITransport runs no lifespan: start the runtime by hand
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://judge") as http:
                resps = await asyncio.gather(
                    *(http.post("/v1/judge", json=judge_body(v), headers=AUTH) for v in vids)
                )
        finally:
            await rt.stop()
        assert all(r.status_code == 200 for r in resps), [r.text for r in resps]
        return [r.json() for r in resps], model, rt

    bodies, model, rt = asyncio.run(scenario())
    assert len(model.calls) < len(vids) and max(model.calls) > 1, model.calls
    assert rt.engine.stats.largest_batch_jobs > 1
    for video, body in zip(vids, bodies, strict=True):
        (alone,) = classifier.judge_many([video], [INSTRUCTION])
        assert body["verdict"]["success"] == alone.success
        assert body["verdict"]["frames_used"] == alone.frames_used
        assert body["verdict"]["score"] == pytest.approx(alone.score, abs=1e-5)
