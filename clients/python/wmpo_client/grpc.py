"""gRPC clients for the simulator service: `GrpcSimulatorClient` (sync) and
`AsyncGrpcSimulatorClient` (grpc.aio).

Same methods and results as the HTTP clients (`wmpo_client.http`), over the
generated `wmpo.v1.Simulator` stubs. The API key travels as `x-api-key`
metadata, a request id as `x-request-id` (the server's logs and trailing
metadata carry it back). Message size limits are raised to the service's
defaults (64 MiB sent, 256 MiB received: responses carry frames), where
grpcio's 4 MiB receive default would refuse a modest imagine. Every failure
is a `SimulatorError` whose `code` is the gRPC status name, which is also the
code the HTTP API uses for the same error.

Retries: the same policy as HTTP (see `wmpo_client._common`) on
RESOURCE_EXHAUSTED (the service is busy) and UNAVAILABLE (not running, or
no connection), but never on grpcio's own "message larger than max", which
shares RESOURCE_EXHAUSTED and would fail again. A stream is retried only
before its first message. A step that names `expected_chunks_stepped` is
idempotent on the service, so it is also retried on DEADLINE_EXCEEDED.

Request messages, parsing and the retry rules are written once (`_SimulatorGrpc` and
`wmpo_client._grpc`, whose unary exchange `wmpo_client._driver` runs); the sync and
async classes only differ in how they call and sleep.

Example:
    with GrpcSimulatorClient("127.0.0.1:50051", api_key="...") as sim:
        session = sim.create_session(frame, "open the drawer", seed=0)
        obs = sim.step(session.session_id, chunk).result.observation
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from wmpo_client._common import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    ChunkStream,
    FrameEncoding,
    action_array,
    check_expected_chunks,
    check_frame_encoding,
    check_request_id,
    frame_array,
    outcome_frames,
)
from wmpo_client._grpc import (
    AsyncGrpc,
    GrpcConfig,
    SyncGrpc,
    error_from_rpc,
    retryable,
    size_options,
)
from wmpo_client.codec import from_proto, to_proto
from wmpo_client.errors import SimulatorError
from wmpo_client.proto import simulator_pb2 as pb
from wmpo_client.proto import simulator_pb2_grpc, tensor_pb2
from wmpo_client.results import (
    CandidateResult,
    CreateSessionResult,
    ImagineChunk,
    ImagineEvent,
    ImagineResult,
    OutcomeResult,
    ReplayResult,
    SessionInfo,
    StepOutcome,
    StepResult,
    Verdict,
)

__all__ = ["AsyncGrpcSimulatorClient", "GrpcSimulatorClient", "error_from_rpc"]

DEFAULT_TARGET = "127.0.0.1:50051"
_VERDICTS: dict[int, Verdict] = {pb.VERDICT_EXECUTE: "execute", pb.VERDICT_REPLAN: "replan"}
_ENCODINGS = {"raw": tensor_pb2.FRAME_ENCODING_RAW, "png": tensor_pb2.FRAME_ENCODING_PNG}


# ------------------------------------------------------------------ parsing


def _session_info(msg: pb.SessionInfo) -> SessionInfo:
    return SessionInfo(
        session_id=msg.session_id,
        group_id=msg.group_id or None,
        group_index=msg.group_index,
        instruction=msg.instruction,
        seed=msg.seed,
        chunks_stepped=msg.chunks_stepped,
        max_chunks=msg.max_chunks,
        memory_bytes=msg.memory_bytes,
        created_at=msg.created_at,
        last_active_at=msg.last_active_at,
        expires_at=msg.expires_at,
    )


class _Parser:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def frames(self, msg: tensor_pb2.Tensor, name: str) -> np.ndarray:
        return from_proto(msg, name, self.max_bytes, expect_dtype="uint8")

    def imagine(
        self, resp: pb.ImagineResponse, frames: list[np.ndarray] | None = None
    ) -> ImagineResult:
        """`frames`: per-candidate frames assembled from a stream (its result has none)."""
        return ImagineResult(
            request_id=resp.request_id,
            candidates=[
                CandidateResult(
                    index=c.index,
                    frames=(
                        frames[i]
                        if frames is not None
                        else self.frames(c.frames, f"candidate {c.index}")
                    ),
                    confidence=c.confidence if c.HasField("confidence") else None,
                )
                for i, c in enumerate(resp.candidates)
            ],
            seed=resp.seed,
            provenance=dict(resp.provenance),
            timing=dict(resp.timing),
            verdict=_VERDICTS.get(resp.verdict),
            best_candidate=resp.best_candidate if resp.HasField("best_candidate") else None,
        )

    def create(self, resp: pb.CreateSessionResponse, request_id: str) -> CreateSessionResult:
        return CreateSessionResult(
            request_id=request_id,
            group_id=resp.group_id or None,
            sessions=[_session_info(s) for s in resp.sessions],
            observation=self.frames(resp.observation, "observation"),
            provenance=dict(resp.provenance),
            timing=dict(resp.timing),
        )

    def step(self, resp: pb.StepSessionResponse) -> StepOutcome:
        return StepOutcome(
            replayed=resp.replayed,
            request_id=resp.request_id,
            results=[
                StepResult(
                    session_id=r.session_id,
                    frames=self.frames(r.frames, "frames"),
                    reward=r.reward if r.HasField("reward") else None,
                    done=r.done if r.HasField("done") else None,
                    truncated=r.truncated,
                    chunks_stepped=r.chunks_stepped,
                )
                for r in resp.results
            ],
            timing=dict(resp.timing),
        )

    def replay(self, resp: pb.ReplaySessionResponse) -> ReplayResult:
        return ReplayResult(
            request_id=resp.request_id,
            session_id=resp.session_id,
            frames=self.frames(resp.frames, "frames"),
            seed=resp.seed,
            provenance=dict(resp.provenance),
            timing=dict(resp.timing),
        )


def _outcome_result(resp: pb.ReportOutcomeResponse) -> OutcomeResult:
    return OutcomeResult(
        request_id=resp.request_id,
        candidate=resp.candidate,
        frames_compared=resp.frames_compared,
        psnr_db=list(resp.psnr_db),
        perceptual=list(resp.perceptual) if resp.has_perceptual else None,
        psnr_mean_db=resp.psnr_mean_db,
        perceptual_mean=resp.perceptual_mean if resp.HasField("perceptual_mean") else None,
        confidence=resp.confidence if resp.HasField("confidence") else None,
        success=resp.success if resp.HasField("success") else None,
        world_model=resp.world_model,
        replayed=resp.replayed,
    )


class _StreamState(ChunkStream):
    """Turns a stream's messages into events; the last is the full result."""

    def __init__(self, parser: _Parser) -> None:
        super().__init__()
        self.parser = parser

    def event(self, msg: pb.ImagineStreamResponse) -> ImagineEvent:
        kind = msg.WhichOneof("event")
        if kind == "frames":
            frames = self.add(self.parser.frames(msg.frames.frames, "frames"))
            return ImagineChunk(msg.frames.request_id, msg.frames.chunk_index, frames)
        if kind == "result":
            return self.parser.imagine(msg.result, frames=self.result_frames())
        raise SimulatorError("INTERNAL", f"unknown stream event {kind!r}")


# ----------------------------------------------------------------- requests


class _SimulatorGrpc(GrpcConfig):
    """Configuration, request messages, parsing and the stream's retry rule shared by the
    sync and async clients; unary retries are `wmpo_client._grpc.exchange`."""

    stub_class = simulator_pb2_grpc.SimulatorStub

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
        self._parse = _Parser(max_receive_bytes)
        opts = size_options(max_send_bytes, max_receive_bytes, options)
        super().__init__(target, api_key, timeout, retries, backoff, max_backoff, opts)

    def _stream_retry_delay(self, exc: grpc.RpcError, state: _StreamState, attempt: int) -> float:
        """The wait before opening a failed stream again; raises when it must not be: it
        already delivered frames, the failure is not transient, or the retries are spent."""
        if not state.chunks and attempt < self.retry.retries and retryable(exc):
            return self.retry.delay(attempt)
        raise error_from_rpc(exc) from exc

    def _frame(self, frame: Any) -> tensor_pb2.Tensor:
        return to_proto(frame_array(frame), "frame", self.frame_encoding, self.max_send_bytes)

    def _actions(self, actions: Any, name: str = "actions") -> tensor_pb2.Tensor:
        return to_proto(action_array(actions, name), name, "raw", self.max_send_bytes)

    def _imagine_request(
        self,
        frame: Any,
        instruction: str,
        candidates: Any,
        horizon: int,
        seed: int | None,
        request_id: str,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> pb.ImagineRequest:
        return pb.ImagineRequest(
            start_frames=self._frame(frame),
            instruction=instruction,
            candidates=self._actions(candidates, "candidates"),
            horizon_chunks=horizon,
            seed=seed,
            request_id=request_id,
            frame_encoding=_ENCODINGS[self.frame_encoding],
            verify=verify,
            verify_threshold=None if verify_threshold is None else float(verify_threshold),
        )

    def _outcome_request(
        self, request_id: str, candidate: int, frames: Any, success: bool | None
    ) -> pb.ReportOutcomeRequest:
        if not request_id:
            raise ValueError("request_id: the request_id of the imagine result is required")
        return pb.ReportOutcomeRequest(
            request_id=request_id,
            candidate=int(candidate),
            frames=to_proto(outcome_frames(frames), "frames", self.frame_encoding,
                            self.max_send_bytes),
            success=None if success is None else bool(success),
        )

    def _create_request(
        self,
        frame: Any,
        instruction: str,
        seed: int | None,
        group_size: int,
        max_chunks: int,
        request_id: str,
    ) -> pb.CreateSessionRequest:
        return pb.CreateSessionRequest(
            start_frames=self._frame(frame),
            instruction=instruction,
            seed=seed,
            group_size=group_size,
            max_chunks=max_chunks,
            request_id=request_id,
            frame_encoding=_ENCODINGS[self.frame_encoding],
        )

    def _step_request(
        self,
        target: dict[str, str],
        actions: Any,
        request_id: str,
        expected_chunks_stepped: int | None,
    ) -> pb.StepSessionRequest:
        expected = (
            None
            if expected_chunks_stepped is None
            else check_expected_chunks(expected_chunks_stepped)
        )
        return pb.StepSessionRequest(
            **target,
            actions=self._actions(actions),
            request_id=request_id,
            frame_encoding=_ENCODINGS[self.frame_encoding],
            expected_chunks_stepped=expected,
        )

    def _replay_request(
        self, session_id: str, seed: int | None, request_id: str
    ) -> pb.ReplaySessionRequest:
        return pb.ReplaySessionRequest(
            session_id=session_id,
            seed=seed,
            request_id=request_id,
            frame_encoding=_ENCODINGS[self.frame_encoding],
        )


# --------------------------------------------------------------------- sync


class GrpcSimulatorClient(SyncGrpc, _SimulatorGrpc):
    """Synchronous gRPC client of the simulator service.

    Args:
        target: "host:port" (a "grpc://" prefix is accepted).
        api_key: sent as `x-api-key` metadata on every call.
        timeout: deadline of each call in seconds (None: no deadline).
        retries, backoff, max_backoff: see `RetryPolicy`.
        frame_encoding: "png" or "raw", for the start frame sent and the frames received.
        max_send_bytes, max_receive_bytes: gRPC message limits (the service's defaults).
        credentials: TLS channel credentials (grpc.ssl_channel_credentials()); None: plaintext.
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
        max_receive_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target, api_key, timeout, retries, backoff, max_backoff, frame_encoding,
            max_send_bytes, max_receive_bytes, options,
        )
        self._connect(credentials)

    def imagine(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> ImagineResult:
        """See `wmpo_client.http.SimulatorClient.imagine`."""
        rid = check_request_id(request_id)
        request = self._imagine_request(
            frame, instruction, candidates, horizon, seed, rid, verify, verify_threshold
        )
        return self._parse.imagine(self._unary(self._stub.Imagine, request, rid))

    def imagine_stream(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> Iterator[ImagineEvent]:
        """Yields an `ImagineChunk` per chunk as generated, then the full `ImagineResult`.
        The call starts when iteration does; breaking out of the loop cancels it (and the
        server's remaining work)."""
        rid = check_request_id(request_id)
        request = self._imagine_request(
            frame, instruction, candidates, horizon, seed, rid, verify, verify_threshold
        )
        for attempt in itertools.count():
            call = self._stub.ImagineStream(
                request, metadata=self._metadata(rid), timeout=self.timeout
            )
            state = _StreamState(self._parse)
            try:
                for msg in call:
                    yield state.event(msg)
                state.check_finished()
                return
            except grpc.RpcError as exc:
                delay = self._stream_retry_delay(exc, state, attempt)
            finally:
                call.cancel()
            time.sleep(delay)

    def create_session(
        self,
        frame: np.ndarray,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """See `wmpo_client.http.SimulatorClient.create_session`."""
        rid = check_request_id(request_id)
        request = self._create_request(frame, instruction, seed, 1, max_chunks, rid)
        return self._parse.create(self._unary(self._stub.CreateSession, request, rid), rid)

    def create_group(
        self,
        frame: np.ndarray,
        group_size: int,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """See `wmpo_client.http.SimulatorClient.create_group`."""
        rid = check_request_id(request_id)
        request = self._create_request(frame, instruction, seed, group_size, max_chunks, rid)
        return self._parse.create(self._unary(self._stub.CreateSession, request, rid), rid)

    def step(
        self,
        session_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """See `wmpo_client.http.SimulatorClient.step`."""
        rid = check_request_id(request_id)
        target = {"session_id": session_id}
        request = self._step_request(target, actions, rid, expected_chunks_stepped)
        idempotent = expected_chunks_stepped is not None
        return self._parse.step(self._unary(self._stub.StepSession, request, rid, idempotent))

    def step_group(
        self,
        group_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """See `wmpo_client.http.SimulatorClient.step_group`."""
        rid = check_request_id(request_id)
        request = self._step_request({"group_id": group_id}, actions, rid, expected_chunks_stepped)
        idempotent = expected_chunks_stepped is not None
        return self._parse.step(self._unary(self._stub.StepSession, request, rid, idempotent))

    def replay(
        self, session_id: str, seed: int | None = None, request_id: str | None = None
    ) -> ReplayResult:
        """See `wmpo_client.http.SimulatorClient.replay`."""
        rid = check_request_id(request_id)
        request = self._replay_request(session_id, seed, rid)
        return self._parse.replay(self._unary(self._stub.ReplaySession, request, rid))

    def report_outcome(
        self,
        request_id: str,
        candidate: int,
        frames: np.ndarray,
        success: bool | None = None,
    ) -> OutcomeResult:
        """See `wmpo_client.http.SimulatorClient.report_outcome` (retried like it: a repeat
        returns the stored answer)."""
        request = self._outcome_request(request_id, candidate, frames, success)
        return _outcome_result(self._unary(self._stub.ReportOutcome, request, "", True))

    def get_session(self, session_id: str) -> SessionInfo:
        resp = self._unary(self._stub.GetSession, pb.GetSessionRequest(session_id=session_id))
        return _session_info(resp.sessions[0])

    def get_group(self, group_id: str) -> list[SessionInfo]:
        resp = self._unary(self._stub.GetSession, pb.GetSessionRequest(group_id=group_id))
        return [_session_info(s) for s in resp.sessions]

    def close_session(self, session_id: str) -> list[str]:
        request = pb.CloseSessionRequest(session_id=session_id)
        return list(self._unary(self._stub.CloseSession, request).closed_session_ids)

    def close_group(self, group_id: str) -> list[str]:
        request = pb.CloseSessionRequest(group_id=group_id)
        return list(self._unary(self._stub.CloseSession, request).closed_session_ids)


# -------------------------------------------------------------------- async


class AsyncGrpcSimulatorClient(AsyncGrpc, _SimulatorGrpc):
    """Asynchronous (grpc.aio) gRPC client; same arguments and methods as `GrpcSimulatorClient`.

    The channel is opened on first use, inside the running event loop; close
    it with `await client.aclose()` or `async with`.
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
        max_receive_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target, api_key, timeout, retries, backoff, max_backoff, frame_encoding,
            max_send_bytes, max_receive_bytes, options,
        )
        self._connect(credentials)

    async def imagine(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> ImagineResult:
        """See `wmpo_client.http.SimulatorClient.imagine`."""
        rid = check_request_id(request_id)
        request = self._imagine_request(
            frame, instruction, candidates, horizon, seed, rid, verify, verify_threshold
        )
        return self._parse.imagine(await self._unary(self._stub.Imagine, request, rid))

    async def imagine_stream(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> AsyncIterator[ImagineEvent]:
        """See `GrpcSimulatorClient.imagine_stream`; use `async for` (and
        `contextlib.aclosing(...)` to cancel at once when stopping early)."""
        rid = check_request_id(request_id)
        request = self._imagine_request(
            frame, instruction, candidates, horizon, seed, rid, verify, verify_threshold
        )
        for attempt in itertools.count():
            call = self._stub.ImagineStream(
                request, metadata=self._metadata(rid), timeout=self.timeout
            )
            state = _StreamState(self._parse)
            try:
                async for msg in call:
                    yield state.event(msg)
                state.check_finished()
                return
            except grpc.RpcError as exc:
                delay = self._stream_retry_delay(exc, state, attempt)
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def create_session(
        self,
        frame: np.ndarray,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """See `wmpo_client.http.SimulatorClient.create_session`."""
        rid = check_request_id(request_id)
        request = self._create_request(frame, instruction, seed, 1, max_chunks, rid)
        return self._parse.create(await self._unary(self._stub.CreateSession, request, rid), rid)

    async def create_group(
        self,
        frame: np.ndarray,
        group_size: int,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """See `wmpo_client.http.SimulatorClient.create_group`."""
        rid = check_request_id(request_id)
        request = self._create_request(frame, instruction, seed, group_size, max_chunks, rid)
        return self._parse.create(await self._unary(self._stub.CreateSession, request, rid), rid)

    async def step(
        self,
        session_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """See `wmpo_client.http.SimulatorClient.step`."""
        rid = check_request_id(request_id)
        target = {"session_id": session_id}
        request = self._step_request(target, actions, rid, expected_chunks_stepped)
        idempotent = expected_chunks_stepped is not None
        return self._parse.step(await self._unary(self._stub.StepSession, request, rid, idempotent))

    async def step_group(
        self,
        group_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """See `wmpo_client.http.SimulatorClient.step_group`."""
        rid = check_request_id(request_id)
        request = self._step_request({"group_id": group_id}, actions, rid, expected_chunks_stepped)
        idempotent = expected_chunks_stepped is not None
        return self._parse.step(await self._unary(self._stub.StepSession, request, rid, idempotent))

    async def replay(
        self, session_id: str, seed: int | None = None, request_id: str | None = None
    ) -> ReplayResult:
        """See `wmpo_client.http.SimulatorClient.replay`."""
        rid = check_request_id(request_id)
        request = self._replay_request(session_id, seed, rid)
        return self._parse.replay(await self._unary(self._stub.ReplaySession, request, rid))

    async def report_outcome(
        self,
        request_id: str,
        candidate: int,
        frames: np.ndarray,
        success: bool | None = None,
    ) -> OutcomeResult:
        """See `wmpo_client.http.SimulatorClient.report_outcome`."""
        request = self._outcome_request(request_id, candidate, frames, success)
        return _outcome_result(await self._unary(self._stub.ReportOutcome, request, "", True))

    async def get_session(self, session_id: str) -> SessionInfo:
        request = pb.GetSessionRequest(session_id=session_id)
        return _session_info((await self._unary(self._stub.GetSession, request)).sessions[0])

    async def get_group(self, group_id: str) -> list[SessionInfo]:
        resp = await self._unary(self._stub.GetSession, pb.GetSessionRequest(group_id=group_id))
        return [_session_info(s) for s in resp.sessions]

    async def close_session(self, session_id: str) -> list[str]:
        request = pb.CloseSessionRequest(session_id=session_id)
        return list((await self._unary(self._stub.CloseSession, request)).closed_session_ids)

    async def close_group(self, group_id: str) -> list[str]:
        request = pb.CloseSessionRequest(group_id=group_id)
        return list((await self._unary(self._stub.CloseSession, request)).closed_session_ids)
