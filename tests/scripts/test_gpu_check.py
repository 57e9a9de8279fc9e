"""scripts/gpu_check.sh, the GPU check of the TensorRT path: it cannot run here (no GPU), so
only its syntax (`bash -n`, as the generated build_tensorrt_plans.sh gets `sh -n`) and its
refusal on a machine without `nvidia-smi` are checked."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def test_gpu_check_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_stops_at_once_without_nvidia_smi(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the check would really run")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "nvidia-smi not found" in proc.stderr and "NVIDIA GPU" in proc.stderr
    assert not out.exists()  # nothing started, nothing written
