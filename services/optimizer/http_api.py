"""The optimizer's HTTP API (FastAPI): thin handlers over the shared `OptimizerRuntime`.

Routes (all need an API key; health, readiness and metrics come from `create_app`):

- `POST /v1/plan`: the current camera frame, the instruction, optionally target frames (a
  goal image or a clip of the future to reach; without them the target is the instruction-only
  future the generator imagines), optionally initial actions (+ActionInit, e.g. the policy's
  chunk), steps and seed -> the actions (T, 4) in [-1, 1], the VAE's prior actions, the
  imagined future under them (P frames), the objective and distance per step, provenance
  and timing;
- `POST /v1/plan/stream`: the same work as newline-delimited JSON: one
  `{"event": "progress", "step", "steps", "objective", ...}` line per optimization step as it
  happens, then one `{"event": "result", ...}` line with the plan (or `{"event": "error", ...}`
  if it fails after the response has started);
- `GET /v1/planner`: what a request needs (horizon T, frame size, plan frames, step limits)
  and the checkpoints' provenance.

Tensors use the JSON form of the wire codec (`wmpo_client.codec.TensorJSON`), frames raw or
PNG as `/v1/imagine` takes them. Request models decode them and check dtype, shape and
finiteness (422 naming the field); checks that need the model (frame size, horizon, target
length) and the limits (steps) are 400s from the runtime; a full optimizer is a 429 with
Retry-After. A client that disconnects cancels its plan (499). In queue mode (WMPO_REDIS_URL)
`/v1/plan` goes through the shared work queue (`plan_queue`); the stream always runs here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from wmpo_client.codec import TensorJSON, to_json

from services.common.app import Lifespan, create_app, runtime_lifespan
from services.common.errors import error_responses
from services.common.http_util import (
    ClosingStream,
    FrameEncoding,
    app_runtime,
    decode_tensor,
    error_line,
    request_id_of,
    tensor_out,
    until_disconnect,
)
from services.optimizer.engine import PlanOutcome, PlanProgress
from services.optimizer.runtime import (
    SEED_LIMIT,
    SERVICE,
    VERSION,
    OptimizerRuntime,
    check_frame,
    check_init_actions,
    check_target_frames,
)
from services.optimizer.settings import MAX_INSTRUCTION_CHARS, OptimizerSettings

# A working example for the OpenAPI page and schema-driven tests: a gray 64x64 frame as PNG.
_FRAME_EXAMPLE = to_json(np.full((64, 64, 3), 128, np.uint8), "frame", "png")


class PlanBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"frame": _FRAME_EXAMPLE, "instruction": "push the puck to the goal", "steps": 2, "seed": 0}
        ]},
    )
    frame: TensorJSON = Field(description="uint8 (H, W, 3) or (1, H, W, 3): the current camera frame.")
    instruction: str = Field(min_length=1, max_length=MAX_INSTRUCTION_CHARS,
                             description="The task in natural language.")
    target_frames: TensorJSON | None = Field(
        None, description="uint8 (n, H, W, 3): the future to reach, at the model's frame rate; n=1: a "
        "goal image (where the plan should end); null: the instruction-only future.")
    init_actions: TensorJSON | None = Field(
        None, description="float32 (T, 4) in [-1, 1]: an initial guess (+ActionInit, e.g. the policy's "
        "chunk); null: a seeded random latent.")
    steps: int | None = Field(None, ge=1, le=1000,
                              description="Optimization steps (at most the deployment's max); null: its default.")
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT,
                             description="Seed of the generator's noise and the initial latent; null: drawn.")
    frame_encoding: FrameEncoding = Field("raw", description="Encoding of the returned frames.")
    include_target: bool = Field(False, description="Also return the target future (decoded).")
    request_id: str = Field("", pattern=r"^[A-Za-z0-9._:-]{0,128}$",
                            description="Client-chosen id (at most 128 of [A-Za-z0-9._:-]); in queue mode "
                            "a retry with the same id gets the first plan. Empty: the server's.")

    _frame: np.ndarray = PrivateAttr()
    _target: np.ndarray | None = PrivateAttr(None)
    _init: np.ndarray | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _tensors(self) -> PlanBody:
        self._frame = decode_tensor(self.frame, "frame", "uint8", check_frame)
        if self.target_frames is not None:
            self._target = decode_tensor(self.target_frames, "target_frames", "uint8", check_target_frames)
        if self.init_actions is not None:
            self._init = decode_tensor(self.init_actions, "init_actions", "float32", check_init_actions)
        return self


class PlanOut(BaseModel):
    request_id: str
    actions: TensorJSON = Field(description="float32 (T, 4) in [-1, 1]: the actions to execute.")
    prior_actions: TensorJSON = Field(
        description="float32 (T, 4): the trajectory VAE's decoding of the optimized latent (equal to "
        "actions without a residual inverse-dynamics model).")
    frames: TensorJSON = Field(description="uint8 (P, H, W, 3): the imagined future under the plan.")
    target_frames: TensorJSON | None = Field(None, description="uint8 (P, H, W, 3) if include_target.")
    objective: list[float] = Field(description="The objective per step, before its update.")
    distance: list[float] = Field(description="The distance to the target per step (no L2 term).")
    steps: int
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float] = Field(description="Seconds: prepare, optimize, finish, total, ...")


class PlanProgressEvent(BaseModel):
    event: Literal["progress"] = "progress"
    request_id: str
    step: int = Field(description="Steps done (1-based).")
    steps: int
    objective: float
    distance: float
    batch_plans: int = Field(description="Plans optimized in the same step call.")


class PlanResultEvent(PlanOut):
    event: Literal["result"] = "result"


class PlannerInfoOut(BaseModel):
    horizon: int = Field(description="Actions per plan (T).")
    image_size: int = Field(description="Frames are image_size x image_size.")
    plan_frames: int = Field(description="Frames of the imagined future (P).")
    max_steps: int
    default_steps: int
    residual_idm: bool
    provenance: dict[str, str]


# ------------------------------------------------------------------- helpers


def _runtime(request: Request) -> OptimizerRuntime:
    return app_runtime(request, "optimizer")


def _fields(out: PlanOutcome, rid: str, body: PlanBody) -> dict[str, Any]:
    r = out.result
    return {
        "request_id": rid,
        "actions": tensor_out(np.asarray(r.actions, np.float32), "actions"),
        "prior_actions": tensor_out(np.asarray(r.prior_actions, np.float32), "prior_actions"),
        "frames": tensor_out(r.frames, "frames", body.frame_encoding),
        "target_frames": tensor_out(r.target_frames, "target_frames", body.frame_encoding)
        if body.include_target else None,
        "objective": r.objective,
        "distance": r.distance,
        "steps": out.steps,
        "seed": out.seed,
        "provenance": out.provenance,
        "timing": {k: round(v, 6) for k, v in out.timing.items()},
    }


def _options(body: PlanBody) -> dict[str, Any]:
    return {"target_frames": body._target, "init_actions": body._init, "steps": body.steps,
            "seed": body.seed}


# -------------------------------------------------------------------- routes

_ERRORS = error_responses(400, 422, 429, 503)
Runtime = Annotated[OptimizerRuntime, Depends(_runtime)]
router = APIRouter(prefix="/v1", tags=["optimizer"], responses=_ERRORS)


@router.post("/plan", response_model=PlanOut, summary="Plan actions toward a target future",
             operation_id="plan")
async def plan(body: PlanBody, rt: Runtime, request: Request) -> PlanOut:
    rid = request_id_of(body.request_id)
    out = await until_disconnect(
        request, rt.plan(body._frame, body.instruction, request_id=body.request_id, **_options(body)))
    return PlanOut(**_fields(out, rid, body))


@router.post(
    "/plan/stream",
    summary="Plan, streaming the objective per optimization step (NDJSON)",
    operation_id="planStream",
    response_class=StreamingResponse,
    responses={200: {
        "description": "One JSON object per line: PlanProgressEvent per step, then PlanResultEvent "
        "(or an error event).",
        "content": {"application/x-ndjson": {}},
    }},
)
async def plan_stream(body: PlanBody, rt: Runtime) -> StreamingResponse:
    rid = request_id_of(body.request_id)
    # Validation and admission happen here, so they are real 4xx responses.
    run = rt.open_plan(body._frame, body.instruction, **_options(body))

    async def lines() -> AsyncIterator[str]:
        try:
            async for event in run.events():
                if isinstance(event, PlanProgress):
                    yield PlanProgressEvent(
                        request_id=rid, step=event.step, steps=event.steps, objective=event.objective,
                        distance=event.distance, batch_plans=event.batch_plans,
                    ).model_dump_json() + "\n"
                else:
                    yield PlanResultEvent(**_fields(event, rid, body)).model_dump_json() + "\n"
        except Exception as exc:  # the status line is sent; report in-band
            yield error_line(exc, rid, "plan stream")

    # A disconnect cancels the generator; the response then cancels the plan.
    return ClosingStream(lines(), run.close)


@router.get("/planner", response_model=PlannerInfoOut, summary="The planner's horizon, sizes and limits",
            operation_id="plannerInfo")
async def planner_info(rt: Runtime) -> PlannerInfoOut:
    return PlannerInfoOut(**vars(rt.info()))


# ----------------------------------------------------------------------- app

def create_optimizer_app(settings: OptimizerSettings, runtime: OptimizerRuntime,
                         lifespan: Lifespan | None = None) -> FastAPI:
    """The optimizer's FastAPI app over `runtime`; the default lifespan starts and stops the
    runtime, `server` passes one that also runs the gRPC server."""

    app = create_app(settings, service=SERVICE, version=VERSION, readiness=runtime.readiness,
                     lifespan=lifespan or runtime_lifespan(runtime))
    app.state.runtime = runtime
    app.include_router(router)
    return app
