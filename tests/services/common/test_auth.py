"""API-key auth over HTTP (create_app + TestClient) and over gRPC (real servers on localhost)."""

import asyncio
import hmac
from concurrent import futures

import grpc
import pytest
from fastapi.testclient import TestClient
from wmpo_client.proto import simulator_pb2, simulator_pb2_grpc

from services.common import auth as auth_module
from services.common.auth import (
    INVALID_KEY,
    MISSING_KEY,
    ApiKeyAuth,
    ApiKeyInterceptor,
    AsyncApiKeyInterceptor,
    is_health_method,
    key_from_authorization,
)
from tests.services.conftest import KEY_A, KEY_B, build_app

# ------------------------------------------------------------------ core check


def test_accepts_every_configured_key_and_nothing_else() -> None:
    auth = ApiKeyAuth([KEY_A, KEY_B])
    assert auth.is_valid(KEY_A) and auth.is_valid(KEY_B)
    for wrong in [
        "",
        None,
        KEY_A[:-1],
        KEY_A + "x",
        KEY_A.upper(),
        f"{KEY_A},{KEY_B}",
        " " + KEY_A,
    ]:
        assert not auth.is_valid(wrong), wrong


def test_compares_against_every_key_without_short_circuit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real_compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    auth = ApiKeyAuth([KEY_A, KEY_B, "k" * 40])
    for presented in [KEY_A, "k" * 40, "wrong"]:
        calls.clear()
        auth.is_valid(presented)
        # One comparison per key whichever matches, all over equal-length digests.
        assert calls == [(32, 32)] * 3


def test_check_says_missing_or_invalid() -> None:
    auth = ApiKeyAuth([KEY_A])
    with pytest.raises(auth_module.Unauthenticated, match="missing API key"):
        auth.check(None)
    with pytest.raises(auth_module.Unauthenticated, match="invalid API key"):
        auth.check("nope")
    auth.check(KEY_A)


def test_no_keys_means_auth_disabled() -> None:
    auth = ApiKeyAuth([])
    assert not auth.enabled and auth.is_valid(None)


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_key_from_authorization(header: str | None, key: str | None) -> None:
    assert key_from_authorization(header) == key


# ------------------------------------------------------------------------ HTTP


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": KEY_A}, {"x-api-key": KEY_B}, {"Authorization": f"Bearer {KEY_A}"}],
)
def test_http_accepts_valid_keys(client: TestClient, headers: dict[str, str]) -> None:
    r = client.post("/echo", json={"x": 3}, headers=headers)
    assert r.status_code == 200 and r.json() == {"x": 3}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, MISSING_KEY),
        ({"x-api-key": "wrong-key-0123456789"}, INVALID_KEY),
        ({"Authorization": f"Bearer {KEY_A}x"}, INVALID_KEY),
        ({"Authorization": f"Basic {KEY_A}"}, MISSING_KEY),
    ],
)
def test_http_rejects_missing_or_wrong_keys(
    client: TestClient, headers: dict[str, str], message: str
) -> None:
    for method, path in [("POST", "/echo"), ("GET", "/items/1"), ("GET", "/metrics")]:
        r = client.request(method, path, json={"x": 1}, headers=headers)
        assert r.status_code == 401, path
        assert r.json()["error"] == {
            "code": "UNAUTHENTICATED",
            "message": message,
            "request_id": r.headers["x-request-id"],
        }
        assert r.headers["www-authenticate"] == "Bearer"


def test_http_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_http_dev_mode_without_keys_lets_everything_through() -> None:
    client = build_app(api_keys="", dev_mode=True)
    assert client.post("/echo", json={"x": 1}).status_code == 200


def test_openapi_documents_both_schemes(client: TestClient) -> None:
    schemes = client.get("/openapi.json", headers={"x-api-key": KEY_A}).json()["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert schemes["Bearer"]["scheme"] == "bearer"


# ------------------------------------------------------------------------ gRPC


class _Servicer(simulator_pb2_grpc.SimulatorServicer):
    def Health(self, request, context):  # noqa: N802 - generated name
        return simulator_pb2.HealthResponse(
            status=simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
        )

    def GetSession(self, request, context):  # noqa: N802
        return simulator_pb2.GetSessionResponse(
            sessions=[simulator_pb2.SessionInfo(session_id=request.session_id)]
        )


class _AsyncServicer(simulator_pb2_grpc.SimulatorServicer):
    async def Health(self, request, context):  # noqa: N802
        return simulator_pb2.HealthResponse(
            status=simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
        )

    async def GetSession(self, request, context):  # noqa: N802
        return simulator_pb2.GetSessionResponse(
            sessions=[simulator_pb2.SessionInfo(session_id=request.session_id)]
        )


GRPC_CASES = [
    # (metadata, expected code of GetSession, expected details)
    ((("x-api-key", KEY_A),), grpc.StatusCode.OK, None),
    ((("authorization", f"Bearer {KEY_B}"),), grpc.StatusCode.OK, None),
    ((), grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY),
    ((("x-api-key", "wrong-key-0123456789"),), grpc.StatusCode.UNAUTHENTICATED, INVALID_KEY),
]


def _call_get_session(stub, metadata):
    try:
        resp = stub.GetSession(
            simulator_pb2.GetSessionRequest(session_id="s-1"), metadata=metadata, timeout=5
        )
        return grpc.StatusCode.OK, resp
    except grpc.RpcError as err:
        return err.code(), err.details()


def test_grpc_sync_server_enforces_keys_and_exempts_health() -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[ApiKeyInterceptor(ApiKeyAuth([KEY_A, KEY_B]))],
    )
    simulator_pb2_grpc.add_SimulatorServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = simulator_pb2_grpc.SimulatorStub(channel)
            health = stub.Health(simulator_pb2.HealthRequest(), timeout=5)  # no key
            assert health.status == simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
            for metadata, code, details in GRPC_CASES:
                got_code, got = _call_get_session(stub, metadata)
                assert got_code == code, metadata
                if code == grpc.StatusCode.OK:
                    assert got.sessions[0].session_id == "s-1"
                else:
                    assert got == details
            # A streaming RPC is refused the same way, before the servicer runs.
            with pytest.raises(grpc.RpcError) as err:
                list(stub.ImagineStream(simulator_pb2.ImagineRequest(), timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0)


def test_grpc_aio_server_enforces_keys_and_exempts_health() -> None:
    async def scenario() -> None:
        server = grpc.aio.server(interceptors=[AsyncApiKeyInterceptor(ApiKeyAuth([KEY_A, KEY_B]))])
        simulator_pb2_grpc.add_SimulatorServicer_to_server(_AsyncServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = simulator_pb2_grpc.SimulatorStub(channel)
                health = await stub.Health(simulator_pb2.HealthRequest(), timeout=5)
                assert health.status == simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
                for metadata, code, details in GRPC_CASES:
                    try:
                        resp = await stub.GetSession(
                            simulator_pb2.GetSessionRequest(session_id="s-1"),
                            metadata=metadata,
                            timeout=5,
                        )
                        assert code == grpc.StatusCode.OK and resp.sessions[0].session_id == "s-1"
                    except grpc.aio.AioRpcError as err:
                        assert (err.code(), err.details()) == (code, details)
                call = stub.ImagineStream(simulator_pb2.ImagineRequest(), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in call:
                        pass
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_health_methods_are_exempt_by_name() -> None:
    assert is_health_method("/wmpo.v1.Simulator/Health")
    assert is_health_method("/grpc.health.v1.Health/Check")
    assert not is_health_method("/wmpo.v1.Simulator/GetSession")
    assert not is_health_method("/wmpo.v1.Simulator/HealthCheckBypass")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",  # FastAPI's JSON decoding error (422 with a key)
        b'{"x": "not an int"}',  # body validation (422 with a key)
        b"\x80\x81",  # not even UTF-8: FastAPI's own 400 (400 with a key)
    ],
)
def test_a_bad_body_without_a_key_is_401_not_a_description_of_the_body(
    client: TestClient, content: bytes
) -> None:
    """FastAPI validates the body before it runs the app's auth dependency; the error
    handlers check the key first, so a caller without one learns nothing about the API."""
    headers = {"content-type": "application/json"}
    resp = client.post("/echo", content=content, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "UNAUTHENTICATED"
    wrong = client.post("/echo", content=content, headers={**headers, "x-api-key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == INVALID_KEY
    keyed = client.post("/echo", content=content, headers={**headers, "x-api-key": KEY_A})
    assert keyed.status_code in (400, 422)
    bearer = client.post(
        "/echo", content=content, headers={**headers, "authorization": f"Bearer {KEY_B}"}
    )
    assert bearer.status_code == keyed.status_code
