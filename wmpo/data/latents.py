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
import lzma
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
    # (E,) whether each episode reached its task; None where unknown (a packed file of an older format)
    succeeded: np.ndarray | None = None

    @classmethod
    @torch.no_grad()
    def encode(cls, paths: list[str], ae: FrameAutoencoder, stride: int, min_frames: int,
               batch: int = 512) -> LatentEpisodes:
        lat, act, starts, lengths, tasks, succeeded = [], [], [], [], [], []
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
                succeeded.append(ep.succeeded)
                row += n
        return cls(torch.cat(lat), torch.cat(act), np.asarray(starts), np.asarray(lengths), tasks,
                   np.asarray(succeeded, dtype=bool))

    @classmethod
    def encode_cached(cls, paths: list[str], ae: FrameAutoencoder, ae_id: str, stride: int, min_frames: int,
                      cache_dir: str | Path) -> LatentEpisodes:
        """``encode``, through ``<cache_dir>/latents-<key>.pt``; the key covers the autoencoder,
        the stride and every shard file (name and size) of every dataset."""
        shards = [[p, sorted((f.name, f.stat().st_size) for f in (Path(p) / "data").glob("shard-*.npz"))]
                  for p in paths]
        key = hashlib.sha256(json.dumps([ae_id, stride, min_frames, shards, "succeeded"]).encode()).hexdigest()[:16]
        cache_dir = Path(cache_dir)
        path = cache_dir / f"latents-{key}.pt"
        if path.exists():
            d = torch.load(path, weights_only=True)
            return cls(d["latents"], d["actions"], d["starts"].numpy(), d["lengths"].numpy(), d["tasks"],
                       d["succeeded"].numpy())
        data = cls.encode(paths, ae, stride, min_frames)
        import io

        buf = io.BytesIO()
        torch.save({"latents": data.latents, "actions": data.actions, "starts": torch.from_numpy(data.starts),
                    "lengths": torch.from_numpy(data.lengths), "tasks": data.tasks,
                    "succeeded": torch.from_numpy(data.succeeded)}, buf)
        for old in cache_dir.glob("latents-*.pt"):  # replace, never accumulate
            old.unlink()
        atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
        return data

    def save_packed(self, path: str | Path, meta: dict) -> dict:
        """Write the latents as one small file for a machine without the episodes (a GPU node
        without MetaWorld): 8 bits per value (per-channel range), stored as differences along
        each episode (mostly near zero: the scene is still where the robot is not) and
        compressed with lzma. The 8-bit rounding is far below the noise the autoencoder's
        decoder is trained to absorb (``latent_noise``); its size is returned and recorded."""
        z = self.latents.float()
        lo = z.amin((0, 2, 3)).view(1, -1, 1, 1)
        scale = (z.amax((0, 2, 3)).view(1, -1, 1, 1) - lo).clamp_min(1e-6) / 255
        q = ((z - lo) / scale).round().clamp(0, 255).to(torch.uint8).numpy()
        delta = q.copy()
        delta[1:] -= q[:-1]  # uint8 arithmetic wraps, exactly invertible
        delta[self.starts] = q[self.starts]  # each episode's first frame kept as it is
        err = (torch.from_numpy(q).float() * scale + lo - z).abs()
        info = {**meta, "format": "wmpo-packed-latents-1", "quantization_max_abs": float(err.max()),
                "quantization_rms": float(err.pow(2).mean().sqrt()), "latent_std": float(z.std())}
        arrays = {"delta": np.frombuffer(lzma.compress(delta.tobytes(), preset=6), np.uint8),
                  "shape": np.asarray(q.shape), "lo": lo.flatten().numpy(), "scale": scale.flatten().numpy(),
                  "actions": self.actions.numpy(), "starts": self.starts, "lengths": self.lengths,
                  **({"succeeded": self.succeeded} if self.succeeded is not None else {}),
                  "meta": np.frombuffer(json.dumps({**info, "tasks": self.tasks}).encode(), np.uint8)}
        atomic_write_bytes(Path(path), lambda f: np.savez(f, **arrays))
        return info

    @classmethod
    def load_packed(cls, path: str | Path) -> tuple[LatentEpisodes, dict]:
        """``save_packed``'s file -> (episodes, its metadata)."""
        with np.load(path) as d:
            meta = json.loads(bytes(d["meta"]).decode())
            if meta.get("format") != "wmpo-packed-latents-1":
                raise ValueError(f"{path} is not a packed latent file (format {meta.get('format')!r})")
            q = np.frombuffer(lzma.decompress(d["delta"].tobytes()), np.uint8).reshape(d["shape"]).copy()
            starts, lengths = d["starts"], d["lengths"]
            for s, n in zip(starts, lengths, strict=True):
                q[s:s + n] = np.cumsum(q[s:s + n], axis=0, dtype=np.uint8)  # undo the differences (mod 256)
            lo = torch.from_numpy(d["lo"]).view(1, -1, 1, 1)
            scale = torch.from_numpy(d["scale"]).view(1, -1, 1, 1)
            latents = (torch.from_numpy(q).float() * scale + lo).half()
            succeeded = d["succeeded"].copy() if "succeeded" in d.files else None  # files packed before it: unknown
            data = cls(latents, torch.from_numpy(d["actions"].copy()), starts.copy(), lengths.copy(), meta.pop("tasks"),
                       succeeded)
        return data, meta

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, batch_size: int, window: int, gen: torch.Generator,
               episodes: np.ndarray | None = None, plan_frames: int = 0,
               plan_gen: torch.Generator | None = None) -> FlowBatch:
        """Random windows: [anchor, w_1..w_window] with a random context/generation split.

        ``plan_frames > 0`` (training the action optimizer's plan generator) adds a plan per
        window: a start frame p drawn so that every generated frame lies in (p, p + plan_frames],
        the plan_frames * stride env actions after p (zeros past the episode's end), each
        frame's index in the plan, the episode's task and whether it succeeded; frames then carry no per-frame
        actions (the plan is the only action input). Its random numbers are drawn after the
        others, so plain windows come out the same with or without this feature; from
        ``plan_gen`` when given, so that ``gen`` then also draws what it would draw for plain
        windows afterwards (validation compares plan and plain models on the same windows)."""
        pool = episodes if episodes is not None else np.arange(len(self))
        picks = pool[torch.randint(0, len(pool), (batch_size,), generator=gen).numpy()]
        # One draw per window, in this order, keeps the windows of every earlier run (and so
        # the fixed validation windows) the same; the gathers below are one index each, which
        # at batch 256 is most of the time this took as a per-window loop.
        highs = self.lengths[picks] - window + 1
        js = [int(torch.randint(0, int(h), (1,), generator=gen)) for h in highs]
        j = np.asarray(js, dtype=np.int64)[:, None]
        frame = np.concatenate([np.full_like(j, -1), j + np.arange(window)], axis=1)  # -1: the anchor
        rows = torch.from_numpy(self.starts[picks][:, None] + np.maximum(frame, 0))
        has_t = torch.from_numpy(frame >= 1)
        # Context = anchor + r recent frames, r in [1, window - 1]; the rest is generated.
        n_ctx = 1 + torch.randint(1, window, (batch_size,), generator=gen)
        pos = torch.arange(window + 1).expand(batch_size, -1).clone()
        batch = FlowBatch(self.latents[rows].float(), self.actions[rows] * has_t[..., None], has_t, pos, n_ctx)
        if plan_frames > 0:
            self._add_plans(batch, picks, js, window, plan_frames, plan_gen or gen)
        return batch

    def _add_plans(self, batch: FlowBatch, picks: np.ndarray, js: list[int], window: int, plan_frames: int,
                   gen: torch.Generator) -> None:
        width = self.actions.shape[1]  # stride * 4
        plan_actions, index = [], []
        for i, (e, j) in enumerate(zip(picks, js, strict=True)):
            s, n = int(self.starts[e]), int(self.lengths[e])
            first_gen = j + int(batch.n_context[i]) - 1  # episode frame of the first generated frame
            last_gen = j + window - 1
            lo, hi = max(0, last_gen - plan_frames), first_gen - 1
            p = lo + int(torch.randint(0, hi - lo + 1, (1,), generator=gen))
            a = torch.zeros(plan_frames, width)
            rows = np.arange(p + 1, min(p + plan_frames, n - 1) + 1)  # actions leading into frames p+1..
            a[: len(rows)] = self.actions[s + rows]
            plan_actions.append(a.reshape(plan_frames * width // 4, 4))
            frames = np.concatenate([[0], j + np.arange(window)])  # episode frame of each window frame
            index.append(torch.from_numpy(np.clip(frames - p, 0, plan_frames)))
            index[-1][0] = 0  # the anchor (episode frame 0) is never inside a plan that starts later
        batch.plan_actions = torch.stack(plan_actions)
        batch.plan_index = torch.stack(index).long()
        batch.tasks = [self.tasks[int(e)] for e in picks]
        if self.succeeded is not None:
            batch.succeeded = torch.from_numpy(self.succeeded[picks])
        batch.actions = torch.zeros_like(batch.actions)
        batch.has_action = torch.zeros_like(batch.has_action)
