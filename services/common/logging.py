"""Structured JSON logs carrying the id of the request being served.

Every request gets an id: the caller's `x-request-id` if it is well formed,
otherwise a fresh one. It lives in a contextvar (so any log line emitted while
serving the request carries it), in the ASGI scope state (so error handlers
outside the middleware can still find it) and in the response header.

The formatter is hand-written (a dozen lines) rather than a dependency such as
python-json-logger: it needs only the standard library.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
request_id_var: ContextVar[str | None] = ContextVar("wmpo_request_id", default=None)

# Caller-supplied ids end up in logs and headers: a strict charset and length
# rule out log injection and header smuggling.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Attributes every LogRecord has; anything else was passed with `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_HANDLER_MARK = "_wmpo_json_handler"


def new_request_id() -> str:
    return uuid.uuid4().hex


def is_valid_request_id(value: str) -> bool:
    return _VALID_REQUEST_ID.fullmatch(value) is not None


def ensure_request_id(candidate: str | None) -> str:
    """The caller's id when well formed, else a fresh one."""
    return candidate if candidate and is_valid_request_id(candidate) else new_request_id()


def current_request_id(scope: Scope | None = None) -> str | None:
    """The id of the request being served, from the scope state or the contextvar."""
    if scope is not None:
        rid = scope.get("state", {}).get("request_id")
        if rid:
            return rid
    return request_id_var.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            payload["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in payload and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            # Tracebacks belong in logs, never in responses.
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines; safe to call twice.

    Run uvicorn with `log_config=None` so its loggers propagate here too.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)


class RequestIdMiddleware:
    """ASGI middleware: assign or propagate `x-request-id` and log one access line per request.

    Pure ASGI rather than BaseHTTPMiddleware so the contextvar is set in the
    same context the endpoint runs in, and streaming responses are not buffered.
    """

    def __init__(self, app: ASGIApp, logger_name: str = "wmpo.access") -> None:
        self.app = app
        self.log = logging.getLogger(logger_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ensure_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        status = 500  # what the client gets if the app raises before responding
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.log.info(
                "%s %s -> %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )
            request_id_var.reset(token)
