"""The judge engine: the success classifier behind one batching loop, and the VLM client.

Classifier work: every request (one video, or a group's rollouts and replays)
becomes one job in a pending queue. A background loop takes jobs until they
hold `max_batch_size` videos or `max_batch_clips` clips, waiting at most
`max_wait_ms` after the oldest job arrived for the batch to fill, keeps the
jobs whose decision threshold matches the oldest job's, and runs ONE
`SuccessJudge.judge_many` over all their videos: every clip of every video of
every request in one batched forward pass. Verdicts go back to per-job
futures. A job is never split (a group bigger than the limits runs as one
batch on its own); jobs with another threshold wait for a later batch, as the
simulator does with chunk lengths. The clip budget bounds memory: judge_many
materializes every clip (L frames each, so about L times the frames' bytes).

The loop, the model thread (one dedicated worker: calls never overlap, the
event loop stays free), admission, cancellation and shutdown are the shared
`services.common.batching.BatchingEngine`'s; this module supplies how jobs are
grouped (same threshold, the video and clip budgets) and how a batch runs.

VLM work is not batched here: each video is one call to the OpenAI-compatible
endpoint (which batches on its side, e.g. vLLM's continuous batching), at most
`vlm_concurrency` in flight, over one shared HTTP connection pool.

Admission is bounded in videos: a request reserves its videos (queued or being
judged) up front and gets `ResourceExhausted` (429 / RESOURCE_EXHAUSTED) past
`max_queued_videos`. A cancelled caller's queued job is dropped; a job already
in a running batch finishes and its result is discarded.

Instruction embeddings: the classifier embeds an instruction it has not seen
with MiniLM and appends it to its table; the table is trimmed back to the
checkpoint's own instructions when callers' free text has grown it past
`_MAX_EXTRA_INSTRUCTIONS`, so arbitrary instructions cannot grow memory forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from services.common.batching import (
    BatchingConfig,
    BatchingEngine,
    BatchStats,
    Reservation,
    Wording,
    check_engine_config,
    engine_config_from_settings,
)
from services.common.checks import check_rgb_frames, require
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.logging import request_id_var
from services.common.metrics import ServiceMetrics
from wmpo.judge.success import SuccessJudge, Verdict
from wmpo.judge.vlm import VLMJudge, VLMJudgeConfig, VLMJudgeError, VLMVerdict

log = logging.getLogger("wmpo.judge.engine")

Kind = Literal["classifier", "vlm"]
KINDS: tuple[Kind, ...] = ("classifier", "vlm")
DEFAULT_CLIP_TEMPERATURE = 0.25
# Largest frame_stride a request may name (the classifier needs a divisor of its own).
MAX_FRAME_STRIDE = 64
# Largest frame side sent to the VLM (its client PNG-encodes every sampled frame).
MAX_VLM_FRAME_SIDE = 1024
_MAX_EXTRA_INSTRUCTIONS = 4096


# ------------------------------------------------------------- validation
# Checks that need no model; HTTP models and the gRPC servicer both call them.


def check_video(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    """A video: uint8 (T, H, W, 3) with T, H, W >= 1."""
    check_rgb_frames(frames, name)
    require(frames.shape[0] >= 1, f"{name}: the video has no frames (T=0)")
    require(
        frames.shape[1] >= 1 and frames.shape[2] >= 1,
        f"{name}: frames must have a non-zero height and width, got shape {frames.shape}",
    )
    return frames


def check_kind(kind: str) -> Kind:
    require(kind in KINDS, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind  # type: ignore[return-value]


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class JudgeEngineConfig:
    max_batch_size: int = 32  # videos per classifier call (a job is never split)
    max_wait_ms: float = 5.0  # how long the oldest job waits for the batch to fill
    max_queued_videos: int = 256  # admitted videos (queued or running) before 429
    max_video_frames: int = 1024  # frames of one video
    vlm_concurrency: int = 8  # VLM calls in flight
    max_batch_clips: int = 4096  # clips per classifier call (a job is never split)

    def __post_init__(self) -> None:
        check_engine_config(self)

    @classmethod
    def from_settings(cls, settings: Any) -> JudgeEngineConfig:
        return engine_config_from_settings(cls, settings)


def vlm_config_from_settings(settings: Any) -> VLMJudgeConfig | None:
    """The VLM client's config from `JudgeSettings`, or None without a VLM URL."""
    if not settings.vlm_url:
        return None
    key = settings.vlm_api_key.get_secret_value() if settings.vlm_api_key else ""
    return VLMJudgeConfig(
        base_url=settings.vlm_url,
        model=settings.vlm_model,
        api_key=key,
        samples=settings.vlm_samples,
        votes_needed=settings.vlm_votes_needed,
        timeout_s=settings.vlm_timeout_s,
    )


# ------------------------------------------------------------ work items


@dataclass(eq=False)
class _Job:
    """One request's videos waiting for a classifier batch."""

    videos: list[np.ndarray]
    instructions: list[str]
    strides: list[int]
    threshold: float
    clips: int  # clips its videos make (the batch's memory)


@dataclass
class ClassifierResult:
    """The verdicts of one job, and the batch it ran in."""

    verdicts: list[Verdict]
    queue_s: float  # wait before its batch started
    model_s: float  # time of the batched call
    batch_videos: int  # videos in that call (this job's and others')
    batch_jobs: int  # requests in that call


@dataclass
class EngineStats(BatchStats):
    """The batching engine's counts under the judge's names, and the VLM calls."""

    vlm_calls: int = 0

    @property
    def videos(self) -> int:  # videos judged by the classifier
        return self.units

    @property
    def jobs(self) -> int:  # classifier requests served
        return self.items

    @property
    def largest_batch_jobs(self) -> int:  # most requests in one call
        return self.largest_batch_items

    @property
    def dropped_jobs(self) -> int:  # removed from the queue because their caller went away
        return self.dropped_items


_WORDING = Wording("judge", "videos", "queued or being judged", "WMPO_MAX_QUEUED_VIDEOS")


# ---------------------------------------------------------------- engine


class JudgeEngine:
    """Owns the classifier (optional) and the VLM client (optional).

    `start()` in the event loop that serves requests, `stop()` on shutdown.
    """

    def __init__(
        self,
        classifier: SuccessJudge | None,
        vlm_config: VLMJudgeConfig | None = None,
        config: JudgeEngineConfig | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        if vlm_config is not None:
            vlm_config.validate()
        self.classifier = classifier
        self.vlm_config = vlm_config
        self.config = config or JudgeEngineConfig()
        self.metrics = metrics
        self.stats = EngineStats()
        cfg = self.config
        self._batcher: BatchingEngine[_Job, list[Verdict]] = BatchingEngine(
            self._judge_many,
            BatchingConfig(cfg.max_batch_size, cfg.max_wait_ms, cfg.max_queued_videos),
            _WORDING,
            size=lambda job: len(job.videos),
            may_join=self._may_join,
            full=lambda jobs: sum(j.clips for j in jobs) >= cfg.max_batch_clips,
            metrics=metrics,
            stats=self.stats,
        )
        self._vlm: VLMJudge | None = None
        self._vlm_http: httpx.AsyncClient | None = None
        self._vlm_slots = asyncio.Semaphore(self.config.vlm_concurrency)
        self._base_instructions = (
            len(classifier.model.instructions) if classifier is not None else 0
        )

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._batcher.started:
            return
        self._vlm_slots = asyncio.Semaphore(self.config.vlm_concurrency)
        if self.vlm_config is not None:
            self._vlm_http = httpx.AsyncClient(timeout=self.vlm_config.timeout_s)
            self._vlm = VLMJudge(self.vlm_config, self._vlm_http)
        await self._batcher.start()

    async def stop(self) -> None:
        """Refuse new work, fail queued jobs, let the running batch finish, free the thread."""
        await self._batcher.stop()
        if self._vlm_http is not None:
            await self._vlm_http.aclose()
            self._vlm_http = None
            self._vlm = None

    @property
    def running(self) -> bool:
        return self._batcher.running

    # ------------------------------------------------------------ facts
    @property
    def kinds(self) -> list[Kind]:
        """The judge kinds this deployment can serve."""
        out: list[Kind] = []
        if self.classifier is not None:
            out.append("classifier")
        if self.vlm_config is not None:
            out.append("vlm")
        return out

    @property
    def default_kind(self) -> Kind:
        return "classifier" if self.classifier is not None or self.vlm_config is None else "vlm"

    def provenance(self, kind: Kind) -> dict[str, str]:
        """The judge's record (checkpoint hash, threshold, ... / VLM model, samples, ...)."""
        if kind == "classifier":
            raw = self._require_classifier().provenance()
        else:
            raw = self._require_vlm_config_judge().provenance()
        # Strings only: the proto map and the HTTP body carry the same record.
        return {
            k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in raw.items()
        }

    def _require_classifier(self) -> SuccessJudge:
        if self.classifier is None:
            raise FailedPrecondition(
                "no success classifier loaded: this judge runs without a checkpoint "
                "(set WMPO_CHECKPOINT to a success-classifier directory); use kind=vlm"
            )
        return self.classifier

    def _require_vlm_config_judge(self) -> VLMJudge:
        if self.vlm_config is None:
            raise FailedPrecondition(
                "no VLM endpoint configured: set WMPO_VLM_URL (an OpenAI-compatible endpoint, "
                "e.g. vLLM's http://HOST:8000/v1) to use kind=vlm"
            )
        # A VLMJudge without a client only for provenance; calls use the shared pool.
        return self._vlm or VLMJudge(self.vlm_config)

    def require_kind(self, kind: str) -> Kind:
        """The kind, checked to be known and configured here."""
        checked = check_kind(kind)
        if checked == "classifier":
            self._require_classifier()
        else:
            self._require_vlm_config_judge()
        return checked

    # ------------------------------------------------------------ validation
    def check_video(
        self, frames: np.ndarray, kind: Kind, stride: int, name: str = "frames"
    ) -> None:
        """Model-dependent checks on top of the module's `check_video`."""
        check_video(frames, name)
        limit = self.config.max_video_frames
        require(
            frames.shape[0] <= limit,
            f"{name}: {frames.shape[0]} frames exceed the limit of {limit} per video "
            "(WMPO_MAX_VIDEO_FRAMES)",
        )
        if kind == "classifier":
            size = self._require_classifier().config.image_size
            require(
                frames.shape[1:3] == (size, size),
                f"{name}: the classifier takes {size}x{size} frames, got "
                f"{frames.shape[1]}x{frames.shape[2]} (resize before sending)",
            )
        else:
            side = MAX_VLM_FRAME_SIDE
            require(
                max(frames.shape[1:3]) <= side,
                f"{name}: frames of {frames.shape[1]}x{frames.shape[2]} exceed the VLM judge's "
                f"limit of {side} pixels a side (resize before sending)",
            )

    def check_stride(self, stride: int, kind: Kind) -> None:
        require(
            1 <= stride <= MAX_FRAME_STRIDE,
            f"frame_stride={stride} must be between 1 and {MAX_FRAME_STRIDE} (env steps between "
            "frames: 1 for real env frames, the world model's stride for imagined ones)",
        )
        if kind == "classifier":
            own = self._require_classifier().config.frame_stride
            require(
                own % stride == 0,
                f"frame_stride={stride} must divide the classifier's frame stride {own} "
                f"(allowed: {', '.join(str(s) for s in range(1, own + 1) if own % s == 0)})",
            )

    def clip_count(self, frames: np.ndarray, stride: int) -> int:
        """Clips the classifier cuts from a video (T, ...) whose frames are `stride` steps apart."""
        self.check_stride(stride, "classifier")
        config = self._require_classifier().config
        step = config.frame_stride // stride
        kept = len(range((len(frames) - 1) % step, len(frames), step))
        return max(kept - config.clip_length + 1, 1)

    def resolve_threshold(self, threshold: float | None, kind: Kind) -> float | None:
        """The threshold to apply: the request's (checked) or the checkpoint's; None for vlm."""
        if kind == "vlm":
            require(
                threshold is None,
                "threshold applies to kind=classifier only (the VLM decides by votes)",
            )
            return None
        if threshold is None:
            return self._require_classifier().threshold
        require(
            math.isfinite(threshold) and 0.0 <= threshold <= 1.0,
            f"threshold must be a number in [0, 1], got {threshold}",
        )
        return float(threshold)

    @staticmethod
    def resolve_temperature(temperature: float | None, kind: Kind) -> float | None:
        if kind == "vlm":
            require(
                temperature is None,
                "clip_temperature applies to kind=classifier only (the VLM gives no clip scores)",
            )
            return None
        if temperature is None:
            return DEFAULT_CLIP_TEMPERATURE
        require(
            math.isfinite(temperature) and temperature > 0,
            f"clip_temperature must be a finite number > 0, got {temperature}",
        )
        return float(temperature)

    # ------------------------------------------------------------ admission
    def reserve(self, videos: int) -> Reservation:
        """Admit `videos` or raise; the caller must `release()` the reservation."""
        return self._batcher.reserve(videos)

    @contextlib.contextmanager
    def admit(self, videos: int) -> Iterator[Reservation]:
        with self._batcher.admit(videos) as reservation:
            yield reservation

    @property
    def admitted_videos(self) -> int:
        return self._batcher.admitted

    @property
    def queued_videos(self) -> int:
        return self._batcher.queued

    @property
    def queued_clips(self) -> int:
        return sum(j.clips for j in self._batcher.queued_payloads())

    # ------------------------------------------------------------ classifier
    async def classify(
        self,
        videos: list[np.ndarray],
        instructions: list[str],
        strides: list[int],
        threshold: float,
    ) -> ClassifierResult:
        """Judge videos with the classifier, batched with other requests' videos.

        The caller holds a reservation and has run the checks above (videos are
        not re-validated here: one bad video would fail every job of its batch).
        """
        self._require_classifier()
        if not self.running:
            raise Unavailable("the judge is not running (starting up or shutting down)")
        if not (len(videos) == len(instructions) == len(strides)) or not videos:
            raise InvalidArgument(
                f"need one instruction and stride per video, got {len(videos)} videos, "
                f"{len(instructions)} instructions, {len(strides)} strides"
            )
        job = _Job(
            videos=videos,
            instructions=instructions,
            strides=strides,
            threshold=threshold,
            clips=sum(self.clip_count(v, s) for v, s in zip(videos, strides, strict=True)),
        )
        (item,) = self._batcher.submit([job])
        (verdicts,) = await self._batcher.results([item])
        return ClassifierResult(
            verdicts, item.queue_s, item.model_s, item.batch_units, item.batch_items
        )

    def _may_join(self, batch: Sequence[_Job], job: _Job) -> bool:
        """A job joins a batch of the same threshold while the clips fit (the batching
        engine keeps the video budget and always takes the oldest job, whatever its size)."""
        return (
            job.threshold == batch[0].threshold
            and sum(j.clips for j in batch) + job.clips <= self.config.max_batch_clips
        )

    def _judge_many(self, jobs: list[_Job]) -> list[list[Verdict]]:
        """One `judge_many` over every video of the batch (on the model thread)."""
        judge = self._require_classifier()
        try:
            verdicts = judge.judge_many(
                [v for job in jobs for v in job.videos],
                [t for job in jobs for t in job.instructions],
                [s for job in jobs for s in job.strides],
                jobs[0].threshold,
            )
        finally:
            model = judge.model
            if len(model.instructions) > self._base_instructions + _MAX_EXTRA_INSTRUCTIONS:
                base = self._base_instructions
                model.instructions = model.instructions[:base]
                model.instruction_table = model.instruction_table[:base].clone()
        out, offset = [], 0
        for job in jobs:
            out.append(verdicts[offset : offset + len(job.videos)])
            offset += len(job.videos)
        return out

    # ------------------------------------------------------------ VLM
    async def vlm_judge(self, frames: np.ndarray, instruction: str, stride: int) -> VLMVerdict:
        """One video through the VLM endpoint (the caller holds a reservation)."""
        self._require_vlm_config_judge()
        if not self.running or self._vlm is None:
            raise Unavailable("the judge is not running (starting up or shutting down)")
        async with self._vlm_slots:
            self.stats.vlm_calls += 1
            try:
                return await self._vlm.judge(frames, instruction, stride)
            except VLMJudgeError as exc:
                # The details (URL, upstream body) go to the log, not to the caller.
                log.error("VLM judge call failed: %s", exc)
                where = f"details in the judge's log under request id {request_id_var.get()}"
                if "failed after" in str(exc):
                    # Timeouts, connection errors, 429/5xx left after the client's own
                    # retries: transient, so a 503 (and the work queue may try again).
                    raise Unavailable(
                        f"the VLM judge endpoint is not answering; retry later ({where})"
                    ) from None
                # Refused (a 4xx: unknown model, bad key) or answered nonsense: the
                # deployment's VLM configuration is wrong; retrying cannot help.
                raise FailedPrecondition(
                    "the VLM judge endpoint refused the request or answered in an unexpected "
                    f"form; check the judge's VLM settings ({where})"
                ) from None
