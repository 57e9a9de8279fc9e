"""scripts/replay_strip.py on real MetaWorld episodes and their reconstructions: each row is the
episode it names, paired by seed whatever order the datasets load in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.scripts.conftest import load_script
from wmpo.data.collect import CollectConfig, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.eval.judge import write_imagined_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():  # noqa: ANN201
    return load_script("replay_strip")


def test_rows_are_the_real_frames_and_their_replays_at_the_same_times(script, tmp_path: Path) -> None:
    collect(CollectConfig(out=str(tmp_path / "real"), tasks=["button-press-topdown-v3"], source="expert",
                          episodes=2, workers=1), progress=False)
    write_imagined_dataset(str(ROOT / "checkpoints" / "world-model"), str(tmp_path / "real"), str(tmp_path / "rec"),
                           progress=False, reconstruct=True)
    real, rec = EpisodeDataset.load(tmp_path / "real"), EpisodeDataset.load(tmp_path / "rec")
    rec.episodes = rec.episodes[::-1]  # another load order: rows must still pair by seed
    img = script.strip(real, [rec], "button-press-topdown-v3", episodes=2, frames=3)
    assert img.shape == (4 * 64, 3 * 64, 3)  # 2 episodes x (real, reconstruction); 3 frames
    for k in range(2):
        r = real.episode(k)
        times = np.arange(r.length // 2 + 1)[-3:]
        assert np.array_equal(img[128 * k:128 * k + 64, :64], r.frames[times[0] * 2])
        mine = next(rec.episode(j) for j in range(2) if rec.episodes[j]["seed"] == r.meta["seed"])
        assert np.array_equal(img[128 * k + 64:128 * k + 128, 128:], mine.frames[times[-1]])
    with pytest.raises(SystemExit, match="no successful door-open-v3"):
        script.strip(real, [rec], "door-open-v3", episodes=1, frames=3)
