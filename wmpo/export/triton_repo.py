"""A Triton model repository generated from a world-model checkpoint (``wmpo export triton``).

Layout, Triton's own convention::

    <repo>/
      wmpo_export.json                   what was exported, from which checkpoint, with which settings
      build_tensorrt_plans.sh            (tensorrt_plan only) the GPU-node build step
      dit_denoiser/config.pbtxt
      dit_denoiser/<version>/model.onnx  (+ model.py for the python variant,
                                          + model.plan once built for tensorrt_plan)
      dit_context/...  ae_encoder/...  ae_decoder/...

Variants (one repository each; the model names are the same so a client does not care):

- ``tensorrt_plan``: for GPU nodes. Each version directory carries ``model.onnx``; the plan is
  GPU- and TensorRT-version-specific, so it is built on the node that serves it by
  ``build_tensorrt_plans.sh`` (trtexec, FP16, one optimization profile per model with min 1 /
  opt the typical batch / max the batch cap, and the same for the frame dimensions), run by a
  Kubernetes init container or Job in the official Triton image before Triton starts. It
  writes ``model.plan`` beside ``model.onnx`` and skips models whose plan is up to date.
  No GPU is available to this project: the script is generated and linted here, never run.
- ``onnxruntime_onnx``: Triton images with the ONNX Runtime backend (GPU or CPU instances).
- ``python``: Triton builds that have only the Python backend (like the ``nvidia-pytriton``
  wheel's): a ``model.py`` (``wmpo.export.triton_python_model``) runs ``model.onnx`` with ONNX
  Runtime, a dynamic batch as one call. Always CPU instances.

Every model's ``config.pbtxt`` has ``max_batch_size`` (the batch is dimension 0 and left out of
``dims``), ``dynamic_batching`` (preferred sizes, queue delay), ``instance_group`` and, in
``parameters``, the checkpoint's SHA-256 (``checkpoint_sha256``, and its first 12 hex digits as
``world_model_sha256``, the project's provenance convention) and the ONNX file's SHA-256.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wmpo.errors import ConfigError
from wmpo.export.graphs import GRAPHS, GraphSpec, TensorSpec, graph_specs
from wmpo.export.onnx_export import MANIFEST, export_onnx, load_world_model, read_manifest

VARIANTS = ("python", "onnxruntime_onnx", "tensorrt_plan")
REPO_MANIFEST = "wmpo_export.json"
TRT_SCRIPT = "build_tensorrt_plans.sh"
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bool": "TYPE_BOOL", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "uint8": "TYPE_UINT8"}


@dataclass
class RepoSettings:
    variant: str = "python"
    version: int = 1
    max_batch: int = 64
    preferred: tuple[int, ...] = (16, 32, 64)
    queue_delay_us: int = 500
    instances: int = 1
    instance_kind: str = "auto"  # auto: GPU for tensorrt_plan and onnxruntime_onnx, CPU for python
    threads: int = 0  # ONNX Runtime intra-op threads per instance (0: its choice)
    opt_batch: int = 16  # TensorRT profile's opt batch
    graphs: tuple[str, ...] = field(default=GRAPHS)

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.version < 1:
            problems.append(f"version {self.version} must be >= 1")
        if self.max_batch < 1:
            problems.append(f"max batch {self.max_batch} must be >= 1")
        if any(not 1 <= p <= self.max_batch for p in self.preferred):
            problems.append(f"preferred batch sizes {list(self.preferred)} must be in [1, {self.max_batch}]")
        if self.queue_delay_us < 0 or self.instances < 1 or self.threads < 0:
            problems.append("queue delay and threads must be >= 0, instances >= 1")
        if self.instance_kind not in ("auto", "cpu", "gpu"):
            problems.append(f"instance kind {self.instance_kind!r} is not auto, cpu or gpu")
        if self.variant == "python" and self.instance_kind == "gpu":
            problems.append("the python variant runs ONNX Runtime on the CPU: instance kind gpu is not supported")
        if self.variant == "tensorrt_plan" and self.instance_kind == "cpu":
            problems.append("TensorRT plans run on GPUs only: instance kind cpu is not supported")
        if not 1 <= self.opt_batch <= self.max_batch:
            problems.append(f"opt batch {self.opt_batch} must be in [1, {self.max_batch}]")
        if set(self.graphs) - set(GRAPHS):
            problems.append(f"unknown graphs {sorted(set(self.graphs) - set(GRAPHS))}")
        if problems:
            raise ConfigError("invalid Triton repository settings: " + "; ".join(problems))

    @property
    def kind(self) -> str:
        if self.instance_kind == "auto":
            return "KIND_CPU" if self.variant == "python" else "KIND_GPU"
        return f"KIND_{self.instance_kind.upper()}"


# ---------------------------------------------------------------------------- config.pbtxt
def _tensor_pbtxt(s: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in s.dims())
    return f'  {{\n    name: "{s.name}"\n    data_type: {TRITON_DTYPES[s.dtype]}\n    dims: [ {dims} ]\n  }}'


def _param(key: str, value: Any) -> str:
    return f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(str(value))} }}\n}}'


def config_pbtxt(spec: GraphSpec, settings: RepoSettings, checkpoint_sha256: str, onnx_sha256: str) -> str:
    """The model's config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    s = settings
    head = {"python": 'backend: "python"', "onnxruntime_onnx": 'platform: "onnxruntime_onnx"',
            "tensorrt_plan": 'platform: "tensorrt_plan"'}[s.variant]
    preferred = ", ".join(str(p) for p in sorted(set(s.preferred)))
    parts = [
        f'name: "{spec.name}"',
        head,
        f"max_batch_size: {s.max_batch}",
        "input [\n" + ",\n".join(_tensor_pbtxt(t) for t in spec.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_pbtxt(t) for t in spec.outputs) + "\n]",
        f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {s.queue_delay_us}\n}}",
        f"instance_group [\n  {{\n    count: {s.instances}\n    kind: {s.kind}\n  }}\n]",
        f"version_policy: {{ specific: {{ versions: [ {s.version} ] }} }}",
        _param("checkpoint_sha256", checkpoint_sha256),
        _param("world_model_sha256", checkpoint_sha256[:12]),
        _param("onnx_sha256", onnx_sha256),
        _param("wmpo_graph", spec.name),
    ]
    if s.variant == "python":
        parts += [_param("intra_op_threads", s.threads), _param("allow_spinning", 0)]
    elif s.variant == "onnxruntime_onnx" and s.threads:
        parts += [_param("intra_op_thread_count", s.threads), _param("inter_op_thread_count", 1)]
    return f"# generated by `wmpo export triton --variant {s.variant}`: {spec.description}\n" + \
        "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- TensorRT build
def _shapes(spec: GraphSpec, which: str) -> str:
    return ",".join(f"{t.name}:" + "x".join(str(d) for d in t.concrete(which)) for t in spec.inputs)


def trtexec_profile_args(spec: GraphSpec) -> list[str]:
    """trtexec's optimization profile for one graph: min 1 / opt the typical sizes / max the caps
    of every dynamic dimension (batch, generated frames, context frames)."""
    return [f"--{which}Shapes=" + _shapes(spec, which) for which in ("min", "opt", "max")]


def trt_script(specs: dict[str, GraphSpec], settings: RepoSettings) -> str:
    body = "\n".join(f'build {name} "$REPO/{name}/{settings.version}" \\\n    '
                     + " \\\n    ".join(trtexec_profile_args(spec)) for name, spec in specs.items())
    return f"""#!/bin/sh
# Build the TensorRT plans of this Triton model repository from its ONNX graphs, on the GPU node
# that serves them (a plan is specific to the GPU model and the TensorRT version). Run it before
# Triton starts, e.g. as a Kubernetes init container in the official Triton image, which carries
# trtexec at /usr/src/tensorrt/bin/trtexec:
#     sh /models/{TRT_SCRIPT} /models
# FP16, one optimization profile per model: min batch 1, opt batch {settings.opt_batch}, max batch
# {settings.max_batch} (Triton's max_batch_size), and min/opt/max for the frame dimensions.
# A plan is rebuilt only when its ONNX file, the GPU or the TensorRT version changed.
# Generated by `wmpo export triton --variant tensorrt_plan`. This project has no GPU: the script
# is generated and checked with `sh -n` here, and has never been run.
set -eu
REPO="${{1:-$(cd "$(dirname "$0")" && pwd)}}"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
[ -x "$TRTEXEC" ] || {{ echo "trtexec not found (set TRTEXEC)" >&2; exit 1; }}
GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
TRT="$("$TRTEXEC" --help 2>&1 | head -n 1 || true)"

build() {{
    name="$1"; dir="$2"; shift 2
    stamp="$(sha256sum "$dir/model.onnx" | cut -d' ' -f1) $GPU $TRT"
    if [ -f "$dir/model.plan" ] && [ "$(cat "$dir/model.plan.stamp" 2>/dev/null)" = "$stamp" ]; then
        echo "$name: plan up to date"; return 0
    fi
    echo "$name: building $dir/model.plan"
    rm -f "$dir/model.plan" "$dir/model.plan.stamp"
    "$TRTEXEC" --onnx="$dir/model.onnx" --saveEngine="$dir/model.plan" --fp16 --skipInference "$@" \\
        > "$dir/trtexec.log" 2>&1 || {{ tail -n 40 "$dir/trtexec.log" >&2; exit 1; }}
    printf '%s' "$stamp" > "$dir/model.plan.stamp"
}}

{body}
echo "all plans built in $REPO"
"""


# ---------------------------------------------------------------------------- the repository
def write_repository(checkpoint: str | Path, repo: str | Path, settings: RepoSettings | None = None,
                     onnx_dir: str | Path | None = None, log=print) -> dict[str, Any]:
    """Write a model repository for ``settings.variant``; the ONNX graphs come from ``onnx_dir``
    (an earlier ``wmpo export onnx`` of the same checkpoint) or are exported now. Existing model
    directories in ``repo`` keep their other versions; this version's files are replaced."""
    s = settings or RepoSettings()
    wm, sha = load_world_model(checkpoint)
    repo = Path(repo)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx_dir is None:
            onnx_dir = tmp
            export_onnx(checkpoint, tmp, graphs=s.graphs, max_batch=s.max_batch, opt_batch=s.opt_batch, log=log)
        manifest = read_manifest(onnx_dir)
        if manifest["checkpoint_sha256"] != sha:
            raise ConfigError(f"{onnx_dir} was exported from checkpoint {manifest['checkpoint_sha256'][:12]}, "
                              f"not {sha[:12]} ({checkpoint})")
        missing = [g for g in s.graphs if g not in manifest["graphs"]]
        if missing:
            raise ConfigError(f"{onnx_dir} has no {', '.join(missing)} graph(s) ({MANIFEST})")
        specs = graph_specs(wm.dit, wm.ae, wm.sampler.context_frames, max_batch=s.max_batch, opt_batch=s.opt_batch)
        specs = {g: specs[g] for g in s.graphs}
        repo.mkdir(parents=True, exist_ok=True)
        models = {}
        for name, spec in specs.items():
            entry = manifest["graphs"][name]
            vdir = repo / name / str(s.version)
            if vdir.exists():
                shutil.rmtree(vdir)
            vdir.mkdir(parents=True)
            shutil.copyfile(Path(onnx_dir) / entry["file"], vdir / "model.onnx")
            if s.variant == "python":
                shutil.copyfile(PYTHON_MODEL, vdir / "model.py")
            (repo / name / "config.pbtxt").write_text(config_pbtxt(spec, s, sha, entry["sha256"]))
            models[name] = {"version": s.version, "onnx_sha256": entry["sha256"]}
    if s.variant == "tensorrt_plan":
        script = repo / TRT_SCRIPT
        script.write_text(trt_script(specs, s))
        script.chmod(0o755)
    summary = {"kind": "wmpo-triton-repository", "variant": s.variant, "checkpoint": str(checkpoint),
               "checkpoint_sha256": sha, "settings": {**asdict(s), "instance_kind": s.kind},
               "models": models, "export": {k: v for k, v in manifest.items() if k != "graphs"}}
    (repo / REPO_MANIFEST).write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {s.variant} repository {repo} (version {s.version}): {', '.join(models)}")
    return summary


def repository_tree(repo: str | Path) -> str:
    """The repository's files as an indented tree (for reports and the CLI)."""
    repo = Path(repo)
    lines = [f"{repo}/"]

    def walk(d: Path, depth: int) -> None:
        for p in sorted(d.iterdir()):
            size = "" if p.is_dir() else f"  ({p.stat().st_size / 1e3:.0f} kB)"
            lines.append("  " * depth + p.name + ("/" if p.is_dir() else "") + size)
            if p.is_dir():
                walk(p, depth + 1)

    walk(repo, 1)
    return "\n".join(lines)
