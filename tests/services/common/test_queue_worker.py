"""The queue worker every runtime runs (services/common/queues/worker.py), on the in-process
queue: a graceful stop finishes what was taken, a stop past the drain time cancels the rest,
and a worker that dies is logged and shows as the replica's readiness problem."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common.queues import InProcessQueue, Payload, QueueConfig, QueueWorker

log = logging.getLogger("wmpo.test.worker")


def _queue() -> InProcessQueue:
    return InProcessQueue(QueueConfig(name="test.worker"))


def test_stop_drains_the_work_taken() -> None:
    async def main() -> None:
        queue = _queue()
        await queue.start()
        started = asyncio.Event()

        async def handler(payload: Payload) -> Payload:
            started.set()
            await asyncio.sleep(0.2)
            return {"doubled": payload["x"] * 2}

        worker = QueueWorker(queue, handler, "test", log)
        worker.start()
        submitted = asyncio.create_task(queue.submit("r1", {"x": 21}))
        await started.wait()
        await worker.stop(5.0)  # the running job finishes before stop returns
        assert submitted.done() and submitted.result() == {"doubled": 42}
        assert worker.problem is None
        await queue.close()

    asyncio.run(main())


def test_stop_past_the_drain_time_cancels(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        queue = _queue()
        await queue.start()
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def handler(payload: Payload) -> Payload:
            started.set()
            try:
                await asyncio.Event().wait()  # never finishes on its own
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return payload

        worker = QueueWorker(queue, handler, "test", log)
        worker.start()
        submitted = asyncio.create_task(queue.submit("r1", {"x": 1}))
        await started.wait()
        await worker.stop(0.1)
        assert worker.problem is None  # stopped on purpose: not a readiness problem
        submitted.cancel()
        await asyncio.gather(submitted, return_exceptions=True)
        await queue.close()
        assert cancelled.is_set()

    with caplog.at_level(logging.WARNING, logger=log.name):
        asyncio.run(main())
    assert "test worker did not drain in 0 s" in caplog.text


def test_a_dead_worker_is_logged_and_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(payload: Payload) -> Payload:
        return payload

    async def main() -> None:
        queue = _queue()
        await queue.start()
        first = QueueWorker(queue, handler, "first", log)
        first.start()
        await asyncio.sleep(0)
        # A queue takes one worker: the second one's serve raises at once.
        second = QueueWorker(queue, handler, "second", log)
        second.start()
        await asyncio.sleep(0.05)
        assert first.problem is None
        assert second.problem == "the second queue worker stopped"
        await second.stop(1.0)  # a dead worker stops without raising
        await first.stop(1.0)
        await queue.close()

    with caplog.at_level(logging.ERROR, logger=log.name):
        asyncio.run(main())
    assert "the second queue worker stopped" in caplog.text
    assert "already has a worker" in caplog.text
