"""Judge requests as queue work: the payloads, the worker's handler, the results.

Both `/v1/judge` and `/v1/judge/group` (HTTP and gRPC) go through the work
queue named `judge.requests` (`services.common.queues`): Redis Streams when
WMPO_REDIS_URL is set, so any replica's engine may judge a request another
replica accepted, and classifier requests from every replica's callers meet
in the worker's batches; the in-process queue otherwise, with the same
idempotency (request ids), retry and dead-letter rules.

The accepting replica validates the request with its own engine (a bad request
is a 4xx before anything is queued) and resolves defaults (threshold, clip
temperature) into the payload, so every delivery judges the same way. The
worker admits the work into its engine; in queue mode it waits for engine
capacity instead of refusing (the queue is the buffer), in process a full
engine is the caller's 429.

A verdict, as stored in results and mapped by both transports:

    {"success": bool, "score": float, "clip_scores": [float], "best_clip": int,
     "done_clip": int (-1: none), "done_frame": int (-1: none), "clip_reward": float | None, "threshold": float,
     "frames_used": [int], "vlm": None | {"votes", "samples", "unparsed",
     "votes_needed", "answers"}}

Group rewards (`reward`): "success" (1 / 0, WMPO's sparse reward), "clip" (the
temporally weighted clip reward, RoboStereo OEPL; classifier only) or "score"
(best clip probability / vote fraction). Dual-noise verification (RAW-Dream,
`wmpo.judge.rewards.dual_noise_group`): a rollout judged a success whose replay
under fresh noise is not judged a success is flagged; its reward becomes the
mean of the unflagged rewards; more than `max_flags` flags discard the group.
Successes without a replay are listed in `needs_replay` and are not flagged;
`verified` is true only when every success had its replay.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.queues import Handler, Payload
from services.judge.engine import JudgeEngine, Kind
from wmpo.judge.rewards import clip_reward, dual_noise_group
from wmpo.judge.success import Verdict
from wmpo.judge.vlm import VLMVerdict

JUDGE_QUEUE = "judge.requests"
RewardName = Literal["success", "clip", "score"]
REWARDS: tuple[RewardName, ...] = ("success", "clip", "score")
DEFAULT_MAX_FLAGS = 2
# How often a queue worker whose engine is full looks again for capacity.
_CAPACITY_POLL_S = 0.01


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class JudgeParams:
    """What a request asks for beyond its videos, validated and with defaults resolved."""

    kind: Kind
    instruction: str
    frame_stride: int
    threshold: float | None  # None for vlm
    clip_temperature: float | None  # None for vlm

    def to_payload(self) -> Payload:
        return {
            "kind": self.kind,
            "instruction": self.instruction,
            "frame_stride": self.frame_stride,
            "threshold": self.threshold,
            "clip_temperature": self.clip_temperature,
        }

    @classmethod
    def from_payload(cls, payload: Payload) -> JudgeParams:
        try:
            return cls(
                kind=payload["kind"],
                instruction=str(payload["instruction"]),
                frame_stride=int(payload["frame_stride"]),
                threshold=_opt_float(payload["threshold"]),
                clip_temperature=_opt_float(payload["clip_temperature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed judge payload ({exc})") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def judge_payload(frames: np.ndarray, params: JudgeParams) -> Payload:
    return {"op": "judge", "frames": frames, **params.to_payload()}


def group_payload(
    videos: list[np.ndarray],
    replays: dict[int, np.ndarray],
    params: JudgeParams,
    reward: RewardName,
    max_flags: int,
) -> Payload:
    return {
        "op": "group",
        "videos": videos,
        "replays": [{"index": i, "frames": replays[i]} for i in sorted(replays)],
        "reward": reward,
        "max_flags": max_flags,
        **params.to_payload(),
    }


def _video(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 4:
        raise InvalidArgument(f"malformed judge payload: {what} must be a 4-D uint8 array")
    return value


# ------------------------------------------------------------------ verdicts


def _index(value: int | None) -> int:
    return -1 if value is None else int(value)


def classifier_verdict(v: Verdict, temperature: float) -> Payload:
    return {
        "success": bool(v.success),
        "score": float(v.score),
        "clip_scores": [float(s) for s in v.clip_scores],
        "best_clip": int(v.best_clip),
        "done_clip": -1 if v.done_clip is None else int(v.done_clip),
        "done_frame": _index(getattr(v, "done_frame", None)),
        "clip_reward": round(clip_reward(np.asarray(v.clip_scores), temperature), 6),
        "threshold": float(v.threshold),
        "frames_used": [int(i) for i in v.frames_used],
        "vlm": None,
    }


def vlm_verdict(v: VLMVerdict, votes_needed: int) -> Payload:
    return {
        "success": bool(v.success),
        "score": float(v.score),
        "clip_scores": [],
        "best_clip": -1,
        "done_clip": -1,
        "done_frame": -1,
        "clip_reward": None,
        "threshold": votes_needed / v.samples if v.samples else 1.0,
        "frames_used": [int(i) for i in v.frames_sent],
        "vlm": {
            "votes": int(v.votes),
            "samples": int(v.samples),
            "unparsed": int(v.unparsed),
            "votes_needed": int(votes_needed),
            "answers": [str(a) for a in v.answers],
        },
    }


def reward_of(verdict: Payload, reward: RewardName) -> float:
    if reward == "success":
        return 1.0 if verdict["success"] else 0.0
    if reward == "clip":
        return float(verdict["clip_reward"])
    return float(verdict["score"])


def group_rewards(
    verdicts: list[Payload],
    replay_verdicts: dict[int, Payload],
    reward: RewardName,
    max_flags: int,
) -> Payload:
    """Rewards of a judged group after dual-noise verification (see the module docstring)."""
    raw = np.array([reward_of(v, reward) for v in verdicts], dtype=np.float64)
    success = np.array([v["success"] for v in verdicts], dtype=bool)
    # Without a replay a rollout counts as agreeing with itself (never flagged);
    # it is reported in needs_replay instead.
    replay_success = np.array(
        [
            replay_verdicts[i]["success"] if i in replay_verdicts else success[i]
            for i in range(len(verdicts))
        ],
        dtype=bool,
    )
    checked = dual_noise_group(raw, success, replay_success, max_flags)
    needs_replay = [i for i in range(len(verdicts)) if success[i] and i not in replay_verdicts]
    return {
        "rollouts": [
            {
                "index": i,
                "verdict": verdicts[i],
                "replay": replay_verdicts.get(i),
                "raw_reward": float(raw[i]),
                "reward": float(checked.rewards[i]),
                "flagged": bool(checked.flagged[i]),
            }
            for i in range(len(verdicts))
        ],
        "discard": bool(checked.discard),
        "verified": not needs_replay,
        "needs_replay": needs_replay,
    }


# ------------------------------------------------------------------ handler


async def _reserve(engine: JudgeEngine, videos: int, wait_for_capacity: bool) -> Any:
    while True:
        try:
            return engine.reserve(videos)
        except ResourceExhausted:
            if not wait_for_capacity:
                raise
            await asyncio.sleep(_CAPACITY_POLL_S)


async def _judge_videos(
    engine: JudgeEngine, videos: list[np.ndarray], params: JudgeParams, wait_for_capacity: bool
) -> tuple[list[Payload], dict[str, float]]:
    """Verdicts of `videos` (one engine job: one batched call for the classifier) and timing."""
    for i, video in enumerate(videos):  # a worker re-checks against its own model
        engine.check_video(video, params.kind, params.frame_stride, f"video {i}")
    engine.check_stride(params.frame_stride, params.kind)
    reservation = await _reserve(engine, len(videos), wait_for_capacity)
    try:
        if params.kind == "classifier":
            assert params.threshold is not None and params.clip_temperature is not None
            res = await engine.classify(
                videos,
                [params.instruction] * len(videos),
                [params.frame_stride] * len(videos),
                params.threshold,
            )
            verdicts = [classifier_verdict(v, params.clip_temperature) for v in res.verdicts]
            return verdicts, {"queue": res.queue_s, "model": res.model_s}
        assert engine.vlm_config is not None
        start = time.perf_counter()
        answers = await asyncio.gather(
            *(engine.vlm_judge(v, params.instruction, params.frame_stride) for v in videos)
        )
        needed = engine.vlm_config.votes_needed
        return [vlm_verdict(a, needed) for a in answers], {"model": time.perf_counter() - start}
    finally:
        reservation.release()


def _provenance(engine: JudgeEngine, params: JudgeParams) -> dict[str, str]:
    prov = engine.provenance(params.kind)
    prov["kind"] = params.kind
    prov["frame_stride"] = str(params.frame_stride)
    if params.threshold is not None:
        prov["threshold"] = repr(params.threshold)
    if params.clip_temperature is not None:
        prov["clip_temperature"] = repr(params.clip_temperature)
    return prov


def judge_handler(engine: JudgeEngine, *, wait_for_capacity: bool) -> Handler:
    """The queue handler running judge and group payloads on `engine`."""

    async def handle(payload: Payload) -> Payload:
        started = time.perf_counter()
        params = JudgeParams.from_payload(payload)
        engine.require_kind(params.kind)
        op = payload.get("op")
        if op == "judge":
            frames = _video(payload.get("frames"), "frames")
            verdicts, timing = await _judge_videos(engine, [frames], params, wait_for_capacity)
            result: Payload = {"verdict": verdicts[0]}
        elif op == "group":
            videos = [_video(v, f"video {i}") for i, v in enumerate(payload.get("videos") or [])]
            replays = {
                int(r["index"]): _video(r["frames"], f"replay {r['index']}")
                for r in payload.get("replays") or []
            }
            if not videos or any(not 0 <= i < len(videos) for i in replays):
                raise InvalidArgument("malformed group payload: videos or replay indices")
            order = sorted(replays)
            # Rollouts and replays in one engine job: one batched classifier call.
            verdicts, timing = await _judge_videos(
                engine, videos + [replays[i] for i in order], params, wait_for_capacity
            )
            judged = dict(zip(order, verdicts[len(videos) :], strict=True))
            result = group_rewards(
                verdicts[: len(videos)], judged, payload["reward"], int(payload["max_flags"])
            )
            result["reward"] = payload["reward"]
        else:
            raise InvalidArgument(f"malformed judge payload: unknown op {op!r}")
        timing["total"] = time.perf_counter() - started
        result["kind"] = params.kind
        result["provenance"] = _provenance(engine, params)
        result["timing"] = timing
        return result

    return handle


# ------------------------------------------------------------------ results


@dataclass
class JudgeOutcome:
    kind: Kind
    verdict: Payload
    provenance: dict[str, str]
    timing: dict[str, float]


@dataclass
class GroupOutcome:
    kind: Kind
    reward: RewardName
    rollouts: list[Payload]  # index, verdict, replay, raw_reward, reward, flagged
    discard: bool
    verified: bool
    needs_replay: list[int]
    provenance: dict[str, str]
    timing: dict[str, float]

    @property
    def rewards(self) -> list[float]:
        return [r["reward"] for r in self.rollouts]


def _caller_timing(payload: Payload, elapsed_s: float) -> dict[str, float]:
    """The worker's timing, with `total` the caller's end-to-end time and `dispatch` the
    part spent outside the worker's run (queue, transfer)."""
    timing = {k: float(v) for k, v in dict(payload["timing"]).items()}
    worker_total = timing.get("total", 0.0)
    timing["total"] = elapsed_s
    timing["dispatch"] = max(0.0, elapsed_s - worker_total)
    return timing


def judge_result(payload: Payload, elapsed_s: float) -> JudgeOutcome:
    return JudgeOutcome(
        kind=payload["kind"],
        verdict=payload["verdict"],
        provenance=dict(payload["provenance"]),
        timing=_caller_timing(payload, elapsed_s),
    )


def group_result(payload: Payload, elapsed_s: float) -> GroupOutcome:
    return GroupOutcome(
        kind=payload["kind"],
        reward=payload["reward"],
        rollouts=list(payload["rollouts"]),
        discard=bool(payload["discard"]),
        verified=bool(payload["verified"]),
        needs_replay=[int(i) for i in payload["needs_replay"]],
        provenance=dict(payload["provenance"]),
        timing=_caller_timing(payload, elapsed_s),
    )
