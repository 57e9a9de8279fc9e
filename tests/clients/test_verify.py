"""The clients' verify option and `wmpo_client.verify.verify_before_execute`, against the real
embedded stack (bundled world model and judge), over HTTP and gRPC, sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from wmpo_client import (
    AsyncGrpcSimulatorClient,
    AsyncSimulatorClient,
    GrpcSimulatorClient,
    SimulatorClient,
    connect,
)
from wmpo_client.verify import Decision, verify_before_execute

from services.embedded import EmbeddedStack, embedded_stack

WORLD_MODEL = Path(__file__).resolve().parents[2] / "checkpoints" / "world-model"
INSTRUCTION = "press the button from the top"


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with embedded_stack(WORLD_MODEL) as served:
        assert served.judge is not None, "the bundled judge checkpoint"
        yield served


@pytest.fixture(params=["http", "grpc"])
def client(request, stack) -> Iterator[SimulatorClient | GrpcSimulatorClient]:
    url = stack.http_url if request.param == "http" else f"grpc://{stack.grpc_target}"
    with connect(url, timeout=120.0) as sim:
        yield sim


def start_frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)


class RandomPolicy:
    """A numpy "policy": N random chunks (N, 8, 4) from a seeded generator; remembers them."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.proposed: list[np.ndarray] = []

    def __call__(self, frame: np.ndarray, n: int) -> np.ndarray:
        assert frame.shape == (64, 64, 3)
        chunks = self.rng.uniform(-1, 1, (n, 8, 4)).astype(np.float32)
        self.proposed.append(chunks)
        return chunks


def test_connect_takes_a_timeout(stack) -> None:
    with connect(stack.http_url, timeout=120.0) as http:
        assert isinstance(http, SimulatorClient) and http._timeout.read == 120.0
    with connect(f"grpc://{stack.grpc_target}", timeout=120.0) as rpc:
        assert isinstance(rpc, GrpcSimulatorClient) and rpc.timeout == 120.0


def test_execute_at_threshold_zero_after_one_attempt(client) -> None:
    policy = RandomPolicy()
    decision = verify_before_execute(
        client,
        policy,
        start_frame(),
        INSTRUCTION,
        candidates=3,
        max_attempts=3,
        seed=0,
        threshold=0.0,
    )
    assert isinstance(decision, Decision)
    assert decision.verdict == "execute" and decision.attempts == 1
    (confs,) = decision.confidences
    assert len(confs) == 3 and all(0.0 <= c <= 1.0 for c in confs)
    best = int(np.argmax(confs))
    assert decision.confidence == confs[best]
    np.testing.assert_array_equal(decision.chunk, policy.proposed[0][best])
    assert decision.chunk.shape == (8, 4) and decision.seconds > 0
    # Where the executed chunk was imagined: its outcome can be reported against it.
    assert decision.request_id and decision.candidate == best and decision.imagined_frames == 4
    out = client.report_outcome(decision.request_id, decision.candidate, np.zeros((4, 64, 64, 3), np.uint8),
                                success=False)
    assert out.confidence == pytest.approx(decision.confidence) and out.frames_compared == 4


def test_fallback_after_max_attempts_when_no_candidate_passes(client) -> None:
    policy = RandomPolicy(1)
    decision = verify_before_execute(
        client,
        policy,
        start_frame(),
        INSTRUCTION,
        candidates=2,
        max_attempts=2,
        seed=5,
        threshold=1.0,
    )
    assert decision.verdict == "fallback" and decision.attempts == 2
    assert len(decision.confidences) == 2 and len(policy.proposed) == 2
    flat = [c for attempt in decision.confidences for c in attempt]
    assert max(flat) < 1.0  # no candidate reaches the threshold
    # The best candidate seen over all attempts is executed anyway.
    attempt, index = divmod(int(np.argmax(flat)), 2)
    assert decision.confidence == max(flat)
    np.testing.assert_array_equal(decision.chunk, policy.proposed[attempt][index])
    assert decision.candidate == index and decision.request_id


def test_verify_before_execute_with_the_judges_own_threshold(client, stack) -> None:
    """No threshold: the judge's own decides."""
    decision = verify_before_execute(
        client, RandomPolicy(2), start_frame(), INSTRUCTION, candidates=2, max_attempts=1
    )
    threshold = stack.judge.runtime.engine.classifier.threshold
    assert decision.attempts == 1
    assert decision.verdict == ("execute" if decision.confidence >= threshold else "fallback")


def test_async_clients_verify(stack) -> None:
    frame = start_frame()
    cands = RandomPolicy(3)(frame, 3)

    async def run() -> list:
        async with (
            AsyncSimulatorClient(stack.http_url) as http,
            AsyncGrpcSimulatorClient(stack.grpc_target) as rpc,
        ):
            return list(
                await asyncio.gather(
                    http.imagine(frame, INSTRUCTION, cands, seed=0, verify=True),
                    rpc.imagine(frame, INSTRUCTION, cands, seed=0, verify=True),
                    http.imagine(
                        frame, INSTRUCTION, cands, seed=0, verify=True, verify_threshold=0.0
                    ),
                )
            )

    a, b, c = asyncio.run(run())
    confs = [x.confidence for x in a.candidates]
    # The three requests run concurrently, so the engines may batch them differently: float
    # rounding then differs (seen: 1e-10 absolute on confidences of 1e-6, 3e-5 relative).
    assert [x.confidence for x in b.candidates] == pytest.approx(confs, rel=1e-5, abs=1e-7)
    assert a.best_candidate == b.best_candidate == int(np.argmax(confs))
    assert a.verdict == b.verdict
    assert c.verdict == "execute" and c.best_candidate == a.best_candidate
