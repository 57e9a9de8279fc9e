"""Fixtures for service tests: a clean WMPO_* environment, a tiny app built from services.common,
a real Redis (REDIS_URL) with a key prefix per test for queue mode, and a service's gRPC server
on a free loopback port (`with_grpc_server`, `rpc_error`)."""

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.common.app import create_app
from services.common.errors import (
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.common.health import ReadinessCheck
from services.common.logging import current_request_id
from services.common.settings import ServiceSettings

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"

ERRORS = {
    "invalid": InvalidArgument("actions: expected shape (K, 4), got (3,)"),
    "unauthenticated": Unauthenticated("token expired"),
    "not_found": NotFound("session 's-1' not found"),
    "too_large": PayloadTooLarge("candidates: 70000000 bytes, limit 67108864"),
    "exhausted": ResourceExhausted("256 sessions open, the limit"),
    "unavailable": Unavailable("model loading"),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read WMPO_* variables; the developer's shell must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("WMPO_"):
            monkeypatch.delenv(name)


class Echo(BaseModel):
    x: int


def build_app(
    readiness: ReadinessCheck | None = None, service: str = "test", **settings: object
) -> TestClient:
    """A service app from create_app with a few endpoints that exercise the plumbing."""
    defaults: dict[str, object] = {"api_keys": f"{KEY_A},{KEY_B}"}
    defaults.update(settings)
    app = create_app(ServiceSettings(**defaults), service=service, readiness=readiness)
    router = APIRouter()

    @router.post("/echo")
    async def echo(body: Echo) -> Echo:
        return body

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    @router.get("/raise/{kind}")
    async def raise_error(kind: str) -> None:
        raise ERRORS[kind]

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret-internal-detail at /srv/model.py line 42")

    @router.get("/request-id")
    async def request_id() -> dict[str, str | None]:
        return {"request_id": current_request_id()}

    app.include_router(router)
    # raise_server_exceptions=False: see what a real client gets for a 500.
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client() -> TestClient:
    return build_app()


# ------------------------------------------------------------------ Redis
# Queue-mode tests run against a real Redis (127.0.0.1:6379 here and in CI).
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """REDIS_URL, checked once: unreachable Redis fails these tests loudly, never skips them."""
    import redis

    from services.common.queues import redact_url

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"queue-mode tests need Redis at {redact_url(REDIS_URL)} ({exc}); start "
            "redis-server or point REDIS_URL at one",
            pytrace=False,
        )
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import redis

    prefix = f"wmpo-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def with_grpc_server(
    make_runtime: Callable[[], Any],
    create_grpc_server: Callable[[Any, Any], tuple[grpc.aio.Server, int]],
    settings: Any,
    scenario: Callable[[grpc.aio.Channel, Any], Awaitable[None]],
) -> None:
    """Start a runtime and its gRPC server on a free loopback port (settings.grpc_port=0), run
    `scenario(channel, runtime)`, then stop both, as the service's lifespan does."""

    async def main() -> None:
        runtime = make_runtime()
        await runtime.start()
        server, port = create_grpc_server(runtime, settings)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(channel, runtime)
        finally:
            await server.stop(0)
            await runtime.stop()

    asyncio.run(main())


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a gRPC call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value
