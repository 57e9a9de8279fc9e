"""The object both transports share: job records, the job queue and the worker that runs jobs.

Built once per process (in the app lifespan, see `server`); HTTP and gRPC
handlers only decode, call the runtime and map results and errors. Validation
lives here (`JobSpec`, `resolve_job`), so both transports refuse the same jobs
with the same messages.

A submitted job is a record (`store`) plus a message on the job queue
(`services.common.queues`, request id = job id, so a resubmission is not queued
twice). The worker takes one message at a time and runs the job with the core
library's `run_grpo_job` in a thread (torch releases the GIL; the event loop
keeps serving, renewing the message's lease and streaming progress).
`on_step` writes each step's metrics to the record; `should_stop`, polled
before each step, reads the record's cancel flag (set by any replica) and this
replica's shutdown flag.

Durability. `train_grpo` checkpoints the policy and its full training state to
the job's `out` after every step and resumes from there, so a job restarted
anywhere with the same `out` continues from its last completed step and makes
the same updates as an uninterrupted run.

- Redis (`WMPO_REDIS_URL`): records in Redis, the queue a Redis Stream with a
  consumer group. A replica that dies mid-job stops renewing the message's
  lease; after `WMPO_QUEUE_MIN_IDLE_S` another replica claims it (XAUTOCLAIM)
  and resumes the job from the shared data directory. A graceful shutdown
  stops the job at its next step boundary and hands the message back at once
  (claimable after `WMPO_QUEUE_RETRY_DELAY_S`). Takeovers after a death count
  as restarts; past `WMPO_JOB_MAX_RESTARTS` the job fails (a crash loop) instead
  of being dead-lettered, so its record always says what happened.
- No Redis: records are JSON files in the data directory; at startup every job
  not finished is queued again and resumes from its checkpoint.

One job at a time per replica: the Redis consumer reads one message at a
time, and an asyncio lock serializes the in-process queue's jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_type_hints

from prometheus_client import Counter, Gauge
from pydantic import ConfigDict, Field, ValidationError, create_model

from services.common.errors import Conflict, InvalidArgument, NotFound, Unavailable
from services.common.health import Readiness
from services.common.metrics import ServiceMetrics
from services.common.queues import (
    InProcessQueue,
    QueueConfig,
    QueueWorker,
    RedisWorkQueue,
    WorkQueue,
)
from services.trainer.settings import DEFAULT_ENDPOINT, Endpoints, TrainerSettings
from services.trainer.store import FINAL_STATES, STATES, JobRecord, make_store
from wmpo.errors import ConfigError, UnknownTaskError
from wmpo.rl.job import GRPOJobConfig

SERVICE = "trainer"
VERSION = "0.1.0"
JOB_QUEUE = "trainer.jobs"
# What a policy checkpoint directory holds; the only names a download may ask for.
CHECKPOINT_FILES = ("model.safetensors", "config.json", "manifest.json")
# The queue never dead-letters a job: restarts are counted in the record instead.
_DELIVERIES = 1_000_000

log = logging.getLogger("wmpo.trainer.runtime")
T = TypeVar("T")

JOBS_FINISHED = Counter(
    "wmpo_trainer_jobs_finished_total", "Jobs that ended, by final state.", ["service", "state"]
)
RUNNING_JOBS = Gauge("wmpo_trainer_running_jobs", "Jobs running on this replica.", ["service"])
STEPS_DONE = Counter("wmpo_trainer_steps_total", "GRPO steps completed.", ["service"])


# ------------------------------------------------------------------ job specs


JobId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Client-chosen job id (1 to 64 of [A-Za-z0-9._-], not starting with . - _): "
        "submitting the same id again returns that job instead of starting another.",
    ),
]
# The fields of `GRPOJobConfig` a client sets; the rest are the service's (out, the embedded
# stack's checkpoints and sampler, the calibration run) or replaced by endpoint choices.
CLIENT_FIELDS = (
    "tasks", "steps", "groups_per_step", "group_size", "chunks", "temperature", "lr", "epochs",
    "minibatch", "max_sampling_rounds", "target_kl", "verify", "max_grad_norm", "seed", "eval_episodes",
    "eval_workers", "environment", "real_budget", "reward", "task_sampling",
)


def _spec_field(f: dataclasses.Field[Any], hint: Any) -> tuple[Any, Any]:
    """A request field from a core config field: its type, default, bounds and description."""
    m = dict(f.metadata)
    limits: dict[str, Any] = {k: m[k] for k in ("ge", "gt", "le", "lt") if k in m}
    if "min_len" in m:
        limits["min_length"] = m["min_len"]
    if "max_len" in m:
        limits["max_length"] = m["max_len"]
    if "choices" in m:
        hint = Literal[tuple(m["choices"])]  # type: ignore[valid-type]
    if hint is float:
        limits["allow_inf_nan"] = False
    default: dict[str, Any] = (
        {"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING
        else {"default": f.default}
    )
    return hint, Field(**default, description=m.get("doc"), **limits)


_HINTS = get_type_hints(GRPOJobConfig)
_CORE_FIELDS = {f.name: f for f in fields(GRPOJobConfig)}

JobSpec = create_model(  # a GRPO job as a client submits it, derived from GRPOJobConfig
    "JobSpec",
    __config__=ConfigDict(extra="forbid", strict=True),
    __doc__="A GRPO job as a client submits it: the client's fields of `GRPOJobConfig` (bounds "
    "and descriptions from there), its id, and its choice among the trainer's endpoints.",
    job_id=(JobId | None, None),
    policy=(str, Field(
        min_length=1,
        max_length=4096,
        description="Starting policy checkpoint: a directory with model.safetensors and "
        "config.json under one of the trainer's policy roots (WMPO_POLICY_ROOTS), named "
        "relative to one (policy-base) or as the trainer sees it (checkpoints/policy-base).",
    )),
    **{name: _spec_field(_CORE_FIELDS[name], _HINTS[name]) for name in CLIENT_FIELDS},
    endpoint=(str | None, Field(
        None,
        max_length=64,
        description="The endpoint set (simulator replicas and judge) to use, by the name the "
        "trainer's operator gave it; null: its 'default' set (else an embedded stack).",
    )),
    simulator_url=(str | list[str] | None, Field(
        None,
        description="Simulator replicas to use, among those of the endpoint set: one http(s) "
        "URL, several comma-separated, or a list; null: all of the set's.",
    )),
    judge_url=(str | None, Field(
        None, description="The judge service, which must be the endpoint set's; null: the set's."
    )),
)


def parse_spec(spec: JobSpec | dict[str, Any]) -> JobSpec:
    """A validated spec; a bad one is an InvalidArgument naming each bad field."""
    if isinstance(spec, JobSpec):
        return spec
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg']}" for err in exc.errors()[:10]
        ]
        raise InvalidArgument("invalid job: " + "; ".join(problems)) from None


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _check_policy(name: str, settings: TrainerSettings) -> str:
    """The resolved checkpoint directory `name` stands for, under one of the policy roots.

    Every refusal has the same message whatever exists on disk, so the API cannot be used to
    probe the trainer's filesystem outside its roots."""
    roots = settings.policy_directories()
    given = Path(name).expanduser()
    candidates = [given] if given.is_absolute() else [given, *(root / given for root in roots)]
    directory = None
    for candidate in candidates:
        resolved = candidate.resolve()  # symlinks and '..' resolved before the root check
        if _under(resolved, roots) and all(
            (resolved / n).is_file() for n in ("model.safetensors", "config.json")
        ):
            directory = resolved
            break
    if directory is None:
        raise InvalidArgument(
            f"policy: no policy checkpoint named {name!r} under the trainer's policy roots "
            "(WMPO_POLICY_ROOTS); name a directory holding model.safetensors and config.json, "
            "e.g. checkpoints/policy-base"
        )
    manifest = directory / "manifest.json"
    if manifest.is_file():
        try:
            kind = json.loads(manifest.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind not in (None, "policy"):
            raise InvalidArgument(f"policy: {name} is a {kind} checkpoint, not a policy")
    return str(directory)


def resolve_job(spec: JobSpec, job_id: str, settings: TrainerSettings) -> GRPOJobConfig:
    """The `GRPOJobConfig` the worker will run: spec + the service's out, URLs and checkpoints."""
    from wmpo.envs.tasks import check_task

    try:
        tasks = list(dict.fromkeys(check_task(t) for t in spec.tasks))
    except UnknownTaskError as exc:
        raise InvalidArgument(f"tasks: {exc}") from None
    if spec.environment == "real":
        for name in ("endpoint", "simulator_url", "judge_url"):
            if getattr(spec, name) is not None:
                raise InvalidArgument(f"{name}: a job in the real environment uses no {name}")
        return _validated(GRPOJobConfig(**_config_values(spec, tasks, job_id, settings)))
    sim_url, judge_url = _endpoints(spec, settings)
    return _validated(GRPOJobConfig(
        **_config_values(spec, tasks, job_id, settings),
        simulator_url=sim_url,
        judge_url=judge_url,
        world_model=None if sim_url else settings.embedded_world_model,
        judge=None if sim_url else settings.embedded_judge,
        # the imitation reward's feature network: the trainer's own world-model checkpoint's
        # autoencoder, also when the simulators are remote
        perceptual_model=settings.embedded_world_model,
    ))


def _url(value: str) -> str:
    return value.strip().rstrip("/")


def _endpoints(spec: JobSpec, settings: TrainerSettings) -> tuple[str | None, str | None]:
    """(simulator URLs comma-separated, judge URL) for the job, both from the operator's endpoint
    sets (the trainer sends its service keys there, so a caller never chooses a host); (None,
    None) for an embedded stack, only when no set is configured."""
    sets = settings.endpoint_sets()
    known = ", ".join(sets) or "none"
    if spec.endpoint is not None and spec.endpoint not in sets:
        raise InvalidArgument(
            f"endpoint: this trainer has no endpoint set {spec.endpoint!r}; its sets: {known}"
        )
    if not sets:
        for name in ("simulator_url", "judge_url"):
            if getattr(spec, name) is not None:
                raise InvalidArgument(
                    f"{name}: this trainer is configured with no simulator or judge service (its "
                    f"jobs run an embedded stack); leave {name} unset"
                )
        return None, None
    if spec.simulator_url is None:
        wanted = None
    else:
        listed = [spec.simulator_url] if isinstance(spec.simulator_url, str) else spec.simulator_url
        wanted = [_url(u) for item in listed for u in item.split(",") if u.strip()]
        if not wanted:
            raise InvalidArgument("simulator_url: give at least one URL, or leave it unset")
    # The set: named, else 'default', else the one set holding the job's simulators.
    chosen = sets.get(spec.endpoint or DEFAULT_ENDPOINT)
    if chosen is None and wanted is not None:
        holding = [e for e in sets.values() if set(wanted) <= {_url(u) for u in e.simulators}]
        chosen = holding[0] if holding else None
    if chosen is None:
        field = "simulator_url" if wanted is not None else "endpoint"
        raise InvalidArgument(
            f"{field}: name the endpoint set to use (this trainer has no 'default' set); its "
            f"sets: {known}"
        )
    allowed = [_url(u) for u in chosen.simulators]
    for url in wanted or []:
        if url not in allowed:
            raise InvalidArgument(
                f"simulator_url: {url[:200]!r} is not a simulator of endpoint set "
                f"{_set_name(sets, chosen)!r}; a job may only use the services the trainer is "
                f"configured with (its sets: {known})"
            )
    if spec.judge_url is not None and _url(spec.judge_url) != _url(chosen.judge_url):
        raise InvalidArgument(
            f"judge_url: {spec.judge_url[:200]!r} is not the judge of endpoint set "
            f"{_set_name(sets, chosen)!r}; a job may only use the services the trainer is "
            f"configured with (its sets: {known})"
        )
    return ",".join(wanted or allowed), chosen.judge_url


def _set_name(sets: dict[str, Endpoints], chosen: Endpoints) -> str:
    return next(name for name, e in sets.items() if e is chosen)


def _config_values(spec: JobSpec, tasks: list[str], job_id: str, settings: TrainerSettings) -> dict[str, Any]:
    values = spec.model_dump(exclude={"job_id", "endpoint", "simulator_url", "judge_url"})
    out = str((Path(settings.trainer_dir) / "jobs" / job_id / "out").resolve())
    return {**values, "tasks": tasks, "policy": _check_policy(spec.policy, settings), "out": out}


def _validated(cfg: GRPOJobConfig) -> GRPOJobConfig:
    try:
        cfg.validate()
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None
    return cfg


def spec_digest(spec: JobSpec) -> str:
    values = spec.model_dump(exclude={"job_id"})
    if values["endpoint"] is None:
        del values["endpoint"]  # the digest of a job submitted before the field existed
    text = json.dumps(values, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """JSON-safe metrics (numpy scalars from the trainer become Python numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def checkpoint_history(out: str) -> list[dict[str, Any]]:
    """Per-step metrics of the steps checkpointed in `out` (from the policy manifest, plain JSON;
    it is written before the training state, so at most one step ahead of it: that step is
    redone on resume and reported again)."""
    try:
        manifest = json.loads((Path(out) / "policy" / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    history = manifest.get("grpo_history") if isinstance(manifest, dict) else None
    return [m for m in history if isinstance(m, dict) and "step" in m] if isinstance(history, list) else []


def job_view(record: JobRecord) -> dict[str, Any]:
    """The API's view of a record (both transports): the server's paths are left out."""
    values = record.fields_dict()
    values.pop("digest")
    values["config"] = {k: v for k, v in record.config.items() if k != "out"}
    values["metrics"] = record.history
    values["last_metrics"] = record.history[-1] if record.history else None
    return values



# ------------------------------------------------------------------ runtime


class TrainerRuntime:
    def __init__(self, settings: TrainerSettings, *, consume: bool | None = None) -> None:
        """`consume`: run jobs here (default: always without Redis; with Redis,
        `settings.queue_worker`)."""
        self.settings = settings
        self.metrics = ServiceMetrics(SERVICE)
        self.store = make_store(settings)
        config = QueueConfig.from_settings(JOB_QUEUE, settings)
        config = dataclasses.replace(
            config,
            concurrency=1,
            # Jobs are durable records: one queued while no worker runs waits for one.
            expect_workers=False,
            max_deliveries=_DELIVERIES,
            # Look for handed-back or orphaned jobs often (one XAUTOCLAIM per second): a job
            # handed back on shutdown is claimable after the retry delay, not min_idle_s / 2.
            claim_interval_s=min(config.claim_every_s, max(1.0, settings.queue_retry_delay_s)),
        )
        self.queue_mode = settings.redis_url is not None
        self.queue: WorkQueue = (
            RedisWorkQueue(config, self.metrics) if self.queue_mode else InProcessQueue(config, self.metrics)
        )
        self.consumer = config.consumer
        self.consume = True if not self.queue_mode else (settings.queue_worker if consume is None else consume)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wmpo-trainer-job")
        self._stops: dict[str, threading.Event] = {}  # per running job: shutdown / lost lease
        self._shutdown = threading.Event()
        self._worker: QueueWorker | None = None
        self._one_job = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        # Records and queue first: an unreachable Redis fails startup with one clear error.
        await self.store.start()
        await self.queue.start()
        if self.consume:
            self._worker = QueueWorker(
                self.queue, self._handle, "trainer", log,
                drain_warning="a trainer job did not stop within %.0f s",
            )
            self._worker.start()
        if not self.queue_mode:
            # The in-process queue died with the last process; its records did not.
            for record in await self.store.list(None, 10**9):
                if not record.final:
                    log.info("resuming job %s (%s, step %d)", record.job_id, record.state, record.step)
                    await self.queue.enqueue(record.job_id, {"job_id": record.job_id})

    async def stop(self) -> None:
        """Stop running jobs at their next step boundary (their checkpoints stay), hand their
        messages back, and close. A job that does not reach a step boundary within
        WMPO_QUEUE_DRAIN_S is abandoned as if the process had died."""
        self._shutdown.set()
        for stop in list(self._stops.values()):
            stop.set()
        if self._worker is not None:
            await self._worker.stop(self.settings.queue_drain_s)
            self._worker = None
        await self.queue.close()
        await self.store.close()
        self._executor.shutdown(wait=False)

    def readiness(self) -> Readiness:
        problem = self.store.problem or self.queue.problem
        if problem:
            return Readiness(False, problem)
        if self._worker is not None and (problem := self._worker.problem):
            return Readiness(False, problem)
        return Readiness(True)

    # ------------------------------------------------------------ API
    async def submit(self, spec: JobSpec | dict[str, Any]) -> tuple[JobRecord, bool]:
        """Validate and queue a job; (record, created). The same job_id with the same spec
        returns the existing job; with another spec it is a Conflict."""
        checked = parse_spec(spec)
        job_id = checked.job_id or f"job-{uuid.uuid4().hex[:16]}"
        cfg = resolve_job(checked, job_id, self.settings)
        digest = spec_digest(checked)
        record, created = await self.store.create(JobRecord(job_id, asdict(cfg), digest, cfg.steps))
        if not created and record.digest != digest:
            raise Conflict(
                f"job id {job_id!r} was already used for a different job; use a new job_id "
                "(ids make submits idempotent)"
            )
        if created or record.state == "queued":  # a lost enqueue is repaired by a resubmit
            await self.queue.enqueue(job_id, {"job_id": job_id})
        if created:
            log.info("job %s queued: %d steps of %s", job_id, cfg.steps, ",".join(cfg.tasks))
        return record, created

    async def get(self, job_id: str, history: bool = True) -> JobRecord:
        record = await self.store.get(job_id, history)
        if record is None:
            raise NotFound(f"no job {job_id!r}; list jobs with GET /v1/jobs")
        return record

    async def list(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        if state is not None and state not in STATES:
            raise InvalidArgument(f"state: must be one of {', '.join(STATES)}, got {state!r}")
        if not 1 <= limit <= self.settings.max_listed_jobs:
            raise InvalidArgument(f"limit: must be in [1, {self.settings.max_listed_jobs}], got {limit}")
        return await self.store.list(state, limit)

    async def cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled now; a running one stops before its next step (its last
        checkpoint stays). Cancelling a finished job changes nothing."""
        record = await self.store.request_cancel(job_id)
        if record is None:
            raise NotFound(f"no job {job_id!r}; list jobs with GET /v1/jobs")
        return record

    async def watch(self, job_id: str, after_step: int = 0) -> AsyncIterator[tuple[str, Any]]:
        """("step", metrics) for every step after `after_step`, ("state", record) when the state
        changes, and last ("end", record) once the job has ended."""
        await self.get(job_id, history=False)  # NotFound before the stream starts
        sent, state = after_step, None
        while True:
            record = await self.get(job_id)
            for metrics in record.history:
                if int(metrics["step"]) > sent:
                    sent = int(metrics["step"])
                    yield "step", metrics
            if record.final:
                yield "end", record
                return
            if record.state != state:
                state = record.state
                yield "state", record
            await asyncio.sleep(self.settings.stream_poll_s)

    async def checkpoint_files(self, job_id: str) -> list[dict[str, Any]]:
        """[{name, size, sha256}] of the job's current policy checkpoint."""
        directory = await self._checkpoint_dir(job_id)
        return await asyncio.to_thread(_describe_files, directory)

    async def checkpoint_file(self, job_id: str, name: str) -> Path:
        """The path of one checkpoint file (only CHECKPOINT_FILES names exist)."""
        if name not in CHECKPOINT_FILES:
            raise NotFound(f"no checkpoint file {name!r}; the files are {', '.join(CHECKPOINT_FILES)}")
        path = await self._checkpoint_dir(job_id) / name
        if not path.is_file():
            raise NotFound(f"job {job_id!r} has no {name} yet")
        return path

    async def _checkpoint_dir(self, job_id: str) -> Path:
        record = await self.get(job_id, history=False)
        directory = Path(record.config["out"]) / "policy"
        if not (directory / "model.safetensors").is_file():
            raise NotFound(
                f"job {job_id!r} has no checkpoint yet ({record.state}, step {record.step} of "
                f"{record.steps}): the first is written when step 1 completes"
            )
        return directory

    # ------------------------------------------------------------ worker
    async def _handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        job_id = str(payload.get("job_id", ""))
        async with self._one_job:
            if self._shutdown.is_set():
                return await self._interrupted(job_id)
            return await self._run(job_id)

    async def _finish(self, job_id: str, state: str, **values: Any) -> dict[str, Any]:
        assert state in FINAL_STATES
        await self.store.update(job_id, state=state, finished_at=time.time(), **values)
        JOBS_FINISHED.labels(SERVICE, state).inc()
        log.info("job %s %s", job_id, state)
        return {"state": state}

    async def _interrupted(self, job_id: str) -> dict[str, Any]:
        """Shutdown: the job goes back to queued (a takeover that is not a restart)."""
        await self.store.update(job_id, state="queued", worker=None)
        if self.queue_mode:
            # Not acknowledged: the message is redelivered (to another replica) after
            # WMPO_QUEUE_RETRY_DELAY_S and the job resumes from its checkpoint there.
            raise Unavailable(f"job {job_id} interrupted by a shutdown; it resumes elsewhere")
        return {"state": "interrupted"}  # the next start queues it again (records on disk)

    async def _run(self, job_id: str) -> dict[str, Any]:
        record = await self.store.get(job_id, history=False)
        if record is None:
            log.error("queued job %s has no record; dropped", job_id)
            return {"state": "missing"}
        if record.final:
            return {"state": record.state}  # cancelled while queued, or a duplicate delivery
        if record.cancel_requested:
            return await self._finish(job_id, "cancelled")
        # Still "running" means the worker that had it died: a restart.
        restarts = record.restarts + (record.state == "running")
        if restarts > self.settings.job_max_restarts:
            return await self._finish(
                job_id,
                "failed",
                restarts=restarts,
                error=f"the job's worker stopped {restarts} times before it finished "
                f"(WMPO_JOB_MAX_RESTARTS={self.settings.job_max_restarts}); its last checkpoint "
                f"(step {record.step}) is kept",
            )
        cfg = GRPOJobConfig(**{k: v for k, v in record.config.items() if k in _CONFIG_FIELDS})
        stale = _unconfigured(cfg, self.settings)
        if stale:  # the operator removed it since the job was queued: no key goes there
            return await self._finish(
                job_id, "failed", error=f"{stale} is no longer one of the trainer's endpoints"
            )
        history = checkpoint_history(cfg.out)
        await self.store.set_history(job_id, history)
        await self.store.update(
            job_id,
            state="running",
            started_at=record.started_at or time.time(),
            attempts=record.attempts + 1,
            restarts=restarts,
            worker=self.consumer,
            resumed_from_step=len(history),
        )
        log.info("job %s running (attempt %d, from step %d)", job_id, record.attempts + 1, len(history))
        stop = self._stops[job_id] = threading.Event()
        RUNNING_JOBS.labels(SERVICE).inc()
        try:
            loop = asyncio.get_running_loop()
            outcome, result = await loop.run_in_executor(self._executor, self._train, job_id, cfg, stop)
        except asyncio.CancelledError:
            stop.set()  # a hard stop or a lost lease: the thread stops at its next step boundary
            raise
        except Exception as exc:
            log.error("job %s failed", job_id, exc_info=exc)
            return await self._finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        finally:
            RUNNING_JOBS.labels(SERVICE).dec()
            self._stops.pop(job_id, None)
        if outcome == "interrupted":
            return await self._interrupted(job_id)
        if outcome == "cancelled":
            return await self._finish(job_id, "cancelled")
        assert result is not None
        return await self._finish(
            job_id, "succeeded", eval_before=result.get("before"), eval_after=result.get("after")
        )

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run a store call on the event loop from the training thread."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _train(
        self, job_id: str, cfg: GRPOJobConfig, stop: threading.Event
    ) -> tuple[str, dict[str, Any] | None]:
        """In the worker thread: ("succeeded", result), ("cancelled", None) or ("interrupted", None)."""
        from services.embedded import job_stack  # only jobs that run an embedded stack need it
        from wmpo.rl.job import run_grpo_job
        from wmpo.rl.trainer import Cancelled

        def cancel_requested() -> bool:
            try:
                return self._call(self.store.cancel_requested(job_id), 10)
            except Exception as exc:  # records unreachable: keep training, checkpoints are local
                log.warning("job %s: could not read its cancel flag (%s)", job_id, exc)
                return False

        def on_step(metrics: dict[str, Any]) -> None:
            STEPS_DONE.labels(SERVICE).inc()
            try:
                self._call(self.store.put_step(job_id, _plain(metrics)), 30)
            except Exception as exc:  # the next attempt re-reads the history from the checkpoint
                log.warning("job %s: could not record step %s (%s)", job_id, metrics.get("step"), exc)

        keys = (self.settings.simulator_api_key, self.settings.judge_api_key)
        try:
            result = run_grpo_job(
                cfg,
                progress=False,
                on_step=on_step,
                should_stop=lambda: stop.is_set() or cancel_requested(),
                simulator_api_key=keys[0].get_secret_value() if keys[0] else None,
                judge_api_key=keys[1].get_secret_value() if keys[1] else None,
                embedded=job_stack,
            )
        except Cancelled:
            return ("cancelled" if cancel_requested() else "interrupted"), None
        return "succeeded", _plain(result)


_CONFIG_FIELDS = {f.name for f in fields(GRPOJobConfig)}


def _unconfigured(cfg: GRPOJobConfig, settings: TrainerSettings) -> str | None:
    """A service URL of the job that the trainer's endpoint sets no longer list, if any."""
    sets = settings.endpoint_sets().values()
    simulators = {_url(u) for e in sets for u in e.simulators}
    judges = {_url(e.judge_url) for e in sets}
    for url in (cfg.simulator_url or "").split(","):
        if url.strip() and _url(url) not in simulators:
            return f"simulator {url}"
    if cfg.judge_url and _url(cfg.judge_url) not in judges:
        return f"judge {cfg.judge_url}"
    return None


def _describe_files(directory: Path) -> list[dict[str, Any]]:
    out = []
    for name in CHECKPOINT_FILES:
        path = directory / name
        if path.is_file():
            data = path.read_bytes()
            out.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return out
