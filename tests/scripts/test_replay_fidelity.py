"""scripts/replay_fidelity.py on real MetaWorld episodes, their reconstructions and their imagined
replays: the reconstruction is closer to the real frames than the imagination, everywhere and
where things moved, and episodes pair by seed whatever order the datasets load in."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.scripts.conftest import load_script
from wmpo.data.collect import CollectConfig, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.eval.judge import write_imagined_dataset

ROOT = Path(__file__).resolve().parents[2]
TASK = "button-press-topdown-v3"


@pytest.fixture(scope="module")
def script():  # noqa: ANN201
    return load_script("replay_fidelity")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, EpisodeDataset]:
    root = tmp_path_factory.mktemp("fidelity")
    collect(CollectConfig(out=str(root / "real"), tasks=[TASK], source="expert", episodes=2, workers=1),
            progress=False)
    wm = str(ROOT / "checkpoints" / "world-model")
    write_imagined_dataset(wm, str(root / "real"), str(root / "rec"), progress=False, reconstruct=True)
    write_imagined_dataset(wm, str(root / "real"), str(root / "imagined"), progress=False)
    return {k: EpisodeDataset.load(root / k) for k in ("real", "rec", "imagined")}


def test_reconstructions_are_closer_to_the_real_frames_than_imagination(script, data) -> None:
    rec = script.fidelity(data["real"], data["rec"])[TASK]
    im = script.fidelity(data["real"], data["imagined"])[TASK]
    assert rec["episodes"] == im["episodes"] == 2
    assert rec["psnr"] > im["psnr"] > 10 and rec["moving_psnr"] > im["moving_psnr"] > 5
    assert rec["psnr"] > rec["moving_psnr"]  # the moving pixels are the hard ones, even for the autoencoder


def test_replays_pair_by_seed_and_a_missing_one_is_named(script, data) -> None:
    before = script.fidelity(data["real"], data["imagined"])
    im = copy.copy(data["imagined"])  # the module's datasets stay as they are
    im.episodes = im.episodes[::-1]  # another load order
    assert script.fidelity(data["real"], im) == before
    im.episodes = im.episodes[:1]
    with pytest.raises(SystemExit, match=f"no replay of {TASK} seed"):
        script.fidelity(data["real"], im)
