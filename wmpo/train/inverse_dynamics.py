"""Train the residual inverse-dynamics model and its full-IDM baseline (``wmpo train inverse-dynamics``).

Real transitions: every episode of the given datasets is encoded once by the world model's frozen
frame autoencoder (``LatentEpisodes``, cached under ``<out>/cache``); a transition is latent frame
k-1 -> k and its ``frame_stride`` env actions (8 numbers).

Priors, as the action optimizer will hand them over: the trajectory VAE's window of
``chunks x 8`` actions (32 for the bundled VAE) containing the transition (chunk-aligned, plus the
episode's last window so its tail is covered) is encoded to its latent mean, Gaussian noise is
added in latent space, and the window is decoded; the transition's actions in the decoded window
are its prior. The noise stands in for the error of an optimized latent: its scale is drawn per
window from U[0, prior_noise] (in units of the VAE's N(0, 1) latent prior), so the model sees
good and bad priors alike. Priors are decoded ahead of training, ``prior_draws`` noisy decodes per
window (decoding on the fly would cost more than the IDM's own step on a CPU).

Both variants (``residual``: prior + correction; ``full``: frames only) train on the same
batches. Validation: held-out episodes of the training tasks (split by episode, seeded) and, with
``heldout_data``, episodes of tasks never trained on; reported as MSE per action value of the
final (clamped) actions vs the truth, for the prior alone, the residual IDM and the full IDM, at
the training noise distribution and at fixed noise levels. Each variant is saved as an fp16
checkpoint with the report in its manifest (``<out>/residual``, ``<out>/full``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.data.latents import LatentEpisodes
from wmpo.data.play import expand_datasets
from wmpo.errors import ConfigError, DatasetError
from wmpo.models.inverse_dynamics import PRESETS, InverseDynamics, InverseDynamicsConfig
from wmpo.models.trajectory_vae import TrajectoryVAE
from wmpo.train.common import cosine_lr, set_lr
from wmpo.train.trajectory_vae import action_windows
from wmpo.utils.checkpoint import environment_info, save_checkpoint
from wmpo.utils.config import bounded, check_bounds

REPO = Path(__file__).resolve().parent.parent.parent
VARIANTS = ("residual", "full")
EVAL_NOISE = (0.0, 0.5, 1.0)  # fixed noise levels, as fractions of prior_noise, in the report


@dataclass
class InverseDynamicsTrainConfig:
    data: list[str]
    out: str
    heldout_data: list[str] = field(default_factory=list)  # tasks never trained on
    trajectory_vae: str = str(REPO / "checkpoints" / "trajectory-vae")
    autoencoder: str = str(REPO / "checkpoints" / "world-model")  # its frozen frame autoencoder
    frame_stride: int = bounded(2, ge=1, le=8, flag="--frame-stride")  # the world model's
    preset: str = bounded("small", choices=tuple(PRESETS), flag="--preset")
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    steps: int = bounded(3000, ge=1, le=10_000_000, flag="--steps")
    batch_size: int = bounded(256, ge=1, le=65_536, flag="--batch-size")
    lr: float = bounded(1e-3, gt=0, lt=1, flag="--lr")
    warmup: int = bounded(100, ge=0, le=1_000_000, flag="--warmup")
    prior_noise: float = bounded(1.0, ge=0, le=100, flag="--prior-noise")
    prior_draws: int = bounded(4, ge=1, le=64, flag="--prior-draws")
    val_fraction: float = bounded(0.1, gt=0, lt=1, flag="--val-fraction")
    val_max: int = bounded(8192, ge=1, le=1_000_000, flag="--val-max")  # transitions per report
    seed: int = bounded(0, ge=0, lt=2**31, flag="--seed")
    overrides: dict[str, Any] = field(default_factory=dict)  # InverseDynamicsConfig fields

    def validate(self) -> None:
        problems = check_bounds(self)
        if not self.data:
            problems.append("data: give at least one dataset directory")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            problems.append(f"variants (--variants): each must be one of {', '.join(VARIANTS)}, got {self.variants}")
        if problems:
            raise ConfigError("invalid inverse-dynamics training config: " + "; ".join(problems))


@dataclass
class Transitions:
    """Every (transition, VAE window containing it) pair of some encoded episodes.

    ``windows`` holds the true action windows; pair i is the transition into latent row
    ``rows[i]`` at position ``offset[i]`` (in transitions) of window ``window[i]``."""

    data: LatentEpisodes
    stride: int
    windows: torch.Tensor  # (Nw, T, 4) true actions
    window_episode: np.ndarray  # (Nw,)
    rows: np.ndarray  # (N,) latent row of the transition's end frame
    first: np.ndarray  # (N,) first latent row of its episode
    window: np.ndarray  # (N,)
    offset: np.ndarray  # (N,)

    @classmethod
    def build(cls, data: LatentEpisodes, stride: int, steps: int, chunk: int) -> Transitions:
        if steps % stride or chunk % stride:
            raise ConfigError(f"the VAE's window ({steps} actions) and chunk ({chunk}) must be multiples of "
                              f"the frame stride {stride}")
        per = steps // stride  # transitions per window
        windows, w_ep, rows, first, win, off = [], [], [], [], [], []
        for e in range(len(data)):
            s, n = int(data.starts[e]), int(data.lengths[e])
            env = data.actions[s + 1:s + n].reshape(-1, 4)  # (L, 4): the episode's env actions
            if len(env) < steps:
                continue
            starts = list(range(0, len(env) - steps + 1, chunk))
            if starts[-1] != len(env) - steps:  # cover the tail too
                starts.append(len(env) - steps)
            for w in starts:
                windows.append(env[w:w + steps])
                w_ep.append(e)
                j = np.arange(per)
                rows.append(s + w // stride + 1 + j)  # frame k is reached by env actions (k-1)s..ks-1
                first.append(np.full(per, s))
                win.append(np.full(per, len(windows) - 1))
                off.append(j)
        if not windows:
            raise DatasetError(f"no episode is {steps} actions long (the trajectory VAE's window)")
        return cls(data, stride, torch.stack(windows).float(), np.asarray(w_ep), np.concatenate(rows),
                   np.concatenate(first), np.concatenate(win), np.concatenate(off))

    def __len__(self) -> int:
        return len(self.rows)

    def pairs_of(self, episodes: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(self.window_episode[self.window], episodes))

    def frames(self, idx: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(prev (B, context, C, h, w) oldest first, repeating the episode's first frame before its
        start; next (B, C, h, w)), float32."""
        r = self.rows[idx]
        back = r[:, None] - np.arange(context, 0, -1)[None]  # (B, context)
        back = np.maximum(back, self.first[idx][:, None])
        lat = self.data.latents
        return lat[torch.from_numpy(back)].float(), lat[torch.from_numpy(r)].float()

    def truth(self, idx: np.ndarray) -> torch.Tensor:
        return self.data.actions[torch.from_numpy(self.rows[idx])].float()  # (B, stride*4)

    def take(self, decoded: torch.Tensor, idx: np.ndarray, draw: np.ndarray | None = None) -> torch.Tensor:
        """The transitions' actions out of decoded windows (Nw, [draws,] T, 4) -> (B, stride*4)."""
        w = torch.from_numpy(self.window[idx])
        seg = decoded[w] if draw is None else decoded[w, torch.from_numpy(draw)]  # (B, T, 4)
        cols = torch.from_numpy(self.offset[idx] * self.stride)[:, None] + torch.arange(self.stride)[None]
        return torch.gather(seg, 1, cols[..., None].expand(-1, -1, 4)).flatten(1).float()


@torch.no_grad()
def decode_priors(vae: TrajectoryVAE, windows: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator,
                  batch: int = 1024) -> torch.Tensor:
    """Windows (Nw, T, 4), noise scale per window (Nw,) -> decoded noisy windows (Nw, T, 4) fp16:
    the latent mean plus sigma * N(0, 1), decoded."""
    out = []
    for i in range(0, len(windows), batch):
        mean, _ = vae.encode(windows[i:i + batch])  # (b, S, Z)
        z = mean + sigma[i:i + batch, None, None] * torch.randn(mean.shape, generator=gen)
        out.append(vae.decode(z).flatten(1, 2).half())  # (b, T, 4)
    return torch.cat(out)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


@torch.no_grad()
def evaluate(models: dict[str, InverseDynamics], tr: Transitions, idx: np.ndarray, priors: torch.Tensor,
             batch: int = 1024) -> dict[str, float]:
    """MSE per action value of the prior and each model's final actions on transitions ``idx``."""
    sq: dict[str, float] = {"prior": 0.0, **{k: 0.0 for k in models}}
    for i in range(0, len(idx), batch):
        b = idx[i:i + batch]
        truth, prior = tr.truth(b), priors[i:i + batch]
        sq["prior"] += mse(prior, truth) * len(b)
        for name, m in models.items():
            prev, nxt = tr.frames(b, m.cfg.context)
            sq[name] += mse(m(prev, nxt, prior if m.cfg.residual else None), truth) * len(b)
    return {k: round(v / len(idx), 5) for k, v in sq.items()}


def train_inverse_dynamics(cfg: InverseDynamicsTrainConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    from wmpo.train.world_model import load_autoencoder

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    vae, vae_sha = TrajectoryVAE.load(cfg.trajectory_vae)  # fp16 on disk, float32 eval model
    ae, ae_sha = load_autoencoder(cfg.autoencoder)
    vc = vae.cfg
    if vc.action_dim != 4:
        raise ConfigError(f"the trajectory VAE's actions are {vc.action_dim}-D; the episodes' are 4-D")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    min_frames = vc.steps // cfg.frame_stride + 1

    def encode(paths: list[str], name: str) -> LatentEpisodes:
        paths = expand_datasets(paths)
        action_windows(paths, vc.steps, vc.chunk_length)  # a clear error when no episode is long enough
        return LatentEpisodes.encode_cached(paths, ae, ae_sha, cfg.frame_stride, min_frames, out / "cache" / name)

    train_tr = Transitions.build(encode(cfg.data, "train"), cfg.frame_stride, vc.steps, vc.chunk_length)
    held_tr = (Transitions.build(encode(cfg.heldout_data, "heldout"), cfg.frame_stride, vc.steps, vc.chunk_length)
               if cfg.heldout_data else None)
    if held_tr is not None and (shared := set(held_tr.data.tasks) & set(train_tr.data.tasks)):
        raise ConfigError(f"held-out data shares tasks with the training data: {sorted(shared)}")
    encode_seconds = time.perf_counter() - t0

    rng = np.random.default_rng(cfg.seed)
    episodes = np.unique(train_tr.window_episode)
    if len(episodes) < 2:
        raise DatasetError(f"need at least 2 episodes of >= {vc.steps} actions to split off validation, "
                           f"got {len(episodes)}")
    val_eps = np.sort(rng.choice(episodes, max(1, int(len(episodes) * cfg.val_fraction)), replace=False))
    val_pairs = train_tr.pairs_of(val_eps)
    train_pairs = np.setdiff1d(np.arange(len(train_tr)), val_pairs)

    # Priors for training: prior_draws noisy decodes of every window, each with its own scale.
    gen = torch.Generator().manual_seed(cfg.seed)
    nw = len(train_tr.windows)
    sigma = torch.rand(nw * cfg.prior_draws, generator=gen) * cfg.prior_noise
    decoded = decode_priors(vae, train_tr.windows.repeat_interleave(cfg.prior_draws, 0), sigma, gen)
    decoded = decoded.reshape(nw, cfg.prior_draws, vc.steps, 4)

    # Validation sets: at most val_max pairs each, each with fixed noise (drawn from the training
    # distribution, and at fixed levels). The same seed gives the same numbers for every variant.
    def val_set(tr: Transitions, pairs: np.ndarray, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        r = np.random.default_rng(seed)
        idx = np.sort(r.choice(pairs, min(cfg.val_max, len(pairs)), replace=False))
        n = len(tr.windows)
        levels = {"train_dist": torch.rand(n, generator=g) * cfg.prior_noise}
        levels.update({f"sigma={f * cfg.prior_noise:g}": torch.full((n,), f * cfg.prior_noise) for f in EVAL_NOISE})
        need = torch.from_numpy(np.unique(tr.window[idx]))  # decode only the windows in use
        priors = {}
        for k, s in levels.items():
            dec = torch.zeros(tr.windows.shape, dtype=torch.float16)
            dec[need] = decode_priors(vae, tr.windows[need], s[need], g)
            priors[k] = tr.take(dec, idx)
        return {"idx": idx, "priors": priors, "episodes": len(np.unique(tr.window_episode[tr.window[idx]]))}

    vals = {"val": val_set(train_tr, val_pairs, cfg.seed + 1)}
    if held_tr is not None:
        vals["heldout_tasks"] = val_set(held_tr, np.arange(len(held_tr)), cfg.seed + 2)
    val_trs = {"val": train_tr, "heldout_tasks": held_tr}

    preset = PRESETS[cfg.preset]
    models: dict[str, InverseDynamics] = {}
    train_seconds: dict[str, float] = {}
    final_loss: dict[str, float] = {}
    for variant in cfg.variants:
        torch.manual_seed(cfg.seed)
        mcfg = InverseDynamicsConfig(**{**asdict(preset), "latent_channels": ae.config.latent_channels,
                                        "latent_size": ae.config.latent_size, "action_dim": cfg.frame_stride * 4,
                                        **cfg.overrides, "residual": variant == "residual"})
        model = InverseDynamics(mcfg)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        g = torch.Generator().manual_seed(cfg.seed)  # the same batches for every variant
        t1 = time.perf_counter()
        bar = tqdm(range(cfg.steps), desc=f"inverse dynamics ({variant})", disable=not progress)
        ema = None
        for step in bar:
            set_lr(opt, cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup))
            pick = torch.randint(0, len(train_pairs), (cfg.batch_size,), generator=g).numpy()
            draw = torch.randint(0, cfg.prior_draws, (cfg.batch_size,), generator=g).numpy()
            b = train_pairs[pick]
            prev, nxt = train_tr.frames(b, mcfg.context)
            prior = train_tr.take(decoded, b, draw) if mcfg.residual else None
            loss = model.loss(prev, nxt, prior, train_tr.truth(b))
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            bar.set_postfix(mse=f"{ema:.4f}")
        train_seconds[variant] = round(time.perf_counter() - t1, 1)
        final_loss[variant] = round(float(ema or 0.0), 5)
        models[variant] = model.eval()

    report: dict[str, Any] = {}
    for split, v in vals.items():
        tr = val_trs[split]
        assert tr is not None
        report[split] = {"transitions": len(v["idx"]), "episodes": v["episodes"],
                         **{level: evaluate(models, tr, v["idx"], p) for level, p in v["priors"].items()}}
    report.update({
        "train_transitions": len(np.unique(train_tr.rows[train_pairs])),
        "train_episodes": len(episodes) - len(val_eps),
        "final_train_mse": final_loss,
        "train_seconds": train_seconds,
        "encode_seconds": round(encode_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    for variant, model in models.items():
        manifest = {"kind": "inverse-dynamics", "variant": variant,
                    "training": {**asdict(cfg), "model": model.cfg.to_dict()},
                    "trajectory_vae_sha256": vae_sha, "autoencoder_sha256": ae_sha,
                    "metrics": report, "environment": environment_info()}
        tensors = {k: v.half() for k, v in model.state_dict().items()}
        report.setdefault("weights_sha256", {})[variant] = save_checkpoint(
            out / variant, tensors, model.checkpoint_config(), manifest)
    return report
