"""Structured JSON logs and request-id propagation."""

import json
import logging
import sys

import pytest
from fastapi.testclient import TestClient

from services.common.logging import (
    JsonFormatter,
    configure_logging,
    ensure_request_id,
    is_valid_request_id,
    request_id_var,
)
from tests.services.conftest import KEY_A

H = {"x-api-key": KEY_A}


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("wmpo.test", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_formatter_emits_one_object_with_request_id_and_extras() -> None:
    token = request_id_var.set("rid-1")
    try:
        line = JsonFormatter().format(_record("hello %s", "x", session_id="s-1", batch=4))
    finally:
        request_id_var.reset(token)
    payload = json.loads(line)
    assert payload["message"] == "hello x"
    assert payload["level"] == "WARNING" and payload["logger"] == "wmpo.test"
    assert payload["request_id"] == "rid-1"
    assert payload["session_id"] == "s-1" and payload["batch"] == 4
    assert payload["ts"].endswith("+00:00")
    assert "\n" not in line


def test_json_formatter_keeps_tracebacks_in_the_log() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    payload = json.loads(JsonFormatter().format(record))
    assert "Traceback" in payload["exc"] and "bad thing" in payload["exc"]
    assert "request_id" not in payload  # none was set


def test_configure_logging_is_idempotent() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("DEBUG")
        configure_logging("WARNING")
        ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
        assert len(ours) == 1 and root.level == logging.WARNING
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abc-123_x.y:z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("bad\nid", False),
        ("a b", False),
    ],
)
def test_request_id_charset_and_length(value: str, valid: bool) -> None:
    assert is_valid_request_id(value) is valid
    assert (ensure_request_id(value) == value) is valid


def test_middleware_propagates_a_valid_request_id(client: TestClient) -> None:
    r = client.get("/request-id", headers={**H, "x-request-id": "trace-0001"})
    assert r.headers["x-request-id"] == "trace-0001"
    # The handler saw the same id through the contextvar.
    assert r.json() == {"request_id": "trace-0001"}


def test_middleware_replaces_a_malformed_request_id(client: TestClient) -> None:
    r = client.get("/request-id", headers={**H, "x-request-id": "x" * 500})
    rid = r.headers["x-request-id"]
    assert rid != "x" * 500 and is_valid_request_id(rid)
    assert r.json() == {"request_id": rid}


def test_each_request_gets_its_own_id(client: TestClient) -> None:
    ids = {client.get("/request-id", headers=H).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_access_log_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wmpo.access"):
        r = client.get("/items/7", headers={**H, "x-request-id": "acc-1"})
    records = [rec for rec in caplog.records if rec.name == "wmpo.access"]
    assert len(records) == 1
    rec = records[0]
    assert (rec.method, rec.path, rec.status, rec.request_id) == (
        "GET",
        "/items/7",
        r.status_code,
        "acc-1",
    )
    assert rec.duration_ms >= 0
