"""Zero-shot VLM judge (RAW-Dream section 3.2): a client for an OpenAI-compatible chat endpoint.

vLLM serves Qwen3-VL behind ``POST {base_url}/chat/completions``. The client samples the video
at 4 FPS (always keeping the last frame, where success shows), sends the frames as PNG data
URLs with a short task-agnostic prompt asking for Success or Failure as JSON, draws n=5
samples at temperature 0.7 and calls the rollout a success only when at least 4 of 5 say so.
Servers that ignore ``n`` are asked again until n answers are in. Answers that are not clean
JSON (code fences, single quotes, trailing commas, prose around it, a bare word) are still
read; an answer that says neither counts as a Failure vote and is reported as unparsed.

Retries: timeouts, connection errors, 429 and 5xx are retried with exponential backoff; other
4xx are configuration errors and raised at once. The model itself cannot run on this machine:
the client is tested against a local server that speaks the protocol, not against Qwen3-VL.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from wmpo.errors import WmpoError

PROMPT = (
    "You are judging a robot manipulation video. The task was: \"{instruction}\". "
    "The images are frames of the video in time order, the last one is the final state. "
    "Did the robot complete the task? Answer only with JSON: {{\"result\": \"Success\"}} or "
    "{{\"result\": \"Failure\"}}."
)


class VLMJudgeError(WmpoError):
    """The VLM endpoint could not be reached or refused the request."""


@dataclass
class VLMJudgeConfig:
    base_url: str  # e.g. http://vllm:8000/v1
    model: str = "Qwen/Qwen3-VL-8B-Instruct"
    api_key: str = ""
    sample_fps: float = 4.0
    source_fps: float = 80.0  # MetaWorld's control rate (frame_skip 5 x 2.5 ms)
    max_frames: int = 16
    temperature: float = 0.7
    samples: int = 5
    votes_needed: int = 4
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    max_tokens: int = 32

    def validate(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise VLMJudgeError(f"VLM base_url must be an http(s) URL, got {self.base_url!r}")
        if not 1 <= self.votes_needed <= self.samples:
            raise VLMJudgeError(f"votes_needed must be in [1, samples={self.samples}], got {self.votes_needed}")
        if self.sample_fps <= 0 or self.source_fps <= 0 or self.max_frames < 1:
            raise VLMJudgeError("sample_fps and source_fps must be > 0 and max_frames >= 1")


@dataclass
class VLMVerdict:
    success: bool
    votes: int  # samples that said Success
    samples: int
    unparsed: int  # samples that said neither
    answers: list[str] = field(default_factory=list)
    frames_sent: list[int] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.votes / self.samples if self.samples else 0.0


def sample_frame_indices(num_frames: int, source_fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Frames at ``sample_fps`` counted back from the last frame, at most ``max_frames`` (evenly
    thinned if the video is longer), in time order."""
    if num_frames < 1:
        raise ValueError("no frames to sample")
    step = max(source_fps / sample_fps, 1.0)
    idx = sorted({int(round(num_frames - 1 - k * step)) for k in range(int((num_frames - 1) / step) + 1)})
    if len(idx) > max_frames:
        keep = np.linspace(0, len(idx) - 1, max_frames).round().astype(int)
        idx = [idx[i] for i in sorted(set(keep.tolist()))]
    return idx


def png_data_url(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_messages(frames: np.ndarray, instruction: str) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": PROMPT.format(instruction=instruction)}]
    content += [{"type": "image_url", "image_url": {"url": png_data_url(f)}} for f in frames]
    return [{"role": "user", "content": content}]


_WORD = re.compile(r"\b(success|successful|succeeded|failure|failed|fail)\b", re.IGNORECASE)


def parse_answer(text: str) -> bool | None:
    """True for Success, False for Failure, None when the answer says neither (or both)."""
    for candidate in re.findall(r"\{[^{}]*\}", text or ""):
        obj = _loose_json(candidate)
        if isinstance(obj, dict):
            for key in ("result", "verdict", "answer", "success", "outcome", "label"):
                if key in obj:
                    return _as_bool(obj[key])
    words = {w.lower().startswith("succ") for w in _WORD.findall(text or "")}
    return words.pop() if len(words) == 1 else None


def _loose_json(s: str) -> Any:
    for attempt in (s, s.replace("'", '"'), re.sub(r",\s*}", "}", s.replace("'", '"'))):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            continue
    return None


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return parse_answer(v) if v.strip() else None
    return None


class VLMJudge:
    def __init__(self, config: VLMJudgeConfig, client: httpx.AsyncClient | None = None) -> None:
        config.validate()
        self.config = config
        self._client = client

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {"judge": "vlm", "model": c.model, "samples": c.samples, "votes_needed": c.votes_needed,
                "temperature": c.temperature, "sample_fps": c.sample_fps}

    async def judge(self, frames: np.ndarray, instruction: str, frame_stride: int = 1) -> VLMVerdict:
        """Judge one video (T, H, W, 3) uint8 whose frames are ``frame_stride`` env steps apart."""
        c = self.config
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"frames must be (T>=1, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        idx = sample_frame_indices(len(frames), c.source_fps / frame_stride, c.sample_fps, c.max_frames)
        messages = build_messages(frames[idx], instruction)
        answers: list[str] = []
        client = self._client or httpx.AsyncClient(timeout=c.timeout_s)
        try:
            while len(answers) < c.samples:
                answers += await self._complete(client, messages, c.samples - len(answers))
        finally:
            if self._client is None:
                await client.aclose()
        answers = answers[: c.samples]
        parsed = [parse_answer(a) for a in answers]
        votes = sum(p is True for p in parsed)
        return VLMVerdict(votes >= c.votes_needed, votes, len(answers), sum(p is None for p in parsed), answers, idx)

    def judge_sync(self, frames: np.ndarray, instruction: str, frame_stride: int = 1) -> VLMVerdict:
        return asyncio.run(self.judge(frames, instruction, frame_stride))

    async def _complete(self, client: httpx.AsyncClient, messages: list[dict[str, Any]], n: int) -> list[str]:
        c = self.config
        body = {"model": c.model, "messages": messages, "temperature": c.temperature, "n": n,
                "max_tokens": c.max_tokens}
        headers = {"Authorization": f"Bearer {c.api_key}"} if c.api_key else {}
        url = c.base_url.rstrip("/") + "/chat/completions"
        last = ""
        for attempt in range(c.retries + 1):
            try:
                r = await client.post(url, json=body, headers=headers, timeout=c.timeout_s)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        choices = r.json()["choices"]
                        texts = [ch["message"]["content"] or "" for ch in choices]
                    except (ValueError, KeyError, TypeError) as e:
                        raise VLMJudgeError(f"VLM endpoint {url} answered with an unexpected body: {e}") from e
                    if not texts:
                        raise VLMJudgeError(f"VLM endpoint {url} returned no choices")
                    return texts
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code != 429 and r.status_code < 500:
                    raise VLMJudgeError(f"VLM endpoint {url} refused the request ({last})")
            if attempt < c.retries:
                await asyncio.sleep(c.backoff_s * 2**attempt)
        raise VLMJudgeError(f"VLM endpoint {url} failed after {c.retries + 1} attempts ({last})")
