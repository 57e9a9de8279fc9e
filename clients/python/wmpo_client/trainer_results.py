"""What the trainer clients return, and the job spec fields both transports send.

The HTTP and gRPC trainer clients (`wmpo_client.trainer_http`,
`wmpo_client.trainer_grpc`) return these same frozen dataclasses, parsed from
the JSON form of a job (`job_from_json`); the gRPC client first turns messages
into that form. Per-step metrics stay dicts: the trainer reports reward,
imagined_success, dnv_flags, groups_imagined/kept/discarded, kl_to_start,
seconds {imagine, judge, update, step}, imagined_frames_per_s, and more as
the trainer grows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wmpo_client.errors import SimulatorError

JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# Optional fields of a job spec (the service fills in the rest); `policy` is required.
SPEC_FIELDS: tuple[str, ...] = (
    "tasks",
    "steps",
    "groups_per_step",
    "group_size",
    "chunks",
    "temperature",
    "lr",
    "epochs",
    "minibatch",
    "max_sampling_rounds",
    "target_kl",
    "verify",
    "max_grad_norm",
    "seed",
    "eval_episodes",
    "eval_workers",
    "simulator_url",
    "judge_url",
    "endpoint",
    "environment",
    "real_budget",
    "reward",
    "task_sampling",
)
# Integer-valued config and metric keys (gRPC's Struct carries every number as a double).
INT_KEYS = frozenset(
    {
        "steps",
        "groups_per_step",
        "group_size",
        "chunks",
        "epochs",
        "minibatch",
        "max_sampling_rounds",
        "seed",
        "eval_episodes",
        "eval_workers",
        "real_budget",
        "step",
        "groups_imagined",
        "groups_kept",
        "groups_discarded",
        "dnv_flags",
        "dnv_judged_successes",
        "chunks_trained",
    }
)


@dataclass(frozen=True)
class TrainerJob:
    """A job as the service reports it."""

    job_id: str
    state: JobStateName
    step: int  # steps completed (each one checkpointed)
    steps: int
    config: dict[str, Any]  # the job as it runs, defaults and URLs resolved
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None  # why it failed
    cancel_requested: bool = False
    attempts: int = 0  # times a worker started or resumed it
    restarts: int = 0  # takeovers after a worker died mid-job
    worker: str | None = None
    resumed_from_step: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)  # per step; empty in lists
    last_metrics: dict[str, Any] | None = None
    eval_before: dict[str, Any] | None = None  # real-simulator evaluation, if asked
    eval_after: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """The job has ended (succeeded, failed or cancelled)."""
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class JobEvent:
    """One event of a progress stream: a completed step, a state change, or the end."""

    kind: Literal["step", "state", "end"]
    job_id: str
    metrics: dict[str, Any] | None = None  # kind "step"
    job: TrainerJob | None = None  # kinds "state" and "end"


@dataclass(frozen=True)
class CheckpointFile:
    name: str  # model.safetensors, config.json or manifest.json
    size: int
    sha256: str


@dataclass(frozen=True)
class Checkpoint:
    job_id: str
    step: int
    files: list[CheckpointFile]


def job_from_json(data: dict[str, Any]) -> TrainerJob:
    names = TrainerJob.__dataclass_fields__
    return TrainerJob(**{k: v for k, v in data.items() if k in names})


def checkpoint_from_json(data: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        job_id=data["job_id"],
        step=int(data["step"]),
        files=[CheckpointFile(f["name"], int(f["size"]), f["sha256"]) for f in data["files"]],
    )


def job_spec(policy: str, job_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The JSON job spec; a client-side job id when none is given, so a retried submit is
    idempotent. Unknown options are refused here rather than by the server."""
    unknown = sorted(set(options) - set(SPEC_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown job option(s) {', '.join(unknown)}; known: {', '.join(SPEC_FIELDS)}"
        )
    spec = {k: v for k, v in options.items() if v is not None}
    return {"job_id": job_id or f"job-{uuid.uuid4().hex[:16]}", "policy": policy, **spec}


def save_checkpoint_files(
    dest: str | Path, checkpoint: Checkpoint, fetch: Callable[[str], bytes]
) -> list[Path]:
    """Write every file of `checkpoint` into `dest`, each checked against its listed sha256
    and written atomically. A file replaced by a newer step between the listing and the
    download fails the check: list and download again."""
    directory = Path(dest)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in checkpoint.files:
        data = fetch(f.name)
        digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256:
            raise SimulatorError(
                "ABORTED",
                f"{f.name} changed while downloading (the job wrote a newer step); download again",
            )
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{f.name}.")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, directory / f.name)
        paths.append(directory / f.name)
    return paths


class JobMethods:
    """What both trainer clients build from their transport calls (`stream`, `get`,
    `checkpoint`, `download_file`)."""

    def stream(self, job_id: str, after_step: int = 0) -> Iterator[JobEvent]:
        raise NotImplementedError

    def get(self, job_id: str) -> TrainerJob:
        raise NotImplementedError

    def checkpoint(self, job_id: str) -> Checkpoint:
        raise NotImplementedError

    def download_file(self, job_id: str, name: str) -> bytes:
        raise NotImplementedError

    def wait(self, job_id: str) -> TrainerJob:
        """Follow the stream until the job ends; the final job with every step's metrics."""
        for event in self.stream(job_id):
            if event.kind == "end":
                break
        return self.get(job_id)

    def download_checkpoint(self, job_id: str, dest: str | Path) -> list[Path]:
        """Save the job's policy checkpoint into `dest` (loadable like any wmpo checkpoint)."""
        checkpoint = self.checkpoint(job_id)
        return save_checkpoint_files(dest, checkpoint, lambda name: self.download_file(job_id, name))
