"""The trainer's gRPC API (grpc.aio): the `wmpo.v1.Trainer` service over the shared runtime.

Same runtime, same validation and the same error model as HTTP: the job spec
message becomes the HTTP API's JSON spec and goes through the same `JobSpec`
checks (so a bad field is INVALID_ARGUMENT naming it), and jobs go back as the
same JSON view turned into messages (`wmpo_client.trainer_grpc` holds the
mapping both ends use). The shared `grpc_error_boundary` turns errors into
status codes; the shared interceptor enforces API keys on every RPC but Health.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from wmpo_client.proto import simulator_pb2, trainer_pb2_grpc
from wmpo_client.proto import trainer_pb2 as pb
from wmpo_client.trainer_grpc import STATE_NAMES, job_message, spec_dict, step_message

from services.common.errors import InvalidArgument, grpc_error_boundary
from services.common.grpc_util import (
    create_server,
    health_response,
    observed,
)
from services.common.metrics import ServiceMetrics
from services.trainer.runtime import VERSION, TrainerRuntime, job_view
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobRecord

FILE_CHUNK_BYTES = 1024 * 1024


def _job(record: JobRecord, metrics: bool = True) -> pb.Job:
    view = job_view(record)
    if not metrics:
        view["metrics"] = []
    return job_message(view)


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, runtime: TrainerRuntime) -> None:
        self.runtime = runtime
        self.metrics: ServiceMetrics = runtime.metrics

    @observed
    @grpc_error_boundary
    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitJobResponse:
        record, created = await self.runtime.submit(spec_dict(request.spec))
        return pb.SubmitJobResponse(job=_job(record), created=created)

    @observed
    @grpc_error_boundary
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return _job(await self.runtime.get(request.job_id))

    @observed
    @grpc_error_boundary
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        if request.state and request.state not in STATE_NAMES:
            raise InvalidArgument(f"state: unknown JobState value {request.state}")
        records = await self.runtime.list(STATE_NAMES.get(request.state), request.limit or 100)
        return pb.ListJobsResponse(jobs=[_job(r) for r in records])

    @observed
    @grpc_error_boundary
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        return _job(await self.runtime.cancel(request.job_id))

    @observed
    @grpc_error_boundary
    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobEvent]:
        if request.after_step < 0:
            raise InvalidArgument(f"after_step must be >= 0, got {request.after_step}")
        async for kind, value in self.runtime.watch(request.job_id, request.after_step):
            if kind == "step":
                yield pb.JobEvent(step=step_message(value))
            elif kind == "state":
                yield pb.JobEvent(state=_job(value, metrics=False))
            else:
                yield pb.JobEvent(end=_job(value, metrics=False))

    @observed
    @grpc_error_boundary
    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.Checkpoint:
        files = await self.runtime.checkpoint_files(request.job_id)
        record = await self.runtime.get(request.job_id, history=False)
        return pb.Checkpoint(
            job_id=request.job_id,
            step=record.step,
            files=[pb.CheckpointFile(**f) for f in files],
        )

    @observed
    @grpc_error_boundary
    async def DownloadCheckpointFile(
        self, request: pb.DownloadCheckpointFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FileChunk]:
        path = await self.runtime.checkpoint_file(request.job_id, request.name)
        data = await asyncio.to_thread(path.read_bytes)  # one consistent version of the file
        for offset in range(0, max(len(data), 1), FILE_CHUNK_BYTES):
            chunk = data[offset : offset + FILE_CHUNK_BYTES]
            yield pb.FileChunk(data=chunk, offset=offset, size=len(data))

    @grpc_error_boundary
    async def Health(
        self, request: simulator_pb2.HealthRequest, context: grpc.aio.ServicerContext
    ) -> simulator_pb2.HealthResponse:
        return health_response(self.runtime.readiness(), VERSION)


def create_grpc_server(
    runtime: TrainerRuntime, settings: TrainerSettings
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) for `runtime` on settings.host:grpc_port; returns the
    server and the bound port (useful with grpc_port 0)."""
    servicer = TrainerServicer(runtime)
    return create_server(settings, lambda s: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, s))
