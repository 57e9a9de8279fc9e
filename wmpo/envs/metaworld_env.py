"""MetaWorld v3 behind gymnasium, rendering small RGB frames from one fixed camera.

Observations are upright ``(H, W, 3)`` uint8 frames from a free camera aimed at the table
(the built-in cameras render upside down and show small objects as 2-4 px). Rendering uses
MuJoCo's offscreen renderer with multisampling, shadows and reflections off: about 5 ms a
64x64 frame instead of about 60 ms with the defaults.

Every reset takes a seed that fixes the object layout, so the same seed gives the same
episode. ``get_sim_state``/``set_sim_state`` snapshot the full simulator (MuJoCo integration
state, the model fields MetaWorld moves at reset, and MetaWorld's Python-side task state) so
one real state can be replayed under different action sequences, bit-exactly under the
same actions: the ground truth for counterfactual checks of the world model.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from wmpo.envs.tasks import DEFAULT_MAX_STEPS, check_task, instruction, make_expert  # noqa: E402
from wmpo.errors import ConfigError  # noqa: E402


@dataclass(frozen=True)
class CameraSpec:
    """A free MuJoCo camera. The default sees the whole reachable workspace from the front-left."""

    name: str = "table-oblique"
    lookat: tuple[float, float, float] = (0.0, 0.7, 0.1)
    distance: float = 1.05
    azimuth: float = 145.0
    elevation: float = -38.0

    def to_mjv(self) -> mujoco.MjvCamera:
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = self.lookat
        cam.distance = self.distance
        cam.azimuth = self.azimuth
        cam.elevation = self.elevation
        return cam

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_CAMERA = CameraSpec()
METAWORLD_MAX_PATH = 500  # MetaWorld refuses to step past this


@dataclass
class SimState:
    """Everything needed to put a MetaWorld env back into an earlier state."""

    task: str
    mj_state: np.ndarray  # mjSTATE_INTEGRATION: qpos, qvel, act, warmstart, mocap, ctrl, time...
    model_fields: dict[str, np.ndarray]  # body/site/geom positions MetaWorld sets at reset
    task_attrs: dict[str, Any]  # MetaWorld's Python-side state (targets, init positions, ...)
    wrapper: dict[str, Any] = field(default_factory=dict)


# Model arrays MetaWorld overwrites in reset_model (object and goal placement).
_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos", "geom_pos")
# Attributes of the MetaWorld env that are not task state.
_SKIP_ATTRS = {"model", "data", "mujoco_renderer", "observation_space", "action_space",
               "sawyer_observation_space", "_ezpickle_args", "_ezpickle_kwargs", "spec"}


def _is_plain(value: Any) -> bool:
    if isinstance(value, np.ndarray | np.generic | int | float | bool | str | type(None)):
        return True
    if isinstance(value, np.random.Generator):
        return True
    if isinstance(value, tuple | list):
        return all(_is_plain(v) for v in value)
    return False


class MetaWorldEnv(gym.Env):
    """One MetaWorld v3 task with image observations.

    ``step`` returns ``(frame, reward, terminated, truncated, info)``; ``info`` holds
    ``success`` (bool), the 39-D ``state`` the scripted expert needs, the task and its
    instruction. ``terminated`` is true on success when ``terminate_on_success``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        image_size: int = 64,
        camera: CameraSpec = DEFAULT_CAMERA,
        max_steps: int = DEFAULT_MAX_STEPS,
        terminate_on_success: bool = True,
    ) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self.task = check_task(task)
        if not 8 <= image_size <= 512:
            raise ConfigError(f"image_size must be in [8, 512], got {image_size}")
        if not 1 <= max_steps <= METAWORLD_MAX_PATH:
            raise ConfigError(f"max_steps must be in [1, {METAWORLD_MAX_PATH}], got {max_steps}")
        self.instruction = instruction(self.task)
        self.image_size = image_size
        self.camera = camera
        self.max_steps = max_steps
        self.terminate_on_success = terminate_on_success

        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[self.task + "-goal-observable"]()
        self._env._partially_observable = False
        # Multisampling off must be set before the renderer allocates its buffers.
        self._env.model.vis.quality.offsamples = 0
        self._renderer = mujoco.Renderer(self._env.model, image_size, image_size)
        self._mjv_camera = camera.to_mjv()
        self._expert = make_expert(self.task)

        self.observation_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._state_obs: np.ndarray = np.zeros(39)
        self._steps = 0
        self._seed: int | None = None
        self._success = False

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        env = self._env
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.seed(int(seed))
        self._state_obs, _ = env.reset()
        self._sync_derived()
        self._seed = int(seed)
        self._steps = 0
        self._success = False
        return self.render(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action.tolist()}")
        if self._seed is None:
            raise RuntimeError("call reset() before step()")
        self._state_obs, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        self._success = bool(info["success"] > 0)
        terminated = self._success and self.terminate_on_success
        truncated = self._steps >= self.max_steps and not terminated
        return self.render(), float(reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray:
        self._renderer.update_scene(self._env.data, camera=self._mjv_camera)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return self._renderer.render().copy()  # (H, W, 3) uint8, already upright

    def close(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            renderer.close()

    # ------------------------------------------------------------------ helpers
    def expert_action(self) -> np.ndarray:
        """The scripted MetaWorld expert's action for the current state."""
        return np.asarray(self._expert.get_action(self._state_obs), dtype=np.float32)

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def state(self) -> np.ndarray:
        """The 39-D state now (hand xyz, gripper, object xyz at 4:7, ..., goal xyz at 36:39)."""
        return self._state_obs.copy()

    @property
    def seed_value(self) -> int | None:
        return self._seed

    def _info(self) -> dict[str, Any]:
        return {
            "success": self._success,
            "state": self._state_obs.copy(),
            "task": self.task,
            "instruction": self.instruction,
            "seed": self._seed,
            "step": self._steps,
        }

    def _sync_derived(self) -> None:
        """Recompute derived positions for rendering without touching the physics state.

        MetaWorld moves goal sites in ``step`` only, so right after ``reset`` (or a restore)
        the rendered goal would sit where the previous episode left it.
        """
        env = self._env
        sig = mujoco.mjtState.mjSTATE_INTEGRATION
        buf = np.empty(mujoco.mj_stateSize(env.model, sig), dtype=np.float64)
        mujoco.mj_getState(env.model, env.data, buf, sig)
        mujoco.mj_forward(env.model, env.data)
        mujoco.mj_setState(env.model, env.data, buf, sig)  # forward must not change the dynamics
        for name, pos in env._target_site_config:
            env._set_pos_site(name, pos)

    # ------------------------------------------------------------------ save/restore
    def get_sim_state(self) -> SimState:
        env = self._env
        size = mujoco.mj_stateSize(env.model, mujoco.mjtState.mjSTATE_INTEGRATION)
        buf = np.empty(size, dtype=np.float64)
        mujoco.mj_getState(env.model, env.data, buf, mujoco.mjtState.mjSTATE_INTEGRATION)
        model_fields = {name: getattr(env.model, name).copy() for name in _MODEL_FIELDS}
        attrs = {
            k: copy.deepcopy(v)
            for k, v in vars(env).items()
            if k not in _SKIP_ATTRS and _is_plain(v)
        }
        wrapper = {
            "state_obs": self._state_obs.copy(),
            "steps": self._steps,
            "seed": self._seed,
            "success": self._success,
        }
        return SimState(self.task, buf, model_fields, attrs, wrapper)

    def set_sim_state(self, state: SimState) -> np.ndarray:
        """Restore ``state`` and return the frame it shows."""
        if state.task != self.task:
            raise ValueError(f"state is from task {state.task!r}, this env runs {self.task!r}")
        env = self._env
        for name, value in state.model_fields.items():
            getattr(env.model, name)[:] = value
        for k, v in state.task_attrs.items():
            setattr(env, k, copy.deepcopy(v))
        mujoco.mj_setState(env.model, env.data, state.mj_state, mujoco.mjtState.mjSTATE_INTEGRATION)
        self._sync_derived()
        w = state.wrapper
        self._state_obs = w["state_obs"].copy()
        self._steps = w["steps"]
        self._seed = w["seed"]
        self._success = w["success"]
        return self.render()

    def replay(self, state: SimState, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From ``state``, apply ``actions`` (T, 4). Returns frames (T+1, H, W, 3) and success (T+1,).

        Does not stop at success or at ``max_steps``: counterfactual futures have fixed length.
        """
        frames = [self.set_sim_state(state)]
        success = [self._success]
        for a in np.asarray(actions, dtype=np.float32):
            self._state_obs, _, _, _, info = self._env.step(np.clip(a, -1.0, 1.0))
            self._steps += 1
            self._success = bool(info["success"] > 0)
            frames.append(self.render())
            success.append(self._success)
        return np.stack(frames), np.asarray(success)


def make_env(task: str, **kwargs: Any) -> MetaWorldEnv:
    return MetaWorldEnv(task, **kwargs)
