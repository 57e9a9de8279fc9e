"""Deployment settings of the trainer service (`WMPO_*` environment variables).

The shared knobs (host, ports, API keys, Redis, queue timing) come from
`ServiceSettings`; the fields here only make sense for a trainer. Default ports
(8002 / 50053) differ from the simulator's and the judge's so all three run
side by side on one host.

Where a job's imagination runs: the job's own `simulator_url` / `judge_url`,
else `WMPO_SIMULATOR_URL` / `WMPO_JUDGE_URL` here, else an embedded stack (the
simulator and judge in this process, from `WMPO_EMBEDDED_WORLD_MODEL` and
`WMPO_EMBEDDED_JUDGE`), started per job: handy in development, slow to start
for many jobs.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from services.common.settings import ServiceSettings

DEFAULT_DIR = "runs/trainer"


def check_simulator_urls(value: str) -> str:
    """One http(s) URL or several, comma-separated (simulator replicas); returned normalized."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("give at least one http(s) URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be http(s) URLs such as http://simulator:8000, got {url!r}")
    return ",".join(urls)


class TrainerSettings(ServiceSettings):
    """`ServiceSettings` plus where jobs live and which services they use."""

    port: int = Field(8002, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int = Field(50053, ge=0, le=65535, description="gRPC port (0: any free port).")
    trainer_dir: str = Field(
        DEFAULT_DIR,
        description="Data directory: job records (without Redis) and every job's checkpoints "
        "(jobs/<id>/out). Replicas sharing a Redis must share it too (a shared volume), so a "
        "replica that takes over a job resumes from its last checkpoint.",
    )
    simulator_url: str | None = Field(
        None,
        description="Simulator replicas (comma-separated http(s) URLs) for jobs that name none.",
    )
    judge_url: str | None = Field(None, description="Judge service for jobs that name none.")
    simulator_api_key: SecretStr | None = Field(
        None, description="API key the trainer sends to the simulator."
    )
    judge_api_key: SecretStr | None = Field(
        None, description="API key the trainer sends to the judge."
    )
    embedded_world_model: str = Field(
        "checkpoints/world-model",
        description="World model of the per-job embedded stack (no simulator URL anywhere).",
    )
    embedded_judge: str = Field(
        "checkpoints/judge", description="Success classifier of the per-job embedded stack."
    )
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads for training (0: torch's default)."
    )
    job_max_restarts: int = Field(
        3,
        ge=0,
        description="Times a job is taken over after its worker died mid-job before it is "
        "marked failed (a crash loop); graceful shutdowns do not count.",
    )
    stream_poll_s: float = Field(
        0.5, gt=0, le=10, description="How often a progress stream looks for new steps."
    )
    max_listed_jobs: int = Field(1000, ge=1, description="Most jobs one list call returns.")
    grpc_grace_s: float = Field(
        5.0, ge=0, description="Time in-flight gRPC calls get to finish on shutdown."
    )

    @field_validator("simulator_url", "judge_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("simulator_url")
    @classmethod
    def _simulator_urls(cls, value: str | None) -> str | None:
        return None if value is None else check_simulator_urls(value)

    @field_validator("judge_url")
    @classmethod
    def _judge_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL such as http://judge:8001, got {value!r}")
        return value
