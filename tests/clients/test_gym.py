"""The gymnasium envs over a real remote session / forked group (tiny world model)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from wmpo_client.errors import SimulatorError
from wmpo_client.grpc import GrpcSimulatorClient
from wmpo_client.gym import ENV_ID, SimulatorEnv, SimulatorVectorEnv
from wmpo_client.http import SimulatorClient

from tests.clients.conftest import KEY, LiveService
from tests.services.simulator.conftest import frames

FRAME = frames()[0]


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, service: LiveService) -> Iterator[Any]:
    if request.param == "http":
        c: Any = SimulatorClient(service.http_url, KEY, timeout=20)
    else:
        c = GrpcSimulatorClient(service.grpc_target, KEY, timeout=20)
    with c:
        yield c


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_env_made_by_id_passes_the_gymnasium_checker(scheme: str, service: LiveService) -> None:
    url = service.http_url if scheme == "http" else f"grpc://{service.grpc_target}"
    env = gym.make(
        ENV_ID, client=url, api_key=KEY, frame=FRAME, max_chunks=3, render_mode="rgb_array"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning from the checker
        check_env(env.unwrapped)  # with a spec: render modes and double close are checked too
    env.close()


def test_env_over_a_client(client: Any) -> None:
    env = SimulatorEnv(client, FRAME, "open the drawer", max_chunks=3, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Only the note that an env without a spec cannot have its other
        # render modes re-made (the test above covers that); every check must pass.
        warnings.filterwarnings("ignore", message=".*Not able to test alternative render modes")
        check_env(env)

    obs, info = env.reset(seed=1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and "seed" in info
    assert np.array_equal(env.render(), obs)
    sid = env.session_id
    for n in (1, 2, 3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space and info["frames"].shape == (4, 64, 64, 3)
        assert (reward, terminated, truncated) == (0.0, False, n == 3)  # no judge yet
    env.close()
    with pytest.raises(SimulatorError, match="NOT_FOUND"):
        client.get_session(sid)
    env.close()  # twice is fine


def test_env_start_frame_from_reset_options(service: LiveService) -> None:
    with SimulatorClient(service.http_url, KEY) as client:
        env = SimulatorEnv(client, max_chunks=2)  # no frame at construction
        with pytest.raises(ValueError, match="no start frame"):
            env.reset(seed=0)
        with pytest.raises(gym.error.ResetNeeded):
            env.step(env.action_space.sample())
        a, _ = env.reset(seed=0, options={"frame": frames(1)[0]})
        b, _ = env.reset(seed=0, options={"frame": frames(2)[0], "instruction": "x"})
        assert not np.array_equal(a, b)
        with pytest.raises(ValueError, match="shape"):
            env.reset(options={"frame": FRAME[:32]})
        with pytest.raises(ValueError, match="unknown reset options"):
            env.reset(options={"frames": FRAME})
        env.close()


def test_vector_env_steps_a_forked_group(client: Any) -> None:
    envs = SimulatorVectorEnv(client, 3, FRAME, "push", max_chunks=2)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.DISABLED
    obs, info = envs.reset(seed=4)
    assert obs.shape == (3, 64, 64, 3) and obs in envs.observation_space
    members = client.get_group(envs.group_id)
    assert [m.group_index for m in members] == [0, 1, 2]

    envs.action_space.seed(0)
    act = envs.action_space.sample()
    assert act.shape == (3, 8, 4)
    obs1, rewards, terminated, truncated, info = envs.step(act)
    assert obs1.shape == (3, 64, 64, 3) and rewards.tolist() == [0.0, 0.0, 0.0]
    assert not terminated.any() and not truncated.any()
    assert info["chunks_stepped"].tolist() == [1, 1, 1]
    _, _, _, truncated, _ = envs.step(act)
    assert truncated.all()

    # Same seed, same actions: the same rollout.
    envs.reset(seed=4)
    again, *_ = envs.step(act)
    assert np.array_equal(again, obs1)
    with pytest.raises(ValueError, match="resets as a whole"):
        envs.reset(options={"reset_mask": np.array([True, False, True])})
    gid = envs.group_id
    envs.close()
    with pytest.raises(SimulatorError, match="NOT_FOUND"):
        client.get_group(gid)


def test_vector_env_of_one(service: LiveService) -> None:
    with SimulatorClient(service.http_url, KEY) as client:
        envs = SimulatorVectorEnv(client, 1, FRAME, max_chunks=1)
        obs, _ = envs.reset(seed=0)
        assert envs.group_id is None and obs.shape == (1, 64, 64, 3)
        _, _, _, truncated, _ = envs.step(envs.action_space.sample())
        assert truncated.tolist() == [True]
        envs.close()
