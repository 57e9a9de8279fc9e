"""The optimizer engine: every tick is ONE optimization step of every plan in flight.

A plan runs in three moves (`wmpo.optimize.planner.Planner`): `prepare` (encode the start
frame, build the target future, initialise the latent), then `steps` optimization steps,
then `finish` (decode the latent into actions, imagine the future under them). The middle
move is what costs (a forward and a backward of the generator per step), so it is batched:
each plan's next step is one item of the shared `services.common.batching.BatchingEngine`,
whose batch runs `Planner.step` once over every plan in it. Plans join and leave between
ticks: a plan that has done its steps leaves, one just prepared joins the next tick.

To keep plans in the same ticks, a plan submits its next step only at a tick boundary:
while a step batch runs, a plan that became ready (a new one) waits for it to end, so that
it and the plans of that batch queue together; the batch then starts as soon as every plan
that is optimizing has queued (`full`), or `max_wait_ms` after the first one did. Without
this, a plan prepared during a tick would queue alone and the plans would alternate ticks.

`prepare` and `finish` run on the same model thread (`BatchingEngine.call`), one request at a
time: they are one forward each, cheap next to the steps.

Admission is bounded in plans: a plan holds one unit from `open` until it ends (prepared,
optimized, finished, failed or cancelled); past `max_concurrent_plans` new plans get
`ResourceExhausted` (429 with Retry-After / RESOURCE_EXHAUSTED). A plan whose caller goes
away (`PlanRun.close`, an HTTP disconnect, a gRPC cancel) stops: its queued step is dropped;
a step already in a running batch finishes and the plan then ends without finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.common.batching import (
    BatchingConfig,
    BatchingEngine,
    BatchStats,
    Item,
    Reservation,
    Wording,
    check_engine_config,
    engine_config_from_settings,
)
from services.common.errors import (
    Internal,
    InvalidArgument,
    ServiceError,
    Unavailable,
    internal_message,
)
from services.common.logging import request_id_var
from services.common.metrics import ServiceMetrics
from wmpo.optimize.latent import PlanProblem
from wmpo.optimize.planner import Planner, PlanRequest, PlanResult

log = logging.getLogger("wmpo.optimizer.engine")

_WORDING = Wording("optimizer", "plans", "in flight", "WMPO_MAX_CONCURRENT_PLANS")


@dataclass(frozen=True)
class OptimizerEngineConfig:
    max_batch_size: int = 16  # plans per optimization step
    max_wait_ms: float = 5.0  # how long the first queued plan waits for the others
    max_concurrent_plans: int = 32  # admitted plans before 429

    def __post_init__(self) -> None:
        check_engine_config(self)

    @classmethod
    def from_settings(cls, settings: Any) -> OptimizerEngineConfig:
        return engine_config_from_settings(cls, settings)


@dataclass(frozen=True)
class PlanProgress:
    """One optimization step of one plan: the objective before its update."""

    step: int  # 1-based
    steps: int
    objective: float
    distance: float
    batch_plans: int  # plans in that step's batch


@dataclass
class PlanOutcome:
    result: PlanResult
    steps: int
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float]


@dataclass
class EngineStats(BatchStats):
    """The batching engine's counts (one model call = one optimization step of a batch)."""

    plans_started: int = 0
    plans_finished: int = 0
    plans_cancelled: int = 0
    step_batches: list[int] = field(default_factory=list)  # plans per step call, the last 1000

    @property
    def step_calls(self) -> int:
        return self.model_calls


def _strings(record: dict[str, Any]) -> dict[str, str]:
    """Strings only: the proto map and the HTTP body carry the same record."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in record.items()}


class PlanRun:
    """One admitted plan running in the engine: `events()` (progress, then the outcome) or
    `result()`, and `close()` however the caller ends (cancels the plan, frees its slot)."""

    def __init__(self, engine: OptimizerEngine, request: PlanRequest, steps: int,
                 reservation: Reservation) -> None:
        self.request = request
        self.steps = steps
        self._reservation = reservation
        self._events: asyncio.Queue[PlanProgress | PlanOutcome | BaseException] = asyncio.Queue()
        self.task = asyncio.create_task(engine._drive(self), name="wmpo-optimizer-plan")
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[PlanOutcome]) -> None:
        self._reservation.release()
        if task.cancelled():
            self._events.put_nowait(Unavailable("the plan was cancelled"))
        elif (exc := task.exception()) is not None:
            self._events.put_nowait(exc)

    def progress(self, event: PlanProgress | PlanOutcome) -> None:
        self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[PlanProgress | PlanOutcome]:
        """Progress per step as it happens, then the outcome; an error is raised."""
        while True:
            event = await self._events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, PlanOutcome):
                return

    async def result(self) -> PlanOutcome:
        return await asyncio.shield(self.task)

    def close(self) -> None:
        """Cancel the plan if it is still running (its caller went away)."""
        if not self.task.done():
            self.task.cancel()


class OptimizerEngine:
    """Owns the planner. `start()` in the event loop that serves requests, `stop()` on shutdown."""

    def __init__(self, planner: Planner, config: OptimizerEngineConfig | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.planner = planner
        self.config = config or OptimizerEngineConfig()
        self.stats = EngineStats()
        cfg = self.config
        self._optimizing = 0  # plans between prepare and finish
        self._items: set[Item[PlanProblem, tuple[float, float]]] = set()  # submitted steps
        self._runs: set[PlanRun] = set()
        self._batcher: BatchingEngine[PlanProblem, tuple[float, float]] = BatchingEngine(
            self._step,
            BatchingConfig(cfg.max_batch_size, cfg.max_wait_ms, cfg.max_concurrent_plans),
            _WORDING,
            full=lambda queued: len(queued) >= self._optimizing,
            metrics=metrics,
            stats=self.stats,
        )

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._batcher.start()

    async def stop(self) -> None:
        """Cancel the plans in flight, then stop the batching engine (the running step ends)."""
        runs = list(self._runs)
        for run in runs:
            run.close()
        for run in runs:
            with contextlib.suppress(BaseException):
                await run.task
        await self._batcher.stop()

    @property
    def running(self) -> bool:
        return self._batcher.running

    @property
    def admitted(self) -> int:
        """Plans admitted (preparing, optimizing or finishing)."""
        return self._batcher.admitted

    @property
    def optimizing(self) -> int:
        return self._optimizing

    # ------------------------------------------------------------ plans
    def open(self, request: PlanRequest, steps: int) -> PlanRun:
        """Admit a validated plan (or raise ResourceExhausted) and start it."""
        reservation = self._batcher.reserve(1)
        run = PlanRun(self, request, steps, reservation)
        self._runs.add(run)
        run.task.add_done_callback(lambda _: self._runs.discard(run))
        return run

    async def _drive(self, run: PlanRun) -> PlanOutcome:
        rid = request_id_var.get()
        self.stats.plans_started += 1
        t0 = time.perf_counter()
        try:
            [problem] = await self._batcher.call(self.planner.prepare, [run.request])
            t1 = time.perf_counter()
            queue_s = model_s = 0.0
            batches: list[int] = []
            self._optimizing += 1
            try:
                while problem.steps_done < run.steps:
                    await self._tick_boundary()
                    (item,) = self._batcher.submit([problem])
                    self._items.add(item)
                    try:
                        [(objective, distance)] = await self._batcher.results([item])
                    finally:
                        self._items.discard(item)
                    queue_s += item.queue_s
                    model_s += item.model_s
                    batches.append(item.batch_items)
                    run.progress(PlanProgress(problem.steps_done, run.steps, objective, distance,
                                              item.batch_items))
            finally:
                self._optimizing -= 1
            t2 = time.perf_counter()
            [result] = await self._batcher.call(self.planner.finish, [problem])
            t3 = time.perf_counter()
        except asyncio.CancelledError:
            self.stats.plans_cancelled += 1
            raise
        except ValueError as exc:  # the planner's own validation
            raise InvalidArgument(str(exc)) from None
        except ServiceError:
            raise
        except Exception as exc:
            log.error("plan failed", exc_info=exc, extra={"request_id": rid})
            raise Internal(internal_message(rid)) from None
        self.stats.plans_finished += 1
        timing = {
            "prepare_s": t1 - t0,
            "optimize_s": t2 - t1,
            "step_queue_s": queue_s,
            "step_model_s": model_s,
            "finish_s": t3 - t2,
            "total_s": t3 - t0,
            "mean_batch_plans": sum(batches) / len(batches) if batches else 0.0,
        }
        result.timing = timing
        req = run.request
        provenance = _strings({
            **self.planner.provenance(),
            "steps": run.steps,
            "seed": req.seed,
            "init": "actions" if req.init_actions is not None else "random",
            "target": "instruction" if req.target_frames is None
            else "goal_image" if len(req.target_frames) == 1 else "frames",
        })
        outcome = PlanOutcome(result, run.steps, req.seed, provenance, timing)
        run.progress(outcome)
        return outcome

    async def _tick_boundary(self) -> None:
        """Wait for a running step batch to end, so this plan queues with that batch's plans."""
        running = [i.future for i in self._items if i.started and not i.future.done()]
        if running:
            await asyncio.wait(running)

    def _step(self, problems: list[PlanProblem]) -> list[tuple[float, float]]:
        """One optimization step of every plan of the batch (on the model thread)."""
        self.planner.step(problems)
        self.stats.step_batches = [*self.stats.step_batches[-999:], len(problems)]
        return [(p.trace[-1], p.distance[-1]) for p in problems]
