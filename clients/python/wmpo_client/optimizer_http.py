"""HTTP clients for the action optimizer: `OptimizerClient` (sync) and `AsyncOptimizerClient`.

Both speak the optimizer's JSON API (`POST /v1/plan`, `POST /v1/plan/stream`,
`GET /v1/planner`, `GET /readyz`) with httpx and return the dataclasses of
`wmpo_client.optimizer_results`. Every failure is a `SimulatorError` (the client package's
one error type) carrying the server's code, message and request id.

Retries follow `wmpo_client._common`: 429 and 503 (the optimizer refused before starting
work) with capped, jittered exponential backoff that honours `Retry-After`. A plan has no
side effects, so a call lost in transit is re-sent too (not a timeout: a plan that is too
slow is not helped by more plans). A stream is retried only before its first line.

Example:
    with OptimizerClient("http://127.0.0.1:8003", api_key="...") as optimizer:
        plan = optimizer.plan(frame, "push the puck to the goal", goal=goal_image, steps=15)
        plan.actions  # (T, 4) in [-1, 1]
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing
from typing import Any

import httpx
import numpy as np

from wmpo_client._common import (
    DEFAULT_MAX_RESPONSE_BYTES,
    FrameEncoding,
    action_array,
    check_frame_encoding,
    check_request_id,
    frame_array,
)
from wmpo_client._driver import Exchange
from wmpo_client._http import AsyncHttp, Call, HttpConfig, SyncHttp, error_from_event, exchange
from wmpo_client.codec import from_json, to_json
from wmpo_client.errors import SimulatorError
from wmpo_client.optimizer_results import (
    Plan,
    PlannerInfo,
    PlanProgress,
    info_from_json,
    plan_from_parts,
    progress_from_json,
    unfinished_stream,
)

__all__ = ["AsyncOptimizerClient", "OptimizerClient"]

DEFAULT_URL = "http://127.0.0.1:8003"
# A plan can run for minutes (100 steps through the generator on CPU).
DEFAULT_PLAN_TIMEOUT_S = 600.0
_TENSORS = ("actions", "prior_actions", "frames", "target_frames")


class _OptimizerHttp(HttpConfig):
    """Configuration, request bodies and parsing shared by the sync and async clients."""

    service = "optimizer"

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = DEFAULT_PLAN_TIMEOUT_S, connect_timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.25, max_backoff: float = 8.0, frame_encoding: FrameEncoding = "raw",
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None) -> None:
        self.frame_encoding: FrameEncoding = check_frame_encoding(frame_encoding)
        self.max_response_bytes = max_response_bytes
        http_timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        super().__init__(base_url, api_key, http_timeout, retries, backoff, max_backoff)
        self._open(transport, retries)  # SyncHttp._open or AsyncHttp._open

    def _exchange(self, call: Call) -> Exchange[httpx.Response]:
        return exchange(self.retry, self._transport_error, resend_lost=True, resend_timeouts=False)

    def _plan_call(self, path: str, frame: Any, instruction: str, target_frames: Any, goal: Any,
                   init_actions: Any, steps: int | None, seed: int | None, include_target: bool,
                   request_id: str | None) -> Call:
        if target_frames is not None and goal is not None:
            raise ValueError("pass either target_frames (a clip) or goal (one image), not both")
        rid = check_request_id(request_id)
        body: dict[str, Any] = {
            "frame": to_json(frame_array(frame), "frame", self.frame_encoding),
            "instruction": instruction,
            "frame_encoding": self.frame_encoding,
            "include_target": include_target,
            "request_id": rid,
        }
        if goal is not None:
            target_frames = frame_array(goal, "goal")[None]
        if target_frames is not None:
            body["target_frames"] = to_json(frame_array(target_frames, "target_frames"), "target_frames",
                                            self.frame_encoding)
        if init_actions is not None:
            body["init_actions"] = to_json(action_array(init_actions, "init_actions"), "init_actions")
        if steps is not None:
            body["steps"] = steps
        if seed is not None:
            body["seed"] = seed
        return Call("POST", path, body, rid)

    def _plan(self, obj: dict[str, Any]) -> Plan:
        tensors = {
            name: from_json(obj[name], name, self.max_response_bytes) if obj.get(name) is not None else None
            for name in _TENSORS
        }
        return plan_from_parts(obj, tensors)

    def _event(self, line: str) -> PlanProgress | Plan | None:
        """One NDJSON line: progress, the plan, or an in-band error (raised)."""
        if not line.strip():
            return None
        obj = json.loads(line)
        kind = obj.get("event")
        if kind == "progress":
            return progress_from_json(obj)
        if kind == "result":
            return self._plan(obj)
        if kind == "error":
            raise error_from_event(obj)
        raise SimulatorError("INTERNAL", f"unknown stream event {kind!r}")


class OptimizerClient(SyncHttp, _OptimizerHttp):
    """Synchronous HTTP client of the action optimizer (thread-safe, like httpx.Client).

    Args:
        base_url: the service, e.g. "http://127.0.0.1:8003".
        api_key: sent as `x-api-key` (every route but health needs one).
        timeout: seconds for each read/write of a call (a plan answers when it is done;
            a stream between two steps).
        connect_timeout: seconds to establish a connection.
        retries: extra attempts on 429/503 and on calls lost in transit (0: none).
        backoff, max_backoff: first wait and cap, in seconds, between retries.
        frame_encoding: "png" or "raw", for the frames sent and returned.
        max_response_bytes: largest tensor accepted in a response.
        transport: an httpx transport instead of the default one (e.g. for tests).
    """

    def plan(self, frame: np.ndarray, instruction: str, *, target_frames: np.ndarray | None = None,
             goal: np.ndarray | None = None, init_actions: np.ndarray | None = None,
             steps: int | None = None, seed: int | None = None, include_target: bool = False,
             request_id: str | None = None) -> Plan:
        """Plan the next T actions from `frame` toward a target future.

        Args:
            frame: uint8 (H, W, 3), the current camera frame (the planner's size, see `info`).
            instruction: the task in natural language.
            target_frames: uint8 (n, H, W, 3), the future to reach (a demonstration clip, an
                imagined rollout); None: the instruction-only future the generator imagines.
            goal: uint8 (H, W, 3), one goal image (where the plan should end); instead of
                target_frames.
            init_actions: (T, 4) in [-1, 1], an initial guess such as the policy's chunk
                (+ActionInit: 10-15 steps instead of 100).
            steps: optimization steps; None: the deployment's default.
            seed: the generator's noise and the random initial latent; None: drawn.
            include_target: also return the target future (decoded).
            request_id: an id of yours, echoed.
        """
        call = self._plan_call("/v1/plan", frame, instruction, target_frames, goal, init_actions, steps,
                               seed, include_target, request_id)
        return self._run(call, lambda r: self._plan(r.json()))

    def plan_stream(self, frame: np.ndarray, instruction: str, *, target_frames: np.ndarray | None = None,
                    goal: np.ndarray | None = None, init_actions: np.ndarray | None = None,
                    steps: int | None = None, seed: int | None = None, include_target: bool = False,
                    request_id: str | None = None) -> Iterator[PlanProgress | Plan]:
        """Like `plan`, yielding a `PlanProgress` per optimization step, then the `Plan`.
        Breaking out of the loop closes the response, which cancels the plan on the server."""
        call = self._plan_call("/v1/plan/stream", frame, instruction, target_frames, goal, init_actions,
                               steps, seed, include_target, request_id)
        with closing(self._lines(call)) as lines:
            for line in lines:
                event = self._event(line)
                if event is not None:
                    yield event
                    if isinstance(event, Plan):
                        return
        raise unfinished_stream()

    def info(self) -> PlannerInfo:
        """The planner's horizon T, frame size, plan frames and step limits."""
        return self._run(Call("GET", "/v1/planner", idempotent=True), lambda r: info_from_json(r.json()))


class AsyncOptimizerClient(AsyncHttp, _OptimizerHttp):
    """Asynchronous HTTP client of the optimizer; same arguments and methods as `OptimizerClient`.

    Use `async with AsyncOptimizerClient(...) as optimizer:` or `await optimizer.aclose()`.
    """

    async def plan(self, frame: np.ndarray, instruction: str, *, target_frames: np.ndarray | None = None,
                   goal: np.ndarray | None = None, init_actions: np.ndarray | None = None,
                   steps: int | None = None, seed: int | None = None, include_target: bool = False,
                   request_id: str | None = None) -> Plan:
        """See `OptimizerClient.plan`."""
        call = self._plan_call("/v1/plan", frame, instruction, target_frames, goal, init_actions, steps,
                               seed, include_target, request_id)
        return await self._run(call, lambda r: self._plan(r.json()))

    async def plan_stream(self, frame: np.ndarray, instruction: str, *,
                          target_frames: np.ndarray | None = None, goal: np.ndarray | None = None,
                          init_actions: np.ndarray | None = None, steps: int | None = None,
                          seed: int | None = None, include_target: bool = False,
                          request_id: str | None = None) -> AsyncIterator[PlanProgress | Plan]:
        """See `OptimizerClient.plan_stream`; use `async for`. To stop early and cancel the plan at
        once, wrap it in `contextlib.aclosing(...)`."""
        call = self._plan_call("/v1/plan/stream", frame, instruction, target_frames, goal, init_actions,
                               steps, seed, include_target, request_id)
        async with aclosing(self._lines(call)) as lines:
            async for line in lines:
                event = self._event(line)
                if event is not None:
                    yield event
                    if isinstance(event, Plan):
                        return
        raise unfinished_stream()

    async def info(self) -> PlannerInfo:
        """See `OptimizerClient.info`."""
        call = Call("GET", "/v1/planner", idempotent=True)
        return await self._run(call, lambda r: info_from_json(r.json()))
