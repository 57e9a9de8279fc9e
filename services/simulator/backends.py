"""Where the simulator's DiT runs (WMPO_BACKEND): torch in process, ONNX Runtime in process, or a
Triton server.

Every backend is the same `TorchWorldModel` as far as the engine can tell: the autoencoder
(encode, decode) and the sampling loop (`wmpo.sampling.rollout.step_rollouts`: noise order,
per-rollout generators, Euler steps) stay in process and unchanged; only the model the loop
calls is swapped for `wmpo.export.runtimes.OrtDiT` (onnx) or `TritonDiT` (triton), which run
the exported `dit_context` graph once per autoregressive step and the `dit_denoiser` graph once
per denoising step, each one call over the engine's whole batch.

Triton: startup waits for the two models to be ready (`triton_startup_timeout_s`), pins their
version (the newest ready one unless `triton_model_version` names one) and refuses to start
when their config's `checkpoint_sha256` parameter names another checkpoint than the one
loaded. Afterwards a Triton that is down, not ready or slower than `triton_timeout_s` fails the
batch's requests with `Unavailable` (HTTP 503 / gRPC UNAVAILABLE) and a message naming Triton;
the next batch reconnects, so the service recovers by itself when Triton returns. `problem()`
is what readiness reports: Triton's own model readiness, checked at most once a second.
`triton_shm` (auto|on|off) decides at startup whether the context's keys/values go through a
system shared-memory region (the Triton server must map this process's /dev/shm: same host, a
shared /dev/shm) or travel in every denoising request; provenance says which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.errors import Unavailable
from wmpo.errors import CheckpointError, ConfigError
from wmpo.export.graphs import CONTEXT, DENOISER
from wmpo.sampling.rollout import Rollout, step_rollouts
from wmpo.sampling.world_model import TorchWorldModel, check_actions
from wmpo.utils.checkpoint import WEIGHTS, file_sha256

log = logging.getLogger("wmpo.simulator.backends")

DIT_GRAPHS = (CONTEXT, DENOISER)
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0


class ExportedDiTWorldModel(TorchWorldModel):
    """A loaded `TorchWorldModel` whose `step` runs the sampler over an exported DiT (`dit`:
    an `OrtDiT` or `TritonDiT`, anything with `config`, `build_cache`, `forward_cached`)."""

    backend = "exported"

    def __init__(self, base: TorchWorldModel, extra_provenance: dict[str, Any]) -> None:
        super().__init__(base.ae, base.dit, replace(base.sampler, use_cache=True), dict(base.hashes))
        self.extra_provenance = extra_provenance

    def runtime_dit(self) -> Any:
        raise NotImplementedError

    def step(self, rollouts: list[Rollout], actions: np.ndarray) -> torch.Tensor:
        acts = check_actions(actions, len(rollouts), self.frame_stride)
        if acts.shape[1] > self.max_chunk_length:
            raise ValueError(f"chunk length K={acts.shape[1]} exceeds this model's maximum of "
                             f"{self.max_chunk_length} actions")
        return step_rollouts(self.runtime_dit(), rollouts, torch.from_numpy(acts), self.sampler)

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "backend": self.backend, **self.extra_provenance}


# ---------------------------------------------------------------------------- ONNX Runtime
def default_onnx_dir(checkpoint_sha256: str) -> Path:
    return Path(tempfile.gettempdir()) / f"wmpo-onnx-{checkpoint_sha256[:16]}"


def ensure_onnx_export(checkpoint: str | Path, onnx_dir: str | Path | None) -> tuple[Path, str]:
    """The ONNX export of `checkpoint`'s DiT graphs -> (directory, checkpoint SHA-256): reused
    when `onnx_dir` holds one of this checkpoint (ConfigError if of another), else exported
    (into a fresh directory renamed into place, so concurrent replicas do not see half a one)."""
    from wmpo.export.onnx_export import MANIFEST, export_onnx, read_manifest

    sha = file_sha256(Path(checkpoint) / WEIGHTS)
    target = Path(onnx_dir) if onnx_dir else default_onnx_dir(sha)
    if (target / MANIFEST).exists():
        manifest = read_manifest(target)
        if manifest.get("checkpoint_sha256") != sha:
            raise ConfigError(
                f"WMPO_ONNX_DIR={target} was exported from checkpoint "
                f"{str(manifest.get('checkpoint_sha256'))[:12]}, not {sha[:12]} ({checkpoint}); "
                "point it at an export of this checkpoint or at an empty directory")
        missing = [g for g in DIT_GRAPHS if g not in manifest.get("graphs", {})]
        if missing:
            raise ConfigError(f"{target} lacks the graph(s) {missing}: re-export it with `wmpo export onnx`")
        return target, sha
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"WMPO_ONNX_DIR={target} is neither an ONNX export nor empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The first start with a checkpoint pays this once (about a minute for the bundled model on
    # 2 cores); later starts and replicas sharing the directory reuse the export.
    log.info("exporting the DiT of %s to ONNX into %s (once per checkpoint; WMPO_BACKEND=torch "
             "skips it)", checkpoint, target)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        export_onnx(checkpoint, work, graphs=DIT_GRAPHS, log=lambda *_: None)
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(work, target)
    except OSError:
        if not (target / MANIFEST).exists():  # not another replica's export that won the race
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported the DiT of %s to ONNX in %s (%.1f s)", checkpoint, target, time.perf_counter() - started)
    return target, sha


class OnnxWorldModel(ExportedDiTWorldModel):
    """The DiT in this process on ONNX Runtime (`OrtDiT`)."""

    backend = "onnx"

    def __init__(self, base: TorchWorldModel, onnx_dir: str | Path, threads: int = 0) -> None:
        from wmpo.export.runtimes import OrtDiT

        self.dit_runtime = OrtDiT(base.dit.config, onnx_dir, threads)
        super().__init__(base, {"onnx_checkpoint_sha256": self.dit_runtime.checkpoint_sha256[:12]})

    def runtime_dit(self) -> Any:
        return self.dit_runtime


# ---------------------------------------------------------------------------- Triton
def parse_triton_url(url: str) -> tuple[str, str]:
    """WMPO_TRITON_URL -> (protocol, host:port): gRPC unless it starts with http://."""
    if url.startswith("http://"):
        return "http", url.removeprefix("http://")
    return "grpc", url.removeprefix("grpc://")


def _client_errors(protocol: str) -> tuple[type[BaseException], ...]:
    """What a tritonclient call raises when the server is down, gone or too slow (not bugs)."""
    from tritonclient.utils import InferenceServerException

    errors: list[type[BaseException]] = [InferenceServerException, OSError, ConnectionError, TimeoutError]
    if protocol == "http":
        with contextlib.suppress(ImportError):
            import gevent  # tritonclient.http's transport may time out with gevent.Timeout

            errors.append(gevent.Timeout)
    return tuple(errors)


class TritonWorldModel(ExportedDiTWorldModel):
    """The DiT on a Triton server (`TritonDiT`): each denoising step is one call over the batch."""

    backend = "triton"

    def __init__(self, base: TorchWorldModel, url: str, checkpoint_sha256: str, *, model_version: str = "",
                 timeout_s: float = 30.0, startup_timeout_s: float = 60.0,
                 shared_memory: str = "auto") -> None:
        self.url = url
        self.protocol, self.address = parse_triton_url(url)
        self.timeout_s = timeout_s
        self.config_dit = base.dit.config
        self.errors = _client_errors(self.protocol)
        # Clients per thread: tritonclient.http's (gevent) cannot be used from another thread
        # than the one that made it. The TritonDiT is made on first use and after a failure.
        self._local = threading.local()
        self._problem: str | None = None
        self._problem_at = -1.0
        self.model_version = self._wait_and_check(checkpoint_sha256, model_version, startup_timeout_s)
        self.shared_memory = self._resolve_shared_memory(shared_memory)
        super().__init__(base, {
            "triton_url": url, "triton_protocol": self.protocol,
            "triton_shared_memory": "on" if self.shared_memory else "off",
            "triton_models": {g: self.model_version for g in DIT_GRAPHS},
            "triton_checkpoint_sha256": checkpoint_sha256[:12],
        })

    # -------------------------------------------------------------- clients
    def _client_module(self):
        if self.protocol == "http":
            import tritonclient.http as client
        else:
            import tritonclient.grpc as client
        return client

    def _new_probe(self):
        client = self._client_module()
        if self.protocol == "http":
            return client.InferenceServerClient(self.address, connection_timeout=PROBE_TIMEOUT_S,
                                                network_timeout=PROBE_TIMEOUT_S)
        return client.InferenceServerClient(self.address)

    def _probe_kwargs(self) -> dict[str, Any]:
        return {} if self.protocol == "http" else {"client_timeout": PROBE_TIMEOUT_S}

    @property
    def _probe(self) -> Any:
        probe = getattr(self._local, "probe", None)
        if probe is None:
            probe = self._local.probe = self._new_probe()
        return probe

    def _close_probe(self) -> None:
        probe, self._local.probe = getattr(self._local, "probe", None), None
        if probe is not None:
            with contextlib.suppress(Exception):
                probe.close()

    # -------------------------------------------------------------- startup
    def _model_config(self, name: str, version: str) -> dict[str, Any]:
        kw = self._probe_kwargs()
        if self.protocol == "grpc":
            kw["as_json"] = True
        cfg = self._probe.get_model_config(name, version, **kw)
        return cfg.get("config", cfg)

    def _newest_ready_version(self, name: str) -> str:
        kw = self._probe_kwargs()
        if self.protocol == "grpc":
            kw["as_json"] = True
        meta = self._probe.get_model_metadata(name, **kw)
        versions = sorted((v for v in meta.get("versions", []) if v.isdigit()), key=int, reverse=True)
        for v in versions:
            if self._probe.is_model_ready(name, v, **self._probe_kwargs()):
                return v
        raise ConfigError(f"Triton at {self.url} has no ready version of {name}")

    def _wait_and_check(self, checkpoint_sha256: str, version: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            problem = self._check_ready(version or "")
            if problem is None:
                break
            if time.monotonic() >= deadline:
                raise ConfigError(f"backend=triton: {problem} (waited {timeout_s:.0f} s; "
                                  "WMPO_TRITON_STARTUP_TIMEOUT_S sets how long)")
            time.sleep(0.5)
        resolved = {g: version or self._newest_ready_version(g) for g in DIT_GRAPHS}
        if len(set(resolved.values())) != 1:
            raise ConfigError(f"Triton at {self.url} serves different newest versions {resolved}; "
                              "set WMPO_TRITON_MODEL_VERSION")
        version = resolved[DENOISER]
        for g in DIT_GRAPHS:
            params = self._model_config(g, version).get("parameters", {})
            theirs = params.get("checkpoint_sha256", {}).get("string_value", "")
            if theirs != checkpoint_sha256:
                raise CheckpointError(
                    f"the Triton model {g} version {version} at {self.url} was exported from checkpoint "
                    f"{theirs[:12] or '(none recorded)'}, but this simulator loaded {checkpoint_sha256[:12]}: "
                    "regenerate the repository from this checkpoint (wmpo export triton) or load the "
                    "checkpoint it was made from")
        log.info("Triton at %s serves %s version %s of checkpoint %s", self.url, ", ".join(DIT_GRAPHS),
                 version, checkpoint_sha256[:12])
        return version

    def _resolve_shared_memory(self, mode: str) -> bool:
        """Whether to send the keys/values through system shared memory: `mode` on/off, or auto
        (on when the server can map a region this process creates, i.e. it shares /dev/shm)."""
        if mode == "off":
            return False
        if mode not in ("on", "auto"):
            raise ConfigError(f"triton_shm must be auto, on or off, got {mode!r}")
        try:
            import tritonclient.utils.shared_memory as shm

            name = f"wmpo_probe_{os.getpid()}_{id(self):x}"
            handle = shm.create_shared_memory_region(name, f"/{name}", 64)
            try:
                # Triton maps the region when it is registered: this fails on another host or
                # behind a private /dev/shm.
                self._probe.register_system_shared_memory(name, f"/{name}", 64, **self._probe_kwargs())
                self._probe.unregister_system_shared_memory(name, **self._probe_kwargs())
            finally:
                shm.destroy_shared_memory_region(handle)
        except Exception as e:  # the native shm helper or the registration failed
            if mode == "on":
                raise ConfigError(
                    f"WMPO_TRITON_SHM=on, but Triton at {self.url} cannot use this process's "
                    f"system shared memory ({_short(e)}): run Triton on this host with a shared "
                    "/dev/shm, or set WMPO_TRITON_SHM=auto or off") from None
            log.info("Triton at %s cannot map this process's shared memory (%s): the keys/values "
                     "travel in each request", self.url, _short(e))
            return False
        log.info("Triton at %s maps this process's shared memory: the keys/values go through it",
                 self.url)
        return True

    # -------------------------------------------------------------- readiness
    def _check_ready(self, version: str) -> str | None:
        """None when Triton and both models are ready, else why not (one probe round)."""
        try:
            kw = self._probe_kwargs()
            if not self._probe.is_server_live(**kw):
                raise ConnectionError("not live")
            for g in DIT_GRAPHS:
                if not self._probe.is_model_ready(g, version, **kw):
                    return f"Triton at {self.url} is up but its model {g} (version {version or 'newest'}) is not ready"
            return None
        except self.errors as e:
            self._close_probe()  # a fresh channel next time: no reconnect backoff
            return f"Triton at {self.url} is unreachable ({_short(e)})"

    def problem(self) -> str | None:
        """Why the backend cannot serve now (None: ready). Cached for a second."""
        now = time.monotonic()
        if now - self._problem_at >= PROBE_INTERVAL_S:
            self._problem = self._check_ready(self.model_version)
            self._problem_at = time.monotonic()
        return self._problem

    # -------------------------------------------------------------- calls
    def runtime_dit(self) -> Any:
        dit = getattr(self._local, "dit", None)
        if dit is None:
            from wmpo.export.runtimes import TritonDiT

            dit = self._local.dit = TritonDiT(self.config_dit, self.address, protocol=self.protocol,
                                              model_version=self.model_version, timeout_s=self.timeout_s,
                                              shared_memory=self.shared_memory)
        return dit

    def _drop_client(self) -> None:
        dit, self._local.dit = getattr(self._local, "dit", None), None
        if dit is not None:
            with contextlib.suppress(Exception):
                dit.close()

    def step(self, rollouts: list[Rollout], actions: np.ndarray) -> torch.Tensor:
        # The sampler draws each rollout's noise and advances its history as it goes: a step
        # that fails part way puts them back, so the retried step is the one that failed.
        saved = [(r.generator.get_state(), r.history, r.history_actions, r.history_has_action, r.ar_step)
                 for r in rollouts]
        try:
            return super().step(rollouts, actions)
        except self.errors as e:
            for r, (gen, hist, acts, has, ar) in zip(rollouts, saved, strict=True):
                r.generator.set_state(gen)
                r.history, r.history_actions, r.history_has_action, r.ar_step = hist, acts, has, ar
            self._drop_client()  # reconnect on the next batch
            self._problem_at = -1.0  # readiness looks again
            raise Unavailable(
                f"the world model's Triton server at {self.url} did not answer "
                f"({_short(e)}); try again shortly") from e

    def close(self) -> None:
        """Close this thread's clients (others go with their threads)."""
        self._drop_client()
        self._close_probe()


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def exported_world_model(base: TorchWorldModel, settings: Any) -> TorchWorldModel:
    """`base` with its DiT on `settings.backend` (torch: `base` unchanged)."""
    if settings.backend == "torch":
        return base
    if settings.backend == "onnx":
        onnx_dir, _ = ensure_onnx_export(settings.checkpoint, settings.onnx_dir)
        return OnnxWorldModel(base, onnx_dir, settings.onnx_threads)
    if settings.backend == "triton":
        sha = file_sha256(Path(settings.checkpoint) / WEIGHTS)
        return TritonWorldModel(base, settings.triton_url, sha, model_version=settings.triton_model_version,
                                timeout_s=settings.triton_timeout_s,
                                startup_timeout_s=settings.triton_startup_timeout_s,
                                shared_memory=settings.triton_shm)
    raise ConfigError(f"unknown backend {settings.backend!r}: torch, onnx or triton")
