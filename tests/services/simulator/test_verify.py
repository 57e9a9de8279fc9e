"""Verify before execute: `/v1/imagine` with `verify` asks the judge about every candidate.

Against the real embedded stack (the bundled world model and judge checkpoints, both served
over real sockets; the simulator reaches the judge through its HTTP client), over HTTP and
gRPC, plain and streaming; and the errors: no judge configured, an unreachable judge, bad
thresholds, no instruction.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from wmpo_client import GrpcSimulatorClient, SimulatorClient, SimulatorError
from wmpo_client.codec import to_json
from wmpo_client.proto import simulator_pb2 as pb
from wmpo_client.proto import simulator_pb2_grpc

from services.embedded import BUNDLED_JUDGE, EmbeddedStack, embedded_stack

ROOT = Path(__file__).resolve().parents[3]
WORLD_MODEL = ROOT / "checkpoints" / "world-model"
INSTRUCTION = "press the button from the top"
N = 3


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    assert WORLD_MODEL.is_dir() and BUNDLED_JUDGE.is_dir(), "the bundled checkpoints"
    with embedded_stack(WORLD_MODEL) as served:
        assert served.judge is not None
        yield served


@pytest.fixture(scope="module")
def no_judge() -> Iterator[EmbeddedStack]:
    with embedded_stack(WORLD_MODEL, judge=False) as served:
        yield served


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def candidates(n: int = N, chunks: int = 1, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, chunks, 8, 4)).astype(np.float32)


def body(**extra: object) -> dict[str, object]:
    return {
        "start_frames": to_json(frame(), "start_frames"),
        "instruction": INSTRUCTION,
        "candidates": to_json(candidates(), "candidates"),
        "seed": 0,
        **extra,
    }


def check_verified(result, threshold: float | None = None) -> list[float]:
    """Confidences in [0, 1] for every candidate, best = argmax, verdict per the threshold."""
    confs = [c.confidence for c in result.candidates]
    assert len(confs) == N and all(isinstance(c, float) and 0.0 <= c <= 1.0 for c in confs)
    assert result.best_candidate == int(np.argmax(confs))
    applied = float(result.provenance["judge_threshold"])
    if threshold is not None:
        assert applied == pytest.approx(threshold)
    best = confs[result.best_candidate]
    assert result.verdict == ("execute" if best >= applied else "replan")
    assert result.provenance["judge_kind"] == "classifier"
    assert "judge_classifier_sha256" in result.provenance
    assert "world_model_sha256" in result.provenance  # the simulator's own record stays
    assert result.timing["judge"] > 0
    return confs


# ------------------------------------------------------------------ HTTP


def test_http_verify_fills_confidence_best_candidate_and_verdict(stack) -> None:
    with SimulatorClient(stack.http_url, retries=0) as sim:
        result = sim.imagine(frame(), INSTRUCTION, candidates(), seed=0, verify=True)
        confs = check_verified(result)
        # The judge's own threshold applies without verify_threshold.
        assert float(result.provenance["judge_threshold"]) == pytest.approx(
            stack.judge.runtime.engine.classifier.threshold
        )
        execute = sim.imagine(
            frame(), INSTRUCTION, candidates(), seed=0, verify=True, verify_threshold=0.0
        )
        assert check_verified(execute, 0.0) == pytest.approx(confs, abs=1e-6)  # same seed, same frames
        assert execute.verdict == "execute"
        replan = sim.imagine(
            frame(), INSTRUCTION, candidates(), seed=0, verify=True, verify_threshold=1.0
        )
        assert max(check_verified(replan, 1.0)) < 1.0
        assert replan.verdict == "replan"
        plain = sim.imagine(frame(), INSTRUCTION, candidates(), seed=0)
        assert plain.verdict is None and plain.best_candidate is None
        assert all(c.confidence is None for c in plain.candidates)
        assert not any(k.startswith("judge") for k in plain.provenance)
        np.testing.assert_array_equal(plain.frames, result.frames)


def test_http_verify_judges_the_start_frame_and_every_imagined_frame(stack) -> None:
    """The video judged for a candidate: the start frame, then all its frames, at the model's
    frame stride; asking the judge directly gives the same scores."""
    from wmpo_client import JudgeClient

    cands = candidates(chunks=2)
    with SimulatorClient(stack.http_url, retries=0) as sim, JudgeClient(stack.judge_http_url) as j:
        result = sim.imagine(frame(), INSTRUCTION, cands, seed=3, verify=True)
        for c in result.candidates:
            assert c.frames.shape[0] == 2 * 8 // stack.runtime.engine.frame_stride
            video = np.concatenate([frame()[None], c.frames])
            direct = j.judge(video, INSTRUCTION, frame_stride=stack.runtime.engine.frame_stride)
            assert c.confidence == pytest.approx(direct.score, abs=1e-6)  # scores near 0: batch-dependent rounding


def test_http_stream_verify(stack) -> None:
    with SimulatorClient(stack.http_url, retries=0) as sim:
        whole = sim.imagine(frame(), INSTRUCTION, candidates(), seed=0, verify=True)
        events = list(
            sim.imagine_stream(
                frame(), INSTRUCTION, candidates(), seed=0, verify=True, verify_threshold=0.0
            )
        )
    last = events[-1]
    assert check_verified(last, 0.0) == pytest.approx([c.confidence for c in whole.candidates], abs=1e-6)
    assert last.verdict == "execute"


@pytest.mark.parametrize("threshold", [1.01, -0.1, "nan"])
def test_http_threshold_out_of_range_is_422(stack, threshold) -> None:
    response = httpx.post(
        f"{stack.http_url}/v1/imagine", json=body(verify=True, verify_threshold=threshold)
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "verify_threshold" in error["message"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"verify": True, "instruction": ""}, "verify needs the instruction"),
        ({"verify_threshold": 0.5}, "verify_threshold applies only with verify=true"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/imagine", "/v1/imagine/stream"])
def test_http_bad_verify_requests_are_400(stack, extra, message, path) -> None:
    response = httpx.post(f"{stack.http_url}{path}", json=body(**extra))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and message in error["message"]


@pytest.mark.parametrize("path", ["/v1/imagine", "/v1/imagine/stream"])
def test_verify_without_a_judge_is_400(no_judge, path) -> None:
    assert no_judge.judge is None and no_judge.runtime.judge is None
    response = httpx.post(f"{no_judge.http_url}{path}", json=body(verify=True))
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "FAILED_PRECONDITION",
        "message": "verify needs a judge: set WMPO_JUDGE_URL",
        "request_id": response.headers["x-request-id"],
    }
    # Without verify, the same request is served.
    assert httpx.post(f"{no_judge.http_url}{path}", json=body()).status_code == 200


def test_verify_without_a_judge_over_grpc(no_judge) -> None:
    with GrpcSimulatorClient(no_judge.grpc_target, retries=0) as sim:
        with pytest.raises(SimulatorError) as err:
            sim.imagine(frame(), INSTRUCTION, candidates(), verify=True)
        assert err.value.code == "FAILED_PRECONDITION"
        assert err.value.message == "verify needs a judge: set WMPO_JUDGE_URL"
        with pytest.raises(SimulatorError) as err:
            list(sim.imagine_stream(frame(), INSTRUCTION, candidates(), verify=True))
        assert err.value.code == "FAILED_PRECONDITION"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_judge_is_503_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with embedded_stack(WORLD_MODEL, judge=False, judge_url=url) as served:
        response = httpx.post(f"{served.http_url}/v1/imagine", json=body(verify=True))
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "UNAVAILABLE"
        assert error["message"].startswith("judge unavailable: ")
        assert "Traceback" not in response.text
        # The stream reports it in-band, after the frames.
        lines = httpx.post(f"{served.http_url}/v1/imagine/stream", json=body(verify=True))
        last = lines.text.strip().splitlines()[-1]
        assert '"event":"error"' in last and "judge unavailable" in last
        with (
            GrpcSimulatorClient(served.grpc_target, retries=0) as sim,
            pytest.raises(SimulatorError) as err,
        ):
            sim.imagine(frame(), INSTRUCTION, candidates(), verify=True)
        assert err.value.code == "UNAVAILABLE" and "judge unavailable" in err.value.message


# ------------------------------------------------------------------ gRPC


def test_grpc_verify(stack) -> None:
    with GrpcSimulatorClient(stack.grpc_target, retries=0) as sim:
        result = sim.imagine(frame(), INSTRUCTION, candidates(), seed=0, verify=True)
        confs = check_verified(result)
        execute = sim.imagine(
            frame(), INSTRUCTION, candidates(), seed=0, verify=True, verify_threshold=0.0
        )
        assert execute.verdict == "execute" and check_verified(execute, 0.0) == pytest.approx(confs, abs=1e-6)
        replan = sim.imagine(
            frame(), INSTRUCTION, candidates(), seed=0, verify=True, verify_threshold=1.0
        )
        assert replan.verdict == "replan" and max(check_verified(replan, 1.0)) < 1.0
        events = list(
            sim.imagine_stream(
                frame(), INSTRUCTION, candidates(), seed=0, verify=True, verify_threshold=0.0
            )
        )
        assert events[-1].verdict == "execute"
        assert check_verified(events[-1], 0.0) == pytest.approx(confs, rel=1e-5, abs=1e-6)
        plain = sim.imagine(frame(), INSTRUCTION, candidates(), seed=0)
        assert plain.verdict is None and plain.best_candidate is None
        assert all(c.confidence is None for c in plain.candidates)


def test_grpc_verify_fields_on_the_wire(stack) -> None:
    """The raw response: VERDICT_* enum, best_candidate and confidence set only with verify."""
    request = pb.ImagineRequest(
        start_frames=_proto(frame()[None]),
        instruction=INSTRUCTION,
        candidates=_proto(candidates()),
        seed=0,
        verify=True,
        verify_threshold=0.0,
    )
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = simulator_pb2_grpc.SimulatorStub(channel)
        resp = stub.Imagine(request, timeout=60)
        assert resp.verdict == pb.VERDICT_EXECUTE and resp.HasField("best_candidate")
        assert all(c.HasField("confidence") for c in resp.candidates)
        request.verify = False
        request.ClearField("verify_threshold")
        resp = stub.Imagine(request, timeout=60)
        assert resp.verdict == pb.VERDICT_UNSPECIFIED and not resp.HasField("best_candidate")
        assert not any(c.HasField("confidence") for c in resp.candidates)


def _proto(array: np.ndarray):
    from wmpo_client.codec import to_proto

    return to_proto(array, "t", "raw")


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        (
            {"verify_threshold": 1.5},
            "INVALID_ARGUMENT",
            "verify_threshold must be a number in [0, 1]",
        ),
        (
            {"verify_threshold": -0.5},
            "INVALID_ARGUMENT",
            "verify_threshold must be a number in [0, 1]",
        ),
        ({"instruction": " "}, "INVALID_ARGUMENT", "verify needs the instruction"),
    ],
)
def test_grpc_bad_verify_requests(stack, options, code, message) -> None:
    instruction = options.pop("instruction", INSTRUCTION)
    with (
        GrpcSimulatorClient(stack.grpc_target, retries=0) as sim,
        pytest.raises(SimulatorError) as err,
    ):
        sim.imagine(frame(), instruction, candidates(), verify=True, **options)
    assert err.value.code == code and message in err.value.message


# ------------------------------------------------------------------ queue mode


def test_verify_in_queue_mode(redis_url, redis_prefix) -> None:
    """With Redis, the frames come from the queue and the accepting replica asks the judge;
    a retried request id gets its stored frames judged again (same verdict)."""
    with embedded_stack(WORLD_MODEL, redis_url=redis_url, queue_prefix=redis_prefix) as served:
        assert served.runtime.queue_mode
        with SimulatorClient(served.http_url, retries=0) as sim:
            first = sim.imagine(
                frame(), INSTRUCTION, candidates(), verify=True, request_id="verify-q-1"
            )
            again = sim.imagine(
                frame(), INSTRUCTION, candidates(), verify=True, request_id="verify-q-1"
            )
    confs = check_verified(first)
    assert check_verified(again) == pytest.approx(confs, abs=1e-6)
    assert again.verdict == first.verdict and again.best_candidate == first.best_candidate
