"""Property-based tests of the trainer's HTTP API from its own OpenAPI schema (schemathesis).

The app is the real one (`create_trainer_app` over a `TrainerRuntime`) as an API-only replica
on a real Redis (WMPO_QUEUE_WORKER=false): jobs are validated, recorded and queued exactly as
in production, and none runs, so the fuzzing stays fast and never starts a GRPO job. Every
operation gets generated requests, valid and invalid, with the key and without it, and no
response may be a 5xx. Two thirds of the job bodies are well-formed specs (a real policy and
task, random options around their bounds, endpoint choices good and bad), so validation past
the schema is reached, not only request decoding.

Bounded (SCHEMATHESIS_MAX_EXAMPLES per operation, default 25) to stay under a minute.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from services.trainer.http_api import create_trainer_app
from services.trainer.runtime import TrainerRuntime
from services.trainer.settings import TrainerSettings
from tests.services import fuzzing
from tests.services.trainer.conftest import KEY, POLICY, TASK

AUTH = {"x-api-key": KEY}
EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
STATUSES = fuzzing.new_statuses()


def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """A third of the job bodies as generated; the rest well-formed specs with random options."""
    if not isinstance(body, dict) or "policy" not in body:
        return st.just(body)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "policy": st.sampled_from([POLICY, "checkpoints/policy-base", "policy-base", "/etc", "../x"]),
        "tasks": st.sampled_from([[TASK], [TASK, "drawer-close-v3"], ["no-such-task-v3"]]),
        "steps": st.integers(-1, 5),
        "group_size": st.integers(1, 65),
        "chunks": st.integers(0, 70),
        "lr": st.floats(-1.0, 2.0, allow_nan=False),
        "environment": st.sampled_from(["imagination", "real", "mars"]),
        "real_budget": st.integers(0, 64),
        "endpoint": st.sampled_from([None, "default", "lab", "nope"]),
        "simulator_url": st.sampled_from([None, "http://simulator-a:8000", "http://evil:1", ["http://simulator-b:8000"]]),
        "judge_url": st.sampled_from([None, "http://judge:8001", "http://evil:1"]),
        "job_id": st.one_of(st.none(), st.uuids().map(lambda u: f"fuzz-{u.hex[:12]}")),
        "eval_episodes": st.just(0),
    }
    fixed = st.fixed_dictionaries({}, optional=fields)
    keep = st.integers(0, 2).map(lambda i: i == 0)
    return keep.flatmap(lambda k: st.just(body) if k else fixed.map(lambda spec: {"policy": POLICY, **spec}))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"wmpo-test-{uuid.uuid4().hex[:12]}"
    s = fuzzing.settings_without_env(
        lambda: TrainerSettings(
            api_keys=KEY,
            trainer_dir=str(tmp_path_factory.mktemp("trainer")),
            redis_url=redis_url,
            queue_prefix=prefix,
            queue_worker=False,  # an API-only replica: jobs are queued, none runs here
            simulator_url="http://simulator-a:8000,http://simulator-b:8000",
            judge_url="http://judge:8001",
            endpoints={"lab": {"simulator_url": "http://simulator-c:8000", "judge_url": "http://judge-c:8001"}},
        )
    )
    try:
        with fuzzing.asgi_schema(create_trainer_app(s, TrainerRuntime(s)), AUTH, flatmap_body) as schema:
            yield schema
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def test_no_server_error_with_a_key(api_schema: Any) -> None:
    def call(case: Any) -> None:
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
        fuzzing.record(STATUSES, "key", case, response.status_code)

    fuzzing.fuzz(api_schema, call, EXAMPLES)


def test_no_server_error_and_401_without_a_key(api_schema: Any) -> None:
    fuzzing.fuzz_without_a_key(api_schema, STATUSES, EXAMPLES)


def test_the_fuzzing_reached_job_validation_and_queued_jobs() -> None:
    """The runs above did more than bounce off the schema: specs were refused for what they
    meant (400) and well-formed ones were recorded and queued (201)."""
    if not STATUSES:
        pytest.skip("run with the tests above")
    fuzzing.report(STATUSES, width=40)  # and no 5xx
    submits = STATUSES[("key", "POST /v1/jobs")]
    assert submits[400] >= 3 and submits[201] + submits[200] >= 1, submits
