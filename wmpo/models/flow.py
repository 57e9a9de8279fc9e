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

from wmpo.models.video_dit import VideoDiT


@dataclass
class FlowBatch:
    latents: torch.Tensor  # (B, F, C, h, w) clean; frame 0 is the anchor
    actions: torch.Tensor  # (B, F, stride*4)
    has_action: torch.Tensor  # (B, F) bool
    positions: torch.Tensor  # (B, F) long
    n_context: torch.Tensor  # (B,) frames [0, n_context) are context (anchor included)


def noise_like(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=gen, dtype=x.dtype)


def flow_matching_loss(model: VideoDiT, batch: FlowBatch, gen: torch.Generator | None = None,
                       context_noise_max: float = 0.3, action_dropout: float = 0.0) -> torch.Tensor:
    z0 = batch.latents
    b, f = z0.shape[:2]
    is_ctx = torch.arange(f)[None, :] < batch.n_context[:, None]  # (B, F)
    has_action = batch.has_action
    if action_dropout > 0:
        drop = torch.rand(b, 1, generator=gen) < action_dropout  # (B, 1): whole sample
        has_action = has_action & ~(drop & ~is_ctx)
    t_gen = torch.sigmoid(torch.randn(b, 1, generator=gen)).expand(b, f)  # logit-normal, shared per sample
    t_ctx = torch.rand(b, f, generator=gen) * context_noise_max
    t = torch.where(is_ctx, t_ctx, t_gen)  # (B, F)
    eps = noise_like(z0, gen)
    tt = t[..., None, None, None]
    zt = (1 - tt) * z0 + tt * eps
    v = model(zt, t, batch.actions, has_action, batch.positions)
    err = ((v - (eps - z0)) ** 2).mean((2, 3, 4))  # (B, F)
    gen_mask = (~is_ctx).float()
    return (err * gen_mask).sum() / gen_mask.sum()
