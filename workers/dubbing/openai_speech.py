"""Dubbing through an OpenAI-compatible speech API (``POST /audio/speech``): OpenAI's tts-1 or
gpt-4o-mini-tts, or a local TTS server that speaks the same API.

It produces exactly what the embedded espeak-ng backend produces (``line.wav``: mono 16-bit PCM
at the episode's sample rate, trimmed close to the speech by the same helper), so the rest of the
farm cannot tell the two apart. The server is asked for WAV, whatever rate and channels it likes;
anything else in the body (an error page behind a proxy, MP3 from a server ignoring
``response_format``) is refused before ffmpeg sees it, as a retryable error.

Characters are mapped to the API's voices in settings (``voices``, with ``"*"`` for everyone
else), not in the series: the espeak voice in the line's params means nothing to this API.

Usage: speech APIs report no tokens and bill by the character, so ``tokens_in`` is the number of
characters of the text sent (``len(text)``) and ``tokens_out`` stays 0.
"""

from __future__ import annotations

import re
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from workers import scratch
from workers._http import excerpt
from workers._openai import OpenAIClient, OpenAISettings
from workers.api import Estimate, Resources, StageError, StageResult, Usage, config_version, run_tool
from workers.configured import parse
from workers.dubbing.espeak import SILENT_LINE_SECONDS, trim_silence

KIND, KIND_VERSION = "openai-speech", "1"
_SPEAKER = r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$"  # a character id (farm.core.script.Slug) or "*"


class SpeechSettings(OpenAISettings):
    voices: dict[str, str] = Field(min_length=1, description='character id (or "*") -> the API\'s voice name')
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(None, min_length=1, max_length=4096)

    @field_validator("voices")
    @classmethod
    def _ids_and_names(cls, voices: dict[str, str]) -> dict[str, str]:
        for who, voice in voices.items():
            if not re.fullmatch(_SPEAKER, who):
                raise ValueError(f'{who!r} is neither a character id (such as "ana") nor "*" (everyone else)')
            if not voice.strip():
                raise ValueError(f'the voice for {who!r} is empty; name one of the API\'s voices, such as "alloy"')
        return voices


def _is_wav(body: bytes) -> bool:
    return len(body) >= 12 and body[:4] == b"RIFF" and body[8:12] == b"WAVE"


def _silence(path: Path, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(bytes(2 * round(SILENT_LINE_SECONDS * sample_rate)))


class OpenAISpeech:
    """Speaks one line through ``POST {base_url}/audio/speech`` (see module docstring).

    op "line": params ``{"text": str, "speaker": character id, "sample_rate": 48000, "voice": ...}``
    (``voice``, espeak's, is ignored). Writes ``line.wav`` (output "audio"); meta samples,
    sample_rate, duration. A line with nothing to say becomes SILENT_LINE_SECONDS of silence
    without a request.

    Raises StageError: retryable for 429 (with ``retry_after``), 5xx, timeouts and bodies that are
    not WAV; not retryable for other 4xx, an unmapped speaker, or ffmpeg failing. ToolMissing
    without ffmpeg.

    Example config::

        {"kind": "openai-speech", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini-tts",
         "api_key_env": "OPENAI_API_KEY", "voices": {"ana": "coral", "*": "onyx"}}
    """

    kind, stage = KIND, "dubbing"
    ops = ("line",)
    tools = ("ffmpeg",)
    features: tuple[str, ...] = ()

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.settings = parse(SpeechSettings, name, config)
        self.version = config_version(
            KIND_VERSION, self.settings.model_dump(mode="json"), ("model", "voices", "speed", "instructions")
        )
        self.resources = self.settings.resources_or(Resources(num_cpus=0.25))
        self.client = OpenAIClient(name, self.settings, config, what=f"dubbing ({name})")

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        chars = len(str(params.get("text", "")))
        return self.settings.estimate_or(Estimate(seconds=2.0 + 0.02 * chars, tokens=chars))

    def check(self) -> str:
        return self.client.check_model()

    def voice_for(self, speaker: Any) -> str:
        voices = self.settings.voices
        voice = voices.get(speaker) if isinstance(speaker, str) else None
        if voice is None and "*" not in voices:
            raise StageError(
                f'{self.client.what}: no voice for speaker {speaker!r}: add it, or a "*" '
                f"default, to backends.{self.name}.voices",
                retryable=False,
            )
        return voice or voices["*"]

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        what = self.client.what
        if op not in self.ops:
            raise StageError(f"{what}: unknown op {op!r}; {self.kind} does {self.ops}")
        text = params.get("text")
        if not isinstance(text, str):
            raise StageError(f"{what}: params.text must be a string")
        sample_rate = params.get("sample_rate", 48000)
        if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 192000:
            raise StageError(f"{what}: sample_rate {sample_rate!r} must be an integer 8000-192000")
        voice = self.voice_for(params.get("speaker"))

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "line.wav"
        s = self.settings
        if not text.strip():
            _silence(out, sample_rate)
            text = ""
        else:
            body: dict[str, Any] = {
                "model": s.model,
                "input": text,
                "voice": voice,
                "response_format": "wav",
                "speed": s.speed,
            }
            described = (params.get("voice") or {}).get("description")  # the character's voice, in words
            said = [t for t in (s.instructions, f"Voice: {described}" if isinstance(described, str) else "") if t]
            if said:
                body["instructions"] = "\n".join(said)[:4096]
            reply = self.client.request("POST", "audio/speech", body)
            if not _is_wav(reply.body):
                kind = next((v for k, v in reply.headers.items() if k.lower() == "content-type"), "no Content-Type")
                raise StageError(
                    f"{what}: POST /audio/speech answered {kind} that is not a WAV file "
                    f"({len(reply.body)} bytes): {excerpt(reply.body[:200])}",
                    retryable=True,
                )
            with scratch.scratch_dir("speech-") as tmp:
                got, mono = Path(tmp) / "reply.wav", Path(tmp) / "mono.wav"
                got.write_bytes(reply.body)
                run_tool(
                    [
                        "ffmpeg",
                        "-nostdin",
                        "-v",
                        "error",
                        "-y",
                        "-i",
                        str(got),
                        "-ar",
                        str(sample_rate),
                        "-ac",
                        "1",
                        "-c:a",
                        "pcm_s16le",
                        "-map_metadata",
                        "-1",
                        "-fflags",
                        "+bitexact",
                        "-f",
                        "wav",
                        str(mono),
                    ],
                    what=f"{what}: convert",
                )
                trim_silence(mono, out)
        with wave.open(str(out), "rb") as w:
            samples, rate = w.getnframes(), w.getframerate()
        return StageResult(
            files={"audio": out},
            meta={"samples": samples, "sample_rate": rate, "duration": samples / rate},
            usage=Usage(tokens_in=len(text), model=s.model),
        )
