"""The ``WorldModel`` interface the simulator service calls, and its in-process torch backend.

A world model is used in three moves: ``start`` (encode real start frames into rollouts,
optionally forked into groups), ``step`` (advance a batch of rollouts by one chunk of actions,
staying in latent space) and ``decode`` (latents to frames, only for output). The engine
never touches tensors of the model's internals, so a Triton backend or a larger model can
implement the same protocol.

Checkpoint layout: one directory with ``model.safetensors`` holding the autoencoder (``ae.*``)
and the DiT (``dit.*``), ``config.json`` with both configs and the sampler settings, and a
manifest with data provenance and evaluation numbers.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.video_dit import VideoDiT
from wmpo.sampling.rollout import Rollout, SamplerConfig, start_rollout, step_rollouts
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint


class WorldModel(Protocol):
    image_size: int
    frame_stride: int

    def start(self, frames: np.ndarray, seeds: list[int]) -> list[Rollout]: ...
    def fork(self, rollout: Rollout, seeds: list[int]) -> list[Rollout]: ...
    def step(self, rollouts: list[Rollout], actions: np.ndarray) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> np.ndarray: ...
    def provenance(self) -> dict[str, Any]: ...


def check_frames(frames: np.ndarray, image_size: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[1:] != (image_size, image_size, 3):
        raise ValueError(f"frames must be (B, {image_size}, {image_size}, 3), got {frames.shape}")
    return frames


def check_actions(actions: np.ndarray, batch: int, stride: int) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 3 or actions.shape[0] != batch or actions.shape[2] != 4:
        raise ValueError(f"actions must be (B={batch}, K, 4), got {actions.shape}")
    if actions.shape[1] < stride or actions.shape[1] % stride:
        raise ValueError(f"chunk length K={actions.shape[1]} must be a positive multiple of the model's "
                         f"frame stride {stride}")
    if not np.all(np.isfinite(actions)):
        raise ValueError("actions contain NaN or inf")
    return np.clip(actions, -1.0, 1.0)  # the real env clips too


# Frames per autoencoder decoder call (see `TorchWorldModel.decode`): per-frame cost measured
# flat from 2 to 16 frames per call and about 2x higher at 64 (2-core CPU).
DECODE_BATCH = 8


class TorchWorldModel:
    """Autoencoder + video DiT + sampler, in this process."""

    decode_batch: int = DECODE_BATCH

    def __init__(self, ae: FrameAutoencoder, dit: VideoDiT, sampler: SamplerConfig | None = None,
                 hashes: dict[str, str] | None = None) -> None:
        if ae.config.latent_channels != dit.config.latent_channels or ae.config.latent_size != dit.config.latent_size:
            raise CheckpointError("autoencoder latents do not match the DiT's latent shape")
        self.ae = ae.eval()
        self.dit = dit.eval()
        self.sampler = sampler or SamplerConfig()
        self.hashes = hashes or {}
        self.image_size = ae.config.image_size
        self.frame_stride = dit.config.frame_stride

    @property
    def max_chunk_length(self) -> int:
        """Longest action chunk one ``step`` accepts: the anchor, the context window and the new
        frames must fit in the DiT's ``max_frames`` temporal positions."""
        c = self.dit.config
        return c.frame_stride * max(c.max_frames - 1 - self.sampler.context_frames, 0)

    # ------------------------------------------------------------------ protocol
    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        frames = check_frames(frames, self.image_size)
        return self.ae.encode(torch.from_numpy(np.ascontiguousarray(frames)))

    def start(self, frames: np.ndarray, seeds: list[int]) -> list[Rollout]:
        """One rollout per start frame (B, H, W, 3)."""
        if len(seeds) != len(frames):
            raise ValueError(f"need one seed per start frame ({len(frames)}), got {len(seeds)}")
        z = self.encode(frames)
        return [start_rollout(z[i], int(s), action_width=self.dit.config.frame_action_dim)
                for i, s in enumerate(seeds)]

    def start_with_history(self, anchor_frame: np.ndarray, frames: np.ndarray, actions: np.ndarray,
                           seed: int) -> Rollout:
        """A rollout whose context is real history: the episode's first frame, then real frames
        at the model's stride (T, H, W, 3), each with the stride*4 actions that led into it."""
        z = self.encode(np.concatenate([anchor_frame[None], frames]))
        return self.start_with_latent_history(z[0], z[1:], actions, seed)

    def start_with_latent_history(self, anchor: torch.Tensor, history: torch.Tensor, actions: np.ndarray,
                                  seed: int) -> Rollout:
        """``start_with_history`` from latents already encoded (anchor (C, h, w), history (T, C, h, w)):
        callers that start many rollouts from one real episode encode its frames once."""
        if not len(history):
            return start_rollout(anchor, seed, action_width=self.dit.config.frame_action_dim)
        acts = torch.as_tensor(np.asarray(actions, np.float32).reshape(len(history), -1))
        return start_rollout(anchor, seed, history, acts)

    def fork(self, rollout: Rollout, seeds: list[int]) -> list[Rollout]:
        return [rollout.fork(int(s)) for s in seeds]

    def step(self, rollouts: list[Rollout], actions: np.ndarray) -> torch.Tensor:
        acts = check_actions(actions, len(rollouts), self.frame_stride)
        if acts.shape[1] > self.max_chunk_length:
            raise ValueError(f"chunk length K={acts.shape[1]} exceeds this model's maximum of "
                             f"{self.max_chunk_length} actions")
        return step_rollouts(self.dit, rollouts, torch.from_numpy(acts), self.sampler)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(..., C, h, w) latents -> (..., H, W, 3) uint8 frames (C-contiguous).

        Decoded ``decode_batch`` frames per autoencoder call: the decoder's activations of a
        large batch outgrow the CPU caches, so one call over 64 frames costs about twice as
        much per frame as calls of 8 (``scripts/bench_world_model.py`` measures the sizes).
        Each sub-batch is written straight into the output array (no stack, no extra copy).
        """
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:]).float()
        size = self.image_size
        frames = np.empty((len(flat), size, size, 3), np.uint8)
        out = torch.from_numpy(frames)
        step = max(1, self.decode_batch)
        for i in range(0, len(flat), step):
            out[i:i + step] = self.ae.decode_frames(flat[i:i + step])
        return frames.reshape(*lead, size, size, 3)

    def provenance(self) -> dict[str, Any]:
        return {"backend": "torch", **self.hashes, "sampler": asdict(self.sampler)}

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, manifest: dict[str, Any], dtype: torch.dtype = torch.float16) -> str:
        """Weights are stored in float16 by default (half the size; loading casts back to float32,
        and inference runs in float32)."""
        tensors = {f"ae.{k}": v for k, v in self.ae.state_dict().items()}
        tensors |= {f"dit.{k}": v for k, v in self.dit.state_dict().items()}
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        config = {"kind": "world-model", "autoencoder": self.ae.checkpoint_config(),
                  "dit": self.dit.checkpoint_config(), "sampler": asdict(self.sampler),
                  "weights_dtype": str(dtype).removeprefix("torch.")}
        return save_checkpoint(directory, tensors, config, manifest)

    def with_sampler(self, steps: int | None = None, action_guidance: float | None = None,
                     shift: float | None = None) -> TorchWorldModel:
        """Replace the checkpoint's denoising steps, action guidance and time shift (None keeps a
        setting); returns self. ConfigError on values the sampler cannot run."""
        if steps is not None:
            if not 1 <= steps <= 256:
                raise ConfigError(f"sampler steps must be in [1, 256], got {steps}")
            self.sampler = replace(self.sampler, steps=steps)
        if shift is not None:
            if not 0.05 <= shift <= 20.0:
                raise ConfigError(f"sampler shift must be in [0.05, 20] (1 = uniform times), got {shift}")
            self.sampler = replace(self.sampler, shift=shift)
        if action_guidance is not None:
            if not 0.0 <= action_guidance <= 10.0:
                raise ConfigError(f"action guidance must be in [0, 10] (1 = off), got {action_guidance}")
            self.sampler = replace(self.sampler, action_guidance=action_guidance)
        return self

    @classmethod
    def load(cls, directory: str | Path, sampler: SamplerConfig | None = None) -> TorchWorldModel:
        tensors, config, manifest = load_checkpoint(directory)
        if config.get("kind") != "world-model":
            raise CheckpointError(f"{directory} is a {config.get('kind')!r} checkpoint, not a world-model")
        ae = FrameAutoencoder.from_config_and_tensors(
            config["autoencoder"], {k[3:]: v for k, v in tensors.items() if k.startswith("ae.")}, str(directory))
        dit = VideoDiT.from_config_and_tensors(
            config["dit"], {k[4:]: v for k, v in tensors.items() if k.startswith("dit.")}, str(directory))
        sampler = sampler or SamplerConfig(**config.get("sampler", {}))
        sha = manifest.get("weights_sha256", "")[:12]
        return cls(ae, dit, sampler, {"world_model_sha256": sha})
