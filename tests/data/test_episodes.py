import numpy as np
import pytest

from wmpo.data.episodes import (
    Episode,
    EpisodeDataset,
    ShardWriter,
    atomic_write_bytes,
    init_dataset,
    write_cut_dataset,
    write_shard,
)
from wmpo.errors import DatasetError


def make_episode(t: int, seed: int, task: str = "push-v3") -> Episode:
    rng = np.random.default_rng(seed)
    success = np.zeros(t + 1, bool)
    success[-1] = seed % 2 == 0
    return Episode(
        rng.integers(0, 255, (t + 1, 8, 8, 3), dtype=np.uint8),
        rng.uniform(-1, 1, (t, 4)).astype(np.float32),
        success,
        {"task": task, "instruction": "x", "seed": seed, "source": {"kind": "expert"}},
    )


def test_round_trip(tmp_path):
    init_dataset(tmp_path, 8, {"name": "cam"})
    eps = [make_episode(5 + i, i, "push-v3" if i < 3 else "door-open-v3") for i in range(5)]
    w = ShardWriter(tmp_path, episodes_per_shard=2)
    for ep in eps:
        w.add(ep)
    w.flush()
    assert len(w.shards_written) == 3
    ds = EpisodeDataset.load(tmp_path)
    assert len(ds) == 5 and ds.num_frames == sum(e.length + 1 for e in eps)
    by_seed = {ds.episodes[i]["seed"]: ds.episode(i) for i in range(len(ds))}
    for ep in eps:
        got = by_seed[ep.meta["seed"]]
        assert np.array_equal(got.frames, ep.frames)
        assert np.array_equal(got.actions, ep.actions)
        assert np.array_equal(got.success, ep.success)
        assert got.meta["task"] == ep.meta["task"]
    only_door = EpisodeDataset.load(tmp_path, tasks=["door-open-v3"])
    assert {m["task"] for m in only_door.episodes} == {"door-open-v3"} and len(only_door) == 2
    assert ds.summary()["per_task"]["push-v3"]["successes"] == 2


def test_crash_during_write_leaves_no_valid_shard(tmp_path):
    init_dataset(tmp_path, 8, {"name": "cam"})
    write_shard(tmp_path / "data" / "shard-good.npz", [make_episode(4, 0)])
    path = tmp_path / "data" / "shard-bad.npz"

    def crash(f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, crash)
    assert not path.exists()
    assert list((tmp_path / "data").glob("*.tmp")) == []
    assert len(EpisodeDataset.load(tmp_path)) == 1


def test_leftover_tmp_files_are_ignored(tmp_path):
    init_dataset(tmp_path, 8, {"name": "cam"})
    write_shard(tmp_path / "data" / "shard-a.npz", [make_episode(4, 0)])
    (tmp_path / "data" / ".shard-b.npz.123.tmp").write_bytes(b"partial")
    assert len(EpisodeDataset.load(tmp_path)) == 1


def test_corrupt_shard_names_the_file(tmp_path):
    init_dataset(tmp_path, 8, {"name": "cam"})
    write_shard(tmp_path / "data" / "shard-a.npz", [make_episode(4, 0)])
    bad = tmp_path / "data" / "shard-a.npz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetError, match="shard-a.npz"):
        EpisodeDataset.load(tmp_path)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="wmpo collect"):
        EpisodeDataset.load(tmp_path / "nope")


def test_mixing_image_sizes_is_refused(tmp_path):
    init_dataset(tmp_path, 8, {"name": "cam"})
    with pytest.raises(DatasetError, match="image_size"):
        init_dataset(tmp_path, 16, {"name": "cam"})


def test_episode_shape_checks():
    with pytest.raises(DatasetError, match="frames"):
        Episode(np.zeros((3, 8, 8, 3), np.uint8), np.zeros((3, 4), np.float32), np.zeros(4, bool))


def test_cut_dataset_relabels_by_success_within_the_horizon(tmp_path):
    init_dataset(tmp_path / "src", 8, {"name": "cam"})
    early, late, short = make_episode(10, 0), make_episode(10, 2), make_episode(3, 4)
    early.success[:] = False
    early.success[4:] = True  # succeeded on step 4: still a success when cut at 6
    # late succeeds only on its last step (10): a failure when cut at 6; short ended before the cut
    w = ShardWriter(tmp_path / "src")
    for ep in (early, late, short):
        w.add(ep)
    w.flush()
    summary = write_cut_dataset(tmp_path / "src", tmp_path / "cut", max_steps=6)
    assert summary == {"episodes": 3, "successes": 2, "max_steps": 6}
    cut = EpisodeDataset.load(tmp_path / "cut")
    by_seed = {m["seed"]: cut.episode(i) for i, m in enumerate(cut.episodes)}
    assert {m["seed"]: (m["length"], m["succeeded"]) for m in cut.episodes} == {0: (6, True), 2: (6, False),
                                                                                 4: (3, True)}
    assert np.array_equal(by_seed[2].frames, late.frames[:7]) and np.array_equal(by_seed[2].actions, late.actions[:6])
    assert by_seed[0].meta["cut_at"] == 6
    with pytest.raises(DatasetError, match="max_steps"):
        write_cut_dataset(tmp_path / "src", tmp_path / "bad", max_steps=0)
