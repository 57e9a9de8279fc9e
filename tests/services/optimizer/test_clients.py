"""The light client's optimizer clients (HTTP and gRPC, sync and async) and `wmpo-client plan`
against the real service (uvicorn + grpc.aio on free loopback ports, the tiny planner)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from wmpo_client.cli import main as client_main
from wmpo_client.errors import SimulatorError
from wmpo_client.optimizer_grpc import AsyncGrpcOptimizerClient, GrpcOptimizerClient
from wmpo_client.optimizer_http import AsyncOptimizerClient, OptimizerClient
from wmpo_client.optimizer_results import Plan, PlanProgress

from tests.services.optimizer.conftest import (
    HORIZON,
    INSTRUCTION,
    KEY,
    PLAN_FRAMES,
    SIZE,
    frames,
    served,
)


@pytest.fixture(scope="module")
def server(planner) -> Iterator[tuple[str, str, Any]]:
    with served(planner) as addresses:
        yield addresses


def check_plan(plan: Plan, steps: int) -> None:
    assert plan.actions.shape == (HORIZON, 4) and np.abs(plan.actions).max() <= 1
    assert plan.frames.shape == (PLAN_FRAMES, SIZE, SIZE, 3) and plan.frames.dtype == np.uint8
    assert len(plan.objective) == plan.steps == steps and plan.provenance["generator_sha256"] == "tiny-test"


def test_sync_clients_over_both_transports_agree(server) -> None:
    url, target, _ = server
    frame, goal = frames(1, 1)[0], frames(1, 2)[0]
    init = np.zeros((HORIZON, 4))  # float64: the client converts
    with OptimizerClient(url, KEY, frame_encoding="png") as http, GrpcOptimizerClient(target, KEY) as grpc_:
        a = http.plan(frame, INSTRUCTION, goal=goal, init_actions=init, steps=2, seed=5, include_target=True)
        b = grpc_.plan(frame, INSTRUCTION, goal=goal, init_actions=init, steps=2, seed=5)
        check_plan(a, 2)
        check_plan(b, 2)
        assert a.provenance["target"] == "goal_image" and a.target_frames is not None and b.target_frames is None
        assert np.allclose(a.actions, b.actions, atol=1e-5) and np.allclose(a.objective, b.objective, rtol=1e-5)
        for client in (http, grpc_):
            events = list(client.plan_stream(frame, INSTRUCTION, steps=3, seed=1))
            assert [type(e) for e in events] == [PlanProgress] * 3 + [Plan]
            assert [e.objective for e in events[:3]] == events[-1].objective
        info = http.info()
        assert (info.horizon, info.image_size, info.plan_frames) == (HORIZON, SIZE, PLAN_FRAMES)
        assert http.health().ready and grpc_.health().ready
        for client in (http, grpc_):
            with pytest.raises(SimulatorError) as err:
                client.plan(frames(1, 0, 32)[0], INSTRUCTION, steps=1)
            assert err.value.code == "INVALID_ARGUMENT" and "frame: the planner takes 64x64" in err.value.message
        with pytest.raises(ValueError, match="either target_frames"):
            http.plan(frame, INSTRUCTION, goal=goal, target_frames=frames(2, 0))
    with OptimizerClient(url) as anonymous, pytest.raises(SimulatorError) as err:
        anonymous.plan(frame, INSTRUCTION, steps=1)
    assert err.value.code == "UNAUTHENTICATED"


def test_async_clients(server) -> None:
    url, target, _ = server

    async def main() -> None:
        async with AsyncOptimizerClient(url, KEY) as http, AsyncGrpcOptimizerClient(target, KEY) as grpc_:
            plans = await asyncio.gather(
                http.plan(frames(1, 3)[0], INSTRUCTION, steps=2, seed=0),
                grpc_.plan(frames(1, 4)[0], INSTRUCTION, target_frames=frames(3, 5), steps=2, seed=0),
            )
            for p in plans:
                check_plan(p, 2)
            assert plans[1].provenance["target"] == "frames"
            for client in (http, grpc_):
                async with contextlib.aclosing(client.plan_stream(frames(1, 6)[0], INSTRUCTION, steps=2)) as s:
                    events = [e async for e in s]
                assert isinstance(events[0], PlanProgress) and isinstance(events[-1], Plan)

    asyncio.run(main())


def test_wmpo_client_plan_command(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, target, _ = server
    Image.fromarray(frames(1, 7)[0]).save(tmp_path / "frame.png")
    Image.fromarray(frames(1, 8)[0]).save(tmp_path / "goal.png")
    for where, extra in ((url, ["--stream"]), (f"grpc://{target}", [])):
        code = client_main(["plan", "--url", where, "--api-key", KEY, "--frame", str(tmp_path / "frame.png"),
                            "--goal", str(tmp_path / "goal.png"), "--instruction", INSTRUCTION, "--steps", "2",
                            "--seed", "1", "--actions-out", str(tmp_path / "plan.npy"),
                            "--gif", str(tmp_path / "plan.gif"), *extra])
        out = capsys.readouterr()
        assert code == 0, out.err
        summary = json.loads(out.out)
        assert summary["steps"] == 2 and len(summary["actions"]) == HORIZON
        assert np.load(tmp_path / "plan.npy").shape == (HORIZON, 4) and (tmp_path / "plan.gif").exists()
        if extra:
            assert [json.loads(line)["step"] for line in out.err.splitlines()] == [1, 2]
    code = client_main(["plan", "--url", url, "--api-key", KEY, "--frame", str(tmp_path / "frame.png"),
                        "--instruction", INSTRUCTION, "--steps", "999"])
    assert code == 1 and "steps must be in [1, 8]" in capsys.readouterr().err
