import json

import pytest

from wmpo.data.collect import EVAL_SEED_BASE, SourceSpec
from wmpo.errors import ConfigError
from wmpo.eval.policy import EvalConfig, evaluate, format_table, merge_reports
from wmpo.eval.stats import wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def expert_report():
    return evaluate(EvalConfig(tasks=["button-press-topdown-v3", "drawer-close-v3"],
                                 source=SourceSpec("expert"), episodes=4, workers=2), progress=False)


def test_scripted_expert_scores_near_100_percent_on_held_out_seeds(expert_report):
    report = expert_report
    assert report["overall"]["success_rate"] >= 0.95
    assert report["seeds"] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 3]
    assert all(r["seed"] >= EVAL_SEED_BASE for r in report["episodes_detail"])
    table = format_table(report)
    assert "button-press-topdown-v3" in table and "overall" in table


def _piece(report: dict, keep) -> dict:
    """The report of a run over part of the same episodes (as a split evaluation writes it)."""
    episodes = [r for r in report["episodes_detail"] if keep(r)]
    tasks = sorted({r["task"] for r in episodes})
    return {**report, "episodes_detail": episodes, "per_task": {t: report["per_task"][t] for t in tasks},
            "seconds": 1.0}


def test_pieces_over_seeds_and_tasks_merge_into_the_whole_evaluation(expert_report, tmp_path):
    from wmpo.cli import main

    first = _piece(expert_report, lambda r: r["seed"] < EVAL_SEED_BASE + 2)
    rest = _piece(expert_report, lambda r: r["seed"] >= EVAL_SEED_BASE + 2 and r["task"] == "drawer-close-v3")
    last = _piece(expert_report, lambda r: r["seed"] >= EVAL_SEED_BASE + 2 and r["task"] != "drawer-close-v3")
    merged = merge_reports([first, rest, last])
    for key in ("per_task", "overall", "seeds", "episodes_detail", "source"):
        assert merged[key] == expert_report[key], key
    assert list(merged["per_task"]) == list(expert_report["per_task"]) and merged["merged_reports"] == 3
    assert merged["seconds"] == 3.0

    partial = merge_reports([first, last])  # drawer's last two seeds missing: counted as run
    assert partial["per_task"]["drawer-close-v3"]["episodes"] == 2
    assert partial["per_task"]["button-press-topdown-v3"]["episodes"] == 4

    paths = []
    for i, rep in enumerate((first, rest, last)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(rep))
    main(["eval", "policy", "--merge", *map(str, paths), "--json", str(tmp_path / "all.json")])
    assert json.loads((tmp_path / "all.json").read_text())["overall"] == expert_report["overall"]


def test_merge_refuses_overlapping_or_different_evaluations(expert_report):
    with pytest.raises(ConfigError, match="seed 1000000 is in more than one report"):
        merge_reports([expert_report, _piece(expert_report, lambda r: r["seed"] == EVAL_SEED_BASE)])
    other = {**expert_report, "source": {**expert_report["source"], "kind": "policy", "temperature": 0.5}}
    with pytest.raises(ConfigError, match=r"differs from the first in source: source.kind: 'policy' vs 'expert'; "
                       r"source.temperature: 0.5 vs "):
        merge_reports([_piece(expert_report, lambda r: r["seed"] < EVAL_SEED_BASE + 2),
                       _piece(other, lambda r: r["seed"] >= EVAL_SEED_BASE + 2)])
    with pytest.raises(ConfigError, match="differs from the first in max_steps"):
        merge_reports([expert_report, {**_piece(expert_report, lambda r: False), "max_steps": 500}])
    with pytest.raises(ConfigError, match="not a `wmpo eval policy`"):
        merge_reports([{"overall": {}}])
    with pytest.raises(ConfigError, match="at least one"):
        merge_reports([])


def test_an_interrupted_evaluation_resumes_from_its_journal(tmp_path):
    journal = tmp_path / "eval.jsonl"
    cfg = EvalConfig(tasks=["button-press-topdown-v3"], source=SourceSpec("expert"), episodes=2, workers=1,
                     journal=str(journal))
    full = evaluate(cfg, progress=False)
    header, *episodes = journal.read_text().splitlines()
    assert len(episodes) == 2 and "resumed_episodes" not in full
    # As if the run stopped during the second episode's line, after the first: mark the first so
    # that its reuse shows (the expert solves it), and cut the second short.
    first = {**json.loads(episodes[0]), "success": False}
    journal.write_text("\n".join([header, json.dumps(first), episodes[1][:20]]))
    resumed = evaluate(cfg, progress=False)
    assert resumed["resumed_episodes"] == 1 and resumed["overall"]["episodes"] == 2
    by_seed = {r["seed"]: r for r in resumed["episodes_detail"]}
    assert by_seed[first["seed"]]["success"] is False  # read back, not run again
    rerun = next(r for r in full["episodes_detail"] if r["seed"] != first["seed"])
    assert by_seed[rerun["seed"]]["success"] == rerun["success"]
    assert [json.loads(x)["seed"] for x in journal.read_text().splitlines()[1:]] == [first["seed"], rerun["seed"]]

    # A journal reads as the report of its finished episodes (for --compare / --merge of a run
    # still going or stopped), without being rewritten: a cut line stays, for the run to drop.
    from wmpo.cli import _read_json_report

    journal.write_text(journal.read_text() + episodes[0][:15])
    before = journal.read_text()
    partial = _read_json_report(str(journal))
    assert journal.read_text() == before and partial["journal"] == str(journal)
    assert partial["episodes_detail"] == resumed["episodes_detail"] and partial["overall"] == resumed["overall"]
    assert partial["source"] == resumed["source"] and partial["max_steps"] == resumed["max_steps"]
    journal.write_text(header + "\n")
    with pytest.raises(ConfigError, match="no finished episode"):
        _read_json_report(str(journal))
    (tmp_path / "other.jsonl").write_text('{"journal": {"source": 1}\n')  # a header cut short
    with pytest.raises(ConfigError, match="other.jsonl is not an evaluation journal"):
        _read_json_report(str(tmp_path / "other.jsonl"))
    journal.write_text(before)

    other = EvalConfig(tasks=cfg.tasks, source=SourceSpec("expert", noise_std=0.1), episodes=2, workers=1,
                       journal=str(journal))
    with pytest.raises(ConfigError, match=r"journal of another evaluation \(journal.source.noise_std: 0.5 vs 0.1"):
        evaluate(other, progress=False)


def test_mcnemar_exact_known_values():
    from wmpo.eval.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # 5 discordant pairs, all one way
    assert mcnemar_exact(13, 0) == pytest.approx(2 / 2**13)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(1, 4) == mcnemar_exact(4, 1) == pytest.approx(0.375)


def test_two_evaluations_compare_paired_on_their_shared_layouts(expert_report, tmp_path, capsys):
    from wmpo.cli import main
    from wmpo.eval.policy import compare_reports

    # B: the same episodes but button's first three layouts failed, and drawer's last seed not run.
    failed = {("button-press-topdown-v3", EVAL_SEED_BASE + i) for i in range(3)}
    b_detail = [{**r, "success": r["success"] and (r["task"], r["seed"]) not in failed}
                for r in expert_report["episodes_detail"]
                if (r["task"], r["seed"]) != ("drawer-close-v3", EVAL_SEED_BASE + 3)]
    b = {**expert_report, "episodes_detail": b_detail}
    cmp = compare_reports(expert_report, b)
    button, drawer = cmp["per_task"]["button-press-topdown-v3"], cmp["per_task"]["drawer-close-v3"]
    solved = sum(r["success"] for r in expert_report["episodes_detail"] if (r["task"], r["seed"]) in failed)
    assert (button["episodes"], button["only_a"], button["only_b"]) == (4, solved, 0)
    assert drawer["episodes"] == 3 and drawer["only_a"] == drawer["only_b"] == 0 and drawer["p_value"] == 1.0
    assert cmp["overall"]["episodes"] == 7 and cmp["unpaired_episodes"] == [1, 0]
    with pytest.raises(ConfigError, match="share no"):
        compare_reports(expert_report, {**b, "episodes_detail": []})
    with pytest.raises(ConfigError, match="different lengths"):
        compare_reports(expert_report, {**b, "max_steps": 500})

    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, rep in zip(paths, (expert_report, b), strict=True):
        path.write_text(json.dumps(rep))
    main(["eval", "policy", "--compare", *map(str, paths), "--json", str(tmp_path / "cmp.json")])
    assert json.loads((tmp_path / "cmp.json").read_text())["overall"] == cmp["overall"]
    assert "only A" in capsys.readouterr().out
