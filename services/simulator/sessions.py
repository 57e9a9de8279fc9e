"""Remote-simulator sessions: what an RL trainer drives instead of a real simulator.

A session is one imagined rollout opened from a real start frame with a seed.
A group is G sessions forked from one encoded start: they share the start
latent and differ only in their noise (member g's seed is `member_seed(seed, g)`,
member 0 keeps the seed) and in the actions they are given. Stepping a session,
or a whole group at once, sends its rollouts through the engine's batching
queue, so steps of all open sessions that arrive together share model calls.

Every session records its start frame (shared by a group) and the action
chunks it was stepped with, so `replay` can rebuild it from the start under a
fresh seed and apply the same chunks: the same actions under new noise (the
dual-noise check of RAW-Dream). Replaying with the session's own seed gives its
frames back: determinism by seed. "Exactly" holds when the work runs in the same
batch composition (e.g. one request at a time); rollouts that shared a batch
with different neighbours can differ by float rounding (CPU matmuls are not
batch-invariant), seen as at most 1 intensity level on rare pixels.

Limits: a cap on open sessions and on the memory they hold together, with
per-session accounting (rollout tensors, generator state, recorded actions, a
share of the start frame; a group's shared anchor is counted once per member,
which over-counts slightly), a chunk budget per session (`truncated`), and
expiry after an idle TTL, by a periodic sweep and on access. A session that is
being stepped never expires mid-step. `reward` and `done` stay None until a
judge is configured.

Idempotent steps: a step may name `expected_chunks_stepped`, the session's
`chunks_stepped` before it (what the previous response said; 0 after create).
If the session is there, it steps. If the session has already done exactly that
step with the same actions (a retry after a timeout or a lost connection), the
stored result of that step comes back and nothing advances: each session keeps
the result of its last step that named a count (only the last one). Any other
count is a `Conflict` (409 / FAILED_PRECONDITION) that says where the session
is. Such a step also runs to completion when its caller goes away, so that the
retry finds its result instead of a session advanced with the frames lost.
A group step names the count of every member (they step together). A step that
fails (a model call raised, e.g. the Triton server is down) leaves its sessions
as they were, count, recorded actions and rollout state, so its retry with the
same count runs it again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from services.common.errors import Conflict, InvalidArgument, NotFound, ResourceExhausted
from services.common.metrics import ServiceMetrics
from services.simulator.engine import (
    SEED_LIMIT,
    SimulatorEngine,
    check_group_actions,
    check_session_actions,
    draw_seed,
    member_seed,
)
from wmpo.sampling.rollout import Rollout

log = logging.getLogger("wmpo.simulator.sessions")

# A rollout's torch.Generator state is not in Rollout.nbytes(); it is the same size for all.
_GENERATOR_BYTES = int(torch.Generator().get_state().numel())
# Ids of closed/expired sessions remembered to say "expired" rather than "unknown".
_REMEMBERED_GONE = 4096
MAX_INSTRUCTION_CHARS = 2000


@dataclass(frozen=True)
class SessionConfig:
    max_sessions: int = 256
    max_memory_bytes: int = 1024**3
    ttl_s: float = 600.0
    sweep_interval_s: float = 10.0
    default_max_chunks: int = 64
    max_chunks_limit: int = 1024

    def __post_init__(self) -> None:
        problems = [
            f"{name}={getattr(self, name)} must be > 0"
            for name in (
                "max_sessions",
                "max_memory_bytes",
                "ttl_s",
                "sweep_interval_s",
                "default_max_chunks",
                "max_chunks_limit",
            )
            if getattr(self, name) <= 0
        ]
        if self.default_max_chunks > self.max_chunks_limit:
            problems.append(
                f"default_max_chunks={self.default_max_chunks} exceeds "
                f"max_chunks_limit={self.max_chunks_limit}"
            )
        if problems:
            raise ValueError("invalid SessionConfig: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, settings: Any) -> SessionConfig:
        return cls(
            max_sessions=settings.max_sessions,
            max_memory_bytes=settings.max_session_memory_bytes,
            ttl_s=settings.session_ttl_s,
            sweep_interval_s=settings.session_sweep_s,
            default_max_chunks=settings.default_session_chunks,
            max_chunks_limit=max(settings.max_session_chunks, settings.default_session_chunks),
        )


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session's state, for the API layers."""

    session_id: str
    group_id: str | None
    group_index: int
    instruction: str
    seed: int
    chunks_stepped: int
    max_chunks: int
    memory_bytes: int
    created_at: float
    last_active_at: float
    expires_at: float


@dataclass(eq=False)
class _Start:
    """The start frame, stored once per group."""

    frame: np.ndarray  # (1, H, W, 3) uint8
    members: int


@dataclass(eq=False)
class _LastStep:
    """The result of a session's last step that named `expected_chunks_stepped`."""

    before: int  # chunks_stepped before the step
    result: StepResult  # frames are this session's own copy


@dataclass(eq=False)
class Session:
    session_id: str
    group_id: str | None
    group_index: int
    instruction: str
    seed: int
    rollout: Rollout
    start: _Start
    max_chunks: int
    created_at: float
    last_active_at: float
    actions: list[np.ndarray] = field(default_factory=list)  # recorded chunks, (K, 4) each
    actions_nbytes: int = 0
    last_step: _LastStep | None = None
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def chunks_stepped(self) -> int:
        return len(self.actions)

    def record(self, chunk: np.ndarray) -> None:
        chunk = np.array(chunk, dtype=np.float32)  # a copy: the request's buffer is not kept
        self.actions.append(chunk)
        self.actions_nbytes += chunk.nbytes

    def forget_after(self, chunks: int) -> None:
        """Drop the recorded chunks after the first `chunks` (a failed step's)."""
        del self.actions[chunks:]
        self.actions_nbytes = sum(a.nbytes for a in self.actions)

    def nbytes(self) -> int:
        return (
            self.rollout.nbytes()
            + _GENERATOR_BYTES
            + self.actions_nbytes
            + self.start.frame.nbytes // self.start.members
            + (self.last_step.result.frames.nbytes if self.last_step is not None else 0)
        )

    def is_repeat_of_last_step(self, before: int, chunks: np.ndarray) -> bool:
        """Whether `chunks` (C, K, 4) from `before` is the step this session did last."""
        last = self.last_step
        return (
            last is not None
            and last.before == before
            and self.chunks_stepped == before + len(chunks)
            and all(
                np.array_equal(done, again)
                for done, again in zip(self.actions[before:], chunks, strict=True)
            )
        )

    def info(self, ttl_s: float) -> SessionInfo:
        return SessionInfo(
            session_id=self.session_id,
            group_id=self.group_id,
            group_index=self.group_index,
            instruction=self.instruction,
            seed=self.seed,
            chunks_stepped=self.chunks_stepped,
            max_chunks=self.max_chunks,
            memory_bytes=self.nbytes(),
            created_at=self.created_at,
            last_active_at=self.last_active_at,
            expires_at=self.last_active_at + ttl_s,
        )


@dataclass
class CreateResult:
    group_id: str | None
    sessions: list[SessionInfo]
    observation: np.ndarray  # (H, W, 3) uint8: the start frame as the model reconstructs it
    provenance: dict[str, str]
    timing: dict[str, float]


@dataclass
class StepResult:
    session_id: str
    frames: np.ndarray  # (C*F, H, W, 3) uint8; the last one is the new observation
    truncated: bool
    chunks_stepped: int
    reward: float | None = None  # judge
    done: bool | None = None  # judge


@dataclass
class StepOutcome:
    results: list[StepResult]
    timing: dict[str, float]
    replayed: bool = False  # the stored result of a step already done (nothing advanced)


@dataclass
class ReplayResult:
    session_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8, T = recorded chunks * F
    seed: int
    provenance: dict[str, str]
    timing: dict[str, float]


_RolloutState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]


def _rollout_state(r: Rollout) -> _RolloutState:
    """What a step changes in a rollout (its noise generator, history and AR step); the
    sampler replaces these tensors rather than writing into them, so references suffice."""
    return r.generator.get_state(), r.history, r.history_actions, r.history_has_action, r.ar_step


def _restore_rollout(r: Rollout, state: _RolloutState) -> None:
    generator, r.history, r.history_actions, r.history_has_action, r.ar_step = state
    r.generator.set_state(generator)


def _show(identifier: str) -> str:
    """An id as it may appear in a message: quoted, and cut short if a caller sent junk."""
    return repr(identifier[:64] + ("..." if len(identifier) > 64 else ""))


class SessionManager:
    """Open sessions and groups over one engine; `await start()` runs the expiry sweep."""

    def __init__(
        self,
        engine: SimulatorEngine,
        config: SessionConfig | None = None,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.config = config or SessionConfig()
        self.metrics = metrics
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._groups: dict[str, list[str]] = {}  # group id -> member ids in group order
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._creating = 0  # slots held by creations still encoding
        self._sweeper: asyncio.Task[None] | None = None
        self._detached: set[asyncio.Task[StepOutcome]] = set()  # idempotent steps in flight

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="wmpo-session-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        detached = list(self._detached)
        for task in detached:  # idempotent steps still running: the engine is about to stop
            task.cancel()
        await asyncio.gather(*detached, return_exceptions=True)
        for sid in list(self._sessions):
            self._remove(sid, "closed at shutdown")
        self._update_gauges()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                expired = self.sweep()
            except Exception:  # the sweep must outlive a bug in one pass
                log.exception("session sweep failed")
                continue
            if expired:
                log.info("expired %d idle sessions", len(expired))

    def sweep(self) -> list[str]:
        """Expire every idle session; returns their ids."""
        now = self.clock()
        expired = [sid for sid, s in self._sessions.items() if self._is_expired(s, now)]
        for sid in expired:
            self._remove(sid, "expired")
        if expired:
            self._update_gauges()
        return expired

    # ------------------------------------------------------------ accounting
    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def memory_bytes(self) -> int:
        return sum(s.nbytes() for s in self._sessions.values())

    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.open_sessions.set(len(self._sessions))
            self.metrics.session_memory.set(self.memory_bytes())

    def _check_memory(self, extra: int) -> None:
        held, cap = self.memory_bytes(), self.config.max_memory_bytes
        if held + extra > cap:
            raise ResourceExhausted(
                f"open sessions hold {held} bytes; {extra} more would pass the limit of {cap} "
                "bytes (WMPO_MAX_SESSION_MEMORY_BYTES); close sessions or wait for idle ones "
                "to expire"
            )

    def _check_slots(self, wanted: int) -> None:
        held, cap = len(self._sessions) + self._creating, self.config.max_sessions
        if held + wanted > cap:
            raise ResourceExhausted(
                f"{held} sessions open, {wanted} more would pass the limit of {cap} "
                f"(WMPO_MAX_SESSIONS); close sessions or wait for idle ones to expire "
                f"({self.config.ttl_s:g} s)"
            )

    # ------------------------------------------------------------ lookup
    def _is_expired(self, s: Session, now: float) -> bool:
        return now >= s.last_active_at + self.config.ttl_s and not s.lock.locked()

    def _remove(self, sid: str, reason: str) -> None:
        s = self._sessions.pop(sid, None)
        if s is None:
            return
        s.closed = True
        self._gone[sid] = reason
        while len(self._gone) > _REMEMBERED_GONE:
            self._gone.popitem(last=False)
        if s.group_id is not None:
            members = self._groups.get(s.group_id, [])
            if sid in members:
                members.remove(sid)
            if not members:
                self._groups.pop(s.group_id, None)
                self._gone[s.group_id] = reason

    def _not_found(self, kind: str, identifier: str) -> NotFound:
        reason = self._gone.get(identifier)
        if reason == "expired":
            return NotFound(
                f"{kind} {_show(identifier)} expired after {self.config.ttl_s:g} s without "
                "activity; open a new one"
            )
        if reason is not None:
            return NotFound(f"{kind} {_show(identifier)} was {reason}")
        return NotFound(f"{kind} {_show(identifier)} does not exist")

    def _lookup(self, session_id: str) -> Session:
        s = self._sessions.get(session_id)
        if s is not None and self._is_expired(s, self.clock()):
            self._remove(session_id, "expired")
            self._update_gauges()
            s = None
        if s is None:
            raise self._not_found("session", session_id)
        return s

    def _members(self, group_id: str) -> list[Session]:
        ids = list(self._groups.get(group_id, ()))
        for sid in ids:  # expire idle members first, as on direct access
            with contextlib.suppress(NotFound):
                self._lookup(sid)
        ids = self._groups.get(group_id, [])
        if not ids:
            raise self._not_found("group", group_id)
        return [self._sessions[sid] for sid in ids]

    def get(self, session_id: str) -> SessionInfo:
        return self._lookup(session_id).info(self.config.ttl_s)

    def get_group(self, group_id: str) -> list[SessionInfo]:
        """The open members of a group, in group order."""
        return [s.info(self.config.ttl_s) for s in self._members(group_id)]

    def close(self, session_id: str) -> list[str]:
        self._lookup(session_id)
        self._remove(session_id, "closed")
        self._update_gauges()
        return [session_id]

    def close_group(self, group_id: str) -> list[str]:
        ids = [s.session_id for s in self._members(group_id)]
        for sid in ids:
            self._remove(sid, "closed")
        self._update_gauges()
        return ids

    # ------------------------------------------------------------ create
    async def create(
        self,
        start_frames: np.ndarray,
        instruction: str = "",
        seed: int | None = None,
        group_size: int = 1,
        max_chunks: int = 0,
    ) -> CreateResult:
        """Open one session (group_size 0 or 1) or a group of G forked sessions."""
        started = time.perf_counter()
        frame = self.engine.check_frame(start_frames)
        g = max(group_size, 1)
        if group_size < 0:
            raise InvalidArgument(f"group_size must be >= 0, got {group_size}")
        g_limit = min(self.config.max_sessions, self.engine.config.max_queued_rollouts)
        if g > g_limit:
            raise InvalidArgument(
                f"group_size={g} exceeds the limit of {g_limit} sessions per group"
            )
        budget = max_chunks or self.config.default_max_chunks
        if not 1 <= budget <= self.config.max_chunks_limit:
            raise InvalidArgument(
                f"max_chunks={max_chunks} must be between 1 and {self.config.max_chunks_limit} "
                "(0: the server's default)"
            )
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise InvalidArgument(
                f"instruction is {len(instruction)} characters, at most {MAX_INSTRUCTION_CHARS}"
            )
        seed = draw_seed() if seed is None else seed
        if not 0 <= seed < SEED_LIMIT:
            raise InvalidArgument(f"seed must be in [0, 2**63), got {seed}")
        self._check_slots(g)
        self._check_memory(frame.nbytes)
        seeds = [member_seed(seed, i) for i in range(g)]
        self._creating += g  # hold the slots across the await, so racing creates see them
        try:
            with self.engine.admit(g):
                rollouts, obs = await self.engine.start_rollouts(frame, seeds, observation=True)
        finally:
            self._creating -= g
        assert obs is not None
        self._check_slots(g)
        start = _Start(np.array(frame), members=g)
        now = self.clock()
        group_id = f"g-{secrets.token_hex(8)}" if g > 1 else None
        sessions = [
            Session(
                session_id=f"s-{secrets.token_hex(8)}",
                group_id=group_id,
                group_index=i,
                instruction=instruction,
                seed=s,
                rollout=r,
                start=start,
                max_chunks=budget,
                created_at=now,
                last_active_at=now,
            )
            for i, (s, r) in enumerate(zip(seeds, rollouts, strict=True))
        ]
        self._check_memory(sum(s.nbytes() for s in sessions))
        for s in sessions:
            self._sessions[s.session_id] = s
        if group_id is not None:
            self._groups[group_id] = [s.session_id for s in sessions]
        self._update_gauges()
        return CreateResult(
            group_id=group_id,
            sessions=[s.info(self.config.ttl_s) for s in sessions],
            observation=obs,
            provenance={**self.engine.provenance(), "seed": str(seed)},
            timing={"total": time.perf_counter() - started},
        )

    # ------------------------------------------------------------ step
    async def step_session(
        self,
        session_id: str,
        actions: np.ndarray,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """Advance one session by (K, 4) or (C, K, 4) actions.

        `expected_chunks_stepped`: the session's chunks_stepped before this step; makes
        the step idempotent (see the module docstring).
        """
        session = self._lookup(session_id)
        acts = check_session_actions(actions)
        return await self._step([session], acts, expected_chunks_stepped)

    async def step_group(
        self,
        group_id: str,
        actions: np.ndarray,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """Advance every open member of a group by (G, K, 4) or (G, C, K, 4) actions."""
        members = self._members(group_id)
        acts = check_group_actions(actions)
        if acts.shape[0] != len(members):
            raise InvalidArgument(
                f"actions: group {_show(group_id)} has {len(members)} open sessions, "
                f"got {acts.shape[0]} rows"
            )
        return await self._step(members, acts, expected_chunks_stepped)

    async def _step(
        self, sessions: list[Session], acts: np.ndarray, expected: int | None
    ) -> StepOutcome:
        """acts (B, C, K, 4), row b for sessions[b]."""
        b, c, k, _ = acts.shape
        self.engine.check_chunk_length(k)
        self.engine.check_output(b, c, k)
        if expected is None:
            self._check_memory(acts.nbytes)
            return await self._run_step(sessions, acts, None)
        if not 0 <= expected < 2**31:
            raise InvalidArgument(f"expected_chunks_stepped must be in [0, 2**31), got {expected}")
        # The step's stored frames count as well.
        frames = b * c * (k // self.engine.frame_stride) * self.engine.image_size**2 * 3
        self._check_memory(acts.nbytes + frames)
        # Detached from the caller: a step whose caller went away (a client timeout)
        # still finishes and stores its result, so the retry gets it.
        task = asyncio.create_task(self._run_step(sessions, acts, expected))
        self._detached.add(task)
        task.add_done_callback(self._detached_done)
        return await asyncio.shield(task)

    def _detached_done(self, task: asyncio.Task[StepOutcome]) -> None:
        self._detached.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its caller may be gone; the error went to it if not

    def _stored_outcome(
        self, sessions: list[Session], acts: np.ndarray, expected: int, started: float
    ) -> StepOutcome | None:
        """None: the sessions are at `expected`, step them. The stored outcome: this is a
        repeat of the step they all did last. Otherwise a Conflict saying where they are."""
        if all(s.chunks_stepped == expected for s in sessions):
            return None
        if all(s.is_repeat_of_last_step(expected, a) for s, a in zip(sessions, acts, strict=True)):
            results = [s.last_step.result for s in sessions if s.last_step is not None]
            timing = {"queue": 0.0, "denoise": 0.0, "total": time.perf_counter() - started}
            return StepOutcome(results, timing, replayed=True)
        for s, a in zip(sessions, acts, strict=True):
            if s.chunks_stepped == expected or s.is_repeat_of_last_step(expected, a):
                continue
            n, last = s.chunks_stepped, s.last_step
            where = f"session {_show(s.session_id)} has stepped {n} chunks"
            if n < expected:
                raise Conflict(
                    f"{where}, fewer than expected_chunks_stepped={expected}; "
                    f"send expected_chunks_stepped={n} to step it"
                )
            if last is not None and last.before == expected and n == expected + len(a):
                raise Conflict(
                    f"{where}: the step from {expected} chunks was already done with "
                    "other actions; a retry must resend the same actions"
                )
            if last is not None and last.before == expected:
                raise Conflict(
                    f"{where}: the step from {expected} chunks advanced it by "
                    f"{n - expected} chunks, this request has {len(a)}; a retry must resend "
                    "the same actions"
                )
            kept = (
                f"only its last step (from {last.before} chunks) can be repeated"
                if last is not None
                else "no step that named expected_chunks_stepped is kept for it"
            )
            raise Conflict(
                f"{where}, not expected_chunks_stepped={expected}, and {kept}; "
                f"send expected_chunks_stepped={n} to step it"
            )
        raise Conflict(  # members disagree: some are at `expected`, some already past it
            f"the sessions of this group are at different steps "
            f"({[s.chunks_stepped for s in sessions]} chunks); step them one by one"
        )

    async def _run_step(
        self, sessions: list[Session], acts: np.ndarray, expected: int | None
    ) -> StepOutcome:
        started = time.perf_counter()
        b, c, _, _ = acts.shape
        async with contextlib.AsyncExitStack() as stack:
            # Always in group order, so two steps of one group cannot deadlock.
            for s in sessions:
                await stack.enter_async_context(s.lock)
            for s in sessions:
                if s.closed:
                    raise self._not_found("session", s.session_id)
            if expected is not None:
                stored = self._stored_outcome(sessions, acts, expected, started)
                if stored is not None:
                    now = self.clock()
                    for s in sessions:
                        s.last_active_at = now
                    return stored
            for s in sessions:
                if s.chunks_stepped + c > s.max_chunks:
                    raise InvalidArgument(
                        f"session {_show(s.session_id)} has stepped {s.chunks_stepped} of its "
                        f"{s.max_chunks} chunks; {c} more would pass the budget (open a new "
                        "session or replay this one)"
                    )
            for s in sessions:
                s.last_active_at = self.clock()
                s.last_step = None  # superseded, whatever happens below
            frames: list[np.ndarray] = []
            queue_s = model_s = 0.0
            before = [(s.chunks_stepped, _rollout_state(s.rollout)) for s in sessions]
            with self.engine.admit(b):
                for ci in range(c):
                    handle = self.engine.submit([s.rollout for s in sessions], acts[:, ci])
                    try:
                        res = await handle.result()
                    except Exception:
                        # A failed step (e.g. the model server down) leaves its sessions as
                        # they were, state and count, so a retry with the same
                        # expected_chunks_stepped runs it again instead of getting a 409.
                        await handle.settled()
                        for s, (n, state) in zip(sessions, before, strict=True):
                            _restore_rollout(s.rollout, state)
                            s.forget_after(n)
                        raise
                    except BaseException:
                        # Cancelled (the caller went away): a rollout that went into a model
                        # call advances anyway; record its chunk so state and record agree.
                        for s, ran, chunk in zip(
                            sessions, handle.started, acts[:, ci], strict=True
                        ):
                            if ran:
                                s.record(chunk)
                        raise
                    for s, chunk in zip(sessions, acts[:, ci], strict=True):
                        s.record(chunk)
                    frames.append(res.frames)  # (B, F, H, W, 3)
                    queue_s += res.queue_s
                    model_s += res.model_s
            # (B, C*F, H, W, 3); one chunk (the usual step) needs no concatenation copy
            per_session = frames[0] if len(frames) == 1 else np.concatenate(frames, axis=1)
            results = []
            now = self.clock()
            for i, s in enumerate(sessions):
                s.last_active_at = now
                result = StepResult(
                    session_id=s.session_id,
                    frames=np.array(per_session[i]),  # its own copy: it may be kept
                    truncated=s.chunks_stepped >= s.max_chunks,
                    chunks_stepped=s.chunks_stepped,
                )
                if expected is not None:
                    s.last_step = _LastStep(before=expected, result=result)
                results.append(result)
        self._update_gauges()
        timing = {"queue": queue_s, "denoise": model_s, "total": time.perf_counter() - started}
        return StepOutcome(results, timing)

    # ------------------------------------------------------------ replay
    async def replay(self, session_id: str, seed: int | None = None) -> ReplayResult:
        """Rebuild the session from its start frame under `seed` and apply its recorded chunks.

        No seed: a fresh one, different from the session's. The session itself is unchanged.
        """
        started = time.perf_counter()
        s = self._lookup(session_id)
        if seed is None:
            seed = draw_seed()
            while seed == s.seed:
                seed = draw_seed()
        if not 0 <= seed < SEED_LIMIT:
            raise InvalidArgument(f"seed must be in [0, 2**63), got {seed}")
        chunks = list(s.actions)  # a snapshot: the session may be stepped meanwhile
        self.engine.check_output(1, 1, sum(len(a) for a in chunks))
        s.last_active_at = self.clock()
        size = self.engine.image_size
        frames: list[np.ndarray] = [np.zeros((0, size, size, 3), np.uint8)]
        queue_s = model_s = 0.0
        with self.engine.admit(1):
            rollouts, _ = await self.engine.start_rollouts(s.start.frame, [seed])
            for chunk in chunks:
                res = await self.engine.submit(rollouts, chunk[None]).result()
                frames.append(res.frames[0])
                queue_s += res.queue_s
                model_s += res.model_s
        s.last_active_at = self.clock()
        return ReplayResult(
            session_id=s.session_id,
            frames=np.concatenate(frames),
            seed=seed,
            provenance={**self.engine.provenance(), "seed": str(seed)},
            timing={"queue": queue_s, "denoise": model_s, "total": time.perf_counter() - started},
        )
