"""The work queues' shared contract: config, stats, payload codec, stored records, the
`WorkQueue` interface and `make_queue`. The design (semantics, Redis layout, life of a
message) is in docs/queues.md."""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import logging
import os
import socket
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
    from services.common.queues.memory import InProcessQueue
    from services.common.queues.redis_streams import RedisWorkQueue

    config = QueueConfig.from_settings(name, settings)
    if config.redis_url:
        return RedisWorkQueue(config, metrics)
    return InProcessQueue(config, metrics)


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
