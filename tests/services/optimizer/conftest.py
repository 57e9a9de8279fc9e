"""Fixtures for the optimizer service tests: a tiny planner with random weights.

As tests/optimize/test_planner.py builds it: a tiny frame autoencoder, a tiny plan-conditioned
DiT (text_dim=0, so no sentence model loads) whose future clearly depends on the plan, and a
tiny trajectory VAE (16 actions -> 2 tokens of 8; 8 plan frames of 64x64). Serving tests need a
real planner, not a good one: every step is a real forward and backward of the generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.optimizer.runtime import OptimizerRuntime
from services.optimizer.settings import OptimizerSettings
from wmpo.models.autoencoder import PRESETS as AE_PRESETS
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.trajectory_vae import PRESETS as VAE_PRESETS
from wmpo.models.trajectory_vae import TrajectoryVAE
from wmpo.models.video_dit import PRESETS, VideoDiT
from wmpo.optimize.planner import Planner, PlannerConfig, PlanRequest
from wmpo.sampling.rollout import SamplerConfig
from wmpo.sampling.world_model import TorchWorldModel

KEY = "optimizer-key-0123456789abcdef"
INSTRUCTION = "push the puck to the goal"
HORIZON, SIZE, PLAN_FRAMES = 16, 64, 8
# A world-model training run shares this machine: keep torch on one thread.
torch.set_num_threads(1)


def _perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def build_planner() -> Planner:
    torch.manual_seed(0)
    vae = _perturbed(TrajectoryVAE(VAE_PRESETS["tiny"]), 0.1, 1)
    dit = _perturbed(VideoDiT(PRESETS["tiny"].with_plan(tokens=2, plan_dim=8, plan_frames=8, text_dim=0)), 0.1, 2)
    with torch.no_grad():
        for block in dit.blocks:
            block.cross.proj.weight.mul_(20)
    wm = TorchWorldModel(FrameAutoencoder(AE_PRESETS["tiny"]).eval(), dit, SamplerConfig(steps=2))
    return Planner(wm, vae, None, PlannerConfig(steps=3, sampler_steps=2, target_steps=2),
                   {"generator_sha256": "tiny-test", "trajectory_vae_sha256": "tiny-vae"})


def save_planner(root: Path) -> tuple[Path, Path]:
    """The tiny planner saved as training saves its models: (generator dir, trajectory VAE dir)."""
    from wmpo.utils.checkpoint import save_checkpoint

    planner = build_planner()
    planner.generator.save(root / "generator", {"kind": "world-model"}, dtype=torch.float32)
    vae = planner.vae
    save_checkpoint(root / "vae", dict(vae.state_dict()), vae.checkpoint_config(), {"kind": "trajectory-vae"})
    return root / "generator", root / "vae"


class CountingPlanner(Planner):
    """The real tiny planner, with the plans of every `step` call recorded (never replaced);
    `fail` makes a step raise, as a backend failure would."""

    def __init__(self, inner: Planner) -> None:
        self.__dict__.update(inner.__dict__)
        self.step_calls: list[int] = []
        self.fail = False

    def step(self, problems: list[Any]) -> None:
        self.step_calls.append(len(problems))
        if self.fail:
            raise RuntimeError("secret backend detail at /srv/planner.py:42")
        super().step(problems)


@pytest.fixture(scope="session")
def planner() -> CountingPlanner:
    p = CountingPlanner(build_planner())
    # Warm torch up once (the first backward is slow), so tests time only their own work.
    p.plan([PlanRequest(frames(1, 0)[0], INSTRUCTION, steps=1)])
    p.step_calls.clear()
    return p


def frames(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def settings(**overrides: Any) -> OptimizerSettings:
    values: dict[str, Any] = {"api_keys": KEY, "max_wait_ms": 50.0, "max_steps": 8, "default_steps": 2}
    values.update(overrides)
    return OptimizerSettings(**values)


@contextlib.contextmanager
def served(planner: Planner, **overrides: Any) -> Iterator[tuple[str, str, OptimizerRuntime]]:
    """The optimizer (HTTP + gRPC, one runtime) on free loopback ports -> (http_url, grpc_target,
    runtime), as `wmpo serve optimizer` runs it."""
    from services.embedded import serve_app_in_thread
    from services.optimizer.server import build_app

    s = settings(host="127.0.0.1", port=0, grpc_port=0, **overrides)
    runtime = OptimizerRuntime(planner, s)
    with serve_app_in_thread(build_app(runtime, s), s, "optimizer", 60.0) as (http_url, grpc_target):
        yield http_url, grpc_target, runtime
