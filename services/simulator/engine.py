"""The simulator engine: one `WorldModel`, one background loop that batches rollouts.

Every rollout that needs its next chunk (an imagine candidate, a session being
stepped, a replay) becomes a row in one pending queue. The loop takes up to
`max_batch_size` rows, waiting at most `max_wait_ms` after the oldest arrived
for the batch to fill, keeps the rows whose chunk length K matches the oldest
row's, and runs ONE `world_model.step` + `decode` for them. The wait is skipped when
every rollout of the last batch is already queued again (a lone session, an imagine's
next chunk): no row it could wait for is known to be coming. Results go back to
per-row futures; callers await them chunk by chunk, which is also how frames
are streamed as they are generated.

Batching is at the chunk level: one model call runs all denoising steps of one
chunk for the whole batch, because that is what the `WorldModel` interface
exposes (and what a Triton backend calling the denoiser once per step over the
batch would do underneath). Rows of different K wait for a later batch; a
rollout never appears twice in one batch, and its rows run in submission order.

The loop, admission (`ResourceExhausted` past `max_queued_rollouts`),
cancellation, shutdown and the one model thread are the shared
`services.common.batching.BatchingEngine`'s; this module supplies how rows are
grouped (same K; a rollout is the rows' key, so it is never twice in a batch and
its rows run in submission order) and how a batch runs (step + decode). Model
calls (start/encode, step, decode) all run on that one thread, so they never
overlap; encoding a request's start frame is one call per request (not batched)
and so waits behind a running batch. A cancelled caller's queued rows are
dropped; rows already in a running batch finish (the caller can see which via
`ChunkHandle.started`, so sessions keep their record consistent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from services.common.batching import (
    BatchingConfig,
    BatchingEngine,
    BatchStats,
    Item,
    Reservation,
    Wording,
    check_engine_config,
    engine_config_from_settings,
)
from services.common.errors import InvalidArgument, Unavailable
from services.common.metrics import ServiceMetrics
from wmpo.sampling.rollout import Rollout
from wmpo.sampling.world_model import WorldModel

if TYPE_CHECKING:
    from services.simulator.verify import Verification

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


@dataclass(frozen=True)
class ImagineInput:
    """An imagine request's tensors after the model-free checks above: the (1, H, W, 3) uint8
    start frame and the (N, C, K, 4) float32 candidates. The transports build it from the
    tensors they decoded (each checked there, so a bad one is a 422 / INVALID_ARGUMENT naming
    it); `SimulatorEngine.prepare_imagine` adds the checks that need the model. Each check thus
    runs once per request."""

    frame: np.ndarray
    candidates: np.ndarray


def check_imagine_input(start_frames: np.ndarray, candidates: np.ndarray) -> ImagineInput:
    """The model-free checks of an imagine request, for callers without a transport."""
    return ImagineInput(check_start_frames(start_frames), check_candidates(candidates))


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
        check_engine_config(self)

    @classmethod
    def from_settings(cls, settings: Any) -> EngineConfig:
        return engine_config_from_settings(cls, settings)


# ------------------------------------------------------------ work items


@dataclass(eq=False)
class _Row:
    """One rollout waiting for its next chunk."""

    rollout: Rollout
    actions: np.ndarray  # (K, 4) float32


@dataclass
class ChunkResult:
    """The frames of one chunk for each submitted rollout, and where the time went."""

    frames: np.ndarray  # (B, F, H, W, 3) uint8
    queue_s: float  # longest wait of a row before its batch started
    model_s: float  # model time of the batches this chunk ran in


class ChunkHandle:
    """The rows of one submitted chunk; `await handle.result()` for the frames."""

    def __init__(self, engine: SimulatorEngine, rows: list[Item[_Row, np.ndarray]]) -> None:
        self._engine = engine
        self._rows = rows

    @property
    def started(self) -> list[bool]:
        """Per rollout: whether its row went into a model call (its state has advanced)."""
        return [r.started for r in self._rows]

    async def settled(self) -> None:
        """Wait until no row of this chunk is still inside a model call (after a failure, rows
        in another batch of the same chunk may still be running and changing their rollouts)."""
        running = [r.future for r in self._rows if r.started and not r.future.done()]
        if running:
            await asyncio.wait(running)

    async def result(self) -> ChunkResult:
        # Cancelled (client gone) or failed: rows still queued are dropped.
        frames = await self._engine._batcher.results(self._rows)
        batches: dict[int, float] = {}
        for r in self._rows:
            batches[r.batch_id] = r.model_s
        return ChunkResult(
            frames=np.stack(frames),
            queue_s=max(r.queue_s for r in self._rows),
            model_s=sum(batches.values()),
        )


@dataclass
class EngineStats(BatchStats):
    """The batching engine's counts under the simulator's names."""

    @property
    def rows(self) -> int:  # rows stepped
        return self.units

    @property
    def dropped_rows(self) -> int:  # rows removed from the queue because their caller went away
        return self.dropped_items


_WORDING = Wording("simulator", "rollouts", "queued or running", "WMPO_MAX_QUEUED_ROLLOUTS")


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
        cfg = self.config
        self._batcher: BatchingEngine[_Row, np.ndarray] = BatchingEngine(
            self._step_and_decode,
            BatchingConfig(cfg.max_batch_size, cfg.max_wait_ms, cfg.max_queued_rollouts),
            _WORDING,
            key=lambda row: id(row.rollout),
            may_join=lambda batch, row: row.actions.shape[0] == batch[0].actions.shape[0],
            full=self._last_batch_queued,
            metrics=metrics,
            stats=self.stats,
        )
        self._provenance = self._flat_provenance(world_model.provenance())
        # Rollouts of the batch that ran last (ids), for the wait window (`_last_batch_queued`).
        self._last_batch: frozenset[int] = frozenset()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._batcher.start()

    async def stop(self) -> None:
        """Refuse new work, fail queued rows, let the running batch finish, free the thread."""
        await self._batcher.stop()

    @property
    def running(self) -> bool:
        return self._batcher.running

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
        return self._batcher.queued

    @property
    def admitted_rows(self) -> int:
        return self._batcher.admitted

    # ------------------------------------------------------------ validation
    def check_frame(self, frames: np.ndarray, name: str = "start_frames") -> np.ndarray:
        """Model-dependent checks on top of `check_start_frames`."""
        frames = check_start_frames(frames, name)
        self.check_frame_size(frames, name)
        return frames

    def check_frame_size(self, frames: np.ndarray, name: str = "start_frames") -> None:
        size = self.image_size
        _require(
            frames.shape[1:3] == (size, size),
            f"{name}: this model takes {size}x{size} frames, got "
            f"{frames.shape[1]}x{frames.shape[2]} (resize before sending)",
        )

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
        return self._batcher.reserve(rows)

    @contextlib.contextmanager
    def admit(self, rows: int) -> Iterator[Reservation]:
        with self._batcher.admit(rows) as reservation:
            yield reservation

    # ------------------------------------------------------------ model calls
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

        return await self._batcher.call(work)

    def submit(self, rollouts: list[Rollout], actions: np.ndarray) -> ChunkHandle:
        """Queue one chunk (B, K, 4) for B rollouts; the caller holds a reservation.

        `actions` must have passed the checks above, chunk length included (`prepare_imagine`,
        or the session manager's step): they are not re-validated per chunk or per row.
        """
        if not self._batcher.running:
            raise Unavailable("the simulator is not running (starting up or shutting down)")
        if len(rollouts) != len(actions):
            raise InvalidArgument(f"{len(rollouts)} rollouts but {len(actions)} action rows")
        rows = [
            _Row(r, np.ascontiguousarray(a, dtype=np.float32))
            for r, a in zip(rollouts, actions, strict=True)
        ]
        return ChunkHandle(self, self._batcher.submit(rows))

    # ------------------------------------------------------------ imagine
    def prepare_imagine(
        self, inputs: ImagineInput, horizon_chunks: int = 0, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The model's checks of an imagine request, without admitting it -> (frame, candidates,
        seed): the (1, H, W, 3) frame, the (N, horizon, K, 4) candidates (`horizon_chunks` 0
        means all C) and the seed (drawn if None). The runtime validates here once, before the
        request is queued; the worker that runs it only admits it (`start_imagine`)."""
        frame, cands = inputs.frame, inputs.candidates
        self.check_frame_size(frame)
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

    def start_imagine(self, frame: np.ndarray, candidates: np.ndarray, seed: int) -> ImagineRun:
        """Admit a request `prepare_imagine` returned (raises ResourceExhausted when full)."""
        return ImagineRun(self, frame, candidates, seed, self.reserve(candidates.shape[0]))

    def open_imagine(
        self,
        start_frames: np.ndarray,
        candidates: np.ndarray,
        horizon_chunks: int = 0,
        seed: int | None = None,
    ) -> ImagineRun:
        """Validate and admit an imagine request given as raw arrays (raises before any work)."""
        inputs = check_imagine_input(start_frames, candidates)
        return self.start_imagine(*self.prepare_imagine(inputs, horizon_chunks, seed))

    async def imagine(
        self,
        start_frames: np.ndarray,
        candidates: np.ndarray,
        horizon_chunks: int = 0,
        seed: int | None = None,
    ) -> ImagineResult:
        """Frames (N, T, H, W, 3) of every candidate, with seed, provenance and timing."""
        return await self.open_imagine(start_frames, candidates, horizon_chunks, seed).collect()

    # ------------------------------------------------------------ the batch
    def _last_batch_queued(self, queued: list[_Row]) -> bool:
        """Whether the batch may start without waiting out `max_wait_ms`: every rollout of
        the last batch has its next row queued already. Then no row the window waits for is
        known to be coming (one session stepping, an imagine's next chunk), and waiting would
        only idle the model (measured: a lone session's chunk 10% slower with the wait). Rollouts of the last batch
        still missing (16 sessions between chunks) keep the window, so they batch again."""
        last = self._last_batch
        return bool(last) and last <= {id(row.rollout) for row in queued}

    def _step_and_decode(self, rows: list[_Row]) -> np.ndarray:
        """One `step` + `decode` for the batch's rows (on the model thread)."""
        self._last_batch = frozenset(id(row.rollout) for row in rows)
        actions = np.stack([row.actions for row in rows])  # (B, K, 4)
        latents = self.world_model.step([row.rollout for row in rows], actions)  # (B, F, C, h, w)
        return self.world_model.decode(latents)  # (B, F, H, W, 3)
