"""Policy evaluation in imagination (`wmpo eval policy-imagination`): the same held-out layouts
and policy seed on both sides, the imagined side through the embedded services."""

import json

import numpy as np
import pytest

from wmpo.data.collect import EVAL_SEED_BASE
from wmpo.errors import ConfigError
from wmpo.eval.policy_imagination import ImaginationEvalConfig, agreement, eval_starts


def test_agreement_is_pearson_r_and_mean_absolute_error_in_points():
    pairs = [(0.1, 0.2), (0.5, 0.4), (0.9, 1.0)]
    a = agreement(pairs)
    x, y = np.array(pairs).T
    assert a["pairs"] == 3 and a["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert a["mae_points"] == pytest.approx(10.0)
    assert agreement([(0.5, 0.0), (0.5, 1.0)])["pearson_r"] is None  # one side constant: undefined
    assert agreement([])["mae_points"] is None


def test_starts_are_the_policy_evaluations_layouts():
    starts = eval_starts(["reach-v3"], 2, seed_offset=5)
    assert [s.seed for s in starts] == [EVAL_SEED_BASE + 5, EVAL_SEED_BASE + 6]
    assert starts[0].frame.shape == (64, 64, 3) and starts[0].frame.dtype == np.uint8
    assert not np.array_equal(starts[0].frame, starts[1].frame)  # two layouts


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="temperature"):
        ImaginationEvalConfig(["p"], ["reach-v3"], temperature=0)
    with pytest.raises(ConfigError, match="episodes"):
        ImaginationEvalConfig(["p"], ["reach-v3"], episodes=0)


def test_the_command_scores_a_policy_in_imagination_and_in_metaworld(tmp_path, capsys):
    from services.cli import main

    out = tmp_path / "report.json"
    assert main(["eval", "policy-imagination", "--checkpoint", "checkpoints/policy-base", "--tasks",
                 "button-press-topdown-v3,drawer-close-v3", "--episodes", "2", "--chunks", "2", "--batch", "3",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    side = report["policies"]["checkpoints/policy-base"]
    for kind in ("imagined", "real"):
        assert sorted(side[kind]) == ["button-press-topdown-v3", "drawer-close-v3"]
        assert all(r["n"] == 2 and 0 <= r["rate"] <= 1 for r in side[kind].values())
    assert report["seeds"] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 2]
    assert report["agreement"]["pairs"] == 2
    assert report["simulator"] and report["judge"]  # the serving models' provenance
    assert "Pearson r" in capsys.readouterr().out
    assert main(["eval", "policy-imagination", "--checkpoint", "checkpoints/policy-base", "--simulator-url",
                 "http://127.0.0.1:1"]) == 2
    assert "--judge-url" in capsys.readouterr().err
