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

Two ways in for the plan. With ``tokens`` the plan generator reads the trajectory latent through
its cross-attention and frames carry no per-frame actions. With ``actions`` (per env step, e.g.
the trajectory VAE's decoding of the latent) the frames carry them through the model's
per-frame action conditioning, as in a world-model rollout (each new frame the actions that led
into it, context frames theirs, the anchor none): any action-conditioned world model can then
be the generator, and the gradient reaches the latent through the VAE's decoder. The first AR
step's context is the start frame as anchor and as the one history frame, as in
``start_rollout``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from wmpo.models.video_dit import PlanCondition, VideoDiT
from wmpo.sampling.rollout import SamplerConfig, denoise_frames


def imagine_plan(model: VideoDiT, start: torch.Tensor, tokens: torch.Tensor | None, has_plan: torch.Tensor | None,
                 text: torch.Tensor | None, seeds: list[int], sampler: SamplerConfig, chunks: int,
                 chunk_frames: int, checkpoint: bool = False, actions: torch.Tensor | None = None) -> torch.Tensor:
    """Start latents (B, C, h, w), trajectory tokens (B, S, Z) or None, has_plan (B,), instruction
    embeddings (B, E), per-env-step actions (B, T, 4) or None -> the imagined plan
    (B, chunks * chunk_frames, C, h, w)."""
    mc = model.config
    b = start.shape[0]
    frames = chunks * chunk_frames
    if tokens is not None:
        if not mc.has_plan:
            raise ValueError("this world model has no plan conditioning; train one with --trajectory-vae")
        if frames > mc.plan_frames:
            raise ValueError(f"{chunks} chunks of {chunk_frames} frames exceed the model's plan of {mc.plan_frames} frames")
    elif actions is None:
        raise ValueError("need a trajectory latent (tokens) or per-step actions")
    if len(seeds) != b:
        raise ValueError(f"need one seed per plan ({b}), got {len(seeds)}")
    width = mc.frame_action_dim
    if actions is not None:
        if actions.shape != (b, frames * mc.frame_stride, mc.action_dim):
            raise ValueError(f"actions must be ({b}, {frames * mc.frame_stride}, {mc.action_dim}) for {frames} "
                             f"frames of {mc.frame_stride} steps, got {tuple(actions.shape)}")
        frame_actions = actions.reshape(b, frames, width)
    else:
        frame_actions = torch.zeros(b, frames, width)
    new_has = torch.full((b, chunk_frames), actions is not None)
    shape = tuple(start.shape[1:])
    sampler = replace(sampler, action_guidance=1.0)  # no guidance inside the optimization
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    history, history_index = start[:, None], torch.zeros(b, 1, dtype=torch.long)
    history_act, history_has = torch.zeros(b, 1, width), torch.zeros(b, 1, dtype=torch.bool)
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
        ctx_act = torch.cat([torch.zeros(b, 1, width), history_act[:, -n_recent:]], 1)
        ctx_has = torch.cat([torch.zeros(b, 1, dtype=torch.bool), history_has[:, -n_recent:]], 1)
        new_act = frame_actions[:, c * chunk_frames:(c + 1) * chunk_frames]

        def step(ctx: torch.Tensor, ctx_eps: torch.Tensor, noise: torch.Tensor, tokens: torch.Tensor | None,
                 ctx_act: torch.Tensor, new_act: torch.Tensor, index: torch.Tensor = index,
                 ctx_has: torch.Tensor = ctx_has, ctx_t: torch.Tensor = ctx_t) -> torch.Tensor:
            plan = None if tokens is None else PlanCondition(tokens, has_plan, index, text)
            return denoise_frames(model, ctx, ctx_act, ctx_has, ctx_t, ctx_eps, noise, new_act, new_has,
                                  sampler, plan)

        if checkpoint and torch.is_grad_enabled():
            new = activation_checkpoint(step, ctx, ctx_eps, noise, tokens, ctx_act, new_act, use_reentrant=False)
        else:
            new = step(ctx, ctx_eps, noise, tokens, ctx_act, new_act)
        out.append(new)
        history = torch.cat([history, new], 1)[:, -sampler.context_frames:]
        history_index = torch.cat([history_index, index[:, f_ctx:]], 1)[:, -sampler.context_frames:]
        history_act = torch.cat([history_act, new_act], 1)[:, -sampler.context_frames:]
        history_has = torch.cat([history_has, new_has], 1)[:, -sampler.context_frames:]
    return torch.cat(out, 1)
