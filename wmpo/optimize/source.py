"""The action optimizer in the real simulator's closed loop: an ``ActionSource`` for
``wmpo eval policy`` and ``wmpo collect`` that plans, executes the first chunks and re-plans.

Variants (MVISTA-4D's ablations, section 5.2):

- ``full``: latent optimization from a random latent toward the instruction-only future,
  then the inverse-dynamics model (residual with a residual IDM checkpoint);
- ``full-init``: the same, the latent initialized from the policy's chunks (+ActionInit): the
  policy acts on the current frame and on the target future's frames at the chunk boundaries,
  and the VAE encodes the 4 chunks;
- ``act-head``: no optimization: the policy's chunks through the VAE and the residual IDM;
- ``full-idm``: a full inverse-dynamics model (no prior) reads the target future directly.

The target future is the instruction-only future the plan generator imagines (``goal=
"instruction"``, MVISTA-4D's main mode) or, with ``goal="demo"``, a real demonstration: the
scripted expert's episode from the same layout (``ExpertDemo``, a second environment reset to
the same seed), each plan aiming at the demonstration's frames over its horizon from the same
time step on (the last frame held once the demonstration has ended). Goal-reaching episodes
report how far the object and the hand end from where the demonstration left them.

Every plan is seeded from the episode's seed, so an evaluation is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wmpo.errors import ConfigError
from wmpo.optimize.planner import Planner, PlannerConfig, PlanRequest

VARIANTS = ("full", "full-init", "act-head", "full-idm")
GOALS = ("instruction", "demo")


@dataclass
class Demo:
    frames: np.ndarray  # (n + 1, H, W, 3) the start frame and the frame after each expert action
    end_state: np.ndarray  # (39,) the state where the demonstration ended
    success: bool

    def clip(self, step: int, stride: int, n: int) -> np.ndarray:
        """The n frames at env steps step + stride, ..., step + n * stride (held at the end)."""
        idx = np.minimum(step + stride * np.arange(1, n + 1), len(self.frames) - 1)
        return self.frames[idx]

    def errors(self, state: np.ndarray) -> dict[str, float]:
        """Distances (m) of the object and the hand from where the demonstration ended."""
        end = self.end_state
        return {"object_error": float(np.linalg.norm(state[4:7] - end[4:7])),
                "hand_error": float(np.linalg.norm(state[0:3] - end[0:3]))}


class ExpertDemo:
    """Runs the scripted expert (``ExpertSource`` through ``run_episode``) from a task and seed
    in an environment of its own (one per task, kept), so the demonstration never disturbs the
    episode being evaluated."""

    def __init__(self) -> None:
        self._envs: dict[str, Any] = {}

    def run(self, task: str, seed: int, image_size: int, max_steps: int, camera: Any = None) -> Demo:
        from wmpo.data.collect import run_episode
        from wmpo.data.sources import ExpertSource
        from wmpo.envs import make_env

        key = f"{task}/{image_size}/{max_steps}"
        if key not in self._envs:
            kwargs = {"camera": camera} if camera is not None else {}
            self._envs[key] = make_env(task, image_size=image_size, max_steps=max_steps, **kwargs)
        env = self._envs[key]
        episode = run_episode(env, ExpertSource(), seed)
        return Demo(episode.frames, env.state, bool(episode.success.any()))


class OptimizerSource:
    def __init__(self, generator: str, vae: str, idm: str | None, variant: str = "full-init",
                 policy: str | None = None, steps: int | None = None, execute_chunks: int = 1,
                 temperature: float = 0.0, world_model: str | None = None, goal: str = "instruction",
                 lr: float | None = None, anchor: bool = False) -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown optimizer variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if goal not in GOALS:
            raise ConfigError(f"unknown optimizer goal {goal!r}; valid: {', '.join(GOALS)}")
        if variant in ("full-init", "act-head") and not policy:
            raise ConfigError(f"the {variant} variant needs a policy checkpoint (--checkpoint)")
        if variant == "full-idm" and not idm:
            raise ConfigError("the full-idm variant needs a full inverse-dynamics checkpoint")
        cfg = PlannerConfig(idm_input="target" if variant == "full-idm" else "plan", anchor=anchor,
                            **({"lr": lr, "init_lr": lr} if lr is not None else {}))
        default_steps = {"full": 100, "full-init": 15, "act-head": 0, "full-idm": 0}[variant]
        self.steps = default_steps if steps is None else steps
        self.planner = Planner.load(generator, vae, idm, cfg, world_model=world_model)
        if execute_chunks < 1 or execute_chunks > self.planner.chunks:
            raise ConfigError(f"execute_chunks must be in [1, {self.planner.chunks}], got {execute_chunks}")
        self.variant, self.execute_chunks, self.temperature = variant, execute_chunks, temperature
        self.goal = goal
        self._expert = ExpertDemo() if goal == "demo" else None
        self._demo: Demo | None = None
        self._env: Any = None
        self.policy = None
        if variant in ("full-init", "act-head"):  # the others never consult a policy
            from wmpo.models.policy import Policy

            self.policy, _ = Policy.from_checkpoint(policy)
        self.plan_seconds: list[float] = []

    def reset(self, rng: np.random.Generator) -> None:
        import torch

        self._seed = int(rng.integers(0, 2**31 - 1))
        self._gen = torch.Generator().manual_seed(self._seed)
        self._queue: list[np.ndarray] = []
        self._plans = 0
        self._demo = None

    def _policy_guess(self, frame: np.ndarray, target: np.ndarray, instruction: str) -> np.ndarray:
        """The policy's chunk at the current frame and at each later chunk's start in the target."""
        p = self.planner
        starts = [frame] + [target[c * p.chunk_frames - 1] for c in range(1, p.chunks)]
        chunks = self.policy.act(np.stack(starts), [instruction] * p.chunks, self.temperature, self._gen)
        return np.concatenate(list(chunks))[: p.horizon]

    def act(self, env: Any, frame: np.ndarray) -> np.ndarray:
        if not self._queue:
            import time

            t0 = time.perf_counter()
            p = self.planner
            self._env = env
            target = None
            if self._expert is not None:
                if self._demo is None:  # once per episode (reset clears it)
                    self._demo = self._expert.run(env.task, env.seed_value, env.image_size, env.max_steps, env.camera)
                target = self._demo.clip(env.steps, p.generator.dit.config.frame_stride, p.plan_frames)
            req = PlanRequest(frame, env.instruction, target_frames=target, seed=self._seed + 101 * self._plans)
            [problem] = p.prepare([req])
            if self.policy is not None:
                target = p.generator.decode(problem.target)  # (P, H, W, 3)
                p.initialize(problem, self._policy_guess(frame, target, env.instruction))
            while problem.steps_done < self.steps:
                p.step([problem])
            [result] = p.finish([problem])
            self._plans += 1
            self.plan_seconds.append(time.perf_counter() - t0)
            k = p.vae.cfg.chunk_length
            self._queue = list(result.actions[: self.execute_chunks * k])
        return self._queue.pop(0)

    def episode_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"plans": self._plans,
                                 "plan_seconds": [round(s, 3) for s in self.plan_seconds[-self._plans:]]}
        if self._demo is not None and self._env is not None:  # where the episode ended vs the demonstration
            stats |= {"demo_success": self._demo.success, "demo_length": len(self._demo.frames) - 1,
                      **self._demo.errors(self._env.state)}
        return stats

    def describe(self) -> dict[str, Any]:
        goal = {"goal": self.goal} if self.goal != "instruction" else {}  # earlier runs' seeds unchanged
        return {"kind": "optimizer", "variant": self.variant, "steps": self.steps, **goal,
                "execute_chunks": self.execute_chunks, **self.planner.provenance()}

