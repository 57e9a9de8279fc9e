"""What the services' schemathesis tests share: the app's schema served in process
(`asgi_schema`, with settings built outside the developer's environment), the generation loop
over every operation of a schema, valid and invalid cases mixed, derandomized for CI, and the
status record each test module prints and checks at its end (`report`)."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

Statuses = dict[tuple[str, str], collections.Counter[int]]
S = TypeVar("S")


def settings_without_env(make: Callable[[], S]) -> S:
    """`make()` with the developer's WMPO_* variables unset (a module fixture cannot use the
    autouse `clean_env`)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("WMPO_"):
                mp.delenv(name)
        return make()


@contextlib.contextmanager
def asgi_schema(app: Any, headers: dict[str, str], hook: Callable[..., Any]) -> Iterator[Any]:
    """The app's OpenAPI schema, called in process (this starts the app's lifespan: the
    runtime), with the body strategy `hook`; the lifespan is shut down at exit."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    schema.hook(hook)
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()


def new_statuses() -> Statuses:
    """(test, "METHOD path") -> Counter of status codes."""
    return collections.defaultdict(collections.Counter)


def record(statuses: Statuses, test: str, case: Any, status: int) -> None:
    statuses[(test, f"{case.method.upper()} {case.path}")][status] += 1


def drop_credentials(case: Any) -> None:
    """Generated credentials are never valid ones: a case without a key has none at all."""
    for name in [h for h in case.headers or {} if h.lower() in ("x-api-key", "authorization")]:
        del case.headers[name]


def fuzz(schema: Any, call: Callable[[Any], None], examples: int) -> None:
    """`call(case)` for `examples` generated cases per operation, valid and invalid ones mixed.

    Hypothesis drives the generation (and shrinks a failing case); a failure names the
    operation and the minimal request.
    """
    run_settings = settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same cases on every run (CI)
        suppress_health_check=list(HealthCheck),
    )
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE, hooks=schema.hooks),
            operation.as_strategy(GenerationMode.NEGATIVE, hooks=schema.hooks),
        )

        @run_settings
        @given(case=strategy)
        def run(case: Any) -> None:
            call(case)

        run()


PUBLIC = frozenset({"/healthz", "/readyz"})


def fuzz_without_a_key(schema: Any, statuses: Statuses, examples: int) -> None:
    """Every operation without credentials: never a 5xx, and 401 on every route but health.
    Auth comes first; only an over-size body is refused earlier (413)."""
    from schemathesis.checks import not_a_server_error

    def call(case: Any) -> None:
        drop_credentials(case)
        response = case.call_and_validate(checks=[not_a_server_error])
        record(statuses, "no key", case, response.status_code)
        if case.path not in PUBLIC:
            assert response.status_code in (401, 413), (case.path, response.status_code)

    fuzz(schema, call, examples)


def report(statuses: Statuses, width: int = 24) -> dict[str, collections.Counter[int]]:
    """Print the statuses per operation, check that none was a 5xx, and return the counters of
    the run with a key, by operation."""
    total = sum(sum(c.values()) for c in statuses.values())
    print(f"\nschemathesis: {total} cases, statuses per operation:")
    for (test, op), counter in sorted(statuses.items()):
        print(f"  {test:6} {op:{width}} {dict(sorted(counter.items()))}")
    assert all(code < 500 for c in statuses.values() for code in c)
    return {op: c for (test, op), c in statuses.items() if test == "key"}
