"""A result becomes a fact only after it is checked (DESIGN.md, invariant 10). Pure.

What a worker answers (its manifest, and the facts its outputs carry) is checked against what the
plan needs of it before the controller takes it in: every output the plan reads is there and not
empty, a line has a positive whole number of samples, a script validates and names only the
characters of each series that needs it. The answer is the ``ActionResult`` to journal, or why not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from farm.core.events import ActionResult, Facts
from farm.core.manifest import Manifest
from farm.core.plan import OUTPUTS, Action
from farm.core.script import Script, check_against
from farm.core.spec import Series
from farm.core.talking import is_speech_clip


def check_result(
    action: Action, manifest: Manifest, facts: Mapping[str, Any] | None, series: Sequence[Series]
) -> tuple[ActionResult | None, str]:
    """The result ``action``'s manifest and facts make, or (None, what is wrong with them).
    ``series``: those of the episodes that need the action (a script is checked against each)."""
    if manifest.key != action.key:
        return None, f"the manifest is for action {manifest.key[:12]}, not {action.key[:12]}"
    missing = [o for o in OUTPUTS.get(action.op, ()) if o not in manifest.outputs]
    if missing:
        return None, f"no {', '.join(missing)} output"
    empty = sorted(o for o in OUTPUTS.get(action.op, ()) if manifest.outputs[o].size <= 0)
    if empty:
        return None, f"the {', '.join(empty)} output is empty"
    if action.op == "line":
        samples = manifest.meta.get("samples")
        if not isinstance(samples, int) or isinstance(samples, bool) or samples <= 0:
            return None, f"the line has {samples!r} samples of audio, not a positive whole number"
    if is_speech_clip(action):
        problem = _spoken_problem(action, manifest)
        if problem:
            return None, f"the speech-native clip {problem}"
    if action.op == "keyframe" and manifest.meta.get("faces") is not None:
        problem = _faces_problem(manifest.meta["faces"])
        if problem:
            return None, f"the keyframe's faces are not where faces can be: {problem}"
    if action.op == "judge":
        problem = _judge_problem(manifest.meta)
        if problem:
            return None, f"the judge's answer is not a verdict: {problem}"
    script = None
    if action.op == "script":
        raw = (facts or {}).get("script")
        if raw is None:
            return None, "no script came with it"
        try:
            script = raw if isinstance(raw, Script) else Script.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return None, f"the script does not validate ({exc.error_count()} problems; first: {where}: {err['msg']})"
        for one in series:
            problems = check_against(script, {c.id for c in one.characters})
            if problems:
                more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
                listed = "; ".join(f"{p}: {m}" for p, m in problems[:5])
                return None, f"the script is not one for series {one.id}: {listed}{more}"
    if isinstance(manifest, ActionResult):  # what the runtimes and the store hand over: no copy to make
        result = manifest if manifest.facts is None else manifest.model_copy(update={"facts": None})
    else:
        result = ActionResult.model_construct(**{name: getattr(manifest, name) for name in Manifest.model_fields})
    return (result.model_copy(update={"facts": Facts(script=script)}) if script else result), ""


def _spoken_problem(action: Action, manifest: Manifest) -> str:
    """What is wrong with a speech-native clip's answer (farm.core.talking): its own sound (output
    ``audio``) and where it says each line (meta ``lines``: ``[{start, end}]`` seconds, in order,
    inside the clip), or ""."""
    audio = manifest.outputs.get("audio")
    if audio is None or audio.size <= 0:
        return "returned no sound of its own (output audio)"
    times, asked = manifest.meta.get("lines"), action.params["lines"]
    if not isinstance(times, list) or len(times) != len(asked):
        return f"gave {len(times) if isinstance(times, list) else 'no'} line times for {len(asked)} lines"
    duration, last = action.params["frames"] / action.params["fps"], 0.0
    for i, t in enumerate(times):
        start, end = (t.get("start"), t.get("end")) if isinstance(t, dict) else (None, None)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, end)):
            return f"gave line {i} the time {str(t)[:80]}, not {{start, end}} in seconds"
        assert isinstance(start, (int, float)) and isinstance(end, (int, float))
        if not (0 <= start < end <= duration + 1e-6 and start >= last - 1.0 / action.params["fps"]):
            return f"says line {i} from {start} s to {end} s: not after the line before, inside the {duration:g} s clip"
        last = end
    return ""


def _judge_problem(meta: Mapping[str, Any]) -> str:
    """What is wrong with a judge's meta (``{verdict, score, checks}``, workers/judge/common.py), or ""."""
    verdict, score, checks = meta.get("verdict"), meta.get("score"), meta.get("checks")
    if verdict not in ("pass", "fail"):
        return f"verdict {verdict!r} is neither 'pass' nor 'fail'"
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
        return f"score {score!r} is not a number from 0 to 1"
    if not isinstance(checks, list) or not checks:
        return "it names no checks"
    for check in checks:
        if (
            not isinstance(check, dict)
            or not isinstance(check.get("name"), str)
            or not isinstance(check.get("passed"), bool)
        ):
            return f"check {str(check)[:80]} has no name and passed"
    if (verdict == "pass") != all(c["passed"] for c in checks):
        return f"verdict {verdict!r} disagrees with its checks"
    return ""


def _faces_problem(faces: Any) -> str:
    """What is wrong with a keyframe's ``faces`` meta (character -> {box, mouth, mouth_width}), or ""."""
    if not isinstance(faces, dict) or len(faces) > 64:
        return "not a mapping of at most 64 characters"

    def numbers(value: Any, n: int) -> bool:
        return (
            isinstance(value, list)
            and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e6 for v in value)
        )

    for who, face in faces.items():
        if not isinstance(face, dict) or not numbers(face.get("box"), 4) or not numbers(face.get("mouth"), 2):
            return f"{str(who)[:40]!r} has no box of 4 numbers and mouth of 2"
        if not numbers([face.get("mouth_width", 0)], 1) or face.get("mouth_width", 0) < 0:
            return f"{str(who)[:40]!r} has a mouth_width that is not a number of pixels"
    return ""
