"""Few-step ODE sampling for rectified flow: time grid and the Euler solver.

Integrates dz/dt = v(z, t) from t=1 (noise) to t=0 (data). Euler on the rectified-flow ODE
is one line; it is written here rather than taken from diffusers because the rollout needs
per-frame times and a cached context, which diffusers' scheduler objects do not model.
"""

from __future__ import annotations

import torch


def flow_timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """(steps + 1,) decreasing times from 1 to 0. ``shift`` > 1 spends more steps at high noise
    (SD3's time shift ``t' = s t / (1 + (s - 1) t)``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


def euler_step(z: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    return z + (t_next - t) * velocity
