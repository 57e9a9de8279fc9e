"""The Helm chart (helm/wmpo), checked without a cluster.

helm lints and renders it with default values and with every optional feature on
(ci/all-features-values.yaml); the standard resources are validated against the
Kubernetes schemas kubernetes-validate ships; KEDA's ScaledObject and the ServiceMonitor,
which it has no schema for, get checks of their own against the service's code. Every pod's
(simulator API and workers, judge, trainer) exact argv and environment are run through the
real `wmpo` CLI, its probes are sent to the real app built from the settings that produced,
and the URLs and keys the services call each other with resolve to the chart's Services
and are accepted by the settings of the pods behind them. With `triton.enabled` the chart
also deploys Triton (the official image, the model repository built by init containers that
run the real `wmpo export triton`), points the simulator at its gRPC port and adds a
`helm test` pod running the simulator's smoke check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

import services.judge.server as judge_server
import services.optimizer.server as optimizer_server
import services.simulator.backends as backends
import services.simulator.server as server
import services.trainer.server as trainer_server
from services import cli
from services.common.health import HEALTH_PATHS
from services.common.metrics import METRICS_PATH
from services.common.queues import QueueConfig, RedisWorkQueue
from services.common.settings import ServiceSettings
from services.judge.runtime import JudgeRuntime
from services.judge.settings import JudgeSettings
from services.optimizer.runtime import OptimizerRuntime
from services.optimizer.settings import OptimizerSettings
from services.simulator.imagine_queue import IMAGINE_QUEUE
from services.simulator.runtime import SimulatorRuntime
from services.simulator.settings import SimulatorSettings
from services.simulator.smoke import KEY_ENV as SMOKE_KEY_ENV
from services.trainer.runtime import TrainerRuntime
from services.trainer.settings import TrainerSettings
from tests.deploy.conftest import ALL_FEATURES, CHART, REDIS_URL, REPO
from tests.services.optimizer.conftest import build_planner
from wmpo.export.triton_repo import TRT_SCRIPT
from wmpo.judge.success import SuccessJudge
from wmpo.optimize.planner import Planner
from wmpo.sampling.world_model import WorldModel

# Names: wmpo-{simulator,worker,judge,trainer,optimizer} (Deployments, Services), wmpo-secrets,
# wmpo-{simulator,judge,trainer,optimizer}-settings (ConfigMaps), wmpo-trainer-data (the PVC).
RELEASE = "wmpo"
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}  # CRDs: no schema in kubernetes-validate
# Settings the chart sets itself in every pod (flags, the Secret, per-role env).
COMMON_MANAGED = frozenset({"host", "port", "grpc_port", "api_keys", "service_api_keys", "dev_mode", "redis_url",
                            "queue_worker", "queue_consumer"})


@dataclass(frozen=True)
class Service:
    """A service the chart deploys: its settings class, where its values live and which of
    its settings the chart owns (so its `settings` value must not take them)."""

    settings_cls: type[ServiceSettings]
    key: str | None  # its values: .Values.<key>; None: the top level (the simulator's)
    managed: frozenset[str]  # set by the chart: flags, Secrets (keys), the data directory
    unused: frozenset[str] = frozenset()  # never used by the chart's pods


SERVICES = {
    # runs_dir: the rollout viewer's recorded runs need a volume of datasets the chart has not;
    # drift_log: a local file per replica (the chart's drift figures are the metrics).
    "simulator": Service(SimulatorSettings, None, COMMON_MANAGED | {"checkpoint", "judge_api_key"},
                         frozenset({"runs_dir", "drift_log"})),
    "judge": Service(JudgeSettings, "judge", COMMON_MANAGED | {"checkpoint", "vlm_api_key"}),
    # The chart always gives the trainer a simulator and a judge: no per-job embedded stack.
    "trainer": Service(TrainerSettings, "trainer",
                       COMMON_MANAGED | {"trainer_dir", "simulator_api_key", "judge_api_key"},
                       frozenset({"embedded_world_model", "embedded_judge"})),
    # No queue mode (the chart gives it no Redis) and no sessions.
    "optimizer": Service(OptimizerSettings, "optimizer",
                         COMMON_MANAGED | {"generator", "trajectory_vae", "inverse_dynamics", "world_model"},
                         frozenset({f for f in OptimizerSettings.model_fields if f.startswith("queue_")}
                                   | {"max_sessions", "session_ttl_s"}) - COMMON_MANAGED),
}
# Which service a Deployment's pods run (the workers are simulators).
SERVICE_OF = {"simulator": "simulator", "worker": "simulator", "judge": "judge", "trainer": "trainer",
              "optimizer": "optimizer"}


def role_values(values: dict[str, Any], service: str) -> dict[str, Any]:
    """The values of one service from a values file ({} for the defaults)."""
    key = SERVICES[service].key
    return values if key is None else values.get(key, {})


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    out = helm_run(helm, "template", RELEASE, str(CHART), *args)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in kinds(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
    return found[0]


def secret_data(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in kinds(docs, "Secret")
    }


def existing_secret(name: str, key: str) -> str:
    """What a test reads from a Secret the chart refers to but does not create."""
    return f"existing-secret:{name}/{key}"


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would build it from the rendered objects
    (a Secret the chart does not render reads as `existing_secret(name, key)`)."""
    configmaps = {c["metadata"]["name"]: c.get("data") or {} for c in kinds(docs, "ConfigMap")}
    secrets = secret_data(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                env[var["name"]] = secrets[ref["name"]][ref["key"]]
            else:
                env[var["name"]] = existing_secret(ref["name"], ref["key"])
    return env


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def component(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


LOAD_WORLD_MODEL = server.load_world_model  # the real ones; `launch` patches the modules'
LOAD_CLASSIFIER = judge_server.load_classifier


@cache
def bundled_model() -> WorldModel:
    return LOAD_WORLD_MODEL(cli.BUNDLED_WORLD_MODEL)


@cache
def bundled_judge() -> SuccessJudge:
    return LOAD_CLASSIFIER(cli.BUNDLED_JUDGE)


@cache
def tiny_planner() -> Planner:
    """The optimizer's pods get the tests' tiny planner (quicker than the bundled plan generator)."""
    return build_planner()


@dataclass
class Pod:
    """What `wmpo serve SERVICE` did with a pod's argv and environment, up to serving."""

    service: str
    settings: Any  # the service's settings class
    worker: bool
    checkpoint: str | None  # the checkpoint it loads (None: the trainer, a VLM-only judge;
    # the optimizer: its generator)
    backend: str | None = None  # the simulator's DiT backend (WMPO_BACKEND)


def launch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
    env: dict[str, str],
) -> Pod:
    """Run a container's argv through the real `wmpo` CLI with its environment, up to the
    point where it would serve (model loading and serving are stubbed)."""
    captured: dict[str, Any] = {}

    def load_world_model(path: str, **_sampler: Any) -> WorldModel:
        captured["checkpoint"] = str(path)
        return bundled_model()

    def load_classifier(path: str | None) -> SuccessJudge | None:
        captured["checkpoint"] = path
        return bundled_judge() if path else None

    def serve(settings: ServiceSettings, *_model: Any, worker: bool = False) -> None:
        captured.update(settings=settings, worker=worker)

    def load_planner(settings: OptimizerSettings) -> Planner:
        captured["checkpoint"] = settings.generator
        return tiny_planner()

    def exported_world_model(base: WorldModel, settings: Any) -> WorldModel:
        captured["backend"] = settings.backend  # no Triton to connect to here
        return base

    for module in (server, judge_server, trainer_server, optimizer_server):
        monkeypatch.setattr(module, "serve", serve)
    monkeypatch.setattr(optimizer_server, "load_planner", load_planner)
    monkeypatch.setattr(backends, "exported_world_model", exported_world_model)
    monkeypatch.setattr(server, "load_world_model", load_world_model)
    monkeypatch.setattr(judge_server, "load_classifier", load_classifier)
    for name in [n for n in os.environ if n.startswith("WMPO_")]:
        monkeypatch.delenv(name)  # a pod sees its own environment, not the last pod's
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get(argv[0]) == "services.cli:main", f"{argv[0]} is not the wmpo console script"
    assert argv[1] == "serve", argv
    try:
        code = cli.main(argv[1:])
    except SystemExit:  # argparse refused the arguments
        pytest.fail(f"`{' '.join(argv)}` rejected by wmpo's parser: {capsys.readouterr().err}")
    assert code == 0, f"`{' '.join(argv)}` failed: {capsys.readouterr().err}"
    return Pod(argv[2], captured["settings"], captured["worker"], captured.get("checkpoint"),
               captured.get("backend"))


@pytest.fixture
def start(entrypoint: list[str], image_env: dict[str, str], monkeypatch, capsys):
    """start(docs, deployment, **env): launch the Deployment's pod as the kubelet would: the
    image's ENTRYPOINT with the container's args; the image's WMPO_* ENV, then the
    container's env from the rendered ConfigMaps and Secrets (then `env`)."""

    def start_pod(docs: list[dict[str, Any]], deployment: dict[str, Any], **env: str) -> Pod:
        container = the_container(deployment)
        base = {k: v for k, v in image_env.items() if k.startswith("WMPO_")}
        return launch(monkeypatch, capsys, entrypoint + container["args"],
                      base | container_env(docs, container) | env)

    return start_pod


def serve_flags(capsys: pytest.CaptureFixture[str], service: str) -> set[str]:
    """The options `wmpo serve SERVICE --help` lists."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", service, "--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out))


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def all_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm, "-f", str(ALL_FEATURES))


@pytest.fixture(params=["default", "all-features"])
def case(request: pytest.FixtureRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rendered documents, the values file used: {} for the defaults)."""
    if request.param == "default":
        return request.getfixturevalue("default_docs"), {}
    return request.getfixturevalue("all_docs"), yaml.safe_load(ALL_FEATURES.read_text())


@pytest.fixture
def docs(case: tuple[list[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    return case[0]


# ------------------------------------------------------------------ lint and schemas


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_FEATURES)]], ids=["default", "all-features"])
def test_helm_lint_passes(helm: str, values: list[str]) -> None:
    out = helm_run(helm, "lint", "--strict", str(CHART), *values)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_resources(default_docs, all_docs) -> None:
    base = {"ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
            "PersistentVolumeClaim"}
    assert {d["kind"] for d in default_docs} == base
    # The Pod: the `helm test` hook of Triton (helm template renders test hooks).
    assert {d["kind"] for d in all_docs} == base | {"HorizontalPodAutoscaler", "Pod"} | CUSTOM_KINDS
    names = ["wmpo-judge", "wmpo-simulator", "wmpo-trainer"]
    assert sorted(d["metadata"]["name"] for d in kinds(default_docs, "Deployment")) == names
    assert sorted(d["metadata"]["name"] for d in kinds(all_docs, "Deployment")) == sorted(
        names + ["wmpo-worker", "wmpo-triton", "wmpo-optimizer"])


def kube_versions() -> list[str]:
    """The chart's floor (Chart.yaml kubeVersion) and the newest version with schemas here."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    floor = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", chart["kubeVersion"])
    assert floor, chart["kubeVersion"]
    return [floor.group(1), kubernetes_validate.latest_version()]


@pytest.mark.parametrize("version", kube_versions())
def test_standard_resources_match_kubernetes_schemas(docs, version: str) -> None:
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_is_not_vacuous(default_docs) -> None:
    deployment = yaml.safe_load(yaml.safe_dump(named(default_docs, "Deployment", "wmpo-simulator")))
    the_container(deployment)["livenessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["api.replicaCount=-1"], "api.replicaCount"),
        (["replicas=3"], "replicas"),  # an unknown key
        (["settings.max_batchsize=8"], "max_batchsize"),  # a misspelt setting
        (["settings.max_batch_size=0"], "max_batch_size"),
        (["settings.log_level=verbose"], "log_level"),
        (["settings.api_keys=abc"], "api_keys"),  # the chart's own settings are not values
        (["settings.judge_api_key=abcdefghijklmnopq"], "judge_api_key"),  # a key in a ConfigMap
        (["apiKeys.keys[0]=short"], "apiKeys.keys"),  # the service wants >= 16 characters
        (["ports.http=70000"], "ports.http"),
        (["api.gpu=-1"], "api.gpu"),
        (["redis.url=http://cache:6379"], "redis.url"),
        (["judge.replicaCount=-1"], "judge.replicaCount"),
        (["judge.gpu=1"], "gpu"),  # neither the judge nor the trainer uses GPUs
        (["judge.settings.vlm_samples=0"], "vlm_samples"),
        (["judge.settings.vlm_url=vllm:8000"], "vlm_url"),
        (["judge.settings.checkpoint=/models/judge"], "checkpoint"),  # judge.checkpoint.path
        (["judge.ports.grpc=0"], "judge.ports.grpc"),
        (["trainer.settings.trainer_dir=/data"], "trainer_dir"),  # the volume's mountPath
        (["trainer.settings.simulator_url=sim:8000"], "simulator_url"),
        (["trainer.settings.stream_poll_s=60"], "stream_poll_s"),
        (["trainer.persistence.accessModes[0]=RWX"], "accessModes"),
        (["trainer.resources.requests.cpu=lots"], "cpu"),
        (["triton.build.variant=tensorrt"], "variant"),
        (["triton.ports.metrics=0"], "triton.ports.metrics"),
        (["triton.gpus=1"], "gpus"),  # an unknown key
        (["triton.image.tag="], "tag"),  # Triton's image has no default tag of the chart's
        (["triton.extraArgs[0]=log-verbose=1"], "extraArgs"),
        (["optimizer.settings.max_steps=0"], "max_steps"),
        (["optimizer.settings.generator=/models/g"], "generator"),  # optimizer.checkpoint.generator
        (["optimizer.settings.queue_prefix=x"], "queue_prefix"),  # no queue mode
        (["optimizer.checkpoint.generator=models/g"], "optimizer.checkpoint.generator"),
        (["optimizer.gpu=-1"], "optimizer.gpu"),
    ],
)
def test_bad_values_fail_lint(helm: str, args: list[str], message: str) -> None:
    """values.schema.json: a bad value or an unknown key fails `helm lint` (and install)."""
    sets = [a for arg in args for a in ("--set", arg)]
    out = helm_run(helm, "lint", str(CHART), *sets)
    assert out.returncode != 0, f"helm lint accepted {args}"
    assert message in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker.enabled=true"], "worker.enabled needs Redis"),
        (["worker.enabled=true", "redis.url=redis://r:6379/0",
          "worker.terminationGracePeriodSeconds=30"], "queue_drain_s"),
        (["worker.keda.enabled=true", "redis.url=redis://r:6379/0"], "set worker.enabled"),
        (["checkpoint.volume.emptyDir.medium=Memory"], "not inside checkpoint.mountPath"),
        (["judge.checkpoint.volume.emptyDir.medium=Memory"], "not inside judge.checkpoint.mountPath"),
        (["judge.checkpoint.path="], "set judge.settings.vlm_url"),
        (["apiKeys.keys[0]=k-0123456789abcdef", "apiKeys.existingSecret=team"], "not both"),
        (["apiKeys.serviceKeySecretKey=k"], "apiKeys.serviceKeySecretKey names an entry of"),
        (["redis.url=redis://r:6379/0", "redis.existingSecret=redis"], "not both"),
        (["worker.enabled=true", "redis.existingSecret=redis", "worker.keda.enabled=true"],
         "worker.keda.address"),
        (["redis.url=redis://r:6379/0", "api.consumeQueue=false"], "set worker.enabled"),
        (["judge.enabled=false"], "the trainer's jobs need a judge"),
        (["trainer.replicaCount=2"], "trainer.replicaCount > 1 needs Redis"),
        (["trainer.replicaCount=2", "redis.url=redis://r:6379/0",
          "trainer.persistence.accessModes[0]=ReadWriteOnce"], "needs ReadWriteMany"),
        (["trainer.terminationGracePeriodSeconds=30"], "trainer.settings.queue_drain_s"),
        (["optimizer.enabled=true", "optimizer.checkpoint.generator="],
         "optimizer.enabled needs optimizer.checkpoint.generator"),
        (["optimizer.enabled=true", "optimizer.checkpoint.worldModel=/m/w",
          "optimizer.checkpoint.volume.emptyDir.medium=Memory", "optimizer.checkpoint.mountPath=/app/checkpoints"],
         "optimizer.checkpoint.worldModel=/m/w is not inside optimizer.checkpoint.mountPath"),
        (["optimizer.enabled=true", "optimizer.checkpoint.generator=/m/g",
          "optimizer.checkpoint.trajectoryVae=/m/v", "optimizer.checkpoint.volume.emptyDir.medium=Memory"],
         "optimizer.checkpoint.generator=/m/g is not inside optimizer.checkpoint.mountPath"),
    ],
)
def test_bad_combinations_fail_rendering(helm: str, args: list[str], message: str) -> None:
    """Combinations a JSON schema cannot express fail rendering (`helm template`/`install`)
    with a message saying what to set; `helm lint` only logs template failures."""
    sets = [a for arg in args for a in ("--set", arg)]
    out = helm_run(helm, "template", RELEASE, str(CHART), *sets)
    assert out.returncode != 0, f"helm template accepted {args}"
    assert message in out.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_settings_schema_mirrors_the_service_settings(name: str) -> None:
    """Each service's `settings` takes exactly its own fields but those the chart sets,
    with the service's bounds."""
    service = SERVICES[name]
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    chart = (schema if service.key is None else schema[service.key]["properties"])["settings"]
    fields = service.settings_cls.model_json_schema()["properties"]
    assert set(chart["properties"]) == set(fields) - service.managed - service.unused
    assert chart["additionalProperties"] is False
    for field, spec in chart["properties"].items():
        for keyword in ("type", "minimum", "maximum", "exclusiveMinimum", "pattern", "enum"):
            assert spec.get(keyword) == fields[field].get(keyword), (field, keyword)
        assert spec.get("description") == fields[field].get("description"), field


# ------------------------------------------------------------------ the pods


def deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployments of the wmpo image's services (Triton's is apart: `triton_deployment`)."""
    return [d for d in kinds(docs, "Deployment") if component(d) in SERVICE_OF]


def test_pods_start_with_real_cli_flags_and_valid_settings(case, start, capsys) -> None:
    """ENTRYPOINT + args through `wmpo`'s parser, env from the image and the rendered
    ConfigMaps/Secrets through each service's settings (which refuse insecure or bad
    configurations)."""
    docs, values = case
    for deployment in deployments(docs):
        container = the_container(deployment)
        assert "command" not in container, "the image's ENTRYPOINT must stay the command"
        service = container["args"][0]
        assert service == SERVICE_OF[component(deployment)]
        # Exact option names: argparse would also take an abbreviation such as --grpc.
        assert {a for a in container["args"] if a.startswith("--")} <= serve_flags(capsys, service)
        pod = start(docs, deployment)
        settings = pod.settings
        assert pod.service == service and isinstance(settings, SERVICES[service].settings_cls)
        assert pod.worker == (component(deployment) == "worker")
        assert settings.host == "0.0.0.0" and settings.auth_enabled and not settings.dev_mode
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == settings.port
        if not pod.worker:
            assert ports["grpc"] == settings.grpc_port
        role = role_values(values, service)
        for name, value in role.get("settings", {}).items():
            assert getattr(settings, name) == value, name
        if service == "optimizer":  # no queue mode: never the Redis URL
            assert settings.redis_url is None and "WMPO_REDIS_URL" not in {e["name"] for e in container["env"]}
            c = role["checkpoint"]
            assert (pod.checkpoint, settings.trajectory_vae, settings.inverse_dynamics, settings.world_model) == (
                c["generator"], c["trajectoryVae"], c["inverseDynamics"], c.get("worldModel") or None)
            for path in (c["generator"], c["trajectoryVae"], c["inverseDynamics"]):  # bundled: in the image
                if path.startswith("/app/checkpoints/"):
                    assert (REPO / "checkpoints" / path.removeprefix("/app/checkpoints/")).is_dir(), path
            continue
        if values:  # Redis: every service's queue (the trainer's job records and queue too)
            assert settings.redis_url == values["redis"]["url"]
            assert settings.queue_worker == (service != "simulator" or pod.worker
                                             or values["api"]["consumeQueue"])
        if service == "trainer":
            assert pod.checkpoint is None
            (data,) = [m for m in container["volumeMounts"] if m["name"] == "data"]
            assert settings.trainer_dir == data["mountPath"] and not data.get("readOnly")
        elif "checkpoint" in role:
            assert pod.checkpoint == role["checkpoint"]["path"]
            if service == "judge":  # the VLM endpoint's token from its own Secret
                vlm = role["vlmApiKey"]
                assert settings.vlm_api_key.get_secret_value() == existing_secret(
                    vlm["existingSecret"], vlm["existingSecretKey"])
        else:
            # The image's bundled checkpoint: COPY checkpoints /app/checkpoints.
            assert pod.checkpoint.startswith("/app/checkpoints/")
            assert (REPO / "checkpoints" / pod.checkpoint.removeprefix("/app/checkpoints/")).is_dir()
        env = {e["name"] for e in container["env"]}
        assert "WMPO_API_KEYS" in env and ("WMPO_REDIS_URL" in env) == bool(values)
        if service == "simulator":  # the DiT on the chart's Triton when it deploys one
            triton = values.get("triton", {}).get("enabled", False)
            assert settings.backend == ("triton" if triton else "torch")
            assert pod.backend == ("triton" if triton else None)  # torch: loaded as it is


def test_the_optimizer_serves_the_images_bundled_checkpoints_when_only_enabled(helm, start) -> None:
    """`optimizer.enabled=true` alone: the plan generator, trajectory VAE and residual inverse
    dynamics the image bundles (COPY checkpoints /app/checkpoints), through the plan tokens."""
    docs = render(helm, "--set", "optimizer.enabled=true")
    (deployment,) = [d for d in deployments(docs) if component(d) == "optimizer"]
    pod = start(docs, deployment)
    s = pod.settings
    assert (pod.checkpoint, s.trajectory_vae, s.inverse_dynamics, s.world_model) == (
        "/app/checkpoints/plan-generator-tasks", "/app/checkpoints/trajectory-vae", "/app/checkpoints/inverse-dynamics", None)


def resolve(docs: list[dict[str, Any]], url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's Service a URL names (same namespace) and the one Deployment behind it,
    whose container listens on the port the Service sends the URL's port to."""
    parts = urlsplit(url)
    service = named(docs, "Service", parts.hostname)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
    (deployment,) = [d for d in deployments(docs) if selects(service["spec"]["selector"], d)]
    names = {p["name"] for p in the_container(deployment)["ports"]}
    assert port["targetPort"] == "http" and "http" in names, (url, port)
    return service, deployment


# (caller, its URL setting, the key it sends with it, the service that must answer)
CALLS = [
    ("simulator", "judge_url", "judge_api_key", "judge"),  # /v1/imagine's verify
    ("worker", "judge_url", "judge_api_key", "judge"),
    ("trainer", "simulator_url", "simulator_api_key", "simulator"),
    ("trainer", "judge_url", "judge_api_key", "judge"),
]


def test_services_call_each_other_with_accepted_keys(case, start) -> None:
    """The URLs the simulator and the trainer get name the chart's Services of the right
    Deployments, and the key each sends is one the called service's settings accept."""
    docs, _ = case
    pods = {component(d): start(docs, d) for d in deployments(docs)}
    for caller, url_field, key_field, callee in CALLS:
        if caller not in pods:
            continue
        settings = pods[caller].settings
        _, deployment = resolve(docs, getattr(settings, url_field))
        assert component(deployment) == callee, (caller, url_field)
        key = getattr(settings, key_field)
        callee_settings = pods[callee].settings
        accepted = {k.get_secret_value() for k in (*callee_settings.api_keys, *callee_settings.service_api_keys)}
        assert key is not None and key.get_secret_value() in accepted, (caller, key_field)


def build_app(pod: Pod, tmp_path: Path) -> Any:
    """The real app `serve` would run for the pod's settings (gRPC on any free port)."""
    settings = pod.settings.model_copy(update={"grpc_port": 0})
    if pod.service == "judge":
        return judge_server.build_app(JudgeRuntime(bundled_judge(), settings), settings)
    if pod.service == "optimizer":
        return optimizer_server.build_app(OptimizerRuntime(tiny_planner(), settings), settings)
    if pod.service == "trainer":
        # The data volume is a directory here; torch's threads stay the test process's own.
        settings = settings.model_copy(update={"trainer_dir": str(tmp_path / "trainer"),
                                               "torch_threads": 0})
        return trainer_server.build_app(TrainerRuntime(settings), settings)
    if pod.worker:
        return server.build_worker_app(
            SimulatorRuntime(bundled_model(), settings, consume=True), settings)
    return server.build_app(SimulatorRuntime(bundled_model(), settings), settings)


def test_probes_hit_the_real_health_routes(docs, start, redis_prefix: str, tmp_path: Path) -> None:
    """Each pod's probes, sent without an API key (as the kubelet does) to the app its own
    settings build, answer 200; Redis is the local one for queue mode. /metrics takes the
    ServiceMonitor's key and the key the services send each other."""
    secrets = secret_data(docs)["wmpo-secrets"]
    for deployment in deployments(docs):
        container = the_container(deployment)
        redis = {"WMPO_REDIS_URL": REDIS_URL, "WMPO_QUEUE_PREFIX": redis_prefix}
        pod = start(docs, deployment, **(redis if container_env(docs, container).get(
            "WMPO_REDIS_URL") else {}))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        with TestClient(build_app(pod, tmp_path)) as client:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container[kind]["httpGet"]
                assert probe["path"] in HEALTH_PATHS
                assert ports[probe["port"]] == pod.settings.port
                response = client.get(probe["path"])
                assert response.status_code == 200, (component(deployment), kind, response.text)
            # /metrics needs a key: the one the ServiceMonitor sends works; the key the services
            # send each other opens the simulator and the judge, never the trainer.
            assert client.get(METRICS_PATH).status_code == 401
            called = pod.service in ("simulator", "judge") and not pod.worker
            for key, works in ((secrets["metrics-api-key"], True), (secrets["service-api-key"], called)):
                metrics = client.get(METRICS_PATH, headers={"Authorization": f"Bearer {key}"})
                assert (metrics.status_code == 200 and "wmpo_" in metrics.text) == works, (
                    component(deployment), works)


def test_gpu_limits(default_docs, all_docs) -> None:
    for deployment in deployments(default_docs):
        assert "nvidia.com/gpu" not in str(the_container(deployment)["resources"])
    for deployment in deployments(all_docs):
        resources = the_container(deployment)["resources"]
        if component(deployment) in ("judge", "trainer"):  # CPU only: no GPU code
            assert "nvidia.com/gpu" not in str(resources)
            continue
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert "nvidia.com/gpu" not in resources.get("requests", {})
        # The role's own resources stay.
        assert resources["requests"]["memory"] == ("4Gi" if component(deployment) == "optimizer" else "2Gi")


def test_trainer_data_volume(helm: str, default_docs, all_docs) -> None:
    """The trainer's data directory is a PVC of the chart's (ReadWriteMany: replicas share
    it) or an existing claim. Without Redis one replica owns the records on it, so updates
    stop the old pod first (Recreate); with Redis replicas hand jobs over (RollingUpdate)."""
    values = yaml.safe_load(ALL_FEATURES.read_text())["trainer"]
    for docs, strategy in ((default_docs, "Recreate"), (all_docs, "RollingUpdate")):
        trainer = named(docs, "Deployment", "wmpo-trainer")
        assert trainer["spec"]["strategy"]["type"] == strategy
        (volume,) = [v for v in trainer["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
        claim = named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = named(all_docs, "PersistentVolumeClaim", "wmpo-trainer-data")["spec"]
    assert spec["storageClassName"] == values["persistence"]["storageClassName"]
    assert spec["resources"]["requests"]["storage"] == values["persistence"]["size"]
    assert "storageClassName" not in named(default_docs, "PersistentVolumeClaim",
                                           "wmpo-trainer-data")["spec"]  # the cluster's default

    docs = render(helm, "--set", "trainer.persistence.existingClaim=team-trainer-data")
    assert kinds(docs, "PersistentVolumeClaim") == []
    volumes = named(docs, "Deployment", "wmpo-trainer")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "team-trainer-data"}} in volumes


def test_without_the_chart_judge(helm: str) -> None:
    """judge.enabled=false: the simulator has no judge (verify refused) unless settings name
    another one, which then gets the service key, as does the trainer's."""
    docs = render(helm, "--set", "judge.enabled=false", "--set", "trainer.enabled=false")
    assert [d["metadata"]["name"] for d in deployments(docs)] == ["wmpo-simulator"]
    assert "WMPO_JUDGE_URL" not in (named(docs, "ConfigMap", "wmpo-simulator-settings")["data"] or {})
    env = {e["name"] for e in the_container(deployments(docs)[0])["env"]}
    assert "WMPO_JUDGE_API_KEY" not in env

    other = "http://judge.models.svc:8001"
    docs = render(helm, "--set", "judge.enabled=false", "--set", f"settings.judge_url={other}",
                  "--set", f"trainer.settings.judge_url={other}")
    for name in ("simulator", "trainer"):
        assert named(docs, "ConfigMap", f"wmpo-{name}-settings")["data"]["WMPO_JUDGE_URL"] == other
        env = {e["name"] for e in the_container(named(docs, "Deployment", f"wmpo-{name}"))["env"]}
        assert "WMPO_JUDGE_API_KEY" in env


# ------------------------------------------------------------------ API keys


def test_no_default_api_key(helm: str, default_docs) -> None:
    """Without keys in values the chart generates one per install: never a fixed default."""
    first = secret_data(default_docs)["wmpo-secrets"]
    second = secret_data(render(helm))["wmpo-secrets"]
    assert first["api-keys"] != second["api-keys"]
    assert len(first["api-keys"]) >= 32 and "," not in first["api-keys"]
    assert first["metrics-api-key"] == first["api-keys"]
    # The services' own key is another random key, not a client key.
    assert len(first["service-api-key"]) >= 32 and first["service-api-key"] != first["api-keys"]
    assert first["service-api-key"] != second["service-api-key"]
    assert first["api-keys"] not in (CHART / "values.yaml").read_text()


def test_given_keys_and_existing_secret(helm: str, all_docs) -> None:
    keys = yaml.safe_load(ALL_FEATURES.read_text())["apiKeys"]["keys"]
    data = secret_data(all_docs)["wmpo-secrets"]
    assert data["api-keys"] == ",".join(keys) and data["metrics-api-key"] == keys[0]
    assert data["service-api-key"] not in keys and len(data["service-api-key"]) >= 32

    existing = ["--set", "apiKeys.existingSecret=team-keys", "--set", "apiKeys.existingSecretKey=keys"]
    docs = render(helm, *existing, "--set", "serviceMonitor.enabled=true")
    assert kinds(docs, "Secret") == []  # nothing of the chart's own to hold
    auth = kinds(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["authorization"]
    assert auth["credentials"]["name"] == "team-keys"

    def refs(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
        """(Deployment, variable) -> the Secret entry it reads, for the keys."""
        return {(d["metadata"]["name"], e["name"]): e["valueFrom"]["secretKeyRef"]
                for d in deployments(docs) for e in the_container(d)["env"]
                if e["name"].endswith("API_KEYS") or e["name"].endswith("API_KEY")}

    # One key in the Secret's entry: the services send each other that entry itself.
    assert refs(docs) == {
        **{(f"wmpo-{c}", "WMPO_API_KEYS"): {"name": "team-keys", "key": "keys"}
           for c in ("simulator", "judge", "trainer")},
        **{(d, v): {"name": "team-keys", "key": "keys"} for d, v in (
            ("wmpo-simulator", "WMPO_JUDGE_API_KEY"), ("wmpo-trainer", "WMPO_SIMULATOR_API_KEY"),
            ("wmpo-trainer", "WMPO_JUDGE_API_KEY"))},
    }
    # Several keys there: another entry of that Secret holds the one they send.
    docs = render(helm, *existing, "--set", "apiKeys.serviceKeySecretKey=service-key")
    for (_, variable), ref in refs(docs).items():
        key = "keys" if variable == "WMPO_API_KEYS" else "service-key"
        assert ref == {"name": "team-keys", "key": key}, variable
    # ... which the called services accept besides the client keys; the trainer does not.
    accepting = {d for d, v in refs(docs) if v == "WMPO_SERVICE_API_KEYS"}
    assert accepting == {"wmpo-simulator", "wmpo-judge"}


# ------------------------------------------------------------------ routing and scaling


def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_and_budgets_select_the_right_pods(docs) -> None:
    """Each Service and budget selects exactly its own Deployment (the workers get no API
    traffic); the API Services send HTTP and gRPC to the container's ports (Triton's also its
    metrics)."""
    for service in kinds(docs, "Service"):
        matched = [d for d in kinds(docs, "Deployment") if selects(service["spec"]["selector"], d)]
        assert [d["metadata"]["name"] for d in matched] == [service["metadata"]["name"]]
        container_ports = {p["name"] for p in the_container(matched[0])["ports"]}
        targets = {p["targetPort"] for p in service["spec"]["ports"]}
        headless = service["spec"].get("clusterIP") == "None"  # the workers' /metrics only
        expected = {"http"} if headless else {"http", "grpc"}
        if component(matched[0]) == "triton":
            expected = {"http", "grpc", "metrics"}
        assert targets == container_ports == expected
    spec = named(docs, "Service", "wmpo-simulator")["spec"]
    assert spec["sessionAffinity"] == "ClientIP"  # sessions are replica-local
    for name in ("wmpo-judge", "wmpo-trainer", "wmpo-optimizer"):  # stateless for clients: any replica
        if not [d for d in kinds(docs, "Service") if d["metadata"]["name"] == name]:
            continue  # the optimizer is off by default
        assert "sessionAffinity" not in named(docs, "Service", name)["spec"]
    for budget in kinds(docs, "PodDisruptionBudget"):
        matched = [d for d in deployments(docs) if selects(budget["spec"]["selector"]["matchLabels"], d)]
        assert [d["metadata"]["name"] for d in matched] == [budget["metadata"]["name"]]


def test_autoscalers_own_the_replica_counts(helm: str, default_docs, all_docs) -> None:
    assert named(default_docs, "Deployment", "wmpo-simulator")["spec"]["replicas"] == 2
    assert named(default_docs, "Deployment", "wmpo-judge")["spec"]["replicas"] == 1
    hpas = {h["metadata"]["name"]: h["spec"] for h in kinds(all_docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"wmpo-simulator", "wmpo-judge"}
    for name, hpa in hpas.items():  # each scales its own Deployment, which exists
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert named(all_docs, "Deployment", name)
    assert hpas["wmpo-judge"]["maxReplicas"] == 6 and hpas["wmpo-judge"]["minReplicas"] == 1
    values = yaml.safe_load(ALL_FEATURES.read_text())
    for deployment in deployments(all_docs):
        if component(deployment) in ("simulator", "worker", "judge"):  # HPAs and KEDA set these
            assert "replicas" not in deployment["spec"]
        else:
            assert deployment["spec"]["replicas"] == values[component(deployment)]["replicaCount"]
    # A disabled judge gets no autoscaler either.
    off = render(helm, "--set", "judge.enabled=false", "--set", "judge.autoscaling.enabled=true",
                 "--set", "trainer.enabled=false")
    assert [h["metadata"]["name"] for h in kinds(off, "HorizontalPodAutoscaler")] == []


def test_keda_scales_workers_on_the_real_stream(all_docs, start) -> None:
    """The ScaledObject watches the stream and consumer group the workers actually use."""
    settings = start(all_docs, named(all_docs, "Deployment", "wmpo-worker")).settings
    config = QueueConfig.from_settings(IMAGINE_QUEUE, settings)
    queue = RedisWorkQueue(config)  # only for its key names; never connects
    asyncio.run(queue.close())

    scaled = kinds(all_docs, "ScaledObject")[0]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "wmpo-worker"}
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    triggers = spec["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values())  # KEDA metadata is string-valued
        assert meta["stream"] == queue.stream_key == "wmpo-ci:{simulator.imagine}:requests"
        assert meta["consumerGroup"] == config.group
        assert meta["address"] == "redis-master.cache.svc:6379" and meta["databaseIndex"] == "0"
        assert meta["enableTLS"] == "false"
        assert trigger["authenticationRef"] == {"name": "wmpo-redis-auth"}
    lag = [t["metadata"] for t in triggers if "lagCount" in t["metadata"]]
    pending = [t["metadata"] for t in triggers if "pendingEntriesCount" in t["metadata"]]
    assert len(lag) == 1 and len(pending) == 1
    assert int(lag[0]["lagCount"]) >= 1 and "activationLagCount" in lag[0]


def test_keda_address_from_a_tls_url(helm: str) -> None:
    docs = render(helm, "-f", str(ALL_FEATURES), "--set", "redis.url=rediss://:pw@cache.example:6380/3")
    for trigger in kinds(docs, "ScaledObject")[0]["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert (meta["address"], meta["databaseIndex"], meta["enableTLS"]) == (
            "cache.example:6380", "3", "true")
        assert "pw" not in str(meta)  # the password never leaves the Secret


def monitored(monitor: dict[str, Any], docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Services a ServiceMonitor's selector picks (matchLabels and NotIn expressions)."""
    selector = monitor["spec"]["selector"]
    picked = []
    for service in kinds(docs, "Service"):
        labels = service["metadata"]["labels"]
        if not all(labels.get(k) == v for k, v in selector["matchLabels"].items()):
            continue
        for expression in selector.get("matchExpressions", []):
            assert expression["operator"] == "NotIn", expression  # the only one used
            if labels.get(expression["key"]) in expression["values"]:
                break
        else:
            picked.append(service)
    return picked


def test_service_monitor_scrapes_every_component(all_docs) -> None:
    monitor = named(all_docs, "ServiceMonitor", "wmpo")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    services = monitored(monitor, all_docs)
    assert sorted(s["metadata"]["name"] for s in services) == [
        "wmpo-judge", "wmpo-optimizer", "wmpo-simulator", "wmpo-trainer", "wmpo-worker"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == METRICS_PATH
    for service in services:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    credentials = endpoint["authorization"]["credentials"]
    assert credentials["key"] in secret_data(all_docs)[credentials["name"]]


def test_notes_render(helm: str, tmp_path: Path) -> None:
    """NOTES.txt renders (helm template skips it): rendered here as a file of a copy."""
    chart = tmp_path / "wmpo"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "NOTES.txt")
    (chart / "templates" / "notes.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "NOTES.txt") . | indent 2 }}\n')
    for values in ([], ["-f", str(ALL_FEATURES)]):
        out = helm_run(helm, "template", RELEASE, str(chart), "--show-only",
                       "templates/notes.yaml", *values)
        assert out.returncode == 0, out.stderr
        notes = yaml.safe_load(out.stdout)["notes"]
        assert "port-forward svc/wmpo-simulator" in notes and "metrics-api-key" in notes
        assert "wmpo-judge." in notes and "PVC wmpo-trainer-data" in notes
        assert ("wmpo-optimizer." in notes) == bool(values)  # off by default


# ------------------------------------------------------------------ Triton


def triton_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return named(docs, "Deployment", "wmpo-triton")


def test_triton_is_not_rendered_when_disabled(default_docs) -> None:
    """triton.enabled=false (the default): no Triton object, no test pod, and the simulator
    keeps its in-process DiT (no WMPO_BACKEND from the chart)."""
    assert not [d for d in default_docs if "triton" in d["metadata"]["name"]]
    assert not [d for d in default_docs if d["metadata"].get("labels", {}).get(
        "app.kubernetes.io/component") == "triton"]
    assert kinds(default_docs, "Pod") == []
    data = named(default_docs, "ConfigMap", "wmpo-simulator-settings")["data"] or {}
    assert not {k for k in data if k.startswith("WMPO_TRITON") or k == "WMPO_BACKEND"}


def test_triton_pod_ports_probes_and_gpu(all_docs) -> None:
    """The official image serving the repository volume, KServe v2 health probes on its HTTP
    port, HTTP/gRPC/metrics ports behind its Service, and its GPUs requested (= limits)."""
    values = yaml.safe_load(ALL_FEATURES.read_text())["triton"]
    deployment = triton_deployment(all_docs)
    pod = deployment["spec"]["template"]["spec"]
    container = the_container(deployment)
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:") and container["image"].endswith("-py3")
    assert container["command"] == ["tritonserver"]
    args = container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert f"--http-port={ports['http']}" in args and f"--grpc-port={ports['grpc']}" in args
    assert f"--metrics-port={ports['metrics']}" in args and "--strict-readiness=true" in args
    assert "--log-verbose=0" in args  # triton.extraArgs
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"] == {"path": "/v2/health/ready", "port": "http"}
    assert probes["startupProbe"] == {"path": "/v2/health/ready", "port": "http"}
    assert probes["livenessProbe"] == {"path": "/v2/health/live", "port": "http"}
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["memory"] == "4Gi"  # the role's own resources stay
    # The repository: the PVC of the values, read-only for Triton, at its --model-repository.
    (repo,) = [a.split("=", 1)[1] for a in args if a.startswith("--model-repository=")]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert mount["mountPath"] == repo == values["modelRepository"]["mountPath"] and mount["readOnly"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"] == values["modelRepository"]["volume"]["persistentVolumeClaim"]
    assert pod["nodeSelector"] == values["nodeSelector"] and pod["tolerations"] == values["tolerations"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    service = named(all_docs, "Service", "wmpo-triton")
    assert selects(service["spec"]["selector"], deployment)
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("http", 8000, "http"), ("grpc", 8001, "grpc"), ("metrics", 8002, "metrics")}


def test_triton_repository_is_built_by_the_real_export_and_tensorrt(all_docs, entrypoint) -> None:
    """The init containers: `wmpo export triton` (the wmpo image, parsed by the real CLI) from
    the simulator's own checkpoint into the repository volume, then the TensorRT build script
    that export writes, run on the GPU in the TensorRT image of Triton's release."""
    values = yaml.safe_load(ALL_FEATURES.read_text())
    deployment = triton_deployment(all_docs)
    export, build = deployment["spec"]["template"]["spec"]["initContainers"]
    assert export["image"] == the_container(named(all_docs, "Deployment", "wmpo-simulator"))["image"]
    assert export["command"] == [entrypoint[0]]  # wmpo, not `wmpo serve`
    a = cli.build_parser().parse_args(export["args"])
    assert (a.checkpoint, a.variant) == (values["checkpoint"]["path"], "tensorrt_plan")
    assert (a.max_batch, a.opt_batch, a.version) == (64, 32, 2)
    mounts = {m["name"]: m["mountPath"] for m in export["volumeMounts"]}
    assert a.repo == mounts["models"] and a.checkpoint.startswith(mounts["checkpoint"] + "/")
    assert "nvidia.com/gpu" not in str(export["resources"])  # the export runs on the CPU

    triton_tag = the_container(deployment)["image"].split(":")[1]
    assert build["image"] == f"nvcr.io/nvidia/tensorrt:{triton_tag}"
    assert build["command"] == ["sh", f"{a.repo}/{TRT_SCRIPT}", a.repo]
    assert build["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {m["name"]: m["mountPath"] for m in build["volumeMounts"]}["models"] == a.repo
    # The simulator's settings and the repository name the same checkpoint: the hash the
    # simulator checks at startup matches.
    sim = named(all_docs, "ConfigMap", "wmpo-simulator-settings")["data"]
    assert "WMPO_CHECKPOINT" not in sim  # the simulator's --checkpoint flag, below
    args = the_container(named(all_docs, "Deployment", "wmpo-simulator"))["args"]
    assert args[args.index("--checkpoint") + 1] == a.checkpoint


def test_the_simulator_and_its_workers_call_triton_over_grpc(all_docs, start) -> None:
    """With triton.enabled the simulator API and its queue workers run their DiT on the chart's
    Triton: WMPO_TRITON_URL names its Service's gRPC port, which reaches the container's."""
    for name in ("wmpo-simulator", "wmpo-worker"):
        pod = start(all_docs, named(all_docs, "Deployment", name))
        settings = pod.settings
        assert (settings.backend, pod.backend, settings.triton_shm) == ("triton", "triton", "off")
        # Waiting for Triton's models ends before the startup probe gives up on the pod.
        probe = the_container(named(all_docs, "Deployment", name))["startupProbe"]
        assert 30 <= settings.triton_startup_timeout_s < probe["periodSeconds"] * probe["failureThreshold"]
        host, port = settings.triton_url.split(":")
        service = named(all_docs, "Service", host)
        (target,) = [p["targetPort"] for p in service["spec"]["ports"] if p["port"] == int(port)]
        assert target == "grpc" and selects(service["spec"]["selector"], triton_deployment(all_docs))


def test_triton_helm_test_asks_the_simulator_with_an_accepted_key(all_docs, start) -> None:
    """The `helm test` pod runs the smoke check (services/simulator/smoke.py) against the
    simulator's Service with a key the simulator accepts, expecting the triton backend."""
    (pod,) = kinds(all_docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "services.simulator.smoke"]
    args = container["args"]
    assert args[args.index("--expect-backend") + 1] == "triton"
    _, deployment = resolve(all_docs, args[args.index("--url") + 1])
    assert component(deployment) == "simulator"
    key = container_env(all_docs, container)[SMOKE_KEY_ENV]
    settings = start(all_docs, deployment).settings
    assert key in {k.get_secret_value() for k in (*settings.api_keys, *settings.service_api_keys)}


def test_triton_metrics_are_scraped_from_its_metrics_port(all_docs) -> None:
    """Triton's metrics port gets a ServiceMonitor of its own (no key: Triton's metrics are
    open); the services' ServiceMonitor, with its key, leaves Triton out."""
    assert "wmpo-triton" not in [s["metadata"]["name"] for s in monitored(named(all_docs, "ServiceMonitor", "wmpo"), all_docs)]
    monitor = named(all_docs, "ServiceMonitor", "wmpo-triton")
    assert [s["metadata"]["name"] for s in monitored(monitor, all_docs)] == ["wmpo-triton"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert "authorization" not in endpoint


def test_triton_on_the_cpu_with_an_emptydir_repository(helm: str) -> None:
    """gpu 0 and the onnxruntime_onnx variant: no GPU anywhere, no TensorRT build, CPU
    instances; no volume: the build fills an emptyDir."""
    docs = render(helm, "--set", "triton.enabled=true", "--set", "triton.gpu=0",
                  "--set", "triton.build.variant=onnxruntime_onnx")
    deployment = triton_deployment(docs)
    assert "nvidia.com/gpu" not in str(deployment)
    (export,) = deployment["spec"]["template"]["spec"]["initContainers"]
    a = cli.build_parser().parse_args(export["args"])
    assert (a.variant, a.instance_kind) == ("onnxruntime_onnx", "cpu")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"]
    assert volume == {"name": "models", "emptyDir": {}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["settings.backend=onnx"], "triton.enabled runs the simulator's DiT on the chart's Triton"),
        (["triton.gpu=0"], "set triton.gpu"),
        (["triton.build.enabled=false"], "set triton.modelRepository.volume"),
        (["settings.max_batch_size=128"], "exceeds triton.build.maxBatch=64"),
        (["triton.build.optBatch=128"], "must not exceed triton.build.maxBatch"),
    ],
)
def test_bad_triton_combinations_fail_rendering(helm: str, args: list[str], message: str) -> None:
    sets = [a for arg in ["triton.enabled=true", *args] for a in ("--set", arg)]
    out = helm_run(helm, "template", RELEASE, str(CHART), *sets)
    assert out.returncode != 0, f"helm template accepted {args}"
    assert message in out.stderr
