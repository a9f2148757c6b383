"""Judge keyframes and clips with a vision chat model behind an OpenAI-compatible API (Qwen2.5-VL on
vLLM, say, or OpenAI's own models).

The model is shown the picture (the keyframe, or ``frames`` frames taken evenly from the clip, the
first and the last among them) and each character's sheet figure, and asked for a score in [0, 1]
per question, as JSON matching a schema sent as ``response_format``:

    same_look     per character in frame: is it the character of the sheet (face, hair, outfit)?
    no_artifacts  is the picture free of broken anatomy, garbled or melted regions, stray text?
    motion_ok     (clips) does the motion look smooth and like the planned camera move?

Each score is a check held to its threshold (``min_same_look``, ``min_no_artifacts``,
``min_motion_ok``). The answer is not trusted: one that is not JSON, misses a question or gives a
score outside [0, 1] is a retryable StageError (the judge could not judge), never a pass. A subject
that cannot be decoded at all (not an image, a clip without frames) fails the check ``decoded``
without asking the model: the take is bad, not the judge.

Pictures are scaled down to ``max_side`` pixels on their longer side before they are sent (sheets
are laid on grey, since not every model reads transparency). The prompt is part of this code:
change it and bump PROMPT_VERSION, since the version (and with it every judge action's key) must
change when the verdict may.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import Field

from workers import scratch
from workers._openai import OpenAIClient, OpenAISettings
from workers.api import Estimate, Resources, StageError, StageResult, Usage, config_version, run_tool
from workers.configured import parse
from workers.judge.common import Check, judged_op, probe, thresholds, verdict

KIND, KIND_VERSION = "openai-vision", "1"
PROMPT_VERSION = "1"
STRIP_HEIGHT = 160  # evidence: the frames shown, side by side, this high
_PATCH = 28  # pixels a side per image token in Qwen2.5-VL-like models: the estimate's unit

CAMERA_WORDS = {
    "static": "the camera holds still",
    "push_in": "the camera slowly moves in toward the subject",
    "pull_out": "the camera slowly moves back from the subject",
    "pan_left": "the camera slowly turns left (the picture slides to the right)",
    "pan_right": "the camera slowly turns right (the picture slides to the left)",
    "pan_up": "the camera slowly tilts up (the picture slides down)",
    "pan_down": "the camera slowly tilts down (the picture slides up)",
}


class VisionSettings(OpenAISettings):
    frames: int = Field(4, ge=2, le=16, description="frames of a clip the model is shown")
    max_side: int = Field(512, ge=64, le=2048, description="pictures are scaled down to this longer side")
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=64, le=32768)


_SYSTEM = """\
You are the quality judge of a render farm that makes vertical short dramas. You are shown \
character sheets (each character's reference look) and then the picture to judge: one keyframe, \
or frames taken in order from one short clip. Score each question from 0.0 (not at all) to 1.0 \
(fully), judging only what you see:
- same_look, per character id: is the character of that sheet in the picture with the same look \
(face, hair, skin, outfit and its colours)? 0 if the character is missing or clearly someone else.
- no_artifacts: is the picture free of broken anatomy (extra or missing limbs or fingers, melted \
faces), garbled or smeared regions and stray text or watermarks?
- motion_ok (clips only): do the frames follow one another smoothly, with the planned camera move \
and without jumps, flicker or morphing?
Answer with a single JSON object matching the JSON schema below, and nothing else: no prose, no \
code fences.
JSON schema of the answer:
"""


def answer_schema(characters: Sequence[str], clip: bool) -> dict[str, Any]:
    """The JSON schema the model's answer must match: a score per question, each in [0, 1]."""
    score = {"type": "number", "minimum": 0, "maximum": 1}
    questions: dict[str, Any] = {}
    if characters:
        questions["same_look"] = {
            "type": "object",
            "properties": dict.fromkeys(characters, score),
            "required": list(characters),
            "additionalProperties": False,
        }
    questions["no_artifacts"] = score
    if clip:
        questions["motion_ok"] = score
    return {"type": "object", "properties": questions, "required": list(questions), "additionalProperties": False}


def _unfence(content: str) -> str:
    """Drop a ```json ... ``` fence around the answer: a common habit, harmless to undo."""
    text = content.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        return text[text.index("\n") + 1 : -3].strip()
    return text


def read_scores(content: Any, characters: Sequence[str], clip: bool) -> dict[str, Any]:
    """The scores in the model's answer, ``{"same_look": {id: s}, "no_artifacts": s[, "motion_ok": s]}``.
    Raises ValueError naming what is wrong: not JSON, a question missing, a score not in [0, 1]."""
    if not isinstance(content, str) or not content.strip():
        raise ValueError("the answer is empty")
    try:
        data = json.loads(_unfence(content))
    except ValueError as exc:
        raise ValueError(f"the answer is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")

    def score(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where} is {value!r:.40}, not a number")
        if not 0 <= value <= 1:
            raise ValueError(f"{where} is {value:g}, outside [0, 1]")
        return float(value)

    looks = data.get("same_look") or {}
    if characters and not isinstance(looks, dict):
        raise ValueError("same_look is missing or not an object of scores by character id")
    out: dict[str, Any] = {"same_look": {}}
    for cid in characters:
        if not isinstance(looks, dict) or cid not in looks:
            raise ValueError(f"same_look.{cid} is missing")
        out["same_look"][cid] = score(looks[cid], f"same_look.{cid}")
    for question in ("no_artifacts", "motion_ok") if clip else ("no_artifacts",):
        if question not in data:
            raise ValueError(f"{question} is missing")
        out[question] = score(data[question], question)
    return out


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _data_url(image: Image.Image) -> dict[str, Any]:
    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(_png(image)).decode()},
    }


def _sheet(path: Path, max_side: int, cid: str) -> Image.Image:
    """A sheet figure on grey, scaled down: the character's reference look."""
    try:
        with Image.open(path) as im:
            figure = im.convert("RGBA")
    except (OSError, UnidentifiedImageError) as exc:
        raise StageError(f"judge: the sheet figure of {cid!r} cannot be read: {exc}", retryable=True) from None
    ground = Image.new("RGBA", figure.size, (128, 128, 128, 255))
    ground.alpha_composite(figure)
    return _fit(ground.convert("RGB"), max_side)


def pick(total: int, wanted: int) -> list[int]:
    """``wanted`` frame numbers spread evenly over ``total`` frames, the first and the last included."""
    if total <= wanted:
        return list(range(total))
    return sorted({round(i * (total - 1) / (wanted - 1)) for i in range(wanted)})


def strip(images: Sequence[Image.Image], path: Path) -> Path:
    """The evidence: ``images`` side by side, each scaled to STRIP_HEIGHT high, as one PNG."""
    scaled = [im.resize((max(1, round(im.width * STRIP_HEIGHT / im.height)), STRIP_HEIGHT)) for im in images]
    out = Image.new("RGB", (sum(im.width for im in scaled) + 4 * (len(scaled) - 1), STRIP_HEIGHT), (0, 0, 0))
    x = 0
    for im in scaled:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + 4
    out.save(path)
    return path


class OpenAIVisionJudge:
    """Judge stage: a vision chat model scores a keyframe or a clip (see module docstring).

    op "judge": params ``{"target": {"op": "keyframe" | "clip", ...}, "thresholds": {...},
    "expect": {"characters": [ids], "camera": ... (clips), ...}}``; inputs ``subject`` (the PNG or
    MP4) and ``sheet:<id>`` for each character in ``expect.characters``. Writes ``verdict.json``
    and ``evidence`` (the pictures shown, as one strip). Usage: the answer's tokens and model.

    Raises StageError: retryable for 429 (with ``retry_after``), 5xx, timeouts, answers that are
    not the schema and ffmpeg failing on a clip it could probe; not retryable for other 4xx (a
    wrong key, an unknown model), a judged op other than keyframe or clip, or a missing sheet.

    Example config::

        {"kind": "openai-vision", "base_url": "http://vllm:8000/v1", "model": "Qwen/Qwen2.5-VL-7B-Instruct",
         "api_key_env": "VLLM_KEY", "frames": 4, "max_side": 512}
    """

    kind, stage = KIND, "judge"
    ops = ("judge",)
    judges = ("keyframe", "clip")
    thresholds = {
        "min_same_look": (0.5, 0.0, 1.0),
        "min_no_artifacts": (0.5, 0.0, 1.0),
        "min_motion_ok": (0.5, 0.0, 1.0),
    }
    tools = ("ffmpeg", "ffprobe")
    features: tuple[str, ...] = ()

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.settings = parse(VisionSettings, name, config)
        self.version = config_version(
            KIND_VERSION,
            {**self.settings.model_dump(mode="json"), "prompt": PROMPT_VERSION},
            ("model", "frames", "max_side", "temperature", "prompt"),
        )
        self.resources = self.settings.resources_or(Resources(num_cpus=0.5))
        self.client = OpenAIClient(name, self.settings, config, what=f"judge ({name})")

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        expect = params.get("expect") or {}
        pictures = (self.settings.frames if (params.get("target") or {}).get("op") == "clip" else 1) + len(
            expect.get("characters") or []
        )
        tokens = pictures * math.ceil(self.settings.max_side / _PATCH) ** 2 + 1000 + 200
        return self.settings.estimate_or(Estimate(seconds=10.0 + 2.0 * pictures, tokens=tokens))

    def check(self) -> str:
        return self.client.check_model()

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        what = self.client.what
        judged = judged_op(self, op, params)
        limits = thresholds(self.thresholds, params, self.kind)
        expect = params.get("expect") or {}
        characters = [str(c) for c in expect.get("characters") or []]
        missing = [c for c in characters if f"sheet:{c}" not in inputs]
        if "subject" not in inputs or missing:
            gone = ["subject"] if "subject" not in inputs else [f"sheet:{c}" for c in missing]
            raise StageError(f"{what}: input {', '.join(gone)} is missing", retryable=False)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        clip = judged == "clip"
        pictures, broken = self._clip_frames(inputs["subject"]) if clip else self._keyframe(inputs["subject"])
        if broken:
            return verdict([Check("decoded", 0.0, None, passed=False, detail=broken)], out_dir)
        sheets = [_sheet(inputs[f"sheet:{c}"], self.settings.max_side, c) for c in characters]
        scores, usage = self._ask(characters, sheets, pictures, clip, str(expect.get("camera") or ""))
        checks = [
            _min_check(
                f"same_look:{cid}", scores["same_look"][cid], limits["min_same_look"], f"{cid} looks like the sheet"
            )
            for cid in characters
        ]
        checks.append(
            _min_check("no_artifacts", scores["no_artifacts"], limits["min_no_artifacts"], "free of artifacts")
        )
        if clip:
            checks.append(_min_check("motion_ok", scores["motion_ok"], limits["min_motion_ok"], "motion looks right"))
        evidence = strip(pictures, out_dir / "evidence.png")
        return verdict(checks, out_dir, evidence={"evidence": evidence}, usage=usage)

    def _keyframe(self, path: Path) -> tuple[list[Image.Image], str]:
        """The keyframe scaled down, or why it cannot be decoded."""
        try:
            with Image.open(path) as im:
                return [_fit(im.convert("RGB"), self.settings.max_side)], ""
        except FileNotFoundError as exc:
            raise StageError(f"{self.client.what}: the keyframe cannot be read: {exc}", retryable=True) from None
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            return [], f"the keyframe is not a readable image ({exc})"

    def _clip_frames(self, path: Path) -> tuple[list[Image.Image], str]:
        """``frames`` frames spread over the clip, scaled down, or why the clip has none to show."""
        what = self.client.what
        if not path.is_file():
            raise StageError(f"{what}: the clip {path.name} cannot be read", retryable=True)
        try:
            info = probe(path, f"{what}: probe clip")
        except StageError as exc:
            if exc.retryable or type(exc) is not StageError:  # a timeout, or ffprobe missing
                raise
            return [], "the clip is not a readable video (ffprobe refuses it)"
        video = [s for s in info.get("streams") or [] if s.get("codec_type") == "video"]
        total = int(video[0].get("nb_read_packets") or 0) if video else 0
        if total <= 0:
            return [], "the clip has no video frames" if video else "the clip has no video stream"
        chosen = pick(total, self.settings.frames)
        # numbers only in the filter (frame numbers), never text from a spec
        graph = "select='" + "+".join(f"eq(n,{int(n)})" for n in chosen) + "'"
        with scratch.scratch_dir("judge-frames-") as tmp:
            pattern = Path(tmp) / "frame-%03d.png"
            try:
                run_tool(
                    ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf", graph]
                    + ["-fps_mode", "passthrough", "-frames:v", str(len(chosen)), str(pattern)],
                    what=f"{what}: take frames",
                    timeout=300,
                )
            except StageError as exc:
                if type(exc) is not StageError:
                    raise
                raise StageError(str(exc), retryable=True) from None
            images = []
            for frame in sorted(Path(tmp).glob("frame-*.png")):
                with Image.open(frame) as im:
                    images.append(_fit(im.convert("RGB"), self.settings.max_side))
        if not images:
            return [], f"no frame of the clip could be decoded (ffprobe counted {total})"
        return images, ""

    def _ask(
        self,
        characters: Sequence[str],
        sheets: Sequence[Image.Image],
        pictures: Sequence[Image.Image],
        clip: bool,
        camera: str,
    ) -> tuple[dict[str, Any], Usage]:
        """One chat request with every picture; the checked scores and the usage."""
        s = self.settings
        schema = answer_schema(characters, clip)
        content: list[dict[str, Any]] = []
        for cid, sheet in zip(characters, sheets):
            content += [{"type": "text", "text": f"Character sheet of {cid}:"}, _data_url(sheet)]
        if clip:
            move = CAMERA_WORDS.get(camera, "the camera may move")
            content.append(
                {"type": "text", "text": f"{len(pictures)} frames of the clip, in order. Planned camera move: {move}."}
            )
        else:
            content.append({"type": "text", "text": "The keyframe:"})
        content += [_data_url(p) for p in pictures]
        who = ", ".join(characters) if characters else "nobody"
        content.append({"type": "text", "text": f"Characters that should be in the picture: {who}. Answer now."})
        body = {
            "model": s.model,
            "messages": [
                {"role": "system", "content": _SYSTEM + json.dumps(schema, separators=(",", ":"))},
                {"role": "user", "content": content},
            ],
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "seed": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "judge_scores", "schema": schema, "strict": True},
            },
        }
        choice, data, where = self.client.chat(body)
        message = choice["message"]
        counted = data.get("usage") or {}
        usage = Usage(
            tokens_in=int(counted.get("prompt_tokens") or 0),
            tokens_out=int(counted.get("completion_tokens") or 0),
            model=str(data.get("model") or s.model),
            provider_job_id=str(data.get("id") or ""),
        )
        if message.get("refusal"):
            raise StageError(f"{where}: the model refused to judge: {str(message['refusal'])[:200]}", retryable=True)
        if choice.get("finish_reason") == "length":
            raise StageError(f"{where}: the answer was cut off at max_tokens ({s.max_tokens})", retryable=True)
        try:
            return read_scores(message.get("content"), characters, clip), usage
        except ValueError as exc:
            shown = str(message.get("content"))[:200]
            raise StageError(
                f"{where}: the model's answer is not the scores asked for: {exc}: {shown}", retryable=True
            ) from None


def _min_check(name: str, value: float, threshold: float, question: str) -> Check:
    """A score that passes at ``threshold`` or above; a failed one scores itself relative to it."""
    passed = value >= threshold
    return Check(
        name,
        value,
        threshold,
        passed=passed,
        detail=f"the model scored '{question}' {value:.2f} (at least {threshold:.2f} needed)",
        score=value / threshold if threshold > 0 else 1.0,
    )
