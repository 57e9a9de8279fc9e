"""Judge quality: trajectory-level precision, recall and F1 on real and on imagined rollouts.

Real: held-out episodes collected in MetaWorld, labelled by the simulator's success flag.
Imagined: the same episodes' recorded actions replayed by the world model from the episode's
real first frame; the label is still the *real* outcome of those actions from that seed, so
the number measures what the trainer will get (world-model errors and judge errors together).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.data.episodes import EpisodeDataset
from wmpo.errors import ConfigError
from wmpo.judge.success import SuccessJudge


@dataclass
class JudgedEpisodes:
    scores: np.ndarray  # (E,) best clip probability per episode
    labels: np.ndarray  # (E,) bool, real success
    tasks: list[str]


def precision_recall_f1(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": float((pred == labels).mean()),
            "tp": tp, "fp": fp, "fn": fn, "tn": int(len(pred) - tp - fp - fn)}


def ranking_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC: the chance that a success scores above a failure (ties count half), whatever the
    threshold; None without both. How well a judge can rank a task's rollouts at all, the property
    GRPO's group advantages need (pairwise on numpy: sets are hundreds of episodes, and this is
    not worth a dependency)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def choose_threshold(scores: np.ndarray, labels: np.ndarray, min_support: int = 1) -> float | None:
    """The threshold with the best F1 on a validation split (midpoint between neighbouring scores,
    so it does not sit exactly on a validation example); None when the split has fewer than
    ``min_support`` successes or failures: without both, F1 is 0 or 1 at any threshold and its
    argmax would pass every episode; with a handful, the argmax is noise (a lifelong round's 15
    validation rollouts moved a threshold from 0.94 to 0.39)."""
    successes = int(labels.sum())
    if min(successes, len(labels) - successes) < max(min_support, 1):
        return None
    cands = np.unique(np.concatenate([[0.0, 1.0], scores]))
    mids = (cands[:-1] + cands[1:]) / 2
    f1s = [precision_recall_f1(scores >= t, labels)["f1"] for t in mids]
    return float(mids[int(np.argmax(f1s))])


def judge_dataset(judge: SuccessJudge, dataset: EpisodeDataset, batch_episodes: int = 16,
                  progress: bool = False) -> JudgedEpisodes:
    """Score every real episode of a dataset (frames at env stride 1)."""
    scores, labels, tasks = [], [], []
    bar = tqdm(total=len(dataset), desc="judge real episodes", disable=not progress)
    for i in range(0, len(dataset), batch_episodes):
        eps = [dataset.episode(j) for j in range(i, min(i + batch_episodes, len(dataset)))]
        verdicts = judge.judge_many([e.frames for e in eps], [e.meta["instruction"] for e in eps],
                                    [e.meta.get("frame_stride", 1) for e in eps])
        scores += [v.score for v in verdicts]
        labels += [e.succeeded for e in eps]
        tasks += [e.meta["task"] for e in eps]
        bar.update(len(eps))
    bar.close()
    return JudgedEpisodes(np.asarray(scores), np.asarray(labels, bool), tasks)


def replay_seed(seed: int, meta: dict[str, Any], index: int) -> int:
    """The noise seed of one episode's replay: the run's ``seed`` and the episode's identity (task,
    env seed), not its position, so a dataset rebuilt in another shard order (collected with
    another number of workers) is imagined with the same noise. ``index`` stands in for an
    episode without an env seed."""
    key = f"{meta.get('task')}/{meta['seed']}" if meta.get("seed") is not None else f"#{index}"
    return seed * 1_000_003 + zlib.crc32(key.encode())


def imagine_dataset(world_model: Any, dataset: EpisodeDataset, seed: int = 0, batch: int = 16,
                    progress: bool = False, real_context: bool = False) -> list[np.ndarray]:
    """Imagined videos (frames at the world model's stride) of each episode's recorded actions,
    started from its real first frame, as long as the real episode.

    ``real_context``: every chunk is imagined from the real frames before it (the first frame and
    the sampler's context window of real frames), not from the imagined ones: one chunk's error
    without the errors of the chunks before it compounding into it."""
    stride = world_model.frame_stride
    chunk = min(8, world_model.max_chunk_length) // stride * stride
    context = world_model.sampler.context_frames
    videos: list[np.ndarray] = []
    bar = tqdm(total=len(dataset), desc="imagine episodes", disable=not progress)
    for i in range(0, len(dataset), batch):
        eps = [dataset.episode(j) for j in range(i, min(i + batch, len(dataset)))]
        seeds = [replay_seed(seed, e.meta, i + k) for k, e in enumerate(eps)]
        rollouts = world_model.start(np.stack([e.frames[0] for e in eps]), seeds)
        steps = max(e.length for e in eps)
        steps = (steps + chunk - 1) // chunk * chunk
        acts = np.zeros((len(eps), steps, 4), np.float32)
        for k, e in enumerate(eps):
            acts[k, : e.length] = e.actions  # past the real end: zero actions (hold still)
        # real context: each episode's frames at the stride encoded once, not again at every chunk
        coded = [world_model.encode(e.frames[:e.length // stride * stride + 1:stride]) for e in eps] \
            if real_context else []
        latents = []
        for t in range(0, steps, chunk):
            if real_context and t > 0:
                rollouts = [real_history_rollout(world_model, e, coded[k], min(t, e.length // stride * stride),
                                                 context, seeds[k]) for k, e in enumerate(eps)]
            latents.append(world_model.step(rollouts, acts[:, t:t + chunk]))
        frames = world_model.decode(torch.cat(latents, 1))  # (B, steps/stride, H, W, 3)
        for k, e in enumerate(eps):
            n = e.length // stride  # imagined frames covering the real episode
            videos.append(np.concatenate([e.frames[:1], frames[k, :n]]))
        bar.update(len(eps))
    bar.close()
    return videos


def real_history_rollout(world_model: Any, episode: Any, coded: torch.Tensor, t: int, context: int,
                         seed: int) -> Any:
    """A rollout at env step ``t`` (a multiple of the stride) of a real episode: its first frame as
    the anchor and the last ``context`` real frames at the stride up to ``t`` as history. ``coded``:
    the episode's frames at the stride, encoded (row k is env step k * stride). Past a shorter
    episode's end (``t`` clamped there) the chunk's frames are not used; an episode shorter than
    the stride has its first frame as all the history there is."""
    stride = world_model.frame_stride
    first = max(stride, t - (context - 1) * stride)
    times = list(range(first, t + 1, stride))
    actions = np.stack([episode.actions[k - stride:k].reshape(-1) for k in times]) if times else np.zeros((0,))
    return world_model.start_with_latent_history(coded[0], coded[[k // stride for k in times]], actions, seed)


def reconstruct_dataset(world_model: Any, dataset: EpisodeDataset, progress: bool = False) -> list[np.ndarray]:
    """The autoencoder's copy of each episode's real frames at the times ``imagine_dataset`` imagines
    (first frame real): the best any imagination through this latent can show, so the judge's
    ceiling on this world model."""
    stride = world_model.frame_stride
    videos: list[np.ndarray] = []
    for j in tqdm(range(len(dataset)), desc="reconstruct episodes", disable=not progress):
        e = dataset.episode(j)
        real = e.frames[stride:(e.length // stride) * stride + 1:stride]
        coded = world_model.decode(world_model.encode(real)) if len(real) else real
        videos.append(np.concatenate([e.frames[:1], coded]))
    return videos


def write_imagined_dataset(world_model_dir: str, data: str, out: str, seed: int = 0,
                           progress: bool = True, action_guidance: float | None = None,
                           reconstruct: bool = False, real_context: bool = False,
                           sampler_steps: int | None = None, sampler_shift: float | None = None) -> dict[str, Any]:
    """An episode dataset of the world model's replays of ``data``'s episodes (same start frame, same
    actions), at the world model's frame stride, each labelled with the *real* outcome: its last frame
    carries the real episode's success flag. The judge can be trained and evaluated on it
    (``frame_stride`` in each episode's metadata tells the judge the spacing). ``action_guidance``
    replaces the checkpoint's (imagine with the sampler the simulator will serve with), as do
    ``sampler_steps`` and ``sampler_shift``.
    ``reconstruct``: the autoencoder's reconstructions of the real frames instead of replays;
    ``real_context``: each chunk imagined from the real frames before it (``imagine_dataset``)."""
    from wmpo.data.episodes import Episode, ShardWriter, append_manifest, init_dataset_like
    from wmpo.sampling.world_model import TorchWorldModel

    if reconstruct and real_context:
        raise ConfigError("--reconstruct and --real-context exclude each other (reconstructions imagine nothing)")
    wm = TorchWorldModel.load(world_model_dir).with_sampler(steps=sampler_steps, action_guidance=action_guidance,
                                                            shift=sampler_shift)
    src = EpisodeDataset.load(data)
    init_dataset_like(data, out)
    videos = (reconstruct_dataset(wm, src, progress=progress) if reconstruct
              else imagine_dataset(wm, src, seed, progress=progress, real_context=real_context))
    kind = "reconstructed" if reconstruct else "imagined-real-context" if real_context else "imagined"
    writer = ShardWriter(out, 16, prefix="imagined-")
    for i, video in enumerate(videos):
        real = src.episode(i)
        success = np.zeros(len(video), bool)
        success[-1] = real.succeeded
        meta = {**real.meta, "source": {"kind": kind, "world_model": wm.provenance().get("world_model_sha256"),
                                        "from": data, "seed": replay_seed(seed, real.meta, i),
                                        "action_guidance": wm.sampler.action_guidance},
                "frame_stride": wm.frame_stride}
        writer.add(Episode(video, np.zeros((len(video) - 1, 4), np.float32), success, meta))
    writer.flush()
    summary = {"episodes": len(videos), "successes": int(sum(m["succeeded"] for m in src.episodes))}
    append_manifest(out, {**summary, "source": kind, "world_model": world_model_dir, "from": data,
                          "sampler": asdict(wm.sampler),
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return summary


def dual_noise_report(judge: SuccessJudge, real: EpisodeDataset, imagined: EpisodeDataset, world_model_dir: str,
                      seed: int, progress: bool = True) -> dict[str, Any]:
    """Dual-noise verification on imagined replays: every imagined episode the judge calls a success
    is imagined again from the same start under the same actions with fresh noise (``seed``) and
    judged again; disagreement flags it. Reports how many were flagged and how many of the flagged
    were real failures (the hallucinations DNV exists to catch) or real successes (its false alarms)."""
    from wmpo.sampling.world_model import TorchWorldModel

    if len(real) != len(imagined):
        raise ConfigError(f"the imagined dataset ({len(imagined)} episodes) must replay the real one ({len(real)})")
    first = judge_dataset(judge, imagined)
    positives = np.flatnonzero(first.scores >= judge.threshold)
    by_key = {(m["task"], m["seed"]): m for m in real.episodes}  # shard order differs between the two
    try:
        sub = EpisodeDataset(real.root, real.columns,
                             [by_key[(imagined.episodes[i]["task"], imagined.episodes[i]["seed"])] for i in positives])
    except KeyError as e:
        raise ConfigError(f"imagined episode {e} has no real episode in {real.root}") from None
    same = [i for i, m in zip(positives, sub.episodes, strict=True)
            if imagined.episodes[i].get("source", {}).get("seed") == replay_seed(seed, m, -1)]
    if same:
        raise ConfigError(f"--seed {seed} is the seed these replays were imagined with: dual-noise "
                          "verification needs fresh noise, pass another --seed")
    wm = TorchWorldModel.load(world_model_dir)
    videos = imagine_dataset(wm, sub, seed, progress=progress)
    again = [judge.judge_many([v], [m["instruction"]], [wm.frame_stride])[0].success
             for v, m in zip(videos, sub.episodes, strict=True)]
    flagged = np.asarray([not a for a in again], bool)
    real_ok = np.asarray([m["succeeded"] for m in sub.episodes], bool)
    return {
        "imagined_episodes": len(imagined), "judged_successes": int(len(positives)),
        "judged_successes_real_failures": int((~real_ok).sum()),
        "flagged": int(flagged.sum()),
        "flagged_real_failures": int((flagged & ~real_ok).sum()),
        "flagged_real_successes": int((flagged & real_ok).sum()),
        "precision_before": float(real_ok.mean()) if len(real_ok) else None,
        "precision_after": float(real_ok[~flagged].mean()) if (~flagged).any() else None,
        "seed": seed,
    }


@dataclass
class JudgeEvalConfig:
    classifier: str
    data: str | list[str]  # several datasets make one test set (e.g. policy rollouts + noisy experts)
    world_model: str | None = None  # also judge imagined replays of the same episodes
    seed: int = 0
    limit: int = 0  # 0 = all episodes (else the first N of each dataset)

    def validate(self) -> None:
        if self.limit < 0:
            raise ConfigError("--limit must be >= 0")
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data:
            raise ConfigError("--data needs at least one dataset")


def evaluate_judge(cfg: JudgeEvalConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    judge = SuccessJudge.load(cfg.classifier)
    datasets = [EpisodeDataset.load(d) for d in cfg.data]
    if cfg.limit:
        for ds in datasets:
            ds.episodes = ds.episodes[: cfg.limit]
    t0 = time.time()
    parts = [judge_dataset(judge, ds, progress=progress) for ds in datasets]
    real = JudgedEpisodes(np.concatenate([p.scores for p in parts]), np.concatenate([p.labels for p in parts]),
                          [t for p in parts for t in p.tasks])
    n = sum(len(ds) for ds in datasets)
    report: dict[str, Any] = {"config": asdict(cfg), "judge": judge.provenance(), "episodes": n,
                              "real_success_rate": float(real.labels.mean()),
                              "real": summarize(real, judge.threshold)}
    if cfg.world_model:
        from wmpo.sampling.world_model import TorchWorldModel

        wm = TorchWorldModel.load(cfg.world_model)
        verdicts = []
        for ds in datasets:
            videos = imagine_dataset(wm, ds, cfg.seed, progress=progress)
            for i in range(0, len(videos), 16):
                part = list(range(i, min(i + 16, len(videos))))
                verdicts += judge.judge_many([videos[j] for j in part],
                                             [ds.episodes[j]["instruction"] for j in part],
                                             [wm.frame_stride] * len(part))
        imagined = JudgedEpisodes(np.asarray([v.score for v in verdicts]), real.labels, real.tasks)
        report["imagined"] = summarize(imagined, judge.threshold)
        report["imagined"]["agreement_with_real_verdicts"] = float(
            ((imagined.scores >= judge.threshold) == (real.scores >= judge.threshold)).mean())
        report["world_model"] = wm.provenance()
    report["seconds"] = round(time.time() - t0, 1)
    return report


def summarize(j: JudgedEpisodes, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1 at ``threshold`` and the AUC, overall and per task."""
    pred = j.scores >= threshold
    out: dict[str, Any] = {**precision_recall_f1(pred, j.labels), "auc": ranking_auc(j.scores, j.labels),
                           "per_task": {}}
    for task in sorted(set(j.tasks)):
        m = np.asarray([t == task for t in j.tasks])
        out["per_task"][task] = {**precision_recall_f1(pred[m], j.labels[m]), "auc": ranking_auc(j.scores[m], j.labels[m]),
                                 "episodes": int(m.sum()), "real_successes": int(j.labels[m].sum())}
    return out


def _auc(value: float | None) -> str:
    return f"{value:>6.3f}" if value is not None else f"{'-':>6}"


def format_report(r: dict[str, Any]) -> str:
    rows = [f"judge {r['judge'].get('classifier_sha256', '')} threshold {r['judge']['threshold']:.3f}, "
            f"{r['episodes']} episodes, real success rate {r['real_success_rate']:.1%}",
            f"{'':<10} {'task':<22} {'prec':>6} {'recall':>6} {'F1':>6} {'AUC':>6} {'n':>5}"]
    for kind in ("real", "imagined"):
        if kind not in r:
            continue
        s = r[kind]
        for task, t in s["per_task"].items():
            rows.append(f"{kind:<10} {task:<22} {t['precision']:>6.3f} {t['recall']:>6.3f} {t['f1']:>6.3f} "
                        f"{_auc(t.get('auc'))} {t['episodes']:>5}")
        rows.append(f"{kind:<10} {'overall':<22} {s['precision']:>6.3f} {s['recall']:>6.3f} {s['f1']:>6.3f} "
                    f"{_auc(s.get('auc'))} {r['episodes']:>5}")
    return "\n".join(rows)
