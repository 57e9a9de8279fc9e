"""Typed configs declared once: a dataclass field carries its bounds and its documentation.

`bounded(default, ge=1, le=64, doc=...)` is a dataclass field whose metadata says what values
are valid; `check_bounds(cfg)` checks every such field and names each bad one with what it
must be. The same metadata builds request schemas in the services (the trainer's job schema
is derived from `wmpo.rl.job.GRPOJobConfig`), so a bound is written in one place.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

BOUND_KEYS = ("ge", "gt", "le", "lt", "min_len", "max_len", "choices", "flag", "doc")


def bounded(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, min_len: int | None = None, max_len: int | None = None,
            choices: Sequence[str] | None = None, flag: str | None = None, doc: str = "") -> Any:
    """A dataclass field with bounds (numbers: ge/gt/le/lt; lists: min_len/max_len; strings:
    choices), the CLI flag that sets it (named in errors beside the field) and a description."""
    values = {"ge": ge, "gt": gt, "le": le, "lt": lt, "min_len": min_len, "max_len": max_len,
              "choices": tuple(choices) if choices is not None else None, "flag": flag, "doc": doc}
    metadata = {k: v for k, v in values.items() if v is not None and v != ""}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _problem(value: Any, m: dict[str, Any]) -> str | None:
    if "choices" in m and value not in m["choices"]:
        return f"must be one of {', '.join(m['choices'])}, got {value!r}"
    if "min_len" in m and len(value) < m["min_len"]:
        return f"needs at least {m['min_len']} item(s), got {len(value)}"
    if "max_len" in m and len(value) > m["max_len"]:
        return f"takes at most {m['max_len']} items, got {len(value)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    lo = f"[{m['ge']}" if "ge" in m else f"({m['gt']}" if "gt" in m else "(-inf"
    hi = f"{m['le']}]" if "le" in m else f"{m['lt']})" if "lt" in m else "inf)"
    ok = (("ge" not in m or value >= m["ge"]) and ("gt" not in m or value > m["gt"])
          and ("le" not in m or value <= m["le"]) and ("lt" not in m or value < m["lt"]))
    return None if ok else f"must be in {lo}, {hi}, got {value}"


def check_bounds(cfg: Any) -> list[str]:
    """`field (--flag): must be ...` for every bounded field of the dataclass `cfg` out of bounds."""
    problems = []
    for f in dataclasses.fields(cfg):
        if f.metadata and (problem := _problem(getattr(cfg, f.name), dict(f.metadata))):
            flag = f" ({f.metadata['flag']})" if "flag" in f.metadata else ""
            problems.append(f"{f.name}{flag}: {problem}")
    return problems
