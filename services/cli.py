"""The ``wmpo`` command: the core library's commands (``wmpo.cli``: collect, train, eval, export,
tasks) plus those that run services: ``serve simulator|judge|trainer|optimizer`` and ``demo``,
and ``drift report``, which reads the simulator's drift monitor (its /metrics or its outcome log).

It lives in the services layer because it starts services: the embedded stack that ``train
grpo``, ``train lifelong`` and ``eval policy --verify`` run against when they name no service
URLs comes from here (``services.embedded``), handed to the core commands as a factory.

Errors caused by bad input print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import Any

from wmpo import cli as core
from wmpo.cli import (
    BUNDLED_INVERSE_DYNAMICS,
    BUNDLED_JUDGE,
    BUNDLED_PLAN_GENERATOR,
    BUNDLED_TRAJECTORY_VAE,
    BUNDLED_WORLD_MODEL,
)
from wmpo.errors import ConfigError


def _settings(module: str, name: str, a: argparse.Namespace, overrides: dict[str, object],
              bundled: dict[str, str], queue: str = "") -> Any:
    """A service's settings (`module`.`name`) from WMPO_* variables, overridden by the flags given
    (None: not given); `bundled` fields default to the bundled checkpoints wherever the command is
    run from, unless their variable is set. The web dependencies are imported here only."""
    try:
        from services.common.settings import SettingsError, load_settings

        cls = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(f"the services need their dependencies ({e.name} is missing): "
                          "pip install -e '.[services]'") from None
    values = {k: v for k, v in overrides.items() if v is not None}
    for field, path in bundled.items():
        if field not in values and f"WMPO_{field.upper()}" not in os.environ:
            values[field] = path
    if a.dev:
        values["dev_mode"] = True
    try:
        settings = load_settings(cls, **values)
    except SettingsError as e:
        raise ConfigError(str(e)) from None
    if getattr(a, "worker", False) and not settings.redis_url:
        raise ConfigError(f"--worker consumes {queue} work from Redis: set WMPO_REDIS_URL or pass "
                          "--redis-url redis://HOST:6379/0")
    return settings


def _listening(what: str, settings: Any, worker: bool, detail: str, viewer: bool = False) -> None:
    if worker:
        print(f"{what} queue worker: probes and metrics on {settings.host}:{settings.port}, {detail}",
              file=sys.stderr)
        return
    print(f"{what}: HTTP on {settings.host}:{settings.port}, gRPC on {settings.host}:"
          f"{settings.grpc_port}, {detail}", file=sys.stderr)
    if viewer:
        print(viewer_line(settings.host, settings.port, bool(settings.api_keys)), file=sys.stderr)


def viewer_line(host: str, port: int, keyed: bool) -> str:
    """Where the rollout viewer is, and how it gets the key (never printed)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    key = " (it asks for an API key; or open .../viewer/#key=KEY)" if keyed else ""
    return f"rollout viewer: http://{shown}:{port}/viewer/{key}"


def cmd_serve_simulator(a: argparse.Namespace) -> None:
    settings = _settings(
        "services.simulator.settings", "SimulatorSettings", a,
        {"checkpoint": a.checkpoint, "host": a.host, "port": a.port, "grpc_port": a.grpc_port,
         "redis_url": a.redis_url, "runs_dir": a.runs_dir},
        {"checkpoint": str(BUNDLED_WORLD_MODEL)}, queue="imagine")
    from services.simulator.server import serve, world_model_from_settings

    model = world_model_from_settings(settings)  # fail fast, before binding ports
    _listening("simulator", settings, a.worker, f"checkpoint {settings.checkpoint}", viewer=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has already shut down gracefully
        serve(settings, model, worker=a.worker)


def cmd_serve_judge(a: argparse.Namespace) -> None:
    settings = _settings(
        "services.judge.settings", "JudgeSettings", a,
        {"checkpoint": a.checkpoint, "host": a.host, "port": a.port, "grpc_port": a.grpc_port,
         "redis_url": a.redis_url, "vlm_url": a.vlm_url, "vlm_model": a.vlm_model},
        {"checkpoint": str(BUNDLED_JUDGE)}, queue="judge")
    from services.judge.server import check_can_judge, load_classifier, serve

    classifier = load_classifier(settings.checkpoint)  # fail fast, before binding ports
    check_can_judge(classifier, settings)
    kinds = ", ".join(k for k, on in (("classifier", classifier), ("vlm", settings.vlm_url)) if on)
    _listening("judge", settings, a.worker, f"judges: {kinds}")
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has already shut down gracefully
        serve(settings, classifier, worker=a.worker)


def cmd_serve_trainer(a: argparse.Namespace) -> None:
    settings = _settings(
        "services.trainer.settings", "TrainerSettings", a,
        {"host": a.host, "port": a.port, "grpc_port": a.grpc_port, "redis_url": a.redis_url,
         "trainer_dir": a.dir, "simulator_url": a.simulator_url, "judge_url": a.judge_url},
        # the per-job embedded stack's checkpoints
        {"embedded_world_model": str(BUNDLED_WORLD_MODEL), "embedded_judge": str(BUNDLED_JUDGE)})
    from services.trainer.server import serve

    where = settings.simulator_url or "an embedded stack per job"
    _listening("trainer", settings, False, f"jobs in {settings.trainer_dir}, imagination: {where}",
               viewer=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has already shut down gracefully
        serve(settings)


def cmd_serve_optimizer(a: argparse.Namespace) -> None:
    settings = _settings(
        "services.optimizer.settings", "OptimizerSettings", a,
        {"generator": a.generator, "trajectory_vae": a.trajectory_vae,
         "inverse_dynamics": a.inverse_dynamics, "world_model": a.world_model, "host": a.host, "port": a.port,
         "grpc_port": a.grpc_port, "redis_url": a.redis_url},
        {"generator": str(BUNDLED_PLAN_GENERATOR), "trajectory_vae": str(BUNDLED_TRAJECTORY_VAE),
         "inverse_dynamics": str(BUNDLED_INVERSE_DYNAMICS)}, queue="plan")
    from services.optimizer.server import load_planner, serve

    planner = load_planner(settings)  # fail fast, before binding ports
    idm = settings.inverse_dynamics or "none"
    route = f"through world model {settings.world_model}" if settings.world_model else "through the plan tokens"
    _listening("optimizer", settings, a.worker, f"generator {settings.generator}, trajectory VAE "
               f"{settings.trajectory_vae}, inverse dynamics {idm}, {route}, horizon {planner.horizon} actions")
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has already shut down gracefully
        serve(settings, planner, worker=a.worker)


def cmd_demo(a: argparse.Namespace) -> None:
    from services.demo import run_demo

    run_demo(episodes=a.episodes, workers=a.workers, out=a.out)


def cmd_drift_report(a: argparse.Namespace) -> None:
    import json

    from services.simulator.drift import (
        format_report,
        read_log,
        summarize,
        summary_from_metrics,
    )

    if bool(a.metrics_url) == bool(a.log):
        raise ConfigError("give one of --metrics-url (a simulator's /metrics) or --log (its WMPO_DRIFT_LOG)")
    lifetime = None
    if a.log:
        try:
            rows = read_log(a.log, a.last)
        except OSError as e:
            raise ConfigError(f"cannot read the outcome log {a.log}: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(str(e)) from None
        summary, source = summarize(rows), f"log {a.log}" + (f", newest {a.last}" if a.last else "")
    else:
        import httpx

        headers = {"x-api-key": a.api_key} if a.api_key else {}
        try:
            resp = httpx.get(a.metrics_url, headers=headers, timeout=10.0)
        except httpx.HTTPError as e:
            raise ConfigError(f"cannot scrape {a.metrics_url}: {e}") from None
        if resp.status_code != 200:
            raise ConfigError(f"{a.metrics_url} answered {resp.status_code}"
                              + (": pass --api-key or set WMPO_API_KEY" if resp.status_code == 401 else ""))
        try:
            summary, lifetime = summary_from_metrics(resp.text)
        except ValueError as e:
            raise ConfigError(f"{a.metrics_url}: {e}") from None
        source = f"rolling window of {a.metrics_url}"
    if a.json:
        print(json.dumps({**summary.to_json(), "lifetime": lifetime, "threshold": a.threshold}, indent=2))
    else:
        print(format_report(summary, source, lifetime, a.threshold))


def _job_stack(cfg: object) -> contextlib.AbstractContextManager[tuple[str, str]]:
    from services.embedded import job_stack  # the web stack only when a stack is started

    return job_stack(cfg)


def _simulator_stack(world_model: str, judge: str | None,
                     **overrides: object) -> contextlib.AbstractContextManager[str]:
    from services.embedded import simulator_stack

    return simulator_stack(world_model, judge, **overrides)


def build_parser() -> argparse.ArgumentParser:
    """The core commands, the services' commands, and the embedded stacks for the core's."""
    ap = core.build_parser()
    ap.description = "wmpo: world models as simulators for robot policies"
    ap.set_defaults(embedded=_job_stack, embedded_simulator=_simulator_stack)
    sub = core.subcommands(ap)

    sv = sub.add_parser("serve", help="run a service (HTTP + gRPC in one process)").add_subparsers(
        dest="service", required=True)
    p = sv.add_parser("simulator", help="the world model as a simulator: imagine, sessions, replay",
                      description="Settings come from WMPO_* environment variables (API keys: "
                      "WMPO_API_KEYS); these flags override them.")
    p.add_argument("--checkpoint", default=None,
                   help="world-model checkpoint (default: WMPO_CHECKPOINT, else the bundled "
                   "checkpoints/world-model)")
    p.add_argument("--host", default=None, help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: 50051)")
    p.add_argument("--dev", action="store_true",
                   help="development mode: allow running without API keys (loopback only)")
    p.add_argument("--redis-url", default=None,
                   help="queue mode: share imagine work with other replicas through Redis Streams "
                   "(default: WMPO_REDIS_URL, better for a URL with a password; unset: "
                   "in-process queue)")
    p.add_argument("--worker", action="store_true",
                   help="a pure queue worker: consume imagine work from Redis, serve only "
                   "health/readiness/metrics over HTTP (needs a Redis URL)")
    p.add_argument("--runs-dir", default=None,
                   help="recorded runs (episode datasets) the rollout viewer at /viewer/ may show, "
                   "read-only (default: WMPO_RUNS_DIR; unset: none)")
    p.set_defaults(func=cmd_serve_simulator)
    p = sv.add_parser("judge", help="rewards for rollouts: success classifier, VLM judge, "
                      "dual-noise verification",
                      description="Settings come from WMPO_* environment variables (API keys: "
                      "WMPO_API_KEYS; VLM token: WMPO_VLM_API_KEY); these flags override them.")
    p.add_argument("--checkpoint", default=None,
                   help="success-classifier checkpoint (default: WMPO_CHECKPOINT, else the bundled "
                   "checkpoints/judge; '' for a VLM-only judge)")
    p.add_argument("--host", default=None, help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8001)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: 50052)")
    p.add_argument("--dev", action="store_true",
                   help="development mode: allow running without API keys (loopback only)")
    p.add_argument("--vlm-url", default=None,
                   help="OpenAI-compatible endpoint of the VLM judge, e.g. http://vllm:8000/v1 "
                   "(default: WMPO_VLM_URL; unset: kind=vlm is refused)")
    p.add_argument("--vlm-model", default=None, help="model name sent to the VLM endpoint")
    p.add_argument("--redis-url", default=None,
                   help="queue mode: share judge work with other replicas through Redis Streams "
                   "(default: WMPO_REDIS_URL; unset: in-process queue)")
    p.add_argument("--worker", action="store_true",
                   help="a pure queue worker: consume judge work from Redis, serve only "
                   "health/readiness/metrics over HTTP (needs a Redis URL)")
    p.set_defaults(func=cmd_serve_judge)
    p = sv.add_parser("trainer", help="GRPO jobs in imagination: submit, stream progress, cancel, "
                      "download checkpoints",
                      description="Settings come from WMPO_* environment variables (API keys: "
                      "WMPO_API_KEYS; keys for the simulator/judge: WMPO_SIMULATOR_API_KEY, "
                      "WMPO_JUDGE_API_KEY); these flags override them.")
    p.add_argument("--host", default=None, help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8002)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: 50053)")
    p.add_argument("--dev", action="store_true",
                   help="development mode: allow running without API keys (loopback only)")
    p.add_argument("--dir", default=None,
                   help="data directory: job records and checkpoints (default: WMPO_TRAINER_DIR, "
                   "else runs/trainer)")
    p.add_argument("--simulator-url", default=None,
                   help="simulator replica(s), comma-separated, for jobs that name none "
                   "(unset: an embedded stack per job)")
    p.add_argument("--judge-url", default=None, help="judge service for jobs that name none")
    p.add_argument("--redis-url", default=None,
                   help="durable jobs shared by replicas: records and the job queue in Redis "
                   "(default: WMPO_REDIS_URL; unset: records on disk, one replica)")
    p.set_defaults(func=cmd_serve_trainer)
    p = sv.add_parser("optimizer", help="the action optimizer: plan actions toward a goal by test-time "
                      "optimization through the plan generator",
                      description="Settings come from WMPO_* environment variables (API keys: "
                      "WMPO_API_KEYS; checkpoints: WMPO_GENERATOR, WMPO_TRAJECTORY_VAE, "
                      "WMPO_INVERSE_DYNAMICS, WMPO_WORLD_MODEL); these flags override them.")
    p.add_argument("--generator", default=None,
                   help="plan-generator checkpoint (default: WMPO_GENERATOR, else the bundled one)")
    p.add_argument("--trajectory-vae", default=None,
                   help="its trajectory-VAE checkpoint (default: WMPO_TRAJECTORY_VAE, else the bundled one)")
    p.add_argument("--inverse-dynamics", default=None,
                   help="residual inverse-dynamics checkpoint (default: WMPO_INVERSE_DYNAMICS, else the "
                   "bundled one; WMPO_INVERSE_DYNAMICS= blank: the VAE's actions)")
    p.add_argument("--world-model", default=None,
                   help="optimize through this action-conditioned world model, which must share the "
                   "generator's autoencoder (default: WMPO_WORLD_MODEL; unset: through the plan tokens)")
    p.add_argument("--host", default=None, help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8003)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: 50054)")
    p.add_argument("--dev", action="store_true",
                   help="development mode: allow running without API keys (loopback only)")
    p.add_argument("--redis-url", default=None,
                   help="queue mode: share plans with other replicas through Redis Streams "
                   "(default: WMPO_REDIS_URL; unset: plans run in this process)")
    p.add_argument("--worker", action="store_true",
                   help="a pure queue worker: consume plans from Redis, serve only "
                   "health/readiness/metrics over HTTP (needs a Redis URL)")
    p.set_defaults(func=cmd_serve_optimizer)


    dr = sub.add_parser("drift", help="the drift monitor: imagination vs what really happened").add_subparsers(
        dest="drift_command", required=True)
    p = dr.add_parser("report", help="print the drift figures (PSNR, perceptual distance, calibration) from "
                      "a simulator's /metrics or from its outcome log")
    p.add_argument("--metrics-url", default=None, help="a simulator's metrics, e.g. http://HOST:8000/metrics "
                   "(the rolling window of that replica, and its counts since start)")
    p.add_argument("--api-key", default=os.environ.get("WMPO_API_KEY"),
                   help="for --metrics-url (default: $WMPO_API_KEY)")
    p.add_argument("--log", default=None, help="an outcome log (the simulator's WMPO_DRIFT_LOG, JSONL)")
    p.add_argument("--last", type=int, default=0, help="--log: only the newest N outcomes (0: all)")
    p.add_argument("--threshold", type=float, default=None,
                   help="the perceptual-distance alert threshold to compare with (the chart's "
                   "drift.alert.perceptualThreshold)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_drift_report)

    p = sub.add_parser("demo", help="the main job on the embedded default (bundled checkpoints)")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    return core.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
