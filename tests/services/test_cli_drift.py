"""`wmpo drift report` (services/cli.py) and `wmpo eval policy --verify` reporting outcomes to the
drift monitor: on the embedded stack with the bundled checkpoints in real MetaWorld (one short
episode), from the outcome log and from a real simulator's /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from wmpo_client.http import SimulatorClient

from services.cli import main
from services.simulator.drift import read_log, summarize
from tests.clients.conftest import KEY, serve
from tests.services.simulator.conftest import actions, frames, tiny_world_model


def test_eval_verify_reports_outcomes_then_drift_report_reads_the_log(capsys, tmp_path: Path) -> None:
    log, report = tmp_path / "outcomes.jsonl", tmp_path / "eval.json"
    # 12 steps: one whole chunk of 8, then one cut short at 4 by the episode's end (reported too).
    assert main(["eval", "policy", "--verify", "--tasks", "button-press-topdown-v3", "--episodes", "1",
                 "--workers", "1", "--max-steps", "12", "--candidates", "2", "--max-attempts", "1",
                 "--drift-log", str(log), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    verification = json.loads(report.read_text())["verification"]
    assert verification["outcomes_reported"] == 2 and verification["outcome_errors"] == []
    rows = read_log(log)
    assert [r["frames_compared"] for r in rows] == [4, 2]  # one real frame per 2 actions
    assert all(r["confidence"] is not None and r["success"] is False for r in rows)
    assert verification["drift_psnr_mean_db"] == pytest.approx(
        np.mean([r["psnr_mean_db"] for r in rows]), abs=1e-3)
    assert '"outcomes_reported": 2' in out

    assert main(["drift", "report", "--log", str(log), "--threshold", "0.45"]) == 0
    text = capsys.readouterr().out
    s = summarize(rows)
    assert f"drift over 2 outcome(s) (log {log})" in text
    assert f"{s.psnr_mean_db:.2f} dB" in text and f"{s.perceptual_mean:.4f}" in text
    assert "alert threshold 0.45" in text
    assert main(["drift", "report", "--log", str(log), "--json", "--last", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["outcomes"] == 1


def test_drift_report_from_a_simulators_metrics(capsys, tmp_path: Path) -> None:
    log = tmp_path / "outcomes.jsonl"
    with serve(tiny_world_model(), drift_log=str(log), drift_window=2) as live, \
            SimulatorClient(live.http_url, KEY) as sim:
        for i in range(3):
            result = sim.imagine(frames(i)[0], "", actions(1, 1, 8), seed=i)
            fake = result.candidates[0].frames
            sim.report_outcome(result.request_id, 0, np.clip(fake.astype(int) + 20 * i, 0, 255).astype(np.uint8),
                               success=i == 2)
        url = f"{live.http_url}/metrics"
        assert main(["drift", "report", "--metrics-url", url, "--api-key", KEY, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert main(["drift", "report", "--metrics-url", url]) == 2  # no key
        assert "--api-key" in capsys.readouterr().err
    window = summarize(read_log(log)[-2:])  # the rolling window holds the newest 2
    assert got["outcomes"] == 2
    assert got["psnr_mean_db"] == pytest.approx(window.psnr_mean_db, abs=1e-3)
    assert got["perceptual_mean"] == pytest.approx(window.perceptual_mean, abs=1e-4)
    lifetime = got["lifetime"]
    assert lifetime["outcomes_by_result"]["success"] >= 1 and lifetime["psnr_mean_db_outcomes"] >= 3


def test_drift_report_errors_are_one_line(capsys, tmp_path: Path) -> None:
    assert main(["drift", "report"]) == 2
    assert "one of --metrics-url" in capsys.readouterr().err
    assert main(["drift", "report", "--log", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read the outcome log" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"psnr_mean_db": 20}\nnot json\n')
    assert main(["drift", "report", "--log", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not JSON" in err and err.count("\n") == 1
    assert main(["eval", "policy", "--verify", "--simulator-url", "http://127.0.0.1:9", "--drift-log",
                 str(tmp_path / "x.jsonl"), "--episodes", "1"]) == 2
    assert "WMPO_DRIFT_LOG" in capsys.readouterr().err
