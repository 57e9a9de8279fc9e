"""The light client never imports torch, the wmpo core or the services (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import importlib, json, pkgutil, sys

import wmpo_client
lazy = sorted(m for m in ("grpc", "httpx", "gymnasium") if m in sys.modules)
importlib.import_module("wmpo_client.http")
http_only = sorted(m for m in ("grpc", "gymnasium") if m in sys.modules)

names = sorted(m.name for m in pkgutil.walk_packages(wmpo_client.__path__, "wmpo_client."))
for name in names:
    importlib.import_module(name)
for name in wmpo_client.__all__:
    getattr(wmpo_client, name)
forbidden = sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "wmpo", "services")
)
print(json.dumps({"modules": names, "forbidden": forbidden, "lazy": lazy, "http_only": http_only}))
"""


def test_every_client_module_imports_without_torch_wmpo_or_services(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,  # not the repo root, so nothing is importable by accident
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert {
        "wmpo_client.cli",
        "wmpo_client.codec",
        "wmpo_client.errors",
        "wmpo_client.grpc",
        "wmpo_client.gym",
        "wmpo_client.http",
        "wmpo_client.results",
        "wmpo_client.proto.simulator_pb2_grpc",
    } <= set(report["modules"])
    assert report["forbidden"] == [], report["forbidden"]
    # `import wmpo_client` is cheap, and the HTTP client needs neither grpcio nor gymnasium.
    assert report["lazy"] == [] and report["http_only"] == []
