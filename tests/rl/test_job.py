"""The GRPO job's calibration: the start policy in MetaWorld as GRPO samples it."""

import json
from pathlib import Path

import pytest

from wmpo.errors import ConfigError
from wmpo.rl.job import (
    CALIBRATION_SEED_OFFSET,
    GRPOJobConfig,
    _calibrate,
    _keep_if_best,
    calibration_table,
)

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
TASK = "button-press-topdown-v3"


def test_calibration_runs_the_start_policy_at_grpo_temperature_within_its_horizon(tmp_path):
    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], chunks=2,
                        temperature=1.6, calibration_episodes=2, eval_workers=1,
                        world_model=str(CKPT / "world-model"), judge=str(CKPT / "judge"))
    cfg.validate()
    real = _calibrate(cfg)
    assert real["max_steps"] == 16 and real["source"]["temperature"] == 1.6
    assert real["seeds"][0] == 1_000_000 + CALIBRATION_SEED_OFFSET
    r = real["per_task"][TASK]
    assert r["episodes"] == 2 and r["mean_length"] == 16.0  # nobody presses the button in 16 steps
    table = calibration_table(real, {TASK: 0.25})
    assert TASK in table and "0%" in table and "25%" in table
    assert "25%" not in calibration_table(real, None)


def test_negative_calibration_is_refused(tmp_path):
    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], calibration_episodes=-1,
                        world_model=str(CKPT / "world-model"), judge=str(CKPT / "judge"))
    with pytest.raises(ConfigError, match="calibration-episodes"):
        cfg.validate()


def test_calibration_every_needs_calibration_episodes(tmp_path):
    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], calibration_every=2,
                        world_model=str(CKPT / "world-model"), judge=str(CKPT / "judge"))
    with pytest.raises(ConfigError, match="--calibration-every.*--calibration-episodes"):
        cfg.validate()


def test_keep_best_real_needs_the_step_checks(tmp_path):
    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], calibration_episodes=2,
                        keep_best_real=True, world_model=str(CKPT / "world-model"), judge=str(CKPT / "judge"))
    with pytest.raises(ConfigError, match="--keep-best-real.*--calibration-every"):
        cfg.validate()


def test_the_best_real_check_is_kept_and_a_tie_keeps_the_earlier(tmp_path):
    cfg = GRPOJobConfig(policy="unused", out=str(tmp_path / "job"), tasks=[TASK, "door-open-v3"])
    (tmp_path / "job").mkdir()

    def check(step: int, rates: tuple[float, float]) -> None:
        policy = tmp_path / f"policy-{step}"
        policy.mkdir()
        (policy / "weights").write_text(str(step))
        real = {"per_task": {TASK: {"success_rate": rates[0]}, "door-open-v3": {"success_rate": rates[1]}}}
        _keep_if_best(cfg, step, real, str(policy))

    def kept() -> tuple[int, str]:
        record = json.loads((tmp_path / "job" / "best_real.json").read_text())
        return record["step"], (tmp_path / "job" / "policy-best-real" / "weights").read_text()

    check(0, (0.6, 0.2))  # the start policy is the first candidate: 40% over the two tasks
    assert kept() == (0, "0")
    check(2, (0.8, 0.0))  # 40% again: a tie keeps the earlier policy
    check(4, (0.3, 0.1))
    assert kept() == (0, "0")
    check(6, (0.7, 0.3))  # 50%: better, copied
    assert kept() == (6, "6")
    assert not (tmp_path / "job" / "policy-best-real.tmp").exists()


@pytest.mark.slow
def test_a_job_reports_real_and_imagined_success_side_by_side(tmp_path, capsys):
    from services.embedded import job_stack
    from wmpo.rl.job import run_grpo_job

    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], steps=1,
                        groups_per_step=1, group_size=2, chunks=2, epochs=1, minibatch=4, max_sampling_rounds=1,
                        verify=False, calibration_episodes=1, calibration_every=1, eval_workers=1,
                        keep_best_real=True, world_model=str(CKPT / "world-model"), judge=str(CKPT / "judge"))
    result = run_grpo_job(cfg, progress=False, embedded=job_stack)
    cal = result["calibration"]
    assert cal["real"]["per_task"][TASK]["episodes"] == 1
    assert set(cal["imagined_step1"]) == {TASK}  # the first step's imagined success, per task
    assert (tmp_path / "calibration.json").exists() and "imagined (step 1)" in capsys.readouterr().out
    # --calibration-every 1: after step 1 the trained policy ran on the same calibration layouts,
    # beside that step's imagined success.
    [check] = result["calibration_steps"]
    assert check["step"] == 1 and check["imagined"] == cal["imagined_step1"]
    assert check["real"]["source"]["checkpoint"] == str(tmp_path / "policy")
    assert check["real"]["seeds"] == cal["real"]["seeds"] and check["real"]["per_task"][TASK]["episodes"] == 1
    # The trained policy names the models that imagined and judged its rollouts.
    imagined_with = json.loads((tmp_path / "policy" / "manifest.json").read_text())["imagined_with"]
    assert imagined_with == {"simulator": result["simulator"], "judge": result["judge"]}
    world_model_sha = json.loads((CKPT / "world-model" / "manifest.json").read_text())["weights_sha256"]
    judge_sha = json.loads((CKPT / "judge" / "manifest.json").read_text())["weights_sha256"]
    assert world_model_sha.startswith(imagined_with["simulator"]["world_model_sha256"])
    assert judge_sha.startswith(imagined_with["judge"]["classifier_sha256"])
    # --keep-best-real: nobody presses the button within 16 steps, before or after the step, so the
    # tie keeps the start policy, and the job answers with its copy
    assert result["best_real"]["step"] == 0 and result["best_real"]["from"] == cfg.policy
    assert result["policy"] == str(tmp_path / "policy-best-real")
    best, start = tmp_path / "policy-best-real", CKPT / "policy-base"
    assert (best / "model.safetensors").read_bytes() == (start / "model.safetensors").read_bytes()
    assert json.loads((best / "manifest.json").read_text())["best_real"] == result["best_real"]
