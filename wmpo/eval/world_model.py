"""Evaluate a world model against the real simulator (``wmpo eval world-model``).

For each case (a task and a held-out seed): reset MetaWorld, act for a random prefix with a
noisy expert, and snapshot the full simulator state S. Then build K action sequences of
``horizon`` steps: the real continuation of the noisy expert and K-1 alternatives (another
case's real actions, the real ones time-reversed or negated, a random walk). Each is replayed
from S in the real simulator (true futures) and imagined by the world model from the same
real context (the episode's first frame as anchor and the last frames before S).

- Action following: imagined future i should be closer (pixel MSE over the first h steps)
  to true future i than to any other true future j. Accuracy over cases and sequences, per
  horizon h; chance is 1/K.
- Fidelity of the real-action future, per frame: PSNR and SSIM on whole frames and on moving
  pixels (those that differ from the frame at S in the true future), next to copy-the-last-
  frame (S repeated) and the autoencoder's reconstruction of the true frames (the ceiling).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.data.collect import EVAL_SEED_BASE, source_rng
from wmpo.data.sources import ExpertSource, RandomWalkSource
from wmpo.envs import make_env
from wmpo.errors import ConfigError
from wmpo.eval.metrics import moving_mask, psnr, ssim
from wmpo.sampling.world_model import TorchWorldModel

ALTERNATIVES = ("other", "reversed", "negated", "random")


@dataclass
class WorldModelEvalConfig:
    checkpoint: str
    tasks: list[str]
    cases: int = 20  # per task
    horizon: int = 48  # env steps imagined (a multiple of the chunk, 8)
    horizons: tuple[int, ...] = (8, 16, 32, 48)
    alternatives: tuple[str, ...] = ("other", "negated", "random")  # K = 1 + len
    prefix_min: int = 8
    prefix_max: int = 48
    noise_std: float = 0.3  # the noisy expert that produces prefixes and real continuations
    seed_offset: int = 500_000  # seeds EVAL_SEED_BASE + offset + i: held out, apart from policy eval
    sampler_steps: int | None = None
    action_guidance: float | None = None
    strip: str | None = None
    seed: int = 0
    # A plan generator (the action optimizer's, issue 17) is evaluated the same way: each action
    # sequence is encoded by this trajectory VAE and the future imagined from the frame at S
    # under its latent; the horizon is then the VAE's (chunks x chunk length).
    trajectory_vae: str | None = None

    def validate(self) -> None:
        if self.horizon % 8 or self.horizon < 8:
            raise ConfigError(f"--horizon must be a positive multiple of the chunk length 8, got {self.horizon}")
        self.horizons = tuple(h for h in self.horizons if 1 <= h <= self.horizon) or (self.horizon,)
        if bad := [a for a in self.alternatives if a not in ALTERNATIVES]:
            raise ConfigError(f"unknown alternatives {bad}; valid: {', '.join(ALTERNATIVES)}")
        if self.cases < 2:
            raise ConfigError("--cases must be >= 2 (the 'other' alternative borrows another case's actions)")


@dataclass
class Case:
    task: str
    seed: int
    prefix_frames: np.ndarray  # (P+1, H, W, 3)
    prefix_actions: np.ndarray  # (P, 4)
    real_actions: np.ndarray  # (horizon, 4)
    state: Any = field(repr=False, default=None)


def _make_case(env, task: str, seed: int, cfg: WorldModelEvalConfig, stride: int) -> Case:
    rng = np.random.default_rng([cfg.seed, seed])
    prefix = int(rng.integers(cfg.prefix_min // stride, cfg.prefix_max // stride + 1)) * stride
    src = ExpertSource(cfg.noise_std)
    src.reset(source_rng(seed, src.describe()))
    frame, _ = env.reset(seed=seed)
    frames, actions = [frame], []
    for _ in range(prefix):
        a = src.act(env, frame)
        frame = env.step(a)[0]
        frames.append(frame)
        actions.append(a)
    state = env.get_sim_state()
    real = []
    for _ in range(cfg.horizon):  # the real continuation, from S
        a = src.act(env, frame)
        frame = env.step(a)[0]
        real.append(a)
    return Case(task, seed, np.stack(frames), np.asarray(actions), np.asarray(real), state)


def _alternative(kind: str, case: Case, other: Case, seed: int) -> np.ndarray:
    if kind == "other":
        return other.real_actions
    if kind == "reversed":
        return case.real_actions[::-1].copy()
    if kind == "negated":
        return -case.real_actions
    walk = RandomWalkSource()
    walk.reset(np.random.default_rng([seed, 7]))
    return np.stack([walk.act(None, None) for _ in range(len(case.real_actions))])


class PlanImagination:
    """A plan generator and its trajectory VAE, imagining action sequences through their latents."""

    def __init__(self, wm: TorchWorldModel, vae_dir: str) -> None:
        from wmpo.models.trajectory_vae import TrajectoryVAE

        if not wm.dit.config.has_plan:
            raise ConfigError("--trajectory-vae is for a plan generator; this checkpoint has no plan conditioning")
        self.wm = wm
        self.vae, _ = TrajectoryVAE.load(vae_dir)

    @torch.no_grad()
    def imagine(self, frame: np.ndarray, instruction: str, actions: np.ndarray, seeds: list[int]) -> np.ndarray:
        """Frame (H, W, 3), K sequences (K, T, 4) -> imagined frames (K, T / stride, H, W, 3)."""
        from wmpo.models.text import embed_instructions
        from wmpo.sampling.plan import imagine_plan

        k, v = len(actions), self.vae.cfg
        z = self.vae.encode(torch.as_tensor(np.clip(actions, -1, 1), dtype=torch.float32))[0]
        start = self.wm.encode(frame[None]).expand(k, -1, -1, -1)
        text = (torch.from_numpy(embed_instructions([instruction])).expand(k, -1)
                if self.wm.dit.config.text_dim else None)
        lat = imagine_plan(self.wm.dit, start, z, torch.ones(k, dtype=torch.bool), text, seeds, self.wm.sampler,
                           v.chunks, v.chunk_length // self.wm.frame_stride)
        return self.wm.decode(lat)


def _follows(imagined: np.ndarray, truths: np.ndarray) -> list[bool]:
    """(K, n, H, W, 3) imagined and true futures -> per sequence: is its imagined future closer
    (pixel MSE) to its own true future than to any other?"""
    d = ((imagined[:, None] - truths[None]) ** 2).mean(axis=(2, 3, 4, 5))  # (K imagined, K true)
    return (d.argmin(1) == np.arange(len(truths))).tolist()


def evaluate_world_model(cfg: WorldModelEvalConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    wm = TorchWorldModel.load(cfg.checkpoint).with_sampler(cfg.sampler_steps or None, cfg.action_guidance)
    plan = PlanImagination(wm, cfg.trajectory_vae) if cfg.trajectory_vae else None
    if plan is not None:
        cfg.horizon = plan.vae.cfg.steps
        cfg.horizons = tuple(h for h in cfg.horizons if h < cfg.horizon) + (cfg.horizon,)
    elif wm.dit.config.has_plan:
        raise ConfigError(f"{cfg.checkpoint} is a plan generator: give its --trajectory-vae")
    stride = wm.frame_stride
    n_ctx = wm.sampler.context_frames
    kinds = ("real", *cfg.alternatives)
    n_frames = cfg.horizon // stride
    hits: dict[int, list[bool]] = {h: [] for h in cfg.horizons}
    ceiling: dict[int, list[bool]] = {h: [] for h in cfg.horizons}
    fid: dict[str, list[np.ndarray]] = {k: [] for k in
                                        ("psnr", "psnr_moving", "ssim", "ssim_moving", "copy_psnr", "copy_psnr_moving",
                                         "copy_ssim", "copy_ssim_moving", "ae_psnr", "ae_psnr_moving")}
    strip_rows: list[np.ndarray] = []
    t0 = time.time()
    imagine_seconds = 0.0
    bar = tqdm(total=cfg.cases * len(cfg.tasks), desc="eval world model", disable=not progress)
    for task in cfg.tasks:
        env = make_env(task, max_steps=500, terminate_on_success=False)
        seeds = [EVAL_SEED_BASE + cfg.seed_offset + i for i in range(cfg.cases)]
        cases = [_make_case(env, task, s, cfg, stride) for s in seeds]
        for ci, case in enumerate(cases):
            seqs = [case.real_actions] + [_alternative(k, case, cases[(ci + 1) % len(cases)], case.seed)
                                          for k in cfg.alternatives]
            truths = np.stack([env.replay(case.state, a)[0] for a in seqs])  # (K, horizon+1, H, W, 3)
            truth_s = truths[:, stride::stride]  # (K, n_frames, ...) aligned with imagined frames
            # Real context: the anchor and the last frames at the model's stride, ending at S.
            p = len(case.prefix_actions)
            idx = [j for j in range(p, 0, -stride)][:n_ctx][::-1]
            hist_acts = np.stack([case.prefix_actions[j - stride:j].reshape(-1) for j in idx])
            t1 = time.time()
            if plan is not None:  # from the frame at S, under each sequence's trajectory latent
                imagined = plan.imagine(case.prefix_frames[-1], env.instruction, np.stack(seqs),
                                        [case.seed * 10 + k for k in range(len(seqs))])
            else:
                root = wm.start_with_history(case.prefix_frames[0], case.prefix_frames[idx], hist_acts,
                                             seed=case.seed)
                group = wm.fork(root, [case.seed * 10 + k for k in range(len(seqs))])
                lat = [wm.step(group, np.stack([s[c:c + 8] for s in seqs])) for c in range(0, cfg.horizon, 8)]
                imagined = wm.decode(torch.cat(lat, 1))  # (K, n_frames, H, W, 3)
            imagine_seconds += time.time() - t1
            im = imagined.astype(np.float32)
            tr = truth_s.astype(np.float32)
            # The metric's own ceiling: every true future through the autoencoder, scored as if
            # imagined. Where true futures are indistinguishable (an arm pressed against a wall, a
            # sequence near zero) even a perfect model cannot follow its actions.
            ae_all = wm.decode(wm.encode(truth_s.reshape(-1, *truth_s.shape[2:]))).reshape(truth_s.shape)
            for h in cfg.horizons:
                n = h // stride
                hits[h].extend(_follows(im[:, :n], tr[:, :n]))
                ceiling[h].extend(_follows(ae_all[:, :n].astype(np.float32), tr[:, :n]))
            # Fidelity of the real-action future.
            true_t = torch.from_numpy(truth_s[0])
            imag_t = torch.from_numpy(imagined[0])
            start = torch.from_numpy(case.prefix_frames[-1])
            copy_t = start.expand_as(true_t)
            mask = moving_mask(true_t, start)
            ae_t = torch.from_numpy(ae_all[0])
            has = mask.flatten(1).any(1)
            nan = torch.full((n_frames,), float("nan"))
            fid["psnr"].append(psnr(imag_t, true_t).numpy())
            fid["ssim"].append(ssim(imag_t, true_t).numpy())
            fid["copy_psnr"].append(psnr(copy_t, true_t).numpy())
            fid["copy_ssim"].append(ssim(copy_t, true_t).numpy())
            fid["ae_psnr"].append(psnr(ae_t, true_t).numpy())
            fid["psnr_moving"].append(torch.where(has, psnr(imag_t, true_t, mask), nan).numpy())
            fid["ssim_moving"].append(torch.where(has, ssim(imag_t, true_t, mask), nan).numpy())
            fid["copy_psnr_moving"].append(torch.where(has, psnr(copy_t, true_t, mask), nan).numpy())
            fid["copy_ssim_moving"].append(torch.where(has, ssim(copy_t, true_t, mask), nan).numpy())
            fid["ae_psnr_moving"].append(torch.where(has, psnr(ae_t, true_t, mask), nan).numpy())
            if ci == 0 and len(strip_rows) < 4 * 3:
                alt = 1 + (cfg.alternatives.index("negated") if "negated" in cfg.alternatives else 0)
                cols = slice(1, n_frames, 2)
                for row in (truth_s[0][cols], imagined[0][cols], truth_s[alt][cols], imagined[alt][cols]):
                    strip_rows.append(np.concatenate([case.prefix_frames[-1], *row], axis=1))
            bar.update(1)
        env.close()
    bar.close()
    steps = [(i + 1) * stride for i in range(n_frames)]
    per_frame = {k: np.nanmean(np.stack(v), axis=0).round(3).tolist() for k, v in fid.items()}
    n_cases = len(fid["psnr"])
    report = {
        "checkpoint": cfg.checkpoint,
        "provenance": wm.provenance(),
        "config": asdict(cfg),
        "cases": n_cases,
        "K": len(kinds),
        "sequences": list(kinds),
        "action_following": {str(h): {"accuracy": float(np.mean(hits[h])), "n": len(hits[h]),
                                      "chance": 1 / len(kinds), "ae_ceiling": float(np.mean(ceiling[h])),
                                      # hits are stored case by case in the order of `kinds`
                                      "by_sequence": {k: float(np.mean(hits[h][i::len(kinds)]))
                                                      for i, k in enumerate(kinds)}}
                             for h in cfg.horizons},
        "fidelity": {"env_steps": steps, **per_frame},
        "fidelity_at": {str(h): {k: per_frame[k][h // stride - 1] for k in per_frame} for h in cfg.horizons},
        "seconds": round(time.time() - t0, 1),
        "imagined_frames_per_second": round(n_cases * len(kinds) * n_frames / max(imagine_seconds, 1e-9), 1),
    }
    if cfg.strip and strip_rows:
        from PIL import Image

        Path(cfg.strip).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(strip_rows, axis=0)).save(cfg.strip)
        report["strip"] = cfg.strip
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"world model {r['checkpoint']}  ({r['cases']} cases, K={r['K']}: {', '.join(r['sequences'])})",
             f"{'horizon':>8} {'follow acc':>10} {'AE follow':>9} {'chance':>7} {'PSNR':>6} {'copy':>6} {'AE':>6} "
             f"{'PSNRmov':>8} {'copymov':>8} {'AEmov':>6} {'SSIM':>6} {'copy':>6}"]
    for h, a in r["action_following"].items():
        f = r["fidelity_at"][h]
        ceiling = a.get("ae_ceiling", float("nan"))  # absent in reports written before it existed
        lines.append(f"{h:>8} {a['accuracy']:>10.3f} {ceiling:>9.3f} {a['chance']:>7.2f} {f['psnr']:>6.2f} {f['copy_psnr']:>6.2f} "
                     f"{f['ae_psnr']:>6.2f} {f['psnr_moving']:>8.2f} {f['copy_psnr_moving']:>8.2f} "
                     f"{f['ae_psnr_moving']:>6.2f} {f['ssim']:>6.3f} {f['copy_ssim']:>6.3f}")
    for h, a in r["action_following"].items():
        if "by_sequence" in a:
            lines.append(f"follow acc at {h} by sequence: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in a["by_sequence"].items()))
    lines.append(f"imagined frames/s during eval: {r['imagined_frames_per_second']}")
    return "\n".join(lines)
