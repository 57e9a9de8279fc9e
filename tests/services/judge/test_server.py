"""One process serving HTTP and gRPC over one judge runtime; checkpoint loading; the CLI."""

from __future__ import annotations

import grpc
import pytest
from fastapi.testclient import TestClient
from wmpo_client.codec import to_json, to_proto
from wmpo_client.proto import judge_pb2 as pb
from wmpo_client.proto import judge_pb2_grpc, simulator_pb2

from services.cli import main
from services.judge.runtime import JudgeRuntime
from services.judge.server import build_app, check_can_judge, load_classifier
from tests.services.judge.conftest import INSTRUCTION, KEY, settings
from wmpo.errors import CheckpointError, ConfigError


def test_http_and_grpc_share_one_runtime(classifier, videos) -> None:
    s = settings(grpc_port=0)
    runtime = JudgeRuntime(classifier, s)
    video = videos.failures[0]
    with TestClient(build_app(runtime, s)) as client:
        port = client.app.state.grpc_port  # type: ignore[attr-defined]
        body = {"frames": to_json(video), "instruction": INSTRUCTION, "request_id": "both"}
        http = client.post("/v1/judge", json=body, headers={"x-api-key": KEY}).json()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = judge_pb2_grpc.JudgeStub(channel)
            health = stub.Health(simulator_pb2.HealthRequest(), timeout=10)
            assert health.status == simulator_pb2.HealthResponse.SERVING_STATUS_SERVING
            # The same request id over gRPC: one queue, so the stored result comes back.
            req = pb.JudgeRequest(
                frames=to_proto(video), instruction=INSTRUCTION, request_id="both"
            )
            resp = stub.Judge(req, metadata=(("x-api-key", KEY),), timeout=30)
        assert resp.verdict.score == http["verdict"]["score"]
        assert runtime.queue.stats.stored_hits == 1 and runtime.engine.stats.jobs == 1
        metrics = client.get("/metrics", headers={"x-api-key": KEY}).text
        assert 'wmpo_batch_size_count{service="judge"}' in metrics
        assert 'endpoint="Judge"' in metrics and 'endpoint="/v1/judge"' in metrics
    assert not runtime.engine.running  # the lifespan stopped it


def test_load_classifier_and_what_to_judge_with(classifier_dir, tmp_path) -> None:
    assert load_classifier(None) is None
    with pytest.raises(CheckpointError, match="no success-classifier checkpoint at .*--checkpoint"):
        load_classifier(tmp_path / "missing")
    assert load_classifier(classifier_dir).threshold == pytest.approx(
        load_classifier(str(classifier_dir)).threshold
    )
    with pytest.raises(ConfigError, match="nothing to judge with"):
        check_can_judge(None, settings())
    check_can_judge(None, settings(vlm_url="http://vllm:8000/v1"))
    with pytest.raises(ValueError, match="must be an http"):
        settings(vlm_url="vllm:8000")
    with pytest.raises(ValueError, match="vlm_votes_needed=6 must be at most"):
        settings(vlm_votes_needed=6)


def test_cli_serve_judge_fails_fast_with_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("WMPO_CHECKPOINT", raising=False)
    assert main(["serve", "judge", "--dev", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no success-classifier checkpoint" in capsys.readouterr().err
    assert main(["serve", "judge", "--dev", "--checkpoint", ""]) == 2
    assert "nothing to judge with" in capsys.readouterr().err
    assert main(["serve", "judge", "--checkpoint", ""]) == 2  # no keys, no --dev
    assert "no API keys configured" in capsys.readouterr().err
    assert main(["serve", "judge", "--dev", "--worker", "--vlm-url", "http://v:1/v1"]) == 2
    assert "--worker consumes judge work from Redis" in capsys.readouterr().err
