"""A real HTTP server speaking the parts of the OpenAI API the farm's backends use.

Backends are tested over real sockets against real request and response formats, with the
server's behaviour scripted per test: ``server.plan(...)`` queues answers (a chat content, an
error status with headers, a delay past the client's timeout, a raw body) taken one per request;
with none queued, speech answers with a tone and chat with a 500 that says nothing was planned.

    with openai_server() as server:
        server.plan(Answer(content='{"title": ...}'), Answer(status=429, headers={"Retry-After": "2"}))
        backend = OpenAIChatScript("llm", {"kind": "openai-chat", "base_url": server.base_url, ...})
        ... server.requests[0].body["messages"] ...

The key check mimics OpenAI's 401 but quotes the refused key in full, as some compatible servers
do, so tests can prove a client never repeats it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import threading
import time
import wave
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TONE_RATE = 24000
PAD_SECONDS = 0.1  # silence the speech endpoint puts before and after its tone


def tone_seconds(text: str) -> float:
    """How long the tone answering ``text`` lasts: longer text, longer speech."""
    return 0.2 + 0.01 * len(text)


def tone_wav(seconds: float, rate: int = TONE_RATE, channels: int = 1, pad: float = PAD_SECONDS) -> bytes:
    """A 16-bit PCM WAV: ``pad`` s of silence, a 440 Hz tone of ``seconds``, ``pad`` s of silence."""
    quiet = bytes(2 * channels * round(pad * rate))
    frames = bytearray()
    for i in range(round(seconds * rate)):
        frames += int(12000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(2, "little", signed=True) * channels
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(quiet + bytes(frames) + quiet)
    return buf.getvalue()


@dataclass
class Answer:
    """One planned answer. ``content``: a chat completion with this message content; ``raw``:
    these bytes as the body; ``error``: OpenAI's error JSON with this message; otherwise the
    endpoint's normal answer. ``delay`` seconds pass before anything is sent."""

    content: str | None = None
    finish_reason: str = "stop"
    usage: tuple[int, int] = (100, 50)
    model: str | None = None  # the model a chat completion names; default: the requested one
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"  # of ``raw``
    error: str | None = None
    delay: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None


class OpenAIServer:
    def __init__(self, api_key: str, models: tuple[str, ...]):
        self.api_key, self.models = api_key, list(models)
        self.requests: list[Request] = []
        self.base_url = ""
        self._planned: deque[Answer] = deque()
        self._lock = threading.Lock()
        self.closing = threading.Event()  # wakes delayed answers when the server stops

    def plan(self, *answers: Answer) -> None:
        with self._lock:
            self._planned.extend(answers)

    def _next(self, request: Request) -> Answer | None:
        with self._lock:
            self.requests.append(request)
            return self._planned.popleft() if self._planned else None


def _error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    farm: OpenAIServer  # set on a subclass per server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        answer = self.farm._next(request) or Answer()
        if answer.delay and self.farm.closing.wait(answer.delay):
            return
        given = self.headers.get("Authorization", "")
        if given != f"Bearer {self.farm.api_key}":
            refused = f"Incorrect API key provided: {given.removeprefix('Bearer ')}."
            return self._json(401, _error(refused, "invalid_request_error", "invalid_api_key"))
        if answer.raw is not None:
            return self._send(answer.status, answer.raw, answer.content_type, answer.headers)
        if answer.error is not None or answer.status >= 400:
            return self._json(
                answer.status if answer.status >= 400 else 500,
                _error(answer.error or "planned failure", "server_error", None),
                answer.headers,
            )
        route = {
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/audio/speech"): self._speech,
        }.get((method, self.path))
        if route is None:
            return self._json(404, _error(f"Unknown request URL: {method} {self.path}", "invalid_request_error", None))
        route(body or {}, answer)

    def _models(self, body: dict[str, Any], answer: Answer) -> None:
        self._json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "test"} for m in self.farm.models
                ],
            },
        )

    def _chat(self, body: dict[str, Any], answer: Answer) -> None:
        if answer.content is None:
            return self._json(500, _error("test server: no chat answer was planned", "server_error", None))
        prompt, completion = answer.usage
        self._json(
            200,
            {
                "id": f"chatcmpl-{len(self.farm.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": answer.model or body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.content},
                        "logprobs": None,
                        "finish_reason": answer.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
            answer.headers,
        )

    def _speech(self, body: dict[str, Any], answer: Answer) -> None:
        if body.get("response_format") != "wav":
            return self._json(400, _error("this test server only speaks wav", "invalid_request_error", None))
        self._send(200, tone_wav(tone_seconds(str(body.get("input", "")))), "audio/wav", answer.headers)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers or {})

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str]) -> None:
        with contextlib.suppress(OSError):  # the client may have given up (timeouts)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)


@contextlib.contextmanager
def openai_server(
    api_key: str = "sk-test-0123456789abcdef", models: tuple[str, ...] = ("test-chat", "test-tts")
) -> Iterator[OpenAIServer]:
    """Serve on 127.0.0.1 (a free port) in a thread for the ``with`` block."""
    server = OpenAIServer(api_key, models)
    handler = type("Handler", (_Handler,), {"farm": server})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    server.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="openai-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
