"""Request-body size limit for HTTP, answered with the shared JSON error body.

Hand-written rather than FastAPI's `max_body_size`: that one answers with a
plain-text 413 from outside the user middleware, so the response would lack
the JSON error body and the request id that every other error carries.
"""

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import error_json
from services.common.logging import current_request_id


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit. An HTTPException, because
    FastAPI re-raises those from body parsing (others become a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413 PAYLOAD_TOO_LARGE.

    A declared Content-Length over the limit is refused before the app runs;
    a chunked body is counted as it is read and stopped at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_json(
                413,
                "PAYLOAD_TOO_LARGE",
                f"request body is {declared} bytes, over the limit of {self.max_bytes} bytes",
                current_request_id(scope),
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted_receive, send)
