"""One cached denoiser call (``forward_cached``: the generated frames over the context's
keys/values), batch 1 and 16, side by side in one run: torch eager in process, ONNX Runtime in
process (intra-op spinning off), and the same ONNX graph behind a real Triton server (the
nvidia-pytriton wheel's tritonserver, Python backend running ONNX Runtime) over gRPC and HTTP
on loopback. Medians over interleaved repeats, the machine's measured float32 matmul peak
(before and after), and each runtime's fraction of it.

    python scripts/bench_denoiser.py [--checkpoint checkpoints/world-model] [--repeats 30]
        [--onnx DIR] [--out outputs/bench/denoiser.json]
        [--triton-grpc HOST:PORT [--triton-http HOST:PORT]]

With --triton-grpc the Triton rows are a running server's `dit_denoiser` (e.g. the TensorRT
plans of scripts/gpu_check.sh) instead of the wheel's tritonserver started here; the hop columns
are then left out (that server runs other kernels than in-process ONNX Runtime).

The Triton hop (Triton minus in-process ONNX Runtime, the same graph and kernels) is the cost of
serialization, the socket and the server's scheduling per denoising step; the kv cache input
is 0.6 MB per rollout, so most of it grows with the batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wmpo.export.graphs import CONTEXT, DENOISER, example_inputs, graph_module, graph_specs  # noqa: E402
from wmpo.export.onnx_export import export_onnx, load_world_model, ort_session, read_manifest  # noqa: E402
from wmpo.export.runtimes import TritonDiT, infer  # noqa: E402
from wmpo.export.triton_repo import RepoSettings, write_repository  # noqa: E402
from wmpo.export.tritonserver import TritonServer  # noqa: E402


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """Measured float32 matmul throughput of this machine in FLOP/s (median); the same
    measurement as scripts/bench_world_model.py."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def denoiser_flops(config, batch: int, frames_ctx: int, frames_gen: int) -> float:
    """Matmul FLOPs of one cached denoiser call (linear layers + attention), counted as in
    scripts/bench_world_model.py."""
    c = config
    n = c.tokens_per_frame
    lq, lk = frames_gen * n, (frames_ctx + frames_gen) * n
    per_block = 2 * lq * (3 * c.dim * c.dim + c.dim * c.dim + 2 * c.dim * int(c.dim * c.mlp_ratio))
    per_block += 2 * 2 * lq * lk * c.dim  # QK^T and AV
    return batch * c.depth * per_block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "world-model"))
    ap.add_argument("--onnx", default=None, help="an existing `wmpo export onnx` directory (default: export now)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for ONNX Runtime and torch")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (compiles once per batch size)")
    ap.add_argument("--triton-grpc", default=None,
                    help="host:port of a running Triton serving dit_denoiser (default: start the wheel's)")
    ap.add_argument("--triton-http", default=None, help="with --triton-grpc: its HTTP host:port")
    a = ap.parse_args()
    external = a.triton_grpc is not None

    torch.set_num_threads(a.threads)
    wm, sha = load_world_model(a.checkpoint)
    tmp = tempfile.TemporaryDirectory(prefix="bench-denoiser-")
    onnx_dir = a.onnx
    if onnx_dir is None:
        onnx_dir = Path(tmp.name) / "onnx"
        export_onnx(a.checkpoint, onnx_dir, graphs=(DENOISER, CONTEXT), log=lambda *_: None)
    manifest = read_manifest(onnx_dir)
    repo = Path(tmp.name) / "repo"
    if not external:
        write_repository(a.checkpoint, repo, RepoSettings(variant="python", graphs=(DENOISER,), threads=a.threads,
                                                          queue_delay_us=0), onnx_dir=onnx_dir, log=lambda *_: None)

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    peak_before = matmul_peak()
    spec = graph_specs(wm.dit, wm.ae, wm.sampler.context_frames)[DENOISER]
    module = graph_module(DENOISER, wm.dit, wm.ae)
    session = ort_session(Path(onnx_dir) / manifest["graphs"][DENOISER]["file"], threads=a.threads)
    results: dict = {"checkpoint_sha256": sha[:12], "threads": a.threads, "repeats": a.repeats,
                     "load_average_before": os.getloadavg(), "triton": a.triton_grpc or "local wheel"}
    running = contextlib.nullcontext(argparse.Namespace(grpc_url=a.triton_grpc, http_url=a.triton_http))
    with running if external else TritonServer(repo) as server:
        if external:
            probe = grpcclient.InferenceServerClient(server.grpc_url)
            if not probe.is_model_ready(DENOISER):
                sys.exit(f"Triton at {server.grpc_url} has no ready {DENOISER}")
            probe.close()
        else:
            server.wait_ready([DENOISER], timeout=120)
        clients = {"grpc": grpcclient.InferenceServerClient(server.grpc_url)}
        if server.http_url:
            clients["http"] = httpclient.InferenceServerClient(server.http_url)
        for batch in (int(b) for b in a.batches.split(",")):
            inputs = example_inputs(spec, wm.dit, wm.ae, batch=batch)
            feed = {k: v.numpy() for k, v in inputs.items()}
            f_ctx, f_gen = inputs["kv"].shape[3], inputs["z"].shape[1]

            def torch_eager(inputs=inputs):
                with torch.no_grad():
                    return module(**inputs).numpy()

            runners = {"torch eager": torch_eager}
            if a.compile:
                compiled = torch.compile(module, dynamic=False)

                def torch_compiled(inputs=inputs, compiled=compiled):
                    with torch.no_grad():
                        return compiled(**inputs).numpy()

                runners["torch.compile"] = torch_compiled
            runners |= {
                "onnxruntime": lambda feed=feed: session.run(None, feed)[0],
                "triton grpc": lambda feed=feed: infer(grpcclient, clients["grpc"], DENOISER, feed, ["velocity"])[0],
            }
            if "http" in clients:
                runners["triton http"] = lambda feed=feed: infer(
                    httpclient, clients["http"], DENOISER, feed, ["velocity"])[0]
            # kv in system shared memory: written once per autoregressive step (timed apart below),
            # referenced by every denoising call of that step. A server that cannot map this
            # process's /dev/shm (another host, a container without --ipc=host) has no such row.
            shm_dit = TritonDiT(wm.dit.config, server.grpc_url, shared_memory=True)
            try:
                shm_dit.kv_region.write(feed["kv"])
            except Exception as e:
                if not external:
                    raise
                print(f"no shared-memory row: Triton cannot map this process's /dev/shm ({e})")
                shm_dit.close()
                shm_dit = TritonDiT(wm.dit.config, server.grpc_url)
            else:
                small = {k: v for k, v in feed.items() if k != "kv"}
                kv_ref = {"kv": (shm_dit.kv_region.name, feed["kv"].nbytes, feed["kv"].shape, "FP32")}
                runners["triton grpc+shm"] = lambda small=small, kv_ref=kv_ref, c=shm_dit.client: infer(
                    grpcclient, c, DENOISER, small, ["velocity"], shm=kv_ref)[0]
            kv_write = []
            ref = torch_eager()
            times: dict[str, list[float]] = {k: [] for k in runners}
            errors = {}
            for name, run in runners.items():  # warm-up, and every runtime checked against torch
                errors[name] = float(np.abs(run() - ref).max())
                run()
            for _ in range(a.repeats):  # interleaved, so drifts in machine load hit all alike
                for name, run in runners.items():
                    t = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t)
                if shm_dit.kv_region is not None:
                    t = time.perf_counter()
                    shm_dit.kv_region.write(feed["kv"])
                    kv_write.append(time.perf_counter() - t)
            shm_dit.close()
            flops = denoiser_flops(wm.dit.config, batch, f_ctx, f_gen)
            results[f"batch{batch}"] = {
                "shape": {"batch": batch, "ctx_frames": f_ctx, "new_frames": f_gen},
                "kv_bytes": int(feed["kv"].nbytes), "gflop": flops / 1e9,
                "kv_shm_write_ms": 1e3 * statistics.median(kv_write) if kv_write else None,
                "runtimes": {name: {"median_ms": 1e3 * statistics.median(ts),
                                    "p90_ms": 1e3 * float(np.percentile(ts, 90)),
                                    "gflops": flops / statistics.median(ts) / 1e9,
                                    "max_abs_err_vs_torch": errors[name]} for name, ts in times.items()},
            }
        for c in clients.values():
            c.close()
    peak = statistics.median([peak_before, matmul_peak()])
    results["matmul_peak_gflops"] = {"before": peak_before / 1e9, "used": peak / 1e9}
    for key, r in results.items():
        if not key.startswith("batch"):
            continue
        ort_ms = r["runtimes"]["onnxruntime"]["median_ms"]
        for name, v in r["runtimes"].items():
            v["fraction_of_peak"] = v["gflops"] * 1e9 / peak
            if name.startswith("triton") and not external:  # same graph and kernels as ORT
                v["hop_ms"] = v["median_ms"] - ort_ms
                v["hop_fraction"] = (v["median_ms"] - ort_ms) / v["median_ms"]
    tmp.cleanup()

    results["load_average_after"] = os.getloadavg()
    print(f"load average (1/5/15 min) before {results['load_average_before'][0]:.1f}, "
          f"after {results['load_average_after'][0]:.1f} on {os.cpu_count()} cores")
    print(f"float32 matmul peak: {peak / 1e9:.0f} GFLOP/s (median of before/after: "
          f"{results['matmul_peak_gflops']['before']:.0f} before)")
    print(f"{'batch':>5} {'runtime':<15} {'median ms':>9} {'p90 ms':>7} {'GFLOP/s':>8} {'of peak':>7} "
          f"{'hop ms':>7} {'hop %':>6} {'max err':>8}")
    for key, r in results.items():
        if not key.startswith("batch"):
            continue
        for name, v in r["runtimes"].items():
            hop = f"{v['hop_ms']:7.2f} {100 * v['hop_fraction']:5.1f}%" if "hop_ms" in v else f"{'':7} {'':6}"
            print(f"{r['shape']['batch']:>5} {name:<15} {v['median_ms']:9.2f} {v['p90_ms']:7.2f} {v['gflops']:8.1f} "
                  f"{100 * v['fraction_of_peak']:6.1f}% {hop} {v['max_abs_err_vs_torch']:8.1e}")
    for key, r in results.items():
        if key.startswith("batch") and r["kv_shm_write_ms"] is not None:
            print(f"batch {r['shape']['batch']}: kv {r['kv_bytes'] / 1e6:.1f} MB per call; writing it to shared "
                  f"memory once per autoregressive step takes {r['kv_shm_write_ms']:.2f} ms")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
