"""Image metrics for world-model evaluation: PSNR and SSIM on uint8 frames, optionally masked.

SSIM is the standard Gaussian-window SSIM (Wang et al. 2004: 11x11 window, sigma 1.5,
K1=0.01, K2=0.03) on each RGB channel, written out here (a dozen lines) instead of pulling
in an image-processing library for one function. The masked variant averages the SSIM map
over the masked pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmpo.models.autoencoder import psnr

__all__ = ["moving_mask", "psnr", "ssim"]


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM between uint8-range images (N, H, W, 3) -> (N,). Optional boolean mask (N, H, W)."""
    x = a.float().permute(0, 3, 1, 2) / 255.0
    y = b.float().permute(0, 3, 1, 2) / 255.0
    w = _gaussian_window().to(x)[None, None].repeat(3, 1, 1, 1)  # (3, 1, 11, 11), per channel
    pad = w.shape[-1] // 2

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(z, (pad,) * 4, mode="reflect"), w, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    smap = smap.mean(1)  # (N, H, W)
    if mask is None:
        return smap.flatten(1).mean(1)
    m = mask.float()
    return (smap * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)


def moving_mask(truth: torch.Tensor, start: torch.Tensor, threshold: int = 20) -> torch.Tensor:
    """Pixels of true frames (N, H, W, 3) that differ from the start frame (H, W, 3) by more
    than ``threshold`` in any channel: where something moved. (N, H, W) bool."""
    return (truth.int() - start.int()).abs().amax(-1) > threshold
