"""Reward rules against hand-computed values."""

import numpy as np
import pytest

from wmpo.judge.rewards import (
    clip_reward,
    dual_noise_group,
    goal_reward,
    imitation_reward,
    temporal_weights,
)


def test_temporal_weights_grow_over_time_and_sum_to_one():
    w = temporal_weights(4, temperature=0.25)
    # logits i / (n T) = [0, 1, 2, 3]
    expected = np.exp([0, 1, 2, 3]) / np.exp([0, 1, 2, 3]).sum()
    assert np.allclose(w, expected) and np.all(np.diff(w) > 0)
    assert np.allclose(temporal_weights(5, 1e6), 0.2)  # large temperature: plain mean
    with pytest.raises(ValueError):
        temporal_weights(3, 0.0)


def test_clip_reward_counts_late_success_more_than_early():
    early = clip_reward(np.array([1.0, 0.0, 0.0, 0.0]), 0.25)
    late = clip_reward(np.array([0.0, 0.0, 0.0, 1.0]), 0.25)
    assert late > early
    assert late == pytest.approx(np.exp(3) / np.exp([0, 1, 2, 3]).sum())


def test_imitation_reward_is_minus_distance():
    assert imitation_reward(np.array([0.5, 0.0])).tolist() == [-0.5, 0.0]


def test_goal_reward_adds_a_bonus_when_done_and_stops():
    r = goal_reward(np.array([0.9, 0.5, 0.2, 0.1]), np.array([0.1, 0.3, 0.8, 0.9]), threshold=0.5, bonus=1.0)
    assert r.tolist() == pytest.approx([-0.9, -0.5, 0.8, 0.0])
    assert goal_reward(np.array([0.4]), np.array([0.1])).tolist() == [-0.4]
    with pytest.raises(ValueError):
        goal_reward(np.zeros(2), np.zeros(3))


def test_dual_noise_flags_unconfirmed_successes_and_replaces_their_reward_by_the_trusted_mean():
    rewards = np.array([1, 1, 0, 0, 1, 0, 0, 0], float)
    success = rewards > 0
    replay = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)  # rollout 1 was a hallucination
    v = dual_noise_group(rewards, success, replay)
    assert v.flagged.tolist() == [False, True] + [False] * 6
    assert v.rewards[1] == pytest.approx(2 / 7)  # mean of the 7 trusted rewards
    assert v.rewards[[0, 2, 4]].tolist() == [1, 0, 1] and not v.discard


def test_replay_verdicts_of_failures_are_ignored():
    v = dual_noise_group(np.zeros(4), np.zeros(4, bool), np.ones(4, bool))
    assert not v.flagged.any() and v.rewards.tolist() == [0, 0, 0, 0]


def test_more_than_two_flags_discard_the_group():
    ones = np.ones(8)
    replay = np.array([0, 0, 0, 1, 1, 1, 1, 1], bool)
    assert dual_noise_group(ones, ones > 0, replay).discard
    replay[2] = True
    assert not dual_noise_group(ones, ones > 0, replay).discard


def test_all_flagged_count_as_failures():
    v = dual_noise_group(np.ones(2), np.ones(2, bool), np.zeros(2, bool))
    assert v.rewards.tolist() == [0, 0] and not v.discard
