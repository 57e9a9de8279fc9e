"""A policy's success per task estimated in imagination, next to the real simulator (issue 15).

WorldArena scores a world model as a policy evaluator: for several policies of different
quality, the success rate each one gets in imagination (complete trials from real start frames,
judged by the success classifier) against the rate it gets in the real simulator, summarised by
the Pearson correlation and the mean absolute error over the (policy, task) pairs.

Both sides run the same code, ``wmpo.rl.imagination.imagine_groups``, from the same held-out start
layouts (``EVAL_SEED_BASE + seed_offset + i``, the layouts of ``wmpo eval policy``) with the same
policy sampling seed: the imagined side through the simulator and judge services (the embedded
stack, or URLs), the real side through ``RealGroupSimulator`` (MetaWorld) and its success flag.
Only the world and the judge differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from wmpo.data.collect import EVAL_SEED_BASE
from wmpo.errors import ConfigError
from wmpo.eval.stats import wilson_interval
from wmpo.models.policy import Policy
from wmpo.rl.imagination import GroupSimulator, RolloutJudge, StartState, imagine_groups


@dataclass
class ImaginationEvalConfig:
    policies: list[str]  # policy checkpoints
    tasks: list[str]
    episodes: int = 20  # start layouts per task
    chunks: int = 20  # action chunks per trial (20 x 8 = 160 env steps, the real episodes' cap)
    temperature: float = 1.0  # the policy samples its chunks (GRPO's setting)
    seed: int = 0  # policy sampling and imagination seed
    seed_offset: int = 0
    batch: int = 8  # trials imagined together

    def __post_init__(self) -> None:  # checked once, when made: before any stack is started
        if not self.policies or not self.tasks:
            raise ConfigError("give at least one policy checkpoint and one task")
        if self.episodes < 1 or self.chunks < 1 or self.batch < 1:
            raise ConfigError(f"--episodes, --chunks and --batch must be >= 1, got {self.episodes}, {self.chunks}, "
                              f"{self.batch}")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (the policy samples its chunks), got {self.temperature}")


def eval_starts(tasks: list[str], episodes: int, seed_offset: int = 0) -> list[StartState]:
    """The real first frames of the held-out evaluation layouts, ``episodes`` per task."""
    from wmpo.envs import make_env

    starts = []
    for task in tasks:
        env = make_env(task)
        try:
            for i in range(episodes):
                seed = EVAL_SEED_BASE + seed_offset + i
                frame, _ = env.reset(seed=seed)
                starts.append(StartState(frame, env.instruction, task, seed))
        finally:
            env.close()
    return starts


def success_by_task(policy: Policy, starts: list[StartState], sim: GroupSimulator, judge: RolloutJudge,
                    cfg: ImaginationEvalConfig, desc: str = "", progress: bool = True) -> dict[str, list[bool]]:
    """One trial per start (a group of one), judged; the verdicts per task, in start order."""
    out: dict[str, list[bool]] = {}
    batches = [starts[i:i + cfg.batch] for i in range(0, len(starts), cfg.batch)]
    for k, batch in enumerate(tqdm(batches, desc=desc, disable=not progress)):
        groups = imagine_groups(sim, judge, policy, batch, 1, cfg.chunks, cfg.temperature, cfg.seed * 10_000 + k,
                                verify=False)
        for g in groups:
            out.setdefault(g.start.task, []).append(bool(g.success[0]))
    return out


def rates(verdicts: dict[str, list[bool]]) -> dict[str, dict[str, Any]]:
    out = {}
    for task, v in verdicts.items():
        k, n = int(sum(v)), len(v)
        lo, hi = wilson_interval(k, n)
        out[task] = {"successes": k, "n": n, "rate": k / n, "interval": [lo, hi]}
    return out


def agreement(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Pearson r and mean absolute error (in points) of (imagined, real) success rates."""
    if not pairs:
        return {"pairs": 0, "pearson_r": None, "mae_points": None}
    x, y = np.asarray(pairs, dtype=np.float64).T
    r = None
    if len(pairs) >= 2 and x.std() > 0 and y.std() > 0:  # undefined when either side is constant
        r = float(np.corrcoef(x, y)[0, 1])
    return {"pairs": len(pairs), "pearson_r": r, "mae_points": float(100 * np.abs(x - y).mean())}


def evaluate_policies(cfg: ImaginationEvalConfig, imagined: tuple[GroupSimulator, RolloutJudge],
                      progress: bool = True) -> dict[str, Any]:
    """Every policy on every task, imagined and real; and their agreement."""
    from wmpo.rl.real import RealGroupSimulator, RealSuccessJudge

    starts = eval_starts(cfg.tasks, cfg.episodes, cfg.seed_offset)
    sim, judge = imagined
    report: dict[str, Any] = {"config": asdict(cfg),
                              "seeds": [EVAL_SEED_BASE + cfg.seed_offset, EVAL_SEED_BASE + cfg.seed_offset + cfg.episodes],
                              "policies": {}}
    for path in cfg.policies:
        policy, _ = Policy.from_checkpoint(path)
        policy.eval()
        img = rates(success_by_task(policy, starts, sim, judge, cfg, f"imagined {path}", progress))
        real_sim = RealGroupSimulator()
        try:
            real = rates(success_by_task(policy, starts, real_sim, RealSuccessJudge(real_sim), cfg, f"real {path}",
                                         progress))
        finally:
            real_sim.close()
        report["policies"][path] = {"imagined": img, "real": real}
    return summarize(report)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Add the agreements to a report: over every (policy, task) pair (WorldArena's), and over the
    policies' task means (does imagination rank the policies, not only the tasks?)."""
    tasks = report["config"]["tasks"]
    pairs, means = [], []
    for r in report["policies"].values():
        pair = [(r["imagined"][t]["rate"], r["real"][t]["rate"]) for t in tasks]
        pairs += pair
        means.append(tuple(np.mean(pair, axis=0)))
    report["agreement"] = agreement(pairs)
    report["agreement_policy_means"] = agreement(means)
    return report


def _without_seed(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if provenance is None else {k: v for k, v in provenance.items() if k != "seed"}


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs over different policies (e.g. run in parallel processes):
    they must share every setting but the policies, so that their pairs are comparable."""
    if not reports:
        raise ConfigError("give at least one report to merge")
    first = {k: v for k, v in reports[0]["config"].items() if k != "policies"}
    merged: dict[str, Any] = {**reports[0], "policies": {}}
    for i, rep in enumerate(reports):
        settings = {k: v for k, v in rep["config"].items() if k != "policies"}
        if settings != first:
            diff = sorted(k for k in first.keys() | settings.keys() if first.get(k) != settings.get(k))
            raise ConfigError(f"report {i + 1} differs from the first in {diff}: only runs with the same "
                              "settings (tasks, episodes, chunks, temperature, seeds) can be merged")
        for key in ("simulator", "judge"):  # the models, not the last request's seed
            mine, theirs = (_without_seed(r.get(key)) for r in (rep, reports[0]))
            if mine != theirs:
                raise ConfigError(f"report {i + 1} used another {key} ({mine}) than the first ({theirs})")
        dup = sorted(set(rep["policies"]) & set(merged["policies"]))
        if dup:
            raise ConfigError(f"policy {dup[0]} is in more than one report")
        merged["policies"].update(rep["policies"])
    merged["config"] = {**reports[0]["config"], "policies": list(merged["policies"])}
    return summarize(merged)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'policy':<34} {'task':<26} {'imagined':>9} {'real':>9}"]
    for path, r in report["policies"].items():
        for task, img in r["imagined"].items():
            lines.append(f"{path[-34:]:<34} {task:<26} {100 * img['rate']:8.1f}% {100 * r['real'][task]['rate']:8.1f}%")
        means = [100 * np.mean([v["rate"] for v in r[side].values()]) for side in ("imagined", "real")]
        lines.append(f"{path[-34:]:<34} {'mean over tasks':<26} {means[0]:8.1f}% {means[1]:8.1f}%")
    for key, what in (("agreement", "(policy, task) pairs"), ("agreement_policy_means", "policies' task means")):
        a = report[key]
        r = "undefined" if a["pearson_r"] is None else f"{a['pearson_r']:.3f}"
        lines.append(f"over {a['pairs']} {what}: Pearson r {r}, mean absolute error {a['mae_points']:.1f} points")
    return "\n".join(lines)
