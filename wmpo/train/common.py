"""Shared pieces of the training loops: LR schedule, JSONL logs, resumable training state."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.data.episodes import atomic_write_bytes


def cosine_lr(step: int, base: float, total: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (schedules, GRPO's KL backtracking)."""
    for g in opt.param_groups:
        g["lr"] = lr


class JsonlLog:
    """Append-only JSON-lines log that a background run can be followed with ``tail -f``; each
    record gets the seconds since the log was opened, unless ``elapsed`` is off."""

    def __init__(self, path: Path, elapsed: bool = True) -> None:
        self.path = path
        self.t0 = time.time() if elapsed else None

    def write(self, **record: Any) -> None:
        if self.t0 is not None:
            record.setdefault("elapsed", round(time.time() - self.t0, 2))
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def save_train_state(path: Path, **state: Any) -> None:
    """Atomically save a resumable training state (models, optimizers, RNG, step)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


# What a training state may hold besides tensors and plain Python values: numpy scalars (metrics
# in the history). Nothing else is unpickled, so a file planted on a shared volume cannot run code.
_STATE_GLOBALS: list[Any] = [np._core.multiarray.scalar, np.dtype] + [
    type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)
]


def load_train_state(path: Path) -> dict[str, Any] | None:
    """The state `save_train_state` wrote, loaded with torch's weights-only unpickler."""
    if not path.exists():
        return None
    with torch.serialization.safe_globals(_STATE_GLOBALS):
        return torch.load(path, weights_only=True)


def wsd_lr(step: int, base: float, total: int, warmup: int, decay_frac: float = 0.2) -> float:
    """Warmup-stable-decay: linear warmup, constant ``base``, then a cosine decay to zero over
    the last ``decay_frac`` of ``total``. Made for open-ended runs: until the decay starts the
    schedule does not depend on ``total``, so a run can be extended by raising it."""
    if step < warmup:
        return base * (step + 1) / warmup
    decay_start = total - int(decay_frac * total)
    if step < decay_start:
        return base
    progress = (step - decay_start) / max(1, total - decay_start)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
