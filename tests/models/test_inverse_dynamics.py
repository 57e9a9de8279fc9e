"""The residual inverse-dynamics model (wmpo/models/inverse_dynamics.py): shapes, the residual
variant starts as the identity on the prior, a short training on transitions whose actions show
in the frames beats the prior, checkpoints load back, and bad configs and inputs are refused."""

from __future__ import annotations

import pytest
import torch

from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.inverse_dynamics import PRESETS, InverseDynamics, InverseDynamicsConfig
from wmpo.utils.checkpoint import save_checkpoint


def _frames(b: int, cfg: InverseDynamicsConfig) -> torch.Tensor:
    return torch.randn(b, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


def test_shapes_and_the_residual_model_starts_as_the_identity_on_the_prior() -> None:
    torch.manual_seed(0)
    cfg = PRESETS["small"]
    model = InverseDynamics(cfg)
    prev, nxt = _frames(5, cfg), _frames(5, cfg)
    prior = torch.rand(5, cfg.action_dim) * 2 - 1
    out = model(prev, nxt, prior)
    assert out.shape == (5, 8)
    assert torch.equal(out, prior)  # zero-initialised correction head: exactly the prior
    assert torch.equal(model(prev, nxt, prior * 3), (prior * 3).clamp(-1, 1))  # final actions stay in the box
    assert torch.equal(model.raw(prev, nxt, prior * 3), prior * 3)  # raw is unclamped (the loss uses it)
    # the prior still gets a gradient path into training: the head's gradient is not zero
    model.loss(prev, nxt, prior, torch.zeros_like(prior)).backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0

    full = InverseDynamics(InverseDynamicsConfig(residual=False))
    pred = full(prev, nxt)
    assert pred.shape == (5, 8) and pred.abs().max() < 0.1  # small actions near 0 at init
    assert not hasattr(full, "prior_embed")  # the baseline has no prior input at all
    pooled = InverseDynamics(InverseDynamicsConfig(pool="mean"))
    assert torch.equal(pooled(prev, nxt, prior), prior)  # the same contract with a pooled encoder


def test_a_stack_of_earlier_frames() -> None:
    cfg = PRESETS["small-stack"]
    model = InverseDynamics(cfg)
    stack = torch.randn(2, cfg.context, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    assert model(stack, _frames(2, cfg), torch.zeros(2, 8)).shape == (2, 8)
    with pytest.raises(ConfigError, match=r"prev_latent must be \(B, 3, 4, 16, 16\)"):
        model(_frames(2, cfg), _frames(2, cfg), torch.zeros(2, 8))


def _transitions(n: int, cfg: InverseDynamicsConfig, mix: torch.Tensor, gen: torch.Generator):
    """Latent transitions whose first 4 action numbers show in the frames (a fixed linear pattern
    added to the previous frame) and whose last 4 do not (unobservable: only the prior knows)."""
    actions = torch.rand(n, cfg.action_dim, generator=gen) * 1.6 - 0.8
    prev = torch.randn(n, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=gen)
    nxt = prev + torch.einsum("na,achw->nchw", actions[:, :4], mix)
    prior = (actions + 0.3 * torch.randn(n, cfg.action_dim, generator=gen)).clamp(-1, 1)
    return prev, nxt, prior, actions


def test_short_training_beats_the_prior_and_the_full_idm_cannot_see_the_hidden_half() -> None:
    torch.manual_seed(0)
    cfg = InverseDynamicsConfig(latent_size=8, width=8, stages=1, hidden=64, prior_dim=16)
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(4, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=gen)
    train, test = _transitions(2048, cfg, mix, gen), _transitions(512, cfg, mix, gen)
    models = {"residual": InverseDynamics(cfg),
              "full": InverseDynamics(InverseDynamicsConfig(**{**cfg.to_dict(), "residual": False}))}
    for model in models.values():
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(150):
            i = torch.randint(0, 2048, (64,), generator=gen)
            prev, nxt, prior, actions = (t[i] for t in train)
            loss = model.loss(prev, nxt, prior if model.cfg.residual else None, actions)
            opt.zero_grad()
            loss.backward()
            opt.step()
    prev, nxt, prior, actions = test
    with torch.no_grad():
        err_prior = ((prior - actions) ** 2).mean(0)
        err_res = ((models["residual"](prev, nxt, prior) - actions) ** 2).mean(0)
        err_full = ((models["full"](prev, nxt) - actions) ** 2).mean(0)
    # the visible half: both learn it, well below the prior's noise (0.3^2 = 0.09)
    assert err_res[:4].mean() < 0.5 * err_prior[:4].mean(), (err_res, err_prior)
    assert err_full[:4].mean() < 0.5 * err_prior[:4].mean(), (err_full, err_prior)
    # the hidden half: the residual model keeps the prior; the full IDM can only guess (var ~0.21)
    assert err_res[4:].mean() < 1.2 * err_prior[4:].mean() < err_full[4:].mean(), (err_res, err_prior, err_full)


def test_checkpoint_round_trip(tmp_path) -> None:
    model = InverseDynamics(PRESETS["tiny"])
    torch.nn.init.normal_(model.head.weight, std=0.1)  # something other than the zero init
    save_checkpoint(tmp_path / "idm", {k: v.half() for k, v in model.state_dict().items()},
                    model.checkpoint_config(), {"kind": "inverse-dynamics"})
    loaded = InverseDynamics.load(tmp_path / "idm")
    prev, nxt, prior = _frames(3, model.cfg), _frames(3, model.cfg), torch.zeros(3, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(prev, nxt, prior), model(prev, nxt, prior), atol=1e-2)
    save_checkpoint(tmp_path / "other", {}, {"kind": "autoencoder"}, {})
    with pytest.raises(CheckpointError, match="not inverse-dynamics"):
        InverseDynamics.load(tmp_path / "other")


@pytest.mark.parametrize("field,value", [("latent_size", 10), ("context", 0), ("action_dim", 0),
                                         ("stages", 7), ("residual", "yes"), ("width", 0), ("pool", "max")])
def test_bad_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"InverseDynamicsConfig.{field}="):
        InverseDynamicsConfig(**{field: value})


def test_bad_inputs_are_refused() -> None:
    cfg = PRESETS["tiny"]
    res, full = InverseDynamics(cfg), InverseDynamics(InverseDynamicsConfig(**{**cfg.to_dict(), "residual": False}))
    x = _frames(2, cfg)
    with pytest.raises(ConfigError, match="give the prior"):
        res(x, x)
    with pytest.raises(ConfigError, match=r"prior must be \(2, 8\)"):
        res(x, x, torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="takes no prior"):
        full(x, x, torch.zeros(2, 8))
    with pytest.raises(ConfigError, match=r"next_latent must be \(B, 4, 16, 16\)"):
        res(x, torch.zeros(2, 4, 8, 8), torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="batch sizes differ"):
        res(x, _frames(3, cfg), torch.zeros(3, 8))
    with pytest.raises(ConfigError, match="not an inverse-dynamics"):
        InverseDynamics.from_config({"kind": "policy"})
