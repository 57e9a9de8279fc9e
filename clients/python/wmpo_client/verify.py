"""Verify before execute (RoboStereo's test-time policy augmentation) on the robot's side.

At every decision: sample N candidate chunks from your policy, ask the simulator to imagine
each and the judge to score it (``/v1/imagine`` with ``verify``), execute the best if the
judge's verdict is "execute", otherwise sample again, up to ``max_attempts``; after the last
attempt the best candidate seen so far is executed anyway (a robot must act), and the
decision says so (``verdict="fallback"``).

Works with any client whose ``imagine(frame, instruction, candidates, seed=..., verify=True)``
returns an ``ImagineResult`` (HTTP or gRPC, sync). No torch: the policy is any callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from wmpo_client.protocols import Simulator
from wmpo_client.results import ImagineResult

Propose = Callable[[np.ndarray, int], np.ndarray]  # (frame, n) -> (n, K, 4) candidate chunks


@dataclass(frozen=True)
class Decision:
    chunk: np.ndarray  # (K, 4) the chunk to execute
    confidence: float | None  # the judge's success probability for it
    verdict: Literal["execute", "fallback"]
    attempts: int  # imagine calls made
    seconds: float  # wall time of the decision (sampling, imagining, judging)
    confidences: list[list[float]] = field(default_factory=list)  # per attempt, per candidate
    # Where the executed chunk was imagined, for an outcome report (`report_outcome`): the
    # imagine call's request id, the chunk's candidate index, and how many frames were imagined.
    request_id: str = ""
    candidate: int = -1
    imagined_frames: int = 0


def verify_before_execute(client: Simulator, propose: Propose, frame: np.ndarray, instruction: str,
                          candidates: int = 4, max_attempts: int = 3, seed: int | None = None,
                          threshold: float | None = None) -> Decision:
    """Choose the chunk to execute from ``frame``; see the module docstring.

    ``threshold``: the judge score in [0, 1] the best candidate needs to be executed
    (``verify_threshold``); None: the judge's own threshold.
    """
    if candidates < 1 or max_attempts < 1:
        raise ValueError("candidates and max_attempts must be >= 1")
    options: dict[str, Any] = {} if threshold is None else {"verify_threshold": threshold}
    t0 = time.perf_counter()
    best_chunk, best_conf, best_at = None, -1.0, ("", -1, 0)
    history: list[list[float]] = []
    for attempt in range(1, max_attempts + 1):
        chunks = np.asarray(propose(frame, candidates), dtype=np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != candidates or chunks.shape[-1] != 4:
            raise ValueError(f"propose must return ({candidates}, K, 4) chunks, got {chunks.shape}")
        result: ImagineResult = client.imagine(
            frame, instruction, chunks, seed=None if seed is None else seed + attempt - 1, verify=True,
            **options)
        if result.best_candidate is None or result.verdict is None:
            raise RuntimeError("the simulator returned no verdict: is a judge configured for /v1/imagine?")
        confs = [c.confidence if c.confidence is not None else 0.0 for c in result.candidates]
        history.append(confs)
        i = result.best_candidate
        where = (result.request_id, i, len(result.candidates[i].frames))
        if confs[i] > best_conf:
            best_chunk, best_conf, best_at = chunks[i], confs[i], where
        if result.verdict == "execute":
            return Decision(chunks[i], confs[i], "execute", attempt, time.perf_counter() - t0, history,
                            *where)
    assert best_chunk is not None
    return Decision(best_chunk, best_conf, "fallback", max_attempts, time.perf_counter() - t0, history,
                    *best_at)
