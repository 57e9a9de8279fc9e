"""The object both transports share: the engine, the session manager and the imagine queue.

Built once per process (in the app lifespan, see `server`); HTTP and gRPC
handlers only validate, call it and map results and errors.

Imagine requests go through a work queue (`imagine_queue`): in process by
default, Redis Streams with WMPO_REDIS_URL. In queue mode a replica both
enqueues and consumes unless WMPO_QUEUE_WORKER=false (an API-only replica);
`wmpo serve simulator --worker` runs a replica that only consumes. Sessions
are always local to the replica.

Verify before execute (`verify`, see `services.simulator.verify`) runs here, in
the replica that accepted the request, after the queue's result: the queued
payload stays frames-only (a worker needs no judge), and a retried request
id gets its stored frames judged again (the classifier is deterministic, so
the same verdict).

Outcomes (`report_outcome`, see `services.simulator.drift`): every `/v1/imagine`
result is kept by its request id in a bounded TTL store (memory, or Redis with
WMPO_REDIS_URL so any replica can take the report), and a reported outcome is
compared with it; the drift monitor exports the figures as metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from services.common.health import Readiness
from services.common.metrics import ServiceMetrics
from services.common.queues import QueueWorker, WorkQueue, make_queue
from services.simulator.drift import (
    Distance,
    DriftMonitor,
    Imagined,
    ImaginedStore,
    MemoryImaginedStore,
    Outcome,
    OutcomeFigures,
    RedisImaginedStore,
    compare,
)
from services.simulator.engine import (
    EngineConfig,
    ImagineChunk,
    ImagineInput,
    ImagineResult,
    ImagineRun,
    SimulatorEngine,
    seed_for_request,
)
from services.simulator.imagine_queue import (
    IMAGINE_QUEUE,
    imagine_handler,
    imagine_payload,
    imagine_result,
)
from services.simulator.sessions import SessionConfig, SessionManager
from services.simulator.settings import SimulatorSettings
from services.simulator.verify import (
    NO_JUDGE,
    ImagineJudge,
    Verification,
    check_verify_threshold,
)
from wmpo.sampling.world_model import WorldModel

SERVICE = "simulator"
VERSION = "0.1.0"

log = logging.getLogger("wmpo.simulator.runtime")


class SimulatorRuntime:
    def __init__(
        self,
        world_model: WorldModel,
        settings: SimulatorSettings,
        *,
        consume: bool | None = None,
    ) -> None:
        """`consume`: run imagine work from the queue here (default: always in process;
        with Redis, `settings.queue_worker`)."""
        self.settings = settings
        self.metrics = ServiceMetrics(SERVICE)
        self.engine = SimulatorEngine(
            world_model, EngineConfig.from_settings(settings), self.metrics
        )
        self.sessions = SessionManager(
            self.engine, SessionConfig.from_settings(settings), self.metrics
        )
        self.queue_mode = settings.redis_url is not None
        self.imagine_queue: WorkQueue = make_queue(IMAGINE_QUEUE, settings, self.metrics)
        # In process, nobody else would run the work: this replica always consumes.
        self.consume = (
            True if not self.queue_mode else (settings.queue_worker if consume is None else consume)
        )
        self._worker: QueueWorker | None = None
        key = settings.judge_api_key.get_secret_value() if settings.judge_api_key else None
        self.judge: ImagineJudge | None = (
            ImagineJudge(settings.judge_url, key) if settings.judge_url else None
        )
        self.imagined: ImaginedStore = (
            RedisImaginedStore(settings.redis_url, settings.queue_prefix, settings.outcome_ttl_s)
            if settings.redis_url
            else MemoryImaginedStore(settings.outcome_ttl_s, settings.outcome_max_records)
        )
        self.drift = DriftMonitor(SERVICE, settings.drift_window, settings.drift_log)
        self._distance: Distance | None = _feature_distance(world_model)

    async def start(self) -> None:
        # The queue first: an unreachable Redis fails startup before the model runs.
        await self.imagine_queue.start()
        await self.imagined.start()
        if self.judge is not None:
            self.judge.start()
        await self.engine.start()
        await self.sessions.start()
        if self.consume:
            handler = imagine_handler(self.engine, wait_for_capacity=self.queue_mode)
            self._worker = QueueWorker(self.imagine_queue, handler, "imagine", log)
            self._worker.start()

    async def stop(self) -> None:
        if self._worker is not None:
            await self._worker.stop(self.settings.queue_drain_s)
            self._worker = None
        # Sessions next: nothing may step them while the engine drains.
        await self.sessions.stop()
        await self.engine.stop()
        await self.imagine_queue.close()
        await self.imagined.close()
        if self.judge is not None:
            await self.judge.close()

    async def imagine(
        self,
        inputs: ImagineInput,
        horizon_chunks: int = 0,
        seed: int | None = None,
        request_id: str = "",
        *,
        instruction: str = "",
        verify: bool = False,
        verify_threshold: float | None = None,
        record_id: str = "",
    ) -> ImagineResult:
        """The model's checks here (`inputs` passed the model-free ones at the transport), then
        the imagine queue; `request_id` makes retries idempotent.

        Without a request id the request gets a fresh one (no idempotency);
        without a seed, the seed is derived from the request id. `verify`: the
        judge scores every candidate (`result.verification`, see `verified`).
        `record_id`: the id the caller sees (default `request_id`); what was imagined
        is kept under it for an outcome report.
        """
        self.check_verify(verify, verify_threshold, instruction)
        key = request_id or f"anon-{uuid.uuid4().hex}"
        if seed is None:
            seed = seed_for_request(key)
        frame, cands, seed = self.engine.prepare_imagine(inputs, horizon_chunks, seed)
        started = time.perf_counter()
        out = await self.imagine_queue.submit(key, imagine_payload(frame, cands, seed))
        result = imagine_result(out, time.perf_counter() - started)
        if verify:
            verification = await self.verify(frame, result.frames, instruction, verify_threshold)
            result = self.verified(result, verification)
        await self.record_imagined(record_id or request_id, result, instruction)
        return result

    # ------------------------------------------------------------ outcomes
    async def record_imagined(
        self, record_id: str, result: ImagineResult, instruction: str
    ) -> None:
        """Keep what was imagined for an outcome report; a store outage never fails imagine."""
        if not record_id:
            return
        v = result.verification
        imagined = Imagined(
            frames=result.frames,
            confidences=list(v.confidences) if v else None,
            instruction=instruction,
            frame_stride=self.engine.frame_stride,
            world_model=result.provenance.get("world_model_sha256", ""),
            created_at=time.time(),
        )
        try:
            await self.imagined.put(record_id, imagined)
        except Unavailable as exc:
            log.warning("imagine %s not kept for outcomes: %s", record_id, exc.message)

    async def report_outcome(self, outcome: Outcome) -> OutcomeFigures:
        """Compare a real outcome with what its imagine request imagined (see `drift`).

        Unknown or expired request id: NotFound; a candidate or frames that do not fit:
        InvalidArgument; a repeat of an accepted report: its stored answer (`replayed`);
        another report for the same request: Conflict.
        """
        try:
            imagined = await self.imagined.get(outcome.request_id)
            if imagined is None:
                raise NotFound(
                    f"no imagine request {outcome.request_id!r} to compare with: unknown, or "
                    f"older than the outcome TTL ({self.settings.outcome_ttl_s:g} s, "
                    "WMPO_OUTCOME_TTL_S); report outcomes of /v1/imagine requests by the "
                    "request_id of their response"
                )
            figures = await asyncio.to_thread(compare, outcome, imagined, self._distance)
            stored = await self.imagined.claim(
                outcome.request_id, outcome.digest(), figures.to_json()
            )
        except ServiceError:
            self.drift.count("rejected")
            raise
        if stored is not None:
            self.drift.count("replayed")
            return OutcomeFigures(**{**stored, "replayed": True})
        await self.drift.observe(figures)
        return figures

    def open_imagine_stream(
        self,
        inputs: ImagineInput,
        horizon_chunks: int = 0,
        seed: int | None = None,
        *,
        instruction: str = "",
        verify: bool = False,
        verify_threshold: float | None = None,
        record_id: str = "",
    ) -> ImagineStream:
        """Imagine chunk by chunk, for the streaming routes of both transports. Validation and
        admission happen here, before the first chunk, so they are real 4xx / status codes; the
        stream yields each chunk, then the result (with the judge's answer if `verify`); what it
        imagined is kept under `record_id` for an outcome report once the stream is complete."""
        self.check_verify(verify, verify_threshold, instruction)
        run = self.engine.start_imagine(*self.engine.prepare_imagine(inputs, horizon_chunks, seed))
        return ImagineStream(self, run, instruction, verify, verify_threshold, record_id)

    # ------------------------------------------------------------ verify
    def check_verify(self, verify: bool, threshold: float | None, instruction: str) -> None:
        """Refuse, before any work, a verify request this deployment or request cannot serve."""
        if not verify:
            if threshold is not None:
                raise InvalidArgument("verify_threshold applies only with verify=true")
            return
        if self.judge is None:
            raise FailedPrecondition(NO_JUDGE)
        if not instruction.strip():
            raise InvalidArgument(
                "verify needs the instruction: the task the judge scores the candidates against"
            )
        check_verify_threshold(threshold)

    async def verify(
        self,
        start_frame: np.ndarray,
        frames: np.ndarray,
        instruction: str,
        threshold: float | None = None,
    ) -> Verification:
        """The judge's answer on frames (N, T, H, W, 3) imagined from the checked start_frame
        (1, H, W, 3) of an imagine request."""
        if self.judge is None:
            raise FailedPrecondition(NO_JUDGE)
        return await self.judge.verify(
            start_frame, frames, instruction, self.engine.frame_stride, threshold
        )

    @staticmethod
    def verified(result: ImagineResult, verification: Verification) -> ImagineResult:
        """`result` with the judge's answer: provenance merged, its time in timing."""
        timing = dict(result.timing)
        timing["judge"] = verification.seconds
        timing["total"] = timing.get("total", 0.0) + verification.seconds
        return dataclasses.replace(
            result,
            provenance={**result.provenance, **verification.provenance},
            timing=timing,
            verification=verification,
        )

    def readiness(self) -> Readiness:
        if not self.engine.running:
            return Readiness(False, "the simulator engine is not running")
        problem = self.imagine_queue.problem
        if problem:
            return Readiness(False, problem)
        if self._worker is not None and (problem := self._worker.problem):
            return Readiness(False, problem)
        # A remote backend (WMPO_BACKEND=triton) is ready only while its server's models are.
        backend_problem = getattr(self.engine.world_model, "problem", None)
        problem = backend_problem() if callable(backend_problem) else None
        if problem:
            return Readiness(False, problem)
        return Readiness(True)


def _feature_distance(world_model: WorldModel) -> Distance | None:
    """The perceptual distance on the world model's own encoder (`wmpo.judge.perceptual`);
    None for a backend without an in-process autoencoder."""
    ae = getattr(world_model, "ae", None)
    if ae is None:
        return None
    from wmpo.judge.perceptual import FeatureDistance

    hashes = getattr(world_model, "hashes", {}) or {}
    return FeatureDistance(ae, hashes.get("world_model_sha256", ""))


class ImagineStream:
    """An admitted streaming imagine: `events()` yields each `ImagineChunk` as it is generated,
    then the `ImagineResult` (frames left out: they were streamed); `close()` releases it (a
    disconnected caller's queued rows are dropped)."""

    def __init__(
        self,
        runtime: SimulatorRuntime,
        run: ImagineRun,
        instruction: str,
        verify: bool,
        threshold: float | None,
        record_id: str = "",
    ) -> None:
        self.runtime, self.run = runtime, run
        self.instruction, self.verify, self.threshold = instruction, verify, threshold
        self.record_id = record_id

    @property
    def n_candidates(self) -> int:
        return self.run.n_candidates

    async def events(self) -> AsyncIterator[ImagineChunk | ImagineResult]:
        kept: list[np.ndarray] = []  # the chunks, for the judge and the outcome record
        async for chunk in self.run.chunks():
            kept.append(chunk.frames)
            yield chunk
        provenance, timing = self.run.summary()
        result = ImagineResult(np.empty(0, np.uint8), self.run.seed, provenance, timing)
        frames = np.concatenate(kept, axis=1)  # (N, T, H, W, 3)
        if self.verify:
            verification = await self.runtime.verify(
                self.run.frame, frames, self.instruction, self.threshold
            )
            result = self.runtime.verified(result, verification)
        await self.runtime.record_imagined(
            self.record_id, dataclasses.replace(result, frames=frames), self.instruction
        )
        yield result

    def close(self) -> None:
        self.run.close()
