"""The judge engine: batching across requests, thresholds, admission, cancellation, failures.

Runs the real tiny classifier on real MetaWorld frames; `CountingJudge` only counts calls and
can hold one inside the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from services.common.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.judge.engine import JudgeEngine, JudgeEngineConfig
from services.judge.runtime import JudgeRuntime
from tests.services.judge.conftest import INSTRUCTION, CountingJudge, settings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_concurrent_requests_share_one_forward_and_match_one_at_a_time(classifier, videos) -> None:
    # Six different requests: four episodes and two prefixes of them.
    vids = [*videos.all, videos.successes[0][:30], videos.failures[0][:12]]
    thr = classifier.threshold

    async def batched() -> tuple[list[Any], CountingJudge, JudgeEngine]:
        model = CountingJudge(classifier)
        engine = JudgeEngine(model, None, JudgeEngineConfig(max_batch_size=16, max_wait_ms=200))
        await engine.start()
        try:
            with engine.admit(len(vids)):
                results = await asyncio.gather(
                    *(engine.classify([v], [INSTRUCTION], [1], thr) for v in vids)
                )
        finally:
            await engine.stop()
        return results, model, engine

    results, model, engine = run(batched())
    assert model.calls == [len(vids)]  # one judge_many over every request's clips
    assert engine.stats.largest_batch_jobs == len(vids) and engine.stats.model_calls == 1
    assert all(r.batch_jobs == len(vids) and r.batch_videos == len(vids) for r in results)
    for video, res in zip(vids, results, strict=True):
        (alone,) = classifier.judge_many([video], [INSTRUCTION])
        (got,) = res.verdicts
        assert got.success == alone.success and got.best_clip == alone.best_clip
        assert got.frames_used == alone.frames_used and got.done_clip == alone.done_clip
        # Batched convolutions may round differently in the last float32 bits.
        assert np.allclose(got.clip_scores, alone.clip_scores, atol=2e-4)
        assert got.score == pytest.approx(alone.score, abs=1e-5)
    # Each caller got its own verdict back (videos differ in length, so a mix-up shows).
    assert [len(r.verdicts[0].frames_used) for r in results] == [
        len(range((len(v) - 1) % 2, len(v), 2)) for v in vids
    ]


def test_batches_respect_max_size_and_thresholds(classifier, videos) -> None:
    async def scenario() -> list[int]:
        model = CountingJudge(classifier)
        engine = JudgeEngine(model, None, JudgeEngineConfig(max_batch_size=3, max_wait_ms=200))
        await engine.start()
        try:
            with engine.admit(7):
                await asyncio.gather(
                    # Different thresholds never share a call ...
                    engine.classify([videos.failures[0]], [INSTRUCTION], [1], 0.9),
                    engine.classify([videos.failures[1]], [INSTRUCTION], [1], 0.1),
                    # ... a request bigger than max_batch_size runs whole, on its own.
                    engine.classify(videos.all, [INSTRUCTION] * 4, [1] * 4, 0.9),
                    engine.classify([videos.successes[0]], [INSTRUCTION], [1], 0.1),
                )
        finally:
            await engine.stop()
        return model.calls

    # [A(0.9)], then [B(0.1), D(0.1)], then the 4-video request alone.
    assert run(scenario()) == [1, 2, 4]


def test_batches_respect_the_clip_budget(classifier, videos) -> None:
    video = videos.successes[0]

    async def scenario() -> tuple[list[int], int, Any]:
        model = CountingJudge(classifier)
        probe = JudgeEngine(model, None)
        clips = probe.clip_count(video, 1)
        # Room for the clips of one video per call: two requests, two calls.
        config = JudgeEngineConfig(max_batch_clips=clips, max_wait_ms=200)
        engine = JudgeEngine(model, None, config)
        await engine.start()
        try:
            with engine.admit(2):
                results = await asyncio.gather(
                    *(engine.classify([video], [INSTRUCTION], [1], 0.5) for _ in range(2))
                )
        finally:
            await engine.stop()
        return model.calls, clips, results[0].verdicts[0]

    calls, clips, verdict = run(scenario())
    assert calls == [1, 1] and clips == len(verdict.clip_scores)


def test_admission_limit_cancellation_and_shutdown(classifier, videos) -> None:
    async def scenario() -> None:
        model = CountingJudge(classifier, gated=True)
        engine = JudgeEngine(
            model, None, JudgeEngineConfig(max_queued_videos=3, max_wait_ms=0, max_batch_size=1)
        )
        await engine.start()
        held = engine.reserve(1)
        first = asyncio.create_task(engine.classify([videos.successes[0]], [INSTRUCTION], [1], 0.5))
        await asyncio.to_thread(model.entered.wait, 5)  # held inside the model
        queued_res = engine.reserve(2)
        queued = asyncio.create_task(
            engine.classify(videos.failures, [INSTRUCTION] * 2, [1, 1], 0.5)
        )
        await asyncio.sleep(0.05)
        assert engine.admitted_videos == 3 and engine.queued_videos == 2
        with pytest.raises(ResourceExhausted, match="3 videos queued or being judged, limit 3"):
            engine.reserve(1)
        with pytest.raises(InvalidArgument, match="4 videos in one request exceed the limit"):
            engine.reserve(4)
        # A caller that goes away takes its queued job with it.
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        queued_res.release()
        assert engine.queued_videos == 0 and engine.stats.dropped_jobs == 1
        # Shutdown fails what is still queued and lets the running batch finish.
        late = asyncio.create_task(engine.classify([videos.failures[0]], [INSTRUCTION], [1], 0.5))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(engine.stop())
        await asyncio.sleep(0.05)
        model.gate.set()
        await stopping
        assert (await first).verdicts[0].frames_used
        with pytest.raises(Unavailable, match="shutting down"):
            await late
        held.release()
        assert model.calls == [1]
        with pytest.raises(Unavailable, match="not running"):
            engine.reserve(1)

    run(scenario())


def test_a_failing_model_call_is_a_generic_internal_error(classifier, videos) -> None:
    async def scenario() -> None:
        model = CountingJudge(classifier)
        model.fail = True
        engine = JudgeEngine(model, None, JudgeEngineConfig(max_wait_ms=0))
        await engine.start()
        try:
            with engine.admit(1), pytest.raises(Internal) as err:
                await engine.classify([videos.successes[0]], [INSTRUCTION], [1], 0.5)
        finally:
            await engine.stop()
        assert "internal error" in err.value.message and "secret" not in err.value.message

    run(scenario())


def test_runtime_validation_names_the_problem(classifier, videos) -> None:
    async def scenario() -> None:
        rt = JudgeRuntime(classifier, settings())
        await rt.start()
        try:
            ok = await rt.judge(videos.successes[0], INSTRUCTION, frame_stride=2)
            assert ok.kind == "classifier" and ok.provenance["frame_stride"] == "2"
            cases: list[tuple[dict[str, Any], type[Exception], str]] = [
                ({"kind": "vlm"}, FailedPrecondition, "no VLM endpoint configured"),
                ({"kind": "judge-dredd"}, InvalidArgument, "kind must be one of"),
                (
                    {"frame_stride": 3},
                    InvalidArgument,
                    "must divide the classifier's frame stride 2",
                ),
                ({"threshold": float("nan")}, InvalidArgument, "threshold must be a number in"),
                ({"threshold": 1.5}, InvalidArgument, "threshold must be a number in"),
                ({"clip_temperature": 0.0}, InvalidArgument, "clip_temperature must be"),
                ({"clip_temperature": float("inf")}, InvalidArgument, "clip_temperature must be"),
            ]
            for kwargs, exc, message in cases:
                with pytest.raises(exc, match=message):
                    await rt.judge(videos.successes[0], INSTRUCTION, **kwargs)
            with pytest.raises(InvalidArgument, match="instruction is required"):
                await rt.judge(videos.successes[0], "  ")
            with pytest.raises(InvalidArgument, match="takes 64x64 frames, got 32x32"):
                await rt.judge(videos.successes[0][:, :32, :32], INSTRUCTION)
            with pytest.raises(InvalidArgument, match="no frames"):
                await rt.judge(videos.successes[0][:0], INSTRUCTION)
            g = [videos.successes[0]] * 2
            with pytest.raises(InvalidArgument, match="replay index 2 is not a rollout"):
                await rt.judge_group(g, INSTRUCTION, replays={2: videos.successes[0]})
            with pytest.raises(InvalidArgument, match="reward must be one of"):
                await rt.judge_group(g, INSTRUCTION, reward="vibes")
            with pytest.raises(InvalidArgument, match="a group has 1 to 64 videos, got 0"):
                await rt.judge_group([], INSTRUCTION)
        finally:
            await rt.stop()
        assert rt.engine.admitted_videos == 0

    run(scenario())
