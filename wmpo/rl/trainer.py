"""A GRPO job in imagination (WMPO Algorithm 1): the loop, its checkpoints and its resume.

Each step: sample real start frames (MetaWorld resets on training seeds), imagine a group of G
rollouts per start through the simulator service with the current policy, judge and verify
them through the judge, keep informative groups (dynamic sampling: all-equal groups are
dropped and more are imagined, up to ``max_sampling_rounds``), compute group advantages, and
run ``epochs`` of mini-batch clipped-surrogate updates over the chunks (``wmpo.rl.grpo``).

Durability: after every step the policy and the full training state (optimizer, RNG, step,
metrics so far) are written atomically to ``out/``; a job started again with the same
``out`` resumes from the last completed step and, given the same seeds and the same services,
makes the same updates as an uninterrupted run (imagination is seeded per step).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.data.episodes import atomic_write_json
from wmpo.errors import ConfigError
from wmpo.judge.rewards import REWARD_KINDS
from wmpo.models.policy import Policy
from wmpo.rl import TASK_SAMPLINGS
from wmpo.rl.grpo import clipped_surrogate, group_advantages, is_informative
from wmpo.rl.imagination import (
    GroupSimulator,
    ImaginedGroup,
    RolloutJudge,
    StartState,
    imagine_groups,
    temperature_log_prob,
)
from wmpo.train.common import JsonlLog, load_train_state, save_train_state, set_lr
from wmpo.utils.checkpoint import environment_info, save_checkpoint
from wmpo.utils.config import bounded, check_bounds

START_SEED_BASE = 200_000  # training start layouts; evaluation seeds start at 1,000,000


@dataclass
class GRPOConfig:
    """The GRPO algorithm's knobs; each field's bounds are declared here once (``bounded``) and
    checked by ``validate``; the trainer service derives its job schema from them."""

    policy: str  # starting policy checkpoint
    out: str
    tasks: list[str] = bounded(factory=lambda: ["button-press-topdown-v3"], min_len=1, max_len=50, flag="--tasks",
                               doc="MetaWorld v3 task names (start frames come from their resets).")
    steps: int = bounded(10, ge=1, le=1_000_000, flag="--steps", doc="GRPO updates.")
    groups_per_step: int = bounded(8, ge=1, le=1024, flag="--groups", doc="Informative groups per update.")
    group_size: int = bounded(8, ge=2, le=64, flag="--group-size", doc="Rollouts per group (G).")
    chunks: int = bounded(12, ge=1, le=64, flag="--chunks", doc="Horizon in action chunks.")
    temperature: float = bounded(1.6, gt=0, le=100, flag="--temperature",
                                 doc="Sampling temperature of the policy's action tokens.")
    lr: float = bounded(1e-5, gt=0, lt=1, flag="--lr", doc="AdamW learning rate.")
    epochs: int = bounded(2, ge=1, le=1000, flag="--epochs", doc="Passes over each step's batch.")
    minibatch: int = bounded(64, ge=1, le=1_000_000, flag="--minibatch", doc="Chunks per gradient step.")
    # Adam moves the weights about lr per gradient step whatever the evidence: one informative
    # group moves the policy as far as sixty-four (results/lifelong-door: approx. KL 11 on 6
    # groups). A target KL bounds each update in policy space instead (``update``).
    target_kl: float = bounded(0.0, ge=0, le=100, flag="--target-kl",
                               doc="Bound each update's drift from the rollout policy (approximate KL per "
                               "action chunk): a gradient step past 1.5 x this is undone and retried at half "
                               "the learning rate, and the update stops once past it (0: off).")
    max_sampling_rounds: int = bounded(3, ge=1, le=100, flag="--sampling-rounds",
                                       doc="Imagination rounds per step while filling the batch with "
                                       "informative groups (dynamic sampling).")
    verify: bool = bounded(True, doc="Dual-noise verification of judged successes.")
    reward: str = bounded("success", choices=REWARD_KINDS, flag="--reward",
                          doc="Member reward: the judged success (1/0, WMPO), the temporally weighted "
                          "clip reward of the judge's per-clip confidences (clip, RoboStereo's OEPL), or "
                          "minus the perceptual distance to the scripted expert's imagined rollout from "
                          "the same start (imitation, RoboStereo's IEPL).")
    # The imitation reward's feature network: a world-model checkpoint whose autoencoder gives the
    # perceptual distance (``wmpo.judge.perceptual``); a job fills in its embedded world model.
    perceptual_model: str | None = None
    max_grad_norm: float = bounded(1.0, gt=0, doc="Gradient clipping norm.")
    task_sampling: str = bounded("round-robin", choices=TASK_SAMPLINGS, flag="--task-sampling",
                                 doc="Start tasks: round-robin, or drawn by each task's share of informative "
                                 "groups so far (with a uniform floor).")
    seed: int = bounded(0, ge=0, lt=2**31, flag="--seed", doc="Seed of start states, sampling and updates.")

    def validate(self) -> None:
        problems = check_bounds(self)
        if self.reward == "imitation" and not self.perceptual_model:
            problems.append("reward (--reward) imitation needs a perceptual_model (--perceptual-model): a "
                            "world-model checkpoint whose autoencoder measures the distance to the expert")
        if problems:
            raise ConfigError("invalid GRPO config: " + "; ".join(problems))


def start_states(tasks: list[str], n: int, rng: np.random.Generator, envs: dict[str, Any],
                 weights: np.ndarray | None = None, expert_steps: int = 0) -> list[StartState]:
    """n real first frames, layouts from training seeds; tasks round-robin from a random first task
    (so fewer groups than tasks still reach every task over the steps), or drawn with
    probabilities ``weights`` (one per task). ``expert_steps``: also record the scripted expert's
    first actions from each layout (the imitation reward's demonstration)."""
    from wmpo.envs import make_env

    if weights is not None:
        picks = rng.choice(len(tasks), size=n, p=weights)
    else:
        picks = (np.arange(n) + rng.integers(len(tasks))) % len(tasks)
    out = []
    for i in picks:
        task = tasks[int(i)]
        if task not in envs:
            envs[task] = make_env(task)
        seed = int(START_SEED_BASE + rng.integers(0, 100_000))
        expert = expert_actions(envs[task], seed, expert_steps) if expert_steps else None
        frame, _ = envs[task].reset(seed=seed)
        out.append(StartState(frame, envs[task].instruction, task, seed, expert))
    return out


def expert_actions(env: Any, seed: int, steps: int) -> np.ndarray:
    """(steps, 4): the scripted expert's actions in MetaWorld from layout ``seed``, closed loop on the
    true state; it keeps acting after success (holding the goal) so every horizon is covered. A
    demonstration, as RoboStereo's IEPL uses: no policy rollout is spent."""
    env.reset(seed=seed)
    out = np.zeros((steps, 4), np.float32)
    for t in range(steps):
        out[t] = np.clip(env.expert_action(), -1.0, 1.0)
        env.step(out[t])
    return out


def task_weights(tasks: list[str], history: list[dict[str, Any]], floor: float = 0.2) -> np.ndarray:
    """Start-task probabilities for ``task_sampling="informative"``: each task's smoothed fraction
    of informative groups so far ((kept + 1) / (imagined + 2)), normalized, mixed with ``floor`` of
    the uniform so no task is dropped. A task the policy always solves (or never) in imagination
    gives all-equal rewards; imagining it again is the step's largest waste."""
    seen = dict.fromkeys(tasks, 0)
    kept = dict.fromkeys(tasks, 0)
    for h in history:
        for t, (n_seen, n_kept) in h.get("per_task_groups", {}).items():
            if t in seen:
                seen[t] += n_seen
                kept[t] += n_kept
    rate = np.array([(kept[t] + 1) / (seen[t] + 2) for t in tasks])
    return (1 - floor) * rate / rate.sum() + floor / len(tasks)


def policy_kl(policy: Policy, reference: Policy, frames: torch.Tensor, text: torch.Tensor) -> float:
    """Mean per-token KL(reference || policy) on given observations: a diagnostic only (GRPO here has
    no KL term)."""
    with torch.no_grad():
        lp = torch.log_softmax(policy(frames, text), -1)
        lq = torch.log_softmax(reference(frames, text), -1)
        return float((lq.exp() * (lq - lp)).sum(-1).mean())


def _samples(groups: list[ImaginedGroup]) -> dict[str, Any]:
    obs, tok, old, adv, instr = [], [], [], [], []
    for g in groups:
        a = group_advantages(g.rewards)
        m, c = np.nonzero(g.chunk_mask)
        obs.append(g.observations[m, c])
        tok.append(g.tokens[m, c])
        old.append(g.old_logp[m, c])
        adv.append(a[m])
        instr += [g.start.instruction] * len(m)
    return {"obs": torch.from_numpy(np.concatenate(obs)), "tokens": torch.from_numpy(np.concatenate(tok)),
            "old_logp": torch.from_numpy(np.concatenate(old)).float(),
            "adv": torch.from_numpy(np.concatenate(adv)).float(), "instr": instr}


MAX_BACKTRACKS = 12  # halvings of the learning rate tried on one mini-batch before the update stops


def update(policy: Policy, opt: torch.optim.Optimizer, batch: dict[str, Any], cfg: GRPOConfig,
           gen: torch.Generator) -> dict[str, float]:
    """``epochs`` passes of shuffled mini-batch clipped-surrogate updates. Dropout stays off (eval
    mode) so the new log-probs are those of the policy the ratio refers to.

    With ``cfg.target_kl``, each gradient step is checked after it is taken: if it moved its
    mini-batch's chunks past 1.5 x the target (approximate KL to the rollout policy), it is undone
    and retried at half the learning rate; the update stops once a kept step has passed the target,
    or at a mini-batch that is past it before its step (the earlier steps moved its chunks too).
    The check is after the step because Adam's first steps move every weight by about lr whatever
    the gradient, and on these policies one such step at lr 1e-4 shifts a chunk's log-prob by
    about 9 nats. The halved rate stays in the optimizer (and its saved state) for later updates;
    an update that never came near the target doubles it again, up to ``cfg.lr``."""
    policy.eval()
    n = len(batch["adv"])
    text = policy.embed(batch["instr"])
    stats: list[dict[str, float]] = []
    planned = cfg.epochs * -(-n // cfg.minibatch)
    bounded_kl = cfg.target_kl > 0
    stopped, kl_max, backtracks = False, 0.0, 0

    def log_prob(idx: torch.Tensor) -> torch.Tensor:
        return temperature_log_prob(policy, batch["obs"][idx], text[idx], batch["tokens"][idx], cfg.temperature)

    def surrogate(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return clipped_surrogate(log_prob(idx), batch["old_logp"][idx], batch["adv"][idx])

    def gradient_step(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()

    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.minibatch):
            idx = perm[i:i + cfg.minibatch]
            loss, st = surrogate(idx)
            if not bounded_kl:
                gradient_step(loss)
                stats.append({"loss": loss.item(), **st})
                continue
            if st["approx_kl"] > cfg.target_kl:  # the earlier steps moved this mini-batch past the target
                kl_max, stopped = max(kl_max, st["approx_kl"]), True
                break
            saved = copy.deepcopy(policy.state_dict()), copy.deepcopy(opt.state_dict())
            for _attempt in range(MAX_BACKTRACKS):
                gradient_step(loss)
                with torch.no_grad():
                    kl_after = surrogate(idx)[1]["approx_kl"]
                if kl_after <= 1.5 * cfg.target_kl:
                    break
                rate = opt.param_groups[0]["lr"]
                policy.load_state_dict(saved[0])  # undo, and try again with smaller steps
                opt.load_state_dict(saved[1])  # (this restores the rate too)
                set_lr(opt, rate / 2)
                backtracks += 1
                loss, st = surrogate(idx)
            else:
                stopped = True  # no step small enough: the policy stays where the last kept step left it
                break
            stats.append({"loss": loss.item(), **st})
            kl_max = max(kl_max, kl_after)
            if kl_after > cfg.target_kl:
                stopped = True
                break
        if stopped:
            break
    if bounded_kl and not stopped and kl_max < cfg.target_kl / 2:
        set_lr(opt, min(2 * opt.param_groups[0]["lr"], cfg.lr))
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]} if stats else {}
    out.update(gradient_steps=len(stats), gradient_steps_planned=planned, lr=opt.param_groups[0]["lr"])
    if bounded_kl:
        out.update(approx_kl_max=kl_max, backtracks=backtracks)
    return out


class Cancelled(Exception):
    """``should_stop`` asked the job to stop; its last completed step is checkpointed."""


def train_grpo(cfg: GRPOConfig, sim: GroupSimulator, judge: RolloutJudge, progress: bool = True,
               on_step: Callable[[dict[str, Any]], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               method: str = "grpo-in-imagination") -> dict[str, Any]:
    """Run (or resume) a GRPO job; returns its summary. ``sim`` is a simulator client, ``judge`` a
    ``RolloutJudge`` (a judge-service client adapter). ``on_step(metrics)`` is called after each
    step's checkpoint is written; ``should_stop()`` is polled before each step and raises
    ``Cancelled`` (the job resumes from its last checkpoint if started again)."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    policy, manifest = Policy.from_checkpoint(cfg.policy)
    reference, _ = Policy.from_checkpoint(cfg.policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    start = 0
    state_path = out / "train_state.pt"
    start_sha = manifest.get("weights_sha256", "")
    if (st := load_train_state(state_path)) is not None:
        if st.get("start_policy_sha256", start_sha) != start_sha or st.get("method", method) != method:
            raise ConfigError(f"{out} holds a {st.get('method')} job that started from policy "
                              f"{st.get('start_policy_sha256', '')[:12]}, not a {method} job from {cfg.policy} "
                              f"({start_sha[:12]}): choose another --out to start a new job")
        policy.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start, history = st["step"], st["history"]
    log = JsonlLog(out / "train_log.jsonl")
    envs: dict[str, Any] = {}
    imitation, expert_steps = None, 0
    if cfg.reward == "imitation":
        from wmpo.judge.perceptual import FeatureDistance

        imitation = FeatureDistance.from_world_model(cfg.perceptual_model).distance
        expert_steps = cfg.chunks * policy.config.chunk
    pool = ThreadPoolExecutor(max(4, cfg.groups_per_step))
    bar = tqdm(range(start, cfg.steps), desc="GRPO in imagination", initial=start, total=cfg.steps,
               disable=not progress)
    for step in bar:
        if should_stop is not None and should_stop():
            bar.close()
            pool.shutdown()
            raise Cancelled(f"stopped before step {step + 1} of {cfg.steps}")
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, step])  # imagination of step s depends only on (seed, s)
        timing: dict[str, float] = {}
        kept: list[ImaginedGroup] = []
        seen: list[ImaginedGroup] = []
        weights = task_weights(cfg.tasks, history) if cfg.task_sampling == "informative" else None
        for rnd in range(cfg.max_sampling_rounds):
            need = cfg.groups_per_step - len(kept)
            starts = start_states(cfg.tasks, need if rnd else cfg.groups_per_step, rng, envs, weights, expert_steps)
            groups = imagine_groups(sim, judge, policy, starts, cfg.group_size, cfg.chunks, cfg.temperature,
                                    seed=cfg.seed * 100_003 + step * 101 + rnd, verify=cfg.verify, pool=pool, timing=timing,
                                    reward=cfg.reward, imitation=imitation)
            seen += groups
            kept += [g for g in groups if not g.discard and is_informative(g.rewards)]
            if len(kept) >= cfg.groups_per_step:
                break
        t1 = time.perf_counter()
        metrics: dict[str, Any] = {
            "step": step + 1,
            "imagined_success": float(np.mean([g.success.mean() for g in seen])),
            "reward": float(np.mean([g.rewards.mean() for g in seen])),
            "groups_imagined": len(seen), "groups_kept": len(kept),
            "groups_discarded": sum(g.discard for g in seen),
            "dnv_flags": int(sum(g.flagged.sum() for g in seen)),
            "dnv_judged_successes": int(sum(g.success.sum() for g in seen)),
            "per_task_success": {t: float(np.mean([g.success.mean() for g in seen if g.start.task == t]))
                                 for t in sorted({g.start.task for g in seen})},
            "per_task_groups": {t: [sum(g.start.task == t for g in seen), sum(g.start.task == t for g in kept)]
                                for t in sorted({g.start.task for g in seen})},
        }
        if kept:
            batch = _samples(kept)
            metrics.update(update(policy, opt, batch, cfg, gen))
            metrics["chunks_trained"] = len(batch["adv"])
            sub = torch.arange(0, len(batch["adv"]), max(1, len(batch["adv"]) // 256))
            metrics["kl_to_start"] = policy_kl(policy, reference, batch["obs"][sub],
                                               policy.embed([batch["instr"][i] for i in sub.tolist()]))
        t2 = time.perf_counter()
        metrics["seconds"] = {"imagine": round(timing.get("imagine_s", 0.0), 2),
                              "judge": round(timing.get("judge_s", 0.0), 2),
                              "verify": round(timing.get("verify_s", 0.0), 2),
                              "update": round(t2 - t1, 2), "step": round(t2 - t0, 2)}
        metrics["imagined_frames_per_s"] = round(timing.get("imagined_frames", 0.0) / max(timing.get("imagine_s", 1e-9), 1e-9), 1)
        history.append(metrics)
        log.write(**metrics)
        bar.set_postfix(success=f"{metrics['imagined_success']:.2f}", kept=len(kept))
        _save_policy(policy, out / "policy", cfg, manifest, history, method)
        save_train_state(state_path, model=policy.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                         step=step + 1, history=history, start_policy_sha256=start_sha, method=method)
        if on_step is not None:
            on_step(metrics)
    bar.close()
    pool.shutdown()
    summary = {"config": asdict(cfg), "steps": len(history), "history": history, "policy": str(out / "policy")}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _save_policy(policy: Policy, directory: Path, cfg: GRPOConfig, start_manifest: dict[str, Any],
                 history: list[dict[str, Any]], method: str) -> None:
    manifest = {
        "kind": "policy",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "training": {"method": method, **asdict(cfg), "steps_done": len(history),
                     "start_policy_sha256": start_manifest.get("weights_sha256", "")},
        "grpo_history": history,
        "environment": environment_info(),
    }
    save_checkpoint(directory, policy.state_dict(), policy.checkpoint_config(), manifest)


def load_summary(out: str) -> dict[str, Any]:
    return json.loads((Path(out) / "summary.json").read_text())
