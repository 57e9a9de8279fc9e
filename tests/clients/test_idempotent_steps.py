"""Idempotent session steps through the real clients and the real service (tiny world model).

A step that names `expected_chunks_stepped` can be sent twice: the second time the service
returns the stored result of the step and the session does not advance. The clients send
it where they track the count (the gym envs), and retry such a step after a timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from wmpo_client.errors import SimulatorError
from wmpo_client.grpc import GrpcSimulatorClient
from wmpo_client.gym import SimulatorEnv, SimulatorVectorEnv
from wmpo_client.http import SimulatorClient

from tests.clients.conftest import KEY, LiveService, serve
from tests.services.simulator.conftest import CountingModel, actions, frames

FRAME = frames()[0]
Client = SimulatorClient | GrpcSimulatorClient


def make(kind: str, live: LiveService, **kwargs: Any) -> Client:
    kwargs.setdefault("timeout", 20)
    if kind == "http":
        return SimulatorClient(live.http_url, KEY, **kwargs)
    return GrpcSimulatorClient(live.grpc_target, KEY, **kwargs)


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, service: LiveService) -> Iterator[Client]:
    with make(request.param, service) as c:
        yield c


def test_a_repeated_step_returns_the_same_frames_and_does_not_advance(client: Client) -> None:
    sid = client.create_session(FRAME, seed=3).session_id
    chunk = actions(8, seed=1)
    first = client.step(sid, chunk, expected_chunks_stepped=0)
    again = client.step(sid, chunk, expected_chunks_stepped=0)
    assert (first.replayed, again.replayed) == (False, True)
    assert np.array_equal(first.result.frames, again.result.frames)
    assert again.result.chunks_stepped == 1 and client.get_session(sid).chunks_stepped == 1

    with pytest.raises(SimulatorError) as err:
        client.step(sid, chunk, expected_chunks_stepped=4)
    assert err.value.code == "FAILED_PRECONDITION"
    assert "has stepped 1 chunks, fewer than expected_chunks_stepped=4" in err.value.message
    if isinstance(client, SimulatorClient):
        assert err.value.http_status == 409
    with pytest.raises(ValueError, match="expected_chunks_stepped"):
        client.step(sid, chunk, expected_chunks_stepped=-1)  # refused before sending

    group = client.create_group(FRAME, 2, seed=3)
    rows = actions(2, 8, seed=2)
    g1 = client.step_group(group.group_id, rows, expected_chunks_stepped=0)
    g2 = client.step_group(group.group_id, rows, expected_chunks_stepped=0)
    assert (g1.replayed, g2.replayed) == (False, True)
    for a, b in zip(g1.results, g2.results, strict=True):
        assert np.array_equal(a.frames, b.frames)
    assert [m.chunks_stepped for m in client.get_group(group.group_id)] == [1, 1]
    client.close_session(sid)
    client.close_group(group.group_id)


def test_the_gym_envs_send_the_step_count(client: Client) -> None:
    env = SimulatorEnv(client, FRAME, max_chunks=4)
    env.reset(seed=2)
    chunk = actions(8, seed=5)
    _, _, _, _, info = env.step(chunk)
    assert env.chunks_stepped == 1
    # What the env's request would return if it were sent again: its stored result.
    repeat = client.step(env.session_id, chunk, expected_chunks_stepped=0)
    assert repeat.replayed and np.array_equal(repeat.result.frames, info["frames"])
    env.step(chunk)
    assert env.chunks_stepped == 2 and client.get_session(env.session_id).chunks_stepped == 2
    env.reset(seed=2)
    assert env.chunks_stepped == 0
    env.step(chunk)  # a new session starts from 0 again
    env.close()

    envs = SimulatorVectorEnv(client, 2, FRAME, max_chunks=4)
    envs.reset(seed=1)
    rows = actions(2, 8, seed=6)
    obs, *_ = envs.step(rows)
    assert envs.chunks_stepped == 1
    repeat = client.step_group(envs.group_id, rows, expected_chunks_stepped=0)
    assert repeat.replayed
    assert np.array_equal(np.stack([r.observation for r in repeat.results]), obs)
    envs.step(rows)
    assert [m.chunks_stepped for m in client.get_group(envs.group_id)] == [2, 2]
    envs.close()


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_a_step_that_times_out_is_retried_without_advancing_twice(
    kind: str, client_world_model: Any
) -> None:
    """The trainer's network timeout: the first attempt times out while the model is still
    running, the client retries, and the retry gets the frames of the one step that ran."""
    model = CountingModel(client_world_model, gated=True)
    with serve(model) as live, make(kind, live, timeout=0.4, retries=30, backoff=0.05) as sim:
        env = SimulatorEnv(sim, FRAME, max_chunks=4)
        # Many retries: on a loaded machine the step, once let through, may take longer than one
        # attempt's timeout; the retries then wait on the same stored step, never run it again.
        env.reset(seed=3)  # encoding is not gated; stepping is
        opener = threading.Timer(1.0, model.gate.set)  # past the first attempt's timeout
        opener.start()
        try:
            obs, _, _, _, info = env.step(actions(8, seed=7))
        finally:
            opener.join()
        assert model.calls == [1]  # the chunk ran once, however many attempts were sent
        assert env.chunks_stepped == 1 and sim.get_session(env.session_id).chunks_stepped == 1
        assert obs.shape == (64, 64, 3) and info["frames"].shape == (4, 64, 64, 3)
        # The frames are the step's own: the session replayed under its seed gives them back.
        seed = sim.get_session(env.session_id).seed
        assert np.array_equal(sim.replay(env.session_id, seed=seed).frames, info["frames"])

        # Without a step count a timeout is not retried: the step may have happened.
        model.gate.clear()
        sid = sim.create_session(FRAME, seed=4).session_id
        with pytest.raises(SimulatorError) as err:
            sim.step(sid, actions(8, seed=8))
        assert err.value.code == "DEADLINE_EXCEEDED"
        model.gate.set()
        env.close()
