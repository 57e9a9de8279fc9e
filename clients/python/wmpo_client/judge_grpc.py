"""gRPC clients for the judge service: `GrpcJudgeClient` (sync) and `AsyncGrpcJudgeClient`.

Same methods and results as the HTTP judge clients (`wmpo_client.judge_http`),
over the generated `wmpo.v1.Judge` stubs. The API key travels as `x-api-key`
metadata, a request id as `x-request-id`. Every failure is a `SimulatorError`
whose `code` is the gRPC status name (the code the HTTP API uses for the same
error). Requests, retries (RESOURCE_EXHAUSTED from the service and UNAVAILABLE,
never grpcio's own "larger than max") and parsing are written once
(`_JudgeGrpcBase`); the two classes only differ in how they call and sleep.

Example:
    with GrpcJudgeClient("127.0.0.1:50052", api_key="...") as judge:
        group = judge.judge_group(videos, "open the drawer", replays={0: replay0})
        group.rewards, group.discard
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from wmpo_client._common import (
    API_KEY_HEADER,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_TIMEOUT_S,
    REQUEST_ID_HEADER,
    RETRY_CODES,
    FrameEncoding,
    RetryPolicy,
    check_request_id,
)
from wmpo_client._driver import Exchange, run_async, run_sync
from wmpo_client.codec import to_proto
from wmpo_client.grpc import error_from_rpc, open_channel
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
from wmpo_client.proto import judge_pb2_grpc, simulator_pb2
from wmpo_client.results import HealthStatus

__all__ = ["AsyncGrpcJudgeClient", "GrpcJudgeClient"]

T = TypeVar("T")
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


def _retryable(exc: grpc.RpcError) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    if not isinstance(code, grpc.StatusCode) or code.name not in RETRY_CODES:
        return False
    # grpcio's size-limit errors are RESOURCE_EXHAUSTED too; re-sending cannot help.
    return "larger than max" not in (exc.details() or "")


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


def _health(resp: simulator_pb2.HealthResponse) -> HealthStatus:
    ready = resp.status == simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
    return HealthStatus(ready=ready, reason=resp.reason, version=resp.version or None)


# ----------------------------------------------------------------- requests


class _JudgeGrpcBase:
    """Configuration, request messages and the exchange shared by the sync and async clients."""

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
        if frame_encoding not in ("raw", "png"):
            raise ValueError(f"frame_encoding must be 'raw' or 'png', got {frame_encoding!r}")
        self.target = target.removeprefix("grpc://")
        self.timeout = timeout
        self.retry = RetryPolicy(retries, backoff, max_backoff)
        self.frame_encoding: FrameEncoding = frame_encoding
        self.max_send_bytes = max_send_bytes
        self._api_key = api_key
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_send_bytes),
            ("grpc.max_receive_message_length", max_receive_bytes),
            *options,
        ]

    def _metadata(self, request_id: str = "") -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = []
        if self._api_key:
            md.append((API_KEY_HEADER, self._api_key))
        if request_id:
            md.append((REQUEST_ID_HEADER, request_id))
        return tuple(md)

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

    def _exchange(self, parse: Callable[[Any], T]) -> Exchange[T]:
        """Call; retry RESOURCE_EXHAUSTED/UNAVAILABLE with backoff; map failures; parse."""
        attempt = 0
        while True:
            try:
                response = yield None
            except grpc.RpcError as exc:
                if attempt < self.retry.retries and _retryable(exc):
                    yield self.retry.delay(attempt)
                    attempt += 1
                    continue
                raise error_from_rpc(exc) from exc
            return parse(response)


class GrpcJudgeClient(_JudgeGrpcBase):
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
            target,
            api_key,
            timeout,
            retries,
            backoff,
            max_backoff,
            frame_encoding,
            max_send_bytes,
            max_receive_bytes,
            options,
        )
        self._channel = open_channel(self.target, credentials, self._options)
        self._stub = judge_pb2_grpc.JudgeStub(self._channel)

    def __enter__(self) -> GrpcJudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _run(self, rpc: Callable[..., Any], request: Any, parse: Callable[[Any], T]) -> T:
        md = self._metadata(request.request_id)
        return run_sync(
            self._exchange(parse), lambda: rpc(request, metadata=md, timeout=self.timeout)
        )

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
        return self._run(self._stub.Judge, request, _result)

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
        return self._run(self._stub.JudgeGroup, request, _group)

    def health(self) -> HealthStatus:
        """Readiness (no API key needed, no retries)."""
        try:
            resp = self._stub.Health(simulator_pb2.HealthRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return _health(resp)


class AsyncGrpcJudgeClient(_JudgeGrpcBase):
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
            target,
            api_key,
            timeout,
            retries,
            backoff,
            max_backoff,
            frame_encoding,
            max_send_bytes,
            max_receive_bytes,
            options,
        )
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub_: judge_pb2_grpc.JudgeStub | None = None

    @property
    def _stub(self) -> judge_pb2_grpc.JudgeStub:
        if self._stub_ is None:
            self._channel = (
                grpc.aio.secure_channel(self.target, self._credentials, self._options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(self.target, self._options)
            )
            self._stub_ = judge_pb2_grpc.JudgeStub(self._channel)
        return self._stub_

    async def __aenter__(self) -> AsyncGrpcJudgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel (if one was opened)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_ = None

    async def _run(self, rpc: Callable[..., Any], request: Any, parse: Callable[[Any], T]) -> T:
        md = self._metadata(request.request_id)
        return await run_async(
            self._exchange(parse), lambda: rpc(request, metadata=md, timeout=self.timeout)
        )

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
        return await self._run(self._stub.Judge, request, _result)

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
        return await self._run(self._stub.JudgeGroup, request, _group)

    async def health(self) -> HealthStatus:
        """Readiness (no API key needed, no retries)."""
        try:
            resp = await self._stub.Health(simulator_pb2.HealthRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return _health(resp)
