"""Pieces both transports share: size limits, input preparation, the retry policy.

Retries: a small loop, not a library. httpx's transport `retries=` only
retries failed connections (the request never left, so that is always safe,
and the HTTP clients use it for that); it never retries on a status. gRPC's
built-in retry policy (service config) retries on status codes but cannot
tell the service's RESOURCE_EXHAUSTED "busy" from grpcio's own "message
larger than max", which must not be re-sent. A retry library (tenacity,
stamina) would be one more dependency on robot computers for about twenty
lines. The policy retries only the service's refusals that come before any
work is done: 429 / RESOURCE_EXHAUSTED (admission limit, session cap) and
503 / UNAVAILABLE (starting up, shutting down, no connection), with capped
exponential backoff and jitter, honouring an HTTP `Retry-After` header.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from wmpo_client.errors import SimulatorError

# The service's defaults (WMPO_MAX_REQUEST_BYTES, WMPO_MAX_RESPONSE_BYTES):
# responses carry frames and may be larger than requests.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024**2
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024**2
DEFAULT_TIMEOUT_S = 60.0
API_KEY_HEADER = "x-api-key"
REQUEST_ID_HEADER = "x-request-id"
FrameEncoding = Literal["raw", "png"]
RETRY_HTTP_STATUSES = frozenset({429, 503})
RETRY_CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before re-sending a refused request.

    `retries` is the number of extra attempts (0: never retry). The wait before
    retry n (0-based) is `backoff * 2**n`, capped at `max_backoff`, times a
    random factor in [0.5, 1] so that many clients refused together do not
    come back together.
    """

    retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(
                f"backoff and max_backoff must be >= 0, got {self.backoff}, {self.max_backoff}"
            )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` (0-based); a server's Retry-After wins."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_backoff)
        base = min(self.backoff * 2**attempt, self.max_backoff)
        return base * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None) -> float | None:
    """The seconds of an HTTP Retry-After header (the date form is ignored)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def frame_array(frame: Any, name: str = "frame") -> np.ndarray:
    """A start frame as sent: uint8 (H, W, 3) or (1, H, W, 3), never cast.

    Casting would hide mistakes (a float image in [0, 1] becomes black), so a
    non-uint8 frame is refused here with what to do about it.
    """
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{name}: frames must be uint8 RGB (H, W, 3), got dtype {array.dtype.name}; "
            "convert with (x * 255).round().astype(np.uint8) for images in [0, 1]"
        )
    return np.ascontiguousarray(array)


def outcome_frames(frames: Any, name: str = "frames") -> np.ndarray:
    """The real frames of an outcome report: uint8 (T, H, W, 3); one (H, W, 3) frame is T=1."""
    array = frame_array(frames, name)
    return array[None] if array.ndim == 3 else array


def action_array(actions: Any, name: str = "actions") -> np.ndarray:
    """Actions as float32 (lists and float64 arrays are converted; the server checks shapes)."""
    array = np.asarray(actions)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name}: actions must be numbers, got dtype {array.dtype.name}")
    return np.ascontiguousarray(array, dtype=np.float32)


def check_expected_chunks(value: int) -> int:
    """`expected_chunks_stepped` as sent: a non-negative int32 (bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"expected_chunks_stepped must be an int, got {type(value).__name__}")
    if not 0 <= int(value) < 2**31:
        raise ValueError(f"expected_chunks_stepped must be in [0, 2**31), got {value}")
    return int(value)


def check_request_id(request_id: str | None) -> str:
    """'' for none; the server validates the charset and length."""
    return request_id or ""


def check_frame_encoding(value: str) -> FrameEncoding:
    if value not in ("raw", "png"):
        raise ValueError(f"frame_encoding must be 'raw' or 'png', got {value!r}")
    return value  # type: ignore[return-value]


class ChunkStream:
    """The frame chunks of an imagine stream so far: its result carries them all."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []  # (N, F, H, W, 3) each
        self.done = False

    def add(self, frames: np.ndarray) -> np.ndarray:
        self.chunks.append(frames)
        return frames

    def result_frames(self) -> list[np.ndarray]:
        """Every candidate's (T, H, W, 3) frames, at the stream's result."""
        self.done = True
        if not self.chunks:
            raise SimulatorError("INTERNAL", "the stream ended without frames")
        return list(np.concatenate(self.chunks, axis=1))  # (N, T, H, W, 3)

    def check_finished(self) -> None:
        if not self.done:
            raise SimulatorError("UNAVAILABLE", "the stream ended before its result")
