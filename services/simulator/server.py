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
from pathlib import Path

from fastapi import FastAPI

from services.common.app import run_app, service_app, worker_app
from services.common.logging import configure_logging
from services.simulator.grpc_api import create_grpc_server
from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SERVICE, VERSION, SimulatorRuntime
from services.simulator.settings import SimulatorSettings
from wmpo.errors import CheckpointError
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
    """`load_world_model` with the checkpoint and sampler overrides of the settings, its DiT on
    the settings' backend (WMPO_BACKEND: torch, onnx or triton; see `backends`)."""
    model = load_world_model(
        settings.checkpoint,
        sampler_steps=settings.sampler_steps,
        action_guidance=settings.action_guidance,
    )
    if settings.backend == "torch":
        return model
    from services.simulator.backends import exported_world_model

    return exported_world_model(model, settings)


def build_app(
    runtime: SimulatorRuntime, settings: SimulatorSettings, serve_grpc: bool = True
) -> FastAPI:
    """The HTTP app; its lifespan also runs the gRPC server on settings.grpc_port."""
    return service_app(runtime, settings, create_simulator_app, create_grpc_server if serve_grpc else None)


def build_worker_app(runtime: SimulatorRuntime, settings: SimulatorSettings) -> FastAPI:
    """A pure queue worker: the runtime consumes imagine work; HTTP has only probes and metrics."""
    return worker_app(settings, runtime, service=SERVICE, version=VERSION, what="simulator")


def serve(
    settings: SimulatorSettings, world_model: WorldModel | None = None, worker: bool = False
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully, then re-raise).

    `worker`: a pure queue worker (see `build_worker_app`).
    """
    configure_logging(settings.log_level)
    model = world_model or world_model_from_settings(settings)
    if worker:
        app = build_worker_app(SimulatorRuntime(model, settings, consume=True), settings)
    else:
        app = build_app(SimulatorRuntime(model, settings), settings)
    run_app(app, settings)
