"""Shared, exported once per test session: the bundled world model, its four ONNX graphs, and a
Python-backend Triton repository generated from them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("onnxruntime", reason="the export extra is not installed (make setup installs it)")

from wmpo.export.onnx_export import export_onnx, load_world_model  # noqa: E402
from wmpo.export.triton_repo import RepoSettings, write_repository  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "world-model"


@pytest.fixture(scope="session")
def world_model():
    wm, sha = load_world_model(CHECKPOINT)
    return wm


@pytest.fixture(scope="session")
def dims(world_model) -> SimpleNamespace:
    """The bundled model's tensor sizes, so the tests follow a retrained checkpoint."""
    c, a = world_model.dit.config, world_model.ae.config
    ctx = 1 + world_model.sampler.context_frames
    return SimpleNamespace(C=c.latent_channels, h=c.latent_size, D2=2 * c.depth, H=c.heads, N=c.tokens_per_frame,
                           hd=c.dim // c.heads, A=c.frame_action_dim, img=a.image_size, ctx=ctx,
                           new_max=c.max_frames - ctx)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(CHECKPOINT, out, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def python_repo(tmp_path_factory, onnx_dir) -> Path:
    repo = tmp_path_factory.mktemp("triton-python")
    write_repository(CHECKPOINT, repo, RepoSettings(variant="python", max_batch=32, preferred=(4, 16, 32),
                                                     queue_delay_us=1000, threads=2),
                     onnx_dir=onnx_dir, log=lambda *_: None)
    return repo
