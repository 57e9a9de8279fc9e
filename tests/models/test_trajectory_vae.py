"""The trajectory VAE (wmpo/models/trajectory_vae.py): shapes, init, round trip after training on
smooth trajectories like the project's actions, and config errors."""

from __future__ import annotations

import pytest
import torch

from wmpo.errors import ConfigError
from wmpo.models.trajectory_vae import PRESETS, TrajectoryVAE, TrajectoryVAEConfig, smoothness


def smooth_trajectories(n: int, cfg: TrajectoryVAEConfig, gen: torch.Generator) -> torch.Tensor:
    """Random smooth action sequences in [-1, 1]: sums of a few low-frequency sines per dim, with a
    gripper dimension that switches once (as a pick does)."""
    t = torch.linspace(0, 1, cfg.steps)
    freq = torch.rand(n, 1, cfg.action_dim, generator=gen) * 3
    phase = torch.rand(n, 1, cfg.action_dim, generator=gen) * 6.28
    amp = torch.rand(n, 1, cfg.action_dim, generator=gen) * 0.8
    x = amp * torch.sin(6.28 * freq * t[None, :, None] + phase)
    switch = (torch.rand(n, 1, generator=gen) * cfg.steps).long()
    x[..., -1] = torch.where(torch.arange(cfg.steps)[None] >= switch, 0.9, -0.9)
    return x.reshape(n, cfg.chunks, cfg.chunk_length, cfg.action_dim)


def test_shapes_and_initial_state() -> None:
    torch.manual_seed(0)
    cfg = PRESETS["small"]
    vae = TrajectoryVAE(cfg)
    actions = torch.rand(3, cfg.chunks, cfg.chunk_length, cfg.action_dim) * 2 - 1
    mean, logvar = vae.encode(actions)
    assert mean.shape == logvar.shape == (3, cfg.tokens, cfg.latent_dim)
    assert torch.allclose(logvar, torch.full_like(logvar, -4.0))  # the init: small, fixed variance
    out = vae(actions)
    assert out["recon"].shape == actions.shape and out["recon"].abs().max() < 0.1  # near 0 at init
    assert vae.decode(torch.zeros(2, cfg.tokens, cfg.latent_dim)).shape == (2, cfg.chunks, cfg.chunk_length, 4)
    flat = actions.flatten(1, 2)
    assert torch.equal(vae.encode(flat)[0], mean)  # (B, T, D) is the same input


def test_training_makes_the_round_trip_close_and_smooth() -> None:
    torch.manual_seed(0)
    cfg = TrajectoryVAEConfig(chunks=2, tokens=4, latent_dim=16, width=32, blocks=3, beta=1e-4)
    gen = torch.Generator().manual_seed(0)
    train, test = smooth_trajectories(512, cfg, gen), smooth_trajectories(64, cfg, gen)
    vae = TrajectoryVAE(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(vae(test, sample=False)["mse"])
    for _ in range(250):
        batch = train[torch.randint(0, len(train), (32,), generator=gen)]
        loss = vae(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = vae(test, sample=False)
    assert float(out["mse"]) < 0.02 < before, (before, float(out["mse"]))  # variance of targets ~0.3
    # the decoder does not add jerk: reconstructions are about as smooth as the trajectories
    assert float(smoothness(out["recon"])) < 1.5 * float(smoothness(test))
    # a checkpoint config round trip builds the same architecture
    again = TrajectoryVAE.from_config(vae.checkpoint_config())
    again.load_state_dict(vae.state_dict())
    assert torch.equal(again(test, sample=False)["recon"], out["recon"])


def test_bad_configs_and_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="tokens"):
        TrajectoryVAEConfig(chunks=3, chunk_length=8, tokens=5)
    with pytest.raises(ConfigError, match="kernel"):
        TrajectoryVAEConfig(kernel=2)
    vae = TrajectoryVAE(PRESETS["tiny"])
    with pytest.raises(ConfigError, match="actions must be"):
        vae.encode(torch.zeros(1, 3, 8, 4))
    with pytest.raises(ConfigError, match="not a trajectory-vae"):
        TrajectoryVAE.from_config({"kind": "policy"})


def test_load_round_trip_and_wrong_kind(tmp_path):
    from wmpo.errors import CheckpointError
    from wmpo.models.trajectory_vae import TrajectoryVAE
    from wmpo.utils.checkpoint import save_checkpoint

    model = TrajectoryVAE(PRESETS["tiny"]).eval()
    sha = save_checkpoint(tmp_path / "vae", {k: v.half() for k, v in model.state_dict().items()},
                          model.checkpoint_config(), {"kind": "trajectory-vae"})
    loaded, short = TrajectoryVAE.load(tmp_path / "vae")
    assert short == sha[:12]
    x = torch.rand(2, model.cfg.steps, model.cfg.action_dim) * 2 - 1
    assert torch.allclose(loaded.encode(x)[0], model.encode(x)[0], atol=2e-2)
    save_checkpoint(tmp_path / "other", {}, {"kind": "autoencoder"}, {})
    with pytest.raises(CheckpointError, match="trajectory-vae"):
        TrajectoryVAE.load(tmp_path / "other")
