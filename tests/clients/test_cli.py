"""`wmpo-client`: imagine an action file against a frame into a GIF; health."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wmpo_client.cli import gif_frames, load_actions, main

from tests.clients.conftest import KEY, LiveService
from tests.services.simulator.conftest import actions, frames


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    frame = tmp_path / "frame.png"
    Image.fromarray(frames()[0]).save(frame)
    npy = tmp_path / "actions.npy"
    np.save(npy, actions(3, 2, 8))  # 3 candidates x 2 chunks x 8 actions
    as_json = tmp_path / "actions.json"
    as_json.write_text(json.dumps({"candidates": actions(2, 8).tolist()}))
    return frame, npy, as_json


def test_imagine_writes_a_side_by_side_gif(
    inputs: tuple[Path, Path, Path], service: LiveService, tmp_path: Path, capsys
) -> None:
    frame, npy, _ = inputs
    gif = tmp_path / "out" / "imagined.gif"
    args = ["imagine", "--url", service.http_url, "--api-key", KEY, "--frame", str(frame)]
    code = main([*args, "--actions", str(npy), "--seed", "3", "--gif", str(gif), "--scale", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 3 and summary["candidates"] == 3
    assert summary["frames_per_candidate"] == 8 and summary["gif"] == str(gif)
    assert summary["provenance"]["world_model_sha256"] == "tiny"
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames == 1 + 8  # the start frame, then 8
        assert img.size == ((3 * 64 + 2 * 2) * 2, 64 * 2)


def test_imagine_over_grpc_with_json_actions_and_horizon(
    inputs: tuple[Path, Path, Path], service: LiveService, tmp_path: Path, capsys
) -> None:
    frame, _, as_json = inputs
    gif = tmp_path / "grpc.gif"
    url = f"grpc://{service.grpc_target}"
    argv = ["imagine", "--url", url, "--api-key", KEY, "--frame", str(frame)]
    assert main([*argv, "--actions", str(as_json), "--horizon", "1", "--gif", str(gif)]) == 0
    assert json.loads(capsys.readouterr().out)["frames_per_candidate"] == 4
    with Image.open(gif) as img:
        assert img.n_frames == 5 and img.size == ((2 * 64 + 2) * 2, 128)


def test_errors_go_to_stderr_with_a_status(
    inputs: tuple[Path, Path, Path], service: LiveService, tmp_path: Path, capsys
) -> None:
    frame, npy, _ = inputs
    base = ["imagine", "--url", service.http_url, "--frame", str(frame), "--actions", str(npy)]
    assert main([*base, "--api-key", "wrong-key-0123456789", "--retries", "0"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    bad = tmp_path / "actions.txt"
    bad.write_text("1 2 3")
    assert main([*base[:-1], str(bad), "--api-key", KEY]) == 2
    assert ".npy or .json" in capsys.readouterr().err


def test_health_through_the_console_script(service: LiveService) -> None:
    script = shutil.which("wmpo-client", path=str(Path(sys.executable).parent))
    assert script, "wmpo-client is not installed: pip install -e clients/python"
    out = subprocess.run(
        [script, "health", "--url", service.http_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ready"] is True


def test_action_files_and_gif_layout(tmp_path: Path) -> None:
    one_chunk = tmp_path / "chunk.json"
    one_chunk.write_text(json.dumps(actions(8).tolist()))
    assert load_actions(one_chunk).shape == (1, 8, 4)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        load_actions(wrong)
    images = gif_frames(np.zeros((2, 3, 4, 4, 3), np.uint8), start=np.ones((4, 4, 3), np.uint8))
    assert len(images) == 4 and images[0].shape == (8, 20, 3)  # (4 + 2 + 4) * 2 wide
    assert (images[0][:, 8:12] == 255).all()  # the white separator
