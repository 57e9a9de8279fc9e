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
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from wmpo_client._common import (
    API_KEY_HEADER,
    DEFAULT_TIMEOUT_S,
    RETRY_HTTP_STATUSES,
    RetryPolicy,
    parse_retry_after,
)
from wmpo_client._driver import Exchange, run_sync
from wmpo_client.errors import SimulatorError
from wmpo_client.http import error_from_response
from wmpo_client.results import HealthStatus
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


def _transport_error(exc: httpx.HTTPError, url: str) -> SimulatorError:
    if isinstance(exc, httpx.TimeoutException):
        return SimulatorError("DEADLINE_EXCEEDED", f"no answer from the trainer at {url} in time ({exc!r})")
    return SimulatorError("UNAVAILABLE", f"cannot reach the trainer at {url} ({exc!r})")


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
        err = data.get("error") or {}
        raise SimulatorError(
            str(err.get("code") or "INTERNAL"),
            str(err.get("message") or "the stream failed"),
            err.get("request_id"),
            http_status=200,
        )
    raise SimulatorError("INTERNAL", f"unknown stream event {kind!r}")


class TrainerClient(JobMethods):
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
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(retries, backoff, max_backoff)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={API_KEY_HEADER: api_key} if api_key else {},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport or httpx.HTTPTransport(retries=retries),
        )

    def __enter__(self) -> TrainerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ---------------------------------------------------------- plumbing
    def _exchange(self, parse: Callable[[httpx.Response], T], idempotent: bool) -> Exchange[T]:
        attempt = 0
        while True:
            try:
                response: httpx.Response = yield None
            except httpx.TransportError as exc:
                # Lost in transit (e.g. a keep-alive connection the server closed as the request
                # left): re-sent only when a repeat cannot do anything twice.
                if idempotent and attempt < self.retry.retries:
                    yield self.retry.delay(attempt)
                    attempt += 1
                    continue
                raise _transport_error(exc, self.base_url) from exc
            except httpx.HTTPError as exc:
                raise _transport_error(exc, self.base_url) from exc
            if response.status_code in RETRY_HTTP_STATUSES and attempt < self.retry.retries:
                response.close()
                yield self.retry.delay(attempt, parse_retry_after(response.headers.get("retry-after")))
                attempt += 1
                continue
            if not response.is_success:
                response.read()  # a streamed response has not read its error body yet
                response.close()
                raise error_from_response(response)
            return parse(response)

    def _call(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> T:
        request = self._http.build_request(method, path, json=body, params=params)
        # Reads and cancel are idempotent, and so is a submit that names its job_id.
        idempotent = body is None or bool(body.get("job_id"))
        return run_sync(self._exchange(parse, idempotent), lambda: self._http.send(request))

    # ---------------------------------------------------------- jobs
    def submit(self, policy: str, *, job_id: str | None = None, **options: Any) -> TrainerJob:
        """Submit a GRPO job; returns it (queued). `policy` is a checkpoint directory on the
        trainer's filesystem; `options` are the job's fields (tasks, steps, groups_per_step,
        group_size, chunks, temperature, lr, epochs, minibatch, max_sampling_rounds, verify,
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
        request = self._http.build_request("GET", path, params={"after_step": after_step})
        response = run_sync(self._exchange(lambda r: r, True), lambda: self._http.send(request, stream=True))
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield event_from_json(json.loads(line))
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.base_url) from exc
        finally:
            response.close()

    # ---------------------------------------------------------- checkpoints
    def checkpoint(self, job_id: str) -> Checkpoint:
        """The job's current policy checkpoint files (NOT_FOUND before its first step)."""
        path = f"/v1/jobs/{_segment(job_id)}/checkpoint"
        return self._call("GET", path, lambda r: checkpoint_from_json(r.json()))

    def download_file(self, job_id: str, name: str) -> bytes:
        """One checkpoint file's raw bytes (model.safetensors, config.json, manifest.json)."""
        path = f"/v1/jobs/{_segment(job_id)}/checkpoint/{_segment(name)}"
        return self._call("GET", path, lambda r: r.content)

    def health(self) -> HealthStatus:
        """Readiness (no API key needed, no retries: "not ready" is an answer)."""
        try:
            response = self._http.get("/readyz")
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.base_url) from exc
        if response.status_code not in (200, 503):
            raise error_from_response(response)
        data = response.json() if response.content else {}
        return HealthStatus(ready=response.status_code == 200, reason=str(data.get("reason", "")))
