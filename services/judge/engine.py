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

Model calls run on one dedicated worker thread (a single-thread executor, as
in the simulator engine): calls never overlap, even when the awaiting task is
cancelled while a call runs, and the event loop stays free.

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
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from services.common.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    internal_message,
)
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


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgument(message)


def check_video(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    """A video: uint8 (T, H, W, 3) with T, H, W >= 1."""
    _require(frames.dtype == np.uint8, f"{name}: dtype must be uint8, got {frames.dtype.name}")
    _require(
        frames.ndim == 4 and frames.shape[-1] == 3,
        f"{name}: expected RGB frames (T, H, W, 3), got shape {frames.shape}",
    )
    _require(frames.shape[0] >= 1, f"{name}: the video has no frames (T=0)")
    _require(
        frames.shape[1] >= 1 and frames.shape[2] >= 1,
        f"{name}: frames must have a non-zero height and width, got shape {frames.shape}",
    )
    return frames


def check_kind(kind: str) -> Kind:
    _require(kind in KINDS, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
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
        problems = [
            f"{name}={getattr(self, name)} must be >= 1"
            for name in (
                "max_batch_size",
                "max_queued_videos",
                "max_video_frames",
                "vlm_concurrency",
                "max_batch_clips",
            )
            if getattr(self, name) < 1
        ]
        if self.max_wait_ms < 0:
            problems.append(f"max_wait_ms={self.max_wait_ms} must be >= 0")
        if problems:
            raise ValueError("invalid JudgeEngineConfig: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, settings: Any) -> JudgeEngineConfig:
        return cls(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queued_videos=settings.max_queued_videos,
            max_video_frames=settings.max_video_frames,
            vlm_concurrency=settings.vlm_concurrency,
            max_batch_clips=settings.max_batch_clips,
        )


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
    future: asyncio.Future[list[Verdict]]
    request_id: str | None
    enqueued_at: float
    clips: int = 0  # clips its videos make (the batch's memory)
    started: bool = False
    queue_s: float = 0.0
    model_s: float = 0.0
    batch_videos: int = 0
    batch_jobs: int = 0


@dataclass
class ClassifierResult:
    """The verdicts of one job, and the batch it ran in."""

    verdicts: list[Verdict]
    queue_s: float  # wait before its batch started
    model_s: float  # time of the batched call
    batch_videos: int  # videos in that call (this job's and others')
    batch_jobs: int  # requests in that call


class Reservation:
    """Admitted videos; release exactly once (idempotent)."""

    def __init__(self, engine: JudgeEngine, videos: int) -> None:
        self._engine = engine
        self.videos = videos
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._admitted -= self.videos


@dataclass
class EngineStats:
    model_calls: int = 0  # batched classifier calls
    videos: int = 0  # videos judged by the classifier
    jobs: int = 0  # classifier requests served
    largest_batch: int = 0  # most videos in one call
    largest_batch_jobs: int = 0  # most requests in one call
    dropped_jobs: int = 0  # removed from the queue because their caller went away
    vlm_calls: int = 0


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
        self._pending: collections.deque[_Job] = collections.deque()
        self._admitted = 0
        self._wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._vlm: VLMJudge | None = None
        self._vlm_http: httpx.AsyncClient | None = None
        self._vlm_slots = asyncio.Semaphore(self.config.vlm_concurrency)
        self._base_instructions = (
            len(classifier.model.instructions) if classifier is not None else 0
        )

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stopping = False
        self._wakeup = asyncio.Event()  # bound to the loop that runs the engine
        self._vlm_slots = asyncio.Semaphore(self.config.vlm_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wmpo-judge")
        if self.vlm_config is not None:
            self._vlm_http = httpx.AsyncClient(timeout=self.vlm_config.timeout_s)
            self._vlm = VLMJudge(self.vlm_config, self._vlm_http)
        self._loop_task = asyncio.create_task(self._run(), name="wmpo-judge-batcher")

    async def stop(self) -> None:
        """Refuse new work, fail queued jobs, let the running batch finish, free the thread."""
        if self._loop_task is None:
            return
        self._stopping = True
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(Unavailable("the judge is shutting down"))
        self._set_queue_depth()
        self._wakeup.set()
        await self._loop_task
        self._loop_task = None
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        if self._vlm_http is not None:
            await self._vlm_http.aclose()
            self._vlm_http = None
            self._vlm = None

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._stopping and not self._loop_task.done()

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
        _require(
            frames.shape[0] <= limit,
            f"{name}: {frames.shape[0]} frames exceed the limit of {limit} per video "
            "(WMPO_MAX_VIDEO_FRAMES)",
        )
        if kind == "classifier":
            size = self._require_classifier().config.image_size
            _require(
                frames.shape[1:3] == (size, size),
                f"{name}: the classifier takes {size}x{size} frames, got "
                f"{frames.shape[1]}x{frames.shape[2]} (resize before sending)",
            )
        else:
            side = MAX_VLM_FRAME_SIDE
            _require(
                max(frames.shape[1:3]) <= side,
                f"{name}: frames of {frames.shape[1]}x{frames.shape[2]} exceed the VLM judge's "
                f"limit of {side} pixels a side (resize before sending)",
            )

    def check_stride(self, stride: int, kind: Kind) -> None:
        _require(
            1 <= stride <= MAX_FRAME_STRIDE,
            f"frame_stride={stride} must be between 1 and {MAX_FRAME_STRIDE} (env steps between "
            "frames: 1 for real env frames, the world model's stride for imagined ones)",
        )
        if kind == "classifier":
            own = self._require_classifier().config.frame_stride
            _require(
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
            _require(
                threshold is None,
                "threshold applies to kind=classifier only (the VLM decides by votes)",
            )
            return None
        if threshold is None:
            return self._require_classifier().threshold
        _require(
            math.isfinite(threshold) and 0.0 <= threshold <= 1.0,
            f"threshold must be a number in [0, 1], got {threshold}",
        )
        return float(threshold)

    @staticmethod
    def resolve_temperature(temperature: float | None, kind: Kind) -> float | None:
        if kind == "vlm":
            _require(
                temperature is None,
                "clip_temperature applies to kind=classifier only (the VLM gives no clip scores)",
            )
            return None
        if temperature is None:
            return DEFAULT_CLIP_TEMPERATURE
        _require(
            math.isfinite(temperature) and temperature > 0,
            f"clip_temperature must be a finite number > 0, got {temperature}",
        )
        return float(temperature)

    # ------------------------------------------------------------ admission
    def reserve(self, videos: int) -> Reservation:
        """Admit `videos` or raise; the caller must `release()` the reservation."""
        if not self.running:
            raise Unavailable("the judge is not running (starting up or shutting down)")
        limit = self.config.max_queued_videos
        if videos > limit:
            raise InvalidArgument(
                f"{videos} videos in one request exceed the limit of {limit} "
                "(WMPO_MAX_QUEUED_VIDEOS); split the request"
            )
        if self._admitted + videos > limit:
            raise ResourceExhausted(
                f"judge busy: {self._admitted} videos queued or being judged, limit {limit}; "
                "retry later"
            )
        self._admitted += videos
        return Reservation(self, videos)

    @contextlib.contextmanager
    def admit(self, videos: int) -> Iterator[Reservation]:
        reservation = self.reserve(videos)
        try:
            yield reservation
        finally:
            reservation.release()

    @property
    def admitted_videos(self) -> int:
        return self._admitted

    @property
    def queued_videos(self) -> int:
        return sum(len(j.videos) for j in self._pending if not j.future.done())

    @property
    def queued_clips(self) -> int:
        return sum(j.clips for j in self._pending if not j.future.done())

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
        loop = asyncio.get_running_loop()
        job = _Job(
            videos=videos,
            instructions=instructions,
            strides=strides,
            threshold=threshold,
            future=loop.create_future(),
            request_id=request_id_var.get(),
            enqueued_at=time.perf_counter(),
            clips=sum(self.clip_count(v, s) for v, s in zip(videos, strides, strict=True)),
        )
        self._pending.append(job)
        self._set_queue_depth()
        self._wakeup.set()
        try:
            verdicts = await job.future
        except BaseException:
            self._drop(job)
            raise
        return ClassifierResult(
            verdicts, job.queue_s, job.model_s, job.batch_videos, job.batch_jobs
        )

    def _drop(self, job: _Job) -> None:
        """Remove a job that has not started (its caller went away or failed)."""
        if job.started:
            return
        before = len(self._pending)
        self._pending = collections.deque(j for j in self._pending if j is not job)
        self.stats.dropped_jobs += before - len(self._pending)
        if not job.future.done():
            job.future.cancel()
        self._set_queue_depth()

    def _set_queue_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queued_videos)

    def _take_batch(self) -> list[_Job]:
        """Jobs with the oldest job's threshold, up to max_batch_size videos and
        max_batch_clips clips (the first job always, whatever its size); the others keep
        their place in the queue."""
        batch: list[_Job] = []
        keep: collections.deque[_Job] = collections.deque()
        videos = clips = 0
        threshold: float | None = None
        for job in self._pending:
            if job.future.done():  # cancelled while queued
                continue
            if threshold is None:
                threshold = job.threshold
            fits = not batch or (
                videos + len(job.videos) <= self.config.max_batch_size
                and clips + job.clips <= self.config.max_batch_clips
            )
            if job.threshold == threshold and fits:
                batch.append(job)
                videos += len(job.videos)
                clips += job.clips
            else:
                keep.append(job)
        self._pending = keep
        self._set_queue_depth()
        return batch

    async def _run(self) -> None:
        max_wait = self.config.max_wait_ms / 1000
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Let the batch fill, up to max_wait after the oldest job arrived.
            deadline = self._pending[0].enqueued_at + max_wait
            while not self._stopping and (
                self.queued_videos < self.config.max_batch_size
                and self.queued_clips < self.config.max_batch_clips
            ):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    def _judge_many(
        self,
        videos: list[np.ndarray],
        instructions: list[str],
        strides: list[int],
        threshold: float,
    ) -> list[Verdict]:
        judge = self._require_classifier()
        try:
            return judge.judge_many(videos, instructions, strides, threshold)
        finally:
            model = judge.model
            if len(model.instructions) > self._base_instructions + _MAX_EXTRA_INSTRUCTIONS:
                base = self._base_instructions
                model.instructions = model.instructions[:base]
                model.instruction_table = model.instruction_table[:base].clone()

    async def _run_batch(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.started = True
            job.queue_s = start - job.enqueued_at
        videos = [v for job in batch for v in job.videos]
        try:
            if self._executor is None:
                raise Unavailable("the judge is shutting down")
            verdicts = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                self._judge_many,
                videos,
                [t for job in batch for t in job.instructions],
                [s for job in batch for s in job.strides],
                batch[0].threshold,
            )
        except Exception as exc:
            # Videos were validated on submission, so this is a bug or a backend
            # failure: log it once, fail every job of the batch generically.
            log.error("classifier call failed for a batch of %d videos", len(videos), exc_info=exc)
            for job in batch:
                if not job.future.done():
                    err = (
                        exc
                        if isinstance(exc, ServiceError)
                        else Internal(internal_message(job.request_id))
                    )
                    job.future.set_exception(err)
            return
        elapsed = time.perf_counter() - start
        self.stats.model_calls += 1
        self.stats.videos += len(videos)
        self.stats.jobs += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(videos))
        self.stats.largest_batch_jobs = max(self.stats.largest_batch_jobs, len(batch))
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(videos))
        offset = 0
        for job in batch:
            n = len(job.videos)
            job.model_s = elapsed
            job.batch_videos = len(videos)
            job.batch_jobs = len(batch)
            if not job.future.done():  # a cancelled caller's job still ran; nobody waits
                job.future.set_result(verdicts[offset : offset + n])
            offset += n

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
