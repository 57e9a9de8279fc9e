"""`InProcessQueue`: the work-queue contract inside one process (the embedded default)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

from services.common.errors import (
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.metrics import ServiceMetrics
from services.common.queues.base import (
    DeadLetter,
    DeadLettered,
    Handler,
    Payload,
    QueueConfig,
    WorkQueue,
    _check_request_id,
    _dead_letter_message,
    _error_record,
    _is_final,
    _ok_record,
    _reused_id,
    _timed_out,
    _unpack,
    payload_digest,
)

log = logging.getLogger("wmpo.queues")

# ------------------------------------------------------------------ in-process


@dataclass(eq=False)
class _Job:
    digest: str
    task: asyncio.Task[Payload]
    waiters: int = 0


class InProcessQueue(WorkQueue):
    """The embedded default: no serialization, one worker (`serve`) per queue.

    Unlike Redis, a job whose every producer went away (cancelled, e.g. the
    HTTP client disconnected) is cancelled, so the engine drops its queued work:
    in one process nobody else could pick the result up.
    """

    def __init__(self, config: QueueConfig, metrics: ServiceMetrics | None = None) -> None:
        super().__init__(config, metrics)
        self._handler: Handler | None = None
        self._handler_set = asyncio.Event()
        self._jobs: dict[str, _Job] = {}
        # rid -> (expires_at, record); insertion order = age, for eviction.
        self._results: collections.OrderedDict[str, tuple[float, Payload]] = (
            collections.OrderedDict()
        )
        self.dead_letters: collections.deque[DeadLetter] = collections.deque(
            maxlen=config.dead_letter_max
        )

    async def close(self) -> None:
        jobs = [j.task for j in self._jobs.values()]
        for task in jobs:
            task.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    def _stored(self, request_id: str) -> Payload | None:
        now = time.monotonic()
        while self._results:  # drop expired records, oldest first
            rid, (expires, _) = next(iter(self._results.items()))
            if expires > now:
                break
            del self._results[rid]
        entry = self._results.get(request_id)
        return entry[1] if entry else None

    def _store(self, request_id: str, record: Payload) -> None:
        self._results[request_id] = (time.monotonic() + self.config.result_ttl_s, record)
        self._results.move_to_end(request_id)
        while len(self._results) > self.config.max_stored_results:
            self._results.popitem(last=False)

    async def submit(
        self, request_id: str, payload: Payload, timeout: float | None = None
    ) -> Payload:
        _check_request_id(request_id)
        digest = payload_digest(payload)
        timeout = timeout or self.config.timeout_s
        record = self._stored(request_id)
        if record is not None:
            self.stats.stored_hits += 1
            return _unpack(request_id, record, digest)
        job = self._jobs.get(request_id)
        if job is not None:
            if job.digest != digest:
                raise _reused_id(request_id)
            self.stats.joined += 1
        else:
            job = self._start(request_id, payload, digest)
        job.waiters += 1
        try:
            record = await asyncio.wait_for(asyncio.shield(job.task), timeout)
        except TimeoutError:
            raise _timed_out(self.config, request_id, timeout) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                if job.waiters == 1 and not job.task.done():
                    # The last producer left: cancel, and wait until the job's
                    # queued engine work is really dropped.
                    job.task.cancel()
                    await asyncio.wait([job.task])
                raise
            # The job itself was cancelled (queue closing), not this caller.
            raise Unavailable(
                f"queue {self.config.name} stopped before request {request_id} finished"
            ) from None
        finally:
            job.waiters -= 1
        return _unpack(request_id, record, digest)

    async def enqueue(self, request_id: str, payload: Payload) -> str:
        _check_request_id(request_id)
        digest = payload_digest(payload)
        record = self._stored(request_id)
        if record is not None:
            if record.get("digest") != digest:
                raise _reused_id(request_id)
            return "result"
        job = self._jobs.get(request_id)
        if job is not None:
            if job.digest != digest:
                raise _reused_id(request_id)
            return "inflight"
        job = self._start(request_id, payload, digest)
        # Nobody awaits it: retrieve a failure (no worker, closing) so it is not reported
        # as never retrieved; its record, if any, is stored as usual.
        job.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return "queued"

    def _start(self, request_id: str, payload: Payload, digest: str) -> _Job:
        if len(self._jobs) >= self.config.max_length:
            raise ResourceExhausted(
                f"queue {self.config.name} is full ({len(self._jobs)} requests, limit "
                f"{self.config.max_length}); retry later"
            )
        task = asyncio.create_task(self._run(request_id, payload, digest))
        job = self._jobs[request_id] = _Job(digest, task)
        self.stats.enqueued += 1
        self._set_depth(len(self._jobs))
        return job

    async def _run(self, request_id: str, payload: Payload, digest: str) -> Payload:
        try:
            try:
                await asyncio.wait_for(self._handler_set.wait(), self.config.timeout_s)
            except TimeoutError:
                raise Unavailable(f"no worker is serving queue {self.config.name}") from None
            for attempt in range(1, self.config.max_deliveries + 1):
                handler = self._handler
                if handler is None:  # the worker stopped between attempts
                    raise Unavailable(f"queue {self.config.name} is shutting down")
                self.stats.handled += 1
                try:
                    record = _ok_record(digest, await handler(payload))
                except ResourceExhausted:
                    # In one process the engine's own admission limit is the
                    # answer: the callers get the 429 now, and nothing is stored.
                    raise
                except Exception as exc:
                    if _is_final(exc):
                        assert isinstance(exc, ServiceError)
                        record = _error_record(digest, exc)
                    elif attempt < self.config.max_deliveries:
                        self.stats.retries += 1
                        log.warning(
                            "request %s failed on delivery %d; retrying",
                            request_id,
                            attempt,
                            exc_info=exc,
                            extra={"request_id": request_id},
                        )
                        await asyncio.sleep(self.config.retry_delay_s)
                        continue
                    elif isinstance(exc, Unavailable):
                        # A dependency is down (e.g. the Triton server): after every try the
                        # callers get the 503 itself, and nothing is stored, so a retry with the
                        # same id runs again once it is back. Not a poison message.
                        raise
                    else:
                        record = self._dead_letter(request_id, payload, digest, attempt, exc)
                break
            self._store(request_id, record)
            self.stats.completed += 1
            return record
        finally:
            self._jobs.pop(request_id, None)
            self._set_depth(len(self._jobs))

    def _dead_letter(
        self, request_id: str, payload: Payload, digest: str, deliveries: int, exc: Exception
    ) -> Payload:
        log.error(
            "request %s failed on all %d deliveries; dead-lettered",
            request_id,
            deliveries,
            exc_info=exc,
            extra={"request_id": request_id},
        )
        self.stats.dead_lettered += 1
        self.dead_letters.append(
            DeadLetter(request_id, deliveries, f"{type(exc).__name__}: {exc}"[:2000], payload)
        )
        message = _dead_letter_message(request_id, deliveries, "in-process dead letters")
        return _error_record(digest, DeadLettered(message), dead_letter=True)

    async def serve(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        if self._handler is not None:
            raise RuntimeError(f"queue {self.config.name} already has a worker")
        self._handler = handler
        self._handler_set.set()
        try:
            await (stop or asyncio.Event()).wait()
            # Graceful stop: finish the jobs already running.
            running = [j.task for j in self._jobs.values()]
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        finally:
            self._handler = None
            self._handler_set.clear()
