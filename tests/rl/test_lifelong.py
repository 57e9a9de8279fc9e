"""WMPO's real-data loop end to end at toy size (real MetaWorld rollouts, the bundled models
fine-tuned on them, GRPO through the embedded services), and the online baseline's budget."""

import json
import re
from pathlib import Path

import pytest
import torch

from services.embedded import job_stack
from wmpo.data.collect import CollectConfig, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.errors import ConfigError, WmpoError
from wmpo.rl.job import GRPOJobConfig, run_grpo_job
from wmpo.rl.lifelong import LifelongConfig, report, run_lifelong
from wmpo.utils.checkpoint import load_checkpoint

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
TASK = "button-press-topdown-v3"


def tiny(out, threshold_data: list[str] | None = None) -> LifelongConfig:
    return LifelongConfig(out=str(out), tasks=[TASK], real_rollouts=4, wm_steps=2, judge_steps=2, grpo_steps=1,
                          groups=1, group_size=2, chunks=2, eval_episodes=0, workers=1, seed=1,
                          action_guidance=2.0, judge_horizon_cuts=True, calibration_episodes=1,
                          calibration_every=1, target_kl=0.5, threshold_data=threshold_data or [])


@pytest.mark.slow
def test_one_round_aligns_both_models_and_trains_the_policy_and_resumes(tmp_path_factory):
    # offline rollouts outside P for the threshold's pool: two of the scripted expert's
    offline = str(tmp_path_factory.mktemp("offline") / "expert")
    collect(CollectConfig(out=offline, tasks=[TASK], source="expert", episodes=2, seed_start=40_000, workers=1))
    tmp_path = tmp_path_factory.mktemp("loop")
    ledger = run_lifelong(tiny(tmp_path, [offline]), embedded=job_stack)
    (rnd,) = ledger["rounds"]
    assert rnd["collect"]["real_rollouts"] == 4 == ledger["real_rollouts_total"]
    assert rnd["collect"]["real-train"]["episodes_per_task"] == 3 and rnd["collect"]["real-val"]["episodes_per_task"] == 1
    # the world model is fine-tuned from the bundled one (not trained from scratch) ...
    wm_manifest = json.loads((tmp_path / "round-0" / "world-model" / "manifest.json").read_text())
    bundled_wm = json.loads((CKPT / "world-model" / "manifest.json").read_text())
    assert wm_manifest["init_world_model_sha256"] == bundled_wm["weights_sha256"][:12]
    assert wm_manifest["data"]["episodes"] >= 1
    new, old = load_checkpoint(tmp_path / "round-0" / "world-model")[0], load_checkpoint(CKPT / "world-model")[0]
    dit_keys = [k for k in new if k.startswith("dit.")]
    assert dit_keys and any(not torch.equal(new[k], old[k]) for k in dit_keys)
    # two small steps from the bundled weights stay next to them (a fresh init would be far away)
    assert max((new[k].float() - old[k].float()).abs().max().item() for k in dit_keys) < 5e-3
    wm = rnd["world_model"]
    assert wm["init_val_loss"] == pytest.approx(wm["val_loss"], rel=0.2)
    # ... the judge from the bundled judge, on real and imagined replays of the same rollouts, whole
    # and cut at GRPO's horizon (2 chunks of 8 steps)
    sets = rnd["judge"]["data"]
    assert rnd["judge"]["init_sha256"] and set(sets["train"]) == {"real", "imagined", "cut", "cut-imagined"}
    assert sets["val"]["real"] == rnd["collect"]["real-val"]["path"]
    real, cut = EpisodeDataset.load(sets["train"]["real"]), EpisodeDataset.load(sets["train"]["cut"])
    assert len(cut) == len(real) == 3 and max(m["length"] for m in cut.episodes) <= 16
    assert len(EpisodeDataset.load(sets["train"]["cut-imagined"])) == 3
    # ... its threshold chosen on the cut validation rollouts, the kind GRPO judges, pooled with the
    # offline rollouts cut the same way and replayed by this round's world model; every set measured
    judge_manifest = json.loads((tmp_path / "round-0" / "judge" / "manifest.json").read_text())
    pooled = tmp_path / "round-0" / "threshold"
    assert judge_manifest["data"]["val_datasets"] == rnd["judge"]["threshold_chosen_on"] == [
        sets["val"]["cut"], sets["val"]["cut-imagined"], str(pooled / "data-0-cut"), str(pooled / "data-0-cut-imagined")]
    offline_cut = EpisodeDataset.load(pooled / "data-0-cut")
    assert len(offline_cut) == 2 and max(m["length"] for m in offline_cut.episodes) <= 16
    replayed = EpisodeDataset.load(pooled / "data-0-cut-imagined")
    assert [m["succeeded"] for m in replayed.episodes] == [m["succeeded"] for m in offline_cut.episodes]
    by_set = rnd["judge"]["val_by_set"]
    assert set(by_set) == {"real", "imagined", "cut", "cut-imagined", "threshold/data-0-cut",
                           "threshold/data-0-cut-imagined"}
    # ... per task too: the two expert rollouts cut at 16 steps share one outcome, so nothing to rank (no AUC)
    assert by_set["threshold/data-0-cut"]["per_task"][TASK]["episodes"] == 2
    assert by_set["threshold/data-0-cut"]["per_task"][TASK]["auc"] is None
    # ... and the judge's AUC per task over every imagined set, which --min-imagined-auc gates GRPO on
    assert set(rnd["judge"]["imagined_auc_by_task"]) == {TASK} and rnd["grpo"]["tasks"] == [TASK]
    # ... unless, as here, they are too few to choose it on (6 < --threshold-support 20): the bundled
    # judge's threshold, chosen on hundreds of episodes, is kept and the manifest says why
    bundled_judge = json.loads((CKPT / "judge" / "config.json").read_text())
    assert rnd["judge"]["threshold"] == pytest.approx(bundled_judge["threshold"])
    assert judge_manifest["threshold"]["chosen_on"].startswith("kept --init threshold: the 6 validation episodes")
    # ... imagined with the action guidance GRPO's simulator serves with
    replay = EpisodeDataset.load(sets["train"]["imagined"]).episode(0)
    assert replay.meta["source"]["action_guidance"] == 2.0
    assert json.loads(rnd["grpo"]["simulator"]["sampler"])["action_guidance"] == 2.0
    # GRPO used the aligned models and wrote a policy
    assert rnd["grpo"]["world_model_sha256"] == load_json_sha(tmp_path / "round-0" / "world-model")
    assert rnd["grpo"]["judge_sha256"] == load_json_sha(tmp_path / "round-0" / "judge")
    assert (Path(rnd["grpo"]["policy"]) / "model.safetensors").exists()
    # the start policy's real success within GRPO's horizon, beside imagination's first step
    calibration = rnd["grpo"]["calibration"]
    assert calibration["real"]["per_task"][TASK]["episodes"] == 1 and TASK in calibration["imagined_step1"]
    # ... and the trained policy's after every step (--calibration-every 1), beside that step's imagined
    (check,) = rnd["grpo"]["calibration_steps"]
    assert check["step"] == 1 and check["real"]["per_task"][TASK]["episodes"] == 1 and TASK in check["imagined"]
    assert ledger["final"]["policy"] == rnd["grpo"]["policy"]
    manifest = json.loads((Path(rnd["grpo"]["policy"]) / "manifest.json").read_text())
    assert manifest["training"]["target_kl"] == 0.5
    # the report: the round's rollouts, its threshold, the step with its real check
    table = report(tmp_path).splitlines()
    real = rnd["collect"]["real-train"]["per_task"][TASK]["successes"] + rnd["collect"]["real-val"]["per_task"][TASK]["successes"]
    assert table[2].startswith(f"| 0 | button-press-topdown {real}/4 | {rnd['judge']['threshold']:.3f} (kept) | start |")
    step = table[3].split(" | ")
    assert step[3] == "1" and re.fullmatch(r"\d+ -> \d+", step[4]) and step[7] == f"{check['real']['per_task'][TASK]['successes']}/1"
    with pytest.raises(ConfigError, match="no lifelong loop"):
        report(tmp_path / "round-0")

    # started again, every stage is found done and nothing runs twice
    mtime = (tmp_path / "round-0" / "world-model" / "model.safetensors").stat().st_mtime
    again = run_lifelong(tiny(tmp_path, [offline]), embedded=job_stack)
    assert again["rounds"] == ledger["rounds"]
    assert (tmp_path / "round-0" / "world-model" / "model.safetensors").stat().st_mtime == mtime
    # ... also when recorded before a field existed, the field being at its default now
    path = tmp_path / "lifelong.json"
    recorded = json.loads(path.read_text())
    del recorded["config"]["wm_lr"]
    path.write_text(json.dumps(recorded))
    assert run_lifelong(tiny(tmp_path, [offline]), embedded=job_stack)["rounds"] == ledger["rounds"]
    # ... but not with another configuration, whose artifacts would mix with these
    other = tiny(tmp_path, [offline])
    other.real_rollouts = 6
    with pytest.raises(ConfigError, match="real_rollouts"):
        run_lifelong(other)


def load_json_sha(directory: Path) -> str:
    return json.loads((directory / "manifest.json").read_text())["weights_sha256"][:12]


def test_a_round_whose_rollouts_all_failed_keeps_its_judge(tmp_path):
    from wmpo.rl.lifelong import _align_judge

    # 16 steps: too short for anyone to press the button, so both rollouts fail
    collect(CollectConfig(out=str(tmp_path / "real-train"), tasks=[TASK], source="policy", episodes=2,
                          seed_start=300_000, workers=1, checkpoint=str(CKPT / "policy-base"), max_steps=16))
    assert not any(m["succeeded"] for m in EpisodeDataset.load(tmp_path / "real-train").episodes)
    real = {"real-train": {"path": str(tmp_path / "real-train")}}
    res = _align_judge(tiny(tmp_path), 0, tmp_path, str(CKPT / "world-model"), str(CKPT / "judge"), real)
    assert res["path"] == str(CKPT / "judge") and "all 2 training rollouts failed" in res["skipped"]
    assert not (tmp_path / "judge").exists()


def test_grpo_trains_only_on_tasks_whose_imagined_rollouts_the_judge_ranks(tmp_path):
    from wmpo.rl.lifelong import _grpo, rankable_tasks

    tasks = ["a", "b", "c", "d"]
    aucs = {"a": 0.95, "b": 0.5, "c": None}  # c: one kind of validation rollout only; d: none at all
    assert rankable_tasks(tasks, aucs, 0.0) == tasks
    assert rankable_tasks(tasks, aucs, 0.8) == ["a"] and rankable_tasks(tasks, aucs, 0.5) == ["a", "b"]
    # no task passes: the round keeps its policy and says why, without starting a job
    cfg = tiny(tmp_path)
    cfg.min_imagined_auc = 0.8
    policy = str(CKPT / "policy-base")
    res = _grpo(cfg, 0, tmp_path, policy, str(CKPT / "world-model"), str(CKPT / "judge"), None, {TASK: 0.6})
    assert res["policy"] == policy and res["tasks"] == [] and "reaches 0.8" in res["skipped"]
    assert not (tmp_path / "grpo").exists()


def test_bad_loop_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="real-rollouts"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK, "drawer-close-v3"], real_rollouts=3).validate()
    with pytest.raises(WmpoError, match="no-such-task"):
        LifelongConfig(out=str(tmp_path), tasks=["no-such-task"]).validate()
    with pytest.raises(ConfigError, match="no checkpoint"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], judge=str(tmp_path / "missing")).validate()
    with pytest.raises(ConfigError, match="group_size"):  # GRPO fields are checked before any real rollout
        LifelongConfig(out=str(tmp_path), tasks=[TASK], group_size=1).validate()
    with pytest.raises(ConfigError, match="action-guidance"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], action_guidance=-1.0).validate()
    with pytest.raises(ConfigError, match="evaluation seeds"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], rounds=80).validate()
    with pytest.raises(ConfigError, match="rollout-temperature"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], rollout_temperature=-0.5).validate()
    with pytest.raises(ConfigError, match="threshold-support"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], threshold_support=0).validate()
    with pytest.raises(ConfigError, match=r"--wm-lr must be in \(0, 1\], got 0"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], wm_lr=0.0).validate()
    with pytest.raises(ConfigError, match="min-imagined-auc must be in"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], min_imagined_auc=1.5).validate()
    with pytest.raises(ConfigError, match="min-imagined-auc needs the judge"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], min_imagined_auc=0.8, judge_steps=0).validate()
    with pytest.raises(ConfigError, match=r"--threshold-data .*missing: no episode dataset"):
        LifelongConfig(out=str(tmp_path), tasks=[TASK], threshold_data=[str(tmp_path / "missing")]).validate()
    (tmp_path / "round-0").mkdir()
    with pytest.raises(ConfigError, match="no lifelong.json"):
        run_lifelong(LifelongConfig(out=str(tmp_path), tasks=[TASK]))


@pytest.mark.slow
def test_online_baseline_spends_exactly_its_real_budget(tmp_path):
    # two groups per step: the trainer steps them from a thread pool, and MuJoCo's EGL contexts
    # must still be used on the thread that made them (RealGroupSimulator's one worker thread)
    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK, "drawer-close-v3"],
                        steps=99, groups_per_step=2, group_size=2, chunks=3, temperature=1.0, epochs=1,
                        minibatch=8, environment="real", real_budget=8)  # verify is ignored for real
    result = run_grpo_job(cfg, progress=False)
    assert result["real_episodes"] == 8 == result["real_episodes_this_run"]
    assert result["training"]["steps"] == 2  # 8 episodes / (2 groups x 2) = 2 steps, whatever --steps says


def test_online_budget_must_be_whole_steps_and_fit_an_episode(tmp_path):
    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], groups_per_step=2,
                        group_size=4, environment="real", real_budget=12)
    with pytest.raises(ConfigError, match="multiple of one step"):
        cfg.validate()
    cfg.real_budget, cfg.chunks = 16, 21  # 168 steps > a real episode's 160
    with pytest.raises(ConfigError, match="chunks"):
        cfg.validate()


def test_a_job_directory_is_not_resumed_by_another_kind_of_job(tmp_path):
    from wmpo.rl.real import RealGroupSimulator, RealSuccessJudge
    from wmpo.rl.trainer import GRPOConfig, train_grpo

    cfg = GRPOConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], steps=1, groups_per_step=1,
                     group_size=2, chunks=1, epochs=1, minibatch=4, verify=False)
    sim = RealGroupSimulator()
    train_grpo(cfg, sim, RealSuccessJudge(sim), progress=False, method="online-grpo-real")
    sim.close()
    cfg.steps = 2
    with pytest.raises(ConfigError, match="online-grpo-real"):
        train_grpo(cfg, RealGroupSimulator(), None, progress=False)


def test_action_guidance_is_the_embedded_stacks_alone_and_in_range(tmp_path):
    cfg = GRPOJobConfig(policy=str(CKPT / "policy-base"), out=str(tmp_path), tasks=[TASK], action_guidance=3.0,
                        simulator_url="http://simulator:8000", judge_url="http://judge:8001")
    with pytest.raises(ConfigError, match="WMPO_ACTION_GUIDANCE"):
        cfg.validate()
    cfg.simulator_url = cfg.judge_url = None
    cfg.world_model, cfg.judge = str(CKPT / "world-model"), str(CKPT / "judge")
    cfg.validate()
    cfg.action_guidance = 11.0
    with pytest.raises(ConfigError, match=r"\[0, 10\]"):
        cfg.validate()


def test_the_command_line_sets_the_world_model_learning_rate(tmp_path, monkeypatch):
    import wmpo.rl.lifelong as lifelong
    from wmpo.cli import build_parser

    seen: list[LifelongConfig] = []

    def run(cfg: LifelongConfig, embedded: object = None) -> dict:  # records the config, runs nothing
        seen.append(cfg)
        return {"real_rollouts_total": 0, "final": {}}

    monkeypatch.setattr(lifelong, "run_lifelong", run)
    monkeypatch.setattr(lifelong, "report", lambda out: "")
    for flags, lr in (([], 1e-4), (["--wm-lr", "1e-5"], 1e-5)):
        a = build_parser().parse_args(["train", "lifelong", "--out", str(tmp_path), "--tasks", TASK, *flags])
        a.func(a)
        assert seen[-1].wm_lr == lr
