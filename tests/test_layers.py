"""Dependencies point one way: clients <- services -> core.

Read from the source (every import statement, lazy ones inside functions included), so a late
import cannot hide an edge: the core (`wmpo`) never imports the services or the web stack, the
light client (`wmpo_client`) never imports the core, the services or torch, and each package
imports cleanly on its own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"wmpo": ROOT / "wmpo", "services": ROOT / "services",
            "wmpo_client": ROOT / "clients" / "python" / "wmpo_client"}
# What each package may not import (top-level module names).
FORBIDDEN = {
    "wmpo": {"services", "fastapi", "uvicorn", "starlette", "redis", "grpc"},
    "wmpo_client": {"wmpo", "services", "torch"},
    "services": set(),
}


def imports(package: Path) -> dict[str, set[str]]:
    """{file relative to the repo: top-level modules it imports}."""
    out: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_no_import_points_the_wrong_way() -> None:
    bad = {}
    for name, path in PACKAGES.items():
        for file, names in imports(path).items():
            if names & FORBIDDEN[name]:
                bad[file] = sorted(names & FORBIDDEN[name])
    assert not bad, f"imports against the layering (clients <- services -> core): {bad}"


def test_edges_between_the_top_level_packages() -> None:
    """The whole graph of the three packages: core -> client (its public protocols and
    clients), services -> core and client; nothing else."""
    edges = set()
    for name, path in PACKAGES.items():
        for names in imports(path).values():
            edges |= {(name, other) for other in names & set(PACKAGES) if other != name}
    assert edges <= {("wmpo", "wmpo_client"), ("services", "wmpo"), ("services", "wmpo_client")}, edges


def test_each_package_imports_alone() -> None:
    code = ("import importlib, pkgutil, sys\n"
            "pkg = importlib.import_module(sys.argv[1])\n"
            "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "    if not m.name.endswith('_pb2_grpc') and 'triton_python_model' not in m.name:\n"
            "        importlib.import_module(m.name)\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[2:]))\n"
            "assert not bad, bad\n")
    for name in ("wmpo_client", "wmpo"):
        forbidden = sorted(FORBIDDEN[name])
        subprocess.run([sys.executable, "-c", code, name, *forbidden], check=True, cwd=ROOT)
