"""The image's Dockerfile (docker/Dockerfile), checked without Docker: one image
for the simulator, the judge and the trainer (`wmpo serve SERVICE`).

Parsed with Docker's own parser; hadolint lints it; its ENTRYPOINT + CMD and each service's
arguments go through the real `wmpo` parser; its HEALTHCHECK script is run against a live
simulator and judge; what it copies exists and is not excluded by .dockerignore. The image
itself is never built here.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import yaml

import wmpo
from services import cli
from services.common.health import HEALTH_PATHS
from services.embedded import embedded_stack
from services.judge.settings import JudgeSettings
from services.simulator.settings import SimulatorSettings
from services.trainer.settings import TrainerSettings
from tests.deploy.conftest import CHART, DOCKERFILE, REPO, final_stage
from wmpo import cli as core_cli

Instructions = tuple[dockerfile.Command, ...]
SETTINGS = {"simulator": SimulatorSettings, "judge": JudgeSettings, "trainer": TrainerSettings}
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"


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


def test_ports_match_the_services(instructions: Instructions, image_env: dict[str, str]) -> None:
    """Every service's default ports are exposed, and the image pins none of them (nor a
    checkpoint): WMPO_PORT or WMPO_CHECKPOINT would apply to all three services alike."""
    exposed = {int(p.split("/")[0]) for c in final_stage(instructions) if c.cmd == "EXPOSE"
               for p in c.value}
    defaults = {cls.model_fields[f].default for cls in SETTINGS.values() for f in ("port", "grpc_port")}
    assert exposed == defaults and len(defaults) == 6
    assert not {"WMPO_PORT", "WMPO_GRPC_PORT", "WMPO_CHECKPOINT"} & set(image_env)
    # Every service binds beyond loopback in a container (and so refuses to run without keys).
    assert image_env["WMPO_HOST"] == "0.0.0.0"


def test_bundled_checkpoints_resolve_in_the_image(instructions: Instructions) -> None:
    """`wmpo` finds its bundled checkpoints next to the installed package; the image links
    that place (site-packages/checkpoints) to the checkpoints it copies to /app/checkpoints."""
    stage = final_stage(instructions)
    copies = {c.value[-1].rstrip("/"): c.value[0] for c in stage
              if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)}
    assert copies["/app/checkpoints"] == "checkpoints"
    (link,) = [c.value[0] for c in stage if c.cmd == "RUN" and "ln -s" in c.value[0]]
    purelib = """$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"""
    assert link == f'ln -s /app/checkpoints "{purelib}/checkpoints"', link
    package_parent = Path(wmpo.__file__).resolve().parent.parent  # site-packages in the image
    for bundled in (core_cli.BUNDLED_WORLD_MODEL, core_cli.BUNDLED_JUDGE, core_cli.BUNDLED_POLICY):
        assert bundled.parent == package_parent / "checkpoints", bundled
        assert (REPO / "checkpoints" / bundled.name / "model.safetensors").is_file(), bundled


def test_mujoco_rendering_packages(instructions: Instructions) -> None:
    """The trainer renders MetaWorld (EGL, Mesa): the runtime stage installs the Debian
    packages scripts/system_deps.sh installs on development machines."""
    script = (REPO / "scripts" / "system_deps.sh").read_text()
    wanted = set(script.split("for pkg in ", 1)[1].split(";", 1)[0].split())
    runs = " ".join(c.value[0] for c in final_stage(instructions) if c.cmd == "RUN")
    installed = set(runs.split("--no-install-recommends", 1)[1].split("&&", 1)[0].split())
    assert wanted and wanted <= installed


@pytest.mark.parametrize(
    ("args", "command", "worker"),
    [
        (None, cli.cmd_serve_simulator, False),  # the image's CMD
        (["simulator", "--worker"], cli.cmd_serve_simulator, True),
        (["simulator", "--port", "9000", "--grpc-port", "9001"], cli.cmd_serve_simulator, False),
        (["judge"], cli.cmd_serve_judge, False),
        (["trainer", "--dir", "/data/trainer"], cli.cmd_serve_trainer, False),
    ],
)
def test_entrypoint_is_accepted_by_the_wmpo_parser(
    entrypoint: list[str], image_cmd: list[str], args: list[str] | None, command, worker: bool
) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entrypoint[0]] == "services.cli:main"
    assert entrypoint[1:] == ["serve"] and image_cmd == ["simulator"]
    parsed = cli.build_parser().parse_args(entrypoint[1:] + (image_cmd if args is None else args))
    assert parsed.func is command
    assert not parsed.dev, "never development mode (no API keys) in an image"
    assert getattr(parsed, "worker", False) == worker


def healthcheck_argv(instructions: Instructions) -> list[str]:
    (check,) = [c for c in instructions if c.cmd == "HEALTHCHECK"]
    assert check.value[0] == "CMD" and check.json, "HEALTHCHECK CMD in exec form"
    return list(check.value[1:])


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("wmpo_healthcheck", HEALTHCHECK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_is_the_copied_script(instructions: Instructions) -> None:
    argv = healthcheck_argv(instructions)
    assert argv[0] == "python"
    copies = {c.value[-1]: c.value[0] for c in final_stage(instructions) if c.cmd == "COPY"}
    assert (REPO / copies[argv[1]]).resolve() == HEALTHCHECK_SCRIPT


def test_healthcheck_port_of_each_service() -> None:
    """The port `wmpo serve` itself would take: --port, else WMPO_PORT, else the service's
    default (the settings classes' own defaults)."""
    healthcheck = load_healthcheck()
    assert {s: cls.model_fields["port"].default
                                         for s, cls in SETTINGS.items()} == healthcheck.DEFAULT_PORTS
    assert "/healthz" in HEALTH_PATHS and "/healthz" in HEALTHCHECK_SCRIPT.read_text()
    port = healthcheck.http_port
    assert port(["judge"], {}) == 8001 and port(["trainer", "--dir", "/d"], {}) == 8002
    assert port(["simulator", "--worker"], {}) == 8000 and port([], {}) == 8000
    assert port(["judge"], {"WMPO_PORT": "9100"}) == 9100
    assert port(["judge", "--port", "9200"], {"WMPO_PORT": "9100"}) == 9200
    assert port(["trainer", "--port=9300"], {}) == 9300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_proc(root: Path, *commands: list[str]) -> Path:
    """A /proc with one process per command (PID 1 first), for the script's --proc."""
    for pid, argv in enumerate(commands, start=1):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return root


def test_healthcheck_against_a_live_simulator_and_judge(
    instructions: Instructions, tmp_path: Path
) -> None:
    """The exact HEALTHCHECK command (the script, run by python) succeeds against a running
    simulator and judge on the port of their command line or WMPO_PORT, behind an init too,
    and fails when nothing answers there."""
    argv = healthcheck_argv(instructions)
    argv[:2] = [sys.executable, str(HEALTHCHECK_SCRIPT)]  # the venv's python; the copied script
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMPO_")}
    wmpo_serve = ["/opt/venv/bin/python", "/opt/venv/bin/wmpo", "serve"]

    def check(proc: Path, **extra: str) -> int:
        out = subprocess.run([*argv, "--proc", str(proc)], env=env | extra, capture_output=True,
                             timeout=30)
        return out.returncode

    with embedded_stack(cli.BUNDLED_WORLD_MODEL) as stack:
        sim_port = stack.http_url.rsplit(":", 1)[1]
        judge_port = stack.judge_http_url.rsplit(":", 1)[1]
        judge = fake_proc(tmp_path / "judge", [*wmpo_serve, "judge", "--port", judge_port])
        assert check(judge) == 0
        simulator = fake_proc(tmp_path / "simulator", ["/bin/sh"],  # PID 1 another process
                              [*wmpo_serve, "simulator"])
        assert check(simulator, WMPO_PORT=sim_port) == 0
    assert check(judge) != 0  # stopped
    assert check(simulator, WMPO_PORT=str(free_port())) != 0


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
