"""HTTP handler helpers every service shares.

`until_disconnect` cancels a request's work when its client goes away; `error_line` is the
in-band error of an NDJSON stream (the trainer's and the optimizer's; the simulator's imagine
stream writes its own, compact JSON); `ClosingStream` runs a callback however a streamed
response ends. `decode_tensor` turns a body's tensor into an array at validation (422 naming
the field); `app_runtime`, `request_id_of` and `tensor_out` are the lines every route starts
and ends with.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic_core import PydanticCustomError
from starlette.types import Receive, Scope, Send
from wmpo_client.codec import CodecError, DTypeName, TensorJSON

from services.common.errors import (
    ClientClosedRequest,
    InvalidArgument,
    ServiceError,
    Unavailable,
    internal_message,
)
from services.common.logging import current_request_id

log = logging.getLogger("wmpo.http")

T = TypeVar("T")
FrameEncoding = Literal["raw", "png"]
# Responses are bounded by each engine's own limits (max_response_bytes, a fixed horizon).
OUTPUT_MAX_BYTES = 2**62


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then 499).

    Starlette cancels only streaming responses on disconnect; for a plain
    request the body has been read, so the next ASGI message is the disconnect.
    """
    task = asyncio.ensure_future(work)
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await request.receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if disconnected and not (current and current.cancelling()):
            # Not a server shutdown: end the request normally (499) rather than
            # letting CancelledError escape into the server as a crash.
            raise ClientClosedRequest("the client closed the connection") from None
        raise
    finally:
        watcher.cancel()


def error_line(exc: BaseException, request_id: str | None, what: str = "stream") -> str:
    """`{"event": "error", "error": {code, message, request_id}}` + newline: once a streaming
    response has sent its status line, a failure can only be reported in-band. Unexpected
    errors are logged and reported generically, like a 500."""
    if isinstance(exc, ServiceError):
        code, message = exc.code, exc.message
    else:
        log.error("%s failed", what, exc_info=exc, extra={"request_id": request_id})
        code, message = "INTERNAL", internal_message(request_id)
    error = {"code": code, "message": message, "request_id": request_id}
    return json.dumps({"event": "error", "error": error}) + "\n"


class ClosingStream(StreamingResponse):
    """An NDJSON stream that runs `on_close` however the response ends: a generator that never
    started (client gone before the first byte) would not run its own `finally`."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="application/x-ndjson")
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def decode_tensor(
    tensor: TensorJSON, name: str, dtype: DTypeName, check: Callable[[np.ndarray, str], np.ndarray]
) -> np.ndarray:
    """Decode and check a body's tensor, as a pydantic error (-> 422) naming it."""
    try:
        return check(tensor.to_numpy(name, expect_dtype=dtype), name)
    except (CodecError, InvalidArgument) as exc:
        message = exc.message if isinstance(exc, InvalidArgument) else str(exc)
        raise PydanticCustomError("invalid_tensor", "{message}", {"message": message}) from None


def app_runtime(request: Request, service: str) -> Any:
    """The runtime the app's lifespan built, or 503 while it is still starting."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise Unavailable(f"the {service} is starting up")
    return runtime


def request_id_of(body_id: str) -> str:
    """The body's request id, else the one the middleware set (or "")."""
    return body_id or current_request_id() or ""


def tensor_out(array: np.ndarray, name: str, encoding: FrameEncoding = "raw") -> TensorJSON:
    return TensorJSON.from_numpy(array, name, encoding, max_bytes=OUTPUT_MAX_BYTES)
