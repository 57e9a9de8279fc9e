"""The VLM judge client against a local server that speaks the OpenAI chat-completions protocol.

The server is real HTTP (uvicorn on a free port); its answers are scripted per test, because
what is under test is the client: frame sampling, the request it sends, parsing, the vote rule,
retries. No vision-language model runs here, so nothing here measures a VLM's judgement.
"""

import base64
import io
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from wmpo.judge.vlm import (
    VLMJudge,
    VLMJudgeConfig,
    VLMJudgeError,
    parse_answer,
    sample_frame_indices,
)


class ChatServer:
    """Scripted OpenAI-compatible endpoint: ``script`` is a list of responses, each either an HTTP
    status to fail with or a list of answer texts (one choice each)."""

    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append({"body": body, "auth": request.headers.get("authorization")})
            step = self.script.pop(0) if self.script else ["{\"result\": \"Failure\"}"] * body.get("n", 1)
            if isinstance(step, int):
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=step)
            return {"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                 "finish_reason": "stop"} for i, t in enumerate(step)]}

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server():
    with ChatServer() as s:
        yield s


@pytest.fixture
def chat(server):
    server.script.clear()
    server.requests.clear()
    return server


def video(n=81):
    v = np.zeros((n, 16, 16, 3), np.uint8)
    v[:, 0, 0, 0] = np.arange(n)  # frame index readable back from the PNG
    return v


def judge(chat, **kw):
    return VLMJudge(VLMJudgeConfig(base_url=chat.url, backoff_s=0.01, **kw))


def test_frames_are_sampled_at_4_fps_ending_on_the_last():
    assert sample_frame_indices(81, 80, 4, 16) == [0, 20, 40, 60, 80]
    assert sample_frame_indices(10, 80, 4, 16) == [9]
    assert sample_frame_indices(41, 40, 4, 16) == [0, 10, 20, 30, 40]  # stride-2 imagined frames
    many = sample_frame_indices(800, 80, 4, 16)
    assert len(many) == 16 and many[-1] == 799


def test_parser_reads_imperfect_json():
    assert parse_answer('{"result": "Success"}') is True
    assert parse_answer('```json\n{"result": "Failure"}\n```') is False
    assert parse_answer("{'result': 'success',}") is True
    assert parse_answer('Sure! {"success": true}') is True
    assert parse_answer('{"verdict": "failed"}') is False
    assert parse_answer("Success") is True
    assert parse_answer("I cannot tell.") is None
    assert parse_answer("Success or failure?") is None


def test_request_follows_the_protocol_and_four_of_five_votes_win(chat):
    chat.script = [['{"result": "Success"}'] * 4 + ['{"result": "Failure"}']]
    v = judge(chat, api_key="k").judge_sync(video(), "press the button")
    assert v.success and v.votes == 4 and v.samples == 5 and v.unparsed == 0
    req = chat.requests[0]
    body = req["body"]
    assert req["auth"] == "Bearer k"
    assert body["temperature"] == 0.7 and body["n"] == 5
    content = body["messages"][0]["content"]
    assert "press the button" in content[0]["text"] and "JSON" in content[0]["text"]
    images = [c["image_url"]["url"] for c in content[1:]]
    assert v.frames_sent == [0, 20, 40, 60, 80] and len(images) == 5
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[-1].split(",", 1)[1]))))
    assert first[0, 0, 0] == 80  # the last image is the last frame


def test_three_of_five_is_a_failure_and_unparsed_answers_count_against(chat):
    chat.script = [["Success"] * 3 + ["hmm", '{"result": "Failure"}']]
    v = judge(chat).judge_sync(video(), "open the door")
    assert not v.success and v.votes == 3 and v.unparsed == 1


def test_servers_that_ignore_n_are_asked_until_five_answers(chat):
    chat.script = [["Success"], ["Success", "Success"], ["Success"], ["Success"]]
    v = judge(chat).judge_sync(video(), "close the drawer")
    assert v.samples == 5 and v.votes == 5 and v.success
    assert [r["body"]["n"] for r in chat.requests] == [5, 4, 2, 1]


def test_transient_errors_are_retried(chat):
    chat.script = [503, 429, ["Success"] * 5]
    v = judge(chat, retries=3).judge_sync(video(), "push the puck")
    assert v.success and len(chat.requests) == 3


def test_persistent_errors_and_client_errors_raise_clearly(chat):
    chat.script = [500, 500]
    with pytest.raises(VLMJudgeError, match="after 2 attempts"):
        judge(chat, retries=1).judge_sync(video(), "x")
    chat.script = [401]
    with pytest.raises(VLMJudgeError, match="refused the request .*401"):
        judge(chat, retries=3).judge_sync(video(), "x")
    assert len(chat.requests) == 3  # a 401 is not retried


def test_bad_configuration_is_refused():
    with pytest.raises(VLMJudgeError, match="votes_needed"):
        VLMJudge(VLMJudgeConfig(base_url="http://x/v1", votes_needed=6))
    with pytest.raises(VLMJudgeError, match="http"):
        VLMJudge(VLMJudgeConfig(base_url="vllm:8000"))
