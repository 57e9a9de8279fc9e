"""Property-based tests of the judge's HTTP API from its own OpenAPI schema (schemathesis).

The app is the real one (`create_judge_app` over a `JudgeRuntime`) with the tiny classifier
trained for these tests, an API key configured, driven in process through schemathesis' ASGI
transport (its lifespan starts the engine and the judge queue). Every operation gets
generated requests, valid and invalid, with the key and without it, and no response may be
a 5xx (the `not_a_server_error` check). Random base64 almost never matches its shape, so
`flatmap_body` makes about two thirds of the bodies carry well-formed videos (and edge cases
the service must refuse cleanly: T=0, wrong size, RGBA, float frames, 3-D arrays), so the
engine and the classifier are reached, not only request decoding.

Bounded (SCHEMATHESIS_MAX_EXAMPLES per operation, default 25) to stay well under a minute.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error

from services.judge.http_api import create_judge_app
from services.judge.runtime import JudgeRuntime
from tests.services import fuzzing
from tests.services.judge.conftest import KEY
from tests.services.judge.conftest import settings as judge_settings

AUTH = {"x-api-key": KEY}
EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
FRAME = 64
STATUSES = fuzzing.new_statuses()
RUNTIMES: dict[int, JudgeRuntime] = {}  # the runtime under test, for the last test



# ------------------------------------------------------------------ bodies


def _raw(array: np.ndarray) -> dict[str, Any]:
    data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


def _png(array: np.ndarray) -> dict[str, Any]:
    blobs = []
    for frame in array:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
        blobs.append(base64.b64encode(buf.getvalue()).decode())
    return {"dtype": "uint8", "shape": list(array.shape), "png": blobs}


_EDGES = [
    (0, FRAME, FRAME, 3),
    (3, 32, 32, 3),
    (3, FRAME, FRAME, 4),
    (FRAME, FRAME, 3),
    (2, 1, 1, 3),
]


@st.composite
def videos(draw: st.DrawFn) -> dict[str, Any]:
    """A video: valid four times out of five, else an edge the service must refuse."""
    if draw(st.integers(0, 4)):
        shape: tuple[int, ...] = (draw(st.integers(1, 12)), FRAME, FRAME, 3)
    else:
        shape = draw(st.sampled_from(_EDGES))
    array = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(
        0, 256, shape, dtype=np.uint8
    )
    if len(shape) == 4 and shape[-1] == 3 and array.size and draw(st.booleans()):
        return _png(array)
    if draw(st.integers(0, 9)) == 0:
        return _raw(array.astype(np.float32))
    return _raw(array)


def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """A third of the bodies keep what schemathesis generated; the rest get real videos
    and mostly a stride and kind this deployment serves."""
    if not isinstance(body, dict) or not ({"frames", "videos"} & set(body)):
        return st.just(body)
    # Mostly options this deployment serves (random ones are nearly always 4xx; the bodies
    # kept as generated fuzz them). No request id: reusing one for another body is a 400.
    fields: dict[str, st.SearchStrategy[Any]] = {
        "frame_stride": st.sampled_from([1, 2, 2, 2, 3]),
        "kind": st.sampled_from([None, "classifier", "classifier", "classifier", "vlm"]),
        "threshold": st.one_of(st.none(), st.floats(0.0, 1.0)),
        "clip_temperature": st.one_of(st.none(), st.floats(0.01, 100.0)),
        "request_id": st.just(""),
    }
    if "videos" in body:
        fields["reward"] = st.sampled_from(["success", "score", "clip"])
        fields["max_flags"] = st.integers(0, 3)
    if "frames" in body:
        fields["frames"] = videos()
    if "videos" in body:  # replay indices beyond G are a clean 400
        fields["videos"] = st.lists(videos(), min_size=2, max_size=3)
        fields["replays"] = st.lists(
            st.fixed_dictionaries({"index": st.integers(0, 2), "frames": videos()}), max_size=1
        )
    fixed = st.fixed_dictionaries(fields)
    keep = st.integers(0, 2).map(lambda i: i == 0)
    return keep.flatmap(
        lambda k: st.just(body) if k else fixed.map(lambda tensors: {**body, **tensors})
    )


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def api_schema(classifier) -> Iterator[Any]:
    s = fuzzing.settings_without_env(
        lambda: judge_settings(dev_mode=True, max_request_bytes=4 * 1024**2, max_wait_ms=2.0)
    )
    runtime = RUNTIMES[0] = JudgeRuntime(classifier, s)
    # Leaving it stops the runtime: engine and judge queue.
    with fuzzing.asgi_schema(create_judge_app(s, runtime), AUTH, flatmap_body) as schema:
        yield schema


def test_no_server_error_with_a_key(api_schema: Any) -> None:
    def call(case: Any) -> None:
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
        fuzzing.record(STATUSES, "key", case, response.status_code)

    fuzzing.fuzz(api_schema, call, EXAMPLES)


def test_no_server_error_and_401_without_a_key(api_schema: Any) -> None:
    fuzzing.fuzz_without_a_key(api_schema, STATUSES, EXAMPLES)


def test_the_fuzzing_reached_the_classifier() -> None:
    """The runs above did more than bounce off validation: real videos were judged."""
    if not STATUSES:
        pytest.skip("run with the tests above")
    keyed = fuzzing.report(STATUSES)  # and no 5xx
    judged = sum(keyed.get(op, {}).get(200, 0) for op in ("POST /v1/judge", "POST /v1/judge/group"))
    stats = RUNTIMES[0].engine.stats
    assert judged >= 3 and stats.jobs >= 3, (keyed, stats)
