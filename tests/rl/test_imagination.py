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
    member_reward,
)

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


def test_clip_rewards_rank_real_rollouts_by_the_judges_confidences():
    """The bundled judge over real MetaWorld rollouts (the online baseline's simulator, so the test
    needs no world model): with ``reward="clip"`` each member's reward is the clip reward of the
    judge's per-clip confidences on its video."""
    from wmpo.envs import make_env
    from wmpo.judge.success import SuccessJudge
    from wmpo.models.policy import Policy
    from wmpo.rl.real import RealGroupSimulator

    env = make_env(TASK)
    frame, _ = env.reset(seed=200_002)
    start = StartState(frame, env.instruction, TASK, 200_002)
    policy, _ = Policy.from_checkpoint(str(CKPT / "policy-base"))
    classifier = SuccessJudge.load(str(CKPT / "judge"))
    judge = ClassifierRolloutJudge(classifier)
    (g,) = imagine_groups(RealGroupSimulator(), judge, policy, [start], group_size=3, chunks=12, temperature=1.0,
                          seed=0, verify=False, reward="clip")
    expected = [clip_reward(np.asarray(v.clip_scores))
                for v in classifier.judge_many(list(g.videos), [start.instruction] * 3, [2] * 3)]
    assert g.rewards.tolist() == pytest.approx(expected, rel=1e-6, abs=0)
    # All three press the button within 96 steps: a binary reward would drop the group as
    # uninformative; the clip reward still ranks the members by how soon and how clearly.
    assert g.success.all() and not is_informative(g.success.astype(float))
    assert len(set(g.rewards.tolist())) == 3 and is_informative(g.rewards)
