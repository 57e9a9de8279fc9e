"""Train the success classifier on real rollouts (``wmpo train judge``).

WMPO's recipe (``wmpo.judge.clips``): positives are the terminal clips of successful
episodes, negatives the middle clips of successes and any clip of failures; every batch is
half positives, half negatives. Clips are cut from frames at the classifier's frame stride.

Augmentations, because the judge must also work on imagined frames: one random shift per
clip (frames are not all rendered at identical pixels by the world model), mild brightness
jitter, and with probability ``recon_prob`` the clip's frames are replaced by the world
model's autoencoder reconstructions of them with latent noise (blurred the way imagined frames
are). After training, the decision threshold is chosen on the validation datasets at the
trajectory level (sliding window, any clip passes) for the best F1.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wmpo.data.episodes import EpisodeDataset
from wmpo.errors import CheckpointError, ConfigError
from wmpo.eval.judge import JudgedEpisodes, choose_threshold, judge_dataset, precision_recall_f1
from wmpo.judge.clips import subsample_indices, training_clips
from wmpo.judge.success import SuccessJudge
from wmpo.models.success_classifier import PRESETS, SuccessClassifier
from wmpo.models.text import embed_instructions
from wmpo.train.common import JsonlLog, cosine_lr, load_train_state, save_train_state, set_lr
from wmpo.utils.checkpoint import checkpoint_sha, environment_info, save_checkpoint


@dataclass
class JudgeTrainConfig:
    data: list[str]
    val_data: list[str]
    out: str
    preset: str = "small"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    margin: int = 2  # subsampled frames before a success's end that are neither positive nor negative
    shift: int = 3  # max random shift in pixels
    recon_prob: float = 0.3  # chance a clip is replaced by autoencoder reconstructions
    world_model: str | None = None  # checkpoint whose autoencoder makes the reconstructions
    recon_noise: float = 0.3
    seed: int = 0
    log_every: int = 50
    save_every: int = 500
    init: str | None = None  # fine-tune: start from this classifier's weights (its preset wins)
    # fewer validation successes or failures than this: keep --init's threshold (else 0.5)
    min_threshold_support: int = 1

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown judge preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        if not self.data or not self.val_data:
            raise ConfigError("need at least one --data and one --val-data dataset")
        if self.steps < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ConfigError("--steps must be >= 1, --batch-size >= 2 and --lr > 0")
        if not 0 <= self.recon_prob <= 1 or self.margin < 0 or self.shift < 0:
            raise ConfigError("--recon-prob must be in [0, 1]; --margin and --shift >= 0")
        if self.min_threshold_support < 1:
            raise ConfigError(f"--min-threshold-support must be >= 1, got {self.min_threshold_support}")
        if self.recon_prob > 0 and not self.world_model:
            raise ConfigError("--recon-prob > 0 needs --world-model (its autoencoder makes the reconstructions)")


@dataclass
class ClipIndex:
    """Every training clip as L row indices into one frame array."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    positives: np.ndarray  # (P, L) rows
    negatives: np.ndarray  # (Q, L) rows
    pos_instr: np.ndarray  # (P,) instruction ids
    neg_instr: np.ndarray  # (Q,)
    instructions: list[str]
    episodes: int
    successes: int


def build_clip_index(paths: list[str], clip_length: int, stride: int, margin: int) -> ClipIndex:
    frames, pos, neg, pos_i, neg_i = [], [], [], [], []
    instructions: list[str] = []
    offset = episodes = successes = 0
    for p in paths:
        ds = EpisodeDataset.load(p)
        frames.append(ds.columns["frame"])
        for m in ds.episodes:
            if m["instruction"] not in instructions:
                instructions.append(m["instruction"])
            step, rem = divmod(stride, m.get("frame_stride", 1))  # imagined episodes are already strided
            if rem or step < 1:
                raise ConfigError(f"episode frame stride {m.get('frame_stride')} does not divide the "
                                  f"classifier's {stride} ({p})")
            rows = offset + m["start"] + subsample_indices(m["length"] + 1, step)
            if len(rows) < clip_length:  # a very short episode: front-pad with its first frame
                rows = np.concatenate([np.full(clip_length - len(rows), rows[0]), rows])
            p_starts, n_starts = training_clips(len(rows), m["succeeded"], clip_length, margin)
            ii = instructions.index(m["instruction"])
            for s in p_starts:
                pos.append(rows[s:s + clip_length])
                pos_i.append(ii)
            for s in n_starts:
                neg.append(rows[s:s + clip_length])
                neg_i.append(ii)
            episodes += 1
            successes += int(m["succeeded"])
        offset += ds.num_frames
    if not pos or not neg:
        raise ConfigError(f"training data needs both successful and failed clips; got {len(pos)} positive "
                          f"and {len(neg)} negative clips from {episodes} episodes")
    return ClipIndex(np.concatenate(frames), np.stack(pos), np.stack(neg), np.asarray(pos_i), np.asarray(neg_i),
                     instructions, episodes, successes)


@torch.no_grad()
def reconstruct_frames(world_model_dir: str, frames: np.ndarray, rows: np.ndarray, noise: float, seed: int,
                       batch: int = 256) -> np.ndarray:
    """A copy of ``frames`` where ``rows`` (the frames clips use) are replaced by autoencoder
    reconstructions with Gaussian noise on the normalized latents."""
    from wmpo.sampling.world_model import TorchWorldModel

    ae = TorchWorldModel.load(world_model_dir).ae
    gen = torch.Generator().manual_seed(seed)
    out = frames.copy()
    for i in tqdm(range(0, len(rows), batch), desc="autoencoder reconstructions", leave=False):
        r = rows[i:i + batch]
        z = ae.encode(torch.from_numpy(frames[r]))
        z = z + noise * torch.randn(z.shape, generator=gen)
        out[r] = ae.decode_frames(z).numpy()
    return out


def augment(clips: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """clips (B, L, H, W, 3) uint8 -> float in [-1, 1], one random shift and brightness per clip."""
    x = clips.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0  # (B, L, 3, H, W)
    b, L, c, h, w = x.shape
    if shift > 0:
        padded = F.pad(x.flatten(1, 2), (shift, shift, shift, shift), mode="replicate")
        dx, dy = torch.randint(0, 2 * shift + 1, (2, b), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)]).view(b, L, c, h, w)
    x = x + 0.05 * torch.randn(b, 1, 1, 1, 1, generator=gen)
    return x.clamp(-1, 1).permute(0, 1, 3, 4, 2)  # (B, L, H, W, 3)


def train_success_classifier(cfg: JudgeTrainConfig, progress: bool = True,
                             judged_val: dict[str, JudgedEpisodes] | None = None) -> dict[str, Any]:
    """Train (or fine-tune) and save the classifier; returns a JSON-able summary. ``judged_val``, if
    given, receives each validation dataset's scored episodes (by path), the scores the threshold
    was chosen on, so a caller reporting on them need not judge them again."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    init, init_config, _ = SuccessClassifier.from_checkpoint(cfg.init) if cfg.init else (None, {}, {})
    mcfg = init.config if init is not None else PRESETS[cfg.preset]
    index = build_clip_index(cfg.data, mcfg.clip_length, mcfg.frame_stride, cfg.margin)
    used = np.unique(np.concatenate([index.positives.ravel(), index.negatives.ravel()]))
    recon = (reconstruct_frames(cfg.world_model, index.frames, used, cfg.recon_noise, cfg.seed)
             if cfg.recon_prob > 0 else None)
    model = SuccessClassifier(mcfg)
    if init is not None:  # everything but the instruction table, which is rebuilt for this data
        weights = {k: v for k, v in init.state_dict().items() if k != "instruction_table"}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if set(missing) != {"instruction_table"} or unexpected:
            raise CheckpointError(f"--init {cfg.init} does not match the classifier: missing {missing}, "
                                  f"unexpected {unexpected}")
    model.set_instructions(index.instructions, embed_instructions(index.instructions))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    state_path = out / "train_state.pt"
    if (st := load_train_state(state_path)) is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start = st["step"]
    log = JsonlLog(out / "train_log.jsonl")
    frames_t = torch.from_numpy(index.frames)
    recon_t = torch.from_numpy(recon) if recon is not None else None
    half = cfg.batch_size // 2
    labels = torch.cat([torch.ones(half), torch.zeros(cfg.batch_size - half)])
    t0 = time.time()
    loss_ema = acc_ema = None
    model.train()
    bar = tqdm(range(start, cfg.steps), desc="train judge", initial=start, total=cfg.steps, disable=not progress)
    for step in bar:
        set_lr(opt, cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup))
        pi = torch.randint(0, len(index.positives), (half,), generator=gen).numpy()
        ni = torch.randint(0, len(index.negatives), (cfg.batch_size - half,), generator=gen).numpy()
        rows = torch.from_numpy(np.concatenate([index.positives[pi], index.negatives[ni]]))  # (B, L)
        instr = np.concatenate([index.pos_instr[pi], index.neg_instr[ni]])
        clips = frames_t[rows]
        if recon_t is not None:
            use = torch.rand(len(rows), generator=gen) < cfg.recon_prob
            clips[use] = recon_t[rows[use]]
        logits = model(augment(clips, cfg.shift, gen), model.instruction_table[instr])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc = ((logits > 0).float() == labels).float().mean().item()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        acc_ema = acc if acc_ema is None else 0.98 * acc_ema + 0.02 * acc
        if (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}", acc=f"{acc_ema:.3f}")
            log.write(step=step + 1, loss=loss_ema, clip_accuracy=acc_ema)
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_train_state(state_path, model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                             step=step + 1)
    bar.close()
    model.eval()

    # Threshold on the validation datasets, trajectory level (sliding window, any clip passes).
    judge = SuccessJudge(model, 0.5)
    val = [judge_dataset(judge, EpisodeDataset.load(p), progress=progress) for p in cfg.val_data]
    if judged_val is not None:
        judged_val.update(zip(cfg.val_data, val, strict=True))
    val_scores = np.concatenate([v.scores for v in val])
    val_labels = np.concatenate([v.labels for v in val])
    threshold = choose_threshold(val_scores, val_labels, cfg.min_threshold_support)
    chosen_on = "val_data, trajectory-level F1"
    if threshold is None:  # e.g. a lifelong round's few validation rollouts
        n_pos = int(val_labels.sum())
        threshold = float(init_config.get("threshold", 0.5))
        chosen_on = (f"kept {'--init' if init is not None else 'the default'} threshold: the "
                     f"{len(val_labels)} validation episodes hold {n_pos} successes and "
                     f"{len(val_labels) - n_pos} failures, fewer than {cfg.min_threshold_support} "
                     "of one kind")
        print(f"warning: threshold {chosen_on}", file=sys.stderr)
    val_metrics = precision_recall_f1(val_scores >= threshold, val_labels)
    log.write(step=cfg.steps, threshold=threshold, **{f"val_{k}": v for k, v in val_metrics.items()})
    manifest = {
        "kind": "success-classifier",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "training": {**asdict(cfg), "seconds": round(time.time() - t0, 1), "final_loss": loss_ema,
                     "final_clip_accuracy": acc_ema},
        "data": {"datasets": cfg.data, "val_datasets": cfg.val_data, "episodes": index.episodes,
                 "successes": index.successes, "positive_clips": len(index.positives),
                 "negative_clips": len(index.negatives), "instructions": index.instructions},
        "threshold": {"value": threshold, "chosen_on": chosen_on},
        "init_sha256": checkpoint_sha(cfg.init) if cfg.init else None,
        "metrics": {"val": val_metrics, "val_episodes": int(len(val_labels))},
        "environment": environment_info(),
    }
    sha = save_checkpoint(out, model.state_dict(), model.checkpoint_config(threshold), manifest)
    state_path.unlink(missing_ok=True)
    return {"checkpoint": str(out), "sha256": sha, "threshold": threshold, "threshold_note": chosen_on,
            "val": val_metrics}
