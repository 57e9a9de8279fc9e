"""Trajectory VAE: an action trajectory <-> a few latent tokens (MVISTA-4D, section 4.3).

The action optimizer searches over this latent instead of raw actions: a horizon of C chunks of
K x D actions (K=8, D=4 here) is encoded into S tokens of width Z (S=4, Z=32 by default), smooth
by construction of the decoder, and decoded back. MVISTA-4D uses a TCN-based VAE; so does this:

- encoder: a temporal conv net (residual blocks of dilated 1-D convolutions over time, dilation
  doubling per block so the receptive field covers the whole horizon), then strided pooling of
  the T = C*K steps down to S positions and a linear head to the mean and log-variance of each
  token;
- decoder: the S tokens upsampled (nearest) back to T steps, the same kind of TCN, and a linear
  head to D actions squashed by tanh into the action box [-1, 1].

Departures from the paper: the horizon is fixed per model (the paper's clips are too), tokens
are Gaussian with a KL weight `beta` (the paper does not give its value), and actions are the
project's normalized 4-D actions, not 7-DoF end-effector poses.

One file per architecture (config, blocks, init, presets), as the other models here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wmpo.errors import CheckpointError, ConfigError


@dataclass
class TrajectoryVAEConfig:
    chunks: int = 4  # C: chunks per trajectory
    chunk_length: int = 8  # K: actions per chunk
    action_dim: int = 4  # D
    tokens: int = 4  # S: latent tokens
    latent_dim: int = 32  # Z: width of each token
    width: int = 128  # TCN channels
    blocks: int = 4  # residual TCN blocks per side (dilations 1, 2, 4, ...)
    kernel: int = 3
    beta: float = 1e-3  # weight of the KL term

    def __post_init__(self) -> None:
        steps = self.chunks * self.chunk_length
        checks = {
            "chunks": self.chunks >= 1,
            "chunk_length": self.chunk_length >= 1,
            "action_dim": self.action_dim >= 1,
            "tokens": 1 <= self.tokens <= steps and steps % self.tokens == 0,
            "latent_dim": self.latent_dim >= 1,
            "width": self.width >= 1,
            "blocks": self.blocks >= 1,
            "kernel": self.kernel >= 1 and self.kernel % 2 == 1,
            "beta": self.beta >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"TrajectoryVAEConfig.{name}={getattr(self, name)!r} is invalid (tokens must divide "
                    f"chunks x chunk_length = {steps}; kernel odd; every size >= 1; beta >= 0)")

    @property
    def steps(self) -> int:
        return self.chunks * self.chunk_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, TrajectoryVAEConfig] = {
    "tiny": TrajectoryVAEConfig(chunks=2, tokens=2, latent_dim=8, width=16, blocks=2),  # tests
    "small": TrajectoryVAEConfig(),  # 4 chunks of 8 actions -> 4 tokens of 32
    "long": TrajectoryVAEConfig(chunks=12, tokens=6, width=192, blocks=5),  # a GRPO horizon
}


class TCNBlock(nn.Module):
    """Residual dilated 1-D convolution block: x + conv(gelu(conv(norm(x))))."""

    def __init__(self, width: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2  # same length, non-causal: the whole trajectory is known
        self.norm = nn.GroupNorm(1, width)
        self.conv1 = nn.Conv1d(width, width, kernel, padding=pad, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, kernel, padding=pad, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, W, T) -> (B, W, T)
        return x + self.conv2(F.gelu(self.conv1(self.norm(x))))


def _tcn(width: int, blocks: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(*[TCNBlock(width, kernel, 2**i) for i in range(blocks)])


class TrajectoryVAE(nn.Module):
    def __init__(self, cfg: TrajectoryVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc_in = nn.Conv1d(cfg.action_dim, cfg.width, 1)
        self.encoder = _tcn(cfg.width, cfg.blocks, cfg.kernel)
        self.enc_out = nn.Linear(cfg.width, 2 * cfg.latent_dim)  # mean, log-variance
        self.dec_in = nn.Linear(cfg.latent_dim, cfg.width)
        self.decoder = _tcn(cfg.width, cfg.blocks, cfg.kernel)
        self.dec_out = nn.Conv1d(cfg.width, cfg.action_dim, 1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Xavier for the mixing layers; the log-variance half of the encoder head starts at zero
        # weight and bias -4 (sigma ~ 0.14), so early training is nearly deterministic and the KL
        # term does not swamp reconstruction; the output conv starts small so initial actions
        # sit near 0, the middle of the box.
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        z = self.cfg.latent_dim
        nn.init.zeros_(self.enc_out.weight[z:])
        nn.init.constant_(self.enc_out.bias[z:], -4.0)
        nn.init.normal_(self.dec_out.weight, std=1e-3)

    def _check(self, actions: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if actions.ndim == 4:  # (B, C, K, D) -> (B, T, D)
            actions = actions.flatten(1, 2)
        if actions.ndim != 3 or actions.shape[1:] != (c.steps, c.action_dim):
            raise ConfigError(f"actions must be (B, {c.chunks}, {c.chunk_length}, {c.action_dim}) or "
                              f"(B, {c.steps}, {c.action_dim}), got {tuple(actions.shape)}")
        return actions

    def encode(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions (B, C, K, D) or (B, T, D) -> mean, log-variance, each (B, S, Z)."""
        x = self._check(actions).transpose(1, 2)  # (B, D, T)
        h = self.encoder(self.enc_in(x))  # (B, W, T)
        h = F.avg_pool1d(h, self.cfg.steps // self.cfg.tokens)  # (B, W, S)
        mean, logvar = self.enc_out(h.transpose(1, 2)).chunk(2, dim=-1)  # (B, S, Z) each
        return mean, logvar.clamp(-12.0, 6.0)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, S, Z) -> actions (B, C, K, D) in [-1, 1]."""
        c = self.cfg
        h = self.dec_in(tokens).transpose(1, 2)  # (B, W, S)
        h = F.interpolate(h, size=c.steps, mode="nearest")  # (B, W, T)
        x = torch.tanh(self.dec_out(self.decoder(h)))  # (B, D, T)
        return x.transpose(1, 2).reshape(-1, c.chunks, c.chunk_length, c.action_dim)

    def forward(self, actions: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """Reconstruction and the loss terms: mse (per action value), kl (per token dim), loss."""
        mean, logvar = self.encode(actions)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        recon = self.decode(z)
        target = self._check(actions).reshape_as(recon)
        mse = F.mse_loss(recon, target)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return {"recon": recon, "z": z, "mse": mse, "kl": kl, "loss": mse + self.cfg.beta * kl}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": "trajectory-vae", **self.cfg.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrajectoryVAE:
        if config.get("kind") != "trajectory-vae":
            raise ConfigError(f"not a trajectory-vae config (kind={config.get('kind')!r})")
        return cls(TrajectoryVAEConfig(**{k: v for k, v in config.items() if k != "kind"}))

    @classmethod
    def load(cls, directory: str | Path) -> tuple[TrajectoryVAE, str]:
        """A trained VAE from its checkpoint directory (fp16 on disk, float32 here), in eval
        mode, and its short weights hash (provenance)."""
        from wmpo.utils.checkpoint import load_checkpoint

        tensors, config, manifest = load_checkpoint(directory)
        try:
            model = cls.from_config(config)
            model.load_state_dict({k: v.float() for k, v in tensors.items()})
        except (ConfigError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"trajectory-vae checkpoint {directory} does not match this code: {e}") from e
        return model.eval(), manifest.get("weights_sha256", "")[:12]


def smoothness(actions: torch.Tensor) -> torch.Tensor:
    """Mean absolute change between consecutive actions of (B, C, K, D) trajectories: the
    jerkiness the decoder adds (compare reconstructions with their targets)."""
    flat = actions.flatten(1, 2)  # (B, T, D)
    return (flat[:, 1:] - flat[:, :-1]).abs().mean()
