"""Train the trajectory VAE on the project's action data (``wmpo train trajectory-vae``).

Windows of ``chunks x 8`` consecutive actions, chunk-aligned, from every episode of the given
datasets (expert, noisy, perturbed, random-walk, policy: whatever was collected), read without
their frames. Episodes are split into training and validation by a seeded hash of their index,
so a window never straddles the split. Reported on the validation windows: reconstruction MSE
(per action value, from the token means), the KL per token dimension, and smoothness (mean
absolute change between consecutive actions) of the reconstructions beside that of the
targets, so a decoder that adds jerk shows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.errors import DatasetError
from wmpo.models.trajectory_vae import PRESETS, TrajectoryVAE, smoothness
from wmpo.utils.checkpoint import environment_info, save_checkpoint
from wmpo.utils.config import bounded, check_bounds


@dataclass
class TrajectoryVAETrainConfig:
    data: list[str]
    out: str
    preset: str = bounded("small", choices=tuple(PRESETS), flag="--preset")
    steps: int = bounded(3000, ge=1, le=10_000_000, flag="--steps")
    batch_size: int = bounded(256, ge=1, le=65_536, flag="--batch-size")
    lr: float = bounded(1e-3, gt=0, lt=1, flag="--lr")
    val_fraction: float = bounded(0.1, gt=0, lt=1, flag="--val-fraction")
    seed: int = bounded(0, ge=0, lt=2**31, flag="--seed")
    overrides: dict[str, Any] = field(default_factory=dict)  # TrajectoryVAEConfig fields

    def validate(self) -> None:
        from wmpo.errors import ConfigError

        problems = check_bounds(self)
        if not self.data:
            problems.append("data: give at least one dataset directory")
        if problems:
            raise ConfigError("invalid trajectory-VAE training config: " + "; ".join(problems))


def action_windows(roots: list[str], steps: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows (N, steps, 4) float32, episode id of each window) from the datasets' shards,
    reading only their action and episode-boundary columns."""
    windows, owners, episode = [], [], 0
    for root in roots:
        shards = sorted((Path(root) / "data").glob("shard-*.npz"))
        if not shards:
            raise DatasetError(f"no dataset shards under {root}/data (collect with `wmpo collect`)")
        for shard in shards:
            with np.load(shard, allow_pickle=False) as z:
                actions, last = z["action"], z["is_last"]
            ends = np.flatnonzero(last) + 1
            starts = np.concatenate([[0], ends[:-1]])
            for s, e in zip(starts, ends, strict=True):
                acts = actions[s:e - 1]  # the row after the last action is padding
                for w in range(0, len(acts) - steps + 1, chunk):
                    windows.append(acts[w:w + steps])
                    owners.append(episode)
                episode += 1
    if not windows:
        raise DatasetError(f"no episode in {roots} is {steps} actions long")
    return np.stack(windows).astype(np.float32), np.asarray(owners)


def train_trajectory_vae(cfg: TrajectoryVAETrainConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    torch.manual_seed(cfg.seed)
    preset = PRESETS[cfg.preset]
    model_cfg = type(preset)(**{**asdict(preset), **cfg.overrides})
    windows, owners = action_windows(cfg.data, model_cfg.steps, model_cfg.chunk_length)
    rng = np.random.default_rng(cfg.seed)
    episodes = np.unique(owners)
    val_eps = set(rng.choice(episodes, max(1, int(len(episodes) * cfg.val_fraction)), replace=False).tolist())
    is_val = np.isin(owners, list(val_eps))
    shape = (-1, model_cfg.chunks, model_cfg.chunk_length, model_cfg.action_dim)
    train = torch.from_numpy(windows[~is_val]).reshape(shape)
    val = torch.from_numpy(windows[is_val]).reshape(shape)[:4096]
    model = TrajectoryVAE(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="trajectory VAE", disable=not progress)
    for _ in bar:
        batch = train[torch.randint(0, len(train), (cfg.batch_size,), generator=gen)]
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{out['mse'].item():.4f}", kl=f"{out['kl'].item():.2f}")
    model.eval()
    with torch.no_grad():
        out = model(val, sample=False)
        report = {
            "val_mse": float(out["mse"]),
            "val_kl": float(out["kl"]),
            "val_smoothness_recon": float(smoothness(out["recon"])),
            "val_smoothness_target": float(smoothness(val)),
            "val_windows": len(val),
            "train_windows": len(train),
            "episodes": len(episodes),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    manifest = {"kind": "trajectory-vae", "training": {**asdict(cfg), "model": model_cfg.to_dict()},
                "metrics": report, "environment": environment_info()}
    tensors = {k: v.half() for k, v in model.state_dict().items()}
    report["weights_sha256"] = save_checkpoint(cfg.out, tensors, model.checkpoint_config(), manifest)
    return report
