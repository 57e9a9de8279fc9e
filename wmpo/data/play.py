"""Task-agnostic play data for the world model (RAW-Dream), collected by one command.

``wmpo collect-play --out datasets/play-v2`` runs ``PLAY_PLAN``: several action sources over
the play split (``wmpo.envs.tasks.PLAY_TASKS``, 43 tasks) and a small set over the held-out
tasks (``HELDOUT_TASKS``), each stage into its own dataset::

    <out>/train/<stage>/     training data (play tasks only)
    <out>/heldout/<stage>/   held-out tasks: the trainer's zero-shot validation loss, never trained on

Every episode's layout seed and action noise are fixed by the stage's seed range (see
``wmpo.data.collect.source_rng``), so the same command rebuilds the same data on another
machine; it also resumes (episodes already on disk are skipped), so an interrupted collection
is finished by running it again. ``--scale`` multiplies every stage's episodes per task; the
seed ranges only grow, so a larger scale adds episodes to the ones already collected.
Each stage's seeds lie in its own range below ``EVAL_SEED_BASE`` (evaluation layouts never
appear in play data).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wmpo.data.collect import CollectConfig, collect
from wmpo.data.episodes import atomic_write_json
from wmpo.errors import ConfigError


@dataclass(frozen=True)
class PlayStage:
    name: str
    split: str  # "train" or "heldout"
    tasks: str  # a task spec for parse_tasks ("play", "heldout", "policy", or names)
    source: str
    episodes: int  # per task, at scale 1
    seed_start: int
    max_steps: int = 160
    noise_std: float = 0.5
    perturb_prob: float = 0.5
    checkpoint: str | None = None  # policy source: relative to the repository root
    temperature: float = 1.0


# Episodes run until success or max_steps. About 140k frames and 25 minutes on one core at
# scale 1 (measured in results/world-model-v2/README.md).
PLAY_PLAN: tuple[PlayStage, ...] = (
    # Expert reaches the object, half of the 8-step segments are random-walk motion: interactions
    # with actions that cannot be guessed from the frames.
    PlayStage("perturbed", "train", "play", "perturbed", 10, 100_000, noise_std=0.3, perturb_prob=0.5),
    # Pure random motion: the arm anywhere, objects mostly still.
    PlayStage("random-walk", "train", "play", "random-walk", 6, 200_000, max_steps=80),
    # Noisy expert: successes and failures of the task itself.
    PlayStage("noisy", "train", "play", "noisy", 6, 300_000, noise_std=0.5),
    # Clean expert: complete successes (what a judge's positives look like).
    PlayStage("expert", "train", "play", "expert", 3, 400_000),
    # The bundled base policy on its own tasks (WMPO's policy behaviour alignment).
    PlayStage("policy", "train", "policy", "policy", 12, 500_000, checkpoint="checkpoints/policy-base"),
    # Held-out tasks, never trained on: zero-shot validation loss.
    PlayStage("perturbed", "heldout", "heldout", "perturbed", 4, 600_000, noise_std=0.3, perturb_prob=0.5),
    PlayStage("noisy", "heldout", "heldout", "noisy", 2, 700_000, noise_std=0.5),
)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PLAY_JSON = "play.json"


def stage_dir(out: str | Path, stage: PlayStage) -> Path:
    return Path(out) / stage.split / stage.name


def stage_config(out: str | Path, stage: PlayStage, scale: float = 1.0, workers: int = 1) -> CollectConfig:
    from wmpo.envs.tasks import parse_tasks

    checkpoint = str(REPO_ROOT / stage.checkpoint) if stage.checkpoint else None
    return CollectConfig(out=str(stage_dir(out, stage)), tasks=parse_tasks(stage.tasks), source=stage.source,
                         episodes=max(1, round(stage.episodes * scale)), seed_start=stage.seed_start,
                         workers=workers, max_steps=stage.max_steps, noise_std=stage.noise_std,
                         perturb_prob=stage.perturb_prob, checkpoint=checkpoint, temperature=stage.temperature)


def play_command(out: str | Path, scale: float = 1.0) -> str:
    """The command line that (re)builds this play data, as recorded in training states."""
    return f"wmpo collect-play --out {out} --scale {scale:g}"


def collect_play(out: str, scale: float = 1.0, workers: int = 1, splits: tuple[str, ...] = ("train", "heldout"),
                 stages: tuple[PlayStage, ...] = PLAY_PLAN, progress: bool = True) -> dict[str, Any]:
    """Run every stage of the plan (resuming each); returns per-stage summaries and the totals."""
    if scale <= 0:
        raise ConfigError(f"--scale must be > 0, got {scale}")
    bad = set(splits) - {"train", "heldout"}
    if bad:
        raise ConfigError(f"unknown split(s) {sorted(bad)}; valid: train, heldout")
    t0 = time.time()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    # What rebuilds this data on another machine (read back by the trainer, see data_command).
    atomic_write_json(root / PLAY_JSON, {"command": play_command(out, scale), "scale": scale,
                                         "plan": [asdict(s) for s in stages]})
    summaries = []
    for stage in stages:
        if stage.split not in splits:
            continue
        s = collect(stage_config(out, stage, scale, workers), progress=progress)
        summaries.append({"stage": asdict(stage), "out": str(stage_dir(out, stage)),
                          **{k: s[k] for k in ("episodes_collected", "episodes_skipped_existing", "frames",
                                               "seconds")}})
    return {"command": play_command(out, scale), "stages": summaries,
            "episodes_collected": sum(s["episodes_collected"] for s in summaries),
            "frames_collected": sum(s["frames"] for s in summaries), "seconds": round(time.time() - t0, 1)}


def expand_datasets(paths: list[str]) -> list[str]:
    """Dataset directories, with a directory of datasets (e.g. ``<play>/train``) expanded into
    its datasets in sorted order."""
    out: list[str] = []
    for p in paths:
        root = Path(p)
        if (root / "meta" / "info.json").exists():
            out.append(str(root))
            continue
        subs = sorted(d for d in root.glob("*") if (d / "meta" / "info.json").exists())
        if not subs:
            raise ConfigError(f"{p} is neither an episode dataset nor a directory of datasets")
        out.extend(str(d) for d in subs)
    return out


def data_command(paths: list[str]) -> str | None:
    """The collect-play command that built these datasets (from the ``play.json`` of the play
    root above them), or None when they were not made by collect-play."""
    commands = []
    for p in paths:
        for d in (Path(p), *Path(p).resolve().parents):
            if (d / PLAY_JSON).exists():
                commands.append(json.loads((d / PLAY_JSON).read_text())["command"])
                break
        else:
            return None
    return "; ".join(dict.fromkeys(commands)) or None
