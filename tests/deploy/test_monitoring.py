"""The chart's monitoring beyond the ServiceMonitor: the drift PrometheusRule and the Grafana
dashboard ConfigMap. kubernetes-validate has no schema for PrometheusRule (a Prometheus
Operator CRD), so its shape is checked here; every metric the rule and the dashboard query is
checked against what the services really export, and the rule's ratio against a real
simulator's /metrics after real outcome reports (tiny world model)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from wmpo_client.codec import from_json, to_json

import services.common.metrics  # noqa: F401  (registers the shared metrics)
import services.simulator.drift  # noqa: F401  (registers the drift metrics)
from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SimulatorRuntime
from tests.deploy.conftest import ALL_FEATURES, CHART
from tests.deploy.test_helm_chart import helm_run, kinds, named, render
from tests.services.simulator.conftest import KEY, actions, frames, settings, tiny_world_model

METRIC = re.compile(r"\b((?:wmpo|process)_[a-z_]+)\b")


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def all_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm, "-f", str(ALL_FEATURES))


def exported_names() -> set[str]:
    """Every sample name the services' metrics can have (histogram suffixes, counter _total)."""
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def rule(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (doc,) = kinds(docs, "PrometheusRule")
    (group,) = doc["spec"]["groups"]
    (alert,) = group["rules"]
    return {**alert, "_doc": doc}


def test_off_by_default(default_docs) -> None:
    assert kinds(default_docs, "PrometheusRule") == []
    assert "wmpo-dashboard" not in [d["metadata"]["name"] for d in kinds(default_docs, "ConfigMap")]


def test_drift_rule_shape_and_values(helm: str, all_docs) -> None:
    alert = rule(all_docs)
    doc = alert["_doc"]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["metadata"]["name"] == "wmpo-drift"
    assert doc["metadata"]["labels"]["release"] == "prometheus"  # the ruleSelector's label
    assert alert["alert"] == "WmpoWorldModelDrift" and alert["labels"]["severity"] == "warning"
    assert alert["for"] == "10m" and "> 0.5\n" in alert["expr"] and ">= 20" in alert["expr"]
    assert 'namespace="default"' in alert["expr"] and "[30m]" in alert["expr"]
    assert "{{ $value" in alert["annotations"]["description"]  # left for Prometheus to fill
    for name in METRIC.findall(alert["expr"]):
        assert name in exported_names(), name

    docs = render(helm, "--set", "driftAlert.enabled=true", "--set-json", "driftAlert.perceptualThreshold=0.7",
                  "--set", "driftAlert.for=1h", "--set", "driftAlert.window=2h", "--namespace", "robots")
    alert = rule(docs)
    assert "> 0.7\n" in alert["expr"] and alert["for"] == "1h" and "[2h]" in alert["expr"]
    assert 'namespace="robots"' in alert["expr"]


@pytest.mark.parametrize(("value", "field"), [
    ("driftAlert.perceptualThreshold=-1", "perceptualThreshold"),
    ("driftAlert.for=soon", "for"),
    ("driftAlert.minOutcomes=0", "minOutcomes"),
    ("grafanaDashboard.enabled=maybe", "enabled"),
])
def test_bad_monitoring_values_fail_lint(helm: str, value: str, field: str) -> None:
    out = helm_run(helm, "lint", "--strict", str(CHART), "-f", str(ALL_FEATURES), "--set", value)
    assert out.returncode != 0 and field in out.stdout + out.stderr


def test_dashboard_configmap_queries_real_metrics(all_docs) -> None:
    cm = named(all_docs, "ConfigMap", "wmpo-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Robotics"
    dashboard = json.loads(cm["data"]["wmpo.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "wmpo.json").read_text())
    assert dashboard["uid"] == "wmpo-services"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {name for e in exprs for name in METRIC.findall(e)}
    assert queried - exported_names() == set()
    # Requests, latency, queues, batches, sessions, memory and every drift figure are shown.
    for name in ("wmpo_request_latency_seconds_bucket", "wmpo_queue_depth", "wmpo_work_queue_depth",
                 "wmpo_batch_size_sum", "wmpo_open_sessions", "wmpo_drift_perceptual_sum",
                 "wmpo_drift_psnr_db_sum", "wmpo_drift_calibration_error", "wmpo_outcomes_total",
                 "wmpo_drift_calibration_success_rate"):
        assert name in queried, name
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_rule_ratio_is_the_mean_distance_of_the_reported_outcomes() -> None:
    """sum(_sum) / sum(_count) of wmpo_drift_perceptual, as the rule divides them, scraped from a
    real simulator after real outcome reports, is the mean of the distances it returned."""
    auth = {"x-api-key": KEY}
    s = settings()
    with TestClient(create_simulator_app(s, SimulatorRuntime(tiny_world_model(), s))) as c:
        def scrape() -> tuple[float, float]:
            values = {smp.name: smp.value for fam in text_string_to_metric_families(
                c.get("/metrics", headers=auth).text) for smp in fam.samples
                if smp.name.startswith("wmpo_drift_perceptual_") and smp.labels.get("service") == "simulator"}
            return values["wmpo_drift_perceptual_sum"], values["wmpo_drift_perceptual_count"]

        sum0, n0 = scrape()
        distances = []
        for i in range(3):
            body = {"start_frames": to_json(frames(i)[0]), "candidates": to_json(actions(1, 1, 8)),
                    "seed": i, "request_id": f"rule-{i}"}
            fake = from_json(c.post("/v1/imagine", json=body, headers=auth).json()["candidates"][0]["frames"])
            real = np.clip(fake.astype(int) + 30 * i, 0, 255).astype(np.uint8)
            out = c.post("/v1/outcomes", json={"request_id": f"rule-{i}", "candidate": 0,
                                               "frames": to_json(real)}, headers=auth).json()
            distances.append(out["perceptual_mean"])
        sum1, n1 = scrape()
        assert n1 - n0 == 3
        assert (sum1 - sum0) / (n1 - n0) == pytest.approx(np.mean(distances), rel=1e-4)


# -------------------------------------------------------------- the rule, evaluated by Prometheus
# promtool (Debian's `prometheus` package, installed by scripts/system_deps.sh) evaluates the
# rendered rule over synthetic series: one outcome a minute whose perceptual distance is the
# figure measured on real MetaWorld data (docs/services.md, "Drift"): 0.28 with the bundled world
# model, 1.8 with a deliberately wrong one (scripts/perturb_world_model.py --noise 0.5).
MEASURED_RIGHT, MEASURED_WRONG = 0.28, 1.8


def promtool() -> str:
    import shutil

    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run scripts/system_deps.sh (Debian's prometheus package)",
                    pytrace=False)
    return path


def evaluate_rule(tmp_path: Path, helm: str, distance: float, per_minute: float = 1,
                  firing: bool = True) -> subprocess.CompletedProcess[str]:
    """promtool test rules: after 60 minutes of outcomes at `distance`, the alert fires (or not)."""
    docs = render(helm, "--set", "driftAlert.enabled=true")  # the defaults: 0.45, 30m, 15m, 20
    (doc,) = kinds(docs, "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    expected: list[dict[str, Any]] = []
    if firing:
        description = doc["spec"]["groups"][0]["rules"][0]["annotations"]["description"]
        expected = [{"exp_labels": {"severity": "warning"},
                     "exp_annotations": {**doc["spec"]["groups"][0]["rules"][0]["annotations"],
                                         "description": description.replace(
                                             '{{ $value | printf "%.3f" }}', f"{distance:.3f}")}}]
    case = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # Two replicas, each reporting half of the outcomes: the rule sums them.
                *({"series": f'wmpo_drift_perceptual_sum{{namespace="default",pod="sim-{i}"}}',
                   "values": f"0+{distance * per_minute / 2}x60"} for i in range(2)),
                *({"series": f'wmpo_drift_perceptual_count{{namespace="default",pod="sim-{i}"}}',
                   "values": f"0+{per_minute / 2}x60"} for i in range(2)),
            ],
            "alert_rule_test": [{"eval_time": "60m", "alertname": "WmpoWorldModelDrift",
                                 "exp_alerts": expected}],
        }],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(case, width=1000))
    return subprocess.run([promtool(), "test", "rules", "test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_prometheus_fires_the_alert_on_the_wrong_model_only(helm: str, tmp_path: Path) -> None:
    right = evaluate_rule(tmp_path, helm, MEASURED_RIGHT, firing=False)
    assert right.returncode == 0, right.stdout + right.stderr
    wrong = evaluate_rule(tmp_path, helm, MEASURED_WRONG, firing=True)
    assert wrong.returncode == 0, wrong.stdout + wrong.stderr
    # Not vacuous: expecting silence from the wrong model fails.
    assert evaluate_rule(tmp_path, helm, MEASURED_WRONG, firing=False).returncode != 0
    # Too few outcomes in the window (one every 2 minutes: 15 < minOutcomes 20): no alert.
    few = evaluate_rule(tmp_path, helm, MEASURED_WRONG, per_minute=0.5, firing=False)
    assert few.returncode == 0, few.stdout + few.stderr
