"""Judge dubbed lines by listening: a speech-to-text model behind an OpenAI-compatible API
(``POST /audio/transcriptions``: OpenAI's whisper-1 or gpt-4o-transcribe, or a local Whisper on vLLM)
writes down what the line's WAV says, and the check ``cer`` compares it with the line's text.

The character error rate is the edit distance between the two, after both are normalised (Unicode
NFKC, case folded, punctuation and symbols dropped, runs of white space made one space; for CJK
languages white space is dropped too, so every character counts alike), divided by the length of
the expected text. A line passes when its CER is at most ``max_cer``; the score is 1 - CER.

A line with nothing to say is not sent (speech models invent words in silence) and passes; a
subject that is plainly not audio (no WAV header, no samples) fails the check ``audio`` without a
request. Everything the judge cannot hear (HTTP errors, timeouts, an answer without text) is a
retryable StageError, never a verdict.
"""

from __future__ import annotations

import io
import unicodedata
import uuid
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from workers._openai import OpenAIClient, OpenAISettings
from workers.api import Estimate, Resources, StageError, StageResult, Usage, config_version
from workers.configured import parse
from workers.judge.common import Check, judged_op, thresholds, verdict

KIND, KIND_VERSION = "openai-transcribe", "1"
_SHOWN = 60  # characters of a text quoted in a check's detail


class TranscribeSettings(OpenAISettings):
    send_language: bool = Field(True, description="tell the server the line's language (expect.language)")
    temperature: float = Field(0.0, ge=0, le=1)


def normalise(text: str, cjk: bool) -> str:
    """``text`` as the CER compares it: NFKC, case folded, without punctuation or symbols, single
    spaces (none at all for CJK)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in folded)
    return "".join(kept.split()) if cjk else " ".join(kept.split())


def distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from ``a`` to ``b``."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        last, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            last, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, last + (ca != cb))
    return row[-1]


def cer(expected: str, heard: str, cjk: bool) -> tuple[float, int, int]:
    """The character error rate of ``heard`` against ``expected``, the edits and the expected length."""
    ref, hyp = normalise(expected, cjk), normalise(heard, cjk)
    edits = distance(ref, hyp)
    if not ref:
        return (0.0 if not hyp else 1.0), edits, 0
    return edits / len(ref), edits, len(ref)


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


def multipart(
    fields: Mapping[str, str], file_field: str, filename: str, content_type: str, data: bytes
) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) of text ``fields`` and one file, and its Content-Type."""
    boundary = "farm-" + uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode("utf-8") + b"\r\n"
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    out += data + f"\r\n--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class OpenAITranscribeJudge:
    """Judge stage: a dubbed line's WAV, transcribed, against its text (see module docstring).

    op "judge": params ``{"target": {"op": "line", ...}, "thresholds": {"max_cer": ...},
    "expect": {"text", "language", "cjk", ...}}``; input ``subject`` (the line's WAV). Writes
    ``verdict.json``; the check ``cer`` quotes what was heard. Usage: the model, and tokens where
    the server reports them.

    Raises StageError: retryable for 429 (with ``retry_after``), 5xx, timeouts and answers without
    a text; not retryable for other 4xx (a wrong key, an unknown model) or a judged op other than line.

    Example config::

        {"kind": "openai-transcribe", "base_url": "https://api.openai.com/v1", "model": "whisper-1",
         "api_key_env": "OPENAI_API_KEY"}
    """

    kind, stage = KIND, "judge"
    ops = ("judge",)
    judges = ("line",)
    thresholds = {"max_cer": (0.35, 0.0, 1.0)}
    tools: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.settings = parse(TranscribeSettings, name, config)
        self.version = config_version(
            KIND_VERSION, self.settings.model_dump(mode="json"), ("model", "send_language", "temperature")
        )
        self.resources = self.settings.resources_or(Resources(num_cpus=0.25))
        self.client = OpenAIClient(name, self.settings, config, what=f"judge ({name})")

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        chars = len(str((params.get("expect") or {}).get("text", "")))
        return self.settings.estimate_or(Estimate(seconds=3.0 + 0.05 * chars, tokens=0))

    def check(self) -> str:
        return self.client.check_model()

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        what = self.client.what
        judged_op(self, op, params)
        limit = thresholds(self.thresholds, params, self.kind)["max_cer"]
        expect = params.get("expect") or {}
        text, cjk = str(expect.get("text") or ""), bool(expect.get("cjk"))
        if "subject" not in inputs:
            raise StageError(f"{what}: input subject is missing", retryable=False)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        try:
            audio = Path(inputs["subject"]).read_bytes()
        except OSError as exc:
            raise StageError(f"{what}: the line's audio cannot be read: {exc}", retryable=True) from None
        broken = _broken(audio)
        if broken:
            return verdict(
                [Check("audio", 0.0, None, passed=False, detail=broken)], out_dir, usage=Usage(model=s.model)
            )
        if not normalise(text, cjk):
            check = Check("cer", 0.0, limit, passed=True, detail="the line has nothing to say; not transcribed")
            return verdict([check], out_dir, usage=Usage(model=s.model))

        fields = {"model": s.model, "response_format": "json", "temperature": f"{s.temperature:g}"}
        language = expect.get("language")
        if s.send_language and isinstance(language, str) and language.strip():
            fields["language"] = language.strip()
        body, content_type = multipart(fields, "file", "line.wav", "audio/wav", audio)
        where = f"{what}: POST /audio/transcriptions"
        data = self.client.request("POST", "audio/transcriptions", body, content_type=content_type).json(where)
        heard = data.get("text") if isinstance(data, dict) else None
        if not isinstance(heard, str):
            raise StageError(f"{where}: the answer has no text: {str(data)[:300]}", retryable=True)
        counted = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        usage = Usage(
            tokens_in=int(counted.get("input_tokens") or 0),
            tokens_out=int(counted.get("output_tokens") or 0),
            model=s.model,
        )
        rate, edits, length = cer(text, heard, cjk)
        unit = "characters" if cjk else "characters (spaces included)"
        check = Check(
            "cer",
            rate,
            limit,
            passed=rate <= limit,
            detail=f"heard {_quote(heard)} for {_quote(text)}: {edits} edits in {length} {unit}",
            score=max(0.0, 1.0 - rate),
        )
        return verdict([check], out_dir, usage=usage)


def _broken(audio: bytes) -> str:
    """Why ``audio`` is plainly not a line of speech ("" if it may be one)."""
    if len(audio) < 12 or audio[:4] != b"RIFF" or audio[8:12] != b"WAVE":
        return f"the line's audio is not a WAV file ({len(audio)} bytes)"
    try:
        with wave.open(io.BytesIO(audio), "rb") as w:
            samples = w.getnframes()
    except (wave.Error, EOFError):
        return ""  # a WAV the standard library cannot read (float samples, say): the server may
    if samples == 0:
        return "the line's WAV has no samples"
    return ""
