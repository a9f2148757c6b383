"""The Script a script stage must produce: scenes -> shots -> dialogue lines.

A hand-written script in an episode spec has the same shape. The model is pure data; checking it
against a series (speakers are its characters) is ``check_against``.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class Camera(str, Enum):
    static = "static"
    push_in = "push_in"
    pull_out = "pull_out"
    pan_left = "pan_left"
    pan_right = "pan_right"
    pan_up = "pan_up"
    pan_down = "pan_down"


class Framing(str, Enum):
    wide = "wide"
    medium = "medium"
    close = "close"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Line(_Model):
    speaker: Slug = Field(description="id of the character who says the line")
    text: Text
    off_screen: bool = Field(False, description="a voice from outside the frame: no mouth moves for it")


class Shot(_Model):
    id: Slug
    description: Text = Field(description="what the camera sees")
    characters: list[Slug] = Field(default_factory=list, description="who is in frame")
    framing: Framing = Framing.medium
    camera: Camera = Camera.static
    duration: float = Field(2.0, ge=0.5, le=30.0, description="seconds; stretched to fit the lines")
    lines: list[Line] = Field(default_factory=list)


class Scene(_Model):
    id: Slug
    location: Text
    time_of_day: Annotated[str, StringConstraints(max_length=40)] = "day"
    shots: list[Shot] = Field(min_length=1)


class Script(_Model):
    schema_version: int = SCHEMA_VERSION
    title: Text
    language: Slug
    scenes: list[Scene] = Field(min_length=1)

    def shots(self) -> list[Shot]:
        return [shot for scene in self.scenes for shot in scene.shots]


def check_against(script: Script, characters: set[str]) -> list[tuple[str, str]]:
    """Problems (field path, message) that make ``script`` unusable with these characters."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    known = ", ".join(sorted(characters))
    for si, scene in enumerate(script.scenes):
        for hi, shot in enumerate(scene.shots):
            where = f"scenes[{si}].shots[{hi}]"
            if shot.id in seen:
                problems.append((f"{where}.id", f"shot id {shot.id!r} is used twice; give each shot its own id"))
            seen.add(shot.id)
            for ci, who in enumerate(shot.characters):
                if who not in characters:
                    problems.append(
                        (f"{where}.characters[{ci}]", f"{who!r} is not a character of the series (known: {known})")
                    )
            for li, line in enumerate(shot.lines):
                if line.speaker not in characters:
                    problems.append(
                        (
                            f"{where}.lines[{li}].speaker",
                            f"{line.speaker!r} is not a character of the series (known: {known})",
                        )
                    )
    return problems
