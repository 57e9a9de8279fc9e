"""The judge's gRPC API (grpc.aio): the `wmpo.v1.Judge` service over the shared runtime.

Same runtime, same validation and the same error model as HTTP: handlers decode
tensors with the wire codec, call the runtime and map results; the shared
`grpc_error_boundary` turns errors into status codes (and sets the request id),
the shared interceptor enforces API keys on every RPC but Health. A client that
cancels (or whose deadline passes) cancels the handler task, which drops its
queued work from the engine.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from wmpo_client.proto import judge_pb2 as pb
from wmpo_client.proto import judge_pb2_grpc, simulator_pb2

from services.common.errors import InvalidArgument, grpc_error_boundary
from services.common.grpc_util import (
    create_server,
    decode_tensor,
    health_response,
    observed,
    request_id_arg,
)
from services.common.metrics import ServiceMetrics
from services.judge.engine import check_video
from services.judge.judge_queue import GroupOutcome, JudgeOutcome
from services.judge.runtime import VERSION, JudgeRuntime
from services.judge.settings import JudgeSettings

_KINDS = {pb.JUDGE_KIND_CLASSIFIER: "classifier", pb.JUDGE_KIND_VLM: "vlm"}
_KIND_ENUM = {v: k for k, v in _KINDS.items()}
_REWARDS = {
    pb.REWARD_KIND_UNSPECIFIED: "success",
    pb.REWARD_KIND_SUCCESS: "success",
    pb.REWARD_KIND_CLIP: "clip",
    pb.REWARD_KIND_SCORE: "score",
}
_REWARD_ENUM = {
    "success": pb.REWARD_KIND_SUCCESS,
    "clip": pb.REWARD_KIND_CLIP,
    "score": pb.REWARD_KIND_SCORE,
}


def _kind(value: int) -> str | None:
    """None for UNSPECIFIED (the deployment's default); unknown values are refused."""
    if value == pb.JUDGE_KIND_UNSPECIFIED:
        return None
    if value not in _KINDS:
        raise InvalidArgument(f"kind: unknown JudgeKind value {value}")
    return _KINDS[value]


def _reward(value: int) -> str:
    if value not in _REWARDS:
        raise InvalidArgument(f"reward: unknown RewardKind value {value}")
    return _REWARDS[value]


def _opt(msg: Any, field: str) -> Any:
    return getattr(msg, field) if msg.HasField(field) else None


def verdict_message(v: dict[str, Any]) -> pb.JudgeVerdict:
    msg = pb.JudgeVerdict(
        success=v["success"],
        score=v["score"],
        clip_scores=v["clip_scores"],
        best_clip=v["best_clip"],
        done_clip=v["done_clip"],
        done_frame=v.get("done_frame", -1),
        clip_reward=v["clip_reward"],
        threshold=v["threshold"],
        frames_used=v["frames_used"],
    )
    if v.get("vlm") is not None:
        msg.vlm.CopyFrom(pb.VlmVotes(**v["vlm"]))
    return msg


class JudgeServicer(judge_pb2_grpc.JudgeServicer):
    def __init__(self, runtime: JudgeRuntime, max_bytes: int) -> None:
        self.runtime = runtime
        self.max_bytes = max_bytes
        self.metrics: ServiceMetrics = runtime.metrics

    # ------------------------------------------------------------ helpers
    def _video(self, msg: Any, field: str, name: str) -> np.ndarray:
        if not msg.HasField(field):
            raise InvalidArgument(f"{name} is required")
        return self._decode(getattr(msg, field), name)

    def _decode(self, tensor: Any, name: str) -> np.ndarray:
        return check_video(decode_tensor(tensor, name, self.max_bytes, "uint8"), name)

    # ------------------------------------------------------------ judge
    @observed
    @grpc_error_boundary
    async def Judge(
        self, request: pb.JudgeRequest, context: grpc.aio.ServicerContext
    ) -> pb.JudgeResponse:
        rid = request_id_arg(request.request_id)
        frames = self._video(request, "frames", "frames")
        res: JudgeOutcome = await self.runtime.judge(
            frames,
            request.instruction,
            kind=_kind(request.kind),
            frame_stride=request.frame_stride or 1,
            threshold=_opt(request, "threshold"),
            clip_temperature=_opt(request, "clip_temperature"),
            request_id=request.request_id,
        )
        return pb.JudgeResponse(
            request_id=rid,
            kind=_KIND_ENUM[res.kind],
            verdict=verdict_message(res.verdict),
            provenance=res.provenance,
            timing=res.timing,
        )

    @observed
    @grpc_error_boundary
    async def JudgeGroup(
        self, request: pb.JudgeGroupRequest, context: grpc.aio.ServicerContext
    ) -> pb.JudgeGroupResponse:
        rid = request_id_arg(request.request_id)
        if not request.videos:
            raise InvalidArgument("videos: a group needs at least one video")
        videos = [self._decode(v, f"video {i}") for i, v in enumerate(request.videos)]
        replays = []
        for r in request.replays:
            if not r.HasField("frames"):
                raise InvalidArgument(f"replay {r.index}: frames are required")
            replays.append((r.index, self._decode(r.frames, f"replay {r.index}")))
        res: GroupOutcome = await self.runtime.judge_group(
            videos,
            request.instruction,
            replays=replays,
            kind=_kind(request.kind),
            reward=_reward(request.reward),
            frame_stride=request.frame_stride or 1,
            threshold=_opt(request, "threshold"),
            clip_temperature=_opt(request, "clip_temperature"),
            max_flags=_opt(request, "max_flags"),
            request_id=request.request_id,
        )
        return pb.JudgeGroupResponse(
            request_id=rid,
            kind=_KIND_ENUM[res.kind],
            reward=_REWARD_ENUM[res.reward],
            rollouts=[
                pb.RolloutJudgement(
                    index=r["index"],
                    verdict=verdict_message(r["verdict"]),
                    replay=verdict_message(r["replay"]) if r["replay"] is not None else None,
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
            timing=res.timing,
        )

    # ------------------------------------------------------------ health
    @grpc_error_boundary
    async def Health(
        self, request: simulator_pb2.HealthRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.HealthResponse:
        return health_response(self.runtime.readiness(), VERSION)


def create_grpc_server(
    runtime: JudgeRuntime, settings: JudgeSettings
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) for `runtime` on settings.host:grpc_port; returns the
    server and the bound port (useful with grpc_port 0)."""
    servicer = JudgeServicer(runtime, settings.max_request_bytes)
    return create_server(settings, lambda s: judge_pb2_grpc.add_JudgeServicer_to_server(servicer, s))
