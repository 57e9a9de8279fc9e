"""Soak test: the simulator and the judge under steady mixed load, with their memory sampled.

Starts `wmpo serve simulator` (with the judge as its verify judge) and `wmpo serve judge` as
separate processes on loopback, with API keys, from the bundled checkpoints, then keeps
several client threads busy for `--minutes`:

- imagine (2 candidates x 1 chunk), now and then with verify (the simulator calls the judge);
- a session group's life: create (G=2) -> step 2 chunks -> close;
- judge one 8-frame video;
- bad requests a careless client sends: malformed JSON, a wrong-size frame, no key, an unknown
  session (each must be a 4xx).

The resident memory (VmRSS) of both server processes is sampled every `--sample-s` seconds.
The report gives the requests by operation and status, the RSS curve, and the growth per hour
from a least-squares line over the samples after the first `--warmup-minutes` (allocators and
caches settle first). Nothing is mocked: real servers, real models, real HTTP.

    MUJOCO_GL=egl python scripts/soak.py --minutes 25 [--out results/soak/soak.json]

Not part of `make test` (it runs for minutes on purpose): `make soak`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wmpo_client import SimulatorClient  # noqa: E402
from wmpo_client.errors import SimulatorError  # noqa: E402
from wmpo_client.judge_http import JudgeClient  # noqa: E402

KEY = "soak-key-0123456789abcdef"
SERVICE_KEY = "soak-service-key-0123456789abcdef"
FRAME = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start(service: str, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WMPO_")}
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", service, "--port", str(port),
         "--grpc-port", str(free_port())],
        cwd=ROOT, env={**base, "OMP_NUM_THREADS": "1", "WMPO_API_KEYS": KEY, **env},
        stdout=out, stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready within {timeout} s")


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_op: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.latency: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, op: str, status: str, seconds: float) -> None:
        with self.lock:
            self.by_op[op][status] += 1
            if status == "200":
                self.latency[op].append(seconds)


def timed(counts: Counts, op: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    """fn(*args, **kwargs), counted under `op` by its HTTP status (200 when it returned)."""
    t0 = time.perf_counter()
    try:
        fn(*args, **kwargs)
        status = "200"
    except SimulatorError as exc:
        status = str(exc.http_status) if exc.http_status else exc.code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    counts.add(op, status, time.perf_counter() - t0)


def raw_status(counts: Counts, op: str, send: Any, *args: Any, **kwargs: Any) -> None:
    """A raw httpx call, counted by the status it got."""
    t0 = time.perf_counter()
    try:
        status = str(send(*args, **kwargs).status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    counts.add(op, status, time.perf_counter() - t0)


def group_life(sim: SimulatorClient, frame: np.ndarray, seed: int, rng: np.random.Generator) -> None:
    """create (G=2) -> step 2 chunks -> close."""
    group = sim.create_group(frame, 2, "open the drawer", seed=seed, max_chunks=2)
    for _ in range(2):
        sim.step_group(group.group_id, rng.uniform(-1, 1, (2, 8, 4)).astype(np.float32))
    sim.close_group(group.group_id)


def load(kind: str, sim_url: str, judge_url: str, stop: threading.Event, counts: Counts, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (FRAME, FRAME, 3), dtype=np.uint8)
    key = {"x-api-key": KEY}
    with SimulatorClient(sim_url, KEY, retries=0, timeout=120) as sim, \
            JudgeClient(judge_url, KEY, retries=0, timeout=120) as judge, \
            httpx.Client(base_url=sim_url, timeout=30) as raw:
        i = 0
        while not stop.is_set():
            i += 1
            actions = rng.uniform(-1, 1, (2, 1, 8, 4)).astype(np.float32)
            if kind == "imagine":
                verify = i % 4 == 0
                timed(counts, "imagine+verify" if verify else "imagine", sim.imagine,
                      frame, "press the button", actions, seed=i, verify=verify)
            elif kind == "sessions":
                timed(counts, "session group", group_life, sim, frame, i, rng)
            elif kind == "judge":
                video = rng.integers(0, 256, (8, FRAME, FRAME, 3), dtype=np.uint8)
                timed(counts, "judge", judge.judge, video, "press the button", frame_stride=2)
            else:  # careless clients
                raw_status(counts, "bad: malformed JSON", raw.post, "/v1/imagine", content=b"{not json",
                           headers={**key, "content-type": "application/json"})
                raw_status(counts, "bad: no key", raw.post, "/v1/imagine", json={})
                raw_status(counts, "bad: unknown session", raw.get, "/v1/sessions/s-nope", headers=key)
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                timed(counts, "bad: wrong frame size", sim.imagine, small, "x", actions)
                stop.wait(0.5)


def growth_per_hour(samples: list[tuple[float, int]], warmup_s: float) -> float | None:
    """Least-squares slope of RSS over time after the warm-up, in bytes per hour."""
    pts = [(t, r) for t, r in samples if t >= warmup_s]
    if len(pts) < 3:
        return None
    t = np.array([p[0] for p in pts])
    r = np.array([p[1] for p in pts], dtype=np.float64)
    slope = np.polyfit(t, r, 1)[0]
    return float(slope * 3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--warmup-minutes", type=float, default=3.0)
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--out", default="outputs/soak/soak.json")
    args = ap.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sim_port, judge_port = free_port(), free_port()
    sim_url, judge_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{judge_port}"
    judge_log, sim_log = out.parent / "judge.log", out.parent / "simulator.log"
    judge = start("judge", judge_port, judge_log, {"WMPO_SERVICE_API_KEYS": SERVICE_KEY})
    sim = start("simulator", sim_port, sim_log, {
        "WMPO_SERVICE_API_KEYS": SERVICE_KEY, "WMPO_JUDGE_URL": judge_url,
        "WMPO_JUDGE_API_KEY": SERVICE_KEY})
    procs = {"simulator": sim, "judge": judge}
    try:
        wait_ready(judge_url, judge, judge_log)
        wait_ready(sim_url, sim, sim_log)
        counts, stop = Counts(), threading.Event()
        kinds = ["imagine", "imagine", "sessions", "sessions", "judge", "careless"]
        threads = [threading.Thread(target=load, args=(k, sim_url, judge_url, stop, counts, n), daemon=True)
                   for n, k in enumerate(kinds)]
        t0 = time.monotonic()
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in procs}
        for th in threads:
            th.start()
        end = t0 + args.minutes * 60
        while True:
            now = time.monotonic()
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"the {name} exited during the soak ({proc.returncode})")
                samples[name].append((round(now - t0, 1), rss_bytes(proc.pid)))
            total = sum(sum(c.values()) for c in counts.by_op.values())
            print(f"[{(now - t0) / 60:5.1f} min] requests {total:6d}  " + "  ".join(
                f"{n} {samples[n][-1][1] / 2**20:.0f} MiB" for n in procs), flush=True)
            if now >= end:
                break
            time.sleep(min(args.sample_s, max(0.0, end - now)))
        stop.set()
        for th in threads:
            th.join(180)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    warmup = args.warmup_minutes * 60
    report: dict[str, Any] = {
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "requests": {op: dict(sorted(c.items())) for op, c in sorted(counts.by_op.items())},
        "latency_p50_s": {op: round(statistics.median(v), 3) for op, v in counts.latency.items() if v},
        "rss": {
            name: {
                "samples": [(t, round(r / 2**20, 1)) for t, r in s],
                "start_mib": round(s[0][1] / 2**20, 1),
                "after_warmup_mib": round(next((r for t, r in s if t >= warmup), s[-1][1]) / 2**20, 1),
                "end_mib": round(s[-1][1] / 2**20, 1),
                "growth_mib_per_hour": (None if (g := growth_per_hour(s, warmup)) is None
                                        else round(g / 2**20, 1)),
            }
            for name, s in samples.items()
        },
    }
    statuses = collections.Counter(st for c in counts.by_op.values() for st, n in c.items() for _ in range(n))
    report["status_totals"] = dict(sorted(statuses.items()))
    report["server_errors"] = sum(n for st, n in statuses.items() if st.isdigit() and int(st) >= 500)
    out.write_text(json.dumps(report, indent=1))
    print("\nrequests by operation and status:")
    for op, c in report["requests"].items():
        print(f"  {op:24} {c}")
    print(f"status totals: {report['status_totals']}  (5xx: {report['server_errors']})")
    for name, r in report["rss"].items():
        print(f"RSS {name:9}: start {r['start_mib']} MiB, after warm-up {r['after_warmup_mib']} MiB, "
              f"end {r['end_mib']} MiB, growth {r['growth_mib_per_hour']} MiB/h")
    print(f"report: {out}")
    if report["server_errors"]:
        raise SystemExit(f"{report['server_errors']} server errors during the soak")


if __name__ == "__main__":
    main()
