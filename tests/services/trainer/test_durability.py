"""Durable jobs: a job outlives the trainer running it.

With Redis, a trainer process killed mid-job (SIGKILL, no goodbye) leaves the job's
message pending; another trainer claims it after WMPO_QUEUE_MIN_IDLE_S and resumes from
the last checkpoint in the shared data directory, and the result equals an uninterrupted
job's with the same seed. A trainer stopped gracefully mid-job puts the job back to queued
(not a restart): without Redis it resumes it from its checkpoint when it starts again, with
Redis another replica takes it over at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from wmpo_client import TrainerClient

from services.trainer.server import serve_trainer_in_thread
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobRecord, make_store
from tests.services.trainer.conftest import (
    POLICY,
    TINY,
    UPDATING,
    redis_settings,
    wait_for,
    wmpo_process,
)
from wmpo.utils.checkpoint import load_checkpoint

# Step metrics that are timings, not results.
TIMINGS = ("seconds", "imagined_frames_per_s")


def _results(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TIMINGS} for m in metrics]


def _weights(trainer_dir: Path, job_id: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(trainer_dir / "jobs" / job_id / "out" / "policy")[0]


def test_a_killed_trainers_job_is_resumed_by_another_and_equals_an_uninterrupted_job(
    make_trainer: Any, stack: Any, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"  # the replicas' shared data directory
    settings = redis_settings(redis_url, redis_prefix, trainer_dir=str(shared))
    api = make_trainer(**settings, queue_worker=False)  # submits and reports, runs nothing
    env = {
        "WMPO_DEV_MODE": "1",
        "WMPO_PORT": "0",
        "WMPO_GRPC_PORT": "0",
        "WMPO_REDIS_URL": redis_url,
        "WMPO_QUEUE_PREFIX": redis_prefix,
        "WMPO_QUEUE_MIN_IDLE_S": "3",
        "WMPO_QUEUE_RETRY_DELAY_S": "0.5",
        "WMPO_TRAINER_DIR": str(shared),
        "WMPO_SIMULATOR_URL": stack.http_url,
        "WMPO_JUDGE_URL": stack.judge_http_url,
        "WMPO_TORCH_THREADS": "1",
    }
    doomed = wmpo_process(["serve", "trainer"], env, tmp_path / "doomed.log")
    try:
        with TrainerClient(api.http_url, timeout=300) as http:
            http.submit(POLICY, job_id="resumed", **UPDATING)
            wait_for(lambda: http.get("resumed").step >= 1, 240, "step 1 in the doomed trainer", 0.05)
            doomed.kill()  # SIGKILL mid-step 2: no graceful stop, the message stays pending
            doomed.wait()
            killed = http.get("resumed")
            assert (killed.state, killed.step) == ("running", 1) and killed.worker
            make_trainer(**settings)  # a new replica: claims the job after min_idle_s
            final = http.wait("resumed")
            reference = http.wait(http.submit(POLICY, job_id="uninterrupted", **UPDATING).job_id)
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    assert final.state == "succeeded", final.error
    assert (final.attempts, final.restarts, final.resumed_from_step) == (2, 1, 1)
    assert final.worker != killed.worker
    assert reference.state == "succeeded" and (reference.attempts, reference.restarts) == (1, 0)
    assert _results(final.metrics) == _results(reference.metrics)
    assert final.metrics[0]["groups_kept"] >= 1, "the first step must update the policy"
    start, resumed, uninterrupted = load_checkpoint(POLICY)[0], _weights(shared, "resumed"), _weights(
        shared, "uninterrupted"
    )
    assert any(not torch.equal(start[k], uninterrupted[k]) for k in start)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.parametrize("records", ["disk", "redis"])
def test_a_stopped_trainers_job_resumes_from_its_checkpoint_without_counting_a_restart(
    records: str, stack: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Graceful: the job ends its step and goes back to queued. Without Redis the next start
    of the trainer resumes it; with Redis it is handed over at once (claimable after the
    retry delay, though a takeover after a death would wait min_idle_s = 60 s here)."""
    redis = (
        redis_settings(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"),
                       queue_min_idle_s=60.0)
        if records == "redis"
        else {}
    )
    settings = TrainerSettings(
        dev_mode=True,
        port=0,
        grpc_port=0,
        trainer_dir=str(tmp_path / "trainer"),
        simulator_url=stack.http_url,
        judge_url=stack.judge_http_url,
        stream_poll_s=0.1,
        torch_threads=1,
        **redis,
    )
    with serve_trainer_in_thread(settings) as first, TrainerClient(first.http_url, timeout=120) as http:
        http.submit(POLICY, job_id="stopped", **{**TINY, "steps": 4})
        wait_for(lambda: http.get("stopped").step >= 1, 120, "step 1")
    stopped = _record(settings, "stopped")
    assert stopped.state == "queued" and 1 <= stopped.step < 4 and stopped.worker is None
    with serve_trainer_in_thread(settings) as second, TrainerClient(second.http_url, timeout=120) as http:
        final = http.wait("stopped")
    assert final.state == "succeeded" and [m["step"] for m in final.metrics] == [1, 2, 3, 4]
    assert (final.attempts, final.restarts, final.resumed_from_step) == (2, 0, stopped.step)


def _record(settings: TrainerSettings, job_id: str) -> JobRecord:
    """A job's record read straight from the store, while no trainer runs."""

    async def read() -> JobRecord:
        store = make_store(settings)
        await store.start()
        try:
            record = await store.get(job_id)
        finally:
            await store.close()
        assert record is not None
        return record

    return asyncio.run(read())
