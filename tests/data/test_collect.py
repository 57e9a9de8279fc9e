import numpy as np
import pytest

from wmpo.data.collect import EVAL_SEED_BASE, CollectConfig, collect, run_episode, source_rng
from wmpo.data.episodes import EpisodeDataset
from wmpo.data.sources import PerturbedSource, RandomWalkSource, make_source
from wmpo.envs import make_env
from wmpo.errors import ConfigError


def test_collect_two_workers_then_resume(tmp_path):
    cfg = CollectConfig(out=str(tmp_path), tasks=["reach-v3", "button-press-topdown-v3"], source="expert",
                        episodes=2, workers=2, max_steps=120)
    s = collect(cfg, progress=False)
    assert s["episodes_collected"] == 4
    assert all(v["successes"] == 2 for v in s["per_task"].values())
    ds = EpisodeDataset.load(tmp_path)
    assert sorted((m["task"], m["seed"]) for m in ds.episodes) == [
        ("button-press-topdown-v3", 0), ("button-press-topdown-v3", 1), ("reach-v3", 0), ("reach-v3", 1)]
    # Every stored episode ends at its first success and says so per frame.
    for i in range(len(ds)):
        ep = ds.episode(i)
        assert ep.success[-1] and not ep.success[:-1].any()
    # Same command again: nothing new to do, nothing duplicated.
    again = collect(cfg, progress=False)
    assert again["episodes_collected"] == 0 and again["episodes_skipped_existing"] == 4
    assert len(EpisodeDataset.load(tmp_path)) == 4


def test_eval_seeds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="reserved for evaluation"):
        collect(CollectConfig(out=str(tmp_path), tasks=["reach-v3"], seed_start=EVAL_SEED_BASE - 1,
                              episodes=2), progress=False)


def test_noisy_expert_fails_sometimes_and_is_reproducible():
    env = make_env("pick-place-v3", max_steps=100)
    src = make_source("noisy", noise_std=1.0)
    results = [run_episode(env, src, seed, keep_frames=False)["success"] for seed in range(6)]
    assert not all(results)
    a = run_episode(env, src, 3)
    b = run_episode(env, src, 3)
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.frames, b.frames)
    env.close()


def test_action_diverse_sources_are_not_the_expert():
    env = make_env("push-v3", max_steps=40)
    expert = run_episode(env, make_source("expert"), 0)
    for src in (RandomWalkSource(), PerturbedSource(prob=0.5)):
        ep = run_episode(env, src, 0)
        n = min(ep.length, expert.length)
        assert np.abs(ep.actions[:n] - expert.actions[:n]).mean() > 0.1
        assert ep.meta["source"]["kind"] in ("random-walk", "perturbed")
    env.close()


def test_source_rng_depends_on_seed_and_source():
    a = source_rng(1, {"kind": "noisy", "noise_std": 0.5}).normal(size=3)
    b = source_rng(1, {"kind": "noisy", "noise_std": 0.5}).normal(size=3)
    c = source_rng(2, {"kind": "noisy", "noise_std": 0.5}).normal(size=3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_source_arguments():
    with pytest.raises(ConfigError, match="valid sources"):
        make_source("teleop")
    with pytest.raises(ConfigError, match="--checkpoint"):
        make_source("policy")
