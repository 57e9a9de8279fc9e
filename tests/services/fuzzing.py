"""What the services' schemathesis tests share: the generation loop over every operation of a
schema, valid and invalid cases mixed, derandomized for CI, and the status record each test
module prints and checks at its end."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

Statuses = dict[tuple[str, str], collections.Counter[int]]


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
