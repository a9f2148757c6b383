"""A video backend (a studio's own class) that renders defects on purpose, take by take, so the
judges and the takes that follow their verdicts can be tested on real clips.

Settings: ``FARM_BACKENDS='{"defects": {"kind": "tests.support.defect_video:DefectVideo",
"stage": "video", "good_from": 3}}'``. Params are workers.video.motion's clip params plus ``take``
(1-based): take 1 is an all-black clip; takes 2 up to ``good_from - 1`` show the characters in the
wrong colours (the keyframe recoloured before the camera move: red from blue, green from red,
blue from inverted green, so greys, black and white turn coloured too, not just hues); take
``good_from`` and later are exactly what ffmpeg-motion makes. Every take is encoded by ffmpeg-motion
itself, so size, fps, frame count and encoder settings (ENCODER_ARGS) are always right.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from workers.api import ConfigError, Estimate, StageError, StageResult, config_version
from workers.video import motion


class DefectVideo:
    """op "clip": a black take, then wrong-colour takes, then good ones from take ``good_from``."""

    stage, kind = "video", "tests.support.defect_video:DefectVideo"
    ops = ("clip",)
    tools = ("ffmpeg",)
    resources = motion.BACKEND.resources

    def __init__(self, name: str, config: Mapping[str, Any]):
        good_from = config.get("good_from", 3)
        if not isinstance(good_from, int) or isinstance(good_from, bool) or good_from < 1:
            raise ConfigError(f"backends.{name}.good_from: must be a whole number from 1 up, not {good_from!r}")
        self.name, self.good_from = name, good_from
        # the first good take changes what every take before it looks like, so it enters the version
        self.version = config_version("1", {"good_from": good_from}, ("good_from",))

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return motion.BACKEND.estimate(op, params)

    def defect(self, take: int) -> str:
        """What take ``take`` shows: "black", "wrong_colours" or "good"."""
        return "good" if take >= self.good_from else "black" if take == 1 else "wrong_colours"

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        take = params.get("take", 1)
        if not isinstance(take, int) or isinstance(take, bool) or take < 1:
            raise StageError(f"video {self.name}: params.take = {take!r} must be a whole number from 1 up")
        defect = self.defect(take)
        if defect == "good":
            return motion.BACKEND.run(op, inputs, params, out_dir)
        keyframe = inputs.get("keyframe")
        if keyframe is None:
            raise StageError(f"video {self.name}: input 'keyframe' is missing")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(keyframe) as im:
                picture = im.convert("RGB")
        except OSError as exc:
            raise StageError(f"video {self.name}: keyframe is not a readable image: {exc}") from exc
        if defect == "black":
            picture = Image.new("RGB", picture.size, (0, 0, 0))
        else:
            red, green, blue = picture.split()
            # measured on every character of the shipped examples: similarity 0.03-0.17 (a channel
            # rotation alone leaves a black-and-white costume as it was: up to 0.59)
            picture = Image.merge("RGB", (blue, red, green.point(lambda v: 255 - v)))
        made = out_dir / f"keyframe-{defect}.png"
        picture.save(made)
        result = motion.BACKEND.run(op, {**inputs, "keyframe": made}, params, out_dir / "clip")
        result.meta["defect"] = defect
        return result
