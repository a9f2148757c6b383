"""Speech-native clips from a local diffusers pipeline that makes a video and its sound together
(LTX-2's ``LTX2ImageToVideoPipeline``): the characters speak their lines in the clip itself.

Configured as kind ``diffusers-speech`` (stage video)::

    {"ltx2": {"kind": "diffusers-speech", "model_path": "/models/ltx-2-i2v", "steps": 40,
              "max_side": 768, "guidance": 3.0}}

Everything ``diffusers-video`` does, plus ``speech`` (default true: feature "speech", the
speech-native contract of farm.core.talking). Such a model makes its own voices from words, so
the backend takes no dubbed line as a reference (no feature "voice_reference") and the plan dubs
nothing for it. ``speech: true`` on a pipeline that makes no sound (its ``__call__`` takes no
``audio_latents`` and its output has no ``audio``, e.g. StableVideoDiffusionPipeline) is refused
with a ConfigError naming the setting, where the model is checked or loaded.

op ``clip`` with params ``lines`` and ``sample_rate`` (a shot with dialogue):

- the prompt is the configured one followed by the dialogue, in order, one
  ``"Name" (voice): "text"`` each; every piece of user text (name, voice description, line) is
  JSON-quoted, so a line cannot close its quotes and forge another speaker or an instruction.
  A voice without a description is described from its pitch and rate. A prompt longer than
  ``max_sequence_length`` tokens is refused: the text encoder would cut the last lines off.
- ``num_frames`` is the planned frames rounded up to what the model makes (its VAE's temporal
  factor t: t*k+1, LTX-2 8k+1), ``frame_rate`` the clip's fps, and the first ``frames`` frames are
  kept. A speech clip is never retimed: its timing is what meets its voice.
- the sound (the vocoder's rate, mixed to mono) is cut to the clip's length, its DC offset taken
  out (an offset is no sound; it would use up the loudness normaliser's headroom and read as voice
  everywhere), and written as the shot's WAV at ``sample_rate``, exactly frames * sample_rate / fps
  samples (workers.video.returned.sound).
- the model does not say when each line is spoken; the sound does (``find_line_times``): voice
  activity by the RMS of 10 ms windows against a threshold 20 dB under the track's loud parts,
  voiced runs, and the widest silences between runs as the boundaries between lines. With fewer
  voiced runs than lines the plan's offsets are used (meta ``line_times``: "planned", else
  "heard").

A shot without lines is an ordinary clip, as ``diffusers-video`` makes it (its sound dropped).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import tempfile
import time
import typing
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from workers import _torch as tt
from workers.api import BatchItem, ConfigError, Estimate, StageError, StageResult, Usage, children_cpu
from workers.video import returned
from workers.video.diffusers_i2v import (
    AFFECTS,
    CAMERA_WORDS,
    DiffusersVideo,
    DiffusersVideoSettings,
    _Job,
    _pil,
    _Pipe,
    decode_chunk,
    encode,
    generated_fps,
)
from workers.video.motion import CAMERAS, clip_shape

KIND = "diffusers-speech"
KIND_VERSION = "1"
SIDE_MULTIPLE = 32  # LTX-2 refuses a height or width that is not a multiple of 32
WINDOW_S = 0.01  # voice activity: RMS of 10 ms windows
BELOW_LOUD_DB = 20.0  # voiced: at most this far under the track's loud parts (its 95th percentile window)
SILENCE_DBFS = -50.0  # windows quieter than this are silence whatever the track
MIN_RUN_WINDOWS = 2  # a voiced run shorter than this (a click) is not speech


class DiffusersSpeechSettings(DiffusersVideoSettings):
    speech: bool = True
    max_sequence_length: int = Field(1024, ge=16, le=8192)  # prompt tokens the text encoder reads
    image_crf: int | None = Field(None, ge=0, le=51)  # LTX-2: H.264 CRF of the keyframe; None: the model's; 0: none


SPEECH_AFFECTS = (*AFFECTS, "speech", "max_sequence_length", "image_crf")


def model_frames(frames: int, temporal: int) -> int:
    """The fewest frames at least ``frames`` that a model with a VAE of temporal factor ``temporal``
    makes (t*k+1), and at least two latent frames so that the clip moves."""
    t = max(1, int(temporal))
    return max(t + 1, math.ceil((frames - 1) / t) * t + 1)


def _temporal(pipe: Any) -> int:
    factor = getattr(pipe, "vae_temporal_compression_ratio", None) or getattr(pipe, "vae_scale_factor_temporal", None)
    return int(factor or 1)


def _side_multiple(pipe: Any) -> int:
    spatial = int(getattr(pipe, "vae_spatial_compression_ratio", 1)) * int(
        getattr(pipe, "transformer_spatial_patch_size", 1)
    )
    return math.lcm(tt.size_multiple(pipe), spatial, SIDE_MULTIPLE)


def makes_sound(call: Any) -> bool:
    """Does a pipeline (its ``__call__``) generate sound with its frames? LTX-2's take
    ``audio_latents`` and return an output with ``audio``."""
    if tt.takes(call, "audio_latents"):
        return True
    annotation = inspect.signature(call).return_annotation
    return any("audio" in getattr(t, "__dataclass_fields__", {}) for t in typing.get_args(annotation) or (annotation,))


def _has_pyav() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


# --- the dialogue in the prompt ---------------------------------------------------------------


def voice_words(voice: Mapping[str, Any]) -> str:
    """A voice in words: its description, JSON-quoted (user text), or one from its pitch and rate."""
    if voice.get("description"):
        return "voice " + json.dumps(str(voice["description"]), ensure_ascii=False)
    pitch, rate = voice.get("pitch"), voice.get("rate")
    pitch = pitch if isinstance(pitch, int) else 50
    rate = rate if isinstance(rate, int) else 175
    height = "low" if pitch < 40 else "high" if pitch > 60 else "mid-pitched"
    pace = "slow" if rate < 150 else "fast" if rate > 200 else "even-paced"
    return f"a {height}, {pace} voice"


def dialogue(lines: Sequence[Mapping[str, Any]]) -> str:
    """The shot's lines for the prompt, in order: ``"Name" (voice): "text"``, user text JSON-quoted."""
    said = []
    for line in lines:
        where = "; off screen" if line.get("off_screen") else ""
        name = json.dumps(str(line.get("name") or line.get("speaker")), ensure_ascii=False)
        text = json.dumps(str(line["text"]), ensure_ascii=False)
        said.append(f"{name} ({voice_words(line.get('voice') or {})}{where}): {text}")
    return "The characters speak these lines aloud, in this order: " + " ".join(said)


def spoken(params: Mapping[str, Any], what: str) -> tuple[list[dict[str, Any]], int]:
    """A speech clip's ``lines`` and ``sample_rate`` params, checked (farm.core.talking.speech_lines)."""
    lines = params.get("lines")
    if not isinstance(lines, list) or len(lines) > returned.MAX_SPOKEN:
        raise StageError(f"{what}: params.lines must be a list of at most {returned.MAX_SPOKEN} lines", retryable=False)
    out = []
    for i, line in enumerate(lines):
        fields = {"text": str, "speaker": str, "offset_samples": int}
        for key, kind in fields.items():
            if not isinstance(line, Mapping) or not isinstance(line.get(key), kind) or isinstance(line.get(key), bool):
                raise StageError(
                    f"{what}: params.lines[{i}].{key} must be a {kind.__name__} (farm.core.talking.speech_lines)",
                    retryable=False,
                )
        if not isinstance(line.get("voice", {}), Mapping):
            raise StageError(f"{what}: params.lines[{i}].voice must be a mapping", retryable=False)
        out.append(dict(line))
    rate = params.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 192_000:
        raise StageError(
            f"{what}: params.sample_rate must be a whole number of Hz from 8000 to 192000", retryable=False
        )
    return out, rate


# --- when each line is said -------------------------------------------------------------------


def find_line_times(samples: np.ndarray, rate: int, count: int) -> list[tuple[int, int]] | None:
    """Where each of ``count`` lines is said in ``samples`` (mono, full scale 1.0): ``(first voiced
    sample, last voiced sample + 1)`` each, in order; None when the sound has fewer voiced runs
    than lines (the caller falls back on the plan)."""
    if count < 1:
        return []
    x = np.asarray(samples, dtype=np.float64)
    width = max(1, round(WINDOW_S * rate))
    n = len(x) // width
    if n == 0:
        return None
    rms = np.sqrt(np.mean(x[: n * width].reshape(n, width) ** 2, axis=1))
    loud = float(np.percentile(rms, 95))
    threshold = max(loud * 10 ** (-BELOW_LOUD_DB / 20), 10 ** (SILENCE_DBFS / 20))
    voiced = rms >= threshold
    runs: list[tuple[int, int]] = []  # [first, last] voiced window
    start = None
    for i, v in enumerate(voiced.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start >= MIN_RUN_WINDOWS:
                runs.append((start, i - 1))
            start = None
    if len(runs) < count:
        return None
    gaps = [runs[i + 1][0] - runs[i][1] for i in range(len(runs) - 1)]
    cuts = sorted(sorted(range(len(gaps)), key=lambda i: (-gaps[i], i))[: count - 1])
    bounds = [0, *(c + 1 for c in cuts), len(runs)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        first, last = runs[a][0] * width, (runs[b - 1][1] + 1) * width
        loud_samples = np.flatnonzero(np.abs(x[first:last]) >= threshold)
        if len(loud_samples):  # to the sample: the first and last that reach the threshold
            first, last = first + int(loud_samples[0]), first + int(loud_samples[-1]) + 1
        out.append((first, last))
    return out


def planned_times(lines: Sequence[Mapping[str, Any]], rate: int, duration: float) -> list[dict[str, float]]:
    """Each line from where the plan placed it (``offset_samples``) to the next line's place (the last
    to the clip's end). The clip is the planned length, so the plan's offsets stand as they are;
    offsets that do not rise inside the clip are replaced by equal shares of it."""
    starts = [int(line["offset_samples"]) / rate for line in lines]
    if any(s < 0 or s >= duration for s in starts) or any(b <= a for a, b in zip(starts, starts[1:])):
        starts = [duration * i / len(lines) for i in range(len(lines))]
    ends = [*starts[1:], duration]
    return [{"start": a, "end": b} for a, b in zip(starts, ends)]


def _mono(audio: Any) -> np.ndarray:
    """One item's sound (channels x samples, or samples) as mono float64."""
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    x = np.asarray(audio, dtype=np.float64)
    return x.mean(axis=0) if x.ndim == 2 else x.reshape(-1)


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
    return path


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


# --- the backend ------------------------------------------------------------------------------


@dataclass
class _SpeechJob(_Job):
    lines: list[dict[str, Any]] = field(default_factory=list)
    sample_rate: int = 0


class DiffusersSpeech(DiffusersVideo):
    """Video stage on a diffusers pipeline that generates picture and sound together: with
    ``speech`` its clips speak their shot's lines (farm.core.talking), else ``diffusers-video``."""

    kind = KIND

    def __init__(self, name: str, config: Mapping[str, Any]):
        tt.TorchBackend.__init__(self, name, config, DiffusersSpeechSettings, KIND_VERSION, SPEECH_AFFECTS)
        s = self.settings
        self.features = (("last_frame",) if s.last_frame else ()) + (("speech",) if s.speech else ())

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        frames = params.get("frames")
        if not (params.get("lines") and isinstance(frames, int)):
            return super().estimate(op, params)
        gpu = 0.08 * self.settings.steps * frames
        return self.settings.estimate_or(Estimate(seconds=5.0 + gpu, gpu_seconds=gpu))

    def batch_key(self, op: str, params: Mapping[str, Any]) -> tuple:
        if params.get("lines"):  # its own prompt and length: a call of its own
            return (op, "speech", params.get("width"), params.get("height"), params.get("frames"), params.get("fps"))
        return super().batch_key(op, params)

    # -- loading and checking ------------------------------------------------------------

    def load(self) -> Any:
        """As every diffusers backend, but ``dtype: auto`` is bfloat16 on a GPU: LTX-2's Gemma 3
        text encoder overflows in float16."""
        with self._load_lock:
            if self._loaded is None:
                s, what = self.settings, self.what
                device = tt.pick_device(s.device, what)
                dtype = tt.pick_dtype("bfloat16" if s.dtype == "auto" and device == "cuda" else s.dtype, device, what)
                key = (self.kind, str(s.model_path.resolve()), str(dtype), device)
                loaded = tt.cached_pipeline(key, lambda: self._load(device, dtype))
                self._accept(loaded)
                self._loaded = loaded
            return self._loaded

    def _require(self, cls: str, call: Any) -> None:
        super()._require(cls, call)
        if self.settings.speech and not makes_sound(call):
            raise ConfigError(
                f"backends.{self.name}.speech: true, but {cls} makes no sound (its __call__ takes no "
                "audio_latents and returns no audio): use a pipeline that generates a video with its "
                "sound, such as LTX2ImageToVideoPipeline (LTX-2), or set speech: false"
            )

    def check(self) -> str:
        said = super().check()
        return said + ("; speaks its lines: the dialogue in its prompt, its own sound" if self.settings.speech else "")

    # -- running -------------------------------------------------------------------------

    def run_batch(self, op: str, items: list[BatchItem]) -> list[StageResult | StageError]:
        if op in self.ops:
            try:
                self.load()
            except ConfigError as exc:  # the model cannot do what is configured: no retry will help
                return [StageError(f"{self.what}: {exc}", retryable=False)] * len(items)
            except StageError as exc:
                return [exc] * len(items)
        return super().run_batch(op, items)

    def _prepare(self, index: int, item: BatchItem, pipe: Any) -> _Job:
        s, params = self.settings, item.params
        width, height, fps, frames = clip_shape(params, self.what)
        camera = str(params.get("camera", "static"))
        if camera not in CAMERAS:
            raise StageError(f"{self.what}: camera {camera!r} is not one of {', '.join(CAMERAS)}")
        lines: list[dict[str, Any]] = []
        rate = 0
        if params.get("lines"):
            if not s.speech:
                raise StageError(f"{self.what}: params.lines given, but backends.{self.name}.speech is false")
            lines, rate = spoken(params, self.what)
        gen = tt.generation_size(width, height, s.max_side, _side_multiple(pipe))
        first = self._image(item, "keyframe", gen, required=True)
        assert first is not None
        last = (self._image(item, "last", gen, required=False) or first) if s.last_frame else None
        t = _temporal(pipe)
        if lines:
            count, gen_fps = model_frames(frames, t), fps
        else:
            count = max(t + 1, (min(s.frames, frames) - 1) // t * t + 1) if t > 1 else min(s.frames, frames)
            gen_fps = generated_fps(min(s.frames, frames), fps, frames)
        digest = hashlib.sha256(Path(item.inputs["keyframe"]).read_bytes()).hexdigest()
        seed = tt.seed_of("clip", digest, dict(params))
        return _SpeechJob(
            index, item, width, height, fps, frames, camera, seed, first, last, gen, count, gen_fps, lines, rate
        )

    def _prompt(self, job: _SpeechJob, pipe: Any) -> str:
        prompt = self.settings.prompt.format(camera=CAMERA_WORDS[job.camera])
        if not job.lines:
            return prompt
        prompt = f"{prompt}. {dialogue(job.lines)}"
        tokenizer, limit = getattr(pipe, "tokenizer", None), self.settings.max_sequence_length
        if tokenizer is not None:
            tokens = len(tokenizer(prompt).input_ids)
            if tokens > limit:
                raise StageError(
                    f"{self.what}: the prompt with the shot's {len(job.lines)} lines is {tokens} tokens; the "
                    f"text encoder reads max_sequence_length = {limit} (raise backends.{self.name}."
                    "max_sequence_length, or shorten the shot's lines)",
                    retryable=False,
                )
        return prompt

    def _generate(self, loaded: _Pipe, jobs: list[_Job]) -> list[StageResult]:
        s, pipe = self.settings, loaded.pipe
        gw, gh = jobs[0].gen
        one = len(jobs) == 1
        speech = [j for j in jobs if isinstance(j, _SpeechJob) and j.lines]
        if speech and not one:
            raise StageError(f"{self.what}: a speech clip is generated alone, not in a batch of {len(jobs)}")
        prompts = [self._prompt(j, pipe) for j in jobs]  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {
            "image": jobs[0].first if one else [j.first for j in jobs],
            "prompt": prompts[0] if one else prompts,
            "height": gh,
            "width": gw,
            "num_frames": jobs[0].count,
            "num_inference_steps": s.steps,
            "generator": tt.generators([j.seed for j in jobs], loaded.device, self.what),
            "output_type": "pil",
            "fps": jobs[0].gen_fps,  # SVD's micro-conditioning
            "frame_rate": float(jobs[0].gen_fps),  # LTX-2's: the rate its frames (and its sound) are made at
            "decode_chunk_size": decode_chunk(jobs[0].count, s.decode_chunk_size),
            "max_sequence_length": s.max_sequence_length,
        }
        if s.negative_prompt is not None:
            kwargs["negative_prompt"] = s.negative_prompt if one else [s.negative_prompt] * len(jobs)
        for key, value in (("motion_bucket_id", s.motion_bucket_id), ("noise_aug_strength", s.noise_aug_strength)):
            if value is not None:
                kwargs[key] = value
        if s.guidance is not None:
            kwargs["guidance_scale" if tt.takes(pipe, "guidance_scale") else "max_guidance_scale"] = s.guidance
        if s.last_frame:
            kwargs["last_image"] = jobs[0].last if one else [j.last for j in jobs]
        if tt.takes(pipe, "image_crf"):
            if s.image_crf is None and not _has_pyav():
                raise StageError(
                    f"{self.what}: the model re-compresses the keyframe with H.264 (image_crf) through PyAV, "
                    f"which is not installed: pip install av, or set backends.{self.name}.image_crf: 0",
                    retryable=False,
                )
            if s.image_crf is not None:
                kwargs["image_crf"] = s.image_crf
        kwargs = tt.accepted(pipe, kwargs)
        with loaded.lock, tt.DeviceTimer(loaded.device) as timer:
            out = pipe(**kwargs)
        videos = out.frames
        if len(videos) != len(jobs):
            raise StageError(f"{self.what}: the pipeline returned {len(videos)} videos for {len(jobs)} images")
        if not speech:
            return [self._write(job, list(video), timer, len(jobs)) for job, video in zip(jobs, videos)]
        audio = getattr(out, "audio", None)
        if audio is None or len(audio) < 1:
            raise StageError(f"{self.what}: {tt.pipeline_class(pipe)} returned no sound", retryable=False)
        vocoder = getattr(getattr(pipe, "vocoder", None), "config", None)
        rate = getattr(vocoder, "output_sampling_rate", None) or getattr(pipe, "audio_sampling_rate", None)
        if not rate:
            raise StageError(f"{self.what}: {tt.pipeline_class(pipe)} does not say its sound's sample rate")
        return [self._write_speech(speech[0], list(videos[0]), audio[0], int(rate), timer)]

    def _write_speech(self, job: _SpeechJob, video: list[Any], audio: Any, model_rate: int, timer: Any) -> StageResult:
        t0, children0 = time.process_time(), children_cpu()
        what, rate = self.what, job.sample_rate
        if len(video) < job.frames:
            raise StageError(
                f"{what}: the pipeline returned {len(video)} frames for a {job.frames}-frame speech clip "
                f"(asked for {job.count}); a speech clip is never retimed",
                retryable=False,
            )
        frames = [tt.fit(_pil(f).convert("RGB"), job.width, job.height) for f in video[: job.frames]]
        out_dir = Path(job.item.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        clip = out_dir / "clip.mp4"
        encode(frames, list(range(job.frames)), job.fps, clip, self.settings.timeout_s, what)
        returned.require(returned.probe(clip, what), job.item.params, what)
        total = job.frames * rate // job.fps
        sound = _mono(audio)[: round(job.frames * model_rate / job.fps)]  # the clip's part of it
        sound = sound - (sound.mean() if len(sound) else 0.0)
        with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
            made = _write_wav(Path(scratch) / "model.wav", sound, model_rate)
            wav = returned.sound(made, out_dir / "audio.wav", rate, total, job.fps, what)
        spans = find_line_times(_read_wav(wav), rate, len(job.lines))
        duration = job.frames / job.fps
        if spans is None:
            times, how = planned_times(job.lines, rate, duration), "planned"
        else:
            times, how = [{"start": a / rate, "end": b / rate} for a, b in spans], "heard"
        lines = returned.spoken_times(times, job.lines, job.frames, job.fps, what)
        cpu = time.process_time() - t0 + children_cpu() - children0
        return StageResult(
            files={"clip": clip, "audio": wav},
            meta={
                "frames": job.frames,
                "fps": job.fps,
                "width": job.width,
                "height": job.height,
                "duration": duration,
                "generated_frames": len(video),
                "seed": job.seed,
                "batch": 1,
                "lines": lines,
                "line_times": how,
                "model_sample_rate": model_rate,
            },
            usage=Usage(gpu_seconds=timer.gpu_seconds, cpu_seconds=timer.cpu_seconds + cpu, model=self.model),
        )
