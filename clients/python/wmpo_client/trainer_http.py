"""HTTP client for the trainer service: `TrainerClient` (sync).

Speaks the trainer's JSON API (`/v1/jobs...`, `/readyz`) with httpx and returns
the dataclasses of `wmpo_client.trainer_results`. Every failure is a
`SimulatorError` (the client package's one error type) carrying the server's
code, message and request id.

Retries follow `wmpo_client._common`: failed connections by httpx's transport,
429 and 503 with capped, jittered exponential backoff that honours
`Retry-After`. `submit` sends a job id (yours, or one made here), which makes
the submit idempotent: a retry returns the job the first attempt created.

Example:
    with TrainerClient("http://127.0.0.1:8002", api_key="...") as trainer:
        job = trainer.submit("checkpoints/policy-base", steps=2, group_size=4)
        for event in trainer.stream(job.job_id):
            print(event.kind, event.metrics or event.job.state)
        trainer.download_checkpoint(job.job_id, "runs/my-policy")

`wait` and `download_checkpoint` come from `trainer_results.JobMethods`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from wmpo_client._common import DEFAULT_TIMEOUT_S
from wmpo_client._http import Call, SyncHttp, error_from_event
from wmpo_client.errors import SimulatorError
from wmpo_client.trainer_results import (
    Checkpoint,
    JobEvent,
    JobMethods,
    TrainerJob,
    checkpoint_from_json,
    job_from_json,
    job_spec,
)

__all__ = ["TrainerClient"]

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8002"


def _segment(value: str) -> str:
    if not value:
        raise ValueError("a job id is required")
    return quote(value, safe="")


def event_from_json(data: dict[str, Any]) -> JobEvent:
    """One NDJSON line of the progress stream; an in-band error raises SimulatorError."""
    kind = data.get("event")
    if kind == "step":
        return JobEvent("step", data["job_id"], metrics=data["metrics"])
    if kind in ("state", "end"):
        job = job_from_json(data["job"])
        return JobEvent(kind, job.job_id, job=job)
    if kind == "error":
        raise error_from_event(data)
    raise SimulatorError("INTERNAL", f"unknown stream event {kind!r}")


class TrainerClient(SyncHttp, JobMethods):
    """Synchronous HTTP client of the trainer service (thread-safe, like httpx.Client).

    Args:
        base_url: the service, e.g. "http://127.0.0.1:8002".
        api_key: sent as `x-api-key` (every route but health needs one).
        timeout: seconds for each read/write of a call (a stream waits this long between
            events; set it above a job step's duration, or None for no limit).
        connect_timeout: seconds to establish a connection.
        retries: extra attempts on 429/503 and on failed connections (0: none).
        backoff, max_backoff: first wait and cap, in seconds, between retries.
        transport: an httpx transport instead of the default one (e.g. for tests).
    """

    service = "trainer"

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        http_timeout = httpx.Timeout(timeout, connect=connect_timeout)
        super().__init__(base_url, api_key, http_timeout, retries, backoff, max_backoff)
        self._open(transport, retries)

    def _call(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> T:
        # Reads and cancel are idempotent, and so is a submit that names its job_id: those
        # are re-sent when lost in transit (the default exchange's rule for idempotent calls).
        idempotent = body is None or bool(body.get("job_id"))
        return self._run(Call(method, path, body, idempotent=idempotent, params=params), parse)

    # ---------------------------------------------------------- jobs
    def submit(self, policy: str, *, job_id: str | None = None, **options: Any) -> TrainerJob:
        """Submit a GRPO job; returns it (queued). `policy` is a checkpoint directory on the
        trainer's filesystem; `options` are the job's fields (tasks, steps, groups_per_step,
        group_size, chunks, temperature, lr, epochs, minibatch, max_sampling_rounds, target_kl, verify,
        max_grad_norm, seed, eval_episodes, eval_workers, endpoint, simulator_url, judge_url,
        environment, real_budget). `endpoint` names one of the trainer's configured endpoint
        sets; `simulator_url` / `judge_url` may only name URLs the trainer is configured with."""
        body = job_spec(policy, job_id, options)
        return self._call("POST", "/v1/jobs", lambda r: job_from_json(r.json()), body)

    def get(self, job_id: str) -> TrainerJob:
        """The job with its per-step metrics."""
        return self._call("GET", f"/v1/jobs/{_segment(job_id)}", lambda r: job_from_json(r.json()))

    def list(self, state: str | None = None, limit: int = 100) -> list[TrainerJob]:
        """Jobs, newest first, optionally only those in `state` (without per-step metrics)."""
        params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
        return self._call(
            "GET", "/v1/jobs", lambda r: [job_from_json(j) for j in r.json()["jobs"]], params=params
        )

    def cancel(self, job_id: str) -> TrainerJob:
        """Ask the job to stop before its next step (a queued job is cancelled at once)."""
        path = f"/v1/jobs/{_segment(job_id)}/cancel"
        return self._call("POST", path, lambda r: job_from_json(r.json()))

    def stream(self, job_id: str, after_step: int = 0) -> Iterator[JobEvent]:
        """Progress events until the job ends: "step" per completed step (after `after_step`),
        "state" on a state change, and last "end" with the final job."""
        path = f"/v1/jobs/{_segment(job_id)}/events"
        call = Call("GET", path, idempotent=True, params={"after_step": after_step})
        with closing(self._lines(call)) as lines:
            for line in lines:
                if line.strip():
                    yield event_from_json(json.loads(line))

    # ---------------------------------------------------------- checkpoints
    def checkpoint(self, job_id: str) -> Checkpoint:
        """The job's current policy checkpoint files (NOT_FOUND before its first step)."""
        path = f"/v1/jobs/{_segment(job_id)}/checkpoint"
        return self._call("GET", path, lambda r: checkpoint_from_json(r.json()))

    def download_file(self, job_id: str, name: str) -> bytes:
        """One checkpoint file's raw bytes (model.safetensors, config.json, manifest.json)."""
        path = f"/v1/jobs/{_segment(job_id)}/checkpoint/{_segment(name)}"
        return self._call("GET", path, lambda r: r.content)
