"""Who talks on screen, in the plan (pure): a shot's lip-sync, or its speech-native clip.

Two routes make a character's mouth move with its line, and a studio picks one by backend:

- a **lip-sync** backend (stage ``lipsync``) re-animates the mouth of a shot's clip to its dubbed
  lines: one ``lipsync`` action between the clip and the mux, judged and taken like a clip;
- a **speech-native** video backend (feature ``speech``) makes the clip with the character already
  speaking: the clip action receives the shot's lines (text, speaker, the character's voice) and
  returns, beside the clip, its own sound (output ``audio``) and each line's start and end in the
  clip (meta ``lines``). The plan skips ``lipsync`` for that shot, the mux lays the clip's own sound
  under it, and the subtitle cues follow the returned times. Dubbing still runs where the backend
  asks for the dubbed lines as a voice reference (feature ``voice_reference``: the shot is laid out
  around them, as any shot); otherwise no line is dubbed and the shot is sized by the lines' text at
  the language's speaking rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from farm.core.actions import Action, EpisodeJob, Ref, _Builder, canonical
from farm.core.judged import Judged
from farm.core.script import Shot
from farm.core.shots import ScriptPlan, ShotLayout, ShotPlan
from farm.core.spec import SAMPLE_RATE

SPEECH, VOICE_REFERENCE = "speech", "voice_reference"


def speech_native(job: EpisodeJob) -> bool:
    """Does the episode's video backend make clips with the characters already speaking?"""
    return SPEECH in job.backends["video"].features


def dubs(job: EpisodeJob) -> bool:
    """Are the episode's lines voiced by the dubbing stage? Always, unless its clips speak for
    themselves and their backend wants no dubbed line as a reference."""
    features = job.backends["video"].features
    return SPEECH not in features or VOICE_REFERENCE in features


def speech_lines(
    job: EpisodeJob, shot: Shot, layout: ShotLayout, voiced: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, Ref]]:
    """A speech-native clip's ``lines`` param and line inputs: each line's text, speaker, the
    character's name and voice, and where the plan would place it (the dubbed line itself, as
    ``input``, when the backend takes one)."""
    lines, inputs = [], {}
    for i, (line, offset) in enumerate(zip(shot.lines, layout.offsets)):
        character = job.series.character(line.speaker)
        said: dict[str, Any] = {
            "text": line.text,
            "speaker": line.speaker,
            "name": character.name,
            "voice": character.voice.model_dump(mode="json", exclude_none=True),
            "off_screen": line.off_screen,
            "offset_samples": offset,
        }
        if voiced:
            said["input"] = f"line{i}"
            inputs[f"line{i}"] = Ref(voiced[i], "audio")
        lines.append(said)
    return lines, inputs


def speech_cues(
    job: EpisodeJob, shot: Shot, start: int, layout: ShotLayout, times: Sequence[Mapping[str, float]]
) -> list[dict[str, Any]]:
    """The subtitle cues of a speech-native shot starting ``start`` samples into the episode: each
    line from and to where the clip's backend said it is spoken."""
    cues = []
    base = start / SAMPLE_RATE
    for line, t in zip(shot.lines, times):
        end = min(float(t["end"]), layout.total_samples / SAMPLE_RATE)
        cues.append(
            {
                "start": base + float(t["start"]),
                "end": base + end,
                "speaker": job.series.character(line.speaker).name,
                "text": line.text,
            }
        )
    return cues


def lipsync(
    b: _Builder,
    judged: Judged,
    fixed: ScriptPlan,
    part: ShotPlan,
    clip: str,
    voiced: list[str],
    layout: ShotLayout,
    faces: Mapping[str, Any],
    seen: Mapping[str, Any],
) -> str | None:
    """A shot's lip-sync: its clip with the speakers' mouths moving to their lines (the take in use, or
    None while its judges have not answered). ``faces``: those the backend moves (the embedded one's
    params); ``seen``: where the keyframe's faces are, once known, which its judges watch (a model that
    finds the faces itself is judged on them too; the judges are planned again once they are known,
    long before the lip-sync they judge has run)."""
    shot, series = part.shot, b.job.series
    lines = [
        {"input": f"line{i}", "offset_samples": o, "speaker": line.speaker, "off_screen": line.off_screen}
        for i, (line, o) in enumerate(zip(shot.lines, layout.offsets))
    ]
    params = {
        "width": series.resolution.width,
        "height": series.resolution.height,
        "fps": series.fps,
        "frames": layout.frames,
        "sample_rate": SAMPLE_RATE,
        "camera": shot.camera.value,
        "faces": dict(faces),
        "lines": lines,
    }
    memo = ("lipsync", clip, tuple(voiced), canonical(params))
    lip = fixed.timed.get(memo)
    if lip is None:
        inputs = {"clip": Ref(clip, "clip")} | {f"line{i}": Ref(k, "audio") for i, k in enumerate(voiced)}
        lip = fixed.timed[memo] = b.make("lipsync", "lipsync", params | {"take": 1}, inputs, f"lipsync {shot.id}")
    b.actions.append(lip)
    heard = {f"line{i}": Ref(k, "audio") for i, k in enumerate(voiced)}
    expect = params if params["faces"] or not seen else params | {"faces": dict(seen)}
    return judged.take(lip, "lipsync", "clip", expect, heard, shot.id).chosen


def faces_to_move(job: EpisodeJob, shot: Shot, faces: Mapping[str, Any]) -> bool:
    """Has the shot a mouth to move? A lip-sync backend that works from the keyframe's faces (feature
    "faces", the embedded one) has none when no speaker on screen has a face there; one that finds
    faces itself (a lip-sync model) always may."""
    if "faces" not in job.backends["lipsync"].features:
        return True
    return any(line.speaker in faces for line in shot.lines if not line.off_screen)


def is_speech_clip(action: Action) -> bool:
    """Is ``action`` a speech-native clip (one that returns its own sound and line times)?"""
    return action.op == "clip" and bool(action.params.get("lines"))
