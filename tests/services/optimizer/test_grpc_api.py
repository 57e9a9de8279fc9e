"""The optimizer's gRPC API on a real grpc.aio server on a free loopback port, over the tiny planner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from wmpo_client.codec import from_proto, to_proto
from wmpo_client.proto import optimizer_pb2 as pb
from wmpo_client.proto import optimizer_pb2_grpc, simulator_pb2, tensor_pb2

from services.optimizer.grpc_api import create_grpc_server
from services.optimizer.runtime import OptimizerRuntime
from tests.services.conftest import rpc_error, with_grpc_server
from tests.services.optimizer.conftest import (
    HORIZON,
    INSTRUCTION,
    KEY,
    PLAN_FRAMES,
    SIZE,
    frames,
    settings,
)

AUTH = (("x-api-key", KEY),)
Stub = optimizer_pb2_grpc.OptimizerStub


def with_server(planner: Any, scenario: Callable[[Stub, OptimizerRuntime], Awaitable[None]],
                **overrides: Any) -> None:
    s = settings(grpc_port=0, **overrides)
    with_grpc_server(lambda: OptimizerRuntime(planner, s), create_grpc_server, s,
                     lambda channel, runtime: scenario(Stub(channel), runtime))


def request(**extra: Any) -> pb.PlanRequest:
    values: dict[str, Any] = {"frame": to_proto(frames(1, 0)[0], "frame", "png"), "instruction": INSTRUCTION,
                              "steps": 2, "seed": 3}
    values.update(extra)
    return pb.PlanRequest(**values)


def test_plan_and_stream_over_grpc(planner) -> None:
    async def scenario(stub: Stub, rt: OptimizerRuntime) -> None:
        out = await stub.Plan(request(include_target=True, frame_encoding=tensor_pb2.FRAME_ENCODING_PNG),
                              metadata=AUTH)
        actions = from_proto(out.actions, "actions")
        assert actions.shape == (HORIZON, 4) and np.abs(actions).max() <= 1
        assert from_proto(out.frames, "frames").shape == (PLAN_FRAMES, SIZE, SIZE, 3)
        assert out.frames.HasField("png") and out.HasField("target_frames")
        assert len(out.objective) == out.steps == 2 and out.seed == 3
        assert out.provenance["generator_sha256"] == "tiny-test" and out.timing["total_s"] > 0
        # The same request over HTTP's twin gives the same plan (same seed, same planner).
        again = await stub.Plan(request(), metadata=AUTH)
        assert np.allclose(from_proto(again.actions, "a"), actions, atol=1e-5)
        assert not again.HasField("target_frames")

        events = [e async for e in stub.PlanStream(request(steps=3), metadata=AUTH)]
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds == ["progress"] * 3 + ["result"]
        assert [e.progress.step for e in events[:3]] == [1, 2, 3]
        assert [e.progress.objective for e in events[:3]] == list(events[-1].result.objective)

        health = await stub.Health(simulator_pb2.HealthRequest())  # no key needed
        assert health.status == simulator_pb2.HealthResponse.SERVING_STATUS_SERVING

    with_server(planner, scenario)


def test_bad_input_no_key_and_a_full_optimizer(planner) -> None:
    async def scenario(stub: Stub, rt: OptimizerRuntime) -> None:
        err = await rpc_error(stub.Plan(request()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        cases = [
            (request(frame=to_proto(frames(1, 0, 32)[0])), "frame: the planner takes 64x64"),
            (pb.PlanRequest(instruction=INSTRUCTION), "frame is required"),
            (request(init_actions=to_proto(np.full((HORIZON, 4), np.nan, np.float32))), "init_actions: 64 non-finite"),
            (request(steps=101), r"steps must be in [1, 100]"),
            (request(instruction=""), "instruction is required"),
            (request(frame_encoding=7), "frame_encoding: unknown value 7"),
        ]
        for req, message in cases:
            err = await rpc_error(stub.Plan(req, metadata=AUTH))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details(), err.details()
            err = await rpc_error(anext(stub.PlanStream(req, metadata=AUTH).__aiter__()))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details()
        # One slot: a long streamed plan holds it, a second plan is RESOURCE_EXHAUSTED, and
        # cancelling the stream cancels the plan and frees the slot.
        call = stub.PlanStream(request(steps=100), metadata=AUTH)
        first = await call.read()
        assert first.WhichOneof("event") == "progress"
        err = await rpc_error(stub.Plan(request(steps=1), metadata=AUTH))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "optimizer busy" in err.details()
        call.cancel()
        for _ in range(500):
            if rt.engine.admitted == 0:
                break
            await asyncio.sleep(0.01)
        assert rt.engine.admitted == 0 and rt.engine.stats.plans_cancelled >= 1
        out = await stub.Plan(request(steps=1), metadata=AUTH)
        assert len(out.objective) == 1

    with_server(planner, scenario, max_concurrent_plans=1, max_steps=100)
