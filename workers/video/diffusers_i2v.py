"""Clips from keyframes with a local diffusers image-to-video model (SVD, Wan I2V/FLF2V, ...).

Configured as kind ``diffusers-video``::

    {"wan-flf2v": {"kind": "diffusers-video", "model_path": "/models/wan2.1-flf2v-720p",
                   "steps": 30, "frames": 33, "last_frame": true, "max_side": 1280}}

op ``clip``: params ``{"width", "height", "fps", "frames", "camera"}``, inputs ``{"keyframe"}`` and,
with ``last_frame: true`` (feature "last_frame"), ``"last"``: the next shot's keyframe, which
first/last-frame models (Wan FLF2V's ``last_image``) end the clip on, so a cut lands where the next
shot begins. The episode's last shot has no next keyframe; it ends on its own, because such models
are trained with two frames and a missing one is not "no constraint" to them.

The pipeline is called with only the keyword arguments its ``__call__`` names (SVD takes
``motion_bucket_id``, ``fps``, ``decode_chunk_size``; Wan takes a ``prompt`` and ``last_image``), so
one backend serves any image-to-video pipeline diffusers can load.

Retiming. A model makes a fixed, small number of frames (SVD 14 or 25, Wan 4k+1) while a shot
lasts as long as its lines; the generated frames are spread evenly over the requested count by
nearest frame (first and last kept, the rest repeated as needed). Blending neighbours would ghost
moving edges, and motion interpolation (ffmpeg ``minterpolate``) costs more CPU than the model's
GPU time and warps faces; a slightly steppy motion at the clip's real duration is the honest
trade. Ask for more generated frames (``frames``) for smoother motion.

Encoding. Frames are piped as raw RGB to ffmpeg (an argument list, never a shell) and encoded with
the Ken Burns backend's ENCODER_ARGS and TIMESCALE_ARGS, so clips from both backends concatenate
by stream copy.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from workers import _torch as tt
from workers.api import (
    BatchItem,
    Estimate,
    StageError,
    StageResult,
    Usage,
    children_cpu,
    require_tool,
)
from workers.video.motion import (
    CAMERAS,
    ENCODER_ARGS,
    TIMESCALE_ARGS,
    clip_shape,
)

KIND = "diffusers-video"
KIND_VERSION = "1"
CAMERA_WORDS = {
    "static": "static camera",
    "push_in": "the camera slowly pushes in",
    "pull_out": "the camera slowly pulls out",
    "pan_left": "the camera pans left",
    "pan_right": "the camera pans right",
    "pan_up": "the camera tilts up",
    "pan_down": "the camera tilts down",
}
# Pipelines whose batches of different images we verified give each item what it gives alone. Wan
# I2V repeats one image's embedding over its batch, so for others items go one call at a time.
BATCHES_IMAGES = frozenset({"StableVideoDiffusionPipeline"})


class DiffusersVideoSettings(tt.TorchSettings):
    steps: int = Field(25, ge=1, le=500)
    frames: int = Field(25, ge=1, le=1000)  # generated per clip, at most the clip's own frames
    max_batch: int = Field(1, ge=1, le=64)  # a clip's activations are frames x an image's
    guidance: float | None = Field(None, ge=0, le=30)  # None: the pipeline's default
    motion_bucket_id: int | None = Field(None, ge=0, le=1023)  # SVD: more motion when higher
    noise_aug_strength: float | None = Field(None, ge=0, le=1)  # SVD: freedom from the keyframe
    decode_chunk_size: int = Field(8, ge=1, le=1000)  # SVD: at most this many frames decoded at once
    prompt: str = "cinematic shot, {camera}, natural motion"  # for pipelines that take a prompt
    negative_prompt: str | None = None
    last_frame: bool = False

    @field_validator("prompt")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(camera="static camera")
        except (KeyError, IndexError, ValueError) as exc:
            raise PydanticCustomError(
                "prompt", "the prompt may use {camera} and no other field ({problem})", {"problem": repr(exc)}
            ) from None
        return value


AFFECTS = (
    "model_path",
    "steps",
    "frames",
    "guidance",
    "motion_bucket_id",
    "noise_aug_strength",
    "decode_chunk_size",
    "prompt",
    "negative_prompt",
    "last_frame",
    "dtype",
    "max_side",
)


def retime(count: int, frames: int) -> list[int]:
    """Which of ``count`` generated frames shows at each of ``frames`` output frames: evenly
    spread, nearest frame, the first and the last kept."""
    if frames <= 1 or count <= 1:
        return [0] * frames
    return [round(j * (count - 1) / (frames - 1)) for j in range(frames)]


def generated_fps(count: int, fps: int, frames: int) -> int:
    """The rate of ``count`` generated frames spread over a clip of ``frames`` at ``fps``: what
    SVD's ``fps`` micro-conditioning means (how far apart in time the frames it makes are)."""
    return max(1, round(count * fps / frames))


def decode_chunk(count: int, limit: int) -> int:
    """The largest number of frames, at most ``limit``, that divides ``count``. SVD decodes the
    latents of the whole batch in chunks and its temporal decoder treats a chunk as one video: a
    chunk that straddles two clips would blend them, and one that splits a clip differently alone
    and in a batch would make the batch differ from single runs."""
    return max(d for d in range(1, min(count, limit) + 1) if count % d == 0)


def encode(frames: list[Image.Image], order: list[int], fps: int, out: Path, timeout: float, what: str) -> None:
    """Encode ``frames[i] for i in order`` (RGB, all one size) to ``out`` with ENCODER_ARGS."""
    width, height = frames[0].size
    args = [
        require_tool("ffmpeg"),
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-framerate",
        str(fps),
        "-i",
        "pipe:0",
        "-vf",
        "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
        "-frames:v",
        str(len(order)),
        "-an",
        *ENCODER_ARGS,
        *TIMESCALE_ARGS,
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-f",
        "mp4",
        str(out),
    ]
    raw = [f.convert("RGB").tobytes() for f in frames]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        stdin = proc.stdin
        assert stdin is not None
        deadline = time.monotonic() + timeout
        try:
            try:
                for i in order:
                    stdin.write(raw[i])
                    if time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(args[0], timeout)
                stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped reading: its exit status and stderr say why
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise StageError(
                f"{what}: ffmpeg timed out after {timeout:.0f}s encoding the clip", retryable=True
            ) from None
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        if code != 0:
            errors.seek(0)
            tail = errors.read().decode("utf-8", "replace").strip().splitlines()[-8:]
            raise StageError(f"{what}: ffmpeg exited {code}: " + " | ".join(tail))


@dataclass
class _Pipe:
    pipe: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Job:
    index: int
    item: BatchItem
    width: int
    height: int
    fps: int
    frames: int
    camera: str
    seed: int
    first: Image.Image
    last: Image.Image | None
    gen: tuple[int, int]
    count: int  # frames generated
    gen_fps: int  # their rate over the clip's duration


class DiffusersVideo(tt.TorchBackend):
    """Video stage on a local diffusers image-to-video checkpoint: ``clip`` like ``ffmpeg-motion``."""

    kind = KIND
    stage = "video"
    ops = ("clip",)
    tools = ("ffmpeg",)

    def __init__(self, name: str, config: Mapping[str, Any]):
        super().__init__(name, config, DiffusersVideoSettings, KIND_VERSION, AFFECTS)
        self.features: tuple[str, ...] = ("last_frame",) if self.settings.last_frame else ()

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        s = self.settings
        gpu = 0.08 * s.steps * min(s.frames, int(params.get("frames", s.frames) or 1))
        return s.estimate_or(Estimate(seconds=5.0 + gpu, gpu_seconds=gpu))

    def batch_key(self, op: str, params: Mapping[str, Any]) -> tuple:
        """Same op, output size, number of generated frames and their rate (SVD conditions the
        whole call on one fps); steps and the rest are the backend's, the same for all."""
        frames, fps = params.get("frames"), params.get("fps")
        if not isinstance(frames, int) or not isinstance(fps, int) or frames < 1:
            return (op, params.get("width"), params.get("height"), frames, fps)
        count = min(self.settings.frames, frames)
        return (op, params.get("width"), params.get("height"), count, generated_fps(count, fps, frames))

    # -- loading ---------------------------------------------------------------------------

    def _accept(self, loaded: _Pipe) -> None:
        self._require(tt.pipeline_class(loaded.pipe), loaded.pipe)

    def _load(self, device: str, dtype: Any) -> _Pipe:
        diffusers = tt.import_diffusers(self.what)
        return _Pipe(
            tt.from_pretrained(diffusers.DiffusionPipeline, self.settings.model_path, dtype, device, self.what), device
        )

    def _require(self, cls: str, call: Any) -> None:
        if not tt.takes(call, "image"):
            raise StageError(f"{self.what}: {cls} takes no image: not an image-to-video pipeline")
        if self.settings.last_frame and not tt.takes(call, "last_image"):
            raise StageError(
                f"{self.what}: last_frame is true but {cls} takes no last_image "
                "(use a first/last-frame model such as Wan FLF2V, or set last_frame: false)"
            )

    def check(self) -> str:
        """The model directory's index and configs read, and the pipeline class able to do what
        is configured (no weights, no GPU)."""
        s = self.settings
        cls, components = tt.describe_model_dir(s.model_path, self.what)
        import diffusers

        self._require(cls, getattr(diffusers, cls).__call__)
        ends = "first and last frame" if s.last_frame else "first frame"
        return f"{cls} at {s.model_path} ({', '.join(components)}); {s.frames} frames, {s.steps} steps, from the {ends}"

    # -- running ---------------------------------------------------------------------------

    def run_batch(self, op: str, items: list[BatchItem]) -> list[StageResult | StageError]:
        if op not in self.ops:
            return [StageError(f"{self.what}: unknown op {op!r}; {KIND} does {self.ops}")] * len(items)
        try:
            loaded = self.load()
            require_tool("ffmpeg")
        except StageError as exc:
            return [exc] * len(items)
        results: list[StageResult | StageError | None] = [None] * len(items)
        groups: dict[tuple[int, int, int, int], list[_Job]] = {}
        for i, item in enumerate(items):
            try:
                job = self._prepare(i, item, loaded.pipe)
            except StageError as exc:
                results[i] = exc
                continue
            groups.setdefault((*job.gen, job.count, job.gen_fps), []).append(job)
        together = tt.pipeline_class(loaded.pipe) in BATCHES_IMAGES
        for jobs in groups.values():
            chunks = [jobs] if together else [[job] for job in jobs]
            for chunk in chunks:
                done = tt.split_on_oom(chunk, lambda c: self._generate(loaded, c), self.what)
                for job, result in zip(chunk, done):
                    results[job.index] = result
        return results  # type: ignore[return-value]

    def _prepare(self, index: int, item: BatchItem, pipe: Any) -> _Job:
        s, params = self.settings, item.params
        width, height, fps, frames = clip_shape(params, self.what)
        camera = str(params.get("camera", "static"))
        if camera not in CAMERAS:
            raise StageError(f"{self.what}: camera {camera!r} is not one of {', '.join(CAMERAS)}")
        gen = tt.generation_size(width, height, s.max_side, tt.size_multiple(pipe))
        first = self._image(item, "keyframe", gen, required=True)
        assert first is not None  # required: _image raised otherwise
        last = self._image(item, "last", gen, required=False) if s.last_frame else None
        if s.last_frame and last is None:
            last = first  # the episode's last shot: no next keyframe, end where it began
        count = min(s.frames, frames)
        temporal = getattr(pipe, "vae_scale_factor_temporal", None)
        if temporal:  # latent frames cover `temporal` frames each, plus the first: 4k+1 for Wan
            t = int(temporal)
            # at least two latent frames, so the clip moves (and a last frame has a place of its own)
            count = max(t + 1, (count - 1) // t * t + 1)
        # clip params carry no seed: the keyframe's content and the params make the action's key
        seed = tt.seed_of("clip", _digest(item.inputs["keyframe"]), dict(params))
        gen_fps = generated_fps(min(s.frames, frames), fps, frames)
        return _Job(index, item, width, height, fps, frames, camera, seed, first, last, gen, count, gen_fps)

    def _image(self, item: BatchItem, name: str, size: tuple[int, int], *, required: bool) -> Image.Image | None:
        path = item.inputs.get(name)
        if path is None:
            if required:
                raise StageError(f"{self.what}: input {name!r} is missing")
            return None
        try:
            with Image.open(path) as im:
                return tt.fit(im.convert("RGB"), *size)
        except OSError as exc:
            raise StageError(f"{self.what}: input {name!r} is not a readable image: {exc}") from exc

    def _generate(self, loaded: _Pipe, jobs: list[_Job]) -> list[StageResult]:
        s, pipe = self.settings, loaded.pipe
        gw, gh = jobs[0].gen
        count, gen_fps, one = jobs[0].count, jobs[0].gen_fps, len(jobs) == 1
        prompts = [s.prompt.format(camera=CAMERA_WORDS[j.camera]) for j in jobs]
        kwargs: dict[str, Any] = {
            "image": jobs[0].first if one else [j.first for j in jobs],
            "prompt": prompts[0] if one else prompts,
            "negative_prompt": s.negative_prompt if one else [s.negative_prompt] * len(jobs),
            "height": gh,
            "width": gw,
            "num_frames": count,
            "num_inference_steps": s.steps,
            "generator": tt.generators([j.seed for j in jobs], loaded.device, self.what),
            "output_type": "pil",
            "fps": gen_fps,
            "decode_chunk_size": decode_chunk(count, s.decode_chunk_size),
        }
        if s.negative_prompt is None:
            del kwargs["negative_prompt"]
        if s.motion_bucket_id is not None:
            kwargs["motion_bucket_id"] = s.motion_bucket_id
        if s.noise_aug_strength is not None:
            kwargs["noise_aug_strength"] = s.noise_aug_strength
        if s.guidance is not None:
            kwargs["guidance_scale" if tt.takes(pipe, "guidance_scale") else "max_guidance_scale"] = s.guidance
        if s.last_frame:
            kwargs["last_image"] = jobs[0].last if one else [j.last for j in jobs]
        kwargs = tt.accepted(pipe, kwargs)
        with loaded.lock, tt.DeviceTimer(loaded.device) as timer:
            videos = pipe(**kwargs).frames
        if len(videos) != len(jobs):
            raise StageError(f"{self.what}: the pipeline returned {len(videos)} videos for {len(jobs)} images")
        return [self._write(job, list(video), timer, len(jobs)) for job, video in zip(jobs, videos)]

    def _write(self, job: _Job, video: list[Any], timer: tt.DeviceTimer, share: int) -> StageResult:
        t0, children0 = time.process_time(), children_cpu()
        if not video:
            raise StageError(f"{self.what}: the pipeline returned no frames")
        frames = [tt.fit(_pil(f).convert("RGB"), job.width, job.height) for f in video]
        out_dir = Path(job.item.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "clip.mp4"
        encode(frames, retime(len(frames), job.frames), job.fps, out, self.settings.timeout_s, self.what)
        cpu = time.process_time() - t0 + children_cpu() - children0
        return StageResult(
            files={"clip": out},
            meta={
                "frames": job.frames,
                "fps": job.fps,
                "width": job.width,
                "height": job.height,
                "duration": job.frames / job.fps,
                "generated_frames": len(frames),
                "seed": job.seed,
                "batch": share,
            },
            usage=Usage(
                gpu_seconds=timer.gpu_seconds / share, cpu_seconds=timer.cpu_seconds / share + cpu, model=self.model
            ),
        )


def _pil(frame: Any) -> Image.Image:
    """A frame as PIL (pipelines asked for "pil" may still hand back arrays in [0, 1])."""
    if isinstance(frame, Image.Image):
        return frame
    import numpy as np

    array = np.asarray(frame)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
