"""Run the judge: HTTP (uvicorn) and gRPC in one process over one runtime.

`build_app` gives an ASGI app whose lifespan starts the runtime (engine + judge
queue) and the gRPC server, and stops both on shutdown; `serve` loads the
classifier and runs it with uvicorn. The checkpoint is loaded before the
server starts, so a bad path fails fast with one clear error.

`build_worker_app` / `serve(..., worker=True)` is a pure queue worker
(`wmpo serve judge --worker`): it consumes judge work from Redis and serves
only health, readiness and metrics over HTTP, no judge API and no gRPC.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from services.common.app import run_app, service_app, worker_app
from services.common.logging import configure_logging
from services.judge.grpc_api import create_grpc_server
from services.judge.http_api import create_judge_app
from services.judge.runtime import SERVICE, VERSION, JudgeRuntime
from services.judge.settings import JudgeSettings
from wmpo.errors import CheckpointError, ConfigError
from wmpo.judge.success import SuccessJudge

log = logging.getLogger("wmpo.judge")


def load_classifier(checkpoint: str | Path | None) -> SuccessJudge | None:
    """The success classifier from a checkpoint directory; None for no checkpoint (VLM only).

    CheckpointError if the directory is missing or not a success-classifier checkpoint.
    """
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(
            f"no success-classifier checkpoint at {path}: train one (wmpo train judge), pass "
            "--checkpoint DIR / set WMPO_CHECKPOINT, or set WMPO_CHECKPOINT='' with "
            "WMPO_VLM_URL for a VLM-only judge"
        )
    return SuccessJudge.load(str(path))


def check_can_judge(classifier: SuccessJudge | None, settings: JudgeSettings) -> None:
    if classifier is None and not settings.vlm_url:
        raise ConfigError(
            "nothing to judge with: no classifier checkpoint and no VLM endpoint; set "
            "WMPO_CHECKPOINT and/or WMPO_VLM_URL"
        )


def build_app(runtime: JudgeRuntime, settings: JudgeSettings, serve_grpc: bool = True) -> FastAPI:
    """The HTTP app; its lifespan also runs the gRPC server on settings.grpc_port."""
    return service_app(runtime, settings, create_judge_app, create_grpc_server if serve_grpc else None)


def build_worker_app(runtime: JudgeRuntime, settings: JudgeSettings) -> FastAPI:
    """A pure queue worker: the runtime consumes judge work; HTTP has only probes and metrics."""
    return worker_app(settings, runtime, service=SERVICE, version=VERSION, what="judge")


def serve(
    settings: JudgeSettings,
    classifier: SuccessJudge | None = None,
    worker: bool = False,
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully).

    `classifier`: already loaded (else loaded from settings.checkpoint).
    `worker`: a pure queue worker (see `build_worker_app`).
    """
    configure_logging(settings.log_level)
    model = classifier if classifier is not None else load_classifier(settings.checkpoint)
    check_can_judge(model, settings)
    runtime = JudgeRuntime(model, settings, consume=True if worker else None)
    run_app(build_worker_app(runtime, settings) if worker else build_app(runtime, settings), settings)
