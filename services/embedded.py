"""Every service of the project in one process: the embedded default.

``embedded_stack(checkpoint)`` starts the simulator (HTTP on uvicorn and gRPC on grpc.aio,
in one lifespan over one runtime) and, when a success-classifier checkpoint exists, the judge
first (its own app, its own free ports, same process; the simulator's ``judge_url`` for
``/v1/imagine`` with ``verify``) in background threads on free 127.0.0.1
ports, in development mode (no API key, loopback only), and yields their addresses. Clients
talk to them over real sockets, exactly as they would to a deployed cluster.
The trainer is served the same way by ``services.trainer.server.serve_trainer_in_thread`` (its
jobs reach the simulator and judge through their URLs, or through ``job_stack``, this stack per
job). The action optimizer joins the stack only when a plan-generator checkpoint is given
(``optimizer_generator`` and ``optimizer_vae``, e.g. the bundled ``checkpoints/plan-generator-tasks``
and ``checkpoints/trajectory-vae``): the demo does not need it. Nothing here imports the trainer, so the trainer can use this module without an
import cycle.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from services.common.app import KEEP_ALIVE_S
from services.common.settings import ServiceSettings
from services.judge.runtime import JudgeRuntime
from services.judge.server import build_app as build_judge_app
from services.judge.server import load_classifier
from services.judge.settings import JudgeSettings
from services.simulator.runtime import SimulatorRuntime
from services.simulator.server import build_app, world_model_from_settings
from services.simulator.settings import SimulatorSettings
from wmpo.judge.success import SuccessJudge

BUNDLED_JUDGE = Path(__file__).resolve().parent.parent / "checkpoints" / "judge"


@dataclass(frozen=True)
class EmbeddedJudge:
    http_url: str  # http://127.0.0.1:PORT
    grpc_target: str  # 127.0.0.1:PORT
    runtime: JudgeRuntime


@dataclass(frozen=True)
class EmbeddedOptimizer:
    http_url: str  # http://127.0.0.1:PORT
    grpc_target: str  # 127.0.0.1:PORT
    runtime: Any  # services.optimizer.runtime.OptimizerRuntime


@dataclass(frozen=True)
class EmbeddedStack:
    http_url: str  # the simulator: http://127.0.0.1:PORT
    grpc_target: str  # the simulator: 127.0.0.1:PORT
    runtime: SimulatorRuntime
    judge: EmbeddedJudge | None = None  # None: no judge checkpoint
    optimizer: EmbeddedOptimizer | None = None  # None: no plan-generator checkpoint given

    @property
    def judge_http_url(self) -> str | None:
        return self.judge.http_url if self.judge else None

    @property
    def judge_grpc_target(self) -> str | None:
        return self.judge.grpc_target if self.judge else None


@contextmanager
def serve_app_in_thread(
    app: FastAPI, settings: ServiceSettings, name: str, start_timeout_s: float
) -> Iterator[tuple[str, str]]:
    """Run `app` (whose lifespan sets app.state.grpc_port) on uvicorn in a daemon thread;
    yields (http_url, grpc_target) until the block ends."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"wmpo-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the embedded {name} did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{settings.host}:{port}", f"{settings.host}:{app.state.grpc_port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def serve_in_thread(
    world_model: Any, settings: SimulatorSettings, start_timeout_s: float = 60.0
) -> Iterator[EmbeddedStack]:
    """Serve ``world_model`` with ``settings`` (ports 0 = any free port) until the block ends."""
    runtime = SimulatorRuntime(world_model, settings)
    app = build_app(runtime, settings)
    with serve_app_in_thread(app, settings, "simulator", start_timeout_s) as (http_url, grpc_target):
        yield EmbeddedStack(http_url, grpc_target, runtime)


@contextmanager
def serve_judge_in_thread(
    classifier: SuccessJudge | None, settings: JudgeSettings, start_timeout_s: float = 60.0
) -> Iterator[EmbeddedJudge]:
    """Serve the judge (``classifier``, and a VLM if ``settings`` names one) until the block ends."""
    runtime = JudgeRuntime(classifier, settings)
    app = build_judge_app(runtime, settings)
    with serve_app_in_thread(app, settings, "judge", start_timeout_s) as (http_url, grpc_target):
        yield EmbeddedJudge(http_url, grpc_target, runtime)


@contextmanager
def serve_optimizer_in_thread(
    planner: Any, settings: Any, start_timeout_s: float = 60.0
) -> Iterator[EmbeddedOptimizer]:
    """Serve the action optimizer (a ``wmpo.optimize.planner.Planner``) until the block ends."""
    # Imported here: the optimizer's core loads only for a stack that runs it.
    from services.optimizer.runtime import OptimizerRuntime
    from services.optimizer.server import build_app as build_optimizer_app

    runtime = OptimizerRuntime(planner, settings)
    app = build_optimizer_app(runtime, settings)
    with serve_app_in_thread(app, settings, "optimizer", start_timeout_s) as (http_url, grpc_target):
        yield EmbeddedOptimizer(http_url, grpc_target, runtime)


def _dev_settings(cls: type[Any], values: dict[str, Any]) -> Any:
    """Settings of the embedded default; the caller's ``WMPO_*`` variables are ignored so a
    developer's deployment settings cannot leak into it."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("WMPO_")}
    try:
        return cls(**{"dev_mode": True, "host": "127.0.0.1", "port": 0, "grpc_port": 0, **values})
    finally:
        os.environ.update(saved)


@contextmanager
def job_stack(cfg: Any) -> Iterator[tuple[str, str]]:
    """The stack a GRPO job without URLs runs against (``wmpo.rl.job.EmbeddedStack``): its world
    model and judge checkpoints served here -> (simulator URL, judge URL)."""
    with embedded_stack(cfg.world_model, cfg.judge, action_guidance=cfg.action_guidance) as stack:
        yield stack.http_url, stack.judge_http_url


@contextmanager
def simulator_stack(world_model: str | Path, judge: str | Path | None, **overrides: Any) -> Iterator[str]:
    """A simulator (with its judge, for verify) served here -> its HTTP URL; `overrides` go to the
    simulator's settings (e.g. drift_log)."""
    with embedded_stack(world_model, judge, **overrides) as stack:
        yield stack.http_url


@contextmanager
def embedded_stack(
    checkpoint: str | Path,
    judge_checkpoint: str | Path | None = None,
    *,
    judge: bool = True,
    judge_overrides: dict[str, Any] | None = None,
    optimizer_generator: str | Path | None = None,
    optimizer_vae: str | Path | None = None,
    optimizer_idm: str | Path | None = None,
    optimizer_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> Iterator[EmbeddedStack]:
    """The embedded default: the bundled world model (and judge), dev mode, loopback, free ports.

    ``judge_checkpoint``: the success classifier (default: the bundled ``checkpoints/judge``;
    without it the stack runs no judge and ``stack.judge`` is None; a path given explicitly
    must exist). ``judge=False`` never starts the judge. ``overrides`` go to the simulator's
    settings, ``judge_overrides`` to the judge's.

    The judge starts first and the simulator gets its URL as ``judge_url``, so ``/v1/imagine``
    with ``verify`` works out of the box (an explicit ``judge_url`` override wins); without a
    judge, verify is refused (FAILED_PRECONDITION). On exit the simulator stops first.

    ``optimizer_generator`` and ``optimizer_vae`` (and optionally ``optimizer_idm``): also serve
    the action optimizer over these checkpoints (``stack.optimizer``; None without them);
    ``optimizer_overrides`` go to its settings.
    """
    judge_dir = Path(judge_checkpoint) if judge_checkpoint is not None else BUNDLED_JUDGE
    run_judge = judge and (judge_checkpoint is not None or judge_dir.exists())
    with ExitStack() as stack:
        served: EmbeddedJudge | None = None
        if run_judge:
            judge_settings = _dev_settings(
                JudgeSettings, {"checkpoint": str(judge_dir), **(judge_overrides or {})}
            )
            served = stack.enter_context(
                serve_judge_in_thread(load_classifier(judge_dir), judge_settings)
            )
            overrides = {"judge_url": served.http_url, **overrides}
        sim_settings = _dev_settings(
            SimulatorSettings, {"checkpoint": str(checkpoint), **overrides}
        )
        optimizer: EmbeddedOptimizer | None = None
        if optimizer_generator is not None:
            from services.optimizer.server import load_planner
            from services.optimizer.settings import OptimizerSettings

            opt_settings = _dev_settings(OptimizerSettings, {
                "generator": str(optimizer_generator),
                "trajectory_vae": str(optimizer_vae) if optimizer_vae is not None else None,
                "inverse_dynamics": str(optimizer_idm) if optimizer_idm is not None else None,
                **(optimizer_overrides or {}),
            })
            optimizer = stack.enter_context(
                serve_optimizer_in_thread(load_planner(opt_settings), opt_settings)
            )
        sim = stack.enter_context(serve_in_thread(world_model_from_settings(sim_settings), sim_settings))
        if served is None and optimizer is None:
            yield sim
            return
        yield EmbeddedStack(sim.http_url, sim.grpc_target, sim.runtime, served, optimizer)
