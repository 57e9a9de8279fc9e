"""Jobs end to end through the trainer's HTTP and gRPC APIs (records on disk, no Redis):
submit -> stream -> succeeded with metrics and a downloadable checkpoint, idempotent
submits, cancel, and the refusals (4xx naming the field, 404 for unknown jobs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from wmpo_client import GrpcTrainerClient, TrainerClient
from wmpo_client.errors import SimulatorError

from tests.services.trainer.conftest import KEY, POLICY, TASK, TINY
from wmpo.utils.checkpoint import load_checkpoint

METRICS = ("reward", "imagined_success", "dnv_flags", "groups_kept", "groups_discarded",
           "imagined_frames_per_s")


def test_job_streams_its_steps_succeeds_and_its_checkpoint_downloads_over_http_and_grpc(
    make_trainer: Any, tmp_path: Path
) -> None:
    trainer = make_trainer()
    with TrainerClient(trainer.http_url, timeout=120) as http, GrpcTrainerClient(trainer.grpc_target) as rpc:
        job = http.submit(POLICY, **TINY)
        assert job.state in ("queued", "running") and job.steps == 2 and job.config["tasks"] == [TASK]
        events = list(http.stream(job.job_id))
        steps = [e.metrics for e in events if e.kind == "step"]
        assert [m["step"] for m in steps] == [1, 2]
        assert events[-1].kind == "end" and events[-1].job.state == "succeeded"
        for m in steps:
            assert all(k in m for k in METRICS), m
            assert set(m["seconds"]) >= {"imagine", "judge", "update", "step"}
            assert m["groups_imagined"] == 1 and m["seconds"]["imagine"] > 0
        final = http.get(job.job_id)
        assert (final.state, final.step, final.error, final.attempts) == ("succeeded", 2, None, 1)
        assert final.metrics == steps and final.finished_at >= final.started_at

        # The same job over gRPC: the record, a replay of its stream, and its checkpoint.
        over_grpc = rpc.get(job.job_id)
        assert over_grpc.state == "succeeded" and over_grpc.config["steps"] == 2
        assert [m["step"] for m in over_grpc.metrics] == [1, 2]
        assert over_grpc.metrics[0]["groups_kept"] == steps[0]["groups_kept"]
        replay = list(rpc.stream(job.job_id, after_step=1))
        assert [e.kind for e in replay] == ["step", "end"] and replay[0].metrics["step"] == 2

        listed = http.checkpoint(job.job_id)
        assert listed.step == 2
        assert {f.name for f in listed.files} == {"model.safetensors", "config.json", "manifest.json"}
        http.download_checkpoint(job.job_id, tmp_path / "http")
        rpc.download_checkpoint(job.job_id, tmp_path / "grpc")
    for name in ("model.safetensors", "config.json", "manifest.json"):
        assert (tmp_path / "http" / name).read_bytes() == (tmp_path / "grpc" / name).read_bytes()
    tensors, _, manifest = load_checkpoint(tmp_path / "http")
    out = Path(trainer.runtime.settings.trainer_dir) / "jobs" / job.job_id / "out" / "policy"
    written = load_checkpoint(out)[0]
    assert all(torch.equal(tensors[k], written[k]) for k in written)
    assert manifest["training"]["steps_done"] == 2 and len(manifest["grpo_history"]) == 2


def test_a_real_environment_job_runs_online_grpo_in_metaworld_within_its_budget(make_trainer: Any) -> None:
    """The papers' baseline as a service job: the same GRPO, real MetaWorld episodes judged by
    the simulator's success flag, steps set by the budget of real episodes."""
    trainer = make_trainer()
    with TrainerClient(trainer.http_url, timeout=120) as http, GrpcTrainerClient(trainer.grpc_target) as rpc:
        job = rpc.submit(POLICY, **{**TINY, "steps": 50}, environment="real", real_budget=4, reward="clip")
        assert job.config["environment"] == "real" and job.config["real_budget"] == 4
        assert job.config["reward"] == "clip"  # real episodes have no clips: their true flag stays the reward
        final = http.wait(job.job_id)
    assert final.state == "succeeded", final.error
    # 4 real episodes = 2 steps of one group of 2, one sampling round each (no re-sampling).
    assert final.step == 2 and [m["groups_imagined"] for m in final.metrics] == [1, 1]
    assert all(m["dnv_flags"] == 0 for m in final.metrics)  # nothing to verify in the real env
    assert all(0.0 <= m["imagined_success"] <= 1.0 for m in final.metrics)


def test_submit_is_idempotent_by_job_id_and_a_reused_id_with_another_spec_conflicts(
    make_trainer: Any,
) -> None:
    trainer = make_trainer()
    body = {"job_id": "same-job-1", "policy": POLICY, **TINY, "steps": 1}
    with httpx.Client(base_url=trainer.http_url, timeout=60) as http:
        first = http.post("/v1/jobs", json=body)
        again = http.post("/v1/jobs", json=body)
        other = http.post("/v1/jobs", json={**body, "seed": 7})
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["job_id"] == "same-job-1" and again.json()["created_at"] == first.json()["created_at"]
        assert other.status_code == 409 and "same-job-1" in other.json()["error"]["message"]
        jobs = http.get("/v1/jobs").json()["jobs"]
        assert [j["job_id"] for j in jobs] == ["same-job-1"]
    with TrainerClient(trainer.http_url, timeout=120) as client:
        assert client.wait("same-job-1").state == "succeeded"


BAD_SPECS: list[tuple[dict[str, Any], int, str]] = [
    ({"group_size": 1}, 422, "group_size"),
    ({"steps": -1}, 422, "steps"),
    ({"steps": "two"}, 422, "steps"),
    ({"lr": 2.0}, 422, "lr"),
    ({"target_kl": -0.1}, 422, "target_kl"),
    ({"verify": "yes"}, 422, "verify"),
    ({"out": "/tmp/elsewhere"}, 422, "out"),  # chosen by the service, not the client
    ({"world_model": "x"}, 422, "world_model"),
    ({"job_id": "../escape"}, 422, "job_id"),
    ({"tasks": []}, 422, "tasks"),
    ({"tasks": ["no-such-task-v3"]}, 400, "tasks"),
    ({"policy": "checkpoints/no-such-policy"}, 400, "policy"),
    ({"policy": "checkpoints/world-model"}, 400, "policy"),  # a checkpoint, but not a policy
    ({"simulator_url": "ftp://sim:8000"}, 400, "simulator_url"),
    ({"judge_url": "judge:8001"}, 400, "judge_url"),
    ({"environment": "mars"}, 422, "environment"),
    ({"reward": "dense"}, 422, "reward"),
    ({"task_sampling": "random"}, 422, "task_sampling"),
    ({"real_budget": 4}, 400, "real_budget"),  # a budget of real episodes, in imagination
    ({"environment": "real", "real_budget": 3}, 400, "real_budget"),  # not whole steps of 1x2
    ({"environment": "real", "chunks": 80}, 422, "chunks"),
    ({"environment": "real", "chunks": 63}, 400, "chunks"),  # past a real episode's end
    ({"environment": "real", "simulator_url": "http://sim:8000"}, 400, "simulator_url"),
    ({"environment": "real", "real_budget": 4, "reward": "imitation"}, 400, "reward"),  # needs imagination
    ({"perceptual_model": "/etc"}, 422, "perceptual_model"),  # the service's own checkpoint
]


@pytest.mark.parametrize(("change", "status", "field"), BAD_SPECS, ids=[c[2] + str(i) for i, c in enumerate(BAD_SPECS)])
def test_a_bad_job_is_refused_with_a_4xx_naming_the_field(
    make_trainer: Any, change: dict[str, Any], status: int, field: str
) -> None:
    trainer = make_trainer()
    body = {"policy": POLICY, **TINY, **change}
    response = httpx.post(f"{trainer.http_url}/v1/jobs", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and field in error["message"], error
    assert httpx.get(f"{trainer.http_url}/v1/jobs", timeout=30).json()["jobs"] == []


def test_a_bad_job_over_grpc_is_invalid_argument_naming_the_field(make_trainer: Any) -> None:
    trainer = make_trainer()
    with GrpcTrainerClient(trainer.grpc_target) as rpc:
        for options, field in (({"group_size": 1}, "group_size"), ({"tasks": ["nope"]}, "tasks"),
                               ({"steps": 0}, "steps"), ({"target_kl": -0.1}, "target_kl")):
            with pytest.raises(SimulatorError) as err:
                rpc.submit(POLICY, **{**TINY, **options})
            assert err.value.code == "INVALID_ARGUMENT" and field in err.value.message
        with pytest.raises(SimulatorError) as err:
            rpc.get("no-such-job")
        assert err.value.code == "NOT_FOUND"
    with pytest.raises(TypeError, match="unknown job option"):
        TrainerClient(trainer.http_url).submit(POLICY, stepz=3)


def test_unknown_jobs_and_missing_checkpoints_are_404_never_5xx(make_trainer: Any) -> None:
    trainer = make_trainer()
    with httpx.Client(base_url=trainer.http_url, timeout=30) as http:
        for method, path in (("GET", "/v1/jobs/nope"), ("POST", "/v1/jobs/nope/cancel"),
                             ("GET", "/v1/jobs/nope/events"), ("GET", "/v1/jobs/nope/checkpoint"),
                             ("GET", "/v1/jobs/nope/checkpoint/model.safetensors")):
            response = http.request(method, path)
            assert response.status_code == 404, (path, response.text)
            assert response.json()["error"]["code"] == "NOT_FOUND"
        # A job without a checkpoint yet (cancelled before its first step): a clear 404.
        http.post("/v1/jobs", json={"job_id": "blocker", "policy": POLICY, **TINY, "steps": 1})
        queued = http.post("/v1/jobs", json={"job_id": "early", "policy": POLICY, **TINY}).json()
        cancelled = http.post("/v1/jobs/early/cancel").json()
        assert queued["state"] == "queued" and cancelled["state"] == "cancelled"
        missing = http.get("/v1/jobs/early/checkpoint")
        assert missing.status_code == 404 and "no checkpoint yet" in missing.json()["error"]["message"]
        wrong_name = http.get("/v1/jobs/early/checkpoint/train_state.pt")
        assert wrong_name.status_code == 404 and "model.safetensors" in wrong_name.json()["error"]["message"]
        assert http.get("/v1/jobs", params={"state": "bogus"}).status_code == 422


def test_cancelling_a_running_job_keeps_the_checkpoint_of_its_last_completed_step(
    make_trainer: Any, tmp_path: Path
) -> None:
    trainer = make_trainer()
    with TrainerClient(trainer.http_url, timeout=120) as http:
        job = http.submit(POLICY, **{**TINY, "steps": 50})
        for event in http.stream(job.job_id):
            if event.kind == "step":  # step 1 is checkpointed: stop the job
                cancelled = http.cancel(job.job_id)
                assert cancelled.cancel_requested and cancelled.state == "running"
                break
        final = http.wait(job.job_id)
        assert final.state == "cancelled" and 1 <= final.step < 50 and final.error is None
        files = http.download_checkpoint(job.job_id, tmp_path / "kept")
    manifest = json.loads(files[-1].read_text())
    assert manifest["training"]["steps_done"] == final.step == len(final.metrics)
    load_checkpoint(tmp_path / "kept")  # a complete, loadable policy


def test_api_keys_are_required_when_configured(make_trainer: Any) -> None:
    trainer = make_trainer(api_keys=KEY, dev_mode=False)
    assert httpx.get(f"{trainer.http_url}/v1/jobs", timeout=30).status_code == 401
    assert httpx.get(f"{trainer.http_url}/healthz", timeout=30).status_code == 200
    with TrainerClient(trainer.http_url, api_key=KEY) as http:
        assert http.list() == [] and http.health().ready
    with GrpcTrainerClient(trainer.grpc_target) as rpc, pytest.raises(SimulatorError) as err:
        rpc.list()
    assert err.value.code == "UNAUTHENTICATED"
