"""What ComfyUI saved, made into exactly the files the embedded backends make: a keyframe at the
shot's size, a character sheet and its figure, a clip of the planned frames in the farm's clip format;
and the GPU time its history entry reports."""

from __future__ import annotations

import io
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, ImageSequence

from workers.api import StageError, run_tool
from workers.comfyui.figures import derive_figure, key_out_background
from workers.video.motion import ENCODER_ARGS, TIMESCALE_ARGS, clip_shape

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".m4v", ".avi"}


def open_image(what: str, name: str, data: bytes) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except OSError as exc:
        raise StageError(f"{what}: the server's {name} is not a readable image: {exc}") from None


def keyframe(
    what: str, files: list[tuple[str, bytes]], params: Mapping[str, Any], out_dir: Path, meta: dict[str, Any]
) -> Path:
    width, height = int(params["width"]), int(params["height"])
    im = open_image(what, files[0][0], files[0][1])
    meta["source_size"] = list(im.size)
    frame = ImageOps.fit(im.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
    path = out_dir / "keyframe.png"
    frame.save(path, optimize=False)
    meta.update(width=width, height=height)
    return path


def sheet(
    what: str, backend: str, files: dict[str, list[tuple[str, bytes]]], out_dir: Path, meta: dict[str, Any]
) -> dict[str, Path]:
    drawn = open_image(what, *files["sheet"][0]).convert("RGB")
    if "figure" in files:
        source = open_image(what, *files["figure"][0])
        if "A" in source.getbands():
            figure = source.convert("RGBA")
            meta["figure"] = "made by the workflow"
        else:
            figure, keyed = key_out_background(source)
            meta["figure"] = "made by the workflow, background keyed out here" if keyed else "made by the workflow"
    else:
        figure, note = derive_figure(drawn)
        meta["figure"] = (
            f"{note}; the workflow makes none (map a node that saves a transparent figure as "
            f"backends.{backend}.outputs.sheet.figure)"
        )
    paths = {"sheet": out_dir / "sheet.png", "figure": out_dir / "figure.png"}
    drawn.save(paths["sheet"], optimize=False)
    figure.save(paths["figure"], optimize=False)
    meta.update(width=drawn.width, height=drawn.height)
    return paths


def clip(
    what: str, files: list[tuple[str, bytes]], params: Mapping[str, Any], out_dir: Path, meta: dict[str, Any]
) -> Path:
    width, height, fps, frames = clip_shape(params, what)
    work = out_dir / "comfyui-source"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    first = Path(files[0][0]).suffix.lower()
    if first in VIDEO_SUFFIXES:
        source = work / f"source{first}"
        source.write_bytes(files[0][1])
        count = count_frames(what, source)
        input_args = ["-i", str(source.resolve())]
        meta["source"] = {"kind": first[1:], "frames": count}
    else:
        count = 0
        for name, data in files:  # a list of frames, or animated WebP/GIF/PNG (ffmpeg 5 cannot read animated WebP)
            for frame in ImageSequence.Iterator(open_image(what, name, data)):
                frame.convert("RGB").save(work / f"{count:06d}.png", compress_level=1)
                count += 1
        pattern = str(work.resolve()).replace("%", "%%") + "/%06d.png"
        input_args = ["-f", "image2", "-framerate", str(fps), "-start_number", "0", "-i", pattern]
        meta["source"] = {"kind": "images", "files": len(files), "frames": count}
    if count < 1:
        raise StageError(f"{what}: the server's clip has no frames")
    # Source frame k is shown at k*frames/(count*fps) s, so the source spans exactly frames/fps s
    # whatever its own rate; fps= then picks the frame showing at each output tick (identity when
    # count == frames), tpad holds the last frame if rounding leaves one short, -frames:v cuts.
    graph = ",".join(
        [
            f"settb=1/{count * fps}",
            f"setpts=N*{frames}",
            f"fps={fps}",
            "tpad=stop=-1:stop_mode=clone",
            f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=bicubic"
            ":out_color_matrix=bt709:out_range=tv",
            "format=yuv444p",
            f"crop={width}:{height}",
            "setsar=1",
            "format=yuv420p",
        ]
    )
    out = out_dir / "clip.mp4"
    run_tool(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            *input_args,
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
            str(out.resolve()),
        ],
        what=f"{what}: encode clip",
    )
    shutil.rmtree(work, ignore_errors=True)
    meta.update(frames=frames, duration=frames / fps, retimed=count != frames)
    return out


def count_frames(what: str, path: Path) -> int:
    proc = run_tool(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            str(path.resolve()),
        ],
        what=f"{what}: read the server's clip",
    )
    text = proc.stdout.decode().strip().split(",")[0]
    if not text.isdigit():
        raise StageError(f"{what}: the server's clip has no readable video stream")
    return int(text)


def gpu_seconds(status: Mapping[str, Any]) -> float:
    """Execution time from ComfyUI's status messages ([event, {..., "timestamp": ms}]): from
    execution_start to execution_success; 0 when either is missing (older servers)."""
    stamps: dict[str, float] = {}
    for message in status.get("messages") or []:
        if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict):
            ts = message[1].get("timestamp")
            if isinstance(ts, (int, float)) and not isinstance(ts, bool):
                stamps.setdefault(str(message[0]), float(ts))
    if "execution_start" in stamps and "execution_success" in stamps:
        return max(0.0, (stamps["execution_success"] - stamps["execution_start"]) / 1000.0)
    return 0.0


def failure(what: str, prompt_id: str, status: Mapping[str, Any]) -> tuple[str, bool]:
    """Why a prompt failed, from ComfyUI's status messages, and whether trying again may help."""
    error, interrupted = None, False
    for message in status.get("messages") or []:
        if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict):
            if message[0] == "execution_error":
                error = message[1]
            elif message[0] == "execution_interrupted":
                interrupted = True
    if error is not None:
        kind = str(error.get("exception_type", ""))
        text = (
            f"{what}: node {error.get('node_id')} ({error.get('node_type')}) of prompt {prompt_id} "
            f"failed: {str(error.get('exception_message', '')).strip()}" + (f" [{kind}]" if kind else "")
        )
        return text, "OutOfMemory" in kind  # the GPU was busy with something else; may fit next time
    if interrupted:
        return f"{what}: prompt {prompt_id} was interrupted on the server", True
    return f"{what}: prompt {prompt_id} failed without an error message", False
