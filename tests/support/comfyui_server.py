"""A real HTTP server speaking the parts of ComfyUI's API the farm's ``comfyui`` backend uses.

The backend is tested over real sockets against ComfyUI's own request and response formats
(server.py and execution.py of comfyanonymous/ComfyUI): multipart ``POST /upload/image``;
``POST /prompt`` validated like ComfyUI does it (class_type present and known, required inputs
given, links to existing nodes, loaders' files uploaded; else 400 with ``error`` and
``node_errors``), honouring a client's ``prompt_id``; a queue run by one worker thread;
``/history/{id}`` with outputs and ``status`` (status_str, completed, messages as
``[event, {..., "timestamp": ms}]``); ``/queue``; ``/view``; ``/system_stats``; ``/object_info``.

"Executing" a workflow is tests.support.comfyui_nodes: PNGs drawn with Pillow, or the frames of an
uploaded video for a lip-sync graph, saved as its output nodes' ComfyUI namesakes save them.
Uploads are any file (ComfyUI's /upload/image saves images, audio and video alike); LoadImage,
LoadAudio and VHS_LoadVideo fail validation for a file not uploaded.

The server lives apart from any backend instance, so a test can kill the farm and let a new
backend pick the job up. Scripted behaviour: ``hold()``/``release()`` keep jobs running,
``delay_s`` slows each, ``fail_next(path, status)`` answers errors, ``fail_node(id, message)``
makes a node raise, ``forget()`` drops queue and history (a ComfyUI restart), ``misshape(frames=,
size=, fps=)`` makes every MP4 from then on come out with frames added (or dropped), another size
or another frame rate, as a workflow ignoring its mapped figures would.

    with comfyui_server(tmp_path) as server:
        backend = ComfyUI("comfy", {"kind": "comfyui", "base_url": server.base_url, ...})
        ... server.submits, server.prompts[0]["prompt"], server.requests ...
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.comfyui_nodes import LOADERS, NODE_CLASSES, FakeNodes, is_link

SYSTEM_STATS = {
    "system": {"os": "posix", "python_version": "3", "embedded_python": False, "comfyui_version": "0.3.test"}
    | {"pytorch_version": "none", "argv": []},
    "devices": [
        {"name": "cuda:0 Fake GPU", "type": "cuda", "index": 0, "vram_total": 24 * 2**30, "vram_free": 20 * 2**30}
    ],
}


def _ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Job:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]
    generation: int

    def entry(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra, self.outputs]


@dataclass
class Request:
    method: str
    path: str  # as sent, with its query string
    at: float = field(default_factory=time.monotonic)


class ComfyUIServer(FakeNodes):
    def __init__(self, workdir: Path, delay_s: float = 0.0):
        self.workdir = Path(workdir)
        self.dirs = {t: self.workdir / t for t in ("input", "output", "temp")}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.delay_s = delay_s
        self.lock = threading.Condition()
        self.pending: deque[Job] = deque()
        self.running: Job | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.generation = 0  # bumped by forget(): a job of an older generation is dropped when it ends
        self.number = 0
        self.counter = 0
        self.submits = 0  # prompts accepted (POST /prompt answered 200)
        self.prompts: list[dict[str, Any]] = []  # bodies of accepted POST /prompt
        self.uploads: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.first_poll: dict[str, float] = {}  # prompt id -> time.monotonic() of its first /history poll
        self._gate = threading.Event()
        self._gate.set()
        self._failures: deque[tuple[str, int]] = deque()
        self.node_failures: dict[str, tuple[str, str]] = {}
        self.misshapen: dict[str, Any] = {}
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- scripting ------------------------------------------------------------------------------

    def hold(self) -> None:
        """Jobs that start from now on keep running until ``release()``."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def fail_next(self, path: str, status: int = 500, times: int = 1) -> None:
        """The next ``times`` requests whose path starts with ``path`` get ``status``."""
        with self.lock:
            self._failures.extend([(path, status)] * times)

    def fail_node(self, node_id: str, message: str, exception_type: str = "RuntimeError") -> None:
        """Node ``node_id`` of every workflow raises ``message`` when executed."""
        self.node_failures[node_id] = (message, exception_type)

    def misshape(self, frames: int = 0, size: tuple[int, int] | None = None, fps: float | None = None) -> None:
        """Every MP4 saved from now on has ``frames`` more frames (fewer when negative), is ``size``
        (width, height) and plays at ``fps``, whatever the workflow asked for."""
        self.misshapen = {"frames": frames, "size": size, "fps": fps}

    def forget(self) -> None:
        """Drop the queue, the running job and the history, as a restarted ComfyUI would."""
        with self.lock:
            self.pending.clear()
            self.running = None
            self.history.clear()
            self.generation += 1
            self.lock.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the fake ComfyUI did not reach the expected state")
            time.sleep(0.01)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ComfyUIServer:
        server = self

        class Handler(_Handler):
            comfy = server

        self._httpd = _Quiet(("127.0.0.1", 0), Handler)
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True, name="comfyui-http"),
            threading.Thread(target=self._work, daemon=True, name="comfyui-worker"),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._gate.set()
        with self.lock:
            self.lock.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> ComfyUIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the queue ------------------------------------------------------------------------------

    def submit(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
            return 400, {
                "error": {
                    "type": "no_prompt",
                    "message": "No prompt provided",
                    "details": "No prompt provided",
                    "extra_info": {},
                },
                "node_errors": {},
            }
        prompt = body["prompt"]
        error, node_errors, outputs = self._validate(prompt)
        if error is not None:
            return 400, {"error": error, "node_errors": node_errors}
        with self.lock:
            prompt_id = str(body.get("prompt_id") or uuid.uuid4())
            extra = {"client_id": body.get("client_id"), "create_time": _ms()}
            job = Job(self.number, prompt_id, prompt, extra, outputs, self.generation)
            self.number += 1
            self.pending.append(job)
            self.submits += 1
            self.prompts.append(body)
            self.lock.notify_all()
        return 200, {"prompt_id": prompt_id, "number": job.number, "node_errors": {}}

    def _validate(self, prompt: dict[str, Any]) -> tuple[dict | None, dict, list[str]]:
        def invalid(message: str, details: str) -> tuple[dict, dict, list[str]]:
            return {"type": "invalid_prompt", "message": message, "details": details, "extra_info": {}}, {}, []

        outputs = []
        for nid, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return invalid("Cannot execute because a node is missing the class_type property.", f"Node ID '#{nid}'")
            if node["class_type"] not in NODE_CLASSES:
                return invalid(f"Cannot execute because node {node['class_type']} does not exist.", f"Node ID '#{nid}'")
            if NODE_CLASSES[node["class_type"]][1]:
                outputs.append(nid)
        if not outputs:
            return (
                {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
                {},
                [],
            )
        node_errors: dict[str, Any] = {}
        for nid, node in prompt.items():
            inputs = node.get("inputs") or {}
            errors = []
            for name in NODE_CLASSES[node["class_type"]][0]:
                if name not in inputs:
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
            for name, value in inputs.items():
                if is_link(value) and value[0] not in prompt:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Linked node does not exist",
                            "details": f"{name}: node {value[0]}",
                            "extra_info": {"input_name": name},
                        }
                    )
            field_name, invalid_file = LOADERS.get(node["class_type"], ("", ""))
            name = inputs.get(field_name)
            if field_name and isinstance(name, str) and not (self.dirs["input"] / name).is_file():
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"{field_name} - {invalid_file}: {name}",
                        "extra_info": {"input_name": field_name},
                    }
                )
            if errors:
                node_errors[nid] = {"errors": errors, "dependent_outputs": outputs, "class_type": node["class_type"]}
        if node_errors:
            details = "\n".join(f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"])
            return (
                {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": details,
                    "extra_info": {},
                },
                node_errors,
                [],
            )
        return None, {}, outputs

    def _work(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                while not self.pending and not self._stop.is_set():
                    self.lock.wait(0.1)
                if self._stop.is_set():
                    return
                job = self.running = self.pending.popleft()
            messages: list[list[Any]] = [
                ["execution_start", {"prompt_id": job.prompt_id, "timestamp": _ms()}],
                ["execution_cached", {"nodes": [], "prompt_id": job.prompt_id, "timestamp": _ms()}],
            ]
            until = time.monotonic() + self.delay_s
            while not self._stop.is_set() and (time.monotonic() < until or not self._gate.is_set()):
                time.sleep(0.01)
            try:
                outputs, status = self._execute(job, messages)
            except Exception as exc:  # a bug here must show up as a failed job, not a hung one
                outputs, status = {}, self._error(job, messages, "?", "?", f"fake server crashed: {exc!r}", "Exception")
            with self.lock:
                if job.generation == self.generation:
                    entry = {"prompt": job.entry(), "outputs": outputs, "status": status, "meta": {}}
                    self.history[job.prompt_id] = entry
                    self.running = None

    def _error(self, job: Job, messages: list, nid: str, class_type: str, message: str, kind: str) -> dict[str, Any]:
        messages.append(
            [
                "execution_error",
                {
                    "prompt_id": job.prompt_id,
                    "node_id": nid,
                    "node_type": class_type,
                    "executed": [],
                    "exception_message": message,
                    "exception_type": kind,
                    "traceback": ['  File "nodes.py"\n'],
                    "current_inputs": {},
                    "current_outputs": {},
                    "timestamp": _ms(),
                },
            ]
        )
        return {"status_str": "error", "completed": False, "messages": messages}

    def _execute(self, job: Job, messages: list) -> tuple[dict[str, Any], dict[str, Any]]:
        prompt = job.prompt
        for nid, (message, kind) in self.node_failures.items():
            if nid in prompt:
                return {}, self._error(job, messages, nid, prompt[nid]["class_type"], message, kind)
        frames = self._render(prompt)
        outputs = {}
        for nid in job.outputs:
            node = prompt[nid]
            outputs[nid] = self._save(prompt, node["class_type"], node.get("inputs") or {}, frames)
        messages.append(["execution_success", {"prompt_id": job.prompt_id, "timestamp": _ms()}])
        return outputs, {"status_str": "success", "completed": True, "messages": messages}

    # -- read side ------------------------------------------------------------------------------

    def queue(self) -> dict[str, Any]:
        with self.lock:
            running = [self.running.entry()] if self.running is not None else []
            return {"queue_running": running, "queue_pending": [j.entry() for j in self.pending]}

    def take_failure(self, path: str) -> int | None:
        with self.lock:
            for i, (prefix, status) in enumerate(self._failures):
                if path.startswith(prefix):
                    del self._failures[i]
                    return status
        return None


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a killed client is no test failure
        pass


class _Handler(BaseHTTPRequestHandler):
    comfy: ComfyUIServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _begin(self) -> tuple[str, dict[str, str]] | None:
        self.comfy.requests.append(Request(self.command, self.path))
        parts = urllib.parse.urlsplit(self.path)
        failure = self.comfy.take_failure(parts.path)
        if failure is not None:
            self._send(failure, b"scripted failure", "text/plain")
            return None
        return parts.path, dict(urllib.parse.parse_qsl(parts.query))

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        path, query = begun
        comfy = self.comfy
        if path.startswith("/history/"):
            prompt_id = urllib.parse.unquote(path[len("/history/") :])
            with comfy.lock:
                comfy.first_poll.setdefault(prompt_id, time.monotonic())
                entry = comfy.history.get(prompt_id)
                self._send(200, {prompt_id: entry} if entry is not None else {})
        elif path == "/history":
            with comfy.lock:
                self._send(200, dict(comfy.history))
        elif path == "/queue":
            self._send(200, comfy.queue())
        elif path == "/view":
            name, sub, kind = query.get("filename", ""), query.get("subfolder", ""), query.get("type", "output")
            folder = comfy.dirs.get(kind)
            if folder is None or not name or "/" in name or "\\" in name or name.startswith(".") or sub:
                self._send(400, b"bad view request", "text/plain")
            elif not (folder / name).is_file():
                self._send(404, b"404: Not Found", "text/plain")
            else:
                self._send(200, (folder / name).read_bytes(), "application/octet-stream")
        elif path == "/system_stats":
            self._send(200, SYSTEM_STATS)
        elif path == "/object_info":
            self._send(
                200,
                {
                    c: {"name": c, "input": {"required": {i: [] for i in req}}, "output_node": out}
                    for c, (req, out) in NODE_CLASSES.items()
                },
            )
        else:
            self._send(404, b"404: Not Found", "text/plain")

    def do_POST(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        path, _ = begun
        body = self._body()
        if path == "/prompt":
            try:
                data = json.loads(body)
            except ValueError:
                self._send(400, {"error": "invalid JSON"})
                return
            self._send(*self.comfy.submit(data))
        elif path == "/upload/image":
            self._upload(body)
        else:
            self._send(404, b"404: Not Found", "text/plain")

    def _upload(self, body: bytes) -> None:
        head = f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields: dict[str, str] = {}
        image: tuple[str, bytes] | None = None
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "image" and part.get_filename():
                image = (part.get_filename(), payload)
            elif name:
                fields[name] = payload.decode()
        if image is None:
            self._send(400, b"no image in the form", "text/plain")
            return
        filename, data = image
        if "/" in filename or "\\" in filename or filename.startswith(".") or fields.get("type", "input") != "input":
            self._send(400, b"bad file name", "text/plain")
            return
        target = self.comfy.dirs["input"] / filename
        if target.exists() and fields.get("overwrite", "false").lower() != "true" and target.read_bytes() != data:
            stem, suffix = target.stem, target.suffix
            i = 1
            while (self.comfy.dirs["input"] / f"{stem} ({i}){suffix}").exists():
                i += 1
            target = self.comfy.dirs["input"] / f"{stem} ({i}){suffix}"
        target.write_bytes(data)
        self.comfy.uploads[target.name] = data
        self._send(200, {"name": target.name, "subfolder": "", "type": "input"})


@contextlib.contextmanager
def comfyui_server(workdir: Path, delay_s: float = 0.0) -> Iterator[ComfyUIServer]:
    server = ComfyUIServer(workdir, delay_s).start()
    try:
        yield server
    finally:
        server.stop()
