"""The picture judge ``frames`` on real keyframes and clips from the embedded backends (Pillow,
ffmpeg-motion) and on real defective clips from tests.support.defect_video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.support.defect_video import DefectVideo
from workers.api import StageError
from workers.image.pillow import BACKEND as IMAGES
from workers.judge.frames import BACKEND, THRESHOLDS
from workers.video.motion import BACKEND as MOTION

pytestmark = pytest.mark.media

W, H, FPS, FRAMES = 270, 480, 12, 24
STYLE = {"description": "neon noir", "palette": ["#0b1030", "#2d1b4e", "#ff8a3d", "#29e3ff"]}
MEI = {
    "id": "mei",
    "name": "Mei",
    "look": {"description": "short black bob, red raincoat", "hair": "#111111", "outfit": "#c0392b"},
}
CLIP = {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "camera": "push_in"}
CLIP_CHECKS = ["size", "fps", "frame_count", "codec", "black_frames", "frozen_frames", "character:mei"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A sheet figure, a keyframe with the character and ffmpeg-motion's push_in clip of it."""
    root = tmp_path_factory.mktemp("frames")
    (root / "sheet").mkdir()
    figure = IMAGES.run("sheet", {}, {"style": STYLE, "character": MEI, "seed": 7}, root / "sheet").files["figure"]
    params = {
        "style": STYLE,
        "width": W,
        "height": H,
        "seed": [1, "s01-01"],
        "location": "tea house",
        "time_of_day": "night",
        "description": "Mei finds a letter.",
        "framing": "medium",
        "characters": ["mei"],
    }
    (root / "kf").mkdir()
    keyframe = IMAGES.run("keyframe", {"sheet:mei": figure}, params, root / "kf").files["keyframe"]
    clip = MOTION.run("clip", {"keyframe": keyframe}, CLIP, root / "clip").files["clip"]
    return {"root": root, "figure": figure, "keyframe": keyframe, "clip": clip}


def judge(made, subject: Path, op: str = "clip", out: str = "judged", thresholds=None, **expect):
    want = {"width": W, "height": H, "characters": ["mei"]}
    if op == "clip":
        want |= {"fps": FPS, "frames": FRAMES, "camera": "push_in"}
    params = {"target": {"op": op, "stage": "video"}, "thresholds": thresholds or {}, "expect": want | expect}
    out_dir = made["root"] / out
    out_dir.mkdir(exist_ok=True)
    return BACKEND.run("judge", {"subject": subject, "sheet:mei": made["figure"]}, params, out_dir)


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in result.meta["checks"]}


def defect_clip(made, take: int, **config) -> Path:
    out = made["root"] / f"defect-{take}-{config.get('good_from', 3)}"
    return (
        DefectVideo("defects", config)
        .run("clip", {"keyframe": made["keyframe"]}, CLIP | {"take": take}, out)
        .files["clip"]
    )


def test_good_keyframe_passes_every_check(made):
    """The embedded keyframe passes size, black and character checks; verdict.json says the same."""
    result = judge(made, made["keyframe"], op="keyframe", out="kf-good")
    assert result.meta["verdict"] == "pass", result.meta
    assert [c["name"] for c in result.meta["checks"]] == ["size", "black_frames", "character:mei"]
    assert json.loads(result.files["verdict"].read_text()) == result.meta
    assert result.meta["score"] == 1.0
    assert Image.open(result.files["evidence"]).height == 320


def test_good_clip_passes_every_check_with_a_strip_of_frames(made):
    """ffmpeg-motion's push_in clip passes every check; the evidence is five frames 160 px high."""
    result = judge(made, made["clip"], out="clip-good")
    assert result.meta["verdict"] == "pass", result.meta
    assert [c["name"] for c in result.meta["checks"]] == CLIP_CHECKS
    got = checks(result)
    assert got["frame_count"]["value"] == FRAMES and got["black_frames"]["value"] == 0.0
    assert got["character:mei"]["value"] >= THRESHOLDS["min_character_similarity"][0]
    strip = Image.open(result.files["evidence"])
    assert strip.height == 160 and strip.width >= 5 * 90


def test_black_clip_fails_on_black_frames_only(made):
    """DefectVideo's take 1 is black: black_frames fails with every frame counted; size, fps, frames pass."""
    result = judge(made, defect_clip(made, 1), out="black")
    got = checks(result)
    assert result.meta["verdict"] == "fail"
    assert not got["black_frames"]["passed"] and got["black_frames"]["value"] == 1.0
    assert got["black_frames"]["detail"] == f"{FRAMES} of {FRAMES} frames black"
    assert all(got[name]["passed"] for name in ("size", "fps", "frame_count", "codec"))


def test_black_keyframe_fails_on_black_frames(made):
    """A black picture of the right size fails the keyframe's black check."""
    path = made["root"] / "black.png"
    Image.new("RGB", (W, H), (3, 3, 3)).save(path)
    got = checks(judge(made, path, op="keyframe", out="kf-black"))
    assert not got["black_frames"]["passed"] and got["size"]["passed"]


def test_still_clip_fails_on_frozen_frames_when_the_camera_should_move(made, tmp_path):
    """A clip of still frames fails frozen_frames when a push_in was asked; for a static camera
    the check is not measured and passes."""
    still = MOTION.run("clip", {"keyframe": made["keyframe"]}, CLIP | {"camera": "static"}, tmp_path).files["clip"]
    got = checks(judge(made, still, out="frozen"))
    assert not got["frozen_frames"]["passed"] and got["frozen_frames"]["value"] > 0.9
    assert got["black_frames"]["passed"] and got["character:mei"]["passed"]
    static = checks(judge(made, still, out="static", camera="static"))
    assert static["frozen_frames"]["passed"] and static["frozen_frames"]["value"] is None
    assert "static" in static["frozen_frames"]["detail"]


def test_wrong_colours_fail_character_consistency(made):
    """DefectVideo's take 2 (channels rotated) fails character:mei with the measured similarity;
    size, black and frozen pass."""
    result = judge(made, defect_clip(made, 2), out="colours")
    got = checks(result)
    mei = got["character:mei"]
    assert result.meta["verdict"] == "fail"
    assert not mei["passed"] and mei["value"] < mei["threshold"] == THRESHOLDS["min_character_similarity"][0]
    assert f"{mei['value']:.2f}" in mei["detail"]
    assert all(got[name]["passed"] for name in ("size", "fps", "frame_count", "codec", "black_frames", "frozen_frames"))
    assert 0 < result.meta["score"] < 1


def test_defect_video_delegates_from_good_from(made):
    """From take ``good_from`` DefectVideo's clip is ffmpeg-motion's, byte for byte."""
    assert defect_clip(made, 2, good_from=2).read_bytes() == made["clip"].read_bytes()
    assert DefectVideo("d", {}).defect(3) == "good" and DefectVideo("d", {}).defect(2) == "wrong_colours"


@pytest.mark.parametrize(
    ("expect", "failing"),
    [({"width": 272}, "size"), ({"fps": 24}, "fps"), ({"frames": 25}, "frame_count")],
)
def test_wrong_size_fps_or_frame_count_fails(made, expect, failing):
    """A clip that is not the asked size, rate or length fails the check that says so, with both figures."""
    got = checks(judge(made, made["clip"], out=f"wrong-{failing}", **expect))
    assert [name for name, c in got.items() if not c["passed"]] == [failing]
    assert str(next(iter(expect.values()))) in got[failing]["detail"]


@pytest.mark.parametrize("op", ["clip", "keyframe"])
def test_unreadable_subject_raises_retryable(made, op):
    """A subject that is not a picture or a video cannot be measured: a retryable StageError, no verdict."""
    path = made["root"] / f"garbage-{op}.bin"
    path.write_bytes(b"\x00not media at all" * 64)
    with pytest.raises(StageError) as err:
        judge(made, path, op=op, out=f"garbage-{op}")
    assert err.value.retryable


def test_unknown_threshold_is_refused_and_an_override_applies(made):
    """An unknown threshold name is refused (not retryable); a known one overrides the default."""
    with pytest.raises(StageError, match="unknown threshold 'max_blur'") as err:
        judge(made, made["keyframe"], op="keyframe", out="unknown", thresholds={"max_blur": 0.1})
    assert not err.value.retryable
    strict = checks(
        judge(made, made["keyframe"], op="keyframe", out="strict", thresholds={"min_character_similarity": 1.0})
    )
    assert not strict["character:mei"]["passed"] and strict["character:mei"]["threshold"] == 1.0
