"""Fixtures for the deploy checks: the parsed Dockerfile of the image (one image for the
simulator, judge and trainer), the helm binary, a clean WMPO_* environment and a real Redis
key prefix for the probes of pods in queue mode.

No Docker engine or Kubernetes cluster runs here: the Dockerfile is parsed with Docker's
own parser (the `dockerfile` package wraps BuildKit's) and the chart is rendered by helm.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import dockerfile
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
CHART = REPO / "helm" / "wmpo"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read WMPO_* variables; the developer's shell must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("WMPO_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def instructions() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


@pytest.fixture(scope="session")
def entrypoint(instructions: tuple[dockerfile.Command, ...]) -> list[str]:
    """The image's ENTRYPOINT (exec form) as an argv list."""
    found = [c for c in instructions if c.cmd == "ENTRYPOINT"]
    assert len(found) == 1, "the Dockerfile needs exactly one ENTRYPOINT"
    assert found[0].json, "ENTRYPOINT must be in exec (JSON) form so signals reach the server"
    return list(found[0].value)


@pytest.fixture(scope="session")
def image_cmd(instructions: tuple[dockerfile.Command, ...]) -> list[str]:
    """The image's CMD (exec form): the default arguments after the ENTRYPOINT."""
    found = [c for c in instructions if c.cmd == "CMD"]
    assert len(found) == 1 and found[0].json, "one CMD in exec (JSON) form"
    return list(found[0].value)


def final_stage(instructions: tuple[dockerfile.Command, ...]) -> list[dockerfile.Command]:
    starts = [i for i, c in enumerate(instructions) if c.cmd == "FROM"]
    return list(instructions[starts[-1]:])


@pytest.fixture(scope="session")
def image_env(instructions: tuple[dockerfile.Command, ...]) -> dict[str, str]:
    """The runtime stage's ENV, which a container starts with (a pod's env adds to it)."""
    env: dict[str, str] = {}
    for command in final_stage(instructions):
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary `make setup` installs (scripts/install_helm.sh); missing is an error."""
    candidate = Path(sys.executable).parent / "helm"
    found = str(candidate) if candidate.exists() else shutil.which("helm")
    if not found:
        pytest.fail(
            f"helm not found at {candidate} or on PATH: run `make setup` (it runs "
            "scripts/install_helm.sh)",
            pytrace=False,
        )
    return found


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A queue key prefix of this test's own on the real Redis; its keys are deleted after."""
    import redis

    from services.common.queues import redact_url

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"the probes of pods in queue mode need Redis at {redact_url(REDIS_URL)} ({exc})", pytrace=False)
    prefix = f"wmpo-deploy-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
