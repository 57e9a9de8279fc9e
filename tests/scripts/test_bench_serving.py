"""`scripts/bench_serving.py --quick` end to end: the real bundled model, a real MetaWorld frame,
the real uvicorn + grpc.aio server and clients. Checks the JSON it writes is sane and that every
derived figure (ratio, overhead, per-session memory) is computed from the measured numbers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_serving.py"


def _positive(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_benchmark_writes_sane_numbers(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMPO_")}
    env["MUJOCO_GL"] = "egl"
    # Alone it takes under a minute. Three sessions saw it stall inside a full `make test`, so
    # the run carries its own deadline (it prints every thread's stack, then exits), and its
    # whole process group is killed from here if even that does not end it. Its output goes to
    # files, not pipes: a pipe nobody drains blocks the writer, the deadline's stack dump included.
    log_out, log_err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with log_out.open("w") as fo, log_err.open("w") as fe:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out),
             "--deadline", "240"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"bench_serving.py outlived its deadline; stderr:\n{log_err.read_text()[-3000:]}")
    stdout, stderr = log_out.read_text(), log_err.read_text()
    assert proc.returncode == 0, stderr[-6000:]  # on a stall: the stacks of every thread
    assert "speedup" in stdout and "p99" in stdout
    res = json.loads(out.read_text())
    assert res["config"]["quick"] is True and res["config"]["torch_threads"] == 1

    b = res["batching"]
    med = b["frames_per_second_median"]
    assert _positive(med["batched"]) and _positive(med["single"])
    assert b["speedup"] == pytest.approx(med["batched"] / med["single"])
    pairs = [
        x["frames_per_second"] / y["frames_per_second"]
        for x, y in zip(b["runs"]["batched"], b["runs"]["single"], strict=True)
    ]
    assert b["speedup_per_repeat"] == pytest.approx(pairs)
    for run in b["runs"]["batched"] + b["runs"]["single"]:
        assert _positive(run["seconds"])
        assert run["frames"] == b["sessions"] * b["chunks_per_session"] * 4  # K=8, stride 2
        assert run["frames_per_second"] == pytest.approx(run["frames"] / run["seconds"])
    # The single engine really ran one rollout per call; the batched one really batched.
    assert all(r["mean_batch"] == 1 for r in b["runs"]["single"])
    assert all(r["mean_batch"] > 1 for r in b["runs"]["batched"])

    t = res["transports"]
    assert t["same_seed_frames_identical"] is True
    for name in ("in_process", "http", "grpc"):
        lat = t["latency"][name]
        samples = t["samples_s"][name]
        assert len(samples) == t["requests_per_transport"] and all(map(_positive, samples))
        assert _positive(lat["p50_ms"]) and lat["p99_ms"] >= lat["p50_ms"]
    base = t["latency"]["in_process"]["p50_ms"]
    for name in ("http", "grpc"):
        over = t["overhead"][name]
        assert over["median_ms"] == pytest.approx(t["latency"][name]["p50_ms"] - base)
        assert over["percent_of_in_process"] == pytest.approx(100 * over["median_ms"] / base)

    m = res["memory"]
    assert m["sessions"] == 16
    assert _positive(m["after_open"]["accounted_bytes_per_session"])
    assert (
        m["after_steps"]["accounted_bytes_per_session"]
        > m["after_open"]["accounted_bytes_per_session"]
    )  # recorded actions, a longer history and the kept frames of the last step
    for when in ("after_open", "after_steps", "after_close"):
        assert math.isfinite(m[when]["rss_delta_bytes_per_session"])
    low, high = m["after_steps"]["accounted_min_max"]
    assert 0 < low <= high
