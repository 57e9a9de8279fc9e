"""Build a service's FastAPI app with the shared plumbing already wired.

`create_app` gives every service the same behaviour: API key required on every
route except health (the OpenAPI schema too, unless WMPO_API_DOCS=public), request-body size limit, request ids and JSON access
logs, one JSON error body, Prometheus metrics, health and readiness probes, and, for a
service that passes `viewer`, the rollout viewer page at /viewer (`services.common.viewer`).
The service then only includes its own routers. `runtime_lifespan` is the
lifespan every service's app has: start the runtime (and the gRPC server), stop
both however the app ends; `service_app` builds a service's app with it. `worker_app` is a pure queue worker's app (probes and
metrics only) and `run_app` serves an app with uvicorn, the same for every service.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import grpc
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from services.common.auth import ApiKeyAuth, api_key_dependency, request_authenticator
from services.common.errors import error_responses, install_error_handlers
from services.common.health import HEALTH_PATHS, ReadinessCheck, health_router
from services.common.limits import BodySizeLimitMiddleware
from services.common.logging import RequestIdMiddleware
from services.common.metrics import MetricsMiddleware, metrics_router
from services.common.settings import ServiceSettings
from services.common.viewer import PUBLIC_PATHS as VIEWER_PUBLIC_PATHS
from services.common.viewer import viewer_router

# Seconds uvicorn keeps an idle keep-alive connection open. Longer than httpx clients keep
# theirs (5 s), so a client closes an idle connection before the server does and never sends
# on one the server is closing; at uvicorn's default, also 5 s, that race lost requests.
KEEP_ALIVE_S = 30


def create_app(
    settings: ServiceSettings,
    *,
    service: str,
    version: str = "0.1.0",
    readiness: ReadinessCheck | None = None,
    public_paths: Collection[str] = HEALTH_PATHS,
    viewer: Callable[[], dict[str, Any]] | None = None,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A FastAPI app for `service` (e.g. "simulator"); extra kwargs go to FastAPI (lifespan, ...).

    `public_paths` are the route paths reachable without an API key. `viewer`: serve the
    rollout viewer at /viewer, `viewer()` describing what this service shows (see
    `services.common.viewer`); its page and static files are public, its config is keyed.
    """
    if viewer is not None:
        public_paths = frozenset({*public_paths, *VIEWER_PUBLIC_PATHS})
    auth = ApiKeyAuth.from_settings(settings)
    public_docs = settings.api_docs == "public"
    app = FastAPI(
        title=f"wmpo {service}",
        version=version,
        # FastAPI serves its own schema and pages outside the dependency system (no key);
        # keyed, the schema is a route of ours below, behind the app's key check.
        openapi_url="/openapi.json" if public_docs else None,
        docs_url="/docs" if public_docs else None,
        redoc_url="/redoc" if public_docs else None,
        # Never debug: Starlette's debug mode returns tracebacks to callers.
        debug=False,
        # App-level, so a route a service forgets to protect is still protected.
        dependencies=[Depends(api_key_dependency(auth, public_paths))],
        responses=error_responses(401, 413, 500),
        **fastapi_kwargs,
    )
    install_error_handlers(app, request_authenticator(auth, public_paths))
    # The last added is the outermost: request id first (it covers every log
    # line and error body), then metrics (they see every status, 413 too),
    # then the body limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, service=service)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health_router(readiness))
    app.include_router(metrics_router())
    if viewer is not None:
        app.include_router(viewer_router(service, version, viewer))
    if settings.api_docs == "keyed":
        # Only the schema: the HTML pages would fetch it from a browser, which sends no key.
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    return app


log = logging.getLogger("wmpo.app")
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def runtime_lifespan(
    runtime: Startable,
    grpc_server: Callable[[], tuple[grpc.aio.Server, int]] | None = None,
    grpc_grace_s: float = 5.0,
) -> Lifespan:
    """A lifespan that starts `runtime`, then the server `grpc_server()` returns (its bound port
    goes to `app.state.grpc_port`), and on shutdown stops the gRPC server (in-flight calls get
    `grpc_grace_s`) and then the runtime, whatever happened in between."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        server = None
        try:
            if grpc_server is not None:
                server, port = grpc_server()
                await server.start()
                app.state.grpc_port = port
                log.info("gRPC listening on port %d", port)
            yield
        finally:
            if server is not None:
                await server.stop(grpc_grace_s)
            await runtime.stop()

    return lifespan


def service_app(
    runtime: Any,
    settings: ServiceSettings,
    create_http_app: Callable[..., FastAPI],
    create_grpc_server: Callable[[Any, Any], tuple[grpc.aio.Server, int]] | None,
) -> FastAPI:
    """A service's app: `create_http_app(settings, runtime, lifespan=...)` with the lifespan that
    runs `runtime` and, given `create_grpc_server`, the gRPC server on settings.grpc_port."""
    grpc_server = (lambda: create_grpc_server(runtime, settings)) if create_grpc_server else None
    lifespan = runtime_lifespan(runtime, grpc_server, settings.grpc_grace_s)
    return create_http_app(settings, runtime, lifespan=lifespan)


def worker_app(settings: ServiceSettings, runtime: Any, *, service: str, version: str, what: str) -> FastAPI:
    """A pure queue worker: `runtime` consumes `what`'s queued work from Redis; HTTP serves only
    probes and metrics (no API, no gRPC)."""
    from wmpo.errors import ConfigError

    if not settings.redis_url:
        raise ConfigError(
            "a queue worker needs Redis: set WMPO_REDIS_URL (or --redis-url); without it "
            f"the {what} runs its queue in process (serve without --worker)"
        )
    if not getattr(runtime, "consume", False):
        raise ConfigError(
            f"a queue worker's runtime must consume ({type(runtime).__name__}(consume=True))"
        )
    app = create_app(
        settings,
        service=f"{service}-worker",
        version=version,
        readiness=runtime.readiness,
        lifespan=runtime_lifespan(runtime),
    )
    app.state.runtime = runtime
    return app


def run_app(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve `app` with uvicorn until interrupted (SIGINT/SIGTERM shut down gracefully)."""
    import uvicorn

    log.info("HTTP listening on %s:%d", settings.host, settings.port)
    # log_config=None: uvicorn's loggers propagate to our JSON handler.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
