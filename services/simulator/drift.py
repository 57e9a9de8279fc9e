"""The drift monitor: what `/v1/imagine` imagined, compared with what really happened.

After executing a chunk that `/v1/imagine` imagined, a robot team (or the evaluation
harness, `wmpo eval policy --verify`) reports the outcome: the imagine request id, the
candidate it executed, the real frames that followed and the real success flag when
known (`POST /v1/outcomes`, gRPC `ReportOutcome`). The simulator compares the real
frames with the frames it imagined for that candidate and exports rolling drift
figures as Prometheus metrics, so ops see when imagination and reality part ways.

Pieces:
- `ImaginedStore`: what each imagine request imagined, by request id, for a bounded
  time (WMPO_OUTCOME_TTL_S) and, in memory, a bounded number of requests
  (WMPO_OUTCOME_MAX_RECORDS). In memory by default; in Redis with WMPO_REDIS_URL,
  so an outcome may reach any replica. The store also keeps each request's accepted
  outcome: a repeat with the same content returns the stored answer (`replayed`,
  counted once); a different outcome for the same request id is a 409.
- `compare`: per-frame PSNR and the project's perceptual distance
  (`wmpo.judge.perceptual`, LPIPS's recipe on the world model's own encoder).
- `DriftMonitor`: metrics (histograms for PromQL windows across replicas, rolling
  gauges over this replica's last WMPO_DRIFT_WINDOW outcomes), the calibration curve
  (the judge's confidence for the executed candidate vs real success, in 10 bins) and
  an optional JSONL log of outcomes (WMPO_DRIFT_LOG) that `wmpo drift report` reads.

Alignment: imagined frame j of a candidate follows actions [0, (j + 1) * stride) of
its chunk (stride: the model's frame stride), so the real frame to send for it is the
camera frame after action (j + 1) * stride; `frames` may be a prefix (T' <= T frames:
the episode ended early).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from services.common.errors import Conflict, InvalidArgument, Unavailable
from services.common.queues.base import decode_payload, encode_payload

# The calibration curve: confidence bins [0, 0.1), ..., [0.9, 1.0].
CALIBRATION_BINS = 10
# PSNR of identical frames (an infinite value would not survive JSON or Prometheus sums).
PSNR_CAP_DB = 100.0

OUTCOME_RESULTS = ("success", "failure", "unknown", "replayed", "rejected")
OUTCOMES = Counter(
    "wmpo_outcomes_total",
    "Outcome reports by result: success, failure, unknown (no real success flag), "
    "replayed (a repeat of an accepted report), rejected (unknown or expired request id, a "
    "candidate or frames that do not fit what was imagined, a conflicting repeat).",
    ["service", "result"],
)
DRIFT_PSNR = Histogram(
    "wmpo_drift_psnr_db",
    "Per outcome: mean PSNR (dB) of the real frames against the imagined ones.",
    ["service"],
    buckets=(5, 10, 12.5, 15, 17.5, 20, 22.5, 25, 27.5, 30, 35, 40, 50),
)
DRIFT_PERCEPTUAL = Histogram(
    "wmpo_drift_perceptual",
    "Per outcome: mean perceptual distance (ae-lpips) of the real frames to the imagined ones.",
    ["service"],
    buckets=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
)
ROLLING_PSNR = Gauge(
    "wmpo_drift_psnr_rolling_db", "Mean PSNR (dB) over the last WMPO_DRIFT_WINDOW outcomes.",
    ["service"],
)
ROLLING_PERCEPTUAL = Gauge(
    "wmpo_drift_perceptual_rolling",
    "Mean perceptual distance over the last WMPO_DRIFT_WINDOW outcomes.", ["service"],
)
WINDOW_OUTCOMES = Gauge(
    "wmpo_drift_window_outcomes", "Outcomes in the rolling window.", ["service"]
)
CALIBRATION_ERROR = Gauge(
    "wmpo_drift_calibration_error",
    "Expected calibration error of the judge's confidence vs real success over the rolling "
    "window's outcomes with both (0: calibrated; NaN: none yet).",
    ["service"],
)
CALIBRATION_COUNT = Gauge(
    "wmpo_drift_calibration_count", "Rolling window: outcomes per confidence bin.",
    ["service", "bin"],
)
CALIBRATION_SUCCESS = Gauge(
    "wmpo_drift_calibration_success_rate",
    "Rolling window: real success rate per confidence bin (NaN: empty bin).", ["service", "bin"],
)
CALIBRATION_CONFIDENCE = Gauge(
    "wmpo_drift_calibration_confidence",
    "Rolling window: mean judge confidence per confidence bin (NaN: empty bin).",
    ["service", "bin"],
)


def bin_label(index: int) -> str:
    """'0.0-0.1', ..., '0.9-1.0'."""
    return f"{index / CALIBRATION_BINS:.1f}-{(index + 1) / CALIBRATION_BINS:.1f}"


def bin_of(confidence: float) -> int:
    return min(int(confidence * CALIBRATION_BINS), CALIBRATION_BINS - 1)


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class Imagined:
    """What one imagine request imagined, kept for its outcome."""

    frames: np.ndarray  # (N, T, H, W, 3) uint8
    confidences: list[float] | None  # the judge's, with verify
    instruction: str
    frame_stride: int
    world_model: str  # checkpoint hash (provenance)
    created_at: float

    def to_payload(self) -> dict[str, Any]:
        return {"frames": self.frames, "confidences": self.confidences,
                "instruction": self.instruction, "frame_stride": self.frame_stride,
                "world_model": self.world_model, "created_at": self.created_at}

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> Imagined:
        return cls(p["frames"], p["confidences"], p["instruction"], int(p["frame_stride"]),
                   p["world_model"], float(p["created_at"]))


@dataclass(frozen=True)
class Outcome:
    """An outcome report, validated against the wire types (not yet against the record)."""

    request_id: str
    candidate: int
    frames: np.ndarray  # (T', H, W, 3) uint8
    success: bool | None

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.candidate}|{self.success}|{self.frames.shape}".encode())
        h.update(np.ascontiguousarray(self.frames).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class OutcomeFigures:
    """The comparison of one outcome: what the caller gets back and the log's line."""

    request_id: str
    candidate: int
    frames_compared: int
    psnr_db: list[float]
    perceptual: list[float] | None  # None: no perceptual distance on this backend
    psnr_mean_db: float
    perceptual_mean: float | None
    confidence: float | None  # the judge's for the executed candidate (verify)
    success: bool | None
    instruction: str
    world_model: str
    imagined_at: float
    reported_at: float
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ stores


class ImaginedStore(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def put(self, request_id: str, imagined: Imagined) -> None: ...
    async def get(self, request_id: str) -> Imagined | None: ...
    async def claim(self, request_id: str, digest: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        """Store `answer` as the request's outcome; the stored answer if one exists (same
        digest) or Conflict (another digest)."""
        ...


def _duplicate(request_id: str) -> Conflict:
    return Conflict(
        f"an outcome for request {request_id!r} was already reported with different content "
        "(candidate, frames or success); one outcome per imagine request"
    )


def _check_claim(request_id: str, stored: dict[str, Any], digest: str) -> dict[str, Any]:
    if stored.get("digest") != digest:
        raise _duplicate(request_id)
    return dict(stored["answer"])


class MemoryImaginedStore:
    """In process: an LRU of at most `max_records` requests, each kept `ttl_s` seconds."""

    def __init__(self, ttl_s: float, max_records: int) -> None:
        self.ttl_s, self.max_records = ttl_s, max_records
        self._records: OrderedDict[str, Imagined] = OrderedDict()
        self._outcomes: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._records.clear()
        self._outcomes.clear()

    def _expire(self, now: float) -> None:
        for store in (self._records, self._outcomes):
            while store:
                first = next(iter(store.values()))
                created = first.created_at if isinstance(first, Imagined) else first[0]
                if now - created <= self.ttl_s and len(store) <= self.max_records:
                    break
                store.popitem(last=False)

    async def put(self, request_id: str, imagined: Imagined) -> None:
        self._records.pop(request_id, None)  # a retried request: keep it as the newest
        self._records[request_id] = imagined
        self._expire(time.time())

    async def get(self, request_id: str) -> Imagined | None:
        self._expire(time.time())
        return self._records.get(request_id)

    async def claim(self, request_id: str, digest: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        self._expire(time.time())
        stored = self._outcomes.get(request_id)
        if stored is not None:
            return _check_claim(request_id, stored[1], digest)
        self._outcomes[request_id] = (time.time(), {"digest": digest, "answer": answer})
        return None


class RedisImaginedStore:
    """In Redis, shared by replicas: one key per request (and per outcome), expiring after
    `ttl_s` (Redis' maxmemory policy bounds the total)."""

    def __init__(self, redis_url: str, prefix: str, ttl_s: float) -> None:
        import redis.asyncio as aioredis  # lazy: only queue mode needs the redis package

        self._redis = aioredis.from_url(redis_url, decode_responses=True,
                                        socket_connect_timeout=5, socket_timeout=30)
        self.base = f"{prefix}:{{simulator.outcomes}}"
        self.ttl_ms = max(1, int(ttl_s * 1000))

    def _unreachable(self) -> Unavailable:
        return Unavailable("the outcome store (Redis) is unreachable; retry later")

    async def start(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
        except RedisError as exc:
            raise Unavailable(f"cannot reach Redis for the outcome store: {exc}") from None

    async def close(self) -> None:
        await self._redis.aclose()

    async def put(self, request_id: str, imagined: Imagined) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.set(f"{self.base}:imagined:{request_id}",
                                  encode_payload(imagined.to_payload()), px=self.ttl_ms)
        except RedisError:
            raise self._unreachable() from None

    async def get(self, request_id: str) -> Imagined | None:
        from redis.exceptions import RedisError

        try:
            text = await self._redis.get(f"{self.base}:imagined:{request_id}")
        except RedisError:
            raise self._unreachable() from None
        return None if text is None else Imagined.from_payload(decode_payload(text))

    async def claim(self, request_id: str, digest: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        from redis.exceptions import RedisError

        key = f"{self.base}:outcome:{request_id}"
        record = json.dumps({"digest": digest, "answer": answer})
        try:
            if await self._redis.set(key, record, px=self.ttl_ms, nx=True):
                return None
            text = await self._redis.get(key)
        except RedisError:
            raise self._unreachable() from None
        if text is None:  # expired in between: the claim is free again
            return await self.claim(request_id, digest, answer)
        return _check_claim(request_id, json.loads(text), digest)


# -------------------------------------------------------------- comparison


def psnr_db(real: np.ndarray, imagined: np.ndarray) -> list[float]:
    """Per-frame PSNR (dB) of uint8 frames (T, H, W, 3); identical frames: PSNR_CAP_DB."""
    diff = real.astype(np.float64) - imagined.astype(np.float64)
    mse = (diff**2).reshape(len(real), -1).mean(1)
    return [PSNR_CAP_DB if m == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / m)) for m in mse]


class Distance(Protocol):
    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


def check_outcome(outcome: Outcome, imagined: Imagined) -> np.ndarray:
    """The imagined frames (T', H, W, 3) to compare with `outcome.frames`; InvalidArgument
    naming the field for a candidate or frames that do not fit what was imagined."""
    n, t = imagined.frames.shape[:2]
    if not 0 <= outcome.candidate < n:
        raise InvalidArgument(
            f"candidate: {outcome.candidate} is out of range; request {outcome.request_id!r} "
            f"imagined {n} candidate(s) (0..{n - 1})"
        )
    size = imagined.frames.shape[2:]
    real = outcome.frames
    if real.shape[1:] != size:
        raise InvalidArgument(
            f"frames: expected (T, {size[0]}, {size[1]}, 3) like the imagined frames, "
            f"got shape {real.shape}"
        )
    if not 1 <= len(real) <= t:
        raise InvalidArgument(
            f"frames: {len(real)} frame(s) given; the candidate imagined {t} (send 1..{t}, "
            f"the real frame after every {imagined.frame_stride} action(s))"
        )
    return imagined.frames[outcome.candidate, : len(real)]


def check_outcome_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    """uint8 (T, H, W, 3), T >= 1: the real frames of an outcome (the size is checked
    against what was imagined, later)."""
    if frames.dtype != np.uint8:
        raise InvalidArgument(f"{name}: dtype must be uint8, got {frames.dtype.name}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InvalidArgument(
            f"{name}: expected real RGB frames (T, H, W, 3) with T >= 1, got shape {frames.shape}"
        )
    return frames


def compare(outcome: Outcome, imagined: Imagined, distance: Distance | None) -> OutcomeFigures:
    """Per-frame PSNR and perceptual distance of the outcome's real frames to the imagined."""
    fake = check_outcome(outcome, imagined)
    psnr = psnr_db(outcome.frames, fake)
    perceptual = None
    if distance is not None:
        perceptual = [float(d) for d in distance.distance(np.ascontiguousarray(outcome.frames),
                                                          np.ascontiguousarray(fake))]
    conf = imagined.confidences[outcome.candidate] if imagined.confidences else None
    return OutcomeFigures(
        request_id=outcome.request_id,
        candidate=outcome.candidate,
        frames_compared=len(psnr),
        psnr_db=[round(p, 4) for p in psnr],
        perceptual=None if perceptual is None else [round(p, 6) for p in perceptual],
        psnr_mean_db=round(float(np.mean(psnr)), 4),
        perceptual_mean=None if perceptual is None else round(float(np.mean(perceptual)), 6),
        confidence=conf,
        success=outcome.success,
        instruction=imagined.instruction,
        world_model=imagined.world_model,
        imagined_at=imagined.created_at,
        reported_at=time.time(),
    )


# ----------------------------------------------------------------- summary


@dataclass
class DriftSummary:
    """Drift figures over a set of outcomes (the rolling window, or a log)."""

    outcomes: int = 0
    psnr_mean_db: float | None = None
    perceptual_mean: float | None = None
    with_success: int = 0  # outcomes that carried a real success flag
    real_success_rate: float | None = None
    calibrated: int = 0  # outcomes with both a confidence and a real success flag
    calibration_error: float | None = None  # expected calibration error
    # Per bin: label, count, mean confidence, real success rate (None: empty).
    calibration: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(outcomes: Iterable[dict[str, Any]]) -> DriftSummary:
    """Figures over outcome dicts (`OutcomeFigures.to_json()`, or the JSONL log's lines)."""
    rows = list(outcomes)
    s = DriftSummary(outcomes=len(rows))
    psnr = [r["psnr_mean_db"] for r in rows if r.get("psnr_mean_db") is not None]
    perc = [r["perceptual_mean"] for r in rows if r.get("perceptual_mean") is not None]
    s.psnr_mean_db = round(float(np.mean(psnr)), 4) if psnr else None
    s.perceptual_mean = round(float(np.mean(perc)), 6) if perc else None
    flags = [bool(r["success"]) for r in rows if r.get("success") is not None]
    s.with_success = len(flags)
    s.real_success_rate = round(float(np.mean(flags)), 4) if flags else None
    pairs = [(float(r["confidence"]), bool(r["success"])) for r in rows
             if r.get("confidence") is not None and r.get("success") is not None]
    s.calibrated = len(pairs)
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(CALIBRATION_BINS)]
    for conf, ok in pairs:
        bins[bin_of(conf)].append((conf, ok))
    ece = 0.0
    for i, b in enumerate(bins):
        conf_mean = float(np.mean([c for c, _ in b])) if b else None
        rate = float(np.mean([ok for _, ok in b])) if b else None
        if b:
            ece += len(b) / len(pairs) * abs(rate - conf_mean)  # type: ignore[operator]
        s.calibration.append({
            "bin": bin_label(i), "count": len(b),
            "confidence": None if conf_mean is None else round(conf_mean, 4),
            "success_rate": None if rate is None else round(rate, 4),
        })
    s.calibration_error = round(ece, 4) if pairs else None
    return s


# ----------------------------------------------------------------- monitor


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


class DriftMonitor:
    """Counts outcomes, keeps the rolling window and its gauges, writes the log."""

    def __init__(self, service: str, window: int, log_path: str | None = None) -> None:
        self.service = service
        self.window: deque[dict[str, Any]] = deque(maxlen=window)
        self.log_path = Path(log_path) if log_path else None
        self._lock = asyncio.Lock()
        # Every series exists from the start (at 0), so rates and dashboards see them.
        for result in OUTCOME_RESULTS:
            OUTCOMES.labels(service, result)
        DRIFT_PSNR.labels(service)
        DRIFT_PERCEPTUAL.labels(service)
        self._publish(summarize([]))

    def count(self, result: str) -> None:
        OUTCOMES.labels(self.service, result).inc()

    async def observe(self, figures: OutcomeFigures) -> DriftSummary:
        """Record one accepted (new) outcome; the rolling window's figures after it."""
        row = figures.to_json()
        async with self._lock:
            self.count("unknown" if figures.success is None
                       else "success" if figures.success else "failure")
            DRIFT_PSNR.labels(self.service).observe(figures.psnr_mean_db)
            if figures.perceptual_mean is not None:
                DRIFT_PERCEPTUAL.labels(self.service).observe(figures.perceptual_mean)
            self.window.append(row)
            summary = summarize(self.window)
            self._publish(summary)
            if self.log_path is not None:
                await asyncio.to_thread(self._append, row)
        return summary

    def _append(self, row: dict[str, Any]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        with open(self.log_path, "a", encoding="utf-8") as f:  # type: ignore[arg-type]
            f.write(json.dumps(row, separators=(",", ":")) + "\n")

    def summary(self) -> DriftSummary:
        return summarize(self.window)

    def _publish(self, s: DriftSummary) -> None:
        svc = self.service
        ROLLING_PSNR.labels(svc).set(_nan(s.psnr_mean_db))
        ROLLING_PERCEPTUAL.labels(svc).set(_nan(s.perceptual_mean))
        WINDOW_OUTCOMES.labels(svc).set(s.outcomes)
        CALIBRATION_ERROR.labels(svc).set(_nan(s.calibration_error))
        for b in s.calibration:
            CALIBRATION_COUNT.labels(svc, b["bin"]).set(b["count"])
            CALIBRATION_SUCCESS.labels(svc, b["bin"]).set(_nan(b["success_rate"]))
            CALIBRATION_CONFIDENCE.labels(svc, b["bin"]).set(_nan(b["confidence"]))


# ------------------------------------------------------------------ report


def summary_from_metrics(text: str, service: str = "simulator") -> tuple[DriftSummary, dict[str, Any]]:
    """The rolling figures from a /metrics scrape (Prometheus text format), and the all-time
    ones (outcome counts by result; mean PSNR and perceptual distance from the histograms)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("service") != service:
                continue
            key = sample.labels.get("bin") or sample.labels.get("result") or ""
            values[(sample.name, key)] = sample.value

    def get(name: str, key: str = "") -> float | None:
        value = values.get((name, key))
        return None if value is None or math.isnan(value) else value

    if ("wmpo_drift_window_outcomes", "") not in values:
        raise ValueError(f"no wmpo_drift_* metrics for service={service!r} in the scrape: is it "
                         "a simulator's /metrics?")
    s = DriftSummary(outcomes=int(get("wmpo_drift_window_outcomes") or 0),
                     psnr_mean_db=get("wmpo_drift_psnr_rolling_db"),
                     perceptual_mean=get("wmpo_drift_perceptual_rolling"),
                     calibration_error=get("wmpo_drift_calibration_error"))
    for i in range(CALIBRATION_BINS):
        label = bin_label(i)
        count = int(get("wmpo_drift_calibration_count", label) or 0)
        s.calibrated += count
        s.calibration.append({"bin": label, "count": count,
                              "confidence": get("wmpo_drift_calibration_confidence", label),
                              "success_rate": get("wmpo_drift_calibration_success_rate", label)})
    totals = {r: int(get("wmpo_outcomes_total", r) or 0) for r in OUTCOME_RESULTS}
    lifetime: dict[str, Any] = {"outcomes_by_result": totals}
    for name, key in (("wmpo_drift_psnr_db", "psnr_mean_db"), ("wmpo_drift_perceptual", "perceptual_mean")):
        n, total = get(f"{name}_count"), get(f"{name}_sum")
        lifetime[key] = round(total / n, 4) if n and total is not None else None
        lifetime[f"{key}_outcomes"] = int(n or 0)
    return s, lifetime


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(s: DriftSummary, source: str, lifetime: dict[str, Any] | None = None,
                  threshold: float | None = None) -> str:
    """The figures as a short table (`wmpo drift report`)."""
    lines = [f"drift over {s.outcomes} outcome(s) ({source})",
             f"  PSNR, real vs imagined       {_fmt(s.psnr_mean_db, '.2f')} dB",
             f"  perceptual distance          {_fmt(s.perceptual_mean, '.4f')}"
             + ("" if threshold is None or s.perceptual_mean is None else
                f"   alert threshold {threshold:g}: "
                + ("ABOVE" if s.perceptual_mean > threshold else "below")),
             f"  calibration error (ECE)      {_fmt(s.calibration_error, '.4f')}"
             f"   over {s.calibrated} outcome(s) with a judge confidence and a real success flag"]
    if s.real_success_rate is not None:
        lines.append(f"  real success rate            {s.real_success_rate:.1%} of {s.with_success}")
    if lifetime:
        by = ", ".join(f"{k} {v}" for k, v in lifetime["outcomes_by_result"].items())
        lines.append(f"  since start: outcomes {by}; PSNR {_fmt(lifetime['psnr_mean_db'], '.2f')} dB, "
                     f"perceptual {_fmt(lifetime['perceptual_mean'], '.4f')}")
    lines.append("  calibration curve: confidence bin, outcomes, mean confidence, real success rate")
    for b in s.calibration:
        if b["count"]:
            lines.append(f"    {b['bin']}   {b['count']:>5}   {_fmt(b['confidence'], '.3f')}   "
                         f"{_fmt(b['success_rate'], '.3f')}")
    return "\n".join(lines)


def read_log(path: str | Path, last: int = 0) -> list[dict[str, Any]]:
    """The outcome rows of a JSONL log (WMPO_DRIFT_LOG); `last` > 0: only the newest `last`.
    ValueError naming the line for a line that is not an outcome."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or "psnr_mean_db" not in row:
                raise ValueError(f"{path}:{n}: not an outcome line (no psnr_mean_db)")
            rows.append(row)
    return rows[-last:] if last > 0 else rows
