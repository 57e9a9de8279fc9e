"""The batching engine with the tiny real world model: batching, routing, admission, cancellation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.common.errors import Internal, InvalidArgument, ResourceExhausted, Unavailable
from services.simulator.engine import EngineConfig, SimulatorEngine, member_seed
from tests.services.simulator.conftest import CountingModel, actions, frames


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_member_seeds_keep_index_zero_and_differ() -> None:
    assert member_seed(7, 0) == 7
    seeds = {member_seed(7, i) for i in range(16)}
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds)
    assert member_seed(7, 3) == member_seed(7, 3)


def test_concurrent_requests_share_model_calls_and_match_unbatched(world_model) -> None:
    n_requests, chunks = 6, 2
    reqs = [(frames(i), actions(1, chunks, 8, seed=i), 100 + i) for i in range(n_requests)]

    async def batched() -> tuple[list[np.ndarray], list[int]]:
        model = CountingModel(world_model)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=8, max_wait_ms=200))
        await engine.start()
        try:
            results = await asyncio.gather(*(engine.imagine(f, a, seed=s) for f, a, s in reqs))
        finally:
            await engine.stop()
        return [r.frames for r in results], model.calls

    async def one_at_a_time() -> tuple[list[np.ndarray], list[int]]:
        model = CountingModel(world_model)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=1, max_wait_ms=0))
        await engine.start()
        try:
            out = [(await engine.imagine(f, a, seed=s)).frames for f, a, s in reqs]
        finally:
            await engine.stop()
        return out, model.calls

    got, calls = run(batched())
    want, single_calls = run(one_at_a_time())
    # All six requests' chunks ran together: one model call per chunk.
    assert calls == [n_requests] * chunks
    assert single_calls == [1] * (n_requests * chunks)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (1, chunks * 4, 64, 64, 3)
        # Same seeds: same frames, up to float rounding in a batched matmul.
        assert np.abs(g.astype(int) - w).max() <= 1
    # ... and each caller got its own (requests differ, so a mix-up would show).
    assert np.abs(got[0].astype(int) - want[1]).mean() > 5


def test_rows_of_different_chunk_lengths_run_in_separate_batches(world_model) -> None:
    async def scenario() -> list[int]:
        model = CountingModel(world_model)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=8, max_wait_ms=100))
        await engine.start()
        try:
            short, long_ = await asyncio.gather(
                engine.imagine(frames(), actions(2, 8), seed=1),
                engine.imagine(frames(), actions(1, 16), seed=2),
            )
        finally:
            await engine.stop()
        assert short.frames.shape == (2, 4, 64, 64, 3)
        assert long_.frames.shape == (1, 8, 64, 64, 3)
        return model.calls

    assert sorted(run(scenario())) == [1, 2]


def test_imagine_reports_seed_provenance_and_timing(world_model) -> None:
    async def scenario() -> None:
        engine = SimulatorEngine(world_model)
        await engine.start()
        try:
            res = await engine.imagine(frames(), actions(3, 2, 8), horizon_chunks=1)
            again = await engine.imagine(frames(), actions(3, 2, 8), 1, seed=res.seed)
        finally:
            await engine.stop()
        assert res.frames.shape == (3, 4, 64, 64, 3)  # horizon 1 of 2 chunks
        assert np.array_equal(res.frames, again.frames)  # the reported seed reproduces it
        assert res.provenance["world_model_sha256"] == "tiny"
        assert res.provenance["seed"] == str(res.seed)
        assert set(res.timing) == {"queue", "encode", "denoise", "total"}
        # Different candidates see different noise even with equal actions.
        same = np.repeat(actions(1, 1, 8), 2, 0)
        await engine.start()
        try:
            pair = await engine.imagine(frames(), same, seed=3)
        finally:
            await engine.stop()
        assert not np.array_equal(pair.frames[0], pair.frames[1])

    run(scenario())


def test_admission_limit_and_request_size(world_model) -> None:
    async def scenario() -> None:
        model = CountingModel(world_model, gated=True)
        engine = SimulatorEngine(model, EngineConfig(max_queued_rollouts=3, max_wait_ms=0))
        await engine.start()
        try:
            first = asyncio.create_task(engine.imagine(frames(), actions(2, 8), seed=0))
            await asyncio.to_thread(model.entered.wait, 5)  # held inside the model
            assert engine.admitted_rows == 2
            with pytest.raises(ResourceExhausted, match="2 rollouts queued or running, limit 3"):
                engine.open_imagine(frames(), actions(2, 8))
            with pytest.raises(InvalidArgument, match="4 rollouts in one request exceed"):
                engine.open_imagine(frames(), actions(4, 8))
            model.gate.set()
            assert (await first).frames.shape == (2, 4, 64, 64, 3)
            assert engine.admitted_rows == 0
        finally:
            model.gate.set()
            await engine.stop()

    run(scenario())


def test_cancelled_caller_work_is_dropped_from_the_queue(world_model) -> None:
    async def scenario() -> None:
        model = CountingModel(world_model, gated=True)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=1, max_wait_ms=0))
        await engine.start()
        try:
            # Launched together: both encode (one model thread) before the held step.
            running = asyncio.create_task(engine.imagine(frames(), actions(1, 8), seed=0))
            queued = asyncio.create_task(engine.imagine(frames(1), actions(3, 8), seed=1))
            await asyncio.to_thread(model.entered.wait, 5)
            for _ in range(100):  # until its rows are queued behind the held batch
                if engine.queued_rows == 3:
                    break
                await asyncio.sleep(0.01)
            assert engine.queued_rows == 3
            queued.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert engine.queued_rows == 0
            assert engine.stats.dropped_rows == 3
            assert engine.admitted_rows == 1  # its reservation was released too
            model.gate.set()
            await running
            assert model.calls == [1]  # the cancelled rows never reached the model
        finally:
            model.gate.set()
            await engine.stop()

    run(scenario())


def test_stop_fails_queued_work_and_refuses_new(world_model) -> None:
    async def scenario() -> None:
        model = CountingModel(world_model, gated=True)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=1, max_wait_ms=0))
        await engine.start()
        running = asyncio.create_task(engine.imagine(frames(), actions(1, 8), seed=0))
        queued = asyncio.create_task(engine.imagine(frames(), actions(1, 8), seed=1))
        await asyncio.to_thread(model.entered.wait, 5)
        while engine.queued_rows < 1:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(engine.stop())
        await asyncio.sleep(0.01)
        model.gate.set()  # the running batch finishes; the queued one is refused
        await stopping
        assert (await running).frames.shape == (1, 4, 64, 64, 3)
        with pytest.raises(Unavailable, match="shutting down"):
            await queued
        with pytest.raises(Unavailable):
            engine.open_imagine(frames(), actions(1, 8))

    run(scenario())


@pytest.mark.parametrize(
    ("start", "cands", "kwargs", "message"),
    [
        (frames()[0, :32, :32], actions(1, 8), {}, "takes 64x64 frames, got 32x32"),
        (frames(n=2), actions(1, 8), {}, "starts from one frame"),
        (frames().astype(np.float32), actions(1, 8), {}, "dtype must be uint8"),
        (frames(), actions(1, 7), {}, "multiple of the model's frame stride 2"),
        (frames(), actions(1, 24), {}, "exceeds this model's maximum of 22"),
        (frames(), actions(1, 2, 8), {"horizon_chunks": 3}, "between 1 and the 2 chunks"),
        (frames(), actions(1, 8)[..., :3], {}, "last axis must be 4"),
        (frames(), actions(1, 8).astype(np.float16), {}, "dtype must be float32"),
        (frames(), np.full((1, 8, 4), np.nan, np.float32), {}, "32 non-finite values"),
    ],
)
def test_bad_requests_are_invalid_arguments(world_model, start, cands, kwargs, message) -> None:
    async def scenario() -> None:
        engine = SimulatorEngine(world_model)
        await engine.start()
        try:
            with pytest.raises(InvalidArgument, match=message):
                engine.open_imagine(start, cands, **kwargs)
            assert engine.admitted_rows == 0
        finally:
            await engine.stop()

    run(scenario())


def test_a_failed_model_call_fails_its_batch_and_the_loop_keeps_serving(world_model) -> None:
    async def scenario() -> None:
        model = CountingModel(world_model)
        model.fail_calls = {1}
        engine = SimulatorEngine(model, EngineConfig(max_wait_ms=0))
        await engine.start()
        try:
            with pytest.raises(Internal) as err:
                await engine.imagine(frames(), actions(2, 8), seed=1)
            assert "internal error" in err.value.message and "secret" not in err.value.message
            assert engine.admitted_rows == 0
            ok = await engine.imagine(frames(), actions(2, 8), seed=1)
            assert ok.frames.shape == (2, 4, 64, 64, 3)
        finally:
            await engine.stop()

    run(scenario())


def test_a_lone_rollout_does_not_wait_out_the_window_after_its_first_chunk(world_model) -> None:
    # One imagine of 1 candidate x 4 chunks with a long wait window: the first chunk waits
    # for company (nothing has run yet), the next ones start at once, since the last batch's
    # only rollout is queued again (no other row is known to be coming).
    async def scenario() -> tuple[dict[str, float], list[int]]:
        model = CountingModel(world_model)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=8, max_wait_ms=800))
        await engine.start()
        try:
            res = await engine.imagine(frames(), actions(1, 4, 8), seed=3)
        finally:
            await engine.stop()
        return res.timing, model.calls

    timing, calls = run(scenario())
    assert calls == [1, 1, 1, 1]
    assert 0.75 <= timing["queue"] < 1.2  # the first chunk's window only, not 4 x 0.8 s
