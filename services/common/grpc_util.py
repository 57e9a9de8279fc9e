"""gRPC pieces a service's servicer shares: latency metrics per RPC, bind addresses, health.

`observed` is the simulator's `_observed` (services/simulator/grpc_api.py) made
reusable: the judge uses this one; the simulator can switch to it.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from wmpo_client.proto import simulator_pb2

from services.common.health import Readiness

F = TypeVar("F", bound=Callable[..., Any])


def observed(method: F) -> F:
    """Record latency by RPC name and final status code (put it outside the error boundary).

    The servicer must have a `metrics` attribute (a `ServiceMetrics`).
    """
    name = method.__name__

    def record(self: Any, context: grpc.aio.ServicerContext, start: float) -> None:
        code = context.code() or grpc.StatusCode.OK
        label = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.metrics.observe_request("grpc", name, label, time.perf_counter() - start)

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                async for item in method(self, request, context):
                    yield item
            finally:
                record(self, context, start)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            return await method(self, request, context)
        finally:
            record(self, context, start)

    return unary  # type: ignore[return-value]


def bind_address(host: str, port: int) -> str:
    """host:port for `add_insecure_port`, with IPv6 hosts bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def health_response(state: Readiness, version: str) -> simulator_pb2.HealthResponse:
    """The Health RPC's answer (every service's proto reuses simulator.proto's message)."""
    serving = simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
    not_serving = simulator_pb2.HealthResponse.SERVING_STATUS_NOT_SERVING
    return simulator_pb2.HealthResponse(
        status=serving if state.ready else not_serving, version=version, reason=state.reason
    )
