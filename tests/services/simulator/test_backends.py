"""The simulator's DiT backends (WMPO_BACKEND) against the torch backend, through the real app.

`onnx` runs the exported DiT in process with ONNX Runtime; `triton` calls a real Triton
Inference Server (the nvidia-pytriton wheel's tritonserver, on loopback) serving the generated
Python-backend repository, each denoising step one call over the engine's batch. The same
requests with the same seeds must give the torch backend's frames: the graphs agree with torch
to about 1e-5 (tests/export), and that error, carried through the autoregressive steps and the
decoder, may move a few uint8 pixels by a step or two. Allowed here: max abs difference
`MAX_ABS` and at most `MAX_FRACTION` of the values differing at all (measured on the bundled
model with both onnx and triton: max abs 1, 0.0005-0.004% of the values differ).

Then Triton is killed while the service runs: requests get 503 naming Triton (no 500, no
traceback), readiness turns false with a reason, and once Triton is back on the same ports the
same request succeeds again with the same frames.

The ONNX export (about a minute) is cached in pytest's cache directory, keyed by the
checkpoint's hash, so later runs skip it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from wmpo_client.codec import from_json, to_json

pytest.importorskip("onnxruntime", reason="the export extra is not installed (make setup installs it)")
pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (make setup installs it)")

from services.simulator.backends import (  # noqa: E402
    DIT_GRAPHS,
    ensure_onnx_export,
    parse_triton_url,
)
from services.simulator.runtime import SimulatorRuntime  # noqa: E402
from services.simulator.server import build_app, world_model_from_settings  # noqa: E402
from services.simulator.settings import SimulatorSettings  # noqa: E402
from wmpo.errors import CheckpointError, ConfigError  # noqa: E402
from wmpo.export.tritonserver import TritonServer, TritonUnavailable, find_tritonserver  # noqa: E402
from wmpo.utils.checkpoint import WEIGHTS, file_sha256  # noqa: E402

try:
    INSTALL = find_tritonserver()
    SKIP = ""
except TritonUnavailable as e:
    INSTALL, SKIP = None, str(e)

CHECKPOINT = Path(__file__).resolve().parents[3] / "checkpoints" / "world-model"
KEY = "sim-key-0123456789abcdef"
HEADERS = {"x-api-key": KEY}
STEPS = 2  # denoising steps per chunk: enough to exercise the loop, quick on 2 cores
MAX_ABS = 2  # uint8 levels (measured: 1)
MAX_FRACTION = 0.001  # of all frame values (measured: 0.001-0.002%)

needs_triton = pytest.mark.skipif(INSTALL is None, reason=f"no tritonserver: {SKIP}")


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def onnx_dir(request) -> Path:
    sha = file_sha256(CHECKPOINT / WEIGHTS)
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    where = cache.mkdir(f"wmpo-onnx-{sha[:16]}") if cache else request.getfixturevalue("tmp_path_factory").mktemp("onnx")
    return ensure_onnx_export(CHECKPOINT, where)[0]


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory, onnx_dir) -> Path:
    from wmpo.export.triton_repo import RepoSettings, write_repository

    repo = tmp_path_factory.mktemp("triton-python")
    write_repository(CHECKPOINT, repo, RepoSettings(variant="python", graphs=DIT_GRAPHS, max_batch=32,
                                                    preferred=(4, 16, 32), queue_delay_us=1000, threads=2),
                     onnx_dir=onnx_dir, log=lambda *_: None)
    return repo


@pytest.fixture(scope="module")
def triton(triton_repo):
    if INSTALL is None:
        pytest.skip(f"no tritonserver: {SKIP}")
    server = TritonServer(triton_repo, install=INSTALL).start()
    server.wait_ready(DIT_GRAPHS, timeout=90)
    yield server
    server.stop()


def sim_settings(**overrides) -> SimulatorSettings:
    values = {"api_keys": KEY, "max_wait_ms": 20.0, "checkpoint": str(CHECKPOINT), "sampler_steps": STEPS,
              "triton_startup_timeout_s": 30.0}
    values.update(overrides)
    return SimulatorSettings(**values)


def app_client(settings: SimulatorSettings) -> TestClient:
    runtime = SimulatorRuntime(world_model_from_settings(settings), settings)
    return TestClient(build_app(runtime, settings, serve_grpc=False))


def start_frame() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def imagine(client: TestClient):
    cands = np.random.default_rng(3).uniform(-1, 1, (3, 2, 8, 4)).astype(np.float32)
    return client.post("/v1/imagine", headers=HEADERS, json={
        "start_frames": to_json(start_frame()), "candidates": to_json(cands), "seed": 11})


def imagine_frames(client: TestClient) -> tuple[np.ndarray, dict[str, str]]:
    r = imagine(client)
    assert r.status_code == 200, r.text
    body = r.json()
    return np.stack([from_json(c["frames"]) for c in body["candidates"]]), body["provenance"]


def group_frames(client: TestClient) -> np.ndarray:
    """A forked group of 4 sessions, stepped twice with one chunk of 8 actions per member."""
    r = client.post("/v1/sessions", headers=HEADERS,
                    json={"start_frames": to_json(start_frame()), "seed": 5, "group_size": 4})
    assert r.status_code == 200, r.text
    gid = r.json()["group_id"]
    out = []
    for i in range(2):
        acts = np.random.default_rng(20 + i).uniform(-1, 1, (4, 8, 4)).astype(np.float32)
        s = client.post(f"/v1/groups/{gid}/step", headers=HEADERS, json={"actions": to_json(acts)})
        assert s.status_code == 200, s.text
        out.append(np.stack([from_json(res["frames"]) for res in s.json()["results"]]))
    client.delete(f"/v1/groups/{gid}", headers=HEADERS)
    return np.concatenate(out, axis=1)  # (G, frames, H, W, 3)


def compare(got: np.ndarray, ref: np.ndarray, what: str) -> tuple[int, float]:
    assert got.shape == ref.shape and got.dtype == ref.dtype == np.uint8, what
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    worst, fraction = int(diff.max()), float((diff > 0).mean())
    print(f"{what}: max abs {worst}, differing {fraction:.4%} of {diff.size} values")
    assert worst <= MAX_ABS, f"{what}: max abs difference {worst} > {MAX_ABS}"
    assert fraction <= MAX_FRACTION, f"{what}: {fraction:.4%} of values differ (> {MAX_FRACTION:.2%})"
    return worst, fraction


@pytest.fixture(scope="module")
def torch_reference() -> dict[str, np.ndarray]:
    with app_client(sim_settings()) as client:
        frames, prov = imagine_frames(client)
        assert prov["backend"] == "torch"
        return {"imagine": frames, "group": group_frames(client)}


# ---------------------------------------------------------------------------- settings
def test_backend_settings_are_checked() -> None:
    assert SimulatorSettings(api_keys=KEY).backend == "torch"
    with pytest.raises(ValueError, match="WMPO_TRITON_URL"):
        SimulatorSettings(api_keys=KEY, backend="triton")
    with pytest.raises(ValueError, match="host:port"):
        SimulatorSettings(api_keys=KEY, backend="triton", triton_url="https://triton:8001")
    with pytest.raises(ValueError, match="backend"):
        SimulatorSettings(api_keys=KEY, backend="tensorrt")
    assert parse_triton_url("triton:8001") == ("grpc", "triton:8001")
    assert parse_triton_url("grpc://triton:8001") == ("grpc", "triton:8001")
    assert parse_triton_url("http://triton:8000") == ("http", "triton:8000")


def test_onnx_dir_of_another_checkpoint_is_refused(onnx_dir, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    manifest = (onnx_dir / "export.json").read_text().replace(file_sha256(CHECKPOINT / WEIGHTS), "0" * 64)
    (other / "export.json").write_text(manifest)
    with pytest.raises(ConfigError, match="exported from checkpoint 000000000000"):
        ensure_onnx_export(CHECKPOINT, other)
    assert ensure_onnx_export(CHECKPOINT, onnx_dir)[0] == onnx_dir  # reused, not re-exported


# ---------------------------------------------------------------------------- onnx
def test_onnx_backend_matches_torch(onnx_dir, torch_reference) -> None:
    with app_client(sim_settings(backend="onnx", onnx_dir=str(onnx_dir), onnx_threads=2)) as client:
        frames, prov = imagine_frames(client)
        assert prov["backend"] == "onnx" and prov["onnx_checkpoint_sha256"] == prov["world_model_sha256"]
        compare(frames, torch_reference["imagine"], "onnx /v1/imagine")
        compare(group_frames(client), torch_reference["group"], "onnx forked group")


# ---------------------------------------------------------------------------- triton
@needs_triton
@pytest.mark.parametrize(("scheme", "shm"), [("", "auto"), ("http://", "off"), ("", "on")])
def test_triton_backend_matches_torch(triton, torch_reference, scheme, shm) -> None:
    """gRPC and HTTP, with the keys/values in shared memory (auto finds Triton on this host,
    on requires it) or in every request (off): the same frames."""
    url = scheme + (triton.http_url if scheme else triton.grpc_url)
    with app_client(sim_settings(backend="triton", triton_url=url, triton_shm=shm)) as client:
        assert client.get("/readyz").status_code == 200
        frames, prov = imagine_frames(client)
        assert prov["backend"] == "triton"
        assert prov["triton_protocol"] == ("http" if scheme else "grpc")
        assert prov["triton_shared_memory"] == ("off" if shm == "off" else "on")
        assert prov["triton_checkpoint_sha256"] == prov["world_model_sha256"]
        assert prov["triton_models"] == '{"dit_context": "1", "dit_denoiser": "1"}'
        compare(frames, torch_reference["imagine"], f"triton {prov['triton_protocol']} /v1/imagine")
        if not scheme:  # the group once is enough
            compare(group_frames(client), torch_reference["group"], "triton grpc forked group")


@needs_triton
def test_triton_repository_of_another_checkpoint_is_refused(triton, monkeypatch) -> None:
    import services.simulator.backends as backends

    real = backends.file_sha256
    monkeypatch.setattr(backends, "file_sha256", lambda path: "f" * 64 if Path(path).name == WEIGHTS else real(path))
    with pytest.raises(CheckpointError, match="exported from checkpoint cd1b76c081d1|exported from checkpoint"):
        world_model_from_settings(sim_settings(backend="triton", triton_url=triton.grpc_url))


def test_triton_down_at_startup_is_a_clear_error() -> None:
    from wmpo.export.tritonserver import free_port

    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=f"Triton at {url} is unreachable"):
        world_model_from_settings(sim_settings(backend="triton", triton_url=url, triton_startup_timeout_s=0))


class PrivateShmTritonServer(TritonServer):
    """tritonserver in its own mount namespace with a private /dev/shm: as far as shared
    memory goes, a Triton on another host (or in another pod)."""

    def command(self, backend_dir: Path) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs wmpo-shm /dev/shm && exec "$@"', "sh", *super().command(backend_dir)]


@needs_triton
def test_triton_shm_on_another_host_auto_falls_back_and_on_refuses(triton_repo) -> None:
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs x /dev/shm"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare + mount (root) to give tritonserver a private /dev/shm")
    with PrivateShmTritonServer(triton_repo, install=INSTALL) as server:
        server.wait_ready(DIT_GRAPHS, timeout=90)
        with pytest.raises(ConfigError, match="WMPO_TRITON_SHM=on, but Triton at .* cannot use"):
            world_model_from_settings(sim_settings(backend="triton", triton_url=server.grpc_url,
                                                   triton_shm="on"))
        with app_client(sim_settings(backend="triton", triton_url=server.grpc_url)) as client:
            r = imagine(client)  # auto: off, and the frames still come
            assert r.status_code == 200, r.text
            assert r.json()["provenance"]["triton_shared_memory"] == "off"


def kill(server: TritonServer) -> tuple[int, int, int]:
    """SIGKILL the server (no graceful unload: the process is just gone); returns its ports."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    server.stop()
    return server.http_port, server.grpc_port, server.metrics_port


def restart(server: TritonServer, repo: Path, ports: tuple[int, int, int]) -> None:
    """A fresh tritonserver on the same ports, adopted by the module's fixture (which stops it)."""
    fresh = TritonServer(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                         install=INSTALL).start()
    server.process, server._tmp, server.log_file = fresh.process, fresh._tmp, fresh.log_file
    server.wait_ready(DIT_GRAPHS, timeout=90)


def step_group(client: TestClient, gid: str, i: int):
    acts = np.random.default_rng(20 + i).uniform(-1, 1, (4, 8, 4)).astype(np.float32)
    return client.post(f"/v1/groups/{gid}/step", headers=HEADERS,
                       json={"actions": to_json(acts), "expected_chunks_stepped": i})


@needs_triton
def test_triton_killed_gives_503_then_recovers(triton, triton_repo, torch_reference) -> None:
    """A forked group is stepped, Triton is killed, the next step gets 503 naming Triton and
    readiness turns false; Triton comes back on the same ports, readiness returns and the same
    step, retried with the same expected_chunks_stepped (the failed step did not advance the
    group), succeeds with the frames the torch backend gives."""
    ref = torch_reference["group"]
    with app_client(sim_settings(backend="triton", triton_url=triton.grpc_url)) as client:
        r = client.post("/v1/sessions", headers=HEADERS,
                        json={"start_frames": to_json(start_frame()), "seed": 5, "group_size": 4})
        gid = r.json()["group_id"]
        first = step_group(client, gid, 0)
        assert first.status_code == 200, first.text
        compare(np.stack([from_json(x["frames"]) for x in first.json()["results"]]), ref[:, :4], "before kill")
        ports = kill(triton)

        r = step_group(client, gid, 1)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "UNAVAILABLE", err
        assert f"Triton server at {triton.grpc_url} did not answer" in err["message"], err
        assert "Traceback" not in r.text
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert f"Triton at {triton.grpc_url} is unreachable" in ready.json()["reason"], ready.text

        restart(triton, triton_repo, ports)
        deadline = time.monotonic() + 15
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not return with Triton"
            time.sleep(0.3)
        again = step_group(client, gid, 1)
        assert again.status_code == 200, again.text
        compare(np.stack([from_json(x["frames"]) for x in again.json()["results"]]), ref[:, 4:], "after restart")
        frames, prov = imagine_frames(client)
        assert prov["backend"] == "triton"
        compare(frames, torch_reference["imagine"], "imagine after restart")


@needs_triton
@pytest.mark.parametrize("queue", ["memory", "redis"])
def test_queued_imagine_with_triton_down_is_503(triton, triton_repo, queue, request) -> None:
    """Both imagine queues (in process and Redis Streams) answer Triton's 503 after their tries,
    naming Triton, not a dead-lettered 500."""
    redis = {}
    if queue == "redis":
        redis = {"redis_url": request.getfixturevalue("redis_url"), "queue_min_idle_s": 0.6,
                 "queue_prefix": request.getfixturevalue("redis_prefix")}
    with app_client(sim_settings(backend="triton", triton_url=triton.grpc_url,
                                 queue_retry_delay_s=0.1, **redis)) as client:
        imagine_frames(client)
        ports = kill(triton)
        try:
            r = imagine(client)
            assert "Traceback" not in r.text
            assert r.status_code == 503, r.text
            assert "Triton" in r.json()["error"]["message"], r.text
        finally:
            restart(triton, triton_repo, ports)


@needs_triton
def test_triton_slower_than_the_timeout_gives_503(triton) -> None:
    with app_client(sim_settings(backend="triton", triton_url=triton.grpc_url, triton_timeout_s=0.001)) as client:
        r = client.post("/v1/sessions", headers=HEADERS,
                        json={"start_frames": to_json(start_frame()), "seed": 5, "group_size": 2})
        s = client.post(f"/v1/groups/{r.json()['group_id']}/step", headers=HEADERS,
                        json={"actions": to_json(np.zeros((2, 8, 4), np.float32))})
        assert s.status_code == 503, s.text
        assert s.json()["error"]["code"] == "UNAVAILABLE"
        assert "did not answer" in s.json()["error"]["message"] and "Deadline" in s.json()["error"]["message"]


@needs_triton
def test_triton_killed_mid_request_gives_503_then_recovers(triton, triton_repo) -> None:
    """Triton is killed while a group step's denoising calls are running: that request gets 503
    naming Triton (not 500), and once Triton is back the group steps again."""
    import threading

    import tritonclient.grpc as grpcclient

    def denoiser_calls() -> int:
        c = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            stats = c.get_inference_statistics("dit_denoiser", as_json=True)["model_stats"][0]
            return int(stats.get("inference_count", 0))
        finally:
            c.close()

    with app_client(sim_settings(backend="triton", triton_url=triton.grpc_url, sampler_steps=32)) as client:
        r = client.post("/v1/sessions", headers=HEADERS,
                        json={"start_frames": to_json(start_frame()), "seed": 5, "group_size": 4})
        gid = r.json()["group_id"]
        acts = np.random.default_rng(1).uniform(-1, 1, (4, 4, 8, 4)).astype(np.float32)  # 4 chunks
        body = {"actions": to_json(acts)}
        done: dict[str, object] = {}
        before = denoiser_calls()
        worker = threading.Thread(target=lambda: done.update(
            r=client.post(f"/v1/groups/{gid}/step", headers=HEADERS, json=body)))
        worker.start()
        deadline = time.monotonic() + 30
        while denoiser_calls() < before + 4 * 8:  # a few denoising steps in
            assert time.monotonic() < deadline and worker.is_alive(), "the step never reached Triton"
            time.sleep(0.005)
        ports = kill(triton)
        worker.join(60)
        r = done["r"]
        assert r.status_code == 503, r.text  # type: ignore[attr-defined]
        assert "Triton server at" in r.json()["error"]["message"]  # type: ignore[attr-defined]
        restart(triton, triton_repo, ports)
        again = client.post(f"/v1/groups/{gid}/step", headers=HEADERS, json=body)
        assert again.status_code == 200, again.text
        assert from_json(again.json()["results"][0]["frames"]).shape == (16, 64, 64, 3)
