"""The ffmpeg-motion clip backend: real ffmpeg on small keyframes (180x320 at 12 fps)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from workers.api import StageError
from workers.video.motion import BACKEND, CAMERAS, project

W, H, FPS = 180, 320, 12


def keyframe(path: Path, colour=(200, 70, 60)) -> Path:
    """A keyframe with edges and texture, so any camera move shows in the pixels."""
    im = Image.new("RGB", (W, H), colour)
    draw = ImageDraw.Draw(im)
    for x in range(0, W, 12):
        draw.line([(x, 0), (x, H)], fill=(240, 240, 240), width=2)
    draw.ellipse([40, 100, 140, 220], fill=(20, 30, 120))
    im.save(path)
    return path


def clip(tmp_path: Path, camera: str, frames: int, name: str = "c", colour=(200, 70, 60)) -> Path:
    kf = keyframe(tmp_path / f"{name}.png", colour)
    params = {"width": W, "height": H, "fps": FPS, "frames": frames, "camera": camera}
    return BACKEND.run("clip", {"keyframe": kf}, params, tmp_path / name).files["clip"]


def ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "json", str(path)], capture_output=True, check=True
    ).stdout
    return json.loads(out)


def frame_rgb(path: Path, index: int) -> bytes:
    return subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-vf",
            f"select=eq(n\\,{index})",
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout


def mean_abs_diff(a: bytes, b: bytes) -> float:
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


@pytest.mark.media
def test_clip_is_h264_high_yuv420p_with_exact_frames_and_duration(tmp_path):
    """A clip is H.264 High yuv420p at the asked size with exactly `frames` frames lasting frames/fps."""
    path = clip(tmp_path, "push_in", 25)
    info = ffprobe(path, "-count_frames", "-show_streams", "-show_format")
    (video,) = info["streams"]
    assert (video["codec_name"], video["profile"], video["pix_fmt"]) == ("h264", "High", "yuv420p")
    assert (video["width"], video["height"]) == (W, H)
    assert int(video["nb_read_frames"]) == 25
    assert video["r_frame_rate"] == "12/1"
    assert float(video["duration"]) == pytest.approx(25 / 12, abs=0.001)
    assert float(info["format"]["duration"]) == pytest.approx(25 / 12, abs=0.001)


@pytest.mark.media
def test_clips_concatenate_by_stream_copy_into_one_valid_stream(tmp_path):
    """Two clips with different pictures and moves join with `-c copy` into a stream that decodes cleanly."""
    a = clip(tmp_path, "pan_left", 19, "a", (200, 70, 60))
    b = clip(tmp_path, "pull_out", 30, "b", (60, 160, 90))
    listing = tmp_path / "list.txt"
    listing.write_text(f"file '{a}'\nfile '{b}'\n")
    joined = tmp_path / "joined.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined)],
        check=True,
    )
    (video,) = ffprobe(joined, "-count_frames", "-show_streams")["streams"]
    assert int(video["nb_read_frames"]) == 49
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(joined), "-f", "null", "-"], capture_output=True)
    assert decode.returncode == 0 and decode.stderr == b""


@pytest.mark.media
@pytest.mark.parametrize("camera", [c for c in CAMERAS if c != "static"])
def test_camera_moves_change_the_picture(tmp_path, camera):
    """Every camera move makes the last frame clearly differ from the first."""
    path = clip(tmp_path, camera, 12)
    assert mean_abs_diff(frame_rgb(path, 0), frame_rgb(path, 11)) > 5


@pytest.mark.media
def test_static_camera_holds_the_picture(tmp_path):
    """A static clip shows the keyframe unchanged from first to last frame."""
    path = clip(tmp_path, "static", 12)
    assert mean_abs_diff(frame_rgb(path, 0), frame_rgb(path, 11)) < 1


@pytest.mark.media
def test_single_frame_clip(tmp_path):
    """A one-frame clip has one frame and lasts 1/fps."""
    path = clip(tmp_path, "push_in", 1)
    (video,) = ffprobe(path, "-count_frames", "-show_streams")["streams"]
    assert int(video["nb_read_frames"]) == 1
    assert float(video["duration"]) == pytest.approx(1 / 12, abs=0.001)


@pytest.mark.media
def test_same_params_give_identical_bytes(tmp_path):
    """Encoding the same keyframe and params twice produces byte-identical clips."""
    assert clip(tmp_path, "pan_up", 10, "x").read_bytes() == clip(tmp_path, "pan_up", 10, "y").read_bytes()


@pytest.mark.media
def test_meta_and_usage(tmp_path):
    """meta gives frames and duration; usage reports the CPU ffmpeg used."""
    kf = keyframe(tmp_path / "k.png")
    result = BACKEND.run(
        "clip", {"keyframe": kf}, {"width": W, "height": H, "fps": FPS, "frames": 6, "camera": "static"}, tmp_path / "o"
    )
    assert result.meta == {"frames": 6, "duration": 0.5, "camera": {"name": "static", "frames": 6}}
    assert result.usage.cpu_seconds > 0


def test_keyframe_of_the_wrong_size_is_refused(tmp_path):
    """A keyframe that is not exactly width x height raises StageError."""
    Image.new("RGB", (100, 100)).save(tmp_path / "k.png")
    with pytest.raises(StageError, match="100x100"):
        BACKEND.run(
            "clip",
            {"keyframe": tmp_path / "k.png"},
            {"width": W, "height": H, "fps": FPS, "frames": 3, "camera": "static"},
            tmp_path / "o",
        )


@pytest.mark.parametrize(
    "params",
    [
        {"camera": "dolly_zoom"},
        {"camera": "static'; rm -rf /"},
        {"frames": 0},
        {"fps": 7},
        {"width": 181},
    ],
)
def test_bad_params_are_refused(tmp_path, params):
    """An unknown camera, zero frames, an fps off the 90 kHz clock or an odd width raise StageError."""
    kf = keyframe(tmp_path / "k.png")
    full = {"width": W, "height": H, "fps": FPS, "frames": 3, "camera": "static"} | params
    with pytest.raises(StageError):
        BACKEND.run("clip", {"keyframe": kf}, full, tmp_path / "o")


def _marked_keyframe(path: Path, x0: int, y0: int, size: int) -> Path:
    """A grey keyframe with texture and a green square (its centre at x0 + (size - 1) / 2, Pillow's coordinates)."""
    im = Image.new("RGB", (W, H), (110, 110, 110))
    draw = ImageDraw.Draw(im)
    for x in range(0, W, 16):
        draw.line([(x, 0), (x, H)], fill=(140, 140, 140), width=1)
    draw.rectangle([x0, y0, x0 + size - 1, y0 + size - 1], fill=(0, 230, 0))
    im.save(path)
    return path


def _green_centroid(frame: bytes) -> tuple[float, float]:
    """The centroid of the frame's green, each pixel weighted by how much greener than grey it is."""
    total = sx = sy = 0.0
    for i in range(0, len(frame), 3):
        r, g, b = frame[i], frame[i + 1], frame[i + 2]
        weight = g - (r + b) / 2 - 20
        if weight > 0:
            n = i // 3
            total, sx, sy = total + weight, sx + weight * (n % W), sy + weight * (n // W)
    assert total > 0, "the marker is not in the frame"
    return sx / total, sy / total


@pytest.mark.media
@pytest.mark.parametrize("camera", CAMERAS)
def test_project_finds_a_keyframe_point_in_every_frame(tmp_path, camera):
    """A marker drawn at a known keyframe point is, in the first, middle and last frame of a real clip, within
    1.5 px of where project() says: the camera move's exact transform."""
    frames, size, x0, y0 = 13, 6, 52, 94
    kf = _marked_keyframe(tmp_path / "k.png", x0, y0, size)
    params = {"width": W, "height": H, "fps": FPS, "frames": frames, "camera": camera}
    result = BACKEND.run("clip", {"keyframe": kf}, params, tmp_path / "o")
    assert result.meta["camera"] == {"name": camera, "frames": frames}
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(result.files["clip"]), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    assert len(raw) == frames * W * H * 3
    errors = []
    for n in (0, frames // 2, frames - 1):
        found = _green_centroid(raw[n * W * H * 3 : (n + 1) * W * H * 3])
        want = project(camera, W, H, frames, n, x0 + (size - 1) / 2, y0 + (size - 1) / 2)
        errors.append(max(abs(found[0] - want[0]), abs(found[1] - want[1])))
    print(camera, "marker error (px):", [round(e, 3) for e in errors])
    assert max(errors) <= 1.5, errors


def test_project_refuses_an_unknown_camera_and_a_frame_outside_the_clip():
    """project() names the bad camera or frame rather than extrapolating a move that is never rendered."""
    assert project("static", W, H, 5, 4, 10.0, 20.0) == (10.0, 20.0, 1.0)
    with pytest.raises(StageError, match="dolly"):
        project("dolly", W, H, 5, 0, 10.0, 20.0)
    with pytest.raises(StageError, match="frame 5"):
        project("push_in", W, H, 5, 5, 10.0, 20.0)
