"""Learned success classifier: is the task done at the end of this clip of L frames?

WMPO's judge (section 3.3) is a video classifier over clips of L=8 frames. Here: a small
per-frame conv encoder shared across the clip, the L frame features kept in temporal order
(flattened, with a learned per-position embedding, so "the handle moved in the last frames"
and "the handle was already there" are different inputs), FiLM from the instruction
embedding (one classifier serves a task set), and an MLP to one logit.

Frames come in at the classifier's ``frame_stride`` (see ``wmpo.judge.clips``): the world
model's latent frame rate, so real and imagined videos are judged alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.text import EMBED_DIM, lookup_embeddings


@dataclass
class SuccessClassifierConfig:
    image_size: int = 64
    clip_length: int = 8  # L
    frame_stride: int = 2  # env steps between the frames of a clip
    channels: tuple[int, ...] = (16, 32, 64, 64)  # conv stages, each halves the resolution
    frame_dim: int = 96  # per-frame feature width
    hidden: int = 256
    text_dim: int = EMBED_DIM
    dropout: float = 0.2

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        checks = {
            "image_size": self.image_size >= 16 and self.image_size % (2 ** len(self.channels)) == 0,
            "clip_length": 1 <= self.clip_length <= 64,
            "frame_stride": 1 <= self.frame_stride <= 16,
            "channels": len(self.channels) >= 1 and all(c > 0 for c in self.channels),
            "frame_dim": self.frame_dim > 0,
            "hidden": self.hidden > 0,
            "dropout": 0.0 <= self.dropout < 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"SuccessClassifierConfig.{name}={getattr(self, name)!r} is invalid (image_size >= 16 "
                    "and divisible by 2**len(channels); clip_length in [1, 64]; frame_stride in [1, 16]; "
                    "dropout in [0, 1))")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, SuccessClassifierConfig] = {
    "tiny": SuccessClassifierConfig(channels=(8, 8, 16, 16), frame_dim=16, hidden=32),  # tests
    "small": SuccessClassifierConfig(),  # bundled, 0.7M parameters
    "base": SuccessClassifierConfig(channels=(64, 128, 256, 256), frame_dim=256, hidden=1024),
}


def _conv_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU(),
    )


class SuccessClassifier(nn.Module):
    def __init__(self, config: SuccessClassifierConfig, instructions: list[str] | None = None) -> None:
        super().__init__()
        self.config = c = config
        chans = (3, *c.channels)
        self.encoder = nn.Sequential(*[_conv_stage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        side = c.image_size // 2 ** len(c.channels)
        self.frame_proj = nn.Linear(c.channels[-1] * side * side, c.frame_dim)
        self.time_embed = nn.Parameter(torch.zeros(c.clip_length, c.frame_dim))
        self.clip_proj = nn.Linear(c.clip_length * c.frame_dim, c.hidden)
        self.film = nn.Linear(c.text_dim, 2 * c.hidden)
        self.head = nn.Sequential(nn.LayerNorm(c.hidden), nn.SiLU(), nn.Dropout(c.dropout),
                                  nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Dropout(c.dropout),
                                  nn.Linear(c.hidden, 1))
        self.instructions: list[str] = list(instructions or [])
        self.register_buffer("instruction_table", torch.zeros(len(self.instructions), c.text_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        # FiLM starts as the identity so the instruction cannot destabilize early training;
        # the position embedding starts small; the output starts at logit 0 (p = 0.5).
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        nn.init.normal_(self.time_embed, std=0.02)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def set_instructions(self, instructions: list[str], embeddings: np.ndarray) -> None:
        self.instructions = list(instructions)
        self.instruction_table = torch.as_tensor(embeddings, dtype=torch.float32).clone()

    def embed(self, instructions: list[str]) -> torch.Tensor:
        self.instructions, self.instruction_table, emb = lookup_embeddings(
            instructions, self.instructions, self.instruction_table)
        return emb

    def forward(self, clips: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """clips (B, L, H, W, 3) uint8 or float in [-1, 1]; text (B, text_dim) -> logits (B,)."""
        c = self.config
        if clips.ndim != 5 or tuple(clips.shape[1:]) != (c.clip_length, c.image_size, c.image_size, 3):
            raise ValueError(f"clips must be (B, {c.clip_length}, {c.image_size}, {c.image_size}, 3), "
                             f"got {tuple(clips.shape)}")
        b = clips.shape[0]
        x = clips.flatten(0, 1).permute(0, 3, 1, 2).float()  # (B*L, 3, H, W)
        if clips.dtype == torch.uint8:
            x = x / 127.5 - 1.0
        f = self.frame_proj(self.encoder(x).flatten(1))  # (B*L, frame_dim)
        f = f.view(b, c.clip_length, c.frame_dim) + self.time_embed  # (B, L, frame_dim)
        h = self.clip_proj(f.flatten(1))  # (B, hidden)
        scale, shift = self.film(text).chunk(2, dim=-1)
        return self.head(h * (1 + scale) + shift).squeeze(-1)  # (B,)

    # ------------------------------------------------------------------ persistence
    def checkpoint_config(self, threshold: float) -> dict[str, Any]:
        return {"kind": "success-classifier", "model": self.config.to_dict(), "instructions": self.instructions,
                "threshold": threshold}

    @classmethod
    def from_checkpoint(cls, directory: str) -> tuple[SuccessClassifier, dict[str, Any], dict[str, Any]]:
        """(model, config.json, manifest.json) of a ``success-classifier`` checkpoint."""
        from wmpo.utils.checkpoint import load_checkpoint

        tensors, config, manifest = load_checkpoint(directory)
        if config.get("kind") != "success-classifier":
            raise CheckpointError(f"{directory} is a {config.get('kind')!r} checkpoint, not a success-classifier")
        try:
            model = cls(SuccessClassifierConfig(**config["model"]), config.get("instructions", []))
            model.load_state_dict(tensors)
        except (TypeError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"success-classifier checkpoint {directory} does not match this code: {e}") from e
        return model.eval(), config, manifest
