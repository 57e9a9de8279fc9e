"""Train the per-frame autoencoder on collected frames (``wmpo train autoencoder``).

Batches mix frames from all episodes; each frame is paired with its episode's first frame,
whose difference marks the moving pixels the loss up-weights. After training, the latent
statistics (per-channel mean and std over the data) are stored so latents are normalized.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.data.episodes import EpisodeDataset
from wmpo.errors import ConfigError
from wmpo.models.autoencoder import PRESETS, FrameAutoencoder, psnr, reconstruction_loss
from wmpo.train.common import JsonlLog, cosine_lr, load_train_state, save_train_state, set_lr
from wmpo.utils.checkpoint import environment_info, save_checkpoint


@dataclass
class AutoencoderTrainConfig:
    data: list[str]
    out: str
    preset: str = "small"
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    motion_weight: float = 4.0
    val_episodes: int = 10
    seed: int = 0
    log_every: int = 50
    save_every: int = 500

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown autoencoder preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--steps and --batch-size must be >= 1 and --lr > 0")


def load_frames(paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """All frames of the datasets (N, H, W, 3), the row of each frame's episode start (N,), and
    episode metadata (with ``start`` rows into the concatenated frames)."""
    frames, starts, episodes = [], [], []
    offset = 0
    for p in paths:
        ds = EpisodeDataset.load(p)
        frames.append(ds.columns["frame"])
        for m in ds.episodes:
            starts.append(np.full(m["length"] + 1, offset + m["start"]))
            episodes.append({**m, "start": offset + m["start"], "dataset": p})
        offset += ds.num_frames
    return np.concatenate(frames), np.concatenate(starts), episodes


@torch.no_grad()
def latent_stats(ae: FrameAutoencoder, frames: torch.Tensor, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.linspace(0, len(frames) - 1, min(n, len(frames))).long()
    zs = torch.cat([ae.encode_raw(ae.to_input(frames[idx[i:i + 256]])) for i in range(0, len(idx), 256)])
    return zs.mean((0, 2, 3)), zs.std((0, 2, 3)).clamp(min=1e-4)


@torch.no_grad()
def evaluate_reconstruction(ae: FrameAutoencoder, frames: torch.Tensor, starts: torch.Tensor) -> dict[str, float]:
    """PSNR on all pixels and on moving pixels (those that differ from the episode's first frame)."""
    rec = torch.cat([ae.decode_frames(ae.encode(frames[i:i + 256])) for i in range(0, len(frames), 256)])
    ref = frames[starts]
    moving = (frames.float() - ref.float()).abs().amax(-1) > 20
    return {"psnr": psnr(rec, frames).mean().item(),
            "psnr_moving": psnr(rec, frames, moving)[moving.flatten(1).any(1)].mean().item()}


def train_autoencoder(cfg: AutoencoderTrainConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    torch.manual_seed(cfg.seed)
    frames_np, starts_np, episodes = load_frames(cfg.data)
    rng = np.random.default_rng(cfg.seed)
    val_eps = set(rng.choice(len(episodes), size=min(cfg.val_episodes, len(episodes) // 5), replace=False).tolist())
    is_val = np.zeros(len(frames_np), bool)
    for i in val_eps:
        m = episodes[i]
        is_val[m["start"]:m["start"] + m["length"] + 1] = True
    frames = torch.from_numpy(frames_np)
    starts = torch.from_numpy(starts_np)
    train_rows = torch.from_numpy(np.flatnonzero(~is_val))
    val_rows = torch.from_numpy(np.flatnonzero(is_val))

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ae = FrameAutoencoder(PRESETS[cfg.preset])
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    state_path = out / "train_state.pt"
    if (st := load_train_state(state_path)) is not None:
        ae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start = st["step"]
    log = JsonlLog(out / "train_log.jsonl")
    ae.train()
    t0 = time.time()
    loss_ema = None
    bar = tqdm(range(start, cfg.steps), desc="train autoencoder", initial=start, total=cfg.steps,
               disable=not progress)
    for step in bar:
        set_lr(opt, cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup))
        rows = train_rows[torch.randint(0, len(train_rows), (cfg.batch_size,), generator=gen)]
        x = ae.to_input(frames[rows])
        ref = ae.to_input(frames[starts[rows]])
        z = ae.encode_raw(x)
        # Decoder robustness: noise relative to the latents' current scale.
        z = z + ae.config.latent_noise * z.detach().std((0, 2, 3), keepdim=True) * torch.randn(
            z.shape, generator=gen)
        loss = reconstruction_loss(x, ae.decoder(z), ref, cfg.motion_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}")
            log.write(step=step + 1, loss=loss_ema)
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_train_state(state_path, model=ae.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                             step=step + 1)
    bar.close()
    ae.eval()
    mean, std = latent_stats(ae, frames[train_rows])
    ae.latent_mean.copy_(mean)
    ae.latent_std.copy_(std)
    metrics = evaluate_reconstruction(ae, frames[val_rows], _episode_start_rows(val_rows, starts))
    save_reconstructions(ae, frames[val_rows], out / "reconstructions.png")
    log.write(step=cfg.steps, **{f"val_{k}": v for k, v in metrics.items()})
    manifest = {
        "kind": "autoencoder",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "training": {**asdict(cfg), "seconds": round(time.time() - t0, 1), "final_loss": loss_ema,
                     "train_frames": len(train_rows), "val_frames": len(val_rows)},
        "data": {"datasets": cfg.data, "episodes": len(episodes), "val_episodes": sorted(val_eps)},
        "metrics": {"val": metrics},
        "environment": environment_info(),
    }
    sha = save_checkpoint(out, ae.state_dict(), ae.checkpoint_config(), manifest)
    state_path.unlink(missing_ok=True)
    return {"checkpoint": str(out), "sha256": sha, "val": metrics}


@torch.no_grad()
def save_reconstructions(ae: FrameAutoencoder, frames: torch.Tensor, path: Path, n: int = 12) -> None:
    """PNG with originals on the top row and reconstructions below, upscaled 2x."""
    from PIL import Image

    idx = torch.linspace(0, len(frames) - 1, n).long()
    orig = frames[idx]
    rec = ae.decode_frames(ae.encode(orig))
    grid = torch.cat([torch.cat(list(orig), 1), torch.cat(list(rec), 1)], 0).numpy()
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def _episode_start_rows(rows: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """For frames selected by ``rows``, the index (within the selection) of their episode start."""
    pos = {int(r): i for i, r in enumerate(rows.tolist())}
    return torch.tensor([pos[int(starts[r])] for r in rows.tolist()])
