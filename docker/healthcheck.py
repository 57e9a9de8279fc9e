"""The image's HEALTHCHECK: GET /healthz of the service this container runs; exit 0 on 200.

One image runs the simulator, the judge or the trainer, each on its own default HTTP port.
The port is the running `wmpo serve SERVICE` command's `--port`, else WMPO_PORT, else that
service's default (the precedence of `wmpo serve` itself). The command is found among the
container's processes (PID 1, or a child of an init such as `docker run --init`).

Usage: python healthcheck.py [--proc DIR]   (DIR: /proc; tests pass a fake one)
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

# The services' default HTTP ports (services/{simulator,judge,trainer}/settings.py).
DEFAULT_PORTS = {"simulator": 8000, "judge": 8001, "trainer": 8002}


def serve_command(proc: Path) -> list[str]:
    """The argv of the `wmpo serve SERVICE ...` process, PID 1 first; [] if there is none."""
    pids = sorted((p for p in proc.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for pid in pids:
        try:
            argv = (pid / "cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
        except OSError:
            continue
        if "serve" in argv and argv.index("serve") + 1 < len(argv):
            return argv[argv.index("serve") + 1 :]
    return []


def http_port(command: list[str], environ: dict[str, str]) -> int:
    """`command`: SERVICE and its flags, as after `wmpo serve`."""
    for i, arg in enumerate(command):
        if arg == "--port" and i + 1 < len(command):
            return int(command[i + 1])
        if arg.startswith("--port="):
            return int(arg.removeprefix("--port="))
    if environ.get("WMPO_PORT"):
        return int(environ["WMPO_PORT"])
    service = command[0] if command else "simulator"
    return DEFAULT_PORTS.get(service, DEFAULT_PORTS["simulator"])


def main(argv: list[str]) -> int:
    proc = Path(argv[argv.index("--proc") + 1]) if "--proc" in argv else Path("/proc")
    port = http_port(serve_command(proc), dict(os.environ))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: http://127.0.0.1:{port}/healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
