"""Every service of the project in one process: the embedded default.

``embedded_stack(checkpoint)`` starts the simulator (HTTP on uvicorn and gRPC on grpc.aio,
in one lifespan over one runtime) in a background thread on free 127.0.0.1 ports, in
development mode (no API key, loopback only), and yields its addresses. Clients talk to it
over real sockets, exactly as they would to a deployed cluster. Later services (judge,
optimizer, trainer) join this stack.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from services.simulator.runtime import SimulatorRuntime
from services.simulator.server import build_app, load_world_model
from services.simulator.settings import SimulatorSettings


@dataclass(frozen=True)
class EmbeddedStack:
    http_url: str  # http://127.0.0.1:PORT
    grpc_target: str  # 127.0.0.1:PORT
    runtime: SimulatorRuntime


@contextmanager
def serve_in_thread(world_model: Any, settings: SimulatorSettings,
                    start_timeout_s: float = 60.0) -> Iterator[EmbeddedStack]:
    """Serve ``world_model`` with ``settings`` (ports 0 = any free port) until the block ends."""
    runtime = SimulatorRuntime(world_model, settings)
    app = build_app(runtime, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", log_config=None,
                            access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="wmpo-simulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the embedded simulator did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield EmbeddedStack(f"http://{settings.host}:{port}", f"{settings.host}:{app.state.grpc_port}", runtime)
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def embedded_stack(checkpoint: str | Path, **overrides: Any) -> Iterator[EmbeddedStack]:
    """The embedded default: the bundled world model, dev mode, loopback, free ports.

    ``WMPO_*`` variables of the caller's environment are ignored so a developer's deployment
    settings cannot leak into it."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("WMPO_")}
    try:
        settings = SimulatorSettings(**{"dev_mode": True, "host": "127.0.0.1", "port": 0, "grpc_port": 0,
                                        "checkpoint": str(checkpoint), **overrides})
    finally:
        os.environ.update(saved)
    with serve_in_thread(load_world_model(checkpoint), settings) as stack:
        yield stack
