"""WMPO's real-data loop: policy behaviour alignment and lifelong learning.

One round, for the current policy:

1. **collect** P real rollouts of the policy in MetaWorld (training seeds, sampling temperature
   ``rollout_temperature``), split into a training part and a validation part (both count
   towards P: the real-rollout budget is everything the loop ever ran in the real simulator);
2. **align the world model**: fine-tune it on those rollouts (successes and failures alike, so
   it can imagine how *this* policy fails), starting from the current world model;
3. **align the judge**: the new world model replays the rollouts' actions (``imagine-dataset``,
   labelled with the real outcomes), and the success classifier is fine-tuned on the real and
   imagined clips, its threshold chosen again on the validation part; with ``judge_horizon_cuts``
   also on the same rollouts cut at GRPO's horizon (relabelled by whether they had succeeded by
   then) and their imagined replays, the rollouts GRPO will ask the judge about, and the
   threshold is chosen on the cut validation rollouts alone (complete imagined trials want a
   lower threshold than cut ones, whose near misses must fail), pooled with the earlier rounds'
   validation parts and the offline ``threshold_data`` (all replayed with this round's world
   model); a pool with fewer than ``threshold_support`` successes or failures keeps the judge's
   threshold instead;
4. **GRPO in imagination** with the new world model and judge (the embedded stack: the trainer
   still reaches them only through their service clients);
5. **evaluate** the new policy in the real simulator on held-out seeds (never counted in P).

The next round starts from this round's policy, world model and judge. Every stage writes its
artifact under ``out/round-<r>/`` and records itself in ``out/lifelong.json`` (configuration,
paths, checkpoint hashes, metrics, seconds), so a stopped loop started again skips what is done
and resumes the stage it was in (collection, training and GRPO all resume).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from wmpo.data.collect import EVAL_SEED_BASE
from wmpo.data.episodes import atomic_write_json, write_cut_dataset
from wmpo.errors import ConfigError
from wmpo.utils.checkpoint import checkpoint_sha

BUNDLED = Path(__file__).resolve().parents[2] / "checkpoints"
REAL_SEED_BASE = 300_000  # layouts of the loop's real rollouts: round r trains on 300,000 + 10,000 r + i
ROUND_SEED_STRIDE = 10_000
VAL_SEED_OFFSET = 5_000  # ... and validates on 305,000 + 10,000 r + i
# Changing any other field of a loop that has started would mix artifacts of two configurations.
RESUMABLE_FIELDS = {"rounds", "workers", "eval_episodes", "calibration_episodes"}


@dataclass
class LifelongConfig:
    out: str
    tasks: list[str]
    policy: str = str(BUNDLED / "policy-base")
    world_model: str = str(BUNDLED / "world-model")
    judge: str = str(BUNDLED / "judge")
    rounds: int = 1
    real_rollouts: int = 128  # P per round, over all tasks
    val_fraction: float = 0.25  # of P, to choose the judge's threshold
    rollout_temperature: float = 1.0
    wm_steps: int = 400
    wm_lr: float = 1e-4
    judge_steps: int = 300
    judge_lr: float = 3e-4
    # The fine-tuned judge's threshold is chosen on the validation pool (threshold_data below) only when it
    # holds at least this many successes and failures; otherwise it keeps the judge's threshold, last
    # chosen on enough episodes (the bundled judge's: hundreds). 15 rollouts moved it 0.94 -> 0.39,
    # and imagined push then passed 100% of tries against 30% real.
    threshold_support: int = 20
    # Real datasets outside P (offline rollouts, e.g. the bundled judge's validation set that
    # scripts/retrain_judge.sh collects) pooled with this round's and the earlier rounds' validation
    # parts to choose that threshold, each cut at GRPO's horizon (with judge_horizon_cuts) and
    # replayed with the round's world model: the fine-tuned judge needs its own threshold (the kept
    # 0.92 passed imagined push 69-79% against 30% real), and one round's rollouts are too few.
    threshold_data: list[str] = field(default_factory=list)
    # GRPO trains only on the tasks whose imagined rollouts the round's judge can rank: AUC >= this
    # on the imagined validation pool (0: every task). A task it cannot rank (imagined push: 0.4-0.6)
    # gives group advantages that are noise; a round with no such task keeps its policy.
    min_imagined_auc: float = 0.0
    grpo_steps: int = 10
    groups: int = 8
    group_size: int = 8
    chunks: int = 12
    temperature: float = 1.6
    reward: str = "success"  # GRPO's member reward (wmpo.judge.rewards.REWARD_KINDS)
    task_sampling: str = "round-robin"  # GRPO's start tasks (wmpo.rl.trainer.GRPOConfig.task_sampling)
    lr: float = 5e-5
    target_kl: float = 0.0  # GRPO's update bound (wmpo.rl.trainer.GRPOConfig.target_kl; 0: off)
    epochs: int = 2
    minibatch: int = 64
    verify: bool = True
    # The simulator's classifier-free action guidance in GRPO, and in the judge's imagined training
    # data so the judge learns the frames it will see (None: the world model checkpoint's).
    action_guidance: float | None = None
    # Also train and calibrate the judge on the real rollouts cut at GRPO's horizon (chunks x 8 steps)
    # and on their replays: a rollout cut mid-attempt (a near miss) is what GRPO's judge mostly sees.
    judge_horizon_cuts: bool = False
    # before GRPO: the policy's real success at GRPO's temperature within its horizon, on held-out
    # seeds (a diagnostic beside imagination's first step; not training data, so not counted in P)
    calibration_episodes: int = 0
    # ... and every K GRPO steps, the current policy on the same layouts (0: only before step 1)
    calibration_every: int = 0
    keep_best_real: bool = False  # each round goes on from its best real check's policy (GRPOJobConfig)
    eval_episodes: int = 100  # per task, held-out seeds, after every round (0: skip)
    workers: int = 2
    seed: int = 0

    def validate(self) -> None:
        from wmpo.envs.tasks import check_task

        if not self.tasks:
            raise ConfigError("give at least one task")
        for t in self.tasks:
            check_task(t)  # ConfigError naming the task and how to list the valid ones
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {self.rounds}")
        if self.real_rollouts < 2 * len(self.tasks):
            raise ConfigError(f"--real-rollouts must allow a training and a validation episode per task "
                              f"(>= {2 * len(self.tasks)} for {len(self.tasks)} tasks), got {self.real_rollouts}")
        if not 0 <= self.rollout_temperature <= 10:
            raise ConfigError(f"--rollout-temperature must be in [0, 10], got {self.rollout_temperature}")
        if self.threshold_support < 1:
            raise ConfigError(f"--threshold-support must be >= 1, got {self.threshold_support}")
        if not 0 < self.wm_lr <= 1:
            raise ConfigError(f"--wm-lr must be in (0, 1], got {self.wm_lr}")
        if not 0 <= self.min_imagined_auc <= 1:
            raise ConfigError(f"--min-imagined-auc must be in [0, 1], got {self.min_imagined_auc}")
        if self.min_imagined_auc and not self.judge_steps:
            raise ConfigError("--min-imagined-auc needs the judge's round (--judge-steps > 0): it is measured there")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.episodes_per_task() > VAL_SEED_OFFSET:
            raise ConfigError(f"--real-rollouts per task must be <= {VAL_SEED_OFFSET} (seed ranges of the training and "
                              f"validation parts would overlap), got {self.episodes_per_task()}")
        last_seed = REAL_SEED_BASE + ROUND_SEED_STRIDE * (self.rounds - 1) + VAL_SEED_OFFSET + self.episodes_per_task()
        if last_seed >= EVAL_SEED_BASE:
            raise ConfigError(f"--rounds {self.rounds} would collect on evaluation seeds (>= {EVAL_SEED_BASE})")
        for name in ("wm_steps", "judge_steps", "grpo_steps", "eval_episodes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        for path in (self.policy, self.world_model, self.judge):
            if not (Path(path) / "config.json").exists():
                raise ConfigError(f"no checkpoint at {path}")
        for path in self.threshold_data:
            if not (Path(path) / "meta" / "info.json").exists():
                raise ConfigError(f"--threshold-data {path}: no episode dataset there (meta/info.json)")
        self.grpo_job(self.policy, self.out, self.world_model, self.judge, 0).validate()  # GRPO fields, up front

    def grpo_job(self, policy: str, out: str, world_model: str, judge: str, r: int,
                 tasks: list[str] | None = None) -> Any:
        from wmpo.rl.job import GRPOJobConfig

        return GRPOJobConfig(
            policy=policy, out=out, tasks=tasks or self.tasks, steps=max(self.grpo_steps, 1), groups_per_step=self.groups,
            group_size=self.group_size, chunks=self.chunks, temperature=self.temperature, lr=self.lr,
            target_kl=self.target_kl, epochs=self.epochs, minibatch=self.minibatch, verify=self.verify, seed=self.seed + r,
            world_model=world_model, judge=judge, action_guidance=self.action_guidance,
            calibration_episodes=self.calibration_episodes, calibration_every=self.calibration_every,
            keep_best_real=self.keep_best_real, reward=self.reward,
            task_sampling=self.task_sampling)

    def episodes_per_task(self) -> int:
        return self.real_rollouts // len(self.tasks)

    def val_episodes_per_task(self) -> int:
        per_task = self.episodes_per_task()
        return min(max(1, round(per_task * self.val_fraction)), per_task - 1)


class Ledger:
    """``out/lifelong.json``: which stages of which rounds are done, with their records."""

    def __init__(self, out: Path, cfg: LifelongConfig) -> None:
        self.path = out / "lifelong.json"
        if self.path.exists():
            self.data: dict[str, Any] = json.loads(self.path.read_text())
            now = asdict(cfg)
            # a field added to the configuration after this loop started counts as its default
            started = {**asdict(LifelongConfig(out=cfg.out, tasks=cfg.tasks)), **self.data["config"]}
            changed = sorted(k for k in now if k not in RESUMABLE_FIELDS and started[k] != now[k])
            if changed:
                raise ConfigError(f"{out} holds a loop started with other {', '.join(changed)} "
                                  f"(only {', '.join(sorted(RESUMABLE_FIELDS))} may change on resume): "
                                  "choose another --out")
            self.data["config"] = now
        else:
            stale = sorted(p.name for p in out.glob("round-*"))
            if stale:
                raise ConfigError(f"{out} has {', '.join(stale)} but no lifelong.json: not a loop this command "
                                  "can resume; choose another --out")
            self.data = {"config": asdict(cfg), "rounds": []}

    def stage(self, r: int, name: str) -> dict[str, Any] | None:
        rounds = self.data["rounds"]
        return rounds[r].get(name) if r < len(rounds) else None

    def record(self, r: int, name: str, value: dict[str, Any]) -> None:
        while len(self.data["rounds"]) <= r:
            self.data["rounds"].append({})
        self.data["rounds"][r][name] = value
        atomic_write_json(self.path, self.data)



def _collect(cfg: LifelongConfig, r: int, rd: Path, policy: str) -> dict[str, Any]:
    from wmpo.data.collect import CollectConfig, collect
    from wmpo.data.episodes import EpisodeDataset

    seed0 = REAL_SEED_BASE + ROUND_SEED_STRIDE * r
    n_val = cfg.val_episodes_per_task()
    res: dict[str, Any] = {"real_rollouts": 0}
    for part, n, s in (("real-train", cfg.episodes_per_task() - n_val, seed0),
                       ("real-val", n_val, seed0 + VAL_SEED_OFFSET)):
        collect(CollectConfig(out=str(rd / part), tasks=cfg.tasks, source="policy", episodes=n, seed_start=s,
                              workers=cfg.workers, checkpoint=policy, temperature=cfg.rollout_temperature))
        episodes = EpisodeDataset.load(rd / part).episodes  # counted from the data: right after a resume too
        per_task = {t: {"episodes": sum(m["task"] == t for m in episodes),
                        "successes": sum(m["task"] == t and bool(m["succeeded"]) for m in episodes)} for t in cfg.tasks}
        res[part] = {"path": str(rd / part), "episodes_per_task": n, "seed_start": s, "per_task": per_task}
        res["real_rollouts"] += len(episodes)
    res["policy_sha256"] = checkpoint_sha(policy)
    return res


def _align_world_model(cfg: LifelongConfig, r: int, rd: Path, world_model: str, real: dict[str, Any]) -> dict[str, Any]:
    from wmpo.train.world_model import WorldModelTrainConfig, train_world_model

    every = max(cfg.wm_steps // 4, 1)
    res = train_world_model(WorldModelTrainConfig(
        # the training part only: the judge's threshold is chosen on imagined replays of the validation
        # part, which must be episodes this world model has not seen
        data=[real["real-train"]["path"]], autoencoder=world_model, init=world_model,
        out=str(rd / "world-model"), steps=cfg.wm_steps, lr=cfg.wm_lr, warmup=min(50, cfg.wm_steps),
        seed=cfg.seed + r, save_every=every, eval_every=every))
    return {"path": str(rd / "world-model"), "init_sha256": checkpoint_sha(world_model), **res}


def _align_judge(cfg: LifelongConfig, r: int, rd: Path, world_model: str, judge: str,
                 real: dict[str, Any]) -> dict[str, Any]:
    from wmpo.data.episodes import EpisodeDataset
    from wmpo.eval.judge import JudgedEpisodes, judge_dataset, summarize, write_imagined_dataset
    from wmpo.judge.success import SuccessJudge
    from wmpo.rl.job import CHUNK_STEPS
    from wmpo.train.success_classifier import JudgeTrainConfig, train_success_classifier

    def once(dst: Path, write: Callable[[], Any]) -> str:
        if not (dst / "meta" / "done").exists():
            shutil.rmtree(dst, ignore_errors=True)  # a half-written set is redone
            write()
            (dst / "meta" / "done").write_text("")
        return str(dst)

    def replay(src: str, dst: Path) -> str:
        return once(dst, lambda: write_imagined_dataset(world_model, src, str(dst), seed=cfg.seed + 17 * r,
                                                        action_guidance=cfg.action_guidance))

    # A judge learns success from both kinds: a round whose rollouts all failed (or all succeeded,
    # with no horizon cuts to add failures) keeps the judge it has, and says so, rather than
    # stopping the loop.
    train_eps = EpisodeDataset.load(real["real-train"]["path"]).episodes
    successes = sum(bool(m["succeeded"]) for m in train_eps)
    if successes == 0 or (successes == len(train_eps) and not cfg.judge_horizon_cuts):
        kind = "failed" if successes == 0 else "succeeded"
        print(f"round {r}: all {len(train_eps)} training rollouts {kind}; the judge is kept as it is", flush=True)
        return {"path": judge, "init_sha256": checkpoint_sha(judge),
                "skipped": f"all {len(train_eps)} training rollouts {kind}: nothing to tell success from"}
    sets: dict[str, dict[str, str]] = {"train": {}, "val": {}}
    for split in sets:
        real_part = real[f"real-{split}"]["path"]
        sets[split] = {"real": real_part, "imagined": replay(real_part, rd / f"imagined-{split}")}
        if cfg.judge_horizon_cuts:
            cut = once(rd / f"cut-{split}", partial(write_cut_dataset, real_part, rd / f"cut-{split}",
                                                     cfg.chunks * CHUNK_STEPS))
            sets[split] |= {"cut": cut, "cut-imagined": replay(cut, rd / f"cut-imagined-{split}")}
    # GRPO only ever judges rollouts cut at its horizon: with the cuts, the threshold is chosen on them
    # (real, imagined) pairs of validation sets
    pairs = [(sets["val"]["cut"], sets["val"]["cut-imagined"]) if cfg.judge_horizon_cuts
             else (sets["val"]["real"], sets["val"]["imagined"])]
    # ... pooled with the earlier rounds' validation parts and the offline threshold data, all
    # replayed with this round's world model
    pool = {f"round-{k}": str(rd.parent / f"round-{k}" / "real-val") for k in range(r)}
    pool |= {f"data-{i}": path for i, path in enumerate(cfg.threshold_data)}
    for name, real_part in pool.items():
        if cfg.judge_horizon_cuts:
            name += "-cut"
            cut = rd / "threshold" / name
            real_part = once(cut, partial(write_cut_dataset, real_part, cut, cfg.chunks * CHUNK_STEPS))
        pairs.append((real_part, replay(real_part, rd / "threshold" / f"{name}-imagined")))
    threshold_sets = [path for pair in pairs for path in pair]
    judged: dict[str, JudgedEpisodes] = {}  # the threshold sets, as training scored them
    res = train_success_classifier(JudgeTrainConfig(
        data=list(sets["train"].values()), val_data=threshold_sets, out=str(rd / "judge"), init=judge,
        steps=cfg.judge_steps, lr=cfg.judge_lr, warmup=min(30, cfg.judge_steps), world_model=world_model,
        seed=cfg.seed + r, save_every=max(cfg.judge_steps // 3, 1), min_threshold_support=cfg.threshold_support),
        judged_val=judged)
    # Every validation set measured, per task too, and the AUC per task over all the imagined ones:
    # whether the judge can rank a task's imagined rollouts at all, which no threshold mends
    # (imagined push: 0.4-0.6, chance), and which GRPO's group advantages need.
    aligned = SuccessJudge.load(str(rd / "judge"))
    names = {path: name for name, path in sets["val"].items()}
    names |= {path: f"threshold/{Path(path).name}" for path in threshold_sets if path not in names}
    for path in names.keys() - judged.keys():  # the validation sets the threshold was not chosen on
        judged[path] = judge_dataset(aligned, EpisodeDataset.load(path))
    imagined = [judged[path] for _, path in pairs]
    pooled = JudgedEpisodes(np.concatenate([j.scores for j in imagined]), np.concatenate([j.labels for j in imagined]),
                            [t for j in imagined for t in j.tasks])
    return {"path": str(rd / "judge"), "init_sha256": checkpoint_sha(judge), "data": sets,
            "threshold_chosen_on": threshold_sets,
            "val_by_set": {names[path]: summarize(judged[path], aligned.threshold) for path in names},
            "imagined_auc_by_task": {t: v["auc"] for t, v in summarize(pooled, aligned.threshold)["per_task"].items()},
            **res}


def rankable_tasks(tasks: list[str], aucs: dict[str, float | None], floor: float) -> list[str]:
    """The tasks GRPO trains on: with a floor, those whose imagined AUC reaches it (a task without
    an AUC, all of its validation rollouts one kind, is not known to be rankable)."""
    return [t for t in tasks if not floor or (aucs.get(t) is not None and aucs[t] >= floor)]


def _grpo(cfg: LifelongConfig, r: int, rd: Path, policy: str, world_model: str, judge: str,
          embedded: Any, aucs: dict[str, float | None]) -> dict[str, Any]:
    from wmpo.rl.job import run_grpo_job

    tasks = rankable_tasks(cfg.tasks, aucs, cfg.min_imagined_auc)
    if not tasks:
        print(f"round {r}: no task's imagined AUC reaches {cfg.min_imagined_auc}; the policy is kept", flush=True)
        return {"policy": policy, "tasks": [], "skipped": f"no task's imagined AUC reaches {cfg.min_imagined_auc}"}
    job = run_grpo_job(cfg.grpo_job(policy, str(rd / "grpo"), world_model, judge, r, tasks), embedded=embedded)
    return {"policy": job["policy"], "tasks": tasks, "world_model_sha256": checkpoint_sha(world_model),
            "judge_sha256": checkpoint_sha(judge), "start_policy_sha256": checkpoint_sha(policy),
            "simulator": job.get("simulator", {}), "calibration": job.get("calibration"),
            "calibration_steps": job.get("calibration_steps", []), "best_real": job.get("best_real"),
            "last": job["training"]["last"]}


def _evaluate(cfg: LifelongConfig, r: int, policy: str) -> dict[str, Any]:
    from wmpo.data.collect import SourceSpec
    from wmpo.eval.policy import EvalConfig, evaluate, format_table

    report = evaluate(EvalConfig(tasks=cfg.tasks, source=SourceSpec("policy", checkpoint=policy, temperature=0.0),
                                 episodes=cfg.eval_episodes, workers=cfg.workers))
    print(format_table(report, f"round {r}: after (real MetaWorld, held-out seeds, greedy)"))
    return {"policy_sha256": checkpoint_sha(policy), **{k: v for k, v in report.items() if k != "episodes_detail"}}


def run_lifelong(cfg: LifelongConfig, embedded: Any = None) -> dict[str, Any]:
    """Run (or resume) the loop; returns the ledger (see the module docstring). ``embedded``: the
    factory of the stack each round's GRPO job runs against (``wmpo.rl.job.EmbeddedStack``)."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out, cfg)

    def stage(r: int, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if (done := ledger.stage(r, name)) is not None:
            print(f"round {r}: {name} already done", flush=True)
            return done
        print(f"round {r}: {name} ...", flush=True)
        t0 = time.time()
        rec = {**fn(), "seconds": round(time.time() - t0, 1)}
        ledger.record(r, name, rec)
        return rec

    policy, world_model, judge = cfg.policy, cfg.world_model, cfg.judge
    for r in range(cfg.rounds):
        rd = out / f"round-{r}"
        real = stage(r, "collect", partial(_collect, cfg, r, rd, policy))
        if cfg.wm_steps:
            world_model = stage(r, "world_model", partial(_align_world_model, cfg, r, rd, world_model, real))["path"]
        aucs: dict[str, float | None] = {}
        if cfg.judge_steps:
            aligned = stage(r, "judge", partial(_align_judge, cfg, r, rd, world_model, judge, real))
            judge, aucs = aligned["path"], aligned.get("imagined_auc_by_task", {})
        if cfg.grpo_steps:
            policy = stage(r, "grpo", partial(_grpo, cfg, r, rd, policy, world_model, judge, embedded, aucs))["policy"]
        if cfg.eval_episodes:
            stage(r, "eval", partial(_evaluate, cfg, r, policy))
    ledger.data["real_rollouts_total"] = sum(x["collect"]["real_rollouts"] for x in ledger.data["rounds"])
    ledger.data["final"] = {"policy": policy, "world_model": world_model, "judge": judge}
    atomic_write_json(ledger.path, ledger.data)
    return ledger.data


def _rates(rec: dict[str, Any] | None, tasks: list[str]) -> str:
    """'k/n, k/n' per task of an evaluation record, or '' where there is none."""
    per_task = (rec or {}).get("per_task", {})
    return ", ".join(f"{per_task[t]['successes']}/{per_task[t]['episodes']}" for t in tasks if t in per_task)


def report(out: str | Path) -> str:
    """The loop in ``out`` as a markdown table, one row per GRPO step: each round's real rollouts
    and judge threshold, each step's groups, imagined success and update size (from the round's
    ``grpo/train_log.jsonl``), the real checks beside them and the held-out evaluation after the
    round. Works on a loop that is still running (stages not done yet are blank)."""
    root = Path(out)
    path = root / "lifelong.json"
    if not path.exists():
        raise ConfigError(f"no lifelong loop in {root} (no lifelong.json)")
    ledger = json.loads(path.read_text())
    tasks = ledger["config"]["tasks"]
    head = ["round", "real rollouts: successes", "judge threshold", "GRPO step", "groups imagined -> kept",
            "imagined success", "update: approx. KL max, gradient steps", "real check", "greedy, held-out"]
    rows = []
    for r, rd in enumerate(ledger["rounds"]):
        col = rd.get("collect", {})
        parts = [col[p]["per_task"] for p in ("real-train", "real-val") if p in col]
        real = ", ".join(f"{t.removesuffix('-v3')} {sum(x[t]['successes'] for x in parts)}"
                         f"/{sum(x[t]['episodes'] for x in parts)}" for t in tasks) if parts else ""
        judge = rd.get("judge", {})
        threshold = "kept (" + judge["skipped"] + ")" if "skipped" in judge else (
            f"{judge['threshold']:.3f}" + (" (kept)" if judge.get("threshold_note", "").startswith("kept") else "")
            if "threshold" in judge else "")
        grpo = rd.get("grpo", {})
        checks = {0: (grpo.get("calibration") or {}).get("real")}
        checks.update({c["step"]: c["real"] for c in grpo.get("calibration_steps", [])})
        # GRPO on fewer tasks (--min-imagined-auc): which, since the real checks then cover only them
        trained = grpo.get("tasks", tasks)
        on = "" if trained == tasks else "on " + (", ".join(t.removesuffix("-v3") for t in trained) or "no task")
        rows.append([str(r), real, threshold, "start", on, "", "", _rates(checks.get(0), tasks), ""])
        log = root / f"round-{r}" / "grpo" / "train_log.jsonl"
        steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
        for h in steps:
            update = (f"{h['approx_kl_max']:.2f}, {h['gradient_steps']}/{h['gradient_steps_planned']}"
                      if "approx_kl_max" in h else f"mean {h['approx_kl']:.2f}" if "approx_kl" in h else "")
            rows.append(["", "", "", str(h["step"]), f"{h['groups_imagined']} -> {h['groups_kept']}",
                         f"{h['imagined_success']:.0%}", update, _rates(checks.get(h["step"]), tasks), ""])
        if best := grpo.get("best_real"):
            rows[-1][7] += f" (kept step {best['step']})"
        rows[-1][8] = _rates(rd.get("eval"), tasks)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
