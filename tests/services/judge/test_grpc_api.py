"""The judge's gRPC API on a real grpc.aio server on a free localhost port, over the tiny classifier."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from wmpo_client.codec import to_proto
from wmpo_client.proto import judge_pb2 as pb
from wmpo_client.proto import judge_pb2_grpc, simulator_pb2

from services.judge.grpc_api import create_grpc_server
from services.judge.runtime import JudgeRuntime
from tests.services.conftest import rpc_error, with_grpc_server
from tests.services.judge.conftest import INSTRUCTION, KEY, settings

AUTH = (("x-api-key", KEY),)
Stub = judge_pb2_grpc.JudgeStub


def with_server(
    classifier: Any, scenario: Callable[[Stub], Awaitable[None]], **overrides: Any
) -> None:
    s = settings(grpc_port=0, **overrides)
    with_grpc_server(lambda: JudgeRuntime(classifier, s), create_grpc_server, s,
                     lambda channel, _: scenario(Stub(channel)))


def test_judge_and_group_over_grpc(classifier, videos, split) -> None:
    video = videos.successes[0]
    (want,) = classifier.judge_many([video], [INSTRUCTION])

    async def scenario(stub: Stub) -> None:
        req = pb.JudgeRequest(frames=to_proto(video), instruction=INSTRUCTION, request_id="g-1")
        resp = await stub.Judge(req, metadata=AUTH, timeout=30)
        v = resp.verdict
        assert resp.request_id == "g-1" and resp.kind == pb.JUDGE_KIND_CLASSIFIER
        assert v.success == want.success and v.best_clip == want.best_clip
        assert v.score == pytest.approx(want.score, abs=1e-5)
        assert list(v.clip_scores) == pytest.approx(want.clip_scores, abs=2e-4)
        assert v.HasField("clip_reward") and not v.HasField("vlm")
        assert list(v.frames_used) == want.frames_used
        assert resp.provenance["classifier_sha256"] == classifier.sha256
        assert resp.timing["total"] > 0

        # PNG frames, explicit kind, threshold 1.0: nothing passes, no done clip.
        png = pb.JudgeRequest(
            frames=to_proto(video, encoding="png"),
            instruction=INSTRUCTION,
            kind=pb.JUDGE_KIND_CLASSIFIER,
            threshold=1.0,
            frame_stride=2,
        )
        resp = await stub.Judge(png, metadata=AUTH, timeout=30)
        assert not resp.verdict.success and resp.verdict.done_clip == -1
        assert resp.verdict.done_frame == -1 and resp.provenance["threshold"] == "1.0"

        hi, lo = split.high, split.low
        group = pb.JudgeGroupRequest(
            videos=[to_proto(v) for v in (hi, hi, lo)],
            replays=[pb.GroupReplay(index=0, frames=to_proto(lo))],
            instruction=INSTRUCTION,
            threshold=split.threshold,
            reward=pb.REWARD_KIND_SUCCESS,
        )
        g = await stub.JudgeGroup(group, metadata=AUTH, timeout=30)
        assert [r.flagged for r in g.rollouts] == [True, False, False]
        assert list(g.rewards) == pytest.approx([0.5, 1.0, 0.0])
        assert g.rollouts[0].HasField("replay") and not g.rollouts[1].HasField("replay")
        assert not g.verified and list(g.needs_replay) == [1] and not g.discard
        assert g.reward == pb.REWARD_KIND_SUCCESS

        g = await stub.JudgeGroup(
            pb.JudgeGroupRequest(
                videos=[to_proto(hi)] * 3,
                replays=[pb.GroupReplay(index=i, frames=to_proto(lo)) for i in range(3)],
                instruction=INSTRUCTION,
                threshold=split.threshold,
                max_flags=3,
            ),
            metadata=AUTH,
            timeout=30,
        )
        assert all(r.flagged for r in g.rollouts) and not g.discard
        assert list(g.rewards) == [0.0, 0.0, 0.0]  # no trustworthy rollout: counted as failures

        health = await stub.Health(simulator_pb2.HealthRequest(), timeout=5)  # no key needed
        assert health.status == simulator_pb2.HealthResponse.SERVING_STATUS_SERVING

    with_server(classifier, scenario)


def test_grpc_errors_are_status_codes_with_clear_messages(classifier) -> None:
    frames = np.zeros((9, 64, 64, 3), np.uint8)

    def req(**fields: Any) -> pb.JudgeRequest:
        fields.setdefault("frames", to_proto(frames))
        fields.setdefault("instruction", INSTRUCTION)
        return pb.JudgeRequest(**fields)

    async def scenario(stub: Stub) -> None:
        code = grpc.StatusCode
        err = await rpc_error(stub.Judge(req(), timeout=10))
        assert err.code() == code.UNAUTHENTICATED and "missing API key" in err.details()
        cases: list[tuple[Any, grpc.StatusCode, str]] = [
            (pb.JudgeRequest(instruction=INSTRUCTION), code.INVALID_ARGUMENT, "frames is required"),
            (
                req(frames=to_proto(frames.astype(np.float32))),
                code.INVALID_ARGUMENT,
                "dtype must be uint8",
            ),
            (req(frames=to_proto(frames[:0])), code.INVALID_ARGUMENT, "no frames"),
            (req(frames=to_proto(frames[0])), code.INVALID_ARGUMENT, "expected RGB frames"),
            (req(instruction=""), code.INVALID_ARGUMENT, "instruction is required"),
            (req(kind=pb.JUDGE_KIND_VLM), code.FAILED_PRECONDITION, "no VLM endpoint configured"),
            (req(kind=7), code.INVALID_ARGUMENT, "unknown JudgeKind value 7"),
            (req(threshold=float("nan")), code.INVALID_ARGUMENT, "threshold must be a number"),
            (req(clip_temperature=-1.0), code.INVALID_ARGUMENT, "clip_temperature must be"),
            (req(frame_stride=-2), code.INVALID_ARGUMENT, "frame_stride=-2 must be between"),
            (req(request_id="bad id!"), code.INVALID_ARGUMENT, "request_id must be"),
        ]
        for request, want, message in cases:
            err = await rpc_error(stub.Judge(request, metadata=AUTH, timeout=10))
            assert err.code() == want and message in err.details(), (want, err.details())
        group_cases: list[tuple[Any, grpc.StatusCode, str]] = [
            (
                pb.JudgeGroupRequest(instruction=INSTRUCTION),
                code.INVALID_ARGUMENT,
                "at least one video",
            ),
            (
                pb.JudgeGroupRequest(
                    videos=[to_proto(frames)],
                    replays=[pb.GroupReplay(index=0)],
                    instruction=INSTRUCTION,
                ),
                code.INVALID_ARGUMENT,
                "replay 0: frames are required",
            ),
            (
                pb.JudgeGroupRequest(videos=[to_proto(frames)], instruction=INSTRUCTION, reward=9),
                code.INVALID_ARGUMENT,
                "unknown RewardKind value 9",
            ),
            (
                pb.JudgeGroupRequest(
                    videos=[to_proto(frames)], instruction=INSTRUCTION, max_flags=-1
                ),
                code.INVALID_ARGUMENT,
                "max_flags must be >= 0",
            ),
        ]
        for request, want, message in group_cases:
            err = await rpc_error(stub.JudgeGroup(request, metadata=AUTH, timeout=10))
            assert err.code() == want and message in err.details(), (want, err.details())
        # Larger than the message limit: refused by grpcio before the handler.
        huge = req(frames=to_proto(np.zeros((200, 64, 64, 3), np.uint8)))
        err = await rpc_error(stub.Judge(huge, metadata=AUTH, timeout=10))
        assert err.code() == code.RESOURCE_EXHAUSTED

    with_server(classifier, scenario, max_request_bytes=1024**2)
