"""Per-frame 2D convolutional autoencoder: 64x64 RGB <-> a small latent grid.

Deterministic (not a VAE), for three reasons: at this scale a KL term only trades sharpness
for a prior the diffusion model does not need; the latents are normalized to zero mean and
unit variance per channel after training (``latent_mean``/``latent_std``, stored in the
checkpoint), which is what the rectified-flow noise scale assumes; and the decoder is made
robust to imperfect imagined latents by training it on latents with added Gaussian noise
(``latent_noise``), the job a VAE's sampling would otherwise do. WMPO swapped a 3D video VAE
for a 2D image one to keep fine motion detail; this is the same choice.

The loss up-weights two kinds of pixels that a plain reconstruction loss sacrifices to the
large static background: pixels that differ from the episode's first frame
(``motion_weight``: the arm, the fingers, handles, doors) and high-frequency detail
(``detail_weight``: pixels far from their 3x3 neighbourhood mean, such as the 2-4 px puck and
goal dots, which an 8x8 latent trained without it dropped entirely). The default latent is
16x16x4 (4x downsampling): small objects survive better in a finer grid than in 8x8x16, at
the same number of latent values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wmpo.errors import ConfigError


@dataclass
class AutoencoderConfig:
    image_size: int = 64
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64)  # one stage per 2x downsampling
    blocks_per_stage: int = 1
    latent_noise: float = 0.1  # std of noise added to normalized latents while training the decoder

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.image_size % (2 ** len(self.channels)) or self.image_size < 8:
            raise ConfigError(f"AutoencoderConfig.image_size={self.image_size} must be divisible by "
                              f"2**len(channels)={2 ** len(self.channels)}")
        if self.latent_channels < 1 or self.blocks_per_stage < 0 or self.latent_noise < 0:
            raise ConfigError(f"invalid AutoencoderConfig {self}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, AutoencoderConfig] = {
    "tiny": AutoencoderConfig(latent_channels=4, channels=(8, 16, 16), blocks_per_stage=0),
    "small": AutoencoderConfig(),  # 64x64x3 -> 16x16x4, bundled
    "small-f8": AutoencoderConfig(latent_channels=16, channels=(32, 64, 128)),  # 8x8x16
    "base": AutoencoderConfig(latent_channels=8, channels=(128, 256), blocks_per_stage=2),
}


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class FrameAutoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = c = config
        enc: list[nn.Module] = [nn.Conv2d(3, c.channels[0], 3, padding=1)]
        prev = c.channels[0]
        for ch in c.channels:
            enc += [nn.Conv2d(prev, ch, 4, stride=2, padding=1)]
            enc += [ResBlock(ch) for _ in range(c.blocks_per_stage)]
            prev = ch
        enc += [nn.GroupNorm(8, prev), nn.SiLU(), nn.Conv2d(prev, c.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(c.latent_channels, prev, 3, padding=1)]
        for ch in reversed(c.channels):
            dec += [ResBlock(prev) for _ in range(c.blocks_per_stage)]
            dec += [nn.ConvTranspose2d(prev, ch, 4, stride=2, padding=1)]
            prev = ch
        dec += [nn.GroupNorm(8, prev), nn.SiLU(), nn.Conv2d(prev, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(c.latent_channels))
        self.register_buffer("latent_std", torch.ones(c.latent_channels))

    @staticmethod
    def to_input(frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
        return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    @staticmethod
    def to_frames(x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8."""
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def check_frames(self, frames: torch.Tensor) -> None:
        s = self.config.image_size
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (s, s, 3) or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be (B, {s}, {s}, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, C, h, w), before normalization

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> normalized latents (B, C, h, w)."""
        self.check_frames(frames)
        z = self.encoder(self.to_input(frames))
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalized latents (B, C, h, w) -> (B, 3, H, W) float in about [-1, 1]."""
        z = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decoder(z)

    def decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_frames(self.decode(z))

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": "autoencoder", "model": self.config.to_dict()}

    @classmethod
    def from_config_and_tensors(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                                where: str) -> FrameAutoencoder:
        from wmpo.utils.checkpoint import build_model

        return build_model(cls, AutoencoderConfig, config, tensors, where)


def reconstruction_loss(x: torch.Tensor, recon: torch.Tensor, ref: torch.Tensor | None,
                        motion_weight: float = 4.0, detail_weight: float = 8.0) -> torch.Tensor:
    """L1 + MSE on (B, 3, H, W) images in [-1, 1], with moving pixels (that differ from a
    reference frame of the same episode) and high-frequency detail up-weighted."""
    err = (recon - x).abs() + (recon - x) ** 2
    weight = torch.ones_like(x[:, :1])  # (B, 1, H, W)
    if ref is not None and motion_weight > 0:
        weight = weight + motion_weight * ((x - ref).abs().amax(1, keepdim=True) > 0.08).float()
    if detail_weight > 0:
        local_mean = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        weight = weight + detail_weight * ((x - local_mean).abs().amax(1, keepdim=True) > 0.1).float()
    return (err * weight).mean()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB between uint8-range images (..., H, W, 3); optional boolean mask (..., H, W)."""
    d = (a.float() - b.float()) ** 2
    if mask is None:
        mse = d.flatten(-3).mean(-1)
    else:
        m = mask.float().unsqueeze(-1).expand_as(d)
        mse = (d * m).flatten(-3).sum(-1) / m.flatten(-3).sum(-1).clamp(min=1)
    return 10 * torch.log10(255.0**2 / mse.clamp(min=1e-10))
