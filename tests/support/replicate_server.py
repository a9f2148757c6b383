"""A real HTTP server speaking the parts of Replicate's HTTP API the farm's ``replicate`` backend
uses, with a "lip-sync model" that makes real MP4s.

Shapes follow Replicate's HTTP API reference: ``POST /v1/files`` (multipart/form-data, the file in
field ``content``; answers 201 with a file object whose ``urls.get`` a prediction's input takes);
``POST /v1/predictions`` ({"version", "input"}) and ``POST /v1/models/{owner}/{name}/predictions``
({"input"}), both answering 201 with a prediction (id, model, version, input, output, logs, error,
status, created_at, started_at, completed_at, data_removed, metrics, urls); ``GET
/v1/predictions/{id}``; ``POST /v1/predictions/{id}/cancel``; ``GET /v1/predictions`` (newest first,
``created_after`` honoured, ``{"next", "previous", "results"}`` paged by a ``cursor`` in ``next``);
``GET /v1/models/{owner}/{name}`` and ``.../versions/{id}``. Errors are Replicate's problem JSON
(``{"title", "detail", "status"}``; 422 adds ``invalid_fields``). Every ``/v1`` request needs
``Authorization: Bearer <token>`` (or ``Token <token>``); the 401 quotes the refused token in full,
as some gateways do, so tests can prove a client never repeats it.

The model checks its input against its schema (unknown fields, missing required ones and wrong
types are a 422, as Replicate validates input), fetches the uploaded video and audio, and writes
with ffmpeg an MP4 of the video with that audio: the same size, rate and frames unless ``reshape``
says otherwise. Outputs are served by a second server (another origin, as replicate.delivery is),
which records whether a request carried a key.

Scripted behaviour: ``hold()``/``release()`` keep predictions processing; ``fail_with`` makes them
fail with that error; ``reshape`` ({"width", "height", "fps", "extra_frames"}) changes the output;
``output_form`` ("string", "list" or "object"); ``output_body`` serves other bytes as the output;
``answer(method, path, status, payload, headers, times)`` answers matching requests with an error;
``forget()`` drops every prediction (a gateway restarted); ``page_size`` for the listing;
``output_override`` replaces the output; ``output_via_api`` gives output URLs on the API's own
origin, which need the key and redirect (302) to the output server.

    with replicate_server(tmp_path) as server:
        backend = Replicate("lips", {"kind": "replicate", "base_url": server.base_url, ...})
        ... server.creates, server.predictions, server.files ...
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.openai_server import FormPart, parse_multipart

VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
SCHEMA = {  # the model's input fields and their types
    "video": "uri",
    "audio": "uri",
    "speaker_1": "uri",
    "speaker_2": "uri",
    "fps": "integer",
    "frames": "integer",
    "width": "integer",
    "height": "integer",
    "seed": "integer",
    "guidance_scale": "number",
    "prompt": "string",
}
FINAL = ("succeeded", "failed", "canceled")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _new_id() -> str:
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(26))


@dataclass
class Request:
    method: str
    path: str  # with its query string
    headers: dict[str, str]  # names in lower case
    body: Any = None  # parsed JSON, or None
    form: dict[str, FormPart] | None = None


@dataclass
class Planned:
    method: str
    path: str  # a prefix of the request's path
    status: int
    payload: Any
    headers: dict[str, str]
    times: int


@dataclass
class StoredFile:
    id: str
    path: Path
    filename: str
    content_type: str
    created_at: str
    data: bytes = field(repr=False, default=b"")


class ReplicateServer:
    def __init__(self, workdir: Path, api_key: str, model: str):
        self.workdir = Path(workdir)
        (self.workdir / "files").mkdir(parents=True, exist_ok=True)
        (self.workdir / "outputs").mkdir(parents=True, exist_ok=True)
        self.api_key, self.model, self.version = api_key, model, VERSION
        self.base_url = self.delivery_url = ""
        self.lock = threading.Condition()
        self.requests: list[Request] = []
        self.delivered: list[Request] = []  # requests to the output server
        self.files: dict[str, StoredFile] = {}
        self.predictions: dict[str, dict[str, Any]] = {}  # in creation order
        self.polls: dict[str, int] = {}  # prediction id -> GETs of it
        self.first_poll: dict[str, float] = {}  # prediction id -> time.monotonic() of its first GET
        self.creates = 0
        self.held = False
        self.fail_with: str | None = None
        self.reshape: dict[str, int] = {}
        self.output_form = "string"
        self.output_body: bytes | None = None
        self.output_override: Any = None  # returned as the output when set (a bad URL, say)
        self.output_via_api = False  # output URLs on the API's origin (key needed), redirecting to the output server
        self.page_size = 100
        self._planned: list[Planned] = []

    # -- scripting ----------------------------------------------------------------------------

    def hold(self) -> None:
        with self.lock:
            self.held = True

    def release(self) -> None:
        with self.lock:
            self.held = False
            self.lock.notify_all()

    def answer(
        self, method: str, path: str, status: int, payload: Any = None, headers: dict | None = None, times: int = 1
    ) -> None:
        with self.lock:
            self._planned.append(Planned(method, path, status, payload, dict(headers or {}), times))

    def forget(self) -> None:
        with self.lock:
            self.predictions.clear()

    def wait_for(self, done: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not (value := done()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the replicate test server did not reach the state waited for")
                self.lock.wait(min(left, 0.05))
            return value

    def file_of(self, url: str) -> StoredFile | None:
        """The uploaded file an input URL names, if it is one of this server's."""
        prefix = f"{self.base_url}/files/"
        return self.files.get(url[len(prefix) :]) if url.startswith(prefix) else None

    # -- the API ------------------------------------------------------------------------------

    def _planned_for(self, method: str, path: str) -> Planned | None:
        with self.lock:
            for p in self._planned:
                if p.method == method and path.startswith(p.path) and p.times > 0:
                    p.times -= 1
                    return p
        return None

    def prediction_json(self, p: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/predictions/{p['id']}"
        return {**p, "urls": {"get": url, "cancel": f"{url}/cancel", "web": f"https://replicate.test/p/{p['id']}"}}

    def create(self, body: Any, version: str | None) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return 422, _problem(422, "Invalid request", "the body must be an object with an input object")
        if version is not None and version not in (self.version, f"{self.model}:{self.version}"):
            return 422, _problem(422, "Invalid version or not permitted", f"version {version!r} does not exist")
        invalid = []
        for key, value in body["input"].items():
            kind = SCHEMA.get(key)
            if kind is None:
                invalid.append(
                    {"type": "additional_property_not_allowed", "field": key, "description": f"{key}: not allowed"}
                )
            elif not _fits(kind, value):
                invalid.append({"type": "type", "field": key, "description": f"{key}: must be {kind}"})
        if "video" not in body["input"]:
            invalid.append({"type": "required", "field": "video", "description": "video is required"})
        if invalid:
            detail = "; ".join(f["description"] for f in invalid)
            return 422, {**_problem(422, "Input validation failed", detail), "invalid_fields": invalid}
        with self.lock:
            self.creates += 1
            p = {
                "id": _new_id(),
                "model": self.model,
                "version": self.version,
                "input": body["input"],
                "logs": "",
                "output": None,
                "data_removed": False,
                "error": None,
                "source": "api",
                "status": "starting",
                "created_at": now_iso(),
                "started_at": None,
                "completed_at": None,
            }
            self.predictions[p["id"]] = p
            self.lock.notify_all()
        threading.Thread(target=self._predict, args=(p,), daemon=True).start()
        return 201, self.prediction_json(p)

    def listing(self, query: dict[str, list[str]]) -> dict[str, Any]:
        after = query.get("created_after", [None])[0]
        cursor = int(query.get("cursor", ["0"])[0] or 0)
        with self.lock:
            chosen = list(reversed(self.predictions.values()))  # newest first
        if after:
            chosen = [p for p in chosen if _parse_iso(p["created_at"]) >= _parse_iso(after)]
        page = chosen[cursor : cursor + self.page_size]
        following = None
        if cursor + self.page_size < len(chosen):
            params = {"cursor": str(cursor + self.page_size), **({"created_after": after} if after else {})}
            following = f"{self.base_url}/predictions?{urllib.parse.urlencode(params)}"
        return {"next": following, "previous": None, "results": [self.prediction_json(p) for p in page]}

    # -- the model ----------------------------------------------------------------------------

    def _predict(self, p: dict[str, Any]) -> None:
        with self.lock:
            if p["status"] == "canceled":
                return
            p["status"], p["started_at"] = "processing", now_iso()
            self.lock.notify_all()
            while self.held and p["status"] == "processing":
                self.lock.wait(0.05)
            if p["status"] != "processing":
                return
            fail_with, reshape, form, started = self.fail_with, dict(self.reshape), self.output_form, time.monotonic()
        output, error = None, fail_with
        if error is None:
            try:
                output = self._lipsync(p, reshape, form)
            except RuntimeError as exc:
                error = str(exc)
        with self.lock:
            if p["status"] != "processing":
                return
            p["status"] = "failed" if error else "succeeded"
            p["output"], p["error"] = output, error
            p["logs"] = "lip-sync model: done\n" if not error else f"lip-sync model: {error}\n"
            p["completed_at"] = now_iso()
            p["metrics"] = {"predict_time": round(time.monotonic() - started, 6)}
            self.lock.notify_all()

    def _lipsync(self, p: dict[str, Any], reshape: dict[str, int], form: str) -> Any:
        """Re-encode the uploaded video with the uploaded audio (as a lip-sync model would return it)."""
        given = p["input"]
        video = self.file_of(str(given.get("video", "")))
        if video is None:
            raise RuntimeError(f"Failed to download input video: {given.get('video')!r}")
        audio = next((self.file_of(str(given[k])) for k in ("audio", "speaker_1") if k in given), None)
        out_dir = self.workdir / "outputs" / p["id"]
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "output.mp4"
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(video.path)]
        cmd += ["-i", str(audio.path)] if audio else []
        graph = []
        if "width" in reshape or "height" in reshape:
            graph.append(f"scale={reshape.get('width', -2)}:{reshape.get('height', -2)}")
        if reshape.get("extra_frames"):
            graph.append(f"tpad=stop={reshape['extra_frames']}:stop_mode=clone")
        cmd += ["-vf", ",".join(graph)] if graph else []
        cmd += ["-r", str(reshape["fps"])] if "fps" in reshape else []
        cmd += ["-map", "0:v:0", *(["-map", "1:a:0", "-c:a", "aac"] if audio else [])]
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out)]
        done = subprocess.run(cmd, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {done.stderr.decode(errors='replace')[-300:]}")
        url = f"{self.delivery_url}/{p['id']}/output.mp4"
        if self.output_via_api:
            url = f"{self.base_url}/outputs/{p['id']}/output.mp4"
        if self.output_override is not None:
            return self.output_override
        if form == "list":
            return [f"{self.delivery_url}/{p['id']}/preview.png", url]
        if form == "object":
            return {"preview": f"{self.delivery_url}/{p['id']}/preview.png", "video": url}
        return url


def _fits(kind: str, value: Any) -> bool:
    if kind == "uri":
        return isinstance(value, str) and value.startswith(("http://", "https://"))
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"title": title, "detail": detail, "status": status}


class _Handler(BaseHTTPRequestHandler):
    farm: ReplicateServer  # set on a subclass per server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        farm = self.farm
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        body, form = None, None
        if content_type.lower().startswith("multipart/"):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                form = parse_multipart(raw, content_type)
        elif raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        request = Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body, form)
        with farm.lock:
            farm.requests.append(request)
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme not in ("Bearer", "Token") or token != farm.api_key:
            return self._json(401, _problem(401, "Unauthenticated", f"Invalid token: {token or '(none)'}"))
        url = urllib.parse.urlsplit(self.path)
        planned = farm._planned_for(method, url.path)
        if planned is not None:
            payload = planned.payload if planned.payload is not None else _problem(planned.status, "Planned", "error")
            return self._json(planned.status, payload, planned.headers)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:1] != ["v1"]:
            return self._json(404, _problem(404, "Not found", "Not found."))
        if method == "GET" and parts[1:2] == ["outputs"] and len(parts) == 4:  # a file behind the key: redirected
            location = f"{farm.delivery_url}/{parts[2]}/{parts[3]}"
            return _send(self, 302, b"", "text/plain", {"Location": location})
        status, payload = self._route(method, parts[1:], body, form, urllib.parse.parse_qs(url.query))
        self._json(status, payload, {"Location": payload["urls"]["get"]} if status == 201 and "urls" in payload else {})

    def _route(self, method: str, parts: list[str], body: Any, form: Any, query: dict) -> tuple[int, Any]:
        farm = self.farm
        owner, _, name = farm.model.partition("/")
        if (method, parts) == ("POST", ["files"]):
            return self._upload(form)
        if method == "GET" and len(parts) == 2 and parts[0] == "files" and parts[1] in farm.files:
            return 200, _file_json(farm, farm.files[parts[1]])
        if (method, parts) == ("POST", ["predictions"]):
            version = body.get("version") if isinstance(body, dict) else None
            return farm.create(body, version if isinstance(version, str) else "")
        if (method, parts) == ("POST", ["models", owner, name, "predictions"]):
            return farm.create(body, None)
        if (method, parts) == ("GET", ["predictions"]):
            return 200, farm.listing(query)
        if len(parts) >= 2 and parts[0] == "predictions":
            with farm.lock:
                p = farm.predictions.get(parts[1])
                if p is not None and method == "GET" and len(parts) == 2:
                    farm.polls[p["id"]] = farm.polls.get(p["id"], 0) + 1
                    farm.first_poll.setdefault(p["id"], time.monotonic())
                    farm.lock.notify_all()
                    return 200, farm.prediction_json(p)
                if p is not None and method == "POST" and parts[2:] == ["cancel"]:
                    if p["status"] not in FINAL:
                        p["status"], p["completed_at"] = "canceled", now_iso()
                        farm.lock.notify_all()
                    return 200, farm.prediction_json(p)
        if (method, parts) == ("GET", ["models", owner, name]):
            latest = {"id": farm.version, "created_at": now_iso(), "cog_version": "0.9.4", "openapi_schema": {}}
            return 200, {"url": f"https://replicate.test/{farm.model}", "owner": owner, "name": name,
                         "visibility": "public", "run_count": farm.creates, "latest_version": latest}  # fmt: skip
        if (method, parts) == ("GET", ["models", owner, name, "versions", farm.version]):
            return 200, {"id": farm.version, "created_at": now_iso(), "cog_version": "0.9.4", "openapi_schema": {}}
        return 404, _problem(404, "Not found", "Not found.")

    def _upload(self, form: dict[str, FormPart] | None) -> tuple[int, Any]:
        farm = self.farm
        content = (form or {}).get("content")
        if content is None or not content.filename:
            return 400, _problem(400, "Invalid request", "content is required: the file, with a filename")
        file_id = _new_id()
        path = farm.workdir / "files" / file_id
        path.write_bytes(content.data)
        stored = StoredFile(
            file_id, path, content.filename, content.content_type or "application/octet-stream", now_iso(), content.data
        )
        with farm.lock:
            farm.files[file_id] = stored
        return 201, _file_json(farm, stored)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        _send(self, status, json.dumps(payload).encode(), "application/json", headers or {})


def _file_json(farm: ReplicateServer, f: StoredFile) -> dict[str, Any]:
    import hashlib

    return {
        "id": f.id,
        "checksums": {"sha256": hashlib.sha256(f.data).hexdigest()},
        "content_type": f.content_type,
        "created_at": f.created_at,
        "expires_at": f.created_at,
        "metadata": {},
        "size": len(f.data),
        "urls": {"get": f"{farm.base_url}/files/{f.id}"},
    }


def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str, headers: dict) -> None:
    with contextlib.suppress(OSError):  # the client may have given up
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


class _Delivery(BaseHTTPRequestHandler):
    """The output server (another origin, as replicate.delivery is): no key needed."""

    farm: ReplicateServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        farm = self.farm
        with farm.lock:
            farm.delivered.append(Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        parts = self.path.strip("/").split("/")
        path = farm.workdir / "outputs" / parts[0] / parts[-1] if len(parts) == 2 else None
        if path is None or ".." in parts or not path.is_file():
            return _send(self, 404, b"not found", "text/plain", {})
        data = farm.output_body if farm.output_body is not None else path.read_bytes()
        _send(self, 200, data, "video/mp4", {})


@contextlib.contextmanager
def replicate_server(
    workdir: Path, api_key: str = "r8_test0123456789abcdefABCDEF", model: str = "acme/lipsync"
) -> Iterator[ReplicateServer]:
    """Serve the API and its outputs on 127.0.0.1 (free ports) in threads for the ``with`` block."""
    server = ReplicateServer(workdir, api_key, model)
    servers = []
    for handler in (_Handler, _Delivery):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (handler,), {"farm": server}))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(httpd)
    server.base_url = f"http://127.0.0.1:{servers[0].server_address[1]}/v1"
    server.delivery_url = f"http://127.0.0.1:{servers[1].server_address[1]}"
    try:
        yield server
    finally:
        server.release()
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()
