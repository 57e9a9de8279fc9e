"""The object both transports share: the engine, the session manager and the imagine queue.

Built once per process (in the app lifespan, see `server`); HTTP and gRPC
handlers only validate, call it and map results and errors.

Imagine requests go through a work queue (`imagine_queue`): in process by
default, Redis Streams with WMPO_REDIS_URL. In queue mode a replica both
enqueues and consumes unless WMPO_QUEUE_WORKER=false (an API-only replica);
`wmpo serve simulator --worker` runs a replica that only consumes. Sessions
are always local to the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np

from services.common.health import Readiness
from services.common.metrics import ServiceMetrics
from services.common.queues import WorkQueue, make_queue
from services.simulator.engine import (
    EngineConfig,
    ImagineResult,
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
        self._worker: asyncio.Task[None] | None = None
        self._worker_stop = asyncio.Event()

    async def start(self) -> None:
        # The queue first: an unreachable Redis fails startup before the model runs.
        await self.imagine_queue.start()
        await self.engine.start()
        await self.sessions.start()
        if self.consume:
            handler = imagine_handler(self.engine, wait_for_capacity=self.queue_mode)
            self._worker_stop = asyncio.Event()
            self._worker = asyncio.create_task(
                self.imagine_queue.serve(handler, stop=self._worker_stop),
                name="wmpo-imagine-worker",
            )
            self._worker.add_done_callback(self._worker_done)

    @staticmethod
    def _worker_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the imagine queue worker stopped", exc_info=task.exception())

    async def stop(self) -> None:
        if self._worker is not None:
            # Graceful: finish (and acknowledge) what was taken; past the drain
            # time, cancel, leaving the rest pending for another replica.
            self._worker_stop.set()
            try:
                await asyncio.wait_for(self._worker, self.settings.queue_drain_s)
            except TimeoutError:
                log.warning("imagine worker did not drain in %.0f s", self.settings.queue_drain_s)
            except Exception:
                pass  # already logged by _worker_done
            self._worker = None
        # Sessions next: nothing may step them while the engine drains.
        await self.sessions.stop()
        await self.engine.stop()
        await self.imagine_queue.close()

    async def imagine(
        self,
        start_frames: np.ndarray,
        candidates: np.ndarray,
        horizon_chunks: int = 0,
        seed: int | None = None,
        request_id: str = "",
    ) -> ImagineResult:
        """Validate here, run through the imagine queue; `request_id` makes retries idempotent.

        Without a request id the request gets a fresh one (no idempotency);
        without a seed, the seed is derived from the request id.
        """
        key = request_id or f"anon-{uuid.uuid4().hex}"
        if seed is None:
            seed = seed_for_request(key)
        frame, cands, seed = self.engine.prepare_imagine(
            start_frames, candidates, horizon_chunks, seed
        )
        started = time.perf_counter()
        out = await self.imagine_queue.submit(key, imagine_payload(frame, cands, seed))
        return imagine_result(out, time.perf_counter() - started)

    def readiness(self) -> Readiness:
        if not self.engine.running:
            return Readiness(False, "the simulator engine is not running")
        problem = self.imagine_queue.problem
        if problem:
            return Readiness(False, problem)
        if self._worker is not None and self._worker.done():
            return Readiness(False, "the imagine queue worker stopped")
        return Readiness(True)
