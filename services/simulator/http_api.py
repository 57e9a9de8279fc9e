"""The simulator's HTTP API (FastAPI): thin handlers over the shared `SimulatorRuntime`.

Routes (all need an API key; health and readiness come from `create_app`):

- `POST /v1/imagine`: start frame + candidate action chunks -> imagined frames
  per candidate, provenance, timing; with `verify` (and optionally
  `verify_threshold`), the judge's `confidence` per candidate, `best_candidate`
  and `verdict` (see `services.simulator.verify`), else null. It runs through the imagine work queue (in process,
  or Redis Streams shared by replicas; see `imagine_queue`): a `request_id`
  makes retries idempotent (the stored result comes back, nothing is recomputed);
  without a `seed`, the seed is derived from the request id;
- `POST /v1/imagine/stream`: the same work as newline-delimited JSON, one
  `{"event": "frames", ...}` line per chunk as it is generated, then one
  `{"event": "result", ...}` line (or `{"event": "error", ...}` if it fails
  after the response has started). Streamed chunk tensors are (N, F, H, W, 3)
  and always raw: PNG tensors are at most 4-D;
- sessions: `POST /v1/sessions`, `POST /v1/sessions/{id}/step`,
  `POST /v1/sessions/{id}/replay`, `GET /v1/sessions/{id}`,
  `DELETE /v1/sessions/{id}`, and the same for a forked group under
  `/v1/groups/{id}` (step all members at once, read, close). A step that names
  `expected_chunks_stepped` is idempotent: retried after a timeout, it returns the
  stored result (`replayed: true`) instead of advancing the session twice; a count
  that is neither the session's nor its last step's is a 409.
- `POST /v1/outcomes`: what really happened after executing a candidate of a
  `/v1/imagine` request (its `request_id`, the candidate, the real frames, the real
  success flag when known) -> per-frame PSNR and perceptual distance against what
  was imagined, exported as drift metrics (`services.simulator.drift`). 404 for an
  unknown or expired request id; a repeat of the same report returns the stored
  answer (`replayed: true`); a different report for the same request is a 409;
- recorded runs for the viewer (`services.common.viewer.runs`): `GET /v1/runs`,
  `/v1/runs/episodes`, `/v1/runs/episode`, read-only under `WMPO_RUNS_DIR`;
- the rollout viewer page at `/viewer` (`services.common.viewer`; the page is public, its
  config and everything it shows need the key).

Tensors use the JSON form of the wire codec (`wmpo_client.codec.TensorJSON`).
Request models decode them and check dtype, shape and finiteness, so a bad
tensor is a 422 naming the tensor; checks that need the model (frame size,
chunk length) are 400s from the engine. Nothing here returns a traceback.
`instruction` is recorded (sessions) for the judge; the world model itself is
not text-conditioned. A client that disconnects cancels its work (499).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from wmpo_client.codec import TensorJSON, to_json

from services.common.app import Lifespan, create_app, runtime_lifespan
from services.common.errors import (
    ErrorDetail,
    ServiceError,
    error_responses,
    internal_message,
)
from services.common.http_util import (
    ClosingStream,
    FrameEncoding,
    app_runtime,
    decode_tensor,
    request_id_of,
    tensor_out,
    until_disconnect,
)
from services.common.viewer import example_frames
from services.common.viewer.runs import RunStore, runs_router
from services.simulator.drift import Outcome, OutcomeFigures, check_outcome_frames
from services.simulator.engine import (
    SEED_LIMIT,
    ImagineChunk,
    ImagineInput,
    check_candidates,
    check_group_actions,
    check_session_actions,
    check_start_frames,
)
from services.simulator.runtime import SERVICE, VERSION, SimulatorRuntime
from services.simulator.sessions import MAX_INSTRUCTION_CHARS, SessionInfo
from services.simulator.settings import SimulatorSettings

log = logging.getLogger("wmpo.simulator.http")
T = TypeVar("T")

RequestId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._:-]{0,128}$",
        description="Client-chosen id (at most 128 of [A-Za-z0-9._:-]); empty: the server's.",
    ),
]
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT, description="Noise seed; absent: drawn.")]
Instruction = Annotated[
    str, Field(max_length=MAX_INSTRUCTION_CHARS, description="The task in natural language.")
]
VerifyThreshold = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="With verify: the success score the best candidate needs for verdict "
        "'execute'; null: the judge's own threshold.",
    ),
]
ExpectedChunks = Annotated[
    int | None,
    Field(
        ge=0,
        lt=2**31,
        description="The session's chunks_stepped before this step (the last response's; 0 "
        "after create). Makes the step idempotent: a retry of the last step returns its stored "
        "result (replayed: true) without advancing; any other count is a 409. Absent: no check.",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Working request examples for the OpenAPI page ("Try it out") and schema-driven tests: a
# flat gray 64x64 start frame (the bundled model's size) as PNG, and zero actions.
_FRAME_EXAMPLE = to_json(np.full((64, 64, 3), 128, np.uint8), "start_frames", "png")


def _zeros(*shape: int) -> dict[str, Any]:
    return to_json(np.zeros(shape, np.float32), "actions")


def _examples(*bodies: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(bodies)})


# ------------------------------------------------------------------ requests


class ImagineBody(_Body):
    model_config = _examples(
        {
            "start_frames": _FRAME_EXAMPLE,
            "instruction": "press the button from the top",
            "candidates": _zeros(2, 8, 4),
            "seed": 0,
        }
    )
    start_frames: TensorJSON = Field(
        description="uint8 (H, W, 3) or (1, H, W, 3): the current camera frame (raw or PNG)."
    )
    instruction: Instruction = ""
    candidates: TensorJSON = Field(
        description="float32 (N, C, K, 4): N candidates of C chunks of K actions; "
        "(N, K, 4) for one chunk each."
    )
    horizon_chunks: int = Field(0, ge=0, description="Chunks to imagine, 1..C; 0: all.")
    seed: Seed | None = None
    request_id: RequestId = ""
    frame_encoding: FrameEncoding = "raw"
    verify: bool = Field(
        False,
        description="Ask the judge about every candidate (needs an instruction and a judge, "
        "WMPO_JUDGE_URL): fills confidence, best_candidate and verdict.",
    )
    verify_threshold: VerifyThreshold = None

    _inputs: ImagineInput = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> ImagineBody:
        self._inputs = ImagineInput(
            decode_tensor(self.start_frames, "start_frames", "uint8", check_start_frames),
            decode_tensor(self.candidates, "candidates", "float32", check_candidates),
        )
        return self

    @property
    def inputs(self) -> ImagineInput:
        return self._inputs


class CreateSessionBody(_Body):
    model_config = _examples(
        {"start_frames": _FRAME_EXAMPLE, "instruction": "close the drawer", "seed": 0},
        {"start_frames": _FRAME_EXAMPLE, "seed": 0, "group_size": 4, "max_chunks": 16},
    )
    start_frames: TensorJSON = Field(description="uint8 (H, W, 3) or (1, H, W, 3).")
    instruction: Instruction = ""
    seed: Seed | None = None
    group_size: int = Field(1, ge=0, description="G > 1 forks a group of G sessions.")
    max_chunks: int = Field(0, ge=0, description="Chunk budget per session; 0: the default.")
    request_id: RequestId = ""
    frame_encoding: FrameEncoding = "raw"

    _frames: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> CreateSessionBody:
        self._frames = decode_tensor(self.start_frames, "start_frames", "uint8", check_start_frames)
        return self


class StepSessionBody(_Body):
    model_config = _examples({"actions": _zeros(8, 4), "expected_chunks_stepped": 0})
    actions: TensorJSON = Field(description="float32 (K, 4) for one chunk or (C, K, 4).")
    expected_chunks_stepped: ExpectedChunks = None
    request_id: RequestId = ""
    frame_encoding: FrameEncoding = "raw"

    _actions: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> StepSessionBody:
        self._actions = decode_tensor(self.actions, "actions", "float32", _session_actions)
        return self


class StepGroupBody(_Body):
    model_config = _examples({"actions": _zeros(4, 8, 4), "expected_chunks_stepped": 0})
    actions: TensorJSON = Field(description="float32 (G, K, 4) or (G, C, K, 4), row g: member g.")
    expected_chunks_stepped: ExpectedChunks = None
    request_id: RequestId = ""
    frame_encoding: FrameEncoding = "raw"

    _actions: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> StepGroupBody:
        self._actions = decode_tensor(self.actions, "actions", "float32", check_group_actions)
        return self


def _session_actions(actions: np.ndarray, name: str) -> np.ndarray:
    check_session_actions(actions, name)  # validation only; the manager reshapes
    return actions


class ReplayBody(_Body):
    seed: Seed | None = Field(None, description="Fresh noise seed; absent: one is drawn.")
    request_id: RequestId = ""
    frame_encoding: FrameEncoding = "raw"


class OutcomeBody(_Body):
    model_config = _examples(
        {
            "request_id": "my-imagine-1",
            "candidate": 0,
            "frames": to_json(np.full((1, 64, 64, 3), 128, np.uint8), "frames", "png"),
            "success": True,
        }
    )
    request_id: str = Field(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="The request_id of the /v1/imagine response whose candidate was executed.",
    )
    candidate: int = Field(ge=0, lt=2**31, description="The index of the executed candidate.")
    frames: TensorJSON = Field(
        description="uint8 (T, H, W, 3), raw or PNG: the real camera frames that followed, one "
        "per imagined frame (the frame after every frame-stride actions), T at most the "
        "imagined count (a prefix if the episode ended early)."
    )
    success: bool | None = Field(None, description="The real task success, when known.")

    _frames: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _tensors(self) -> OutcomeBody:
        self._frames = decode_tensor(self.frames, "frames", "uint8", check_outcome_frames)
        return self


# ----------------------------------------------------------------- responses


class OutcomeOut(BaseModel):
    request_id: str
    candidate: int
    frames_compared: int
    psnr_db: list[float] = Field(description="Per compared frame: PSNR (dB), real vs imagined.")
    perceptual: list[float] | None = Field(
        description="Per compared frame: perceptual distance (ae-lpips; null: not on this backend)."
    )
    psnr_mean_db: float
    perceptual_mean: float | None
    confidence: float | None = Field(
        description="The judge's confidence for this candidate (null: imagined without verify)."
    )
    success: bool | None
    world_model: str = Field(description="The checkpoint hash that imagined the frames.")
    replayed: bool = Field(
        False, description="True: a repeat of an accepted report; its stored answer, counted once."
    )


def outcome_out(f: OutcomeFigures) -> OutcomeOut:
    return OutcomeOut(
        request_id=f.request_id, candidate=f.candidate, frames_compared=f.frames_compared,
        psnr_db=f.psnr_db, perceptual=f.perceptual, psnr_mean_db=f.psnr_mean_db,
        perceptual_mean=f.perceptual_mean, confidence=f.confidence, success=f.success,
        world_model=f.world_model, replayed=f.replayed,
    )


class CandidateOut(BaseModel):
    index: int
    frames: TensorJSON | None = Field(
        description="uint8 (T, H, W, 3); null in the stream's result line."
    )
    confidence: float | None = Field(
        None, description="Judge (verify): success probability in [0, 1] (null: not verified)."
    )


class ImagineOut(BaseModel):
    request_id: str
    candidates: list[CandidateOut]
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float] = Field(description="Seconds: queue, encode, denoise, total.")
    verdict: Literal["execute", "replan"] | None = Field(
        None,
        description="Judge (verify): execute if the best candidate reaches the threshold, else "
        "replan (null: not verified).",
    )
    best_candidate: int | None = Field(
        None, description="Judge (verify): the candidate of highest confidence (null: none)."
    )


class ImagineFramesEvent(BaseModel):
    event: Literal["frames"] = "frames"
    request_id: str
    chunk_index: int
    frames: TensorJSON = Field(description="uint8 (N, F, H, W, 3), raw.")


class ImagineResultEvent(ImagineOut):
    event: Literal["result"] = "result"


class ErrorEvent(BaseModel):
    event: Literal["error"] = "error"
    error: ErrorDetail


class SessionInfoOut(BaseModel):
    session_id: str
    group_id: str | None
    group_index: int
    instruction: str
    seed: int
    chunks_stepped: int
    max_chunks: int
    memory_bytes: int
    created_at: float
    last_active_at: float
    expires_at: float


class CreateSessionOut(BaseModel):
    request_id: str
    group_id: str | None
    sessions: list[SessionInfoOut]
    observation: TensorJSON = Field(description="uint8 (H, W, 3): the reconstructed start.")
    provenance: dict[str, str]
    timing: dict[str, float]


class StepResultOut(BaseModel):
    session_id: str
    frames: TensorJSON = Field(description="uint8 (F, H, W, 3); the last is the observation.")
    reward: float | None = Field(None, description="Judge (null: none).")
    done: bool | None = Field(None, description="Judge: terminated (null: unknown).")
    truncated: bool
    chunks_stepped: int


class StepOut(BaseModel):
    request_id: str
    results: list[StepResultOut]
    timing: dict[str, float]
    replayed: bool = Field(
        False, description="True: the stored result of a step already done; nothing advanced."
    )


class ReplayOut(BaseModel):
    request_id: str
    session_id: str
    frames: TensorJSON = Field(description="uint8 (T, H, W, 3): every replayed frame.")
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float]


class SessionsOut(BaseModel):
    sessions: list[SessionInfoOut]


class ClosedOut(BaseModel):
    closed_session_ids: list[str]


# ------------------------------------------------------------------- helpers


def _runtime(request: Request) -> SimulatorRuntime:
    return app_runtime(request, "simulator")


def _info(info: SessionInfo) -> SessionInfoOut:
    return SessionInfoOut(**vars(info))


def _round(timing: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in timing.items()}


def _error_line(exc: BaseException, request_id: str) -> str:
    if isinstance(exc, ServiceError):
        code, message = exc.code, exc.message
    else:
        log.error("imagine stream failed", exc_info=exc, extra={"request_id": request_id})
        code, message = "INTERNAL", internal_message(request_id)
    event = ErrorEvent(error=ErrorDetail(code=code, message=message, request_id=request_id))
    return event.model_dump_json() + "\n"


# -------------------------------------------------------------------- routes

_ERRORS = error_responses(400, 404, 422, 429, 503)


def _links(value: dict[str, str], *operations: str) -> dict[str, Any]:
    """OpenAPI links: where an id in a response (or request) can be used next."""
    return {op[0].upper() + op[1:]: {"operationId": op, "parameters": value} for op in operations}


_FIRST_SESSION = {"session_id": "$response.body#/sessions/0/session_id"}
_SESSION_PATH = {"session_id": "$request.path.session_id"}
_GROUP_PATH = {"group_id": "$request.path.group_id"}
# A created session (the first of a group) can be stepped, replayed, read and closed; a
# created group (group_id is null for a single session) stepped, read and closed.
_CREATED_LINKS = {
    **_links(_FIRST_SESSION, "stepSession", "replaySession", "getSession", "closeSession"),
    **_links({"group_id": "$response.body#/group_id"}, "stepGroup", "getGroup", "closeGroup"),
}


Runtime = Annotated[SimulatorRuntime, Depends(_runtime)]
router = APIRouter(prefix="/v1", tags=["simulator"], responses=_ERRORS)


@router.post(
    "/imagine",
    response_model=ImagineOut,
    summary="Imagine candidate futures",
    operation_id="imagine",
)
async def imagine(body: ImagineBody, rt: Runtime, request: Request) -> ImagineOut:
    rid = request_id_of(body.request_id)
    result = await until_disconnect(
        request,
        rt.imagine(
            body.inputs,
            body.horizon_chunks,
            body.seed,
            body.request_id,
            instruction=body.instruction,
            verify=body.verify,
            verify_threshold=body.verify_threshold,
            record_id=rid,
        ),
    )
    v = result.verification
    return ImagineOut(
        request_id=rid,
        candidates=[
            CandidateOut(
                index=i,
                frames=tensor_out(f, f"candidate {i}", body.frame_encoding),
                confidence=v.confidences[i] if v else None,
            )
            for i, f in enumerate(result.frames)
        ],
        seed=result.seed,
        provenance=result.provenance,
        timing=_round(result.timing),
        verdict=v.verdict if v else None,
        best_candidate=v.best_candidate if v else None,
    )


@router.post(
    "/imagine/stream",
    summary="Imagine, streaming frames chunk by chunk (NDJSON)",
    operation_id="imagineStream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON object per line: ImagineFramesEvent per chunk, then "
            "ImagineResultEvent (or ErrorEvent).",
            "content": {"application/x-ndjson": {}},
        }
    },
)
async def imagine_stream(body: ImagineBody, rt: Runtime) -> StreamingResponse:
    rid = request_id_of(body.request_id)
    # Validation and admission happen here, so they are real 4xx responses.
    stream = rt.open_imagine_stream(
        body.inputs, body.horizon_chunks, body.seed,
        instruction=body.instruction, verify=body.verify, verify_threshold=body.verify_threshold,
        record_id=rid,
    )

    async def lines() -> AsyncIterator[str]:
        try:
            async for event in stream.events():
                if isinstance(event, ImagineChunk):
                    yield (
                        ImagineFramesEvent(
                            request_id=rid,
                            chunk_index=event.chunk_index,
                            frames=tensor_out(event.frames, "frames"),
                        ).model_dump_json()
                        + "\n"
                    )
                    continue
                v = event.verification
                yield (
                    ImagineResultEvent(
                        request_id=rid,
                        candidates=[
                            CandidateOut(
                                index=i, frames=None, confidence=v.confidences[i] if v else None
                            )
                            for i in range(stream.n_candidates)
                        ],
                        seed=event.seed,
                        provenance=event.provenance,
                        timing=_round(event.timing),
                        verdict=v.verdict if v else None,
                        best_candidate=v.best_candidate if v else None,
                    ).model_dump_json()
                    + "\n"
                )
        except Exception as exc:  # the status line is sent; report in-band
            yield _error_line(exc, rid)

    # Disconnect cancels the generator (its queued rows are dropped); the
    # response then releases the admission reservation.
    return ClosingStream(lines(), stream.close)


# -------------------------------------------------------------- outcomes
@router.post(
    "/outcomes",
    response_model=OutcomeOut,
    summary="Report what really happened after executing an imagined candidate",
    operation_id="reportOutcome",
    responses=error_responses(409),
)
async def report_outcome(body: OutcomeBody, rt: Runtime) -> OutcomeOut:
    figures = await rt.report_outcome(
        Outcome(body.request_id, body.candidate, body._frames, body.success)
    )
    return outcome_out(figures)


# -------------------------------------------------------------- sessions
@router.post(
    "/sessions",
    response_model=CreateSessionOut,
    summary="Open a session or group",
    operation_id="createSession",
    responses={200: {"links": _CREATED_LINKS}},
)
async def create_session(
    body: CreateSessionBody, rt: Runtime, request: Request
) -> CreateSessionOut:
    res = await until_disconnect(
        request,
        rt.sessions.create(
            body._frames, body.instruction, body.seed, body.group_size, body.max_chunks
        ),
    )
    return CreateSessionOut(
        request_id=request_id_of(body.request_id),
        group_id=res.group_id,
        sessions=[_info(s) for s in res.sessions],
        observation=tensor_out(res.observation, "observation", body.frame_encoding),
        provenance=res.provenance,
        timing=_round(res.timing),
    )


def _step_out(outcome: Any, rid: str, encoding: FrameEncoding) -> StepOut:
    return StepOut(
        request_id=rid,
        results=[
            StepResultOut(
                session_id=r.session_id,
                frames=tensor_out(r.frames, "frames", encoding),
                reward=r.reward,
                done=r.done,
                truncated=r.truncated,
                chunks_stepped=r.chunks_stepped,
            )
            for r in outcome.results
        ],
        timing=_round(outcome.timing),
        replayed=outcome.replayed,
    )


@router.post(
    "/sessions/{session_id}/step",
    response_model=StepOut,
    summary="Step a session",
    operation_id="stepSession",
    responses={
        200: {"links": _links(_SESSION_PATH, "getSession", "replaySession")},
        **error_responses(409),
    },
)
async def step_session(
    session_id: str, body: StepSessionBody, rt: Runtime, request: Request
) -> StepOut:
    outcome = await until_disconnect(
        request,
        rt.sessions.step_session(session_id, body._actions, body.expected_chunks_stepped),
    )
    return _step_out(outcome, request_id_of(body.request_id), body.frame_encoding)


@router.post(
    "/sessions/{session_id}/replay",
    response_model=ReplayOut,
    summary="Replay a session's recorded actions under fresh noise",
    operation_id="replaySession",
)
async def replay_session(
    session_id: str,
    rt: Runtime,
    request: Request,
    body: Annotated[ReplayBody | None, Body()] = None,
) -> ReplayOut:
    body = body or ReplayBody()
    res = await until_disconnect(request, rt.sessions.replay(session_id, body.seed))
    return ReplayOut(
        request_id=request_id_of(body.request_id),
        session_id=res.session_id,
        frames=tensor_out(res.frames, "frames", body.frame_encoding),
        seed=res.seed,
        provenance=res.provenance,
        timing=_round(res.timing),
    )


@router.get(
    "/sessions/{session_id}",
    response_model=SessionInfoOut,
    summary="Session state",
    operation_id="getSession",
)
async def get_session(session_id: str, rt: Runtime) -> SessionInfoOut:
    return _info(rt.sessions.get(session_id))


@router.delete(
    "/sessions/{session_id}",
    response_model=ClosedOut,
    summary="Close a session",
    operation_id="closeSession",
)
async def close_session(session_id: str, rt: Runtime) -> ClosedOut:
    return ClosedOut(closed_session_ids=rt.sessions.close(session_id))


# ---------------------------------------------------------------- groups
@router.post(
    "/groups/{group_id}/step",
    response_model=StepOut,
    summary="Step a whole group",
    operation_id="stepGroup",
    responses={200: {"links": _links(_GROUP_PATH, "getGroup")}, **error_responses(409)},
)
async def step_group(group_id: str, body: StepGroupBody, rt: Runtime, request: Request) -> StepOut:
    outcome = await until_disconnect(
        request,
        rt.sessions.step_group(group_id, body._actions, body.expected_chunks_stepped),
    )
    return _step_out(outcome, request_id_of(body.request_id), body.frame_encoding)


@router.get(
    "/groups/{group_id}",
    response_model=SessionsOut,
    summary="Group state",
    operation_id="getGroup",
)
async def get_group(group_id: str, rt: Runtime) -> SessionsOut:
    return SessionsOut(sessions=[_info(s) for s in rt.sessions.get_group(group_id)])


@router.delete(
    "/groups/{group_id}",
    response_model=ClosedOut,
    summary="Close a group",
    operation_id="closeGroup",
)
async def close_group(group_id: str, rt: Runtime) -> ClosedOut:
    return ClosedOut(closed_session_ids=rt.sessions.close_group(group_id))


def simulator_router() -> APIRouter:
    """The simulator's API routes (module-level functions over the runtime dependency)."""
    return router


# ----------------------------------------------------------------------- app


def create_simulator_app(
    settings: SimulatorSettings,
    runtime: SimulatorRuntime,
    lifespan: Lifespan | None = None,
) -> FastAPI:
    """The simulator's FastAPI app over `runtime`.

    The default lifespan starts the runtime on startup and stops it on
    shutdown; `server` passes one that also runs the gRPC server.
    """

    def viewer_config() -> dict[str, Any]:
        engine = runtime.engine
        return {
            "panels": ["imagine", "runs"],
            "image_size": engine.image_size,
            "frame_stride": engine.frame_stride,
            # Actions per generated chunk: 8 (the policy's) or the model's most, whole frames.
            "chunk_length": max(
                engine.frame_stride,
                min(8, engine.max_chunk_length or 8) // engine.frame_stride * engine.frame_stride,
            ),
            "max_chunks": settings.max_chunks_per_request,
            "verify": runtime.judge is not None,
            "runs": settings.runs_dir is not None,
            "examples": example_frames(),
        }

    app = create_app(
        settings,
        service=SERVICE,
        version=VERSION,
        readiness=runtime.readiness,
        lifespan=lifespan or runtime_lifespan(runtime),
        viewer=viewer_config,
    )
    app.state.runtime = runtime
    app.include_router(simulator_router())
    app.include_router(runs_router(RunStore(settings.runs_dir)))
    return app
