"""One process serving HTTP and gRPC over one runtime; checkpoint loading."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from wmpo_client.codec import from_proto, to_json, to_proto
from wmpo_client.proto import simulator_pb2 as pb
from wmpo_client.proto import simulator_pb2_grpc

from services.simulator.runtime import SimulatorRuntime
from services.simulator.server import build_app, load_world_model, world_model_from_settings
from tests.services.simulator.conftest import KEY, actions, frames, settings
from wmpo.errors import CheckpointError
from wmpo.sampling.world_model import TorchWorldModel


def test_http_and_grpc_share_one_runtime(world_model) -> None:
    s = settings(grpc_port=0)
    runtime = SimulatorRuntime(world_model, s)
    with TestClient(build_app(runtime, s)) as client:
        port = client.app.state.grpc_port  # type: ignore[attr-defined]
        created = client.post(
            "/v1/sessions",
            json={"start_frames": to_json(frames()[0]), "seed": 2},
            headers={"x-api-key": KEY},
        ).json()
        sid = created["sessions"][0]["session_id"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = simulator_pb2_grpc.SimulatorStub(channel)
            assert (
                stub.Health(pb.HealthRequest(), timeout=10).status
                == pb.HealthResponse.SERVING_STATUS_SERVING
            )
            # A session opened over HTTP is stepped over gRPC: one engine, one session table.
            step = stub.StepSession(
                pb.StepSessionRequest(session_id=sid, actions=to_proto(actions(8))),
                metadata=(("x-api-key", KEY),),
                timeout=10,
            )
            assert from_proto(step.results[0].frames).shape == (4, 64, 64, 3)
        assert (
            client.get(f"/v1/sessions/{sid}", headers={"x-api-key": KEY}).json()["chunks_stepped"]
            == 1
        )
    assert not runtime.engine.running  # the lifespan stopped it


def test_load_world_model(world_model, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no world-model checkpoint at .*--checkpoint"):
        load_world_model(tmp_path / "missing")
    world_model.save(tmp_path / "wm", {"note": "test"})
    loaded = load_world_model(tmp_path / "wm")
    assert loaded.provenance()["world_model_sha256"]
    assert loaded.image_size == 64 and loaded.max_chunk_length == world_model.max_chunk_length
    # fp16 weights: close to, not equal to, the float32 original
    a, b = (m.decode(m.step(m.start(frames(), [1]), actions(1, 8))) for m in (world_model, loaded))
    assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 10


def test_settings_replace_the_checkpoints_sampler_and_the_provenance_says_so(world_model, tmp_path) -> None:
    world_model.save(tmp_path / "wm", {"note": "test"})
    plain = world_model_from_settings(settings(checkpoint=str(tmp_path / "wm")))
    assert isinstance(plain, TorchWorldModel) and plain.sampler == world_model.sampler
    tuned = world_model_from_settings(
        settings(checkpoint=str(tmp_path / "wm"), sampler_steps=2, action_guidance=2.5)
    )
    assert isinstance(tuned, TorchWorldModel)
    assert tuned.provenance()["sampler"] == {
        **plain.provenance()["sampler"], "steps": 2, "action_guidance": 2.5
    }
    # Guidance changes what is imagined from the same start, actions and seed.
    a, b = (m.decode(m.step(m.start(frames(), [1]), actions(1, 8))) for m in (plain, tuned))
    assert a.shape == b.shape and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="action_guidance"):
        settings(action_guidance=-1.0)
