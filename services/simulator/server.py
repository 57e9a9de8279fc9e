"""Run the simulator: HTTP (uvicorn) and gRPC in one process over one runtime.

`build_app` gives an ASGI app whose lifespan starts the runtime (engine +
sessions + imagine queue) and the gRPC server, and stops both on shutdown;
`serve` loads a checkpoint and runs it with uvicorn. The checkpoint is loaded
before the server starts, so a bad path fails fast with one clear error.

`build_worker_app` / `serve(..., worker=True)` is a pure queue worker
(`wmpo serve simulator --worker`): it consumes imagine work from Redis and
serves only health, readiness and metrics over HTTP (for probes and the
autoscaler), no simulator API and no gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.common.app import KEEP_ALIVE_S, create_app
from services.common.logging import configure_logging
from services.simulator.grpc_api import create_grpc_server
from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SERVICE, VERSION, SimulatorRuntime
from services.simulator.settings import SimulatorSettings
from wmpo.errors import CheckpointError, ConfigError
from wmpo.sampling.world_model import TorchWorldModel, WorldModel

log = logging.getLogger("wmpo.simulator")


def load_world_model(
    checkpoint: str | Path,
    *,
    sampler_steps: int | None = None,
    action_guidance: float | None = None,
) -> WorldModel:
    """The in-process torch backend from a checkpoint directory (CheckpointError if absent).

    `sampler_steps` and `action_guidance`, when given, replace the checkpoint's sampler
    settings (speed against fidelity and action following; see SimulatorSettings).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(
            f"no world-model checkpoint at {path}: train one (wmpo train world-model) or pass "
            "--checkpoint DIR / set WMPO_CHECKPOINT"
        )
    return TorchWorldModel.load(path).with_sampler(sampler_steps, action_guidance)


def world_model_from_settings(settings: SimulatorSettings) -> WorldModel:
    """`load_world_model` with the checkpoint and sampler overrides of the settings."""
    return load_world_model(
        settings.checkpoint,
        sampler_steps=settings.sampler_steps,
        action_guidance=settings.action_guidance,
    )


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


def build_worker_app(runtime: SimulatorRuntime, settings: SimulatorSettings) -> FastAPI:
    """A pure queue worker: the runtime consumes imagine work; HTTP has only probes and metrics."""
    if not settings.redis_url:
        raise ConfigError(
            "a queue worker needs Redis: set WMPO_REDIS_URL (or --redis-url); without it "
            "the simulator runs its queue in process (serve without --worker)"
        )
    if not runtime.consume:
        raise ConfigError("a queue worker's runtime must consume (SimulatorRuntime(consume=True))")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = create_app(
        settings,
        service=f"{SERVICE}-worker",
        version=VERSION,
        readiness=runtime.readiness,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    return app


def serve(
    settings: SimulatorSettings, world_model: WorldModel | None = None, worker: bool = False
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully, then re-raise).

    `worker`: a pure queue worker (see `build_worker_app`).
    """
    import uvicorn

    configure_logging(settings.log_level)
    model = world_model or world_model_from_settings(settings)
    if worker:
        runtime = SimulatorRuntime(model, settings, consume=True)
        app = build_worker_app(runtime, settings)
    else:
        runtime = SimulatorRuntime(model, settings)
        app = build_app(runtime, settings)
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
