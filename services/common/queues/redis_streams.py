"""`RedisWorkQueue`: the work-queue contract on Redis Streams with a consumer group, shared by
replicas (layout and life of a message: docs/queues.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import (
    Internal,
    PayloadTooLarge,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.logging import is_valid_request_id
from services.common.metrics import ServiceMetrics
from services.common.queues.base import (
    REDIS_UNREACHABLE,
    DeadLettered,
    Handler,
    Payload,
    QueueConfig,
    WorkQueue,
    _abandoned,
    _cancel_and_wait,
    _check_request_id,
    _dead_letter_message,
    _error_record,
    _is_final,
    _ok_record,
    _raise_if_cancelled,
    _reused_id,
    _timed_out,
    _unpack,
    decode_payload,
    encode_payload,
    payload_digest,
    redact_url,
)

log = logging.getLogger("wmpo.queues")

# ------------------------------------------------------------------ Redis

# KEYS: result, inflight, stream, unavailable. ARGV: rid, digest, payload, inflight_ttl_ms,
# max_length, enqueue (0: only read a stored result or join one in flight; nothing is added),
# waiting (1: the caller waits for a run it queued or joined; 0: a new submit, which runs again).
_ENQUEUE = """
local stored = redis.call('GET', KEYS[1])
if stored then return {'result', stored} end
if ARGV[7] == '1' then
  local failed = redis.call('GET', KEYS[4])
  if failed then return {'unavailable', failed} end
else
  redis.call('DEL', KEYS[4])
end
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

# KEYS: stream, unavailable, inflight. ARGV: group, msg_id, record, unavailable_ttl_ms,
# channel, rid. A dependency was down on every delivery: the 503 goes to the callers that
# wait (under the short-lived unavailable key), no result is stored and nothing is
# dead-lettered, so a new submit of the id runs again (as in process).
_UNAVAILABLE = """
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
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


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


@dataclass
class _Waiter:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class RedisWorkQueue(WorkQueue):
    """Redis Streams with a consumer group; the layout and life of a message: docs/queues.md."""

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
        self._unavailable_script = self._redis.register_script(_UNAVAILABLE)
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

    def unavailable_key(self, request_id: str) -> str:
        return f"{self.base}:unavailable:{request_id}"

    @property
    def _unavailable_ttl_ms(self) -> int:
        # Long enough for every waiting producer to poll it (notified at once, else every
        # poll_s); short, since a new submit of the id deletes it and runs again anyway.
        return _ms(max(10 * self.config.poll_s, 30.0))

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
        try:
            while True:
                waiter.event.clear()  # before the check: a notification after it is kept
                # Worker liveness comes from the monitor's last look (no Redis call per request);
                # only when it saw none does a new request wait briefly for a starting worker.
                state, value = await self._enqueue_once(
                    request_id, digest, text, enqueue=not first or not self._no_live_worker()
                    or await self._has_workers(grace_s=min(self.config.min_idle_s, 2.0)),
                    waiting=not first,
                )
                _raise_if_cancelled()
                if state == "result":
                    if first:
                        self.stats.stored_hits += 1
                    return _unpack(request_id, self._decode_record(value), digest)
                if state == "unavailable":  # the run ended on a dependency's 503: raise it
                    _unpack(request_id, self._decode_record(value), digest)
                if state == "no-workers":
                    raise self._no_workers()
                if not first and self._no_live_worker():
                    # Every worker gone while we wait: say so now, not after timeout_s. The
                    # work stays queued; a retry with the same id joins or reads its result.
                    raise _abandoned(self.config, request_id)
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

    def _no_live_worker(self) -> bool:
        """The monitor's last look found no live worker (and this replica serves none)."""
        return self.config.expect_workers and not self._serving and self._workers_problem is not None

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
        self, request_id: str, digest: str, text: str, enqueue: bool = True, waiting: bool = False
    ) -> tuple[str, str]:
        """One run of the enqueue script: ("result", record), ("inflight", digest) or
        ("queued", message id), or ("no-workers", "") where `enqueue` is false and there is
        nothing to join; ("unavailable", record) where `waiting` and the run waited for ended
        on a dependency's 503. A full queue or an id reused for another payload raises."""
        from redis.exceptions import RedisError

        try:
            state, value = await self._enqueue_script(
                keys=[
                    self.result_key(request_id),
                    self.inflight_key(request_id),
                    self.stream_key,
                    self.unavailable_key(request_id),
                ],
                args=[
                    request_id,
                    digest,
                    text,
                    _ms(self.config.inflight_ttl_s),
                    self.config.max_length,
                    1 if enqueue else 0,
                    1 if waiting else 0,
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
            elif deliveries >= self.config.max_deliveries and isinstance(exc, Unavailable):
                await self._give_up_unavailable(msg_id, request_id, digest, exc)
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

    async def _give_up_unavailable(
        self, msg_id: str, request_id: str, digest: str, exc: Unavailable
    ) -> None:
        """A dependency (e.g. the Triton server) was down on every delivery: the waiting callers
        get its 503, nothing is stored or dead-lettered (not a poison message), and a new
        submit of the same id runs again once the dependency is back."""
        log.warning(
            "queue %s: request %s: a dependency was unavailable on all %d deliveries (%s); "
            "answered 503, not stored",
            self.base,
            request_id,
            self.config.max_deliveries,
            exc.message,
            extra={"request_id": request_id},
        )
        text = encode_payload(_error_record(digest, exc), self.config.max_payload_bytes)
        await self._unavailable_script(
            keys=[self.stream_key, self.unavailable_key(request_id), self.inflight_key(request_id)],
            args=[
                self.config.group, msg_id, text, self._unavailable_ttl_ms, self.channel, request_id
            ],
        )

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
