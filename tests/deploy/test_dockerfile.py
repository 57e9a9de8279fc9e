"""The simulator image's Dockerfile (deploy/docker/Dockerfile.simulator), checked without Docker.

Parsed with Docker's own parser; hadolint lints it; its ENTRYPOINT goes through the real
`wmpo` parser; its HEALTHCHECK command is run against a live simulator; what it copies
exists and is not excluded by .dockerignore. The image itself is never built here.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import yaml

from services.common.health import HEALTH_PATHS
from services.embedded import embedded_stack
from services.simulator.settings import SimulatorSettings
from tests.deploy.conftest import CHART, DOCKERFILE, REPO
from wmpo import cli

Instructions = tuple[dockerfile.Command, ...]


def final_stage(instructions: Instructions) -> list[dockerfile.Command]:
    starts = [i for i, c in enumerate(instructions) if c.cmd == "FROM"]
    return list(instructions[starts[-1]:])


def env_of(stage: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in stage:
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def arg_default(instructions: Instructions, name: str) -> str:
    for command in instructions:
        if command.cmd == "ARG" and command.value[0].startswith(f"{name}="):
            return command.value[0].split("=", 1)[1].strip('"')
    raise AssertionError(f"no ARG {name} with a default")


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extras: pip install -e '.[dev]'"
    out = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_multi_stage_non_root_cpu_torch_by_default(instructions: Instructions) -> None:
    stages = [c for c in instructions if c.cmd == "FROM"]
    assert len(stages) >= 2, "build and runtime stages"
    assert arg_default(instructions, "BASE_IMAGE") == "python:3.11-slim"
    # The default torch is the project's pin (the CPU build here); GPU images override the ARG.
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert arg_default(instructions, "TORCH_SPEC") in pins
    users = [c.value[0] for c in final_stage(instructions) if c.cmd == "USER"]
    assert users, "the runtime stage must not run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"} and user.isdigit(), "a numeric non-root uid (runAsNonRoot)"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(user), "the chart runs the image's user"


def test_ports_and_checkpoint_match_the_service(instructions: Instructions) -> None:
    stage = final_stage(instructions)
    env = env_of(stage)
    exposed = {p.split("/")[0] for c in stage if c.cmd == "EXPOSE" for p in c.value}
    defaults = SimulatorSettings.model_fields
    assert exposed == {env["WMPO_PORT"], env["WMPO_GRPC_PORT"]}
    assert {int(env["WMPO_PORT"]), int(env["WMPO_GRPC_PORT"])} == {
        defaults["port"].default, defaults["grpc_port"].default}
    # WMPO_CHECKPOINT is a checkpoint the image copies from the repository.
    copies = {c.value[-1].rstrip("/"): c.value[0] for c in stage
              if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)}
    checkpoint = env["WMPO_CHECKPOINT"]
    dest = next(d for d in copies if checkpoint.startswith(d + "/"))
    source = REPO / copies[dest] / checkpoint.removeprefix(dest + "/")
    assert (source / "config.json").is_file() and (source / "model.safetensors").is_file()


def test_entrypoint_is_accepted_by_the_wmpo_parser(entrypoint: list[str]) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entrypoint[0]] == "wmpo.cli:main"
    parser = cli.build_parser()
    for extra in ([], ["--worker"], ["--port", "9000", "--grpc-port", "9001"]):
        args = parser.parse_args(entrypoint[1:] + extra)
        assert args.func is cli.cmd_serve_simulator
        assert args.host == "0.0.0.0", "a container must listen beyond loopback"
        assert not args.dev, "never development mode (no API keys) in an image"
        assert args.worker == ("--worker" in extra)


def healthcheck_argv(instructions: Instructions) -> list[str]:
    (check,) = [c for c in instructions if c.cmd == "HEALTHCHECK"]
    assert check.value[0] == "CMD" and check.json, "HEALTHCHECK CMD in exec form"
    return list(check.value[1:])


def test_healthcheck_path_is_a_health_route(instructions: Instructions) -> None:
    argv = healthcheck_argv(instructions)
    paths = re.findall(r"http://127\.0\.0\.1:%s(/[a-z]+)", " ".join(argv))
    assert paths and set(paths) <= HEALTH_PATHS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_against_a_live_simulator(instructions: Instructions) -> None:
    """The exact HEALTHCHECK command succeeds against a running simulator on WMPO_PORT and
    fails when nothing answers there."""
    argv = healthcheck_argv(instructions)
    assert argv[0] == "python"
    argv[0] = sys.executable  # the image's python is the venv's on PATH
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMPO_")}
    with embedded_stack(cli.BUNDLED_WORLD_MODEL) as stack:
        port = stack.http_url.rsplit(":", 1)[1]
        healthy = subprocess.run(argv, env=env | {"WMPO_PORT": port}, capture_output=True,
                                 timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    down = subprocess.run(argv, env=env | {"WMPO_PORT": str(free_port())}, capture_output=True,
                          timeout=30)
    assert down.returncode != 0


def ignored(patterns: list[str], path: str) -> bool:
    """.dockerignore semantics for the simple patterns used here (last match wins)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").removeprefix("**/").rstrip("/")
        parts = Path(path).parts
        if any(Path(*parts[: i + 1]).match(pattern) or parts[i] == pattern
               for i in range(len(parts))):
            result = not negate
    return result


def test_dockerignore_keeps_the_context_small_but_complete(instructions: Instructions) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for heavy in (".venv", "datasets", "runs", "outputs", ".git"):
        assert ignored(patterns, heavy), f"{heavy} must stay out of the build context"
    for command in instructions:
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            for source in command.value[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not ignored(patterns, source), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize("package", ["wmpo", "services", "clients/python/wmpo_client"])
def test_image_installs_every_package_the_service_imports(
    instructions: Instructions, package: str
) -> None:
    """The services import wmpo and wmpo_client: both must be copied into the build stage."""
    copied = {c.value[0].rstrip("/") for c in instructions if c.cmd == "COPY"}
    assert any(package == src or package.startswith(src + "/") for src in copied), package
