"""What every gRPC client shares (simulator, judge, trainer; sync and async).

- `error_from_rpc`, `retryable`: a failed RPC as a `SimulatorError`, and whether to re-send it;
- `exchange`: the retry loop of a unary call (see `wmpo_client._driver`);
- `GrpcConfig`: target, deadline, retry policy, channel options, metadata;
- `SyncGrpc` / `AsyncGrpc`: the channel (grpc.aio's opened on first use, inside the running
  loop), `with` / `async with`, unary calls, server streams (`_messages`: re-opened on a
  transient failure before the first message) and readiness: the only places sync and async
  differ.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc

from wmpo_client._common import API_KEY_HEADER, REQUEST_ID_HEADER, RETRY_CODES, RetryPolicy
from wmpo_client._driver import Exchange, run_async, run_sync
from wmpo_client.errors import SimulatorError
from wmpo_client.proto import simulator_pb2
from wmpo_client.results import HealthStatus

S = TypeVar("S")


def error_from_rpc(exc: grpc.RpcError) -> SimulatorError:
    """The `SimulatorError` for a failed RPC (sync or aio)."""
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else None
    request_id = None
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REQUEST_ID_HEADER:
            request_id = value
    return SimulatorError(name, details or name.lower(), request_id, grpc_status=name)


def retryable(exc: grpc.RpcError, idempotent: bool = False) -> bool:
    """RESOURCE_EXHAUSTED (busy) and UNAVAILABLE; DEADLINE_EXCEEDED too for an idempotent call."""
    code = exc.code() if hasattr(exc, "code") else None
    if not isinstance(code, grpc.StatusCode):
        return False
    if idempotent and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True  # the service returns the stored result of a step already done
    if code.name not in RETRY_CODES:
        return False
    # grpcio's size-limit errors are RESOURCE_EXHAUSTED too; re-sending cannot help.
    return "larger than max" not in (exc.details() or "")


def exchange(retry: RetryPolicy, idempotent: bool = False) -> Exchange[Any]:
    """Call; retry transient codes (see `retryable`) with backoff; map a final failure."""
    attempt = 0
    while True:
        try:
            return (yield None)
        except grpc.RpcError as exc:
            if attempt < retry.retries and retryable(exc, idempotent):
                yield retry.delay(attempt)
                attempt += 1
                continue
            raise error_from_rpc(exc) from exc


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Any
) -> grpc.Channel:
    """A TLS channel when ``credentials`` are given, else a plaintext one."""
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options)
    return grpc.insecure_channel(target, options)


def size_options(max_send: int, max_receive: int, options: Any) -> list[tuple[str, Any]]:
    """Message size limits, then `options` (which may override them)."""
    return [
        ("grpc.max_send_message_length", max_send),
        ("grpc.max_receive_message_length", max_receive),
        *options,
    ]


def health_from_response(resp: simulator_pb2.HealthResponse) -> HealthStatus:
    ready = resp.status == simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
    return HealthStatus(ready=ready, reason=resp.reason, version=resp.version or None)


class GrpcConfig:
    """Configuration shared by a gRPC client's sync and async classes."""

    stub_class: Callable[[Any], Any]  # the generated stub of the client's service

    def __init__(
        self,
        target: str,
        api_key: str | None,
        timeout: float | None,
        retries: int,
        backoff: float,
        max_backoff: float,
        options: list[tuple[str, Any]],
    ) -> None:
        self.target = target.removeprefix("grpc://")
        self.timeout = timeout
        self.retry = RetryPolicy(retries, backoff, max_backoff)
        self._api_key = api_key
        self._options = options

    def _metadata(self, request_id: str = "") -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = []
        if self._api_key:
            md.append((API_KEY_HEADER, self._api_key))
        if request_id:
            md.append((REQUEST_ID_HEADER, request_id))
        return tuple(md)


class SyncGrpc(GrpcConfig):
    """The blocking half: a grpc.Channel, `with`, unary calls with retries, readiness."""

    def _connect(self, credentials: grpc.ChannelCredentials | None) -> None:
        self._channel = open_channel(self.target, credentials, self._options)
        self._stub = self.stub_class(self._channel)

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _unary(
        self, rpc: Callable[..., Any], request: Any, request_id: str = "", idempotent: bool = False
    ) -> Any:
        md = self._metadata(request_id)
        call = exchange(self.retry, idempotent)
        return run_sync(call, lambda: rpc(request, metadata=md, timeout=self.timeout))

    def _messages(self, rpc: Callable[..., Any], request: Any, request_id: str = "") -> Iterator[Any]:
        """A server stream's messages. A transient failure before the first message opens it
        again after a backoff (the server did no work we saw); the call is cancelled however
        iteration ends (close the iterator to cancel at once)."""
        md = self._metadata(request_id)
        for attempt in itertools.count():
            call = rpc(request, metadata=md, timeout=self.timeout)
            started = False
            try:
                for msg in call:
                    started = True
                    yield msg
                return
            except grpc.RpcError as exc:
                if started or attempt >= self.retry.retries or not retryable(exc):
                    raise error_from_rpc(exc) from exc
            finally:
                call.cancel()
            time.sleep(self.retry.delay(attempt))

    def health(self) -> HealthStatus:
        """Readiness (no API key needed, no retries)."""
        try:
            resp = self._stub.Health(simulator_pb2.HealthRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return health_from_response(resp)


class AsyncGrpc(GrpcConfig):
    """The async half (grpc.aio): the channel is opened on first use, inside the running
    event loop; close it with `await client.aclose()` or `async with`."""

    def _connect(self, credentials: grpc.ChannelCredentials | None) -> None:
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub_: Any = None

    @property
    def _stub(self) -> Any:
        if self._stub_ is None:
            self._channel = (
                grpc.aio.secure_channel(self.target, self._credentials, self._options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(self.target, self._options)
            )
            self._stub_ = self.stub_class(self._channel)
        return self._stub_

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel (if one was opened)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_ = None

    async def _unary(
        self, rpc: Callable[..., Any], request: Any, request_id: str = "", idempotent: bool = False
    ) -> Any:
        md = self._metadata(request_id)
        call = exchange(self.retry, idempotent)
        return await run_async(call, lambda: rpc(request, metadata=md, timeout=self.timeout))

    async def _messages(
        self, rpc: Callable[..., Any], request: Any, request_id: str = ""
    ) -> AsyncIterator[Any]:
        """See `SyncGrpc._messages`; consume it inside `contextlib.aclosing`."""
        md = self._metadata(request_id)
        for attempt in itertools.count():
            call = rpc(request, metadata=md, timeout=self.timeout)
            started = False
            try:
                async for msg in call:
                    started = True
                    yield msg
                return
            except grpc.RpcError as exc:
                if started or attempt >= self.retry.retries or not retryable(exc):
                    raise error_from_rpc(exc) from exc
            finally:
                call.cancel()
            await asyncio.sleep(self.retry.delay(attempt))

    async def health(self) -> HealthStatus:
        """Readiness (no API key needed, no retries)."""
        try:
            resp = await self._stub.Health(simulator_pb2.HealthRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return health_from_response(resp)
