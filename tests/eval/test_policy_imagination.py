"""Policy evaluation in imagination (`wmpo eval policy-imagination`): the same held-out layouts
and policy seed on both sides, the imagined side through the embedded services."""

import json

import numpy as np
import pytest

from wmpo.data.collect import EVAL_SEED_BASE
from wmpo.errors import ConfigError
from wmpo.eval.policy_imagination import (
    ImaginationEvalConfig,
    agreement,
    eval_starts,
    merge_reports,
)


def test_agreement_is_pearson_r_and_mean_absolute_error_in_points():
    pairs = [(0.1, 0.2), (0.5, 0.4), (0.9, 1.0)]
    a = agreement(pairs)
    x, y = np.array(pairs).T
    assert a["pairs"] == 3 and a["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert a["mae_points"] == pytest.approx(10.0)
    assert agreement([(0.5, 0.0), (0.5, 1.0)])["pearson_r"] is None  # one side constant: undefined
    assert agreement([])["mae_points"] is None


def fake_report(policies: dict[str, tuple[list[float], list[float]]], episodes: int = 10) -> dict:
    """A report as evaluate_policies writes it, from (imagined, real) rates per policy."""
    tasks = ["a-v3", "b-v3"]

    def side(rates):
        return {t: {"successes": round(r * episodes), "n": episodes, "rate": r} for t, r in zip(tasks, rates, strict=True)}

    return {"config": {"policies": list(policies), "tasks": tasks, "episodes": episodes, "seed": 0},
            "simulator": {"world_model": "x"}, "judge": {"judge": "y"},
            "policies": {p: {"imagined": side(i), "real": side(r)} for p, (i, r) in policies.items()}}


def test_merged_reports_agree_over_all_policies_and_over_their_task_means():
    a = fake_report({"p1": ([0.2, 0.4], [0.1, 0.5])})
    b = fake_report({"p2": ([0.8, 1.0], [0.9, 0.7]), "p3": ([0.0, 0.2], [0.0, 0.0])})
    m = merge_reports([a, b])
    assert list(m["policies"]) == ["p1", "p2", "p3"] and m["config"]["policies"] == ["p1", "p2", "p3"]
    assert m["agreement"] == pytest.approx(agreement([(0.2, 0.1), (0.4, 0.5), (0.8, 0.9), (1.0, 0.7), (0.0, 0.0), (0.2, 0.0)]))
    assert m["agreement_policy_means"] == pytest.approx(agreement([(0.3, 0.3), (0.9, 0.8), (0.1, 0.0)]))
    with pytest.raises(ConfigError, match=r"differs from the first in \['episodes'\]"):
        merge_reports([a, fake_report({"p2": ([0.5, 0.5], [0.5, 0.5])}, episodes=20)])
    with pytest.raises(ConfigError, match="p1 is in more than one report"):
        merge_reports([a, a])
    b["simulator"]["seed"] = "17"  # a request's seed is not a different model
    assert list(merge_reports([a, b])["policies"]) == ["p1", "p2", "p3"]
    with pytest.raises(ConfigError, match="another simulator"):
        merge_reports([a, {**b, "simulator": {"world_model": "z"}}])


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
    assert report["agreement_policy_means"]["pairs"] == 1
    assert "Pearson r" in capsys.readouterr().out
    other = json.loads(out.read_text())  # the same run under another name: a second "policy"
    other["policies"] = {"copy": other["policies"]["checkpoints/policy-base"]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged = tmp_path / "merged.json"
    assert main(["eval", "policy-imagination", "--merge", str(out), str(tmp_path / "other.json"),
                 "--json", str(merged)]) == 0
    assert json.loads(merged.read_text())["agreement"]["pairs"] == 4
    assert "over 2 policies' task means" in capsys.readouterr().out
    assert main(["eval", "policy-imagination", "--merge", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the report" in capsys.readouterr().err
    assert main(["eval", "policy-imagination"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["eval", "policy-imagination", "--checkpoint", "checkpoints/policy-base", "--simulator-url",
                 "http://127.0.0.1:1"]) == 2
    assert "--judge-url" in capsys.readouterr().err
