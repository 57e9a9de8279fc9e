"""The optimizer's gRPC API (grpc.aio): the `wmpo.v1.Optimizer` service over the shared runtime.

Same runtime, same validation and the same error model as HTTP: handlers decode tensors with
the wire codec, call the runtime and map results; the shared `grpc_error_boundary` turns
errors into status codes (and sets the request id), the shared interceptor enforces API keys
on every RPC but Health. A client that cancels (or whose deadline passes) cancels the handler
task, which cancels its plan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from wmpo_client.codec import DTypeName
from wmpo_client.proto import optimizer_pb2 as pb
from wmpo_client.proto import optimizer_pb2_grpc, simulator_pb2

from services.common.errors import InvalidArgument, grpc_error_boundary
from services.common.grpc_util import (
    create_server,
    decode_tensor,
    encode_tensor,
    frame_encoding,
    health_response,
    observed,
    request_id_arg,
)
from services.optimizer.engine import PlanOutcome, PlanProgress
from services.optimizer.runtime import (
    VERSION,
    OptimizerRuntime,
    check_frame,
    check_init_actions,
    check_target_frames,
)
from services.optimizer.settings import OptimizerSettings


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServicer):
    def __init__(self, runtime: OptimizerRuntime, max_bytes: int) -> None:
        self.runtime = runtime
        self.max_bytes = max_bytes
        self.metrics = runtime.metrics

    # ------------------------------------------------------------ helpers
    def _tensor(self, msg: Any, field: str, dtype: DTypeName,
                check: Callable[[np.ndarray, str], np.ndarray]) -> np.ndarray | None:
        if not msg.HasField(field):
            return None
        return check(decode_tensor(getattr(msg, field), field, self.max_bytes, dtype), field)

    def _args(self, request: pb.PlanRequest) -> tuple[np.ndarray, str, dict[str, Any]]:
        frame = self._tensor(request, "frame", "uint8", check_frame)
        if frame is None:
            raise InvalidArgument("frame is required: the current camera frame, uint8 (H, W, 3)")
        options = {
            "target_frames": self._tensor(request, "target_frames", "uint8", check_target_frames),
            "init_actions": self._tensor(request, "init_actions", "float32", check_init_actions),
            "steps": request.steps if request.HasField("steps") else None,
            "seed": request.seed if request.HasField("seed") else None,
        }
        return frame, request.instruction, options

    def _response(self, out: PlanOutcome, rid: str, request: pb.PlanRequest, encoding: str) -> pb.PlanResponse:
        r = out.result
        return pb.PlanResponse(
            request_id=rid,
            actions=encode_tensor(np.asarray(r.actions, np.float32), "actions"),
            prior_actions=encode_tensor(np.asarray(r.prior_actions, np.float32), "prior_actions"),
            frames=encode_tensor(r.frames, "frames", encoding),
            target_frames=encode_tensor(r.target_frames, "target_frames", encoding)
            if request.include_target else None,
            objective=r.objective,
            distance=r.distance,
            steps=out.steps,
            seed=out.seed,
            provenance=out.provenance,
            timing=out.timing,
        )

    # ------------------------------------------------------------ plans
    @observed
    @grpc_error_boundary
    async def Plan(self, request: pb.PlanRequest, context: grpc.aio.ServicerContext) -> pb.PlanResponse:
        rid = request_id_arg(request.request_id)
        encoding = frame_encoding(request)
        frame, instruction, options = self._args(request)
        out = await self.runtime.plan(frame, instruction, request_id=request.request_id, **options)
        return self._response(out, rid, request, encoding)

    @observed
    @grpc_error_boundary
    async def PlanStream(self, request: pb.PlanRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PlanStreamResponse]:
        rid = request_id_arg(request.request_id)
        encoding = frame_encoding(request)
        frame, instruction, options = self._args(request)
        run = self.runtime.open_plan(frame, instruction, **options)
        try:
            async for event in run.events():
                if isinstance(event, PlanProgress):
                    yield pb.PlanStreamResponse(progress=pb.PlanProgress(
                        request_id=rid, step=event.step, steps=event.steps, objective=event.objective,
                        distance=event.distance, batch_plans=event.batch_plans))
                else:
                    yield pb.PlanStreamResponse(result=self._response(event, rid, request, encoding))
        finally:
            run.close()

    # ------------------------------------------------------------ health
    @grpc_error_boundary
    async def Health(self, request: simulator_pb2.HealthRequest,
                     context: grpc.aio.ServicerContext) -> simulator_pb2.HealthResponse:
        return health_response(self.runtime.readiness(), VERSION)


def create_grpc_server(runtime: OptimizerRuntime, settings: OptimizerSettings) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) for `runtime` on settings.host:grpc_port; returns the
    server and the bound port (useful with grpc_port 0)."""
    servicer = OptimizerServicer(runtime, settings.max_request_bytes)
    return create_server(settings, lambda s: optimizer_pb2_grpc.add_OptimizerServicer_to_server(servicer, s))
