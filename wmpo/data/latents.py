"""Episodes as latent-frame sequences for world-model training.

Frames are encoded once by the frozen autoencoder. With ``frame_stride`` s, latent frame k
is the env frame at step k*s, and its actions are the s env actions that led into it
(flattened to s*4 numbers); latent frame 0 has none. Episode tails shorter than s are dropped.

Episodes are ordered by (task, seed, source) within each dataset, not by shard file (shard
names are random), so the same data gives the same episode indices, validation split and
training windows on any machine. ``encode_cached`` keeps the encoded latents in one file per
run directory (replaced when the data or the autoencoder change): a resumed run skips the
encoding, which takes minutes on a CPU for play-sized data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wmpo.data.episodes import EpisodeDataset, atomic_write_bytes
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
            order = sorted(range(len(ds)), key=lambda i: (ds.episodes[i]["task"], ds.episodes[i]["seed"],
                                                          json.dumps(ds.episodes[i]["source"], sort_keys=True)))
            for i in order:
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

    @classmethod
    def encode_cached(cls, paths: list[str], ae: FrameAutoencoder, ae_id: str, stride: int, min_frames: int,
                      cache_dir: str | Path) -> LatentEpisodes:
        """``encode``, through ``<cache_dir>/latents-<key>.pt``; the key covers the autoencoder,
        the stride and every shard file (name and size) of every dataset."""
        shards = [[p, sorted((f.name, f.stat().st_size) for f in (Path(p) / "data").glob("shard-*.npz"))]
                  for p in paths]
        key = hashlib.sha256(json.dumps([ae_id, stride, min_frames, shards]).encode()).hexdigest()[:16]
        cache_dir = Path(cache_dir)
        path = cache_dir / f"latents-{key}.pt"
        if path.exists():
            d = torch.load(path, weights_only=True)
            return cls(d["latents"], d["actions"], d["starts"].numpy(), d["lengths"].numpy(), d["tasks"])
        data = cls.encode(paths, ae, stride, min_frames)
        import io

        buf = io.BytesIO()
        torch.save({"latents": data.latents, "actions": data.actions, "starts": torch.from_numpy(data.starts),
                    "lengths": torch.from_numpy(data.lengths), "tasks": data.tasks}, buf)
        for old in cache_dir.glob("latents-*.pt"):  # replace, never accumulate
            old.unlink()
        atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
        return data

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
