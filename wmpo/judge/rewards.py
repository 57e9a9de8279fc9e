"""Rewards from judged rollouts, and dual-noise verification (DESIGN.md section 4 "Rewards").

- ``clip_reward``: RoboStereo's temporally weighted clip reward (OEPL): per-clip success
  confidences aggregated with softmax weights that grow over time, ``w_i ∝ exp(i / (n * T))``
  for clip i of n (normalizing by n makes the temperature T independent of the video length;
  the paper leaves the schedule unspecified).
- ``imitation_reward``: RoboStereo's IEPL reward: per-frame negative perceptual distance between
  the imagined rollout of the policy's actions and the imagined rollout of expert actions.
- ``goal_reward``: RoboScape-R's reward: dense negative perceptual distance to a goal frame,
  plus a sparse bonus from the first frame where the done probability passes a threshold.
- ``dual_noise_group``: RAW-Dream's dual-noise verification rule for a group of G rollouts.

Perceptual distances come from ``wmpo.judge.perceptual``; these functions take them as
arrays, so any distance plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# What GRPO may reward a rollout with (``wmpo.rl.imagination``: success and clip from the judge's
# verdict, imitation from the perceptual distance to the expert's imagined rollout).
REWARD_KINDS = ("success", "clip", "imitation")


def temporal_weights(n: int, temperature: float) -> np.ndarray:
    """Softmax weights (n,) over clip positions that grow with time; smaller temperature puts more
    weight on the last clips, a large one tends to the plain mean."""
    if n < 1:
        raise ValueError("need at least one clip")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.arange(n, dtype=np.float64) / (n * temperature)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def clip_reward(clip_scores: np.ndarray, temperature: float = 0.25) -> float:
    """Temporally weighted aggregate of per-clip success confidences."""
    scores = np.asarray(clip_scores, dtype=np.float64)
    return float(temporal_weights(len(scores), temperature) @ scores)


def imitation_reward(distances: np.ndarray) -> np.ndarray:
    """Per-frame reward: minus the perceptual distance between the policy's imagined frame t and the
    expert's imagined frame t (both from the same start)."""
    return -np.asarray(distances, dtype=np.float64)


def goal_reward(distances: np.ndarray, done_probs: np.ndarray, threshold: float = 0.5,
                bonus: float = 1.0) -> np.ndarray:
    """Per-frame reward: minus the distance to the goal frame, plus ``bonus`` on the first frame whose
    done probability reaches ``threshold`` (the episode ends there; later frames get nothing)."""
    d = np.asarray(distances, dtype=np.float64)
    p = np.asarray(done_probs, dtype=np.float64)
    if d.shape != p.shape:
        raise ValueError(f"distances {d.shape} and done probabilities {p.shape} must have the same shape")
    r = -d
    hits = np.flatnonzero(p >= threshold)
    if hits.size:
        r[hits[0]] += bonus
        r[hits[0] + 1:] = 0.0
    return r


@dataclass
class GroupVerification:
    rewards: np.ndarray  # (G,) rewards after verification
    flagged: np.ndarray  # (G,) bool: judged a success, but not under fresh noise
    discard: bool  # too many flags: drop the whole group


def dual_noise_group(rewards: np.ndarray, success: np.ndarray, replay_success: np.ndarray,
                     max_flags: int = 2) -> GroupVerification:
    """RAW-Dream's rule. A rollout judged a success is replayed under fresh diffusion noise and judged
    again (``replay_success``; ignored where ``success`` is false). Disagreement flags it as a
    hallucination; its reward becomes the mean of the trustworthy (unflagged) rewards, so its
    advantage is zero. More than ``max_flags`` flags discard the group.
    """
    r = np.asarray(rewards, dtype=np.float64)
    s = np.asarray(success, dtype=bool)
    rs = np.asarray(replay_success, dtype=bool)
    if not (r.shape == s.shape == rs.shape) or r.ndim != 1:
        raise ValueError(f"rewards {r.shape}, success {s.shape} and replay_success {rs.shape} must be the same (G,)")
    flagged = s & ~rs
    out = r.copy()
    if flagged.any():
        # With no trustworthy rollout left there is no mean to take: flagged ones count as failures.
        out[flagged] = r[~flagged].mean() if (~flagged).any() else 0.0
    return GroupVerification(out, flagged, bool(flagged.sum() > max_flags))
