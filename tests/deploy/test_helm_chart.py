"""The Helm chart (deploy/helm/wmpo), checked without a cluster.

helm lints and renders it with default values and with every optional feature on
(ci/all-features-values.yaml); the standard resources are validated against the
Kubernetes schemas kubernetes-validate ships; KEDA's ScaledObject and the ServiceMonitor,
which it has no schema for, get checks of their own against the service's code. The pods'
exact argv and environment are run through the real `wmpo` CLI, and their probes are sent
to the real app built from the settings that produced.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

import services.simulator.server as server
from services.common.health import HEALTH_PATHS
from services.common.metrics import METRICS_PATH
from services.common.queues import QueueConfig, RedisWorkQueue
from services.simulator.imagine_queue import IMAGINE_QUEUE
from services.simulator.runtime import SimulatorRuntime
from services.simulator.settings import SimulatorSettings
from tests.deploy.conftest import ALL_FEATURES, CHART, REDIS_URL, REPO
from wmpo import cli
from wmpo.sampling.world_model import WorldModel

RELEASE = "wmpo"  # names: wmpo-simulator, wmpo-worker, wmpo-secrets, wmpo-settings
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor"}  # CRDs: no schema in kubernetes-validate
# Settings the chart sets itself (flags, Secret, per-role env), so `settings` must not.
CHART_MANAGED = {"host", "port", "grpc_port", "api_keys", "dev_mode", "redis_url", "checkpoint",
                 "queue_worker", "queue_consumer"}
# Secrets never go through `settings` (a ConfigMap); the chart has no judge Secret yet.
NOT_IN_SETTINGS = {"judge_api_key"}


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


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would build it from the rendered objects."""
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
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


LOAD_WORLD_MODEL = server.load_world_model  # the real one; `launch` patches the module's


@cache
def bundled_model() -> WorldModel:
    return LOAD_WORLD_MODEL(cli.BUNDLED_WORLD_MODEL)


def launch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
    env: dict[str, str],
) -> tuple[SimulatorSettings, bool, str]:
    """Run the container's argv through the real `wmpo` CLI with its environment, up to the
    point where it would serve; returns (settings, worker?, checkpoint path it loads)."""
    captured: dict[str, Any] = {}

    def load_world_model(path: str) -> WorldModel:
        captured["checkpoint"] = str(path)
        return bundled_model()

    def serve(settings: SimulatorSettings, model: WorldModel, worker: bool = False) -> None:
        captured.update(settings=settings, worker=worker)

    monkeypatch.setattr(server, "load_world_model", load_world_model)
    monkeypatch.setattr(server, "serve", serve)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get(argv[0]) == "wmpo.cli:main", f"{argv[0]} is not the wmpo console script"
    try:
        code = cli.main(argv[1:])
    except SystemExit:  # argparse refused the arguments
        pytest.fail(f"`{' '.join(argv)}` rejected by wmpo's parser: {capsys.readouterr().err}")
    assert code == 0, f"`{' '.join(argv)}` failed: {capsys.readouterr().err}"
    return captured["settings"], captured["worker"], captured["checkpoint"]


def serve_simulator_flags(capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The options `wmpo serve simulator --help` lists."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "simulator", "--help"])
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
    base = {"ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
    assert {d["kind"] for d in default_docs} == base
    assert {d["kind"] for d in all_docs} == base | {"HorizontalPodAutoscaler"} | CUSTOM_KINDS
    assert [d["metadata"]["name"] for d in kinds(default_docs, "Deployment")] == ["wmpo-simulator"]
    assert sorted(d["metadata"]["name"] for d in kinds(all_docs, "Deployment")) == [
        "wmpo-simulator", "wmpo-worker"]


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
        (["apiKeys.keys[0]=short"], "apiKeys.keys"),  # the service wants >= 16 characters
        (["ports.http=70000"], "ports.http"),
        (["api.gpu=-1"], "api.gpu"),
        (["redis.url=http://cache:6379"], "redis.url"),
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
        (["apiKeys.keys[0]=k-0123456789abcdef", "apiKeys.existingSecret=team"], "not both"),
        (["redis.url=redis://r:6379/0", "redis.existingSecret=redis"], "not both"),
        (["worker.enabled=true", "redis.existingSecret=redis", "worker.keda.enabled=true"],
         "worker.keda.address"),
        (["redis.url=redis://r:6379/0", "api.consumeQueue=false"], "set worker.enabled"),
    ],
)
def test_bad_combinations_fail_rendering(helm: str, args: list[str], message: str) -> None:
    """Combinations a JSON schema cannot express fail rendering (`helm template`/`install`)
    with a message saying what to set; `helm lint` only logs template failures."""
    sets = [a for arg in args for a in ("--set", arg)]
    out = helm_run(helm, "template", RELEASE, str(CHART), *sets)
    assert out.returncode != 0, f"helm template accepted {args}"
    assert message in out.stderr


def test_settings_schema_mirrors_the_service_settings() -> None:
    """`settings` takes exactly the service's own fields, with the service's bounds."""
    import json

    chart = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"]
    service = SimulatorSettings.model_json_schema()["properties"]
    assert set(chart["properties"]) == set(service) - CHART_MANAGED - NOT_IN_SETTINGS
    assert chart["additionalProperties"] is False
    for name, spec in chart["properties"].items():
        for keyword in ("type", "minimum", "maximum", "exclusiveMinimum", "pattern", "enum"):
            assert spec.get(keyword) == service[name].get(keyword), (name, keyword)


# ------------------------------------------------------------------ the pods


def deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return kinds(docs, "Deployment")


def test_pods_start_with_real_cli_flags_and_valid_settings(
    case, entrypoint: list[str], monkeypatch, capsys
) -> None:
    """ENTRYPOINT + args through `wmpo`'s parser, env from the rendered ConfigMap/Secret
    through the service's settings (which refuse insecure or bad configurations)."""
    docs, values = case
    flags = serve_simulator_flags(capsys)
    assert {"--port", "--grpc-port", "--checkpoint", "--worker"} <= flags
    for deployment in deployments(docs):
        container = the_container(deployment)
        assert "command" not in container, "the image's ENTRYPOINT must stay the command"
        # Exact option names: argparse would also take an abbreviation such as --grpc.
        assert {a for a in container["args"] if a.startswith("--")} <= flags
        settings, worker, checkpoint = launch(
            monkeypatch, capsys, entrypoint + container["args"], container_env(docs, container))
        assert worker == deployment["metadata"]["name"].endswith("-worker")
        assert settings.host == "0.0.0.0" and settings.auth_enabled and not settings.dev_mode
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == settings.port
        if not worker:
            assert ports["grpc"] == settings.grpc_port
        for name, value in values.get("settings", {}).items():
            assert getattr(settings, name) == value, name
        if values:
            assert settings.redis_url == values["redis"]["url"]
            assert settings.queue_worker == (worker or values["api"]["consumeQueue"])
            assert checkpoint == values["checkpoint"]["path"]
        else:
            # The image's bundled checkpoint: COPY checkpoints /app/checkpoints.
            assert checkpoint.startswith("/app/checkpoints/")
            assert (REPO / "checkpoints" / checkpoint.removeprefix("/app/checkpoints/")).is_dir()
        env = {e["name"] for e in container["env"]}
        assert "WMPO_API_KEYS" in env and ("WMPO_REDIS_URL" in env) == bool(values)


def test_probes_hit_the_real_health_routes(
    docs, entrypoint: list[str], monkeypatch, capsys, redis_prefix: str
) -> None:
    """Each pod's probes, sent without an API key (as the kubelet does) to the app its own
    settings build, answer 200; Redis is the local one for queue mode."""
    secrets = secret_data(docs)
    for deployment in deployments(docs):
        container = the_container(deployment)
        env = container_env(docs, container)
        if "WMPO_REDIS_URL" in env:
            env |= {"WMPO_REDIS_URL": REDIS_URL, "WMPO_QUEUE_PREFIX": redis_prefix}
        settings, worker, _ = launch(monkeypatch, capsys, entrypoint + container["args"], env)
        settings = settings.model_copy(update={"grpc_port": 0})  # any free port here
        if worker:
            app = server.build_worker_app(
                SimulatorRuntime(bundled_model(), settings, consume=True), settings)
        else:
            app = server.build_app(SimulatorRuntime(bundled_model(), settings), settings)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        with TestClient(app) as client:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container[kind]["httpGet"]
                assert probe["path"] in HEALTH_PATHS
                assert ports[probe["port"]] == settings.port
                response = client.get(probe["path"])
                assert response.status_code == 200, (kind, response.text)
            # /metrics needs a key: the one the ServiceMonitor sends works.
            assert client.get(METRICS_PATH).status_code == 401
            key = secrets["wmpo-secrets"]["metrics-api-key"]
            metrics = client.get(METRICS_PATH, headers={"Authorization": f"Bearer {key}"})
            assert metrics.status_code == 200 and "wmpo_" in metrics.text


def test_gpu_limits(default_docs, all_docs) -> None:
    for deployment in deployments(default_docs):
        assert "nvidia.com/gpu" not in str(the_container(deployment)["resources"])
    for deployment in deployments(all_docs):
        resources = the_container(deployment)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert "nvidia.com/gpu" not in resources.get("requests", {})
        assert resources["requests"]["memory"] == "2Gi"  # the role's own resources stay


# ------------------------------------------------------------------ API keys


def test_no_default_api_key(helm: str, default_docs) -> None:
    """Without keys in values the chart generates one per install: never a fixed default."""
    first = secret_data(default_docs)["wmpo-secrets"]
    second = secret_data(render(helm))["wmpo-secrets"]
    assert first["api-keys"] != second["api-keys"]
    assert len(first["api-keys"]) >= 32 and "," not in first["api-keys"]
    assert first["metrics-api-key"] == first["api-keys"]
    assert first["api-keys"] not in (CHART / "values.yaml").read_text()


def test_given_keys_and_existing_secret(helm: str, all_docs) -> None:
    keys = yaml.safe_load(ALL_FEATURES.read_text())["apiKeys"]["keys"]
    data = secret_data(all_docs)["wmpo-secrets"]
    assert data["api-keys"] == ",".join(keys) and data["metrics-api-key"] == keys[0]

    docs = render(helm, "--set", "apiKeys.existingSecret=team-keys",
                  "--set", "apiKeys.existingSecretKey=keys", "--set", "serviceMonitor.enabled=true")
    assert kinds(docs, "Secret") == []  # nothing of the chart's own to hold
    env = the_container(named(docs, "Deployment", "wmpo-simulator"))["env"]
    ref = next(e for e in env if e["name"] == "WMPO_API_KEYS")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "team-keys", "key": "keys"}
    auth = kinds(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["authorization"]
    assert auth["credentials"]["name"] == "team-keys"


# ------------------------------------------------------------------ routing and scaling


def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_and_budgets_select_the_right_pods(docs) -> None:
    api = named(docs, "Deployment", "wmpo-simulator")
    workers = [d for d in deployments(docs) if d is not api]
    service = named(docs, "Service", "wmpo-simulator")
    assert selects(service["spec"]["selector"], api)
    assert not any(selects(service["spec"]["selector"], w) for w in workers)  # no API traffic
    container_ports = {p["name"] for p in the_container(api)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports == {"http", "grpc"}
    assert service["spec"]["sessionAffinity"] == "ClientIP"  # sessions are replica-local
    for budget in kinds(docs, "PodDisruptionBudget"):
        matched = [d for d in deployments(docs) if selects(budget["spec"]["selector"]["matchLabels"], d)]
        assert [d["metadata"]["name"] for d in matched] == [budget["metadata"]["name"]]


def test_autoscalers_own_the_replica_counts(default_docs, all_docs) -> None:
    assert named(default_docs, "Deployment", "wmpo-simulator")["spec"]["replicas"] == 2
    hpa = kinds(all_docs, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "wmpo-simulator"}
    for deployment in deployments(all_docs):  # the HPA and KEDA set these, not helm
        assert "replicas" not in deployment["spec"]


def test_keda_scales_workers_on_the_real_stream(all_docs, entrypoint, monkeypatch, capsys) -> None:
    """The ScaledObject watches the stream and consumer group the workers actually use."""
    worker = named(all_docs, "Deployment", "wmpo-worker")
    container = the_container(worker)
    settings, _, _ = launch(monkeypatch, capsys, entrypoint + container["args"],
                            container_env(all_docs, container))
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


def test_service_monitor_scrapes_both_roles(all_docs) -> None:
    monitor = kinds(all_docs, "ServiceMonitor")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in kinds(all_docs, "Service")
                if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    assert sorted(s["metadata"]["name"] for s in services) == ["wmpo-simulator", "wmpo-worker"]
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
