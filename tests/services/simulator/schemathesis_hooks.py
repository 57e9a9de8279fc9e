"""Schemathesis hooks that let generated requests reach the simulator's model paths.

Schemathesis generates bodies from the OpenAPI schema, where a tensor is
`{"dtype", "shape", "data" | "png"}`: random base64 almost never has the byte
count its shape implies, so nearly every body stops at decoding (a 422) and the
engine, the sessions and the model are never exercised. These hooks keep that
fuzzing and add two things on top, each for about half of the cases:

- `flatmap_body`: tensors whose bytes match their dtype and shape (raw base64 or
  real PNGs), with shapes and values chosen around the edges the service has to
  refuse cleanly (wrong rank, K not a multiple of the frame stride, K past the
  model's maximum, zero-sized axes, the wrong number of group rows, NaN, inf,
  huge values, wrong image sizes, RGBA, float frames) as well as valid ones;
- `before_call`: path ids of sessions and groups replaced by ones that exist,
  created (and sometimes stepped once) just before the call and closed after
  it, so steps, replays, reads and closes run against real sessions instead of
  answering 404; steps then sometimes name the true `expected_chunks_stepped`
  or repeat the step the session did, reaching the idempotent-step paths.

Used by `test_schemathesis.py` (registered on its schema with `register`) and by
`scripts/fuzz_simulator_api.py`, which runs the schemathesis CLI against a live
server and points SCHEMATHESIS_HOOKS at this module; it then reads the server's
address and key from FUZZ_SIMULATOR_URL and FUZZ_SIMULATOR_API_KEY.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

# (method, path, body) -> (status, JSON body); made by the test or from the environment.
Poster = Callable[[str, str, dict[str, Any] | None], tuple[int, Any]]

FRAME = 64  # the bundled model's frame size
_TENSOR_FIELDS = ("start_frames", "candidates", "actions")
_lock = threading.Lock()
_poster: Poster | None = None
_substitute = itertools.count()  # every other case on a path with an id
_with_step = itertools.count()  # every other live session gets a recorded chunk
_created: dict[int, list[tuple[str, str]]] = {}  # id(case) -> [(kind, id)] to close afterwards


def configure(poster: Poster | None) -> None:
    """How to reach the service under test for creating and closing live sessions."""
    global _poster
    _poster = poster


# ------------------------------------------------------------------ tensors


def _raw(array: np.ndarray) -> dict[str, Any]:
    data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


def _png(array: np.ndarray) -> dict[str, Any]:
    frames = array[None] if array.ndim == 3 else array
    blobs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
        blobs.append(base64.b64encode(buf.getvalue()).decode())
    return {"dtype": "uint8", "shape": list(array.shape), "png": blobs}


_EDGE_FRAMES = [
    (2, FRAME, FRAME, 3),
    (0, FRAME, FRAME, 3),
    (32, 32, 3),
    (FRAME, FRAME, 4),
    (FRAME, FRAME),
    (1, 1, FRAME, FRAME, 3),
    (FRAME, 0, 3),
]


@st.composite
def frame_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A start frame: valid three times out of four, else an edge the service must refuse."""
    if draw(st.integers(0, 3)):
        shape = draw(st.sampled_from([(FRAME, FRAME, 3), (1, FRAME, FRAME, 3)]))
    else:
        shape = draw(st.sampled_from(_EDGE_FRAMES))
    seed = draw(st.integers(0, 2**32 - 1))
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    if draw(st.booleans()) and array.ndim in (3, 4) and shape[-1] == 3 and array.size:
        return _png(array)
    if draw(st.integers(0, 9)) == 0:
        return _raw(array.astype(np.float32))  # frames must be uint8
    return _raw(array)


_SPECIAL = [np.nan, np.inf, -np.inf, 1e30, -3.4e38, 1e-45, 2.0]


@st.composite
def action_tensors(draw: st.DrawFn, lead: int) -> dict[str, Any]:
    """Actions with `lead` axes before (C, K, 4): 0 for a session, 1 for a group or imagine
    (G or N rows). Valid about half of the time, else one edge the service must refuse."""
    rows = draw(st.sampled_from([1, 2, 2, 3]))
    chunks = draw(st.sampled_from([1, 1, 2]))
    k = draw(st.sampled_from([8, 8, 2, 4, 22]))  # multiples of the frame stride, <= max K
    last = 4
    layout = draw(st.sampled_from(["short", "long"]))
    dtype = np.float32
    special = None
    edge = draw(st.sampled_from(["none"] * 6 + ["k", "last", "rows", "layout", "value", "dtype"]))
    if edge == "k":
        k = draw(st.sampled_from([0, 1, 3, 24, 64]))
    elif edge == "last":
        last = draw(st.sampled_from([0, 3, 5]))
    elif edge == "rows":
        rows = draw(st.sampled_from([0, 5]))
    elif edge == "layout":
        layout = draw(st.sampled_from(["flat", "deep", "scalar"]))
    elif edge == "value":
        special = draw(st.sampled_from(_SPECIAL))
    elif edge == "dtype":
        dtype = draw(st.sampled_from([np.float16, np.int32, np.uint8]))
    if layout == "scalar":
        shape: tuple[int, ...] = ()
    elif layout == "flat":
        shape = (k * last,)
    elif layout == "deep":
        shape = (1, rows, chunks, k, last)
    elif lead == 0:
        shape = (k, last) if layout == "short" else (chunks, k, last)
    else:
        shape = (rows, k, last) if layout == "short" else (rows, chunks, k, last)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.uniform(-1, 1, shape).astype(np.float32)
    if special is not None and values.size:
        values.flat[draw(st.integers(0, values.size - 1))] = special
    return _raw(values.astype(dtype))


def _tensor_strategy(field: str, path: str) -> st.SearchStrategy[dict[str, Any]]:
    if field == "start_frames":
        return frame_tensors()
    return action_tensors(lead=0 if path.startswith("/v1/sessions/") else 1)


def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """A third of the bodies keep what schemathesis generated; the rest get well-formed tensors."""
    if not isinstance(body, dict) or not any(f in body for f in _TENSOR_FIELDS):
        return st.just(body)
    path = context.operation.path if context.operation is not None else ""
    fixed = st.fixed_dictionaries(
        {f: _tensor_strategy(f, path) for f in _TENSOR_FIELDS if f in body}
    )
    keep = st.integers(0, 2).map(lambda i: i == 0)
    return keep.flatmap(
        lambda k: st.just(body) if k else fixed.map(lambda tensors: {**body, **tensors})
    )


# ---------------------------------------------------------------- live ids


def _start_frame() -> dict[str, Any]:
    return _raw(np.random.default_rng(0).integers(0, 256, (FRAME, FRAME, 3), dtype=np.uint8))


def _create(kind: str) -> tuple[str, np.ndarray | None] | None:
    """A live session or group of 2, and the actions of the one step it did (None: none)."""
    assert _poster is not None
    body = {"start_frames": _start_frame(), "group_size": 2 if kind == "group" else 1}
    status, data = _poster("POST", "/v1/sessions", body)
    if status != 200:
        return None  # e.g. 429 when the fuzzer itself filled the session cap
    ident = data["group_id"] if kind == "group" else data["sessions"][0]["session_id"]
    if next(_with_step) % 2:  # half of them have a recorded chunk (replay has work to do)
        rows = (2,) if kind == "group" else ()
        actions = np.random.default_rng(1).uniform(-1, 1, (*rows, 8, 4)).astype(np.float32)
        step = {"actions": _raw(actions), "expected_chunks_stepped": 0}
        _poster("POST", f"/v1/{kind}s/{ident}/step", step)
        return ident, actions
    return ident, None


def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every other case on a session or group path runs against one that exists; a step
    then names its true step count, or repeats the step it did (same actions), or not."""
    params = case.path_parameters or {}
    kinds = [k for k in ("session_id", "group_id") if k in params]
    if not kinds or _poster is None or next(_substitute) % 2:
        return
    created = []
    for key in kinds:
        kind = "group" if key == "group_id" else "session"
        live = _create(kind)
        if live is None:
            continue
        ident, done = live
        params[key] = ident
        created.append((kind, ident))
        body = case.body
        if isinstance(body, dict) and case.path.endswith("/step"):
            choice = next(_substitute) % 3
            if choice == 0:
                body["expected_chunks_stepped"] = 0 if done is None else 1
            elif choice == 1 and done is not None:
                body["actions"] = _raw(done)  # a retry of the step it did
                body["expected_chunks_stepped"] = 0
    with _lock:
        _created[id(case)] = created


def after_call(context: Any, case: Any, response: Any) -> None:
    with _lock:
        created = _created.pop(id(case), [])
    for kind, ident in created:
        if _poster is not None:  # closing one that the case already closed is a 404: fine
            _poster("DELETE", f"/v1/{kind}s/{ident}", None)


def register(target: Any) -> None:
    """Register the hooks globally (the `schemathesis` module) or on one schema (`schema.hook`).

    Call hooks exist only globally: with a schema, the test calls `before_call` and
    `after_call` itself around each case.
    """
    hooks = [flatmap_body]
    if getattr(target, "__name__", None) == "schemathesis":
        hooks += [before_call, after_call]
    for fn in hooks:
        target.hook(fn)


def _poster_from_env() -> Poster | None:
    url = os.environ.get("FUZZ_SIMULATOR_URL")
    if not url:
        return None
    import httpx

    key = os.environ.get("FUZZ_SIMULATOR_API_KEY", "")
    client = httpx.Client(base_url=url, headers={"x-api-key": key} if key else {}, timeout=120)

    def post(method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        resp = client.request(method, path, json=body)
        return resp.status_code, resp.json()

    return post


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:  # loaded by the schemathesis CLI
    import schemathesis

    configure(_poster_from_env())
    register(schemathesis)
