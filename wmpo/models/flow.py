"""Rectified-flow training objective for the video DiT (the denoiser's loss).

``z_t = (1 - t) z0 + t eps``; the network predicts the velocity ``eps - z0``; MSE on the
generated frames only. Each training window is split at a random point into context frames
(first-frame anchor + recent frames) and frames to generate. Context frames are corrupted at
a noise level drawn per frame from U[0, ``context_noise_max``] (0.3, RAW-Dream's U[0, 300]/1000)
so the model learns to trust but not copy its (imperfect, imagined) context. The generation
time is drawn from a logit-normal distribution (SD3), which concentrates training on the
middle of the path where few-step samplers need accuracy.

With probability ``action_dropout`` a sample's generated frames lose their actions (the null
action embedding instead), so the same network also predicts the action-free velocity; the
sampler can then amplify the effect of the actions with classifier-free guidance
(``SamplerConfig.action_guidance``). This is an addition to the papers' recipe, aimed at the
failure the calibration run showed: a model that continues the visible motion and ignores
the actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wmpo.models.video_dit import PlanCondition, VideoDiT


@dataclass
class FlowBatch:
    latents: torch.Tensor  # (B, F, C, h, w) clean; frame 0 is the anchor
    actions: torch.Tensor  # (B, F, stride*4)
    has_action: torch.Tensor  # (B, F) bool
    positions: torch.Tensor  # (B, F) long
    n_context: torch.Tensor  # (B,) frames [0, n_context) are context (anchor included)
    # Plan-generator training only (``LatentEpisodes.sample(plan_frames=...)``):
    plan_actions: torch.Tensor | None = None  # (B, plan_frames * stride, 4) env actions of the plan
    plan_index: torch.Tensor | None = None  # (B, F) long: each frame's index in the plan
    tasks: list[str] | None = None
    succeeded: torch.Tensor | None = None  # (B,) bool: the window's episode reached its task

    def to(self, device: torch.device | str) -> FlowBatch:
        """The tensors on ``device`` (training on a GPU). The windows and the per-sample random
        numbers still come from the run's CPU generator; ``noise_like`` draws a batch's noise on
        the GPU from a seed that generator gives."""
        move = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return FlowBatch(**move)


def noise_like(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    if x.device.type == "cpu" or gen is None:
        return torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    # On a GPU the noise is drawn there (drawing a batch's noise on the CPU and copying it costs
    # more than the step), from a generator seeded by ``gen``: still one seed, one run.
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.randn(x.shape, generator=torch.Generator(x.device).manual_seed(seed), dtype=x.dtype,
                       device=x.device)


def moving_mask(z0: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, F, C, h, w) clean latents -> (B, F, 1, h, w) float mask of latent pixels that change
    from the previous frame by more than ``threshold`` (channel-mean |change|), dilated by one
    latent pixel. Frame 0 (no previous frame) is all zeros; frame 1 follows the anchor, which is
    not its predecessor in time, but frames 0 and 1 are always context, never in the loss."""
    d = (z0[:, 1:] - z0[:, :-1]).abs().mean(2, keepdim=True)  # (B, F-1, 1, h, w)
    m = (d > threshold).float()
    m = F.max_pool2d(m.flatten(0, 1), 3, stride=1, padding=1).view_as(m)  # dilate by one latent pixel
    return torch.cat([torch.zeros_like(m[:, :1]), m], dim=1)  # (B, F, 1, h, w)


def flow_errors(model: VideoDiT, batch: FlowBatch, gen: torch.Generator | None = None,
                context_noise_max: float = 0.3, action_dropout: float = 0.0,
                plan: PlanCondition | None = None, features: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared velocity errors (B, F, C, h, w) and the generated-frame mask (B, F) as floats.
    ``plan``: the plan generator's condition; ``features``: a list that receives the last
    block's tokens (for the latent-consistency head)."""
    z0 = batch.latents
    b, f = z0.shape[:2]
    dev = z0.device
    is_ctx = torch.arange(f, device=dev)[None, :] < batch.n_context[:, None]  # (B, F)
    has_action = batch.has_action
    if action_dropout > 0:
        drop = torch.rand(b, 1, generator=gen).to(dev) < action_dropout  # (B, 1): whole sample
        has_action = has_action & ~(drop & ~is_ctx)
    t_gen = torch.sigmoid(torch.randn(b, 1, generator=gen)).to(dev).expand(b, f)  # logit-normal, per sample
    t_ctx = torch.rand(b, f, generator=gen).to(dev) * context_noise_max
    t = torch.where(is_ctx, t_ctx, t_gen)  # (B, F)
    eps = noise_like(z0, gen)
    tt = t[..., None, None, None]
    zt = (1 - tt) * z0 + tt * eps
    if features is None:
        v = model(zt, t, batch.actions, has_action, batch.positions, plan, gen_start=batch.n_context)
    else:
        v, x = model(zt, t, batch.actions, has_action, batch.positions, plan, return_features=True,
                     gen_start=batch.n_context)
        features.append(x)
    return (v - (eps - z0)) ** 2, (~is_ctx).float()  # (B, F, C, h, w), (B, F)


def flow_matching_loss(model: VideoDiT, batch: FlowBatch, gen: torch.Generator | None = None,
                       context_noise_max: float = 0.3, action_dropout: float = 0.0,
                       moving_weight: float = 0.0, moving_threshold: float = 0.1,
                       plan: PlanCondition | None = None, features: list[torch.Tensor] | None = None
                       ) -> torch.Tensor:
    """MSE of the velocity on the generated frames; moving latent pixels weighted by
    ``1 + moving_weight`` (0: the plain MSE of the papers)."""
    sq, gen_mask = flow_errors(model, batch, gen, context_noise_max, action_dropout, plan, features)
    if moving_weight <= 0:
        err = sq.mean((2, 3, 4))  # (B, F)
        return (err * gen_mask).sum() / gen_mask.sum()
    w = 1.0 + moving_weight * moving_mask(batch.latents, moving_threshold)  # (B, F, 1, h, w)
    w = w * gen_mask[..., None, None, None]
    return (sq * w).sum() / (w.sum() * sq.shape[2])


def plan_generator_loss(model: VideoDiT, batch: FlowBatch, tokens: torch.Tensor, text: torch.Tensor | None,
                        drop_prob: float, consistency_weight: float, gen: torch.Generator | None = None,
                        moving_weight: float = 0.0, moving_threshold: float = 0.1,
                        droppable: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The plan generator's objective (MVISTA-4D section 4.3): the flow loss conditioned on the
    trajectory tokens (B, S, Z) and the instruction, with the whole plan replaced by the null
    plan with probability ``drop_prob`` per sample, plus ``consistency_weight`` x the MSE of the
    latent-consistency head's tokens on the samples that kept their plan.

    ``droppable`` (B,) bool limits the null plan to those samples (e.g. windows of episodes that
    reached their task, so the instruction-only future is the future of doing the task); the
    others always keep their plan. The random draws are the same either way."""
    b = tokens.shape[0]
    keep = torch.rand(b, generator=gen) >= drop_prob  # (B,)
    if droppable is not None:
        keep = keep | ~droppable.to(keep.device)
    plan = PlanCondition(tokens, keep, batch.plan_index, text)
    feats: list[torch.Tensor] = []
    flow = flow_matching_loss(model, batch, gen, moving_weight=moving_weight, moving_threshold=moving_threshold,
                              plan=plan, features=feats)
    f = batch.latents.shape[1]
    gen_frames = (torch.arange(f)[None, :] >= batch.n_context[:, None]).float()  # (B, F)
    pred = model.consistency(feats[0], gen_frames)  # (B, S, Z)
    per_sample = ((pred - tokens) ** 2).mean((1, 2))  # (B,)
    cons = (per_sample * keep).sum() / keep.sum().clamp_min(1)
    return flow + consistency_weight * cons, {"flow": float(flow.detach()), "consistency": float(cons.detach()),
                                              "kept": float(keep.float().mean())}
