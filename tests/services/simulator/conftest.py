"""Fixtures for the simulator tests: a tiny random world model (milliseconds per call).

`CountingModel` wraps the real model to count batched step calls and, with a
gate, to hold a batch inside the model while a test looks at the queue; the
model computation itself is never replaced.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from services.simulator.settings import SimulatorSettings
from wmpo.models.autoencoder import PRESETS as AE_PRESETS
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.video_dit import PRESETS, VideoDiT
from wmpo.sampling.rollout import Rollout, SamplerConfig
from wmpo.sampling.world_model import TorchWorldModel

KEY = "sim-key-0123456789abcdef"
SIZE = 64
# A world-model training run shares this machine: keep torch on one thread.
torch.set_num_threads(1)


def tiny_world_model() -> TorchWorldModel:
    torch.manual_seed(0)
    ae = FrameAutoencoder(AE_PRESETS["tiny"]).eval()
    dit = VideoDiT(PRESETS["tiny"])
    with torch.no_grad():  # adaLN-Zero init predicts zero velocity; perturb so outputs vary
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return TorchWorldModel(ae, dit.eval(), SamplerConfig(steps=2), {"world_model_sha256": "tiny"})


@pytest.fixture(scope="session")
def world_model() -> TorchWorldModel:
    return tiny_world_model()


class CountingModel:
    """The real world model, with step calls counted and optionally held at a gate."""

    def __init__(self, inner: TorchWorldModel, gated: bool = False) -> None:
        self.inner = inner
        self.image_size = inner.image_size
        self.frame_stride = inner.frame_stride
        self.max_chunk_length = inner.max_chunk_length
        self.calls: list[int] = []  # batch size of every step call
        self.entered = threading.Event()  # a step call is inside the model
        self.gate = threading.Event()
        self.fail_calls: set[int] = set()  # 1-based step calls that raise
        self.fail_after_step = False  # those calls advance their rollouts, then raise
        self.start_entered = threading.Event()
        self.start_gate: threading.Event | None = None  # set: encodes wait for it
        if not gated:
            self.gate.set()

    def start(self, frames: np.ndarray, seeds: list[int]) -> list[Rollout]:
        self.start_entered.set()
        if self.start_gate is not None:  # a test orders encodes on the one model thread
            assert self.start_gate.wait(10), "test start gate never opened"
        return self.inner.start(frames, seeds)

    def fork(self, rollout: Rollout, seeds: list[int]) -> list[Rollout]:
        return self.inner.fork(rollout, seeds)

    def step(self, rollouts: list[Rollout], actions: np.ndarray) -> torch.Tensor:
        self.calls.append(len(rollouts))
        self.entered.set()
        assert self.gate.wait(10), "test gate never opened"
        if len(self.calls) in self.fail_calls:  # a backend failure (e.g. a lost GPU)
            if self.fail_after_step:
                self.inner.step(rollouts, actions)
            raise RuntimeError("secret backend detail: CUDA error at /srv/model.py:42")
        return self.inner.step(rollouts, actions)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return self.inner.decode(latents)

    def provenance(self) -> dict[str, Any]:
        return self.inner.provenance()


def frames(seed: int = 0, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8)


def actions(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (*shape, 4)).astype(np.float32)


def settings(**overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {"api_keys": KEY, "max_wait_ms": 20.0}
    values.update(overrides)
    return SimulatorSettings(**values)
