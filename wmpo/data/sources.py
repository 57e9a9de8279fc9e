"""Where collected actions come from: expert, noisy expert, random walk, perturbed expert, policy.

A world model trained only on expert-like motion learns to continue the motion it sees and
ignores the actions. ``random-walk`` and ``perturbed`` produce actions that cannot be guessed
from the frames; ``noisy`` and ``policy`` produce the failures a judge and a world model
must also see.

Every source acts one step at a time through ``act(env, frame)`` and describes itself with
``describe()``, which goes into each episode's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from wmpo.errors import ConfigError

SOURCE_KINDS = ("expert", "noisy", "random-walk", "perturbed", "policy", "verified-policy", "optimizer")


class ActionSource(Protocol):
    def reset(self, rng: np.random.Generator) -> None: ...
    def act(self, env: Any, frame: np.ndarray) -> np.ndarray: ...
    def describe(self) -> dict[str, Any]: ...


@dataclass
class ExpertSource:
    """The scripted MetaWorld expert, with optional Gaussian action noise (std in action units)."""

    noise_std: float = 0.0

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def act(self, env: Any, frame: np.ndarray) -> np.ndarray:
        a = env.expert_action()
        if self.noise_std > 0:
            a = a + self._rng.normal(0.0, self.noise_std, size=a.shape)
        return np.clip(a, -1, 1).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        if self.noise_std > 0:
            return {"kind": "noisy", "noise_std": self.noise_std}
        return {"kind": "expert"}


@dataclass
class RandomWalkSource:
    """Smooth random motion: a mean-reverting random walk in xyz, random gripper toggles."""

    step_std: float = 0.35
    decay: float = 0.8
    gripper_flip_prob: float = 0.05

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._a = np.zeros(4)
        self._a[3] = rng.choice([-1.0, 1.0])

    def act(self, env: Any, frame: np.ndarray) -> np.ndarray:
        r = self._rng
        self._a[:3] = np.clip(self.decay * self._a[:3] + r.normal(0, self.step_std, 3), -1, 1)
        if r.random() < self.gripper_flip_prob:
            self._a[3] = -self._a[3]
        return self._a.astype(np.float32).copy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "random-walk", "step_std": self.step_std, "decay": self.decay,
                "gripper_flip_prob": self.gripper_flip_prob}


@dataclass
class PerturbedSource:
    """The expert, but each chunk of ``segment`` steps is replaced by random-walk motion with
    probability ``prob``; expert steps get Gaussian noise ``noise_std``. Reaches objects (so
    interactions are in the data) while its actions stay unpredictable from the frames."""

    prob: float = 0.5
    noise_std: float = 0.3
    segment: int = 8

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._walk = RandomWalkSource()
        self._walk.reset(rng)
        self._t = 0
        self._random = False

    def act(self, env: Any, frame: np.ndarray) -> np.ndarray:
        if self._t % self.segment == 0:
            self._random = bool(self._rng.random() < self.prob)
        self._t += 1
        if self._random:
            return self._walk.act(env, frame)
        a = env.expert_action() + self._rng.normal(0, self.noise_std, 4)
        return np.clip(a, -1, 1).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "perturbed", "prob": self.prob, "noise_std": self.noise_std,
                "segment": self.segment}


class PolicySource:
    """A policy checkpoint acting in chunks: observe, sample K actions, execute them, repeat."""

    def __init__(self, checkpoint: str, temperature: float = 1.0) -> None:
        import torch

        from wmpo.models.policy import Policy

        self.checkpoint = checkpoint
        self.temperature = temperature
        self.policy, manifest = Policy.from_checkpoint(checkpoint)
        self.sha = manifest.get("weights_sha256", "")[:12]
        self._gen = torch.Generator()

    def reset(self, rng: np.random.Generator) -> None:
        self._gen.manual_seed(int(rng.integers(0, 2**62)))
        self._queue: list[np.ndarray] = []

    def act(self, env: Any, frame: np.ndarray) -> np.ndarray:
        if not self._queue:
            chunk = self.policy.act(frame[None], [env.instruction], self.temperature, self._gen)[0]
            self._queue = list(chunk)
        return self._queue.pop(0)

    def describe(self) -> dict[str, Any]:
        return {"kind": "policy", "checkpoint": str(self.checkpoint), "checkpoint_sha256": self.sha,
                "temperature": self.temperature}


class VerifiedPolicySource(PolicySource):
    """The policy with verify-before-execute: at every chunk, N candidates are sampled, imagined by
    the simulator service at ``simulator_url`` and scored by its judge; the best is executed if the
    judge passes it, else N more are sampled, up to ``max_attempts`` (``wmpo_client.verify``).
    ``episode_stats`` reports the decisions' latency and outcome for the evaluation.

    After executing a chunk, what really happened goes back to the simulator's drift monitor
    (``report_outcome``): the real frame after every frame-stride actions (one per imagined
    frame; fewer if the episode ended mid-chunk) and whether the task succeeded during the chunk.
    The simulator's answers (PSNR, perceptual distance) are in ``episode_stats``; a failed report
    is counted, never fatal to the evaluation."""

    def __init__(self, checkpoint: str, temperature: float, simulator_url: str, candidates: int = 4,
                 max_attempts: int = 3) -> None:
        super().__init__(checkpoint, temperature)
        from wmpo_client import connect

        self.simulator_url = simulator_url
        self.candidates = candidates
        self.max_attempts = max_attempts
        self.client = connect(simulator_url, timeout=120.0)

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        self._seed = int(rng.integers(0, 2**31 - 1))
        self._decisions: list[Any] = []
        self._pending: Any = None  # the decision whose chunk is executing
        self._real: list[np.ndarray] = []  # frames after each of its actions so far
        self._real_success = False
        self._outcomes: list[dict[str, Any]] = []
        self._outcome_errors: list[str] = []

    def observe(self, frame: np.ndarray, success: bool) -> None:
        """The frame after an executed action and the task's success flag (from the episode loop)."""
        if self._pending is None:
            return
        self._real.append(frame)
        self._real_success = self._real_success or success
        if len(self._real) >= len(self._pending.chunk):
            self._report()

    def _report(self) -> None:
        d, real, success = self._pending, self._real, self._real_success
        self._pending, self._real, self._real_success = None, [], False
        if d is None or not d.request_id or d.imagined_frames < 1:
            return
        stride = max(len(d.chunk) // d.imagined_frames, 1)
        picked = real[stride - 1::stride][: d.imagined_frames]
        if not picked:
            return
        from wmpo_client.errors import SimulatorError

        try:
            out = self.client.report_outcome(d.request_id, d.candidate, np.stack(picked), success)
        except SimulatorError as e:
            self._outcome_errors.append(f"{e.code}: {e.message}"[:200])
            return
        self._outcomes.append({"psnr_mean_db": out.psnr_mean_db, "perceptual_mean": out.perceptual_mean,
                               "confidence": out.confidence, "success": out.success})

    def _propose(self, instruction: str) -> Any:
        def propose(frame: np.ndarray, n: int) -> np.ndarray:
            frames = np.repeat(frame[None], n, axis=0)
            return self.policy.act(frames, [instruction] * n, self.temperature, self._gen)
        return propose

    def act(self, env: Any, frame: np.ndarray) -> np.ndarray:
        if not self._queue:
            from wmpo_client.verify import verify_before_execute

            d = verify_before_execute(self.client, self._propose(env.instruction), frame, env.instruction,
                                      self.candidates, self.max_attempts, self._seed + 7 * len(self._decisions))
            self._decisions.append(d)
            self._pending, self._real, self._real_success = d, [], False
            self._queue = list(d.chunk)
        return self._queue.pop(0)

    def episode_stats(self) -> dict[str, Any]:
        self._report()  # a chunk cut short by the episode's end
        ds = self._decisions
        return {"decisions": len(ds), "decision_seconds": [round(d.seconds, 4) for d in ds],
                "executed_unverified": sum(d.verdict == "fallback" for d in ds),
                "imagine_calls": sum(d.attempts for d in ds),
                "outcomes": self._outcomes, "outcome_errors": self._outcome_errors}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "verified-policy", "candidates": self.candidates,
                "max_attempts": self.max_attempts}


def make_source(kind: str, *, noise_std: float = 0.5, perturb_prob: float = 0.5,
                checkpoint: str | None = None, temperature: float = 1.0, simulator_url: str | None = None,
                candidates: int = 4, max_attempts: int = 3, optimizer: dict[str, Any] | None = None) -> ActionSource:
    if kind == "expert":
        return ExpertSource(0.0)
    if kind == "noisy":
        if noise_std <= 0:
            raise ConfigError(f"--noise-std must be > 0 for the noisy source, got {noise_std}")
        return ExpertSource(noise_std)
    if kind == "random-walk":
        return RandomWalkSource()
    if kind == "perturbed":
        if not 0 <= perturb_prob <= 1:
            raise ConfigError(f"--perturb-prob must be in [0, 1], got {perturb_prob}")
        return PerturbedSource(prob=perturb_prob, noise_std=noise_std)
    if kind == "policy":
        if not checkpoint:
            raise ConfigError("the policy source needs --checkpoint")
        return PolicySource(checkpoint, temperature)
    if kind == "verified-policy":
        if not checkpoint or not simulator_url:
            raise ConfigError("the verified-policy source needs --checkpoint and a simulator URL")
        if candidates < 1 or max_attempts < 1:
            raise ConfigError(f"--candidates and --max-attempts must be >= 1, got {candidates}, {max_attempts}")
        return VerifiedPolicySource(checkpoint, temperature, simulator_url, candidates, max_attempts)
    if kind == "optimizer":  # the action optimizer in closed loop (wmpo.optimize.source)
        from wmpo.optimize.source import OptimizerSource

        opt = dict(optimizer or {})
        if not opt.get("generator") or not opt.get("vae"):
            raise ConfigError("the optimizer source needs a plan generator and a trajectory VAE checkpoint")
        return OptimizerSource(policy=checkpoint, temperature=temperature, **opt)
    raise ConfigError(f"unknown source {kind!r}; valid sources: {', '.join(SOURCE_KINDS)}")
