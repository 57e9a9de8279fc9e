"""Run the trainer: HTTP (uvicorn) and gRPC in one process over one runtime.

`build_app` gives an ASGI app whose lifespan starts the runtime (job records,
job queue, worker) and the gRPC server, and stops both on shutdown (running
jobs stop at their next step boundary and resume later, here or on another
replica); `serve` runs it with uvicorn. With Redis and WMPO_QUEUE_WORKER=false
a replica only serves the API (submits, streams, downloads) and runs no jobs.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from services.common.app import KEEP_ALIVE_S, runtime_lifespan
from services.common.logging import configure_logging
from services.trainer.grpc_api import create_grpc_server
from services.trainer.http_api import create_trainer_app
from services.trainer.runtime import TrainerRuntime
from services.trainer.settings import TrainerSettings

log = logging.getLogger("wmpo.trainer")


def build_app(runtime: TrainerRuntime, settings: TrainerSettings, serve_grpc: bool = True) -> FastAPI:
    """The HTTP app; its lifespan also runs the gRPC server on settings.grpc_port."""
    grpc_server = (lambda: create_grpc_server(runtime, settings)) if serve_grpc else None
    lifespan = runtime_lifespan(runtime, grpc_server, settings.grpc_grace_s)
    return create_trainer_app(settings, runtime, lifespan=lifespan)


def serve(settings: TrainerSettings) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully)."""
    import uvicorn

    configure_logging(settings.log_level)
    app = build_app(TrainerRuntime(settings), settings)
    log.info("HTTP listening on %s:%d", settings.host, settings.port)
    # log_config=None: uvicorn's loggers propagate to our JSON handler.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
