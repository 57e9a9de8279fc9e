"""Train the video DiT on latent sequences of collected episodes (``wmpo train world-model``).

The autoencoder is trained first (``wmpo train autoencoder``) and frozen; every episode is
encoded once, then the DiT is trained with the rectified-flow objective of
``wmpo.models.flow`` on random windows (anchor + ``window`` frames, random context/generation
split). An exponential moving average of the weights is what gets saved and sampled.
Resumable: ``<out>/train_state.pt`` is written every ``save_every`` steps, and a world-model
checkpoint (autoencoder + EMA DiT) is refreshed at the same time so a long background run
always leaves something usable.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.data.latents import LatentEpisodes
from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.flow import flow_matching_loss
from wmpo.models.video_dit import PRESETS, VideoDiT, VideoDiTConfig
from wmpo.sampling.rollout import SamplerConfig
from wmpo.sampling.world_model import TorchWorldModel
from wmpo.train.common import JsonlLog, cosine_lr, load_train_state, save_train_state
from wmpo.utils.checkpoint import environment_info, load_checkpoint


@dataclass
class WorldModelTrainConfig:
    data: list[str]
    autoencoder: str
    out: str
    preset: str = "small"
    steps: int = 20000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 500
    window: int = 8  # latent frames after the anchor
    ema: float = 0.999
    action_dropout: float = 0.1  # for classifier-free guidance on actions at sampling time
    val_episodes: int = 16
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    save_every: int = 500
    init: str | None = None  # fine-tune: start from this world model's DiT (its preset wins)

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown DiT preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--steps and --batch-size must be >= 1 and --lr > 0")
        if not 2 <= self.window < PRESETS[self.preset].max_frames:
            raise ConfigError(f"--window must be in [2, {PRESETS[self.preset].max_frames - 1}]")


def load_autoencoder(directory: str) -> tuple[FrameAutoencoder, str]:
    tensors, config, manifest = load_checkpoint(directory)
    if config.get("kind") == "world-model":  # reuse the autoencoder of an existing world model
        tensors = {k[3:]: v for k, v in tensors.items() if k.startswith("ae.")}
        config = config["autoencoder"]
    if config.get("kind") != "autoencoder":
        raise CheckpointError(f"{directory} is a {config.get('kind')!r} checkpoint, not an autoencoder")
    return FrameAutoencoder.from_config_and_tensors(config, tensors, directory), manifest.get("weights_sha256", "")


def train_world_model(cfg: WorldModelTrainConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    torch.manual_seed(cfg.seed)
    ae, ae_sha = load_autoencoder(cfg.autoencoder)
    for p in ae.parameters():
        p.requires_grad_(False)
    init_sha = ""
    if cfg.init:  # fine-tuning (WMPO's policy behaviour alignment): the DiT's shape is the init's
        init_wm = TorchWorldModel.load(cfg.init)
        if init_wm.ae.config != ae.config:
            raise ConfigError(f"--init {cfg.init} was trained with another autoencoder than {cfg.autoencoder}")
        dit_cfg = init_wm.dit.config
        init_sha = init_wm.hashes.get("world_model_sha256", "")
    else:
        dit_cfg = VideoDiTConfig(**{**asdict(PRESETS[cfg.preset]),
                                    "latent_channels": ae.config.latent_channels,
                                    "latent_size": ae.config.latent_size})
    t_enc = time.time()
    data = LatentEpisodes.encode(cfg.data, ae, dit_cfg.frame_stride, min_frames=cfg.window + 1)
    if len(data) < 2:
        raise ConfigError(f"need at least 2 episodes with >= {cfg.window + 1} latent frames, got {len(data)}")
    enc_seconds = time.time() - t_enc
    rng = np.random.default_rng(cfg.seed)
    n_val = min(cfg.val_episodes, max(1, len(data) // 10))
    val_eps = np.sort(rng.choice(len(data), n_val, replace=False))
    train_eps = np.setdiff1d(np.arange(len(data)), val_eps)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dit = VideoDiT(dit_cfg)
    if cfg.init:
        dit.load_state_dict(init_wm.dit.state_dict())
        del init_wm
    ema = copy.deepcopy(dit).eval()
    opt = torch.optim.AdamW(dit.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    state_path = out / "train_state.pt"
    if (st := load_train_state(state_path)) is not None:
        dit.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start = st["step"]
    log = JsonlLog(out / "train_log.jsonl")
    log.write(event="start", step=start, episodes=len(data), latent_frames=len(data.latents),
              encode_seconds=round(enc_seconds, 1), params=sum(p.numel() for p in dit.parameters()))

    def val_loss() -> float:
        g = torch.Generator().manual_seed(1234)  # the same windows and noise every time
        with torch.no_grad():
            return float(np.mean([flow_matching_loss(ema, data.sample(cfg.batch_size, cfg.window, g, val_eps), g).item()
                                  for _ in range(4)]))

    def save_world_model(step: int, final: bool) -> str:
        manifest = {
            "kind": "world-model",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "complete": final,
            "training": {**asdict(cfg), "step": step, "seconds": round(time.time() - t0, 1)},
            "data": {"datasets": cfg.data, "episodes": len(data), "latent_frames": len(data.latents),
                     "tasks": sorted(set(data.tasks)), "val_episodes": val_eps.tolist()},
            "autoencoder_sha256": ae_sha,
            "init_world_model_sha256": init_sha or None,
            "environment": environment_info(),
        }
        return TorchWorldModel(ae, ema, SamplerConfig()).save(out, manifest)

    t0 = time.time()
    init_val = None
    if cfg.init and start == 0:  # how well the starting model already fits the new data (alignment's baseline)
        init_val = val_loss()
        log.write(event="init", step=start, val_loss=init_val)
    dit.train()
    loss_ema = None
    bar = tqdm(range(start, cfg.steps), desc="train world model", initial=start, total=cfg.steps,
               disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup)
        loss = flow_matching_loss(dit, data.sample(cfg.batch_size, cfg.window, gen, train_eps), gen,
                                  action_dropout=cfg.action_dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))  # short warm-up for the average
            for pe, p in zip(ema.parameters(), dit.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}")
            rec: dict[str, Any] = {"step": step + 1, "loss": loss_ema, "lr": opt.param_groups[0]["lr"]}
            if (step + 1) % cfg.eval_every == 0:
                rec["val_loss"] = val_loss()
            log.write(**rec)
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_train_state(state_path, model=dit.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                             gen=gen.get_state(), step=step + 1)
            save_world_model(step + 1, final=False)
    bar.close()
    final_val = val_loss()
    log.write(event="done", step=cfg.steps, val_loss=final_val)
    sha = save_world_model(cfg.steps, final=True)
    state_path.unlink(missing_ok=True)
    return {"checkpoint": str(out), "sha256": sha, "val_loss": final_val, "init_val_loss": init_val,
            "seconds": round(time.time() - t0, 1)}
