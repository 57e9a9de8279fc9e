import json

import numpy as np
import torch

from wmpo.data.collect import CollectConfig, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.models.policy import Policy
from wmpo.train.policy import PolicyTrainConfig, chunk_targets, random_shift, train_policy


def test_chunk_targets_mask_past_the_episode_end(tmp_path):
    collect(CollectConfig(out=str(tmp_path), tasks=["reach-v3"], episodes=1, workers=1), progress=False)
    ds = EpisodeDataset.load(tmp_path)
    rows, targets, masks = chunk_targets(ds, [0], chunk=8)
    t = ds.episodes[0]["length"]
    assert len(rows) == t and targets.shape == (t, 8, 4)
    assert masks[0].all() and masks[-1].sum() == 1  # the last frame has one action left
    np.testing.assert_array_equal(targets[0, 3], ds.columns["action"][rows[0] + 3])


def test_random_shift_keeps_shape_and_moves_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (8, 16, 16, 3), dtype=torch.uint8)
    y = random_shift(x, 2, g)
    assert y.shape == x.shape and y.dtype == torch.uint8 and not torch.equal(x, y)


def test_training_reduces_loss_and_writes_a_loadable_checkpoint(tmp_path):
    data = tmp_path / "data"
    collect(CollectConfig(out=str(data), tasks=["reach-v3", "drawer-close-v3"], episodes=2, workers=2),
            progress=False)
    out = tmp_path / "policy"
    result = train_policy(PolicyTrainConfig(data=str(data), out=str(out), preset="tiny", steps=60,
                                            batch_size=16, lr=3e-3, log_every=10), progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    policy, manifest = Policy.from_checkpoint(result["checkpoint"])
    assert manifest["data"]["demos_per_task"] == {"drawer-close-v3": 2, "reach-v3": 2}
    assert set(policy.instructions) == {"reach the goal position", "push the drawer closed"}
    assert not (out / "train_state.pt").exists()
