"""The play-data plan (wmpo collect-play): task split, seeds, dataset discovery."""

import json

import pytest

from wmpo.data.collect import EVAL_SEED_BASE
from wmpo.data.episodes import init_dataset
from wmpo.data.play import (
    PLAY_JSON,
    PLAY_PLAN,
    collect_play,
    data_command,
    expand_datasets,
    stage_config,
)
from wmpo.envs.tasks import HELDOUT_TASKS, PLAY_TASKS
from wmpo.errors import ConfigError


def test_plan_trains_on_play_tasks_only_with_disjoint_training_seeds(tmp_path):
    ranges = []
    for stage in PLAY_PLAN:
        cfg = stage_config(tmp_path, stage, scale=3.0)
        assert set(cfg.tasks) <= set(PLAY_TASKS if stage.split == "train" else HELDOUT_TASKS)
        cfg.validate()  # no evaluation seeds even at 3x scale
        ranges.append((cfg.seed_start, cfg.seed_start + cfg.episodes))
    ranges.sort()
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert ranges[-1][1] < EVAL_SEED_BASE
    covered = {t for s in PLAY_PLAN if s.split == "train" for t in stage_config(tmp_path, s).tasks}
    assert covered == set(PLAY_TASKS)


def test_datasets_are_found_and_the_command_recorded(tmp_path):
    root = tmp_path / "play"
    for name in ("perturbed", "noisy"):
        init_dataset(root / "train" / name, 64, {"name": "cam"})
    (root / PLAY_JSON).write_text(json.dumps({"command": "wmpo collect-play --out play --scale 1"}))
    assert expand_datasets([str(root / "train")]) == [str(root / "train" / "noisy"), str(root / "train" / "perturbed")]
    assert expand_datasets([str(root / "train" / "noisy")]) == [str(root / "train" / "noisy")]
    assert data_command([str(root / "train")]) == "wmpo collect-play --out play --scale 1"
    assert data_command([str(tmp_path)]) is None
    with pytest.raises(ConfigError, match="neither"):
        expand_datasets([str(tmp_path / "nothing")])


def test_bad_scale_and_split():
    with pytest.raises(ConfigError, match="scale"):
        collect_play("x", scale=0)
    with pytest.raises(ConfigError, match="split"):
        collect_play("x", splits=("test",))
