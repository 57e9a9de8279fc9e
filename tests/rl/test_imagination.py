"""Pieces of the imagination loop that need no services."""

from pathlib import Path

import numpy as np
import pytest

from wmpo.judge.rewards import clip_reward
from wmpo.rl.grpo import is_informative
from wmpo.rl.imagination import (
    ClassifierRolloutJudge,
    StartState,
    VideoVerdict,
    done_chunk,
    imagine_groups,
    imitation_rewards,
    member_reward,
)
from wmpo.rl.real import RealGroupSimulator, RealSuccessJudge
from wmpo.rl.trainer import expert_actions

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
TASK = "button-press-topdown-v3"


def test_chunks_after_the_judged_success_are_outside_the_episode():
    # 4 frames per chunk: chunk 0 makes frames 1-4, chunk 1 frames 5-8, ...
    assert done_chunk(None, 4, 6) == 6  # no success: every chunk counts
    assert done_chunk(4, 4, 6) == 1
    assert done_chunk(5, 4, 6) == 2
    assert done_chunk(8, 4, 6) == 2
    assert done_chunk(0, 4, 6) == 1  # success visible at the start: the first chunk still counts
    assert done_chunk(100, 4, 6) == 6


def test_a_rollouts_reward_is_its_success_or_its_clip_reward():
    v = VideoVerdict(True, 0.9, 5, (0.1, 0.4, 0.9))
    assert member_reward(v, "success") == 1.0
    assert member_reward(v, "clip") == pytest.approx(clip_reward(np.array([0.1, 0.4, 0.9])))
    assert 0.1 < member_reward(v, "clip") < 0.9
    # The real environment's verdicts carry no clip scores: the true flag is the reward.
    assert member_reward(VideoVerdict(False, 0.0, None), "clip") == 0.0
    with pytest.raises(ValueError, match="success, clip"):
        member_reward(v, "dense")


@pytest.fixture(scope="module")
def button_group_setup():
    """A real start of button press from which the base policy, sampled at temperature 1 with
    seed 0, presses the button in all 3 tries within 12 chunks; the bundled judge."""
    from wmpo.envs import make_env
    from wmpo.judge.success import SuccessJudge
    from wmpo.models.policy import Policy

    env = make_env(TASK)
    frame, _ = env.reset(seed=200_002)
    policy, _ = Policy.from_checkpoint(str(CKPT / "policy-base"))
    return StartState(frame, env.instruction, TASK, 200_002), policy, SuccessJudge.load(str(CKPT / "judge"))


class NoReplays(RealGroupSimulator):
    """MetaWorld groups whose replays must not be asked for (the real env cannot replay anyway)."""

    def replay(self, session_id, seed=None):
        raise AssertionError(f"replay of {session_id} asked for")


def test_clip_rewards_rank_real_rollouts_by_the_judges_confidences(button_group_setup):
    """The bundled judge over real MetaWorld rollouts (the online baseline's simulator, so the test
    needs no world model): with ``reward="clip"`` each member's reward is the clip reward of the
    judge's per-clip confidences on its video."""
    start, policy, classifier = button_group_setup
    (g,) = imagine_groups(RealGroupSimulator(), ClassifierRolloutJudge(classifier), policy, [start], group_size=3,
                          chunks=12, temperature=1.0, seed=0, verify=False, reward="clip")
    expected = [clip_reward(np.asarray(v.clip_scores))
                for v in classifier.judge_many(list(g.videos), [start.instruction] * 3, [2] * 3)]
    assert g.rewards.tolist() == pytest.approx(expected, rel=1e-6, abs=0)
    # All three press the button within 96 steps: a binary reward would drop the group as
    # uninformative; the clip reward still ranks the members by how soon and how clearly.
    assert g.success.all() and not is_informative(g.success.astype(float))
    assert len(set(g.rewards.tolist())) == 3 and is_informative(g.rewards)


def test_a_group_judged_all_successes_is_not_replayed_under_the_binary_reward(button_group_setup):
    start, policy, classifier = button_group_setup
    judge = ClassifierRolloutJudge(classifier)
    (g,) = imagine_groups(NoReplays(), judge, policy, [start], group_size=3, chunks=12, temperature=1.0, seed=0,
                          verify=True, reward="success")
    assert g.success.all() and g.rewards.tolist() == [1.0, 1.0, 1.0] and not g.flagged.any()
    # The clip reward ranks successes, so they are verified.
    with pytest.raises(AssertionError, match="replay of real-0-0 asked for"):
        imagine_groups(NoReplays(), judge, policy, [start], group_size=3, chunks=12, temperature=1.0, seed=0,
                       verify=True, reward="clip")


class RecordingSimulator(RealGroupSimulator):
    """MetaWorld groups that keep what each step was given and gave back, per member."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[np.ndarray] = []
        self.frames: list[np.ndarray] = []

    def step_group(self, group_id, actions):
        out = super().step_group(group_id, actions)
        self.sent.append(np.asarray(actions))
        self.frames.append(np.stack([r.frames for r in out.results]))
        return out


def test_the_experts_actions_replayed_from_its_layout_press_the_button():
    from wmpo.envs import make_env

    env = make_env(TASK)
    actions = expert_actions(env, 200_002, 96)
    assert actions.shape == (96, 4) and np.isfinite(actions).all() and np.abs(actions).max() <= 1
    env.reset(seed=200_002)  # open loop from the same layout: MetaWorld is deterministic
    assert any(env.step(a)[4]["success"] for a in actions)
    assert np.array_equal(expert_actions(env, 200_002, 96), actions)


def test_the_imitation_reward_ranks_members_by_their_distance_to_the_experts_rollout(button_group_setup):
    """RoboStereo's IEPL reward through the loop, with MetaWorld as the simulator (no world model
    needed): the expert's actions are stepped as one more member in the same calls, its frames are
    not a member's, and each member's reward is minus its mean per-frame distance to them."""
    from dataclasses import replace

    from wmpo.envs import make_env
    from wmpo.judge.perceptual import FeatureDistance

    start, policy, _ = button_group_setup
    start = replace(start, expert_actions=expert_actions(make_env(TASK), start.seed, 96))
    distance = FeatureDistance.from_world_model(str(CKPT / "world-model"))
    sim = RecordingSimulator()
    (g,) = imagine_groups(sim, RealSuccessJudge(sim), policy, [start], group_size=3, chunks=12, temperature=1.0,
                          seed=0, verify=False, reward="imitation", imitation=distance.distance)
    sent = np.concatenate(sim.sent, axis=1)  # (4, 96, 4): three members and the expert
    assert sent.shape == (4, 96, 4) and np.array_equal(sent[3], start.expert_actions)
    assert g.videos.shape[0] == 3 and len(g.session_ids) == 3 and g.tokens.shape[0] == 3
    expert_video = np.concatenate([start.frame[None], np.concatenate(sim.frames, axis=1)[3]])
    expected = [-distance.distance(v[1:], expert_video[1:]).mean() for v in g.videos]
    assert g.rewards.tolist() == pytest.approx(expected, rel=1e-5)
    assert all(r < 0 for r in g.rewards) and len(set(g.rewards.tolist())) == 3 and is_informative(g.rewards)
    # A member that did exactly what the expert did would score 0, the best reward there is.
    assert imitation_rewards(expert_video[None], expert_video, distance.distance).tolist() == [0.0]


def test_the_imitation_reward_needs_the_experts_actions_and_a_distance(button_group_setup):
    start, policy, _ = button_group_setup
    with pytest.raises(ValueError, match="expert's first 96 actions"):
        imagine_groups(RealGroupSimulator(), None, policy, [start], group_size=2, chunks=12, temperature=1.0,
                       seed=0, reward="imitation", imitation=lambda a, b: np.zeros(len(a)))
