"""HTTP clients for the simulator service: `SimulatorClient` (sync) and `AsyncSimulatorClient`.

Both speak the service's JSON API (`/v1/imagine`, `/v1/imagine/stream`,
`/v1/sessions`, `/v1/groups`, `/v1/outcomes`, `/readyz`) with httpx and return the dataclasses
of `wmpo_client.results`, with numpy arrays for every tensor. Every failure
is a `SimulatorError` carrying the server's code, message and request id.

Retries (see `wmpo_client._common`): failed connections are retried by
httpx's transport (`retries=`), 429 and 503 by a small loop with capped,
jittered exponential backoff that honours `Retry-After`. Both are safe
without idempotency keys: the connection retries re-send a request that never
arrived, and the service answers 429/503 only when it refuses work before
starting it. Timeouts and connections lost mid-request are not retried: the
work may have been done; except for a session or group step that names
`expected_chunks_stepped`, which the service makes idempotent (a repeat returns
the stored result of the step instead of advancing twice), so it is retried too.

Requests, parsing and the retry loop are written once (`_SimulatorHttp` and the
exchange of `wmpo_client._http`, run by `wmpo_client._driver`); the sync and async
classes only differ in how they send and sleep.

Example:
    with SimulatorClient("http://127.0.0.1:8000", api_key="...") as sim:
        result = sim.imagine(frame, "open the drawer", candidates, seed=0)
        result.frames  # (N, T, H, W, 3) uint8
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing
from dataclasses import fields
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from wmpo_client._common import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    ChunkStream,
    FrameEncoding,
    action_array,
    check_expected_chunks,
    check_frame_encoding,
    check_request_id,
    frame_array,
    outcome_frames,
)
from wmpo_client._http import AsyncHttp, Call, HttpConfig, SyncHttp, error_from_event
from wmpo_client.codec import from_json, to_json
from wmpo_client.errors import SimulatorError
from wmpo_client.results import (
    CandidateResult,
    CreateSessionResult,
    ImagineChunk,
    ImagineEvent,
    ImagineResult,
    OutcomeResult,
    ReplayResult,
    SessionInfo,
    StepOutcome,
    StepResult,
)

__all__ = ["AsyncSimulatorClient", "SimulatorClient"]

DEFAULT_URL = "http://127.0.0.1:8000"


# ------------------------------------------------------------------ parsing


def _frames(obj: Any, name: str, max_bytes: int) -> np.ndarray:
    return from_json(obj, name, max_bytes, expect_dtype="uint8")


def _session_info(data: dict[str, Any]) -> SessionInfo:
    values = {f.name: data.get(f.name) for f in fields(SessionInfo)}
    values["group_id"] = values["group_id"] or None
    return SessionInfo(**values)


def _imagine_result(
    data: dict[str, Any], max_bytes: int, frames: list[np.ndarray] | None = None
) -> ImagineResult:
    """`frames`: per-candidate frames assembled from a stream (the result line has none)."""
    candidates = [
        CandidateResult(
            index=int(c["index"]),
            frames=(
                frames[i]
                if frames is not None
                else _frames(c["frames"], f"candidate {c['index']}", max_bytes)
            ),
            confidence=c.get("confidence"),
        )
        for i, c in enumerate(data["candidates"])
    ]
    return ImagineResult(
        request_id=data["request_id"],
        candidates=candidates,
        seed=int(data["seed"]),
        provenance=dict(data.get("provenance") or {}),
        timing=dict(data.get("timing") or {}),
        verdict=data.get("verdict"),
        best_candidate=data.get("best_candidate"),
    )


def _outcome_result(data: dict[str, Any]) -> OutcomeResult:
    return OutcomeResult(**{f.name: data[f.name] for f in fields(OutcomeResult)})


def _create_result(data: dict[str, Any], max_bytes: int) -> CreateSessionResult:
    return CreateSessionResult(
        request_id=data["request_id"],
        group_id=data.get("group_id") or None,
        sessions=[_session_info(s) for s in data["sessions"]],
        observation=_frames(data["observation"], "observation", max_bytes),
        provenance=dict(data.get("provenance") or {}),
        timing=dict(data.get("timing") or {}),
    )


def _step_outcome(data: dict[str, Any], max_bytes: int) -> StepOutcome:
    return StepOutcome(
        replayed=bool(data.get("replayed", False)),
        request_id=data["request_id"],
        results=[
            StepResult(
                session_id=r["session_id"],
                frames=_frames(r["frames"], "frames", max_bytes),
                reward=r.get("reward"),
                done=r.get("done"),
                truncated=bool(r["truncated"]),
                chunks_stepped=int(r["chunks_stepped"]),
            )
            for r in data["results"]
        ],
        timing=dict(data.get("timing") or {}),
    )


def _replay_result(data: dict[str, Any], max_bytes: int) -> ReplayResult:
    return ReplayResult(
        request_id=data["request_id"],
        session_id=data["session_id"],
        frames=_frames(data["frames"], "frames", max_bytes),
        seed=int(data["seed"]),
        provenance=dict(data.get("provenance") or {}),
        timing=dict(data.get("timing") or {}),
    )


class _StreamAssembler(ChunkStream):
    """Turns NDJSON lines of `/v1/imagine/stream` into events; the last is the full result."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    def feed(self, line: str) -> ImagineEvent | None:
        if not line.strip():
            return None
        event = json.loads(line)
        kind = event.get("event")
        if kind == "frames":
            frames = self.add(_frames(event["frames"], "frames", self.max_bytes))
            return ImagineChunk(event["request_id"], int(event["chunk_index"]), frames)
        if kind == "result":
            return _imagine_result(event, self.max_bytes, frames=self.result_frames())
        if kind == "error":
            raise error_from_event(event)
        raise SimulatorError("INTERNAL", f"unknown stream event {kind!r}")


# ----------------------------------------------------------------- requests


def _segment(identifier: str) -> str:
    if not identifier:
        raise ValueError("an id is required")
    return quote(identifier, safe="")


def _sessions(data: dict[str, Any]) -> list[SessionInfo]:
    return [_session_info(s) for s in data["sessions"]]


def _closed(response: httpx.Response) -> list[str]:
    return list(response.json()["closed_session_ids"])


class _SimulatorHttp(HttpConfig):
    """Configuration, requests and parsing shared by the sync and async clients; the retry
    loop is `wmpo_client._http.exchange`, run by `SyncHttp` or `AsyncHttp`."""

    service = "simulator"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        frame_encoding: FrameEncoding,
        max_response_bytes: int,
    ) -> None:
        self.frame_encoding: FrameEncoding = check_frame_encoding(frame_encoding)
        self.max_response_bytes = max_response_bytes
        http_timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        super().__init__(base_url, api_key, http_timeout, retries, backoff, max_backoff)

    def _transport_error(self, exc: httpx.HTTPError) -> SimulatorError:
        if isinstance(exc, httpx.TimeoutException):
            return SimulatorError(
                "DEADLINE_EXCEEDED", f"no answer from {self.base_url} in time ({exc!r})"
            )
        return super()._transport_error(exc)

    # ---------------------------------------------------------- parsing
    def _imagine_result(self, response: httpx.Response) -> ImagineResult:
        return _imagine_result(response.json(), self.max_response_bytes)

    def _create_result(self, response: httpx.Response) -> CreateSessionResult:
        return _create_result(response.json(), self.max_response_bytes)

    def _step_outcome(self, response: httpx.Response) -> StepOutcome:
        return _step_outcome(response.json(), self.max_response_bytes)

    def _replay_result(self, response: httpx.Response) -> ReplayResult:
        return _replay_result(response.json(), self.max_response_bytes)

    # ---------------------------------------------------------- requests
    def _imagine_call(
        self,
        path: str,
        frame: Any,
        instruction: str,
        candidates: Any,
        horizon: int,
        seed: int | None,
        request_id: str | None,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> Call:
        rid = check_request_id(request_id)
        body: dict[str, Any] = {
            "start_frames": to_json(frame_array(frame), "frame", self.frame_encoding),
            "instruction": instruction,
            "candidates": to_json(action_array(candidates, "candidates"), "candidates"),
            "horizon_chunks": horizon,
            "request_id": rid,
            "frame_encoding": self.frame_encoding,
        }
        if seed is not None:
            body["seed"] = seed
        if verify:
            body["verify"] = True
        if verify_threshold is not None:
            body["verify_threshold"] = float(verify_threshold)
        return Call("POST", path, body, rid)

    def _outcome_call(
        self, request_id: str, candidate: int, frames: Any, success: bool | None
    ) -> Call:
        if not request_id:
            raise ValueError("request_id: the request_id of the imagine result is required")
        body: dict[str, Any] = {
            "request_id": request_id,
            "candidate": int(candidate),
            "frames": to_json(outcome_frames(frames), "frames", self.frame_encoding),
        }
        if success is not None:
            body["success"] = bool(success)
        # Safe to retry after a timeout: the service answers a repeat with the stored result.
        return Call("POST", "/v1/outcomes", body, "", True)

    def _create_call(
        self,
        frame: Any,
        instruction: str,
        seed: int | None,
        group_size: int,
        max_chunks: int,
        request_id: str | None,
    ) -> Call:
        rid = check_request_id(request_id)
        body: dict[str, Any] = {
            "start_frames": to_json(frame_array(frame), "frame", self.frame_encoding),
            "instruction": instruction,
            "group_size": group_size,
            "max_chunks": max_chunks,
            "request_id": rid,
            "frame_encoding": self.frame_encoding,
        }
        if seed is not None:
            body["seed"] = seed
        return Call("POST", "/v1/sessions", body, rid)

    def _step_call(
        self,
        kind: str,
        target: str,
        actions: Any,
        request_id: str | None,
        expected_chunks_stepped: int | None,
    ) -> Call:
        rid = check_request_id(request_id)
        body: dict[str, Any] = {
            "actions": to_json(action_array(actions), "actions"),
            "request_id": rid,
            "frame_encoding": self.frame_encoding,
        }
        if expected_chunks_stepped is not None:
            body["expected_chunks_stepped"] = check_expected_chunks(expected_chunks_stepped)
        idempotent = expected_chunks_stepped is not None
        return Call("POST", f"/v1/{kind}/{_segment(target)}/step", body, rid, idempotent)

    def _replay_call(self, session_id: str, seed: int | None, request_id: str | None) -> Call:
        rid = check_request_id(request_id)
        body: dict[str, Any] = {"request_id": rid, "frame_encoding": self.frame_encoding}
        if seed is not None:
            body["seed"] = seed
        return Call("POST", f"/v1/sessions/{_segment(session_id)}/replay", body, rid)


# --------------------------------------------------------------------- sync


class SimulatorClient(SyncHttp, _SimulatorHttp):
    """Synchronous HTTP client of the simulator service (thread-safe, like httpx.Client).

    Args:
        base_url: the service, e.g. "http://127.0.0.1:8000".
        api_key: sent as `x-api-key` (every route but health needs one).
        timeout: seconds for each read/write of a call (a whole imagine must answer in it).
        connect_timeout: seconds to establish a connection.
        retries: extra attempts on 429/503 and on failed connections (0: none).
        backoff, max_backoff: first wait and cap, in seconds, between retries.
        frame_encoding: "png" sends the start frame and receives frames as PNG
            (smaller on the wire, more CPU); "raw" sends bytes as they are.
        max_response_bytes: the largest tensor accepted from the server (the
            service's WMPO_MAX_RESPONSE_BYTES by default).
        transport: an httpx transport to use instead of the default one
            (e.g. httpx.ASGITransport for an in-process app); connection
            retries are then the transport's business.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        frame_encoding: FrameEncoding = "raw",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout, connect_timeout, retries, backoff, max_backoff,
            frame_encoding, max_response_bytes,
        )
        self._open(transport, retries)

    # ---------------------------------------------------------- imagine
    def imagine(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> ImagineResult:
        """Imagine the future of N candidate action sequences from one frame.

        Args:
            frame: uint8 (H, W, 3), the current camera frame (at the model's size).
            instruction: the task in natural language (recorded for the judge).
            candidates: float32 (N, C, K, 4), or (N, K, 4) for one chunk each.
            horizon: chunks to imagine, 1..C; 0 for all.
            seed: noise seed; None lets the server draw one (reported in the result).
            request_id: an id of yours for logs and error reports.
            verify: verify before execute: the service's judge scores every candidate
                against `instruction` and fills `candidates[i].confidence`,
                `best_candidate` and `verdict` ("execute" or "replan"); needs a judge
                configured on the service (FAILED_PRECONDITION otherwise).
            verify_threshold: with `verify`, the score in [0, 1] the best candidate needs
                for "execute"; None: the judge's own threshold.
        """
        call = self._imagine_call(
            "/v1/imagine", frame, instruction, candidates, horizon, seed, request_id,
            verify, verify_threshold,
        )
        return self._run(call, self._imagine_result)

    def imagine_stream(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> Iterator[ImagineEvent]:
        """Like `imagine`, yielding an `ImagineChunk` per chunk as soon as the server has it,
        then the `ImagineResult` (with every frame assembled). The request is sent when
        iteration starts. Breaking out of the loop closes the response, which cancels the
        rest of the work on the server."""
        call = self._imagine_call(
            "/v1/imagine/stream", frame, instruction, candidates, horizon, seed, request_id,
            verify, verify_threshold,
        )
        assembler = _StreamAssembler(self.max_response_bytes)
        with closing(self._lines(call)) as lines:
            for line in lines:
                event = assembler.feed(line)
                if event is not None:
                    yield event
        assembler.check_finished()

    # ---------------------------------------------------------- sessions
    def create_session(
        self,
        frame: np.ndarray,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """Open one session from a start frame; `max_chunks` 0 takes the server's budget."""
        call = self._create_call(frame, instruction, seed, 1, max_chunks, request_id)
        return self._run(call, self._create_result)

    def create_group(
        self,
        frame: np.ndarray,
        group_size: int,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """Fork `group_size` sessions from one encoded start (they differ in noise and actions)."""
        call = self._create_call(frame, instruction, seed, group_size, max_chunks, request_id)
        return self._run(call, self._create_result)

    def step(
        self,
        session_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """Advance a session by float32 (K, 4) actions (one chunk) or (C, K, 4).

        `expected_chunks_stepped`: the session's chunks_stepped before this step (the last
        result's `chunks_stepped`, 0 after create). The step is then idempotent: if it was
        already done (a retry), the stored result comes back (`outcome.replayed`) and the
        session does not advance again, so it is retried after timeouts and lost
        connections too; any other count raises SimulatorError FAILED_PRECONDITION.
        """
        call = self._step_call("sessions", session_id, actions, request_id, expected_chunks_stepped)
        return self._run(call, self._step_outcome)

    def step_group(
        self,
        group_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """Advance every member of a group by (G, K, 4) or (G, C, K, 4) actions, row g for g.

        `expected_chunks_stepped`: every member's chunks_stepped before this step (see `step`).
        """
        call = self._step_call("groups", group_id, actions, request_id, expected_chunks_stepped)
        return self._run(call, self._step_outcome)

    def replay(
        self, session_id: str, seed: int | None = None, request_id: str | None = None
    ) -> ReplayResult:
        """Replay a session's recorded actions from its start under fresh noise."""
        return self._run(self._replay_call(session_id, seed, request_id), self._replay_result)

    def report_outcome(
        self,
        request_id: str,
        candidate: int,
        frames: np.ndarray,
        success: bool | None = None,
    ) -> OutcomeResult:
        """Report what really happened after executing candidate `candidate` of the imagine
        call whose result had `request_id`: `frames` uint8 (T, H, W, 3), the real frames that
        followed, one per imagined frame (T at most the imagined count), `success` the real
        outcome when known. Returns the simulator's comparison (PSNR, perceptual distance);
        a repeat of the same report returns the stored answer (`replayed`)."""
        call = self._outcome_call(request_id, candidate, frames, success)
        return self._run(call, lambda r: _outcome_result(r.json()))

    def get_session(self, session_id: str) -> SessionInfo:
        call = Call("GET", f"/v1/sessions/{_segment(session_id)}")
        return self._run(call, lambda r: _session_info(r.json()))

    def get_group(self, group_id: str) -> list[SessionInfo]:
        call = Call("GET", f"/v1/groups/{_segment(group_id)}")
        return self._run(call, lambda r: _sessions(r.json()))

    def close_session(self, session_id: str) -> list[str]:
        """Close a session; returns the ids closed."""
        return self._run(Call("DELETE", f"/v1/sessions/{_segment(session_id)}"), _closed)

    def close_group(self, group_id: str) -> list[str]:
        """Close every session of a group; returns the ids closed."""
        return self._run(Call("DELETE", f"/v1/groups/{_segment(group_id)}"), _closed)


# -------------------------------------------------------------------- async


class AsyncSimulatorClient(AsyncHttp, _SimulatorHttp):
    """Asynchronous HTTP client of the simulator service; same methods as `SimulatorClient`.

    Use `async with AsyncSimulatorClient(...) as sim:` or call `await sim.aclose()`.
    `transport` may be an httpx.AsyncBaseTransport, e.g. httpx.ASGITransport(app).
    Requests, retries and parsing are `SimulatorClient`'s (shared code); only sending differs.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        frame_encoding: FrameEncoding = "raw",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout, connect_timeout, retries, backoff, max_backoff,
            frame_encoding, max_response_bytes,
        )
        self._open(transport, retries)

    async def imagine(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> ImagineResult:
        """See `SimulatorClient.imagine`."""
        call = self._imagine_call(
            "/v1/imagine", frame, instruction, candidates, horizon, seed, request_id,
            verify, verify_threshold,
        )
        return await self._run(call, self._imagine_result)

    async def imagine_stream(
        self,
        frame: np.ndarray,
        instruction: str,
        candidates: np.ndarray,
        horizon: int = 0,
        seed: int | None = None,
        request_id: str | None = None,
        *,
        verify: bool = False,
        verify_threshold: float | None = None,
    ) -> AsyncIterator[ImagineEvent]:
        """See `SimulatorClient.imagine_stream`; use `async for`. To stop early and free the
        server's work at once, wrap it in `contextlib.aclosing(...)` (an abandoned async
        generator is only closed when it is garbage-collected)."""
        call = self._imagine_call(
            "/v1/imagine/stream", frame, instruction, candidates, horizon, seed, request_id,
            verify, verify_threshold,
        )
        assembler = _StreamAssembler(self.max_response_bytes)
        async with aclosing(self._lines(call)) as lines:
            async for line in lines:
                event = assembler.feed(line)
                if event is not None:
                    yield event
        assembler.check_finished()

    async def create_session(
        self,
        frame: np.ndarray,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """See `SimulatorClient.create_session`."""
        call = self._create_call(frame, instruction, seed, 1, max_chunks, request_id)
        return await self._run(call, self._create_result)

    async def create_group(
        self,
        frame: np.ndarray,
        group_size: int,
        instruction: str = "",
        seed: int | None = None,
        max_chunks: int = 0,
        request_id: str | None = None,
    ) -> CreateSessionResult:
        """See `SimulatorClient.create_group`."""
        call = self._create_call(frame, instruction, seed, group_size, max_chunks, request_id)
        return await self._run(call, self._create_result)

    async def step(
        self,
        session_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """See `SimulatorClient.step`."""
        call = self._step_call("sessions", session_id, actions, request_id, expected_chunks_stepped)
        return await self._run(call, self._step_outcome)

    async def step_group(
        self,
        group_id: str,
        actions: np.ndarray,
        request_id: str | None = None,
        expected_chunks_stepped: int | None = None,
    ) -> StepOutcome:
        """See `SimulatorClient.step_group`."""
        call = self._step_call("groups", group_id, actions, request_id, expected_chunks_stepped)
        return await self._run(call, self._step_outcome)

    async def replay(
        self, session_id: str, seed: int | None = None, request_id: str | None = None
    ) -> ReplayResult:
        """See `SimulatorClient.replay`."""
        call = self._replay_call(session_id, seed, request_id)
        return await self._run(call, self._replay_result)

    async def report_outcome(
        self,
        request_id: str,
        candidate: int,
        frames: np.ndarray,
        success: bool | None = None,
    ) -> OutcomeResult:
        """See `SimulatorClient.report_outcome`."""
        call = self._outcome_call(request_id, candidate, frames, success)
        return await self._run(call, lambda r: _outcome_result(r.json()))

    async def get_session(self, session_id: str) -> SessionInfo:
        call = Call("GET", f"/v1/sessions/{_segment(session_id)}")
        return await self._run(call, lambda r: _session_info(r.json()))

    async def get_group(self, group_id: str) -> list[SessionInfo]:
        call = Call("GET", f"/v1/groups/{_segment(group_id)}")
        return await self._run(call, lambda r: _sessions(r.json()))

    async def close_session(self, session_id: str) -> list[str]:
        return await self._run(Call("DELETE", f"/v1/sessions/{_segment(session_id)}"), _closed)

    async def close_group(self, group_id: str) -> list[str]:
        return await self._run(Call("DELETE", f"/v1/groups/{_segment(group_id)}"), _closed)
