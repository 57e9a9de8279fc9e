"""Test-time trajectory-latent optimization through the frozen plan generator (MVISTA-4D 4.4).

For each plan: ``z* = argmin_z D(G(l, z), V) + lambda ||z||^2``, where G is the plan generator
sampled with a few denoising steps (``wmpo.sampling.plan.imagine_plan``, differentiable), l
the start frame and instruction, V the target future and z the trajectory latent (S tokens of
width Z, in the trajectory VAE's prior space, so the L2 term pulls toward likely trajectories).

D is the mean squared error in the frame autoencoder's latent space over the plan frames that
have a target (all of them for a clip, the last one for a goal image): the generator works in
that space, so no decoder sits in the gradient path. The paper does not pin D down.

Many plans are optimized together: one step is one batched forward and backward of the
generator over every plan in the batch, and each plan keeps its own Adam moments and step
count (``PlanProblem``), so plans can join and leave between steps (the service's engine
batches steps of plans that arrived at different times). Adam is written out (a few lines)
rather than taken from ``torch.optim`` because a torch optimizer owns one fixed set of
parameters, and here the batch's rows change from step to step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from wmpo.models.video_dit import VideoDiT
from wmpo.sampling.plan import imagine_plan
from wmpo.sampling.rollout import SamplerConfig

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class PlanProblem:
    """One plan's optimization state."""

    start: torch.Tensor  # (C, h, w) latent of the current frame
    text: torch.Tensor | None  # (E,) instruction embedding
    target: torch.Tensor  # (P, C, h, w) target future latents
    weights: torch.Tensor  # (P,) which plan frames the distance counts (sum > 0)
    z: torch.Tensor  # (S, Z) the trajectory latent being optimized
    seed: int  # the generator's noise (fixed for the whole optimization)
    lr: float
    l2: float
    m: torch.Tensor | None = None  # Adam moments
    v: torch.Tensor | None = None
    # (T, 4) with an anchored guess: the guess minus its VAE round trip, added to every decoding
    # of z, so the plan starts at exactly the given actions (``PlannerConfig.anchor``).
    offset: torch.Tensor | None = None
    steps_done: int = 0
    trace: list[float] = field(default_factory=list)  # objective before each update
    distance: list[float] = field(default_factory=list)  # D alone


def decoded_actions(decode: Callable[[torch.Tensor], torch.Tensor], problems: list[PlanProblem],
                    z: torch.Tensor) -> torch.Tensor:
    """The plans' actions (B, T, 4) under latents z: the VAE's decoding plus each anchored plan's
    offset, in the action range."""
    actions = decode(z)
    if all(p.offset is None for p in problems):
        return actions
    offsets = torch.stack([torch.zeros_like(actions[0]) if p.offset is None else p.offset for p in problems])
    return (actions + offsets).clamp(-1, 1)


def plan_future(model: VideoDiT, problems: list[PlanProblem], z: torch.Tensor, sampler: SamplerConfig,
                chunks: int, chunk_frames: int, checkpoint: bool = False,
                decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The plans' future (B, P, C, h, w) under latents z (B, S, Z), differentiable in z. Without
    ``decode`` the model reads z as its plan tokens (the plan generator); with it, z is decoded
    to per-step actions (B, T, 4) that drive an action-conditioned world model."""
    start = torch.stack([p.start for p in problems])
    seeds = [p.seed for p in problems]
    if decode is not None:
        return imagine_plan(model, start, None, None, None, seeds, sampler, chunks, chunk_frames,
                            checkpoint=checkpoint, actions=decoded_actions(decode, problems, z))
    text = torch.stack([p.text for p in problems]) if problems[0].text is not None else None
    has = torch.ones(len(problems), dtype=torch.bool)
    return imagine_plan(model, start, z, has, text, seeds, sampler, chunks, chunk_frames, checkpoint=checkpoint)


def plan_objective(model: VideoDiT, problems: list[PlanProblem], z: torch.Tensor, sampler: SamplerConfig,
                   chunks: int, chunk_frames: int, checkpoint: bool = False,
                   decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-plan objective and distance, each (B,), for latents z (B, S, Z); differentiable in z."""
    future = plan_future(model, problems, z, sampler, chunks, chunk_frames, checkpoint, decode)
    target = torch.stack([p.target for p in problems])
    w = torch.stack([p.weights for p in problems])  # (B, P)
    err = ((future - target) ** 2).mean((2, 3, 4))  # (B, P)
    dist = (err * w).sum(1) / w.sum(1)
    l2 = torch.tensor([p.l2 for p in problems])
    return dist + l2 * z.pow(2).mean((1, 2)), dist


def optimization_step(model: VideoDiT, problems: list[PlanProblem], sampler: SamplerConfig, chunks: int,
                      chunk_frames: int, checkpoint: bool = False,
                      decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """One Adam step on every plan's latent: one batched forward + backward of the generator.
    The generator's weights must not require gradients (the planner freezes them)."""
    z = torch.stack([p.z for p in problems]).detach().requires_grad_(True)
    with torch.enable_grad():
        obj, dist = plan_objective(model, problems, z, sampler, chunks, chunk_frames, checkpoint, decode)
        (grad,) = torch.autograd.grad(obj.sum(), z)  # plans are independent: each row is its own gradient
    obj, dist = obj.detach(), dist.detach()
    b1, b2 = ADAM_BETAS
    for i, p in enumerate(problems):
        g = grad[i]
        p.m = g * (1 - b1) if p.m is None else b1 * p.m + (1 - b1) * g
        p.v = g * g * (1 - b2) if p.v is None else b2 * p.v + (1 - b2) * g * g
        p.steps_done += 1
        m_hat = p.m / (1 - b1 ** p.steps_done)
        v_hat = p.v / (1 - b2 ** p.steps_done)
        p.z = (p.z - p.lr * m_hat / (v_hat.sqrt() + ADAM_EPS)).detach()
        p.trace.append(float(obj[i]))
        p.distance.append(float(dist[i]))
