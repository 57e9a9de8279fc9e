"""A GRPO job end to end: connect to the services, evaluate, train in imagination, evaluate.

The trainer reaches the world model and the judge only through their clients (the light client
package). With no URLs the job runs against an embedded stack (both services in this process,
on loopback ports) from the given checkpoints, so the same job runs on a laptop or against a
cluster. The core library never imports the services: whoever runs a job in-process passes the
stack's factory (``embedded``; the ``wmpo`` command and the trainer service pass
``services.embedded.job_stack``). Before and after training
the policy is evaluated in the real simulator on held-out seeds (greedy), so every job reports
what counts: real success.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from wmpo_client.protocols import Judge, Simulator

from wmpo.data.collect import SourceSpec
from wmpo.data.episodes import atomic_write_json
from wmpo.errors import ConfigError
from wmpo.eval.policy import EvalConfig, evaluate, format_table
from wmpo.rl.imagination import ServiceGroupSimulator, ServiceRolloutJudge
from wmpo.rl.trainer import GRPOConfig, train_grpo
from wmpo.train.common import JsonlLog
from wmpo.utils.checkpoint import update_manifest
from wmpo.utils.config import bounded

CHUNK_STEPS = 8  # env steps per action chunk (the policy's K)
# A job's embedded stack: serves cfg.world_model and cfg.judge while open -> (simulator URL, judge URL).
EmbeddedStack = Callable[["GRPOJobConfig"], AbstractContextManager[tuple[str, str]]]


@dataclass
class GRPOJobConfig(GRPOConfig):
    """A GRPO job: the algorithm (``GRPOConfig``), where it imagines (the services or an embedded
    stack), and the real-simulator evaluation around it. Bounds are declared on the fields once."""

    simulator_url: str | None = None
    judge_url: str | None = None
    world_model: str | None = None  # embedded stack only
    judge: str | None = None  # embedded stack only
    action_guidance: float | None = None  # embedded stack only: the simulator's (None: the checkpoint's)
    eval_episodes: int = bounded(0, ge=0, le=10_000, flag="--eval-episodes",
                                 doc="Real-MetaWorld evaluation episodes per task before and after (0: none).")
    # Per task: the start policy in MetaWorld as GRPO samples it (its temperature, episodes cut at the
    # horizon), beside imagination's first-step success: how far the world model and judge are off
    # before any update. 0 skips.
    calibration_episodes: int = bounded(0, ge=0, le=10_000, flag="--calibration-episodes",
                                        doc="Real episodes per task of the start policy as GRPO samples it, "
                                        "beside imagination's first step (0: none).")
    # Every K steps: the current policy in MetaWorld on the same calibration layouts, beside that
    # step's imagined success. GRPO in imagination can learn what the world model and judge reward
    # but MetaWorld does not (the imagined success climbs, the real one does not): this shows it
    # while the job runs, at the cost of real episodes that are only measured, never trained on.
    calibration_every: int = bounded(0, ge=0, le=1_000_000, flag="--calibration-every",
                                     doc="Every K steps, the current policy's real success on the calibration "
                                     "layouts beside the step's imagined success (0: only before step 1).")
    # GRPO in imagination can climb a success the world model invents while the real one falls
    # (results/world-model-failures): with the real checks above, the job also keeps the policy whose
    # real success was highest (the start policy's counts; a tie keeps the earlier) and answers with it.
    keep_best_real: bool = bounded(False, flag="--keep-best-real",
                                   doc="Keep the policy of the best real calibration check (the start policy "
                                   "included) as the job's result, under <out>/policy-best-real; needs "
                                   "calibration_every.")
    eval_workers: int = bounded(2, ge=1, le=64, flag="--workers", doc="Parallel MetaWorld evaluation workers.")
    environment: str = bounded("imagination", choices=("imagination", "real"), flag="--environment",
                               doc="imagination: rollouts through the simulator and judge services; real: "
                               "online GRPO in MetaWorld with its true success flag (the papers' baseline).")
    real_budget: int = bounded(0, ge=0, le=10_000_000, flag="--real-budget",
                               doc="environment real: real episodes the job may run, a multiple of "
                               "groups_per_step x group_size (steps follow from it); 0: run `steps`.")

    def __post_init__(self) -> None:
        if self.perceptual_model is None and self.world_model:
            self.perceptual_model = self.world_model  # the embedded stack's autoencoder measures imitation

    def validate(self) -> None:
        if self.environment == "real" and self.reward == "imitation":
            raise ConfigError("reward (--reward) imitation compares imagined rollouts with the expert's: it needs "
                              "the imagination environment")
        super().validate()  # every field's bounds, this class's too
        if self.keep_best_real and not (self.calibration_every and self.environment == "imagination"):
            raise ConfigError("keep_best_real (--keep-best-real) chooses among the real checks of calibration_every "
                              "(--calibration-every K > 0) in the imagination environment")
        if self.calibration_every and not self.calibration_episodes:
            raise ConfigError("calibration_every (--calibration-every) needs calibration_episodes "
                              "(--calibration-episodes) > 0: the real episodes per task of each check")
        if self.real_budget and self.environment != "real":
            raise ConfigError("real_budget (--real-budget) only applies to the real environment")
        per_step = self.groups_per_step * self.group_size
        if self.real_budget and self.real_budget % per_step:
            raise ConfigError(f"real_budget (--real-budget) {self.real_budget} must be a multiple of one step's real episodes "
                              f"({self.groups_per_step} groups x {self.group_size} = {per_step})")
        if self.environment == "real":
            from wmpo.envs.tasks import DEFAULT_MAX_STEPS

            if self.chunks * CHUNK_STEPS > DEFAULT_MAX_STEPS:
                raise ConfigError(f"chunks (--chunks) {self.chunks} runs past a real episode's {DEFAULT_MAX_STEPS} steps "
                                  f"(at most {DEFAULT_MAX_STEPS // CHUNK_STEPS} chunks of {CHUNK_STEPS})")
            return
        if (self.simulator_url is None) != (self.judge_url is None):
            raise ConfigError("give both simulator_url (--simulator-url) and judge_url (--judge-url), or neither "
                              "(embedded stack)")
        if self.simulator_url is None and not (self.world_model and self.judge):
            raise ConfigError("the embedded stack needs a world_model and a judge checkpoint")
        if self.action_guidance is not None:
            if self.simulator_url is not None:
                raise ConfigError("action_guidance (--action-guidance) sets the embedded stack's simulator; a "
                                  "simulator service has its own (WMPO_ACTION_GUIDANCE)")
            if not 0.0 <= self.action_guidance <= 10.0:
                raise ConfigError(f"action_guidance (--action-guidance) must be in [0, 10] (1 = off), "
                                  f"got {self.action_guidance}")

    def grpo(self) -> GRPOConfig:
        names = {f.name for f in fields(GRPOConfig)}
        return GRPOConfig(**{k: v for k, v in asdict(self).items() if k in names})


@contextlib.contextmanager
def service_clients(cfg: GRPOJobConfig, simulator_api_key: str | None = None,
                    judge_api_key: str | None = None,
                    embedded: EmbeddedStack | None = None) -> Iterator[tuple[list[Simulator], Judge]]:
    """([simulator client per replica], judge client) for the configured URLs or an embedded stack.
    ``simulator_url`` may list several replicas, comma-separated (``ServiceGroupSimulator`` fails
    over between them)."""
    from wmpo_client import SimulatorClient
    from wmpo_client.judge_http import JudgeClient

    with contextlib.ExitStack() as stack:
        if cfg.simulator_url is None:
            if embedded is None:
                raise ConfigError("a job without --simulator-url / --judge-url runs an embedded stack, "
                                  "which this caller does not provide (the wmpo command does)")
            sim_url, judge_url = stack.enter_context(embedded(cfg))
        else:
            sim_url, judge_url = cfg.simulator_url, cfg.judge_url
        sims = [stack.enter_context(SimulatorClient(url.strip(), simulator_api_key, timeout=300.0))
                for url in sim_url.split(",") if url.strip()]
        judge = stack.enter_context(JudgeClient(judge_url, judge_api_key, timeout=300.0))
        yield sims, judge


def _evaluate(policy: str, cfg: GRPOJobConfig, title: str) -> dict[str, Any]:
    report = evaluate(EvalConfig(tasks=cfg.tasks, source=SourceSpec("policy", checkpoint=policy, temperature=0.0),
                                 episodes=cfg.eval_episodes, workers=cfg.eval_workers))
    print(format_table(report, title))
    return {k: v for k, v in report.items() if k != "episodes_detail"}


CALIBRATION_SEED_OFFSET = 200_000  # held-out layouts 1,200,000 + i: apart from the evaluation's and training's


def _calibrate(cfg: GRPOJobConfig, policy: str | None = None) -> dict[str, Any]:
    """A policy's real success (default: the start policy's) at GRPO's temperature within GRPO's
    horizon, per task, on the calibration layouts (the same ones at every check)."""
    source = SourceSpec("policy", checkpoint=policy or cfg.policy, temperature=cfg.temperature)
    report = evaluate(EvalConfig(tasks=cfg.tasks, source=source,
                                 episodes=cfg.calibration_episodes, seed_offset=CALIBRATION_SEED_OFFSET,
                                 workers=cfg.eval_workers, max_steps=cfg.chunks * CHUNK_STEPS))
    return {k: v for k, v in report.items() if k != "episodes_detail"}


def calibration_table(real: dict[str, Any], imagined: dict[str, float] | None, step: int = 1) -> str:
    """Real vs imagined success per task of the policy at a step, as GRPO samples it."""
    rows = [f"{'task':<26} {'real':>6} {'95% CI':>12} {f'imagined (step {step})':>18}"]
    for task, r in real["per_task"].items():
        lo, hi = r["ci95"]
        im = "" if imagined is None or task not in imagined else f"{imagined[task]:.0%}"
        rows.append(f"{task:<26} {r['success_rate']:>6.0%} {f'[{lo:.0%}, {hi:.0%}]':>12} {im:>18}")
    return "\n".join(rows)


BEST_REAL = "policy-best-real"  # --keep-best-real: <out>/policy-best-real and <out>/best_real.json


def _real_mean(real: dict[str, Any]) -> float:
    """A real check's success averaged over its tasks (each task weighs the same)."""
    rates = [r["success_rate"] for r in real["per_task"].values()]
    return sum(rates) / len(rates)


def _keep_if_best(cfg: GRPOJobConfig, step: int, real: dict[str, Any], policy: str) -> None:
    """Copy ``policy`` to <out>/policy-best-real when its real check beats the best so far."""
    out = Path(cfg.out)
    record = out / "best_real.json"
    best = json.loads(record.read_text()) if record.exists() else None
    mean = _real_mean(real)
    if best is not None and mean <= best["real_mean"]:
        return
    tmp = out / f"{BEST_REAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(policy, tmp)
    shutil.rmtree(out / BEST_REAL, ignore_errors=True)
    tmp.rename(out / BEST_REAL)  # the record follows the copy: a stop in between redoes this step's
    atomic_write_json(record, {"step": step, "real_mean": mean, "from": policy,
                               "path": str(out / BEST_REAL)})


def _with_step_calibration(cfg: GRPOJobConfig, on_step: Callable[[dict[str, Any]], None] | None
                           ) -> Callable[[dict[str, Any]], None] | None:
    """``on_step``, preceded every ``calibration_every`` steps by the current policy's real check
    (``<out>/calibration_steps.jsonl``: real per task beside the step's imagined success). The
    step's checkpoint is written before ``on_step`` runs; a check a stop interrupts is not redone."""
    if not cfg.calibration_every or cfg.environment != "imagination":
        return on_step
    log = JsonlLog(Path(cfg.out) / "calibration_steps.jsonl")

    def step_done(metrics: dict[str, Any]) -> None:
        if metrics["step"] % cfg.calibration_every == 0:
            real = _calibrate(cfg, policy=str(Path(cfg.out) / "policy"))
            imagined = metrics.get("per_task_success")
            if cfg.keep_best_real:
                _keep_if_best(cfg, metrics["step"], real, str(Path(cfg.out) / "policy"))
            log.write(step=metrics["step"], real=real, imagined=imagined)
            print(f"calibration after step {metrics['step']}: the current policy at temperature {cfg.temperature}\n"
                  + calibration_table(real, imagined, step=metrics["step"]))
        if on_step is not None:
            on_step(metrics)

    return step_done


def read_step_calibration(out: str | Path) -> list[dict[str, Any]]:
    """The checks ``calibration_every`` wrote: [{step, real, imagined}], in step order."""
    path = Path(out) / "calibration_steps.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_grpo_job(cfg: GRPOJobConfig, progress: bool = True,
                 on_step: Callable[[dict[str, Any]], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, *, simulator_api_key: str | None = None,
                 judge_api_key: str | None = None, embedded: EmbeddedStack | None = None) -> dict[str, Any]:
    """Evaluate (optional), train (in imagination, or in MetaWorld with ``environment="real"``),
    evaluate; resumes from ``cfg.out``. ``on_step`` and ``should_stop`` are passed to ``train_grpo``
    (a stop raises ``wmpo.rl.trainer.Cancelled``); the API keys are sent to the simulator and judge
    services; ``embedded`` opens the stack a job without URLs runs against."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"config": asdict(cfg)}
    if cfg.eval_episodes:
        before = out / "eval_before.json"
        if before.exists():  # a resumed job does not evaluate the start policy again
            result["before"] = json.loads(before.read_text())
        else:
            result["before"] = _evaluate(cfg.policy, cfg, "before GRPO (real MetaWorld, held-out seeds, greedy)")
            atomic_write_json(before, result["before"])
    calibration = None  # measured before training, so a stopped job keeps it
    if cfg.calibration_episodes and cfg.environment == "imagination":
        path = out / "calibration.json"
        calibration = json.loads(path.read_text())["real"] if path.exists() else _calibrate(cfg)
        atomic_write_json(path, {"real": calibration, "imagined_step1": None})
        if cfg.keep_best_real and not (out / "best_real.json").exists():
            _keep_if_best(cfg, 0, calibration, cfg.policy)  # the start policy is the first candidate
    if cfg.environment == "real":
        from wmpo.rl.real import RealGroupSimulator, RealSuccessJudge

        grpo = cfg.grpo()
        grpo.verify = False  # the simulator's own success flag cannot hallucinate: nothing to verify
        if cfg.real_budget:  # every episode run counts, informative or not: one sampling round per step
            grpo.steps = cfg.real_budget // (cfg.groups_per_step * cfg.group_size)
            grpo.max_sampling_rounds = 1
        real_sim = RealGroupSimulator()
        try:
            summary = train_grpo(grpo, real_sim, RealSuccessJudge(real_sim), progress=progress, on_step=on_step,
                                 should_stop=should_stop, method="online-grpo-real")
        finally:
            real_sim.close()
        # the real episodes spent: from the history, so a resumed job counts its earlier steps too,
        # and those this process actually ran in MetaWorld
        result["real_episodes"] = sum(h["groups_imagined"] for h in summary["history"]) * cfg.group_size
        result["real_episodes_this_run"] = real_sim.real_episodes
    else:
        with service_clients(cfg, simulator_api_key, judge_api_key, embedded) as (sim, judge_client):
            groups, judge = ServiceGroupSimulator(sim), ServiceRolloutJudge(judge_client)
            summary = train_grpo(cfg.grpo(), groups, judge, progress=progress,
                                 on_step=_with_step_calibration(cfg, on_step), should_stop=should_stop)
            result["simulator"] = groups.provenance  # the model and sampler the rollouts came from
            result["judge"] = judge.provenance  # and the judge that rewarded them
        # The trained policy says where it came from: the models that imagined and judged its rollouts.
        update_manifest(summary["policy"], imagined_with={"simulator": result["simulator"], "judge": result["judge"]})
    result["training"] = {"steps": summary["steps"], "last": summary["history"][-1] if summary["history"] else None}
    if calibration is not None:
        first = summary["history"][0].get("per_task_success") if summary["history"] else None
        result["calibration"] = {"real": calibration, "imagined_step1": first}
        atomic_write_json(out / "calibration.json", result["calibration"])
        print(f"calibration: the start policy at temperature {cfg.temperature}, {cfg.chunks} chunks\n"
              + calibration_table(calibration, first))
    if cfg.calibration_every:
        result["calibration_steps"] = read_step_calibration(out)
    result["policy"] = summary["policy"]  # the job's answer: the last policy, or with keep_best_real ...
    if cfg.keep_best_real:  # ... the best one by the real checks
        result["best_real"] = json.loads((out / "best_real.json").read_text())
        result["policy"] = result["best_real"]["path"]
        update_manifest(result["policy"], best_real=result["best_real"])
        print(f"best real check: step {result['best_real']['step']} "
              f"({result['best_real']['real_mean']:.0%} real); the job's policy is {result['policy']}")
    if cfg.eval_episodes:
        result["after"] = _evaluate(result["policy"], cfg, "after GRPO (real MetaWorld, held-out seeds, greedy)")
        atomic_write_json(out / "eval_after.json", result["after"])
    atomic_write_json(out / "job.json", result)
    return result
