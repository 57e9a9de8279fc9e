"""Serving benchmark of the simulator service (issue 4): batching, latency, overhead, memory.

Uses the bundled world model (`checkpoints/world-model`) and a real MetaWorld start frame
(button-press-topdown-v3, a held-out seed). Five measurements, each printed as a table and
written together to one JSON file:

1. step-level batching: imagined frames/s with 16 concurrent sessions, each stepping its own
   chunks of 8 actions through `SessionManager.step_session`, on an engine with max batch 16
   vs the same engine code with max batch 1 (one rollout per model call). Repetitions are
   interleaved (batched, single, batched, ...); medians and their ratio;
2. p50/p99 latency of `POST /v1/imagine` (4 candidates x 1 chunk) through the real uvicorn
   server (`services.embedded.serve_in_thread`) and the real httpx client (`wmpo_client`);
3. serving overhead: the same imagine requests (same seeds, same engine settings) through HTTP,
   through gRPC and by calling a `SimulatorEngine` in-process, interleaved request by
   request; overhead = (median transport latency - median in-process) / median in-process;
4. memory per open session: the session manager's own accounting (bytes held) and the
   process RSS delta when opening N sessions, after stepping each of them as the gym env
   does (idempotent steps: each session keeps its last step's frames) and after closing
   them. Measured first, after one warm-up batch, with freed heap pages handed back to the
   system before each reading (malloc_trim), so that RSS is not hidden by memory other work
   freed. RSS is page-granular and allocator-dependent: read it as a check on the
   accounting, not as an exact figure.

5. keeping up with the engine (issue 16, item 5; measured first): imagined frames/s of 1
   session and of 16 sessions stepped through the service (`SessionManager` on the max-batch-16
   engine) against the offline model's `step` + `decode` at batch 1 and 16 on the same world
   model, interleaved chunk by chunk; medians and ratios (bar: 0.9).
   `--keeps-up-only` runs just this one.

Nothing is mocked: every number is the real model on this machine's CPU. The machine is
shared, so compare the numbers of one run with each other, not across runs.

    MUJOCO_GL=egl python scripts/bench_serving.py [--quick] [--out outputs/bench/serving.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import faulthandler
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/bench_serving.py` from anywhere
    sys.path.insert(0, str(ROOT))

TASK = "button-press-topdown-v3"
SESSIONS = 16  # concurrent sessions of the batching measurement
CHUNK = 8  # actions per chunk (K)
CANDIDATES = 4  # candidates per imagine request


# ------------------------------------------------------------------ helpers


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; no psutil needed), after returning
    freed heap pages to the system (glibc `malloc_trim`): otherwise memory that earlier
    work freed (loading the model, batches) is reused and new sessions do not show in RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def real_start_frame(seed: int) -> np.ndarray:
    """A real MetaWorld frame (64x64x3 uint8) from a held-out seed."""
    from wmpo.data.collect import EVAL_SEED_BASE
    from wmpo.envs import make_env

    env = make_env(TASK)
    try:
        frame, _ = env.reset(seed=EVAL_SEED_BASE + seed)
    finally:
        env.close()
    return np.ascontiguousarray(frame, dtype=np.uint8)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "| " + " | ".join("-" * w for w in widths) + " |"
    out = [title, "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells[1:]]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


@contextmanager
def clean_wmpo_env():
    """Deployment settings of the caller's shell (WMPO_*) must not leak into the benchmark."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("WMPO_")}
    try:
        yield
    finally:
        os.environ.update(saved)


# ---------------------------------------------------------------- 1: batching


async def _open_sessions(sessions: Any, frame: np.ndarray, n: int, seed0: int) -> list[str]:
    ids = []
    for i in range(n):
        res = await sessions.create(frame, "press the button from the top", seed=seed0 + i,
                                    max_chunks=1024)
        ids.append(res.sessions[0].session_id)
    return ids


async def _step_concurrently(
    sessions: Any, ids: list[str], actions: np.ndarray, idempotent: bool = False
) -> float:
    """Every session steps its chunks in order, all sessions at once; returns wall seconds.

    actions: (sessions, chunks, K, 4). `idempotent`: name expected_chunks_stepped, as the
    gym env does (each session then keeps its last step's frames)."""

    async def drive(i: int, sid: str) -> None:
        for c in range(actions.shape[1]):
            await sessions.step_session(sid, actions[i, c], c if idempotent else None)

    t0 = time.perf_counter()
    await asyncio.gather(*(drive(i, sid) for i, sid in enumerate(ids)))
    return time.perf_counter() - t0


async def _batching_run(stack: Any, frame: np.ndarray, actions: np.ndarray, seed0: int) -> dict:
    engine, sessions = stack
    ids = await _open_sessions(sessions, frame, actions.shape[0], seed0)
    calls0, rows0 = engine.stats.model_calls, engine.stats.rows
    try:
        seconds = await _step_concurrently(sessions, ids, actions)
    finally:
        for sid in ids:
            sessions.close(sid)
    calls = engine.stats.model_calls - calls0
    rows = engine.stats.rows - rows0
    frames = actions.shape[0] * actions.shape[1] * (CHUNK // engine.frame_stride)
    return {"seconds": seconds, "frames": frames, "frames_per_second": frames / seconds,
            "model_calls": calls, "mean_batch": rows / calls}


def bench_batching(runner: asyncio.Runner, stacks: dict[str, Any], frame: np.ndarray,
                   chunks: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (SESSIONS, chunks, CHUNK, 4)).astype(np.float32)
    warm = actions[:, :1]
    for stack in stacks.values():  # warm-up: first calls of each batch shape
        runner.run(_batching_run(stack, frame, warm, seed0=10_000))
    runs: dict[str, list[dict]] = {name: [] for name in stacks}
    for r in range(repeats):
        order = list(stacks) if r % 2 == 0 else list(reversed(stacks))
        for name in order:  # interleaved, alternating which goes first
            runs[name].append(runner.run(_batching_run(stacks[name], frame, actions, seed0=100 * r)))
    med = {name: statistics.median(x["frames_per_second"] for x in v) for name, v in runs.items()}
    # Each repetition's two runs are neighbours in time: their ratio cancels slow drifts of
    # the load other jobs put on the machine.
    pairs = [
        b["frames_per_second"] / s["frames_per_second"]
        for b, s in zip(runs["batched"], runs["single"], strict=True)
    ]
    return {
        "sessions": SESSIONS,
        "chunks_per_session": chunks,
        "chunk_length": CHUNK,
        "repeats": repeats,
        "frames_per_second_median": med,
        "speedup": med["batched"] / med["single"],
        "speedup_per_repeat": pairs,
        "speedup_median_of_repeats": statistics.median(pairs),
        "runs": runs,
    }


# ------------------------------------------------- 5: does serving keep up with its engine


async def _step_all(sessions: Any, ids: list[str], actions: np.ndarray) -> None:
    """One chunk (n, K, 4) for every session at once through the service."""
    await asyncio.gather(*(sessions.step_session(sid, a) for sid, a in zip(ids, actions, strict=True)))


def bench_keeps_up(runner: asyncio.Runner, wm: Any, sessions: Any, frame: np.ndarray,
                   chunks: int) -> dict:
    """Served frames/s (1 and 16 sessions) against the offline model (batch 1 and 16, `step` +
    `decode` in this thread: no engine, no sessions) on the same world model.

    Interleaved chunk by chunk, which goes first alternating: each served chunk has an offline
    chunk of the same batch as its neighbour in time, so the load other jobs put on the
    machine hits both alike. Every rollout first steps one untimed chunk (it fills the
    context window, after which every chunk costs the same)."""
    rng = np.random.default_rng(3)
    per_chunk = CHUNK // wm.frame_stride
    out: dict[str, Any] = {"chunks_timed": chunks, "chunk_length": CHUNK, "bar": 0.9}
    for n in (1, SESSIONS):
        acts = rng.uniform(-1, 1, (n, chunks + 1, CHUNK, 4)).astype(np.float32)
        rollouts = wm.fork(wm.start(frame[None], [n])[0], [n + i for i in range(n)])
        ids = runner.run(_open_sessions(sessions, frame, n, seed0=40_000 + n))
        offline: list[float] = []
        served: list[float] = []
        try:
            for c in range(chunks + 1):
                times: dict[str, float] = {}
                for side in ("offline", "served") if c % 2 else ("served", "offline"):
                    t0 = time.perf_counter()
                    if side == "offline":
                        wm.decode(wm.step(rollouts, acts[:, c]))
                    else:
                        runner.run(_step_all(sessions, ids, acts[:, c]))
                    times[side] = time.perf_counter() - t0
                if c > 0:  # chunk 0 is the warm-up
                    offline.append(times["offline"])
                    served.append(times["served"])
        finally:
            for sid in ids:
                sessions.close(sid)
        pairs = [o / s for o, s in zip(offline, served, strict=True)]
        out[f"batch{n}"] = {
            "offline_frames_per_second": n * per_chunk / statistics.median(offline),
            "served_frames_per_second": n * per_chunk / statistics.median(served),
            "ratio_of_medians": statistics.median(offline) / statistics.median(served),
            "ratio_median_of_pairs": statistics.median(pairs),
            "ratio_quartiles_of_pairs": [float(np.percentile(pairs, 25)),
                                         float(np.percentile(pairs, 75))],
            "offline_chunk_s": offline,
            "served_chunk_s": served,
        }
    return out


def print_keeps_up(k: dict) -> None:
    rows = []
    for n, label in ((1, "1 session vs offline batch 1"),
                     (SESSIONS, f"{SESSIONS} sessions vs offline batch {SESSIONS}")):
        b = k[f"batch{n}"]
        q = b["ratio_quartiles_of_pairs"]
        rows.append([label, b["offline_frames_per_second"], b["served_frames_per_second"],
                     f"{b['ratio_of_medians']:.2f}", f"{b['ratio_median_of_pairs']:.2f} "
                     f"[{q[0]:.2f}, {q[1]:.2f}]"])
    print(table(f"Serving vs offline step + decode (imagined frames/s, median of "
                f"{k['chunks_timed']} interleaved chunks; bar {k['bar']})",
                ["", "offline", "served", "ratio of medians", "ratio per chunk pair (IQR)"],
                rows))
    print()


# ----------------------------------------------------- 2 + 3: latency, overhead


def bench_transports(runner: asyncio.Runner, engine: Any, live: Any, frame: np.ndarray,
                     requests: int) -> dict:
    """Interleaved imagine requests (4 candidates x 1 chunk) in-process, over HTTP, over gRPC."""
    from wmpo_client import GrpcSimulatorClient, SimulatorClient

    rng = np.random.default_rng(1)
    cands = rng.uniform(-1, 1, (CANDIDATES, 1, CHUNK, 4)).astype(np.float32)
    http = SimulatorClient(live.http_url, retries=0, timeout=120)
    grpc_client = GrpcSimulatorClient(live.grpc_target, retries=0, timeout=120)

    def inproc(seed: int) -> Any:
        return runner.run(engine.imagine(frame, cands, 0, seed))

    modes: dict[str, Callable[[int], Any]] = {
        "in_process": inproc,
        "http": lambda seed: http.imagine(frame, "press the button", cands, seed=seed),
        "grpc": lambda seed: grpc_client.imagine(frame, "press the button", cands, seed=seed),
    }
    names = list(modes)
    try:
        first = {name: fn(7).frames for name, fn in modes.items()}  # warm-up, same-seed check
        identical = all(np.array_equal(first["in_process"], f) for f in first.values())
        for _ in range(2):
            for fn in modes.values():
                fn(8)
        lat: dict[str, list[float]] = {name: [] for name in names}
        server: dict[str, list[float]] = {name: [] for name in names}  # the service's own total
        for i in range(requests):
            shift = i % len(names)  # rotate which transport goes first
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                out = modes[name](1000 + i)
                lat[name].append(time.perf_counter() - t0)
                server[name].append(float(out.timing["total"]))
    finally:
        http.close()
        grpc_client.close()
    summary = {
        name: {
            "p50_ms": 1000 * percentile(v, 50),
            "p90_ms": 1000 * percentile(v, 90),
            "p99_ms": 1000 * percentile(v, 99),
            "mean_ms": 1000 * statistics.fmean(v),
            # The service's own timing.total: the engine's run in process; for HTTP and gRPC
            # the runtime's (imagine queue + engine), so the rest is transport and encoding.
            "service_p50_ms": 1000 * percentile(server[name], 50),
        }
        for name, v in lat.items()
    }
    base = summary["in_process"]["p50_ms"]
    overhead = {
        name: {
            "median_ms": summary[name]["p50_ms"] - base,
            "percent_of_in_process": 100 * (summary[name]["p50_ms"] - base) / base,
        }
        for name in ("http", "grpc")
    }
    return {
        "candidates": CANDIDATES,
        "chunks": 1,
        "chunk_length": CHUNK,
        "requests_per_transport": requests,
        "same_seed_frames_identical": identical,
        "latency": summary,
        "overhead": overhead,
        "samples_s": lat,
        "service_samples_s": server,
    }


# ----------------------------------------------------------------- 4: memory


async def _memory(sessions: Any, frame: np.ndarray, n: int, chunks: int) -> dict:
    """Run first, after a warm-up of one batch stepped as far (the longest contexts): RSS then
    grows by what the sessions hold, not by the model's working memory."""
    warm = await _open_sessions(sessions, frame, SESSIONS, seed0=60_000)
    await _step_concurrently(sessions, warm, np.zeros((SESSIONS, chunks, CHUNK, 4), np.float32))
    for sid in warm:
        sessions.close(sid)
    gc.collect()
    rss0, held0 = rss_bytes(), sessions.memory_bytes()
    ids = await _open_sessions(sessions, frame, n, seed0=50_000)
    gc.collect()
    rss1, held1 = rss_bytes(), sessions.memory_bytes()
    rng = np.random.default_rng(2)
    actions = rng.uniform(-1, 1, (n, chunks, CHUNK, 4)).astype(np.float32)
    await _step_concurrently(sessions, ids, actions, idempotent=True)
    gc.collect()
    rss2, held2 = rss_bytes(), sessions.memory_bytes()
    per_session = [sessions.get(sid).memory_bytes for sid in ids]
    for sid in ids:
        sessions.close(sid)
    gc.collect()
    rss3 = rss_bytes()
    return {
        "sessions": n,
        "chunks_stepped_each": chunks,
        "after_open": {
            "accounted_bytes_per_session": (held1 - held0) / n,
            "rss_delta_bytes_per_session": (rss1 - rss0) / n,
        },
        "after_steps": {
            "note": "stepped as the gym env does (expected_chunks_stepped): each session also "
            "keeps its last step's frames for a retry",
            "accounted_bytes_per_session": (held2 - held0) / n,
            "rss_delta_bytes_per_session": (rss2 - rss0) / n,
            "accounted_min_max": [min(per_session), max(per_session)],
        },
        "after_close": {"rss_delta_bytes_per_session": (rss3 - rss0) / n},
    }


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "world-model"))
    ap.add_argument("--out", default="outputs/bench/serving.json")
    ap.add_argument("--quick", action="store_true", help="a smoke run of well under a minute")
    ap.add_argument("--repeats", type=int, help="interleaved repetitions of the batching runs")
    ap.add_argument("--chunks", type=int, help="chunks each session steps per batching run")
    ap.add_argument("--requests", type=int, help="imagine requests per transport")
    ap.add_argument("--memory-sessions", type=int, help="sessions opened for the memory figure")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--backend", choices=("torch", "onnx"), default=None,
                    help="where the DiT runs (default: the service's default; WMPO_* of the shell "
                    "are ignored)")
    ap.add_argument("--keeps-up-only", action="store_true",
                    help="only measurement 5: served frames/s (1 and 16 sessions) vs offline")
    ap.add_argument("--keeps-up-chunks", type=int,
                    help="timed chunks of each side in measurement 5 (default 24; --quick 4)")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds after which the run prints every thread's stack and exits "
                    "with an error instead of running on (0: no deadline)")
    a = ap.parse_args(argv)
    if a.deadline > 0:
        # A run that stalls (a wait that never ends, a native library spinning) should say
        # where, not hang whoever runs it: a test or a CI job.
        faulthandler.dump_traceback_later(a.deadline, exit=True)
    repeats = a.repeats or (1 if a.quick else 5)
    chunks = a.chunks or (2 if a.quick else 8)
    requests = a.requests or (8 if a.quick else 200)
    mem_sessions = a.memory_sessions or (16 if a.quick else 128)

    import torch

    from services.embedded import serve_in_thread
    from services.simulator.engine import EngineConfig, SimulatorEngine
    from services.simulator.server import world_model_from_settings
    from services.simulator.sessions import SessionConfig, SessionManager
    from services.simulator.settings import SimulatorSettings

    if a.threads:
        torch.set_num_threads(a.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    frame = real_start_frame(seed=0)
    with clean_wmpo_env():
        backend = {"backend": a.backend} if a.backend else {}
        settings = SimulatorSettings(dev_mode=True, host="127.0.0.1", port=0, grpc_port=0,
                                     checkpoint=a.checkpoint, max_batch_size=SESSIONS,
                                     max_wait_ms=5.0, onnx_threads=a.threads, **backend)
    wm = world_model_from_settings(settings)  # the DiT on settings.backend, as the service loads it
    batched_cfg = EngineConfig.from_settings(settings)
    single_cfg = dataclasses.replace(batched_cfg, max_batch_size=1)
    session_cfg = SessionConfig.from_settings(settings)
    stacks: dict[str, Any] = {}
    for name, cfg in (("batched", batched_cfg), ("single", single_cfg)):
        engine = SimulatorEngine(wm, cfg)
        stacks[name] = (engine, SessionManager(engine, session_cfg))

    result: dict[str, Any] = {
        "config": {
            "checkpoint": a.checkpoint,
            "provenance": {k: str(v) for k, v in wm.provenance().items()},
            "quick": a.quick,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sampler_steps": wm.sampler.steps,
            "frame_stride": wm.frame_stride,
            "start_frame": f"MetaWorld {TASK}, held-out seed 1000000",
            "max_wait_ms": settings.max_wait_ms,
        }
    }
    with asyncio.Runner() as runner:
        for engine, sessions in stacks.values():
            runner.run(engine.start())
            runner.run(sessions.start())
        try:
            keeps_up_chunks = a.keeps_up_chunks or (4 if a.quick else 24)
            print(f"[keeps up] 1 and {SESSIONS} sessions vs offline step + decode, "
                  f"{keeps_up_chunks} chunks of {CHUNK} each, interleaved", flush=True)
            result["keeps_up"] = bench_keeps_up(runner, wm, stacks["batched"][1], frame,
                                                keeps_up_chunks)
            if a.keeps_up_only:
                result["seconds"] = time.perf_counter() - started
                print_keeps_up(result["keeps_up"])
                return _write(result, a.out)
            print(f"[1/3] memory: {mem_sessions} sessions", flush=True)
            result["memory"] = runner.run(
                _memory(stacks["batched"][1], frame, mem_sessions, chunks=min(chunks, 4)))
            print(f"[2/3] batching: {SESSIONS} sessions x {chunks} chunks of {CHUNK}, "
                  f"max batch {SESSIONS} vs 1, {repeats} interleaved repeats", flush=True)
            b = bench_batching(runner, stacks, frame, chunks, repeats)
            result["batching"] = b
            print(f"[3/3] imagine {CANDIDATES}x1 in-process / HTTP / gRPC, "
                  f"{requests} requests each, interleaved", flush=True)
            with serve_in_thread(wm, settings) as live:
                t = bench_transports(runner, stacks["batched"][0], live, frame, requests)
            result["transports"] = t
        finally:
            for engine, sessions in stacks.values():
                runner.run(sessions.stop())
                runner.run(engine.stop())
    result["seconds"] = time.perf_counter() - started
    # Other jobs share this machine: the load average says how much.
    result["config"]["loadavg_1min_start_end"] = [load_start, os.getloadavg()[0]]

    print()
    print_keeps_up(result["keeps_up"])
    print(table("Step-level batching (imagined frames/s, median)",
                ["engine", "frames/s", "runs", "model calls/run", "mean batch"],
                [[f"max batch {SESSIONS}", b["frames_per_second_median"]["batched"],
                  len(b["runs"]["batched"]), b["runs"]["batched"][0]["model_calls"],
                  b["runs"]["batched"][0]["mean_batch"]],
                 ["max batch 1", b["frames_per_second_median"]["single"],
                  len(b["runs"]["single"]), b["runs"]["single"][0]["model_calls"],
                  b["runs"]["single"][0]["mean_batch"]]]))
    print(f"speedup: {b['speedup']:.2f}x (ratio of medians); per repeat: "
          f"{', '.join(f'{r:.2f}' for r in b['speedup_per_repeat'])} "
          f"(median {b['speedup_median_of_repeats']:.2f}x)\n")
    lat = t["latency"]
    print(table(f"/v1/imagine {CANDIDATES} candidates x 1 chunk (ms, {requests} requests each)",
                ["path", "p50", "p90", "p99", "service p50", "overhead vs in-process (p50)"],
                [[name, lat[name]["p50_ms"], lat[name]["p90_ms"], lat[name]["p99_ms"],
                  lat[name]["service_p50_ms"],
                  "-" if name == "in_process"
                  else f"{t['overhead'][name]['percent_of_in_process']:.1f}% "
                       f"({t['overhead'][name]['median_ms']:.1f} ms)"]
                 for name in ("in_process", "http", "grpc")]))
    print(f"same seeds give identical frames on every path: {t['same_seed_frames_identical']}\n")
    m = result["memory"]
    print(table(f"Memory per open session ({m['sessions']} sessions, bytes)",
                ["when", "engine accounting", "RSS delta"],
                [["after open", m["after_open"]["accounted_bytes_per_session"],
                  m["after_open"]["rss_delta_bytes_per_session"]],
                 [f"after {m['chunks_stepped_each']} chunks each (idempotent steps)",
                  m["after_steps"]["accounted_bytes_per_session"],
                  m["after_steps"]["rss_delta_bytes_per_session"]],
                 ["after closing them", 0, m["after_close"]["rss_delta_bytes_per_session"]]]))
    return _write(result, a.out)


def _write(result: dict, path: str) -> dict:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
