"""The queue worker every service runs: one background task consuming a `WorkQueue`.

Each runtime (simulator, judge, optimizer, trainer) starts one when it consumes its queue and
stops it first on shutdown. Stopping is graceful: the queue finishes (and acknowledges) what it
took; past the drain time the task is cancelled, leaving the rest pending for another replica.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.queues.base import Handler, WorkQueue


class QueueWorker:
    """`queue.serve(handler)` in a task named `wmpo-{name}-worker`; a crash is logged on `log`
    and shows as `problem` (readiness) until the worker is stopped."""

    def __init__(
        self,
        queue: WorkQueue,
        handler: Handler,
        name: str,
        log: logging.Logger,
        *,
        drain_warning: str | None = None,
    ) -> None:
        """`drain_warning`: the %-format logged with the drain time when it runs out."""
        self.queue = queue
        self.handler = handler
        self.name = name
        self.log = log
        self.drain_warning = drain_warning or f"{name} worker did not drain in %.0f s"
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            self.queue.serve(self.handler, stop=self._stop), name=f"wmpo-{self.name}-worker"
        )
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("the %s queue worker stopped", self.name, exc_info=task.exception())

    @property
    def problem(self) -> str | None:
        """Why this replica cannot consume (its worker task ended), or None."""
        if self._task is not None and self._task.done():
            return f"the {self.name} queue worker stopped"
        return None

    async def stop(self, drain_s: float) -> None:
        """Ask the worker to stop and wait up to `drain_s` seconds, then cancel it."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), drain_s)
        except TimeoutError:
            self.log.warning(self.drain_warning, drain_s)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception:
            pass  # already logged by _done
