"""Run the action optimizer: HTTP (uvicorn) and gRPC in one process over one runtime.

`build_app` gives an ASGI app whose lifespan starts the runtime (the engine) and the gRPC
server, and stops both on shutdown; `serve` runs it with uvicorn. The checkpoints are loaded
before the server starts (`load_planner`), so a missing or mismatched one fails fast with one
clear error.

`build_worker_app` / `serve(..., worker=True)` is a pure queue worker (`wmpo serve optimizer
--worker`): it consumes queued plans from Redis and serves only health, readiness and metrics
over HTTP, no plan API and no gRPC.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.common.app import run_app, service_app, worker_app
from services.common.logging import configure_logging
from services.optimizer.grpc_api import create_grpc_server
from services.optimizer.http_api import create_optimizer_app
from services.optimizer.runtime import SERVICE, VERSION, OptimizerRuntime
from services.optimizer.settings import OptimizerSettings
from wmpo.errors import CheckpointError, ConfigError
from wmpo.optimize.planner import Planner, PlannerConfig


def load_planner(settings: OptimizerSettings) -> Planner:
    """The planner from the settings' checkpoints; ConfigError / CheckpointError naming what
    is missing."""
    if not settings.generator or not settings.trajectory_vae:
        raise ConfigError(
            "the optimizer needs a plan generator and its trajectory VAE: set WMPO_GENERATOR and "
            "WMPO_TRAJECTORY_VAE (or --generator/--trajectory-vae; `wmpo serve optimizer` uses the "
            "bundled ones unless they are set blank), or train them with `wmpo train trajectory-vae` "
            "and `wmpo train world-model --trajectory-vae ...`"
        )
    for name, path in (("generator", settings.generator), ("trajectory VAE", settings.trajectory_vae),
                       ("inverse-dynamics model", settings.inverse_dynamics), ("world model", settings.world_model)):
        if path is not None and not Path(path).exists():
            raise CheckpointError(f"no {name} checkpoint at {path}")
    return Planner.load(settings.generator, settings.trajectory_vae, settings.inverse_dynamics,
                        PlannerConfig(checkpoint=settings.activation_checkpointing,
                                      anchor=settings.anchor_init),
                        world_model=settings.world_model)


def build_app(runtime: OptimizerRuntime, settings: OptimizerSettings, serve_grpc: bool = True) -> FastAPI:
    """The HTTP app; its lifespan also runs the gRPC server on settings.grpc_port."""
    return service_app(runtime, settings, create_optimizer_app, create_grpc_server if serve_grpc else None)


def build_worker_app(runtime: OptimizerRuntime, settings: OptimizerSettings) -> FastAPI:
    """A pure queue worker: the runtime consumes queued plans; HTTP has only probes and metrics."""
    return worker_app(settings, runtime, service=SERVICE, version=VERSION, what="optimizer")


def serve(settings: OptimizerSettings, planner: Planner | None = None, worker: bool = False) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully); `planner`: already
    loaded (else loaded from the settings); `worker`: a pure queue worker."""
    configure_logging(settings.log_level)
    model = planner if planner is not None else load_planner(settings)
    runtime = OptimizerRuntime(model, settings, consume=True if worker else None)
    run_app(build_worker_app(runtime, settings) if worker else build_app(runtime, settings), settings)
