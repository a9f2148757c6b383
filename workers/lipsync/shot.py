"""What a lip-sync model is given, and what the farm makes of what it returns.

The farm's lipsync action carries one shot: its clip (input ``clip``), each line's WAV (inputs
``line0``..) and params (``mouth.parse``: size, fps, frames, sample rate, and for each line its
offset in the shot, its speaker and whether the speaker is off screen). Lip-sync models take one
sound track as long as the video, and multi-speaker ones (InfiniteTalk/MultiTalk style) a track per
speaker; so a model backend is handed:

- ``audio``: every line placed at its offset, silence between, exactly the clip's length;
- ``speaker1``..``speakerN``: the same, with only the lines of one speaker on screen each, in the
  order they first speak (off-screen lines are in ``audio`` only: no face is to move for them).

What it returns goes through ``workers.video.returned.encode``: exactly the planned size, fps and
frames, or a failed action with the figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.api import StageError
from workers.lipsync.mouth import Job, parse, read_line

MAX_SPEAKERS = 8


@dataclass(frozen=True)
class Dialogue:
    job: Job
    audio: Path  # every line
    speakers: tuple[tuple[str, Path], ...]  # (character id, its on-screen lines only), first speaker first

    def tracks(self) -> dict[str, Path]:
        """Track name -> WAV: "audio", "speaker1", ..."""
        return {"audio": self.audio} | {f"speaker{i}": p for i, (_, p) in enumerate(self.speakers, start=1)}


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Float samples in [-1, 1] as a mono 16-bit WAV at ``sample_rate``."""
    import wave

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return path


def dialogue(inputs: Mapping[str, Path], params: Mapping[str, Any], work: Path, what: str) -> Dialogue:
    """The shot's sound tracks for a model, written under ``work``; StageError for params or
    inputs that do not make a shot (a missing line, lines that overlap or run past the clip)."""
    job = parse(params)
    missing = [name for name in ["clip", *(line.input for line in job.lines)] if name not in inputs]
    if missing:
        raise StageError(f"{what}: input(s) {', '.join(missing)} missing")
    total = job.frames * job.sample_rate // job.fps
    every = np.zeros(total)
    by_speaker: dict[str, np.ndarray] = {}
    taken: list[tuple[int, int, str]] = []
    for line in job.lines:
        samples = read_line(Path(inputs[line.input]), line.input, job.sample_rate)
        end = line.offset + len(samples)
        if end > total:
            raise StageError(
                f"{what}: {line.input} ({len(samples)} samples at {line.offset}) runs past the shot's {total} samples",
                retryable=False,
            )
        for a, b, other in taken:
            if line.offset < b and a < end:
                raise StageError(f"{what}: lines {other} and {line.input} overlap", retryable=False)
        taken.append((line.offset, end, line.input))
        every[line.offset : end] = samples
        if not _off(params, line.input):
            track = by_speaker.setdefault(line.speaker, np.zeros(total))
            track[line.offset : end] = samples
    if len(by_speaker) > MAX_SPEAKERS:
        raise StageError(f"{what}: {len(by_speaker)} speakers on screen in one shot; at most {MAX_SPEAKERS}")
    work.mkdir(parents=True, exist_ok=True)
    audio = write_wav(work / "dialogue.wav", every, job.sample_rate)
    speakers = tuple(
        (who, write_wav(work / f"speaker{i}.wav", track, job.sample_rate))
        for i, (who, track) in enumerate(by_speaker.items(), start=1)
    )
    return Dialogue(job, audio, speakers)


def _off(params: Mapping[str, Any], name: str) -> bool:
    """Is the line named ``name`` said off screen?"""
    return any(bool(line.get("off_screen")) for line in params.get("lines", []) if line.get("input") == name)
