"""Fixtures for the judge service tests: a tiny success classifier trained here on real MetaWorld.

Once per session: a few real episodes of button-press-topdown-v3 are collected (scripted
expert: successes that end on the success frame; random walk: failures), and a `tiny`
classifier is trained on them for a few steps (as tests/train does). Serving tests need a
real model with real frames, not a good one: decisions that must come out a certain way
use a threshold placed between two videos' measured scores.

`CountingJudge` wraps the real classifier to count batched calls and, with a gate, to hold
a batch inside the model while a test looks at the queue; the computation is never replaced.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.judge.settings import JudgeSettings
from wmpo.judge.success import SuccessJudge, Verdict

KEY = "judge-key-0123456789abcdef"
INSTRUCTION = "press the button from the top"
# A world-model training run shares this machine: keep torch on one thread.
torch.set_num_threads(1)


@dataclass(frozen=True)
class Videos:
    successes: list[np.ndarray]  # (T, 64, 64, 3) uint8, scripted expert, end on success
    failures: list[np.ndarray]  # random walk, no success
    instruction: str

    @property
    def all(self) -> list[np.ndarray]:
        return [*self.successes, *self.failures]


@pytest.fixture(scope="session")
def judge_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wmpo.data.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("judge-service")
    task = ["button-press-topdown-v3"]
    collect(
        CollectConfig(out=str(root / "good"), tasks=task, source="expert", episodes=2, workers=1),
        progress=False,
    )
    collect(
        CollectConfig(
            out=str(root / "bad"),
            tasks=task,
            source="random-walk",
            episodes=2,
            max_steps=40,
            seed_start=500,
            workers=1,
        ),
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def classifier_dir(judge_data: Path) -> Path:
    from wmpo.train.success_classifier import JudgeTrainConfig, train_success_classifier

    cfg = JudgeTrainConfig(
        data=[str(judge_data / "good"), str(judge_data / "bad")],
        val_data=[str(judge_data / "good")],
        out=str(judge_data / "classifier"),
        preset="tiny",
        steps=6,
        batch_size=4,
        recon_prob=0.0,
        log_every=3,
        save_every=6,
    )
    train_success_classifier(cfg, progress=False)
    return judge_data / "classifier"


@pytest.fixture(scope="session")
def classifier(classifier_dir: Path) -> SuccessJudge:
    return SuccessJudge.load(str(classifier_dir))


@pytest.fixture(scope="session")
def videos(judge_data: Path) -> Videos:
    from wmpo.data.episodes import EpisodeDataset

    good = EpisodeDataset.load(judge_data / "good")
    bad = EpisodeDataset.load(judge_data / "bad")
    ok = [good.episode(i) for i in range(len(good.episodes))]
    ko = [bad.episode(i) for i in range(len(bad.episodes))]
    assert all(e.meta["instruction"] == INSTRUCTION for e in ok + ko)
    return Videos([e.frames for e in ok], [e.frames for e in ko], INSTRUCTION)


class CountingJudge:
    """The real classifier, with judge_many calls counted and optionally held at a gate."""

    def __init__(self, inner: SuccessJudge, gated: bool = False) -> None:
        self.inner = inner
        self.model = inner.model
        self.config = inner.config
        self.threshold = inner.threshold
        self.calls: list[int] = []  # videos per judge_many call
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = False
        if not gated:
            self.gate.set()

    def judge_many(self, videos: list[np.ndarray], *args: Any, **kwargs: Any) -> list[Verdict]:
        self.calls.append(len(videos))
        self.entered.set()
        assert self.gate.wait(10), "test gate never opened"
        if self.fail:
            raise RuntimeError("secret backend detail at /srv/judge.py:42")
        return self.inner.judge_many(videos, *args, **kwargs)

    def provenance(self) -> dict[str, Any]:
        return self.inner.provenance()


def settings(**overrides: Any) -> JudgeSettings:
    values: dict[str, Any] = {"api_keys": KEY, "max_wait_ms": 20.0, "checkpoint": ""}
    values.update(overrides)
    return JudgeSettings(**values)


@dataclass(frozen=True)
class Split:
    """Two real videos and a threshold between their scores: `high` passes, `low` does not."""

    high: np.ndarray
    low: np.ndarray
    threshold: float


@pytest.fixture(scope="session")
def split(classifier: SuccessJudge, videos: Videos) -> Split:
    verdicts = classifier.judge_many(videos.all, [INSTRUCTION] * len(videos.all))
    scores = [v.score for v in verdicts]
    hi, lo = int(np.argmax(scores)), int(np.argmin(scores))
    assert scores[hi] > scores[lo], "every video scores the same"
    return Split(videos.all[hi], videos.all[lo], (scores[hi] + scores[lo]) / 2)
