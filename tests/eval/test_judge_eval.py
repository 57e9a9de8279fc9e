"""Imagined judge datasets and the dual-noise report, on real MetaWorld episodes and the bundled world model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmpo.data.collect import CollectConfig, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.errors import ConfigError
from wmpo.eval.judge import (
    JudgedEpisodes,
    choose_threshold,
    dual_noise_report,
    imagine_dataset,
    precision_recall_f1,
    ranking_auc,
    summarize,
    write_imagined_dataset,
)
from wmpo.judge.success import SuccessJudge
from wmpo.sampling.world_model import TorchWorldModel

ROOT = Path(__file__).resolve().parents[2] / "checkpoints"


def with_real_and_replay(ds: EpisodeDataset, real: EpisodeDataset, im: EpisodeDataset):  # noqa: ANN201
    """Each episode of ``ds`` with the real episode and the plain replay of the same (task, seed):
    the datasets load in shard order, which differs between them."""
    real_ix, im_ix = real.by_task_seed(), im.by_task_seed()
    for i in range(len(ds)):
        e = ds.episode(i)
        key = (e.meta["task"], e.meta["seed"])
        yield e, real.episode(real_ix[key]), im.episode(im_ix[key])


@pytest.fixture(scope="module")
def imagined(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagined")
    collect(CollectConfig(out=str(root / "real"), tasks=["button-press-topdown-v3"], source="expert", episodes=2,
                          workers=1), progress=False)
    write_imagined_dataset(str(ROOT / "world-model"), str(root / "real"), str(root / "imagined"), progress=False)
    return EpisodeDataset.load(root / "real"), EpisodeDataset.load(root / "imagined")


def test_imagined_episodes_replay_the_real_ones_with_their_real_outcome(imagined):
    real, im = imagined
    assert len(im) == len(real) == 2
    by_seed = {m["seed"]: i for i, m in enumerate(real.episodes)}
    for i in range(2):
        m = im.episode(i)
        r = real.episode(by_seed[m.meta["seed"]])
        assert m.meta["frame_stride"] == 2 and m.meta["source"]["kind"] == "imagined"
        assert m.frames.shape[0] == r.length // 2 + 1
        assert np.array_equal(m.frames[0], r.frames[0])  # the real start frame
        assert m.success[-1] == r.succeeded and not m.success[:-1].any()


def test_dual_noise_report_counts_flags_against_real_outcomes(imagined):
    real, im = imagined
    judge = SuccessJudge.load(str(ROOT / "judge"))
    judge.threshold = 0.0  # every imagined episode is a judged success, so every one is replayed
    r = dual_noise_report(judge, real, im, str(ROOT / "world-model"), seed=5, progress=False)
    assert r["judged_successes"] == 2 and r["flagged"] == 0  # threshold 0: the replay passes too
    judge.threshold = 1.0
    assert dual_noise_report(judge, real, im, str(ROOT / "world-model"), seed=5, progress=False)["judged_successes"] == 0
    judge.threshold = 0.0
    with pytest.raises(ConfigError, match="fresh noise"):  # the replays' own seed: no second draw
        dual_noise_report(judge, real, im, str(ROOT / "world-model"), seed=0, progress=False)


def test_replay_noise_follows_the_episode_not_its_position(imagined):
    """A dataset rebuilt in another shard order (e.g. another number of collection workers) gets
    the same replay of every episode; another seed gets another draw."""
    real, _ = imagined
    wm = TorchWorldModel.load(str(ROOT / "world-model"))
    flipped = EpisodeDataset(real.root, real.columns, real.episodes[::-1])
    # Bit for bit across batch positions holds on one thread: with several, a kernel may split
    # a batch's rows differently and round differently (make test runs on one anyway: the
    # services' conftests set it for the session; alone, this test would not).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = imagine_dataset(wm, real, seed=3), imagine_dataset(wm, flipped, seed=3)
        assert np.array_equal(a[0], b[1]) and np.array_equal(a[1], b[0])
        assert not np.array_equal(a[0], imagine_dataset(wm, real, seed=4)[0])
    finally:
        torch.set_num_threads(threads)


def test_threshold_and_f1_by_hand():
    scores = np.array([0.1, 0.4, 0.6, 0.9])
    labels = np.array([False, False, True, True])
    t = choose_threshold(scores, labels)
    assert 0.4 < t <= 0.6
    assert choose_threshold(scores, np.zeros(4, bool)) is None  # no F1 to maximise without both classes
    assert choose_threshold(scores, np.ones(4, bool)) is None
    # two of each kind: chosen with a support of 2, refused with 3 (a handful is noise, not a threshold)
    assert choose_threshold(scores, labels, min_support=2) == t
    assert choose_threshold(scores, labels, min_support=3) is None
    m = precision_recall_f1(scores >= 0.5, np.array([False, True, True, True]))
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(0.8)


def test_auc_ranks_successes_above_failures_per_task_by_hand():
    assert ranking_auc(np.array([0.1, 0.4, 0.6, 0.9]), np.array([False, False, True, True])) == 1.0
    # of the 4 (success, failure) pairs: 0.6 > 0.4, 0.6 < 0.7, 0.3 < 0.4, 0.3 < 0.7 -> 1/4; a tie counts half
    assert ranking_auc(np.array([0.6, 0.3, 0.4, 0.7]), np.array([True, True, False, False])) == 0.25
    assert ranking_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert ranking_auc(np.array([0.2, 0.9]), np.array([True, True])) is None  # nothing to rank
    judged = JudgedEpisodes(np.array([0.9, 0.2, 0.8, 0.95, 0.3]), np.array([True, False, False, True, True]),
                            ["a", "a", "b", "b", "b"])
    s = summarize(judged, 0.5)
    assert s["per_task"]["a"]["auc"] == 1.0 and s["per_task"]["b"]["auc"] == 0.5  # 0.95 > 0.8, 0.3 < 0.8
    assert s["per_task"]["b"]["f1"] == pytest.approx(0.5) and s["auc"] == pytest.approx(5 / 6)


def test_guided_replays_differ_and_record_their_guidance(imagined, tmp_path):
    real, plain = imagined
    guided_dir = tmp_path / "guided"
    write_imagined_dataset(str(ROOT / "world-model"), str(real.root), str(guided_dir), progress=False,
                           action_guidance=3.0)
    guided = EpisodeDataset.load(guided_dir)
    assert guided.episode(0).meta["source"]["action_guidance"] == 3.0
    default = json.loads((ROOT / "world-model" / "config.json").read_text())["sampler"]["action_guidance"]
    assert plain.episode(0).meta["source"]["action_guidance"] == default != 3.0  # the checkpoint's own
    a, b = plain.episode(0).frames, guided.episode(0).frames
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[1:], b[1:])  # same start, other imagination


def test_reconstructions_are_the_autoencoders_copy_of_the_real_frames(imagined, tmp_path):
    real, im = imagined
    write_imagined_dataset(str(ROOT / "world-model"), str(real.root), str(tmp_path / "rec"), progress=False,
                           reconstruct=True)
    rec = EpisodeDataset.load(tmp_path / "rec")
    from wmpo.sampling.world_model import TorchWorldModel

    wm = TorchWorldModel.load(ROOT / "world-model")
    for e, r, m in with_real_and_replay(rec, real, im):
        assert e.meta["source"]["kind"] == "reconstructed" and e.meta["frame_stride"] == 2
        assert e.frames.shape == m.frames.shape  # the same times as the replays: a judge reads both alike
        assert np.array_equal(e.frames[0], r.frames[0]) and e.success[-1] == r.succeeded
        alone = wm.decode(wm.encode(r.frames[6:7]))[0].astype(int)  # real frame 6 (stride 2), coded alone
        assert np.abs(e.frames[3].astype(int) - alone).max() <= 2  # batched convolutions round differently
        err = np.abs(e.frames[1:].astype(int) - r.frames[2::2][: len(e.frames) - 1].astype(int)).mean()
        assert err < np.abs(m.frames[1:].astype(int) - r.frames[2::2][: len(m.frames) - 1].astype(int)).mean()


def test_real_context_replays_imagine_each_chunk_from_the_real_frames(imagined, tmp_path):
    real, im = imagined
    write_imagined_dataset(str(ROOT / "world-model"), str(real.root), str(tmp_path / "rc"), progress=False,
                           real_context=True)
    rc = EpisodeDataset.load(tmp_path / "rc")
    for e, r, m in with_real_and_replay(rc, real, im):
        assert e.meta["source"]["kind"] == "imagined-real-context" and e.frames.shape == m.frames.shape
        assert e.success[-1] == r.succeeded
        # The first chunk (8 env steps = 4 frames) starts from the real first frame either way: the same
        # frames as the plain replay under the same seed; after it the context is real, not imagined.
        assert np.array_equal(e.frames[:5], m.frames[:5]) and not np.array_equal(e.frames[5:], m.frames[5:])
        truth = r.frames[2::2][: len(e.frames) - 1].astype(int)
        assert np.abs(e.frames[1:].astype(int) - truth).mean() < np.abs(m.frames[1:].astype(int) - truth).mean()


def test_imagined_dataset_sampler_overrides(imagined, tmp_path):
    real, _ = imagined
    write_imagined_dataset(str(ROOT / "world-model"), str(real.root), str(tmp_path / "s"), progress=False,
                           sampler_steps=2, sampler_shift=0.5)
    sampler = json.loads((tmp_path / "s" / "meta" / "manifest.json").read_text())["runs"][-1]["sampler"]
    assert sampler["steps"] == 2 and sampler["shift"] == 0.5
    with pytest.raises(ConfigError, match="shift"):
        write_imagined_dataset(str(ROOT / "world-model"), str(real.root), str(tmp_path / "bad"), progress=False,
                               sampler_shift=0.0)
    with pytest.raises(ConfigError, match="exclude"):
        write_imagined_dataset(str(ROOT / "world-model"), str(real.root), str(tmp_path / "bad2"), progress=False,
                               reconstruct=True, real_context=True)
