"""The GRPO job on the real simulator (the online baseline's code path): it updates the policy from
informative groups, masks chunks after success, and a resumed job equals an uninterrupted one."""

from pathlib import Path

import numpy as np
import pytest
import torch

from wmpo.rl.imagination import StartState, imagine_groups
from wmpo.rl.real import RealGroupSimulator, RealSuccessJudge
from wmpo.rl.trainer import GRPOConfig, train_grpo
from wmpo.utils.checkpoint import load_checkpoint

POLICY = str(Path(__file__).resolve().parents[2] / "checkpoints" / "policy-base")
TASK = "button-press-topdown-v3"


def cfg(out, steps):
    return GRPOConfig(policy=POLICY, out=str(out), tasks=[TASK], steps=steps, groups_per_step=1, group_size=4,
                      chunks=10, temperature=1.0, lr=1e-4, epochs=1, minibatch=16, max_sampling_rounds=2,
                      verify=False, seed=3)


def run(out, steps):
    sim = RealGroupSimulator()
    return train_grpo(cfg(out, steps), sim, RealSuccessJudge(sim), progress=False), sim


def test_real_groups_are_judged_by_the_true_success_flag_and_masked_after_it():
    from wmpo.envs import make_env
    from wmpo.models.policy import Policy

    env = make_env(TASK)
    frame, _ = env.reset(seed=200_001)
    start = StartState(frame, env.instruction, TASK, 200_001)
    sim = RealGroupSimulator()
    policy, _ = Policy.from_checkpoint(POLICY)
    (g,) = imagine_groups(sim, RealSuccessJudge(sim), policy, [start], group_size=4, chunks=10,
                          temperature=1.0, seed=0, verify=False)
    assert g.videos.shape[:2] == (4, 1 + 10 * 4) and g.tokens.shape[:2] == (4, 10)
    assert sim.real_episodes == 4 and not sim.members  # envs closed after judging
    assert g.success.any(), "the base policy should press the button in some of 4 tries"
    for m in range(4):
        if g.success[m]:
            assert g.rewards[m] == 1.0 and 1 <= g.chunk_mask[m].sum() <= 10
            # after the success the env stops: the frames of masked-out chunks do not change
            last = g.chunk_mask[m].sum()
            assert np.array_equal(g.videos[m, last * 4], g.videos[m, -1])
        else:
            assert g.rewards[m] == 0.0 and g.chunk_mask[m].all()


def test_job_updates_the_policy_and_resumes_to_the_same_weights(tmp_path):
    full, _ = run(tmp_path / "full", 2)
    assert all(h["groups_kept"] >= 1 for h in full["history"]), full["history"]
    assert all("clip_fraction" in h and h["chunks_trained"] > 0 for h in full["history"])
    start = load_checkpoint(POLICY)[0]
    after = load_checkpoint(tmp_path / "full" / "policy")[0]
    assert any(not torch.equal(start[k], after[k]) for k in start)

    run(tmp_path / "resumed", 1)  # a job stopped after its first step...
    assert (tmp_path / "resumed" / "train_state.pt").exists()
    resumed, _ = run(tmp_path / "resumed", 2)  # ...and started again
    assert [h["step"] for h in resumed["history"]] == [1, 2]
    again = load_checkpoint(tmp_path / "resumed" / "policy")[0]
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_bad_configs_are_refused(tmp_path):
    from wmpo.errors import ConfigError

    bad = cfg(tmp_path, 1)
    bad.group_size = 1
    with pytest.raises(ConfigError, match="group_size"):
        bad.validate()


class FirstRoundAllFail(RealSuccessJudge):
    """The real success flag, except that every rollout of the first sampling round is called a
    failure: that round's group is uninformative, so dynamic sampling must imagine another."""

    calls = 0

    def judge_videos(self, videos, instructions, frame_stride, session_ids=None):
        verdicts = super().judge_videos(videos, instructions, frame_stride, session_ids)
        self.calls += 1
        if self.calls == 1:
            return [type(v)(False, 0.0, None) for v in verdicts]
        return verdicts


def test_dynamic_sampling_imagines_more_groups_until_the_batch_is_full(tmp_path):
    c = cfg(tmp_path, 1)
    c.chunks, c.max_sampling_rounds = 8, 6  # 64 steps: the button is pressed in some tries, not all
    sim = RealGroupSimulator()
    summary = train_grpo(c, sim, FirstRoundAllFail(sim), progress=False)
    (h,) = summary["history"]
    assert h["groups_imagined"] >= 2, h  # the all-failure first group was dropped and more were imagined
    assert h["groups_kept"] == 1 and h["chunks_trained"] > 0, h
    assert sim.real_episodes == 4 * h["groups_imagined"]


def test_informative_task_sampling_favours_the_tasks_whose_groups_teach():
    from wmpo.rl.trainer import start_states, task_weights

    tasks = ["button-press-topdown-v3", "drawer-close-v3", "door-open-v3"]
    assert np.allclose(task_weights(tasks, []), 1 / 3)  # nothing imagined yet: uniform
    # button always solved (no group kept), drawer informative, door seen twice, once kept
    history = [{"per_task_groups": {tasks[0]: [6, 0], tasks[1]: [6, 5]}},
               {"per_task_groups": {tasks[0]: [4, 0], tasks[1]: [4, 3], tasks[2]: [2, 1]}}]
    w = task_weights(tasks, history)
    assert w.sum() == pytest.approx(1.0) and w[1] > w[2] > w[0]
    assert w[0] >= 0.2 / 3  # the floor keeps every task
    starts = start_states(tasks, 6, np.random.default_rng(0), {}, weights=np.array([0.0, 1.0, 0.0]))
    assert [s.task for s in starts] == [tasks[1]] * 6
    # Round-robin from a random first task: 2 groups a step still reach all 3 tasks over the steps.
    rng = np.random.default_rng(0)
    picked = [[s.task for s in start_states(tasks, 2, rng, {})] for _ in range(6)]
    assert all(tasks.index(b) == (tasks.index(a) + 1) % 3 for a, b in picked)
    assert {t for p in picked for t in p} == set(tasks)


def test_an_imitation_job_rewards_every_group_by_the_distance_to_the_experts_rollout(tmp_path):
    """The trainer records the scripted expert per start and builds the perceptual distance from the
    configured model; dense rewards make every group informative."""
    from dataclasses import replace

    c = replace(cfg(tmp_path / "iepl", 1), reward="imitation", chunks=6,
                perceptual_model=str(Path(POLICY).parent / "world-model"))
    sim = RealGroupSimulator()
    summary = train_grpo(c, sim, RealSuccessJudge(sim), progress=False)
    (h,) = summary["history"]
    assert h["groups_imagined"] == 1 and h["groups_kept"] == 1 and h["chunks_trained"] > 0
    assert h["reward"] < 0  # minus a distance; no member of the base policy copies the expert exactly
    assert sim.real_episodes == 5  # 4 members and the expert's demonstration, stepped together


def test_the_imitation_reward_needs_a_perceptual_model(tmp_path):
    from dataclasses import replace

    from wmpo.errors import ConfigError
    from wmpo.rl.job import GRPOJobConfig

    with pytest.raises(ConfigError, match="imitation needs a perceptual_model"):
        replace(cfg(tmp_path, 1), reward="imitation").validate()
    job = GRPOJobConfig(policy=POLICY, out=str(tmp_path), reward="imitation", world_model="checkpoints/world-model",
                        judge="checkpoints/judge")
    assert job.perceptual_model == "checkpoints/world-model" and job.grpo().perceptual_model == job.perceptual_model
    with pytest.raises(ConfigError, match="needs the imagination environment"):
        GRPOJobConfig(policy=POLICY, out=str(tmp_path), reward="imitation", environment="real").validate()


def _update_batch(seed: int = 0, n: int = 64):
    """Real start frames, chunks sampled from the base policy, their log-probs, and advantages."""
    from wmpo.envs import make_env
    from wmpo.models.policy import Policy
    from wmpo.rl.imagination import sample_chunks

    env = make_env(TASK)
    frames = np.stack([env.reset(seed=200_000 + i)[0] for i in range(4)])
    frames = np.repeat(frames, n // 4, axis=0)
    policy, _ = Policy.from_checkpoint(POLICY)
    _, tokens, logp = sample_chunks(policy, frames, [env.instruction] * n, 1.0, torch.Generator().manual_seed(seed))
    adv = torch.from_numpy(np.random.default_rng(seed).standard_normal(n)).float()
    return {"obs": torch.from_numpy(frames), "tokens": torch.from_numpy(tokens),
            "old_logp": torch.from_numpy(logp).float(), "adv": adv, "instr": [env.instruction] * n}


def test_target_kl_bounds_each_update_by_backtracking_the_learning_rate():
    from wmpo.models.policy import Policy
    from wmpo.rl.imagination import temperature_log_prob
    from wmpo.rl.trainer import update

    batch = _update_batch()
    drift, lr = {}, 1e-4
    for target in (0.0, 0.05):
        c = cfg("unused", 1)
        c.lr, c.epochs, c.minibatch, c.temperature, c.target_kl = lr, 4, 16, 1.0, target
        policy, _ = Policy.from_checkpoint(POLICY)
        opt = torch.optim.AdamW(policy.parameters(), lr=lr)
        stats = update(policy, opt, batch, c, torch.Generator().manual_seed(0))
        with torch.no_grad():
            new = temperature_log_prob(policy, batch["obs"], policy.embed(batch["instr"]), batch["tokens"], 1.0)
        log_ratio = new - batch["old_logp"]
        drift[target] = float((log_ratio.exp() - 1 - log_ratio).mean())
        assert stats["gradient_steps_planned"] == 16 and stats["gradient_steps"] >= 1
        if target:
            # Adam's first step at this lr overshoots by orders of magnitude: it was undone and
            # retried at smaller rates, every kept step stayed within 1.5 x the target on its
            # mini-batch, and the smaller rate stays in the optimizer for the next update
            assert stats["backtracks"] >= 1 and stats["approx_kl_max"] <= 1.5 * target
            assert stats["lr"] == opt.param_groups[0]["lr"] <= lr / 2
        else:
            assert stats["gradient_steps"] == 16 and stats["lr"] == lr
    assert drift[0.0] > 10 and drift[0.05] < 0.5, drift


def test_an_update_already_past_the_target_takes_no_step_and_keeps_its_learning_rate():
    from wmpo.models.policy import Policy
    from wmpo.rl.trainer import update

    batch = _update_batch()
    batch["old_logp"] = batch["old_logp"] - 1.0  # the rollout policy 1 nat away: KL e - 2 = 0.72 per chunk
    c = cfg("unused", 1)
    c.lr, c.epochs, c.minibatch, c.temperature, c.target_kl = 1e-4, 2, 16, 1.0, 0.05
    policy, _ = Policy.from_checkpoint(POLICY)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=c.lr)
    stats = update(policy, opt, batch, c, torch.Generator().manual_seed(0))
    assert stats["gradient_steps"] == 0 and stats["backtracks"] == 0 and stats["lr"] == 1e-4
    assert stats["approx_kl_max"] == pytest.approx(np.e - 2, rel=1e-3)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
