"""The sync HTTP and gRPC clients against the real service: every method, errors, retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from wmpo_client.errors import SimulatorError
from wmpo_client.grpc import GrpcSimulatorClient
from wmpo_client.http import SimulatorClient
from wmpo_client.results import ImagineChunk, ImagineResult

from tests.clients.conftest import KEY, LiveService, serve
from tests.services.simulator.conftest import actions, frames

FRAME = frames()[0]  # (64, 64, 3) uint8
Client = SimulatorClient | GrpcSimulatorClient


def make(kind: str, live: LiveService, **kwargs: Any) -> Client:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("timeout", 20)
    if kind == "http":
        return SimulatorClient(live.http_url, **kwargs)
    return GrpcSimulatorClient(live.grpc_target, **kwargs)


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, service: LiveService) -> Iterator[Client]:
    with make(request.param, service) as c:
        yield c


def test_imagine_and_stream(client: Client) -> None:
    cands = actions(3, 2, 8)
    result = client.imagine(FRAME, "open the drawer", cands, seed=7, request_id="req-imagine")
    assert result.request_id == "req-imagine" and result.seed == 7
    assert result.frames.shape == (3, 8, 64, 64, 3) and result.frames.dtype == np.uint8
    assert [c.index for c in result.candidates] == [0, 1, 2]
    assert result.candidates[0].confidence is None and result.verdict is None
    assert result.best_candidate is None
    assert result.provenance["world_model_sha256"] == "tiny" and result.timing["total"] > 0

    # horizon 1 imagines the first chunk only, with the same noise: the same first frames.
    first = client.imagine(FRAME, "", cands, horizon=1, seed=7)
    assert np.array_equal(first.frames, result.frames[:, :4])

    events = list(client.imagine_stream(FRAME, "open the drawer", cands, seed=7))
    chunks = [e for e in events if isinstance(e, ImagineChunk)]
    assert [c.chunk_index for c in chunks] == [0, 1]
    assert chunks[0].frames.shape == (3, 4, 64, 64, 3)
    final = events[-1]
    assert isinstance(final, ImagineResult) and final.seed == 7
    assert np.array_equal(final.frames, result.frames)

    # Leaving the stream early is fine (the server drops the rest).
    for event in client.imagine_stream(FRAME, "", cands, seed=7):
        assert isinstance(event, ImagineChunk)
        break
    # Lists and float64 actions are converted to float32. (A batch of 1 rather than 3:
    # CPU matmuls are not batch-invariant, so frames may differ by float rounding.)
    listed = client.imagine(FRAME, "", cands[:1, 0].astype(np.float64).tolist(), seed=7)
    assert np.abs(listed.frames.astype(int) - result.frames[:1, :4]).max() <= 2


def test_http_and_grpc_give_the_same_frames(service: LiveService) -> None:
    cands = actions(2, 1, 8, seed=3)
    with make("http", service, frame_encoding="png") as h, make("grpc", service) as g:
        a = h.imagine(FRAME, "", cands, seed=11).frames
        b = g.imagine(FRAME, "", cands, seed=11).frames
    assert np.array_equal(a, b)


def test_session_lifecycle(client: Client) -> None:
    created = client.create_session(FRAME, "push the puck", seed=5, max_chunks=2)
    sid = created.session_id
    assert created.group_id is None and created.observation.shape == (64, 64, 3)
    assert created.provenance["seed"] == "5"
    info = client.get_session(sid)
    assert info.instruction == "push the puck" and info.seed == 5
    assert info.chunks_stepped == 0 and info.max_chunks == 2 and info.memory_bytes > 0

    step = client.step(sid, actions(8), request_id="req-step").result
    assert step.frames.shape == (4, 64, 64, 3) and step.observation.shape == (64, 64, 3)
    assert (step.reward, step.done, step.truncated, step.chunks_stepped) == (None, None, False, 1)
    last = client.step(sid, actions(8, seed=1)).result
    assert last.truncated and last.chunks_stepped == 2

    again = client.replay(sid, seed=5)  # its own seed: its own frames back
    assert again.seed == 5 and again.frames.shape == (8, 64, 64, 3)
    assert np.array_equal(again.frames, np.concatenate([step.frames, last.frames]))
    fresh = client.replay(sid)
    assert fresh.seed != 5 and fresh.frames.shape == (8, 64, 64, 3)

    assert client.close_session(sid) == [sid]
    with pytest.raises(SimulatorError) as err:
        client.get_session(sid)
    assert err.value.code == "NOT_FOUND"


def test_group_lifecycle(client: Client) -> None:
    created = client.create_group(FRAME, 3, "open the door", seed=9, max_chunks=4)
    gid = created.group_id
    assert gid and len(created.session_ids) == 3
    assert [s.group_index for s in created.sessions] == [0, 1, 2]
    out = client.step_group(gid, actions(3, 8))
    assert [r.session_id for r in out.results] == created.session_ids
    assert all(r.frames.shape == (4, 64, 64, 3) for r in out.results)
    two = client.step_group(gid, actions(3, 2, 8))  # (G, C, K, 4): two chunks each
    assert [r.chunks_stepped for r in two.results] == [3, 3, 3]
    assert two.results[0].frames.shape == (8, 64, 64, 3)
    assert [s.chunks_stepped for s in client.get_group(gid)] == [3, 3, 3]
    assert sorted(client.close_group(gid)) == sorted(created.session_ids)


def test_health(client: Client) -> None:
    status = client.health()
    assert status.ready and status.reason == ""
    if isinstance(client, GrpcSimulatorClient):
        assert status.version


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_errors_carry_code_message_and_request_id(kind: str, service: LiveService) -> None:
    with make(kind, service) as client:
        with pytest.raises(SimulatorError) as err:
            client.step("s-unknown", actions(8), request_id="req-404")
        e = err.value
        assert e.code == "NOT_FOUND" and "s-unknown" in e.message and e.request_id == "req-404"
        assert (e.http_status, e.grpc_status) == (
            (404, None) if kind == "http" else (None, "NOT_FOUND")
        )

        with pytest.raises(SimulatorError) as err:
            client.imagine(frames()[0][:32, :32], "", actions(1, 8), request_id="req-size")
        assert err.value.code == "INVALID_ARGUMENT" and "64x64" in err.value.message
        assert err.value.request_id == "req-size"

        nan = actions(1, 8)
        nan[0, 3, 1] = np.nan
        with pytest.raises(SimulatorError, match="INVALID_ARGUMENT: .*non-finite"):
            client.imagine(FRAME, "", nan)

        with pytest.raises(ValueError, match="uint8"):  # refused before sending
            client.imagine(FRAME / 255.0, "", actions(1, 8))

    with make(kind, service, api_key="wrong-key-0123456789") as bad:
        with pytest.raises(SimulatorError) as err:
            bad.create_session(FRAME)
        assert err.value.code == "UNAUTHENTICATED"
        assert bad.health().ready  # health needs no key


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_unreachable_service_is_unavailable(kind: str, service: LiveService) -> None:
    live = LiveService("http://127.0.0.1:9", "127.0.0.1:9", service.runtime)  # discard port
    with make(kind, live, retries=0, timeout=3) as client, pytest.raises(SimulatorError) as err:
        client.get_session("s-1")
    assert err.value.code == "UNAVAILABLE"


# ------------------------------------------------------------------ retries


class CountingTransport(httpx.HTTPTransport):
    """A real transport that records the status of every response it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


@pytest.fixture(scope="module")
def full_service(client_world_model: Any) -> Iterator[LiveService]:
    """A service that admits one session: the second create gets 429 until it closes."""
    with serve(client_world_model, max_sessions=1) as live:
        yield live


def _free_later(live: LiveService, session_id: str, delay: float) -> threading.Timer:
    def close() -> None:
        with make("http", live) as c:
            c.close_session(session_id)

    timer = threading.Timer(delay, close)
    timer.start()
    return timer


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_busy_is_retried_with_backoff(kind: str, full_service: LiveService) -> None:
    with make(kind, full_service, retries=0) as once:
        held = once.create_session(FRAME).session_id
        with pytest.raises(SimulatorError) as err:
            once.create_session(FRAME)
        assert err.value.code == "RESOURCE_EXHAUSTED" and "session" in err.value.message
        if kind == "http":
            assert err.value.http_status == 429

    transport = CountingTransport()
    extra: dict[str, Any] = {"transport": transport} if kind == "http" else {}
    with make(kind, full_service, retries=8, backoff=0.05, max_backoff=0.2, **extra) as patient:
        timer = _free_later(full_service, held, 0.3)
        started = time.monotonic()
        created = patient.create_session(FRAME)
        timer.join()
        assert time.monotonic() - started >= 0.3  # it waited for the slot
        patient.close_session(created.session_id)
    if kind == "http":
        assert transport.statuses[0] == 429 and transport.statuses[-2:] == [200, 200]
        assert set(transport.statuses[:-2]) == {429}


def test_retries_give_up_after_the_budget(full_service: LiveService) -> None:
    transport = CountingTransport()
    with make("http", full_service, retries=2, backoff=0.01, transport=transport) as client:
        held = client.create_session(FRAME).session_id
        try:
            with pytest.raises(SimulatorError) as err:
                client.create_session(FRAME)
            assert err.value.code == "RESOURCE_EXHAUSTED"
            assert transport.statuses == [200, 429, 429, 429]  # 1 try + 2 retries
        finally:
            client.close_session(held)
