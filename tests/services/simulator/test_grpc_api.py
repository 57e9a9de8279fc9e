"""The gRPC API on a real grpc.aio server on a free localhost port, over the tiny world model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from wmpo_client.codec import from_proto, to_proto
from wmpo_client.proto import simulator_pb2 as pb
from wmpo_client.proto import simulator_pb2_grpc, tensor_pb2

from services.simulator.grpc_api import create_grpc_server
from services.simulator.runtime import SimulatorRuntime
from tests.services.conftest import rpc_error, with_grpc_server
from tests.services.simulator.conftest import KEY, actions, frames, settings

AUTH = (("x-api-key", KEY),)
Stub = simulator_pb2_grpc.SimulatorStub


def with_server(
    world_model: Any, scenario: Callable[[Stub], Awaitable[None]], **overrides: Any
) -> None:
    s = settings(grpc_port=0, **overrides)

    def run(channel: grpc.aio.Channel, _: SimulatorRuntime) -> Awaitable[None]:
        stub = Stub(channel)
        stub.channel = channel  # type: ignore[attr-defined]  # for raw-bytes calls
        return scenario(stub)

    with_grpc_server(lambda: SimulatorRuntime(world_model, s), create_grpc_server, s, run)


def imagine_request(n: int = 2, chunks: int = 2, **fields: Any) -> pb.ImagineRequest:
    return pb.ImagineRequest(
        start_frames=to_proto(frames()[0]),
        instruction="open the drawer",
        candidates=to_proto(actions(n, chunks, 8)),
        seed=fields.pop("seed", 5),
        **fields,
    )


def test_imagine_and_stream_agree(world_model) -> None:
    async def scenario(stub: Stub) -> None:
        resp = await stub.Imagine(imagine_request(request_id="r-1"), metadata=AUTH, timeout=10)
        assert resp.request_id == "r-1" and resp.seed == 5
        assert [c.index for c in resp.candidates] == [0, 1]
        assert not resp.candidates[0].HasField("confidence")
        assert resp.verdict == pb.VERDICT_UNSPECIFIED and not resp.HasField("best_candidate")
        assert resp.provenance["world_model_sha256"] == "tiny" and resp.provenance["seed"] == "5"
        full = np.stack([from_proto(c.frames) for c in resp.candidates])
        assert full.shape == (2, 8, 64, 64, 3)

        events = [e async for e in stub.ImagineStream(imagine_request(), metadata=AUTH, timeout=10)]
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds == ["frames", "frames", "result"]
        streamed = np.concatenate([from_proto(e.frames.frames) for e in events[:2]], axis=1)
        assert np.array_equal(streamed, full)
        assert events[-1].result.seed == 5 and not events[-1].result.candidates[0].HasField(
            "frames"
        )

        png = await stub.Imagine(
            imagine_request(frame_encoding=tensor_pb2.FRAME_ENCODING_PNG), metadata=AUTH, timeout=10
        )
        assert png.candidates[0].frames.WhichOneof("payload") == "png"
        assert np.array_equal(from_proto(png.candidates[1].frames), full[1])

    with_server(world_model, scenario)


def test_sessions_over_grpc(world_model) -> None:
    async def scenario(stub: Stub) -> None:
        created = await stub.CreateSession(
            pb.CreateSessionRequest(start_frames=to_proto(frames()[0]), seed=3, group_size=2),
            metadata=AUTH,
            timeout=10,
        )
        gid = created.group_id
        ids = [s.session_id for s in created.sessions]
        assert gid and len(ids) == 2 and from_proto(created.observation).shape == (64, 64, 3)

        step = await stub.StepSession(
            pb.StepSessionRequest(group_id=gid, actions=to_proto(actions(2, 8))),
            metadata=AUTH,
            timeout=10,
        )
        assert [r.session_id for r in step.results] == ids
        assert not step.results[0].HasField("reward") and not step.results[0].HasField("done")
        one = await stub.StepSession(
            pb.StepSessionRequest(session_id=ids[0], actions=to_proto(actions(8))),
            metadata=AUTH,
            timeout=10,
        )
        assert one.results[0].chunks_stepped == 2
        stepped = np.concatenate(
            [from_proto(step.results[0].frames), from_proto(one.results[0].frames)]
        )

        same = await stub.ReplaySession(
            pb.ReplaySessionRequest(session_id=ids[0], seed=3), metadata=AUTH, timeout=10
        )
        # Own seed: the same frames, up to float rounding (the first chunk ran in a batch of 2).
        diff = np.abs(from_proto(same.frames).astype(int) - stepped)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        fresh = await stub.ReplaySession(
            pb.ReplaySessionRequest(session_id=ids[0]), metadata=AUTH, timeout=10
        )
        assert fresh.seed != 3

        state = await stub.GetSession(pb.GetSessionRequest(group_id=gid), metadata=AUTH, timeout=10)
        assert [s.chunks_stepped for s in state.sessions] == [2, 1]
        closed = await stub.CloseSession(
            pb.CloseSessionRequest(group_id=gid), metadata=AUTH, timeout=10
        )
        assert list(closed.closed_session_ids) == ids
        err = await rpc_error(
            stub.GetSession(pb.GetSessionRequest(session_id=ids[0]), metadata=AUTH, timeout=10)
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND and "was closed" in err.details()

    with_server(world_model, scenario)


def test_errors_map_to_status_codes(world_model) -> None:
    async def scenario(stub: Stub) -> None:
        health = await stub.Health(pb.HealthRequest(), timeout=10)  # no key needed
        assert health.status == pb.HealthResponse.SERVING_STATUS_SERVING

        err = await rpc_error(stub.Imagine(imagine_request(), timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

        nan = imagine_request()
        nan.candidates.CopyFrom(to_proto(np.full((1, 1, 8, 4), np.nan, np.float32)))
        err = await rpc_error(stub.Imagine(nan, metadata=AUTH, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "non-finite" in err.details()

        wrong = imagine_request()
        wrong.candidates.CopyFrom(to_proto(np.zeros((1, 1, 8, 4), np.int32)))
        err = await rpc_error(stub.Imagine(wrong, metadata=AUTH, timeout=10))
        assert "dtype must be float32, got int32" in err.details()

        missing = pb.ImagineRequest(candidates=to_proto(actions(1, 8)))
        err = await rpc_error(stub.Imagine(missing, metadata=AUTH, timeout=10))
        assert (
            err.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "start_frames is required" in err.details()
        )

        stream = stub.ImagineStream(imagine_request(horizon_chunks=9), metadata=AUTH, timeout=10)
        err = await rpc_error(stream.read())
        assert (
            err.code() == grpc.StatusCode.INVALID_ARGUMENT and "horizon_chunks=9" in err.details()
        )

        err = await rpc_error(
            stub.StepSession(
                pb.StepSessionRequest(session_id="s-x", actions=to_proto(actions(8))), metadata=AUTH
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND and "does not exist" in err.details()
        err = await rpc_error(stub.GetSession(pb.GetSessionRequest(), metadata=AUTH))
        assert (
            err.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "session_id or group_id" in err.details()
        )

        await stub.CreateSession(
            pb.CreateSessionRequest(start_frames=to_proto(frames()[0])), metadata=AUTH
        )
        err = await rpc_error(
            stub.CreateSession(
                pb.CreateSessionRequest(start_frames=to_proto(frames()[0])), metadata=AUTH
            )
        )
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1" in err.details()

    with_server(world_model, scenario, max_sessions=1)


def test_a_retried_step_is_idempotent_over_grpc(world_model) -> None:
    async def scenario(stub: Stub) -> None:
        created = await stub.CreateSession(
            pb.CreateSessionRequest(start_frames=to_proto(frames()[0]), seed=4), metadata=AUTH
        )
        sid = created.sessions[0].session_id
        request = pb.StepSessionRequest(
            session_id=sid, actions=to_proto(actions(8, seed=1)), expected_chunks_stepped=0
        )
        first = await stub.StepSession(request, metadata=AUTH, timeout=10)
        retry = await stub.StepSession(request, metadata=AUTH, timeout=10)
        assert (first.replayed, retry.replayed) == (False, True)
        assert np.array_equal(
            from_proto(first.results[0].frames), from_proto(retry.results[0].frames)
        )
        info = await stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=AUTH)
        assert info.sessions[0].chunks_stepped == 1

        request.expected_chunks_stepped = 3
        err = await rpc_error(stub.StepSession(request, metadata=AUTH))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "has stepped 1 chunks, fewer than expected_chunks_stepped=3" in err.details()
        request.expected_chunks_stepped = -2
        err = await rpc_error(stub.StepSession(request, metadata=AUTH))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    with_server(world_model, scenario)


def test_an_unknown_frame_encoding_and_corrupt_bytes_are_invalid_argument(
    world_model, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP refuses frame_encoding 99 with a 422; gRPC must refuse it too, and bytes that are
    not a message at all are the caller's error, not UNKNOWN with a traceback in the log."""

    async def scenario(stub: Stub) -> None:
        err = await rpc_error(stub.Imagine(imagine_request(frame_encoding=99), metadata=AUTH, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "frame_encoding" in err.details()
        create = pb.CreateSessionRequest(start_frames=to_proto(frames()[0]), frame_encoding=7)
        err = await rpc_error(stub.CreateSession(create, metadata=AUTH, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown value 7" in err.details()

        channel: grpc.aio.Channel = stub.channel  # type: ignore[attr-defined]
        for method in ("Imagine", "ImagineStream", "CreateSession"):
            path = f"/wmpo.v1.Simulator/{method}"
            if method == "ImagineStream":
                call = channel.unary_stream(path)(b"\xff\xff\xff\xff", metadata=AUTH, timeout=10)
                err = await rpc_error(call.read())
            else:
                err = await rpc_error(channel.unary_unary(path)(b"\xff\xff\xff\xff", metadata=AUTH, timeout=10))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err)
            assert "not a valid protobuf message" in err.details()
        # Without a key, corrupt bytes are still refused as unauthenticated first.
        err = await rpc_error(channel.unary_unary("/wmpo.v1.Simulator/Imagine")(b"\xff\xff", timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

    caplog.set_level("ERROR")
    with_server(world_model, scenario)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
