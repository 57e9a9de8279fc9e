"""The larger schemathesis run against the simulator's HTTP API: a live server, every phase.

Starts the simulator with the bundled world model on a free loopback port (uvicorn in a
thread, `services.embedded.serve_in_thread`; development mode with an API key configured,
so auth is enforced) and runs the schemathesis CLI against its OpenAPI schema twice:

- with the key (`x-api-key` header): examples, coverage, fuzzing and stateful phases (the
  schema's OpenAPI links chain create -> step / replay / read / close), check
  `not_a_server_error`;
- without a key: the same phases minus stateful; everything but health must be a 4xx.

`tests/services/simulator/schemathesis_hooks.py` is loaded into the CLI (SCHEMATHESIS_HOOKS)
so part of the generated bodies carry well-formed tensors and part of the path ids are real
sessions. Afterwards the server's own request metrics are read back: the number of requests
it answered, by status class, and every 5xx. Exit status 1 if schemathesis failed or the
server answered any 5xx.

    python scripts/fuzz_simulator_api.py [--max-examples 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "fuzz-key-0123456789abcdef"
HOOKS = "tests.services.simulator.schemathesis_hooks"


def server_statuses() -> collections.Counter[tuple[str, str]]:
    """Requests the simulator answered so far, by (route, HTTP status): its Prometheus histogram."""
    from prometheus_client import REGISTRY

    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for metric in REGISTRY.collect():
        if metric.name != "wmpo_request_latency_seconds":
            continue
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_count")
                and labels.get("service") == "simulator"
                and labels.get("transport") == "http"
            ):
                counts[(labels["endpoint"], labels["code"])] += int(sample.value)
    return counts


def run_cli(
    schema: Path, url: str, args: list[str], report: Path, env: dict[str, str]
) -> tuple[int, dict]:
    cli = Path(sys.executable).parent / "schemathesis"
    cmd = [
        str(cli),
        "run",
        str(schema),
        "--url",
        url,
        "--checks",
        "not_a_server_error",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        *args,
    ]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    return proc.returncode, summarize(report)


def summarize(report: Path) -> dict:
    """Test cases and failures from the CLI's ndjson event log."""
    cases = 0
    failures: list[str] = []
    for line in report.read_text().splitlines():
        event = json.loads(line)
        (kind, payload), = event.items() if len(event) == 1 else (("?", event),)
        if kind == "ScenarioFinished":
            recorder = payload.get("recorder", {})
            cases += len(recorder.get("cases", {}))
            for checks in recorder.get("checks", {}).values():
                for check in checks:
                    if check.get("status") == "FAILURE":
                        failures.append(check.get("name", "?"))
    return {"cases": cases, "failed_checks": collections.Counter(failures)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "world-model"))
    ap.add_argument("--max-examples", type=int, default=200, help="per operation and phase")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    from services.embedded import serve_in_thread
    from services.simulator.server import load_world_model
    from services.simulator.settings import SimulatorSettings

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("WMPO_")}
    try:
        settings = SimulatorSettings(
            dev_mode=True, api_keys=KEY, host="127.0.0.1", port=0, grpc_port=0,
            checkpoint=a.checkpoint, max_sessions=256, session_ttl_s=30, session_sweep_s=2,
        )
    finally:
        os.environ.update(saved)
    common = ["--max-examples", str(a.max_examples), "--seed", str(a.seed), "--workers", "1",
              "--request-timeout", "120", "--suppress-health-check", "all"]
    results = {}
    codes: list[int] = []
    with serve_in_thread(load_world_model(a.checkpoint), settings) as live, \
            tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "FUZZ_SIMULATOR_URL": live.http_url,
               "FUZZ_SIMULATOR_API_KEY": KEY,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        # The schema is read once, with the key, so that every request the CLI sends is a test
        # case (and, without a key, any 2xx but the probes is an auth bypass).
        import httpx

        schema = Path(tmp) / "openapi.json"
        schema.write_bytes(
            httpx.get(f"{live.http_url}/openapi.json", headers={"x-api-key": KEY}).content)
        before = server_statuses()
        code, results["with_key"] = run_cli(
            schema, live.http_url, [*common, "--header", f"x-api-key: {KEY}"],
            Path(tmp) / "key.ndjson", env)
        codes.append(code)
        after_key = server_statuses()
        env_nokey = {**env, "FUZZ_SIMULATOR_URL": ""}  # no live ids: every call must be a 401
        code, results["without_key"] = run_cli(
            schema, live.http_url, [*common, "--phases", "examples,coverage,fuzzing"],
            Path(tmp) / "nokey.ndjson", env_nokey)
        codes.append(code)
        after = server_statuses()
    served = {
        "with_key": after_key - before,
        "without_key": after - after_key,
    }
    print("\n== schemathesis against the live simulator ==")
    total_5xx = 0
    for name in ("with_key", "without_key"):
        statuses: collections.Counter[str] = collections.Counter()
        for (_, code), n in served[name].items():
            statuses[code] += n
        fivexx = {f"{route} {c}": n for (route, c), n in served[name].items() if c[0] == "5"}
        total_5xx += sum(fivexx.values())
        print(f"{name:12} test cases {results[name]['cases']:6d}   failed checks "
              f"{dict(results[name]['failed_checks']) or 0}   server answered "
              f"{sum(statuses.values())} requests   5xx: {fivexx or 0}")
        print(f"{'':12} statuses: {dict(sorted(statuses.items()))}")
    # Without a key only the probes may succeed: a 2xx anywhere else is an auth bypass.
    bypass = {f"{route} {c}": n for (route, c), n in served["without_key"].items()
              if c[0] == "2" and route not in ("/healthz", "/readyz")}
    if bypass:
        print(f"answered without a key: {bypass}")
    ok = all(c == 0 for c in codes) and total_5xx == 0 and not bypass
    print("result:", "no 5xx, no 2xx without a key" if ok
          else f"FAILED (exit codes {codes}, {total_5xx} 5xx, {len(bypass)} routes without auth)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
