"""Episodes as latent-frame sequences for world-model training.

Frames are encoded once by the frozen autoencoder. With ``frame_stride`` s, latent frame k
is the env frame at step k*s, and its actions are the s env actions that led into it
(flattened to s*4 numbers); latent frame 0 has none. Episode tails shorter than s are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wmpo.data.episodes import EpisodeDataset
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.flow import FlowBatch


@dataclass
class LatentEpisodes:
    latents: torch.Tensor  # (M, C, h, w) float16
    actions: torch.Tensor  # (M, s*4) float32; zeros for frame 0 of an episode
    starts: np.ndarray  # (E,) first row of each episode
    lengths: np.ndarray  # (E,) latent frames per episode
    tasks: list[str]

    @classmethod
    @torch.no_grad()
    def encode(cls, paths: list[str], ae: FrameAutoencoder, stride: int, min_frames: int,
               batch: int = 512) -> LatentEpisodes:
        lat, act, starts, lengths, tasks = [], [], [], [], []
        row = 0
        for p in paths:
            ds = EpisodeDataset.load(p)
            for i in range(len(ds)):
                ep = ds.episode(i)
                n = ep.length // stride + 1  # latent frames
                if n < min_frames:
                    continue
                frames = torch.from_numpy(ep.frames[::stride][:n])
                z = torch.cat([ae.encode(frames[j:j + batch]) for j in range(0, n, batch)])
                a = np.zeros((n, stride * 4), np.float32)
                a[1:] = ep.actions[: (n - 1) * stride].reshape(n - 1, stride * 4)
                lat.append(z.half())
                act.append(torch.from_numpy(a))
                starts.append(row)
                lengths.append(n)
                tasks.append(ds.episodes[i]["task"])
                row += n
        return cls(torch.cat(lat), torch.cat(act), np.asarray(starts), np.asarray(lengths), tasks)

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, batch_size: int, window: int, gen: torch.Generator,
               episodes: np.ndarray | None = None) -> FlowBatch:
        """Random windows: [anchor, w_1..w_window] with a random context/generation split."""
        pool = episodes if episodes is not None else np.arange(len(self))
        picks = pool[torch.randint(0, len(pool), (batch_size,), generator=gen).numpy()]
        lat, act, has, pos = [], [], [], []
        for e in picks:
            s, n = int(self.starts[e]), int(self.lengths[e])
            j = int(torch.randint(0, n - window + 1, (1,), generator=gen))
            rows = np.concatenate([[s], s + j + np.arange(window)])
            lat.append(self.latents[rows])
            act.append(self.actions[rows])
            h = np.concatenate([[False], (j + np.arange(window)) >= 1])
            has.append(torch.from_numpy(h))
            pos.append(torch.arange(window + 1))
        # Context = anchor + r recent frames, r in [1, window - 1]; the rest is generated.
        n_ctx = 1 + torch.randint(1, window, (batch_size,), generator=gen)
        acts = torch.stack(act)
        has_t = torch.stack(has)
        return FlowBatch(torch.stack(lat).float(), acts * has_t[..., None], has_t, torch.stack(pos), n_ctx)
