"""Request-body size limit answered with the shared JSON error body."""

from collections.abc import Iterator

from tests.services.conftest import KEY_A, build_app

H = {"x-api-key": KEY_A, "content-type": "application/json"}


def test_declared_oversized_body_is_refused_before_reading() -> None:
    client = build_app(max_request_bytes=1024)
    r = client.post("/echo", content=b'{"x": 1}' + b" " * 2000, headers=H)
    assert r.status_code == 413
    assert r.json()["error"] == {
        "code": "PAYLOAD_TOO_LARGE",
        "message": f"request body is {8 + 2000} bytes, over the limit of 1024 bytes",
        "request_id": r.headers["x-request-id"],
    }


def test_chunked_oversized_body_is_stopped_at_the_limit() -> None:
    client = build_app(max_request_bytes=1024)

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"x": 1'
        for _ in range(10):
            yield b" " * 200
        yield b"}"

    r = client.post("/echo", content=chunks(), headers=H)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert r.json()["error"]["message"] == "request body exceeds the limit of 1024 bytes"


def test_bodies_within_the_limit_pass() -> None:
    client = build_app(max_request_bytes=1024)
    r = client.post("/echo", content=b'{"x": 5}' + b" " * 900, headers=H)
    assert r.status_code == 200 and r.json() == {"x": 5}
