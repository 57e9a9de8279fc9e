"""GRPO in imagination: group advantages, the clipped surrogate, dynamic sampling (WMPO Alg. 1).

The whole objective, in one place:

    A_i       = (R_i - mean(R_group)) / (std(R_group) + eps)        per rollout i of a group
    r_{i,c}   = exp(log pi(chunk_c | o_c) - log pi_old(chunk_c | o_c))  per chunk c of rollout i
    L         = - mean_{i,c} min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i)

with eps_low = 0.20 and eps_high = 0.28 ("clip-higher"), no KL term and no reference model,
old log-probs stored at rollout time. Departures from the paper:

- the unit of the ratio is an action chunk (K x D tokens decoded in parallel, whose log-prob
  is the sum of its token log-probs), as in WMPO's eq. 3; the mean is over all chunks of the
  mini-batch (DAPO's token-level normalization with chunks as tokens), so long rollouts weigh
  more than short ones;
- std uses the population formula (ddof 0), and groups whose rewards are all equal are dropped
  before this is computed (dynamic sampling), so the std is never 0 in practice; ``eps`` only
  guards the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

EPS_LOW = 0.20
EPS_HIGH = 0.28


def group_advantages(rewards: Sequence[float] | np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(R - mean) / std over one group's rewards (G,)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"a group needs at least 2 rewards in a 1-D array, got shape {r.shape}")
    return (r - r.mean()) / (r.std() + eps)


def is_informative(rewards: Sequence[float] | np.ndarray) -> bool:
    """Dynamic sampling: a group whose rewards are all equal has zero advantages and teaches nothing."""
    r = np.asarray(rewards, dtype=np.float64)
    return bool(r.size >= 2 and not np.allclose(r, r[0]))


def clipped_surrogate(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float = EPS_LOW, eps_high: float = EPS_HIGH) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss over N chunks: new/old log-probs (N,) and each chunk's rollout advantage (N,).

    Returns (loss, stats) where stats has the clip fraction and the approximate KL to the
    rollout policy (diagnostics only; neither enters the loss)."""
    if not (new_logp.shape == old_logp.shape == advantages.shape) or new_logp.ndim != 1:
        raise ValueError(f"new_logp {tuple(new_logp.shape)}, old_logp {tuple(old_logp.shape)} and advantages "
                         f"{tuple(advantages.shape)} must all be the same (N,)")
    log_ratio = new_logp - old_logp.detach()
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_frac = ((ratio < 1 - eps_low) & (advantages < 0) | (ratio > 1 + eps_high) & (advantages > 0)).float().mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()  # k3 estimator of KL(old || new)
    return loss, {"clip_fraction": clip_frac.item(), "approx_kl": approx_kl.item()}
