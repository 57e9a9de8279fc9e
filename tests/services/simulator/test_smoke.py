"""The deployed simulator's smoke check (the chart's `helm test`), against the real app."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.simulator import smoke
from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SimulatorRuntime
from tests.services.simulator.conftest import KEY, settings


@pytest.fixture(scope="module")
def client(world_model: Any):
    s = settings()
    with TestClient(create_simulator_app(s, SimulatorRuntime(world_model, s))) as c:
        yield c


def test_passes_on_the_backend_that_answered(client: TestClient) -> None:
    provenance = smoke.check_imagine(client, KEY, "torch")
    assert provenance["backend"] == "torch"


def test_fails_saying_what_is_wrong(client: TestClient) -> None:
    with pytest.raises(smoke.SmokeFailure, match="names backend 'torch', expected 'triton'"):
        smoke.check_imagine(client, KEY, "triton")
    with pytest.raises(smoke.SmokeFailure, match="answered 401"):
        smoke.check_imagine(client, "not-a-key-0123456789", "torch")
    with pytest.raises(smoke.SmokeFailure, match="answered 400"):  # the checkpoint's size is 64
        smoke.check_imagine(client, KEY, "torch", image_size=32)


def test_cli_needs_a_key_from_the_environment(monkeypatch, capsys) -> None:
    monkeypatch.delenv(smoke.KEY_ENV, raising=False)
    assert smoke.main(["--url", "http://127.0.0.1:1"]) == 1
    assert smoke.KEY_ENV in capsys.readouterr().err
    monkeypatch.setenv(smoke.KEY_ENV, KEY)
    assert smoke.main(["--url", "http://127.0.0.1:1", "--timeout", "2"]) == 1  # nobody there
    assert "FAILED against http://127.0.0.1:1" in capsys.readouterr().err
