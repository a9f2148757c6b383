"""The ComfyUI backend: uploads, submission with a durable job record, waiting, and fetching what
the server saved (farm's files are made of it in workers.comfyui.outputs, and for lip-sync and
speech-native clips in workers.comfyui.talk)."""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers._http import Response, call, join
from workers.api import (
    Estimate,
    JobRecord,
    NoRecord,
    Resources,
    StageError,
    StageResult,
    Usage,
    children_cpu,
    config_version,
    secret,
)
from workers.comfyui import outputs, talk
from workers.comfyui.upload import multipart, prepared
from workers.comfyui.workflow import (
    FILE_INPUT,
    KIND,
    KIND_VERSION,
    STAGE_OPS,
    ComfyUISettings,
    action_seed,
    canonical,
    load_templates,
    prompt_text,
    prune,
    round8,
)
from workers.configured import parse
from workers.video.returned import asked_frames

_POLL_FAILURES = 5  # consecutive failed polls (server restarting, network blip) before giving up
_QUEUE_CHECK_EVERY = 10  # polls; /queue carries every queued workflow, so it is not asked each time


class ComfyUI:
    """Image (``sheet``, ``keyframe``), video (``clip``) or lip-sync (``lipsync``) stage on a ComfyUI server.

    Inputs a template can take (settings ``inputs.<op>.<name>: [node id, field]``): ``prompt`` (text
    built from the params), ``seed`` (``action_seed``), ``width``/``height`` (rounded up to a
    multiple of 8, except for talking clips, which must come back at exactly that size), for clips ``frames``, ``fps``, ``image`` (the keyframe) and ``last_image`` (the
    next shot's keyframe, when the plan gives one: mapping it turns on the "last_frame" feature),
    and for keyframes ``figure1``..``figure8`` (the figures of the characters in frame, in order).
    Lip-sync templates take ``video`` (the shot's clip), ``audio`` (its dialogue track),
    ``speaker1``..``speaker4`` (each on-screen speaker's lines), ``fps``, ``frames``, ``width``,
    ``height``, ``seed`` and ``prompt``; a speech-native video backend (``"speech": true``, features
    "speech" and "voice_reference") maps ``audio`` for its clips too: see workers.comfyui.talk.
    Files are uploaded under names made from their digest. A file input the action lacks (no
    ``last``, fewer characters than figure slots, fewer speakers than speaker slots) removes its
    node from the workflow, along with the links to it, so the input it fed must be optional (as
    ``end_image`` of a first/last-frame node is).

    Outputs (settings ``outputs.<op>.<name>: node id``): sheet "sheet" (and "figure" if a node
    makes one, else derived: see ``derive_figure``), keyframe "keyframe" (resized and cropped to
    exactly width x height), clip "clip" (video, animated image or a list of frames, retimed to
    exactly ``frames`` frames at ``fps`` and encoded with motion's ENCODER_ARGS), lipsync "clip"
    (a video of exactly the planned size, fps and frames: never retimed; else a failed action with
    the figures). A speech-native clip also yields "audio" and meta ``lines``.

    Raises StageError: not retryable for a workflow ComfyUI rejects (400, with its node errors), a
    node that fails (with its message) or outputs that are missing or unreadable; retryable for
    refused connections, 5xx, a node interrupted or out of GPU memory, and a job still running
    after ``timeout_s`` (the job record keeps it: the next attempt resumes waiting on it).
    """

    kind = KIND
    resumable = True

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.settings = s = parse(ComfyUISettings, name, config)
        self._config = dict(config)
        self._templates = load_templates(name, s)
        self.stage = s.stage
        self.ops = STAGE_OPS[s.stage]
        self.tools: tuple[str, ...] = ("ffmpeg", "ffprobe") if s.stage in ("video", "lipsync") else ()
        # a lip-sync model finds the faces itself: no feature "faces"
        self.features: tuple[str, ...] = ("last_frame",) if "last_image" in s.inputs.get("clip", {}) else ()
        if s.speech:
            self.features += ("speech", "voice_reference")
        self.resources = s.resources_or(Resources(num_cpus=1))  # the GPU is the server's; here: waits and ffmpeg
        digests = {op: hashlib.sha256(canonical(t).encode()).hexdigest() for op, t in self._templates.items()}
        self.version = config_version(
            KIND_VERSION,
            {
                "stage": s.stage,
                "workflows": digests,
                "inputs": {op: {k: list(v) for k, v in m.items()} for op, m in s.inputs.items()},
                "outputs": s.outputs,
                "speech": s.speech or None,  # absent unless set: older backends keep their keys
                "frame_step": list(s.frame_step) if s.frame_step else None,
            },
            ("stage", "workflows", "inputs", "outputs", "speech", "frame_step"),
        )
        self.host = urllib.parse.urlsplit(s.base_url).netloc
        self.what = f"{s.stage} ({name}, ComfyUI at {self.host})"
        self._client_id = f"farm-{uuid.uuid4().hex}"
        self._required_inputs: dict[str, set[str]] | None = None

    # -- the server ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        key = secret(self._config)
        hdrs = {**(headers or {}), **({"Authorization": f"Bearer {key}"} if key else {})}
        try:  # call() names the method and path in its errors
            return call(
                method,
                join(self.settings.base_url, path),
                what=self.what,
                body=body,
                headers=hdrs,
                timeout=self.settings.request_timeout_s,
                query=query,
            )
        except StageError as exc:
            if key and key in str(exc):
                raise StageError(
                    str(exc).replace(key, "[api key]"), retryable=exc.retryable, retry_after=exc.retry_after
                ) from None
            raise

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json(f"{self.what}: {method} /{path.split('/')[0]}")

    def check(self) -> str:
        """``GET /system_stats`` and ``/object_info``: is the server up, does it have every node the
        workflows use? One line naming its version and devices."""
        stats = self._json("GET", "system_stats")
        system = stats.get("system", {}) if isinstance(stats, dict) else {}
        devices = []
        for d in (stats.get("devices") or []) if isinstance(stats, dict) else []:
            vram = d.get("vram_total")
            devices.append(
                f"{d.get('name', d.get('type', '?'))}"
                + (f" {vram / 2**30:.0f} GiB" if isinstance(vram, (int, float)) and vram else "")
            )
        info = self._json("GET", "object_info")
        missing = sorted(
            {node["class_type"] for t in self._templates.values() for node in t.values()}
            - set(info if isinstance(info, dict) else ())
        )
        if missing:
            raise StageError(
                f"{self.what}: the server lacks node types {', '.join(missing)} used by the workflows "
                "of this backend: install the custom nodes that provide them",
                retryable=False,
            )
        return (
            f"ComfyUI {system.get('comfyui_version') or '(version not reported)'} at {self.host}: "
            f"{', '.join(devices) or 'no devices reported'}; ops {', '.join(self.ops)}"
        )

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        if op == "lipsync":
            seconds = 20.0 + 1.0 * int(params.get("frames", 0)) / max(1, int(params.get("fps", 1)))
        else:
            seconds = 30.0 + 0.5 * int(params.get("frames", 0)) if op == "clip" else 20.0
        return self.settings.estimate_or(Estimate(seconds=seconds, gpu_seconds=seconds))

    # -- one action ---------------------------------------------------------------------------

    def run(
        self,
        op: str,
        inputs: Mapping[str, Path],
        params: Mapping[str, Any],
        out_dir: Path,
        job: JobRecord | None = None,
    ) -> StageResult:
        if op not in self.ops:
            raise StageError(f"{self.what}: unknown op {op!r}; this backend does {', '.join(self.ops)}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        record: JobRecord = job if job is not None else NoRecord()
        work = out_dir / "comfyui-talk"
        shutil.rmtree(work, ignore_errors=True)
        try:
            return self._run(op, inputs, params, out_dir, work, record)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(
        self,
        op: str,
        inputs: Mapping[str, Path],
        params: Mapping[str, Any],
        out_dir: Path,
        work: Path,
        record: JobRecord,
    ) -> StageResult:
        saved = record.load() or {}
        prompt_id: str | None = saved.get("prompt_id") or None
        meta: dict[str, Any] = {"server": self.host}
        speaking = self.settings.speech and talk.is_speech(op, params)
        said = talk.Talk()
        if op == "lipsync":
            said = talk.lipsync_tracks(inputs, params, work, self.what, meta)
        elif speaking:
            said = talk.speech_track(inputs, params, work, self.what)
        elif self.settings.speech and op == "clip":  # a shot without lines drives the model with silence
            said = talk.silent_track(params, work, self.what)
        resuming = prompt_id is not None
        entry = None
        for _ in range(2):
            if prompt_id is None:
                prompt_id = self._submit(op, inputs, params, record, meta, said.uploads)
            entry = self._wait(prompt_id)
            if entry is not None:
                break
            why = (
                "the previous attempt stopped before ComfyUI accepted it"
                if saved.get("submitted") is False
                else "the server restarted or its history was cleared"
            )
            meta["resubmitted"] = (
                f"ComfyUI at {self.host} does not know prompt {prompt_id} ({why}): the workflow was submitted anew"
            )
            prompt_id, saved = None, {}
        if entry is None:
            raise StageError(
                f"{self.what}: the server lost the prompt twice in a row (is it restarting?)", retryable=True
            )
        assert prompt_id is not None
        meta["prompt_id"] = prompt_id
        meta["resumed"] = resuming and "resubmitted" not in meta  # waited on a job an earlier attempt submitted
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            self._failed(prompt_id, status, record)
        files = self._outputs(op, prompt_id, entry)
        usage = Usage(
            provider_job_id=prompt_id,
            model=Path(self.settings.workflows[op]).name,
            gpu_seconds=outputs.gpu_seconds(status),
        )
        cpu0 = children_cpu()
        if op == "keyframe":
            result = {"keyframe": outputs.keyframe(self.what, files["keyframe"], params, out_dir, meta)}
        elif op == "sheet":
            result = outputs.sheet(self.what, self.name, files, out_dir, meta)
        elif op == "lipsync":
            result = talk.lipsync_result(self.what, self.name, files["clip"], params, out_dir, work, meta)
        elif speaking:
            asked = asked_frames(int(params["frames"]), self.settings.frame_step)
            result = talk.speech_result(self.what, self.name, files["clip"], params, said, out_dir, work, meta, asked)
        else:
            result = {"clip": outputs.clip(self.what, files["clip"], params, out_dir, meta)}
        usage.cpu_seconds = children_cpu() - cpu0
        return StageResult(files=result, meta=meta, usage=usage)

    def _submit(
        self,
        op: str,
        inputs: Mapping[str, Path],
        params: Mapping[str, Any],
        record: JobRecord,
        meta: dict[str, Any],
        tracks: Mapping[str, Path],
    ) -> str:
        mapped = self.settings.inputs.get(op, {})
        files = self._files(op, inputs, params, meta) | {k: v for k, v in tracks.items() if k in mapped}
        workflow, removed = self._fill(op, params, {k: self._upload(k, p) for k, p in files.items()})
        if removed:
            meta["removed_nodes"] = removed
        prompt_id = str(uuid.uuid4())
        base = {"base_url_host": self.host, "op": op}
        # saved before POST: a farm dying during the request still finds (and resumes) the job
        record.save({**base, "prompt_id": prompt_id, "submitted": False, "saved_at": time.time()})
        what = f"{self.what}: POST /prompt"
        try:
            answer = self._json(
                "POST", "prompt", body={"prompt": workflow, "client_id": self._client_id, "prompt_id": prompt_id}
            )
        except StageError as exc:
            if exc.retryable:
                raise
            record.save({**base, "failed_prompt_id": prompt_id, "error": str(exc)[:1000]})
            hint = ""
            if removed:
                hint = (
                    f" (nodes removed for lack of a file: {', '.join(removed)}; the inputs they fed must be optional)"
                )
            detail = str(exc).removeprefix(f"{self.what}: ")
            raise StageError(
                f"{self.what}: ComfyUI rejected workflow {self.settings.workflows[op]} for {op}: {detail}{hint}",
                retryable=False,
            ) from None
        accepted = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not isinstance(accepted, str) or not accepted:
            raise StageError(f"{what}: the answer has no prompt_id: {str(answer)[:300]}", retryable=True)
        if answer.get("node_errors"):
            meta["node_errors"] = answer["node_errors"]
        record.save({**base, "prompt_id": accepted, "submitted": True, "saved_at": time.time()})
        return accepted

    def _files(
        self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], meta: dict[str, Any]
    ) -> dict[str, Path]:
        """Template input name -> local image, for the image inputs the template maps (the sound
        tracks of talking shots come from workers.comfyui.talk)."""
        mapped = self.settings.inputs.get(op, {})
        found: dict[str, Path] = {}
        if op == "clip":
            if "keyframe" not in inputs:
                raise StageError(f"{self.what}: input 'keyframe' is missing")
            found["image"] = inputs["keyframe"]
            if inputs.get("last") is not None:
                found["last_image"] = inputs["last"]
        elif op == "keyframe":
            cast = [c for c in params.get("characters", []) if f"sheet:{c}" in inputs]
            for i, character in enumerate(cast, start=1):
                found[f"figure{i}"] = inputs[f"sheet:{character}"]
            slots = sum(1 for k in mapped if k.startswith("figure"))
            if len(cast) > slots and slots:
                meta["figures_left_out"] = cast[slots:]
        return {k: v for k, v in found.items() if k in mapped}

    def _upload(self, input_name: str, path: Path) -> str:
        filename, data, mime = prepared(self.what, input_name, path)  # the name: a digest, never user text
        body, ctype = multipart({"type": "input", "overwrite": "true"}, "image", filename, data, mime)
        what = f"{self.what}: POST /upload/image"
        answer = self._json("POST", "upload/image", body=body, headers={"Content-Type": ctype})
        if not isinstance(answer, dict) or not isinstance(answer.get("name"), str):
            raise StageError(f"{what}: the answer names no file: {str(answer)[:300]}", retryable=True)
        sub = answer.get("subfolder") or ""
        return f"{sub}/{answer['name']}" if sub else answer["name"]

    def _fill(
        self, op: str, params: Mapping[str, Any], uploaded: Mapping[str, str]
    ) -> tuple[dict[str, Any], list[str]]:
        """The template with this action's values; removes nodes of file inputs the action lacks."""
        workflow = copy.deepcopy(self._templates[op])
        values: dict[str, Any] = {"prompt": prompt_text(op, params), "seed": action_seed(params), **uploaded}
        exact = op == "lipsync" or talk.is_speech(op, params)  # what returns is never rescaled: ask for the size
        for key in ("width", "height"):
            if isinstance(params.get(key), int):
                values[key] = params[key] if exact else round8(params[key])
        for key in ("frames", "fps"):
            if isinstance(params.get(key), int):
                values[key] = params[key]
        if talk.is_speech(op, params) and isinstance(params.get("frames"), int):  # a length its model makes
            values["frames"] = asked_frames(params["frames"], self.settings.frame_step)
        drop = {}
        for input_name, (nid, field) in self.settings.inputs.get(op, {}).items():
            if input_name in values:
                if nid in workflow:
                    workflow[nid]["inputs"][field] = values[input_name]
            elif FILE_INPUT.match(input_name):
                drop[nid] = input_name
        return workflow, prune(workflow, drop, self._required)

    def _required(self) -> dict[str, set[str]]:
        """Node class -> its required inputs, from the server's /object_info (asked once)."""
        if self._required_inputs is None:
            info = self._json("GET", "object_info")
            self._required_inputs = {
                c: set(((v.get("input") or {}).get("required") or {}) if isinstance(v, dict) else ())
                for c, v in (info.items() if isinstance(info, dict) else ())
            }
        return self._required_inputs

    def _history(self, prompt_id: str) -> dict[str, Any] | None:
        quoted = urllib.parse.quote(prompt_id, safe="")
        data = self._json("GET", f"history/{quoted}")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    def _queued(self, prompt_id: str) -> bool:
        data = self._json("GET", "queue")
        if not isinstance(data, dict):
            return True  # an answer we cannot read proves nothing lost
        for key in ("queue_running", "queue_pending"):
            for item in data.get(key) or []:
                if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                    return True
        return False

    def _wait(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of ``prompt_id`` once it ran; None when the server no longer knows it."""
        s = self.settings
        deadline = time.monotonic() + s.timeout_s
        polls = failures = 0
        while True:
            try:
                entry = self._history(prompt_id)
                if entry is not None:
                    return entry
                if polls % _QUEUE_CHECK_EVERY == 0 and not self._queued(prompt_id):
                    # it may have moved from the queue to the history between the two requests
                    return self._history(prompt_id)
                failures = 0
            except StageError as exc:
                failures += 1
                if not exc.retryable:
                    raise
                if failures >= _POLL_FAILURES:
                    raise StageError(
                        f"{exc} (waiting on prompt {prompt_id}; the job record keeps it, so the next "
                        "attempt resumes waiting)",
                        retryable=exc.retryable,
                        retry_after=exc.retry_after,
                    ) from None
            polls += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise StageError(
                    f"{self.what}: prompt {prompt_id} has not finished after {s.timeout_s:g}s (setting "
                    "timeout_s); the job record keeps it, so the next attempt resumes waiting on it "
                    "instead of submitting again",
                    retryable=True,
                )
            time.sleep(min(s.poll_interval_s, left))

    def _failed(self, prompt_id: str, status: Mapping[str, Any], record: JobRecord) -> None:
        text, retryable = outputs.failure(self.what, prompt_id, status)
        # a later attempt must submit anew, not resume a job that has failed
        record.save({"base_url_host": self.host, "failed_prompt_id": prompt_id, "error": text[:1000]})
        raise StageError(text, retryable=retryable)

    def _outputs(self, op: str, prompt_id: str, entry: Mapping[str, Any]) -> dict[str, list[tuple[str, bytes]]]:
        """Output name -> [(server file name, bytes)] for every output node mapped for ``op``."""
        produced = entry.get("outputs") or {}
        found: dict[str, list[tuple[str, bytes]]] = {}
        for out, nid in self.settings.outputs.get(op, {}).items():
            node = produced.get(nid) if isinstance(produced, dict) else None
            items = [
                f
                for key in ("videos", "gifs", "images", "video")
                for f in (node or {}).get(key) or []
                if isinstance(f, dict) and isinstance(f.get("filename"), str)
            ]
            if not items:
                raise StageError(
                    f"{self.what}: prompt {prompt_id} finished but node {nid} saved no file for {out} "
                    f"(nodes with files: {', '.join(map(str, produced)) or 'none'}); point backends."
                    f"{self.name}.outputs.{op}.{out} at a node that saves it",
                    retryable=False,
                )
            videos = [f for f in items if Path(f["filename"]).suffix.lower() in outputs.VIDEO_SUFFIXES]
            # a clip may be frames; a lip-sync clip must be a video (else refused in workers.comfyui.talk)
            items = videos[:1] if videos and op in ("clip", "lipsync") else items if op == "clip" else items[:1]
            found[out] = [
                (
                    f["filename"],
                    self._request(
                        "GET",
                        "view",
                        query={
                            "filename": f["filename"],
                            "subfolder": str(f.get("subfolder") or ""),
                            "type": str(f.get("type") or "output"),
                        },
                    ).body,
                )
                for f in items
            ]
        return found
