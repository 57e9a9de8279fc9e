"""Fixtures for the client tests: the real simulator service, over a tiny random world model.

`serve` runs the service as deployed (`services.simulator.server.build_app`:
HTTP on uvicorn and gRPC on grpc.aio in one lifespan over one runtime) in a
background thread, on free 127.0.0.1 ports. Clients talk to it over real
sockets; nothing on the service side is mocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from services.embedded import EmbeddedStack, serve_in_thread
from tests.services.simulator.conftest import KEY, settings, tiny_world_model
from wmpo.sampling.world_model import TorchWorldModel

__all__ = ["KEY", "LiveService", "serve"]


LiveService = EmbeddedStack  # http_url, grpc_target, runtime


@contextmanager
def serve(world_model: Any, **overrides: Any) -> Iterator[LiveService]:
    """The simulator (HTTP + gRPC) on free localhost ports until the block ends."""
    with pytest.MonkeyPatch.context() as mp:  # the developer's WMPO_* must not leak in
        for name in list(os.environ):
            if name.startswith("WMPO_"):
                mp.delenv(name)
        s = settings(port=0, grpc_port=0, grpc_grace_s=0.5, **overrides)
    with serve_in_thread(world_model, s, start_timeout_s=30) as live:
        yield live


@pytest.fixture(scope="session")
def client_world_model() -> TorchWorldModel:
    return tiny_world_model()


@pytest.fixture(scope="session")
def service(client_world_model: TorchWorldModel) -> Iterator[LiveService]:
    """One service for the whole client test session (each test closes what it opens)."""
    with serve(client_world_model) as live:
        yield live
