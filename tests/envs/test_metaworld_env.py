import numpy as np
import pytest

from wmpo.envs import make_env, parse_tasks
from wmpo.envs.tasks import ALL_TASKS, expert_class_name, make_expert
from wmpo.errors import UnknownTaskError


@pytest.fixture(scope="module")
def env():
    e = make_env("push-v3", max_steps=40)
    yield e
    e.close()


def test_observation_is_upright_rgb_frame(env):
    frame, info = env.reset(seed=0)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert env.observation_space.contains(frame)
    assert info["instruction"] == "push the puck to the goal"
    # The wooden table (brown: red well above blue) fills the lower part of an upright frame,
    # the grey wall the upper part.
    brown = (frame[..., 0].astype(int) - frame[..., 2].astype(int)) > 25
    assert brown[-16:].mean() > 0.6
    assert brown[-16:].mean() > brown[:16].mean() + 0.3


def test_same_seed_same_episode_different_seed_different_layout(env):
    actions = np.random.default_rng(0).uniform(-1, 1, (10, 4)).astype(np.float32)

    def run(seed):
        frames = [env.reset(seed=seed)[0]]
        frames += [env.step(a)[0] for a in actions]
        return np.stack(frames)

    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], c[0])


def test_save_restore_replays_bit_exactly(env):
    env.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(5):
        env.step(env.expert_action())
    state = env.get_sim_state()
    actions = rng.uniform(-1, 1, (12, 4)).astype(np.float32)
    frames_a, succ_a = env.replay(state, actions)
    states_a = env.get_sim_state().mj_state
    # Disturb the env (a different episode entirely), then replay from the snapshot.
    env.reset(seed=99)
    env.step(np.ones(4, np.float32))
    frames_b, succ_b = env.replay(state, actions)
    assert np.array_equal(frames_a, frames_b)
    assert np.array_equal(succ_a, succ_b)
    assert np.array_equal(states_a, env.get_sim_state().mj_state)
    # A different action sequence from the same state gives a different future.
    frames_c, _ = env.replay(state, -actions)
    assert np.array_equal(frames_c[0], frames_a[0]) and not np.array_equal(frames_c[-1], frames_a[-1])


def test_step_matches_replay_from_snapshot(env):
    env.reset(seed=4)
    state = env.get_sim_state()
    actions = np.stack([env.expert_action()] * 6)
    stepped = [env.step(a)[0] for a in actions]
    replayed, _ = env.replay(state, actions)
    assert np.array_equal(np.stack(stepped), replayed[1:])


def test_bad_actions_are_rejected(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0, np.nan, 0, 0]))


def test_truncates_at_max_steps():
    e = make_env("reach-v3", max_steps=5)
    e.reset(seed=0)
    out = [e.step(np.zeros(4, np.float32)) for _ in range(5)]
    assert [o[3] for o in out] == [False] * 4 + [True]
    e.close()


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError) as ei:
        parse_tasks("door-opne-v3")
    assert "door-open-v3" in str(ei.value) and "push-v3" in str(ei.value)
    assert parse_tasks("door-open,policy")[0] == "door-open-v3"


def test_every_task_has_an_expert():
    assert len(ALL_TASKS) == 50
    for task in ALL_TASKS:
        assert make_expert(task).__class__.__name__ == expert_class_name(task)


def test_play_split_holds_out_whole_tasks():
    from wmpo.envs.tasks import HELDOUT_TASKS, PLAY_TASKS, POLICY_TASKS

    assert len(PLAY_TASKS) >= 30 and len(HELDOUT_TASKS) >= 5
    assert set(POLICY_TASKS) <= set(PLAY_TASKS) and not set(PLAY_TASKS) & set(HELDOUT_TASKS)
    assert set(PLAY_TASKS) | set(HELDOUT_TASKS) == set(ALL_TASKS)
    assert parse_tasks("play") == list(PLAY_TASKS) and parse_tasks("heldout") == list(HELDOUT_TASKS)
