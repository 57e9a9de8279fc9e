"""The rollout viewer's routes (services.common.viewer): a public page and static files from an
allow-list, a keyed config, strict security headers; only on apps that ask for the viewer."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.common.app import create_app
from services.common.settings import ServiceSettings
from services.common.viewer import CSP, STATIC_FILES, example_frames
from tests.services.conftest import KEY_A

KEYED = {"x-api-key": KEY_A}


def viewer_app(**describe: object) -> TestClient:
    settings = ServiceSettings(api_keys=KEY_A)
    app = create_app(settings, service="test", viewer=lambda: {"panels": ["jobs"], **describe})
    return TestClient(app, raise_server_exceptions=False)


def test_the_page_and_its_files_need_no_key_and_carry_a_strict_csp() -> None:
    client = viewer_app()
    redirect = client.get("/viewer", follow_redirects=False)
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "viewer/"  # relative: works behind a path prefix
    page = client.get("/viewer/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="static/app.js">' in page.text
    for name in ("app.js", "api.js", "imagine.js", "runs.js", "jobs.js", "player.js",
                 "vendor/uPlot.esm.js", "viewer.css"):
        response = client.get(f"/viewer/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-security-policy"] == CSP
    assert client.get("/viewer/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/viewer/static/examples/door-open-v3.png").content[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_shipped_files_are_served() -> None:
    client = viewer_app()
    for name in ("../__init__.py", "..%2f__init__.py", "%2e%2e/runs.py", "vendor/uPlot.LICENSE",
                 "/etc/passwd", "missing.js", ""):
        response = client.get(f"/viewer/static/{name}")
        assert response.status_code == 404, name
        assert "root" not in response.text
    assert all(not name.startswith("..") and not name.endswith(".py") for name in STATIC_FILES)


def test_the_config_needs_the_key_and_says_what_the_service_shows() -> None:
    client = viewer_app(image_size=64)
    missing = client.get("/viewer/config.json")
    assert missing.status_code == 401
    assert "missing API key" in missing.json()["error"]["message"]
    assert client.get("/viewer/config.json", headers={"x-api-key": "wrong-key-0123456789"}).status_code == 401
    config = client.get("/viewer/config.json", headers=KEYED).json()
    assert config == {"service": "test", "version": "0.1.0", "panels": ["jobs"], "image_size": 64}
    # The rest of the app stays keyed.
    assert client.get("/metrics").status_code == 401


def test_an_app_without_the_viewer_has_no_viewer_routes() -> None:
    client = TestClient(create_app(ServiceSettings(api_keys=KEY_A), service="judge"))
    for path in ("/viewer", "/viewer/", "/viewer/static/app.js", "/viewer/config.json"):
        assert client.get(path, headers=KEYED).status_code == 404, path


def test_the_example_frames_are_listed_with_their_instructions() -> None:
    examples = example_frames()
    assert [e["task"] for e in examples] == ["button-press-topdown-v3", "drawer-close-v3", "door-open-v3"]
    assert all(e["instruction"] and e["url"].startswith("static/examples/") for e in examples)


@pytest.mark.parametrize("service", ["simulator", "trainer"])
def test_the_simulator_and_the_trainer_serve_the_viewer(service: str, tmp_path: Path) -> None:
    """Their app builders pass `viewer`: the page is there, and its config names their panels."""
    if service == "simulator":
        from services.simulator.http_api import create_simulator_app
        from services.simulator.runtime import SimulatorRuntime
        from tests.services.simulator.conftest import settings, tiny_world_model

        sim_settings = settings(judge_url="http://127.0.0.1:9")
        app = create_simulator_app(sim_settings, SimulatorRuntime(tiny_world_model(), sim_settings))
        key, panels = "sim-key-0123456789abcdef", ["imagine", "runs"]
    else:
        from services.trainer.http_api import create_trainer_app
        from services.trainer.runtime import TrainerRuntime
        from services.trainer.settings import TrainerSettings

        trainer_settings = TrainerSettings(api_keys=KEY_A, trainer_dir=str(tmp_path))
        app = create_trainer_app(trainer_settings, TrainerRuntime(trainer_settings))
        key, panels = KEY_A, ["jobs"]
    client = TestClient(app)  # no lifespan: only the routes are looked at
    assert client.get("/viewer/").status_code == 200
    config = client.get("/viewer/config.json", headers={"x-api-key": key}).json()
    assert config["service"] == service and config["panels"] == panels
    if service == "simulator":
        # The page generates chunks of 8 actions (whole frames at the model's stride of 2),
        # sends frames of the model's size and offers verify only with a judge.
        assert (config["image_size"], config["chunk_length"], config["verify"]) == (64, 8, True)
