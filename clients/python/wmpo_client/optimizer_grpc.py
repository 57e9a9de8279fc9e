"""gRPC clients for the action optimizer: `GrpcOptimizerClient` (sync) and
`AsyncGrpcOptimizerClient`.

Same methods and results as the HTTP optimizer clients (`wmpo_client.optimizer_http`), over
the generated `wmpo.v1.Optimizer` stubs. The API key travels as `x-api-key` metadata. Every
failure is a `SimulatorError` whose `code` is the gRPC status name. A unary plan is retried on
RESOURCE_EXHAUSTED (busy) and UNAVAILABLE; a stream only before its first message.

Example:
    with GrpcOptimizerClient("127.0.0.1:50054", api_key="...") as optimizer:
        for event in optimizer.plan_stream(frame, "open the drawer", steps=100):
            print(event)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, closing
from typing import Any

import grpc
import numpy as np

from wmpo_client._common import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    FrameEncoding,
    action_array,
    check_frame_encoding,
    check_request_id,
    frame_array,
)
from wmpo_client._grpc import AsyncGrpc, GrpcConfig, SyncGrpc, size_options
from wmpo_client.codec import from_proto, to_proto
from wmpo_client.optimizer_http import DEFAULT_PLAN_TIMEOUT_S
from wmpo_client.optimizer_results import Plan, PlanProgress, plan_from_parts, unfinished_stream
from wmpo_client.proto import optimizer_pb2 as pb
from wmpo_client.proto import optimizer_pb2_grpc, tensor_pb2

__all__ = ["AsyncGrpcOptimizerClient", "GrpcOptimizerClient"]

DEFAULT_TARGET = "127.0.0.1:50054"
_ENCODINGS = {"raw": tensor_pb2.FRAME_ENCODING_RAW, "png": tensor_pb2.FRAME_ENCODING_PNG}


class _OptimizerGrpc(GrpcConfig):
    """Configuration, request messages and parsing shared by the sync and async clients."""

    stub_class = optimizer_pb2_grpc.OptimizerStub

    def __init__(self, target: str = DEFAULT_TARGET, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_PLAN_TIMEOUT_S, retries: int = 3, backoff: float = 0.25,
                 max_backoff: float = 8.0, frame_encoding: FrameEncoding = "raw",
                 max_send_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_receive_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self.frame_encoding: FrameEncoding = check_frame_encoding(frame_encoding)
        self.max_send_bytes = max_send_bytes
        self.max_receive_bytes = max_receive_bytes
        opts = size_options(max_send_bytes, max_receive_bytes, options)
        super().__init__(target, api_key, timeout, retries, backoff, max_backoff, opts)
        self._connect(credentials)  # SyncGrpc._connect or AsyncGrpc._connect

    def _request(self, frame: Any, instruction: str, target_frames: Any, goal: Any, init_actions: Any,
                 steps: int | None, seed: int | None, include_target: bool,
                 request_id: str | None) -> pb.PlanRequest:
        if target_frames is not None and goal is not None:
            raise ValueError("pass either target_frames (a clip) or goal (one image), not both")
        if goal is not None:
            target_frames = frame_array(goal, "goal")[None]
        enc, limit = self.frame_encoding, self.max_send_bytes
        return pb.PlanRequest(
            frame=to_proto(frame_array(frame), "frame", enc, limit),
            instruction=instruction,
            target_frames=to_proto(frame_array(target_frames, "target_frames"), "target_frames", enc, limit)
            if target_frames is not None else None,
            init_actions=to_proto(action_array(init_actions, "init_actions"), "init_actions", "raw", limit)
            if init_actions is not None else None,
            steps=steps,
            seed=seed,
            frame_encoding=_ENCODINGS[enc],
            include_target=include_target,
            request_id=check_request_id(request_id),
        )

    def _plan(self, msg: pb.PlanResponse) -> Plan:
        def tensor(name: str) -> np.ndarray | None:
            return from_proto(getattr(msg, name), name, self.max_receive_bytes) if msg.HasField(name) else None

        fields = {"request_id": msg.request_id, "objective": list(msg.objective), "distance": list(msg.distance),
                  "steps": msg.steps, "seed": msg.seed, "provenance": dict(msg.provenance),
                  "timing": dict(msg.timing)}
        tensors = {n: tensor(n) for n in ("actions", "prior_actions", "frames", "target_frames")}
        return plan_from_parts(fields, tensors)

    def _event(self, msg: pb.PlanStreamResponse) -> PlanProgress | Plan:
        if msg.WhichOneof("event") == "progress":
            p = msg.progress
            return PlanProgress(p.request_id, p.step, p.steps, p.objective, p.distance, p.batch_plans)
        return self._plan(msg.result)


class GrpcOptimizerClient(SyncGrpc, _OptimizerGrpc):
    """Synchronous gRPC client of the action optimizer.

    Args:
        target: "host:port" (a "grpc://" prefix is accepted).
        api_key: sent as `x-api-key` metadata on every call.
        timeout: deadline of each call in seconds (None: no deadline).
        retries, backoff, max_backoff: see `RetryPolicy`.
        frame_encoding: "png" or "raw", for the frames sent and returned.
        max_send_bytes, max_receive_bytes: gRPC message limits.
        credentials: TLS channel credentials; None: plaintext.
        options: extra channel options, after (so overriding) the size limits.
    """

    def plan(self, frame: np.ndarray, instruction: str, *, target_frames: np.ndarray | None = None,
             goal: np.ndarray | None = None, init_actions: np.ndarray | None = None,
             steps: int | None = None, seed: int | None = None, include_target: bool = False,
             request_id: str | None = None) -> Plan:
        """See `wmpo_client.optimizer_http.OptimizerClient.plan`."""
        req = self._request(frame, instruction, target_frames, goal, init_actions, steps, seed,
                            include_target, request_id)
        return self._plan(self._unary(self._stub.Plan, req, req.request_id))

    def plan_stream(self, frame: np.ndarray, instruction: str, *, target_frames: np.ndarray | None = None,
                    goal: np.ndarray | None = None, init_actions: np.ndarray | None = None,
                    steps: int | None = None, seed: int | None = None, include_target: bool = False,
                    request_id: str | None = None) -> Iterator[PlanProgress | Plan]:
        """See `wmpo_client.optimizer_http.OptimizerClient.plan_stream`; breaking out of the loop
        cancels the call and the plan."""
        req = self._request(frame, instruction, target_frames, goal, init_actions, steps, seed,
                            include_target, request_id)
        with closing(self._messages(self._stub.PlanStream, req, req.request_id)) as messages:
            for msg in messages:
                event = self._event(msg)
                yield event
                if isinstance(event, Plan):
                    return
        raise unfinished_stream()


class AsyncGrpcOptimizerClient(AsyncGrpc, _OptimizerGrpc):
    """Asynchronous (grpc.aio) optimizer client; same arguments and methods as
    `GrpcOptimizerClient`. Close it with `await client.aclose()` or `async with`."""

    async def plan(self, frame: np.ndarray, instruction: str, *, target_frames: np.ndarray | None = None,
                   goal: np.ndarray | None = None, init_actions: np.ndarray | None = None,
                   steps: int | None = None, seed: int | None = None, include_target: bool = False,
                   request_id: str | None = None) -> Plan:
        """See `wmpo_client.optimizer_http.OptimizerClient.plan`."""
        req = self._request(frame, instruction, target_frames, goal, init_actions, steps, seed,
                            include_target, request_id)
        return self._plan(await self._unary(self._stub.Plan, req, req.request_id))

    async def plan_stream(self, frame: np.ndarray, instruction: str, *,
                          target_frames: np.ndarray | None = None, goal: np.ndarray | None = None,
                          init_actions: np.ndarray | None = None, steps: int | None = None,
                          seed: int | None = None, include_target: bool = False,
                          request_id: str | None = None) -> AsyncIterator[PlanProgress | Plan]:
        """See `GrpcOptimizerClient.plan_stream`; use `async for` (and `contextlib.aclosing` to
        cancel at once when stopping early)."""
        req = self._request(frame, instruction, target_frames, goal, init_actions, steps, seed,
                            include_target, request_id)
        async with aclosing(self._messages(self._stub.PlanStream, req, req.request_id)) as messages:
            async for msg in messages:
                event = self._event(msg)
                yield event
                if isinstance(event, Plan):
                    return
        raise unfinished_stream()
