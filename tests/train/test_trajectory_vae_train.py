"""`wmpo train trajectory-vae` on a dataset in the project's on-disk format: windows read from the
shards without frames, an episode-level validation split, a saved fp16 checkpoint with its
metrics, and a clear error for a dataset with no usable episode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wmpo.data.episodes import Episode, ShardWriter, init_dataset
from wmpo.errors import ConfigError, DatasetError
from wmpo.models.trajectory_vae import TrajectoryVAE
from wmpo.train.trajectory_vae import TrajectoryVAETrainConfig, action_windows, train_trajectory_vae
from wmpo.utils.checkpoint import load_checkpoint


def _dataset(root, episodes: int, steps: int) -> str:
    init_dataset(root, 8, {"name": "synthetic"})
    w = ShardWriter(root, episodes_per_shard=4)
    rng = np.random.default_rng(0)
    for i in range(episodes):
        t = np.linspace(0, 1, steps)[:, None]
        actions = (0.6 * np.sin(6.28 * (t * rng.uniform(0.5, 2, 4) + rng.uniform(0, 1, 4)))).astype(np.float32)
        meta = {"task": "reach-v3", "instruction": "reach", "seed": i, "source": {"kind": "expert"}}
        w.add(Episode(np.zeros((steps + 1, 8, 8, 3), np.uint8), actions, np.zeros(steps + 1, bool), meta))
    w.flush()
    return str(root)


def test_windows_are_chunk_aligned_and_stay_inside_episodes(tmp_path) -> None:
    root = _dataset(tmp_path / "d", episodes=3, steps=40)
    windows, owners = action_windows([root], steps=16, chunk=8)
    assert windows.shape == (12, 16, 4) and owners.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # starts 0, 8, 16, 24
    with pytest.raises(DatasetError, match="no episode"):
        action_windows([root], steps=48, chunk=8)


def test_training_saves_a_checkpoint_with_its_metrics(tmp_path) -> None:
    root = _dataset(tmp_path / "d", episodes=12, steps=40)
    out = tmp_path / "vae"
    cfg = TrajectoryVAETrainConfig(data=[root], out=str(out), preset="tiny", steps=60, batch_size=16,
                                   lr=3e-3, overrides={"chunks": 2, "tokens": 2})
    report = train_trajectory_vae(cfg, progress=False)
    assert report["episodes"] == 12 and report["val_windows"] >= 1 and report["train_windows"] >= 1
    assert 0 <= report["val_mse"] < 0.3  # targets have variance ~0.18; the tiny model learns some of it
    tensors, config, manifest = load_checkpoint(out)
    assert config["kind"] == "trajectory-vae" and manifest["metrics"]["val_mse"] == report["val_mse"]
    assert all(t.dtype.is_floating_point and t.element_size() == 2 for t in tensors.values())  # fp16
    TrajectoryVAE.from_config(config).load_state_dict({k: v.float() for k, v in tensors.items()})
    assert json.loads((out / "manifest.json").read_text())["training"]["model"]["chunks"] == 2


def test_bad_config_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="preset"):
        TrajectoryVAETrainConfig(data=["x"], out=str(tmp_path), preset="huge").validate()
    with pytest.raises(ConfigError, match="data"):
        TrajectoryVAETrainConfig(data=[], out=str(tmp_path)).validate()
