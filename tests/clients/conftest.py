"""Fixtures for the client tests: the real simulator service, over a tiny random world model.

`serve` runs the service as deployed (`services.simulator.server.build_app`:
HTTP on uvicorn and gRPC on grpc.aio in one lifespan over one runtime) in a
background thread, on free 127.0.0.1 ports. Clients talk to it over real
sockets; nothing on the service side is mocked.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from services.simulator.runtime import SimulatorRuntime
from services.simulator.server import build_app
from tests.services.simulator.conftest import KEY, settings, tiny_world_model
from wmpo.sampling.world_model import TorchWorldModel

__all__ = ["KEY", "LiveService", "serve"]


@dataclass(frozen=True)
class LiveService:
    http_url: str  # http://127.0.0.1:PORT
    grpc_target: str  # 127.0.0.1:PORT
    runtime: SimulatorRuntime


@contextmanager
def serve(world_model: Any, **overrides: Any) -> Iterator[LiveService]:
    """The simulator (HTTP + gRPC) on free localhost ports until the block ends."""
    with pytest.MonkeyPatch.context() as mp:  # the developer's WMPO_* must not leak in
        for name in list(os.environ):
            if name.startswith("WMPO_"):
                mp.delenv(name)
        s = settings(port=0, grpc_port=0, grpc_grace_s=0.5, **overrides)
    runtime = SimulatorRuntime(world_model, s)
    app = build_app(runtime, s)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="simulator-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveService(f"http://127.0.0.1:{port}", f"127.0.0.1:{app.state.grpc_port}", runtime)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="session")
def client_world_model() -> TorchWorldModel:
    return tiny_world_model()


@pytest.fixture(scope="session")
def service(client_world_model: TorchWorldModel) -> Iterator[LiveService]:
    """One service for the whole client test session (each test closes what it opens)."""
    with serve(client_world_model) as live:
        yield live
