"""Tiny end-to-end run of the judge pipeline on real MetaWorld data:
collect successes and failures -> train the classifier -> threshold on validation -> evaluate."""

import json

import numpy as np
import pytest

from wmpo.data.collect import CollectConfig, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.eval.judge import JudgeEvalConfig, evaluate_judge, judge_dataset
from wmpo.judge.success import SuccessJudge
from wmpo.train.success_classifier import (
    JudgeTrainConfig,
    build_clip_index,
    train_success_classifier,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    # Expert episodes succeed (and stop at success); random-walk ones fail.
    collect(CollectConfig(out=str(root / "good"), tasks=["button-press-topdown-v3"], source="expert",
                          episodes=3, workers=1), progress=False)
    collect(CollectConfig(out=str(root / "bad"), tasks=["button-press-topdown-v3"], source="random-walk",
                          episodes=2, max_steps=40, seed_start=500, workers=1), progress=False)
    return root


def test_clip_index_follows_the_rules(data):
    index = build_clip_index([str(data / "good"), str(data / "bad")], clip_length=8, stride=2, margin=2)
    good = EpisodeDataset.load(data / "good")
    assert index.episodes == 5 and index.successes == 3
    assert len(index.positives) == 3  # one terminal clip per success
    for m, rows in zip(good.episodes, index.positives, strict=True):
        assert rows[-1] == m["start"] + m["length"]  # ends on the success frame
        assert np.all(np.diff(rows) == 2)
        assert good.columns["success"][rows[-1]]
    # no negative clip contains a success frame
    bad = EpisodeDataset.load(data / "bad")
    success = np.concatenate([good.columns["success"], bad.columns["success"]])
    assert not success[index.negatives].any()
    assert len(index.frames) == len(success)


def test_training_chooses_a_threshold_and_the_checkpoint_judges(data, tmp_path):
    cfg = JudgeTrainConfig(data=[str(data / "good"), str(data / "bad")],
                           val_data=[str(data / "good"), str(data / "bad")],
                           out=str(tmp_path / "judge"), preset="tiny", steps=6, batch_size=4, recon_prob=0.0,
                           log_every=2, save_every=3)
    judged_val: dict = {}
    result = train_success_classifier(cfg, progress=False, judged_val=judged_val)
    assert 0.0 <= result["threshold"] <= 1.0
    manifest = json.loads((tmp_path / "judge" / "manifest.json").read_text())
    assert manifest["data"]["positive_clips"] == 3 and manifest["threshold"]["value"] == result["threshold"]
    assert manifest["threshold"]["chosen_on"] == "val_data, trajectory-level F1"
    judge = SuccessJudge.load(str(tmp_path / "judge"))
    # the validation scores handed back are the saved checkpoint's own (a caller need not judge again)
    assert list(judged_val) == cfg.val_data
    for path, judged in judged_val.items():
        again = judge_dataset(judge, EpisodeDataset.load(path))
        assert np.allclose(judged.scores, again.scores) and (judged.labels == again.labels).all()
    ep = EpisodeDataset.load(data / "good").episode(0)
    (v,) = judge.judge_many([ep.frames], [ep.meta["instruction"]])
    n = len(range((ep.length) % 2, ep.length + 1, 2))
    assert len(v.clip_scores) == max(n - 7, 1) and v.success == (v.score >= judge.threshold)
    report = evaluate_judge(JudgeEvalConfig(classifier=str(tmp_path / "judge"), data=str(data / "bad")),
                            progress=False)
    assert report["episodes"] == 2 and report["real_success_rate"] == 0.0
    assert report["real"]["tp"] == 0 and report["real"]["fn"] == 0
    # several datasets are one test set: the counts of each, added per task
    good = evaluate_judge(JudgeEvalConfig(classifier=str(tmp_path / "judge"), data=str(data / "good")),
                          progress=False)
    both = evaluate_judge(JudgeEvalConfig(classifier=str(tmp_path / "judge"),
                                          data=[str(data / "bad"), str(data / "good")]), progress=False)
    assert both["episodes"] == report["episodes"] + good["episodes"]
    for task, counts in both["real"]["per_task"].items():
        for k in ("tp", "fp", "fn", "tn", "episodes", "real_successes"):
            parts = [r["real"]["per_task"].get(task, {}).get(k, 0) for r in (report, good)]
            assert counts[k] == sum(parts), (task, k)
    assert both["real_success_rate"] > 0


def test_a_validation_split_without_successes_keeps_the_init_threshold(data, tmp_path, capsys):
    """A lifelong round on a task the policy never solves validates on failures only: F1 is 0 at
    every threshold, and its argmax would pass every episode. The fine-tune keeps --init's."""
    both = [str(data / "good"), str(data / "bad")]
    first = train_success_classifier(JudgeTrainConfig(data=both, val_data=both, out=str(tmp_path / "a"),
                                                      preset="tiny", steps=4, batch_size=4, recon_prob=0.0),
                                     progress=False)
    second = train_success_classifier(JudgeTrainConfig(data=both, val_data=[str(data / "bad")], out=str(tmp_path / "b"),
                                                       init=str(tmp_path / "a"), steps=2, batch_size=4, recon_prob=0.0),
                                      progress=False)
    assert second["threshold"] == first["threshold"]
    chosen_on = json.loads((tmp_path / "b" / "manifest.json").read_text())["threshold"]["chosen_on"]
    assert chosen_on == ("kept --init threshold: the 2 validation episodes hold 0 successes and 2 failures, "
                         "fewer than 1 of one kind")
    assert "warning: threshold kept --init" in capsys.readouterr().err
    assert SuccessJudge.load(str(tmp_path / "b")).threshold == first["threshold"]
