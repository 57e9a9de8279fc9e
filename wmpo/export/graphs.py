"""The four graphs the fast path serves, as torch modules with tensor-only signatures.

These wrappers call the model code unchanged (``VideoDiT.build_cache`` / ``forward_cached``,
``FrameAutoencoder.encode`` / ``decode_frames``); they only turn the ``KVCache`` dataclass into
one tensor so that it can cross a graph boundary (ONNX, Triton). Every tensor has the batch
as dimension 0, which is what Triton's ``max_batch_size`` and dynamic batching need.

The packed cache is ``kv`` (B, 2 * depth, heads, F_ctx, N, head_dim): layer i's keys at
index 2i, its values at 2i + 1; F_ctx context frames of N tokens each. Keeping F_ctx and N as
separate dimensions makes the number of context frames a plain dynamic dimension (an ONNX
symbol, a TensorRT profile range) instead of a multiple of N hidden in a token count.

``graph_specs`` describes each graph's inputs and outputs (name, dtype, shape with named
dynamic dimensions and their ranges); the ONNX exporter, the Triton configs and the TensorRT
build script are all written from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.video_dit import KVCache, VideoDiT

# Triton model names, also the ONNX file stems.
DENOISER = "dit_denoiser"
CONTEXT = "dit_context"
ENCODER = "ae_encoder"
DECODER = "ae_decoder"
GRAPHS = (DENOISER, CONTEXT, ENCODER, DECODER)


def pack_cache(cache: KVCache) -> torch.Tensor:
    """KVCache -> kv (B, 2 * depth, heads, F_ctx, N, head_dim)."""
    layers = [t for pair in zip(cache.keys, cache.values, strict=True) for t in pair]
    kv = torch.stack(layers, dim=1)  # (B, 2D, heads, F_ctx * N, hd)
    b, two_d, h, length, hd = kv.shape
    return kv.reshape(b, two_d, h, cache.frames, length // cache.frames, hd)


def unpack_cache(kv: torch.Tensor) -> KVCache:
    """kv (B, 2 * depth, heads, F_ctx, N, head_dim) -> KVCache (views, no copy)."""
    b, two_d, h, frames, n, hd = kv.shape
    flat = kv.reshape(b, two_d, h, frames * n, hd)
    return KVCache([flat[:, i] for i in range(0, two_d, 2)], [flat[:, i] for i in range(1, two_d, 2)], frames)


class DenoiserGraph(nn.Module):
    """One denoising call over the generated frames, attending to the packed context cache."""

    def __init__(self, dit: VideoDiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
                positions: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return self.dit.forward_cached(z, t, actions, has_action, positions, unpack_cache(kv))


class ContextGraph(nn.Module):
    """The context frames' keys and values, once per autoregressive step."""

    def __init__(self, dit: VideoDiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        return pack_cache(self.dit.build_cache(z, t, actions, has_action, positions))


class EncoderGraph(nn.Module):
    """uint8 RGB frames (B, H, W, 3) -> normalized latents (B, C, h, w)."""

    def __init__(self, ae: FrameAutoencoder) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.ae.encode(frames)


class DecoderGraph(nn.Module):
    """Normalized latents (B, C, h, w) -> uint8 RGB frames (B, H, W, 3): the clamp and rounding
    run in the graph, so a remote decoder sends a quarter of the bytes of float pixels."""

    def __init__(self, ae: FrameAutoencoder) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.ae.decode_frames(latents)


# ---------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Dim:
    """A dynamic dimension: its name and the range an engine must cover (opt: the typical size)."""

    name: str
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, bool, int64, uint8
    shape: tuple[int | Dim, ...]  # dimension 0 is always the batch Dim

    def dims(self) -> list[int]:
        """Triton's ``dims``: the shape without the batch, -1 for a dynamic dimension."""
        return [-1 if isinstance(d, Dim) else d for d in self.shape[1:]]

    def concrete(self, which: str, **sizes: int) -> tuple[int, ...]:
        """The shape at a profile point (``which`` in min/opt/max), sizes overriding by dim name."""
        return tuple(sizes.get(d.name, getattr(d, which)) if isinstance(d, Dim) else d for d in self.shape)


@dataclass
class GraphSpec:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: str = ""
    dims: dict[str, Dim] = field(default_factory=dict)


def graph_specs(dit: VideoDiT, ae: FrameAutoencoder, context_frames: int = 4, max_batch: int = 64,
                opt_batch: int = 16, opt_new_frames: int = 4) -> dict[str, GraphSpec]:
    """Inputs/outputs of the four graphs for these models. ``context_frames`` is the sampler's
    recent window (the context is the anchor plus at most that many frames); ``opt_*`` are the
    typical sizes a TensorRT profile is tuned for (batch 16 = the simulator's engine batch,
    4 new frames = a chunk of 8 actions at frame stride 2)."""
    c, a = dit.config, ae.config
    batch = Dim("batch", 1, min(opt_batch, max_batch), max_batch)
    max_ctx = min(1 + context_frames, c.max_frames - 1)
    ctx = Dim("ctx_frames", 1, max_ctx, max_ctx)
    max_new = max(c.max_frames - max_ctx, 1)  # positions run up to max_frames - 1
    new = Dim("frames", 1, min(opt_new_frames, max_new), max_new)
    lat = (c.latent_channels, c.latent_size, c.latent_size)
    hd = c.dim // c.heads

    def frame_inputs(f: Dim) -> list[TensorSpec]:
        return [TensorSpec("z", "float32", (batch, f, *lat)), TensorSpec("t", "float32", (batch, f)),
                TensorSpec("actions", "float32", (batch, f, c.frame_action_dim)),
                TensorSpec("has_action", "bool", (batch, f)), TensorSpec("positions", "int64", (batch, f))]

    kv = TensorSpec("kv", "float32", (batch, 2 * c.depth, c.heads, ctx, c.tokens_per_frame, hd))
    img = a.image_size
    specs = [
        GraphSpec(DENOISER, [*frame_inputs(new), kv], [TensorSpec("velocity", "float32", (batch, new, *lat))],
                  "velocity of the generated frames given the packed context cache (forward_cached)",
                  {"batch": batch, "frames": new, "ctx_frames": ctx}),
        GraphSpec(CONTEXT, frame_inputs(ctx), [kv],
                  "every layer's keys/values of the context frames (build_cache), packed",
                  {"batch": batch, "ctx_frames": ctx}),
        GraphSpec(ENCODER, [TensorSpec("frames", "uint8", (batch, img, img, 3))],
                  [TensorSpec("latents", "float32", (batch, *lat))],
                  "uint8 RGB frames -> normalized latents", {"batch": batch}),
        GraphSpec(DECODER, [TensorSpec("latents", "float32", (batch, *lat))],
                  [TensorSpec("frames", "uint8", (batch, img, img, 3))],
                  "normalized latents -> uint8 RGB frames", {"batch": batch}),
    ]
    return {s.name: s for s in specs}


def graph_module(name: str, dit: VideoDiT, ae: FrameAutoencoder) -> nn.Module:
    modules = {DENOISER: DenoiserGraph, CONTEXT: ContextGraph, ENCODER: EncoderGraph, DECODER: DecoderGraph}
    if name not in modules:
        raise KeyError(f"unknown graph {name!r}; graphs: {', '.join(GRAPHS)}")
    return modules[name](dit if name.startswith("dit") else ae).eval()


def example_inputs(spec: GraphSpec, dit: VideoDiT, ae: FrameAutoencoder, seed: int = 0,
                   **sizes: int) -> dict[str, torch.Tensor]:
    """Realistic inputs for one graph at the given sizes (defaults: the opt point): latents
    ~ N(0, 1) (the autoencoder normalizes them so), times in [0, 1], actions in [-1, 1],
    positions after the context, and a kv cache computed by the model from random context
    latents (not random numbers, which would put attention in a regime it never sees)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    shapes = {s.name: s.concrete("opt", **sizes) for s in spec.inputs}
    for s in spec.inputs:
        shape = shapes[s.name]
        if s.name == "z" or s.name == "latents":
            out[s.name] = torch.randn(shape, generator=g)
        elif s.name == "t":
            out[s.name] = torch.rand(shape, generator=g)
        elif s.name == "actions":
            out[s.name] = torch.rand(shape, generator=g) * 2 - 1
        elif s.name == "has_action":
            out[s.name] = torch.rand(shape, generator=g) > 0.2
        elif s.name == "frames":
            out[s.name] = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if "positions" in shapes:
        b, f = shapes["positions"]
        first = shapes["kv"][3] if "kv" in shapes else 0
        out["positions"] = torch.arange(first, first + f).expand(b, f).contiguous()
    if "kv" in shapes:
        b, _, _, f_ctx, _, _ = shapes["kv"]
        ctx_spec = graph_specs(dit, ae)[CONTEXT]
        ctx = example_inputs(ctx_spec, dit, ae, seed + 1, batch=b, ctx_frames=f_ctx)
        with torch.no_grad():
            out["kv"] = ContextGraph(dit).eval()(**ctx)
    return {s.name: out[s.name] for s in spec.inputs}
