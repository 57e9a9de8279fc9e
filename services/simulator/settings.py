"""Deployment settings of the simulator service (`WMPO_*` environment variables).

The shared knobs (host, ports, API keys, batch size, session cap and TTL, ...)
come from `ServiceSettings`; the fields here only make sense for a simulator.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.settings import ServiceSettings

DEFAULT_CHECKPOINT = "checkpoints/world-model"


class SimulatorSettings(ServiceSettings):
    """`ServiceSettings` plus simulator limits; e.g. WMPO_MAX_QUEUED_ROLLOUTS=512."""

    checkpoint: str = Field(DEFAULT_CHECKPOINT, description="World-model checkpoint directory.")
    sampler_steps: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Denoising steps per AR step instead of the checkpoint's (fewer: faster, "
        "blurrier).",
    )
    action_guidance: float | None = Field(
        None,
        ge=0.0,
        le=10.0,
        description="Classifier-free guidance on the actions instead of the checkpoint's "
        "(1: off; above 1 the imagined motion follows the actions more closely at twice the "
        "denoiser work).",
    )
    max_queued_rollouts: int = Field(
        256,
        ge=1,
        description="Rollouts admitted (queued or running) before new work gets 429; "
        "also the most rollouts one request may ask for.",
    )
    max_chunks_per_request: int = Field(
        64, ge=1, description="Most action chunks one imagine request may roll out."
    )
    default_session_chunks: int = Field(
        64, ge=1, description="Chunk budget of a session that does not ask for one."
    )
    max_session_chunks: int = Field(
        1024, ge=1, description="Largest chunk budget a session may ask for."
    )
    max_response_bytes: int = Field(
        256 * 1024**2,
        ge=1024,
        description="Raw frame bytes one response may carry (also gRPC's send limit); larger "
        "requests are refused up front.",
    )
    max_session_memory_bytes: int = Field(
        1024**3, ge=1024, description="Memory all open sessions may hold together."
    )
    session_sweep_s: float = Field(
        10.0, gt=0, description="How often idle sessions are looked for and expired."
    )
    judge_url: str | None = Field(
        None,
        description="The judge service (http(s)://host:port) that /v1/imagine asks when a "
        "request sets verify; unset: verify is refused (FAILED_PRECONDITION).",
    )
    judge_api_key: SecretStr | None = Field(
        None, description="API key the simulator sends to the judge service."
    )

    backend: Literal["torch", "onnx", "triton"] = Field(
        "torch",
        description="Where the DiT runs: torch (in process), onnx (in process on ONNX Runtime) or "
        "triton (each denoising step one call to a Triton server, see triton_url); the "
        "autoencoder and the sampling loop stay in process.",
    )
    onnx_dir: str | None = Field(
        None,
        description="backend=onnx: a `wmpo export onnx` directory of the checkpoint to reuse "
        "(exported there at startup if empty); unset: exported once into a cache directory "
        "under the system temp directory, keyed by the checkpoint's hash.",
    )
    onnx_threads: int = Field(
        0, ge=0, le=256, description="backend=onnx: ONNX Runtime intra-op threads (0: its choice)."
    )
    triton_url: str | None = Field(
        None,
        description="backend=triton: the Triton server, host:port of its gRPC endpoint "
        "(grpc://host:port also works), or http://host:port for its HTTP endpoint.",
    )
    triton_model_version: str = Field(
        "",
        pattern=r"^[0-9]*$",
        description="backend=triton: the model version to call (empty: the newest ready version, "
        "found at startup and then pinned).",
    )
    triton_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="backend=triton: the most one Triton call may take; slower calls fail the "
        "request with 503 (UNAVAILABLE).",
    )
    triton_shm: Literal["auto", "on", "off"] = Field(
        "auto",
        description="backend=triton: send the context's keys/values through system shared memory "
        "(written once per autoregressive step, referenced by every denoising call) instead of in "
        "each request. on: required (startup fails if Triton cannot map this process's /dev/shm, "
        "i.e. it is not on this host with a shared /dev/shm); auto: on when Triton can, else off "
        "(checked at startup); off: never.",
    )
    triton_startup_timeout_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="backend=triton: how long startup waits for Triton's models to be ready "
        "(their checkpoint hash is checked then) before it gives up.",
    )
    runs_dir: str | None = Field(
        None,
        description="Directory of recorded runs (episode datasets, e.g. real data and its "
        "imagined replays) the rollout viewer may list and show, read-only (GET /v1/runs); "
        "unset: none.",
    )

    outcome_ttl_s: float = Field(
        900.0,
        gt=0,
        le=7 * 24 * 3600,
        description="How long what an imagine request imagined is kept for its outcome report "
        "(POST /v1/outcomes); later reports are 404. In Redis with WMPO_REDIS_URL (shared by "
        "replicas), else in memory.",
    )
    outcome_max_records: int = Field(
        256,
        ge=1,
        description="In memory: the most imagine requests kept for outcome reports (the oldest "
        "go first; a 4-candidate 64x64 request holds about 200 KB).",
    )
    drift_window: int = Field(
        200, ge=1, description="Outcomes in the rolling drift figures (wmpo_drift_*_rolling)."
    )
    drift_log: str | None = Field(
        None,
        description="Append every accepted outcome's figures to this JSONL file (read by "
        "`wmpo drift report --log`); unset: no log.",
    )

    @field_validator("judge_url", "onnx_dir", "triton_url", "runs_dir", "drift_log", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("judge_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL such as http://judge:8001, got {value!r}")
        return value

    @field_validator("triton_url")
    @classmethod
    def _triton_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        rest = value.split("://", 1)[1] if "://" in value else value
        scheme = value.split("://", 1)[0] if "://" in value else "grpc"
        if scheme not in ("grpc", "http") or not re.fullmatch(r"[^\s/:]+:\d{1,5}", rest):
            raise ValueError(
                f"must be host:port (gRPC), grpc://host:port or http://host:port, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _backend_needs(self) -> SimulatorSettings:
        if self.backend == "triton" and not self.triton_url:
            raise ValueError("backend=triton needs WMPO_TRITON_URL (host:port of Triton's gRPC endpoint)")
        return self
