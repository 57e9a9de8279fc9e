"""kind=vlm through the judge service, against a local OpenAI-compatible chat server.

The chat server (`tests/judge/test_vlm.py`'s `ChatServer`) is real HTTP with scripted
answers: what is under test is the service around the VLM client (routing, the vote result
on both transports, rewards and dual-noise verification from votes, error mapping), not a
VLM's judgement, which cannot run here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from wmpo_client.codec import to_json

from services.judge.http_api import create_judge_app
from services.judge.runtime import JudgeRuntime
from tests.judge.test_vlm import ChatServer
from tests.services.judge.conftest import INSTRUCTION, KEY, settings

AUTH = {"x-api-key": KEY}
YES = '{"result": "Success"}'
NO = '{"result": "Failure"}'


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatServer]:
    with ChatServer() as server:
        yield server


def client_for(chat: ChatServer, classifier: Any, **overrides: Any) -> TestClient:
    # One VLM call at a time, so scripted answers go to the videos in request order.
    s = settings(
        vlm_url=chat.url, vlm_model="test-vl", vlm_api_key="vlm-secret-token", vlm_concurrency=1
    )
    s = s.model_copy(update=overrides)
    return TestClient(
        create_judge_app(s, JudgeRuntime(classifier, s)), raise_server_exceptions=False
    )


@pytest.fixture
def client(chat: ChatServer, classifier) -> Iterator[TestClient]:
    chat.script.clear()
    chat.requests.clear()
    with client_for(chat, classifier) as c:
        yield c


def body(video: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"frames": to_json(video), "instruction": INSTRUCTION, "kind": "vlm"} | extra


def test_vlm_kind_returns_the_vote(client: TestClient, chat: ChatServer, videos) -> None:
    chat.script = [[YES] * 4 + [NO]]
    video = videos.successes[0]
    resp = client.post("/v1/judge", json=body(video, frame_stride=2), headers=AUTH)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    v = out["verdict"]
    assert out["kind"] == "vlm" and v["success"] and v["score"] == pytest.approx(0.8)
    assert v["vlm"] == {
        "votes": 4,
        "samples": 5,
        "unparsed": 0,
        "votes_needed": 4,
        "answers": [YES] * 4 + [NO],
    }
    assert v["threshold"] == pytest.approx(0.8) and v["clip_reward"] is None
    assert v["clip_scores"] == [] and v["best_clip"] == -1 and v["done_clip"] == -1
    assert v["frames_used"][-1] == len(video) - 1  # the last frame is always sent
    assert out["provenance"]["judge"] == "vlm" and out["provenance"]["model"] == "test-vl"
    (sent,) = chat.requests
    assert sent["auth"] == "Bearer vlm-secret-token" and sent["body"]["model"] == "test-vl"
    images = [c for c in sent["body"]["messages"][0]["content"] if c["type"] == "image_url"]
    assert len(images) == len(v["frames_used"])

    # Any frame size is fine for the VLM; three of five is a failure.
    chat.script = [[YES] * 3 + [NO] * 2]
    small = np.zeros((5, 16, 16, 3), np.uint8)
    v = client.post("/v1/judge", json=body(small), headers=AUTH).json()["verdict"]
    assert not v["success"] and v["vlm"]["votes"] == 3


def test_vlm_group_rewards_and_dual_noise(client: TestClient, chat: ChatServer, videos) -> None:
    a, b = videos.successes[0], videos.failures[0]
    # Rollout 0: a success (5/5) whose replay is a failure (0/5); rollout 1: 4/5.
    chat.script = [[YES] * 5, [YES] * 4 + ["no idea"], [NO] * 5]
    g = {
        "videos": [to_json(a), to_json(b)],
        "replays": [{"index": 0, "frames": to_json(a[::-1].copy())}],
        "instruction": INSTRUCTION,
        "kind": "vlm",
        "reward": "score",
    }
    resp = client.post("/v1/judge/group", json=g, headers=AUTH)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [r["raw_reward"] for r in out["rollouts"]] == pytest.approx([1.0, 0.8])
    assert [r["flagged"] for r in out["rollouts"]] == [True, False]
    assert out["rewards"] == pytest.approx([0.8, 0.8])  # flagged: the trusted mean
    assert out["rollouts"][1]["verdict"]["vlm"]["unparsed"] == 1
    assert not out["verified"] and out["needs_replay"] == [1]
    assert len(chat.requests) == 3

    resp = client.post("/v1/judge/group", json=g | {"reward": "clip"}, headers=AUTH)
    assert (
        resp.status_code == 400
        and "reward=clip needs clip scores" in resp.json()["error"]["message"]
    )


def test_vlm_failures_and_misuse_are_clear_errors(
    client: TestClient, chat: ChatServer, videos
) -> None:
    video = videos.failures[0]
    chat.script = [400]  # the endpoint refuses (e.g. an unknown model): a config problem
    resp = client.post("/v1/judge", json=body(video), headers=AUTH)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert (
        err["code"] == "FAILED_PRECONDITION" and "check the judge's VLM settings" in err["message"]
    )
    assert chat.url not in err["message"] and "127.0.0.1" not in err["message"]
    assert len(chat.requests) == 1  # neither the client nor the work queue retried it

    wide = np.zeros((1, 8, 1100, 3), np.uint8)
    for frames, extra, message in [
        (video, {"threshold": 0.5}, "threshold applies to kind=classifier only"),
        (video, {"clip_temperature": 0.5}, "clip_temperature applies to kind=classifier only"),
        (wide, {}, "exceed the VLM judge's limit of 1024 pixels a side"),
    ]:
        resp = client.post("/v1/judge", json=body(frames, **extra), headers=AUTH)
        assert resp.status_code == 400 and message in resp.json()["error"]["message"]


def test_a_vlm_only_judge(chat: ChatServer, videos) -> None:
    chat.script = [[YES] * 5]
    with client_for(chat, None) as c:
        plain = {"frames": to_json(videos.successes[0]), "instruction": INSTRUCTION}
        out = c.post("/v1/judge", json=plain, headers=AUTH).json()  # the default kind: vlm
        assert out["kind"] == "vlm" and out["verdict"]["success"]
        resp = c.post("/v1/judge", json=plain | {"kind": "classifier"}, headers=AUTH)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "FAILED_PRECONDITION"
        assert "no success classifier loaded" in resp.json()["error"]["message"]
