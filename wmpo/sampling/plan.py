"""Sampling the plan generator: a whole plan's future from a start frame, differentiably.

The action optimizer's generator (``VideoDiT`` with plan conditioning) imagines the
``chunks`` AR steps of a plan from the current frame, the instruction and a trajectory latent
(or the null plan: the instruction-only future). Unlike ``rollout.step_rollouts`` this runs all
AR steps in one call, keeps no per-rollout state, and can run with gradients enabled: the
optimizer backpropagates the distance to a target future into the trajectory latent through
every denoising step. So that the objective is a fixed function of the latent, every noise
tensor comes from a per-plan seed, drawn in the same order on every call. With
``checkpoint=True`` each AR step is recomputed in the backward pass instead of storing its
activations (torch.utils.checkpoint), trading one extra forward for memory.

Frames carry no per-frame actions (the plan is the only action input); the first AR step's
context is the start frame as anchor and as the one history frame, as in ``start_rollout``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from wmpo.models.video_dit import PlanCondition, VideoDiT
from wmpo.sampling.rollout import SamplerConfig, denoise_frames


def imagine_plan(model: VideoDiT, start: torch.Tensor, tokens: torch.Tensor, has_plan: torch.Tensor,
                 text: torch.Tensor | None, seeds: list[int], sampler: SamplerConfig, chunks: int,
                 chunk_frames: int, checkpoint: bool = False) -> torch.Tensor:
    """Start latents (B, C, h, w), trajectory tokens (B, S, Z), has_plan (B,), instruction
    embeddings (B, E) -> the imagined plan (B, chunks * chunk_frames, C, h, w)."""
    mc = model.config
    if not mc.has_plan:
        raise ValueError("this world model has no plan conditioning; train one with --trajectory-vae")
    if chunks * chunk_frames > mc.plan_frames:
        raise ValueError(f"{chunks} chunks of {chunk_frames} frames exceed the model's plan of {mc.plan_frames} frames")
    b = start.shape[0]
    if len(seeds) != b:
        raise ValueError(f"need one seed per plan ({b}), got {len(seeds)}")
    shape = tuple(start.shape[1:])
    sampler = replace(sampler, action_guidance=1.0)  # no per-frame actions to guide
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    history, history_index = start[:, None], torch.zeros(b, 1, dtype=torch.long)
    out = []
    for c in range(chunks):
        n_recent = min(history.shape[1], sampler.context_frames)
        ctx = torch.cat([start[:, None], history[:, -n_recent:]], 1)  # (B, F_ctx, C, h, w)
        f_ctx = ctx.shape[1]
        index = torch.cat([torch.zeros(b, 1, dtype=torch.long), history_index[:, -n_recent:],
                           torch.arange(c * chunk_frames + 1, (c + 1) * chunk_frames + 1).expand(b, chunk_frames)], 1)
        ctx_t = torch.full((b, f_ctx), sampler.context_noise)
        ctx_t[:, 0] = sampler.anchor_noise(c)
        # Noise in a fixed order per plan (context corruption, then the generation start), drawn
        # outside the checkpointed function so a recomputation sees the same tensors.
        ctx_eps = torch.stack([torch.randn((f_ctx, *shape), generator=g) for g in gens])
        noise = torch.stack([torch.randn((chunk_frames, *shape), generator=g) for g in gens])
        plan = PlanCondition(tokens, has_plan, index, text)

        def step(ctx: torch.Tensor, ctx_eps: torch.Tensor, noise: torch.Tensor, tokens: torch.Tensor,
                 plan: PlanCondition = plan, ctx_t: torch.Tensor = ctx_t) -> torch.Tensor:
            plan = PlanCondition(tokens, plan.has_plan, plan.frame_index, plan.text)
            zero_act = torch.zeros(b, ctx.shape[1], mc.frame_action_dim)
            return denoise_frames(model, ctx, zero_act, torch.zeros(b, ctx.shape[1], dtype=torch.bool), ctx_t,
                                  ctx_eps, noise, torch.zeros(b, chunk_frames, mc.frame_action_dim),
                                  torch.zeros(b, chunk_frames, dtype=torch.bool), sampler, plan)

        if checkpoint and torch.is_grad_enabled():
            new = activation_checkpoint(step, ctx, ctx_eps, noise, tokens, use_reentrant=False)
        else:
            new = step(ctx, ctx_eps, noise, tokens)
        out.append(new)
        history = torch.cat([history, new], 1)[:, -sampler.context_frames:]
        history_index = torch.cat([history_index, index[:, f_ctx:]], 1)[:, -sampler.context_frames:]
    return torch.cat(out, 1)
