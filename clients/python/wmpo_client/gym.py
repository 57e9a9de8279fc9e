"""gymnasium environments backed by the remote simulator (install `wmpo-client[gym]`).

`SimulatorEnv` is one remote session: `reset()` opens a session from a start
frame, `step(chunk)` advances it by one action chunk.

- observation: the last frame the chunk generated, uint8 (H, W, 3);
- action: one chunk, float32 (K, 4) in [-1, 1] (xyz delta, gripper);
- reward / terminated: the service's `reward` / `done`, which the judge
  service fills; until one is configured they are None, read as 0.0 / False;
- truncated: after `max_chunks` chunks (the session's budget on the server);
- steps are idempotent: the env sends the session's chunk count with every step
  (`expected_chunks_stepped`), so a step the client retries after a timeout or a
  lost connection returns the step's stored result instead of advancing twice;
- `reset(seed=...)` seeds the env's generator, which draws the server-side
  noise seed, so the same reset seed gives the same rollout for the same
  actions. The start frame is given at construction or per reset as
  `options={"frame": frame}` (and `options={"instruction": ...}`).

`SimulatorVectorEnv` is a forked group of G sessions from one start frame,
stepped together (one request, batched on the server). It subclasses
`gymnasium.vector.VectorEnv` with autoreset mode DISABLED rather than the
usual NEXT_STEP: the members of a group share one encoded start, so a single
member cannot be reset on its own; the group resets as a whole with
`reset()` (a partial `reset_mask` is refused). Members that ended before the
others are still stepped by the server (a group steps every member); their
`terminated` stays True and, as with any DISABLED-mode vector env, what they
return afterwards is to be ignored.

Both take a client object, or a URL (http(s):// or grpc://) plus `api_key`,
in which case the env makes its own client and closes it with itself. With a
URL the single env can be made by id, which gymnasium's `check_env` and
`make` need for render-mode and close checks (they deep-copy the kwargs, so
a live client object cannot be one of them):

    env = gymnasium.make("wmpo/Simulator-v0", client="http://127.0.0.1:8000",
                         api_key="...", frame=frame, max_chunks=16)

This module is the only one importing gymnasium; the clients do not need it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from wmpo_client import connect
from wmpo_client._common import frame_array
from wmpo_client.errors import SimulatorError
from wmpo_client.protocols import Simulator
from wmpo_client.results import CreateSessionResult, StepResult

__all__ = ["ENV_ID", "SimulatorEnv", "SimulatorVectorEnv", "SyncSimulator"]

ENV_ID = "wmpo/Simulator-v0"

# Server seeds are below 2**63 (they fit a signed 64-bit integer).
_SEED_HIGH = 2**63 - 1


# What the envs need from a client (`SimulatorClient` and `GrpcSimulatorClient` both fit); the
# name is kept for callers that imported it from here.
SyncSimulator = Simulator


def _frame_shape(frame: np.ndarray | None, image_size: int) -> tuple[int, int, int]:
    if frame is None:
        return (image_size, image_size, 3)
    shape = frame.shape[1:] if frame.ndim == 4 else frame.shape
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"frame must be uint8 (H, W, 3), got shape {frame.shape}")
    return (int(shape[0]), int(shape[1]), 3)


def _check_options(options: dict[str, Any] | None, allowed: set[str]) -> dict[str, Any]:
    options = dict(options or {})
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; allowed: {sorted(allowed)}")
    return options


def _reward(result: StepResult) -> float:
    return float(result.reward) if result.reward is not None else 0.0


def _terminated(result: StepResult) -> bool:
    return bool(result.done) if result.done is not None else False


class _Remote:
    """Start frame, instruction and chunk geometry shared by both envs."""

    def _setup(
        self,
        client: SyncSimulator | str,
        api_key: str | None,
        frame: np.ndarray | None,
        instruction: str,
        max_chunks: int,
        chunk_length: int,
        image_size: int,
        close_client: bool,
    ) -> tuple[spaces.Box, spaces.Box]:
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
        if chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
        if isinstance(client, str):
            self.client: SyncSimulator = connect(client, api_key)
            close_client = True
        else:
            self.client = client
        self.instruction = instruction
        self.max_chunks = max_chunks
        self.chunk_length = chunk_length
        self._close_client = close_client
        self._frame = None if frame is None else frame_array(frame)
        obs_space = spaces.Box(0, 255, _frame_shape(self._frame, image_size), np.uint8)
        act_space = spaces.Box(-1.0, 1.0, (chunk_length, 4), np.float32)
        return obs_space, act_space

    def _start(self, options: dict[str, Any], shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
        frame = options.get("frame", self._frame)
        if frame is None:
            raise ValueError(
                "no start frame: pass frame= when making the env or reset(options={'frame': ...})"
            )
        frame = frame_array(frame)
        if _frame_shape(frame, 0) != shape:
            raise ValueError(f"start frame has shape {frame.shape}; the observations are {shape}")
        return frame, str(options.get("instruction", self.instruction))

    def _server_seed(self, rng: np.random.Generator) -> int:
        return int(rng.integers(0, _SEED_HIGH))

    def _observation(self, created: CreateSessionResult, shape: tuple[int, ...]) -> np.ndarray:
        if created.observation.shape != shape:
            raise ValueError(
                f"the server's observation has shape {created.observation.shape}, the "
                f"observation space {shape}; give a frame of the model's size"
            )
        return created.observation

    def _quietly(self, close: Any, identifier: str) -> None:
        """Close a session or group; one that expired or was closed is already gone."""
        try:
            close(identifier)
        except SimulatorError as exc:
            if exc.code not in ("NOT_FOUND", "UNAVAILABLE"):
                raise


class SimulatorEnv(_Remote, gym.Env[np.ndarray, np.ndarray]):
    """One remote session as a gymnasium Env (see the module docstring).

    Args:
        client: a sync client (`SimulatorClient` or `GrpcSimulatorClient`), or a URL.
        api_key: with a URL, the API key of the client the env makes.
        frame: uint8 (H, W, 3) start frame; None: give one per reset in options.
        instruction: the task, recorded with the session for the judge.
        max_chunks: chunks per episode; the step that reaches it is truncated.
        chunk_length: K, the actions per chunk (a multiple of the model's frame stride).
        image_size: the frame size when no frame is given here (the observation space).
        render_mode: None or "rgb_array" (the last observation).
        close_client: close the client with the env (always, for a client made from a URL).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        client: SyncSimulator | str,
        frame: np.ndarray | None = None,
        instruction: str = "",
        *,
        api_key: str | None = None,
        max_chunks: int = 64,
        chunk_length: int = 8,
        image_size: int = 64,
        render_mode: str | None = None,
        close_client: bool = False,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.observation_space, self.action_space = self._setup(
            client, api_key, frame, instruction, max_chunks, chunk_length, image_size, close_client
        )
        self.render_mode = render_mode
        self.session_id: str | None = None
        self.chunks_stepped = 0  # the session's, as the server last reported it
        self._last: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Close the previous session and open a new one; returns the start observation."""
        super().reset(seed=seed)
        opts = _check_options(options, {"frame", "instruction"})
        shape = self.observation_space.shape
        assert shape is not None
        frame, instruction = self._start(opts, shape)
        self._close_session()
        server_seed = self._server_seed(self.np_random)
        created = self.client.create_session(
            frame, instruction, seed=server_seed, max_chunks=self.max_chunks
        )
        self.session_id = created.session_id
        self.chunks_stepped = 0
        obs = self._observation(created, shape)
        self._last = obs
        return obs.copy(), {"seed": server_seed}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance the session by one chunk of actions."""
        if self.session_id is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        chunk = np.asarray(action, dtype=np.float32)
        if chunk.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {chunk.shape}")
        result = self.client.step(
            self.session_id, chunk, expected_chunks_stepped=self.chunks_stepped
        ).result
        self.chunks_stepped = result.chunks_stepped
        obs = np.array(result.frames[-1])
        self._last = obs
        truncated = result.truncated or result.chunks_stepped >= self.max_chunks
        info = {"frames": result.frames, "chunks_stepped": result.chunks_stepped}
        return obs.copy(), _reward(result), _terminated(result), bool(truncated), info

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The last observation (render_mode "rgb_array"), or None."""
        if self.render_mode != "rgb_array" or self._last is None:
            return None
        return self._last.copy()

    def _close_session(self) -> None:
        if self.session_id is not None:
            sid, self.session_id = self.session_id, None
            self._quietly(self.client.close_session, sid)

    def close(self) -> None:
        """Close the session (and the client, if the env owns it)."""
        self._close_session()
        if self._close_client:
            self.client.close()
        super().close()


class SimulatorVectorEnv(_Remote, VectorEnv):
    """A forked group of `num_envs` sessions as a gymnasium VectorEnv (see the module docstring).

    Arguments as for `SimulatorEnv`; `num_envs` is the group size G.
    Observations are (G, H, W, 3), actions (G, K, 4), rewards float64 (G,).
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

    def __init__(
        self,
        client: SyncSimulator | str,
        num_envs: int,
        frame: np.ndarray | None = None,
        instruction: str = "",
        *,
        api_key: str | None = None,
        max_chunks: int = 64,
        chunk_length: int = 8,
        image_size: int = 64,
        close_client: bool = False,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = self._setup(
            client, api_key, frame, instruction, max_chunks, chunk_length, image_size, close_client
        )
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.group_id: str | None = None
        self.session_ids: list[str] = []
        self.chunks_stepped = 0  # every member's (they step together)
        self._ended = np.zeros(num_envs, dtype=bool)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Close the previous group and fork a new one; every member starts from the frame."""
        if seed is not None and not isinstance(seed, int | np.integer):
            raise ValueError(
                "seed must be one int: a group's members derive their noise seeds from it"
            )
        super().reset(seed=seed)
        opts = _check_options(options, {"frame", "instruction", "reset_mask"})
        mask = opts.pop("reset_mask", None)
        if mask is not None and not np.all(mask):
            raise ValueError("a forked group resets as a whole; reset_mask must be all True")
        shape = self.single_observation_space.shape
        assert shape is not None
        frame, instruction = self._start(opts, shape)
        self._close_group()
        server_seed = self._server_seed(self.np_random)
        created = self.client.create_group(
            frame, self.num_envs, instruction, seed=server_seed, max_chunks=self.max_chunks
        )
        self.group_id = created.group_id
        self.session_ids = created.session_ids
        self.chunks_stepped = 0
        obs = self._observation(created, shape)
        self._ended[:] = False
        return np.stack([obs] * self.num_envs), {"seed": server_seed}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every member by its chunk: actions (G, K, 4), row g for member g."""
        if not self.session_ids:
            raise gym.error.ResetNeeded("call reset() before step()")
        chunks = np.asarray(actions, dtype=np.float32)
        if chunks.shape != self.action_space.shape:
            raise ValueError(
                f"actions must have shape {self.action_space.shape}, got {chunks.shape}"
            )
        expected = self.chunks_stepped
        if self.group_id is None:  # a group of one is a plain session
            outcome = self.client.step(
                self.session_ids[0], chunks[0], expected_chunks_stepped=expected
            )
        else:
            outcome = self.client.step_group(
                self.group_id, chunks, expected_chunks_stepped=expected
            )
        results = outcome.results
        self.chunks_stepped = results[0].chunks_stepped
        obs = np.stack([r.frames[-1] for r in results])
        rewards = np.array([_reward(r) for r in results], dtype=np.float64)
        terminated = self._ended | np.array([_terminated(r) for r in results])
        self._ended = terminated.copy()
        truncated = np.array(
            [r.truncated or r.chunks_stepped >= self.max_chunks for r in results], dtype=bool
        )
        chunks_stepped = np.array([r.chunks_stepped for r in results], dtype=np.int64)
        info = {"chunks_stepped": chunks_stepped, "_chunks_stepped": np.ones(len(results), bool)}
        return obs, rewards, terminated, truncated, info

    def _close_group(self) -> None:
        group_id, session_ids = self.group_id, self.session_ids
        self.group_id, self.session_ids = None, []
        if group_id is not None:
            self._quietly(self.client.close_group, group_id)
        elif session_ids:
            self._quietly(self.client.close_session, session_ids[0])

    def close_extras(self, **kwargs: Any) -> None:
        """Close the group (and the client, if the env owns it)."""
        self._close_group()
        if self._close_client:
            self.client.close()


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=SimulatorEnv, nondeterministic=False)
