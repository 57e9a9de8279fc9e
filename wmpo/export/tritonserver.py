"""Run a real Triton Inference Server from the ``nvidia-pytriton`` wheel: find the binary,
prepare a backend directory, start it on loopback, wait until it (and its models) are ready,
stop it.

The wheel (``nvidia-pytriton==0.7.0``, installed by ``make setup`` without its Python
dependencies: only its binaries are used) carries ``tritonserver`` (Triton 2.51), the Python
backend and backend stubs for several Python versions, and its bundled libraries in
``nvidia_pytriton.libs``. What the server needs (DESIGN.md section 7):

- the stub for this Python version (``python_backend_stubs/3.11/triton_python_backend_stub``)
  beside ``libtriton_python.so``. ``prepare_backends`` builds that directory in a private
  location (a copy, about 10 MB) instead of writing into the installed wheel;
- the wheel's libraries on ``LD_LIBRARY_PATH``, and this interpreter's ``libpython`` directory
  first, so the stub embeds the same Python build as the caller;
- this interpreter's directory first on ``PATH``: the stub embeds Python without reading
  ``PYTHONPATH`` and finds its prefix from the ``python3`` on ``PATH``, so a virtual
  environment's ``pyvenv.cfg`` then applies and the Python-backend models import this
  environment's numpy and onnxruntime.

Its CUDA/NVML/DCGM warnings on a machine without a GPU are harmless. PyTriton's own in-process
``bind()`` API is not used (it does not work with this Python); the model-repository route is.

    with TritonServer(repo) as server:
        server.wait_ready(["dit_denoiser"])
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from wmpo.errors import WmpoError

PACKAGE = "nvidia-pytriton"
STUB = "triton_python_backend_stub"


class TritonUnavailable(WmpoError):
    """No usable tritonserver here (the wheel is not installed, or lacks a stub for this Python)."""


class TritonStartError(WmpoError):
    """tritonserver exited or did not become ready; the message ends with its log."""


@dataclass(frozen=True)
class TritonInstall:
    root: Path  # .../pytriton/tritonserver
    binary: Path
    libs: Path  # .../nvidia_pytriton.libs
    stub: Path  # the Python backend stub for this interpreter's version

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"


def find_tritonserver() -> TritonInstall:
    """The tritonserver of the installed nvidia-pytriton wheel; TritonUnavailable says why not."""
    spec = importlib.util.find_spec("pytriton")  # does not import pytriton (its deps are not installed)
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable(f"the {PACKAGE} wheel is not installed (make setup installs it)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    root = pkg / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(root, root / "bin" / "tritonserver", pkg.parent / "nvidia_pytriton.libs",
                            root / "python_backend_stubs" / version / STUB)
    for what, path in (("binary", install.binary), ("Python backend", install.python_backend / "libtriton_python.so"),
                       (f"Python {version} backend stub", install.stub), ("bundled libraries", install.libs)):
        if not path.exists():
            raise TritonUnavailable(f"{PACKAGE} at {pkg.parent} has no {what} ({path})")
    return install


def prepare_backends(install: TritonInstall, dest: str | Path) -> Path:
    """``dest`` as a ``--backend-directory``: ``python/`` with the backend library, its utils
    module and the stub for this Python. Returns ``dest``."""
    dest = Path(dest)
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in install.python_backend.iterdir():
        if f.is_file():
            shutil.copy2(f, py / f.name)
    shutil.copy2(install.stub, py / STUB)
    (py / STUB).chmod(0o755)
    return dest


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libdirs = []
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if libdir and ldlib.endswith(".so") and (Path(libdir) / ldlib).exists():
        libdirs.append(libdir)  # the stub then embeds this interpreter's own libpython
    libdirs.append(str(install.libs))
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
    # The stub embeds Python without reading PYTHONPATH, and finds its prefix from the
    # "python3" on PATH: this interpreter's directory first makes a virtual environment's
    # pyvenv.cfg apply, so the stub sees this environment's site-packages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """One tritonserver process serving ``model_repository`` on ``host`` (loopback by default).
    Ports default to free ones. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, model_repository: str | Path, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, log_file: str | Path | None = None,
                 extra_args: tuple[str, ...] = (), install: TritonInstall | None = None) -> None:
        self.install = install or find_tritonserver()
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.extra_args = tuple(extra_args)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        """host:port, as tritonclient.http expects it (no scheme)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, backend_dir: Path) -> list[str]:
        return [str(self.install.binary), f"--model-repository={self.model_repository}",
                f"--backend-directory={backend_dir}", f"--http-address={self.host}",
                f"--http-port={self.http_port}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--strict-readiness=true", "--exit-timeout-secs=5",
                *self.extra_args]

    def start(self) -> TritonServer:
        if self.process is not None:
            raise RuntimeError("tritonserver already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="wmpo-triton-")
        backend_dir = prepare_backends(self.install, Path(self._tmp.name) / "backends")
        if self.log_file is None:
            self.log_file = Path(self._tmp.name) / "tritonserver.log"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            # Its own session (process group), so stop() ends it and the backend stubs it forks.
            self.process = subprocess.Popen(self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=server_env(self.install),
                                            start_new_session=True, preexec_fn=_die_with_parent)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return "(no log)"

    def _get(self, path: str, timeout: float = 1.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def is_live(self) -> bool:
        return self._get("/v2/health/live") == 200

    def is_ready(self) -> bool:
        return self._get("/v2/health/ready") == 200

    def is_model_ready(self, name: str, version: str = "") -> bool:
        v = f"/versions/{version}" if version else ""
        return self._get(f"/v2/models/{name}{v}/ready") == 200

    def wait_ready(self, models: list[str] | tuple[str, ...] = (), timeout: float = 60.0) -> float:
        """Block until the server and ``models`` are ready; returns the seconds waited.
        TritonStartError (with the log's tail) if the process exits or the timeout passes."""
        if self.process is None:
            raise RuntimeError("tritonserver not started")
        t0 = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise TritonStartError(f"tritonserver exited with status {code} before it was ready:\n"
                                       + self.log_tail())
            if self.is_ready() and all(self.is_model_ready(m) for m in models):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise TritonStartError(f"tritonserver not ready after {timeout:.0f} s:\n" + self.log_tail())
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (Triton unloads its models, up to --exit-timeout-secs), then SIGKILL; returns
        the exit status."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            code = proc.returncode
        if self._tmp is not None:
            if self.log_file and Path(self._tmp.name) in self.log_file.parents:
                self.log_file = None  # it goes with the directory
            self._tmp.cleanup()
            self._tmp = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (Linux), so a
    killed test run or service leaves no tritonserver holding its ports."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
