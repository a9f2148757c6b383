"""Talking shots on ComfyUI: what a lip-sync or a speech-native workflow is given, and what the farm
makes of the clip it returns.

- A **lip-sync** workflow (stage ``lipsync``, op ``lipsync``: LatentSync, MuseTalk, InfiniteTalk
  video-to-video) gets the shot's clip as ``video`` and its dialogue as ``audio`` (every line at its
  offset, silence between, exactly the clip's length), and for multi-speaker models ``speaker1``..
  (one track per speaker on screen): ``workers.lipsync.shot.dialogue``.
- A **speech-native** clip workflow (stage ``video`` with ``"speech": true``: Wan S2V, InfiniteTalk
  image-to-video) gets the shot's keyframe and the same dialogue track, built here from the clip
  action's ``lines`` (each with its dubbed WAV as ``input`` and its ``offset_samples``) at the
  action's ``sample_rate``. It returns the clip and its sound: the workflow's own when its video has
  an audio stream, else the dialogue track the model was driven by; and where each line is said.

What comes back must be a video file of exactly the planned size, frame rate and frame count
(``workers.video.returned``): a lip-sync clip is never retimed or rescaled. Its sound is dropped
from the clip (the mux lays the lines, or the speech clip's own track, under it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.api import StageError
from workers.comfyui.outputs import VIDEO_SUFFIXES
from workers.comfyui.workflow import SPEAKER_SLOTS
from workers.lipsync.mouth import SAMPLE_RATES, read_line
from workers.lipsync.shot import dialogue, write_wav
from workers.video import returned
from workers.video.motion import clip_shape

DRIVE_RATE = 16_000  # the silent track of a speech backend's shot without lines (audio encoders resample)
_LINE_INPUT = re.compile(r"line[0-9]{1,3}")


@dataclass
class Talk:
    """What a talking action uploads (template input -> local file) and the dialogue behind it."""

    uploads: dict[str, Path] = field(default_factory=dict)
    track: Path | None = None  # the dialogue: every line, the clip's length
    sample_rate: int = 0
    spans: list[tuple[int, int]] = field(default_factory=list)  # each line's (offset, samples)


def is_speech(op: str, params: Mapping[str, Any]) -> bool:
    """Is this a speech-native clip (one with lines to say)? A clip without lines is an ordinary one."""
    return op == "clip" and bool(params.get("lines"))


def lipsync_tracks(
    inputs: Mapping[str, Path], params: Mapping[str, Any], work: Path, what: str, meta: dict[str, Any]
) -> Talk:
    """The lipsync action's uploads: its clip, the dialogue and each on-screen speaker's track."""
    said = dialogue(inputs, params, work, what)
    tracks = said.tracks()
    who = [speaker for speaker, _ in said.speakers]
    if len(who) > SPEAKER_SLOTS:
        meta["speakers_left_out"] = who[SPEAKER_SLOTS:]
    uploads = {"video": Path(inputs["clip"])} | {
        k: v for k, v in tracks.items() if k == "audio" or int(k[7:]) <= SPEAKER_SLOTS
    }
    meta["speakers"] = who
    return Talk(uploads, said.audio, said.job.sample_rate)


def speech_track(inputs: Mapping[str, Path], params: Mapping[str, Any], work: Path, what: str) -> Talk:
    """A speech-native clip's dialogue track: each line's WAV at its ``offset_samples``, silence
    between, ``frames * sample_rate / fps`` samples; StageError (not retryable) naming the field
    for lines that are missing, overlap or run past the clip."""
    _, _, fps, frames = clip_shape(params, what)
    rate = params.get("sample_rate")
    if rate not in SAMPLE_RATES or isinstance(rate, bool):
        raise StageError(f"{what}: params.sample_rate = {rate!r} must be one of {SAMPLE_RATES}", retryable=False)
    lines = params["lines"]
    if not isinstance(lines, list) or len(lines) > returned.MAX_SPOKEN:
        raise StageError(f"{what}: params.lines must be a list of at most {returned.MAX_SPOKEN} lines", retryable=False)
    total = frames * rate // fps
    every = np.zeros(total)
    spans: list[tuple[int, int]] = []
    for i, line in enumerate(lines):
        where = f"params.lines[{i}]"
        name = line.get("input") if isinstance(line, Mapping) else None
        if not isinstance(name, str) or not _LINE_INPUT.fullmatch(name) or name not in inputs:
            raise StageError(
                f"{what}: {where}.input = {name!r} names no line input; this backend is driven by the dubbed "
                "lines (feature voice_reference), so each line needs its WAV as input 'lineN'",
                retryable=False,
            )
        offset = line.get("offset_samples")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < total:
            raise StageError(
                f"{what}: {where}.offset_samples = {offset!r} must be from 0 to {total - 1}", retryable=False
            )
        try:
            samples = read_line(Path(inputs[name]), name, rate)
        except StageError as exc:
            raise StageError(f"{what}: {str(exc).removeprefix('lipsync: ')}", retryable=False) from None
        end = offset + len(samples)
        if end > total or not len(samples):
            raise StageError(
                f"{what}: {name} ({len(samples)} samples at {offset}) does not fit the clip's {total} samples",
                retryable=False,
            )
        clash = [j for j, (a, b) in enumerate(spans) if offset < b and a < end]
        if clash:
            raise StageError(f"{what}: params.lines[{clash[0]}] and {where} overlap", retryable=False)
        every[offset:end] = samples
        spans.append((offset, len(samples)))
    work.mkdir(parents=True, exist_ok=True)
    track = write_wav(work / "dialogue.wav", every, rate)
    return Talk({"audio": track}, track, rate, spans)


def silent_track(params: Mapping[str, Any], work: Path, what: str) -> Talk:
    """The drive of a speech backend's shot without lines: silence as long as the clip."""
    _, _, fps, frames = clip_shape(params, what)
    work.mkdir(parents=True, exist_ok=True)
    track = write_wav(work / "silence.wav", np.zeros(frames * DRIVE_RATE // fps), DRIVE_RATE)
    return Talk({"audio": track}, track, DRIVE_RATE)


def _source(what: str, files: list[tuple[str, bytes]], work: Path, backend: str, op: str) -> Path:
    name, data = files[0]
    suffix = Path(name).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise StageError(
            f"{what}: the workflow saved {name}, not a video; a talking clip is checked frame for frame at its "
            f"frame rate, so point backends.{backend}.outputs.{op}.clip at a node saving a video "
            "(VHS_VideoCombine with format video/h264-mp4, or SaveVideo)",
            retryable=False,
        )
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"returned{suffix}"
    source.write_bytes(data)
    return source


def lipsync_result(
    what: str,
    backend: str,
    files: list[tuple[str, bytes]],
    params: Mapping[str, Any],
    out_dir: Path,
    work: Path,
    meta: dict[str, Any],
) -> dict[str, Path]:
    """The returned lip-synced clip, checked against the plan and encoded as every clip is."""
    source = _source(what, files, work, backend, "lipsync")
    found = returned.probe(source, what)
    clip = returned.encode(source, out_dir / "clip.mp4", params, what)
    meta.update(frames=found.frames, sound="dropped (the mux lays the lines)" if found.audio else "none")
    return {"clip": clip}


def speech_result(
    what: str,
    backend: str,
    files: list[tuple[str, bytes]],
    params: Mapping[str, Any],
    talk: Talk,
    out_dir: Path,
    work: Path,
    meta: dict[str, Any],
    asked: int | None = None,
) -> dict[str, Path]:
    """A speech-native clip and its sound (the workflow's own, else the dialogue it was driven by),
    with each line's start and end in the clip (meta ``lines``). ``asked``: the frames the workflow
    was asked for, when its model makes only some lengths (setting frame_step): the first are kept."""
    _, _, fps, frames = clip_shape(params, what)
    source = _source(what, files, work, backend, "clip")
    found = returned.probe(source, what)
    clip = returned.encode(source, out_dir / "clip.mp4", params, what, asked)
    assert talk.track is not None
    rate, total = talk.sample_rate, frames * talk.sample_rate // fps
    audio = out_dir / "audio.wav"
    if found.audio:
        spare = ((asked or frames) - frames) * rate // fps
        returned.sound(source, audio, rate, total, fps, what, spare)
        meta["audio"] = "the workflow's own sound"
    else:
        shutil.copyfile(talk.track, audio)
        meta["audio"] = "the dialogue track the workflow was driven by (its video has no sound)"
    times = [{"start": a / rate, "end": (a + n) / rate} for a, n in talk.spans]
    meta.update(frames=frames, lines=returned.spoken_times(times, params["lines"], frames, fps, what))
    return {"clip": clip, "audio": audio}
