"""`scripts/bench_denoiser.py` end to end on the session's exported graphs (a few repeats): the
JSON it writes is sane and every runtime agrees with torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from wmpo.export.tritonserver import TritonUnavailable, find_tritonserver

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_denoiser.py"


@pytest.mark.slow
def test_bench_denoiser_writes_sane_numbers(tmp_path, onnx_dir, dims):
    try:
        find_tritonserver()
    except TritonUnavailable as e:
        pytest.skip(f"no tritonserver: {e}")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--onnx", str(onnx_dir), "--repeats", "2",
                           "--batches", "1,2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["matmul_peak_gflops"]["used"] > 0
    for key, batch in (("batch1", 1), ("batch2", 2)):
        b = r[key]
        assert b["shape"] == {"batch": batch, "ctx_frames": dims.ctx, "new_frames": 4}
        assert b["kv_bytes"] == batch * dims.D2 * dims.H * dims.ctx * dims.N * dims.hd * 4
        assert set(b["runtimes"]) == {"torch eager", "onnxruntime", "triton grpc", "triton http", "triton grpc+shm"}
        for name, v in b["runtimes"].items():
            assert math.isfinite(v["median_ms"]) and v["median_ms"] > 0, name
            assert v["max_abs_err_vs_torch"] < 1e-4, name
            assert v["fraction_of_peak"] == pytest.approx(v["gflops"] / r["matmul_peak_gflops"]["used"])
            if name.startswith("triton"):
                ort = b["runtimes"]["onnxruntime"]["median_ms"]
                assert v["hop_ms"] == pytest.approx(v["median_ms"] - ort)
    assert "median ms" in proc.stdout and "triton grpc+shm" in proc.stdout


@pytest.mark.slow
def test_bench_denoiser_against_a_running_triton(tmp_path, onnx_dir, python_repo):
    """--triton-grpc: the Triton rows are a server already running (as scripts/gpu_check.sh
    starts with the TensorRT plans); no HTTP row without --triton-http, no hop columns (other
    kernels than in-process ONNX Runtime), and the numbers still agree with torch."""
    from wmpo.export.tritonserver import TritonServer

    try:
        install = find_tritonserver()
    except TritonUnavailable as e:
        pytest.skip(f"no tritonserver: {e}")
    out = tmp_path / "bench.json"
    with TritonServer(python_repo, install=install) as server:
        server.wait_ready(["dit_denoiser"], timeout=90)
        proc = subprocess.run([sys.executable, str(SCRIPT), "--onnx", str(onnx_dir), "--repeats", "2",
                               "--batches", "2", "--out", str(out), "--triton-grpc", server.grpc_url],
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["triton"] == server.grpc_url
    runtimes = r["batch2"]["runtimes"]
    assert set(runtimes) == {"torch eager", "onnxruntime", "triton grpc", "triton grpc+shm"}
    for name, v in runtimes.items():
        assert v["max_abs_err_vs_torch"] < 1e-4 and "hop_ms" not in v, name
