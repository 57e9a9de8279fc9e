"""One error model: HTTP bodies and gRPC statuses carry the same code and message, never a traceback."""

import asyncio
import logging

import grpc
import pytest
from fastapi.testclient import TestClient
from wmpo_client.proto import simulator_pb2, simulator_pb2_grpc

from services.common.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
    grpc_error_boundary,
)
from services.common.logging import request_id_var
from tests.services.conftest import ERRORS, KEY_A

H = {"x-api-key": KEY_A}


@pytest.mark.parametrize(
    ("cls", "http", "code", "grpc_code"),
    [
        (InvalidArgument, 400, "INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT),
        (Unauthenticated, 401, "UNAUTHENTICATED", grpc.StatusCode.UNAUTHENTICATED),
        (NotFound, 404, "NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        (PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ResourceExhausted, 429, "RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable, 503, "UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
        (Internal, 500, "INTERNAL", grpc.StatusCode.INTERNAL),
    ],
)
def test_error_classes_fix_both_codes(
    cls: type[ServiceError], http: int, code: str, grpc_code: grpc.StatusCode
) -> None:
    assert (cls.http_status, cls.code, cls.grpc_code) == (http, code, grpc_code)
    assert issubclass(cls, ServiceError)


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_http_service_errors_become_json_bodies(client: TestClient, kind: str) -> None:
    exc = ERRORS[kind]
    r = client.get(f"/raise/{kind}", headers={**H, "x-request-id": f"req-{kind}"})
    assert r.status_code == exc.http_status
    assert r.json() == {
        "error": {"code": exc.code, "message": exc.message, "request_id": f"req-{kind}"}
    }
    assert r.headers["x-request-id"] == f"req-{kind}"


def test_unexpected_exception_is_a_generic_500_and_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="wmpo.errors"):
        r = client.get("/boom", headers=H)
    assert r.status_code == 500
    body = r.json()
    rid = r.headers["x-request-id"]
    assert body == {
        "error": {
            "code": "INTERNAL",
            "message": f"internal error; quote request id {rid} when reporting it",
            "request_id": rid,
        }
    }
    for leak in ["secret-internal-detail", "Traceback", "RuntimeError", "model.py"]:
        assert leak not in r.text
    # The details are in the log instead, tied to the same request id.
    record = next(r for r in caplog.records if r.name == "wmpo.errors")
    assert record.exc_info is not None and "secret-internal-detail" in str(record.exc_info[1])
    assert record.request_id == rid


def test_validation_errors_name_the_field_without_echoing_input(client: TestClient) -> None:
    r = client.post("/echo", json={"x": "SECRET-INPUT"}, headers=H)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "INVALID_ARGUMENT"
    assert err["message"].startswith("invalid request: body.x: Input should be a valid integer")
    assert "SECRET-INPUT" not in r.text
    r = client.post("/echo", json={}, headers=H)
    assert r.json()["error"]["message"] == "invalid request: body.x: Field required"


def test_malformed_json_is_a_422_with_a_clear_message(client: TestClient) -> None:
    r = client.post(
        "/echo", content=b"{not json", headers={**H, "content-type": "application/json"}
    )
    assert r.status_code == 422
    assert "JSON decode error" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"{not json", "application/json", "the body is not valid JSON: JSON decode error at character 1"),
        (b"{not json", "text/plain", "body: not a JSON object"),
        (b'{"x": 1}', "application/x-www-form-urlencoded", "Content-Type: application/json"),
    ],
)
def test_a_body_that_is_not_json_is_a_422_that_says_so(
    client: TestClient, body: bytes, content_type: str, says: str
) -> None:
    r = client.post("/echo", content=body, headers={**H, "content-type": content_type})
    assert r.status_code == 422 and says in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(("kind", "status", "seconds"), [("exhausted", 429, "1"), ("unavailable", 503, "2")])
def test_429_and_503_tell_the_client_when_to_retry(
    client: TestClient, kind: str, status: int, seconds: str
) -> None:
    r = client.get(f"/raise/{kind}", headers=H)
    assert r.status_code == status and r.headers["retry-after"] == seconds


def test_framework_errors_use_the_same_body(client: TestClient) -> None:
    r = client.get("/no/such/route", headers=H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = client.delete("/echo", headers=H)
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]


# ------------------------------------------------------------------------ gRPC


class _FailingServicer(simulator_pb2_grpc.SimulatorServicer):
    @grpc_error_boundary
    async def GetSession(self, request, context):  # noqa: N802 - generated name
        raise NotFound(f"session '{request.session_id}' not found")

    @grpc_error_boundary
    async def CloseSession(self, request, context):  # noqa: N802
        raise RuntimeError("secret-internal-detail")

    @grpc_error_boundary
    async def Health(self, request, context):  # noqa: N802
        return simulator_pb2.HealthResponse(version=request_id_var.get() or "")

    @grpc_error_boundary
    async def StepSession(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "aborted by the handler itself")

    @grpc_error_boundary
    async def ImagineStream(self, request, context):  # noqa: N802
        yield simulator_pb2.ImagineStreamResponse(frames=simulator_pb2.ImagineFrames(chunk_index=0))
        raise InvalidArgument("candidates: chunk 1 has NaN actions")


def test_grpc_error_boundary_maps_errors_and_hides_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        simulator_pb2_grpc.add_SimulatorServicer_to_server(_FailingServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = simulator_pb2_grpc.SimulatorStub(channel)

                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetSession(
                        simulator_pb2.GetSessionRequest(session_id="s-9"), timeout=5
                    )
                assert (err.value.code(), err.value.details()) == (
                    grpc.StatusCode.NOT_FOUND,
                    "session 's-9' not found",
                )

                call = stub.CloseSession(
                    simulator_pb2.CloseSessionRequest(session_id="s-1"),
                    metadata=(("x-request-id", "rid-42"),),
                    timeout=5,
                )
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.INTERNAL
                assert (
                    err.value.details()
                    == "internal error; quote request id rid-42 when reporting it"
                )
                assert ("x-request-id", "rid-42") in tuple(await call.trailing_metadata())

                # The request id is visible to the handler (and so to its log lines).
                health = await stub.Health(
                    simulator_pb2.HealthRequest(), metadata=(("x-request-id", "rid-7"),)
                )
                assert health.version == "rid-7"

                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.StepSession(simulator_pb2.StepSessionRequest(), timeout=5)
                assert (err.value.code(), err.value.details()) == (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "aborted by the handler itself",
                )

                stream = stub.ImagineStream(simulator_pb2.ImagineRequest(), timeout=5)
                first = await stream.read()
                assert first.frames.chunk_index == 0
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stream.read()
                assert (err.value.code(), err.value.details()) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "candidates: chunk 1 has NaN actions",
                )
        finally:
            await server.stop(0)

    with caplog.at_level(logging.ERROR, logger="wmpo.errors"):
        asyncio.run(scenario())
    logged = [r for r in caplog.records if r.name == "wmpo.errors"]
    assert len(logged) == 1 and "secret-internal-detail" in str(logged[0].exc_info[1])
