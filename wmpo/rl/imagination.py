"""Imagined rollouts for GRPO, through the simulator and judge services (never their models).

One *group* = G rollouts forked from one real start frame (``create_group``: they share the
encoded start and differ in noise and actions). All groups of a batch advance in lockstep:
the policy picks the next chunk for every member of every group in one forward pass (at the
sampling temperature, storing the chunk's log-prob: the "old" log-prob of the GRPO ratio),
then every group is stepped at once from a thread pool so the simulator's step-level
batching sees them together. After the horizon, each member's video (start frame + imagined
frames) is judged; the first clip the judge passes marks the chunk where the task was done,
and later chunks are masked out of the loss (the episode ended there).

Dual-noise verification (RAW-Dream): a member judged a success is replayed by the simulator
under fresh noise and judged again; ``wmpo.judge.rewards.dual_noise_group`` turns the two
verdicts into rewards, flags and a discard decision.

A member's reward (before verification) is its judged success (``reward="success"``, WMPO's
binary reward) or RoboStereo's temporally weighted clip reward over the judge's per-clip
confidences (``reward="clip"``, OEPL): dense, so a group whose members all pass or all fail
still ranks them and teaches something. Or RoboStereo's IEPL imitation reward
(``reward="imitation"``): the scripted expert's actions from the same start
(``StartState.expert_actions``) are imagined as one more member of the group, in the same
batched steps, and each member's reward is minus the mean perceptual distance between its
imagined frames and the expert's, frame by frame (``imitation``, e.g.
``wmpo.judge.perceptual.FeatureDistance.distance``). The world model renders both, so its
errors in rendering the scene weigh on both alike; the judge still judges every member, for the
episode's end and the imagined-success metric.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from wmpo_client.protocols import Judge, Simulator
from wmpo_client.results import CreateSessionResult, StepOutcome

from wmpo.judge.rewards import REWARD_KINDS, clip_reward, dual_noise_group, imitation_reward
from wmpo.models.policy import Policy, chunk_log_prob

log = logging.getLogger("wmpo.rl.imagination")
VERDICT_REWARDS = tuple(k for k in REWARD_KINDS if k != "imitation")  # rewards read from the verdict alone
# A perceptual distance: frames a (N, H, W, 3), b (N or a divisor M of N, ...) uint8 -> (N,) distances
# between a[i] and b[i % M], 0 for identical frames.
Distance = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class VideoVerdict:
    success: bool
    score: float
    done_frame: int | None  # index (in the judged video) of the frame where success shows
    clip_scores: Sequence[float] = ()  # per stride-1 clip (a classifier judge); () where there are none


def member_reward(verdict: VideoVerdict, kind: str) -> float:
    """A rollout's reward before verification from its verdict: its success (1/0), or (``clip``)
    the temporally weighted clip reward of its per-clip confidences; a verdict without clip scores
    (the real environment's true success flag) keeps its success. (``imitation`` needs the
    expert's video, not only the verdict: ``imitation_rewards``.)"""
    if kind not in VERDICT_REWARDS:
        raise ValueError(f"reward kind must be one of {', '.join(VERDICT_REWARDS)}, got {kind!r}")
    if kind == "clip" and len(verdict.clip_scores):
        return clip_reward(np.asarray(verdict.clip_scores))
    return float(verdict.success)


class RolloutJudge(Protocol):
    def judge_videos(self, videos: list[np.ndarray], instructions: list[str], frame_stride: int,
                     session_ids: list[str] | None = None) -> list[VideoVerdict]: ...


class GroupSimulator(Protocol):
    """Where groups are imagined: ``ServiceGroupSimulator`` (the simulator service, with replica
    failover) or ``wmpo.rl.real.RealGroupSimulator`` (MetaWorld itself, the online baseline)."""

    def create_group(self, start: StartState, group_size: int, seed: int | None = None,
                     max_chunks: int = 0) -> Any: ...

    def step_group(self, group_id: str, actions: np.ndarray) -> Any: ...

    def replay(self, session_id: str, seed: int | None = None) -> Any: ...

    def close_group(self, group_id: str) -> Any: ...


@dataclass
class StartState:
    frame: np.ndarray  # (H, W, 3) uint8, a real first frame
    instruction: str
    task: str
    seed: int  # the MetaWorld layout seed it came from
    # (steps, 4): the scripted expert's actions from this layout, for the imitation reward
    expert_actions: np.ndarray | None = None


@dataclass
class ImaginedGroup:
    start: StartState
    observations: np.ndarray  # (G, C, H, W, 3): the frame the policy saw before chunk c
    tokens: np.ndarray  # (G, C, K, D) int64
    old_logp: np.ndarray  # (G, C) log-prob of each chunk under the sampling policy
    videos: np.ndarray  # (G, 1 + C * F, H, W, 3): start frame + imagined frames
    chunk_mask: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (G, C) chunks inside the episode
    success: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (G,) judge verdicts
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (G,) after verification
    flagged: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (G,) dual-noise flags
    discard: bool = False
    session_ids: list[str] = field(default_factory=list)


def temperature_log_prob(policy: Policy, images: torch.Tensor, text: torch.Tensor, tokens: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """Log-prob (B,) of token chunks under the policy at ``temperature``: the distribution the chunks
    were sampled from, so old and new log-probs of the ratio refer to the same thing."""
    return chunk_log_prob(policy(images, text) / temperature, tokens)


@torch.no_grad()
def sample_chunks(policy: Policy, frames: np.ndarray, instructions: list[str], temperature: float,
                  gen: torch.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actions (B, K, D) float32, tokens (B, K, D), log-probs (B,)) for frames (B, H, W, 3)."""
    images = torch.from_numpy(np.ascontiguousarray(frames))
    text = policy.embed(instructions)
    logits = policy(images, text) / temperature
    probs = F.softmax(logits, dim=-1).flatten(0, 2)
    tokens = torch.multinomial(probs, 1, generator=gen).view(logits.shape[:-1])
    logp = chunk_log_prob(logits, tokens)
    actions = policy.tokenizer.decode(tokens).clamp(-1, 1)
    return actions.numpy().astype(np.float32), tokens.numpy(), logp.numpy()


def imagine_groups(sim: GroupSimulator, judge: RolloutJudge, policy: Policy, starts: list[StartState], group_size: int,
                   chunks: int, temperature: float, seed: int, verify: bool = True, pool: ThreadPoolExecutor | None = None,
                   timing: dict[str, float] | None = None, reward: str = "success",
                   imitation: Distance | None = None) -> list[ImaginedGroup]:
    """Imagine, judge and verify one group per start state (see the module docstring); ``reward`` is
    the member reward's kind (``REWARD_KINDS``); ``imitation`` the perceptual distance the
    imitation reward needs. Seconds spent imagining and judging (with verification) are added to
    ``timing``."""
    timing = timing if timing is not None else {}
    t0 = time.perf_counter()
    expert = _expert_chunks(starts, chunks, policy.config.chunk) if reward == "imitation" else None
    if expert is not None and imitation is None:
        raise ValueError("the imitation reward needs a perceptual distance (imitation=...)")
    gen = torch.Generator().manual_seed(seed)
    pool = pool or ThreadPoolExecutor(max(1, len(starts)))
    extra = int(expert is not None)  # the expert's rollout: one more member, stepped in the same calls
    created = list(pool.map(lambda s: sim.create_group(s[1], group_size + extra, seed=seed * 1000 + s[0],
                                                      max_chunks=chunks), enumerate(starts)))
    B, G = len(starts), group_size
    obs = np.stack([np.repeat(s.frame[None], G, 0) for s in starts])  # (B, G, H, W, 3)
    instr = [s.instruction for s in starts for _ in range(G)]
    all_obs, all_tok, all_logp, all_frames = [], [], [], []
    try:
        for ci in range(chunks):
            actions, tokens, logp = sample_chunks(policy, obs.reshape(B * G, *obs.shape[2:]), instr,
                                                  temperature, gen)
            all_obs.append(obs)
            all_tok.append(tokens.reshape(B, G, *tokens.shape[1:]))
            all_logp.append(logp.reshape(B, G))
            acts = actions.reshape(B, G, *actions.shape[1:])
            if expert is not None:
                acts = np.concatenate([acts, expert[:, ci, None]], axis=1)  # (B, G + 1, K, 4)
            outcomes = list(pool.map(sim.step_group, [c.group_id for c in created], list(acts)))
            frames = np.stack([np.stack([r.frames for r in o.results]) for o in outcomes])  # (B, G(+1), F, H, W, 3)
            all_frames.append(frames)
            obs = frames[:, :G, -1]
    except BaseException:
        for c in created:
            _close(sim, c.group_id)
        raise
    groups, dense = [], []
    for b, s in enumerate(starts):
        video = np.concatenate([np.repeat(s.frame[None, None], G + extra, 0)] + [f[b] for f in all_frames], axis=1)
        groups.append(ImaginedGroup(
            start=s, observations=np.stack([o[b] for o in all_obs], 1), tokens=np.stack([t[b] for t in all_tok], 1),
            old_logp=np.stack([lp[b] for lp in all_logp], 1), videos=video[:G],
            session_ids=created[b].session_ids[:G]))
        if expert is not None:
            dense.append(imitation_rewards(video[:G], video[G], imitation))
    frames_per_chunk = all_frames[0].shape[2]
    frame_stride = all_tok[0].shape[2] // frames_per_chunk  # env steps per imagined frame
    t1 = time.perf_counter()
    timing["imagine_s"] = timing.get("imagine_s", 0.0) + t1 - t0
    verify_s = _judge_and_verify(sim, judge, groups, frames_per_chunk, frame_stride, seed, verify, pool, reward,
                                 dense if expert is not None else None)
    timing["judge_s"] = timing.get("judge_s", 0.0) + time.perf_counter() - t1 - verify_s
    timing["verify_s"] = timing.get("verify_s", 0.0) + verify_s
    timing["imagined_frames"] = timing.get("imagined_frames", 0.0) + sum(
        g.videos.shape[0] * (g.videos.shape[1] - 1) for g in groups)
    for c in created:
        _close(sim, c.group_id)
    return groups


def _expert_chunks(starts: list[StartState], chunks: int, k: int) -> np.ndarray:
    """(B, chunks, K, 4): each start's expert actions for the horizon."""
    out = []
    for s in starts:
        a = s.expert_actions
        if a is None or len(a) < chunks * k:
            have = 0 if a is None else len(a)
            raise ValueError(f"the imitation reward needs the expert's first {chunks * k} actions from each start; "
                             f"{s.task} seed {s.seed} has {have}")
        out.append(np.asarray(a[: chunks * k], dtype=np.float32).reshape(chunks, k, -1))
    return np.stack(out)


def imitation_rewards(videos: np.ndarray, expert: np.ndarray, distance: Distance) -> np.ndarray:
    """(G,) IEPL rewards: minus the mean perceptual distance between each member's frames and the
    expert's, frame by frame (the shared start frame left out)."""
    n = expert.shape[0] - 1
    d = distance(videos[:, 1:].reshape(-1, *videos.shape[2:]), expert[1:])  # the expert's features once
    return imitation_reward(np.asarray(d).reshape(len(videos), n)).mean(1)


def _close(sim: GroupSimulator, group_id: str | None) -> None:
    with contextlib.suppress(Exception):  # best effort: sessions also expire after their idle TTL
        sim.close_group(group_id)


def done_chunk(done_frame: int | None, frames_per_chunk: int, chunks: int) -> int:
    """Number of chunks inside the episode: all of them, or up to the chunk that produced the frame
    where the judge saw success (frame 0 is the start frame; chunk c makes frames c*F+1..(c+1)*F)."""
    if done_frame is None:
        return chunks
    return int(min(max((done_frame + frames_per_chunk - 1) // frames_per_chunk, 1), chunks))


def _judge_and_verify(sim: GroupSimulator, judge: RolloutJudge, groups: list[ImaginedGroup], frames_per_chunk: int,
                      frame_stride: int, seed: int, verify: bool, pool: ThreadPoolExecutor,
                      reward: str = "success", dense: list[np.ndarray] | None = None) -> float:
    """Judge every member, replay and re-judge the judged successes; returns the seconds spent on
    verification (replays and their verdicts). ``dense``: per group, rewards computed elsewhere
    (imitation) instead of from the verdicts."""
    videos = [v for g in groups for v in g.videos]
    instr = [g.start.instruction for g in groups for _ in g.videos]
    verdicts = judge.judge_videos(videos, instr, frame_stride, [sid for g in groups for sid in g.session_ids])
    G = len(groups[0].videos)
    chunks = groups[0].tokens.shape[1]
    raw: list[np.ndarray] = []
    for i, g in enumerate(groups):
        vs = verdicts[i * G:(i + 1) * G]
        g.success = np.asarray([v.success for v in vs])
        raw.append(dense[i] if dense is not None else np.asarray([member_reward(v, reward) for v in vs]))
        g.chunk_mask = np.zeros((G, chunks), bool)
        for m, v in enumerate(vs):
            g.chunk_mask[m, : done_chunk(v.done_frame if v.success else None, frames_per_chunk, chunks)] = True
    # Dual-noise verification: replay every judged success under fresh noise, judge it again;
    # except, with the binary reward, in a group judged all successes: any flags leave its rewards
    # all equal (the mean of the unflagged ones), so it teaches nothing either way, and its replays
    # would be the step's largest waste (a task the policy already solves).
    todo = [(i, m) for i, g in enumerate(groups) for m in np.flatnonzero(g.success)
            if verify and not (reward == "success" and g.success.all())]
    t0 = time.perf_counter()
    replays = list(pool.map(lambda im: sim.replay(groups[im[0]].session_ids[im[1]], seed=seed * 7919 + 31 * im[0]
                                                  + int(im[1])), todo))
    replay_ok = {im: True for im in todo}
    if todo:
        rv = judge.judge_videos(
            [np.concatenate([groups[i].start.frame[None], r.frames]) for (i, _), r in zip(todo, replays, strict=True)],
            [groups[i].start.instruction for i, _ in todo], frame_stride)  # replays: no session of their own
        replay_ok = {im: v.success for im, v in zip(todo, rv, strict=True)}
    verify_s = time.perf_counter() - t0
    for i, g in enumerate(groups):
        replay = np.asarray([replay_ok.get((i, m), True) for m in range(G)])
        v = dual_noise_group(raw[i], g.success, replay if verify else g.success)
        g.rewards, g.flagged, g.discard = v.rewards, v.flagged, v.discard
    return verify_s


class ClassifierRolloutJudge:
    """A ``RolloutJudge`` over an in-process ``SuccessJudge`` (tests and single-process tools; the
    trainer job uses the judge service's client)."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge

    def judge_videos(self, videos: list[np.ndarray], instructions: list[str], frame_stride: int,
                     session_ids: list[str] | None = None) -> list[VideoVerdict]:
        verdicts = self.judge.judge_many(videos, instructions, [frame_stride] * len(videos))
        return [VideoVerdict(v.success, v.score, v.done_frame, tuple(v.clip_scores)) for v in verdicts]


class ServiceRolloutJudge:
    """A ``RolloutJudge`` over the judge service's client: one request per video, sent concurrently so
    the service batches them into one classifier pass."""

    def __init__(self, client: Judge, workers: int = 16) -> None:
        self.client = client
        self.pool = ThreadPoolExecutor(workers)
        self.provenance: dict[str, str] = {}  # the serving judge (classifier hash, threshold), from the last verdict

    def judge_videos(self, videos: list[np.ndarray], instructions: list[str], frame_stride: int,
                     session_ids: list[str] | None = None) -> list[VideoVerdict]:
        results = list(self.pool.map(lambda vi: self.client.judge(vi[0], vi[1], frame_stride=frame_stride),
                                     zip(videos, instructions, strict=True)))
        if results:
            self.provenance = dict(results[-1].provenance)
        return [VideoVerdict(r.verdict.success, r.verdict.score, r.verdict.done_frame, tuple(r.verdict.clip_scores))
                for r in results]


class NoSimulatorReplica(RuntimeError):
    """Every simulator replica failed (or was marked down) on every attempt at a call."""


def is_replica_failure(exc: BaseException) -> bool:
    """A client error that says the replica (not the request) is the problem: unreachable, timed
    out, a 5xx, or NOT_FOUND for a session or group (sessions live in one replica's memory, so a
    restarted replica no longer knows them). Duck-typed on ``wmpo_client.SimulatorError``."""
    code = getattr(exc, "code", None)
    status = getattr(exc, "http_status", None) or 0
    return code in _REPLICA_FAILURES or status >= 500


_REPLICA_FAILURES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "NOT_FOUND"})


@dataclass
class _Group:
    start: StartState
    size: int
    seed: int | None
    max_chunks: int
    actions: list[np.ndarray] = field(default_factory=list)  # (G, C_i, K, D) per step call, in order
    replica: int | None = None  # where it lives now; None: to be (re)created
    real: CreateSessionResult | None = None  # the replica's


@dataclass(frozen=True)
class FailoverGroup:
    """What ``create_group`` returns: ids of this simulator's, stable across replica failovers."""

    group_id: str
    session_ids: list[str]


class ServiceGroupSimulator:
    """The simulator service's client(s) as the trainer's group simulator, with replica failover.

    ``clients``: one simulator client, or one per replica (``GRPOJobConfig.simulator_url`` may list
    several, comma-separated). Each group is created on the least loaded replica that is not marked
    down. Group and session ids handed out are this object's own, mapped to the replica's.

    Failover: when a call fails because of the replica (``is_replica_failure``: unreachable, 5xx,
    timeout, or its sessions are gone), a failed replica is marked down for ``down_s`` and the group
    is re-imagined from its start on another replica (the same one if it is the only one) with the
    same seed, then re-stepped with every action chunk it was given so far in one call, and the
    failed call is made again. Imagination is seeded per group and depends only on (start, seed,
    actions), so the redo reproduces the lost rollout (up to float rounding when the batch
    composition differs: CPU matmuls are not batch-invariant) and no step is lost. A replay of a
    member whose replica died is rebuilt on another replica from a one-member session stepped with
    that member's actions (a replay depends only on the start, the actions and the replay seed).
    A call gives up with ``NoSimulatorReplica`` after ``attempts`` tries (default: two per replica,
    at least 3), waiting with backoff while every replica is down.
    """

    def __init__(self, clients: Simulator | Sequence[Simulator], *, names: list[str] | None = None, down_s: float = 30.0,
                 attempts: int | None = None, backoff_s: float = 0.5) -> None:
        self.clients = list(clients) if isinstance(clients, list | tuple) else [clients]
        if not self.clients:
            raise ValueError("ServiceGroupSimulator needs at least one simulator client")
        self.names = names or [str(getattr(c, "base_url", f"replica {i}")) for i, c in enumerate(self.clients)]
        self.down_s = down_s
        self.attempts = attempts or max(3, 2 * len(self.clients))
        self.backoff_s = backoff_s
        self.failovers = 0  # calls redone on another replica (or the same one, recreated)
        self.provenance: dict[str, str] = {}  # the serving model and sampler, from the last group created
        self._down_until = [0.0] * len(self.clients)
        self._groups: dict[str, _Group] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ placement
    def _pick(self, avoid: int | None) -> int:
        """The least loaded replica that is up (not ``avoid`` if another is up); if all are down,
        the one that comes back first."""
        with self._lock:
            now = time.monotonic()
            up = [i for i in range(len(self.clients)) if self._down_until[i] <= now]
            if not up:
                return min(range(len(self.clients)), key=lambda i: self._down_until[i])
            if len(up) > 1 and avoid in up:
                up.remove(avoid)
            load = collections.Counter(g.replica for g in self._groups.values())
            return min(up, key=lambda i: (load[i], i))

    def _mark_down(self, replica: int, exc: BaseException) -> None:
        if getattr(exc, "code", None) == "NOT_FOUND":
            return  # alive, only its sessions are gone (a restart): it may host the redo
        with self._lock:
            self._down_until[replica] = time.monotonic() + self.down_s

    def _place(self, g: _Group, avoid: int | None) -> None:
        """(Re)create ``g`` on a replica and bring it to the chunk it had reached."""
        r = self._pick(avoid)
        client = self.clients[r]
        g.replica, g.real = r, None
        real = client.create_group(g.start.frame, g.size, g.start.instruction, seed=g.seed, max_chunks=g.max_chunks)
        g.real, self.provenance = real, dict(real.provenance)
        if g.actions:
            _step(client, real, np.concatenate(g.actions, axis=1), 0)

    def _with_failover(self, g: _Group, what: str, call: Callable[[Any, Any], Any]) -> Any:
        errors: dict[str, str] = {}
        for attempt in range(self.attempts):
            r = g.replica
            try:
                if g.real is None:
                    self._place(g, avoid=r)
                    r = g.replica
                return call(self.clients[g.replica], g.real)
            except Exception as exc:
                if not is_replica_failure(exc):
                    raise
                failed = g.replica if g.replica is not None else r
                if failed is not None:
                    self._mark_down(failed, exc)
                    errors[self.names[failed]] = str(exc)[:300]
                log.warning("simulator replica %s failed during %s (%s); re-imagining the group from "
                            "its start (attempt %d of %d)", self.names[failed] if failed is not None else "?",
                            what, exc, attempt + 1, self.attempts)
                with self._lock:
                    self.failovers += 1
                g.real = None
                if all(t > time.monotonic() for t in self._down_until):
                    time.sleep(min(self.backoff_s * 2 ** attempt, 5.0))
        raise NoSimulatorReplica(
            f"no simulator replica could {what} after {self.attempts} attempts: "
            + "; ".join(f"{name}: {err}" for name, err in errors.items()))

    # ------------------------------------------------------------ the group simulator
    def create_group(self, start: StartState, group_size: int, seed: int | None = None,
                     max_chunks: int = 0) -> FailoverGroup:
        g = _Group(start, group_size, seed, max_chunks)
        self._with_failover(g, "create a group", lambda client, real: real)
        gid = f"g{next(self._ids)}"
        with self._lock:
            self._groups[gid] = g
        return FailoverGroup(gid, [f"{gid}/{m}" for m in range(group_size)])

    def step_group(self, group_id: str, actions: np.ndarray) -> Any:
        g = self._groups[group_id]
        actions = np.asarray(actions)
        done = sum(a.shape[1] for a in g.actions)  # chunks the replica's sessions have stepped
        out = self._with_failover(g, "step a group", lambda client, real: _step(client, real, actions, done))
        g.actions.append(actions if actions.ndim == 4 else actions[:, None])
        return out

    def replay(self, session_id: str, seed: int | None = None) -> Any:
        gid, m = session_id.rsplit("/", 1)
        g, member = self._groups[gid], int(m)
        if g.real is not None:
            try:
                return self.clients[g.replica].replay(g.real.session_ids[member], seed=seed)
            except Exception as exc:
                if not is_replica_failure(exc):
                    raise
                self._mark_down(g.replica, exc)
                log.warning("simulator replica %s failed during a replay (%s); rebuilding the member "
                            "elsewhere", self.names[g.replica], exc)
                with self._lock:
                    self.failovers += 1
        # A one-member group with this member's actions, on whichever replica is up.
        solo = _Group(g.start, 1, g.seed, g.max_chunks, [a[member:member + 1] for a in g.actions])
        try:
            return self._with_failover(solo, "replay a session",
                                       lambda client, real: client.replay(real.session_ids[0], seed=seed))
        finally:
            if solo.real is not None:
                _close_quietly(self.clients[solo.replica], solo.real)

    def close_group(self, group_id: str) -> None:
        with self._lock:
            g = self._groups.pop(group_id, None)
        if g is not None and g.real is not None:
            _close_quietly(self.clients[g.replica], g.real)


def _step(client: Simulator, real: CreateSessionResult, actions: np.ndarray, done: int) -> StepOutcome:
    """Step a created group (G, ..., K, D), or a one-member creation, which has no group id.

    ``done``: the chunks its sessions have stepped so far. Passed as ``expected_chunks_stepped``
    it makes the step idempotent, so the client re-sends a step whose answer was lost in transit
    (the service returns the stored result instead of stepping twice) rather than the group
    failing over and being re-imagined."""
    if real.group_id is None:
        return client.step(real.session_ids[0], actions[0], expected_chunks_stepped=done)
    return client.step_group(real.group_id, actions, expected_chunks_stepped=done)


def _close_quietly(client: Simulator, real: CreateSessionResult) -> None:
    with contextlib.suppress(Exception):  # best effort: sessions also expire after their idle TTL
        if real.group_id is None:
            client.close_session(real.session_ids[0])
        else:
            client.close_group(real.group_id)
