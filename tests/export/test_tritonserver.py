"""A real Triton Inference Server (the nvidia-pytriton wheel's tritonserver, Python backend) on
loopback, serving the generated Python-backend repository; reached with tritonclient over gRPC
and HTTP. Skipped only when the wheel is missing (`make setup` installs it)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from wmpo.export.graphs import (
    CONTEXT,
    DECODER,
    DENOISER,
    ENCODER,
    GRAPHS,
    example_inputs,
    graph_module,
    graph_specs,
)
from wmpo.export.runtimes import TritonDiT, infer
from wmpo.export.tritonserver import (
    TritonServer,
    TritonStartError,
    TritonUnavailable,
    find_tritonserver,
)
from wmpo.sampling.rollout import start_rollout, step_rollouts

try:
    INSTALL = find_tritonserver()
    SKIP = ""
except TritonUnavailable as e:
    INSTALL, SKIP = None, str(e)

pytestmark = pytest.mark.skipif(INSTALL is None, reason=f"no tritonserver: {SKIP}")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

# Triton's Python backend runs the same ONNX graph with the same ONNX Runtime build as in
# process; against torch the error is ONNX Runtime's (about 1e-5 on values up to 9).
TOL = 1e-4


@pytest.fixture(scope="module")
def server(python_repo):
    with TritonServer(python_repo, install=INSTALL) as s:
        s.wait_ready(GRAPHS, timeout=90)
        yield s


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, server):
    module = grpcclient if request.param == "grpc" else httpclient
    url = server.grpc_url if request.param == "grpc" else server.http_url
    c = module.InferenceServerClient(url)
    yield module, c
    c.close()


def torch_ref(world_model, name, inputs):
    with torch.no_grad():
        return graph_module(name, world_model.dit, world_model.ae)(**inputs).numpy()


def feed(inputs):
    return {k: v.numpy() for k, v in inputs.items()}


def test_server_and_models_report_ready(server, client):
    module, c = client
    assert c.is_server_live() and c.is_server_ready()
    for name in GRAPHS:
        assert c.is_model_ready(name) and c.is_model_ready(name, "1")
    assert not c.is_model_ready("no_such_model")
    assert server.is_model_ready(DENOISER) and server.is_ready()
    cfg = c.get_model_config(DENOISER, **({"as_json": True} if module is grpcclient else {}))
    cfg = cfg.get("config", cfg)  # gRPC wraps it in a ModelConfigResponse
    assert int(cfg["max_batch_size"]) == 32
    assert len(cfg["parameters"]["checkpoint_sha256"]["string_value"]) == 64


@pytest.mark.parametrize("batch", [1, 16])
def test_denoiser_through_triton_matches_torch(world_model, client, dims, batch):
    module, c = client
    spec = graph_specs(world_model.dit, world_model.ae)[DENOISER]
    inputs = example_inputs(spec, world_model.dit, world_model.ae, seed=batch, batch=batch)
    got = infer(module, c, DENOISER, feed(inputs), ["velocity"])[0]
    ref = torch_ref(world_model, DENOISER, inputs)
    assert got.shape == ref.shape == (batch, 4, dims.C, dims.h, dims.h)
    assert np.abs(got - ref).max() < TOL


def test_autoencoder_and_context_through_triton(world_model, client):
    module, c = client
    specs = graph_specs(world_model.dit, world_model.ae)
    for name, out, tol in ((ENCODER, "latents", TOL), (CONTEXT, "kv", TOL), (DECODER, "frames", 1)):
        inputs = example_inputs(specs[name], world_model.dit, world_model.ae, batch=3)
        got = infer(module, c, name, feed(inputs), [out])[0]
        ref = torch_ref(world_model, name, inputs)
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert np.abs(got.astype(np.float64) - ref).max() <= tol, name


def test_concurrent_requests_are_batched_and_routed_back(world_model, server):
    """Requests arriving together may be run as one dynamic batch (the Python model concatenates
    them); each must still get its own rows back."""
    spec = graph_specs(world_model.dit, world_model.ae)[DENOISER]
    sizes = [1, 2, 3, 4, 1, 2]
    inputs = [example_inputs(spec, world_model.dit, world_model.ae, seed=100 + i, batch=b)
              for i, b in enumerate(sizes)]
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(sizes))

    def call(i):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        barrier.wait()
        results[i] = infer(grpcclient, c, DENOISER, feed(inputs[i]), ["velocity"])[0]
        c.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, b in enumerate(sizes):
        assert results[i].shape[0] == b
        assert np.abs(results[i] - torch_ref(world_model, DENOISER, inputs[i])).max() < TOL
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(DENOISER, as_json=True)
    s = stats["model_stats"][0]
    assert int(s["inference_count"]) >= sum(sizes)
    assert int(s["execution_count"]) <= int(s["inference_count"])


def test_bad_request_is_an_error_not_a_crash(client, server, dims):
    module, c = client
    z = np.zeros((1, 4, dims.C, dims.h, dims.h), np.float32)
    with pytest.raises(Exception, match="(?i)kv|input"):
        infer(module, c, DENOISER, {"z": z}, ["velocity"])
    assert c.is_model_ready(DENOISER)


@pytest.mark.parametrize(("protocol", "shared_memory"), [("grpc", False), ("http", False), ("grpc", True)])
def test_sampling_loop_through_triton_matches_torch(world_model, server, dims, protocol, shared_memory):
    """The sampler, unchanged, with each denoising step one Triton call over the batch (the
    cache sent with every call, or written once per step into registered shared memory)."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    remote = TritonDiT(world_model.dit.config, url, protocol=protocol, timeout_s=30, shared_memory=shared_memory)
    sampler = replace(world_model.sampler, use_cache=True)
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(2, dims.C, dims.h, dims.h, generator=g)
    actions = torch.rand(2, 8, 4, generator=g) * 2 - 1
    results = []
    for model in (world_model.dit, remote):
        rollouts = [start_rollout(anchors[i], seed=i) for i in range(2)]
        results.append(torch.stack([step_rollouts(model, rollouts, actions, sampler) for _ in range(2)]))
    if shared_memory:
        status = remote.client.get_system_shared_memory_status(as_json=True)
        assert remote.kv_region.name in json.dumps(status)
    remote.close()
    assert (results[0] - results[1]).abs().max().item() < 1e-3


def test_launcher_reports_a_broken_repository(tmp_path):
    bad = tmp_path / "repo" / "broken"
    (bad / "1").mkdir(parents=True)
    (bad / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n')
    (bad / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    s = TritonServer(tmp_path / "repo", install=INSTALL).start()
    with pytest.raises(TritonStartError, match="cannot load|failed to load"):
        s.wait_ready(["broken"], timeout=60)
    s.stop()
    assert s.process is None
