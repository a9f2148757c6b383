"""A real HTTP server speaking the parts of the OpenAI API the farm's backends use.

Backends are tested over real sockets against real request and response formats, with the
server's behaviour scripted per test: ``server.plan(...)`` queues answers (a chat content, a
transcript, an error status with headers, a delay past the client's timeout, a raw body) taken one
per request; with none queued, speech answers with a tone, and chat and transcription with a 500
that says nothing was planned.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (text or image content parts; images
must be base64 data URLs, ``response_format`` json_schema must carry a name and a schema),
``POST /v1/audio/speech`` and ``POST /v1/audio/transcriptions`` (multipart/form-data, parsed here
byte for byte: ``request.form`` holds each part). Malformed requests get OpenAI's 400 error JSON.

    with openai_server() as server:
        server.plan(Answer(content='{"title": ...}'), Answer(status=429, headers={"Retry-After": "2"}))
        backend = OpenAIChatScript("llm", {"kind": "openai-chat", "base_url": server.base_url, ...})
        ... server.requests[0].body["messages"] ...

The key check mimics OpenAI's 401 but quotes the refused key in full, as some compatible servers
do, so tests can prove a client never repeats it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.message
import email.utils
import io
import json
import math
import re
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
    text: str | None = None  # a transcription's text (its usage: ``usage`` as input/output tokens)


@dataclass
class FormPart:
    """One part of a multipart/form-data body: its field name, bytes, and file name and type if any."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def value(self) -> str:
        return self.data.decode("utf-8")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None
    form: dict[str, FormPart] | None = None  # a multipart/form-data body, by field name
    raw: bytes = b""

    def images(self) -> list[tuple[str, bytes]]:
        """The images of a chat request's messages, in order: (media type, decoded bytes)."""
        out = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "image_url":
                    kind, data = _data_url(part["image_url"]["url"])
                    out.append((kind, data))
        return out

    def texts(self) -> list[str]:
        """Every text of a chat request's messages, in order (string contents and text parts)."""
        out = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "text":
                    out.append(part["text"])
        return out


def _data_url(url: Any) -> tuple[str, bytes]:
    """``data:image/png;base64,...`` as (media type, bytes); ValueError if it is not one."""
    match = re.fullmatch(r"data:(image/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=]+)", url if isinstance(url, str) else "")
    if not match:
        raise ValueError("image_url.url must be a URL or a base64 data URL of an image")
    try:
        return match.group(1), base64.b64decode(match.group(2), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"image_url.url: invalid base64 data: {exc}") from None


def _param(header: str, name: str, value: str) -> str | None:
    """A parameter of a header value (``boundary``, ``name``, ``filename``), unquoted."""
    message = email.message.Message()
    message[header] = value
    got = message.get_param(name, header=header)
    return email.utils.collapse_rfc2231_value(got) if got is not None else None


def parse_multipart(body: bytes, content_type: str) -> dict[str, FormPart]:
    """A multipart/form-data body (RFC 7578) by field name; ValueError where it is malformed.
    The bytes of each part are kept exactly: only the CRLF before each delimiter belongs to it."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError(f"Content-Type must be multipart/form-data, not {content_type!r}")
    boundary = _param("content-type", "boundary", content_type)
    if not boundary:
        raise ValueError("multipart/form-data without a boundary")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    sections = (b"\r\n" + body).split(delimiter)
    if len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise ValueError("the multipart body does not end with its closing delimiter")
    parts: dict[str, FormPart] = {}
    for section in sections[1:-1]:
        line_end, _, rest = section.partition(b"\r\n")
        if line_end.strip(b" \t"):
            raise ValueError("a multipart delimiter is followed by more than whitespace")
        head, sep, data = rest.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a multipart part has no blank line after its headers")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8").split("\r\n"):
            key, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"a multipart part header is malformed: {line!r}")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = _param("content-disposition", "name", disposition)
        if not disposition.lower().startswith("form-data") or not name:
            raise ValueError("a multipart part lacks Content-Disposition: form-data with a name")
        filename = _param("content-disposition", "filename", disposition)
        parts[name] = FormPart(name, data, filename, headers.get("content-type"))
    return parts


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
        form, form_error = None, None
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/"):
            try:
                form = parse_multipart(raw, content_type)
            except (ValueError, UnicodeDecodeError) as exc:
                form_error = str(exc)
        request = Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body, form, raw)
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
        if (method, self.path) == ("POST", "/v1/audio/transcriptions"):
            return self._transcription(form, form_error or "", answer)
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
        problem = _chat_problem(body)
        if problem:
            return self._json(400, _error(problem, "invalid_request_error", None))
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

    def _transcription(self, form: dict[str, FormPart] | None, problem: str, answer: Answer) -> None:
        if form is None:
            problem = problem or "the request must be multipart/form-data with a file and a model"
        elif "file" not in form or not form["file"].filename:
            problem = "'file' is a required form field: the audio, with a file name"
        elif "model" not in form or not form["model"].data:
            problem = "'model' is a required form field"
        elif "response_format" in form and form["response_format"].value != "json":
            problem = "this test server only answers response_format json"
        if problem:
            return self._json(400, _error(problem, "invalid_request_error", None))
        if answer.text is None:
            return self._json(500, _error("test server: no transcription was planned", "server_error", None))
        heard, said = answer.usage
        usage = {"type": "tokens", "input_tokens": heard, "output_tokens": said, "total_tokens": heard + said}
        self._json(200, {"text": answer.text, "usage": usage}, answer.headers)

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


def _chat_problem(body: dict[str, Any]) -> str | None:
    """What OpenAI would refuse with a 400 in a chat request's images or response_format, if anything."""
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind != "image_url":
                return f"messages[{i}].content[{j}]: unknown content part {kind!r}"
            try:
                _data_url((part.get("image_url") or {}).get("url"))
            except ValueError as exc:
                return f"messages[{i}].content[{j}].{exc}"
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not spec.get("name") or not isinstance(spec.get("schema"), dict):
                return "response_format.json_schema must have a name and a schema object"
        elif kind not in ("text", "json_object"):
            return f"response_format.type {kind!r} is not one of text, json_object, json_schema"
    return None


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
