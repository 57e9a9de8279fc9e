"""Deployment settings of the judge service (`WMPO_*` environment variables).

The shared knobs (host, ports, API keys, batch size and wait, request size,
queue mode) come from `ServiceSettings`; the fields here only make sense for a
judge. The default ports differ from the simulator's (8001 / 50052) so both
run side by side on one host.

The VLM endpoint is optional: without `WMPO_VLM_URL`, requests of kind `vlm`
get FAILED_PRECONDITION (HTTP 400) "no VLM endpoint configured". An empty
`WMPO_CHECKPOINT` runs without the classifier (a VLM-only judge).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.settings import ServiceSettings

DEFAULT_CHECKPOINT = "checkpoints/judge"
MAX_INSTRUCTION_CHARS = 1000


class JudgeSettings(ServiceSettings):
    """`ServiceSettings` plus judge limits and the VLM endpoint; e.g. WMPO_VLM_URL=http://vllm:8000/v1."""

    port: int = Field(8001, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int = Field(50052, ge=0, le=65535, description="gRPC port (0: any free port).")
    max_batch_size: int = Field(
        32, ge=1, description="Videos per batched classifier call (a request is never split)."
    )
    max_batch_clips: int = Field(
        4096,
        ge=1,
        description="Clips per batched classifier call (memory: each clip holds L frames).",
    )
    checkpoint: str | None = Field(
        DEFAULT_CHECKPOINT,
        description="Success-classifier checkpoint directory; empty: no classifier (VLM only).",
    )
    max_queued_videos: int = Field(
        256,
        ge=1,
        description="Videos admitted (queued or being judged) before new work gets 429; also "
        "the most videos (rollouts + replays) one request may carry.",
    )
    max_group_size: int = Field(64, ge=1, description="Most rollouts in one group request.")
    max_video_frames: int = Field(
        1024, ge=1, description="Most frames in one video (bounds the clips it makes)."
    )
    vlm_url: str | None = Field(
        None, description="OpenAI-compatible endpoint of the VLM judge, e.g. http://vllm:8000/v1."
    )
    vlm_model: str = Field("Qwen/Qwen3-VL-8B-Instruct", description="Model name sent to the VLM.")
    vlm_api_key: SecretStr | None = Field(None, description="Bearer token for the VLM endpoint.")
    vlm_samples: int = Field(5, ge=1, le=32, description="Answers drawn per video (n).")
    vlm_votes_needed: int = Field(4, ge=1, description="Success votes for a success verdict.")
    vlm_timeout_s: float = Field(60.0, gt=0, description="Timeout of one VLM call.")
    vlm_concurrency: int = Field(8, ge=1, description="VLM calls in flight at once.")

    @field_validator("checkpoint", "vlm_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vlm_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL such as http://vllm:8000/v1, got {value!r}")
        return value

    @model_validator(mode="after")
    def _votes(self) -> JudgeSettings:
        if self.vlm_votes_needed > self.vlm_samples:
            raise ValueError(
                f"vlm_votes_needed={self.vlm_votes_needed} must be at most "
                f"vlm_samples={self.vlm_samples}"
            )
        return self
