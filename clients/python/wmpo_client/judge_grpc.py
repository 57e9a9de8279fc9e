"""gRPC clients for the judge service: `GrpcJudgeClient` (sync) and `AsyncGrpcJudgeClient`.

Same methods and results as the HTTP judge clients (`wmpo_client.judge_http`),
over the generated `wmpo.v1.Judge` stubs. The API key travels as `x-api-key`
metadata, a request id as `x-request-id`. Every failure is a `SimulatorError`
whose `code` is the gRPC status name (the code the HTTP API uses for the same
error). Requests, retries (RESOURCE_EXHAUSTED from the service and UNAVAILABLE,
never grpcio's own "larger than max") and parsing are written once
(`_JudgeGrpc`, `wmpo_client._grpc`); the two classes only differ in how they call and sleep.

Example:
    with GrpcJudgeClient("127.0.0.1:50052", api_key="...") as judge:
        group = judge.judge_group(videos, "open the drawer", replays={0: replay0})
        group.rewards, group.discard
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from wmpo_client._common import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_TIMEOUT_S,
    FrameEncoding,
    check_frame_encoding,
    check_request_id,
)
from wmpo_client._grpc import AsyncGrpc, GrpcConfig, SyncGrpc, size_options
from wmpo_client.codec import to_proto
from wmpo_client.judge_results import (
    GroupJudgement,
    JudgeResult,
    check_kind,
    check_reward,
    group_from_json,
    replay_items,
    result_from_json,
    video_array,
)
from wmpo_client.proto import judge_pb2 as pb
from wmpo_client.proto import judge_pb2_grpc

__all__ = ["AsyncGrpcJudgeClient", "GrpcJudgeClient"]

DEFAULT_TARGET = "127.0.0.1:50052"
# Responses carry no frames: the default receive limit is plenty, requests carry videos.
_DEFAULT_MAX_RECEIVE_BYTES = 16 * 1024**2
_KINDS = {"classifier": pb.JUDGE_KIND_CLASSIFIER, "vlm": pb.JUDGE_KIND_VLM}
_KIND_NAMES = {v: k for k, v in _KINDS.items()}
_REWARDS = {
    "success": pb.REWARD_KIND_SUCCESS,
    "clip": pb.REWARD_KIND_CLIP,
    "score": pb.REWARD_KIND_SCORE,
}
_REWARD_NAMES = {v: k for k, v in _REWARDS.items()}


# ------------------------------------------------------------------ parsing
# Proto -> the JSON form, so one parser (judge_results) serves both transports.


def _verdict(msg: pb.JudgeVerdict) -> dict[str, Any]:
    vlm = msg.vlm if msg.HasField("vlm") else None
    return {
        "success": msg.success,
        "score": msg.score,
        "clip_scores": list(msg.clip_scores),
        "best_clip": msg.best_clip,
        "done_clip": msg.done_clip,
        "done_frame": msg.done_frame,
        "clip_reward": msg.clip_reward if msg.HasField("clip_reward") else None,
        "threshold": msg.threshold,
        "frames_used": list(msg.frames_used),
        "vlm": None
        if vlm is None
        else {
            "votes": vlm.votes,
            "samples": vlm.samples,
            "unparsed": vlm.unparsed,
            "votes_needed": vlm.votes_needed,
            "answers": list(vlm.answers),
        },
    }


def _result(resp: pb.JudgeResponse) -> JudgeResult:
    return result_from_json(
        {
            "request_id": resp.request_id,
            "kind": _KIND_NAMES.get(resp.kind, "classifier"),
            "verdict": _verdict(resp.verdict),
            "provenance": dict(resp.provenance),
            "timing": dict(resp.timing),
        }
    )


def _group(resp: pb.JudgeGroupResponse) -> GroupJudgement:
    return group_from_json(
        {
            "request_id": resp.request_id,
            "kind": _KIND_NAMES.get(resp.kind, "classifier"),
            "reward": _REWARD_NAMES.get(resp.reward, "success"),
            "rollouts": [
                {
                    "index": r.index,
                    "verdict": _verdict(r.verdict),
                    "replay": _verdict(r.replay) if r.HasField("replay") else None,
                    "raw_reward": r.raw_reward,
                    "reward": r.reward,
                    "flagged": r.flagged,
                }
                for r in resp.rollouts
            ],
            "discard": resp.discard,
            "verified": resp.verified,
            "needs_replay": list(resp.needs_replay),
            "provenance": dict(resp.provenance),
            "timing": dict(resp.timing),
        }
    )


# ----------------------------------------------------------------- requests


class _JudgeGrpc(GrpcConfig):
    """Configuration and request messages shared by the sync and async clients."""

    stub_class = judge_pb2_grpc.JudgeStub

    def __init__(
        self,
        target: str,
        api_key: str | None,
        timeout: float | None,
        retries: int,
        backoff: float,
        max_backoff: float,
        frame_encoding: FrameEncoding,
        max_send_bytes: int,
        max_receive_bytes: int,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self.frame_encoding: FrameEncoding = check_frame_encoding(frame_encoding)
        self.max_send_bytes = max_send_bytes
        opts = size_options(max_send_bytes, max_receive_bytes, options)
        super().__init__(target, api_key, timeout, retries, backoff, max_backoff, opts)

    def _video(self, video: Any, name: str) -> Any:
        return to_proto(video_array(video, name), name, self.frame_encoding, self.max_send_bytes)

    def _judge_request(
        self,
        frames: Any,
        instruction: str,
        kind: str | None,
        frame_stride: int,
        threshold: float | None,
        clip_temperature: float | None,
        request_id: str,
    ) -> pb.JudgeRequest:
        return pb.JudgeRequest(
            frames=self._video(frames, "frames"),
            instruction=instruction,
            frame_stride=frame_stride,
            kind=_KINDS.get(check_kind(kind) or "", pb.JUDGE_KIND_UNSPECIFIED),
            threshold=threshold,
            clip_temperature=clip_temperature,
            request_id=request_id,
        )

    def _group_request(
        self,
        videos: Sequence[Any],
        instruction: str,
        replays: Mapping[int, Any] | None,
        kind: str | None,
        reward: str,
        frame_stride: int,
        threshold: float | None,
        clip_temperature: float | None,
        max_flags: int | None,
        request_id: str,
    ) -> pb.JudgeGroupRequest:
        return pb.JudgeGroupRequest(
            videos=[self._video(v, f"video {i}") for i, v in enumerate(videos)],
            replays=[
                pb.GroupReplay(
                    index=i,
                    frames=to_proto(v, f"replay {i}", self.frame_encoding, self.max_send_bytes),
                )
                for i, v in replay_items(replays)
            ],
            instruction=instruction,
            frame_stride=frame_stride,
            kind=_KINDS.get(check_kind(kind) or "", pb.JUDGE_KIND_UNSPECIFIED),
            reward=_REWARDS[check_reward(reward)],
            threshold=threshold,
            clip_temperature=clip_temperature,
            max_flags=max_flags,
            request_id=request_id,
        )


class GrpcJudgeClient(SyncGrpc, _JudgeGrpc):
    """Synchronous gRPC client of the judge service.

    Args:
        target: "host:port" (a "grpc://" prefix is accepted).
        api_key: sent as `x-api-key` metadata on every call.
        timeout: deadline of each call in seconds (None: no deadline).
        retries, backoff, max_backoff: see `RetryPolicy`.
        frame_encoding: "png" or "raw", for the videos sent.
        max_send_bytes, max_receive_bytes: gRPC message limits.
        credentials: TLS channel credentials; None: plaintext.
        options: extra channel options, after (so overriding) the size limits.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        api_key: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        frame_encoding: FrameEncoding = "raw",
        max_send_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_receive_bytes: int = _DEFAULT_MAX_RECEIVE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target, api_key, timeout, retries, backoff, max_backoff, frame_encoding,
            max_send_bytes, max_receive_bytes, options,
        )
        self._connect(credentials)

    def judge(
        self,
        frames: np.ndarray,
        instruction: str,
        *,
        kind: str | None = None,
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        request_id: str | None = None,
    ) -> JudgeResult:
        """See `wmpo_client.judge_http.JudgeClient.judge`."""
        request = self._judge_request(
            frames,
            instruction,
            kind,
            frame_stride,
            threshold,
            clip_temperature,
            check_request_id(request_id),
        )
        return _result(self._unary(self._stub.Judge, request, request.request_id))

    def judge_group(
        self,
        videos: Sequence[np.ndarray],
        instruction: str,
        *,
        replays: Mapping[int, np.ndarray] | None = None,
        kind: str | None = None,
        reward: str = "success",
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        max_flags: int | None = None,
        request_id: str | None = None,
    ) -> GroupJudgement:
        """See `wmpo_client.judge_http.JudgeClient.judge_group`."""
        request = self._group_request(
            videos,
            instruction,
            replays,
            kind,
            reward,
            frame_stride,
            threshold,
            clip_temperature,
            max_flags,
            check_request_id(request_id),
        )
        return _group(self._unary(self._stub.JudgeGroup, request, request.request_id))


class AsyncGrpcJudgeClient(AsyncGrpc, _JudgeGrpc):
    """Asynchronous (grpc.aio) gRPC judge client; same arguments and methods as `GrpcJudgeClient`.

    The channel is opened on first use, inside the running event loop; close it
    with `await client.aclose()` or `async with`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        api_key: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        frame_encoding: FrameEncoding = "raw",
        max_send_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_receive_bytes: int = _DEFAULT_MAX_RECEIVE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target, api_key, timeout, retries, backoff, max_backoff, frame_encoding,
            max_send_bytes, max_receive_bytes, options,
        )
        self._connect(credentials)

    async def judge(
        self,
        frames: np.ndarray,
        instruction: str,
        *,
        kind: str | None = None,
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        request_id: str | None = None,
    ) -> JudgeResult:
        """See `wmpo_client.judge_http.JudgeClient.judge`."""
        request = self._judge_request(
            frames,
            instruction,
            kind,
            frame_stride,
            threshold,
            clip_temperature,
            check_request_id(request_id),
        )
        return _result(await self._unary(self._stub.Judge, request, request.request_id))

    async def judge_group(
        self,
        videos: Sequence[np.ndarray],
        instruction: str,
        *,
        replays: Mapping[int, np.ndarray] | None = None,
        kind: str | None = None,
        reward: str = "success",
        frame_stride: int = 1,
        threshold: float | None = None,
        clip_temperature: float | None = None,
        max_flags: int | None = None,
        request_id: str | None = None,
    ) -> GroupJudgement:
        """See `wmpo_client.judge_http.JudgeClient.judge_group`."""
        request = self._group_request(
            videos,
            instruction,
            replays,
            kind,
            reward,
            frame_stride,
            threshold,
            clip_temperature,
            max_flags,
            check_request_id(request_id),
        )
        return _group(await self._unary(self._stub.JudgeGroup, request, request.request_id))
