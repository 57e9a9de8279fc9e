"""One batching engine for every service: admission, the batching loop, one model thread.

A service (the simulator, the judge, the action optimizer) builds a
`BatchingEngine` and supplies only what is its own:

- `run`: how a batch runs (payloads -> one result per payload), called on the
  engine's model thread;
- how items are grouped: `size` (units of an item, counted against
  `max_batch_size`, admission and the queue depth), `may_join` (whether an item
  may join a batch that already holds others), `key` (items with the same key
  are sequential: at most one per batch, in submission order), and `full`
  (a service budget other than `max_batch_size` that ends the wait early).

The engine owns the rest:

- Admission, bounded in units: a request reserves its units (queued or
  running) up front and gets `ResourceExhausted` (429 / RESOURCE_EXHAUSTED)
  past `max_admitted`; a request bigger than the limit is an `InvalidArgument`.
- The loop: take pending items until they hold `max_batch_size` units (the
  oldest item always, whatever its size), waiting at most `max_wait_ms` after
  the oldest arrived for the batch to fill; items that may not join wait, in
  order, for a later batch.
- One dedicated model thread (a single-thread executor rather than
  `asyncio.to_thread`): calls never overlap, even when the awaiting task is
  cancelled while a call runs (a thread cannot be interrupted), and the event
  loop stays free. `call` runs the service's other model work (e.g. encoding
  a start frame) on the same thread.
- Routing: results go back to per-item futures; a failed batch fails each of
  its items, with the error itself if it is a `ServiceError` and a generic
  `Internal` naming the request id otherwise (the traceback goes to the log).
- Cancellation: a cancelled caller's queued items are dropped; items already
  in a running batch finish (`Item.started` says which) and their results are
  discarded.
- Shutdown: `stop()` refuses new work, fails queued items with `Unavailable`,
  lets the running batch finish and frees the thread.
- Metrics: `wmpo_queue_depth` (queued units) and `wmpo_batch_size` (units per
  call), and `BatchStats`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.common.errors import (
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    internal_message,
)
from services.common.logging import request_id_var
from services.common.metrics import ServiceMetrics

P = TypeVar("P")  # what a service queues (a row, a job)
R = TypeVar("R")  # what one item's caller gets back


@dataclass(frozen=True)
class Wording:
    """How a service names itself and its units in error messages."""

    service: str  # "simulator"
    units: str  # "rollouts"
    in_flight: str  # "queued or running"
    limit_setting: str  # "WMPO_MAX_QUEUED_ROLLOUTS"

    @property
    def not_running(self) -> str:
        return f"the {self.service} is not running (starting up or shutting down)"

    @property
    def shutting_down(self) -> str:
        return f"the {self.service} is shutting down"


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int  # units per model call (the oldest item always, whatever its size)
    max_wait_ms: float  # how long the oldest item waits for the batch to fill
    max_admitted: int  # units admitted (queued or running) before 429


C = TypeVar("C")


def check_engine_config(config: Any) -> None:
    """A service engine's config dataclass: `max_wait_ms` >= 0 and every other field >= 1,
    all problems in one ValueError naming the class."""
    problems = [
        f"{f.name}={getattr(config, f.name)} must be >= 1"
        for f in dataclasses.fields(config)
        if f.name != "max_wait_ms" and getattr(config, f.name) < 1
    ]
    if config.max_wait_ms < 0:
        problems.append(f"max_wait_ms={config.max_wait_ms} must be >= 0")
    if problems:
        raise ValueError(f"invalid {type(config).__name__}: " + "; ".join(problems))


def engine_config_from_settings(cls: type[C], settings: Any) -> C:
    """A config dataclass whose fields are named as the service's settings."""
    return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


@dataclass
class BatchStats:
    model_calls: int = 0  # batches run
    items: int = 0  # items served
    units: int = 0  # units served
    largest_batch: int = 0  # most units in one call
    largest_batch_items: int = 0  # most items in one call
    dropped_items: int = 0  # removed from the queue because their caller went away


@dataclass(eq=False)
class Item(Generic[P, R]):
    """One queued payload, its future and the batch it ran in."""

    payload: P
    size: int
    key: Hashable | None
    future: asyncio.Future[R]
    request_id: str | None
    enqueued_at: float
    started: bool = False  # went into a model call
    batch_id: int = -1
    queue_s: float = 0.0  # wait before its batch started
    model_s: float = 0.0  # time of its batch's call
    batch_units: int = 0
    batch_items: int = 0


class Reservation:
    """Admitted units; release exactly once (idempotent)."""

    def __init__(self, engine: BatchingEngine[Any, Any], units: int) -> None:
        self._engine = engine
        self.units = units
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._admitted -= self.units


def _one(payload: Any) -> int:
    return 1


def _no_key(payload: Any) -> None:
    return None


def _any(batch: Sequence[Any], payload: Any) -> bool:
    return True


def _never(pending: Sequence[Any]) -> bool:
    return False


class BatchingEngine(Generic[P, R]):
    """`await start()` in the event loop that serves requests, `await stop()` on shutdown.

    `run(payloads)` returns one result per payload, in order. `may_join(batch, p)` sees the
    payloads already taken (the oldest first); `full(queued)` sees every queued payload.
    """

    def __init__(
        self,
        run: Callable[[list[P]], Sequence[R]],
        config: BatchingConfig,
        wording: Wording,
        *,
        size: Callable[[P], int] = _one,
        key: Callable[[P], Hashable | None] = _no_key,
        may_join: Callable[[Sequence[P], P], bool] = _any,
        full: Callable[[Sequence[P]], bool] = _never,
        metrics: ServiceMetrics | None = None,
        stats: BatchStats | None = None,
    ) -> None:
        self._run_fn = run
        self.config = config
        self.wording = wording
        self._size = size
        self._key = key
        self._may_join = may_join
        self._full = full
        self.metrics = metrics
        self.stats = stats if stats is not None else BatchStats()
        self._pending: collections.deque[Item[P, R]] = collections.deque()
        self._admitted = 0
        self._wakeup = asyncio.Event()
        self._batch_ids = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._log = logging.getLogger(f"wmpo.{wording.service}.engine")

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stopping = False
        self._wakeup = asyncio.Event()  # bound to the loop that runs the engine
        name = f"wmpo-{self.wording.service}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._loop_task = asyncio.create_task(self._loop(), name=f"{name}-batcher")

    async def stop(self) -> None:
        """Refuse new work, fail queued items, let the running batch finish, free the thread."""
        if self._loop_task is None:
            return
        self._stopping = True
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable(self.wording.shutting_down))
        self._set_queue_depth()
        self._wakeup.set()
        await self._loop_task
        self._loop_task = None
        executor, self._executor = self._executor, None
        if executor is not None:
            # Waits for a model call still running for a cancelled caller.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    @property
    def started(self) -> bool:
        """`start()` ran and `stop()` has not finished."""
        return self._loop_task is not None

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._stopping and not self._loop_task.done()

    # ------------------------------------------------------------ admission
    def reserve(self, units: int) -> Reservation:
        """Admit `units` or raise; the caller must `release()` the reservation."""
        w = self.wording
        if not self.running:
            raise Unavailable(w.not_running)
        limit = self.config.max_admitted
        if units > limit:
            raise InvalidArgument(
                f"{units} {w.units} in one request exceed the limit of {limit} "
                f"({w.limit_setting}); split the request"
            )
        if self._admitted + units > limit:
            raise ResourceExhausted(
                f"{w.service} busy: {self._admitted} {w.units} {w.in_flight}, limit {limit}; "
                "retry later"
            )
        self._admitted += units
        return Reservation(self, units)

    @contextlib.contextmanager
    def admit(self, units: int) -> Iterator[Reservation]:
        reservation = self.reserve(units)
        try:
            yield reservation
        finally:
            reservation.release()

    @property
    def admitted(self) -> int:
        """Units admitted (queued or running)."""
        return self._admitted

    @property
    def queued(self) -> int:
        """Units queued (not yet in a model call)."""
        return sum(i.size for i in self._live())

    def queued_payloads(self) -> list[P]:
        return [i.payload for i in self._live()]

    def _live(self) -> Iterator[Item[P, R]]:
        return (i for i in self._pending if not i.future.done())

    # ------------------------------------------------------------ work
    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run other model work (not batched) on the model thread."""
        if self._executor is None:
            raise Unavailable(self.wording.not_running)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, payloads: Sequence[P]) -> list[Item[P, R]]:
        """Queue payloads (the caller holds a reservation); `await results(items)`."""
        if not self.running:
            raise Unavailable(self.wording.not_running)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        rid = request_id_var.get()
        items = [
            Item(p, self._size(p), self._key(p), loop.create_future(), rid, now) for p in payloads
        ]
        self._pending.extend(items)
        self._set_queue_depth()
        self._wakeup.set()
        return items

    async def results(self, items: Sequence[Item[P, R]]) -> list[R]:
        """The items' results in order; a cancelled or failed caller's queued items are dropped."""
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except BaseException:
            self.drop(items)
            for i in items:  # mark sibling failures as seen (no "never retrieved" noise)
                if i.future.done() and not i.future.cancelled():
                    i.future.exception()
            raise

    def drop(self, items: Sequence[Item[P, R]]) -> None:
        """Remove items that have not started (their caller went away or failed)."""
        waiting = {id(i) for i in items if not i.started}
        if not waiting:
            return
        before = len(self._pending)
        self._pending = collections.deque(i for i in self._pending if id(i) not in waiting)
        self.stats.dropped_items += before - len(self._pending)
        for i in items:
            if not i.started and not i.future.done():
                i.future.cancel()
        self._set_queue_depth()

    # ------------------------------------------------------------ the loop
    def _set_queue_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queued)

    def _take_batch(self) -> list[Item[P, R]]:
        """The oldest item, then each later one that fits (in units, its key and `may_join`);
        the others keep their place in the queue. An item passed over blocks its key for the
        rest of the scan, so sequential items never run out of order."""
        batch: list[Item[P, R]] = []
        payloads: list[P] = []
        keep: collections.deque[Item[P, R]] = collections.deque()
        seen: set[Hashable] = set()
        units = 0
        for item in self._pending:
            if item.future.done():  # cancelled while queued
                continue
            if not batch or (
                (item.key is None or item.key not in seen)
                and units + item.size <= self.config.max_batch_size
                and self._may_join(payloads, item.payload)
            ):
                batch.append(item)
                payloads.append(item.payload)
                units += item.size
            else:
                keep.append(item)
            if item.key is not None:
                seen.add(item.key)  # a later item of the same key waits for a later batch
        self._pending = keep
        self._set_queue_depth()
        return batch

    def _filling(self) -> bool:
        """Whether the queued items leave room in a batch (and in the service's budget)."""
        live = [i for i in self._pending if not i.future.done()]
        if sum(i.size for i in live) >= self.config.max_batch_size:
            return False
        return self._full is _never or not self._full([i.payload for i in live])

    async def _loop(self) -> None:
        max_wait = self.config.max_wait_ms / 1000
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Let the batch fill, up to max_wait after the oldest item arrived.
            deadline = self._pending[0].enqueued_at + max_wait
            while not self._stopping and self._filling():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[Item[P, R]]) -> None:
        batch_id = next(self._batch_ids)
        units = sum(i.size for i in batch)
        start = time.perf_counter()
        for item in batch:
            item.started = True
            item.batch_id = batch_id
            item.queue_s = start - item.enqueued_at
        try:
            results = await self.call(self._run_checked, [i.payload for i in batch])
        except Exception as exc:
            # Items were validated on submission, so this is a bug or a backend
            # failure: log it once, fail every item of the batch.
            self._log.error(
                "model call failed for a batch of %d items (%d %s)",
                len(batch),
                units,
                self.wording.units,
                exc_info=exc,
            )
            for item in batch:
                if not item.future.done():
                    err = (
                        exc
                        if isinstance(exc, ServiceError)
                        else Internal(internal_message(item.request_id))
                    )
                    item.future.set_exception(err)
            return
        elapsed = time.perf_counter() - start
        s = self.stats
        s.model_calls += 1
        s.items += len(batch)
        s.units += units
        s.largest_batch = max(s.largest_batch, units)
        s.largest_batch_items = max(s.largest_batch_items, len(batch))
        if self.metrics is not None:
            self.metrics.batch_size.observe(units)
        for item, result in zip(batch, results, strict=True):
            item.model_s = elapsed
            item.batch_units = units
            item.batch_items = len(batch)
            if not item.future.done():  # a cancelled caller's item still ran; nobody waits
                item.future.set_result(result)

    def _run_checked(self, payloads: list[P]) -> Sequence[R]:
        results = self._run_fn(payloads)
        if len(results) != len(payloads):
            raise RuntimeError(f"a batch of {len(payloads)} returned {len(results)} results")
        return results
