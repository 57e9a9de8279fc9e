"""What the clients return: small frozen dataclasses holding numpy arrays.

The HTTP and gRPC clients return the same types, so code written against one
runs against the other. Frames are uint8 (..., H, W, 3); fields the judge
service fills are None unless asked for: confidence, verdict and
best_candidate by `imagine(..., verify=True)`; reward and done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Verdict = Literal["execute", "replan"]


@dataclass(frozen=True)
class CandidateResult:
    """One candidate of an imagine call."""

    index: int
    frames: np.ndarray  # (T, H, W, 3) uint8, in time order
    confidence: float | None = None  # judge: success probability


@dataclass(frozen=True)
class ImagineResult:
    """The imagined futures of every candidate, with what produced them."""

    request_id: str
    candidates: list[CandidateResult]
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float]
    verdict: Verdict | None = None
    best_candidate: int | None = None

    @property
    def frames(self) -> np.ndarray:
        """(N, T, H, W, 3): every candidate's frames stacked in request order."""
        return np.stack([c.frames for c in self.candidates])


@dataclass(frozen=True)
class OutcomeResult:
    """The simulator's comparison of a reported outcome with what it imagined (drift monitor)."""

    request_id: str
    candidate: int
    frames_compared: int
    psnr_db: list[float]  # per compared frame, real vs imagined
    perceptual: list[float] | None  # per compared frame (ae-lpips); None: not on that backend
    psnr_mean_db: float
    perceptual_mean: float | None
    confidence: float | None  # the judge's for this candidate (None: imagined without verify)
    success: bool | None
    world_model: str  # checkpoint hash that imagined the frames
    replayed: bool = False  # a repeat of an accepted report: its stored answer


@dataclass(frozen=True)
class ImagineChunk:
    """One chunk of a streamed imagine call, for every candidate, as soon as it is generated."""

    request_id: str
    chunk_index: int
    frames: np.ndarray  # (N, F, H, W, 3) uint8


ImagineEvent = ImagineChunk | ImagineResult


@dataclass(frozen=True)
class SessionInfo:
    """The state of one remote-simulator session."""

    session_id: str
    group_id: str | None
    group_index: int
    instruction: str
    seed: int
    chunks_stepped: int
    max_chunks: int
    memory_bytes: int
    created_at: float
    last_active_at: float
    expires_at: float


@dataclass(frozen=True)
class CreateSessionResult:
    """A newly opened session, or a group of G forked sessions."""

    request_id: str
    group_id: str | None
    sessions: list[SessionInfo]
    observation: np.ndarray  # (H, W, 3) uint8: the start frame as the model reconstructs it
    provenance: dict[str, str]
    timing: dict[str, float]

    @property
    def session_id(self) -> str:
        """The id of the first (for a single session: the only) session."""
        return self.sessions[0].session_id

    @property
    def session_ids(self) -> list[str]:
        return [s.session_id for s in self.sessions]


@dataclass(frozen=True)
class StepResult:
    """What one session produced for one step call."""

    session_id: str
    frames: np.ndarray  # (F, H, W, 3) uint8; the last is the new observation
    reward: float | None  # judge
    done: bool | None  # judge: the task is complete (gym "terminated")
    truncated: bool  # the session reached its chunk budget
    chunks_stepped: int

    @property
    def observation(self) -> np.ndarray:
        """(H, W, 3): the last generated frame."""
        return self.frames[-1]


@dataclass(frozen=True)
class StepOutcome:
    """The results of stepping a session (one result) or a group (one per member, in order)."""

    request_id: str
    results: list[StepResult]
    timing: dict[str, float] = field(default_factory=dict)
    replayed: bool = False  # the stored result of a step already done; nothing advanced

    @property
    def result(self) -> StepResult:
        """The only result (a single session's step)."""
        if len(self.results) != 1:
            raise ValueError(f"this step has {len(self.results)} results; use .results")
        return self.results[0]


@dataclass(frozen=True)
class ReplayResult:
    """A session's recorded actions replayed from its start under fresh noise."""

    request_id: str
    session_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8: every replayed frame
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float]


@dataclass(frozen=True)
class HealthStatus:
    """Whether the service can take work."""

    ready: bool
    reason: str = ""
    version: str | None = None  # gRPC reports it; HTTP readiness does not
