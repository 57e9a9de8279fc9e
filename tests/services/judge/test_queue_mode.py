"""Queue mode of the judge against a real Redis (REDIS_URL), with the tiny classifier.

Two replicas in one process, sharing the stream through Redis exactly as two pods would: an
API-only replica (consume=False) that validates and enqueues, and a worker replica that
judges. Each test has its own key prefix; every key under it is deleted afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from services.common.errors import InvalidArgument
from services.judge.runtime import JudgeRuntime
from services.judge.server import build_worker_app
from tests.services.judge.conftest import INSTRUCTION, settings
from wmpo.errors import ConfigError


def queue_settings(redis_url: str, prefix: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "queue_prefix": prefix,
        "queue_min_idle_s": 0.6,
        "queue_retry_delay_s": 0.05,
        "max_wait_ms": 200.0,
    }
    values.update(overrides)
    return settings(**values)


def test_an_api_replica_enqueues_and_a_worker_replica_judges(
    classifier, videos, split, redis_url: str, redis_prefix: str
) -> None:
    s = queue_settings(redis_url, redis_prefix)

    async def scenario() -> dict[str, Any]:
        api = JudgeRuntime(classifier, s, consume=False)
        worker = JudgeRuntime(classifier, s, consume=True)
        await api.start()
        await worker.start()
        try:
            # Validation happens on the accepting replica: nothing is queued.
            with pytest.raises(InvalidArgument, match="takes 64x64 frames"):
                await api.judge(videos.successes[0][:, :32], INSTRUCTION, request_id="bad")
            one = await api.judge(videos.successes[0], INSTRUCTION, request_id="q-1")
            again = await api.judge(videos.successes[0], INSTRUCTION, request_id="q-1")
            group = await api.judge_group(
                [split.high, split.high, split.low],
                INSTRUCTION,
                replays={0: split.low, 1: split.high},
                threshold=split.threshold,
                request_id="q-2",
            )
            many = await asyncio.gather(*(api.judge(v, INSTRUCTION) for v in videos.all))
            keys = redis.Redis.from_url(redis_url).keys(f"{redis_prefix}:*")
        finally:
            await api.stop()
            await worker.stop()
        return {
            "one": one,
            "again": again,
            "group": group,
            "many": many,
            "keys": keys,
            "api": api,
            "worker": worker,
        }

    out = asyncio.run(scenario())
    api, worker = out["api"], out["worker"]
    assert api.engine.stats.jobs == 0 and api.engine.stats.model_calls == 0
    assert worker.engine.stats.jobs == 2 + len(videos.all)  # the retry of q-1 was not re-run
    assert api.queue.stats.stored_hits == 1 and out["again"].verdict == out["one"].verdict
    # Requests of different callers met in one batch on the worker.
    assert worker.engine.stats.largest_batch_jobs > 1
    g = out["group"]
    assert [r["flagged"] for r in g.rollouts] == [True, False, False]
    assert g.rewards == pytest.approx([0.5, 1.0, 0.0]) and g.verified and not g.discard
    for video, res in zip(videos.all, out["many"], strict=True):
        (alone,) = classifier.judge_many([video], [INSTRUCTION])
        assert res.verdict["success"] == alone.success
        assert res.verdict["score"] == pytest.approx(alone.score, abs=1e-5)
        assert res.timing["dispatch"] >= 0
    assert any(b"{judge.requests}" in k for k in out["keys"])


def test_a_pure_worker_needs_redis(classifier) -> None:
    s = settings()
    with pytest.raises(ConfigError, match="a queue worker needs Redis"):
        build_worker_app(JudgeRuntime(classifier, s, consume=True), s)
