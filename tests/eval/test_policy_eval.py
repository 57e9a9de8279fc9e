import pytest

from wmpo.data.collect import EVAL_SEED_BASE, SourceSpec
from wmpo.eval.policy import EvalConfig, evaluate, format_table
from wmpo.eval.stats import wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_scripted_expert_scores_near_100_percent_on_held_out_seeds():
    report = evaluate(EvalConfig(tasks=["button-press-topdown-v3", "drawer-close-v3"],
                                 source=SourceSpec("expert"), episodes=4, workers=2), progress=False)
    assert report["overall"]["success_rate"] >= 0.95
    assert report["seeds"] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 3]
    assert all(r["seed"] >= EVAL_SEED_BASE for r in report["episodes_detail"])
    table = format_table(report)
    assert "button-press-topdown-v3" in table and "overall" in table
