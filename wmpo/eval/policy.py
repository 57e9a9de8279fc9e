"""Evaluate a policy (or the scripted expert) in the real MetaWorld simulator.

Evaluation seeds start at ``EVAL_SEED_BASE`` (1,000,000) and collection refuses them, so no
evaluation layout is ever in training data. Episode i of a task uses seed
``EVAL_SEED_BASE + i``: every policy is judged on the same layouts. Each episode's action
noise (sampling temperature) is seeded by its seed, so a run is reproducible.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wmpo.data.collect import EVAL_SEED_BASE, SourceSpec, run_episodes
from wmpo.errors import ConfigError
from wmpo.eval.stats import mcnemar_exact, wilson_interval


@dataclass
class EvalConfig:
    tasks: list[str]
    source: SourceSpec = field(default_factory=SourceSpec)
    episodes: int = 100  # per task
    seed_offset: int = 0  # episodes use seeds EVAL_SEED_BASE + seed_offset + i
    workers: int = 2
    image_size: int = 64
    max_steps: int = 160
    # JSONL of finished episodes: an interrupted evaluation rerun with it skips what is done
    journal: str | None = None

    def validate(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.seed_offset < 0:
            raise ConfigError(f"--seed-offset must be >= 0, got {self.seed_offset}")


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    seeds = range(EVAL_SEED_BASE + cfg.seed_offset, EVAL_SEED_BASE + cfg.seed_offset + cfg.episodes)
    jobs = [(task, s) for s in seeds for task in cfg.tasks]
    source = asdict(cfg.source)
    done: dict[tuple[str, int], dict[str, Any]] = {}
    record: Callable[[dict[str, Any]], None] | None = None
    if cfg.journal:
        from wmpo.train.common import JsonlLog  # (torch: only evaluations that journal pay for it)

        done = _open_journal(Path(cfg.journal), {"source": source, "max_steps": cfg.max_steps})
        log = JsonlLog(Path(cfg.journal), elapsed=False)

        def record(episode: dict[str, Any]) -> None:
            log.write(**episode)
    todo = [j for j in jobs if j not in done]
    t0 = time.time()
    results = run_episodes(cfg.source, todo, {"image_size": cfg.image_size, "max_steps": cfg.max_steps},
                           cfg.workers, desc=f"eval {cfg.source.kind}", progress=progress, on_episode=record)
    resumed = [done[j] for j in jobs if j in done]
    report = summarize(source, cfg.max_steps, cfg.tasks, results + resumed, time.time() - t0)
    return {**report, "resumed_episodes": len(resumed)} if resumed else report


def _open_journal(path: Path, header: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The episodes an earlier run of the same evaluation finished; a new journal gets its header.
    The first line names the evaluation (source, episode length): another evaluation's journal is
    refused rather than mixed in. A line cut short by the interruption is dropped."""
    if path.exists() and path.stat().st_size:
        found, done = read_journal(path)
        now = json.loads(json.dumps(header, default=str))
        if found != now:
            raise ConfigError(f"{path} is the journal of another evaluation ({_differences(found, now, 'journal')}, "
                              "journal vs this run); give a new path, or delete it to start over")
        lines = [json.dumps({"journal": found})] + [json.dumps(ep) for ep in done.values()]
        path.write_text("\n".join(lines) + "\n")  # without a cut line: appends start on a fresh line
        return done
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"journal": header}, default=str) + "\n")
    return {}


def read_journal(path: Path) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
    """An evaluation journal's header (source, episode length) and its finished episodes, read
    without changing the file (an evaluation may still be appending to it)."""
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0])["journal"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not an evaluation journal: {e!r}") from e
    if not isinstance(header, dict):
        raise ConfigError(f"{path} is not an evaluation journal (no header line)")
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for line in lines[1:]:
        try:
            ep = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line, cut short when the run stopped: that episode runs again
        done[(ep["task"], ep["seed"])] = ep
    return header, done


def journal_report(path: Path) -> dict[str, Any]:
    """The report of the episodes a journal holds: an evaluation still running, or one stopped
    before its end, read as ``--json`` would have written it for those episodes."""
    header, done = read_journal(path)
    if not done:
        raise ConfigError(f"the journal {path} holds no finished episode yet")
    tasks = list(dict.fromkeys(t for t, _ in done))
    report = summarize(header["source"], header["max_steps"], tasks, list(done.values()), 0.0)
    return {**report, "journal": str(path)}


def _differences(a: Any, b: Any, at: str = "") -> str:
    """Where two descriptions of an evaluation differ, e.g. "source.checkpoint: 'x' vs 'y'"."""
    if isinstance(a, dict) and isinstance(b, dict):
        return "; ".join(_differences(a.get(k), b.get(k), f"{at}.{k}" if at else k)
                         for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))
    return f"{at or 'value'}: {a!r} vs {b!r}"


def summarize(source: dict[str, Any], max_steps: int, tasks: list[str], results: list[dict[str, Any]],
              seconds: float) -> dict[str, Any]:
    """The report of a set of episodes: per task and overall success with 95% Wilson intervals,
    and, where the episodes carry them, verification, plan latency and goal-reaching summaries."""
    import numpy as np

    per_task = {}
    for task in tasks:
        rs = [r for r in results if r["task"] == task]
        k = sum(r["success"] for r in rs)
        lo, hi = wilson_interval(k, len(rs))
        succ_lens = [r["length"] for r in rs if r["success"]]
        per_task[task] = {
            "episodes": len(rs),
            "successes": k,
            "success_rate": k / len(rs),
            "ci95": [round(lo, 4), round(hi, 4)],
            "mean_length": sum(r["length"] for r in rs) / len(rs),
            "mean_length_success": sum(succ_lens) / len(succ_lens) if succ_lens else None,
        }
    n = len(results)
    k = sum(r["success"] for r in results)
    lo, hi = wilson_interval(k, n)
    seeds = [r["seed"] for r in results]
    report: dict[str, Any] = {
        "source": source,
        "seeds": [min(seeds), max(seeds)],
        "max_steps": max_steps,
        "per_task": per_task,
        "overall": {"episodes": n, "successes": k, "success_rate": k / n, "ci95": [round(lo, 4), round(hi, 4)]},
        "seconds": round(seconds, 1),
        "episodes_detail": sorted(results, key=lambda r: (r["task"], r["seed"])),
    }
    if any("decisions" in r for r in results):
        report = {"verification": verification_summary(results), **report}
    if any("plans" in r for r in results):  # the action optimizer's re-planning
        secs = np.asarray([s for r in results for s in r.get("plan_seconds", [])])
        report["plans"] = {"count": int(secs.size), "seconds_p50": float(np.median(secs)) if secs.size else None,
                           "seconds_p90": float(np.quantile(secs, 0.9)) if secs.size else None}
    goal = [r for r in results if "object_error" in r]
    if goal:  # goal reaching: where the episodes ended vs the demonstrations
        report["goal_reaching"] = {
            "demo_success": float(np.mean([r["demo_success"] for r in goal])),
            **{f"{k}_median": float(np.median([r[k] for r in goal])) for k in ("object_error", "hand_error")}}
    return report


def _check_report(rep: dict[str, Any], i: int, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in rep]
    if missing:
        raise ConfigError(f"report {i} is not a `wmpo eval policy` / `eval optimizer` report (no {missing[0]})")


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from evaluations of the same source split over tasks or seed ranges (pieces run
    in other processes, machines or sessions). Every episode counts once: the pieces must share
    the source and the episode length, and no (task, seed) may be in two of them."""
    if not reports:
        raise ConfigError("give at least one report to merge")
    first = reports[0]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    tasks: list[str] = []
    for i, rep in enumerate(reports, 1):
        _check_report(rep, i, ("source", "max_steps", "per_task", "episodes_detail"))
        for key in ("source", "max_steps"):
            if rep[key] != first[key]:
                raise ConfigError(f"report {i} differs from the first in {key}: "
                                  f"{_differences({key: rep[key]}, {key: first[key]})}, this report vs the first")
        for r in rep["episodes_detail"]:
            key = (r["task"], r["seed"])
            if key in results:
                raise ConfigError(f"{r['task']} seed {r['seed']} is in more than one report (report {i})")
            results[key] = r
        tasks += [t for t in rep["per_task"] if t not in tasks]
    merged = summarize(first["source"], first["max_steps"], tasks, list(results.values()),
                       sum(r.get("seconds", 0.0) for r in reports))
    return {**merged, "merged_reports": len(reports)}


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """A paired comparison of two evaluations on the layouts both ran (the same held-out seeds
    give the same layout to both): per task and overall, each one's successes, the pairs only
    one of them solved, and the exact McNemar p-value. On shared layouts this sees differences
    that two separate intervals hide, since most layouts are solved by both or by neither."""
    details = []
    for i, rep in enumerate((a, b), 1):
        _check_report(rep, i, ("episodes_detail",))
        details.append({(r["task"], r["seed"]): bool(r["success"]) for r in rep["episodes_detail"]})
    da, db = details
    shared = sorted(da.keys() & db.keys())
    if not shared:
        raise ConfigError("the two reports share no (task, seed) episode: nothing to pair")
    if a.get("max_steps") != b.get("max_steps"):
        raise ConfigError(f"the reports ran episodes of different lengths ({a.get('max_steps')} vs {b.get('max_steps')})")

    def paired(keys: list[tuple[str, int]]) -> dict[str, Any]:
        only_a = sum(da[k] and not db[k] for k in keys)
        only_b = sum(db[k] and not da[k] for k in keys)
        return {"episodes": len(keys), "successes_a": sum(da[k] for k in keys), "successes_b": sum(db[k] for k in keys),
                "only_a": only_a, "only_b": only_b, "p_value": mcnemar_exact(only_a, only_b)}

    tasks = list(dict.fromkeys(t for t, _ in shared))
    return {"per_task": {t: paired([k for k in shared if k[0] == t]) for t in tasks}, "overall": paired(shared),
            "unpaired_episodes": [len(da) - len(shared), len(db) - len(shared)],
            "sources": [a.get("source"), b.get("source")]}


def format_comparison(cmp: dict[str, Any]) -> str:
    a, b = "A", "B"
    lines = [f"{'task':<26} {'episodes':>8} {a + ' ok':>8} {b + ' ok':>8} {'only ' + a:>8} {'only ' + b:>8} {'p':>8}"]
    for task, r in [*cmp["per_task"].items(), ("overall", cmp["overall"])]:
        lines.append(f"{task:<26} {r['episodes']:>8} {r['successes_a']:>8} {r['successes_b']:>8} {r['only_a']:>8} "
                     f"{r['only_b']:>8} {r['p_value']:>8.2g}")
    return "\n".join(lines)


def verification_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Verify-before-execute episodes: decision latency and how often no candidate passed."""
    import numpy as np

    secs = np.asarray([t for r in results for t in r.get("decision_seconds", [])])
    decisions = sum(r.get("decisions", 0) for r in results)
    outcomes = [o for r in results for o in r.get("outcomes", [])]
    drift = {"outcomes_reported": len(outcomes),
             "outcome_errors": [e for r in results for e in r.get("outcome_errors", [])][:5]}
    for key in ("psnr_mean_db", "perceptual_mean"):
        vals = [o[key] for o in outcomes if o.get(key) is not None]
        drift[f"drift_{key}"] = round(float(np.mean(vals)), 4) if vals else None
    return {**drift,
        "decisions": decisions,
        "decision_seconds_p50": round(float(np.median(secs)), 4) if secs.size else None,
        "decision_seconds_p90": round(float(np.quantile(secs, 0.9)), 4) if secs.size else None,
        "imagine_calls_per_decision": sum(r.get("imagine_calls", 0) for r in results) / max(decisions, 1),
        "executed_unverified_fraction": sum(r.get("executed_unverified", 0) for r in results) / max(decisions, 1),
    }


def format_table(report: dict[str, Any], title: str = "") -> str:
    rows = [f"{title}" if title else "", f"{'task':<26} {'success':>8} {'95% CI':>15} {'n':>5} {'mean len':>9}"]
    for task, r in report["per_task"].items():
        lo, hi = r["ci95"]
        rows.append(f"{task:<26} {r['success_rate']:>8.1%} {f'[{lo:.0%}, {hi:.0%}]':>15} "
                    f"{r['episodes']:>5} {r['mean_length']:>9.1f}")
    o = report["overall"]
    lo, hi = o["ci95"]
    rows.append(f"{'overall':<26} {o['success_rate']:>8.1%} {f'[{lo:.0%}, {hi:.0%}]':>15} {o['episodes']:>5}")
    return "\n".join(r for r in rows if r is not None)
