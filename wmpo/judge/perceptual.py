"""Perceptual distance between frames, for the imitation and goal rewards.

The papers use LPIPS. Its network weights (AlexNet/VGG plus LPIPS's learned linear layers)
cannot be downloaded here, so this module computes LPIPS's recipe on features of the
project's own trained encoder instead: the world model's frame autoencoder encoder, whose
intermediate activations (after each downsampling stage) and latent are each unit-normalized
along channels, compared by squared difference, averaged over space and summed over layers,
with uniform layer weights (LPIPS's learned per-channel weights need human similarity
judgments we do not have). Every result that uses it names it ``ae-lpips`` with the
autoencoder's hash (``FeatureDistance.name``).

Why not plain pixel MSE: it is dominated by the static background, exactly like whole-frame
PSNR; the encoder's features weigh the gripper, handles and objects that its training loss
up-weighted.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wmpo.models.autoencoder import FrameAutoencoder


class FeatureDistance:
    def __init__(self, ae: FrameAutoencoder, ae_sha256: str = "") -> None:
        self.ae = ae.eval()
        self.name = f"ae-lpips:{ae_sha256}" if ae_sha256 else "ae-lpips"
        # Tap the end of every downsampling stage (the layer before the next strided conv; the last
        # stage ends before the final GroupNorm, SiLU, conv) and the latent itself.
        layers = list(ae.encoder)
        strided = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        self.taps = {*(s - 1 for s in strided[1:]), len(layers) - 4, len(layers) - 1}

    @classmethod
    def from_world_model(cls, directory: str) -> FeatureDistance:
        from wmpo.sampling.world_model import TorchWorldModel

        wm = TorchWorldModel.load(directory)
        return cls(wm.ae, wm.hashes.get("world_model_sha256", ""))

    @torch.no_grad()
    def features(self, frames: np.ndarray) -> list[torch.Tensor]:
        x = self.ae.to_input(torch.from_numpy(np.ascontiguousarray(frames)))
        feats = []
        for i, layer in enumerate(self.ae.encoder):
            x = layer(x)
            if i in self.taps:
                feats.append(x / (x.norm(dim=1, keepdim=True) + 1e-8))  # unit length along channels
        return feats

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distance (N,) between frames a[i] and b[i], each (N, H, W, 3) uint8; 0 for identical frames.
        ``b`` may also be (M, H, W, 3) with N a multiple of M: b[i % M] (one reference sequence for
        several rollouts, its features computed once)."""
        if a.shape[1:] != b.shape[1:] or len(b) == 0 or len(a) % len(b):
            raise ValueError(f"frames to compare must have the same shape, got {a.shape} and {b.shape}")
        fa, fb = self.features(a), self.features(b)
        fb = [f.repeat(len(a) // len(b), 1, 1, 1) for f in fb]
        d = sum(((x - y) ** 2).sum(1).mean((1, 2)) for x, y in zip(fa, fb, strict=True))
        return d.numpy().astype(np.float64)

    def distance_to(self, frames: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Distance (T,) of each frame (T, H, W, 3) to one goal frame (H, W, 3)."""
        return self.distance(frames, np.broadcast_to(goal, frames.shape).copy())
