"""The judge's HTTP API (FastAPI): thin handlers over the shared `JudgeRuntime`.

Routes (all need an API key; health, readiness and metrics come from `create_app`):

- `POST /v1/judge`: one video (uint8 (T, H, W, 3), raw bytes or one PNG per
  frame), its instruction and `frame_stride` -> the verdict (success, score,
  per-clip scores, best and first passing clip, temporally weighted clip
  reward; for `kind: "vlm"` the votes), provenance and timing;
- `POST /v1/judge/group`: G rollouts from one start, optionally replays of some
  under fresh noise -> a verdict and a reward per rollout after dual-noise
  verification (flags, discard), see `judge_queue`.

Both go through the judge work queue (in process, or Redis Streams shared by
replicas): a `request_id` makes retries idempotent. Tensors use the JSON form
of the wire codec (`wmpo_client.codec.TensorJSON`). Request models decode them
and check dtype and shape, so a bad tensor is a 422 naming it; checks that need
the model (frame size, stride, frame count) and the deployment (a VLM endpoint
configured?) are 400s from the runtime. Nothing here returns a traceback. A
client that disconnects cancels its queued work (499).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from wmpo_client.codec import TensorJSON

from services.common.app import Lifespan, create_app, runtime_lifespan
from services.common.errors import error_responses
from services.common.http_util import app_runtime, decode_tensor, request_id_of, until_disconnect
from services.judge.engine import check_video
from services.judge.judge_queue import DEFAULT_MAX_FLAGS, GroupOutcome, JudgeOutcome
from services.judge.runtime import SERVICE, VERSION, JudgeRuntime
from services.judge.settings import MAX_INSTRUCTION_CHARS, JudgeSettings

KindName = Literal["classifier", "vlm"]
RewardName = Literal["success", "clip", "score"]

RequestId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._:-]{0,128}$",
        description="Client-chosen id (at most 128 of [A-Za-z0-9._:-]); a retry with the same "
        "id gets the first result. Empty: the server's.",
    ),
]
Instruction = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_INSTRUCTION_CHARS,
        description="The task in natural language, e.g. 'press the button from the top'.",
    ),
]
FrameStride = Annotated[
    int,
    Field(
        ge=1,
        le=64,
        description="Env steps between frames: 1 for real env frames, the world model's "
        "stride (2) for imagined ones.",
    ),
]
Threshold = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Classifier only: decision threshold; null: the checkpoint's.",
    ),
]
ClipTemperature = Annotated[
    float | None,
    Field(
        gt=0.0,
        allow_inf_nan=False,
        description="Classifier only: temperature of the clip reward's time weights "
        "(smaller: later clips weigh more); null: 0.25.",
    ),
]
Kind = Annotated[
    KindName | None,
    Field(description="Which judge: the success classifier or the VLM; null: the default."),
]


def _decode_video(tensor: TensorJSON, name: str) -> np.ndarray:
    return decode_tensor(tensor, name, "uint8", check_video)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ requests


class JudgeBody(_Body):
    frames: TensorJSON = Field(
        description="uint8 (T, H, W, 3), time order: raw bytes, or one PNG per frame."
    )
    instruction: Instruction
    frame_stride: FrameStride = 1
    kind: Kind = None
    threshold: Threshold = None
    clip_temperature: ClipTemperature = None
    request_id: RequestId = ""

    _frames: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> JudgeBody:
        self._frames = _decode_video(self.frames, "frames")
        return self


class ReplayIn(_Body):
    index: int = Field(ge=0, description="The rollout (position in `videos`) this replays.")
    frames: TensorJSON = Field(description="uint8 (T, H, W, 3): the rollout under fresh noise.")

    _frames: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> ReplayIn:
        self._frames = _decode_video(self.frames, f"replay {self.index}")
        return self


class JudgeGroupBody(_Body):
    videos: list[TensorJSON] = Field(
        min_length=1, description="G rollouts from one start, uint8 (T_i, H, W, 3) each."
    )
    replays: list[ReplayIn] = Field(
        default_factory=list,
        description="Dual-noise verification: replays under fresh noise of (at least) the "
        "rollouts judged a success.",
    )
    instruction: Instruction
    frame_stride: FrameStride = 1
    kind: Kind = None
    reward: RewardName = Field(
        "success",
        description="success: 1/0; clip: temporally weighted clip reward (classifier only); "
        "score: best clip probability or vote fraction.",
    )
    threshold: Threshold = None
    clip_temperature: ClipTemperature = None
    max_flags: int = Field(
        DEFAULT_MAX_FLAGS, ge=0, description="More flagged rollouts than this discard the group."
    )
    request_id: RequestId = ""

    _videos: list[np.ndarray] = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> JudgeGroupBody:
        self._videos = [_decode_video(v, f"video {i}") for i, v in enumerate(self.videos)]
        return self


# ----------------------------------------------------------------- responses


class VlmVotesOut(BaseModel):
    votes: int = Field(description="Samples that said Success.")
    samples: int
    unparsed: int = Field(description="Samples that said neither (counted as Failure).")
    votes_needed: int
    answers: list[str]


class VerdictOut(BaseModel):
    success: bool
    score: float = Field(description="Classifier: best clip probability; VLM: votes / samples.")
    clip_scores: list[float] = Field(description="Per stride-1 clip (classifier); [] for the VLM.")
    best_clip: int = Field(description="-1 for the VLM.")
    done_clip: int = Field(description="First clip at or above the threshold; -1 if none.")
    done_frame: int = Field(
        -1,
        description="Input frame index where the done clip ends (the task is first judged "
        "done); -1 if none, and for the VLM.",
    )
    clip_reward: float | None = Field(
        description="Temporally weighted clip reward (classifier); null for the VLM."
    )
    threshold: float
    frames_used: list[int] = Field(description="Input frame indices the judge looked at.")
    vlm: VlmVotesOut | None = None


class JudgeOut(BaseModel):
    request_id: str
    kind: KindName
    verdict: VerdictOut
    provenance: dict[str, str]
    timing: dict[str, float] = Field(description="Seconds: queue, model, total, dispatch.")


class RolloutOut(BaseModel):
    index: int
    verdict: VerdictOut
    replay: VerdictOut | None = Field(description="The replay's verdict, if one was sent.")
    raw_reward: float
    reward: float = Field(description="After dual-noise verification.")
    flagged: bool = Field(description="A success whose replay was not: a hallucination.")


class JudgeGroupOut(BaseModel):
    request_id: str
    kind: KindName
    reward: RewardName
    rollouts: list[RolloutOut]
    rewards: list[float]
    discard: bool = Field(description="More than max_flags flagged: drop the group.")
    verified: bool = Field(description="Every rollout judged a success had a replay.")
    needs_replay: list[int] = Field(description="Successes without a replay.")
    provenance: dict[str, str]
    timing: dict[str, float]


# ------------------------------------------------------------------- helpers


def _runtime(request: Request) -> JudgeRuntime:
    return app_runtime(request, "judge")


def _round(timing: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in timing.items()}


def _verdict(v: dict[str, Any] | None) -> VerdictOut | None:
    return None if v is None else VerdictOut.model_validate(v)


def _judge_out(res: JudgeOutcome, rid: str) -> JudgeOut:
    return JudgeOut(
        request_id=rid,
        kind=res.kind,
        verdict=VerdictOut.model_validate(res.verdict),
        provenance=res.provenance,
        timing=_round(res.timing),
    )


def _group_out(res: GroupOutcome, rid: str) -> JudgeGroupOut:
    return JudgeGroupOut(
        request_id=rid,
        kind=res.kind,
        reward=res.reward,
        rollouts=[
            RolloutOut(
                index=r["index"],
                verdict=VerdictOut.model_validate(r["verdict"]),
                replay=_verdict(r["replay"]),
                raw_reward=r["raw_reward"],
                reward=r["reward"],
                flagged=r["flagged"],
            )
            for r in res.rollouts
        ],
        rewards=res.rewards,
        discard=res.discard,
        verified=res.verified,
        needs_replay=res.needs_replay,
        provenance=res.provenance,
        timing=_round(res.timing),
    )


# -------------------------------------------------------------------- routes

_ERRORS = error_responses(400, 422, 429, 503)


Runtime = Annotated[JudgeRuntime, Depends(_runtime)]
router = APIRouter(prefix="/v1", tags=["judge"], responses=_ERRORS)


@router.post("/judge", response_model=JudgeOut, summary="Judge one video")
async def judge(body: JudgeBody, rt: Runtime, request: Request) -> JudgeOut:
    res = await until_disconnect(
        request,
        rt.judge(
            body._frames,
            body.instruction,
            kind=body.kind,
            frame_stride=body.frame_stride,
            threshold=body.threshold,
            clip_temperature=body.clip_temperature,
            request_id=body.request_id,
        ),
    )
    return _judge_out(res, request_id_of(body.request_id))


@router.post(
    "/judge/group",
    response_model=JudgeGroupOut,
    summary="Judge a group of rollouts; rewards after dual-noise verification",
)
async def judge_group(body: JudgeGroupBody, rt: Runtime, request: Request) -> JudgeGroupOut:
    res = await until_disconnect(
        request,
        rt.judge_group(
            body._videos,
            body.instruction,
            replays=[(r.index, r._frames) for r in body.replays],
            kind=body.kind,
            reward=body.reward,
            frame_stride=body.frame_stride,
            threshold=body.threshold,
            clip_temperature=body.clip_temperature,
            max_flags=body.max_flags,
            request_id=body.request_id,
        ),
    )
    return _group_out(res, request_id_of(body.request_id))


def judge_router() -> APIRouter:
    """The judge's API routes (module-level functions over the runtime dependency)."""
    return router


# ----------------------------------------------------------------------- app

def create_judge_app(
    settings: JudgeSettings, runtime: JudgeRuntime, lifespan: Lifespan | None = None
) -> FastAPI:
    """The judge's FastAPI app over `runtime`.

    The default lifespan starts the runtime on startup and stops it on
    shutdown; `server` passes one that also runs the gRPC server.
    """

    app = create_app(
        settings,
        service=SERVICE,
        version=VERSION,
        readiness=runtime.readiness,
        lifespan=lifespan or runtime_lifespan(runtime),
    )
    app.state.runtime = runtime
    app.include_router(judge_router())
    return app
