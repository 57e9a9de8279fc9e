"""ONNX export of the bundled world model: the graphs, their manifest, and parity with torch."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.export.conftest import CHECKPOINT
from wmpo.cli import main
from wmpo.export.graphs import (
    CONTEXT,
    DECODER,
    DENOISER,
    ENCODER,
    GRAPHS,
    DenoiserGraph,
    example_inputs,
    graph_module,
    graph_specs,
    pack_cache,
    unpack_cache,
)
from wmpo.export.onnx_export import MANIFEST, ort_session, parity_report, run_ort
from wmpo.export.runtimes import OrtDiT
from wmpo.sampling.rollout import start_rollout, step_rollouts
from wmpo.utils.checkpoint import file_sha256

# fp32 ONNX Runtime vs torch: observed about 1e-5 on velocities up to 9 (different kernels and
# summation order); 1e-4 leaves room for other CPUs' instruction sets.
FP32_TOL = 1e-4


def test_packed_cache_is_the_cache(world_model):
    dit = world_model.dit
    spec = graph_specs(dit, world_model.ae)[DENOISER]
    ctx = example_inputs(graph_specs(dit, world_model.ae)[CONTEXT], dit, world_model.ae, batch=3, ctx_frames=4)
    with torch.no_grad():
        cache = dit.build_cache(**ctx)
        kv = pack_cache(cache)
        assert kv.shape == (3, 2 * dit.config.depth, dit.config.heads, 4, dit.config.tokens_per_frame,
                            dit.config.dim // dit.config.heads)
        back = unpack_cache(kv)
        assert back.frames == 4
        for a, b in zip(cache.keys + cache.values, back.keys + back.values, strict=True):
            assert torch.equal(a, b)
        new = example_inputs(spec, dit, world_model.ae, batch=3, frames=4, ctx_frames=4)
        new.pop("kv")
        want = dit.forward_cached(**new, cache=cache)
        got = DenoiserGraph(dit)(**new, kv=kv)
    assert torch.equal(want, got)  # the wrapper is the model's own cached call, bit for bit


def test_manifest_records_checkpoint_graphs_and_dims(onnx_dir, dims):
    m = json.loads((onnx_dir / MANIFEST).read_text())
    assert m["checkpoint_sha256"] == file_sha256(CHECKPOINT / "model.safetensors")
    assert set(m["graphs"]) == set(GRAPHS)
    for name, g in m["graphs"].items():
        assert g["sha256"] == file_sha256(onnx_dir / g["file"]), name
        assert all(t["shape"][0] == "batch" for t in g["inputs"] + g["outputs"]), name
    den = m["graphs"][DENOISER]
    assert [t["name"] for t in den["inputs"]] == ["z", "t", "actions", "has_action", "positions", "kv"]
    assert den["inputs"][-1]["shape"] == ["batch", dims.D2, dims.H, "ctx_frames", dims.N, dims.hd]
    assert den["dims"]["batch"] == {"min": 1, "opt": 16, "max": 64}
    assert den["dims"]["frames"]["max"] == dims.new_max  # temporal positions - anchor - recent frames


def test_onnx_inputs_have_symbolic_batch_and_frames(onnx_dir):
    sess = ort_session(onnx_dir / f"{DENOISER}.onnx")
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["z"][:2] == ["batch", "frames"]
    assert shapes["kv"][0] == "batch" and shapes["kv"][3] == "ctx_frames"
    assert [o.name for o in sess.get_outputs()] == ["velocity"]


def test_fp32_parity_all_graphs(onnx_dir):
    report = parity_report(CHECKPOINT, onnx_dir, batches=(1, 16), fp16=False)
    for name in (DENOISER, CONTEXT, ENCODER):
        for b, err in report[name]["fp32"].items():
            assert err < FP32_TOL, (name, b, err, report[name]["ref_max"])
    assert report[DENOISER]["ref_max"] > 1.0  # a real signal, not zeros
    # uint8 frames: rounding can flip a value by one level where torch and ONNX Runtime differ
    # by 1e-6 around a .5 boundary; never more.
    for b in (1, 16):
        assert report[DECODER]["fp32"][b] <= 1.0
        assert report[DECODER]["mismatch"]["fp32"][b] < 1e-3


def test_fp16_errors_are_small_against_the_signal(onnx_dir):
    report = parity_report(CHECKPOINT, onnx_dir, batches=(4,), graphs=(DENOISER,))
    e = report[DENOISER]
    assert e["fp32"][4] < FP32_TOL
    # observed 0.007-0.02 on values up to 9; an FP16 engine would be in this range
    assert e["fp16"][4] < 0.1 and e["torch_fp16"][4] < 0.1


@pytest.mark.parametrize(("ctx_frames", "frames", "batch"), [(1, 1, 1), (2, 4, 2), (5, 4, 5), (5, 11, 2)])
def test_denoiser_dynamic_frame_counts(world_model, onnx_dir, dims, ctx_frames, frames, batch):
    spec = graph_specs(world_model.dit, world_model.ae)[DENOISER]
    sess = ort_session(onnx_dir / f"{DENOISER}.onnx")
    inputs = example_inputs(spec, world_model.dit, world_model.ae, seed=ctx_frames, batch=batch,
                            frames=frames, ctx_frames=ctx_frames)
    with torch.no_grad():
        ref = graph_module(DENOISER, world_model.dit, world_model.ae)(**inputs).numpy()
    got = run_ort(sess, inputs)[0]
    assert got.shape == (batch, frames, dims.C, dims.h, dims.h)
    assert np.abs(got - ref).max() < FP32_TOL


def test_sampling_loop_with_onnx_runtime_matches_torch(world_model, onnx_dir, dims):
    """The sampler, unchanged, over the exported graphs: same seeds, same latents."""
    sampler = replace(world_model.sampler, use_cache=True)
    ort_dit = OrtDiT(world_model.dit.config, onnx_dir)
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(3, dims.C, dims.h, dims.h, generator=g)
    actions = torch.rand(3, 8, 4, generator=g) * 2 - 1
    results = []
    for model in (world_model.dit, ort_dit):
        rollouts = [start_rollout(anchors[i], seed=10 + i) for i in range(3)]
        chunks = [step_rollouts(model, rollouts, actions, sampler) for _ in range(2)]  # context grows
        results.append(torch.stack(chunks))
    assert results[0].shape == (2, 3, 4, dims.C, dims.h, dims.h)
    err = (results[0] - results[1]).abs().max().item()
    assert err < 1e-3, err  # 2 AR steps x 8 Euler steps of 1e-5-level differences


def test_cli_export_onnx_subset_with_parity(tmp_path, capsys):
    assert main(["export", "onnx", "--out", str(tmp_path), "--graphs", "ae_decoder", "--no-fp16"]) == 0
    out = capsys.readouterr().out
    assert "ae_decoder" in out and "fp32" in out
    m = json.loads((tmp_path / MANIFEST).read_text())
    assert list(m["graphs"]) == ["ae_decoder"]
    assert m["parity"]["ae_decoder"]["fp32"]["16"] <= 1.0


def test_cli_rejects_unknown_graph(tmp_path, capsys):
    assert main(["export", "onnx", "--out", str(tmp_path), "--graphs", "vae"]) == 2
    assert "unknown graph" in capsys.readouterr().err
