"""The trainer's HTTP API (FastAPI): thin handlers over the shared `TrainerRuntime`.

Routes (all need an API key; health, readiness and metrics come from `create_app`):

- `POST /v1/jobs`: submit a GRPO job (`JobSpec`) -> 201 and the job, or 200 and
  the existing job when its `job_id` was submitted before with the same spec;
- `GET /v1/jobs?state=&limit=`: jobs, newest first (without per-step metrics);
- `GET /v1/jobs/{job_id}`: state, step k of n, per-step metrics, evaluations;
- `GET /v1/jobs/{job_id}/events?after_step=`: NDJSON progress stream, one line
  per event: `{"event": "step", "job_id", "metrics"}` for each completed step,
  `{"event": "state", "job"}` on a state change, and last `{"event": "end",
  "job"}` when the job has ended (or `{"event": "error", "error"}`);
- `POST /v1/jobs/{job_id}/cancel`: stop the job before its next step;
- `GET /v1/jobs/{job_id}/checkpoint`: the policy checkpoint's files (name, size,
  sha256) and the step it holds; `GET /v1/jobs/{job_id}/checkpoint/{name}`: one
  file's raw bytes (model.safetensors, config.json, manifest.json).
- the rollout viewer page at `/viewer` (`services.common.viewer`): a job's progress and
  per-step metrics as live plots, from the events stream above.

A malformed job is a 422 naming the field (types, ranges, unknown fields); a
well-formed one the trainer cannot run (unknown task, no policy checkpoint at
that path, only one of simulator_url / judge_url) a 400 naming it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from services.common.app import Lifespan, create_app, runtime_lifespan
from services.common.errors import error_responses
from services.common.http_util import app_runtime, error_line
from services.common.logging import current_request_id
from services.trainer.runtime import SERVICE, VERSION, JobSpec, TrainerRuntime, job_view
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobRecord

StateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobOut(BaseModel):
    job_id: str
    state: StateName
    step: int = Field(description="Steps completed (each one checkpointed).")
    steps: int
    config: dict[str, Any] = Field(description="The job as it runs (defaults and URLs resolved).")
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None = Field(description="Why the job failed.")
    cancel_requested: bool
    attempts: int = Field(description="Times a worker started or resumed the job.")
    restarts: int = Field(description="Takeovers after a worker died mid-job.")
    worker: str | None
    resumed_from_step: int = Field(description="Checkpointed steps the last attempt started from.")
    last_metrics: dict[str, Any] | None
    metrics: list[dict[str, Any]] = Field(
        description="Per-step metrics: reward, imagined_success, dnv_flags, groups kept and "
        "discarded, kl_to_start, seconds (imagine/judge/update/step), imagined_frames_per_s, ... "
        "(empty in job lists)."
    )
    eval_before: dict[str, Any] | None = Field(description="Real-simulator evaluation, if asked.")
    eval_after: dict[str, Any] | None


class JobListOut(BaseModel):
    jobs: list[JobOut]


class CheckpointFileOut(BaseModel):
    name: str
    size: int
    sha256: str


class CheckpointOut(BaseModel):
    job_id: str
    step: int = Field(description="The job's completed steps when listed (files hold the last).")
    files: list[CheckpointFileOut]


def _out(record: JobRecord) -> JobOut:
    return JobOut.model_validate(job_view(record))


def _runtime(request: Request) -> TrainerRuntime:
    return app_runtime(request, "trainer")


_ERRORS = error_responses(400, 404, 409, 422, 429, 503)


Runtime = Annotated[TrainerRuntime, Depends(_runtime)]
router = APIRouter(prefix="/v1", tags=["trainer"], responses=_ERRORS)


@router.post(
    "/jobs",
    response_model=JobOut,
    status_code=201,
    summary="Submit a GRPO job (idempotent by job_id)",
    responses={200: {"model": JobOut, "description": "The job_id existed: that job."}},
)
async def submit(body: JobSpec, rt: Runtime, response: Response) -> JobOut:
    record, created = await rt.submit(body)
    if not created:
        response.status_code = 200
    return _out(record)


@router.get("/jobs", response_model=JobListOut, summary="List jobs, newest first")
async def list_jobs(
    rt: Runtime,
    state: Annotated[StateName | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
) -> JobListOut:
    records = await rt.list(state, limit)
    return JobListOut(jobs=[_out(r) for r in records])


@router.get("/jobs/{job_id}", response_model=JobOut, summary="A job: state, steps, metrics")
async def get_job(job_id: str, rt: Runtime) -> JobOut:
    return _out(await rt.get(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a job")
async def cancel(job_id: str, rt: Runtime) -> JobOut:
    return _out(await rt.cancel(job_id))


@router.get(
    "/jobs/{job_id}/events",
    summary="Progress stream (NDJSON) until the job ends",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON object per line: step, state, and last end (or error).",
            "content": {"application/x-ndjson": {}},
        }
    },
)
async def events(
    job_id: str,
    rt: Runtime,
    after_step: Annotated[int, Query(ge=0, description="Only steps after this one.")] = 0,
) -> StreamingResponse:
    await rt.get(job_id, history=False)  # a 404 is a real response, not an in-band error
    rid = current_request_id()

    async def lines() -> AsyncIterator[str]:
        try:
            async for kind, value in rt.watch(job_id, after_step):
                if kind == "step":
                    yield _line({"event": "step", "job_id": job_id, "metrics": value})
                else:
                    job = _out(value).model_dump()
                    job["metrics"] = []  # steps were sent as their own events
                    yield _line({"event": kind, "job": job})
        except Exception as exc:
            yield error_line(exc, rid, "trainer progress stream")

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get(
    "/jobs/{job_id}/checkpoint",
    response_model=CheckpointOut,
    summary="The job's policy checkpoint files",
)
async def checkpoint(job_id: str, rt: Runtime) -> CheckpointOut:
    files = await rt.checkpoint_files(job_id)
    record = await rt.get(job_id, history=False)
    return CheckpointOut(
        job_id=job_id, step=record.step, files=[CheckpointFileOut(**f) for f in files]
    )


@router.get(
    "/jobs/{job_id}/checkpoint/{name}",
    summary="Download one checkpoint file (raw bytes)",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def checkpoint_file(job_id: str, name: str, rt: Runtime) -> FileResponse:
    path = await rt.checkpoint_file(job_id, name)
    # The file is replaced atomically after each step; an open file keeps its old bytes.
    return FileResponse(path, media_type="application/octet-stream", filename=name)


def trainer_router() -> APIRouter:
    """The trainer's API routes (module-level functions over the runtime dependency)."""
    return router


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"


def create_trainer_app(
    settings: TrainerSettings, runtime: TrainerRuntime, lifespan: Lifespan | None = None
) -> FastAPI:
    """The trainer's FastAPI app over `runtime` (the default lifespan starts and stops it;
    `server` passes one that also runs the gRPC server)."""

    app = create_app(
        settings,
        service=SERVICE,
        version=VERSION,
        readiness=runtime.readiness,
        lifespan=lifespan or runtime_lifespan(runtime),
        viewer=lambda: {"panels": ["jobs"]},
    )
    app.state.runtime = runtime
    app.include_router(trainer_router())
    return app
