"""Recorded runs for the viewer (services.common.viewer.runs): episode datasets under one
directory listed and read over HTTP, imagined replays paired with their real episodes, and
nothing outside the directory readable, whatever the name."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.common.app import create_app
from services.common.settings import ServiceSettings
from services.common.viewer.runs import RunStore, runs_router
from tests.services.conftest import KEY_A
from wmpo.data.episodes import Episode, init_dataset, write_shard

CAMERA = {"name": "corner4"}


def episode(seed: int, steps: int, task: str = "drawer-close-v3", **meta: object) -> Episode:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (steps + 1, 64, 64, 3), dtype=np.uint8)
    success = np.zeros(steps + 1, bool)
    success[-1] = seed % 2 == 1
    return Episode(frames, rng.uniform(-1, 1, (steps, 4)).astype(np.float32), success,
                   {"task": task, "instruction": "push the drawer closed", "seed": seed, **meta})


def write_run(root: Path, episodes: list[Episode], per_shard: int = 2) -> None:
    """A dataset of `episodes` in shards of `per_shard`, named so that they read in order."""
    init_dataset(root, 64, CAMERA)
    for i in range(0, len(episodes), per_shard):
        write_shard(root / "data" / f"shard-{i:04d}.npz", episodes[i:i + per_shard])


def imagined_of(real: list[Episode], origin: str, stride: int = 2) -> list[Episode]:
    """What `wmpo imagine-dataset` writes: frames every `stride` steps, zero actions, the real
    outcome on the last frame, source kind imagined."""
    out = []
    for k, ep in enumerate(real):
        frames = 255 - ep.frames[::stride]
        success = np.zeros(len(frames), bool)
        success[-1] = ep.succeeded
        meta = {**ep.meta, "source": {"kind": "imagined", "from": origin, "seed": k},
                "frame_stride": stride}
        out.append(Episode(frames, np.zeros((len(frames) - 1, 4), np.float32), success, meta))
    return out


def decode(tensor: dict) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in tensor["png"]])


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    real = [episode(3, 6), episode(4, 8), episode(3, 4, task="door-open-v3")]
    write_run(root / "play" / "real", real)
    # Shuffled: pairing goes by task and seed, not by position.
    imagined = imagined_of(real, "datasets/play/real")
    write_run(root / "play" / "imagined", [imagined[2], imagined[0], imagined[1]])
    write_run(root / "orphan-imagined", imagined_of(real[:1], "/elsewhere/gone"))
    return root


def client_for(root: Path | None) -> TestClient:
    app = create_app(ServiceSettings(api_keys=KEY_A), service="test")
    app.include_router(runs_router(RunStore(root)))
    return TestClient(app, raise_server_exceptions=False, headers={"x-api-key": KEY_A})


def test_runs_are_listed_with_their_kind_and_the_real_run_they_replay(runs: Path) -> None:
    out = client_for(runs).get("/v1/runs").json()
    assert out["configured"] is True
    by_name = {r["name"]: r for r in out["runs"]}
    assert sorted(by_name) == ["orphan-imagined", "play/imagined", "play/real"]
    assert by_name["play/real"] == {"name": "play/real", "kind": "real", "episodes": 3,
                                    "successes": 2, "tasks": ["door-open-v3", "drawer-close-v3"],
                                    "image_size": 64, "real_run": None}
    assert by_name["play/imagined"]["kind"] == "imagined"
    assert by_name["play/imagined"]["real_run"] == "play/real"
    assert by_name["orphan-imagined"]["real_run"] is None


def test_an_imagined_episode_comes_with_the_real_one_it_replays_at_its_stride(runs: Path) -> None:
    client = client_for(runs)
    episodes = client.get("/v1/runs/episodes", params={"run": "play/imagined"}).json()
    assert episodes["real_run"] == "play/real"
    assert [(e["task"], e["seed"], e["frame_stride"]) for e in episodes["episodes"]] == [
        ("door-open-v3", 3, 2), ("drawer-close-v3", 3, 2), ("drawer-close-v3", 4, 2)]
    out = client.get("/v1/runs/episode", params={"run": "play/imagined", "index": 1}).json()
    assert out["real"]["run"] == "play/real" and out["real"]["index"] == 0
    imagined, real = decode(out["frames"]), decode(out["real"]["frames"])
    source = episode(3, 6)
    assert imagined.shape == real.shape == (4, 64, 64, 3)  # 6 steps every 2: 4 frames
    np.testing.assert_array_equal(real, source.frames[::2])
    np.testing.assert_array_equal(imagined, 255 - source.frames[::2])
    assert out["real"]["success"] == [False, False, False, True]
    # The door episode with the same seed pairs with the door episode.
    door = client.get("/v1/runs/episode", params={"run": "play/imagined", "index": 0}).json()
    assert door["real"]["index"] == 2


def test_a_real_episode_has_all_its_frames_and_no_pair(runs: Path) -> None:
    out = client_for(runs).get("/v1/runs/episode", params={"run": "play/real", "index": 1}).json()
    assert out["real"] is None
    np.testing.assert_array_equal(decode(out["frames"]), episode(4, 8).frames)
    assert out["episode"]["length"] == 8 and out["episode"]["succeeded"] is False


@pytest.mark.parametrize("name", ["../runs/play/real", "play/../play/real", "/etc", ".hidden",
                                  "play/.git", "a/b/c/d", "play\\real", "x" * 401, ""])
def test_names_that_are_not_run_names_are_refused_naming_the_problem(runs: Path, name: str) -> None:
    response = client_for(runs).get("/v1/runs/episodes", params={"run": name})
    assert response.status_code in (400, 422), response.text
    assert "run" in response.json()["error"]["message"]


def test_nothing_outside_the_runs_directory_is_read_even_through_a_symlink(
    runs: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret"
    write_run(outside, [episode(1, 2)])
    os.symlink(outside, runs / "link")
    os.symlink(outside / "data", runs / "play" / "real" / "extra")  # not a shard location
    client = client_for(runs)
    assert "link" not in [r["name"] for r in client.get("/v1/runs").json()["runs"]]
    for path, params in (("/v1/runs/episodes", {"run": "link"}),
                         ("/v1/runs/episode", {"run": "link", "index": 0}),
                         ("/v1/runs/episodes", {"run": "no-such-run"})):
        response = client.get(path, params=params)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == (
            f"no recorded run {params['run']!r} in the runs directory")
    # A shard symlinked in from outside is not read either.
    shard = next((outside / "data").glob("shard-*.npz"))
    os.symlink(shard, runs / "play" / "real" / "data" / "shard-zzz-outside.npz")
    listed = client.get("/v1/runs/episodes", params={"run": "play/real"}).json()["episodes"]
    assert [e["seed"] for e in listed] == [3, 4, 3]


def test_bad_indexes_unreadable_shards_and_no_directory_are_4xx(runs: Path) -> None:
    client = client_for(runs)
    missing = client.get("/v1/runs/episode", params={"run": "play/real", "index": 3})
    assert missing.status_code == 404
    assert "has 3 episodes; no episode 3" in missing.json()["error"]["message"]
    assert client.get("/v1/runs/episode", params={"run": "play/real", "index": -1}).status_code == 422
    # A corrupt shard: its run is left out of the listing and reads as a 404, never a 500.
    (runs / "play" / "real" / "data" / "shard-corrupt.npz").write_bytes(b"not a zip")
    assert "play/real" not in [r["name"] for r in client.get("/v1/runs").json()["runs"]]
    broken = client.get("/v1/runs/episodes", params={"run": "play/real"})
    assert broken.status_code == 404 and "unreadable" in broken.json()["error"]["message"]
    unconfigured = client_for(None)
    assert unconfigured.get("/v1/runs").json() == {"configured": False, "runs": []}
    response = unconfigured.get("/v1/runs/episodes", params={"run": "play/real"})
    assert response.status_code == 404 and "WMPO_RUNS_DIR" in response.json()["error"]["message"]
    assert client_for(runs).get("/v1/runs", headers={"x-api-key": ""}).status_code == 401
