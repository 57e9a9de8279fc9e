"""The exported DiT as a drop-in for ``VideoDiT`` in the sampling loop: in process with ONNX
Runtime (``OrtDiT``) or through a Triton server (``TritonDiT``, gRPC or HTTP).

``wmpo.sampling.rollout.step_rollouts`` only uses a model's ``config``, ``build_cache`` and
``forward_cached``; these classes provide exactly those, backed by the ``dit_context`` and
``dit_denoiser`` graphs, so the loop (noise order, per-rollout generators, Euler steps) is the
same code for every runtime and each denoising step is one call over the batch. The cache
stays packed (``PackedCache``) between the two calls: it is produced once per autoregressive
step and sent unchanged with every denoising step.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.export.graphs import CONTEXT, DENOISER
from wmpo.models.video_dit import VideoDiTConfig

TRITON_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.bool_): "BOOL", np.dtype(np.int64): "INT64",
                 np.dtype(np.uint8): "UINT8"}


@dataclass
class PackedCache:
    kv: np.ndarray  # (B, 2 * depth, heads, F_ctx, N, head_dim) float32
    frames: int


def _feed(z, t, actions, has_action, positions) -> dict[str, np.ndarray]:
    def arr(x, dtype):
        return np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=dtype)

    return {"z": arr(z, np.float32), "t": arr(t, np.float32), "actions": arr(actions, np.float32),
            "has_action": arr(has_action, np.bool_), "positions": arr(positions, np.int64)}


def _no_plan(plan: Any) -> None:
    """The sampler passes VideoDiT's optional plan condition (the optimizer's generator); the
    exported graphs are the world model's, which has none."""
    if plan is not None:
        raise NotImplementedError("the exported DiT graphs take no plan condition (plan_tokens=0 models only)")


class _GraphDiT:
    """config + build_cache + forward_cached over a ``run(graph, feed) -> array`` method."""

    def __init__(self, config: VideoDiTConfig) -> None:
        self.config = config

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def build_cache(self, z, t, actions, has_action, positions, plan=None) -> PackedCache:
        _no_plan(plan)
        kv = self.run(CONTEXT, _feed(z, t, actions, has_action, positions))
        return PackedCache(kv, kv.shape[3])

    def forward_cached(self, z, t, actions, has_action, positions, cache: PackedCache, plan=None) -> torch.Tensor:
        _no_plan(plan)
        feed = _feed(z, t, actions, has_action, positions)
        feed["kv"] = cache.kv
        out = self.run(DENOISER, feed)
        return torch.from_numpy(out if out.flags.writeable else out.copy())  # Triton's are read-only

    def __call__(self, *args: Any) -> torch.Tensor:
        raise NotImplementedError("the exported DiT has no uncached forward: use the sampler with use_cache=True")


class OrtDiT(_GraphDiT):
    """The DiT's context and denoiser graphs in this process with ONNX Runtime (intra-op
    spinning off, see ``onnx_export.ort_session``)."""

    def __init__(self, config: VideoDiTConfig, onnx_dir: str | Path, threads: int = 0) -> None:
        from wmpo.export.onnx_export import ort_session, read_manifest

        super().__init__(config)
        manifest = read_manifest(onnx_dir)
        self.checkpoint_sha256 = manifest["checkpoint_sha256"]
        self.sessions = {g: ort_session(Path(onnx_dir) / manifest["graphs"][g]["file"], threads)
                         for g in (CONTEXT, DENOISER)}

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions[graph].run(None, feed)[0]


class TritonDiT(_GraphDiT):
    """The DiT's context and denoiser graphs on a Triton server: ``url`` is host:port of its
    gRPC (``protocol="grpc"``) or HTTP endpoint. Tensors travel as raw binary.

    ``shared_memory=True`` (Triton on the same host only): the packed cache is written once per
    autoregressive step into a system shared-memory region registered with the server, and
    every denoising call references it instead of sending it (0.6 MB per rollout for the
    bundled model); the other inputs and the velocity still travel in the request. One region
    per instance, overwritten by the next ``build_cache``: use one instance per sampling loop.
    """

    def __init__(self, config: VideoDiTConfig, url: str, protocol: str = "grpc", model_version: str = "",
                 timeout_s: float | None = None, shared_memory: bool = False) -> None:
        super().__init__(config)
        if protocol == "grpc":
            import tritonclient.grpc as client
        elif protocol == "http":
            import tritonclient.http as client
        else:
            raise ValueError(f"protocol must be grpc or http, got {protocol!r}")
        self.client_module = client
        self.protocol = protocol
        if protocol == "http" and timeout_s:
            self.client = client.InferenceServerClient(url, network_timeout=timeout_s)
        else:
            self.client = client.InferenceServerClient(url)
        self.model_version = model_version
        self.timeout_s = timeout_s
        self.outputs = {CONTEXT: "kv", DENOISER: "velocity"}
        self.kv_region = _ShmRegion(self.client, f"wmpo_kv_{os.getpid()}_{id(self):x}") if shared_memory else None

    def run(self, graph: str, feed: dict[str, np.ndarray], shm: dict | None = None) -> np.ndarray:
        return infer(self.client_module, self.client, graph, feed, [self.outputs[graph]],
                     self.model_version, self.timeout_s, shm=shm)[0]

    def build_cache(self, z, t, actions, has_action, positions, plan=None) -> PackedCache:
        cache = super().build_cache(z, t, actions, has_action, positions, plan)
        if self.kv_region is not None:
            self.kv_region.write(cache.kv)
        return cache

    def forward_cached(self, z, t, actions, has_action, positions, cache: PackedCache, plan=None) -> torch.Tensor:
        if self.kv_region is None:
            return super().forward_cached(z, t, actions, has_action, positions, cache, plan)
        _no_plan(plan)
        feed = _feed(z, t, actions, has_action, positions)
        shm = {"kv": (self.kv_region.name, cache.kv.nbytes, cache.kv.shape, "FP32")}
        return torch.from_numpy(self.run(DENOISER, feed, shm=shm).copy())

    def close(self) -> None:
        if self.kv_region is not None:
            self.kv_region.close()
        self.client.close()


class _ShmRegion:
    """A system shared-memory region registered with a Triton server, grown on demand."""

    def __init__(self, client, name: str) -> None:
        self.client, self.name = client, name
        self.handle = None
        self.capacity = 0

    def write(self, array: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        if array.nbytes > self.capacity:
            self.close()
            self.capacity = max(array.nbytes, 2 * self.capacity)
            self.handle = shm.create_shared_memory_region(self.name, f"/{self.name}", self.capacity)
            self.client.register_system_shared_memory(self.name, f"/{self.name}", self.capacity)
        shm.set_shared_memory_region(self.handle, [np.ascontiguousarray(array)])

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        if self.handle is not None:
            with contextlib.suppress(Exception):  # the server may be gone
                self.client.unregister_system_shared_memory(self.name)
            shm.destroy_shared_memory_region(self.handle)
            self.handle, self.capacity = None, 0


def infer(client_module, client, model: str, feed: dict[str, np.ndarray], outputs: list[str],
          model_version: str = "", timeout_s: float | None = None,
          shm: dict[str, tuple[str, int, tuple[int, ...], str]] | None = None) -> list[np.ndarray]:
    """One Triton inference with tritonclient (``client_module`` is tritonclient.grpc or .http);
    ``timeout_s`` applies to gRPC (an HTTP client takes its network timeout when created);
    ``shm`` maps input names to (registered region, byte size, shape, Triton dtype) for inputs
    already in system shared memory."""
    http = client_module.__name__.endswith("http")
    inputs = []
    for name, a in feed.items():
        x = client_module.InferInput(name, list(a.shape), TRITON_DTYPES[a.dtype])
        if http:
            x.set_data_from_numpy(a, binary_data=True)
        else:
            x.set_data_from_numpy(a)
        inputs.append(x)
    for name, (region, nbytes, shape, dtype) in (shm or {}).items():
        x = client_module.InferInput(name, list(shape), dtype)
        x.set_shared_memory(region, nbytes)
        inputs.append(x)
    if http:
        requested = [client_module.InferRequestedOutput(o, binary_data=True) for o in outputs]
        kwargs = {}
    else:
        requested = [client_module.InferRequestedOutput(o) for o in outputs]
        kwargs = {"client_timeout": timeout_s} if timeout_s else {}
    result = client.infer(model, inputs, model_version=model_version, outputs=requested, **kwargs)
    return [result.as_numpy(o) for o in outputs]
