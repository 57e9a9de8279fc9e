"""Input checks the services share, each a clear InvalidArgument (400 / INVALID_ARGUMENT)
naming the field: so the judge and the optimizer refuse the same mistakes in the same words.
(The simulator's engine keeps its own, older copies of the dtype and finite checks.)"""

from __future__ import annotations

import numpy as np

from services.common.errors import InvalidArgument


def require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgument(message)


def check_dtype(array: np.ndarray, dtype: type[np.generic], name: str) -> None:
    expected = np.dtype(dtype)
    require(array.dtype == expected, f"{name}: dtype must be {expected.name}, got {array.dtype.name}")


def check_finite(array: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidArgument(
            f"{name}: {int(bad.sum())} non-finite values (NaN or inf), first at index {first}"
        )


def check_rgb_frames(frames: np.ndarray, name: str, shape: str = "(T, H, W, 3)") -> None:
    """uint8 (n, H, W, 3); `shape` is how the message names the expected shape."""
    check_dtype(frames, np.uint8, name)
    require(
        frames.ndim == 4 and frames.shape[-1] == 3,
        f"{name}: expected RGB frames {shape}, got shape {frames.shape}",
    )


def check_instruction(instruction: str, limit: int, example: str) -> None:
    """A task in natural language: required, at most `limit` characters."""
    require(
        isinstance(instruction, str) and bool(instruction.strip()),
        f"instruction is required: the task in natural language, e.g. {example!r}",
    )
    require(
        len(instruction) <= limit,
        f"instruction is {len(instruction)} characters, at most {limit}",
    )
