"""The trainer never sends its service keys to a host a caller chooses, and a job's policy is a
checkpoint under the trainer's policy roots (the trainer was a key-leaking request proxy and a
filesystem oracle before: a job's simulator_url / judge_url went anywhere, with the key)."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from wmpo_client import GrpcTrainerClient, TrainerClient
from wmpo_client.errors import SimulatorError

from services.trainer.settings import TrainerSettings
from tests.services.trainer.conftest import POLICY, TINY

SERVICE_KEY = "service-key-0123456789abcdef"


class Capture:
    """An HTTP server on loopback that records every request it gets (an attacker's host)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                seen.append((self.command, self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_DELETE = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture() -> Iterator[Capture]:
    server = Capture()
    yield server
    server.close()


def test_a_job_naming_an_unconfigured_host_is_refused_and_that_host_hears_nothing(
    make_trainer: Any, capture: Capture
) -> None:
    trainer = make_trainer(simulator_api_key=SERVICE_KEY, judge_api_key=SERVICE_KEY)
    attempts = [
        ({"simulator_url": capture.url}, "simulator_url"),
        ({"simulator_url": [capture.url]}, "simulator_url"),
        ({"judge_url": capture.url}, "judge_url"),
        ({"simulator_url": capture.url, "judge_url": capture.url}, "simulator_url"),
        ({"endpoint": "attacker"}, "endpoint"),
    ]
    for change, field in attempts:
        r = httpx.post(f"{trainer.http_url}/v1/jobs", json={"policy": POLICY, **TINY, **change}, timeout=30)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["message"].startswith(f"{field}:"), error
    with GrpcTrainerClient(trainer.grpc_target) as rpc:
        with pytest.raises(SimulatorError) as err:
            rpc.submit(POLICY, **{**TINY, "simulator_url": [capture.url], "judge_url": capture.url})
        assert "INVALID_ARGUMENT" in str(err.value) and "simulator_url" in str(err.value)
    time.sleep(1.0)  # a worker that took a job would have called by now
    assert capture.requests == []
    assert httpx.get(f"{trainer.http_url}/v1/jobs", timeout=30).json()["jobs"] == []


def test_a_job_picks_an_operator_endpoint_set_by_name(make_trainer: Any, stack: Any) -> None:
    # No 'default' set: a job must name one.
    trainer = make_trainer(
        simulator_url=None,
        judge_url=None,
        endpoints={"lab": {"simulator_url": stack.http_url, "judge_url": stack.judge_http_url}},
    )
    r = httpx.post(f"{trainer.http_url}/v1/jobs", json={"policy": POLICY, **TINY}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("endpoint:")
    assert "lab" in r.json()["error"]["message"]
    with TrainerClient(trainer.http_url, timeout=120) as http:
        job = http.submit(POLICY, endpoint="lab", **TINY)
        assert job.config["simulator_url"] == stack.http_url
        # Replicas by URL: only the set's own.
        same = http.submit(POLICY, simulator_url=stack.http_url, **{**TINY, "steps": 1})
        assert same.config["judge_url"] == stack.judge_http_url
        assert http.wait(job.job_id).state == "succeeded"
        assert http.wait(same.job_id).state == "succeeded"


def test_settings_refuse_half_a_default_set_and_bad_endpoint_urls() -> None:
    with pytest.raises(ValueError, match="set both WMPO_SIMULATOR_URL and WMPO_JUDGE_URL"):
        TrainerSettings(dev_mode=True, simulator_url="http://sim:8000")
    with pytest.raises(ValueError, match="must be http"):
        TrainerSettings(dev_mode=True, endpoints={"x": {"simulator_url": "sim:8000", "judge_url": "http://j:1"}})


def test_the_policy_must_lie_under_the_policy_roots_and_refusals_reveal_nothing(
    make_trainer: Any, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere" / "policy"  # a real policy checkpoint, outside the roots
    shutil.copytree(POLICY, outside)
    trainer = make_trainer()
    messages = {}
    for name in (str(outside), str(tmp_path / "no-such-dir"), "/etc", "../../../../etc", "checkpoints/../../etc"):
        r = httpx.post(f"{trainer.http_url}/v1/jobs", json={"policy": name, **TINY}, timeout=30)
        assert r.status_code == 400, (name, r.text)
        messages[name] = r.json()["error"]["message"].replace(repr(name), "NAME")
    assert len(set(messages.values())) == 1, messages  # existing or not, the same answer
    assert next(iter(messages.values())).startswith("policy: no policy checkpoint named NAME")

    # Under a root: by the trainer's path, or relative to the root.
    with TrainerClient(trainer.http_url, timeout=120) as http:
        for name in (POLICY, "checkpoints/policy-base", "policy-base"):
            job = http.submit(POLICY if name == POLICY else name, **{**TINY, "steps": 1})
            assert job.config["policy"] == str(Path(POLICY).resolve())
            http.cancel(job.job_id)
    # A root the operator adds makes the copy usable.
    allowed = make_trainer(policy_roots=f"checkpoints,{tmp_path / 'elsewhere'}")
    r = httpx.post(f"{allowed.http_url}/v1/jobs", json={"policy": "policy", **TINY, "steps": 1}, timeout=30)
    assert r.status_code == 201, r.text
    httpx.post(f"{allowed.http_url}/v1/jobs/{r.json()['job_id']}/cancel", timeout=30)
