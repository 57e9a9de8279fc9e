"""What the judge clients return, and the input checks both transports share.

The HTTP and gRPC judge clients (`wmpo_client.judge_http`,
`wmpo_client.judge_grpc`) return these same frozen dataclasses. On the wire
"none" is -1 (`best_clip`, `done_clip`, `done_frame`); here it is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

JudgeKind = Literal["classifier", "vlm"]
RewardKind = Literal["success", "clip", "score"]
KINDS: tuple[str, ...] = ("classifier", "vlm")
REWARDS: tuple[str, ...] = ("success", "clip", "score")


@dataclass(frozen=True)
class VlmVotes:
    """The VLM judge's vote on one video."""

    votes: int  # samples that said Success
    samples: int
    unparsed: int  # samples that said neither (counted as Failure)
    votes_needed: int
    answers: list[str]


@dataclass(frozen=True)
class JudgeVerdict:
    """The verdict on one video."""

    success: bool
    score: float  # classifier: best clip probability; VLM: votes / samples
    clip_scores: list[float]  # one per stride-1 clip (classifier); [] for the VLM
    best_clip: int | None  # None for the VLM
    done_clip: int | None  # first clip at or above the threshold; None if none
    done_frame: int | None  # input frame where the done clip ends; None if none
    clip_reward: float | None  # temporally weighted clip reward (classifier)
    threshold: float
    frames_used: list[int]  # input frame indices the judge looked at
    vlm: VlmVotes | None = None


@dataclass(frozen=True)
class JudgeResult:
    """The answer to one judge call."""

    request_id: str
    kind: JudgeKind
    verdict: JudgeVerdict
    provenance: dict[str, str]
    timing: dict[str, float]

    @property
    def success(self) -> bool:
        return self.verdict.success

    @property
    def score(self) -> float:
        return self.verdict.score


@dataclass(frozen=True)
class RolloutJudgement:
    """One rollout of a judged group."""

    index: int
    verdict: JudgeVerdict
    replay: JudgeVerdict | None  # the verdict on its replay, if one was sent
    raw_reward: float  # from the verdict alone
    reward: float  # after dual-noise verification
    flagged: bool  # a success whose replay was not: a hallucination


@dataclass(frozen=True)
class GroupJudgement:
    """A judged group: per-rollout verdicts and rewards after dual-noise verification."""

    request_id: str
    kind: JudgeKind
    reward: RewardKind
    rollouts: list[RolloutJudgement]
    discard: bool  # more than max_flags flagged: drop the group
    verified: bool  # every rollout judged a success had a replay
    needs_replay: list[int]  # successes without a replay
    provenance: dict[str, str]
    timing: dict[str, float]

    @property
    def rewards(self) -> np.ndarray:
        """(G,) float64 rewards after verification, in rollout order."""
        return np.array([r.reward for r in self.rollouts], dtype=np.float64)

    @property
    def flagged(self) -> np.ndarray:
        """(G,) bool."""
        return np.array([r.flagged for r in self.rollouts], dtype=bool)

    @property
    def success(self) -> np.ndarray:
        """(G,) bool: each rollout's own verdict."""
        return np.array([r.verdict.success for r in self.rollouts], dtype=bool)


# ------------------------------------------------------------------ inputs


def video_array(video: Any, name: str = "video") -> np.ndarray:
    """A video as sent: uint8 (T, H, W, 3), never cast (a float video in [0, 1] would turn black)."""
    array = np.asarray(video)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{name}: frames must be uint8 RGB (T, H, W, 3), got dtype {array.dtype.name}; "
            "convert with (x * 255).round().astype(np.uint8) for images in [0, 1]"
        )
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (T, H, W, 3), got {array.shape}")
    return np.ascontiguousarray(array)


def check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} (or None), got {kind!r}")
    return kind


def check_reward(reward: str) -> str:
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
    return reward


def replay_items(replays: Mapping[int, Any] | None) -> list[tuple[int, np.ndarray]]:
    """`{rollout index: replayed video}` -> sorted (index, uint8 video) pairs."""
    return [(int(i), video_array(v, f"replay {i}")) for i, v in sorted((replays or {}).items())]


# ------------------------------------------------------------------ parsing (JSON form)


def _clip(value: Any) -> int | None:
    return None if value is None or int(value) < 0 else int(value)


def verdict_from_json(data: dict[str, Any]) -> JudgeVerdict:
    vlm = data.get("vlm")
    return JudgeVerdict(
        success=bool(data["success"]),
        score=float(data["score"]),
        clip_scores=[float(s) for s in data.get("clip_scores") or []],
        best_clip=_clip(data.get("best_clip")),
        done_clip=_clip(data.get("done_clip")),
        done_frame=_clip(data.get("done_frame")),
        clip_reward=None if data.get("clip_reward") is None else float(data["clip_reward"]),
        threshold=float(data["threshold"]),
        frames_used=[int(i) for i in data.get("frames_used") or []],
        vlm=None if vlm is None else VlmVotes(**{**vlm, "answers": list(vlm["answers"])}),
    )


def result_from_json(data: dict[str, Any]) -> JudgeResult:
    return JudgeResult(
        request_id=data["request_id"],
        kind=data["kind"],
        verdict=verdict_from_json(data["verdict"]),
        provenance=dict(data.get("provenance") or {}),
        timing=dict(data.get("timing") or {}),
    )


def group_from_json(data: dict[str, Any]) -> GroupJudgement:
    return GroupJudgement(
        request_id=data["request_id"],
        kind=data["kind"],
        reward=data["reward"],
        rollouts=[
            RolloutJudgement(
                index=int(r["index"]),
                verdict=verdict_from_json(r["verdict"]),
                replay=None if r.get("replay") is None else verdict_from_json(r["replay"]),
                raw_reward=float(r["raw_reward"]),
                reward=float(r["reward"]),
                flagged=bool(r["flagged"]),
            )
            for r in data["rollouts"]
        ],
        discard=bool(data["discard"]),
        verified=bool(data["verified"]),
        needs_replay=[int(i) for i in data.get("needs_replay") or []],
        provenance=dict(data.get("provenance") or {}),
        timing=dict(data.get("timing") or {}),
    )
