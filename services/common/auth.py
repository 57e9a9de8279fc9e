"""API-key authentication for HTTP (a FastAPI dependency) and gRPC (server interceptors).

A key travels as `x-api-key: <key>` or `Authorization: Bearer <key>` (HTTP
headers or gRPC metadata). Health checks need no key so that probes and load
balancers work without secrets. With no keys configured (only allowed in dev
mode, see settings) every call is let through.

Comparison is constant-time: both sides are hashed to equal-length SHA-256
digests (so the key length does not leak either) and compared with
`hmac.compare_digest` against every configured key, without stopping at the
first match.
"""

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Annotated, Any

import grpc
from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from services.common.errors import Unauthenticated
from services.common.health import HEALTH_PATHS
from services.common.settings import ServiceSettings

API_KEY_HEADER = "x-api-key"
MISSING_KEY = (
    f"missing API key: send it as '{API_KEY_HEADER}: <key>' or 'Authorization: Bearer <key>'"
)
INVALID_KEY = "invalid API key"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class ApiKeyAuth:
    """Holds the accepted keys (as digests) and checks presented ones."""

    def __init__(self, keys: Iterable[str | SecretStr]) -> None:
        plain = [k.get_secret_value() if isinstance(k, SecretStr) else k for k in keys]
        self._digests = [_digest(k) for k in plain if k]

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> "ApiKeyAuth":
        return cls((*settings.api_keys, *settings.service_api_keys))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def is_valid(self, presented: str | None) -> bool:
        """True when `presented` matches a configured key, or when auth is disabled."""
        if not self.enabled:
            return True
        if not presented:
            return False
        digest = _digest(presented)
        match = False
        for key in self._digests:
            # `|` not `or`: every key is compared, so timing does not reveal which matched.
            match |= hmac.compare_digest(digest, key)
        return match

    def check(self, presented: str | None) -> None:
        """Raise Unauthenticated with a message saying what is missing or wrong."""
        if self.is_valid(presented):
            return
        raise Unauthenticated(INVALID_KEY if presented else MISSING_KEY)


def key_from_authorization(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, else None."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


# ------------------------------------------------------------------- HTTP


def api_key_dependency(
    auth: ApiKeyAuth, exempt_paths: Collection[str] = HEALTH_PATHS
) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency enforcing the API key on every route but `exempt_paths`.

    Meant for `FastAPI(dependencies=[Depends(...)])`, so routes are protected
    by default. The Security() parameters document both schemes in OpenAPI.
    """
    header_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey")
    bearer_scheme = HTTPBearer(auto_error=False, scheme_name="Bearer")

    async def require_api_key(
        request: Request,
        api_key: Annotated[str | None, Security(header_scheme)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> None:
        # The matched route's template, so a mount prefix cannot defeat the exemption.
        route = request.scope.get("route")
        if getattr(route, "path", request.url.path) in exempt_paths:
            return
        auth.check(api_key or (bearer.credentials if bearer else None))

    return require_api_key


def request_authenticator(
    auth: ApiKeyAuth, exempt_paths: Collection[str] = HEALTH_PATHS
) -> Callable[[Request], None]:
    """The same check as `api_key_dependency`, for code that runs outside dependency
    resolution: raises Unauthenticated for a request without a valid key."""

    def authenticate(request: Request) -> None:
        route = request.scope.get("route")
        if getattr(route, "path", request.url.path) in exempt_paths:
            return
        key = request.headers.get(API_KEY_HEADER) or key_from_authorization(
            request.headers.get("authorization")
        )
        auth.check(key)

    return authenticate


# ------------------------------------------------------------------- gRPC


def is_health_method(method: str) -> bool:
    """Health RPCs (ours and the standard grpc.health.v1 service) need no key."""
    return method.endswith("/Health") or method.startswith("/grpc.health.v1.Health/")


def _key_from_metadata(metadata: Iterable[Any] | None) -> str | None:
    values = {str(k).lower(): v for k, v in (metadata or ())}
    key = values.get(API_KEY_HEADER)
    if isinstance(key, str) and key:
        return key
    auth = values.get("authorization")
    return key_from_authorization(auth if isinstance(auth, str) else None)


def _denied_handler(
    handler: grpc.RpcMethodHandler, message: str, is_async: bool
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts with UNAUTHENTICATED."""
    code = grpc.StatusCode.UNAUTHENTICATED
    deny: Callable[..., Any]
    if is_async:

        async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(code, message)

    else:

        def deny(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(code, message)

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny, **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **serializers)
    return grpc.stream_stream_rpc_method_handler(deny, **serializers)


def _denial(auth: ApiKeyAuth, details: grpc.HandlerCallDetails) -> str | None:
    """The reason to refuse this call, or None to let it through."""
    if is_health_method(details.method) or not auth.enabled:
        return None
    key = _key_from_metadata(details.invocation_metadata)
    if auth.is_valid(key):
        return None
    return INVALID_KEY if key else MISSING_KEY


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Interceptor for a sync `grpc.server`."""

    def __init__(self, auth: ApiKeyAuth) -> None:
        self.auth = auth

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        reason = _denial(self.auth, handler_call_details)
        if handler is None or reason is None:
            return handler
        return _denied_handler(handler, reason, is_async=False)


class AsyncApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Interceptor for a `grpc.aio.server`."""

    def __init__(self, auth: ApiKeyAuth) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        reason = _denial(self.auth, handler_call_details)
        if handler is None or reason is None:
            return handler
        return _denied_handler(handler, reason, is_async=True)
