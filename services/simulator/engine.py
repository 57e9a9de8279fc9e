"""The simulator engine: one `WorldModel`, one background loop that batches rollouts.

Every rollout that needs its next chunk (an imagine candidate, a session being
stepped, a replay) becomes a row in one pending queue. The loop takes up to
`max_batch_size` rows, waiting at most `max_wait_ms` after the oldest arrived
for the batch to fill, keeps the rows whose chunk length K matches the oldest
row's, and runs ONE `world_model.step` + `decode` for them. Results go back to
per-row futures; callers await them chunk by chunk, which is also how frames
are streamed as they are generated.

Batching is at the chunk level: one model call runs all denoising steps of one
chunk for the whole batch, because that is what the `WorldModel` interface
exposes (and what a Triton backend calling the denoiser once per step over the
batch would do underneath). Rows of different K wait for a later batch; a
rollout never appears twice in one batch, and its rows run in submission order.

Model calls (start/encode, step, decode) run on one dedicated worker thread: a
single-thread executor rather than `asyncio.to_thread`, because it guarantees
that calls never overlap even when the awaiting task is cancelled while a call
is still running (a thread cannot be interrupted), and keeps the event loop free.
Encoding a request's start frame is one call per request (not batched) and so
waits behind a running batch.

Admission is bounded: a request reserves its rows (queued or running) up front
and gets `ResourceExhausted` (429 / RESOURCE_EXHAUSTED) past
`max_queued_rollouts`. A cancelled caller's queued rows are dropped; rows
already in a running batch finish (the caller can see which via
`ChunkHandle.started`, so sessions keep their record consistent).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from services.common.errors import (
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    internal_message,
)
from services.common.logging import request_id_var
from services.common.metrics import ServiceMetrics
from wmpo.sampling.rollout import Rollout
from wmpo.sampling.world_model import WorldModel

if TYPE_CHECKING:
    from services.simulator.verify import Verification

log = logging.getLogger("wmpo.simulator.engine")

# Seeds are drawn and derived below 2**63: they fit a signed 64-bit integer
# (torch generators, proto int64 fields, most JSON parsers of big integers).
SEED_LIMIT = 2**63


def draw_seed() -> int:
    """A fresh seed, reported back so the result can be reproduced."""
    return secrets.randbelow(SEED_LIMIT)


def seed_for_request(request_id: str) -> int:
    """The seed of a request that names none: derived from its id.

    A retry or a redelivery of the same request id then re-runs with the same
    noise (and the idempotency check sees the same request); fresh ids are
    random, so fresh requests still get fresh noise.
    """
    digest = hashlib.sha256(f"wmpo-seed:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % SEED_LIMIT


def member_seed(seed: int, index: int) -> int:
    """The noise seed of candidate / group member `index` of a request seeded `seed`.

    Index 0 keeps the request's seed, so candidate 0 of an imagine, member 0 of
    a group and a single session opened with the same seed all see the same noise.
    """
    if index == 0:
        return seed
    words = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) % SEED_LIMIT


# ------------------------------------------------------------- validation
# Shape / dtype / finiteness checks that need no model; HTTP models and the
# gRPC servicer both call them. Each raises InvalidArgument naming the tensor.


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgument(message)


def check_start_frames(frames: np.ndarray, name: str = "start_frames") -> np.ndarray:
    """uint8 (H, W, 3) or (1, H, W, 3) -> (1, H, W, 3).

    The WorldModel interface starts a rollout from one frame (its anchor); older
    context frames would need the actions between them, so T0 > 1 is refused
    rather than silently ignored.
    """
    _require(frames.dtype == np.uint8, f"{name}: dtype must be uint8, got {frames.dtype.name}")
    if frames.ndim == 3:
        frames = frames[None]
    _require(
        frames.ndim == 4 and frames.shape[-1] == 3,
        f"{name}: expected RGB frames (H, W, 3) or (T0, H, W, 3), got shape {frames.shape}",
    )
    _require(
        frames.shape[0] == 1,
        f"{name}: this simulator starts from one frame (the most recent); got T0={frames.shape[0]} "
        "frames, send shape (1, H, W, 3) or (H, W, 3)",
    )
    return frames


def _check_action_values(actions: np.ndarray, name: str) -> None:
    _require(
        actions.dtype == np.float32, f"{name}: dtype must be float32, got {actions.dtype.name}"
    )
    _require(
        actions.shape[-1] == 4,
        f"{name}: the last axis must be 4 (xyz delta, gripper), got shape {actions.shape}",
    )
    _require(actions.size > 0, f"{name}: every axis must be non-empty, got shape {actions.shape}")
    bad = ~np.isfinite(actions)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidArgument(
            f"{name}: {int(bad.sum())} non-finite values (NaN or inf), first at index {first}"
        )


def check_candidates(candidates: np.ndarray, name: str = "candidates") -> np.ndarray:
    """float32 (N, C, K, 4), or (N, K, 4) for one chunk each -> (N, C, K, 4)."""
    _require(
        candidates.ndim in (3, 4),
        f"{name}: expected shape (N, C, K, 4) or (N, K, 4), got {candidates.shape}",
    )
    _check_action_values(candidates, name)
    return candidates[:, None] if candidates.ndim == 3 else candidates


def check_session_actions(actions: np.ndarray, name: str = "actions") -> np.ndarray:
    """float32 (K, 4) for one chunk or (C, K, 4) for C chunks -> (1, C, K, 4)."""
    _require(
        actions.ndim in (2, 3), f"{name}: expected shape (K, 4) or (C, K, 4), got {actions.shape}"
    )
    _check_action_values(actions, name)
    return (actions[None] if actions.ndim == 2 else actions)[None]


def check_group_actions(actions: np.ndarray, name: str = "actions") -> np.ndarray:
    """float32 (G, K, 4) or (G, C, K, 4), row g for member g -> (G, C, K, 4)."""
    _require(
        actions.ndim in (3, 4),
        f"{name}: a group takes shape (G, K, 4) or (G, C, K, 4), got {actions.shape}",
    )
    _check_action_values(actions, name)
    return actions[:, None] if actions.ndim == 3 else actions


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 16  # rows per model call
    max_wait_ms: float = 5.0  # how long the oldest row waits for the batch to fill
    max_queued_rollouts: int = 256  # admitted rows (queued or running) before 429
    max_chunks_per_request: int = 64  # chunks one imagine may roll out
    max_response_bytes: int = 256 * 1024**2  # raw frame bytes one response may carry

    def __post_init__(self) -> None:
        problems = [
            f"{name}={getattr(self, name)} must be >= 1"
            for name in (
                "max_batch_size",
                "max_queued_rollouts",
                "max_chunks_per_request",
                "max_response_bytes",
            )
            if getattr(self, name) < 1
        ]
        if self.max_wait_ms < 0:
            problems.append(f"max_wait_ms={self.max_wait_ms} must be >= 0")
        if problems:
            raise ValueError("invalid EngineConfig: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, settings: Any) -> EngineConfig:
        return cls(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queued_rollouts=settings.max_queued_rollouts,
            max_chunks_per_request=settings.max_chunks_per_request,
            max_response_bytes=settings.max_response_bytes,
        )


# ------------------------------------------------------------ work items


@dataclass(eq=False)
class _Row:
    """One rollout waiting for its next chunk."""

    rollout: Rollout
    actions: np.ndarray  # (K, 4) float32
    future: asyncio.Future[np.ndarray]  # -> (F, H, W, 3) uint8
    request_id: str | None
    enqueued_at: float
    started: bool = False
    batch_id: int = -1
    queue_s: float = 0.0
    model_s: float = 0.0


@dataclass
class ChunkResult:
    """The frames of one chunk for each submitted rollout, and where the time went."""

    frames: np.ndarray  # (B, F, H, W, 3) uint8
    queue_s: float  # longest wait of a row before its batch started
    model_s: float  # model time of the batches this chunk ran in


class ChunkHandle:
    """The rows of one submitted chunk; `await handle.result()` for the frames."""

    def __init__(self, engine: SimulatorEngine, rows: list[_Row]) -> None:
        self._engine = engine
        self._rows = rows

    @property
    def started(self) -> list[bool]:
        """Per rollout: whether its row went into a model call (its state has advanced)."""
        return [r.started for r in self._rows]

    async def result(self) -> ChunkResult:
        try:
            frames = await asyncio.gather(*(r.future for r in self._rows))
        except BaseException:
            # Cancelled (client gone) or failed: rows still queued are dropped.
            self._engine._drop(self._rows)
            for r in self._rows:  # mark sibling failures as seen (no "never retrieved" noise)
                if r.future.done() and not r.future.cancelled():
                    r.future.exception()
            raise
        batches: dict[int, float] = {}
        for r in self._rows:
            batches[r.batch_id] = r.model_s
        return ChunkResult(
            frames=np.stack(frames),
            queue_s=max(r.queue_s for r in self._rows),
            model_s=sum(batches.values()),
        )


class Reservation:
    """Admitted rows; release exactly once (idempotent)."""

    def __init__(self, engine: SimulatorEngine, rows: int) -> None:
        self._engine = engine
        self.rows = rows
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._admitted -= self.rows


@dataclass
class EngineStats:
    model_calls: int = 0  # batched step calls
    rows: int = 0  # rows stepped
    largest_batch: int = 0
    dropped_rows: int = 0  # rows removed from the queue because their caller went away


# ---------------------------------------------------------------- imagine


@dataclass
class ImagineChunk:
    chunk_index: int
    frames: np.ndarray  # (N, F, H, W, 3) uint8


@dataclass
class ImagineResult:
    frames: np.ndarray  # (N, T, H, W, 3) uint8
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float]
    verification: Verification | None = None  # the judge's answer (request asked to verify)


class ImagineRun:
    """One validated, admitted imagine request; iterate `chunks()`, then read `summary()`.

    Built by `SimulatorEngine.open_imagine`, so a bad request or a full queue
    fails before a streaming response has started. Always `close()` it.
    """

    def __init__(
        self,
        engine: SimulatorEngine,
        frame: np.ndarray,
        candidates: np.ndarray,
        seed: int,
        reservation: Reservation,
    ) -> None:
        self.engine = engine
        self.frame = frame  # (1, H, W, 3)
        self.candidates = candidates  # (N, C, K, 4), C = horizon
        self.seed = seed
        self._reservation = reservation
        self._timing = {"queue": 0.0, "encode": 0.0, "denoise": 0.0}
        self._started = time.perf_counter()

    @property
    def n_candidates(self) -> int:
        return self.candidates.shape[0]

    @property
    def horizon(self) -> int:
        return self.candidates.shape[1]

    async def chunks(self) -> AsyncIterator[ImagineChunk]:
        seeds = [member_seed(self.seed, i) for i in range(self.n_candidates)]
        t0 = time.perf_counter()
        rollouts, _ = await self.engine.start_rollouts(self.frame, seeds)
        self._timing["encode"] = time.perf_counter() - t0
        for c in range(self.horizon):
            res = await self.engine.submit(rollouts, self.candidates[:, c]).result()
            self._timing["queue"] += res.queue_s
            self._timing["denoise"] += res.model_s
            yield ImagineChunk(c, res.frames)

    def summary(self) -> tuple[dict[str, str], dict[str, float]]:
        """Provenance and timing (seconds) of the run so far."""
        timing = {**self._timing, "total": time.perf_counter() - self._started}
        return {**self.engine.provenance(), "seed": str(self.seed)}, timing

    def close(self) -> None:
        self._reservation.release()

    async def collect(self) -> ImagineResult:
        """Run every chunk and return the whole result; closes the run."""
        try:
            chunks = [chunk.frames async for chunk in self.chunks()]
        finally:
            self.close()
        provenance, timing = self.summary()
        return ImagineResult(np.concatenate(chunks, axis=1), self.seed, provenance, timing)


# ----------------------------------------------------------------- engine


class SimulatorEngine:
    """Owns a `WorldModel` and the batching loop; `await start()` before use, `stop()` after."""

    def __init__(
        self,
        world_model: WorldModel,
        config: EngineConfig | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.world_model = world_model
        self.config = config or EngineConfig()
        self.metrics = metrics
        self.stats = EngineStats()
        self._pending: collections.deque[_Row] = collections.deque()
        self._wakeup = asyncio.Event()
        self._admitted = 0
        self._batch_ids = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._provenance = self._flat_provenance(world_model.provenance())

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stopping = False
        self._wakeup = asyncio.Event()  # bound to the loop that runs the engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wmpo-model")
        self._loop_task = asyncio.create_task(self._run(), name="wmpo-simulator-batcher")

    async def stop(self) -> None:
        """Refuse new work, fail queued rows, let the running batch finish, free the thread."""
        if self._loop_task is None:
            return
        self._stopping = True
        while self._pending:
            row = self._pending.popleft()
            if not row.future.done():
                row.future.set_exception(Unavailable("the simulator is shutting down"))
        self._set_queue_depth()
        self._wakeup.set()
        await self._loop_task
        self._loop_task = None
        executor, self._executor = self._executor, None
        if executor is not None:
            # Waits for a model call still running for a cancelled caller.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._stopping and not self._loop_task.done()

    # ------------------------------------------------------------ model facts
    @property
    def image_size(self) -> int:
        return self.world_model.image_size

    @property
    def frame_stride(self) -> int:
        return self.world_model.frame_stride

    @property
    def max_chunk_length(self) -> int | None:
        # Optional in the WorldModel protocol: a backend without it has no known limit.
        return getattr(self.world_model, "max_chunk_length", None)

    def provenance(self) -> dict[str, str]:
        return dict(self._provenance)

    @staticmethod
    def _flat_provenance(raw: dict[str, Any]) -> dict[str, str]:
        # Strings only: the proto map and the HTTP body carry the same record.
        return {
            k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in raw.items()
        }

    @property
    def queued_rows(self) -> int:
        return len(self._pending)

    @property
    def admitted_rows(self) -> int:
        return self._admitted

    # ------------------------------------------------------------ validation
    def check_frame(self, frames: np.ndarray, name: str = "start_frames") -> np.ndarray:
        """Model-dependent checks on top of `check_start_frames`."""
        frames = check_start_frames(frames, name)
        size = self.image_size
        _require(
            frames.shape[1:3] == (size, size),
            f"{name}: this model takes {size}x{size} frames, got "
            f"{frames.shape[1]}x{frames.shape[2]} (resize before sending)",
        )
        return frames

    def check_chunk_length(self, k: int, name: str = "actions") -> None:
        stride = self.frame_stride
        _require(
            k >= stride and k % stride == 0,
            f"{name}: chunk length K={k} must be a positive multiple of the model's "
            f"frame stride {stride} (e.g. 8)",
        )
        limit = self.max_chunk_length
        _require(
            limit is None or k <= limit,
            f"{name}: chunk length K={k} exceeds this model's maximum of {limit} actions",
        )

    def check_output(self, rollouts: int, chunks: int, k: int) -> None:
        """Refuse up front a request whose frames would not fit in one response."""
        frames = rollouts * chunks * (k // self.frame_stride)
        nbytes = frames * self.image_size**2 * 3
        limit = self.config.max_response_bytes
        _require(
            nbytes <= limit,
            f"the response would carry {frames} frames ({nbytes} bytes), over the limit of "
            f"{limit} bytes; ask for fewer candidates or chunks",
        )

    # ------------------------------------------------------------ admission
    def reserve(self, rows: int) -> Reservation:
        """Admit `rows` rollouts or raise; the caller must `release()` the reservation."""
        if not self.running:
            raise Unavailable("the simulator is not running (starting up or shutting down)")
        limit = self.config.max_queued_rollouts
        if rows > limit:
            raise InvalidArgument(
                f"{rows} rollouts in one request exceed the limit of {limit} "
                "(WMPO_MAX_QUEUED_ROLLOUTS); split the request"
            )
        if self._admitted + rows > limit:
            raise ResourceExhausted(
                f"simulator busy: {self._admitted} rollouts queued or running, limit {limit}; "
                "retry later"
            )
        self._admitted += rows
        return Reservation(self, rows)

    @contextlib.contextmanager
    def admit(self, rows: int) -> Iterator[Reservation]:
        reservation = self.reserve(rows)
        try:
            yield reservation
        finally:
            reservation.release()

    # ------------------------------------------------------------ model calls
    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise Unavailable("the simulator is not running (starting up or shutting down)")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start_rollouts(
        self, frame: np.ndarray, seeds: list[int], observation: bool = False
    ) -> tuple[list[Rollout], np.ndarray | None]:
        """Encode one start frame (1, H, W, 3) once and fork one rollout per seed.

        With `observation`, also decode the encoded start: the first observation
        as the model sees it (what a gym `reset()` returns), (H, W, 3) uint8.
        Not batched across requests: it is one encoder pass per request.
        """

        def work() -> tuple[list[Rollout], np.ndarray | None]:
            wm = self.world_model
            root = wm.start(frame, [seeds[0]])[0]
            rollouts = [root] if len(seeds) == 1 else wm.fork(root, seeds)
            obs = wm.decode(root.anchor[None])[0] if observation else None
            return rollouts, obs

        return await self._call(work)

    def submit(self, rollouts: list[Rollout], actions: np.ndarray) -> ChunkHandle:
        """Queue one chunk (B, K, 4) for B rollouts; the caller holds a reservation.

        `actions` must have passed the checks above (they are not re-validated per row).
        """
        if not self.running:
            raise Unavailable("the simulator is not running (starting up or shutting down)")
        if len(rollouts) != len(actions):
            raise InvalidArgument(f"{len(rollouts)} rollouts but {len(actions)} action rows")
        self.check_chunk_length(actions.shape[1])
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        rid = request_id_var.get()
        rows = [
            _Row(r, np.ascontiguousarray(a, dtype=np.float32), loop.create_future(), rid, now)
            for r, a in zip(rollouts, actions, strict=True)
        ]
        self._pending.extend(rows)
        self._set_queue_depth()
        self._wakeup.set()
        return ChunkHandle(self, rows)

    async def step(self, rollouts: list[Rollout], actions: np.ndarray) -> ChunkResult:
        """Admit, queue and await one chunk for `rollouts` (B, K, 4)."""
        with self.admit(len(rollouts)):
            return await self.submit(rollouts, actions).result()

    # ------------------------------------------------------------ imagine
    def prepare_imagine(
        self,
        start_frames: np.ndarray,
        candidates: np.ndarray,
        horizon_chunks: int = 0,
        seed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Validate an imagine request without admitting it -> (frame, candidates, seed).

        `candidates` (N, C, K, 4) or (N, K, 4); `horizon_chunks` 0 means all C.
        Returns the (1, H, W, 3) frame, the (N, horizon, K, 4) candidates and the
        seed (drawn if None). Queue mode validates here before enqueuing.
        """
        frame = self.check_frame(start_frames)
        cands = check_candidates(candidates)
        n, c, k, _ = cands.shape
        self.check_chunk_length(k, "candidates")
        horizon = horizon_chunks or c
        _require(
            1 <= horizon <= c,
            f"horizon_chunks={horizon_chunks} must be between 1 and the {c} chunks given (0: all)",
        )
        limit = self.config.max_chunks_per_request
        _require(horizon <= limit, f"horizon of {horizon} chunks exceeds the limit of {limit}")
        self.check_output(n, horizon, k)
        rows = self.config.max_queued_rollouts
        _require(
            n <= rows,
            f"{n} rollouts in one request exceed the limit of {rows} "
            "(WMPO_MAX_QUEUED_ROLLOUTS); split the request",
        )
        if seed is None:
            seed = draw_seed()
        _require(0 <= seed < SEED_LIMIT, f"seed must be in [0, 2**63), got {seed}")
        return frame, cands[:, :horizon], seed

    def open_imagine(
        self,
        start_frames: np.ndarray,
        candidates: np.ndarray,
        horizon_chunks: int = 0,
        seed: int | None = None,
    ) -> ImagineRun:
        """Validate and admit an imagine request (raises before any work is done)."""
        frame, cands, seed = self.prepare_imagine(start_frames, candidates, horizon_chunks, seed)
        return ImagineRun(self, frame, cands, seed, self.reserve(cands.shape[0]))

    async def imagine(
        self,
        start_frames: np.ndarray,
        candidates: np.ndarray,
        horizon_chunks: int = 0,
        seed: int | None = None,
    ) -> ImagineResult:
        """Frames (N, T, H, W, 3) of every candidate, with seed, provenance and timing."""
        return await self.open_imagine(start_frames, candidates, horizon_chunks, seed).collect()

    # ------------------------------------------------------------ the loop
    def _set_queue_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    def _drop(self, rows: list[_Row]) -> None:
        """Remove rows that have not started (their caller went away or failed)."""
        waiting = {id(r) for r in rows if not r.started}
        if not waiting:
            return
        before = len(self._pending)
        self._pending = collections.deque(r for r in self._pending if id(r) not in waiting)
        self.stats.dropped_rows += before - len(self._pending)
        for r in rows:
            if not r.started and not r.future.done():
                r.future.cancel()
        self._set_queue_depth()

    def _take_batch(self) -> list[_Row]:
        """Up to max_batch_size rows with the oldest row's K, each rollout at most once.

        A rollout whose row is skipped is blocked for the rest of the scan, so
        its rows never run out of order.
        """
        batch: list[_Row] = []
        keep: collections.deque[_Row] = collections.deque()
        blocked: set[int] = set()
        k = None
        for row in self._pending:
            if row.future.done():  # cancelled while queued
                continue
            rid = id(row.rollout)
            if k is None:
                k = row.actions.shape[0]
            if (
                len(batch) < self.config.max_batch_size
                and rid not in blocked
                and row.actions.shape[0] == k
            ):
                batch.append(row)
                blocked.add(rid)  # a second row of it waits for the next batch
            else:
                blocked.add(rid)
                keep.append(row)
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
            # Let the batch fill, up to max_wait after the oldest row arrived.
            deadline = self._pending[0].enqueued_at + max_wait
            while len(self._pending) < self.config.max_batch_size and not self._stopping:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    def _step_and_decode(self, rollouts: list[Rollout], actions: np.ndarray) -> np.ndarray:
        latents = self.world_model.step(rollouts, actions)  # (B, F, C, h, w)
        return self.world_model.decode(latents)  # (B, F, H, W, 3)

    async def _run_batch(self, batch: list[_Row]) -> None:
        batch_id = next(self._batch_ids)
        start = time.perf_counter()
        for row in batch:
            row.started = True
            row.batch_id = batch_id
            row.queue_s = start - row.enqueued_at
        try:
            rollouts = [row.rollout for row in batch]
            actions = np.stack([row.actions for row in batch])  # (B, K, 4)
            frames = await self._call(self._step_and_decode, rollouts, actions)
        except Exception as exc:
            # Rows were validated on submission, so this is a bug or a backend
            # failure: log it once, fail every row of the batch generically.
            log.error("model call failed for a batch of %d", len(batch), exc_info=exc)
            for row in batch:
                if not row.future.done():
                    err = (
                        exc
                        if isinstance(exc, ServiceError)
                        else Internal(internal_message(row.request_id))
                    )
                    row.future.set_exception(err)
            return
        elapsed = time.perf_counter() - start
        self.stats.model_calls += 1
        self.stats.rows += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
        for row, out in zip(batch, frames, strict=True):
            row.model_s = elapsed
            if not row.future.done():  # a cancelled caller's row still ran; nobody waits
                row.future.set_result(out)
