"""Bounds declared once on a config's fields (wmpo.utils.config): checked with messages naming the
field and its flag, and the same bounds in the trainer's job schema."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wmpo.errors import ConfigError
from wmpo.rl.job import GRPOJobConfig
from wmpo.utils.config import bounded, check_bounds


@dataclass
class Toy:
    n: int = bounded(1, ge=1, le=8, flag="--n", doc="a count")
    rate: float = bounded(0.5, gt=0, lt=1)
    names: list[str] = bounded(factory=lambda: ["a"], min_len=1, max_len=2)
    mode: str = bounded("x", choices=("x", "y"))
    free: int = 3


def test_every_bound_is_checked_and_named() -> None:
    assert check_bounds(Toy()) == []
    bad = Toy(n=0, rate=1.0, names=[], mode="z", free=-5)
    assert check_bounds(bad) == [
        "n (--n): must be in [1, 8], got 0",
        "rate: must be in (0, 1), got 1.0",
        "names: needs at least 1 item(s), got 0",
        "mode: must be one of x, y, got 'z'",
    ]
    assert check_bounds(Toy(rate=float("nan"))) == ["rate: must be a finite number, got nan"]
    assert check_bounds(Toy(names=["a", "b", "c"])) == ["names: takes at most 2 items, got 3"]


def test_the_job_config_and_the_trainer_schema_share_their_bounds(tmp_path) -> None:
    from services.trainer.runtime import JobSpec

    cfg = GRPOJobConfig(policy="p", out=str(tmp_path), group_size=65, environment="mars", world_model="w",
                        judge="j")
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert "group_size (--group-size): must be in [2, 64], got 65" in str(err.value)
    assert "environment (--environment): must be one of imagination, real, got 'mars'" in str(err.value)
    schema = JobSpec.model_json_schema()["properties"]
    assert (schema["group_size"]["minimum"], schema["group_size"]["maximum"]) == (2, 64)
    assert schema["environment"]["enum"] == ["imagination", "real"]
    assert schema["group_size"]["description"] == "Rollouts per group (G)."
