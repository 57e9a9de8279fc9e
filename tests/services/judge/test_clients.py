"""The light client's judge clients (HTTP and gRPC, sync and async) against the real service.

The judge runs as deployed (`services.embedded.serve_judge_in_thread`: HTTP on uvicorn and
gRPC on grpc.aio in one lifespan) on free localhost ports over the tiny trained classifier;
the retry loop is also checked against scripted HTTP answers (httpx.MockTransport).
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from wmpo_client import (
    AsyncGrpcJudgeClient,
    AsyncJudgeClient,
    GrpcJudgeClient,
    JudgeClient,
    SimulatorError,
)
from wmpo_client.judge_results import GroupJudgement, JudgeResult

from services.embedded import EmbeddedJudge, serve_judge_in_thread
from tests.services.judge.conftest import INSTRUCTION, KEY, settings


@pytest.fixture(scope="module")
def judge(classifier) -> Iterator[EmbeddedJudge]:
    s = settings(port=0, grpc_port=0, grpc_grace_s=0.5)
    with serve_judge_in_thread(classifier, s, start_timeout_s=30) as live:
        yield live


def _check(result: JudgeResult, group: GroupJudgement, split: Any) -> None:
    assert result.kind == "classifier" and result.verdict.clip_reward is not None
    assert result.verdict.best_clip is not None and result.verdict.vlm is None
    assert result.provenance["judge"] == "classifier" and result.timing["total"] > 0
    assert group.flagged.tolist() == [False, True, False]
    assert group.rewards == pytest.approx([1.0, 0.5, 0.0])
    assert group.success.tolist() == [True, True, False]
    assert group.rollouts[1].replay is not None and not group.rollouts[1].replay.success
    assert group.verified and not group.discard and group.needs_replay == []


def _group_args(split: Any) -> dict[str, Any]:
    return {
        "videos": [split.high, split.high, split.low],
        "instruction": INSTRUCTION,
        "replays": {0: split.high, 1: split.low},
        "threshold": split.threshold,
    }


def test_sync_clients_over_http_and_grpc_agree(judge: EmbeddedJudge, split, videos) -> None:
    video = videos.successes[1]
    with JudgeClient(judge.http_url, KEY) as h, GrpcJudgeClient(judge.grpc_target, KEY) as g:
        for client in (h, g):
            assert client.health().ready
        a = h.judge(video, INSTRUCTION, frame_stride=2, request_id="c-1")
        b = g.judge(video, INSTRUCTION, frame_stride=2, request_id="c-2")
        assert a.request_id == "c-1" and b.request_id == "c-2"
        assert a.verdict.success == b.verdict.success and a.score == pytest.approx(b.score)
        assert a.verdict.clip_scores == pytest.approx(b.verdict.clip_scores)
        assert a.verdict.done_clip == b.verdict.done_clip
        _check(a, h.judge_group(**_group_args(split)), split)
        _check(b, g.judge_group(**_group_args(split)), split)
        # PNG on the wire: the same verdict.
        with JudgeClient(judge.http_url, KEY, frame_encoding="png") as png:
            assert png.judge(video, INSTRUCTION, frame_stride=2).score == pytest.approx(a.score)

        for client in (h, g):
            with pytest.raises(SimulatorError) as err:
                client.judge(video, INSTRUCTION, kind="vlm")
            assert err.value.code == "FAILED_PRECONDITION"
            assert "no VLM endpoint configured" in err.value.message
            with pytest.raises(SimulatorError) as err:
                client.judge(video[:, :32, :32], INSTRUCTION)
            assert err.value.code == "INVALID_ARGUMENT" and "64x64" in err.value.message
        with (
            JudgeClient(judge.http_url, "wrong-key-0123456789") as bad,
            pytest.raises(SimulatorError) as err,
        ):
            bad.judge(video, INSTRUCTION)
        assert err.value.code == "UNAUTHENTICATED" and err.value.http_status == 401
        # Mistakes caught before anything is sent.
        with pytest.raises(ValueError, match="must be uint8"):
            h.judge(video.astype(np.float32) / 255, INSTRUCTION)
        with pytest.raises(ValueError, match="kind must be one of"):
            g.judge(video, INSTRUCTION, kind="oracle")
        with pytest.raises(ValueError, match="reward must be one of"):
            h.judge_group([video], INSTRUCTION, reward="vibes")


def test_async_clients_over_http_and_grpc(judge: EmbeddedJudge, split, videos) -> None:
    async def scenario() -> None:
        h = AsyncJudgeClient(judge.http_url, KEY)
        g = AsyncGrpcJudgeClient(judge.grpc_target, KEY)
        async with h, g:
            assert (await h.health()).ready and (await g.health()).ready
            results = await asyncio.gather(
                *(c.judge(v, INSTRUCTION) for c in (h, g) for v in videos.all)
            )
            n = len(videos.all)
            for a, b in zip(results[:n], results[n:], strict=True):
                assert a.success == b.success and a.score == pytest.approx(b.score)
            _check(results[0], await h.judge_group(**_group_args(split)), split)
            _check(results[0], await g.judge_group(**_group_args(split)), split)
            with pytest.raises(SimulatorError) as err:
                await g.judge_group([videos.failures[0]], INSTRUCTION, max_flags=-1)
            assert err.value.code == "INVALID_ARGUMENT"

    asyncio.run(scenario())


DROP = 0  # a scripted answer: the connection dies before a response


def _scripted(statuses: list[int], ok: dict[str, Any]) -> tuple[list[httpx.Request], Any]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses.pop(0) if statuses else 200
        if status == DROP:  # what a keep-alive connection the server just closed gives
            raise httpx.ReadError("", request=request)
        if status == 200:
            return httpx.Response(200, json=ok)
        body = {"error": {"code": "RESOURCE_EXHAUSTED", "message": "busy", "request_id": "x"}}
        return httpx.Response(status, json=body, headers={"retry-after": "0"})

    return seen, handler


OK = {
    "request_id": "r",
    "kind": "vlm",
    "verdict": {
        "success": True,
        "score": 1.0,
        "clip_scores": [],
        "best_clip": -1,
        "done_clip": -1,
        "done_frame": -1,
        "clip_reward": None,
        "threshold": 0.8,
        "frames_used": [0],
        "vlm": {"votes": 5, "samples": 5, "unparsed": 0, "votes_needed": 4, "answers": ["y"] * 5},
    },
    "provenance": {},
    "timing": {},
}


def test_one_retry_loop_serves_the_sync_and_the_async_client() -> None:
    video = np.zeros((2, 8, 8, 3), np.uint8)
    seen, handler = _scripted([429, 503], OK)
    with JudgeClient("http://judge", transport=httpx.MockTransport(handler)) as c:
        res = c.judge(video, "x", request_id="r")
    assert len(seen) == 3 and res.verdict.vlm is not None and res.verdict.best_clip is None
    assert seen[0].headers["x-request-id"] == "r"

    async def scenario() -> None:
        seen, handler = _scripted([429, 429, 429, 429], OK)
        transport = httpx.MockTransport(handler)
        async with AsyncJudgeClient("http://judge", retries=2, transport=transport) as c:
            with pytest.raises(SimulatorError) as err:
                await c.judge(video, "x")
        assert len(seen) == 3 and err.value.code == "RESOURCE_EXHAUSTED"

    asyncio.run(scenario())
    # A call lost in transit is re-sent (judging has no side effects), within the budget.
    seen, handler = _scripted([DROP, DROP], OK)
    with JudgeClient("http://judge", retries=2, transport=httpx.MockTransport(handler)) as c:
        assert c.judge(video, "x").success
    assert len(seen) == 3
    seen, handler = _scripted([DROP, DROP], OK)
    with (
        JudgeClient("http://judge", retries=1, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(SimulatorError) as err,
    ):
        c.judge(video, "x")
    assert len(seen) == 2 and err.value.code == "UNAVAILABLE"
    with (
        JudgeClient("http://127.0.0.1:9", retries=0, connect_timeout=0.5) as c,
        pytest.raises(SimulatorError) as err,
    ):
        c.judge(video, "x")
    assert err.value.code == "UNAVAILABLE" and "cannot reach the judge" in err.value.message


def test_an_idle_keep_alive_connection_outlives_the_clients_own_expiry(judge: EmbeddedJudge) -> None:
    """The server keeps an idle connection open longer than httpx's clients keep theirs (5 s),
    so a pooled connection a client reuses is never one the server is closing (at uvicorn's
    default of 5 s that race lost a judge call in CI)."""
    url = httpx.URL(judge.http_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        sock = conn.sock
        time.sleep((httpx.Limits().keepalive_expiry or 5.0) + 1.0)  # past the clients' expiry
        conn.request("GET", "/healthz")  # on the same connection (RemoteDisconnected if closed)
        second = conn.getresponse()
        assert second.status == 200 and second.read() and conn.sock is sock
    finally:
        conn.close()
