"""GRPO math against hand-computed values."""

import numpy as np
import pytest
import torch

from wmpo.rl.grpo import clipped_surrogate, group_advantages, is_informative


def test_advantages_are_standardized_per_group():
    a = group_advantages([1, 0, 0, 1])
    # mean 0.5, population std 0.5
    assert a == pytest.approx([1, -1, -1, 1], abs=1e-5)
    a = group_advantages([1, 0, 0, 0])
    # mean 0.25, std sqrt(0.1875)
    s = np.sqrt(0.1875)
    assert a == pytest.approx([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s], abs=1e-5)
    with pytest.raises(ValueError):
        group_advantages([1.0])


def test_dynamic_sampling_drops_all_equal_groups():
    assert not is_informative([0, 0, 0, 0])
    assert not is_informative([1, 1])
    assert is_informative([0, 1, 0, 0])


def test_surrogate_clips_asymmetrically():
    old = torch.zeros(4)
    # ratios 1.5, 1.5, 0.5, 0.5 with advantages +1, -1, +1, -1
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = clipped_surrogate(new, old, adv)
    # per chunk min(r A, clip(r, 0.8, 1.28) A):
    #   r=1.5, A=+1: min(1.5, 1.28) = 1.28
    #   r=1.5, A=-1: min(-1.5, -1.28) = -1.5
    #   r=0.5, A=+1: min(0.5, 0.8) = 0.5
    #   r=0.5, A=-1: min(-0.5, -0.8) = -0.8
    assert loss.item() == pytest.approx(-(1.28 - 1.5 + 0.5 - 0.8) / 4)
    assert stats["clip_fraction"] == pytest.approx(0.5)  # the first and the last chunk are clipped


def test_surrogate_gradient_vanishes_outside_the_trust_region():
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 1.1])).requires_grad_()
    loss, _ = clipped_surrogate(new, old, torch.tensor([1.0, 1.0]))
    loss.backward()
    # clipped chunk: no gradient; in-range chunk: d(-r/2)/dlogp = -r/2
    assert new.grad.tolist() == pytest.approx([0.0, -1.1 / 2])


def test_at_the_old_policy_the_loss_is_minus_the_mean_advantage_and_kl_is_zero():
    logp = torch.randn(6)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0])
    loss, stats = clipped_surrogate(logp.clone(), logp, adv)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same"):
        clipped_surrogate(torch.zeros(3), torch.zeros(3), torch.zeros(2))
