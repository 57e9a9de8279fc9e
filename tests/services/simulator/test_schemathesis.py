"""Property-based tests of the simulator's HTTP API from its own OpenAPI schema (schemathesis).

The app is the real one (`create_simulator_app` over a `SimulatorRuntime`) with the bundled
world model, in development mode with an API key configured, driven in process through
schemathesis' ASGI transport (its lifespan starts the engine and the session manager).
Every operation gets generated requests, with the key and without it, and no response may
be a 5xx (the `not_a_server_error` check): a bad request is a 4xx that says what is wrong.
`schemathesis_hooks` makes part of the bodies well-formed tensors and part of the path ids
real sessions, so the engine and the model are reached, not only request decoding.

Cases come from each operation's `as_strategy` (valid and invalid data mixed) under
Hypothesis, rather than from `schema.parametrize()`: the lazy `from_fixture` loader of
schemathesis 4.32 fails under pytest 9 (it sets `Function._nodeid`), and a schema loaded at
import would load the model and start the engine whenever tests are collected.

The number of examples per operation is bounded so this runs in well under a minute;
SCHEMATHESIS_MAX_EXAMPLES raises it. `scripts/fuzz_simulator_api.py` is the larger run
(schemathesis CLI against a live uvicorn server: examples, coverage, fuzzing and stateful
phases).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from services.simulator.http_api import create_simulator_app
from services.simulator.runtime import SimulatorRuntime
from services.simulator.server import load_world_model
from services.simulator.settings import SimulatorSettings
from tests.services import fuzzing
from tests.services.simulator import schemathesis_hooks

ROOT = Path(__file__).resolve().parents[3]
CHECKPOINT = ROOT / "checkpoints" / "world-model"
KEY = "fuzz-key-0123456789abcdef"
AUTH = {"x-api-key": KEY}
EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12"))

# (test, method path) -> Counter of status codes; read by the last test of this module.
STATUSES = fuzzing.new_statuses()



@pytest.fixture(scope="module")
def api_schema() -> Iterator[Any]:
    s = fuzzing.settings_without_env(
        lambda: SimulatorSettings(
            dev_mode=True,
            api_keys=KEY,
            checkpoint=str(CHECKPOINT),
            max_sessions=64,
            session_sweep_s=1.0,
        )
    )
    app = create_simulator_app(s, SimulatorRuntime(load_world_model(CHECKPOINT), s))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)  # starts the lifespan
    schemathesis_hooks.register(schema)
    client = asgi.get_client(app)

    def post(method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        resp = client.request(method, path, json=body, headers=AUTH)
        return resp.status_code, resp.json()

    schemathesis_hooks.configure(post)
    try:
        yield schema
    finally:
        schemathesis_hooks.configure(None)
        asgi.shutdown_lifespans()  # stops the runtime: engine, sessions, imagine queue


def test_no_server_error_with_a_key(api_schema: Any) -> None:
    def call(case: Any) -> None:
        schemathesis_hooks.before_call(None, case, {})  # maybe: real session / group ids
        try:
            response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
        finally:
            schemathesis_hooks.after_call(None, case, None)
        fuzzing.record(STATUSES, "key", case, response.status_code)

    fuzzing.fuzz(api_schema, call, EXAMPLES)


def test_no_server_error_and_401_without_a_key(api_schema: Any) -> None:
    fuzzing.fuzz_without_a_key(api_schema, STATUSES, EXAMPLES)


def test_the_fuzzing_reached_the_model() -> None:
    """The runs above did more than bounce off validation: real steps and imagines ran."""
    if not STATUSES:
        pytest.skip("run with the tests above")
    keyed = fuzzing.report(STATUSES, width=40)  # and no 5xx
    for op in (
        "POST /v1/imagine",
        "POST /v1/sessions",
        "POST /v1/sessions/{session_id}/step",
        "POST /v1/groups/{group_id}/step",
        "POST /v1/sessions/{session_id}/replay",
    ):
        assert keyed.get(op, {}).get(200, 0) > 0, (op, keyed.get(op))
    unkeyed = {op: c for (test, op), c in STATUSES.items() if test == "no key"}
    assert unkeyed["POST /v1/imagine"][401] > 0
