"""`WorkQueue.enqueue`: work put on the queue without waiting for its result (the trainer's
long jobs), with submit's idempotency, on both implementations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common.errors import InvalidArgument
from tests.services.common.test_queues import Backend, Harness, eventually
from tests.services.common.test_queues import backend as backend  # noqa: F401 (the fixture)


def test_enqueued_work_runs_once_without_a_waiting_producer(backend: Backend) -> None:
    async def main() -> None:
        runs: list[Any] = []

        async def handler(payload: dict[str, Any]) -> dict[str, Any]:
            runs.append(payload["n"])
            await asyncio.sleep(0.2)
            return {"done": payload["n"]}

        async with Harness(*backend) as h:
            await h.worker(handler)
            assert await h.producer.enqueue("job-1", {"n": 1}) == "queued"
            assert await h.producer.enqueue("job-1", {"n": 1}) == "inflight"
            with pytest.raises(InvalidArgument, match="already used"):
                await h.producer.enqueue("job-1", {"n": 2})
            await eventually(lambda: runs == [1])
            # Answered: enqueueing again neither runs it nor changes the stored result.
            await eventually(lambda: h.producer.stats.enqueued == 1)
            for _ in range(50):
                if await h.producer.enqueue("job-1", {"n": 1}) == "result":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the result was never stored")
            assert await h.producer.submit("job-1", {"n": 1}) == {"done": 1}
            assert runs == [1]

    asyncio.run(main())
