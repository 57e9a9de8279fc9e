"""Export a world-model checkpoint to ONNX and check the graphs against torch with ONNX Runtime.

``export_onnx`` writes ``dit_denoiser.onnx``, ``dit_context.onnx``, ``ae_encoder.onnx`` and
``ae_decoder.onnx`` plus ``export.json`` (the checkpoint's SHA-256, each graph's inputs and
outputs with their dynamic dimensions, each file's SHA-256, the parity numbers). The exporter
is torch's dynamo-based ``torch.onnx.export`` (``torch.export`` then onnxscript), with the
batch, the number of generated frames and the number of context frames as symbolic
dimensions. See the package docstring for why the graphs are split this way.

Parity: ``parity_report`` runs each graph in torch and in ONNX Runtime (CPU, float32) on
realistic inputs at several batch sizes, and the same graphs converted to float16 (weights
and activations, float32 inputs/outputs kept, as a TensorRT FP16 engine computes), and
reports the max abs error against torch float32 and the largest reference value.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.errors import CheckpointError, ConfigError
from wmpo.export.graphs import DECODER, GRAPHS, GraphSpec, example_inputs, graph_module, graph_specs
from wmpo.utils.checkpoint import WEIGHTS, file_sha256

OPSET = 18
MANIFEST = "export.json"


def load_world_model(checkpoint: str | Path):
    from wmpo.sampling.world_model import TorchWorldModel

    wm = TorchWorldModel.load(checkpoint)
    return wm, file_sha256(Path(checkpoint) / WEIGHTS)


def _quiet_exporter_logs() -> None:
    # The exporter logs one warning per torchvision op it cannot register (not installed here).
    for name in ("torch.onnx._internal.exporter._registration", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _export_one(module: torch.nn.Module, spec: GraphSpec, inputs: dict[str, torch.Tensor], path: Path,
                opset: int) -> None:
    from torch.export import Dim

    _quiet_exporter_logs()
    # Generous export-time ranges: the graph is symbolic, engines narrow them with profiles.
    dims = {name: Dim(name, min=1, max=max(d.max, 64) if name != "batch" else 4096)
            for name, d in spec.dims.items()}
    dynamic_shapes = {s.name: {i: dims[d.name] for i, d in enumerate(s.shape) if not isinstance(d, int)}
                      for s in spec.inputs}
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(inputs.values()), input_names=[s.name for s in spec.inputs],
                                    output_names=[s.name for s in spec.outputs], dynamic_shapes=dynamic_shapes,
                                    dynamo=True, opset_version=opset, optimize=True, external_data=False)
    if program is None:
        raise RuntimeError(f"torch.onnx.export returned no program for {spec.name}:\n{out.getvalue()}")
    program.save(str(path), external_data=False)


def export_onnx(checkpoint: str | Path, out: str | Path, graphs: tuple[str, ...] = GRAPHS, opset: int = OPSET,
                max_batch: int = 64, opt_batch: int = 16, log=print) -> dict[str, Any]:
    """Export ``graphs`` of a world-model checkpoint into ``out``; returns the manifest."""
    unknown = set(graphs) - set(GRAPHS)
    if unknown:
        raise ConfigError(f"unknown graph(s) {sorted(unknown)}; graphs: {', '.join(GRAPHS)}")
    if not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch})")
    wm, sha = load_world_model(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(wm.dit, wm.ae, wm.sampler.context_frames, max_batch=max_batch, opt_batch=opt_batch)
    manifest: dict[str, Any] = {
        "kind": "wmpo-onnx-export", "checkpoint": str(checkpoint), "checkpoint_sha256": sha,
        "opset": opset, "torch": torch.__version__, "sampler": wm.provenance()["sampler"],
        "dit": wm.dit.config.to_dict(), "autoencoder": wm.ae.config.to_dict(), "graphs": {},
    }
    for name in graphs:
        t0 = time.perf_counter()
        spec = specs[name]
        path = out / f"{name}.onnx"
        # Export at batch 2 (not 1, which torch.export would specialize) and small sizes.
        inputs = example_inputs(spec, wm.dit, wm.ae, batch=2, frames=2, ctx_frames=2)
        _export_one(graph_module(name, wm.dit, wm.ae), spec, inputs, path, opset)
        manifest["graphs"][name] = {"file": path.name, "sha256": file_sha256(path),
                                    "description": spec.description, **spec_json(spec)}
        log(f"exported {name} -> {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def spec_json(spec: GraphSpec) -> dict[str, Any]:
    def tensor(s):
        return {"name": s.name, "dtype": s.dtype,
                "shape": [d.name if not isinstance(d, int) else d for d in s.shape]}

    return {"inputs": [tensor(s) for s in spec.inputs], "outputs": [tensor(s) for s in spec.outputs],
            "dims": {n: {"min": d.min, "opt": d.opt, "max": d.max} for n, d in spec.dims.items()}}


def read_manifest(onnx_dir: str | Path) -> dict[str, Any]:
    path = Path(onnx_dir) / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{onnx_dir} has no {MANIFEST}: export it with `wmpo export onnx` first")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- ONNX Runtime
def ort_session(path: str | Path | bytes, threads: int = 0, spinning: bool = False):
    """An ONNX Runtime CPU session. Intra-op spinning is off by default: spinning threads keep
    a core busy between calls and starve the rest of the process (the serving loop, the
    HTTP/gRPC handlers) on a small machine. threads=0 lets ONNX Runtime choose."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def to_float16(path: str | Path) -> bytes:
    """The graph with float16 weights and activations, float32 inputs and outputs kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    return model.SerializeToString()


def run_ort(session, inputs: dict[str, torch.Tensor | np.ndarray]) -> list[np.ndarray]:
    feed = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return session.run(None, feed)


def parity_report(checkpoint: str | Path, onnx_dir: str | Path, batches: tuple[int, ...] = (1, 16),
                  fp16: bool = True, graphs: tuple[str, ...] | None = None, seed: int = 0) -> dict[str, Any]:
    """{graph: {"fp32": {batch: err}, "fp16": {...}, "torch_fp16": {...}, "ref_max": x, ...}}: max
    abs errors against torch float32 on the same inputs, at the opt sizes of the other
    dimensions: ``fp32`` ONNX Runtime float32, ``fp16`` ONNX Runtime on the float16 graph (on the
    CPU, ONNX Runtime runs the ops it has no float16 kernel for in float32, so this is a lower
    bound for a full-FP16 engine), ``torch_fp16`` torch's float16 autocast (matmuls and convs in
    float16, norms and softmax in float32, close to what TensorRT FP16 does). For the decoder,
    whose output is uint8 frames, errors are in pixel levels and ``mismatch`` gives the fraction
    of pixel values that differ."""
    wm, _ = load_world_model(checkpoint)
    manifest = read_manifest(onnx_dir)
    specs = graph_specs(wm.dit, wm.ae, wm.sampler.context_frames)
    report: dict[str, Any] = {}
    for name in graphs or tuple(manifest["graphs"]):
        path = Path(onnx_dir) / manifest["graphs"][name]["file"]
        sessions = {"fp32": ort_session(path)}
        if fp16:
            sessions["fp16"] = ort_session(to_float16(path))
        module = graph_module(name, wm.dit, wm.ae)
        entry: dict[str, Any] = {"ref_max": 0.0, "unit": "pixel levels" if name == DECODER else "abs"}
        for b in batches:
            inputs = example_inputs(specs[name], wm.dit, wm.ae, seed=seed + b, batch=b)
            with torch.no_grad():
                ref = module(**inputs).numpy()
                outs = {kind: run_ort(sess, inputs)[0] for kind, sess in sessions.items()}
                if fp16:
                    with torch.autocast("cpu", dtype=torch.float16):
                        outs["torch_fp16"] = module(**inputs).float().numpy()
            entry["ref_max"] = max(entry["ref_max"], float(np.abs(ref.astype(np.float64)).max()))
            for kind, got in outs.items():
                if got.shape != ref.shape:
                    raise AssertionError(f"{name} {kind}: shape {got.shape} != torch {ref.shape}")
                diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
                entry.setdefault(kind, {})[b] = float(diff.max())
                if ref.dtype == np.uint8:
                    entry.setdefault("mismatch", {}).setdefault(kind, {})[b] = float((diff > 0).mean())
        report[name] = entry
    return report


def format_parity(report: dict[str, Any]) -> str:
    kinds = ("fp32", "fp16", "torch_fp16")
    lines = [f"{'graph':<13} {'batch':>5} " + " ".join(f"{k:>11}" for k in kinds) + f" {'ref max':>8}"
             + "   max abs error against torch float32"]
    for name, e in report.items():
        for b in e["fp32"]:
            cells = [e.get(k, {}).get(b) for k in kinds]
            line = (f"{name:<13} {b:>5} " + " ".join(f"{'-' if v is None else f'{v:.3g}':>11}" for v in cells)
                    + f" {e['ref_max']:>8.3g}")
            if "mismatch" in e:
                mm = ", ".join(f"{k} {e['mismatch'][k][b]:.2%}" for k in kinds if k in e["mismatch"])
                line += f"   uint8 pixel levels; values that differ: {mm}"
            lines.append(line)
    return "\n".join(lines)
