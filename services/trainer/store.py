"""Job records: what a job is, where it stands, and its metrics per step.

Two implementations behind one async interface (the runtime picks one):

- `DiskJobStore` (no Redis, the embedded default): one JSON file per job,
  `<trainer_dir>/jobs/<id>/job.json`, rewritten atomically on every change and
  read back at startup, so a restarted trainer knows its jobs;
- `RedisJobStore` (`WMPO_REDIS_URL`): a hash per job, one JSON-encoded value
  per field, `<prefix>:trainer:job:<id>`; its step metrics in the hash
  `<prefix>:trainer:job:<id>:steps` (field = step number, so a step redone
  after a takeover overwrites itself); every job id in the sorted set
  `<prefix>:trainer:jobs` (score: creation time), for listing. Every replica
  reads and writes the same records.

Creating a record is atomic and idempotent (the first one wins), and so is a
cancel request: it sets `cancel_requested`, and a job still queued becomes
cancelled at once (a running one stops at its next step boundary). Every other
field is written by the one worker that runs the job.
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from wmpo.data.episodes import atomic_write_json

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class JobRecord:
    job_id: str
    config: dict[str, Any]  # the resolved GRPOJobConfig (out included)
    digest: str  # of the client's job spec: a resubmission must match it
    steps: int
    state: str = "queued"
    step: int = 0  # steps completed (checkpointed)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0  # times a worker started (or resumed) it
    restarts: int = 0  # takeovers after a worker died mid-job
    worker: str | None = None  # consumer name of the replica running it (last)
    resumed_from_step: int = 0  # checkpointed steps found when the last attempt started
    eval_before: dict[str, Any] | None = None
    eval_after: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # per-step metrics

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def fields_dict(self) -> dict[str, Any]:
        """Every field but the history (stored apart)."""
        out = asdict(self)
        out.pop("history")
        return out


_FIELDS = {f.name for f in fields(JobRecord)} - {"history"}


def _merge_step(history: list[dict[str, Any]], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    by_step = {int(m["step"]): m for m in history}
    by_step[int(metrics["step"])] = metrics
    return [by_step[k] for k in sorted(by_step)]


class JobStore(abc.ABC):
    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect / load."""

    async def close(self) -> None:  # noqa: B027
        """Release connections."""

    @property
    def problem(self) -> str | None:
        """Why records cannot be read or written right now (None: fine)."""
        return None

    @abc.abstractmethod
    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new record; if the id exists, return the stored one and False."""

    @abc.abstractmethod
    async def get(self, job_id: str, history: bool = True) -> JobRecord | None: ...

    @abc.abstractmethod
    async def list(self, state: str | None, limit: int) -> list[JobRecord]:
        """Newest first, without histories."""

    @abc.abstractmethod
    async def update(self, job_id: str, **values: Any) -> None:
        """Set fields of an existing record (not the history)."""

    @abc.abstractmethod
    async def put_step(self, job_id: str, metrics: dict[str, Any]) -> None:
        """Record a completed step's metrics (replacing that step's, if redone); `step` follows."""

    @abc.abstractmethod
    async def set_history(self, job_id: str, history: list[dict[str, Any]]) -> None:
        """Replace the history (a resumed job syncs it from its checkpoint)."""

    @abc.abstractmethod
    async def request_cancel(self, job_id: str) -> JobRecord | None:
        """Set cancel_requested; a queued job becomes cancelled. None: no such job."""

    @abc.abstractmethod
    async def cancel_requested(self, job_id: str) -> bool: ...


def _check_fields(values: dict[str, Any]) -> None:
    unknown = set(values) - _FIELDS
    if unknown:
        raise KeyError(f"unknown job record field(s): {', '.join(sorted(unknown))}")


# ------------------------------------------------------------------ disk


class DiskJobStore(JobStore):
    """Records in memory, each written through to `<root>/<id>/job.json` (atomically)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._jobs: dict[str, JobRecord] = {}

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.glob("*/job.json")):
            data = json.loads(path.read_text())
            record = JobRecord(**{k: v for k, v in data.items() if k in _FIELDS | {"history"}})
            self._jobs[record.job_id] = record

    def _write(self, record: JobRecord) -> None:
        atomic_write_json(self.root / record.job_id / "job.json", asdict(record))

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        existing = self._jobs.get(record.job_id)
        if existing is not None:
            return existing, False
        self._jobs[record.job_id] = record
        self._write(record)
        return record, True

    async def get(self, job_id: str, history: bool = True) -> JobRecord | None:
        record = self._jobs.get(job_id)
        if record is None:
            return None
        copy = JobRecord(**{**record.fields_dict(), "history": list(record.history) if history else []})
        return copy

    async def list(self, state: str | None, limit: int) -> list[JobRecord]:
        jobs = sorted(self._jobs.values(), key=lambda r: r.created_at, reverse=True)
        picked = [r for r in jobs if state is None or r.state == state][:limit]
        return [JobRecord(**{**r.fields_dict(), "history": []}) for r in picked]

    async def update(self, job_id: str, **values: Any) -> None:
        _check_fields(values)
        record = self._jobs[job_id]
        for k, v in values.items():
            setattr(record, k, v)
        self._write(record)

    async def put_step(self, job_id: str, metrics: dict[str, Any]) -> None:
        record = self._jobs[job_id]
        record.history = _merge_step(record.history, metrics)
        record.step = max(record.step, int(metrics["step"]))
        self._write(record)

    async def set_history(self, job_id: str, history: list[dict[str, Any]]) -> None:
        record = self._jobs[job_id]
        record.history = list(history)
        record.step = max((int(m["step"]) for m in history), default=0)
        self._write(record)

    async def request_cancel(self, job_id: str) -> JobRecord | None:
        record = self._jobs.get(job_id)
        if record is None:
            return None
        if not record.final:
            record.cancel_requested = True
            if record.state == "queued":
                record.state, record.finished_at = "cancelled", time.time()
            self._write(record)
        return await self.get(job_id)

    async def cancel_requested(self, job_id: str) -> bool:
        record = self._jobs.get(job_id)
        return bool(record and record.cancel_requested)


# ------------------------------------------------------------------ Redis

# KEYS: job hash, index. ARGV: job id, created_at, then field/value pairs.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: job hash. ARGV: now. Values are JSON: a state is stored as "\"queued\"".
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == '"queued"' or state == '"running"' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
end
if state == '"queued"' then
  redis.call('HSET', KEYS[1], 'state', '"cancelled"', 'finished_at', ARGV[1])
end
return 1
"""


class RedisJobStore(JobStore):
    """Records in Redis hashes shared by every replica (see the module docstring)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        import redis.asyncio as aioredis  # lazy: only Redis mode needs the package

        self.redis_url = redis_url
        self._redis = aioredis.from_url(
            redis_url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30
        )
        self.base = f"{prefix}:trainer"
        self.index_key = f"{self.base}:jobs"
        self._create = self._redis.register_script(_CREATE)
        self._cancel = self._redis.register_script(_CANCEL)
        self._problem: str | None = None

    def job_key(self, job_id: str) -> str:
        return f"{self.base}:job:{job_id}"

    def steps_key(self, job_id: str) -> str:
        return f"{self.base}:job:{job_id}:steps"

    @property
    def problem(self) -> str | None:
        return self._problem

    async def start(self) -> None:
        from redis.exceptions import RedisError

        from services.common.errors import Unavailable
        from services.common.queues import REDIS_UNREACHABLE, redact_url

        try:
            await self._redis.ping()
        except RedisError as exc:
            self._problem = REDIS_UNREACHABLE
            raise Unavailable(f"cannot reach Redis at {redact_url(self.redis_url)}: {exc}") from None
        self._problem = None

    async def close(self) -> None:
        await self._redis.aclose()

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        flat: list[str] = []
        for k, v in record.fields_dict().items():
            flat += [k, json.dumps(v)]
        created = await self._create(
            keys=[self.job_key(record.job_id), self.index_key],
            args=[record.job_id, record.created_at, *flat],
        )
        if created:
            return record, True
        existing = await self.get(record.job_id)
        assert existing is not None
        return existing, False

    async def get(self, job_id: str, history: bool = True) -> JobRecord | None:
        raw = await self._redis.hgetall(self.job_key(job_id))
        if not raw:
            return None
        values = {k: json.loads(v) for k, v in raw.items() if k in _FIELDS}
        record = JobRecord(**values)
        if history:
            steps = await self._redis.hgetall(self.steps_key(job_id))
            record.history = [json.loads(steps[k]) for k in sorted(steps, key=int)]
        return record

    async def list(self, state: str | None, limit: int) -> list[JobRecord]:
        out: list[JobRecord] = []
        start = 0
        page = max(limit, 100)
        while len(out) < limit:
            ids = await self._redis.zrevrange(self.index_key, start, start + page - 1)
            if not ids:
                break
            for job_id in ids:
                record = await self.get(job_id, history=False)
                if record is not None and (state is None or record.state == state):
                    out.append(record)
            start += page
        return out[:limit]

    async def update(self, job_id: str, **values: Any) -> None:
        _check_fields(values)
        await self._redis.hset(self.job_key(job_id), mapping={k: json.dumps(v) for k, v in values.items()})

    async def put_step(self, job_id: str, metrics: dict[str, Any]) -> None:
        await self._redis.hset(self.steps_key(job_id), str(int(metrics["step"])), json.dumps(metrics))
        steps = await self._redis.hkeys(self.steps_key(job_id))
        await self.update(job_id, step=max(int(s) for s in steps))

    async def set_history(self, job_id: str, history: list[dict[str, Any]]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.steps_key(job_id))
            if history:
                pipe.hset(self.steps_key(job_id), mapping={str(m["step"]): json.dumps(m) for m in history})
            pipe.hset(self.job_key(job_id), "step", json.dumps(max((int(m["step"]) for m in history), default=0)))
            await pipe.execute()

    async def request_cancel(self, job_id: str) -> JobRecord | None:
        found = await self._cancel(keys=[self.job_key(job_id)], args=[json.dumps(time.time())])
        return await self.get(job_id) if found else None

    async def cancel_requested(self, job_id: str) -> bool:
        value = await self._redis.hget(self.job_key(job_id), "cancel_requested")
        return value == "true"


def make_store(settings: Any) -> JobStore:
    """Redis when `settings.redis_url` is set, else the data directory."""
    if settings.redis_url:
        return RedisJobStore(settings.redis_url, settings.queue_prefix)
    return DiskJobStore(Path(settings.trainer_dir) / "jobs")

