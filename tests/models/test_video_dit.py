import pytest
import torch

from wmpo.errors import ConfigError
from wmpo.models.flow import FlowBatch, flow_matching_loss, moving_mask
from wmpo.models.video_dit import PRESETS, VideoDiT, VideoDiTConfig, gated_residual, modulate


def inputs(cfg: VideoDiTConfig, b: int = 2, f: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, f, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    t = torch.rand(b, f, generator=g)
    a = torch.randn(b, f, cfg.frame_action_dim, generator=g)
    has = torch.ones(b, f, dtype=torch.bool)
    has[:, 0] = False
    pos = torch.arange(f).expand(b, f)
    return z, t, a, has, pos


def randomized(model: VideoDiT) -> VideoDiT:
    """Perturb every weight, zero-initialized ones included, so tests see a 'trained' model."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_identity_at_initialization():
    model = VideoDiT(PRESETS["tiny"]).eval()
    z, t, a, has, pos = inputs(model.config)
    x, t_emb, a_emb = model.embed(z, t, a, has, pos)
    mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool)
    for block in model.blocks:  # adaLN-Zero: gates are zero, so every block returns its input
        assert torch.equal(block(x, block.modulation(t_emb, a_emb), mask), x)
    assert torch.count_nonzero(model(z, t, a, has, pos)) == 0  # zero-initialized output


def test_block_causality():
    model = randomized(VideoDiT(PRESETS["tiny"]))
    z, t, a, has, pos = inputs(model.config)
    out = model(z, t, a, has, pos)
    z2, a2, t2 = z.clone(), a.clone(), t.clone()
    z2[:, 3:] += 1.0  # change frames 3 and 4 ...
    a2[:, 3:] = -a2[:, 3:]
    t2[:, 3:] = 0.9
    out2 = model(z2, t2, a2, has, pos)
    assert torch.allclose(out[:, :3], out2[:, :3], atol=1e-6)  # ... earlier frames do not move
    assert not torch.allclose(out[:, 3:], out2[:, 3:])


def test_actions_change_the_prediction():
    model = randomized(VideoDiT(PRESETS["tiny"]))
    z, t, a, has, pos = inputs(model.config)
    assert not torch.allclose(model(z, t, a, has, pos)[:, 1:], model(z, t, -a, has, pos)[:, 1:])


def test_cached_context_equals_full_sequence():
    model = randomized(VideoDiT(PRESETS["tiny"]))
    z, t, a, has, pos = inputs(model.config, f=7)
    full = model(z, t, a, has, pos)
    cache = model.build_cache(z[:, :3], t[:, :3], a[:, :3], has[:, :3], pos[:, :3])
    part = model.forward_cached(z[:, 3:], t[:, 3:], a[:, 3:], has[:, 3:], pos[:, 3:], cache)
    assert torch.allclose(full[:, 3:], part, atol=1e-5)


def test_flow_loss_trains_only_generated_frames():
    model = randomized(VideoDiT(PRESETS["tiny"])).train()
    z, t, a, has, pos = inputs(model.config, f=6)
    batch = FlowBatch(z, a, has, pos, torch.tensor([2, 4]))
    loss = flow_matching_loss(model, batch, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.blocks[0].ada_action[-1].weight.grad.abs().sum() > 0


def test_moving_mask_marks_what_moves_and_its_neighbours():
    z = torch.zeros(1, 4, 4, 8, 8)
    z[:, 2:, :, 3, 3] = 1.0  # a latent pixel appears at frame 2 and stays
    m = moving_mask(z, threshold=0.1)  # (1, 4, 1, 8, 8)
    assert m.shape == (1, 4, 1, 8, 8)
    assert m[0, 2, 0, 2:5, 2:5].eq(1).all() and m[0, 2].sum() == 9  # dilated by one latent pixel
    assert m[0, 0].sum() == 0 and m[0, 1].sum() == 0 and m[0, 3].sum() == 0


def test_moving_weight_zero_is_the_plain_loss_and_weighting_shifts_it():
    model = randomized(VideoDiT(PRESETS["tiny"])).train()
    z, t, a, has, pos = inputs(model.config, f=6)
    batch = FlowBatch(z, a, has, pos, torch.tensor([2, 4]))

    def loss(**kw):
        return flow_matching_loss(model, batch, torch.Generator().manual_seed(0), **kw)

    assert torch.equal(loss(), loss(moving_weight=0.0))
    # Random latents: every pixel "moves" at a low threshold (weighted mean = plain mean) and
    # none at a huge one, so the weighting only matters where some pixels move and others not.
    assert torch.allclose(loss(moving_weight=4.0, moving_threshold=1e-6), loss(), rtol=1e-5)
    assert torch.allclose(loss(moving_weight=4.0, moving_threshold=1e6), loss(), rtol=1e-5)
    assert not torch.allclose(loss(moving_weight=4.0, moving_threshold=1.0), loss(), rtol=1e-4)


def test_bad_inputs_are_clear_errors():
    model = VideoDiT(PRESETS["tiny"])
    z, t, a, has, pos = inputs(model.config)
    with pytest.raises(ValueError, match="actions must be"):
        model(z, t, a[..., :3], has, pos)
    with pytest.raises(ValueError, match="latents must be"):
        model(z[:, :, :2], t, a, has, pos)
    with pytest.raises(ConfigError, match="heads"):
        VideoDiTConfig(dim=30, heads=4)


def test_presets_scale_by_configuration():
    assert PRESETS["xl-1.3b"].dim == 1536
    n = sum(p.numel() for p in VideoDiT(PRESETS["small"]).parameters())
    assert 2e6 < n < 10e6
    play = PRESETS["play"]  # world model v2: 8x8-pixel tokens, about as many parameters
    assert play.tokens_per_frame == 4 * PRESETS["small"].tokens_per_frame
    assert 2e6 < sum(p.numel() for p in VideoDiT(play).parameters()) < 5e6


# ---------------------------------------------------------------- plan conditioning (optimizer)
def plan_config(text_dim: int = 6) -> VideoDiTConfig:
    return PRESETS["tiny"].with_plan(tokens=2, plan_dim=3, plan_frames=8, text_dim=text_dim)


def plan_inputs(cfg: VideoDiTConfig, b: int = 2, f: int = 5, seed: int = 1):
    from wmpo.models.video_dit import PlanCondition

    g = torch.Generator().manual_seed(seed)
    return PlanCondition(torch.randn(b, cfg.plan_tokens, cfg.plan_dim, generator=g),
                         torch.ones(b, dtype=torch.bool), torch.arange(f).expand(b, f).clone(),
                         torch.randn(b, cfg.text_dim, generator=g))


def test_plan_conditioning_starts_as_the_world_model_it_is_fine_tuned_from():
    base = randomized(VideoDiT(PRESETS["tiny"]))
    model = VideoDiT(plan_config()).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("plan_", "null_plan", "text_proj", "consistency_head"))
                                  or ".cross." in k for k in missing)
    z, t, a, has, pos = inputs(base.config)
    assert torch.equal(model(z, t, a, has, pos, plan_inputs(model.config)), base(z, t, a, has, pos))


def test_plan_tokens_condition_and_the_null_plan_ignores_them():
    model = randomized(VideoDiT(plan_config()))
    z, t, a, has, pos = inputs(model.config)
    plan = plan_inputs(model.config)
    other = plan_inputs(model.config, seed=2)
    other.text = plan.text
    out = model(z, t, a, has, pos, plan)
    assert not torch.allclose(out, model(z, t, a, has, pos, other))  # the trajectory matters
    plan.has_plan[:] = False
    other.has_plan[:] = False
    assert torch.equal(model(z, t, a, has, pos, plan), model(z, t, a, has, pos, other))  # null plan
    other.text = -plan.text
    assert not torch.allclose(model(z, t, a, has, pos, plan), model(z, t, a, has, pos, other))  # instruction


def test_plan_cached_context_equals_full_sequence_and_consistency_head_shape():
    model = randomized(VideoDiT(plan_config()))
    z, t, a, has, pos = inputs(model.config, f=7)
    plan = plan_inputs(model.config, f=7)
    full, feats = model(z, t, a, has, pos, plan, return_features=True)
    cache = model.build_cache(z[:, :3], t[:, :3], a[:, :3], has[:, :3], pos[:, :3], plan.select(slice(0, 3)))
    part = model.forward_cached(z[:, 3:], t[:, 3:], a[:, 3:], has[:, 3:], pos[:, 3:], cache, plan.select(slice(3, None)))
    assert torch.allclose(full[:, 3:], part, atol=1e-5)
    gen = (torch.arange(7) >= 3).float().expand(2, 7)
    assert model.consistency(feats, gen).shape == (2, 2, 3)


def test_plan_conditioning_errors_are_clear():
    z, t, a, has, pos = inputs(PRESETS["tiny"])
    with pytest.raises(ValueError, match="no plan conditioning"):
        VideoDiT(PRESETS["tiny"])(z, t, a, has, pos, plan_inputs(plan_config()))
    model = VideoDiT(plan_config())
    plan = plan_inputs(model.config)
    plan.text = None
    with pytest.raises(ValueError, match="instruction embedding"):
        model(z, t, a, has, pos, plan)
    with pytest.raises(ValueError, match="plan tokens must be"):
        model(z, t, a, has, pos, plan_inputs(plan_config(), b=2).__class__(
            torch.zeros(2, 5, 3), torch.ones(2, dtype=torch.bool), pos, torch.zeros(2, 6)))
    with pytest.raises(ConfigError, match="text_dim > 0 needs plan_tokens"):
        VideoDiTConfig(text_dim=4)


def motion_config() -> VideoDiTConfig:
    return VideoDiTConfig(**{**PRESETS["tiny"].to_dict(), "motion_conditioning": True})


def test_motion_is_the_displacement_commanded_since_the_context():
    model = VideoDiT(motion_config())
    c = model.config
    a = torch.ones(1, 6, c.frame_action_dim)  # every env action is (1, 1, 1, 1)
    has = torch.ones(1, 6, dtype=torch.bool)
    has[:, 0] = False
    m = model.motion(a, has, torch.tensor([3]))[0, :, 0] / 0.25  # in env actions
    stride = c.frame_stride
    assert m.tolist() == [0, 0, 0, stride, 2 * stride, 3 * stride]  # context frames: zero
    has[:, 4] = False  # a frame without actions (guidance's free pass) adds nothing and reads zero
    m = model.motion(a, has, torch.tensor([3]))[0, :, 0] / 0.25
    assert m.tolist() == [0, 0, 0, stride, 0, 2 * stride]


def test_motion_conditioning_starts_as_the_model_it_extends_and_keeps_the_cache_exact():
    base = randomized(VideoDiT(PRESETS["tiny"]))
    model = VideoDiT(motion_config())
    missing, unexpected = model.load_init(base.state_dict())
    assert not missing and not unexpected
    model.eval()
    z, t, a, has, pos = inputs(base.config, f=7)
    split = torch.full((2,), 3)
    assert torch.equal(model(z, t, a, has, pos, gen_start=split), base(z, t, a, has, pos))
    randomized(model)  # a trained motion input: the displacement now matters ...
    full = model(z, t, a, has, pos, gen_start=split)
    assert not torch.allclose(full, model(z, t, a, has, pos, gen_start=torch.full((2,), 5)))
    # ... and the cached path (context once, then the generated frames alone) is still exact.
    cache = model.build_cache(z[:, :3], t[:, :3], a[:, :3], has[:, :3], pos[:, :3])
    part = model.forward_cached(z[:, 3:], t[:, 3:], a[:, 3:], has[:, 3:], pos[:, 3:], cache)
    assert torch.allclose(full[:, 3:], part, atol=1e-5)
    with pytest.raises(ValueError, match="gen_start"):
        model(z, t, a, has, pos)


def test_per_frame_modulation_matches_per_token():
    """modulate / gated_residual broadcast a frame's (1, dim) vectors over its N tokens: the
    same as repeating them per token, without the copy."""
    torch.manual_seed(0)
    b, f, n, d = 2, 3, 5, 8
    x, y = torch.randn(b, f * n, d), torch.randn(b, f * n, d)
    shift, scale, gate = (torch.randn(b, f, 1, d) for _ in range(3))
    per_token = [m.squeeze(2).repeat_interleave(n, dim=1) for m in (shift, scale, gate)]
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + per_token[1]) + per_token[0])
    torch.testing.assert_close(gated_residual(x, gate, y), x + per_token[2] * y)


def test_plan_generator_loss_drops_the_plan_only_where_droppable():
    """``droppable`` (e.g. windows of successful episodes) limits the null plan to those windows;
    the draws are the same, so with every window droppable the loss is the unrestricted one."""
    from wmpo.models.flow import plan_generator_loss

    model = randomized(VideoDiT(plan_config()))
    b, f = 8, 5
    z, _, a, has, pos = inputs(model.config, b=b, f=f)
    batch = FlowBatch(z, a * 0, has & False, pos, torch.full((b,), 2), plan_index=torch.arange(f).expand(b, f).clone())
    plan = plan_inputs(model.config, b=b, f=f)

    def run(drop: float, droppable: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        return plan_generator_loss(model, batch, plan.tokens, plan.text, drop, 0.1, torch.Generator().manual_seed(4),
                                   droppable=droppable)

    everything = torch.ones(b, dtype=torch.bool)
    assert run(1.0, None)[1]["kept"] == 0.0 and run(1.0, ~everything)[1]["kept"] == 1.0
    half = torch.arange(b) % 2 == 0
    assert run(1.0, half)[1]["kept"] == 0.5  # only the droppable half lost its plan
    loss, stats = run(0.5, everything)
    ref, ref_stats = run(0.5, None)
    assert torch.equal(loss, ref) and stats == ref_stats
