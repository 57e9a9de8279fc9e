"""Prometheus metrics shared by every service, and the `/metrics` route.

Metrics live in prometheus-client's default registry with a `service` label,
because the embedded default runs several services in one process and a
metric name may only be registered once per registry. Process memory (and
CPU, open fds) comes from prometheus-client's default process collector as
`process_resident_memory_bytes`; it is not duplicated here.

The queue-depth gauges are what an autoscaler scales on: `wmpo_queue_depth`
(rows waiting for this replica's engine) and `wmpo_work_queue_depth` (requests
on a shared work queue, see `queues`).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRICS_PATH = "/metrics"

QUEUE_DEPTH = Gauge(
    "wmpo_queue_depth", "Work items admitted and waiting for the engine.", ["service"]
)
BATCH_SIZE = Histogram(
    "wmpo_batch_size",
    "Rows per batched model call.",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
REQUEST_LATENCY = Histogram(
    "wmpo_request_latency_seconds",
    "Time to serve a request, by transport, endpoint and status code.",
    ["service", "transport", "endpoint", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
WORK_QUEUE_DEPTH = Gauge(
    "wmpo_work_queue_depth",
    "Requests on a shared work queue (queued or running), as last seen by this replica.",
    ["service", "queue"],
)
OPEN_SESSIONS = Gauge("wmpo_open_sessions", "Simulator sessions currently open.", ["service"])
SESSION_MEMORY = Gauge(
    "wmpo_session_memory_bytes",
    "Memory held by open sessions (per-session accounting).",
    ["service"],
)


class ServiceMetrics:
    """The shared metrics bound to one service's label."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.queue_depth = QUEUE_DEPTH.labels(service)
        self.batch_size = BATCH_SIZE.labels(service)
        self.open_sessions = OPEN_SESSIONS.labels(service)
        self.session_memory = SESSION_MEMORY.labels(service)

    def work_queue_depth(self, queue: str) -> Gauge:
        """The depth gauge of one named work queue (Redis Streams or in-process)."""
        return WORK_QUEUE_DEPTH.labels(self.service, queue)

    def observe_request(
        self, transport: str, endpoint: str, code: str | int, seconds: float
    ) -> None:
        REQUEST_LATENCY.labels(self.service, transport, endpoint, str(code)).observe(seconds)


class MetricsMiddleware:
    """ASGI middleware recording HTTP latency by route template and status.

    The label is the route template (`/v1/sessions/{session_id}`), never the
    raw path, so ids and scanners cannot blow up the number of series.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.metrics = ServiceMetrics(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request("http", endpoint, status, time.perf_counter() - start)


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    """GET /metrics in the Prometheus text format (kept out of the OpenAPI schema)."""
    router = APIRouter()

    @router.get(METRICS_PATH, include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
