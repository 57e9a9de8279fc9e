"""Work queues against a real Redis (REDIS_URL) and in process: one contract, both paths.

Parametrized tests run the same scenario on `InProcessQueue` ("memory") and
`RedisWorkQueue` ("redis"); Redis-only tests cover what only exists there (a
worker process killed mid-request, lease renewal). Idle times are short (0.6 s)
so that recovery happens within the test's budget.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from services.common.errors import InvalidArgument, PayloadTooLarge, ResourceExhausted, Unavailable
from services.common.queues import (
    DeadLettered,
    Handler,
    InProcessQueue,
    Payload,
    QueueConfig,
    RedisWorkQueue,
    WorkQueue,
    decode_payload,
    encode_payload,
    payload_digest,
    redact_url,
)

ROOT = Path(__file__).resolve().parents[3]
Backend = tuple[str, str, str]  # kind, Redis URL, key prefix


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Both implementations; only the Redis one needs (and checks) REDIS_URL."""
    if request.param == "memory":
        return "memory", "", "mem"
    return "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


def config(kind: str, redis_url: str, prefix: str, **overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {
        "name": "test.q",
        "redis_url": redis_url if kind == "redis" else None,
        "prefix": prefix,
        "consumer": "producer",
        "min_idle_s": 0.6,
        "retry_delay_s": 0.05,
        "claim_interval_s": 0.1,
        "block_s": 0.1,
        "poll_s": 0.2,
        "timeout_s": 15.0,
        # The contract tests queue work before any worker exists; the liveness test turns it on.
        "expect_workers": False,
    }
    values.update(overrides)
    return QueueConfig(**values)


class Harness:
    """A producer, and workers that are separate replicas (Redis) or the same queue (memory)."""

    def __init__(self, kind: str, redis_url: str, prefix: str, **overrides: Any) -> None:
        self.kind = kind
        self.config = config(kind, redis_url, prefix, **overrides)
        self.queues: list[WorkQueue] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Harness:
        self.producer = await self._open(self.config)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for queue in self.queues:
            await queue.close()

    async def _open(self, cfg: QueueConfig) -> WorkQueue:
        queue: WorkQueue = RedisWorkQueue(cfg) if self.kind == "redis" else InProcessQueue(cfg)
        await queue.start()
        self.queues.append(queue)
        return queue

    async def worker(
        self, handler: Handler, consumer: str = "w1", stop: asyncio.Event | None = None
    ) -> tuple[WorkQueue, asyncio.Task[None]]:
        queue = (
            await self._open(replace(self.config, consumer=consumer))
            if self.kind == "redis"
            else self.producer
        )
        task = asyncio.create_task(queue.serve(handler, stop=stop))
        self.tasks.append(task)
        return queue, task


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


# ------------------------------------------------------------------ payloads


def test_payload_encoding_roundtrips_arrays_and_refuses_what_json_cannot_carry() -> None:
    payload = {
        "frames": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
        "actions": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4),
        "mask": np.array([True, False]),
        "seed": np.int64(7),
        "meta": {"text": "pick", "list": [1, 2.5]},
    }
    out = decode_payload(encode_payload(payload))
    for key in ("frames", "actions", "mask"):
        assert out[key].dtype == payload[key].dtype and np.array_equal(out[key], payload[key])
    assert out["seed"] == 7 and out["meta"] == {"text": "pick", "list": [1, 2.5]}
    with pytest.raises(ValueError, match="float64 not allowed"):
        encode_payload({"x": np.zeros(2)})
    with pytest.raises(TypeError, match="not object"):
        encode_payload({"x": object()})
    with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
        encode_payload({"x": np.zeros(100, np.float32)}, max_bytes=100)
    with pytest.raises(ValueError):
        decode_payload('{"x": {"__tensor__": {"dtype": "float32", "shape": [3], "data": "AA=="}}}')


def test_digest_is_stable_and_sees_values_dtypes_and_shapes() -> None:
    a = {"x": np.arange(6, dtype=np.float32), "n": 1}
    assert payload_digest(a) == payload_digest({"n": 1, "x": np.arange(6, dtype=np.float32)})
    assert payload_digest(a) != payload_digest({"x": np.arange(6, dtype=np.float32) + 1, "n": 1})
    assert payload_digest(a) != payload_digest({"x": np.arange(6, dtype=np.int32), "n": 1})
    assert payload_digest(a) != payload_digest(
        {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "n": 1}
    )


def test_config_refuses_timings_that_would_steal_live_work() -> None:
    with pytest.raises(ValueError, match="heartbeat_s=1.0 must be below min_idle_s=0.5"):
        QueueConfig(name="q", min_idle_s=0.5, heartbeat_s=1.0)
    with pytest.raises(ValueError, match="retry_delay_s=2.0 must be at most"):
        QueueConfig(name="q", min_idle_s=1.0, retry_delay_s=2.0)
    with pytest.raises(ValueError, match="name='a:b'"):
        QueueConfig(name="a:b")


def test_unreachable_redis_is_a_clear_error_and_urls_are_redacted() -> None:
    async def scenario() -> None:
        queue = RedisWorkQueue(QueueConfig(name="q", redis_url="redis://127.0.0.1:1/0"))
        try:
            with pytest.raises(Unavailable, match=r"cannot reach Redis at redis://127.0.0.1:1/0"):
                await queue.start()
            assert queue.problem and "unreachable" in queue.problem
        finally:
            await queue.close()

    asyncio.run(scenario())
    assert redact_url("redis://user:hunter2@cache:6380/1") == "redis://user:***@cache:6380/1"


# ------------------------------------------------------------------ both paths


def test_result_roundtrips_and_a_retry_returns_it_without_recomputing(backend: Backend) -> None:
    calls: list[Payload] = []

    async def handler(payload: Payload) -> Payload:
        calls.append(payload)
        return {"y": payload["x"] * 2, "n": payload["n"] + 1, "meta": {"by": "w1"}}

    async def scenario() -> None:
        async with Harness(*backend) as h:
            await h.worker(handler)
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            out = await h.producer.submit("req-1", {"x": x, "n": 1})
            assert out["y"].dtype == np.float32 and np.array_equal(out["y"], x * 2)
            assert out["n"] == 2 and out["meta"] == {"by": "w1"}
            again = await h.producer.submit("req-1", {"x": x.copy(), "n": 1})
            assert np.array_equal(again["y"], out["y"]) and len(calls) == 1
            assert h.producer.stats.stored_hits == 1
            with pytest.raises(InvalidArgument, match="'req-1' was already used for a different"):
                await h.producer.submit("req-1", {"x": x, "n": 2})
            with pytest.raises(InvalidArgument, match="request_id must be"):
                await h.producer.submit("bad id!", {"x": x, "n": 1})
            assert len(calls) == 1

    asyncio.run(scenario())


def test_the_same_id_in_flight_is_joined_not_enqueued_twice(backend: Backend) -> None:
    calls = 0
    gate = asyncio.Event()

    async def handler(payload: Payload) -> Payload:
        nonlocal calls
        calls += 1
        await gate.wait()
        return {"v": payload["v"]}

    async def scenario() -> None:
        gate.clear()
        async with Harness(*backend) as h:
            await h.worker(handler)
            first = asyncio.create_task(h.producer.submit("dup", {"v": 1}))
            await eventually(lambda: calls == 1)
            second = asyncio.create_task(h.producer.submit("dup", {"v": 1}))
            await eventually(lambda: h.producer.stats.joined == 1)
            gate.set()
            assert await first == await second == {"v": 1}
            assert calls == 1 and h.producer.stats.enqueued == 1

    asyncio.run(scenario())


def test_caller_errors_are_final_answers_not_retried(backend: Backend) -> None:
    calls = 0

    async def handler(payload: Payload) -> Payload:
        nonlocal calls
        calls += 1
        raise InvalidArgument("candidates: chunk length K=3 must be a multiple of 4")

    async def scenario() -> None:
        async with Harness(*backend) as h:
            await h.worker(handler)
            for _ in range(2):  # the second answer is the stored one
                with pytest.raises(InvalidArgument, match="K=3 must be a multiple of 4"):
                    await h.producer.submit("bad-1", {"v": 1})
            assert calls == 1

    asyncio.run(scenario())


def test_a_message_that_always_fails_is_dead_lettered_after_n_attempts(backend: Backend) -> None:
    calls = 0

    async def handler(payload: Payload) -> Payload:
        nonlocal calls
        calls += 1
        raise RuntimeError("secret backend detail: CUDA error at /srv/model.py:42")

    async def scenario() -> None:
        async with Harness(*backend, max_deliveries=3) as h:
            await h.worker(handler)
            with pytest.raises(DeadLettered) as caught:
                await h.producer.submit("doomed-1", {"v": np.ones(2, np.float32)})
            message = caught.value.message
            assert "request doomed-1 failed on 3 delivery attempts" in message
            assert "dead-letter" in message and "secret" not in message
            assert calls == 3
            with pytest.raises(DeadLettered):  # a retry gets the same answer, no new attempt
                await h.producer.submit("doomed-1", {"v": np.ones(2, np.float32)})
            assert calls == 3
            if backend[0] == "memory":
                assert isinstance(h.producer, InProcessQueue)
                [dead] = h.producer.dead_letters
                assert dead.request_id == "doomed-1" and dead.deliveries == 3
                assert "RuntimeError: secret backend detail" in dead.error
            else:
                assert isinstance(h.producer, RedisWorkQueue)
                r = redis_client(backend[1])
                [(_, entry)] = r.xrange(h.producer.dead_key)
                assert entry["rid"] == "doomed-1" and entry["deliveries"] == "3"
                assert entry["error"].startswith("RuntimeError: secret backend detail")
                assert decode_payload(entry["payload"])["v"].tolist() == [1.0, 1.0]
                assert r.xlen(h.producer.stream_key) == 0
                assert r.xpending(h.producer.stream_key, "workers")["pending"] == 0
                r.close()

    asyncio.run(scenario())


def test_full_queue_is_resource_exhausted(backend: Backend) -> None:
    async def scenario() -> None:
        async with Harness(*backend, max_length=1) as h:  # no worker
            waiting = asyncio.create_task(h.producer.submit("a", {"v": 1}))
            await eventually(lambda: h.producer.stats.enqueued == 1)
            with pytest.raises(ResourceExhausted, match="full .*retry later"):
                await h.producer.submit("b", {"v": 2})
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)

    asyncio.run(scenario())


def test_a_timed_out_submit_leaves_the_work_queued_for_a_retry(backend: Backend) -> None:
    calls = 0

    async def handler(payload: Payload) -> Payload:
        nonlocal calls
        calls += 1
        return {"v": payload["v"] + 1}

    async def scenario() -> None:
        async with Harness(*backend) as h:
            with pytest.raises(Unavailable, match="no result for request t-1 within 0.3 s"):
                await h.producer.submit("t-1", {"v": 1}, timeout=0.3)
            await h.worker(handler)  # workers arrive; the retry gets the queued run's result
            assert await h.producer.submit("t-1", {"v": 1}) == {"v": 2}
            assert calls == 1

    asyncio.run(scenario())


def test_in_process_job_is_cancelled_when_its_last_caller_leaves() -> None:
    cancelled = asyncio.Event()

    async def handler(payload: Payload) -> Payload:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    async def scenario() -> None:
        async with Harness("memory", "", "mem") as h:
            await h.worker(handler)
            caller = asyncio.create_task(h.producer.submit("gone", {"v": 1}))
            await eventually(lambda: h.producer.stats.handled == 1)
            caller.cancel()
            await asyncio.gather(caller, return_exceptions=True)
            assert cancelled.is_set()  # already, not eventually: the caller waited for it

    asyncio.run(scenario())


# ------------------------------------------------------------------ Redis only

_DOOMED_WORKER = """
import asyncio, sys
import redis
from services.common.queues import QueueConfig, RedisWorkQueue

url, prefix = sys.argv[1], sys.argv[2]

async def main():
    queue = RedisWorkQueue(QueueConfig(name="test.q", redis_url=url, prefix=prefix,
                                       consumer="doomed", min_idle_s=0.6, retry_delay_s=0.05,
                                       block_s=0.1))
    await queue.start()
    marker = redis.Redis.from_url(url)

    async def handler(payload):
        marker.incr(prefix + ":started")
        await asyncio.Event().wait()  # mid-request when the process is killed

    await queue.serve(handler)

asyncio.run(main())
"""


def test_a_worker_process_killed_mid_request_is_recovered_by_another(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    r = redis_client(redis_url)
    calls: list[Payload] = []

    async def rescue(payload: Payload) -> Payload:
        calls.append(payload)
        return {"sum": float(payload["x"].sum()), "by": "rescuer"}

    async def scenario(proc: subprocess.Popen[bytes]) -> None:
        async with Harness("redis", redis_url, redis_prefix) as h:
            assert isinstance(h.producer, RedisWorkQueue)
            stream, group = h.producer.stream_key, "workers"
            x = np.arange(4, dtype=np.float32)
            request = asyncio.create_task(h.producer.submit("kill-1", {"x": x}))

            # The doomed worker has read the message (XREADGROUP) and is running it.
            def started() -> bool:
                assert proc.poll() is None, "the doomed worker process exited early"
                return r.get(f"{redis_prefix}:started") == "1"

            await eventually(started, timeout=30)
            [pending] = r.xpending_range(stream, group, "-", "+", 10)
            assert pending["consumer"] == "doomed" and pending["times_delivered"] == 1
            proc.kill()  # SIGKILL: no cleanup, no XACK
            proc.wait(10)
            rescuer, _ = await h.worker(rescue, consumer="rescuer")
            out = await request
            assert out == {"sum": 6.0, "by": "rescuer"}
            assert len(calls) == 1 and r.get(f"{redis_prefix}:started") == "1"
            assert rescuer.stats.claimed == 1 and rescuer.stats.completed == 1
            assert rescuer.stats.duplicates == 0
            assert r.xlen(stream) == 0 and r.xpending(stream, group)["pending"] == 0
            assert r.xlen(h.producer.dead_key) == 0
            # Exactly one stored result; a retry returns it without a new run.
            assert r.exists(h.producer.result_key("kill-1")) == 1
            assert await h.producer.submit("kill-1", {"x": x}) == out and len(calls) == 1

    log = (tmp_path / "doomed.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _DOOMED_WORKER, redis_url, redis_prefix],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        asyncio.run(scenario(proc))
    except BaseException:
        log.flush()
        print((tmp_path / "doomed.log").read_text())
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        r.close()


def test_a_live_slow_worker_keeps_its_lease(redis_url: str, redis_prefix: str) -> None:
    calls: list[str] = []

    def slow(name: str) -> Handler:
        async def handler(payload: Payload) -> Payload:
            calls.append(name)
            await asyncio.sleep(1.5)  # 2.5x min_idle_s: only renewals keep it
            return {"by": name}

        return handler

    async def scenario() -> None:
        async with Harness("redis", redis_url, redis_prefix) as h:
            slow_worker, _ = await h.worker(slow("slow"), consumer="slow")
            request = asyncio.create_task(h.producer.submit("slow-1", {"v": 1}))
            await eventually(lambda: calls == ["slow"])
            other, _ = await h.worker(slow("other"), consumer="other")
            assert await request == {"by": "slow"}
            assert calls == ["slow"] and other.stats.claimed == 0
            assert slow_worker.stats.completed == 1 and slow_worker.stats.lost_leases == 0

    asyncio.run(scenario())


def test_a_graceful_stop_finishes_and_acknowledges_what_was_taken(
    redis_url: str, redis_prefix: str
) -> None:
    async def handler(payload: Payload) -> Payload:
        await asyncio.sleep(0.3)
        return {"v": payload["v"]}

    async def scenario() -> None:
        async with Harness("redis", redis_url, redis_prefix) as h:
            stop = asyncio.Event()
            worker, task = await h.worker(handler, stop=stop)
            request = asyncio.create_task(h.producer.submit("g-1", {"v": 5}))
            await eventually(lambda: worker.stats.handled == 1)
            stop.set()
            await asyncio.wait_for(task, 5)  # returns only after the run is stored
            assert worker.stats.completed == 1 and await request == {"v": 5}

    asyncio.run(scenario())


def test_in_process_429_goes_to_the_caller_and_is_not_stored() -> None:
    answers = [ResourceExhausted("simulator busy; retry later"), {"v": 1}]

    async def handler(payload: Payload) -> Payload:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario() -> None:
        async with Harness("memory", "", "mem") as h:
            await h.worker(handler)
            with pytest.raises(ResourceExhausted, match="retry later"):
                await h.producer.submit("busy-1", {"v": 1})
            assert await h.producer.submit("busy-1", {"v": 1}) == {"v": 1}  # the retry runs

    asyncio.run(scenario())


def test_a_message_that_keeps_killing_its_workers_is_dead_lettered_unprocessed(
    redis_url: str, redis_prefix: str
) -> None:
    calls = 0

    async def handler(payload: Payload) -> Payload:
        nonlocal calls
        calls += 1
        return {}

    async def scenario() -> None:
        r = redis_client(redis_url)
        async with Harness("redis", redis_url, redis_prefix, max_deliveries=3) as h:
            assert isinstance(h.producer, RedisWorkQueue)
            stream = h.producer.stream_key
            request = asyncio.create_task(h.producer.submit("poison-1", {"v": 1}))
            await eventually(lambda: r.xlen(stream) == 1)
            # Three deliveries to workers that all died (each read or claim counts one).
            [[_, [(msg_id, _)]]] = r.xreadgroup("workers", "ghost-1", {stream: ">"})
            r.xclaim(stream, "workers", "ghost-2", 0, [msg_id])
            r.xclaim(stream, "workers", "ghost-3", 0, [msg_id], idle=60_000)
            await h.worker(handler)  # its claim would be delivery 4
            with pytest.raises(DeadLettered, match="failed on 3 delivery attempts"):
                await request
            assert calls == 0
            [(_, entry)] = r.xrange(h.producer.dead_key)
            assert entry["rid"] == "poison-1" and "worker died" in entry["error"]
        r.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------ worker liveness (Redis)


def test_with_no_live_worker_readiness_fails_and_submit_answers_at_once(
    redis_url: str, redis_prefix: str
) -> None:
    """An API replica whose workers are all gone says so (readiness, 503 at once) instead of
    holding requests for timeout_s; a request already waiting is told as soon as the last
    worker is gone, and its work stays queued for a retry."""

    async def handler(payload: Payload) -> Payload:
        if payload.get("slow"):
            await asyncio.sleep(30)
        return {"v": payload["v"] + 1}

    async def scenario() -> None:
        async with Harness("redis", redis_url, redis_prefix, timeout_s=60.0, expect_workers=True) as h:
            producer = h.producer
            assert isinstance(producer, RedisWorkQueue)
            await eventually(lambda: producer.problem is not None, timeout=5)
            assert "no worker is serving queue test.q" in str(producer.problem)
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="no worker is serving queue test.q"):
                await producer.submit("early-1", {"v": 1})
            assert time.monotonic() - t0 < 3.0  # not timeout_s (60 s)
            assert redis_client(redis_url).xlen(producer.stream_key) == 0  # nothing queued

            stop = asyncio.Event()
            _, task = await h.worker(handler, consumer="w1", stop=stop)
            assert await producer.submit("late-1", {"v": 1}) == {"v": 2}
            await eventually(lambda: producer.problem is None, timeout=5)

            # The only worker dies (cancelled: what it took stays pending) while a request waits.
            waiting = asyncio.create_task(producer.submit("slow-1", {"v": 1, "slow": True}))
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="stays queued: retry with the same request id"):
                await waiting
            assert time.monotonic() - t0 < 5.0
            await eventually(lambda: producer.problem is not None, timeout=5)

    asyncio.run(scenario())


def test_a_client_facing_redis_error_does_not_name_the_redis_host() -> None:
    async def scenario() -> None:
        # Never started (a replica whose Redis went away after startup): submit must fail clean.
        queue = RedisWorkQueue(
            QueueConfig(name="q", redis_url="redis://cache.internal.example:1/0", expect_workers=False)
        )
        try:
            with pytest.raises(Unavailable) as err:
                await queue.submit("r-1", {"v": 1}, timeout=1.0)
            assert "Redis is unreachable" in err.value.message
            assert "cache.internal.example" not in err.value.message and ":1" not in err.value.message
            assert queue.problem is not None and "cache.internal" not in queue.problem
        finally:
            await queue.close()

    asyncio.run(scenario())


def test_a_dependency_down_is_a_503_after_every_try_and_nothing_is_stored(
    backend: Backend,
) -> None:
    """A handler whose dependency is down (Unavailable) is retried, then its callers get the 503
    itself (not a dead letter, not a 500); once the dependency is back the same id runs again."""
    calls = 0
    up = False

    async def handler(payload: Payload) -> Payload:
        nonlocal calls
        calls += 1
        if not up:
            raise Unavailable("the model server is down")
        return {"v": payload["v"] + 1}

    async def scenario() -> None:
        nonlocal up
        async with Harness(*backend) as h:
            worker, _ = await h.worker(handler)
            # Two callers of one id (the second joins the first's run): both get the 503.
            first = asyncio.create_task(h.producer.submit("dep-1", {"v": 1}))
            await eventually(lambda: calls >= 1)
            joined = asyncio.create_task(h.producer.submit("dep-1", {"v": 1}))
            for caller in (first, joined):
                with pytest.raises(Unavailable, match="the model server is down"):
                    await caller
            assert calls == h.config.max_deliveries and worker.stats.dead_lettered == 0
            if isinstance(h.producer, RedisWorkQueue):
                r = redis_client(backend[1])
                assert r.xlen(h.producer.dead_key) == 0  # not a poison message
                assert r.xlen(h.producer.stream_key) == 0  # acknowledged, not pending
                assert r.xpending(h.producer.stream_key, "workers")["pending"] == 0
                assert not r.exists(h.producer.result_key("dep-1"))
                r.close()
            up = True
            assert await h.producer.submit("dep-1", {"v": 1}) == {"v": 2}  # nothing was stored
            assert calls == h.config.max_deliveries + 1

    asyncio.run(scenario())
