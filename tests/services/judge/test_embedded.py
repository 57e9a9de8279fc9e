"""The embedded stack runs the judge next to the simulator, on its own free ports, in process."""

from __future__ import annotations

import pytest
from wmpo_client import GrpcJudgeClient, JudgeClient, SimulatorClient

import services.embedded as embedded
from tests.services.judge.conftest import INSTRUCTION
from tests.services.simulator.conftest import tiny_world_model


@pytest.fixture(scope="module")
def world_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("embedded") / "wm"
    tiny_world_model().save(path, {"note": "test"})
    return str(path)


def test_embedded_stack_serves_simulator_and_judge(world_model_dir, classifier_dir, videos) -> None:
    with embedded.embedded_stack(world_model_dir, classifier_dir) as stack:
        assert stack.judge is not None and stack.judge_http_url != stack.http_url
        assert stack.judge_grpc_target == stack.judge.grpc_target
        with SimulatorClient(stack.http_url) as sim:
            assert sim.health().ready
        with JudgeClient(stack.judge_http_url) as h, GrpcJudgeClient(stack.judge_grpc_target) as g:
            a = h.judge(videos.successes[0], INSTRUCTION)
            b = g.judge(videos.successes[0], INSTRUCTION)
            assert a.score == pytest.approx(b.score) and a.kind == "classifier"
        assert stack.judge.runtime.settings.dev_mode  # no API key in the embedded default


def test_embedded_stack_without_a_judge_checkpoint(world_model_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(embedded, "BUNDLED_JUDGE", tmp_path / "no-judge-here")
    with embedded.embedded_stack(world_model_dir) as stack:
        assert stack.judge is None and stack.judge_http_url is None
        with SimulatorClient(stack.http_url) as sim:
            assert sim.health().ready
    with embedded.embedded_stack(world_model_dir, judge=False) as stack:
        assert stack.judge is None
