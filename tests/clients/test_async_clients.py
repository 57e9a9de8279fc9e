"""The async HTTP (httpx.AsyncClient) and gRPC (grpc.aio) clients against the real service."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from wmpo_client.errors import SimulatorError
from wmpo_client.grpc import AsyncGrpcSimulatorClient
from wmpo_client.http import AsyncSimulatorClient
from wmpo_client.results import ImagineChunk, ImagineResult

from tests.clients.conftest import KEY, LiveService
from tests.services.simulator.conftest import actions, frames

FRAME = frames()[0]
AsyncClient = AsyncSimulatorClient | AsyncGrpcSimulatorClient


def make(kind: str, live: LiveService, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("timeout", 20)
    if kind == "http":
        return AsyncSimulatorClient(live.http_url, **kwargs)
    return AsyncGrpcSimulatorClient(live.grpc_target, **kwargs)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_async_client_end_to_end(kind: str, service: LiveService) -> None:
    async def scenario() -> None:
        async with make(kind, service, frame_encoding="png") as client:
            assert (await client.health()).ready
            cands = actions(2, 2, 8, seed=4)
            result = await client.imagine(FRAME, "close the drawer", cands, seed=3)
            assert result.frames.shape == (2, 8, 64, 64, 3) and result.seed == 3

            events = [e async for e in client.imagine_stream(FRAME, "", cands, seed=3)]
            assert [type(e) for e in events] == [ImagineChunk, ImagineChunk, ImagineResult]
            assert np.array_equal(events[-1].frames, result.frames)

            # Concurrent steps of several sessions: the engine batches them together.
            created = await asyncio.gather(
                *(client.create_session(FRAME, seed=s, max_chunks=3) for s in range(3))
            )
            sids = [c.session_id for c in created]
            steps = await asyncio.gather(*(client.step(s, actions(8, seed=1)) for s in sids))
            assert [o.result.chunks_stepped for o in steps] == [1, 1, 1]
            assert (await client.get_session(sids[0])).chunks_stepped == 1
            replay = await client.replay(sids[0], seed=99)
            assert replay.seed == 99 and replay.frames.shape == (4, 64, 64, 3)
            for sid in sids:
                assert await client.close_session(sid) == [sid]

            group = await client.create_group(FRAME, 2, seed=1)
            assert group.group_id is not None
            out = await client.step_group(group.group_id, actions(2, 8))
            assert len(out.results) == 2 and out.results[1].frames.shape == (4, 64, 64, 3)
            assert len(await client.get_group(group.group_id)) == 2
            assert len(await client.close_group(group.group_id)) == 2

            with pytest.raises(SimulatorError) as err:
                await client.get_session(sids[0])
            assert err.value.code == "NOT_FOUND"
            with pytest.raises(SimulatorError) as err:
                await client.replay("s-missing", request_id="req-async-404")
            assert err.value.code == "NOT_FOUND" and err.value.request_id == "req-async-404"

        async with make(kind, service, api_key=None) as anonymous:
            with pytest.raises(SimulatorError) as err:
                await anonymous.imagine(FRAME, "", actions(1, 8))
            assert err.value.code == "UNAUTHENTICATED"

    asyncio.run(scenario())
