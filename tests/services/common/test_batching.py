"""The shared batching engine with a toy batch function: merging, grouping, admission,
cancellation, shutdown, failures, one model thread, metrics.

Everything is real: asyncio, the engine's own thread; `Toy.run` only records the batches it
sees and can be held at a gate inside the call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY

from services.common.batching import (
    BatchingConfig,
    BatchingEngine,
    Wording,
    check_engine_config,
    engine_config_from_settings,
)
from services.common.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.logging import request_id_var
from services.common.metrics import ServiceMetrics

T = TypeVar("T")

WORDING = Wording("toy", "widgets", "queued or running", "WMPO_MAX_QUEUED_WIDGETS")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass(eq=False)
class Work:
    value: int
    group: str = "a"
    size: int = 1
    key: str | None = None


class Toy:
    """A batch function: payload -> value * 10; records batches, threads and overlap."""

    def __init__(self, gated: bool = False, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.inside = 0
        self.most_inside = 0
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.delay = delay
        self.fail: BaseException | None = None
        if not gated:
            self.gate.set()

    def run(self, batch: list[Work]) -> list[int]:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.threads.add(threading.get_ident())
            self.batches.append([w.value for w in batch])
            self.entered.set()
            assert self.gate.wait(10), "test gate never opened"
            time.sleep(self.delay)
            if self.fail is not None:
                err, self.fail = self.fail, None
                raise err
            return [w.value * 10 for w in batch]
        finally:
            with self.lock:
                self.inside -= 1


def engine(
    toy: Toy,
    max_batch_size: int = 8,
    max_wait_ms: float = 200,
    max_admitted: int = 64,
    **rules: Any,
) -> BatchingEngine[Work, int]:
    return BatchingEngine(
        toy.run,
        BatchingConfig(max_batch_size, max_wait_ms, max_admitted),
        WORDING,
        size=lambda w: w.size,
        key=lambda w: w.key,
        **rules,
    )


async def submit(e: BatchingEngine[Work, int], *work: Work) -> list[int]:
    with e.admit(sum(w.size for w in work)):
        return await e.results(e.submit(work))


def same_group(batch: Sequence[Work], w: Work) -> bool:
    return w.group == batch[0].group


async def hold_first(e: BatchingEngine[Work, int], toy: Toy) -> asyncio.Task[list[int]]:
    """Submit Work(0) to a gated toy's engine and wait until its batch is inside the call."""
    running = asyncio.create_task(submit(e, Work(0)))
    await asyncio.to_thread(toy.entered.wait, 5)
    return running


async def wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.perf_counter() + timeout
    while not cond():
        assert time.perf_counter() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def test_concurrent_items_share_one_call_and_get_their_own_results() -> None:
    async def scenario() -> tuple[list[list[int]], list[list[int]]]:
        toy = Toy()
        e = engine(toy, max_batch_size=16, max_wait_ms=300)
        await e.start()
        try:
            got = await asyncio.gather(*(submit(e, Work(i)) for i in range(6)))
        finally:
            await e.stop()
        assert e.stats.model_calls == 1 and e.stats.items == 6 and e.stats.largest_batch == 6
        return got, toy.batches

    got, batches = run(scenario())
    assert batches == [[0, 1, 2, 3, 4, 5]]  # one call, in arrival order
    assert got == [[i * 10] for i in range(6)]  # each caller its own result


def test_a_full_batch_does_not_wait_and_the_oldest_item_always_runs() -> None:
    async def scenario() -> tuple[list[list[int]], float]:
        toy = Toy()
        # A wait far longer than the test: only a full batch can end it.
        e = engine(toy, max_batch_size=4, max_wait_ms=60_000)
        await e.start()
        t0 = time.perf_counter()
        try:
            await asyncio.gather(
                submit(e, Work(0, size=3)),
                submit(e, Work(1, size=2)),  # would make 5 > 4: waits for the next batch
                submit(e, Work(2, size=9)),  # bigger than a batch: runs whole, on its own
            )
        finally:
            await e.stop()
        return toy.batches, time.perf_counter() - t0

    batches, took = run(scenario())
    assert batches == [[0], [1], [2]]
    assert took < 30


def test_the_grouping_rule_decides_who_shares_a_batch() -> None:
    async def scenario() -> list[list[int]]:
        toy = Toy()
        e = engine(toy, may_join=same_group)
        await e.start()
        try:
            await asyncio.gather(
                submit(e, Work(0, "a")),
                submit(e, Work(1, "b")),
                submit(e, Work(2, "a")),
                submit(e, Work(3, "b")),
            )
        finally:
            await e.stop()
        return toy.batches

    # The oldest item's group first; the others keep their order for the next batch.
    assert run(scenario()) == [[0, 2], [1, 3]]


def test_items_with_one_key_run_one_per_batch_in_submission_order() -> None:
    async def scenario() -> list[list[int]]:
        toy = Toy()
        e = engine(toy, may_join=same_group)
        await e.start()
        try:
            with e.admit(5):
                items = e.submit(
                    [
                        Work(0, "a", key="r1"),
                        Work(1, "b", key="r2"),  # other group: skipped, so r2 is blocked ...
                        Work(2, "a", key="r2"),  # ... and this one may not overtake it
                        Work(3, "a", key="r1"),  # r1 is already in the batch
                        Work(4, "a", key="r3"),
                    ]
                )
                assert await e.results(items) == [0, 10, 20, 30, 40]
        finally:
            await e.stop()
        return toy.batches

    assert run(scenario()) == [[0, 4], [1], [2, 3]]


def test_a_service_budget_ends_the_wait_early() -> None:
    async def scenario() -> float:
        toy = Toy()
        e = engine(
            toy, max_batch_size=100, max_wait_ms=60_000, full=lambda queued: len(queued) >= 2
        )
        await e.start()
        t0 = time.perf_counter()
        try:
            await asyncio.gather(submit(e, Work(0)), submit(e, Work(1)))
        finally:
            await e.stop()
        assert toy.batches == [[0, 1]]
        return time.perf_counter() - t0

    assert run(scenario()) < 30


def test_admission_is_bounded_in_units_and_429_past_the_limit() -> None:
    async def scenario() -> None:
        e = engine(Toy(), max_admitted=5)
        with pytest.raises(Unavailable, match="the toy is not running"):
            e.reserve(1)
        await e.start()
        try:
            held = e.reserve(3)
            assert e.admitted == 3
            with pytest.raises(ResourceExhausted) as busy:
                e.reserve(3)
            assert busy.value.http_status == 429
            assert busy.value.message == (
                "toy busy: 3 widgets queued or running, limit 5; retry later"
            )
            with pytest.raises(
                InvalidArgument,
                match=r"6 widgets in one request exceed the limit "
                r"of 5 \(WMPO_MAX_QUEUED_WIDGETS\); split the request",
            ):
                e.reserve(6)
            with e.admit(2):
                assert e.admitted == 5
            held.release()
            held.release()  # idempotent
            assert e.admitted == 0
            assert await submit(e, Work(7, size=5)) == [70]
        finally:
            await e.stop()

    run(scenario())


def test_a_cancelled_callers_queued_items_are_dropped() -> None:
    async def scenario() -> None:
        toy = Toy(gated=True)
        e = engine(toy, max_batch_size=1, max_wait_ms=0)
        await e.start()
        try:
            running = await hold_first(e, toy)
            queued = asyncio.create_task(submit(e, Work(1), Work(2), Work(3)))
            await wait_until(lambda: e.queued == 3)
            assert e.admitted == 4
            queued.cancel()  # the caller went away
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert e.queued == 0 and e.stats.dropped_items == 3 and e.admitted == 1
            toy.gate.set()
            assert await running == [0]  # the running batch finished
        finally:
            toy.gate.set()
            await e.stop()
        assert toy.batches == [[0]]  # the dropped items never reached the model

    run(scenario())


def test_a_cancelled_callers_running_item_finishes_and_is_discarded() -> None:
    async def scenario() -> None:
        toy = Toy(gated=True)
        e = engine(toy, max_wait_ms=0)
        await e.start()
        try:
            with e.admit(1):
                (item,) = e.submit([Work(5)])
                waiter = asyncio.create_task(e.results([item]))
                await asyncio.to_thread(toy.entered.wait, 5)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
                assert item.started and e.stats.dropped_items == 0
            toy.gate.set()
            assert await submit(e, Work(6)) == [60]  # the loop keeps serving
        finally:
            toy.gate.set()
            await e.stop()
        assert toy.batches == [[5], [6]] and e.stats.model_calls == 2

    run(scenario())


def test_stop_fails_pending_items_lets_the_running_batch_finish_and_refuses_new() -> None:
    async def scenario() -> None:
        toy = Toy(gated=True)
        e = engine(toy, max_batch_size=1, max_wait_ms=0)
        await e.start()
        running = await hold_first(e, toy)
        queued = asyncio.create_task(submit(e, Work(1)))
        await wait_until(lambda: e.queued == 1)
        stopping = asyncio.create_task(e.stop())
        await asyncio.sleep(0.02)
        assert not e.running
        toy.gate.set()
        await stopping
        assert await running == [0]
        with pytest.raises(Unavailable, match="the toy is shutting down"):
            await queued
        with pytest.raises(Unavailable, match="the toy is not running"):
            e.reserve(1)
        with pytest.raises(Unavailable, match="the toy is not running"):
            e.submit([Work(2)])
        with pytest.raises(Unavailable, match="the toy is not running"):
            await e.call(lambda: None)
        assert toy.batches == [[0]] and e.admitted == 0

    run(scenario())


def test_model_calls_never_overlap_run_on_one_thread_and_leave_the_loop_free() -> None:
    async def scenario() -> None:
        toy = Toy(delay=0.01)
        e = engine(toy, max_batch_size=2, max_wait_ms=1, max_admitted=256)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        def other_work() -> int:  # e.g. encoding a start frame: same thread, same rule
            return toy.run([Work(100)])[0]

        await e.start()
        tick = asyncio.create_task(ticker())
        try:
            jobs = [submit(e, Work(i)) for i in range(24)]
            jobs += [e.call(other_work) for _ in range(4)]
            got = await asyncio.gather(*jobs)
        finally:
            tick.cancel()
            await e.stop()
        assert got[:24] == [[i * 10] for i in range(24)] and got[24:] == [1000] * 4
        assert toy.most_inside == 1  # never two model calls at once
        assert len(toy.threads) == 1 and threading.get_ident() not in toy.threads
        assert max(len(b) for b in toy.batches) == 2
        assert ticks > 10  # the event loop ran while the model calls did

    run(scenario())


def test_a_failed_batch_fails_each_of_its_items_and_the_loop_keeps_serving() -> None:
    async def scenario() -> None:
        toy = Toy()
        e = engine(toy, max_wait_ms=50)
        await e.start()
        try:
            toy.fail = RuntimeError("secret backend detail at /srv/model.py:42")

            async def tagged(rid: str, w: Work) -> list[int]:
                request_id_var.set(rid)
                return await submit(e, w)

            outcomes = await asyncio.gather(
                tagged("req-1", Work(1)), tagged("req-2", Work(2)), return_exceptions=True
            )
            assert all(isinstance(o, Internal) for o in outcomes)
            for rid, err in zip(("req-1", "req-2"), outcomes, strict=True):
                assert rid in err.message and "secret" not in err.message
            toy.fail = NotFound("a service error passes through as it is")
            with pytest.raises(NotFound, match="passes through"):
                await submit(e, Work(3))
            assert await submit(e, Work(4)) == [40]
            assert e.admitted == 0 and e.stats.model_calls == 1
        finally:
            await e.stop()

    run(scenario())


def test_a_batch_function_returning_the_wrong_count_is_an_internal_error() -> None:
    async def scenario() -> None:
        e: BatchingEngine[Work, int] = BatchingEngine(
            lambda batch: [], BatchingConfig(4, 0, 4), WORDING
        )
        await e.start()
        try:
            with pytest.raises(Internal):
                await submit(e, Work(1))
        finally:
            await e.stop()

    run(scenario())


def test_queue_depth_and_batch_size_metrics() -> None:
    labels = {"service": "batching-test"}

    def depth() -> float | None:
        return REGISTRY.get_sample_value("wmpo_queue_depth", labels)

    def batches() -> float:
        return REGISTRY.get_sample_value("wmpo_batch_size_count", labels) or 0.0

    def units() -> float:
        return REGISTRY.get_sample_value("wmpo_batch_size_sum", labels) or 0.0

    async def scenario() -> None:
        toy = Toy(gated=True)
        e = BatchingEngine(
            toy.run,
            BatchingConfig(8, 0, 64),
            WORDING,
            size=lambda w: w.size,
            metrics=ServiceMetrics("batching-test"),
        )
        count0, sum0 = batches(), units()
        await e.start()
        try:
            first = asyncio.create_task(submit(e, Work(0, size=2)))
            await asyncio.to_thread(toy.entered.wait, 5)
            second = asyncio.create_task(submit(e, Work(1, size=3)))
            await wait_until(lambda: e.queued == 3)
            assert depth() == 3  # queued units, not the running batch
            toy.gate.set()
            await asyncio.gather(first, second)
            assert depth() == 0
        finally:
            toy.gate.set()
            await e.stop()
        assert batches() - count0 == 2 and units() - sum0 == 5
        assert e.stats.units == 5 and e.stats.largest_batch == 3

    run(scenario())


@dataclass(frozen=True)
class ToyConfig:
    max_batch_size: int = 4
    max_wait_ms: float = 5.0
    max_queued_widgets: int = 8

    def __post_init__(self) -> None:
        check_engine_config(self)


def test_engine_configs_name_every_problem_and_read_their_settings() -> None:
    with pytest.raises(ValueError) as err:
        ToyConfig(max_batch_size=0, max_wait_ms=-1, max_queued_widgets=-2)
    assert str(err.value) == (
        "invalid ToyConfig: max_batch_size=0 must be >= 1; max_queued_widgets=-2 must be >= 1; "
        "max_wait_ms=-1 must be >= 0"
    )
    settings = SimpleNamespace(max_batch_size=2, max_wait_ms=0.0, max_queued_widgets=3, port=1)
    assert engine_config_from_settings(ToyConfig, settings) == ToyConfig(2, 0.0, 3)
