"""The lip-sync judge ``sync`` on real clips: frames drawn here (two faces, a mouth whose opening
follows a real line's loudness, under a real push_in camera move), encoded by ffmpeg with the
farm's encoder settings, against real WAVs."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from workers.api import StageError
from workers.judge.sync import BACKEND, THRESHOLDS
from workers.video import motion

pytestmark = pytest.mark.media

W, H, FPS, FRAMES, RATE = 360, 640, 24, 96, 48000
CAMERA = "push_in"
MOUTH = 28.0
FACES: dict[str, dict[str, Any]] = {
    "ana": {"box": [70.0, 230.0, 150.0, 330.0], "mouth": [110.0, 305.0], "mouth_width": MOUTH},
    "bob": {"box": [210.0, 260.0, 290.0, 360.0], "mouth": [250.0, 335.0], "mouth_width": MOUTH},
}
OFFSETS = (12000, 105600)  # line0 from 0.25 s, line1 from 2.2 s
SPEAKERS = ("ana", "bob")


def _speech(seed: int, seconds: float) -> np.ndarray:
    """A voiced tone whose loudness rises and falls in syllables of random length and strength."""
    rng = np.random.default_rng(seed)
    env = np.zeros(int(seconds * RATE))
    t = 0.0
    while t < seconds - 0.2:
        length = rng.uniform(0.1, 0.3)
        n0, n1 = int(t * RATE), min(len(env), int((t + length) * RATE))
        env[n0:n1] = rng.uniform(0.25, 0.9) * np.sin(np.linspace(0, np.pi, n1 - n0)) ** 2
        t += length + rng.uniform(0.03, 0.15)
    times = np.arange(len(env)) / RATE
    voice = sum(np.sin(2 * np.pi * 150 * k * times) / k for k in range(1, 6))
    return env * voice / 2.3


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _openings(samples: np.ndarray, offset: int) -> np.ndarray:
    """The line's RMS in each frame of the clip, as a share of its loudest frame."""
    level = np.zeros(FRAMES)
    per = RATE // FPS
    for n in range(FRAMES):
        chunk = samples[max(0, n * per - offset) : max(0, (n + 1) * per - offset)]
        level[n] = np.sqrt((chunk**2).mean()) if len(chunk) else 0.0
    return level / level.max()


def _keyframe() -> Image.Image:
    rng = np.random.default_rng(3)
    ramp = np.linspace(40, 120, H)[:, None, None] * np.array([0.6, 0.8, 1.0])
    picture = np.clip(ramp + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(np.broadcast_to(picture, (H, W, 3)).copy())
    draw = ImageDraw.Draw(im)
    for face in FACES.values():
        draw.ellipse(face["box"], fill=(226, 188, 160))
        top, mx = face["box"][1], face["mouth"][0]
        for ex in (mx - 14, mx + 14):
            draw.ellipse((ex - 4, top + 35, ex + 4, top + 43), fill=(40, 30, 30))
    return im


def _clip(path: Path, moves: dict[int, tuple[str, int]], lines: list[np.ndarray]) -> Path:
    """Encode the clip: for line i in ``moves``, face moves[i][0]'s mouth opens with the line,
    moves[i][1] frames late; every other mouth stays shut."""
    base = _keyframe()
    opening = {cid: np.zeros(FRAMES) for cid in FACES}
    for i, (cid, lag) in moves.items():
        level = _openings(lines[i], OFFSETS[i])
        opening[cid] += np.concatenate((np.zeros(lag), level[: FRAMES - lag]))
    proc = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
        + ["-s", f"{W}x{H}", "-r", str(FPS), "-i", "-", "-frames:v", str(FRAMES), "-an"]
        + [*motion.ENCODER_ARGS, *motion.TIMESCALE_ARGS, str(path)],
        stdin=subprocess.PIPE,
    )
    assert proc.stdin is not None
    for n in range(FRAMES):
        im = base.copy()
        draw = ImageDraw.Draw(im)
        for cid, face in FACES.items():
            (mx, my), half = face["mouth"], MOUTH / 2
            tall = 1.5 + 0.35 * MOUTH * min(1.0, opening[cid][n])
            draw.ellipse((mx - half, my - tall, mx + half, my + tall), fill=(90, 20, 30))
        # the camera move, as motion.project says it (an affine map: a zoom and a shift)
        ox, oy, _ = motion.project(CAMERA, W, H, FRAMES, n, 0.0, 0.0)
        sx = motion.project(CAMERA, W, H, FRAMES, n, float(W), 0.0)[0] - ox
        sy = motion.project(CAMERA, W, H, FRAMES, n, 0.0, float(H))[1] - oy
        sx, sy = sx / W, sy / H
        inverse = (1 / sx, 0, -ox / sx, 0, 1 / sy, -oy / sy)
        frame = im.transform((W, H), Image.Transform.AFFINE, inverse, Image.Resampling.BICUBIC)
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sync")
    lines = [_speech(11, 1.5), _speech(12, 1.4)]
    out: dict[str, Path] = {"root": root}
    for i, samples in enumerate(lines):
        out[f"line{i}"] = _write_wav(root / f"line{i}.wav", samples)
    out["good"] = _clip(root / "good.mp4", {0: ("ana", 0), 1: ("bob", 0)}, lines)
    out["swapped"] = _clip(root / "swapped.mp4", {0: ("bob", 0), 1: ("ana", 0)}, lines)
    out["late"] = _clip(root / "late.mp4", {0: ("ana", 4), 1: ("bob", 4)}, lines)
    out["still"] = _clip(root / "still.mp4", {}, lines)
    return out


def judge(made, subject: str, out: str, off_screen: bool = False, **expect):
    lines = [
        {"input": f"line{i}", "offset_samples": OFFSETS[i], "speaker": SPEAKERS[i], "off_screen": off_screen}
        for i in range(2)
    ]
    want = {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "sample_rate": RATE, "camera": CAMERA}
    want |= {"faces": FACES, "lines": lines, "take": 1} | expect
    params = {"target": {"op": "lipsync", "stage": "lipsync", "take": 1}, "thresholds": {}, "expect": want}
    inputs = {"subject": made[subject], "line0": made["line0"], "line1": made["line1"]}
    return BACKEND.run("judge", inputs, params, made["root"] / out)


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in result.meta["checks"]}


NAMES = ["shape", "sync:0", "speaker:0", "offset:0", "sync:1", "speaker:1", "offset:1"]


def test_right_speaker_in_time_passes_with_the_figures(made):
    """Each line's speaker's mouth follows it in time: every check passes, with the figures."""
    result = judge(made, "good", "good")
    got = checks(result)
    assert list(got) == NAMES
    assert result.meta["verdict"] == "pass", result.meta
    for i in range(2):
        assert got[f"sync:{i}"]["value"] >= THRESHOLDS["min_correlation"][0], got
        assert got[f"speaker:{i}"]["value"] > 0.3, got
        assert got[f"offset:{i}"]["value"] == 0, got
    assert "ana's mouth follows the line best (ana 0." in got["speaker:0"]["detail"]
    assert 0.6 <= result.meta["score"] <= 1.0
    on_disk = json.loads(result.files["verdict"].read_text())
    assert on_disk == result.meta
    with Image.open(result.files["evidence"]) as im:
        assert im.size == (720, 240)


def test_the_other_face_moving_fails_speaker(made):
    """Bob's mouth moves to Ana's line (and hers to his): speaker fails for both lines, naming who moved."""
    result = judge(made, "swapped", "swapped")
    got = checks(result)
    assert result.meta["verdict"] == "fail"
    assert not got["speaker:0"]["passed"] and not got["speaker:1"]["passed"], got
    assert got["speaker:0"]["detail"].startswith("bob's mouth follows the line best")
    assert got["speaker:0"]["value"] < 0
    assert not got["sync:0"]["passed"], got


def test_a_mouth_four_frames_late_fails_offset(made):
    """The right mouths move 4 frames after the audio: offset fails with +4, sync and speaker pass."""
    result = judge(made, "late", "late")
    got = checks(result)
    assert result.meta["verdict"] == "fail"
    for i in range(2):
        assert got[f"offset:{i}"]["value"] == 4 and not got[f"offset:{i}"]["passed"], got
        assert got[f"sync:{i}"]["passed"] and got[f"speaker:{i}"]["passed"], got
    assert "4 frames late (0.17 s)" in got["offset:0"]["detail"]
    good = judge(made, "good", "good-again")
    assert result.meta["score"] < good.meta["score"]


def test_a_still_mouth_fails_sync(made):
    """Nobody's mouth moves while the lines play: sync fails for both lines."""
    result = judge(made, "still", "still")
    got = checks(result)
    assert result.meta["verdict"] == "fail"
    for i in range(2):
        assert not got[f"sync:{i}"]["passed"], got
        assert got[f"sync:{i}"]["value"] < 0.45, got
    assert result.meta["score"] < 0.45


def test_off_screen_lines_pass_without_a_mouth(made):
    """Lines spoken off screen expect no mouth to move: skipped checks that say so, all passed."""
    result = judge(made, "still", "off", off_screen=True)
    got = checks(result)
    assert list(got) == NAMES
    assert result.meta["verdict"] == "pass", result.meta
    assert "off screen" in got["sync:0"]["detail"] and got["sync:0"]["value"] is None
    assert result.meta["score"] == 1.0


def test_a_wrong_frame_count_fails_shape(made):
    """A clip of 96 frames where the lipsync action made 100: shape fails, the lines are not measured."""
    result = judge(made, "good", "shape", frames=100)
    got = checks(result)
    assert list(got) == NAMES
    assert not got["shape"]["passed"] and got["shape"]["value"] == FRAMES
    assert "96 frames" in got["shape"]["detail"] and "100 frames wanted" in got["shape"]["detail"]
    assert not any(c["passed"] for c in result.meta["checks"])
    assert result.meta["score"] == 0.0


def test_an_unreadable_clip_is_a_retryable_failure_to_measure(made):
    """A clip ffprobe cannot read is the judge failing to measure: retryable, never a verdict."""
    broken = made["root"] / "broken.mp4"
    broken.write_bytes(made["good"].read_bytes()[:2000])
    made = dict(made) | {"broken": broken}
    with pytest.raises(StageError) as caught:
        judge(made, "broken", "broken")
    assert caught.value.retryable
