"""Run the trainer: HTTP (uvicorn) and gRPC in one process over one runtime.

`build_app` gives an ASGI app whose lifespan starts the runtime (job records,
job queue, worker) and the gRPC server, and stops both on shutdown (running
jobs stop at their next step boundary and resume later, here or on another
replica); `serve` runs it with uvicorn. With Redis and WMPO_QUEUE_WORKER=false
a replica only serves the API (submits, streams, downloads) and runs no jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from services.common.app import run_app, service_app
from services.common.logging import configure_logging
from services.embedded import serve_app_in_thread
from services.trainer.grpc_api import create_grpc_server
from services.trainer.http_api import create_trainer_app
from services.trainer.runtime import TrainerRuntime
from services.trainer.settings import TrainerSettings

log = logging.getLogger("wmpo.trainer")


def build_app(runtime: TrainerRuntime, settings: TrainerSettings, serve_grpc: bool = True) -> FastAPI:
    """The HTTP app; its lifespan also runs the gRPC server on settings.grpc_port."""
    return service_app(runtime, settings, create_trainer_app, create_grpc_server if serve_grpc else None)


@dataclass(frozen=True)
class EmbeddedTrainer:
    http_url: str  # http://127.0.0.1:PORT
    grpc_target: str  # 127.0.0.1:PORT
    runtime: TrainerRuntime


@contextmanager
def serve_trainer_in_thread(
    settings: TrainerSettings, start_timeout_s: float = 60.0
) -> Iterator[EmbeddedTrainer]:
    """Serve the trainer in a background thread (free ports with port 0; its jobs use
    ``settings``' endpoint sets, or an embedded stack per job) until the block ends; on exit
    running jobs stop at their next step boundary."""
    runtime = TrainerRuntime(settings)
    app = build_app(runtime, settings)
    with serve_app_in_thread(app, settings, "trainer", start_timeout_s) as (http_url, grpc_target):
        yield EmbeddedTrainer(http_url, grpc_target, runtime)


def serve(settings: TrainerSettings) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully)."""
    configure_logging(settings.log_level)
    run_app(build_app(TrainerRuntime(settings), settings), settings)
