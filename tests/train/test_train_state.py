"""Training states load with torch's weights-only unpickler: a file planted where a trainer
resumes from (a shared volume) cannot run code, and our own states still load."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from wmpo.train.common import load_train_state, save_train_state


class Planted:
    """Unpickling this would create a file (what an attacker would make run a shell)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def test_our_own_state_round_trips(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    history = [{"step": 1, "reward": np.float64(0.5), "kept": np.int64(3), "ok": np.bool_(True),
                "per_task": {"t": np.float32(0.25)}, "seconds": {"step": 1.5}}]
    path = tmp_path / "train_state.pt"
    save_train_state(path, model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                     step=1, history=history, method="grpo")
    state = load_train_state(path)
    assert state is not None and state["step"] == 1 and state["history"] == history
    assert torch.equal(state["model"]["weight"], model.state_dict()["weight"])
    assert torch.equal(state["gen"], gen.get_state())
    opt.load_state_dict(state["opt"])


def test_a_planted_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "train_state.pt"
    torch.save({"step": 1, "payload": Planted(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_train_state(path)
    assert not marker.exists()
