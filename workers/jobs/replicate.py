"""Lip-sync by a model behind Replicate's HTTP predictions API (kind ``replicate``): hosted
Replicate, or any gateway that speaks it.

One ``lipsync`` action is one prediction. The shot's clip and its sound tracks
(``workers.lipsync.shot.dialogue``: ``audio``, ``speaker1``..) are uploaded with ``POST /v1/files``
under names made from their digest, the farm values the settings map (``inputs``) and the fixed
ones (``input``) make the prediction's input, and the prediction is created, waited on and its
output (a URL, or the first MP4 of a list) fetched and passed through
``workers.video.returned.encode``: exactly the planned size, fps and frames, encoded as every clip
is, or a failed action with the figures.

A prediction is paid for, so it must survive the farm. The job record holds, in turn:

1. ``{"creating": nonce, "input_digest", "saved_at"}`` just before ``POST /predictions``;
2. ``{"prediction_id", "input_digest", "saved_at"}`` as soon as the answer names the prediction,
   before any waiting.

A run that finds (2) waits on that prediction. One that finds only (1), because the farm died
between the create and saving its answer, looks for it among the account's recent predictions
(``GET /v1/predictions``: the same model or version, exactly the same input, created at most a
minute before ``saved_at``) and waits on it; only when none is there is the prediction created
anew, and the result's meta says so.

Raises StageError: retryable for unreachable servers, 429 (with Retry-After), 5xx, a prediction
still running after ``timeout_s`` (the record keeps it: the next attempt resumes waiting), one
canceled on the provider (the record is cleared) or failed out of GPU memory; not retryable for a
refused key, an unknown model, input the model refuses (422), a prediction the model fails (with
its error) and a returned clip of the wrong shape.

Example settings (FARM_BACKENDS)::

    {"lips": {"kind": "replicate", "stage": "lipsync", "model": "acme/lipsync",
              "api_key_env": "REPLICATE_API_TOKEN",
              "inputs": {"video": "video", "audio": "audio", "fps": "fps"},
              "input": {"guidance_scale": 1.5}}}
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from workers._http import origin, shown, status_of
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
)
from workers.jobs.client import Client
from workers.jobs.settings import FILE_INPUTS, KIND, KIND_VERSION, fixed_json, settings
from workers.lipsync.shot import Dialogue, dialogue
from workers.video.returned import encode

FINAL = ("succeeded", "failed", "canceled")
LOOKBACK_S = 60.0  # a prediction found by listing was created at most this long before the nonce was saved
MAX_LIST_PAGES = 20  # of 100 predictions each
_POLL_FAILURES = 5  # consecutive failed polls (gateway restarting, network blip) before giving up
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_OOM = re.compile(r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY", re.IGNORECASE)
_SUFFIXES = (".mp4", ".mov", ".webm", ".wav")
_TIME = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?")


def parse_time(text: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time as Replicate writes it (``...34.791859Z``)."""
    found = _TIME.fullmatch(text.strip()) if isinstance(text, str) else None
    if not found:
        return None
    day, clock, fraction, zone = found.groups()
    when = datetime.strptime(f"{day}T{clock}", "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        when -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return when.timestamp() + (float(fraction) if fraction else 0.0)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def input_digest(values: Any) -> str:
    return hashlib.sha256(fixed_json(values).encode()).hexdigest()


def action_seed(params: Mapping[str, Any]) -> int:
    """The model's seed for an action: fixed by all its params (a new take, a new seed)."""
    return int.from_bytes(hashlib.sha256(fixed_json(dict(params)).encode()).digest()[:8], "big") % 2**32


def output_url(output: Any) -> str | None:
    """The returned clip's URL: the output itself, or the first MP4 (else the first URL) of a list
    or of an object's values."""
    items = output if isinstance(output, list) else list(output.values()) if isinstance(output, dict) else [output]
    urls = [u for u in items if isinstance(u, str) and u]
    videos = [u for u in urls if urllib.parse.urlsplit(u).path.lower().endswith(".mp4")]
    found = videos or urls
    return found[0] if found else None


class Replicate:
    """Lip-sync (op ``lipsync``) by a model on Replicate's predictions API; see the module docstring.

    Inputs and params are the embedded lip-sync's (``workers.lipsync.mouth``): ``clip``, each line's
    WAV as ``line0``.., and the shot's size, fps, frames, sample rate and lines. Settings ``inputs``
    map farm values to the model's input fields: ``video`` (the clip), ``audio`` (every line, as long
    as the clip), ``speaker1``..``speaker4`` (one on-screen speaker's lines each), ``fps``,
    ``frames``, ``width``, ``height``, ``seed``. Writes ``clip.mp4``; meta ``prediction_id``,
    ``resumed``, ``predict_time`` and, where they happened, ``found_by_listing``, ``recreated`` and
    ``speakers_left_out`` (on-screen speakers beyond the mapped ``speakerN`` fields). Usage:
    ``provider_job_id`` (the prediction), ``model``, ``gpu_seconds`` (its ``metrics.predict_time``).
    Estimate: 20 s plus 1 s per second of clip (``gpu_seconds``: the latter), unless settings say.
    """

    kind = KIND
    resumable = True
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ("ffmpeg", "ffprobe")
    ops: tuple[str, ...] = ("lipsync",)

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.settings = s = settings(name, config)
        self.stage = s.stage
        self.resources = s.resources_or(Resources(num_cpus=1))  # the GPU is the provider's: here uploads, ffmpeg
        self.version = config_version(
            KIND_VERSION,
            {"model": s.model, "version": s.version, "inputs": s.inputs, "input": s.input},
            ("model", "version", "inputs", "input"),
        )
        self.host = urllib.parse.urlsplit(s.base_url).netloc.rpartition("@")[2]
        self.what = f"{s.stage} ({name}, Replicate at {self.host})"
        self.client = Client(name, s, config, self.what)

    def check(self) -> str:
        """``GET /models/{owner}/{name}`` (or the pinned version): reachable, key taken, model there."""
        return self.client.describe()

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        frames, fps = params.get("frames"), params.get("fps")
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (frames, fps))
        seconds = frames / fps if ok else 0.0  # type: ignore[operator]
        return self.settings.estimate_or(Estimate(seconds=20.0 + 1.0 * seconds, gpu_seconds=1.0 * seconds))

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
        saved = record.load() or {}
        meta: dict[str, Any] = {"server": self.host, "model": self.settings.target}
        cpu0 = children_cpu()
        with tempfile.TemporaryDirectory(prefix="replicate-", dir=out_dir) as tmp:
            work = Path(tmp)
            talk = dialogue(inputs, params, work, self.what)
            prediction_id = saved.get("prediction_id") if isinstance(saved.get("prediction_id"), str) else None
            meta["resumed"] = prediction_id is not None
            if prediction_id is None and saved.get("creating"):
                prediction_id = self._find(saved, record, meta)
                meta["resumed"] = prediction_id is not None
            prediction: dict[str, Any] | None = None
            for _ in range(2):
                if prediction_id is None:
                    prediction_id = self._create(talk, inputs, params, record, meta)
                prediction = self._wait(prediction_id)
                if prediction is not None and not _gone(prediction):
                    break
                meta["recreated"] = (
                    f"{self.host} no longer has prediction {prediction_id} or its output: it was created anew"
                )
                meta["resumed"], prediction_id, prediction = False, None, None
            if prediction is None or prediction_id is None:
                raise StageError(f"{self.what}: the server lost the prediction twice in a row", retryable=True)
            meta["prediction_id"] = prediction_id
            status = prediction["status"]
            if status == "canceled":
                record.save({})  # the next attempt creates a new prediction
                raise StageError(f"{self.what}: prediction {prediction_id} was canceled on {self.host}", retryable=True)
            if status == "failed":
                self._failed(prediction_id, prediction, record)
            url = output_url(prediction.get("output"))
            if url is None:
                raise StageError(
                    f"{self.what}: prediction {prediction_id} succeeded without a file URL in its output: "
                    f"{str(prediction.get('output'))[:300]}",
                    retryable=False,
                )
            suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
            try:
                returned = self.client.download(url, work / f"returned{suffix if suffix in _SUFFIXES else '.mp4'}")
            except StageError as exc:
                if status_of(exc) not in (404, 410):
                    raise
                # the provider removed the output (Replicate keeps an API prediction's files about an hour)
                record.save({**self._base(), "expired_prediction_id": prediction_id})
                raise StageError(
                    f"{exc} (the output of prediction {prediction_id} is gone; the next attempt creates it anew)",
                    retryable=True,
                ) from None
            meta["output"] = shown(url)
            clip = encode(returned, out_dir / "clip.mp4", params, self.what)
        metrics = prediction.get("metrics") if isinstance(prediction.get("metrics"), dict) else {}
        predict_time = metrics.get("predict_time") if isinstance(metrics, dict) else None
        gpu = (
            float(predict_time)
            if isinstance(predict_time, (int, float)) and not isinstance(predict_time, bool)
            else 0.0
        )
        meta["predict_time"] = gpu
        usage = Usage(
            provider_job_id=prediction_id,
            model=self.settings.target,
            gpu_seconds=gpu,
            cpu_seconds=children_cpu() - cpu0,
        )
        return StageResult(files={"clip": clip}, meta=meta, usage=usage)

    # -- the prediction -----------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        return {"base_url_host": self.host, "model": self.settings.target}

    def _values(
        self, talk: Dialogue, inputs: Mapping[str, Path], params: Mapping[str, Any], meta: dict[str, Any]
    ) -> dict[str, Any]:
        """The prediction's input: uploaded files' URLs, numbers, then the fixed values."""
        s, job = self.settings, talk.job
        files: dict[str, Path] = {"video": Path(inputs["clip"]), **talk.tracks()}
        numbers = {"fps": job.fps, "frames": job.frames, "width": job.width, "height": job.height}
        numbers["seed"] = action_seed(params)
        urls: dict[str, str] = {}  # digest -> URL: equal tracks (one speaker's and every line's) go up once
        values: dict[str, Any] = {}
        for farm, field in s.inputs.items():
            if farm in FILE_INPUTS:
                if farm in files:
                    data = files[farm].read_bytes()
                    digest = hashlib.sha256(data).hexdigest()
                    if digest not in urls:
                        suffix = files[farm].suffix.lower()
                        name = f"farm-{digest[:40]}{suffix if suffix in _SUFFIXES else '.bin'}"  # never user text
                        urls[digest] = self.client.upload(files[farm], name)
                    values[field] = urls[digest]
            else:
                values[field] = numbers[farm]
        mapped = sum(1 for farm in s.inputs if farm.startswith("speaker"))
        if mapped and len(talk.speakers) > mapped:
            meta["speakers_left_out"] = [who for who, _ in talk.speakers[mapped:]]
        if mapped:
            meta["speakers"] = [who for who, _ in talk.speakers[:mapped]]
        return {**values, **s.input}

    def _create(
        self,
        talk: Dialogue,
        inputs: Mapping[str, Path],
        params: Mapping[str, Any],
        record: JobRecord,
        meta: dict[str, Any],
    ) -> str:
        values = self._values(talk, inputs, params, meta)
        digest = input_digest(values)
        # saved before the POST: a farm dying before it saves the answer finds the prediction by listing
        record.save({**self._base(), "creating": uuid.uuid4().hex, "input_digest": digest, "saved_at": time.time()})
        try:
            created = self.client.create(values)
        except StageError as exc:
            if exc.retryable:  # it may exist (a timeout): the record's nonce makes the next attempt look first
                raise
            record.save({**self._base(), "refused": str(exc)[:1000]})
            raise StageError(
                f"{exc} (the model {self.settings.target} refused the input; check backends.{self.name}.inputs "
                "and input against its API page)",
                retryable=False,
            ) from None
        prediction_id = created.get("id")
        if not isinstance(prediction_id, str) or not _ID.fullmatch(prediction_id):
            raise StageError(f"{self.what}: the created prediction has no usable id: {str(created)[:300]}")
        try:
            record.save(
                {**self._base(), "prediction_id": prediction_id, "input_digest": digest, "saved_at": time.time()}
            )
        except Exception as exc:
            raise StageError(
                f"{self.what}: prediction {prediction_id} was created but could not be recorded "
                f"({type(exc).__name__}: {exc}); the next attempt finds it among the recent predictions "
                "instead of creating another",
                retryable=True,
            ) from exc
        return prediction_id

    def _find(self, saved: Mapping[str, Any], record: JobRecord, meta: dict[str, Any]) -> str | None:
        """The prediction an attempt created but did not record: among those listed (newest first),
        the newest of the same model (and version) with exactly the recorded input."""
        s = self.settings
        saved_at = saved.get("saved_at")
        wanted = saved.get("input_digest")
        if not isinstance(saved_at, (int, float)) or not isinstance(wanted, str):
            return None
        cutoff = float(saved_at) - LOOKBACK_S
        url: str | None = None
        listed = 0
        for _ in range(MAX_LIST_PAGES):
            try:
                results, url = self.client.page(url, iso(cutoff))
            except StageError as exc:
                if status_of(exc) not in (404, 405, 501):
                    raise
                meta["recreated"] = (
                    f"an earlier attempt stopped while creating the prediction and {self.host} cannot list "
                    "predictions to find it: it was created anew"
                )
                return None
            older = False
            for p in results:
                created = parse_time(p.get("created_at"))
                if created is not None and created < cutoff:
                    older = True
                    continue
                listed += 1
                same = p.get("model") == s.model_name and (s.version_id is None or p.get("version") == s.version_id)
                pid = p.get("id")
                if same and isinstance(pid, str) and _ID.fullmatch(pid) and input_digest(p.get("input")) == wanted:
                    meta["found_by_listing"] = (
                        f"prediction {pid} was created by an earlier attempt that stopped before recording it"
                    )
                    record.save({**self._base(), "prediction_id": pid, "input_digest": wanted, "saved_at": saved_at})
                    return pid
            if older or url is None or origin(url) != self.client.origin:
                break
        meta["recreated"] = (
            f"an earlier attempt stopped while creating the prediction and none of the {listed} predictions "
            f"created since {iso(cutoff)} has its input: it was created anew"
        )
        return None

    def _wait(self, prediction_id: str) -> dict[str, Any] | None:
        """The prediction once final; None when the server does not know it."""
        s = self.settings
        deadline = time.monotonic() + s.timeout_s
        failures = 0
        while True:
            pause = s.poll_interval_s
            try:
                prediction = self.client.prediction(prediction_id)
                if prediction is None or prediction["status"] in FINAL:
                    return prediction
                failures = 0
            except StageError as exc:
                failures += 1
                if not exc.retryable:
                    raise
                if failures >= _POLL_FAILURES:
                    raise StageError(
                        f"{exc} (waiting on prediction {prediction_id}; the job record keeps it, so the next "
                        "attempt resumes waiting)",
                        retryable=True,
                        retry_after=exc.retry_after,
                    ) from None
                pause = max(pause, exc.retry_after or 0.0)
            left = deadline - time.monotonic()
            if left <= 0:
                raise StageError(
                    f"{self.what}: prediction {prediction_id} has not finished after {s.timeout_s:g}s (setting "
                    "timeout_s); the job record keeps it, so the next attempt resumes waiting on it instead of "
                    "creating another",
                    retryable=True,
                )
            time.sleep(min(pause, left))

    def _failed(self, prediction_id: str, prediction: Mapping[str, Any], record: JobRecord) -> None:
        error = str(prediction.get("error") or "").strip() or "no error message"
        error = self.client.redact(error)[:2000]
        text = f"{self.what}: prediction {prediction_id} of {self.settings.target} failed: {error}"
        # a later attempt creates anew rather than resuming a failed prediction
        record.save({**self._base(), "failed_prediction_id": prediction_id, "error": text[:1000]})
        raise StageError(text, retryable=bool(_OOM.search(error)))  # out of GPU memory: may fit next time


def _gone(prediction: Mapping[str, Any]) -> bool:
    """A succeeded prediction whose output the provider has since removed (``data_removed``)."""
    return prediction.get("status") == "succeeded" and (
        prediction.get("data_removed") is True and output_url(prediction.get("output")) is None
    )
