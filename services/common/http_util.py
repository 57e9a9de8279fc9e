"""HTTP handler helpers every service shares.

`until_disconnect` is the simulator's `_until_disconnect`
(services/simulator/http_api.py) made reusable: the judge uses this one; the
simulator can switch to it. `error_line` is the in-band error of an NDJSON
stream (the trainer's progress stream; the simulator's imagine stream has its
own copy, `_error_line`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from services.common.errors import ClientClosedRequest, ServiceError, internal_message

log = logging.getLogger("wmpo.http")

T = TypeVar("T")


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
