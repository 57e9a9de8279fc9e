"""The optimizer engine over the tiny planner: concurrent plans share optimization steps (and
get the plans they would get alone), bounded admission, cancellation, the runtime's checks."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from services.common.errors import InvalidArgument, ResourceExhausted
from services.optimizer.engine import PlanOutcome, PlanProgress
from services.optimizer.runtime import OptimizerRuntime
from tests.services.optimizer.conftest import (
    HORIZON,
    INSTRUCTION,
    PLAN_FRAMES,
    SIZE,
    frames,
    settings,
)


def with_runtime(planner: Any, scenario: Any, **overrides: Any) -> Any:
    async def main() -> Any:
        rt = OptimizerRuntime(planner, settings(**overrides))
        await rt.start()
        try:
            return await scenario(rt)
        finally:
            await rt.stop()

    return asyncio.run(main())


def test_concurrent_plans_share_step_calls_and_match_planning_alone(planner) -> None:
    start, goal = frames(2, 10), frames(1, 11)

    async def scenario(rt: OptimizerRuntime) -> tuple[list[PlanOutcome], list[int]]:
        before = len(planner.step_calls)
        outs = await asyncio.gather(
            rt.plan(start[0], INSTRUCTION, steps=4, seed=1),
            rt.plan(start[1], INSTRUCTION, target_frames=goal, steps=4, seed=2),
        )
        assert rt.engine.admitted == 0 and rt.engine.optimizing == 0
        return list(outs), planner.step_calls[before:]

    outs, calls = with_runtime(planner, scenario)
    # 8 plan-steps in at most 5 calls: the second plan joins after the first's first step
    # (its prepare ran behind that step on the one model thread), then they step together.
    assert sum(calls) == 8 and max(calls) == 2 and len(calls) <= 5, calls
    assert max(o.timing["mean_batch_plans"] for o in outs) > 1
    for o in outs:
        assert o.result.actions.shape == (HORIZON, 4) and np.abs(o.result.actions).max() <= 1
        assert o.result.frames.shape == (PLAN_FRAMES, SIZE, SIZE, 3) and len(o.result.objective) == 4
    # Batching changes nothing but float rounding: the same request alone gives the same plan.
    alone = with_runtime(planner, lambda rt: rt.plan(start[0], INSTRUCTION, steps=4, seed=1))
    assert np.allclose(alone.result.actions, outs[0].result.actions, atol=1e-4)
    assert np.allclose(alone.result.objective, outs[0].result.objective, rtol=1e-4)


def test_progress_per_step_then_the_outcome(planner) -> None:
    async def scenario(rt: OptimizerRuntime) -> list[Any]:
        run_ = rt.open_plan(frames(1, 3)[0], INSTRUCTION, steps=3, seed=0)
        try:
            return [e async for e in run_.events()]
        finally:
            run_.close()

    events = with_runtime(planner, scenario)
    assert [e.step for e in events[:-1]] == [1, 2, 3] and isinstance(events[-1], PlanOutcome)
    assert all(isinstance(e, PlanProgress) and e.steps == 3 for e in events[:-1])
    assert [e.objective for e in events[:-1]] == events[-1].result.objective


def test_admission_is_bounded_and_a_cancelled_plan_frees_its_slot(planner) -> None:
    async def scenario(rt: OptimizerRuntime) -> None:
        first = rt.open_plan(frames(1, 4)[0], INSTRUCTION, steps=8, seed=0)
        with pytest.raises(ResourceExhausted, match="optimizer busy: 1 plans in flight, limit 1"):
            rt.open_plan(frames(1, 5)[0], INSTRUCTION, steps=1)
        before = len(planner.step_calls)
        events = first.events()
        await anext(events)  # one step done
        first.close()
        with pytest.raises(BaseException):  # noqa: B017 (cancelled or told so)
            await first.task
        assert first.task.cancelled() and rt.engine.admitted == 0
        assert len(planner.step_calls) - before < 8  # it stopped early
        assert rt.engine.stats.plans_cancelled == 1
        out = await rt.plan(frames(1, 5)[0], INSTRUCTION, steps=1)  # the slot is free again
        assert len(out.result.objective) == 1

    with_runtime(planner, scenario, max_concurrent_plans=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"frame": frames(1, 0, 32)[0]}, "frame: the planner takes 64x64 frames, got 32x32"),
        ({"instruction": "  "}, "instruction is required"),
        ({"steps": 9}, r"steps must be in \[1, 8\]"),
        ({"steps": 0}, r"steps must be in \[1, 8\]"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*32\)"),
        ({"target_frames": frames(2, 0, 32)}, "target_frames: the planner takes 64x64"),
        ({"target_frames": frames(PLAN_FRAMES + 1, 0)}, "target_frames: 1 .* to 8 frames"),
        ({"init_actions": np.zeros((3, 4), np.float32)}, r"init_actions: this planner's horizon is 16"),
        ({"init_actions": np.full((HORIZON, 4), np.nan, np.float32)}, "init_actions: 64 non-finite"),
        ({"init_actions": np.full((HORIZON, 4), 2, np.float32)}, r"init_actions: actions must be in \[-1, 1\]"),
    ],
)
def test_bad_requests_name_the_field(planner, options: dict[str, Any], message: str) -> None:
    rt = OptimizerRuntime(planner, settings())
    args = {"frame": frames(1, 0)[0], "instruction": INSTRUCTION, **options}
    with pytest.raises(InvalidArgument, match=message):
        rt.request(args.pop("frame"), args.pop("instruction"), **args)
