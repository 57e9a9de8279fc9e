"""Simulator replica failover (``wmpo.rl.imagination.ServiceGroupSimulator``) against real
simulator replicas: a group whose replica lost it is re-imagined from its start with the same
seed (same frames, no lost step), a job survives a replica killed mid-rollout, and a job with
no reachable replica fails with a clear error."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from wmpo_client import SimulatorClient, TrainerClient

from tests.services.trainer.conftest import (
    POLICY,
    TASK,
    TINY,
    free_port,
    redis_settings,
    wait_for,
    wait_ready,
    wmpo_process,
)
from wmpo.rl.imagination import NoSimulatorReplica, ServiceGroupSimulator, StartState

K = 8  # actions per chunk, as the bundled policy emits them


@pytest.fixture(scope="module")
def start() -> StartState:
    from wmpo.envs import make_env

    env = make_env(TASK)
    frame, _ = env.reset(seed=200_123)
    return StartState(frame, env.instruction, TASK, 200_123)


def test_a_group_its_replica_lost_is_reimagined_from_its_start_with_the_same_frames(
    stack: Any, start: StartState
) -> None:
    rng = np.random.default_rng(0)
    a1, a2 = rng.uniform(-1, 1, (2, 3, K, 4)).astype(np.float32)  # 2 chunks for G=3
    with SimulatorClient(stack.http_url, timeout=120) as client:
        reference = ServiceGroupSimulator(client)
        g = reference.create_group(start, 3, seed=11, max_chunks=4)
        reference.step_group(g.group_id, a1)
        expected = np.stack([r.frames for r in reference.step_group(g.group_id, a2).results])
        expected_replay = reference.replay(g.session_ids[1], seed=5).frames
        reference.close_group(g.group_id)

        sim = ServiceGroupSimulator(client)
        g = sim.create_group(start, 3, seed=11, max_chunks=4)
        sim.step_group(g.group_id, a1)
        # The replica forgets the group (as a restarted replica would): the next step gets
        # NOT_FOUND, and the group is re-imagined from its start and re-stepped with a1.
        client.close_group(sim._groups[g.group_id].real.group_id)
        got = np.stack([r.frames for r in sim.step_group(g.group_id, a2).results])
        assert sim.failovers == 1
        assert got.shape == expected.shape and np.array_equal(got, expected)
        # A replay whose session is gone is rebuilt from a one-member session with its actions.
        client.close_group(sim._groups[g.group_id].real.group_id)
        assert np.array_equal(sim.replay(g.session_ids[1], seed=5).frames, expected_replay)
        assert sim.failovers == 2
        sim.close_group(g.group_id)


class LoseFirstStepAnswer(httpx.BaseTransport):
    """Sends to the real service; the answer to the first step is lost after the service did the
    step (as when a connection dies on the way back)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/step") and not self.lost:
            response.read()
            response.close()
            self.lost += 1
            raise httpx.ReadError("connection reset on the way back", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_step_whose_answer_was_lost_is_resent_without_stepping_twice_or_failing_over(
    stack: Any, start: StartState
) -> None:
    rng = np.random.default_rng(1)
    a1, a2 = rng.uniform(-1, 1, (2, 2, K, 4)).astype(np.float32)
    with SimulatorClient(stack.http_url, timeout=120) as client:
        reference = ServiceGroupSimulator(client)
        g = reference.create_group(start, 2, seed=3, max_chunks=4)
        first = np.stack([r.frames for r in reference.step_group(g.group_id, a1).results])
        second = np.stack([r.frames for r in reference.step_group(g.group_id, a2).results])
        reference.close_group(g.group_id)
    lossy = LoseFirstStepAnswer()
    with SimulatorClient(stack.http_url, timeout=120, transport=lossy, backoff=0.01) as client:
        sim = ServiceGroupSimulator(client)
        g = sim.create_group(start, 2, seed=3, max_chunks=4)
        outcome = sim.step_group(g.group_id, a1)
        assert lossy.lost == 1 and outcome.replayed  # re-sent; the stored result came back
        assert np.array_equal(np.stack([r.frames for r in outcome.results]), first)
        got = np.stack([r.frames for r in sim.step_group(g.group_id, a2).results])
        assert np.array_equal(got, second)  # stepped once per call: chunk 2 is the second chunk
        assert sim.failovers == 0
        sim.close_group(g.group_id)


def test_with_no_reachable_replica_a_call_fails_with_a_clear_error(start: StartState) -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]  # nothing listens there
    clients = [SimulatorClient(u, retries=0, timeout=5) for u in urls]
    sim = ServiceGroupSimulator(clients, backoff_s=0.01)
    with pytest.raises(NoSimulatorReplica) as err:
        sim.create_group(start, 2, seed=0, max_chunks=2)
    message = str(err.value)
    assert "no simulator replica could create a group after 4 attempts" in message
    assert all(u in message for u in urls) and "UNAVAILABLE" in message
    for c in clients:
        c.close()


def test_a_job_with_no_reachable_simulator_fails_with_the_reason(make_trainer: Any, stack: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    trainer = make_trainer(endpoints={"dead": {"simulator_url": dead, "judge_url": stack.judge_http_url}})
    with TrainerClient(trainer.http_url, timeout=120) as http:
        job = http.submit(POLICY, endpoint="dead", **TINY)
        final = http.wait(job.job_id)
    assert final.state == "failed" and final.step == 0
    assert "no simulator replica could create a group" in final.error and dead in final.error


def _open_sessions(url: str) -> float:
    try:
        text = httpx.get(f"{url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    match = re.search(r'^wmpo_open_sessions\{service="simulator"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_job_survives_a_simulator_replica_killed_mid_rollout(
    make_trainer: Any,
    stack: Any,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, log = free_port(), tmp_path / "replica.log"
    doomed = wmpo_process(
        ["serve", "simulator", "--dev", "--port", str(port), "--grpc-port", str(free_port())], {}, log
    )
    url = f"http://127.0.0.1:{port}"
    caplog.set_level(logging.WARNING, "wmpo.rl.imagination")
    try:
        wait_ready(url, doomed, log)
        trainer = make_trainer(simulator_url=f"{url},{stack.http_url}", **redis_settings(redis_url, redis_prefix))
        with TrainerClient(trainer.http_url, timeout=300) as http:
            # The doomed replica is listed first: the first group is created there.
            job = http.submit(POLICY, simulator_url=[url, stack.http_url], **{**TINY, "chunks": 6})
            wait_for(lambda: _open_sessions(url) > 0, 120, "the job's group on the doomed replica")
            doomed.kill()  # mid-rollout: its sessions (and the group's frames so far) are gone
            doomed.wait()
            during = http.get(job.job_id)
            final = http.wait(job.job_id)
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    assert during.step == 0, "the replica was killed after the first step, not during it"
    assert final.state == "succeeded", final.error
    assert [m["step"] for m in final.metrics] == [1, 2] and final.attempts == 1
    failovers = [r.getMessage() for r in caplog.records if "re-imagining the group" in r.getMessage()]
    assert failovers and url in failovers[0], failovers
