"""HTTP clients for the judge service: `JudgeClient` (sync) and `AsyncJudgeClient`.

Both speak the judge's JSON API (`POST /v1/judge`, `POST /v1/judge/group`,
`GET /readyz`) with httpx and return the dataclasses of
`wmpo_client.judge_results`. Every failure is a `SimulatorError` (the client
package's one error type) carrying the server's code, message and request id.

Request bodies, the retry policy and parsing are written once (`_JudgeHttp`, and
the exchange of `wmpo_client._http` run by `wmpo_client._driver`); the two classes
only differ in how they send and sleep. Retries follow `wmpo_client._common`: 429 and 503 (the judge refused before
starting work) with capped, jittered exponential backoff that honours
`Retry-After`. Judging has no side effects, so calls lost in transit (a failed
connection, a dropped keep-alive connection; not a timeout) are re-sent too; a
`request_id` makes the server answer a repeat from its record.

Example:
    with JudgeClient("http://127.0.0.1:8001", api_key="...") as judge:
        result = judge.judge(frames, "press the button from the top", frame_stride=2)
        result.success, result.verdict.clip_reward
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from wmpo_client._common import (
    DEFAULT_TIMEOUT_S,
    FrameEncoding,
    check_frame_encoding,
    check_request_id,
)
from wmpo_client._driver import Exchange
from wmpo_client._http import AsyncHttp, Call, HttpConfig, SyncHttp, exchange
from wmpo_client.codec import to_json
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

__all__ = ["AsyncJudgeClient", "JudgeClient"]

DEFAULT_URL = "http://127.0.0.1:8001"


def _result(response: httpx.Response) -> JudgeResult:
    return result_from_json(response.json())


def _group(response: httpx.Response) -> GroupJudgement:
    return group_from_json(response.json())


class _JudgeHttp(HttpConfig):
    """Configuration, request bodies and the retry rule shared by the sync and async clients."""

    service = "judge"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        frame_encoding: FrameEncoding,
    ) -> None:
        self.frame_encoding: FrameEncoding = check_frame_encoding(frame_encoding)
        http_timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        super().__init__(base_url, api_key, http_timeout, retries, backoff, max_backoff)

    def _exchange(self, call: Call) -> Exchange[httpx.Response]:
        # Judging has no side effects, so a call lost in transit is re-sent; the common
        # case is a pooled keep-alive connection the server closed as the request left
        # (httpx ReadError / RemoteProtocolError), which its transport does not retry.
        # Not a timeout: a judge too slow to answer is not helped by more work.
        return exchange(
            self.retry, self._transport_error, resend_lost=True, resend_timeouts=False
        )

    # ---------------------------------------------------------- bodies
    def _video(self, video: Any, name: str) -> dict[str, Any]:
        return to_json(video_array(video, name), name, self.frame_encoding)

    def _options(
        self,
        kind: str | None,
        frame_stride: int,
        threshold: float | None,
        clip_temperature: float | None,
        request_id: str,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "frame_stride": frame_stride,
            "kind": check_kind(kind),
            "threshold": threshold,
            "clip_temperature": clip_temperature,
            "request_id": request_id,
        }
        return {k: v for k, v in body.items() if v is not None}

    def _judge_call(
        self,
        frames: Any,
        instruction: str,
        kind: str | None,
        frame_stride: int,
        threshold: float | None,
        clip_temperature: float | None,
        request_id: str | None,
    ) -> Call:
        rid = check_request_id(request_id)
        body = {
            "frames": self._video(frames, "frames"),
            "instruction": instruction,
            **self._options(kind, frame_stride, threshold, clip_temperature, rid),
        }
        return Call("POST", "/v1/judge", body, rid)

    def _group_call(
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
        request_id: str | None,
    ) -> Call:
        rid = check_request_id(request_id)
        body: dict[str, Any] = {
            "videos": [self._video(v, f"video {i}") for i, v in enumerate(videos)],
            "replays": [
                {"index": i, "frames": to_json(v, f"replay {i}", self.frame_encoding)}
                for i, v in replay_items(replays)
            ],
            "instruction": instruction,
            "reward": check_reward(reward),
            **self._options(kind, frame_stride, threshold, clip_temperature, rid),
        }
        if max_flags is not None:
            body["max_flags"] = max_flags
        return Call("POST", "/v1/judge/group", body, rid)


class JudgeClient(SyncHttp, _JudgeHttp):
    """Synchronous HTTP client of the judge service (thread-safe, like httpx.Client).

    Args:
        base_url: the service, e.g. "http://127.0.0.1:8001".
        api_key: sent as `x-api-key` (every route but health needs one).
        timeout: seconds for each read/write of a call.
        connect_timeout: seconds to establish a connection.
        retries: extra attempts on 429/503 and on calls lost in transit (0: none).
        backoff, max_backoff: first wait and cap, in seconds, between retries.
        frame_encoding: "png" sends frames as PNG (smaller, more CPU), "raw" as bytes.
        transport: an httpx transport instead of the default one (e.g. for tests).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        frame_encoding: FrameEncoding = "raw",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout, connect_timeout, retries, backoff, max_backoff,
            frame_encoding,
        )
        self._open(transport, retries)

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
        """Judge one video.

        Args:
            frames: uint8 (T, H, W, 3) in time order (the classifier's size, 64x64 bundled).
            instruction: the task in natural language.
            kind: "classifier" or "vlm"; None: the service's default (the classifier).
            frame_stride: env steps between frames (1: real env frames; 2: imagined ones).
            threshold: classifier decision threshold; None: the checkpoint's.
            clip_temperature: temperature of the clip reward's time weights; None: 0.25.
            request_id: an id of yours; a retry with the same id gets the first result.
        """
        call = self._judge_call(
            frames, instruction, kind, frame_stride, threshold, clip_temperature, request_id
        )
        return self._run(call, _result)

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
        """Judge G rollouts from one start and reward them, with dual-noise verification.

        Args:
            videos: G uint8 (T_i, H, W, 3) videos.
            replays: {rollout index: the same rollout replayed under fresh noise}; every
                rollout judged a success needs one for the group to be `verified`
                (`needs_replay` lists the missing ones).
            reward: "success" (1/0), "clip" (temporally weighted clip reward) or "score".
            max_flags: more flagged rollouts than this discard the group (None: 2).
            Other arguments as in `judge`.
        """
        call = self._group_call(
            videos,
            instruction,
            replays,
            kind,
            reward,
            frame_stride,
            threshold,
            clip_temperature,
            max_flags,
            request_id,
        )
        return self._run(call, _group)


class AsyncJudgeClient(AsyncHttp, _JudgeHttp):
    """Asynchronous HTTP client of the judge; same arguments and methods as `JudgeClient`.

    Use `async with AsyncJudgeClient(...) as judge:` or `await judge.aclose()`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        frame_encoding: FrameEncoding = "raw",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout, connect_timeout, retries, backoff, max_backoff,
            frame_encoding,
        )
        self._open(transport, retries)

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
        """See `JudgeClient.judge`."""
        call = self._judge_call(
            frames, instruction, kind, frame_stride, threshold, clip_temperature, request_id
        )
        return await self._run(call, _result)

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
        """See `JudgeClient.judge_group`."""
        call = self._group_call(
            videos,
            instruction,
            replays,
            kind,
            reward,
            frame_stride,
            threshold,
            clip_temperature,
            max_flags,
            request_id,
        )
        return await self._run(call, _group)
