"""Clips a model returns, checked and put in the farm's clip format.

A lip-sync model or a speech-native video model must return exactly the planned size, frame rate
and number of frames: timing is what makes lips meet the voice, so the farm never retimes, pads or
rescales what such a model returns. Any other clip is a failed action whose message gives the
figures found and the figures expected (a workflow usually needs its frame rate or size mapped).
What passes is re-encoded video-only with the clips' ENCODER_ARGS and VIDEO_TIMESCALE, so assembly
still joins every clip by stream copy; a speech-native clip's own audio is written out as the
shot's WAV: mono 16-bit at the plan's sample rate, exactly as long as the clip.
"""

from __future__ import annotations

import json
import math
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from workers.api import StageError, run_tool
from workers.video.motion import ENCODER_ARGS, TIMESCALE_ARGS, clip_shape

MAX_SPOKEN = 64  # lines in one shot


@dataclass(frozen=True)
class Found:
    """What ffprobe finds in a returned clip."""

    width: int
    height: int
    fps: Fraction
    frames: int
    audio: bool

    def figures(self) -> str:
        fps = f"{float(self.fps):g}" if self.fps else "an unknown rate"
        return f"{self.width}x{self.height} at {fps} fps with {self.frames} frames"


def probe(path: Path, what: str) -> Found:
    """Size, frame rate, frame count (packets read) and whether there is sound, of ``path``."""
    proc = run_tool(
        ["ffprobe", "-v", "error", "-count_packets", "-of", "json"]
        + ["-show_entries", "stream=codec_type,width,height,r_frame_rate,avg_frame_rate,nb_read_packets", str(path)],
        what=f"{what}: read the returned clip",
        timeout=120,
    )
    try:
        streams = json.loads(proc.stdout or b"{}").get("streams") or []
    except ValueError:
        streams = []
    video = [s for s in streams if s.get("codec_type") == "video"]
    if not video:
        raise StageError(f"{what}: the returned file has no video stream", retryable=False)
    v = video[0]
    rates = {_rate(v.get("r_frame_rate")), _rate(v.get("avg_frame_rate"))} - {Fraction(0)}
    try:
        return Found(
            int(v.get("width") or 0),
            int(v.get("height") or 0),
            rates.pop() if len(rates) == 1 else Fraction(0),  # two rates: a variable frame rate
            int(v.get("nb_read_packets") or 0),
            any(s.get("codec_type") == "audio" for s in streams),
        )
    except (TypeError, ValueError) as exc:
        raise StageError(f"{what}: ffprobe could not read the returned clip: {exc}", retryable=False) from exc


def _rate(text: Any) -> Fraction:
    try:
        return Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return Fraction(0)


def require(found: Found, params: Mapping[str, Any], what: str, asked: int | None = None) -> tuple[int, int, int, int]:
    """The planned (width, height, fps, frames); StageError (not retryable) with both sets of
    figures when ``found`` is not exactly that. ``asked``: the frames the model was asked for, when
    it makes only some lengths (the clip's first ``frames`` are kept: cut, never retimed)."""
    width, height, fps, frames = clip_shape(params, what)
    want = asked if asked is not None and asked >= frames else frames
    if (found.width, found.height, found.fps, found.frames) != (width, height, Fraction(fps), want):
        raise StageError(
            f"{what}: the returned clip is {found.figures()}; {width}x{height} at {fps} fps with {want} "
            "frames was asked for (a lip-sync or speech-native clip is never retimed or rescaled: its "
            "timing is what meets the voice)",
            retryable=False,
        )
    return width, height, fps, frames


def encode(source: Path, out: Path, params: Mapping[str, Any], what: str, asked: int | None = None) -> Path:
    """Check ``source`` against the plan (``asked``: see ``require``) and re-encode its video as every
    clip is (no sound), its first ``frames`` frames."""
    width, height, fps, frames = require(probe(source, what), params, what, asked)
    graph = (
        f"setpts=N/({fps}*TB),scale={width}:{height}:out_color_matrix=bt709:out_range=tv:flags=bicubic,"
        "format=yuv420p,setsar=1"
    )
    run_tool(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(Path(source).resolve()), "-map", "0:v:0", "-an"]
        + ["-vf", graph, "-r", str(fps), "-frames:v", str(frames), *ENCODER_ARGS, *TIMESCALE_ARGS]
        + ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-f", "mp4", str(out.resolve())],
        what=f"{what}: encode the clip",
    )
    again = probe(out, what)
    if (again.width, again.height, again.frames) != (width, height, frames):
        raise StageError(f"{what}: re-encoding gave {again.figures()}", retryable=False)
    return out


def sound(source: Path, out: Path, sample_rate: int, total_samples: int, fps: int, what: str, spare: int = 0) -> Path:
    """``source``'s audio as the shot's WAV (mono 16-bit at ``sample_rate``), exactly
    ``total_samples`` long: a track a frame or less short (an encoder's rounding) is padded with
    silence; a longer one (beyond ``spare`` samples: frames asked for beyond the clip's, which are
    cut), or one much shorter than the clip, is refused with its length."""
    raw = run_tool(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(Path(source).resolve()), "-map", "0:a:0", "-vn"]
        + ["-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le", "-f", "s16le", "-"],
        what=f"{what}: read the clip's sound",
    ).stdout
    count, per_frame = len(raw) // 2, sample_rate // fps
    if count > total_samples + spare + per_frame or count < total_samples - max(per_frame, sample_rate // 2):
        raise StageError(
            f"{what}: the returned sound lasts {count / sample_rate:.3f} s; the clip lasts "
            f"{total_samples / sample_rate:.3f} s",
            retryable=False,
        )
    pcm = raw[: 2 * total_samples] + bytes(2 * max(0, total_samples - count))
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out


def asked_frames(frames: int, step: tuple[int, int] | None) -> int:
    """The frames to ask of a model that makes only lengths ``multiple * k + remainder`` (``step``):
    the first such length of at least ``frames``."""
    if step is None:
        return frames
    multiple, remainder = step
    return frames + (remainder - frames) % multiple


def spoken_times(times: Any, lines: Sequence[Any], frames: int, fps: int, what: str) -> list[dict[str, float]]:
    """A speech-native clip's line times (meta ``lines``: ``[{"start", "end"}]`` seconds into the
    clip, one per line asked for, in order), checked: each inside the clip, each after the last."""
    duration = frames / fps
    if not isinstance(times, list) or len(times) != len(lines) or len(times) > MAX_SPOKEN:
        count = len(times) if isinstance(times, list) else "no list of"
        raise StageError(f"{what}: the model gave {count} line times for {len(lines)} lines", retryable=False)
    out: list[dict[str, float]] = []
    last_end = 0.0
    for i, t in enumerate(times):
        start = t.get("start") if isinstance(t, Mapping) else None
        end = t.get("end") if isinstance(t, Mapping) else None
        ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (start, end))
        if not ok:
            raise StageError(f"{what}: line {i}'s time {t!r} is not {{start, end}} in seconds", retryable=False)
        start, end = float(start), float(end)  # type: ignore[arg-type]
        if not (0.0 <= start < end <= duration + 1e-6) or start < last_end - 1.0 / fps:
            raise StageError(
                f"{what}: line {i} is said from {start:.3f} s to {end:.3f} s, which is not inside the "
                f"{duration:.3f} s clip after line {i - 1}'s end ({last_end:.3f} s)"
                if i
                else f"{what}: line 0 is said from {start:.3f} s to {end:.3f} s, not inside the {duration:.3f} s clip",
                retryable=False,
            )
        out.append({"start": round(start, 6), "end": round(min(end, duration), 6)})
        last_end = end
    return out
