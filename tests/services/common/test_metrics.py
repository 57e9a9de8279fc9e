"""Prometheus metrics: route-template latency labels, service gauges, process memory."""

from prometheus_client import REGISTRY

from services.common.metrics import ServiceMetrics
from tests.services.conftest import KEY_A, build_app

H = {"x-api-key": KEY_A}


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_latency_is_labelled_by_route_template_and_status() -> None:
    client = build_app(service="metrics-latency")
    for item in ["a", "b", "c"]:
        assert client.get(f"/items/{item}", headers=H).status_code == 200
    client.get("/raise/not_found", headers=H)
    client.get("/definitely/not/a/route", headers=H)
    labels = {"service": "metrics-latency", "transport": "http"}
    assert (
        _sample(
            "wmpo_request_latency_seconds_count", **labels, endpoint="/items/{item_id}", code="200"
        )
        == 3
    )
    assert (
        _sample(
            "wmpo_request_latency_seconds_count", **labels, endpoint="/raise/{kind}", code="404"
        )
        == 1
    )
    # Raw paths never become labels.
    assert (
        _sample("wmpo_request_latency_seconds_count", **labels, endpoint="/items/a", code="200")
        is None
    )
    assert (
        _sample("wmpo_request_latency_seconds_count", **labels, endpoint="unmatched", code="404")
        == 1
    )


def test_service_gauges_and_histograms() -> None:
    m = ServiceMetrics("metrics-gauges")
    m.queue_depth.set(5)
    m.open_sessions.inc(3)
    m.session_memory.set(1024)
    for size in [1, 8, 8]:
        m.batch_size.observe(size)
    m.observe_request("grpc", "/wmpo.v1.Simulator/Imagine", "OK", 0.05)
    assert _sample("wmpo_queue_depth", service="metrics-gauges") == 5
    assert _sample("wmpo_open_sessions", service="metrics-gauges") == 3
    assert _sample("wmpo_session_memory_bytes", service="metrics-gauges") == 1024
    assert _sample("wmpo_batch_size_count", service="metrics-gauges") == 3
    assert _sample("wmpo_batch_size_sum", service="metrics-gauges") == 17
    assert (
        _sample(
            "wmpo_request_latency_seconds_count",
            service="metrics-gauges",
            transport="grpc",
            endpoint="/wmpo.v1.Simulator/Imagine",
            code="OK",
        )
        == 1
    )


def test_metrics_route_serves_the_text_format() -> None:
    client = build_app(service="metrics-route")
    ServiceMetrics("metrics-route").queue_depth.set(2)
    r = client.get("/metrics", headers=H)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'wmpo_queue_depth{service="metrics-route"} 2.0' in r.text
    assert "process_resident_memory_bytes" in r.text  # from prometheus-client's process collector
    assert "/metrics" not in client.get("/openapi.json", headers=H).json()["paths"]
