"""Remote-simulator sessions over the real engine and the tiny world model."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from services.common.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
)
from services.simulator.engine import EngineConfig, SimulatorEngine, member_seed
from services.simulator.sessions import SessionConfig, SessionManager
from tests.services.simulator.conftest import CountingModel, actions, frames


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_manager(
    world_model: Any,
    scenario: Callable[[SessionManager, CountingModel], Awaitable[None]],
    clock: Callable[[], float] | None = None,
    **config: Any,
) -> None:
    async def main() -> None:
        model = CountingModel(world_model)
        engine = SimulatorEngine(model, EngineConfig(max_wait_ms=20))
        manager = SessionManager(engine, SessionConfig(**config), clock=clock or FakeClock())
        await engine.start()
        await manager.start()
        try:
            await scenario(manager, model)
        finally:
            await manager.stop()
            await engine.stop()

    asyncio.run(main())


def test_same_seed_same_frames_and_replay(world_model) -> None:
    acts = actions(2, 8)  # two chunks

    async def scenario(m: SessionManager, model: CountingModel) -> None:
        outs = []
        for _ in range(2):
            created = await m.create(frames(), "close the drawer", seed=11)
            sid = created.sessions[0].session_id
            assert created.observation.shape == (64, 64, 3)
            assert created.group_id is None and created.sessions[0].seed == 11
            first = await m.step_session(sid, acts[0])
            second = await m.step_session(sid, acts[1])
            r = first.results[0]
            assert r.frames.shape == (4, 64, 64, 3)
            assert r.reward is None and r.done is None and not r.truncated
            assert second.results[0].chunks_stepped == 2
            outs.append((sid, np.concatenate([r.frames, second.results[0].frames])))
        (sid, a), (_, b) = outs
        assert np.array_equal(a, b)  # determinism by seed

        same = await m.replay(sid, seed=11)
        assert np.array_equal(same.frames, a)  # rebuilt from the stored start + record
        fresh = await m.replay(sid)
        assert fresh.seed != 11 and fresh.frames.shape == a.shape
        assert not np.array_equal(fresh.frames, a)  # same actions, fresh noise
        assert m.get(sid).chunks_stepped == 2  # replay leaves the session alone

        # Several chunks in one step equal the same chunks stepped one by one.
        multi = await m.create(frames(), seed=11)
        both = await m.step_session(multi.sessions[0].session_id, acts)
        assert np.array_equal(both.results[0].frames, a)

    with_manager(world_model, scenario)


def test_group_forks_share_start_and_step_in_one_batch(world_model) -> None:
    async def scenario(m: SessionManager, model: CountingModel) -> None:
        created = await m.create(frames(), seed=5, group_size=3)
        infos = created.sessions
        assert created.group_id and [i.group_index for i in infos] == [0, 1, 2]
        assert [i.seed for i in infos] == [member_seed(5, g) for g in range(3)]
        rollouts = [m._sessions[i.session_id].rollout for i in infos]
        assert len({r.anchor.data_ptr() for r in rollouts}) == 1  # one encoded start

        model.calls.clear()
        same = np.repeat(actions(1, 8), 3, 0)
        out = await m.step_group(created.group_id, same)
        assert model.calls == [3]  # the whole group in one model call
        f = [r.frames for r in out.results]
        assert not np.array_equal(f[0], f[1])  # same actions, different noise

        # Member 0 sees the same noise as a single session with the group's seed.
        single = await m.create(frames(), seed=5)
        s_out = await m.step_session(single.sessions[0].session_id, same[0])
        assert np.abs(s_out.results[0].frames.astype(int) - f[0]).max() <= 1

        with pytest.raises(InvalidArgument, match="has 3 open sessions, got 2 rows"):
            await m.step_group(created.group_id, actions(2, 8))
        m.close(infos[1].session_id)
        assert [i.group_index for i in m.get_group(created.group_id)] == [0, 2]
        closed = m.close_group(created.group_id)
        assert closed == [infos[0].session_id, infos[2].session_id]
        with pytest.raises(NotFound, match="was closed"):
            m.get_group(created.group_id)

    with_manager(world_model, scenario)


def test_concurrent_sessions_are_batched(world_model) -> None:
    async def scenario(m: SessionManager, model: CountingModel) -> None:
        ids = [(await m.create(frames(i), seed=i)).sessions[0].session_id for i in range(4)]
        model.calls.clear()
        await asyncio.gather(*(m.step_session(s, actions(8, seed=i)) for i, s in enumerate(ids)))
        assert model.calls == [4]

    with_manager(world_model, scenario)


def test_idle_sessions_expire(world_model) -> None:
    clock = FakeClock()

    async def scenario(m: SessionManager, model: CountingModel) -> None:
        a = (await m.create(frames(), seed=1)).sessions[0]
        b = (await m.create(frames(), seed=2)).sessions[0]
        assert a.expires_at == clock.now + 10
        clock.now += 6
        await m.step_session(b.session_id, actions(8))  # activity renews b
        clock.now += 5
        assert m.sweep() == [a.session_id]
        with pytest.raises(NotFound, match=r"expired after 10 s without activity"):
            m.get(a.session_id)
        clock.now += 11  # past b's TTL: expired on access, without a sweep
        with pytest.raises(NotFound, match="expired"):
            await m.step_session(b.session_id, actions(8))
        assert m.open_sessions == 0

    with_manager(world_model, scenario, clock=clock, ttl_s=10)


def test_session_and_memory_caps(world_model) -> None:
    async def scenario(m: SessionManager, model: CountingModel) -> None:
        group = await m.create(frames(), seed=1, group_size=2)
        with pytest.raises(
            ResourceExhausted, match="2 sessions open, 1 more would pass the limit of 2"
        ):
            await m.create(frames())
        m.close_group(group.group_id)
        s = (await m.create(frames(), seed=1)).sessions[0]
        before = m.get(s.session_id).memory_bytes
        assert before > frames().nbytes  # start frame + rollout + generator state
        await m.step_session(s.session_id, actions(8))
        assert m.get(s.session_id).memory_bytes > before  # history and recorded actions
        assert m.memory_bytes() == m.get(s.session_id).memory_bytes

    with_manager(world_model, scenario, max_sessions=2)

    async def tight(m: SessionManager, model: CountingModel) -> None:
        await m.create(frames(), seed=1)
        with pytest.raises(ResourceExhausted, match="WMPO_MAX_SESSION_MEMORY_BYTES"):
            await m.create(frames(), seed=2)

    with_manager(world_model, tight, max_memory_bytes=frames().nbytes + 10_000)


def test_chunk_budget_truncates_then_refuses(world_model) -> None:
    async def scenario(m: SessionManager, model: CountingModel) -> None:
        sid = (await m.create(frames(), seed=1, max_chunks=2)).sessions[0].session_id
        assert not (await m.step_session(sid, actions(8))).results[0].truncated
        assert (await m.step_session(sid, actions(8))).results[0].truncated
        with pytest.raises(InvalidArgument, match="stepped 2 of its 2 chunks"):
            await m.step_session(sid, actions(8))
        with pytest.raises(InvalidArgument, match="max_chunks=999"):
            await m.create(frames(), max_chunks=999)

    with_manager(world_model, scenario, max_chunks_limit=100)


def test_unknown_session_and_bad_actions(world_model) -> None:
    async def scenario(m: SessionManager, model: CountingModel) -> None:
        with pytest.raises(NotFound, match="session 's-nope' does not exist"):
            m.get("s-nope")
        with pytest.raises(NotFound, match="does not exist"):
            await m.step_session("s-nope", actions(8))
        with pytest.raises(NotFound, match="group 'g-nope' does not exist"):
            await m.step_group("g-nope", actions(2, 8))
        sid = (await m.create(frames(), seed=1)).sessions[0].session_id
        nan = actions(8)
        nan[3, 1] = np.nan
        with pytest.raises(
            InvalidArgument, match=r"1 non-finite values .* first at index \(3, 1\)"
        ):
            await m.step_session(sid, nan)
        with pytest.raises(InvalidArgument, match="expected shape"):
            await m.step_session(sid, actions(2, 2, 8))
        assert m.get(sid).chunks_stepped == 0
        m.close(sid)
        with pytest.raises(NotFound, match="was closed"):
            await m.replay(sid)

    with_manager(world_model, scenario)


def test_cancelled_step_keeps_the_record_consistent(world_model) -> None:
    async def main() -> None:
        model = CountingModel(world_model, gated=True)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=1, max_wait_ms=0))
        m = SessionManager(engine, SessionConfig(), clock=FakeClock())
        await engine.start()
        try:
            model.gate.set()
            a, b = [(await m.create(frames(), seed=s)).sessions[0].session_id for s in (1, 2)]
            model.gate.clear()
            running = asyncio.create_task(m.step_session(a, actions(8)))
            await asyncio.to_thread(model.entered.wait, 5)
            queued = asyncio.create_task(m.step_session(b, actions(8)))
            while engine.queued_rows < 1:
                await asyncio.sleep(0.01)
            running.cancel()  # its row is inside the model: the chunk still happens
            queued.cancel()  # its row is still queued: dropped
            for t in (running, queued):
                with pytest.raises(asyncio.CancelledError):
                    await t
            model.gate.set()
            assert m.get(a).chunks_stepped == 1 and m.get(b).chunks_stepped == 0
            assert engine.admitted_rows == 0
        finally:
            model.gate.set()
            await engine.stop()

    asyncio.run(main())


# ------------------------------------------------------------ idempotent steps


def test_a_repeated_step_returns_the_stored_result_and_does_not_advance(world_model) -> None:
    acts = actions(3, 8, seed=4)

    async def scenario(m: SessionManager, model: CountingModel) -> None:
        sid = (await m.create(frames(), seed=3)).sessions[0].session_id
        first = await m.step_session(sid, acts[0], expected_chunks_stepped=0)
        assert not first.replayed and first.results[0].chunks_stepped == 1
        calls = len(model.calls)
        held = m.get(sid).memory_bytes

        again = await m.step_session(sid, acts[0].copy(), expected_chunks_stepped=0)  # a retry
        assert again.replayed
        assert np.array_equal(again.results[0].frames, first.results[0].frames)
        assert again.results[0].chunks_stepped == 1
        assert len(model.calls) == calls  # no model call
        assert m.get(sid).chunks_stepped == 1 and m.get(sid).memory_bytes == held
        assert np.array_equal((await m.replay(sid, seed=3)).frames, first.results[0].frames)

        # The next step goes on from there; the one before it can no longer be repeated.
        second = await m.step_session(sid, acts[1:3], expected_chunks_stepped=1)
        assert not second.replayed and second.results[0].chunks_stepped == 3
        repeat = await m.step_session(sid, acts[1:3], expected_chunks_stepped=1)
        assert repeat.replayed and np.array_equal(
            repeat.results[0].frames, second.results[0].frames
        )
        with pytest.raises(Conflict, match=r"only its last step \(from 1 chunks\)"):
            await m.step_session(sid, acts[0], expected_chunks_stepped=0)
        assert m.get(sid).chunks_stepped == 3

    with_manager(world_model, scenario)


def test_a_failed_step_does_not_advance_and_its_retry_runs_it_again(world_model) -> None:
    """A step whose model call fails (here after the sampler advanced the rollouts, in the
    second of its two chunks) leaves the group as it was: the count, the recorded actions and
    the rollouts' state, so the retry with the same expected count runs (no 409) and gives the
    frames of a group that never failed."""
    acts = actions(2, 3, 8, seed=6)  # 2 members, 3 chunks

    async def scenario(m: SessionManager, model: CountingModel) -> None:
        async def group() -> str:
            return str((await m.create(frames(), seed=3, group_size=2)).group_id)

        clean = await group()
        await m.step_group(clean, acts[:, :1], expected_chunks_stepped=0)
        want = await m.step_group(clean, acts[:, 1:], expected_chunks_stepped=1)

        gid = await group()
        await m.step_group(gid, acts[:, :1], expected_chunks_stepped=0)
        model.fail_calls, model.fail_after_step = {len(model.calls) + 2}, True
        with pytest.raises(ServiceError):
            await m.step_group(gid, acts[:, 1:], expected_chunks_stepped=1)
        members = m._members(gid)
        assert [s.chunks_stepped for s in members] == [1, 1]
        assert [s.rollout.ar_step for s in members] == [1, 1]  # the failed chunk put back
        assert [s.actions_nbytes for s in members] == [8 * 4 * 4] * 2

        again = await m.step_group(gid, acts[:, 1:], expected_chunks_stepped=1)
        assert not again.replayed and [r.chunks_stepped for r in again.results] == [3, 3]
        for got, ref in zip(again.results, want.results, strict=True):
            assert np.array_equal(got.frames, ref.frames)

    with_manager(world_model, scenario)


def test_a_wrong_step_count_is_a_conflict_that_says_where_the_session_is(world_model) -> None:
    acts = actions(2, 8, seed=5)

    async def scenario(m: SessionManager, model: CountingModel) -> None:
        sid = (await m.create(frames(), seed=3)).sessions[0].session_id
        with pytest.raises(Conflict, match=r"stepped 0 chunks, fewer than .*=2; send .*=0"):
            await m.step_session(sid, acts[0], expected_chunks_stepped=2)
        await m.step_session(sid, acts[0], expected_chunks_stepped=0)
        with pytest.raises(Conflict, match="already done with other actions"):
            await m.step_session(sid, acts[1], expected_chunks_stepped=0)
        with pytest.raises(Conflict, match="advanced it by 1 chunks, this request has 2"):
            await m.step_session(sid, acts, expected_chunks_stepped=0)
        with pytest.raises(InvalidArgument, match=r"expected_chunks_stepped must be in \[0"):
            await m.step_session(sid, acts[0], expected_chunks_stepped=-1)
        assert m.get(sid).chunks_stepped == 1

        # A step without a count supersedes the kept result: nothing left to repeat.
        await m.step_session(sid, acts[1])
        assert m._sessions[sid].last_step is None
        with pytest.raises(Conflict, match="no step that named expected_chunks_stepped"):
            await m.step_session(sid, acts[1], expected_chunks_stepped=1)
        assert m.get(sid).chunks_stepped == 2

    with_manager(world_model, scenario)


def test_a_repeated_group_step_returns_every_members_stored_result(world_model) -> None:
    async def scenario(m: SessionManager, model: CountingModel) -> None:
        created = await m.create(frames(), seed=5, group_size=3)
        gid = created.group_id
        acts = actions(3, 8, seed=1)
        first = await m.step_group(gid, acts, expected_chunks_stepped=0)
        calls = len(model.calls)
        again = await m.step_group(gid, acts, expected_chunks_stepped=0)
        assert again.replayed and len(model.calls) == calls
        for a, b in zip(first.results, again.results, strict=True):
            assert a.session_id == b.session_id and np.array_equal(a.frames, b.frames)
        assert [i.chunks_stepped for i in m.get_group(gid)] == [1, 1, 1]

        # One member stepped on its own: the group is no longer at one step.
        member = created.sessions[1].session_id
        await m.step_session(member, acts[1], expected_chunks_stepped=1)
        with pytest.raises(Conflict, match=r"at different steps \(\[1, 2, 1\] chunks\)"):
            await m.step_group(gid, acts, expected_chunks_stepped=1)  # member 1's repeats
        other = actions(3, 8, seed=9)
        with pytest.raises(Conflict, match=rf"'{member}' has stepped 2 chunks: .* other actions"):
            await m.step_group(gid, other, expected_chunks_stepped=1)
        assert [i.chunks_stepped for i in m.get_group(gid)] == [1, 2, 1]

    with_manager(world_model, scenario)


def test_a_step_whose_caller_went_away_finishes_and_its_retry_gets_the_frames(
    world_model,
) -> None:
    """The network-timeout case: the trainer gives up while the model runs, then retries."""

    async def main() -> None:
        model = CountingModel(world_model, gated=True)
        engine = SimulatorEngine(model, EngineConfig(max_batch_size=1, max_wait_ms=0))
        m = SessionManager(engine, SessionConfig(), clock=FakeClock())
        await engine.start()
        try:
            model.gate.set()
            sid = (await m.create(frames(), seed=7)).sessions[0].session_id
            model.gate.clear()
            acts = actions(2, 8, seed=2)  # two chunks: the second is still queued at cancel
            gone = asyncio.create_task(m.step_session(sid, acts, expected_chunks_stepped=0))
            await asyncio.to_thread(model.entered.wait, 5)
            gone.cancel()  # the caller's timeout
            with pytest.raises(asyncio.CancelledError):
                await gone
            retry = asyncio.create_task(m.step_session(sid, acts, expected_chunks_stepped=0))
            await asyncio.sleep(0.05)
            assert not retry.done()  # waits for the step in flight instead of stepping again
            model.gate.set()
            out = await retry
            assert out.replayed and out.results[0].chunks_stepped == 2
            assert model.calls == [1, 1]  # both chunks ran once, nothing twice
            assert m.get(sid).chunks_stepped == 2
            same_seed = await m.replay(sid, seed=7)  # what the lost response carried
            assert np.array_equal(out.results[0].frames, same_seed.frames)
        finally:
            model.gate.set()
            await m.stop()
            await engine.stop()

    asyncio.run(main())
