"""Dubbing with espeak-ng: one line of dialogue in, one trimmed mono WAV out.

The embedded, offline voice of the farm. Every character gets an espeak voice (language plus an
optional variant such as ``en-us+f3``), a pitch and a rate; the result is a PCM WAV at the
episode's sample rate whose ends are trimmed close to the speech, so subtitle windows built from
its length are tight.
"""

from __future__ import annotations

import array
import re
import sys
import unicodedata
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers import scratch
from workers.api import Estimate, Resources, StageError, StageResult, Usage, children_cpu, run_tool

# A sample counts as speech when its magnitude reaches -50 dBFS (32768 * 10^(-50/20) ~ 104).
# espeak-ng pads with digital silence, so any small fixed threshold finds the same edges; a fixed
# one keeps the output a pure function of the input.
SILENCE_THRESHOLD = 104
# Speech onsets and releases are quiet: keep this much of espeak's own signal around the loud part.
EDGE_PAD_SECONDS = 0.05
# What a line that yields no audible speech (empty text, unspeakable symbols) becomes.
SILENT_LINE_SECONDS = 0.3

# espeak voice names are language codes with an optional "+variant": letters, digits, "-", "_".
# The name travels as its own argv word after -v; refusing anything else (e.g. a leading "-")
# keeps it from ever being read as an option.
_VOICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\+[A-Za-z0-9_-]+)?")


def _clean_text(text: str) -> str:
    """Control characters (NUL, escape, ...) become spaces; newlines and tabs stay."""
    return "".join(" " if unicodedata.category(ch) == "Cc" and ch not in "\n\t" else ch for ch in text)


def _voice_args(voice: Any) -> list[str]:
    if not isinstance(voice, Mapping):
        raise StageError("dubbing: params.voice must be an object with voice, pitch and rate")
    name = voice.get("voice")
    pitch = voice.get("pitch", 50)
    rate = voice.get("rate", 175)
    if not isinstance(name, str) or not _VOICE.fullmatch(name):
        raise StageError(f"dubbing: voice name {name!r} is not an espeak-ng voice such as 'en-us+f3'")
    if not isinstance(pitch, int) or isinstance(pitch, bool) or not 0 <= pitch <= 99:
        raise StageError(f"dubbing: pitch {pitch!r} must be an integer from 0 to 99")
    if not isinstance(rate, int) or isinstance(rate, bool) or not 80 <= rate <= 450:
        raise StageError(f"dubbing: rate {rate!r} must be an integer from 80 to 450 (words per minute)")
    return ["-v", name, "-p", str(pitch), "-s", str(rate)]


def trim_silence(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` keeping the speech plus EDGE_PAD_SECONDS either side."""
    try:
        with wave.open(str(src), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise StageError(f"dubbing: unreadable WAV from the speech engine: {exc}") from exc
    if width != 2 or channels != 1:
        raise StageError(
            f"dubbing: the speech engine wrote {channels} channel(s) of {8 * width}-bit audio, expected mono 16-bit"
        )
    samples = array.array("h")
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    first = next((i for i, s in enumerate(samples) if abs(s) >= SILENCE_THRESHOLD), None)
    if first is not None:
        last = next(i for i in range(len(samples) - 1, -1, -1) if abs(samples[i]) >= SILENCE_THRESHOLD)
        pad = round(EDGE_PAD_SECONDS * rate)
        kept = samples[max(0, first - pad) : min(len(samples), last + 1 + pad)]
    else:
        kept = array.array("h", bytes(2 * round(SILENT_LINE_SECONDS * rate)))
    if sys.byteorder == "big":
        kept.byteswap()
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(kept.tobytes())


class EspeakDubbing:
    """Speaks one line with espeak-ng.

    op "line": params ``{"text": str, "voice": {"voice": "en-us+f3", "pitch": 0-99,
    "rate": 80-450}, "sample_rate": 48000}``, no inputs. Writes ``line.wav`` (mono s16 PCM at
    ``sample_rate``, silence trimmed to EDGE_PAD_SECONDS at each end; SILENT_LINE_SECONDS of silence
    when nothing audible is said). The text goes to espeak-ng through a UTF-8 file, never argv, and
    is never read as SSML.

    Raises StageError for an invalid voice, pitch or rate, or when espeak-ng or ffmpeg fails;
    ToolMissing when either is not installed.

    Example::

        BACKEND.run("line", {}, {"text": "Hello.", "voice": {"voice": "en-us+f3", "pitch": 60,
                    "rate": 170}, "sample_rate": 48000}, out_dir).files["audio"]
    """

    stage, name, version = "dubbing", "espeak-ng", "1"
    ops = ("line",)
    tools = ("espeak-ng", "ffmpeg")
    resources = Resources(num_cpus=1)

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=0.2 + 0.01 * len(str(params.get("text", ""))))

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        if op not in self.ops:
            raise StageError(f"dubbing: unknown op {op!r}; espeak-ng does {self.ops}")
        text = params.get("text")
        if not isinstance(text, str):
            raise StageError("dubbing: params.text must be a string")
        sample_rate = params.get("sample_rate", 48000)
        if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 192000:
            raise StageError(f"dubbing: sample_rate {sample_rate!r} must be an integer 8000-192000")
        voice = _voice_args(params.get("voice"))

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "line.wav"
        cpu0 = children_cpu()
        with scratch.scratch_dir("espeak-") as tmp:
            text_file, spoken, trimmed = Path(tmp) / "line.txt", Path(tmp) / "espeak.wav", Path(tmp) / "trim.wav"
            text_file.write_text(_clean_text(text), encoding="utf-8")
            # -b 1: the file is UTF-8. No -m, so markup is spoken (or skipped), never obeyed.
            run_tool(["espeak-ng", *voice, "-b", "1", "-f", str(text_file), "-w", str(spoken)], what="dubbing")
            trim_silence(spoken, trimmed)
            run_tool(
                [
                    "ffmpeg",
                    "-nostdin",
                    "-v",
                    "error",
                    "-y",
                    "-i",
                    str(trimmed),
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
                    str(out),
                ],
                what="dubbing: resample",
            )
        cpu = children_cpu() - cpu0
        with wave.open(str(out), "rb") as w:
            samples, rate = w.getnframes(), w.getframerate()
        return StageResult(
            files={"audio": out},
            meta={"samples": samples, "sample_rate": rate, "duration": samples / rate},
            usage=Usage(cpu_seconds=cpu, model="espeak-ng"),
        )


BACKEND = EspeakDubbing()
