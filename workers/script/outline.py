"""The embedded script writer: expands an outline's beats into scenes, shots and lines.

Deterministic (same outline and seed, same script) and offline. Each beat becomes a scene that opens
on an establishing shot; each line gets its own shot on its speaker, alternating close and medium
framing; camera moves are drawn from a generator seeded by the episode's seed and the beat. Shot
lengths never depend on the words of a line, so editing one line re-renders only that line's shot:
a dialogue shot asks for a minimum and the farm stretches it to its voiced lines, and the time left
to reach the target (counting each line at a nominal length) goes to the establishing shots.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farm.core.script import Camera, Framing, Line, Scene, Script, Shot
from workers.api import Estimate, Resources, StageError, StageResult, Usage

_MOVES_ESTABLISH = (Camera.push_in, Camera.pan_left, Camera.pan_right, Camera.pull_out, Camera.pan_up)
_MOVES_DIALOGUE = (Camera.static, Camera.push_in, Camera.push_in, Camera.pan_left, Camera.pan_right, Camera.pull_out)
_MIN_ESTABLISH_S, _MAX_SHOT_S = 2.0, 30.0
_DIALOGUE_MIN_S = 0.5  # the farm stretches a dialogue shot to fit its voiced line
_NOMINAL_LINE_S = 2.8  # a typical line with its lead-in and tail, for filling the target length


def write_script(params: Mapping[str, Any]) -> Script:
    series, episode = params["series"], params["episode"]
    names = {c["id"]: c["name"] for c in series["characters"]}
    style = series["style"]["description"]
    scenes: list[Scene] = []
    for bi, beat in enumerate(episode["outline"]):
        rng = random.Random(f"{episode['seed']}:{bi}:{beat['beat']}")
        speakers = [line["speaker"] for line in beat["lines"]]
        present = list(dict.fromkeys([*beat.get("characters", []), *speakers]))
        sid = f"s{bi + 1:02d}"
        shots = [
            Shot(
                id=f"{sid}-01",
                description=f"{beat['location']}, {beat['time_of_day']}. {beat['beat']} ({style})",
                characters=present,
                framing=Framing.wide,
                camera=rng.choice(_MOVES_ESTABLISH),
                duration=_MIN_ESTABLISH_S,
            )
        ]
        for li, line in enumerate(beat["lines"]):
            who = line["speaker"]
            framing = Framing.close if li % 2 == 0 else Framing.medium
            others = [c for c in present if c != who][:1] if framing is Framing.medium else []
            shots.append(
                Shot(
                    id=f"{sid}-{li + 2:02d}",
                    description=f"{names[who]} speaks. {beat['beat']}",
                    characters=[who, *others],
                    framing=framing,
                    camera=rng.choice(_MOVES_DIALOGUE),
                    duration=_DIALOGUE_MIN_S,
                    lines=[Line(speaker=who, text=line["text"])],
                )
            )
        scenes.append(Scene(id=sid, location=beat["location"], time_of_day=beat["time_of_day"], shots=shots))
    return Script(title=episode["title"], language=series["language"], scenes=_fit(scenes, episode["target_seconds"]))


def _fit(scenes: list[Scene], target: float) -> list[Scene]:
    """Share the time the lines will not fill among the establishing shots, evenly."""
    lines = sum(len(shot.lines) for scene in scenes for shot in scene.shots)
    spare = target - lines * _NOMINAL_LINE_S
    each = round(min(_MAX_SHOT_S, max(_MIN_ESTABLISH_S, spare / len(scenes))), 2)
    return [
        scene.model_copy(
            update={
                "shots": [
                    shot.model_copy(update={"duration": each}) if shot.framing is Framing.wide else shot
                    for shot in scene.shots
                ]
            }
        )
        for scene in scenes
    ]


class OutlineWriter:
    """Script stage, embedded default: outline -> Script JSON (see module docstring)."""

    stage, name, version = "script", "outline", "1"
    ops = ("script",)
    resources = Resources(num_cpus=0.5)
    tools: tuple[str, ...] = ()

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=0.05)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        if op != "script":
            raise StageError(f"{self.name} cannot do {op!r}")
        script = write_script(params)
        path = out_dir / "script.json"
        path.write_text(json.dumps(script.model_dump(mode="json"), ensure_ascii=False, indent=1), encoding="utf-8")
        shots = script.shots()
        return StageResult(
            files={"script": path},
            meta={
                "scenes": len(script.scenes),
                "shots": len(shots),
                "seconds": round(sum(s.duration for s in shots), 2),
            },
            usage=Usage(model="outline"),
        )


BACKEND = OutlineWriter()
