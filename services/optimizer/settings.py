"""Deployment settings of the action optimizer (`WMPO_*` environment variables).

The shared knobs (host, ports, API keys, batch wait, request size) come from
`ServiceSettings`; the fields here only make sense for the optimizer. The default ports
(8003 / 50054) differ from the simulator's, judge's and trainer's so all run on one host.

Checkpoints: `WMPO_GENERATOR` (the plan generator: a world model fine-tuned with plan
conditioning, `wmpo train world-model --trajectory-vae`), `WMPO_TRAJECTORY_VAE` (the
trajectory VAE it was trained with), optionally `WMPO_INVERSE_DYNAMICS` (the residual
inverse-dynamics model) and `WMPO_WORLD_MODEL` (optimize through this action-conditioned world
model: the decoded actions drive its DiT, the generator only imagines the instruction-only
target). `wmpo serve optimizer` defaults the first three to the repository's bundled
checkpoints (`checkpoints/plan-generator-tasks`, `trajectory-vae`, `inverse-dynamics`).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from services.common.settings import ServiceSettings

MAX_INSTRUCTION_CHARS = 1000


class OptimizerSettings(ServiceSettings):
    """`ServiceSettings` plus the optimizer's checkpoints and limits."""

    port: int = Field(8003, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int = Field(50054, ge=0, le=65535, description="gRPC port (0: any free port).")
    generator: str | None = Field(
        None, description="Plan-generator checkpoint directory (a plan-conditioned world model)."
    )
    trajectory_vae: str | None = Field(
        None, description="Trajectory-VAE checkpoint directory (the one the generator was trained on)."
    )
    inverse_dynamics: str | None = Field(
        None, description="Residual inverse-dynamics checkpoint; empty: actions are the VAE's decoding."
    )
    world_model: str | None = Field(
        None, description="Optimize through this world model's action conditioning (the decoded "
        "actions drive its DiT; it must share the generator's autoencoder); empty: through the "
        "generator's plan tokens (MVISTA-4D)."
    )
    max_batch_size: int = Field(
        16, ge=1, description="Plans per batched optimization step (one forward + backward)."
    )
    max_concurrent_plans: int = Field(
        32, ge=1, description="Plans admitted (preparing, optimizing or finishing) before 429."
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each imagined step in the backward pass instead of storing its "
        "activations: less memory for large batches of plans or a large generator, about 1.8x the "
        "compute per optimization step; the plans are the same."
    )
    # The closed-loop rows at one executed chunk per plan ran anchored (results/optimizer-closed-loop/).
    anchor_init: bool = Field(
        False, description="A plan from init_actions (+ActionInit) decodes to exactly them before "
        "its first step (the guess's VAE reconstruction error is added back to every decoding), so "
        "the steps move from the policy's chunk rather than from its round trip; off: MVISTA-4D's "
        "+ActionInit."
    )
    max_steps: int = Field(200, ge=1, le=1000, description="Most optimization steps one plan may ask for.")
    default_steps: int = Field(
        100, ge=1, le=1000, description="Steps of a plan that names none (MVISTA-4D: 100 from a random "
        "latent, 10-15 from an action-head guess)."
    )

    @field_validator("generator", "trajectory_vae", "inverse_dynamics", "world_model", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _steps(self) -> OptimizerSettings:
        if self.default_steps > self.max_steps:
            raise ValueError(f"default_steps={self.default_steps} must be at most max_steps={self.max_steps}")
        return self
