"""What a ComfyUI workflow template takes and how it is checked: the backend's settings, the inputs
and outputs an op may map, the templates read and validated once (every problem in one error), and
the prompt text and seed of an action (a speech-native clip's prompt carries its lines as JSON)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from workers._http import http_url
from workers.api import ConfigError
from workers.configured import BackendSettings

KIND, KIND_VERSION = "comfyui", "1"

STAGE_OPS = {"image": ("sheet", "keyframe"), "video": ("clip",), "lipsync": ("lipsync",)}
# output name -> required?  (a sheet's figure is derived from the sheet when no node makes one)
OUTPUTS = {
    "sheet": {"sheet": True, "figure": False},
    "keyframe": {"keyframe": True},
    "clip": {"clip": True},
    "lipsync": {"clip": True},
}
MAX_FIGURES = 8  # a keyframe template may take the figures of up to this many characters in frame
SPEAKER_SLOTS = 4  # a lip-sync template may take the tracks of up to this many speakers on screen
_COMMON_INPUTS = ("prompt", "seed", "width", "height")
INPUTS = {
    "sheet": _COMMON_INPUTS,
    "keyframe": (*_COMMON_INPUTS, *(f"figure{i}" for i in range(1, MAX_FIGURES + 1))),
    "clip": (*_COMMON_INPUTS, "frames", "fps", "image", "last_image", "audio"),
    "lipsync": ("video", "audio", *(f"speaker{i}" for i in range(1, SPEAKER_SLOTS + 1)), "fps", "frames")
    + _COMMON_INPUTS,
}
# inputs filled with an uploaded file (image, WAV, MP4); when the action has none, the node they
# name is removed from the workflow with the links to it
FILE_INPUT = re.compile(r"^(image|last_image|figure\d+|video|audio|speaker\d+)$")

_FRAMING = {
    "wide": "wide shot, full bodies within the surroundings",
    "medium": "medium shot, waist up",
    "close": "close-up on the face",
}
_CAMERA = {
    "static": "static camera, locked-off shot",
    "push_in": "the camera slowly pushes in",
    "pull_out": "the camera slowly pulls out",
    "pan_left": "the camera pans slowly to the left",
    "pan_right": "the camera pans slowly to the right",
    "pan_up": "the camera tilts slowly up",
    "pan_down": "the camera tilts slowly down",
}


class ComfyUISettings(BackendSettings):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
    kind: Literal["comfyui"] = "comfyui"
    stage: Literal["image", "video", "lipsync"]
    # a video backend whose clip workflow is driven by the shot's dialogue (Wan S2V, InfiniteTalk)
    speech: bool = False
    # [multiple, remainder]: the only clip lengths a speech workflow's model makes (Wan S2V: [4, 1]); the
    # farm asks for the first such length of at least the shot's and keeps the shot's first frames
    frame_step: tuple[int, int] | None = None
    base_url: str = Field(description="the ComfyUI server: http://comfy:8188")
    workflows: dict[str, str] = Field(description="op -> path of an API-format workflow JSON file")
    inputs: dict[str, dict[str, tuple[str, str]]] = Field(
        default_factory=dict, description="op -> input name -> [node id, field]"
    )
    outputs: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="op -> output name -> id of the node saving it"
    )
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    timeout_s: float = Field(3600.0, gt=0, le=86_400)  # the longest a run waits on one job
    request_timeout_s: float = Field(30.0, gt=0, le=600)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "the ComfyUI server, such as http://comfy:8188")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def prune(
    workflow: dict[str, Any], drop: Mapping[str, str], required: Callable[[], Mapping[str, set[str]]]
) -> list[str]:
    """Remove the nodes ``drop`` (node id -> why) and the links to them; then, in turn, every node
    left without an input that ``required()`` (node class -> its required inputs, as ComfyUI's
    /object_info lists them; asked only when a link was cut) says it cannot do without, as ComfyUI
    would refuse it (an audio encoder whose LoadAudio left with an absent speaker). Returns
    "id (why)" of each node removed."""
    removed: list[str] = []
    while drop:
        lost: dict[str, set[str]] = {}
        for nid, why in drop.items():
            if workflow.pop(nid, None) is None:
                continue
            removed.append(f"{nid} ({why})")
            for other, node in workflow.items():
                for k in [k for k, v in node["inputs"].items() if is_link(v) and v[0] == nid]:
                    del node["inputs"][k]
                    lost.setdefault(other, set()).add(k)
        needs = required() if lost else {}
        drop = {
            nid: f"needs {', '.join(sorted(fields))}"
            for nid, fields in lost.items()
            if nid in workflow and fields & needs.get(workflow[nid]["class_type"], set())
        }
    return removed


def _save_nodes(template: Mapping[str, Any]) -> str:
    found = [
        f"{nid} ({node['class_type']})"
        for nid, node in template.items()
        if any(w in node["class_type"] for w in ("Save", "Preview", "VideoCombine"))
    ]
    return ", ".join(found) or "none found"


def load_templates(name: str, s: ComfyUISettings) -> dict[str, dict[str, Any]]:
    """Read and check every workflow and mapping; raise one ConfigError listing every problem."""
    where = f"backends.{name}"
    problems: list[str] = []
    ops = STAGE_OPS[s.stage]
    for op in s.workflows:
        if op not in ops:
            problems.append(f"{where}.workflows.{op}: a {s.stage} backend does {', '.join(ops)}; remove {op!r}")
    for op in ops:
        if op not in s.workflows:
            problems.append(f"{where}.workflows.{op}: missing; give the path of an API-format workflow for {op}")
    templates: dict[str, dict[str, Any]] = {}
    for op, path_text in s.workflows.items():
        if op not in ops:
            continue
        path = Path(path_text)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(f"{where}.workflows.{op}: {path} does not exist; give the path of the workflow file")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{where}.workflows.{op}: {path} is not readable JSON ({exc})")
            continue
        if not isinstance(data, dict) or not data or "nodes" in data and isinstance(data.get("nodes"), list):
            problems.append(
                f"{where}.workflows.{op}: {path} is not an API-format workflow (an object of node "
                "id -> {class_type, inputs}); export it from ComfyUI with 'Export (API)'"
            )
            continue
        bad = [
            nid
            for nid, node in data.items()
            if not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs"), dict)
        ]
        if bad:
            problems.append(
                f"{where}.workflows.{op}: in {path}, node(s) {', '.join(bad)} lack class_type or "
                "inputs; export the workflow with 'Export (API)'"
            )
            continue
        for nid, node in data.items():
            for field, value in node["inputs"].items():
                if is_link(value) and value[0] not in data:
                    problems.append(
                        f"{where}.workflows.{op}: in {path}, node {nid} input {field!r} links to "
                        f"node {value[0]!r}, which is not in the workflow"
                    )
        templates[op] = data
    for op, mapping in s.inputs.items():
        if op not in ops:
            problems.append(f"{where}.inputs.{op}: a {s.stage} backend does {', '.join(ops)}; remove {op!r}")
            continue
        template = templates.get(op)
        for input_name, (nid, field) in mapping.items():
            here = f"{where}.inputs.{op}.{input_name}"
            if input_name not in INPUTS[op]:
                problems.append(
                    f"{here}: unknown input; {op} fills {', '.join(INPUTS[op][:8])}"
                    + (", ..." if len(INPUTS[op]) > 8 else "")
                )
            elif template is None:
                continue
            elif nid not in template:
                problems.append(
                    f"{here}: node {nid!r} is not in {s.workflows[op]} (its nodes: "
                    f"{', '.join(sorted(template, key=str))}); give [node id, field] of that workflow"
                )
            elif field not in template[nid]["inputs"]:
                problems.append(
                    f"{here}: node {nid} ({template[nid]['class_type']}) has no input {field!r} "
                    f"(it has: {', '.join(template[nid]['inputs'])})"
                )
            elif FILE_INPUT.match(input_name) and is_link(template[nid]["inputs"][field]):
                problems.append(
                    f"{here}: node {nid} input {field!r} is a link; name the file field of a loader node "
                    "(LoadImage image, LoadAudio audio, VHS_LoadVideo video)"
                )
    problems += _talk_problems(where, s)
    for op, saved in s.outputs.items():
        if op not in ops:
            problems.append(f"{where}.outputs.{op}: a {s.stage} backend does {', '.join(ops)}; remove {op!r}")
            continue
        for out, nid in saved.items():
            if out not in OUTPUTS[op]:
                problems.append(f"{where}.outputs.{op}.{out}: {op} makes {', '.join(OUTPUTS[op])}")
            elif op in templates and nid not in templates[op]:
                problems.append(
                    f"{where}.outputs.{op}.{out}: node {nid!r} is not in {s.workflows[op]}; give the "
                    f"id of the node saving it (saving nodes there: {_save_nodes(templates[op])})"
                )
    for op in ops:
        for out, required in OUTPUTS[op].items():
            if required and out not in s.outputs.get(op, {}) and op in templates:
                problems.append(
                    f"{where}.outputs.{op}.{out}: missing; give the id of the node saving the {out} "
                    f"(saving nodes in {s.workflows[op]}: {_save_nodes(templates[op])})"
                )
    if problems:
        raise ConfigError("; ".join(problems))
    return templates


def _talk_problems(where: str, s: ComfyUISettings) -> list[str]:
    """What a lip-sync or speech-native backend must map: the clip and the voices it moves to."""
    clip, lip = s.inputs.get("clip", {}), s.inputs.get("lipsync", {})
    if s.speech and s.stage != "video":
        return [f"{where}.speech: only a video backend speaks its shots' lines; remove speech or set stage video"]
    if s.speech and "audio" not in clip:
        return [
            f"{where}.inputs.clip.audio: missing; a speech-native workflow is driven by the shot's dialogue: "
            "give [node id, field] of its LoadAudio node (its audio field)"
        ]
    if "audio" in clip and not s.speech:
        return [
            f"{where}.inputs.clip.audio: only a speech-native backend is given the shot's dialogue; set "
            '"speech": true for an audio-driven workflow, or remove the mapping'
        ]
    if s.frame_step is not None and not (s.speech and 1 <= s.frame_step[0] <= 64 and s.frame_step[1] >= 0):
        return [
            f"{where}.frame_step: [multiple, remainder] of the clip lengths a speech workflow's model makes, "
            "such as [4, 1] for Wan S2V (multiple 1-64, remainder 0 or more); only with speech: true"
        ]
    if s.stage == "lipsync" and "video" not in lip:
        return [f"{where}.inputs.lipsync.video: missing; give [node id, field] of the node loading the shot's clip"]
    if s.stage == "lipsync" and not ({"audio", "speaker1"} & set(lip)):
        return [
            f"{where}.inputs.lipsync.audio: missing; map audio (the shot's dialogue) or speaker1.. (each "
            "speaker's lines) to the LoadAudio nodes of the workflow"
        ]
    return []


def action_seed(params: Mapping[str, Any]) -> int:
    """The sampler seed of an action: fixed by its params (a sheet's: the series seed and the
    character; a keyframe's: its [episode seed, shot]; a clip, which has none: all its params)."""
    if "seed" in params:
        basis: Any = {"seed": params["seed"], "character": (params.get("character") or {}).get("id")}
    else:
        basis = dict(params)
    return int.from_bytes(hashlib.sha256(canonical(basis).encode()).digest()[:8], "big") % 2**32


def prompt_text(op: str, params: Mapping[str, Any]) -> str:
    """The positive prompt for ``op``, from the action's params (user text stays a JSON value)."""
    style = str((params.get("style") or {}).get("description") or "")
    if op == "sheet":
        c = params["character"]
        look = str((c.get("look") or {}).get("description") or "")
        parts = [
            f"Character turnaround sheet of {c.get('name', '')}: {look}",
            "front view, three-quarter view and side view, full body, standing, plain flat background",
            f"Style: {style}",
        ]
    elif op == "keyframe":
        parts = [
            str(params.get("description", "")),
            f"Location: {params.get('location', '')}, {params.get('time_of_day', '')}",
            _FRAMING.get(str(params.get("framing")), ""),
            f"Style: {style}",
        ]
    elif op == "lipsync":
        parts = ["The person speaking moves their lips in sync with the voice, natural expression"]
    else:
        parts = [
            _CAMERA.get(str(params.get("camera")), ""),
            "subtle natural motion, characters and lighting stay consistent",
        ]
        lines = params.get("lines")
        if lines and isinstance(lines, list):  # a speech-native clip: who says what, as one JSON value
            said = [
                {"speaker": str(line.get("name") or line.get("speaker") or ""), "text": str(line.get("text") or "")}
                | ({"off_screen": True} if line.get("off_screen") else {})
                for line in lines
                if isinstance(line, Mapping)
            ]
            parts.append("The characters speak these lines, in order: " + canonical(said))
    return ". ".join(p.strip().rstrip(".") for p in parts if p.strip()) + "."


def round8(value: int) -> int:
    """Latent sizes are multiples of 8; round up, so the result is cropped rather than stretched."""
    return max(8, -(-int(value) // 8) * 8)
