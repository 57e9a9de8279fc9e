"""Deployment settings of the trainer service (`WMPO_*` environment variables).

The shared knobs (host, ports, API keys, Redis, queue timing) come from
`ServiceSettings`; the fields here only make sense for a trainer. Default ports
(8002 / 50053) differ from the simulator's and the judge's so all three run
side by side on one host.

Where a job's imagination runs is the operator's choice, never the caller's: the
trainer sends its service keys along, so it only talks to services configured
here. `WMPO_SIMULATOR_URL` / `WMPO_JUDGE_URL` are the endpoint set named
"default"; `WMPO_ENDPOINTS` adds named sets (JSON, e.g.
`{"gpu-b": {"simulator_url": "http://sim-b:8000", "judge_url": "http://judge-b:8001"}}`)
that a job picks with `endpoint`. A job may also name replicas by URL, but only
URLs of a configured set. With no set at all, each job runs an embedded stack (the
simulator and judge in this process, from `WMPO_EMBEDDED_WORLD_MODEL` and
`WMPO_EMBEDDED_JUDGE`): handy in development, slow to start for many jobs.

A job's starting `policy` names a checkpoint under `WMPO_POLICY_ROOTS` (by
default the bundled `checkpoints` and the trainer's own data directory, where
earlier jobs' policies live), never an arbitrary server path.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.common.settings import ServiceSettings

DEFAULT_DIR = "runs/trainer"
DEFAULT_ENDPOINT = "default"


def check_simulator_urls(value: str) -> str:
    """One http(s) URL or several, comma-separated (simulator replicas); returned normalized."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("give at least one http(s) URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be http(s) URLs such as http://simulator:8000, got {url!r}")
    return ",".join(urls)


def check_judge_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL such as http://judge:8001, got {value!r}")
    return value


class Endpoints(BaseModel):
    """One set of services a job can run against: simulator replicas and their judge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    simulator_url: str = Field(description="Simulator replicas, comma-separated http(s) URLs.")
    judge_url: str

    @field_validator("simulator_url")
    @classmethod
    def _simulators(cls, value: str) -> str:
        return check_simulator_urls(value)

    @field_validator("judge_url")
    @classmethod
    def _judge(cls, value: str) -> str:
        return check_judge_url(value)

    @property
    def simulators(self) -> list[str]:
        return self.simulator_url.split(",")


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
    endpoints: dict[str, Endpoints] = Field(
        default_factory=dict,
        description="More endpoint sets jobs may choose by name (JSON object: name -> "
        "{simulator_url, judge_url}); WMPO_SIMULATOR_URL / WMPO_JUDGE_URL are the set "
        "named 'default'.",
    )
    policy_roots: str = Field(
        "",
        description="Directories a job's starting policy must lie under (comma-separated); "
        "empty: ./checkpoints and the trainer's data directory.",
    )
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
        return None if value is None else check_judge_url(value)

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, Endpoints]) -> dict[str, Endpoints]:
        for name in value:
            if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"endpoint names are 1 to 64 of [A-Za-z0-9_-], got {name!r}")
        return value

    @model_validator(mode="after")
    def _default_endpoints(self) -> TrainerSettings:
        if (self.simulator_url is None) != (self.judge_url is None):
            raise ValueError(
                "set both WMPO_SIMULATOR_URL and WMPO_JUDGE_URL (the 'default' endpoint set), "
                "or neither"
            )
        if self.simulator_url is not None and DEFAULT_ENDPOINT in self.endpoints:
            raise ValueError(
                f"WMPO_ENDPOINTS names a set {DEFAULT_ENDPOINT!r}, which WMPO_SIMULATOR_URL / "
                "WMPO_JUDGE_URL already define"
            )
        return self

    def endpoint_sets(self) -> dict[str, Endpoints]:
        """Every endpoint set jobs may use, by name ('default' first, when configured)."""
        sets = {}
        if self.simulator_url is not None and self.judge_url is not None:
            sets[DEFAULT_ENDPOINT] = Endpoints(simulator_url=self.simulator_url, judge_url=self.judge_url)
        return {**sets, **self.endpoints}

    def policy_directories(self) -> list[Path]:
        """The resolved roots a job's policy must lie under."""
        roots = [r.strip() for r in self.policy_roots.split(",") if r.strip()]
        roots = roots or ["checkpoints", self.trainer_dir]
        return [Path(r).expanduser().resolve() for r in roots]
