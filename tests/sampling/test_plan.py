"""The plan generator's sampler: deterministic by seed, the null plan ignores the latent, and
its gradient with respect to the trajectory latent is the true one (finite differences)."""

import pytest
import torch

from wmpo.models.video_dit import PRESETS, VideoDiT
from wmpo.sampling.plan import imagine_plan
from wmpo.sampling.rollout import SamplerConfig

CFG = PRESETS["tiny"].with_plan(tokens=2, plan_dim=3, plan_frames=8, text_dim=0)


def plan_model(seed: int = 0) -> VideoDiT:
    torch.manual_seed(seed)
    model = VideoDiT(CFG)
    with torch.no_grad():  # a "trained" model: perturb every weight, zero-initialized ones included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval().requires_grad_(False)


def run(model, tokens, has=None, seeds=(1, 2), steps=2, checkpoint=False):
    b = tokens.shape[0]
    start = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=tokens.dtype)
    has = torch.ones(b, dtype=torch.bool) if has is None else has
    return imagine_plan(model, start, tokens, has, None, list(seeds), SamplerConfig(steps=steps), chunks=2,
                        chunk_frames=4, checkpoint=checkpoint)


def test_plan_is_deterministic_by_seed_and_the_null_plan_ignores_the_latent():
    model = plan_model()
    z = torch.randn(2, 2, 3)
    out = run(model, z)
    assert out.shape == (2, 8, 4, 8, 8)
    assert torch.equal(out, run(model, z))
    assert not torch.allclose(out, run(model, z, seeds=(3, 4)))
    assert not torch.allclose(out, run(model, -z))  # the latent conditions the future
    null = torch.zeros(2, dtype=torch.bool)
    assert torch.equal(run(model, z, null), run(model, -z, null))


def assert_gradient_matches_finite_differences(f, x: torch.Tensor, indices: list[tuple[int, ...]],
                                               eps: float = 1e-6) -> torch.Tensor:
    """Autograd's gradient of the scalar f at x against central differences at `indices`."""
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xg), xg)
    for idx in indices:
        dx = torch.zeros_like(x)
        dx[idx] = eps
        fd = (f(x + dx) - f(x - dx)) / (2 * eps)
        assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-4, abs=1e-8)
    return grad


def test_gradient_matches_finite_differences():
    torch.set_default_dtype(torch.float64)
    try:
        model = plan_model().double()
        z = torch.randn(1, 2, 3)
        weights = torch.randn(1, 8, 4, 8, 8)

        def f(z):
            return (run(model, z, seeds=(1,), checkpoint=True) * weights).sum()

        assert_gradient_matches_finite_differences(f, z, [(0, 0, 0), (0, 1, 2), (0, 0, 1)])
    finally:
        torch.set_default_dtype(torch.float32)


def test_bad_calls_are_clear_errors():
    with pytest.raises(ValueError, match="no plan conditioning"):
        imagine_plan(VideoDiT(PRESETS["tiny"]), torch.zeros(1, 4, 8, 8), torch.zeros(1, 2, 3),
                     torch.ones(1, dtype=torch.bool), None, [0], SamplerConfig(), 2, 4)
    with pytest.raises(ValueError, match="exceed the model's plan"):
        imagine_plan(plan_model(), torch.zeros(1, 4, 8, 8), torch.zeros(1, 2, 3), torch.ones(1, dtype=torch.bool),
                     None, [0], SamplerConfig(), 3, 4)
    with pytest.raises(ValueError, match="one seed per plan"):
        run(plan_model(), torch.zeros(2, 2, 3), seeds=(1,))


def world_model_dit(seed: int = 0) -> VideoDiT:
    """An action-conditioned world model (no plan conditioning), perturbed like `plan_model`."""
    torch.manual_seed(seed)
    model = VideoDiT(PRESETS["tiny"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval().requires_grad_(False)


def run_actions(model, actions, seeds=(1,), checkpoint=False):
    b = actions.shape[0]
    start = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=actions.dtype)
    return imagine_plan(model, start, None, None, None, list(seeds), SamplerConfig(steps=2), chunks=2,
                        chunk_frames=4, checkpoint=checkpoint, actions=actions)


def test_actions_drive_a_world_model_and_their_gradient_is_the_true_one():
    model = world_model_dit()
    a = torch.rand(1, 16, 4) * 2 - 1
    out = run_actions(model, a)
    assert out.shape == (1, 8, 4, 8, 8)
    assert torch.equal(out, run_actions(model, a))
    assert not torch.allclose(out, run_actions(model, -a))  # the actions condition the future
    torch.set_default_dtype(torch.float64)
    try:
        model = world_model_dit().double()
        a = torch.rand(1, 16, 4) * 2 - 1
        weights = torch.randn(1, 8, 4, 8, 8)

        def f(a):
            return (run_actions(model, a, checkpoint=True) * weights).sum()

        grad = assert_gradient_matches_finite_differences(f, a, [(0, 0, 0), (0, 7, 2), (0, 15, 3)])
        assert grad[0, 0].abs().sum() > 0 and grad[0, 15].abs().sum() > 0  # first and last step reach the loss
    finally:
        torch.set_default_dtype(torch.float32)
    with pytest.raises(ValueError, match=r"actions must be \(1, 16, 4\)"):
        run_actions(world_model_dit(), torch.zeros(1, 8, 4))
    with pytest.raises(ValueError, match="tokens.*or per-step actions"):
        imagine_plan(world_model_dit(), torch.zeros(1, 4, 8, 8), None, None, None, [0], SamplerConfig(), 2, 4)
