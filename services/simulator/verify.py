"""Verify before execute: `/v1/imagine` with `verify` asks the judge service about each candidate.

The simulator reaches the judge only through its client (`wmpo_client.judge_http.
AsyncJudgeClient`, HTTP), at `WMPO_JUDGE_URL` with `WMPO_JUDGE_API_KEY`. Each
candidate's video is the request's start frame followed by every frame imagined
for it, uint8 (1 + T, H, W, 3), judged at the world model's frame stride with the
request's instruction; the N candidates are judged concurrently, so the judge
batches them into one classifier pass. The answer: per candidate the judge's
success score (`confidence`), the best candidate (argmax, the first on ties) and
the verdict, "execute" if the judge calls the best one a success (score >= the
request's `verify_threshold`, else the judge's own threshold), otherwise "replan";
the judge's provenance comes back prefixed `judge_`.

Errors: verify without a configured judge is FAILED_PRECONDITION (HTTP 400); a
judge that cannot be reached, is busy, times out or fails is UNAVAILABLE (503,
"judge unavailable: ..."); a judge that refuses the videos themselves (e.g. a
classifier of another frame size than the world model's) is FAILED_PRECONDITION
(400, "the judge refused ..."): a deployment mismatch that retrying cannot fix.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from wmpo_client.errors import SimulatorError
from wmpo_client.judge_http import AsyncJudgeClient
from wmpo_client.judge_results import JudgeResult

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable

NO_JUDGE = "verify needs a judge: set WMPO_JUDGE_URL"
# Judge answers that say the request itself cannot be judged: retrying will not help.
_REFUSED = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "PAYLOAD_TOO_LARGE"})

VerdictName = Literal["execute", "replan"]


@dataclass(frozen=True)
class Verification:
    """The judge's answer about the candidates of one imagine request."""

    confidences: list[float]  # per candidate: the judge's success score in [0, 1]
    best_candidate: int  # argmax of confidences
    verdict: VerdictName  # "execute": the judge calls the best candidate a success
    threshold: float  # the decision threshold the judge applied
    provenance: dict[str, str]  # the judge's, keys prefixed "judge_"
    seconds: float  # wall time of the judge calls


def check_verify_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise InvalidArgument(f"verify_threshold must be a number in [0, 1], got {threshold}")
    return float(threshold)


def best_of(confidences: list[float]) -> int:
    return int(np.argmax(np.asarray(confidences, dtype=np.float64)))


class ImagineJudge:
    """The judge client of one simulator runtime; `start()` in the serving loop, `close()` after."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.url = url
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._client: AsyncJudgeClient | None = None

    def start(self) -> None:
        # Created here, not in __init__: the httpx pool belongs to the loop that serves.
        if self._client is None:
            self._client = AsyncJudgeClient(
                self.url, self._api_key, timeout=self._timeout_s, retries=2
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def verify(
        self,
        start_frame: np.ndarray,
        frames: np.ndarray,
        instruction: str,
        frame_stride: int,
        threshold: float | None = None,
    ) -> Verification:
        """Judge every candidate: `start_frame` (1, H, W, 3), `frames` (N, T, H, W, 3) uint8."""
        client = self._client
        if client is None:
            raise Unavailable("judge unavailable: the simulator is not running")
        started = time.perf_counter()
        videos = [np.concatenate([start_frame, f], axis=0) for f in frames]
        outcomes = await asyncio.gather(
            *(
                client.judge(video, instruction, frame_stride=frame_stride, threshold=threshold)
                for video in videos
            ),
            return_exceptions=True,
        )
        results: list[JudgeResult] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise _judge_error(outcome)
            results.append(outcome)
        confidences = [float(r.verdict.score) for r in results]
        best = best_of(confidences)
        verdict: VerdictName = "execute" if results[best].verdict.success else "replan"
        applied = float(results[best].verdict.threshold)
        # The judge's record (kind, checkpoint hash, the threshold it applied, ...), prefixed.
        provenance = {_prefixed(k): v for k, v in results[0].provenance.items()}
        return Verification(
            confidences=confidences,
            best_candidate=best,
            verdict=verdict,
            threshold=applied,
            provenance=provenance,
            seconds=time.perf_counter() - started,
        )


def _prefixed(key: str) -> str:
    return key if key == "judge" or key.startswith("judge_") else f"judge_{key}"


def _judge_error(exc: BaseException) -> Exception:
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, SimulatorError):
        if exc.code in _REFUSED:
            return FailedPrecondition(
                f"the judge refused the imagined videos ({exc.code}: {exc.message}); check that "
                "the judge's classifier fits this world model"
            )
        hint = " (check WMPO_JUDGE_API_KEY)" if exc.code == "UNAUTHENTICATED" else ""
        return Unavailable(f"judge unavailable: {exc.code}: {exc.message}{hint}")
    return Unavailable(f"judge unavailable: {type(exc).__name__}: {exc}")
