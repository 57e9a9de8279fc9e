"""Triton model repositories generated from the bundled checkpoint: layout, config.pbtxt parsed
as Triton's own ModelConfig protobuf, the TensorRT build script."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from google.protobuf import text_format

from tests.export.conftest import CHECKPOINT
from wmpo.cli import main
from wmpo.errors import ConfigError
from wmpo.export.graphs import DENOISER, GRAPHS
from wmpo.export.onnx_export import MANIFEST
from wmpo.export.triton_repo import REPO_MANIFEST, TRT_SCRIPT, RepoSettings, write_repository
from wmpo.utils.checkpoint import file_sha256

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def parse_config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def repos(tmp_path_factory, onnx_dir):
    out = {}
    for variant in ("python", "onnxruntime_onnx", "tensorrt_plan"):
        repo = tmp_path_factory.mktemp(variant)
        write_repository(CHECKPOINT, repo, RepoSettings(variant=variant, version=3), onnx_dir=onnx_dir,
                         log=lambda *_: None)
        out[variant] = repo
    return out


@pytest.mark.parametrize("variant", ["python", "onnxruntime_onnx", "tensorrt_plan"])
def test_configs_are_triton_model_configs(repos, dims, variant):
    sha = file_sha256(CHECKPOINT / "model.safetensors")
    kind = model_config_pb2.ModelInstanceGroup.Kind
    for name in GRAPHS:
        cfg = parse_config(repos[variant] / name / "config.pbtxt")
        assert cfg.name == name
        if variant == "python":
            assert cfg.backend == "python" and not cfg.platform
        else:
            assert cfg.platform == variant
        assert cfg.max_batch_size == 64
        assert list(cfg.dynamic_batching.preferred_batch_size) == [16, 32, 64]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
        want_kind = kind.KIND_CPU if variant == "python" else kind.KIND_GPU
        assert cfg.instance_group[0].kind == want_kind
        assert list(cfg.version_policy.specific.versions) == [3]
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["checkpoint_sha256"] == sha
        assert params["world_model_sha256"] == sha[:12]
        assert params["onnx_sha256"] == file_sha256(repos[variant] / name / "3" / "model.onnx")
    den = parse_config(repos[variant] / DENOISER / "config.pbtxt")
    shapes = {t.name: list(t.dims) for t in den.input}
    # the batch is dimension 0 and left out of dims; dynamic frame counts are -1
    assert shapes == {"z": [-1, dims.C, dims.h, dims.h], "t": [-1], "actions": [-1, dims.A], "has_action": [-1],
                      "positions": [-1], "kv": [dims.D2, dims.H, -1, dims.N, dims.hd]}
    types = {t.name: model_config_pb2.DataType.Name(t.data_type) for t in den.input}
    assert types["has_action"] == "TYPE_BOOL" and types["positions"] == "TYPE_INT64"
    assert [o.name for o in den.output] == ["velocity"]


def test_layouts(repos):
    for name in GRAPHS:
        assert sorted(p.name for p in (repos["python"] / name / "3").iterdir()) == ["model.onnx", "model.py"]
        assert [p.name for p in (repos["onnxruntime_onnx"] / name / "3").iterdir()] == ["model.onnx"]
        assert [p.name for p in (repos["tensorrt_plan"] / name / "3").iterdir()] == ["model.onnx"]
    assert not (repos["python"] / TRT_SCRIPT).exists()
    summary = json.loads((repos["tensorrt_plan"] / REPO_MANIFEST).read_text())
    assert summary["variant"] == "tensorrt_plan" and set(summary["models"]) == set(GRAPHS)
    assert summary["settings"]["instance_kind"] == "KIND_GPU"


def test_tensorrt_build_script(repos, dims):
    script = repos["tensorrt_plan"] / TRT_SCRIPT
    text = script.read_text()
    assert script.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "sh", str(script)], check=True)
    assert "--fp16" in text and "--saveEngine" in text
    for name in GRAPHS:
        assert f'build {name} "$REPO/{name}/3"' in text
    # one optimization profile: min batch 1 / opt 16 / max 64, and the frame dimensions' ranges
    lat, kv = f"{dims.C}x{dims.h}x{dims.h}", f"{dims.D2}x{dims.H}x{{}}x{dims.N}x{dims.hd}"
    assert (f"--minShapes=z:1x1x{lat},t:1x1,actions:1x1x{dims.A},has_action:1x1,positions:1x1,"
            f"kv:1x{kv.format(1)}") in text
    assert f"--optShapes=z:16x4x{lat}," in text and f"kv:16x{kv.format(dims.ctx)}" in text
    assert f"--maxShapes=z:64x{dims.new_max}x{lat}," in text and f"kv:64x{kv.format(dims.ctx)}" in text
    assert f"--maxShapes=frames:64x{dims.img}x{dims.img}x3" in text


def test_script_fails_clearly_without_trtexec(repos, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": str(tmp_path / "missing")}
    r = subprocess.run(["sh", str(repos["tensorrt_plan"] / TRT_SCRIPT)], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "trtexec not found" in r.stderr


def test_versions_are_kept(tmp_path, onnx_dir):
    for version in (1, 2):
        write_repository(CHECKPOINT, tmp_path, RepoSettings(version=version, graphs=(DENOISER,)), onnx_dir=onnx_dir,
                         log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / DENOISER).iterdir()) == ["1", "2", "config.pbtxt"]
    assert list(parse_config(tmp_path / DENOISER / "config.pbtxt").version_policy.specific.versions) == [2]


@pytest.mark.parametrize("kwargs", [
    {"variant": "savedmodel"}, {"version": 0}, {"preferred": (128,)}, {"max_batch": 0},
    {"variant": "python", "instance_kind": "gpu"}, {"variant": "tensorrt_plan", "instance_kind": "cpu"},
    {"opt_batch": 65}, {"graphs": ("vae",)},
])
def test_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        RepoSettings(**kwargs)


def test_onnx_from_another_checkpoint_is_refused(tmp_path, onnx_dir):
    other = tmp_path / "onnx"
    shutil.copytree(onnx_dir, other)
    m = json.loads((other / MANIFEST).read_text())
    m["checkpoint_sha256"] = "0" * 64
    (other / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="exported from checkpoint 000000000000"):
        write_repository(CHECKPOINT, tmp_path / "repo", onnx_dir=other, log=lambda *_: None)


def test_cli_export_triton(tmp_path, onnx_dir, capsys):
    repo = tmp_path / "repo"
    assert main(["export", "triton", "--repo", str(repo), "--onnx", str(onnx_dir), "--variant", "onnxruntime_onnx",
                 "--instance-kind", "cpu", "--threads", "2", "--preferred", "8,16", "--max-batch", "16",
                 "--opt-batch", "8", "--queue-delay-us", "2000", "--version", "4"]) == 0
    out = capsys.readouterr().out
    assert "dit_denoiser/" in out and "model.onnx" in out
    cfg = parse_config(repo / DENOISER / "config.pbtxt")
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.Kind.KIND_CPU
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert (repo / DENOISER / "4" / "model.onnx").exists()
    assert main(["export", "triton", "--repo", str(repo), "--onnx", str(onnx_dir), "--preferred", "99",
                 "--max-batch", "16"]) == 2
    assert "preferred batch sizes" in capsys.readouterr().err
    assert main(["export", "triton", "--repo", str(repo), "--onnx", str(onnx_dir), "--preferred", "a,b"]) == 2
    assert "comma-separated batch sizes" in capsys.readouterr().err
    # without --preferred: 16 and 32 below the cap, and the cap
    assert main(["export", "triton", "--repo", str(repo), "--onnx", str(onnx_dir), "--max-batch", "48"]) == 0
    cfg = parse_config(repo / DENOISER / "config.pbtxt")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [16, 32, 48]
