"""The simulator's gRPC API (grpc.aio): the `wmpo.v1.Simulator` service over the shared runtime.

Same engine, same validation and the same error model as HTTP: handlers decode
tensors with the wire codec, call the runtime and map results; the shared
`grpc_error_boundary` turns errors into status codes (and sets the request id),
the shared interceptor enforces API keys on every RPC but Health. A client that
cancels (or whose deadline passes) cancels the handler task, which drops its
queued rows from the engine. Streamed chunk tensors are raw (PNG is at most 4-D).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from wmpo_client.codec import DTypeName
from wmpo_client.proto import simulator_pb2, simulator_pb2_grpc

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
from services.common.logging import is_valid_request_id
from services.common.metrics import ServiceMetrics
from services.simulator.drift import Outcome, check_outcome_frames
from services.simulator.engine import (
    ImagineChunk,
    ImagineInput,
    check_candidates,
    check_group_actions,
    check_session_actions,
    check_start_frames,
)
from services.simulator.runtime import VERSION, SimulatorRuntime
from services.simulator.sessions import SessionInfo, StepOutcome
from services.simulator.settings import SimulatorSettings
from services.simulator.verify import Verification

F = TypeVar("F", bound=Callable[..., Any])


class SimulatorServicer(simulator_pb2_grpc.SimulatorServicer):
    def __init__(self, runtime: SimulatorRuntime, max_bytes: int) -> None:
        self.runtime = runtime
        self.max_bytes = max_bytes
        self.metrics: ServiceMetrics = runtime.metrics

    # ------------------------------------------------------------ helpers
    def _tensor(
        self,
        msg: Any,
        field: str,
        dtype: DTypeName,
        check: Callable[[np.ndarray, str], np.ndarray],
    ) -> np.ndarray:
        if not msg.HasField(field):
            raise InvalidArgument(f"{field} is required")
        return check(decode_tensor(getattr(msg, field), field, self.max_bytes, dtype), field)

    @staticmethod
    def _seed(msg: Any) -> int | None:
        return int(msg.seed) if msg.HasField("seed") else None

    @staticmethod
    def _verify_threshold(msg: Any) -> float | None:
        return float(msg.verify_threshold) if msg.HasField("verify_threshold") else None

    @staticmethod
    def _info(info: SessionInfo) -> simulator_pb2.SessionInfo:
        return simulator_pb2.SessionInfo(
            session_id=info.session_id,
            group_id=info.group_id or "",
            group_index=info.group_index,
            instruction=info.instruction,
            seed=info.seed,
            chunks_stepped=info.chunks_stepped,
            max_chunks=info.max_chunks,
            memory_bytes=info.memory_bytes,
            created_at=info.created_at,
            last_active_at=info.last_active_at,
            expires_at=info.expires_at,
        )

    @staticmethod
    def _target(msg: Any) -> tuple[str, str]:
        which = msg.WhichOneof("target")
        if which is None:
            raise InvalidArgument("set either session_id or group_id")
        return which, getattr(msg, which)

    # ------------------------------------------------------------ imagine
    def _imagine_input(self, request: simulator_pb2.ImagineRequest) -> ImagineInput:
        return ImagineInput(
            self._tensor(request, "start_frames", "uint8", check_start_frames),
            self._tensor(request, "candidates", "float32", check_candidates),
        )

    @observed
    @grpc_error_boundary
    async def Imagine(
        self, request: simulator_pb2.ImagineRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.ImagineResponse:
        rid = request_id_arg(request.request_id)
        encoding = frame_encoding(request)
        result = await self.runtime.imagine(
            self._imagine_input(request),
            request.horizon_chunks,
            self._seed(request),
            request.request_id,
            instruction=request.instruction,
            verify=request.verify,
            verify_threshold=self._verify_threshold(request),
            record_id=rid,
        )
        v = result.verification
        return simulator_pb2.ImagineResponse(
            request_id=rid,
            candidates=[
                simulator_pb2.CandidateResult(
                    index=i,
                    frames=encode_tensor(f, f"candidate {i}", encoding),
                    confidence=v.confidences[i] if v else None,
                )
                for i, f in enumerate(result.frames)
            ],
            seed=result.seed,
            provenance=result.provenance,
            timing=result.timing,
            **_judged(v),
        )

    @observed
    @grpc_error_boundary
    async def ImagineStream(
        self, request: simulator_pb2.ImagineRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[simulator_pb2.ImagineStreamResponse]:
        rid = request_id_arg(request.request_id)
        stream = self.runtime.open_imagine_stream(
            self._imagine_input(request),
            request.horizon_chunks,
            self._seed(request),
            instruction=request.instruction,
            verify=request.verify,
            verify_threshold=self._verify_threshold(request),
            record_id=rid,
        )
        try:
            async for event in stream.events():
                if isinstance(event, ImagineChunk):
                    yield simulator_pb2.ImagineStreamResponse(
                        frames=simulator_pb2.ImagineFrames(
                            request_id=rid,
                            chunk_index=event.chunk_index,
                            frames=encode_tensor(event.frames, "frames"),
                        )
                    )
                    continue
                v = event.verification
                yield simulator_pb2.ImagineStreamResponse(
                    result=simulator_pb2.ImagineResponse(
                        request_id=rid,
                        candidates=[
                            simulator_pb2.CandidateResult(
                                index=i, confidence=v.confidences[i] if v else None
                            )
                            for i in range(stream.n_candidates)
                        ],
                        seed=event.seed,
                        provenance=event.provenance,
                        timing=event.timing,
                        **_judged(v),
                    )
                )
        finally:
            stream.close()

    # ------------------------------------------------------------ sessions
    @observed
    @grpc_error_boundary
    async def CreateSession(
        self, request: simulator_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.CreateSessionResponse:
        request_id_arg(request.request_id)
        encoding = frame_encoding(request)
        frames = self._tensor(request, "start_frames", "uint8", check_start_frames)
        res = await self.runtime.sessions.create(
            frames,
            request.instruction,
            self._seed(request),
            request.group_size,
            request.max_chunks,
        )
        return simulator_pb2.CreateSessionResponse(
            group_id=res.group_id or "",
            sessions=[self._info(s) for s in res.sessions],
            observation=encode_tensor(res.observation, "observation", encoding),
            provenance=res.provenance,
            timing=res.timing,
        )

    @observed
    @grpc_error_boundary
    async def StepSession(
        self, request: simulator_pb2.StepSessionRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.StepSessionResponse:
        rid = request_id_arg(request.request_id)
        encoding = frame_encoding(request)
        which, target = self._target(request)
        sessions = self.runtime.sessions
        expected = (
            int(request.expected_chunks_stepped)
            if request.HasField("expected_chunks_stepped")
            else None
        )
        outcome: StepOutcome
        if which == "session_id":
            actions = self._tensor(request, "actions", "float32", _validated(check_session_actions))
            outcome = await sessions.step_session(target, actions, expected)
        else:
            actions = self._tensor(request, "actions", "float32", check_group_actions)
            outcome = await sessions.step_group(target, actions, expected)
        return simulator_pb2.StepSessionResponse(
            request_id=rid,
            results=[
                simulator_pb2.StepResult(
                    session_id=r.session_id,
                    frames=encode_tensor(r.frames, "frames", encoding),
                    truncated=r.truncated,
                    chunks_stepped=r.chunks_stepped,
                )
                for r in outcome.results
            ],
            timing=outcome.timing,
            replayed=outcome.replayed,
        )

    @observed
    @grpc_error_boundary
    async def ReplaySession(
        self, request: simulator_pb2.ReplaySessionRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.ReplaySessionResponse:
        rid = request_id_arg(request.request_id)
        encoding = frame_encoding(request)
        if not request.session_id:
            raise InvalidArgument("session_id is required")
        res = await self.runtime.sessions.replay(request.session_id, self._seed(request))
        return simulator_pb2.ReplaySessionResponse(
            request_id=rid,
            session_id=res.session_id,
            frames=encode_tensor(res.frames, "frames", encoding),
            seed=res.seed,
            provenance=res.provenance,
            timing=res.timing,
        )

    @observed
    @grpc_error_boundary
    async def GetSession(
        self, request: simulator_pb2.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.GetSessionResponse:
        which, target = self._target(request)
        sessions = self.runtime.sessions
        infos = [sessions.get(target)] if which == "session_id" else sessions.get_group(target)
        return simulator_pb2.GetSessionResponse(sessions=[self._info(i) for i in infos])

    @observed
    @grpc_error_boundary
    async def CloseSession(
        self, request: simulator_pb2.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.CloseSessionResponse:
        which, target = self._target(request)
        sessions = self.runtime.sessions
        closed = sessions.close(target) if which == "session_id" else sessions.close_group(target)
        return simulator_pb2.CloseSessionResponse(closed_session_ids=closed)

    # ------------------------------------------------------------ outcomes
    @observed
    @grpc_error_boundary
    async def ReportOutcome(
        self, request: simulator_pb2.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.ReportOutcomeResponse:
        if not request.request_id:
            raise InvalidArgument("request_id: the request_id of the imagine response is required")
        if not is_valid_request_id(request.request_id):
            raise InvalidArgument("request_id must be at most 128 characters of [A-Za-z0-9._:-]")
        if request.candidate < 0:
            raise InvalidArgument(f"candidate: must be >= 0, got {request.candidate}")
        frames = self._tensor(request, "frames", "uint8", check_outcome_frames)
        success = request.success if request.HasField("success") else None
        f = await self.runtime.report_outcome(
            Outcome(request.request_id, request.candidate, frames, success)
        )
        return simulator_pb2.ReportOutcomeResponse(
            request_id=f.request_id,
            candidate=f.candidate,
            frames_compared=f.frames_compared,
            psnr_db=f.psnr_db,
            perceptual=f.perceptual or [],
            psnr_mean_db=f.psnr_mean_db,
            perceptual_mean=f.perceptual_mean,
            confidence=f.confidence,
            success=f.success,
            world_model=f.world_model,
            replayed=f.replayed,
            has_perceptual=f.perceptual is not None,
        )

    # ------------------------------------------------------------ health
    @grpc_error_boundary
    async def Health(
        self, request: simulator_pb2.HealthRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.HealthResponse:
        return health_response(self.runtime.readiness(), VERSION)


_VERDICTS = {
    "execute": simulator_pb2.VERDICT_EXECUTE,
    "replan": simulator_pb2.VERDICT_REPLAN,
}


def _judged(v: Verification | None) -> dict[str, Any]:
    """The ImagineResponse fields the judge fills (none without verify)."""
    if v is None:
        return {}
    return {"verdict": _VERDICTS[v.verdict], "best_candidate": v.best_candidate}


def _validated(
    check: Callable[[np.ndarray, str], np.ndarray],
) -> Callable[[np.ndarray, str], np.ndarray]:
    """Run `check` for its errors but keep the array as sent (the manager reshapes it)."""

    def run(array: np.ndarray, name: str) -> np.ndarray:
        check(array, name)
        return array

    return run


def create_grpc_server(
    runtime: SimulatorRuntime, settings: SimulatorSettings
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) for `runtime` on settings.host:grpc_port; returns the
    server and the bound port (useful with grpc_port 0)."""
    # Requests obey the shared limit; responses carry frames and get their own
    # (clients must raise their receive limit, 4 MiB by default, to match).
    options = [o for o in settings.grpc_options() if o[0] != "grpc.max_send_message_length"]
    options.append(("grpc.max_send_message_length", settings.max_response_bytes))
    servicer = SimulatorServicer(runtime, settings.max_request_bytes)
    return create_server(
        settings, lambda s: simulator_pb2_grpc.add_SimulatorServicer_to_server(servicer, s), options
    )
