"""Checkpoints: a directory with ``model.safetensors``, ``config.json`` and ``manifest.json``.

The manifest records provenance (training data, command, versions) and results (metrics,
evaluations). A checkpoint's identity is the SHA-256 of its weights file; rollouts and
results carry its first 12 hex digits. Saving is atomic per file, weights last-but-one and
the manifest last, so a directory with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from wmpo.data.episodes import atomic_write_bytes, atomic_write_json
from wmpo.errors import CheckpointError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    manifest: dict[str, Any],
) -> str:
    """Write a checkpoint; returns the weights' SHA-256."""
    directory = Path(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = save(tensors, metadata={"format": "wmpo"})
    atomic_write_bytes(directory / WEIGHTS, lambda f: f.write(blob))
    atomic_write_json(directory / CONFIG, config)
    sha = hashlib.sha256(blob).hexdigest()
    atomic_write_json(directory / MANIFEST, {**manifest, "weights_sha256": sha})
    return sha


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint directory; raises ``CheckpointError`` with a clear message on any problem."""
    directory = Path(directory)
    if directory.is_file() and directory.name == WEIGHTS:
        directory = directory.parent
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: expected a directory with {WEIGHTS} and {CONFIG}")
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).exists():
            raise CheckpointError(f"checkpoint {directory} is missing {name}")
    try:
        tensors = load_file(directory / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights {directory / WEIGHTS} are corrupt: {e}") from e
    try:
        config = json.loads((directory / CONFIG).read_text())
        manifest_path = directory / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {directory} has invalid JSON: {e}") from e
    return tensors, config, manifest


def build_model(model_cls: Any, config_cls: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                where: str) -> Any:
    """Instantiate ``model_cls(config_cls(**config["model"]))`` and load ``tensors`` into it, turning
    any mismatch between the checkpoint and this code into a ``CheckpointError``."""
    try:
        model = model_cls(config_cls(**config["model"]))
        model.load_state_dict(tensors)
    except (TypeError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{config.get('kind', 'model')} checkpoint {where} does not match this code: {e}") from e
    return model.eval()


def checkpoint_sha(directory: str | Path) -> str:
    """The short weights hash a checkpoint's manifest records (provenance of what was started from)."""
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    return manifest.get("weights_sha256", "")[:12]


def update_manifest(directory: str | Path, **fields: Any) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update(fields)
    atomic_write_json(path, manifest)
    return manifest


def record_evaluation(directory: str | Path, name: str, result: dict[str, Any]) -> None:
    """Add an evaluation result to a checkpoint's manifest under ``evaluations[name]``."""
    path = Path(directory) / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("evaluations", {})[name] = {**result, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(path, manifest)


def environment_info() -> dict[str, Any]:
    """Versions and code revision, for provenance records. MuJoCo and MetaWorld are None where
    they are not installed (a GPU node that trains the DiT on packed latents)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mujoco": installed("mujoco"),
        "metaworld": installed("metaworld"),
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
