"""Supervised training of the base policy on demonstrations (behaviour cloning of action chunks).

Each frame of an episode is a sample; its target is the chunk of the next K actions, and
chunk positions past the episode's end are masked out of the loss. The loss is the
cross-entropy of the K x D action tokens. Images get random-shift augmentation (pad 4 px,
random crop), which matters a lot with few demonstrations.

Progress goes to a tqdm bar and to ``<out>/train_log.jsonl``; ``--resume`` continues from
``<out>/train_state.pt``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wmpo.data.episodes import EpisodeDataset
from wmpo.errors import ConfigError
from wmpo.models.policy import PRESETS, Policy
from wmpo.train.common import cosine_lr, load_train_state, save_train_state, set_lr
from wmpo.utils.checkpoint import environment_info, save_checkpoint


@dataclass
class PolicyTrainConfig:
    data: str
    out: str
    tasks: list[str] | None = None
    preset: str = "small"
    demos_per_task: int | None = None  # use the first N episodes (by seed) of each task
    demos_override: dict[str, int] | None = None  # per-task N, e.g. fewer for easy tasks
    successes_only: bool = True  # behaviour cloning learns from successful demonstrations only
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    shift: int = 4  # random-shift augmentation, pixels
    seed: int = 0
    log_every: int = 50
    save_every: int = 500
    resume: bool = False

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown policy preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")


def chunk_targets(ds: EpisodeDataset, episodes: list[int], chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the samples (M,), target action chunks (M, K, 4) and their mask (M, K)."""
    rows, targets, masks = [], [], []
    act = ds.columns["action"]
    for i in episodes:
        m = ds.episodes[i]
        s, t = m["start"], m["length"]
        idx = np.arange(t)[:, None] + np.arange(chunk)[None]  # (T, K) step indices
        valid = idx < t
        rows.append(s + np.arange(t))
        targets.append(act[s + np.minimum(idx, t - 1)])
        masks.append(valid)
    return np.concatenate(rows), np.concatenate(targets), np.concatenate(masks)


def random_shift(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """images (B, H, W, 3) uint8 -> same shape, each shifted by up to ``pad`` px (edge-padded)."""
    if pad <= 0:
        return images
    b, h, w, _ = images.shape
    x = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    out = torch.stack([x[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(b)])
    return out.permute(0, 2, 3, 1).round().to(torch.uint8)


def select_episodes(ds: EpisodeDataset, tasks: list[str], per_task: int | None,
                    successes_only: bool = True, override: dict[str, int] | None = None) -> list[int]:
    chosen = []
    override = override or {}
    if unknown := set(override) - set(tasks):
        raise ConfigError(f"demo counts given for tasks not being trained: {sorted(unknown)}")
    for task in tasks:
        n = override.get(task, per_task)
        eps = sorted((i for i, m in enumerate(ds.episodes)
                      if m["task"] == task and (m["succeeded"] or not successes_only)),
                     key=lambda i: ds.episodes[i]["seed"])
        if not eps:
            raise ConfigError(f"dataset {ds.root} has no episodes of task {task}")
        if n is not None:
            if n < 1 or len(eps) < n:
                raise ConfigError(f"asked for {n} demos of {task}; need >= 1 and the dataset has {len(eps)}")
            eps = eps[:n]
        chosen.extend(eps)
    return chosen


def train_policy(cfg: PolicyTrainConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    torch.manual_seed(cfg.seed)
    ds = EpisodeDataset.load(cfg.data)
    tasks = cfg.tasks or sorted({m["task"] for m in ds.episodes})
    episodes = select_episodes(ds, tasks, cfg.demos_per_task, cfg.successes_only, cfg.demos_override)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    model_cfg = PRESETS[cfg.preset]
    policy = Policy(model_cfg)
    rows, targets, masks = chunk_targets(ds, episodes, model_cfg.chunk)
    policy.tokenizer.fit(ds.columns["action"][rows])
    instr = sorted({ds.episodes[i]["instruction"] for i in episodes})
    from wmpo.models.text import embed_instructions

    policy.set_instructions(instr, embed_instructions(instr))
    instr_index = {s: i for i, s in enumerate(instr)}
    row_instr = np.concatenate([np.full(ds.episodes[i]["length"], instr_index[ds.episodes[i]["instruction"]])
                                for i in episodes])

    frames = torch.from_numpy(ds.columns["frame"])
    tokens = policy.tokenizer.encode(torch.from_numpy(targets))  # (M, K, D)
    masks_t = torch.from_numpy(masks)
    rows_t = torch.from_numpy(rows)
    instr_t = torch.from_numpy(row_instr)

    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        return cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup)

    state_path = out / "train_state.pt"
    start = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.resume and (st := load_train_state(state_path)) is not None:
        policy.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start = st["step"]

    log = open(out / "train_log.jsonl", "a")  # noqa: SIM115 (closed after the loop)
    t0 = time.time()
    policy.train()
    bar = tqdm(range(start, cfg.steps), desc="train policy", disable=not progress, initial=start,
               total=cfg.steps)
    loss_ema = None
    for step in bar:
        set_lr(opt, lr_at(step))
        idx = torch.randint(0, len(rows_t), (cfg.batch_size,), generator=gen)
        images = random_shift(frames[rows_t[idx]], cfg.shift, gen)
        text = policy.instruction_table[instr_t[idx]]
        logits = policy(images, text)  # (B, K, D, bins)
        ce = F.cross_entropy(logits.flatten(0, 2), tokens[idx].flatten(), reduction="none")
        ce = ce.view(cfg.batch_size, model_cfg.chunk, model_cfg.action_dim)
        m = masks_t[idx].unsqueeze(-1).float()
        loss = (ce * m).sum() / (m.sum() * model_cfg.action_dim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            bar.set_postfix(loss=f"{loss_ema:.3f}")
            log.write(json.dumps({"step": step + 1, "loss": loss_ema, "lr": lr_at(step),
                                  "elapsed": time.time() - t0}) + "\n")
            log.flush()
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_train_state(state_path, model=policy.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                             step=step + 1)
    bar.close()
    log.close()
    elapsed = time.time() - t0
    policy.eval()
    per_task_demos = {t: sum(1 for i in episodes if ds.episodes[i]["task"] == t) for t in tasks}
    manifest = {
        "kind": "policy",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "training": {**asdict(cfg), "samples": len(rows), "final_loss": loss_ema,
                     "seconds": round(elapsed, 1), "threads": torch.get_num_threads()},
        "data": {
            "dataset": str(cfg.data),
            "demos_per_task": per_task_demos,
            "seeds": {t: sorted(ds.episodes[i]["seed"] for i in episodes if ds.episodes[i]["task"] == t)
                      for t in tasks},
            "sources": sorted({json.dumps(ds.episodes[i]["source"], sort_keys=True) for i in episodes}),
        },
        "environment": environment_info(),
    }
    sha = save_checkpoint(out, policy.state_dict(), policy.checkpoint_config(), manifest)
    state_path.unlink(missing_ok=True)
    return {"checkpoint": str(out), "sha256": sha, "seconds": elapsed, "final_loss": loss_ema}
