"""Episode -> graph of content-addressed actions. Pure: values in, values out.

The graph grows as facts arrive: the script's shots are known only once the script action has run,
and a shot's clip length only once its lines are voiced. ``plan_episode`` is therefore called again
with what is known so far (the script, each line's length in samples) and returns every action that
can be determined now; the caller runs the ready ones and plans again.

An action's key is the SHA-256 of the canonical JSON of what it depends on: stage, op, backend and
its version, parameters, the keys of its inputs and the studio's cache namespace (DESIGN.md,
invariant 1). Nothing episode-specific enters a key that does not change the output, so a line
spoken twice, or a character sheet used by every episode of a series, is made once.

Example::

    plan = plan_episode(job, script=None, line_samples={})
    plan.actions[0].op            # "script" (or "sheet" when the episode has a hand-written script)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from farm.core.actions import Action, BackendChoice, EpisodeJob, Ref, _Builder, action_key, canonical
from farm.core.judged import Judged
from farm.core.script import Framing, Line, Scene, Script, Shot
from farm.core.shots import ScriptPlan, ShotLayout, ShotPlan, layout_shot
from farm.core.spec import SAMPLE_RATE, Series
from farm.core.takes import NO_FACTS, Facts, Takes, Verdict, combine
from farm.core.talking import dubs, faces_to_move, lipsync, speech_cues, speech_lines, speech_native

__all__ = [  # the actions and their keys live in farm.core.actions; the planner is where callers find them
    "Action",
    "BackendChoice",
    "EpisodeJob",
    "EpisodePlan",
    "Ref",
    "ScriptPlan",
    "ShotLayout",
    "action_key",
    "canonical",
    "layout_shot",
    "plan_episode",
    "plan_script",
    "script_params",
    "sketch",
    "spoken_samples",
]

LOUDNESS_LUFS, TRUE_PEAK_DB = -14.0, -1.5

STAGES = ("script", "image", "video", "dubbing", "lipsync", "assembly")
JUDGE = "judge"  # the stage (and op) of judge actions (farm.core.takes), which no backend choice of a stage makes

# The outputs a finished action of each op must carry: what its dependants and the deliverables read.
OUTPUTS: Mapping[str, tuple[str, ...]] = {
    "script": ("script",),
    "sheet": ("sheet", "figure"),
    "keyframe": ("keyframe",),
    "line": ("audio",),
    "clip": ("clip",),
    "lipsync": ("clip",),
    "mux": ("shot",),
    "episode": ("video", "subtitles", "storyboard"),
    "judge": ("verdict",),
}
# The episode action's outputs that are delivered, and the file names people find them under.
DELIVERABLES: Mapping[str, str] = {"video": "episode.mp4", "subtitles": "episode.srt", "storyboard": "storyboard.png"}


@dataclass
class EpisodePlan:
    actions: list[Action]  # dependencies before dependants
    script_key: str | None  # None when the episode carries a hand-written script
    final_key: str | None  # the assembly action, once every shot's length is known
    takes: list[Takes] = field(default_factory=list)  # every judged keyframe, clip and line, with its takes
    final_judges: tuple[str, ...] = ()  # the judges of the assembled episode (its delivery checks)
    delivery: Verdict | None = None  # what they said, once every one has

    def by_key(self) -> dict[str, Action]:
        return {a.key: a for a in self.actions}

    @property
    def flagged(self) -> list[str]:
        """Why each shot that wants a person's look does (every take failed, or the budget stopped them)."""
        return [t.flagged for t in self.takes if t.flagged]


def _bible(series: Series) -> dict[str, Any]:
    return {
        "title": series.title,
        "language": series.language,
        "style": series.style.model_dump(mode="json"),
        "characters": [c.model_dump(mode="json", include={"id", "name", "look"}) for c in series.characters],
    }


def script_params(job: EpisodeJob) -> dict[str, Any]:
    ep = job.episode
    return {
        "series": _bible(job.series),
        "units_per_second": job.series.lang.units_per_second,
        "episode": {
            "number": ep.number,
            "title": ep.title,
            "target_seconds": ep.target_seconds,
            "seed": ep.seed,
            "outline": [b.model_dump(mode="json") for b in ep.outline or []],
        },
    }


def plan_script(job: EpisodeJob, script: Script | None, keyed: bool = True) -> ScriptPlan:
    """The actions ``script`` fixes (``script`` is ignored when the episode has its own). ``keyed``
    False: actions named by their labels, not keyed (a sketch's, for estimates only)."""
    b = _Builder(job, keyed)
    series, ep = job.series, job.episode
    script_key = None
    if ep.script is not None:
        script = ep.script
    else:
        script_key = b.add("script", "script", script_params(job), {}, f"script {ep.slug}").key
    if script is None:
        return ScriptPlan(tuple(b.actions), script_key, ())
    width, height = series.resolution.width, series.resolution.height
    style = series.style.model_dump(mode="json")
    sheets: dict[str, Ref] = {}
    cast = {who for shot in script.shots() for who in [*shot.characters, *(l.speaker for l in shot.lines)]}
    dubbed = dubs(job)  # a speech-native clip that wants no voice reference speaks its own lines
    for character in series.characters:
        if character.id in cast:
            params = {
                "style": style,
                "character": character.model_dump(mode="json", include={"id", "name", "look"}),
                "seed": series.seed,
            }
            sheets[character.id] = Ref(b.add("image", "sheet", params, {}, f"sheet {character.id}").key, "figure")
    shots: list[ShotPlan] = []
    for scene in script.scenes:
        keyframes = []
        for shot in scene.shots:
            # who is seen: its characters and who speaks, unless from outside the frame
            in_frame = list(dict.fromkeys([*shot.characters, *(l.speaker for l in shot.lines if not l.off_screen)]))
            kf_params = {
                "style": style,
                "width": width,
                "height": height,
                "seed": [ep.seed, shot.id],
                "location": scene.location,
                "time_of_day": scene.time_of_day,
                "description": shot.description,
                "framing": shot.framing.value,
                "characters": in_frame,
                "take": 1,
            }
            keyframes.append(
                b.add(
                    "image", "keyframe", kf_params, {f"sheet:{c}": sheets[c] for c in in_frame}, f"keyframe {shot.id}"
                )
            )
        for si, (shot, kf) in enumerate(zip(scene.shots, keyframes)):
            lines = []
            for i, line in enumerate(shot.lines if dubbed else ()):
                voice = series.character(line.speaker).voice.model_dump(mode="json", exclude_none=True)
                params = {
                    "text": line.text,
                    "voice": voice,
                    "speaker": line.speaker,
                    "sample_rate": SAMPLE_RATE,
                    "take": 1,
                }
                lines.append(b.add("dubbing", "line", params, {}, f"line {shot.id}#{i}"))
            shots.append(ShotPlan(shot, kf, keyframes[si + 1] if si + 1 < len(keyframes) else None, tuple(lines)))
    return ScriptPlan(tuple(b.actions), script_key, tuple(shots))


def plan_episode(
    job: EpisodeJob,
    script: Script | None,
    line_samples: Mapping[str, int],
    fixed: ScriptPlan | None = None,
    keyed: bool = True,
    facts: Facts = NO_FACTS,
    faces: Mapping[str, Mapping[str, Any]] | None = None,
    spoken: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
) -> EpisodePlan:
    """Every action of ``job`` that can be determined from what is known.

    ``script`` is the script action's output once it exists (ignored when the episode has its own);
    ``line_samples`` maps a line action's key to the length of its audio in samples; ``fixed`` is
    ``plan_script(job, script)`` when the caller kept it (made here otherwise); ``facts`` what the
    judges and reviewers said of takes (farm.core.takes): a judged keyframe, clip or line is used
    once a take of it has passed (or every take allowed has failed), so what reads it waits till then.
    ``faces``: where each keyframe's faces are (its manifest's meta, by its key), which a shot's
    lip-sync reads: a shot with dialogue is lip-synced once its keyframe's faces are known.
    ``spoken``: where a speech-native clip said its lines (its meta ``lines``, by its key;
    farm.core.talking), which the subtitle cues follow.
    Unkeyed (a sketch): every take is taken to pass.
    """
    fixed = fixed if fixed is not None else plan_script(job, script, keyed)
    if job.episode.script is None and script is None:
        return EpisodePlan(list(fixed.actions), fixed.script_key, None)
    b = _Builder(job, keyed)
    b.actions = list(fixed.actions)
    judged = Judged(b, job.judging, facts if keyed else replace(facts, assume_pass=True), fixed.timed)
    series, ep = job.series, job.episode
    width, height, fps = series.resolution.width, series.resolution.height, series.fps
    lang = series.lang
    shots: list[dict[str, Any]] = []
    cues: list[dict[str, Any]] = []
    inputs_final: dict[str, Ref] = {}
    start = 0
    complete = True
    # first/last-frame video backends end a shot's clip on the next shot's keyframe, within a scene
    # (a new scene is a cut, which the next clip's own first frame already makes)
    end_on_next = "last_frame" in job.backends["video"].features
    speaking = speech_native(job)  # its clips say their own lines (farm.core.talking)
    keyframes: dict[str, str | None] = {}  # take 1's key -> the take used (None: not known yet)
    for part in fixed.shots:
        first = part.keyframe
        expect = {"width": width, "height": height, "characters": _visible(first)}
        keyframes[first.key] = judged.take(first, "keyframe", "keyframe", expect, _sheets(first), part.shot.id).chosen
    for index, part in enumerate(fixed.shots):
        shot, kf = part.shot, keyframes[part.keyframe.key]
        lines: list[str | None] = []
        for said in part.lines:
            expect = {
                "text": said.params["text"],
                "language": series.language,
                "cjk": lang.cjk,
                "units_per_second": lang.units_per_second,
                "rate": int(said.params["voice"].get("rate", 175)),
                "sample_rate": SAMPLE_RATE,
            }
            lines.append(judged.take(said, "line", "audio", expect, {}, shot.id).chosen)
        last = keyframes[part.next_keyframe.key] if end_on_next and part.next_keyframe is not None else ""
        if kf is None or last is None or any(k is None or k not in line_samples for k in lines):
            complete = False
            continue
        voiced = [str(k) for k in lines]
        speaks = speaking and bool(shot.lines)  # the clip says its own lines
        if speaks and not voiced:  # nothing dubbed: sized by the lines' text
            samples = tuple(spoken_samples(line.text, series) for line in shot.lines)
        else:
            samples = tuple(line_samples[k] for k in voiced)
        layout = layout_shot(shot, list(samples), fps)
        clip_params: dict[str, Any] = {
            "width": width,
            "height": height,
            "fps": fps,
            "frames": layout.frames,
            "camera": shot.camera.value,
            "take": 1,
        }
        clip_inputs = {"keyframe": Ref(kf, "keyframe")} | ({"last": Ref(last, "keyframe")} if last else {})
        if speaks:
            asked, heard = speech_lines(job, shot, layout, voiced)
            clip_params |= {"sample_rate": SAMPLE_RATE, "lines": asked}
            clip_inputs |= heard
        memo = ("clip", index, kf, last, layout.frames) + ((tuple(voiced), samples) if speaks else ())
        clip = fixed.timed.get(memo)
        if clip is None:
            clip = fixed.timed[memo] = b.make("video", "clip", clip_params, clip_inputs, f"clip {shot.id}")
        b.actions.append(clip)
        expect = {k: clip_params[k] for k in ("width", "height", "fps", "frames", "camera")}
        expect["characters"] = _visible(part.keyframe)
        chosen = judged.take(clip, "clip", "clip", expect, _sheets(part.keyframe), shot.id).chosen
        if chosen is not None and shot.lines and not speaks and "lipsync" in job.backends:  # the mouth moves
            reads = keyed and "faces" in job.backends["lipsync"].features  # it moves the keyframe's faces
            known = (faces or {}).get(kf) if reads else {}
            if known is None:  # its keyframe's faces are not known yet
                chosen = None
            elif not keyed or faces_to_move(job, shot, known):
                seen = (faces or {}).get(kf) or {}  # a model finds the faces itself; its judge watches these
                chosen = lipsync(b, judged, fixed, part, chosen, voiced, layout, known, seen)
        times = None
        if chosen is not None and speaks:  # the cues follow where the clip said its lines
            times = (spoken or {}).get(chosen) if keyed else None
            if keyed and times is None:
                chosen = None
        if chosen is None:
            complete = False
            continue
        if speaks:  # the clip's own sound, as long as the shot
            mux_lines, mux_inputs = [{"input": "audio", "offset_samples": 0}], {"audio": Ref(chosen, "audio")}
        else:
            mux_lines = [{"input": f"line{i}", "offset_samples": o} for i, o in enumerate(layout.offsets)]
            mux_inputs = {f"line{i}": Ref(k, "audio") for i, k in enumerate(voiced)}
        mux = fixed.timed.get(("mux", chosen, tuple(voiced), samples))
        if mux is None:
            mux = fixed.timed[("mux", chosen, tuple(voiced), samples)] = b.make(
                "assembly",
                "mux",
                {
                    "fps": fps,
                    "frames": layout.frames,
                    "sample_rate": SAMPLE_RATE,
                    "total_samples": layout.total_samples,
                    "lines": mux_lines,
                },
                {"clip": Ref(chosen, "clip")} | mux_inputs,
                f"mux {shot.id}",
            )
        b.actions.append(mux)
        n = len(shots)
        inputs_final[f"shot{n}"] = Ref(mux.key, "shot")
        inputs_final[f"keyframe{n}"] = Ref(kf, "keyframe")
        shots.append(
            {
                "input": f"shot{n}",
                "keyframe": f"keyframe{n}",
                "id": shot.id,
                "frames": layout.frames,
                "camera": shot.camera.value,
                "description": shot.description,
                "lines": [{"speaker": series.character(l.speaker).name, "text": l.text} for l in shot.lines],
            }
        )
        if times is not None:
            cues += speech_cues(job, shot, start, layout, times)
        else:
            for line, offset, length in zip(shot.lines, layout.offsets, samples):
                t0 = start + offset
                cues.append(
                    {
                        "start": t0 / SAMPLE_RATE,
                        "end": (t0 + length) / SAMPLE_RATE,
                        "speaker": series.character(line.speaker).name,
                        "text": line.text,
                    }
                )
        start += layout.total_samples
    if not complete:
        return EpisodePlan(b.actions, fixed.script_key, None, judged.takes)
    final = b.add(
        "assembly",
        "episode",
        {
            "title": ep.title,
            "language": series.language,
            "width": width,
            "height": height,
            "fps": fps,
            "sample_rate": SAMPLE_RATE,
            "loudness_lufs": LOUDNESS_LUFS,
            "true_peak_db": TRUE_PEAK_DB,
            "shots": shots,
            "cues": cues,
        },
        inputs_final,
        f"episode {ep.slug}",
    )
    expect = {k: final.params[k] for k in ("width", "height", "fps", "sample_rate", "loudness_lufs", "true_peak_db")}
    expect |= {"language": series.language, "cjk": lang.cjk, "cues": cues}
    checks = judged.judges_of(final, "episode", "video", expect, {"subtitles": Ref(final.key, "subtitles")})
    b.actions += checks
    verdicts = [facts.verdicts.get(j.key) for j in checks]
    delivery = combine([v for v in verdicts if v is not None]) if checks and None not in verdicts else None
    return EpisodePlan(b.actions, fixed.script_key, final.key, judged.takes, tuple(j.key for j in checks), delivery)


def _visible(keyframe: Action) -> list[str]:
    """The characters a keyframe shows, whom its judges look for: a close shot is of its first character."""
    cast = list(keyframe.params["characters"])
    return cast[:1] if keyframe.params.get("framing") == "close" else cast


def _sheets(keyframe: Action) -> dict[str, Ref]:
    """The character sheets a keyframe composes (its judges compare each character with its own)."""
    return {name: ref for name, ref in keyframe.inputs.items() if name.startswith("sheet:")}


# A sketch of an outline episode before its script exists, for estimates only (never for keys).
_SKETCH_ESTABLISH_S, _SKETCH_LINE_S = 2.0, 2.8


def sketch(
    job: EpisodeJob, fixed: ScriptPlan | None = None, keyed: bool = True
) -> tuple[Script, dict[str, int], ScriptPlan]:
    """The script and line lengths an episode is expected to have, before they are known.

    A hand-written script is itself; an outline is sketched as the embedded writer expands one: a
    scene per beat, an establishing shot, a shot per line, the target length shared among the
    establishing shots. Line lengths come from the text at the language's speaking rate. Returns
    the script, the lengths (by line action key) and its script plan; planning them
    (``plan_episode(job, script, samples, fixed)``) gives the episode's expected actions, so a
    scheduler can weigh an episode by its whole work while only its script is planned.
    ``fixed``: the episode's own script plan, when it has a hand-written script (not planned again);
    ``keyed`` False: actions named by their labels (cheaper, for estimates only).
    """
    series, ep = job.series, job.episode
    if ep.script is not None:
        script = ep.script
    else:
        beats = ep.outline or []
        lines = sum(len(b.lines) for b in beats)
        each = min(30.0, max(_SKETCH_ESTABLISH_S, (ep.target_seconds - lines * _SKETCH_LINE_S) / max(1, len(beats))))
        scenes = []
        for bi, beat in enumerate(beats):
            sid = f"s{bi + 1:02d}"
            present = list(dict.fromkeys([*beat.characters, *(line.speaker for line in beat.lines)]))
            shots = [
                Shot(
                    id=f"{sid}-01",
                    description=beat.beat,
                    characters=present,
                    framing=Framing.wide,
                    duration=round(each, 2),
                )
            ]
            shots += [
                Shot(
                    id=f"{sid}-{li + 2:02d}",
                    description=beat.beat,
                    characters=[line.speaker],
                    framing=Framing.close,
                    duration=0.5,
                    lines=[Line(speaker=line.speaker, text=line.text)],
                )
                for li, line in enumerate(beat.lines)
            ]
            scenes.append(Scene(id=sid, location=beat.location, time_of_day=beat.time_of_day, shots=shots))
        script = Script(title=ep.title, language=series.language, scenes=scenes)
    if fixed is None or not fixed.shots or ep.script is None:
        fixed = plan_script(job, script, keyed)
    samples = {a.key: spoken_samples(str(a.params["text"]), series) for a in fixed.actions if a.op == "line"}
    return script, samples, replace(fixed, timed={})  # its own memo: sketched lengths are not real ones


def spoken_samples(text: str, series: Series) -> int:
    """About how many samples a line takes to say, at the series language's speaking rate."""
    lang = series.lang
    units = len(text) if lang.cjk else max(1, len(text.split()))
    return round((0.3 + units / lang.units_per_second) * SAMPLE_RATE)
