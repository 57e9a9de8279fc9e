"""The API documentation routes under each WMPO_API_DOCS setting (create_app)."""

from __future__ import annotations

import pytest

from tests.services.conftest import KEY_A, build_app

DOCS = ("/openapi.json", "/docs", "/redoc")


def test_keyed_docs_serve_the_schema_only_with_a_key() -> None:
    client = build_app()  # the default: keyed
    refused = client.get("/openapi.json")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHENTICATED"
    schema = client.get("/openapi.json", headers={"x-api-key": KEY_A})
    assert schema.status_code == 200 and "/echo" in schema.json()["paths"]
    assert "/openapi.json" not in schema.json()["paths"]  # the schema route documents nothing
    # The HTML pages would fetch the schema without a key: not served.
    for path in ("/docs", "/redoc"):
        assert client.get(path, headers={"x-api-key": KEY_A}).status_code == 404


def test_public_docs_need_no_key() -> None:
    client = build_app(api_docs="public")
    for path in DOCS:
        assert client.get(path).status_code == 200, path
    assert client.post("/echo", json={"x": 1}).status_code == 401  # the API itself stays keyed


@pytest.mark.parametrize("headers", [{}, {"x-api-key": KEY_A}])
def test_docs_off_serves_none_of_them(headers: dict[str, str]) -> None:
    client = build_app(api_docs="off")
    for path in DOCS:
        assert client.get(path, headers=headers).status_code == 404, path
