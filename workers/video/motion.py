"""Clips from keyframes with ffmpeg: a slow camera move (Ken Burns) over a still image.

Every clip is encoded with the same ENCODER_ARGS and the same VIDEO_TIMESCALE so that the clips of
an episode can be joined later by stream copy (the concat demuxer with ``-c copy``) into one valid
H.264 stream: x264's ``stitchable`` keeps its headers independent of the picture, the GOP is fixed,
and each clip starts on an IDR frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from workers.api import Estimate, Resources, StageError, StageResult, Usage, children_cpu, run_tool

CAMERAS = ("static", "push_in", "pull_out", "pan_left", "pan_right", "pan_up", "pan_down")

# H.264 High / yuv420p, the format every phone and platform plays. veryfast + CRF 20: the picture is
# a still image under slow motion, which x264 compresses well even at fast presets; slower presets
# cost 2-3x the time for a few percent of size on an intermediate the platforms re-encode anyway.
# One thread: the farm books this backend one CPU, and x264's output depends on its thread count,
# so a fixed count also makes the same clip come out byte-identical on every worker.
# A fixed GOP without scene-cut keyframes keeps every clip's structure the same; stitchable=1 makes
# the SPS/PPS independent of content, so clips from different shots concatenate by stream copy.
ENCODER_ARGS: tuple[str, ...] = (
    "-c:v",
    "libx264",
    "-profile:v",
    "high",
    "-pix_fmt",
    "yuv420p",
    "-preset",
    "veryfast",
    "-crf",
    "20",
    "-threads",
    "1",
    "-g",
    "60",
    "-keyint_min",
    "60",
    "-sc_threshold",
    "0",
    "-bf",
    "2",
    "-x264-params",
    "stitchable=1",
    "-colorspace",
    "bt709",
    "-color_primaries",
    "bt709",
    "-color_trc",
    "bt709",
    "-color_range",
    "tv",
)
# 90 kHz (the MPEG clock) holds a whole number of ticks per frame at 12, 15, 24, 25, 30, 50, 60 fps,
# so frame times stay exact through every remux and concat.
VIDEO_TIMESCALE = 90000
# The movie (mvhd) time scale defaults to 1000 and would round the file's duration to the
# millisecond; the concat demuxer offsets each next file by that duration.
TIMESCALE_ARGS: tuple[str, ...] = (
    "-video_track_timescale",
    str(VIDEO_TIMESCALE),
    "-movie_timescale",
    str(VIDEO_TIMESCALE),
)

# zoompan crops on whole pixels of its input, so slow moves advance in visible steps. On a 2x
# supersampled 4:4:4 input a step is half an output pixel. Measured (360x640 test card, jitter =
# RMS distance of an edge from a smooth path): 0.26-0.31 px at 1x, 0.13-0.16 px at 2x, 0.09-0.11 px
# at 3x; filter time for 90 frames at 1080x1920: ~1.3 s at 2x, ~2.9 s at 3x (x264 itself ~3.3 s).
SUPERSAMPLE = 2
PUSH_ZOOM = 1.15  # push_in ends, pull_out starts, at this zoom
PAN_ZOOM = 1.12  # pans travel across an image zoomed this much: ~11% of the frame

# Measured: 1080x1920 push_in, 90 frames in 4.1-4.9 CPU-seconds on one thread (~20 frames/s, x264
# two thirds of it), ~40 Mpixel/s. Static shots encode about 3x faster; the estimate stays cautious.
PIXELS_PER_SECOND = 40e6


def _int_param(params: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise StageError(f"video: params.{name} = {value!r} must be an integer from {low} to {high}")
    return value


def clip_shape(params: Mapping[str, Any], what: str) -> tuple[int, int, int, int]:
    """A clip action's width, height, fps and frames, checked as every video backend needs them:
    even sides (yuv420p) and an fps that divides the 90 kHz timescale (exact frame times)."""
    width = _int_param(params, "width", 16, 8192)
    height = _int_param(params, "height", 16, 8192)
    fps = _int_param(params, "fps", 1, 120)
    frames = _int_param(params, "frames", 1, 100_000)
    if width % 2 or height % 2:
        raise StageError(f"{what}: {width}x{height} must have even sides for yuv420p")
    if VIDEO_TIMESCALE % fps:
        raise StageError(f"{what}: fps {fps} must divide {VIDEO_TIMESCALE} (e.g. 12, 24, 25, 30, 60)")
    return width, height, fps, frames


def motion_filter(camera: str, width: int, height: int, fps: int, frames: int) -> str:
    """The filtergraph for ``camera``; built only from numbers, never from user text."""
    if camera not in CAMERAS:
        raise StageError(f"video: camera {camera!r} is not one of {', '.join(CAMERAS)}")
    # Eased progress 0 -> 1 over the clip (smoothstep), so moves start and stop gently.
    p = f"(on/{frames - 1})" if frames > 1 else "0"
    ease = f"({p}*{p}*(3-2*{p}))"
    center_x, center_y = "(iw-iw/zoom)/2", "(ih-ih/zoom)/2"
    zoom, x, y = "1", "0", "0"
    if camera == "push_in":
        zoom, x, y = f"1+{PUSH_ZOOM - 1:.6f}*{ease}", center_x, center_y
    elif camera == "pull_out":
        zoom, x, y = f"{PUSH_ZOOM:.6f}-{PUSH_ZOOM - 1:.6f}*{ease}", center_x, center_y
    elif camera in ("pan_left", "pan_right", "pan_up", "pan_down"):
        zoom = f"{PAN_ZOOM:.6f}"
        # pan_left: the camera turns left, so the window slides from the right edge to the left.
        travel = ease if camera in ("pan_right", "pan_down") else f"(1-{ease})"
        if camera in ("pan_left", "pan_right"):
            x, y = f"(iw-iw/zoom)*{travel}", center_y
        else:
            x, y = center_x, f"(ih-ih/zoom)*{travel}"
    scale = 1 if camera == "static" else SUPERSAMPLE
    return ",".join(
        [
            # Converted to YUV once, on the still: swscale uses BT.601 unless told, HD players assume
            # BT.709. 4:4:4, because in 4:2:0 zoompan snaps the crop to even pixels, doubling the step.
            f"scale={width * scale}:{height * scale}:flags=bicubic:out_color_matrix=bt709:out_range=tv",
            "format=yuv444p",
            f"zoompan=z='{zoom}':x='{x}':y='{y}':d={frames}:s={width}x{height}:fps={fps}",
            "format=yuv420p",
        ]
    )


def _ease(frames: int, n: int) -> float:
    """The smoothstep progress of frame n, computed as zoompan evaluates motion_filter's expression."""
    p = n / (frames - 1) if frames > 1 else 0.0
    return p * p * (3 - 2 * p)


def project(
    camera: str, width: int, height: int, frames: int, n: int, x: float, y: float
) -> tuple[float, float, float]:
    """Where point (x, y) of the keyframe is in frame ``n`` (0-based) of the clip, and how much lengths grow.

    Exactly the transform of motion_filter: the keyframe is scaled by the supersampling factor s,
    zoompan evaluates zoom and the visible window's top-left (wx, wy) in those input pixels, cuts
    whole pixels (the window is int(iw / zoom) wide, its corner truncated to a whole pixel) and
    scales the window to width x height. Coordinates are Pillow's: the pixel at column i has x = i.
    Returns (x', y', scale), scale being how much a horizontal length at that point is multiplied by.

    Raises StageError for an unknown camera or a frame outside the clip.

    Example::

        project("push_in", 1080, 1920, 90, 89, 540.0, 960.0)  # the centre stays put, ~1.15x larger
    """
    if camera not in CAMERAS:
        raise StageError(f"video: camera {camera!r} is not one of {', '.join(CAMERAS)}")
    if not 0 <= n < frames:
        raise StageError(f"video: frame {n} is outside a clip of {frames} frames")
    s = 1 if camera == "static" else SUPERSAMPLE
    iw, ih = width * s, height * s
    ease = _ease(frames, n)
    # the constants as motion_filter prints them into the expressions (six decimals)
    push = float(f"{PUSH_ZOOM - 1:.6f}")
    zoom = 1.0
    if camera == "push_in":
        zoom = 1 + push * ease
    elif camera == "pull_out":
        zoom = float(f"{PUSH_ZOOM:.6f}") - push * ease
    elif camera.startswith("pan_"):
        zoom = float(f"{PAN_ZOOM:.6f}")
    zoom = min(max(zoom, 1.0), 10.0)  # zoompan clips zoom to [1, 10]
    win_w, win_h = int(iw * (1.0 / zoom)), int(ih * (1.0 / zoom))
    wx = wy = 0.0
    if camera != "static":
        wx, wy = (iw - iw / zoom) / 2, (ih - ih / zoom) / 2
    travel = ease if camera in ("pan_right", "pan_down") else 1 - ease
    if camera in ("pan_left", "pan_right"):
        wx = (iw - iw / zoom) * travel
    elif camera in ("pan_up", "pan_down"):
        wy = (ih - ih / zoom) * travel
    # zoompan clips the corner to keep the window inside the input, then truncates it to a whole pixel
    left = int(min(max(wx, 0.0), max(iw - win_w, 0)))
    top = int(min(max(wy, 0.0), max(ih - win_h, 0)))
    fx, fy = width / win_w, height / win_h
    return ((x + 0.5) * s - left) * fx - 0.5, ((y + 0.5) * s - top) * fy - 0.5, s * fx


class MotionClip:
    """Turns one keyframe into a clip with a camera move, encoded with ENCODER_ARGS.

    op "clip": params ``{"width", "height", "fps", "frames" (>= 1), "camera"}`` (camera one of
    CAMERAS), inputs ``{"keyframe": PNG of exactly width x height}``. Writes ``clip.mp4``: video
    only, exactly ``frames`` frames at constant ``fps``, H.264 High yuv420p, time scale
    VIDEO_TIMESCALE. meta ``{"frames", "duration", "camera": {"name", "frames"}}``: with the clip's
    size, enough for project() to say where any keyframe point is in any frame.

    Raises StageError for bad params, a keyframe of the wrong size or an ffmpeg failure;
    ToolMissing without ffmpeg.

    Example::

        BACKEND.run("clip", {"keyframe": png}, {"width": 1080, "height": 1920, "fps": 30,
                    "frames": 90, "camera": "push_in"}, out_dir).files["clip"]
    """

    stage, name, version = "video", "ffmpeg-motion", "1"
    ops = ("clip",)
    tools = ("ffmpeg",)
    resources = Resources(num_cpus=1)

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        pixels = int(params.get("frames", 1)) * int(params.get("width", 1)) * int(params.get("height", 1))
        return Estimate(seconds=0.3 + pixels / PIXELS_PER_SECOND)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        if op not in self.ops:
            raise StageError(f"video: unknown op {op!r}; ffmpeg-motion does {self.ops}")
        width, height, fps, frames = clip_shape(params, "video")
        graph = motion_filter(str(params.get("camera")), width, height, fps, frames)
        keyframe = inputs.get("keyframe")
        if keyframe is None:
            raise StageError("video: input 'keyframe' is missing")
        try:
            with Image.open(keyframe) as im:
                size = im.size
        except OSError as exc:
            raise StageError(f"video: keyframe is not a readable image: {exc}") from exc
        if size != (width, height):
            raise StageError(f"video: keyframe is {size[0]}x{size[1]}, expected {width}x{height}")

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "clip.mp4"
        cpu0 = children_cpu()
        run_tool(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-i",
                str(keyframe),
                "-vf",
                graph,
                "-frames:v",
                str(frames),
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
            ],
            what="video: encode clip",
        )
        return StageResult(
            files={"clip": out},
            meta={"frames": frames, "duration": frames / fps, "camera": {"name": params["camera"], "frames": frames}},
            usage=Usage(cpu_seconds=children_cpu() - cpu0, model="ffmpeg-motion"),
        )


BACKEND = MotionClip()
