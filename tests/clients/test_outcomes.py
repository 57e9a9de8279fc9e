"""`report_outcome` through the real clients (HTTP and gRPC, sync and async) against the real
service (tiny world model): the comparison comes back, a repeat is `replayed`, errors are
`SimulatorError`s with the service's code and message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from wmpo_client.errors import SimulatorError
from wmpo_client.grpc import AsyncGrpcSimulatorClient, GrpcSimulatorClient
from wmpo_client.http import AsyncSimulatorClient, SimulatorClient

from tests.clients.conftest import KEY, LiveService
from tests.services.simulator.conftest import actions, frames

FRAME = frames()[0]
Client = SimulatorClient | GrpcSimulatorClient


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, service: LiveService) -> Iterator[Client]:
    cls: Any = SimulatorClient if request.param == "http" else GrpcSimulatorClient
    target = service.http_url if request.param == "http" else service.grpc_target
    with cls(target, KEY, timeout=20, frame_encoding="png") as c:
        yield c


def test_report_outcome_compares_and_is_idempotent(client: Client) -> None:
    result = client.imagine(FRAME, "open the drawer", actions(2, 1, 8), seed=4)
    assert result.request_id  # the server's id when the caller gives none
    fake = result.candidates[1].frames
    out = client.report_outcome(result.request_id, 1, fake[:2], success=True)
    assert out.request_id == result.request_id and out.candidate == 1
    assert out.frames_compared == 2 and out.psnr_db == [100.0, 100.0]
    assert out.perceptual == [0.0, 0.0] and out.perceptual_mean == 0.0
    assert out.success is True and out.confidence is None and not out.replayed
    assert out.world_model == "tiny"
    again = client.report_outcome(result.request_id, 1, fake[:2], success=True)
    assert again.replayed and again.psnr_db == out.psnr_db
    with pytest.raises(SimulatorError) as conflict:
        client.report_outcome(result.request_id, 0, fake[:2])
    assert conflict.value.code == "FAILED_PRECONDITION" and "already reported" in str(conflict.value)


def test_report_outcome_errors(client: Client) -> None:
    with pytest.raises(SimulatorError) as unknown:
        client.report_outcome("no-such-imagine", 0, FRAME)
    assert unknown.value.code == "NOT_FOUND" and "no-such-imagine" in str(unknown.value)
    result = client.imagine(FRAME, "", actions(1, 1, 8), seed=5, request_id="outcome-errors")
    with pytest.raises(SimulatorError) as wrong:
        client.report_outcome("outcome-errors", 3, result.candidates[0].frames)
    assert wrong.value.code == "INVALID_ARGUMENT" and "candidate" in str(wrong.value)
    with pytest.raises(SimulatorError) as shape:
        client.report_outcome("outcome-errors", 0, np.zeros((1, 16, 16, 3), np.uint8))
    assert shape.value.code == "INVALID_ARGUMENT" and "frames" in str(shape.value)
    with pytest.raises(ValueError, match="request_id"):
        client.report_outcome("", 0, FRAME)


def test_async_clients_report_outcomes(service: LiveService) -> None:
    async def run() -> None:
        async with AsyncSimulatorClient(service.http_url, KEY, timeout=20) as http, \
                AsyncGrpcSimulatorClient(service.grpc_target, KEY, timeout=20) as grpc_:
            for c in (http, grpc_):
                result = await c.imagine(FRAME, "", actions(1, 1, 8), seed=6)
                out = await c.report_outcome(result.request_id, 0, result.candidates[0].frames)
                assert out.psnr_mean_db == 100.0 and out.success is None

    asyncio.run(run())
