"""The embedded script writer: expands an outline's beats into scenes, shots and lines.

Deterministic (same outline and seed, same script) and offline. Each beat becomes a scene that opens
on an establishing shot; each line gets its own shot on its speaker, alternating close and medium
framing; camera moves are drawn from a generator seeded by the episode's seed and the beat. Shot
lengths are padded so the episode lands near its target length: lines are estimated from the
language's speaking rate, and the farm stretches any shot whose voiced lines need more time.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Mapping

from farm.script import Camera, Framing, Line, Scene, Script, Shot
from workers.api import Estimate, Resources, StageError, StageResult, Usage

_MOVES_ESTABLISH = (Camera.push_in, Camera.pan_left, Camera.pan_right, Camera.pull_out, Camera.pan_up)
_MOVES_DIALOGUE = (Camera.static, Camera.push_in, Camera.push_in, Camera.pan_left, Camera.pan_right, Camera.pull_out)
_ESTABLISH_S = 2.5
_BREATH_S = 1.0  # lead, tail and a little air around each line (the farm's exact layout is in farm.plan)
_MAX_SHOT_S = 30.0


def _speech_seconds(text: str, units_per_second: float) -> float:
    cjk = len(re.findall(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]", text))
    words = len(re.findall(r"[^\W\d_]+|\d+", re.sub(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]", " ", text)))
    return max(0.6, (cjk + words) / units_per_second)


def write_script(params: Mapping[str, Any]) -> Script:
    series, episode = params["series"], params["episode"]
    ups = float(params["units_per_second"])
    names = {c["id"]: c["name"] for c in series["characters"]}
    style = series["style"]["description"]
    scenes: list[Scene] = []
    for bi, beat in enumerate(episode["outline"]):
        rng = random.Random(f"{episode['seed']}:{bi}:{beat['beat']}")
        speakers = [line["speaker"] for line in beat["lines"]]
        present = list(dict.fromkeys([*beat.get("characters", []), *speakers]))
        sid = f"s{bi + 1:02d}"
        shots = [Shot(
            id=f"{sid}-01",
            description=f"{beat['location']}, {beat['time_of_day']}. {beat['beat']} ({style})",
            characters=present, framing=Framing.wide, camera=rng.choice(_MOVES_ESTABLISH),
            duration=_ESTABLISH_S,
        )]
        for li, line in enumerate(beat["lines"]):
            who = line["speaker"]
            framing = Framing.close if li % 2 == 0 else Framing.medium
            others = [c for c in present if c != who][:1] if framing is Framing.medium else []
            shots.append(Shot(
                id=f"{sid}-{li + 2:02d}",
                description=f"{names[who]} speaks. {beat['beat']}",
                characters=[who, *others], framing=framing, camera=rng.choice(_MOVES_DIALOGUE),
                duration=round(min(_MAX_SHOT_S, _speech_seconds(line["text"], ups) + _BREATH_S), 2),
                lines=[Line(speaker=who, text=line["text"])],
            ))
        scenes.append(Scene(id=sid, location=beat["location"], time_of_day=beat["time_of_day"], shots=shots))
    return Script(title=episode["title"], language=series["language"], scenes=_fit(scenes, episode["target_seconds"]))


def _fit(scenes: list[Scene], target: float) -> list[Scene]:
    """Pad shot durations (establishing shots first) so the episode is about ``target`` seconds."""
    total = sum(shot.duration for scene in scenes for shot in scene.shots)
    spare = target - total
    if spare <= 0:
        return scenes
    shots = [shot for scene in scenes for shot in scene.shots]
    weights = [3.0 if shot.framing is Framing.wide else 1.0 for shot in shots]
    extra = {shot.id: spare * w / sum(weights) for shot, w in zip(shots, weights)}
    return [scene.model_copy(update={"shots": [
        shot.model_copy(update={"duration": round(min(_MAX_SHOT_S, shot.duration + extra[shot.id]), 2)})
        for shot in scene.shots]}) for scene in scenes]


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
        return StageResult(files={"script": path},
                           meta={"scenes": len(script.scenes), "shots": len(shots),
                                 "seconds": round(sum(s.duration for s in shots), 2)},
                           usage=Usage(model="outline"))


BACKEND = OutlineWriter()
