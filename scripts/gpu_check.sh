#!/usr/bin/env bash
# The GPU check of the TensorRT path (issue 16, item 7), for a machine with an NVIDIA GPU.
#
# NEVER RUN AS A WHOLE. This project has no machine with an NVIDIA GPU: the script is
# syntax-checked (`bash -n`) and its refusal without nvidia-smi tested
# (tests/scripts/test_gpu_check.py); the Python of steps 5-7 (parity, benchmark, summary) was run
# once by hand against the nvidia-pytriton wheel's CPU tritonserver with a Python-backend
# repository. Steps 3-4 (TensorRT, the official containers) have never run: the first run on a
# GPU machine is the check itself, and may need small fixes.
#
# Needs: an NVIDIA GPU with its driver (`nvidia-smi`), a checkout after `make setup`, and either
# Docker with the NVIDIA container toolkit (`docker run --gpus all` works) or local `trtexec`
# and `tritonserver` binaries built with TensorRT.
#
#     scripts/gpu_check.sh [OUT_DIR]            (default: outputs/gpu-check)
#
# 1. `wmpo export onnx` of the bundled checkpoint (ONNX Runtime parity vs torch, fp32 and fp16)
# 2. `wmpo export triton --variant tensorrt_plan` (max batch 64, TensorRT profile opt 16)
# 3. the TensorRT engines: the repository's build_tensorrt_plans.sh (trtexec, FP16, profiles
#    min 1 / opt 16 / max 64), with TRTEXEC (or trtexec on PATH) or in TENSORRT_IMAGE
# 4. Triton on those plans: TRITONSERVER (a local binary) or TRITON_IMAGE (the official one)
# 5. parity: /v1/imagine frames through the simulator's triton backend vs its torch backend,
#    the same requests and seeds (bars for a first run below, not measured yet)
# 6. speed: scripts/bench_denoiser.py against that Triton (batch 1, 16 and 64)
# 7. a summary on stdout and in OUT_DIR/summary.txt
#
# Environment (defaults): PY (.venv/bin/python), TRITON_IMAGE
# (nvcr.io/nvidia/tritonserver:24.10-py3), TENSORRT_IMAGE (nvcr.io/nvidia/tensorrt of the same
# release: its TensorRT must be Triton's), TRITONSERVER, TRTEXEC (unset: the containers),
# HTTP_PORT / GRPC_PORT / METRICS_PORT (18000 / 18001 / 18002), MAX_BATCH (64), OPT_BATCH (16),
# PARITY_MAX_ABS (24) and PARITY_MEAN_ABS (1.5): uint8 levels allowed between the FP16 engines
# and fp32 torch, REPEATS (30).
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found. This check needs a machine with an NVIDIA GPU and its" >&2
    echo "driver; the machines of this project have none, so it has never been run." >&2
    exit 2
fi
if ! GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)" \
        || [ -z "$GPU" ]; then
    echo "gpu_check: nvidia-smi found no usable GPU: $GPU" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$(mkdir -p "${1:-outputs/gpu-check}" && cd "${1:-outputs/gpu-check}" && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
WMPO="$(dirname "$PY")/wmpo"
TRITON_IMAGE="${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}"
TENSORRT_IMAGE="${TENSORRT_IMAGE:-nvcr.io/nvidia/tensorrt:${TRITON_IMAGE##*:}}"
HTTP_PORT="${HTTP_PORT:-18000}" GRPC_PORT="${GRPC_PORT:-18001}" METRICS_PORT="${METRICS_PORT:-18002}"
MAX_BATCH="${MAX_BATCH:-64}" OPT_BATCH="${OPT_BATCH:-16}" REPEATS="${REPEATS:-30}"
PARITY_MAX_ABS="${PARITY_MAX_ABS:-24}" PARITY_MEAN_ABS="${PARITY_MEAN_ABS:-1.5}"
CHECKPOINT="$ROOT/checkpoints/world-model"
REPO="$OUT/repo"
CONTAINER="wmpo-gpu-check-triton-$$"
TRITON_PID=""

[ -x "$PY" ] || { echo "gpu_check: $PY not found: run make setup first (or set PY)" >&2; exit 2; }
if [ -z "${TRITONSERVER:-}" ] || [ -z "${TRTEXEC:-$(command -v trtexec || true)}" ]; then
    command -v docker >/dev/null 2>&1 || {
        echo "gpu_check: neither local binaries (TRITONSERVER, TRTEXEC) nor docker" >&2; exit 2; }
fi

step() { printf '\n== %s\n' "$*"; }
cleanup() {
    if [ -n "$TRITON_PID" ]; then kill "$TRITON_PID" 2>/dev/null || true; wait "$TRITON_PID" 2>/dev/null || true; fi
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "GPU: $GPU"

step "1. ONNX export of $CHECKPOINT (parity vs torch with ONNX Runtime)"
"$WMPO" export onnx --checkpoint "$CHECKPOINT" --out "$OUT/onnx" 2>&1 | tee "$OUT/export_onnx.log"

step "2. tensorrt_plan repository in $REPO (max batch $MAX_BATCH, opt $OPT_BATCH)"
"$WMPO" export triton --checkpoint "$CHECKPOINT" --onnx "$OUT/onnx" --repo "$REPO" \
    --variant tensorrt_plan --max-batch "$MAX_BATCH" --opt-batch "$OPT_BATCH" 2>&1 | tee "$OUT/export_triton.log"

step "3. TensorRT engines (trtexec, FP16, profiles min 1 / opt $OPT_BATCH / max $MAX_BATCH)"
build_started=$(date +%s)
LOCAL_TRTEXEC="${TRTEXEC:-$(command -v trtexec || true)}"
if [ -n "$LOCAL_TRTEXEC" ]; then
    TRTEXEC="$LOCAL_TRTEXEC" sh "$REPO/build_tensorrt_plans.sh" "$REPO" 2>&1 | tee "$OUT/build.log"
else
    docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$REPO:/models" "$TENSORRT_IMAGE" \
        sh /models/build_tensorrt_plans.sh /models 2>&1 | tee "$OUT/build.log"
fi
build_seconds=$(( $(date +%s) - build_started ))

step "4. Triton on the plans (HTTP $HTTP_PORT, gRPC $GRPC_PORT, metrics $METRICS_PORT)"
if [ -n "${TRITONSERVER:-}" ]; then
    "$TRITONSERVER" --model-repository="$REPO" --http-port="$HTTP_PORT" --grpc-port="$GRPC_PORT" \
        --metrics-port="$METRICS_PORT" --strict-readiness=true > "$OUT/tritonserver.log" 2>&1 &
    TRITON_PID=$!
else
    # --ipc=host: the simulator's keys/values can go through shared memory (WMPO_TRITON_SHM=auto).
    docker run -d --name "$CONTAINER" --gpus all --ipc=host \
        -p "127.0.0.1:$HTTP_PORT:8000" -p "127.0.0.1:$GRPC_PORT:8001" -p "127.0.0.1:$METRICS_PORT:8002" \
        -v "$REPO:/models:ro" "$TRITON_IMAGE" \
        tritonserver --model-repository=/models --strict-readiness=true >/dev/null
fi
"$PY" - "$HTTP_PORT" <<'EOF'
import sys, time, urllib.request

url = f"http://127.0.0.1:{sys.argv[1]}/v2/health/ready"
deadline = time.monotonic() + 300
while True:
    try:
        if urllib.request.urlopen(url, timeout=2).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"Triton not ready at {url} after 300 s (see its log)")
    time.sleep(2)
print("Triton ready:", urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2", timeout=2).read().decode())
EOF
if [ -z "${TRITONSERVER:-}" ]; then docker logs "$CONTAINER" > "$OUT/tritonserver.log" 2>&1 || true; fi

step "5. Parity: the simulator's triton backend vs torch, same requests and seeds"
"$PY" - "$CHECKPOINT" "127.0.0.1:$GRPC_PORT" "$OUT/parity.json" "$PARITY_MAX_ABS" "$PARITY_MEAN_ABS" <<'EOF' 2>&1 | tee "$OUT/parity.log"
import json, sys

import numpy as np
from fastapi.testclient import TestClient
from wmpo_client.codec import from_json, to_json

from services.simulator.runtime import SimulatorRuntime
from services.simulator.server import build_app, world_model_from_settings
from services.simulator.settings import SimulatorSettings

checkpoint, url, out, max_abs, mean_abs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
KEY = "gpu-check-key-0123456789"
SEEDS = (0, 1, 2)


def frames(backend: str) -> tuple[np.ndarray, dict]:
    settings = SimulatorSettings(api_keys=KEY, checkpoint=checkpoint, backend=backend,
                                 triton_url=url if backend == "triton" else None)
    model = world_model_from_settings(settings)
    size = model.image_size
    out, provenance = [], {}
    with TestClient(build_app(SimulatorRuntime(model, settings), settings, serve_grpc=False)) as client:
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            body = {"start_frames": to_json(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)),
                    "candidates": to_json(rng.uniform(-1, 1, (4, 3, 8, 4)).astype(np.float32)), "seed": seed}
            r = client.post("/v1/imagine", headers={"x-api-key": KEY}, json=body)
            assert r.status_code == 200, r.text
            out.append(np.stack([from_json(c["frames"]) for c in r.json()["candidates"]]))
            provenance = r.json()["provenance"]
    return np.stack(out), provenance


ref, _ = frames("torch")
got, provenance = frames("triton")
diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
result = {"shape": list(got.shape), "max_abs": int(diff.max()), "mean_abs": float(diff.mean()),
          "p99_abs": float(np.percentile(diff, 99)), "fraction_differing": float((diff > 0).mean()),
          "allowed_max_abs": max_abs, "allowed_mean_abs": mean_abs, "provenance": provenance}
result["pass"] = result["max_abs"] <= max_abs and result["mean_abs"] <= mean_abs
json.dump(result, open(out, "w"), indent=1)
print(f"frames {got.shape}: max abs {result['max_abs']}, mean abs {result['mean_abs']:.3f}, "
      f"p99 {result['p99_abs']:.1f}, {100 * result['fraction_differing']:.2f}% of values differ "
      f"(allowed: max {max_abs}, mean {mean_abs}) -> {'PASS' if result['pass'] else 'FAIL'}")
print(f"provenance: backend {provenance.get('backend')}, models {provenance.get('triton_models')}, "
      f"shared memory {provenance.get('triton_shared_memory')}")
EOF

step "6. Speed: scripts/bench_denoiser.py against Triton (batch 1, 16, $MAX_BATCH)"
"$PY" scripts/bench_denoiser.py --onnx "$OUT/onnx" --repeats "$REPEATS" --batches "1,16,$MAX_BATCH" \
    --triton-grpc "127.0.0.1:$GRPC_PORT" --triton-http "127.0.0.1:$HTTP_PORT" \
    --out "$OUT/bench_denoiser.json" 2>&1 | tee "$OUT/bench_denoiser.log"

step "Summary"
"$PY" - "$OUT" "$GPU" "$build_seconds" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out, gpu, build_s = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
parity = json.loads((out / "parity.json").read_text())
bench = json.loads((out / "bench_denoiser.json").read_text())
print(f"GPU: {gpu}")
print(f"TensorRT engines built in {build_s} s (FP16; logs: {out}/repo/*/1/trtexec.log)")
print(f"parity vs torch: max abs {parity['max_abs']}, mean abs {parity['mean_abs']:.3f} uint8 levels "
      f"-> {'PASS' if parity['pass'] else 'FAIL'}")
for key, r in bench.items():
    if key.startswith("batch"):
        rows = ", ".join(f"{name} {v['median_ms']:.2f} ms (err {v['max_abs_err_vs_torch']:.1e})"
                         for name, v in r["runtimes"].items())
        print(f"denoiser batch {r['shape']['batch']}: {rows}")
print(f"everything in {out}")
sys.exit(0 if parity["pass"] else 1)
EOF
