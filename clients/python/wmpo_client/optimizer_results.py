"""What the optimizer clients return.

The HTTP and gRPC optimizer clients (`wmpo_client.optimizer_http`,
`wmpo_client.optimizer_grpc`) return these same frozen dataclasses: a `Plan` (the
actions to execute, the imagined future under them, the objective per optimization step,
provenance and timing) and, while streaming, a `PlanProgress` per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wmpo_client.errors import SimulatorError


@dataclass(frozen=True)
class PlanProgress:
    """One optimization step of a streamed plan."""

    request_id: str
    step: int  # steps done (1-based)
    steps: int
    objective: float  # before this step's update
    distance: float  # the distance term alone
    batch_plans: int  # plans optimized in the same step call on the server


@dataclass(frozen=True)
class Plan:
    """A finished plan."""

    request_id: str
    actions: np.ndarray  # float32 (T, 4) in [-1, 1]: execute these
    prior_actions: np.ndarray  # float32 (T, 4): the trajectory VAE's decoding of the latent
    frames: np.ndarray  # uint8 (P, H, W, 3): the imagined future under the plan
    target_frames: np.ndarray | None  # uint8 (P, H, W, 3) when asked for
    objective: list[float]  # per optimization step, before its update
    distance: list[float]
    steps: int
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float]


@dataclass(frozen=True)
class PlannerInfo:
    """What a request to this deployment needs."""

    horizon: int  # actions per plan (T)
    image_size: int  # frames are image_size x image_size
    plan_frames: int  # frames of the imagined future (P)
    max_steps: int
    default_steps: int
    residual_idm: bool
    provenance: dict[str, str]


def plan_from_parts(fields: dict[str, Any], tensors: dict[str, np.ndarray | None]) -> Plan:
    """A `Plan` from a response's plain fields and its decoded tensors (either transport)."""
    return Plan(
        request_id=str(fields.get("request_id", "")),
        actions=tensors["actions"],  # type: ignore[arg-type]
        prior_actions=tensors["prior_actions"],  # type: ignore[arg-type]
        frames=tensors["frames"],  # type: ignore[arg-type]
        target_frames=tensors.get("target_frames"),
        objective=[float(x) for x in fields["objective"]],
        distance=[float(x) for x in fields["distance"]],
        steps=int(fields["steps"]),
        seed=int(fields["seed"]),
        provenance=dict(fields["provenance"]),
        timing=dict(fields["timing"]),
    )


def progress_from_json(obj: dict[str, Any]) -> PlanProgress:
    return PlanProgress(
        request_id=str(obj.get("request_id", "")),
        step=int(obj["step"]),
        steps=int(obj["steps"]),
        objective=float(obj["objective"]),
        distance=float(obj["distance"]),
        batch_plans=int(obj.get("batch_plans", 1)),
    )


def info_from_json(obj: dict[str, Any]) -> PlannerInfo:
    return PlannerInfo(
        horizon=int(obj["horizon"]),
        image_size=int(obj["image_size"]),
        plan_frames=int(obj["plan_frames"]),
        max_steps=int(obj["max_steps"]),
        default_steps=int(obj["default_steps"]),
        residual_idm=bool(obj["residual_idm"]),
        provenance=dict(obj["provenance"]),
    )


def unfinished_stream() -> SimulatorError:
    return SimulatorError("UNAVAILABLE", "the plan stream ended before its result")
