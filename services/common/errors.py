"""One error model for HTTP and gRPC.

Handlers raise a `ServiceError` subclass with a message that says what is
wrong; the same exception becomes an HTTP status with the JSON body
`{"error": {"code", "message", "request_id"}}` or a gRPC status code with the
message as details. Anything else is a bug: it is logged with its traceback
and the caller gets a generic 500 / INTERNAL naming only the request id.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, NoReturn, TypeVar

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.logging import (
    REQUEST_ID_HEADER,
    current_request_id,
    ensure_request_id,
    request_id_var,
)

log = logging.getLogger("wmpo.errors")

# At most this many validation problems are spelled out in one message.
_MAX_LISTED_PROBLEMS = 10


class ServiceError(Exception):
    """Base of every error a caller may see; subclasses fix the HTTP and gRPC codes."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    code = "INVALID_ARGUMENT"


class Unauthenticated(ServiceError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    code = "UNAUTHENTICATED"


class NotFound(ServiceError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    """The request is well formed but this deployment cannot serve it (e.g. a judge kind
    with no model or endpoint configured); retrying will not help until the config changes."""

    http_status = 400
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    code = "FAILED_PRECONDITION"


class Conflict(ServiceError):
    """The request assumes a state of a resource that is not its current one (e.g. a
    session step naming another step count than the session's): HTTP 409, and gRPC's
    FAILED_PRECONDITION. Re-read the resource before trying again."""

    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    code = "FAILED_PRECONDITION"


class PayloadTooLarge(ServiceError):
    http_status = 413
    # gRPC has no "too large"; RESOURCE_EXHAUSTED is what grpcio itself uses
    # for oversized messages.
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "PAYLOAD_TOO_LARGE"


class ResourceExhausted(ServiceError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    code = "UNAVAILABLE"


class ClientClosedRequest(ServiceError):
    """The caller went away before the result was ready (nginx's 499); nobody reads the body,
    but logs and metrics then tell a cancelled request from a failed one."""

    http_status = 499
    grpc_code = grpc.StatusCode.CANCELLED
    code = "CANCELLED"


class Internal(ServiceError):
    """An unexpected failure; its message is generic by construction."""


# HTTP statuses raised by the framework itself (unknown route, wrong method, body limit).
_CODE_BY_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "FAILED_PRECONDITION",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


# Seconds a client should wait before retrying a refused request: overload clears fast; an
# unavailable dependency (Redis, a worker, a model) takes longer to come back.
RETRY_AFTER_S = {429: 1, 503: 2}


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """The body of every non-2xx JSON response."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the error body, e.g. error_responses(400, 404)."""
    return {status: {"model": ErrorResponse} for status in statuses}


def internal_message(request_id: str | None) -> str:
    return f"internal error; quote request id {request_id} when reporting it"


def error_json(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, request_id=request_id))
    all_headers = dict(headers or {})
    if status in RETRY_AFTER_S and not any(k.lower() == "retry-after" for k in all_headers):
        all_headers["Retry-After"] = str(RETRY_AFTER_S[status])
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(body.model_dump(), status_code=status, headers=all_headers)


def _problem(err: dict[str, Any]) -> str:
    """One validation problem as `where: reason`; the offending input is not echoed back."""
    loc = tuple(err.get("loc", ()))
    if err.get("type") == "json_invalid":
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (err.get("ctx") or {}).get("error", "")
        detail = f" ({reason})" if reason else ""
        return f"body: the body is not valid JSON: {err.get('msg', 'JSON decode error')}{at}{detail}"
    if loc == ("body",) and isinstance(err.get("input"), bytes | str):
        # FastAPI hands over the raw body when it is not declared JSON.
        return "body: not a JSON object (send a JSON object with Content-Type: application/json)"
    where = ".".join(str(p) for p in loc) or "request"
    return f"{where}: {err.get('msg', 'invalid')}"


def _format_validation(exc: RequestValidationError) -> str:
    problems = [_problem(err) for err in exc.errors()[:_MAX_LISTED_PROBLEMS]]
    extra = len(exc.errors()) - _MAX_LISTED_PROBLEMS
    if extra > 0:
        problems.append(f"... and {extra} more")
    return "invalid request: " + "; ".join(problems)


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return error_json(
        exc.http_status, exc.code, exc.message, current_request_id(request.scope), headers
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_json(
        422, "INVALID_ARGUMENT", _format_validation(exc), current_request_id(request.scope)
    )


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_BY_HTTP_STATUS.get(
        exc.status_code, "INTERNAL" if exc.status_code >= 500 else "ERROR"
    )
    message = exc.detail if isinstance(exc.detail, str) else code.lower().replace("_", " ")
    return error_json(
        exc.status_code, code, message, current_request_id(request.scope), exc.headers
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = current_request_id(request.scope)
    log.error("unhandled error", exc_info=exc, extra={"request_id": rid, "path": request.url.path})
    return error_json(500, Internal.code, internal_message(rid), rid)


def install_error_handlers(
    app: FastAPI, authenticate: Callable[[Request], None] | None = None
) -> None:
    """Map every error an HTTP handler can raise to the one JSON error body.

    `authenticate` (raising Unauthenticated) runs before a validation error is
    reported: FastAPI decodes and validates the body before it resolves the
    app's API-key dependency, and a caller without a valid key must get 401,
    not a description of what the body should have been.
    """

    async def denied(request: Request) -> JSONResponse | None:
        if authenticate is None:
            return None
        try:
            authenticate(request)
        except Unauthenticated as exc:
            return await _on_service_error(request, exc)
        return None

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        return await denied(request) or await _on_validation_error(request, exc)

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        # 400: a body FastAPI could not parse at all (e.g. not UTF-8), on a matched route.
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and "route" in request.scope:
            refused = await denied(request)
            if refused is not None:
                return refused
        return await _on_http_exception(request, exc)

    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    # Exception: Starlette's outermost ServerErrorMiddleware calls it and
    # returns our body instead of its own (debug must stay off).
    app.add_exception_handler(Exception, _on_unexpected)


# ------------------------------------------------------------------- gRPC


def grpc_status(exc: BaseException, request_id: str | None = None) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and details for an exception; unexpected ones are logged."""
    if isinstance(exc, ServiceError):
        return exc.grpc_code, exc.message
    rid = request_id or request_id_var.get()
    log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
    return grpc.StatusCode.INTERNAL, internal_message(rid)


def abort_grpc(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort a sync gRPC call with the status matching `exc` (raises)."""
    code, details = grpc_status(exc)
    context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")  # for type checkers


async def abort_grpc_async(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort a grpc.aio call with the status matching `exc` (raises)."""
    code, details = grpc_status(exc)
    await context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")


def _grpc_request_id(context: grpc.aio.ServicerContext) -> str:
    metadata = dict(context.invocation_metadata() or ())
    value = metadata.get(REQUEST_ID_HEADER)
    return ensure_request_id(value if isinstance(value, str) else None)


F = TypeVar("F", bound=Callable[..., Any])


def grpc_error_boundary(method: F) -> F:
    """Decorate a grpc.aio servicer method (unary or server-streaming).

    Sets the request id (from `x-request-id` metadata or fresh) for logs and
    trailing metadata, and turns exceptions into the matching status.
    """

    def _enter(context: grpc.aio.ServicerContext) -> None:
        rid = _grpc_request_id(context)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        # grpc.aio runs each RPC in its own task, so the value dies with the
        # call; no reset (an async generator may finish in another context).
        request_id_var.set(rid)

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            _enter(context)
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise  # the method already aborted with its own status
            except Exception as exc:
                await abort_grpc_async(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _enter(context)
        try:
            result: Awaitable[Any] = method(self, request, context)
            return await result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_grpc_async(context, exc)

    return unary  # type: ignore[return-value]
