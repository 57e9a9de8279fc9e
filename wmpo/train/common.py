"""Shared pieces of the training loops: LR schedule, JSONL logs, resumable training state."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from wmpo.data.episodes import atomic_write_bytes


def cosine_lr(step: int, base: float, total: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class JsonlLog:
    """Append-only JSON-lines log that a background run can be followed with ``tail -f``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.time()

    def write(self, **record: Any) -> None:
        record.setdefault("elapsed", round(time.time() - self.t0, 2))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def save_train_state(path: Path, **state: Any) -> None:
    """Atomically save a resumable training state (models, optimizers, RNG, step)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def load_train_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, weights_only=False)  # our own file, written by save_train_state
