"""Fixtures for the trainer service tests: the bundled checkpoints served for real.

Once per session an embedded stack serves the bundled world model (simulator) and
success classifier (judge) on loopback ports; trainers under test reach them
through their URLs, as a deployed trainer would. Jobs are tiny (one task, one
group of 2-4 rollouts, a few chunks, no real-simulator evaluation) so each runs in
seconds; nothing in the job is mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from services.embedded import EmbeddedStack, embedded_stack
from services.trainer.server import EmbeddedTrainer, serve_trainer_in_thread
from services.trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[3]
POLICY = str(ROOT / "checkpoints" / "policy-base")
WORLD_MODEL = str(ROOT / "checkpoints" / "world-model")
JUDGE = str(ROOT / "checkpoints" / "judge")
TASK = "button-press-topdown-v3"
KEY = "trainer-key-0123456789abcdef"
# A job of a few seconds: two steps of one group of 2 rollouts, 2 chunks each, no eval.
TINY: dict[str, Any] = {
    "tasks": [TASK],
    "steps": 2,
    "groups_per_step": 1,
    "group_size": 2,
    "chunks": 2,
    "verify": False,
    "max_sampling_rounds": 1,
    "eval_episodes": 0,
}
# Long enough for the judge to see successes, so the first step updates the policy (seed 0:
# an informative group, 1 imagined success of 4, measured on the pair bundled 2026-12-07; with
# the previous pair it was seed 4, which now imagines 4 of 4).
UPDATING: dict[str, Any] = {**TINY, "group_size": 4, "chunks": 8, "seed": 0, "lr": 1e-4, "epochs": 1,
                            "minibatch": 16}

# Other work shares this machine's two cores: keep torch on one thread.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    with embedded_stack(WORLD_MODEL, JUDGE) as served:
        yield served


@pytest.fixture
def make_trainer(stack: EmbeddedStack, tmp_path: Path) -> Iterator[Callable[..., EmbeddedTrainer]]:
    """Start a trainer in this process (dev mode, free ports, the session's simulator and
    judge); settings overrides as keyword arguments. Stopped at the end of the test."""
    with ExitStack() as stack_:

        def make(**overrides: Any) -> EmbeddedTrainer:
            values: dict[str, Any] = {
                "dev_mode": True,
                "host": "127.0.0.1",
                "port": 0,
                "grpc_port": 0,
                "trainer_dir": str(tmp_path / "trainer"),
                "simulator_url": stack.http_url,
                "judge_url": stack.judge_http_url,
                "stream_poll_s": 0.1,
                "queue_drain_s": 20.0,
                "torch_threads": 1,
                **overrides,
            }
            return stack_.enter_context(serve_trainer_in_thread(TrainerSettings(**values)))

        yield make


def redis_settings(redis_url: str, prefix: str, **overrides: Any) -> dict[str, Any]:
    """A Redis-backed trainer that takes over a dead worker's job after 3 s."""
    return {
        "redis_url": redis_url,
        "queue_prefix": prefix,
        "queue_min_idle_s": 3.0,
        "queue_retry_delay_s": 0.5,
        **overrides,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wmpo_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m services.cli ARGS` from the repo root, with only our WMPO_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WMPO_")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            cwd=ROOT,
            env={**base, "OMP_NUM_THREADS": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
