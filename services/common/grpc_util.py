"""gRPC pieces every service's servicer shares: latency metrics per RPC (`observed`), the
server with the interceptors every server runs (API key, request decoding; `create_server`),
health, and the decoding of the fields every request has (tensors, request id, frame
encoding), so each service refuses them with the same messages.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from wmpo_client.codec import CodecError, DTypeName, from_proto, to_proto
from wmpo_client.proto import simulator_pb2, tensor_pb2

from services.common.auth import ApiKeyAuth, AsyncApiKeyInterceptor
from services.common.errors import InvalidArgument
from services.common.health import Readiness
from services.common.logging import is_valid_request_id, request_id_var
from services.common.settings import ServiceSettings

F = TypeVar("F", bound=Callable[..., Any])
# Outgoing tensors are bounded by the engine (max_response_bytes) and gRPC's send limit.
OUTPUT_MAX_BYTES = 2**62


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


def create_server(
    settings: ServiceSettings,
    add_servicer: Callable[[grpc.aio.Server], None],
    options: list[tuple[str, Any]] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) with the shared interceptors and message limits
    (`options`: instead of settings.grpc_options()), the service added by `add_servicer`,
    bound to settings.host:grpc_port; returns it and the bound port (useful with port 0)."""
    server = grpc.aio.server(
        interceptors=server_interceptors(settings),
        options=settings.grpc_options() if options is None else options,
    )
    add_servicer(server)
    address = bind_address(settings.host, settings.grpc_port)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind gRPC to {address}")
    return server, port


def health_response(state: Readiness, version: str) -> simulator_pb2.HealthResponse:
    """The Health RPC's answer (every service's proto reuses simulator.proto's message)."""
    serving = simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
    not_serving = simulator_pb2.HealthResponse.SERVING_STATUS_NOT_SERVING
    return simulator_pb2.HealthResponse(
        status=serving if state.ready else not_serving, version=version, reason=state.reason
    )


# ------------------------------------------------------------------ request decoding


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message of its type."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return _Undecodable(exc)

    return decode


_UNDECODABLE = "the request bytes are not a valid protobuf message for this method"


def _refusing(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    """`behavior`, except that an undecodable request ends the call with INVALID_ARGUMENT."""
    if streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE)
        return await behavior(request, context)

    return unary


class RequestDecodeInterceptor(grpc.aio.ServerInterceptor):
    """Corrupt request bytes are the caller's error: INVALID_ARGUMENT, not grpcio's UNKNOWN
    with an ERROR traceback in the server log. (grpcio decodes before any handler runs, so the
    decoder is wrapped to hand the handler a marker instead of raising.)"""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler  # every wmpo RPC takes one request message
        serializers = {
            "request_deserializer": _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _refusing(handler.unary_unary, streaming=False), **serializers
            )
        return grpc.unary_stream_rpc_method_handler(
            _refusing(handler.unary_stream, streaming=True), **serializers
        )


def server_interceptors(settings: ServiceSettings) -> list[grpc.aio.ServerInterceptor]:
    """What every service's grpc.aio server runs before its servicer: the API key check, then
    request decoding."""
    return [AsyncApiKeyInterceptor(ApiKeyAuth.from_settings(settings)), RequestDecodeInterceptor()]


# ------------------------------------------------------------ request fields
def decode_tensor(tensor: Any, name: str, max_bytes: int, dtype: DTypeName) -> np.ndarray:
    """A request's tensor -> array; a malformed one is InvalidArgument naming `name`."""
    try:
        return from_proto(tensor, name, max_bytes, expect_dtype=dtype)
    except CodecError as exc:
        raise InvalidArgument(str(exc)) from None


def encode_tensor(array: np.ndarray, name: str, encoding: str = "raw") -> tensor_pb2.Tensor:
    return to_proto(array, name, encoding, max_bytes=OUTPUT_MAX_BYTES)  # type: ignore[arg-type]


def request_id_arg(given: str) -> str:
    """The request's own id if valid, else the one the boundary set (or "")."""
    if given and not is_valid_request_id(given):
        raise InvalidArgument("request_id must be at most 128 characters of [A-Za-z0-9._:-]")
    return given or request_id_var.get() or ""


def frame_encoding(msg: Any) -> str:
    """The `frame_encoding` field of a request -> "raw" (unset) or "png"."""
    value = msg.frame_encoding
    if value not in tensor_pb2.FrameEncoding.values():  # proto3 keeps unknown enum numbers
        raise InvalidArgument(
            f"frame_encoding: unknown value {value}; use FRAME_ENCODING_RAW (1) or "
            "FRAME_ENCODING_PNG (2), or leave it unset for raw"
        )
    return "png" if value == tensor_pb2.FRAME_ENCODING_PNG else "raw"
