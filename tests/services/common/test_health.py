"""Liveness and readiness probes."""

import logging

import pytest

from services.common.health import Readiness
from tests.services.conftest import build_app


async def _async_ready() -> bool:
    return True


def _broken() -> bool:
    raise ConnectionError("redis://user:hunter2@10.0.0.1 refused")


@pytest.mark.parametrize(
    ("check", "status", "body"),
    [
        (None, 200, {"status": "ready"}),
        (lambda: True, 200, {"status": "ready"}),
        (_async_ready, 200, {"status": "ready"}),
        (lambda: False, 503, {"status": "not ready", "reason": ""}),
        (
            lambda: Readiness(False, "model loading"),
            503,
            {"status": "not ready", "reason": "model loading"},
        ),
        (_broken, 503, {"status": "not ready", "reason": "readiness check failed"}),
    ],
)
def test_readiness_reports_the_callable(check, status: int, body: dict[str, str]) -> None:  # noqa: ANN001
    client = build_app(readiness=check)
    r = client.get("/readyz")
    assert (r.status_code, r.json()) == (status, body)
    # Liveness does not depend on readiness.
    assert client.get("/healthz").json() == {"status": "ok"}


def test_failing_readiness_check_is_logged_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    client = build_app(readiness=_broken)
    with caplog.at_level(logging.ERROR, logger="wmpo.health"):
        r = client.get("/readyz")
    assert "hunter2" not in r.text
    assert any("hunter2" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)
