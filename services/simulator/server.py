"""Run the simulator: HTTP (uvicorn) and gRPC in one process over one runtime.

`build_app` gives an ASGI app whose lifespan starts the runtime (engine +
sessions) and the gRPC server, and stops both on shutdown; `serve` loads a
checkpoint and runs it with uvicorn. The checkpoint is loaded before the
server starts, so a bad path fails fast with one clear error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.common.logging import configure_logging
from services.simulator.grpc_api import create_grpc_server
from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SimulatorRuntime
from services.simulator.settings import SimulatorSettings
from wmpo.errors import CheckpointError
from wmpo.sampling.world_model import TorchWorldModel, WorldModel

log = logging.getLogger("wmpo.simulator")


def load_world_model(checkpoint: str | Path) -> WorldModel:
    """The in-process torch backend from a checkpoint directory (CheckpointError if absent)."""
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(
            f"no world-model checkpoint at {path}: train one (wmpo train world-model) or pass "
            "--checkpoint DIR / set WMPO_CHECKPOINT"
        )
    return TorchWorldModel.load(path)


def build_app(
    runtime: SimulatorRuntime, settings: SimulatorSettings, serve_grpc: bool = True
) -> FastAPI:
    """The HTTP app; its lifespan also runs the gRPC server on settings.grpc_port."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        grpc_server = None
        try:
            if serve_grpc:
                grpc_server, port = create_grpc_server(runtime, settings)
                await grpc_server.start()
                app.state.grpc_port = port
                log.info("gRPC listening on %s:%d", settings.host, port)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(settings.grpc_grace_s)
            await runtime.stop()

    return create_simulator_app(settings, runtime, lifespan=lifespan)


def serve(settings: SimulatorSettings, world_model: WorldModel | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully, then re-raise)."""
    import uvicorn

    configure_logging(settings.log_level)
    model = world_model or load_world_model(settings.checkpoint)
    runtime = SimulatorRuntime(model, settings)
    app = build_app(runtime, settings)
    log.info("HTTP listening on %s:%d", settings.host, settings.port)
    # log_config=None: uvicorn's loggers propagate to our JSON handler.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, lifespan="on")
