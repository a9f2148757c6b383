"""The embedded lip-sync backend: real ffmpeg on a small push_in clip (180x320 at 24 fps) of two characters
drawn by the embedded image backend, with tone-burst and espeak-ng lines."""

from __future__ import annotations

import json
import math
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.api import StageError
from workers.dubbing import espeak
from workers.image import pillow
from workers.lipsync.mouth import BACKEND
from workers.video import motion

W, H, FPS, FRAMES, SR = 180, 320, 24, 48, 48000
CAMERA = "push_in"
# Re-encoding alone changes a mouth region by up to ~4.3 levels (mean absolute, measured at CRF 20 on
# these 8-pixel mouths); a drawn open mouth changes it by 10 or more.
NOISE = 6
OFFSET = 4800  # 0.1 s: 2.4 frames, so the line starts inside a frame's window
STYLE = {"description": "flat", "palette": ["#102030", "#405060", "#f0a040"]}
CAST = [
    {"id": "ana", "name": "Ana", "look": {"description": "red coat", "outfit": "#c03030", "hair": None, "skin": None}},
    {
        "id": "ben",
        "name": "Ben",
        "look": {"description": "blue shirt", "outfit": "#3050c0", "hair": None, "skin": None},
    },
]


@pytest.fixture(scope="module")
def shot(tmp_path_factory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A push_in clip over a medium keyframe of Ana and Ben by the embedded backends, and its faces."""
    folder = tmp_path_factory.mktemp("shot")
    figures = {}
    for character in CAST:
        out = folder / character["id"]
        out.mkdir()
        sheet = {"style": STYLE, "character": character, "seed": 0}
        figures[f"sheet:{character['id']}"] = pillow.BACKEND.run("sheet", {}, sheet, out).files["figure"]
    keyframe = {"style": STYLE, "width": W, "height": H, "seed": [1, "s01-02"], "location": "bridge"}
    keyframe |= {
        "time_of_day": "night",
        "description": "Ana and Ben.",
        "framing": "medium",
        "characters": ["ana", "ben"],
    }
    made = pillow.BACKEND.run("keyframe", figures, keyframe, folder)
    params = {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "camera": CAMERA}
    clip = motion.BACKEND.run("clip", {"keyframe": made.files["keyframe"]}, params, folder).files["clip"]
    return clip, made.meta["faces"]


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def tone_bursts(path: Path) -> Path:
    """Syllable-like bursts of a two-tone voice with different loudness, separated by silence."""
    bursts = [(0.0, 0.16, 0.2), (0.24, 0.40, 0.06), (0.50, 0.62, 0.3), (0.74, 1.0, 0.12), (1.12, 1.30, 0.25)]
    t = np.arange(int(1.4 * SR)) / SR
    amp = np.zeros_like(t)
    for start, end, level in bursts:
        inside = (t >= start) & (t < end)
        amp[inside] = level * np.sin(math.pi * (t[inside] - start) / (end - start))
    return write_wav(path, amp * (0.6 * np.sin(2 * math.pi * 180 * t) + 0.4 * np.sin(2 * math.pi * 410 * t)))


def espeak_line(folder: Path) -> Path:
    voice = {"voice": "en-us", "pitch": 50, "rate": 200}
    params = {"text": "Where were you last night?", "voice": voice, "sample_rate": SR}
    return espeak.BACKEND.run("line", {}, params, folder).files["audio"]


def action(faces: dict, lines: list[dict]) -> dict:
    return {
        "width": W,
        "height": H,
        "fps": FPS,
        "frames": FRAMES,
        "sample_rate": SR,
        "camera": CAMERA,
        "faces": faces,
        "lines": lines,
        "take": 1,
    }


def frames_of(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, H, W, 3).astype(np.int16)


def mouth_change(before: np.ndarray, after: np.ndarray, face: dict) -> np.ndarray:
    """Mean absolute pixel change per frame in a box around ``face``'s mouth, following the camera."""
    out = []
    for n in range(len(before)):
        x, y, scale = motion.project(CAMERA, W, H, FRAMES, n, *face["mouth"])
        r = face["mouth_width"] * scale * 0.7
        x0, x1, y0, y1 = int(x - r), int(x + r) + 1, int(y - r * 0.7), int(y + r * 0.7) + 1
        out.append(float(np.abs(after[n, y0:y1, x0:x1] - before[n, y0:y1, x0:x1]).mean()))
    return np.array(out)


def frame_rms(wav: Path, offset: int) -> np.ndarray:
    with wave.open(str(wav), "rb") as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768
    shot = np.zeros(FRAMES * SR // FPS)
    shot[offset : offset + len(samples)] = samples[: len(shot) - offset]
    return np.sqrt((shot.reshape(FRAMES, -1) ** 2).mean(axis=1))


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    return json.loads(out)["streams"][0]


@pytest.mark.media
def test_output_keeps_the_clips_shape_and_concatenates_by_stream_copy(tmp_path, shot):
    """The re-animated clip has the input's size, fps, frame count and encoding, and joins untouched
    clips by stream copy into a stream that decodes to every frame."""
    clip, faces = shot
    line = tone_bursts(tmp_path / "l.wav")
    lines = [{"input": "line0", "offset_samples": OFFSET, "speaker": "ana", "off_screen": False}]
    result = BACKEND.run("lipsync", {"clip": clip, "line0": line}, action(faces, lines), tmp_path / "out")
    out = result.files["clip"]
    info, original = probe(out), probe(clip)
    for key in ("codec_name", "profile", "pix_fmt", "width", "height", "r_frame_rate", "time_base", "color_space"):
        assert info[key] == original[key], key
    assert int(info["nb_read_frames"]) == FRAMES
    assert float(info["duration"]) == pytest.approx(FRAMES / FPS, abs=0.001)
    assert result.meta == {
        "frames": FRAMES,
        "lines": [{"speaker": "ana", "start_frame": 2, "end_frame": 36, "drawn": True}],
    }
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in (clip, out, clip)))
    joined = tmp_path / "joined.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined)],
        check=True,
    )
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(joined), "-f", "framemd5", "-"],
        capture_output=True,
        check=True,
    )
    assert decoded.stdout.decode().count("\n0,") == 3 * FRAMES
    assert float(probe(joined)["duration"]) == pytest.approx(3 * FRAMES / FPS, abs=0.002)


@pytest.mark.media
@pytest.mark.parametrize("voice", ["tone", "espeak"])
def test_speakers_mouth_follows_the_line_frame_exactly_and_the_other_stays_shut(tmp_path, shot, voice):
    """The speaker's mouth region changes with the line's per-frame loudness (Pearson > 0.7, best at
    lag 0); the other face's mouth region does not change beyond the encoder's noise."""
    clip, faces = shot
    line = tone_bursts(tmp_path / "l.wav") if voice == "tone" else espeak_line(tmp_path)
    lines = [{"input": "line0", "offset_samples": OFFSET, "speaker": "ben", "off_screen": False}]
    out = BACKEND.run("lipsync", {"clip": clip, "line0": line}, action(faces, lines), tmp_path / "out").files["clip"]
    before, after = frames_of(clip), frames_of(out)
    assert before.shape == after.shape
    moved, rms = mouth_change(before, after, faces["ben"]), frame_rms(line, OFFSET)

    def pearson(lag: int) -> float:
        a, b = (moved[lag:], rms[: len(rms) - lag]) if lag >= 0 else (moved[:lag], rms[-lag:])
        return float(np.corrcoef(a, b)[0, 1])

    by_lag = {lag: pearson(lag) for lag in range(-3, 4)}
    assert by_lag[0] > 0.7, by_lag
    assert max(by_lag, key=lambda lag: by_lag[lag]) == 0, by_lag
    assert moved.max() > 20  # the mouth really opens
    assert mouth_change(before, after, faces["ana"]).max() < NOISE


@pytest.mark.media
def test_off_screen_or_faceless_speakers_draw_nothing(tmp_path, shot):
    """A line marked off screen, and one whose speaker has no face, leave every mouth as it was."""
    clip, faces = shot
    line = tone_bursts(tmp_path / "l.wav")
    lines = [
        {"input": "line0", "offset_samples": OFFSET, "speaker": "ana", "off_screen": True},
        {"input": "line1", "offset_samples": 0, "speaker": "narrator", "off_screen": False},
    ]
    result = BACKEND.run("lipsync", {"clip": clip, "line0": line, "line1": line}, action(faces, lines), tmp_path / "o")
    assert [x["drawn"] for x in result.meta["lines"]] == [False, False]
    before, after = frames_of(clip), frames_of(result.files["clip"])
    for who, face in faces.items():
        assert mouth_change(before, after, face).max() < NOISE, who


@pytest.mark.media
def test_a_clip_that_does_not_match_the_params_is_refused_with_the_figures(tmp_path, shot):
    """Params saying 60 frames for a 48-frame clip: a StageError, not retryable, with both figures."""
    clip, faces = shot
    bad = {**action(faces, []), "frames": 60}
    with pytest.raises(StageError, match="48 frames.*expected 180x320 at 24/1 fps with 60 frames") as err:
        BACKEND.run("lipsync", {"clip": clip}, bad, tmp_path / "o")
    assert not err.value.retryable


@pytest.mark.parametrize(
    "change, message",
    [
        ({"frames": 60 * FPS + 1}, "over 60 s"),
        ({"camera": "dolly_zoom"}, "params.camera"),
        ({"sample_rate": 12345}, "params.sample_rate"),
        ({"faces": {"ana": {"mouth": [500.0, 10.0], "mouth_width": 9}}}, r"faces.ana.mouth\[0\]"),
        ({"lines": [{"input": "line0", "offset_samples": -1, "speaker": "ana"}]}, "offset_samples"),
        ({"lines": [{"input": "../etc", "offset_samples": 0, "speaker": "ana"}]}, "input"),
    ],
)
def test_params_out_of_range_are_refused_by_name(tmp_path, change, message):
    """Each out-of-range param is refused before any work, naming the field."""
    with pytest.raises(StageError, match=message):
        BACKEND.run("lipsync", {}, {**action({}, []), **change}, tmp_path)
