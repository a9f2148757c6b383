"""Embedded lip-sync: the speaking character's mouth opens and closes with its line's loudness.

Offline, CPU only, no weights. The shot's clip is decoded to RGB frames through a pipe, the speaker's
mouth is drawn in every frame where its line sounds, and the frames are encoded again with the clips'
own ENCODER_ARGS and VIDEO_TIMESCALE, so that assembly still joins every clip by stream copy.

Where: the keyframe's ``meta["faces"]`` says where each drawn character's mouth is in the keyframe;
``motion.project`` says where that point is in frame n of the camera move, and how much lengths grow.
How much: frame n's openness comes from the RMS of the line's samples inside frame n's window of the
shot (samples [n*sr/fps, (n+1)*sr/fps) with the line placed at its ``offset_samples``), through a
noise floor and a soft knee, smoothed by a zero-lag 3-tap filter: no lead, no lag. Closed frames are
left as they are (the keyframe's resting mouth shows); others get one of a few viseme-like shapes
(mid, open, wide) whose height follows the openness. Everyone else's mouth is left untouched.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
import time
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw

from workers.api import Estimate, Resources, StageError, StageResult, Usage, children_cpu, require_tool, run_tool
from workers.video.motion import CAMERAS, ENCODER_ARGS, TIMESCALE_ARGS, clip_shape, project

MAX_SECONDS = 60  # a shot longer than this is a planning error, not a lip-sync job
MAX_LINES = 64
MAX_FACES = 16
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
_INPUT = re.compile(r"line[0-9]{1,3}")

# Loudness to openness, on the frame's RMS amplitude (so that openness stays about proportional to
# it, which is what a viewer, and the sync judge, sees): below FLOOR_DBFS the mouth is shut (breath,
# room tone); at FULL_DBFS (a dubbed line's loud syllables) it is open; from KNEE on it approaches
# fully open softly instead of clipping, so that shouting does not unhinge the jaw.
FLOOR_DBFS = -50.0
FULL_DBFS = -18.0
KNEE = 0.7
SMOOTH = (0.15, 0.7, 0.15)  # symmetric: the peak of a syllable stays on its own frame
CLOSED_BELOW = 0.08


@dataclass(frozen=True)
class Viseme:
    """A mouth shape from ``openness`` up: width and height as fractions of the resting mouth width
    (height interpolated up to the next shape), and whether the upper teeth show."""

    name: str
    openness: float
    width: float
    height: float
    teeth: bool


VISEMES = (
    Viseme("closed", 0.0, 1.0, 0.0, False),
    Viseme("mid", CLOSED_BELOW, 0.80, 0.06, False),
    Viseme("open", 0.40, 0.88, 0.42, True),
    Viseme("wide", 0.75, 1.02, 0.62, True),
)
_TOP_HEIGHT = 0.72  # the height at openness 1
_LIP = (150, 55, 60)
_INSIDE = (55, 18, 24)
_TEETH = (236, 232, 222)
_AA = 4  # the mouth is drawn at 4x and reduced: smooth edges at sub-pixel positions on small frames

# Measured (3 s push_in clips at 30 fps, one espeak line; usage.cpu_seconds: this thread plus the
# decoding and encoding ffmpeg): 4.9-5.6 CPU-seconds at 1080x1920, ~1.65 per second of clip (~36
# Mpixel/s; the clip itself cost 3.1), 0.45 at 180x320, ~0.15 per second of clip. Decoder, drawing
# and encoder overlap, so the wall time is lower than the CPU time on a free machine.
PIXELS_PER_SECOND = 30e6


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StageError(f"lipsync: {where} = {value!r} must be a number")
    if not low <= value <= high:
        raise StageError(f"lipsync: {where} = {value!r} must be from {low:g} to {high:g}")
    return float(value)


@dataclass(frozen=True)
class Face:
    mouth: tuple[float, float]
    mouth_width: float


@dataclass(frozen=True)
class Line:
    input: str
    offset: int
    speaker: str
    drawn: bool


@dataclass(frozen=True)
class Job:
    width: int
    height: int
    fps: int
    frames: int
    sample_rate: int
    camera: str
    faces: dict[str, Face]
    lines: list[Line]


def parse(params: Mapping[str, Any]) -> Job:
    """The action's params, checked; every refusal names the field and its allowed range."""
    width, height, fps, frames = clip_shape(params, "lipsync")
    if frames > MAX_SECONDS * fps:
        raise StageError(f"lipsync: params.frames = {frames} is over {MAX_SECONDS} s at {fps} fps")
    rate = params.get("sample_rate")
    if rate not in SAMPLE_RATES or isinstance(rate, bool):
        raise StageError(f"lipsync: params.sample_rate = {rate!r} must be one of {SAMPLE_RATES}")
    camera = params.get("camera")
    if camera not in CAMERAS:
        raise StageError(f"lipsync: params.camera = {camera!r} must be one of {', '.join(CAMERAS)}")
    raw_faces = params.get("faces", {})
    if not isinstance(raw_faces, Mapping) or len(raw_faces) > MAX_FACES:
        raise StageError(f"lipsync: params.faces must be an object of at most {MAX_FACES} faces")
    faces = {}
    for cid, face in raw_faces.items():
        where = f"params.faces.{cid}"
        if not isinstance(face, Mapping) or not isinstance(face.get("mouth"), Sequence) or len(face["mouth"]) != 2:
            raise StageError(f"lipsync: {where} must have mouth [x, y] and mouth_width")
        x = _number(face["mouth"][0], f"{where}.mouth[0]", 0, width)
        y = _number(face["mouth"][1], f"{where}.mouth[1]", 0, height)
        faces[str(cid)] = Face((x, y), _number(face.get("mouth_width"), f"{where}.mouth_width", 1, width))
    raw_lines = params.get("lines", [])
    if not isinstance(raw_lines, list) or len(raw_lines) > MAX_LINES:
        raise StageError(f"lipsync: params.lines must be a list of at most {MAX_LINES} lines")
    lines = []
    for i, line in enumerate(raw_lines):
        where = f"params.lines[{i}]"
        if not isinstance(line, Mapping):
            raise StageError(f"lipsync: {where} must be an object with input, offset_samples, speaker")
        name, speaker, off = line.get("input"), line.get("speaker"), line.get("off_screen", False)
        if not isinstance(name, str) or not _INPUT.fullmatch(name):
            raise StageError(f"lipsync: {where}.input = {name!r} must name an input such as 'line0'")
        if not isinstance(speaker, str) or not isinstance(off, bool):
            raise StageError(f"lipsync: {where} needs speaker (text) and off_screen (true or false)")
        offset = line.get("offset_samples")
        last = frames * rate // fps
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < last:
            raise StageError(f"lipsync: {where}.offset_samples = {offset!r} must be from 0 to {last - 1} (in the shot)")
        lines.append(Line(name, offset, speaker, not off and speaker in faces))
    return Job(width, height, fps, frames, rate, str(camera), faces, lines)


def read_line(path: Path, name: str, sample_rate: int) -> np.ndarray:
    """A line's WAV as float samples in [-1, 1] (16-bit PCM at ``sample_rate``, mixed to mono)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise StageError(f"lipsync: input {name} is not a readable WAV: {exc}") from exc
    if width != 2 or rate != sample_rate:
        raise StageError(
            f"lipsync: input {name} is {8 * width}-bit at {rate} Hz; 16-bit PCM at params.sample_rate "
            f"= {sample_rate} expected"
        )
    ints = np.frombuffer(raw[: len(raw) - len(raw) % (2 * channels)], "<i2").astype(np.float64)
    return ints.reshape(-1, channels).mean(axis=1) / 32768.0


def envelope(samples: np.ndarray, offset: int, sample_rate: int, fps: int, frames: int) -> np.ndarray:
    """RMS of the line in each frame's window of the shot: frame n covers shot samples
    [n*sr/fps, (n+1)*sr/fps); the line occupies [offset, offset + len). Zero where it is silent."""
    shot = np.zeros(frames * sample_rate // fps + sample_rate)
    end = min(len(shot), offset + len(samples))
    shot[offset:end] = samples[: end - offset]
    edges = [n * sample_rate // fps for n in range(frames + 1)]
    sq = np.concatenate(([0.0], np.cumsum(shot * shot)))
    return np.array([math.sqrt(max(0.0, sq[b] - sq[a]) / (b - a)) for a, b in zip(edges, edges[1:])])


def openness(rms: np.ndarray) -> np.ndarray:
    """Per-frame RMS to mouth openness 0..1: a noise floor, a soft knee, light zero-lag smoothing."""
    floor, full = 10 ** (FLOOR_DBFS / 20), 10 ** (FULL_DBFS / 20)
    x = np.maximum(0.0, rms - floor) / (full - floor)
    value = np.where(x < KNEE, x, KNEE + (1 - KNEE) * np.tanh((x - KNEE) / (1 - KNEE)))
    if len(value) >= 3:
        padded = np.concatenate(([value[0]], value, [value[-1]]))
        value = SMOOTH[0] * padded[:-2] + SMOOTH[1] * padded[1:-1] + SMOOTH[2] * padded[2:]
    value[value < CLOSED_BELOW] = 0.0
    return np.clip(value, 0.0, 1.0)


def viseme(open_: float) -> tuple[Viseme, float, float]:
    """The shape for ``open_`` and its width and height as fractions of the resting mouth width."""
    if open_ < CLOSED_BELOW:
        return VISEMES[0], 0.0, 0.0
    heights = [v.height for v in VISEMES[2:]] + [_TOP_HEIGHT]
    for shape, top, upper in zip(VISEMES[1:], heights, [v.openness for v in VISEMES[2:]] + [1.0]):
        if open_ < upper or shape is VISEMES[-1]:
            t = (open_ - shape.openness) / max(1e-9, upper - shape.openness)
            return shape, shape.width, shape.height + (top - shape.height) * min(1.0, t)
    raise AssertionError("unreachable")


def draw_mouth(frame: np.ndarray, x: float, y: float, rest_width: float, open_: float) -> None:
    """Draw an open mouth centred at (x, y) into ``frame`` (H x W x 3, in place): the resting mouth
    is first covered with the skin colour found just above it, then lips, interior and teeth."""
    shape, wf, hf = viseme(open_)
    if shape.name == "closed" or rest_width < 1:
        return
    h, w = frame.shape[:2]
    half_w, half_h = rest_width * 0.7, rest_width * 0.55
    x0, y0 = max(0, int(x - half_w) - 1), max(0, int(y - half_h) - 1)
    x1, y1 = min(w, int(x + half_w) + 2), min(h, int(y + half_h) + 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    sy = min(h - 1, max(0, int(y - rest_width * 0.45)))
    sx0, sx1 = max(0, int(x - rest_width * 0.2)), min(w, int(x + rest_width * 0.2) + 1)
    skin = tuple(int(c) for c in np.median(frame[sy, sx0:sx1].reshape(-1, 3), axis=0))
    ow, oh = x1 - x0, y1 - y0
    layer = Image.new("RGBA", (ow * _AA, oh * _AA), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)

    def box(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
        # (cx, cy) is in the frame's pixel-centre coordinates; on the _AA canvas that centre sits at
        # (c + 0.5) * _AA - 0.5, so the mouth lands on the same sub-pixel spot after the reduction.
        ax, ay = (cx - x0 + 0.5) * _AA - 0.5, (cy - y0 + 0.5) * _AA - 0.5
        return (ax - rx * _AA, ay - ry * _AA, ax + rx * _AA, ay + ry * _AA)

    d.ellipse(box(x, y, rest_width * 0.62, rest_width * 0.3), fill=(*skin, 255))
    rx, ry = rest_width * wf / 2, max(0.5, rest_width * hf / 2)
    lip = max(0.6, rest_width * 0.07)
    d.ellipse(box(x, y, rx + lip, ry + lip), fill=(*_LIP, 255))
    d.ellipse(box(x, y, rx, ry), fill=(*_INSIDE, 255))
    if shape.teeth:
        d.chord(box(x, y, rx * 0.92, ry * 0.92), 200, 340, fill=(*_TEETH, 255))
    small = layer.resize((ow, oh), Image.Resampling.BOX)
    patch = Image.fromarray(frame[y0:y1, x0:x1]).convert("RGBA")
    patch.alpha_composite(small)
    frame[y0:y1, x0:x1] = np.asarray(patch.convert("RGB"))


def probe_shape(path: Path, what: str) -> tuple[int, int, str, int]:
    """A clip's width, height, frame rate ("30/1") and number of video packets, by ffprobe."""
    proc = run_tool(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets"]
        + ["-show_entries", "stream=width,height,r_frame_rate,nb_read_packets", "-of", "csv=p=0", str(path)],
        what=what,
        timeout=120,
    )
    fields = proc.stdout.decode("ascii", "replace").strip().split(",")
    try:
        return int(fields[0]), int(fields[1]), fields[2], int(fields[3])
    except (IndexError, ValueError) as exc:
        raise StageError(f"{what}: ffprobe found no readable video stream in {path.name}") from exc


def _check_shape(found: tuple[int, int, str, int], job: Job, what: str) -> None:
    want = (job.width, job.height, f"{job.fps}/1", job.frames)
    if found != want:
        raise StageError(
            f"lipsync: {what} is {found[0]}x{found[1]} at {found[2]} fps with {found[3]} frames; "
            f"expected {want[0]}x{want[1]} at {want[2]} fps with {want[3]} frames",
            retryable=False,
        )


def _read_into(stream: IO[bytes], buffer: bytearray) -> int:
    """Fill ``buffer`` from ``stream``; the number of bytes read (short only at the end)."""
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _stderr_tail(log: IO[bytes]) -> str:
    log.seek(0)
    return " | ".join(log.read().decode("utf-8", "replace").strip().splitlines()[-6:])


def render(clip: Path, out: Path, job: Job, opens: Mapping[str, np.ndarray], timeout: float) -> int:
    """Decode ``clip``, draw each speaker's mouth by ``opens[speaker][n]``, encode to ``out``.
    Returns the number of frames passed through."""
    ffmpeg = require_tool("ffmpeg")
    w, h, size = job.width, job.height, job.width * job.height * 3
    decode = [ffmpeg, "-nostdin", "-v", "error", "-threads", "1", "-i", str(clip), "-map", "0:v:0"]
    decode += ["-vf", "scale=in_color_matrix=bt709:in_range=tv:flags=bicubic+accurate_rnd+full_chroma_int"]
    decode += ["-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-f", "rawvideo", "-"]
    encode = [ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    encode += ["-s", f"{w}x{h}", "-framerate", str(job.fps), "-i", "-"]
    encode += ["-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int"]
    encode += ["-frames:v", str(job.frames), "-an", *ENCODER_ARGS, *TIMESCALE_ARGS, "-map_metadata", "-1"]
    encode += ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-f", "mp4", str(out)]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as dec_log, tempfile.TemporaryFile() as enc_log:
        dec = subprocess.Popen(decode, stdout=subprocess.PIPE, stderr=dec_log)
        enc = subprocess.Popen(encode, stdin=subprocess.PIPE, stderr=enc_log)
        assert dec.stdout is not None and enc.stdin is not None
        count, buffer = 0, bytearray(size)
        frame = np.frombuffer(buffer, np.uint8).reshape(h, w, 3)  # a view: drawn in place, no copies
        try:
            while _read_into(dec.stdout, buffer) == size:
                if count < job.frames:
                    for speaker, values in opens.items():
                        if values[count] > 0:
                            face = job.faces[speaker]
                            px, py, scale = project(job.camera, w, h, job.frames, count, *face.mouth)
                            draw_mouth(frame, px, py, face.mouth_width * scale, float(values[count]))
                    enc.stdin.write(buffer)
                count += 1
                if time.monotonic() > deadline:
                    raise StageError(f"lipsync: re-animating the clip outlived {timeout:.0f}s", retryable=True)
            enc.stdin.close()
            enc_rc = enc.wait(timeout=max(1.0, deadline - time.monotonic()))
            dec_rc = dec.wait(timeout=10)
        except BrokenPipeError as exc:
            enc.wait(timeout=10)
            raise StageError(f"lipsync: ffmpeg (encode) stopped early: {_stderr_tail(enc_log)}") from exc
        except subprocess.TimeoutExpired as exc:
            raise StageError(f"lipsync: ffmpeg outlived {timeout:.0f}s", retryable=True) from exc
        finally:
            for proc in (dec, enc):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if dec_rc != 0:
            raise StageError(f"lipsync: ffmpeg (decode) exited {dec_rc}: {_stderr_tail(dec_log)}")
        if enc_rc != 0:
            raise StageError(f"lipsync: ffmpeg (encode) exited {enc_rc}: {_stderr_tail(enc_log)}")
    return count


class MouthLipsync:
    """Lip-sync, embedded default: re-animates the speaker's mouth in a shot's clip to its lines.

    op "lipsync": params ``{"width", "height", "fps", "frames", "sample_rate", "camera", "faces",
    "lines": [{"input", "offset_samples", "speaker", "off_screen"}], "take"}``; inputs ``clip`` (the
    shot's clip) and each line's WAV by its ``input`` name. Writes ``clip.mp4``: the same size, fps and
    frame count, encoded as the clips are. meta ``{"frames", "lines": [{"speaker", "start_frame",
    "end_frame" (one past the line's last frame, at most frames), "drawn"}]}``. A line whose speaker
    is off screen, or has no face in ``faces``, draws nothing.

    Raises StageError for bad params, a clip or WAV that does not match them (not retryable, with
    the figures) or an ffmpeg failure; ToolMissing without ffmpeg.

    Example::

        BACKEND.run("lipsync", {"clip": mp4, "line0": wav}, {"width": 1080, "height": 1920, "fps": 30,
                    "frames": 90, "sample_rate": 48000, "camera": "push_in", "faces": meta["faces"],
                    "lines": [{"input": "line0", "offset_samples": 0, "speaker": "ana"}]}, out_dir)
    """

    stage, name, version = "lipsync", "mouth", "1"
    ops = ("lipsync",)
    # it moves the mouths the keyframe's faces say (meta["faces"]): the planner skips a shot with none
    features = ("faces",)
    tools = ("ffmpeg", "ffprobe")
    resources = Resources(num_cpus=1)

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        pixels = int(params.get("frames", 1)) * int(params.get("width", 1)) * int(params.get("height", 1))
        return Estimate(seconds=0.5 + pixels / PIXELS_PER_SECOND)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        if op not in self.ops:
            raise StageError(f"lipsync: unknown op {op!r}; mouth does {self.ops}")
        job = parse(params)
        thread0, cpu0 = time.thread_time(), children_cpu()
        missing = [name for name in ["clip", *(line.input for line in job.lines)] if name not in inputs]
        if missing:
            raise StageError(f"lipsync: input(s) {', '.join(missing)} missing")
        clip = Path(inputs["clip"])
        _check_shape(probe_shape(clip, "lipsync: probe the clip"), job, "the input clip")
        opens: dict[str, np.ndarray] = {}
        meta_lines = []
        for line in job.lines:
            samples = read_line(Path(inputs[line.input]), line.input, job.sample_rate)
            start = line.offset * job.fps // job.sample_rate
            end = min(job.frames, -(-(line.offset + len(samples)) * job.fps // job.sample_rate))
            meta_lines.append({"speaker": line.speaker, "start_frame": start, "end_frame": end, "drawn": line.drawn})
            if line.drawn:
                rms = envelope(samples, line.offset, job.sample_rate, job.fps, job.frames)
                value = openness(rms)
                opens[line.speaker] = np.maximum(opens.get(line.speaker, value), value)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "clip.mp4"
        timeout = 60 + 10 * job.frames * job.width * job.height / PIXELS_PER_SECOND
        count = render(clip, out, job, opens, timeout)
        if count != job.frames:
            raise StageError(f"lipsync: the clip decoded to {count} frames; {job.frames} expected", retryable=False)
        _check_shape(probe_shape(out, "lipsync: probe the output"), job, "the re-animated clip")
        cpu = time.thread_time() - thread0 + children_cpu() - cpu0
        return StageResult(
            files={"clip": out},
            meta={"frames": job.frames, "lines": meta_lines},
            usage=Usage(cpu_seconds=cpu, model="mouth"),
        )


BACKEND = MouthLipsync()
