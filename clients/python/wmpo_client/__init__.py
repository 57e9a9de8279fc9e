"""Light client for the wmpo services.

Installs without torch and never imports the wmpo core, so robot computers and
trainers on other machines can talk to the services with a small footprint.

- `wmpo_client.http`: `SimulatorClient`, `AsyncSimulatorClient` (HTTP, httpx);
- `wmpo_client.grpc`: `GrpcSimulatorClient`, `AsyncGrpcSimulatorClient` (gRPC);
- `wmpo_client.gym`: `SimulatorEnv`, `SimulatorVectorEnv` (needs `wmpo-client[gym]`);
- `wmpo_client.judge_http`: `JudgeClient`, `AsyncJudgeClient` (the judge service, HTTP);
- `wmpo_client.judge_grpc`: `GrpcJudgeClient`, `AsyncGrpcJudgeClient` (the judge, gRPC);
  results in `wmpo_client.judge_results`;
- `wmpo_client.trainer_http`: `TrainerClient`; `wmpo_client.trainer_grpc`:
  `GrpcTrainerClient` (GRPO jobs: submit, stream, cancel, checkpoints); results
  in `wmpo_client.trainer_results`;
- `wmpo_client.optimizer_http`: `OptimizerClient`, `AsyncOptimizerClient`;
  `wmpo_client.optimizer_grpc`: `GrpcOptimizerClient`, `AsyncGrpcOptimizerClient` (the action
  optimizer: plan actions toward a goal); results in `wmpo_client.optimizer_results`;
- `wmpo_client.results`: what the clients return; `wmpo_client.errors`: `SimulatorError`;
- `wmpo_client.codec`: numpy arrays <-> wire tensors; `wmpo-client`: the CLI;
- `connect(url)`: the sync client for an http(s):// or grpc:// URL.

The names below are importable from the package itself; each is loaded on
first use, so `import wmpo_client` does not pull in grpcio, httpx or gymnasium.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SimulatorClient": "wmpo_client.http",
    "AsyncSimulatorClient": "wmpo_client.http",
    "GrpcSimulatorClient": "wmpo_client.grpc",
    "AsyncGrpcSimulatorClient": "wmpo_client.grpc",
    "SimulatorEnv": "wmpo_client.gym",
    "SimulatorVectorEnv": "wmpo_client.gym",
    "SimulatorError": "wmpo_client.errors",
    "JudgeClient": "wmpo_client.judge_http",
    "AsyncJudgeClient": "wmpo_client.judge_http",
    "GrpcJudgeClient": "wmpo_client.judge_grpc",
    "AsyncGrpcJudgeClient": "wmpo_client.judge_grpc",
    "TrainerClient": "wmpo_client.trainer_http",
    "GrpcTrainerClient": "wmpo_client.trainer_grpc",
    "OptimizerClient": "wmpo_client.optimizer_http",
    "AsyncOptimizerClient": "wmpo_client.optimizer_http",
    "GrpcOptimizerClient": "wmpo_client.optimizer_grpc",
    "AsyncGrpcOptimizerClient": "wmpo_client.optimizer_grpc",
    "Simulator": "wmpo_client.protocols",
    "Judge": "wmpo_client.protocols",
}
__all__ = sorted(_EXPORTS)


def connect(url: str, api_key: str | None = None, **kwargs: Any) -> Any:
    """A sync client for `url`: `SimulatorClient` for http(s)://host:port,
    `GrpcSimulatorClient` for grpc://host:port; kwargs go to its constructor
    (both take e.g. `timeout=120.0`, seconds per call)."""
    if url.startswith("grpc://"):
        from wmpo_client.grpc import GrpcSimulatorClient

        return GrpcSimulatorClient(url, api_key, **kwargs)
    if url.startswith(("http://", "https://")):
        from wmpo_client.http import SimulatorClient

        return SimulatorClient(url, api_key, **kwargs)
    raise ValueError(f"url must start with http://, https:// or grpc://, got {url!r}")


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wmpo_client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
