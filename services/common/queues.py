"""Work queues shared by replicas: Redis Streams with a consumer group, or in-process.

A producer calls `await queue.submit(request_id, payload)` and gets the result
payload back; workers run `await queue.serve(handler)`, where `handler` is an
async function payload -> result payload. Two implementations share that
interface and its semantics:

- `RedisWorkQueue` (a Redis URL is configured): many API replicas produce, many
  worker replicas consume, one stream and one consumer group between them;
- `InProcessQueue` (no Redis URL, the embedded default): the same contract
  inside one process, with nothing serialized.

Semantics, both implementations:

- **Idempotent request ids.** A result (or a final error) is stored under its
  request id for `result_ttl_s`; submitting the same id again returns it without
  running the handler. Submitting an id that is still in flight waits for that
  run instead of enqueuing a second one. Reusing an id for a *different* payload
  (compared by `payload_digest`) is an `InvalidArgument`.
- **Errors.** A `ServiceError` with a 4xx status raised by the handler (bad
  input) is a final answer: stored and raised to every producer of that id.
  Anything else (a crash, a backend failure, a 5xx) is retried after
  `retry_delay_s`, up to `max_deliveries` attempts; then the message goes to
  the dead-letter stream (list, in process) and producers get `DeadLettered`,
  which names the request id but never the internal error. The dead-letter
  answer is stored like a result: a retry with the same id gets it again, a
  new id runs again. A 429 (`ResourceExhausted`) from the handler is never
  stored: in process it goes straight to the callers (the engine's admission
  limit), in Redis it counts as a failed delivery (another worker may have room).
- **Timeouts.** `submit` raises `Unavailable` after `timeout`; the work itself
  is not withdrawn: its result is stored and a retry with the same id gets it.

Redis specifics (server >= 6.2 for XAUTOCLAIM; client: redis-py's asyncio API).
Keys live under `base = "<prefix>:{<name>}"` (the braces are a Redis Cluster
hash tag: every key of one queue maps to one slot, which the Lua scripts below
need):

    <base>:requests          stream; fields rid, digest, payload (JSON)
                             consumer group <group> (default "workers"), one
                             consumer name per replica process
    <base>:dead              dead-letter stream; fields rid, msg_id, digest,
                             payload, deliveries, error, consumer, failed_at_ms
    <base>:result:<rid>      string, the stored record (JSON), PX result_ttl
    <base>:inflight:<rid>    string, the payload digest while queued/running,
                             PX inflight_ttl
    <base>:done              pub/sub channel; message = rid, published when a
                             record is stored

Life of a message: a Lua script checks result -> in-flight marker -> queue
length and XADDs atomically (so two producers of one id cannot both enqueue).
A worker XREADGROUPs it (delivery 1), runs the handler while renewing its lease
(XCLAIM JUSTID to itself every `heartbeat_s`, which resets the idle time
without counting a delivery), then one Lua script stores the record (SET NX),
deletes the in-flight marker, XACKs, XDELs and publishes: the acknowledgement
is never ahead of the stored result, and a second finisher of the same id
stores nothing (no result is produced twice). A worker that dies stops renewing;
after `min_idle_s` any worker XAUTOCLAIMs the message (Redis counts the delivery)
and runs it again. Redis' own delivery counter decides the dead letter: a claim
that would be delivery `max_deliveries + 1` goes to `<base>:dead` unprocessed, so
a message that kills its worker every time also ends there. A handler failure
sets the message's idle time so it becomes claimable after `retry_delay_s`.
Producers wait on the pub/sub channel and, every `poll_s`, re-run the enqueue
script: it returns the record if a notification was missed, and re-enqueues
if the message was lost (e.g. Redis restarted without persistence).

Payloads are JSON objects whose values may include numpy arrays: in Redis they
travel in the tensor codec's JSON form (allow-listed dtypes, shape, base64 raw
little-endian bytes; never pickle) under a `"__tensor__"` key. Results are
stored in Redis for `result_ttl_s`, so their size times the request rate is
Redis memory; the in-process queue keeps at most `max_stored_results`.

Cancellation: a cancelled `serve` is a hard stop (what it took stays pending
and is reclaimed elsewhere); `serve(stop=event)` is the graceful one. The
in-process queue cancels a job whose every caller went away (nobody else
could collect it); Redis keeps running it, and a retry with the same id gets it.

Why hand-written (about 40 lines of Lua and a worker loop) rather than a task
library: the common Redis task queues (RQ, arq, Celery/kombu, Dramatiq) keep
work in lists or sorted sets rather than Streams consumer groups, and none
gives request-id results with in-flight joining plus an in-process twin with
the same contract; redis-py itself is the well-kept library used here.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from wmpo_client.codec import from_json, to_json

from services.common.errors import (
    ClientClosedRequest,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from services.common.logging import is_valid_request_id
from services.common.metrics import ServiceMetrics

log = logging.getLogger("wmpo.queues")

Payload = dict[str, Any]
Handler = Callable[[Payload], Awaitable[Payload]]

_TENSOR = "__tensor__"
# Caller-facing classes a stored error record can name (the code is the key).
_ERRORS: dict[str, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        FailedPrecondition,
        Unauthenticated,
        NotFound,
        PayloadTooLarge,
        ResourceExhausted,
        Unavailable,
        ClientClosedRequest,
        Internal,
    )
}


class DeadLettered(Internal):
    """Every delivery of a request failed; it was moved to the dead-letter stream."""


def default_consumer_name() -> str:
    """host-pid-random: unique per replica process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def redact_url(url: str) -> str:
    """A Redis URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ------------------------------------------------------------------ config


@dataclass(frozen=True)
class QueueConfig:
    """One queue's knobs; `QueueConfig.from_settings(name, settings)` reads WMPO_QUEUE_*."""

    name: str  # e.g. "simulator.imagine"; part of every key
    redis_url: str | None = None  # None: in-process
    prefix: str = "wmpo"
    group: str = "workers"
    consumer: str = field(default_factory=default_consumer_name)
    concurrency: int = 8  # messages one worker handles at once
    max_deliveries: int = 3  # attempts before the dead letter
    min_idle_s: float = 30.0  # an unrenewed message is claimable after this
    heartbeat_s: float = 0.0  # lease renewal period; 0: min_idle_s / 3
    claim_interval_s: float = 0.0  # how often a worker looks for stale messages; 0: min_idle_s / 2
    retry_delay_s: float = 1.0  # after a handler failure
    block_s: float = 1.0  # XREADGROUP block (also how fast a graceful stop is noticed)
    poll_s: float = 1.0  # producers re-check for their result this often
    result_ttl_s: float = 600.0
    inflight_ttl_s: float = 3600.0
    timeout_s: float = 300.0  # default submit timeout
    max_length: int = 10_000  # requests queued or running before submit -> ResourceExhausted
    max_payload_bytes: int = 512 * 1024**2  # encoded payload/result (Redis' string limit)
    max_stored_results: int = 1024  # in-process only: results kept for idempotent retries
    dead_letter_max: int = 10_000  # approximate cap of the dead-letter stream
    # Producers expect a worker to answer (submit): with none alive for min_idle_s, readiness
    # fails and submit answers 503 at once instead of waiting out timeout_s.
    expect_workers: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.name or any(c in self.name for c in "{}: "):
            problems.append(f"name={self.name!r} must be non-empty without braces, ':' or spaces")
        for attr in (
            "concurrency",
            "max_deliveries",
            "max_length",
            "max_payload_bytes",
            "max_stored_results",
            "dead_letter_max",
        ):
            if getattr(self, attr) < 1:
                problems.append(f"{attr}={getattr(self, attr)} must be >= 1")
        for attr in (
            "min_idle_s",
            "block_s",
            "poll_s",
            "result_ttl_s",
            "inflight_ttl_s",
            "timeout_s",
        ):
            if getattr(self, attr) <= 0:
                problems.append(f"{attr}={getattr(self, attr)} must be > 0")
        for attr in ("heartbeat_s", "claim_interval_s", "retry_delay_s"):
            if getattr(self, attr) < 0:
                problems.append(f"{attr}={getattr(self, attr)} must be >= 0")
        if self.lease_renewal_s >= self.min_idle_s:
            problems.append(
                f"heartbeat_s={self.heartbeat_s} must be below min_idle_s={self.min_idle_s}, "
                "or a live worker's messages get claimed"
            )
        if self.retry_delay_s > self.min_idle_s:
            problems.append(
                f"retry_delay_s={self.retry_delay_s} must be at most min_idle_s={self.min_idle_s}"
            )
        if problems:
            raise ValueError("invalid QueueConfig: " + "; ".join(problems))

    @property
    def lease_renewal_s(self) -> float:
        return self.heartbeat_s or self.min_idle_s / 3

    @property
    def claim_every_s(self) -> float:
        return self.claim_interval_s or self.min_idle_s / 2

    @classmethod
    def from_settings(cls, name: str, settings: Any) -> QueueConfig:
        """From a `ServiceSettings` (redis_url and the queue_* fields)."""
        return cls(
            name=name,
            redis_url=settings.redis_url,
            prefix=settings.queue_prefix,
            consumer=settings.queue_consumer or default_consumer_name(),
            concurrency=settings.queue_concurrency,
            max_deliveries=settings.queue_max_deliveries,
            min_idle_s=settings.queue_min_idle_s,
            retry_delay_s=settings.queue_retry_delay_s,
            result_ttl_s=settings.queue_result_ttl_s,
            timeout_s=settings.queue_timeout_s,
            max_length=settings.queue_max_length,
            # A worker must notice a graceful stop (and read) well within min_idle_s.
            block_s=min(1.0, settings.queue_min_idle_s / 4),
        )


@dataclass
class QueueStats:
    """Counters of this queue object (one replica), for tests and debugging."""

    enqueued: int = 0  # new messages this producer put on the queue
    stored_hits: int = 0  # submits answered from a stored record
    joined: int = 0  # submits that waited for a run already in flight
    handled: int = 0  # handler calls started
    completed: int = 0  # records this worker stored
    duplicates: int = 0  # deliveries whose record already existed (nothing stored)
    retries: int = 0  # handler failures scheduled for another delivery
    claimed: int = 0  # stale messages taken over from another (or a dead) worker
    lost_leases: int = 0  # runs abandoned because another worker claimed the message
    dead_lettered: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered request (the in-process twin of a `<base>:dead` entry)."""

    request_id: str
    deliveries: int
    error: str
    payload: Payload


# ------------------------------------------------------------------ payloads


def _tensor_default(max_bytes: int) -> Callable[[Any], Any]:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.nbytes > max_bytes:
                raise PayloadTooLarge(
                    f"a queue payload array of {obj.nbytes} bytes exceeds the limit of "
                    f"{max_bytes} bytes"
                )
            # The codec refuses dtypes outside its allow-list (a CodecError).
            return {_TENSOR: to_json(obj, "queue payload tensor", max_bytes=max_bytes)}
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(
            f"queue payloads hold JSON values and numpy arrays, not {type(obj).__name__}"
        )

    return default


def encode_payload(payload: Payload, max_bytes: int = 512 * 1024**2) -> str:
    """JSON text with arrays in the codec's JSON form; PayloadTooLarge past `max_bytes`.

    A value JSON cannot carry (an object, a float64 array, NaN) is a TypeError or
    ValueError: payloads are built by our own code, so that is a bug, not input.
    """
    text = json.dumps(
        payload, default=_tensor_default(max_bytes), separators=(",", ":"), allow_nan=False
    )
    if len(text) > max_bytes:
        raise PayloadTooLarge(
            f"queue payload is {len(text)} bytes encoded, over the limit of {max_bytes} bytes"
        )
    return text


def decode_payload(text: str, max_bytes: int = 512 * 1024**2) -> Payload:
    """Inverse of `encode_payload`; a ValueError (CodecError) for anything malformed."""

    def hook(obj: dict[str, Any]) -> Any:
        if len(obj) == 1 and _TENSOR in obj:
            return from_json(obj[_TENSOR], "queue payload tensor", max_bytes=max_bytes)
        return obj

    value = json.loads(text, object_hook=hook)
    if not isinstance(value, dict):
        raise ValueError(f"a queue payload is a JSON object, got {type(value).__name__}")
    return value


def payload_digest(payload: Payload) -> str:
    """sha256 over the payload with arrays as (dtype, shape, sha256 of their bytes).

    Computed the same way by both implementations, without base64-encoding arrays.
    """

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            little = np.ascontiguousarray(obj).astype(obj.dtype.newbyteorder("<"), copy=False)
            blob = hashlib.sha256(little.tobytes()).hexdigest()
            return {_TENSOR: [obj.dtype.name, list(obj.shape), blob]}
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(
            f"queue payloads hold JSON values and numpy arrays, not {type(obj).__name__}"
        )

    text = json.dumps(payload, default=default, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _is_final(exc: BaseException) -> bool:
    """A caller error is an answer; anything else may go better on another delivery.

    429 is not an answer about the request: another worker, or a later delivery,
    may have room (and storing it would refuse every retry of that id).
    """
    return (
        isinstance(exc, ServiceError)
        and 400 <= exc.http_status < 500
        and not isinstance(exc, ResourceExhausted)
    )


def _ok_record(digest: str, result: Payload) -> Payload:
    return {"digest": digest, "ok": True, "result": result}


def _error_record(digest: str, exc: ServiceError, dead_letter: bool = False) -> Payload:
    return {
        "digest": digest,
        "ok": False,
        "error": {"code": exc.code, "message": exc.message, "dead_letter": dead_letter},
    }


def _dead_letter_message(request_id: str, deliveries: int, where: str) -> str:
    return (
        f"request {request_id} failed on {deliveries} delivery attempts and was moved to "
        f"the dead-letter queue ({where}); quote the request id when reporting it"
    )


def _reused_id(request_id: str) -> InvalidArgument:
    return InvalidArgument(
        f"request id {request_id!r} was already used for a different request; "
        "use a new request id (ids make retries idempotent)"
    )


def _unpack(request_id: str, record: Payload, digest: str) -> Payload:
    """The result of a stored record, or its error raised."""
    if record.get("digest") != digest:
        raise _reused_id(request_id)
    if record.get("ok"):
        return record["result"]
    error = record.get("error") or {}
    if error.get("dead_letter"):
        raise DeadLettered(error.get("message", "dead-lettered"))
    cls = _ERRORS.get(error.get("code", ""), Internal)
    raise cls(error.get("message", "the request failed"))


def _check_request_id(request_id: str) -> None:
    if not is_valid_request_id(request_id):
        raise InvalidArgument(
            f"request_id must be 1 to 128 characters of [A-Za-z0-9._:-], got {request_id[:40]!r}"
        )


REDIS_UNREACHABLE = "the work queue's Redis is unreachable"


def _abandoned(config: QueueConfig, request_id: str) -> Unavailable:
    return Unavailable(
        f"no worker is serving queue {config.name} any more (none has beaten within "
        f"{config.min_idle_s:g} s); request {request_id} stays queued: retry with the same "
        "request id to get its result once a worker is back"
    )


def _timed_out(config: QueueConfig, request_id: str, timeout: float) -> Unavailable:
    return Unavailable(
        f"no result for request {request_id} within {timeout:g} s on queue {config.name} "
        "(are workers running?); the work was not withdrawn: retry with the same request id"
    )


# ------------------------------------------------------------------ interface


class WorkQueue(abc.ABC):
    """Producer and worker sides of one named queue. `await start()` first, `close()` after."""

    def __init__(self, config: QueueConfig, metrics: ServiceMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.stats = QueueStats()

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect (Redis: fail fast with a clear error if unreachable)."""

    async def close(self) -> None:  # noqa: B027
        """Release connections; in-process jobs still running are cancelled."""

    @abc.abstractmethod
    async def submit(
        self, request_id: str, payload: Payload, timeout: float | None = None
    ) -> Payload:
        """The result for `request_id`: stored, joined in flight, or computed by a worker."""

    @abc.abstractmethod
    async def enqueue(self, request_id: str, payload: Payload) -> str:
        """Put work on the queue without waiting for its result (long jobs whose progress is
        recorded elsewhere, e.g. training jobs). Same idempotency as `submit`: an id already
        queued, running or answered is not enqueued again. Returns "queued", "inflight" or
        "result"."""

    @abc.abstractmethod
    async def serve(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """Consume and run work until `stop` is set (then finish what was taken) or cancelled
        (then what was taken stays pending for another worker)."""

    @property
    def problem(self) -> str | None:
        """Why the queue cannot work right now (None: fine); for readiness probes."""
        return None

    def _set_depth(self, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.work_queue_depth(self.config.name).set(depth)


def make_queue(name: str, settings: Any, metrics: ServiceMetrics | None = None) -> WorkQueue:
    """Redis when `settings.redis_url` is set, else the in-process queue."""
    config = QueueConfig.from_settings(name, settings)
    if config.redis_url:
        return RedisWorkQueue(config, metrics)
    return InProcessQueue(config, metrics)


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


# ------------------------------------------------------------------ Redis

# KEYS: result, inflight, stream. ARGV: rid, digest, payload, inflight_ttl_ms, max_length,
# enqueue (0: only read a stored result or join one in flight; nothing is added).
_ENQUEUE = """
local stored = redis.call('GET', KEYS[1])
if stored then return {'result', stored} end
local inflight = redis.call('GET', KEYS[2])
if inflight then return {'inflight', inflight} end
if ARGV[6] == '0' then return {'no-workers', ''} end
if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[5]) then return {'full', ''} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
local id = redis.call('XADD', KEYS[3], '*', 'rid', ARGV[1], 'digest', ARGV[2], 'payload', ARGV[3])
return {'queued', id}
"""

# KEYS: stream, result, inflight, dead. ARGV: group, msg_id, record, result_ttl_ms,
# channel, rid, dead_letter_max, then the dead-letter entry's field/value pairs (if any).
# One script, so the acknowledgement can never precede the stored record.
_FINISH = """
local stored = redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4])
if stored and #ARGV > 7 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 8))
end
redis.call('DEL', KEYS[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[6])
if stored then return 1 end
return 0
"""

# KEYS: stream. ARGV: group, consumer, msg_id, idle_ms.
# Renews (idle 0) or reschedules (idle > 0) a message only while this consumer owns it.
_RENEW = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] and p[1][2] == ARGV[2] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
  return 1
end
return 0
"""

# KEYS: stream. ARGV: group, consumer, min_idle_ms, cursor, count.
# XAUTOCLAIM does not report delivery counts; XPENDING per claimed id does.
_CLAIM = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {r[1]}
for _, m in ipairs(r[2]) do
  if type(m) == 'table' and type(m[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], m[1], m[1], 1)
    local n = 1
    if p[1] then n = p[1][4] end
    out[#out + 1] = {m[1], m[2], n}
  end
end
return out
"""

# KEYS: stream. ARGV: group, self consumer, idle_ms.
# Forgets consumers (old replica processes) that own nothing; atomic, so a
# consumer cannot take a message between the check and the delete.
_PRUNE = """
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
     and tonumber(info['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    n = n + 1
  end
end
return n
"""

_PRUNE_EVERY_S = 60.0

# Worker heartbeats in a sorted set scored by Redis' own clock (replicas' clocks may differ).
# KEYS: workers. ARGV: consumer, ttl_ms. Forgets workers silent for 10 x ttl.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
return 1
"""

# KEYS: workers. ARGV: ttl_ms. Workers that beat within the last ttl.
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library call swallowed.

    On Python 3.11, `asyncio.wait_for` (which redis-py uses to send every
    command when a socket timeout is set) returns the inner result and drops a
    cancellation that arrives just as the inner call finishes (fixed in 3.12).
    A worker loop would then keep running after being cancelled, so its loops
    check the task's pending cancellations themselves.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again if one swallowed it."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


@dataclass
class _Waiter:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class RedisWorkQueue(WorkQueue):
    """Redis Streams with a consumer group; see the module docstring for the layout."""

    def __init__(self, config: QueueConfig, metrics: ServiceMetrics | None = None) -> None:
        super().__init__(config, metrics)
        if not config.redis_url:
            raise ValueError("RedisWorkQueue needs config.redis_url")
        import redis.asyncio as aioredis  # lazy: only queue mode needs the redis package

        self._redis = aioredis.from_url(
            config.redis_url,
            decode_responses=True,
            socket_connect_timeout=5,
            # Explicit (redis-py's default changed across versions): above block_s,
            # so a blocking XREADGROUP never times out, yet a dead peer is noticed.
            socket_timeout=30,
            health_check_interval=15,
        )
        base = f"{config.prefix}:{{{config.name}}}"
        self.base = base
        self.stream_key = f"{base}:requests"
        self.dead_key = f"{base}:dead"
        self.channel = f"{base}:done"
        self._enqueue_script = self._redis.register_script(_ENQUEUE)
        self._finish_script = self._redis.register_script(_FINISH)
        self._renew_script = self._redis.register_script(_RENEW)
        self._claim_script = self._redis.register_script(_CLAIM)
        self._prune_script = self._redis.register_script(_PRUNE)
        self._waiters: dict[str, _Waiter] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._listener_lock = asyncio.Lock()
        self._claim_cursor = "0-0"
        self._problem: str | None = None
        # Workers' heartbeats: consumer -> Redis time (ms) of its last beat.
        self.workers_key = f"{base}:workers"
        self._beat_script = self._redis.register_script(_BEAT)
        self._live_script = self._redis.register_script(_LIVE)
        self._monitor: asyncio.Task[None] | None = None
        self._workers_problem: str | None = None
        self._serving = False

    def result_key(self, request_id: str) -> str:
        return f"{self.base}:result:{request_id}"

    def inflight_key(self, request_id: str) -> str:
        return f"{self.base}:inflight:{request_id}"

    @property
    def problem(self) -> str | None:
        # A replica that consumes its own queue is a live worker whatever the last check saw.
        return self._problem or (None if self._serving else self._workers_problem)

    # ------------------------------------------------------------ worker liveness
    async def live_workers(self) -> int:
        """Workers that beat within the last min_idle_s (the same clock as message leases)."""
        return int(await self._live_script(keys=[self.workers_key], args=[_ms(self.config.min_idle_s)]))

    def _no_workers(self) -> Unavailable:
        return Unavailable(
            f"no worker is serving queue {self.config.name} (none has beaten within "
            f"{self.config.min_idle_s:g} s); retry later"
        )

    async def _watch_workers(self) -> None:
        """Keep `problem` (readiness) current on whether any worker is alive."""
        from redis.exceptions import RedisError

        every = min(self.config.min_idle_s / 3, 2.0)
        while True:
            await asyncio.sleep(every)  # first after a worker starting with us has beaten
            try:
                live = await self.live_workers()
                self._workers_problem = None if live else self._no_workers().message
            except RedisError:
                pass  # `_problem` says Redis is unreachable

    async def _beat(self) -> None:
        await self._beat_script(
            keys=[self.workers_key], args=[self.config.consumer, _ms(self.config.min_idle_s)]
        )

    def _unreachable(self, exc: BaseException) -> Unavailable:
        """The error a caller sees: where Redis lives stays in the server's log."""
        log.warning("queue %s: cannot reach Redis at %s: %s", self.base,
                    redact_url(self.config.redis_url or ""), exc)
        self._problem = REDIS_UNREACHABLE
        return Unavailable(f"{REDIS_UNREACHABLE}; retry later")

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
            await self._ensure_group()
        except RedisError as exc:
            self._problem = REDIS_UNREACHABLE
            # Startup: the operator reads this, so it says where.
            raise Unavailable(
                f"cannot reach Redis at {redact_url(self.config.redis_url or '')}: {exc}"
            ) from None
        self._problem = None
        if self.config.expect_workers:
            self._monitor = asyncio.create_task(self._watch_workers(), name=f"workers-{self.base}")

    async def close(self) -> None:
        for task in (self._listener, self._monitor):
            if task is not None:
                await _cancel_and_wait([task])
        self._listener = self._monitor = None
        await self._redis.aclose()

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            # id 0: the group sees messages added before it existed.
            await self._redis.xgroup_create(self.stream_key, self.config.group, "0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ------------------------------------------------------------ producer
    async def _ensure_listener(self) -> None:
        async with self._listener_lock:
            if self._listener is None or self._listener.done():
                self._subscribed.clear()
                self._listener = asyncio.create_task(self._listen(), name=f"queue-{self.base}")
        with contextlib.suppress(TimeoutError):
            # Not fatal: the poll in submit finds results without notifications.
            await asyncio.wait_for(self._subscribed.wait(), 5)

    async def _listen(self) -> None:
        from redis.exceptions import RedisError

        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    _raise_if_cancelled()
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        _raise_if_cancelled()
                        if message.get("type") != "message":
                            continue
                        waiter = self._waiters.get(message.get("data", ""))
                        if waiter is not None:
                            waiter.event.set()
            except RedisError as exc:
                log.warning("queue %s: result notifications interrupted (%s)", self.base, exc)
                await asyncio.sleep(1.0)

    async def submit(
        self, request_id: str, payload: Payload, timeout: float | None = None
    ) -> Payload:

        _check_request_id(request_id)
        digest = payload_digest(payload)
        text = encode_payload(payload, self.config.max_payload_bytes)
        timeout = timeout or self.config.timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._ensure_listener()
        waiter = self._waiters.setdefault(request_id, _Waiter())
        waiter.count += 1
        first = True
        next_live_check = loop.time()
        try:
            while True:
                waiter.event.clear()  # before the check: a notification after it is kept
                state, value = await self._enqueue_once(
                    request_id, digest, text, enqueue=not self.config.expect_workers or not first
                    or await self._has_workers(grace_s=min(self.config.min_idle_s, 2.0))
                )
                _raise_if_cancelled()
                if state == "result":
                    if first:
                        self.stats.stored_hits += 1
                    return _unpack(request_id, self._decode_record(value), digest)
                if state == "no-workers":
                    raise self._no_workers()
                if self.config.expect_workers and loop.time() >= next_live_check:
                    # Every worker gone while we wait: say so now, not after timeout_s. The
                    # work stays queued; a retry with the same id joins or reads its result.
                    if not first and not await self._has_workers():
                        raise _abandoned(self.config, request_id)
                    next_live_check = loop.time() + min(self.config.min_idle_s / 3, 2.0)
                if first:
                    if state == "queued":
                        self.stats.enqueued += 1
                    else:
                        self.stats.joined += 1
                first = False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _timed_out(self.config, request_id, timeout)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), min(self.config.poll_s, remaining))
        finally:
            waiter.count -= 1
            if waiter.count == 0:
                self._waiters.pop(request_id, None)

    async def _has_workers(self, grace_s: float = 0.0) -> bool:
        """Whether a worker is alive, waiting up to `grace_s` for one (a worker starting)."""
        from redis.exceptions import RedisError

        deadline = asyncio.get_running_loop().time() + grace_s
        while True:
            try:
                if await self.live_workers() > 0:
                    return True
            except RedisError as exc:
                raise self._unreachable(exc) from None
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def _enqueue_once(
        self, request_id: str, digest: str, text: str, enqueue: bool = True
    ) -> tuple[str, str]:
        """One run of the enqueue script: ("result", record), ("inflight", digest) or
        ("queued", message id), or ("no-workers", "") where `enqueue` is false and there is
        nothing to join; a full queue or an id reused for another payload raises."""
        from redis.exceptions import RedisError

        try:
            state, value = await self._enqueue_script(
                keys=[self.result_key(request_id), self.inflight_key(request_id), self.stream_key],
                args=[
                    request_id,
                    digest,
                    text,
                    _ms(self.config.inflight_ttl_s),
                    self.config.max_length,
                    1 if enqueue else 0,
                ],
            )
        except RedisError as exc:
            raise self._unreachable(exc) from None
        self._problem = None
        if state == "full":
            raise ResourceExhausted(
                f"queue {self.config.name} is full ({self.config.max_length} requests "
                "queued or running); retry later"
            )
        if state == "inflight" and value != digest:
            raise _reused_id(request_id)
        return str(state), str(value)

    async def enqueue(self, request_id: str, payload: Payload) -> str:
        _check_request_id(request_id)
        digest = payload_digest(payload)
        text = encode_payload(payload, self.config.max_payload_bytes)
        state, value = await self._enqueue_once(request_id, digest, text)
        if state == "result" and self._decode_record(value).get("digest") != digest:
            raise _reused_id(request_id)
        if state == "queued":
            self.stats.enqueued += 1
        return state

    def _decode_record(self, text: str) -> Payload:
        try:
            return decode_payload(text, self.config.max_payload_bytes)
        except ValueError as exc:
            log.error("queue %s: undecodable stored record (%s)", self.base, exc)
            raise Internal("the stored result could not be decoded") from None

    # ------------------------------------------------------------ worker
    async def serve(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        from redis.exceptions import RedisError, ResponseError

        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        next_claim = 0.0
        next_prune = loop.time() + _PRUNE_EVERY_S
        next_beat = 0.0
        backoff = 0.0
        self._serving = True
        try:
            await self._ensure_group()
            while not stop.is_set():
                _raise_if_cancelled()
                if loop.time() >= next_beat:
                    with contextlib.suppress(RedisError):  # the read below reports Redis' state
                        await self._beat()
                        next_beat = loop.time() + min(self.config.min_idle_s / 6, 1.0)
                free = self.config.concurrency - len(tasks)
                if free <= 0:
                    await asyncio.wait(
                        tasks, timeout=self.config.block_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                try:
                    batch: list[tuple[str, dict[str, str], int]] = []
                    if loop.time() >= next_claim:
                        batch = await self._claim(free)
                        next_claim = loop.time() + self.config.claim_every_s
                    if loop.time() >= next_prune:
                        await self._prune_script(
                            keys=[self.stream_key],
                            args=[
                                self.config.group,
                                self.config.consumer,
                                _ms(max(10 * self.config.min_idle_s, 600)),
                            ],
                        )
                        next_prune = loop.time() + _PRUNE_EVERY_S
                    if not batch:
                        batch = await self._read(free)
                    self._set_depth(await self._redis.xlen(self.stream_key))
                    self._problem = None
                    backoff = 0.0
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the stream was deleted under us
                        await self._ensure_group()
                        continue
                    raise
                except RedisError as exc:
                    backoff = min(max(2 * backoff, 0.1), 5.0)
                    self._problem = f"Redis unreachable: {type(exc).__name__}"
                    log.warning("queue %s: %s; retrying in %.1f s", self.base, exc, backoff)
                    await asyncio.sleep(backoff)
                    continue
                for msg_id, fields, deliveries in batch:
                    task = asyncio.create_task(self._process(handler, msg_id, fields, deliveries))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:  # graceful stop: finish (and acknowledge) what was taken
                await asyncio.gather(*list(tasks), return_exceptions=True)
            with contextlib.suppress(RedisError):  # gone now, not after min_idle_s
                await self._redis.zrem(self.workers_key, self.config.consumer)
        finally:
            self._serving = False
            # Cancelled (a hard stop): what was taken stays pending, and another
            # worker claims it after min_idle_s, as if this process had died.
            await _cancel_and_wait(list(tasks))

    async def _read(self, count: int) -> list[tuple[str, dict[str, str], int]]:
        reply = await self._redis.xreadgroup(
            self.config.group,
            self.config.consumer,
            {self.stream_key: ">"},
            count=count,
            block=_ms(self.config.block_s),
        )
        out = []
        for _stream, entries in reply or []:
            for msg_id, fields in entries:
                out.append((msg_id, fields, 1))  # ">" is always a first delivery
        return out

    async def _claim(self, count: int) -> list[tuple[str, dict[str, str], int]]:
        reply = await self._claim_script(
            keys=[self.stream_key],
            args=[
                self.config.group,
                self.config.consumer,
                _ms(self.config.min_idle_s),
                self._claim_cursor,
                count,
            ],
        )
        self._claim_cursor = reply[0]
        claimed = [(m[0], _pairs(m[1]), int(m[2])) for m in reply[1:]]
        if claimed:
            self.stats.claimed += len(claimed)
            log.info(
                "queue %s: claimed %d stale message(s) from a dead or slow worker",
                self.base,
                len(claimed),
            )
        return claimed

    async def _renew(self, msg_id: str, idle_ms: int) -> bool:
        owned = await self._renew_script(
            keys=[self.stream_key],
            args=[self.config.group, self.config.consumer, msg_id, idle_ms],
        )
        return bool(owned)

    async def _finish(
        self, msg_id: str, request_id: str, record: Payload, dead: dict[str, str] | None = None
    ) -> bool:
        try:
            text = encode_payload(record, self.config.max_payload_bytes)
        except PayloadTooLarge as exc:
            record = _error_record(record["digest"], Internal(f"the result is too large: {exc}"))
            text = encode_payload(record)
        args: list[Any] = [
            self.config.group,
            msg_id,
            text,
            _ms(self.config.result_ttl_s),
            self.channel,
            request_id,
            self.config.dead_letter_max,
        ]
        for key, value in (dead or {}).items():
            args += [key, value]
        stored = await self._finish_script(
            keys=[
                self.stream_key,
                self.result_key(request_id),
                self.inflight_key(request_id),
                self.dead_key,
            ],
            args=args,
        )
        if stored:
            self.stats.completed += 1
        else:
            self.stats.duplicates += 1
        return bool(stored)

    async def _dead_letter(
        self,
        msg_id: str,
        fields: dict[str, str],
        deliveries: int,
        error: str,
    ) -> None:
        request_id = fields.get("rid", "")
        message = _dead_letter_message(request_id, deliveries, f"stream {self.dead_key}")
        record = _error_record(fields.get("digest", ""), DeadLettered(message), dead_letter=True)
        log.error(
            "queue %s: request %s dead-lettered after %d deliveries: %s",
            self.base,
            request_id,
            deliveries,
            error,
            extra={"request_id": request_id},
        )
        dead = {
            "rid": request_id,
            "msg_id": msg_id,
            "digest": fields.get("digest", ""),
            "payload": fields.get("payload", ""),
            "deliveries": str(deliveries),
            "error": error[:2000],
            "consumer": self.config.consumer,
            "failed_at_ms": str(int(time.time() * 1000)),
        }
        if await self._finish(msg_id, request_id, record, dead):
            self.stats.dead_lettered += 1

    async def _process(
        self, handler: Handler, msg_id: str, fields: dict[str, str], deliveries: int
    ) -> None:
        from redis.exceptions import RedisError

        request_id = fields.get("rid", "")
        try:
            if deliveries > self.config.max_deliveries:
                await self._dead_letter(
                    msg_id,
                    fields,
                    deliveries - 1,
                    "no result: the worker died or stopped renewing its lease on every delivery",
                )
                return
            if not is_valid_request_id(request_id):
                await self._dead_letter(msg_id, fields, deliveries, "invalid request id")
                return
            answered = await self._redis.exists(self.result_key(request_id))
            _raise_if_cancelled()
            if answered:
                # Already answered (a duplicate message): nothing to compute.
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xack(self.stream_key, self.config.group, msg_id)
                    pipe.xdel(self.stream_key, msg_id)
                    await pipe.execute()
                self.stats.duplicates += 1
                return
            try:
                payload = decode_payload(fields["payload"], self.config.max_payload_bytes)
            except (KeyError, ValueError) as exc:
                # Poison: no delivery can decode it.
                await self._dead_letter(msg_id, fields, deliveries, f"undecodable payload: {exc}")
                return
            await self._run_handler(handler, msg_id, fields, deliveries, payload)
        except RedisError as exc:
            # The message stays pending and is claimed again after min_idle_s; a
            # record stored by then makes that delivery a no-op.
            log.warning("queue %s: message %s left pending (%s)", self.base, msg_id, exc)
        except Exception:
            # A bug here (e.g. a result JSON cannot carry): same as a crash, the
            # message is redelivered and dead-lettered after max_deliveries.
            log.exception("queue %s: message %s left pending", self.base, msg_id)

    async def _run_handler(
        self,
        handler: Handler,
        msg_id: str,
        fields: dict[str, str],
        deliveries: int,
        payload: Payload,
    ) -> None:
        request_id, digest = fields["rid"], fields.get("digest", "")
        self.stats.handled += 1
        work = asyncio.create_task(handler(payload))
        lease = asyncio.create_task(self._keep_lease(msg_id, work))
        try:
            result = await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this worker is being stopped: leave the message pending
            self.stats.lost_leases += 1  # another worker claimed it and runs it
            return
        except Exception as exc:
            if _is_final(exc):
                assert isinstance(exc, ServiceError)
                await self._finish(msg_id, request_id, _error_record(digest, exc))
            elif deliveries >= self.config.max_deliveries:
                await self._dead_letter(msg_id, fields, deliveries, f"{type(exc).__name__}: {exc}")
            else:
                self.stats.retries += 1
                log.warning(
                    "queue %s: request %s failed on delivery %d; retrying in %.2f s",
                    self.base,
                    request_id,
                    deliveries,
                    self.config.retry_delay_s,
                    exc_info=exc,
                    extra={"request_id": request_id},
                )
                # Claimable once retry_delay_s has passed, by any worker.
                idle = _ms(self.config.min_idle_s - self.config.retry_delay_s)
                await self._renew(msg_id, idle)
            return
        finally:
            await _cancel_and_wait([lease])
        await self._finish(msg_id, request_id, _ok_record(digest, result))

    async def _keep_lease(self, msg_id: str, work: asyncio.Task[Payload]) -> None:
        from redis.exceptions import RedisError

        while True:
            await asyncio.sleep(self.config.lease_renewal_s)
            try:
                owned = await self._renew(msg_id, 0)
                _raise_if_cancelled()
            except RedisError as exc:
                log.warning(
                    "queue %s: could not renew the lease on %s (%s)", self.base, msg_id, exc
                )
                continue
            if not owned:
                log.warning(
                    "queue %s: message %s was claimed by another worker; abandoning it",
                    self.base,
                    msg_id,
                )
                work.cancel()
                return
