"""Deployment settings of a service, read from `WMPO_*` environment variables.

These are deployment knobs (where to listen, who may call, how much work to
admit), kept apart from model hyperparameters. Construction refuses insecure
configurations: without API keys a service only starts in explicit development
mode and only on a loopback address.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(ValueError):
    """The environment describes an invalid or insecure deployment."""


# Shorter keys are guessable; 16 characters of a random token is the floor.
MIN_API_KEY_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IPs; names other than localhost count as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServiceSettings(BaseSettings):
    """Settings shared by every service; `WMPO_<FIELD>` sets a field, e.g. WMPO_PORT=8000."""

    # hide_input_in_errors: a validation error must never echo an API key.
    model_config = SettingsConfigDict(
        env_prefix="WMPO_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    host: str = Field("127.0.0.1", description="Interface to bind; loopback unless told otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port).")
    grpc_grace_s: float = Field(
        5.0, ge=0, description="Time in-flight gRPC calls get to finish on shutdown."
    )
    # NoDecode: the env var is a plain comma-separated list, not JSON.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="Accepted API keys, comma-separated in WMPO_API_KEYS."
    )
    service_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="Keys other wmpo services call this one with (comma-separated in "
        "WMPO_SERVICE_API_KEYS), accepted besides WMPO_API_KEYS: a key the trainer sends the "
        "simulator and judge need not be a client key, so it opens nothing else.",
    )
    dev_mode: bool = Field(False, description="Allow running without API keys (loopback only).")
    api_docs: Literal["off", "keyed", "public"] = Field(
        "keyed",
        description="The OpenAPI schema and its pages (/openapi.json, /docs, /redoc): keyed "
        "(an API key needed, like every route but health), public (no key), or off (not served).",
    )
    redis_url: str | None = Field(
        None, description="Redis for queue mode; unset: in-process queues."
    )
    # Work queues (services.common.queues): with redis_url, Redis Streams shared by
    # replicas; without, the in-process queue with the same semantics.
    queue_worker: bool = Field(
        True,
        description="With a Redis URL: this replica also consumes queued work "
        "(false: an API-only replica that only enqueues).",
    )
    queue_prefix: str = Field(
        "wmpo", pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="Prefix of every queue key."
    )
    queue_consumer: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._:-]{0,128}$",
        description="Consumer name of this replica; empty: host-pid-random.",
    )
    queue_concurrency: int = Field(8, ge=1, description="Queued requests one worker runs at once.")
    queue_max_deliveries: int = Field(
        3, ge=1, description="Attempts at a request before it goes to the dead-letter stream."
    )
    queue_min_idle_s: float = Field(
        30.0, gt=0, description="A dead worker's request is reclaimed after this long."
    )
    queue_retry_delay_s: float = Field(
        1.0, ge=0, description="Wait before a failed request is delivered again."
    )
    queue_result_ttl_s: float = Field(
        600.0, gt=0, description="How long results stay stored for idempotent retries."
    )
    queue_timeout_s: float = Field(
        300.0, gt=0, description="How long a producer waits for a queued request's result."
    )
    queue_max_length: int = Field(
        10_000, ge=1, description="Requests queued or running before new ones get 429."
    )
    queue_drain_s: float = Field(
        30.0, ge=0, description="On shutdown, time a worker gets to finish what it has taken."
    )
    max_sessions: int = Field(256, ge=1, description="Open sessions admitted before 429.")
    max_batch_size: int = Field(16, ge=1, description="Rows per batched model call.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill up.")
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest accepted request body / gRPC message."
    )
    session_ttl_s: float = Field(
        600.0, gt=0, description="Idle time after which a session expires."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("api_keys", "service_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _refuse_insecure(self) -> ServiceSettings:
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(
                f"binding {self.host} without API keys would expose the service unauthenticated; "
                "set WMPO_API_KEYS or bind WMPO_HOST=127.0.0.1"
            )
        if not self.api_keys and not self.dev_mode:
            raise ValueError(
                "no API keys configured: set WMPO_API_KEYS (comma-separated) or, for local "
                "development only, WMPO_DEV_MODE=1 to run without authentication"
            )
        if self.service_api_keys and not self.api_keys:
            raise ValueError(
                "WMPO_SERVICE_API_KEYS without WMPO_API_KEYS would leave client routes open; "
                "set WMPO_API_KEYS too"
            )
        # Short keys are tolerated only where nobody else can reach the service: dev mode on
        # loopback. A dev-mode service bound to another interface is exposed like any other.
        if not (self.dev_mode and is_loopback(self.host)):
            for kind, keys in (("API", self.api_keys), ("service API", self.service_api_keys)):
                for i, key in enumerate(keys):
                    if len(key.get_secret_value()) < MIN_API_KEY_LENGTH:
                        raise ValueError(
                            f"{kind} key #{i + 1} is {len(key.get_secret_value())} characters; "
                            f"at least {MIN_API_KEY_LENGTH} required unless in dev mode on loopback"
                        )
        return self

    @model_validator(mode="after")
    def _queue_timing(self) -> ServiceSettings:
        if self.queue_retry_delay_s > self.queue_min_idle_s:
            raise ValueError(
                f"queue_retry_delay_s={self.queue_retry_delay_s} must be at most "
                f"queue_min_idle_s={self.queue_min_idle_s} (a retry is a reclaim after a delay)"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        """Keys configured means keys required, in dev mode too."""
        return bool(self.api_keys)

    def grpc_options(self) -> list[tuple[str, int]]:
        """gRPC server/channel options that apply the same size limit as HTTP."""
        return [
            ("grpc.max_receive_message_length", self.max_request_bytes),
            ("grpc.max_send_message_length", self.max_request_bytes),
        ]


S = TypeVar("S", bound=ServiceSettings)


def load_settings(settings_cls: type[S] = ServiceSettings, /, **overrides: object) -> S:  # type: ignore[assignment]
    """Read settings from the environment (overrides win), with one readable error.

    `settings_cls` is a service's subclass of ServiceSettings (default: the base).
    Raises SettingsError listing each bad setting as `WMPO_<NAME>: reason`.
    """
    try:
        return settings_cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            where = f"WMPO_{field.upper()}: " if field else ""
            problems.append(where + err["msg"].removeprefix("Value error, "))
        raise SettingsError("invalid service settings: " + "; ".join(problems)) from None
