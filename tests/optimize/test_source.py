"""The optimizer in MetaWorld's closed loop (``wmpo eval optimizer``): goal reaching from the
scripted expert's demonstration on the same layout, with the tests' tiny planner saved as
checkpoints (a real planner, not a good one) and a real MetaWorld environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.services.optimizer.conftest import save_planner
from wmpo.data.collect import run_episode
from wmpo.envs import make_env
from wmpo.errors import ConfigError
from wmpo.optimize.source import ExpertDemo, OptimizerSource

TASK, SEED = "button-press-topdown-v3", 1_000_003


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_planner(tmp_path_factory.mktemp("source-checkpoints"))


def test_the_expert_demonstration_replays_the_same_layout_and_holds_its_end() -> None:
    demo = ExpertDemo().run(TASK, SEED, image_size=64, max_steps=160)
    env = make_env(TASK, image_size=64)
    frame, info = env.reset(seed=SEED)
    assert demo.success and np.array_equal(demo.frames[0], frame)  # the same layout, the same camera
    n = len(demo.frames)
    assert demo.frames.shape == (n, 64, 64, 3) and demo.end_state.shape == (39,)
    clip = demo.clip(0, 2, 8)
    assert np.array_equal(clip, demo.frames[2:17:2])
    assert all(np.array_equal(f, demo.frames[-1]) for f in demo.clip(n - 3, 2, 4))  # held at the end
    assert demo.errors(demo.end_state) == {"object_error": 0.0, "hand_error": 0.0}
    assert demo.errors(info["state"])["hand_error"] > 0.01  # the expert moved the hand
    env.close()


def test_goal_reaching_plans_toward_the_demonstration_and_reports_where_it_ended(checkpoints) -> None:
    generator, vae = checkpoints
    source = OptimizerSource(str(generator), str(vae), None, variant="full", steps=1, execute_chunks=1, goal="demo")
    assert source.describe()["goal"] == "demo"
    seen: list[np.ndarray | None] = []
    prepare = source.planner.prepare

    def spy(requests):
        seen.extend(r.target_frames for r in requests)
        return prepare(requests)

    source.planner.prepare = spy
    env = make_env(TASK, image_size=64, max_steps=24)
    result = run_episode(env, source, SEED, keep_frames=False)
    assert result["plans"] == 3 and len(seen) == 3  # 24 actions, one chunk of 8 per plan
    demo = ExpertDemo().run(TASK, SEED, image_size=64, max_steps=24)
    assert demo.success is False  # cut at 24 steps
    assert np.array_equal(seen[0], demo.clip(0, 2, 8)) and np.array_equal(seen[1], demo.clip(8, 2, 8))
    assert result["object_error"] == pytest.approx(demo.errors(env.state)["object_error"])
    assert result["demo_length"] == 24 and result["hand_error"] >= 0
    env.close()


def test_an_unknown_goal_is_refused(checkpoints) -> None:
    generator, vae = checkpoints
    with pytest.raises(ConfigError, match="unknown optimizer goal"):
        OptimizerSource(str(generator), str(vae), None, variant="full", goal="dream")
    # The default goal keeps describe() (and so earlier runs' episode seeds) as it was.
    assert "goal" not in OptimizerSource(str(generator), str(vae), None, variant="full").describe()


def test_the_learning_rate_reaches_the_planner_and_is_checked(checkpoints) -> None:
    generator, vae = checkpoints
    assert OptimizerSource(str(generator), str(vae), None, variant="full").planner.config.lr == 0.1
    source = OptimizerSource(str(generator), str(vae), None, variant="full", lr=0.02)
    assert source.planner.config.lr == source.planner.config.init_lr == 0.02
    assert source.describe()["planner"]["lr"] == 0.02
    with pytest.raises(ConfigError, match="invalid planner config: lr"):
        OptimizerSource(str(generator), str(vae), None, variant="full", lr=-1.0)


def test_eval_optimizer_command_records_the_learning_rate_only_when_set(checkpoints, tmp_path) -> None:
    """`wmpo eval optimizer --lr`: in the report's source when given; absent otherwise, so the
    journals and pieces of evaluations run before the flag existed still match."""
    import json

    from wmpo.cli import main

    generator, vae = checkpoints
    base = ["eval", "optimizer", "--generator", str(generator), "--trajectory-vae", str(vae), "--variant", "full",
            "--steps", "1", "--tasks", TASK, "--episodes", "1", "--workers", "1", "--max-steps", "8"]
    for extra, want in (([], None), (["--lr", "0.02"], 0.02), (["--lr", "0.02", "--anchor"], 0.02)):
        out = tmp_path / f"report{len(extra)}.json"
        main([*base, *extra, "--json", str(out)])
        report = json.loads(out.read_text())
        assert report["source"]["optimizer"].get("lr") == want and report["overall"]["episodes"] == 1
        assert report["source"]["optimizer"].get("anchor") == ("--anchor" in extra or None)
