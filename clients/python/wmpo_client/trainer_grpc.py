"""gRPC client for the trainer service (`GrpcTrainerClient`), and the proto <-> JSON mapping.

Same methods and results as the HTTP client (`wmpo_client.trainer_http`), over
the generated `wmpo.v1.Trainer` stubs. The API key travels as `x-api-key`
metadata. Every failure is a `SimulatorError` whose `code` is the gRPC status
name (the code the HTTP API uses for the same error); RESOURCE_EXHAUSTED and
UNAVAILABLE are retried with backoff.

The functions below turn messages into the JSON form of the HTTP API and back;
the service uses them too, so both transports carry the same data. Metrics,
configs and evaluations travel as `google.protobuf.Struct`, which holds every
number as a double: integer keys (`trainer_results.INT_KEYS`) are made ints
again here.

Example:
    with GrpcTrainerClient("127.0.0.1:50053", api_key="...") as trainer:
        job = trainer.submit("checkpoints/policy-base", steps=2)
        final = trainer.wait(job.job_id)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from wmpo_client._common import DEFAULT_TIMEOUT_S
from wmpo_client._grpc import SyncGrpc, error_from_rpc
from wmpo_client.proto import trainer_pb2 as pb
from wmpo_client.proto import trainer_pb2_grpc
from wmpo_client.trainer_results import (
    INT_KEYS,
    JOB_STATES,
    SPEC_FIELDS,
    Checkpoint,
    CheckpointFile,
    JobEvent,
    JobMethods,
    TrainerJob,
    job_from_json,
    job_spec,
)

__all__ = ["GrpcTrainerClient"]

T = TypeVar("T")
DEFAULT_TARGET = "127.0.0.1:50053"
STATE_ENUM = {name: i + 1 for i, name in enumerate(JOB_STATES)}  # JOB_STATE_QUEUED = 1, ...
STATE_NAMES = {v: k for k, v in STATE_ENUM.items()}
_SECONDS = {"imagine_s": "imagine", "judge_s": "judge", "verify_s": "verify", "update_s": "update",
            "step_s": "step"}
# The spec's scalar fields: proto `optional`s, so an unset one takes the service's default.
_SPEC_SCALARS = tuple(f for f in SPEC_FIELDS if f not in ("tasks", "simulator_url", "judge_url"))


# ------------------------------------------------------------------ mapping


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _plain(msg: struct_pb2.Struct) -> dict[str, Any]:
    data = json_format.MessageToDict(msg)
    return {
        k: int(v) if k in INT_KEYS and isinstance(v, float) and v.is_integer() else v
        for k, v in data.items()
    }


def spec_message(spec: dict[str, Any]) -> pb.JobSpec:
    """A JSON job spec as a message (`simulator_url` may be a string or a list)."""
    urls = spec.get("simulator_url") or []
    return pb.JobSpec(
        job_id=spec.get("job_id") or "",
        policy=spec.get("policy", ""),
        tasks=list(spec.get("tasks") or []),
        simulator_urls=[urls] if isinstance(urls, str) else list(urls),
        judge_url=spec.get("judge_url") or "",
        **{k: spec[k] for k in _SPEC_SCALARS if spec.get(k) is not None},
    )


def spec_dict(msg: pb.JobSpec) -> dict[str, Any]:
    """A message as the JSON job spec: only what the client set (the service fills defaults)."""
    spec: dict[str, Any] = {"policy": msg.policy}
    if msg.job_id:
        spec["job_id"] = msg.job_id
    if msg.tasks:
        spec["tasks"] = list(msg.tasks)
    if msg.simulator_urls:
        spec["simulator_url"] = list(msg.simulator_urls)
    if msg.judge_url:
        spec["judge_url"] = msg.judge_url
    spec.update({k: getattr(msg, k) for k in _SPEC_SCALARS if msg.HasField(k)})
    return spec


def step_message(metrics: dict[str, Any]) -> pb.StepMetrics:
    seconds = metrics.get("seconds") or {}
    return pb.StepMetrics(
        step=int(metrics["step"]),
        reward=float(metrics.get("reward", 0.0)),
        imagined_success=float(metrics.get("imagined_success", 0.0)),
        dnv_flags=int(metrics.get("dnv_flags", 0)),
        groups_imagined=int(metrics.get("groups_imagined", 0)),
        groups_kept=int(metrics.get("groups_kept", 0)),
        groups_discarded=int(metrics.get("groups_discarded", 0)),
        kl_to_start=metrics.get("kl_to_start"),
        imagined_frames_per_s=float(metrics.get("imagined_frames_per_s", 0.0)),
        all=_struct(metrics),
        **{field: float(seconds.get(key, 0.0)) for field, key in _SECONDS.items()},
    )


def step_dict(msg: pb.StepMetrics) -> dict[str, Any]:
    metrics = _plain(msg.all)
    metrics["step"] = msg.step
    return metrics


def job_message(view: dict[str, Any]) -> pb.Job:
    """The JSON form of a job (the HTTP API's) as a message."""
    return pb.Job(
        job_id=view["job_id"],
        state=STATE_ENUM[view["state"]],
        step=view["step"],
        steps=view["steps"],
        config=_struct(view["config"]),
        created_at=view["created_at"],
        started_at=view.get("started_at"),
        finished_at=view.get("finished_at"),
        error=view.get("error") or "",
        cancel_requested=bool(view.get("cancel_requested")),
        attempts=view.get("attempts", 0),
        restarts=view.get("restarts", 0),
        worker=view.get("worker") or "",
        resumed_from_step=view.get("resumed_from_step", 0),
        metrics=[step_message(m) for m in view.get("metrics") or []],
        eval_before=_struct(view.get("eval_before")),
        eval_after=_struct(view.get("eval_after")),
    )


def job_dict(msg: pb.Job) -> dict[str, Any]:
    metrics = [step_dict(m) for m in msg.metrics]
    return {
        "job_id": msg.job_id,
        "state": STATE_NAMES.get(msg.state, "queued"),
        "step": msg.step,
        "steps": msg.steps,
        "config": _plain(msg.config),
        "created_at": msg.created_at,
        "started_at": msg.started_at if msg.HasField("started_at") else None,
        "finished_at": msg.finished_at if msg.HasField("finished_at") else None,
        "error": msg.error or None,
        "cancel_requested": msg.cancel_requested,
        "attempts": msg.attempts,
        "restarts": msg.restarts,
        "worker": msg.worker or None,
        "resumed_from_step": msg.resumed_from_step,
        "metrics": metrics,
        "last_metrics": metrics[-1] if metrics else None,
        "eval_before": _plain(msg.eval_before) if msg.HasField("eval_before") else None,
        "eval_after": _plain(msg.eval_after) if msg.HasField("eval_after") else None,
    }


def _job(msg: pb.Job) -> TrainerJob:
    return job_from_json(job_dict(msg))


# ------------------------------------------------------------------- client


class GrpcTrainerClient(SyncGrpc, JobMethods):
    """Synchronous gRPC client of the trainer service.

    Args:
        target: "host:port" (a "grpc://" prefix is accepted).
        api_key: sent as `x-api-key` metadata on every call.
        timeout: deadline of each unary call in seconds (None: none); streams have none.
        retries, backoff, max_backoff: see `RetryPolicy`.
        credentials: TLS channel credentials; None: plaintext.
        options: extra channel options.
    """

    stub_class = trainer_pb2_grpc.TrainerStub

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        api_key: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(target, api_key, timeout, retries, backoff, max_backoff, list(options))
        self._connect(credentials)

    def _stream(self, rpc: Callable[..., Iterator[Any]], request: Any) -> Iterator[Any]:
        try:
            yield from rpc(request, metadata=self._metadata())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    # ---------------------------------------------------------- jobs
    def submit(self, policy: str, *, job_id: str | None = None, **options: Any) -> TrainerJob:
        """See `TrainerClient.submit`."""
        spec = spec_message(job_spec(policy, job_id, options))
        return _job(self._unary(self._stub.SubmitJob, pb.SubmitJobRequest(spec=spec)).job)

    def get(self, job_id: str) -> TrainerJob:
        return _job(self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id)))

    def list(self, state: str | None = None, limit: int = 100) -> list[TrainerJob]:
        request = pb.ListJobsRequest(state=STATE_ENUM[state] if state else 0, limit=limit)
        return [_job(j) for j in self._unary(self._stub.ListJobs, request).jobs]

    def cancel(self, job_id: str) -> TrainerJob:
        return _job(self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id)))

    def stream(self, job_id: str, after_step: int = 0) -> Iterator[JobEvent]:
        """See `TrainerClient.stream`."""
        request = pb.WatchJobRequest(job_id=job_id, after_step=after_step)
        for msg in self._stream(self._stub.WatchJob, request):
            kind = msg.WhichOneof("event")
            if kind == "step":
                yield JobEvent("step", job_id, metrics=step_dict(msg.step))
            elif kind in ("state", "end"):
                yield JobEvent(kind, job_id, job=_job(getattr(msg, kind)))

    # ---------------------------------------------------------- checkpoints
    def checkpoint(self, job_id: str) -> Checkpoint:
        resp = self._unary(self._stub.GetCheckpoint, pb.GetCheckpointRequest(job_id=job_id))
        files = [CheckpointFile(f.name, f.size, f.sha256) for f in resp.files]
        return Checkpoint(resp.job_id, resp.step, files)

    def download_file(self, job_id: str, name: str) -> bytes:
        request = pb.DownloadCheckpointFileRequest(job_id=job_id, name=name)
        return b"".join(c.data for c in self._stream(self._stub.DownloadCheckpointFile, request))
