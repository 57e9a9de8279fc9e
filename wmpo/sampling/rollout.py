"""Autoregressive rollout of the video DiT in latent space.

Each AR step takes a chunk of K actions and generates K / frame_stride latent frames. The
context is the first-frame anchor plus the most recent ``context_frames`` latent frames
(RAW-Dream's anchor + recent window). Context frames are re-noised at 0.05 at every AR step;
the anchor's noise grows with the AR step s as ``min(0.01 * max(s - 3, 0), 0.3)`` so stale
layout stops being pasted into later frames ("ghosting").

Every rollout owns a ``torch.Generator``: all its noise (context corruption and initial
generation noise) is drawn from it in a fixed order, so a seed reproduces a rollout exactly
and a fresh seed replays the same actions under new noise. ``fork`` makes G rollouts that
share the encoded start and differ only in their generators.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from wmpo.models.video_dit import PlanCondition, VideoDiT
from wmpo.sampling.schedule import euler_step, flow_timesteps


@dataclass
class SamplerConfig:
    steps: int = 8  # denoising steps (function evaluations) per AR step
    shift: float = 1.0
    context_frames: int = 4  # recent latent frames kept as context, besides the anchor
    context_noise: float = 0.05
    anchor_noise_rate: float = 0.01
    anchor_noise_delay: int = 3
    anchor_noise_max: float = 0.3
    use_cache: bool = True
    action_guidance: float = 1.0  # classifier-free guidance on the actions; 1 = off (one pass per step)

    def anchor_noise(self, ar_step: int) -> float:
        return min(self.anchor_noise_rate * max(ar_step - self.anchor_noise_delay, 0), self.anchor_noise_max)


@dataclass
class Rollout:
    """One imagined trajectory: the anchor, a bounded history window and its own RNG."""

    seed: int
    anchor: torch.Tensor  # (C, h, w) clean latent of the first frame
    history: torch.Tensor  # (T, C, h, w) most recent latent frames (real or imagined), T <= context
    history_actions: torch.Tensor  # (T, stride*4), zeros where there was no action
    history_has_action: torch.Tensor  # (T,) bool
    ar_step: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self) -> None:
        self.generator.manual_seed(self.seed)

    def fork(self, seed: int) -> Rollout:
        """Same start (shared tensors, not copies), new noise."""
        return Rollout(seed, self.anchor, self.history, self.history_actions, self.history_has_action,
                       self.ar_step)

    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in
                   (self.anchor, self.history, self.history_actions, self.history_has_action))


def start_rollout(anchor: torch.Tensor, seed: int, history: torch.Tensor | None = None,
                  history_actions: torch.Tensor | None = None, action_width: int = 8) -> Rollout:
    """A rollout from a start latent (C, h, w); optionally with real history frames after it."""
    if history is None:
        history = anchor[None]
        history_actions = torch.zeros(1, action_width, device=anchor.device)
        has = torch.zeros(1, dtype=torch.bool, device=anchor.device)
    else:
        has = torch.ones(len(history), dtype=torch.bool, device=anchor.device)
        if history_actions is None:
            raise ValueError("history_actions are required with history")
    return Rollout(seed, anchor, history, history_actions, has)


def _context_batch(rollouts: list[Rollout], cfg: SamplerConfig):
    """Stack anchors + recent history of rollouts that have the same context length."""
    n_recent = min(len(rollouts[0].history), cfg.context_frames)
    lat = torch.stack([torch.cat([r.anchor[None], r.history[-n_recent:]]) for r in rollouts])
    act = torch.stack([torch.cat([torch.zeros_like(r.history_actions[:1]), r.history_actions[-n_recent:]])
                       for r in rollouts])
    has = torch.stack([torch.cat([torch.zeros(1, dtype=torch.bool, device=lat.device),
                                  r.history_has_action[-n_recent:]]) for r in rollouts])
    t = torch.full(lat.shape[:2], cfg.context_noise, device=lat.device)
    t[:, 0] = torch.tensor([cfg.anchor_noise(r.ar_step) for r in rollouts], device=lat.device)
    return lat, act, has, t, n_recent


@torch.no_grad()
def step_rollouts(model: VideoDiT, rollouts: list[Rollout], actions: torch.Tensor,
                  cfg: SamplerConfig) -> torch.Tensor:
    """Advance every rollout by one chunk of actions (B, K, 4) -> new latents (B, K/stride, C, h, w).

    Rollouts whose history windows differ in length are run as separate sub-batches. Runs on
    the rollouts' device (the model's); the noise is drawn on the CPU from each rollout's
    generator, so a seed gives the same noise on every device.
    """
    mc = model.config
    b, k, d = actions.shape
    n_new = k // mc.frame_stride
    out = torch.empty(b, n_new, mc.latent_channels, mc.latent_size, mc.latent_size, device=rollouts[0].anchor.device)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rollouts):
        groups.setdefault(min(len(r.history), cfg.context_frames), []).append(i)
    for idx in groups.values():
        out[idx] = _step_group(model, [rollouts[i] for i in idx], actions[idx], cfg)
    return out


def _step_group(model: VideoDiT, rollouts: list[Rollout], actions: torch.Tensor,
                cfg: SamplerConfig) -> torch.Tensor:
    mc = model.config
    b, k, _ = actions.shape
    n_new = k // mc.frame_stride
    ctx, ctx_act, ctx_has, ctx_t, n_recent = _context_batch(rollouts, cfg)
    f_ctx = ctx.shape[1]
    shape = (mc.latent_channels, mc.latent_size, mc.latent_size)
    # Noise in a fixed order per rollout: context corruption, then the generation start.
    ctx_eps = torch.stack([torch.randn((f_ctx, *shape), generator=r.generator) for r in rollouts]).to(ctx.device)
    z = torch.stack([torch.randn((n_new, *shape), generator=r.generator) for r in rollouts]).to(ctx.device)
    gen_act = actions.reshape(b, n_new, mc.frame_action_dim).float().to(ctx.device)
    gen_has = torch.ones(b, n_new, dtype=torch.bool, device=ctx.device)
    z = denoise_frames(model, ctx, ctx_act, ctx_has, ctx_t, ctx_eps, z, gen_act, gen_has, cfg)

    for r, new, a in zip(rollouts, z, gen_act, strict=True):
        keep = cfg.context_frames
        r.history = torch.cat([r.history, new])[-keep:]
        r.history_actions = torch.cat([r.history_actions, a])[-keep:]
        r.history_has_action = torch.cat([r.history_has_action, gen_has[0]])[-keep:]
        r.ar_step += 1
    return z


def denoise_frames(model: VideoDiT, ctx: torch.Tensor, ctx_act: torch.Tensor, ctx_has: torch.Tensor,
                   ctx_t: torch.Tensor, ctx_eps: torch.Tensor, z: torch.Tensor, gen_act: torch.Tensor,
                   gen_has: torch.Tensor, cfg: SamplerConfig, plan: PlanCondition | None = None) -> torch.Tensor:
    """One AR step's sampling loop: the context (B, F_ctx, C, h, w) corrupted to its levels
    ``ctx_t`` with ``ctx_eps``, then ``cfg.steps`` Euler steps from the noise ``z``
    (B, F_new, C, h, w) to the new frames. Differentiable when called with gradients enabled
    (the action optimizer backpropagates through it); ``plan`` covers context and new frames."""
    b, f_ctx = ctx.shape[:2]
    n_new = z.shape[1]
    tt = ctx_t[..., None, None, None]
    ctx_noisy = (1 - tt) * ctx + tt * ctx_eps
    ctx_pos = torch.arange(f_ctx, device=ctx.device).expand(b, f_ctx)
    gen_pos = torch.arange(f_ctx, f_ctx + n_new, device=ctx.device).expand(b, n_new)
    ctx_plan = plan.select(slice(0, f_ctx)) if plan is not None else None
    gen_plan = plan.select(slice(f_ctx, None)) if plan is not None else None

    # Plan arguments only for a plan generator: the exported backends (OrtDiT, TritonDiT) take
    # the world model's signature.
    ctx_extra = (ctx_plan,) if plan is not None else ()
    gen_extra = (gen_plan,) if plan is not None else ()
    full_extra = (plan,) if plan is not None else ()
    cache = model.build_cache(ctx_noisy, ctx_t, ctx_act, ctx_has, ctx_pos, *ctx_extra) if cfg.use_cache else None
    times = flow_timesteps(cfg.steps, cfg.shift)
    for i in range(cfg.steps):
        t_now, t_next = float(times[i]), float(times[i + 1])
        t_gen = torch.full((b, n_new), t_now, device=ctx.device)

        def velocity(z: torch.Tensor, t_gen: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
            if cache is not None:
                return model.forward_cached(z, t_gen, gen_act, has, gen_pos, cache, *gen_extra)
            return model(torch.cat([ctx_noisy, z], 1), torch.cat([ctx_t, t_gen], 1),
                         torch.cat([ctx_act, gen_act], 1), torch.cat([ctx_has, has], 1),
                         torch.cat([ctx_pos, gen_pos], 1), *full_extra,
                         gen_start=f_ctx)[:, f_ctx:]

        v = velocity(z, t_gen, gen_has)
        if cfg.action_guidance != 1.0:  # the context (and its cache) is shared by both passes
            v_free = velocity(z, t_gen, torch.zeros_like(gen_has))
            v = v_free + cfg.action_guidance * (v - v_free)
        z = euler_step(z, v, t_now, t_next)
    return z
