"""scripts/plan_target_check.py on a real MetaWorld expert episode and the bundled checkpoints:
the windows sit where the script says, the real frames' verdicts follow the real success, and
every row is judged on every window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.scripts.conftest import load_script
from wmpo.data.collect import CollectConfig, collect


@pytest.fixture(scope="module")
def script():  # noqa: ANN201
    return load_script("plan_target_check")


@pytest.fixture(scope="module")
def expert(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("expert") / "button"
    collect(CollectConfig(out=str(out), tasks=["button-press-topdown-v3"], source="expert", episodes=1,
                          seed_start=800_000, workers=1), progress=False)
    return str(out)


def test_windows_end_at_the_real_success_and_pad_actions_with_zeros(script, expert: str) -> None:
    horizon, lead = 32, 24
    wins = script.windows([expert], horizon, lead)
    done = [w for w in wins if w["kind"] == "done"]
    assert len(done) == 1
    w = done[0]
    s = w["success_step"]
    assert w["t0"] == max(0, s - lead)
    assert len(w["real_frames"]) == s - w["t0"] + 1  # up to and including the success frame
    assert w["actions"].shape == (horizon, 4)
    assert np.all(w["actions"][s - w["t0"]:] == 0)  # the episode ended at its success
    controls = [w for w in wins if w["kind"] == "control"]
    assert len(controls) == (s > horizon + lead) and all(c["t0"] == 0 for c in controls)


def test_every_row_is_judged_and_the_real_success_passes(script, expert: str, tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    result = script.main(["--data", expert, "--samples", "1", "--out", str(out)])
    assert json.loads(out.read_text())["table"] == result["table"]
    cells = result["table"]["done"]["button-press-topdown-v3"]
    assert set(cells) == set(script.ROWS)
    assert all(c["n"] == 1 for c in cells.values())  # one window, one sample
    assert cells["real"]["success"] == 1  # the judge reads the expert's real press (F1 0.92 on real frames)
    if "control" in result["table"]:
        assert result["table"]["control"]["button-press-topdown-v3"]["real"]["success"] == 0
