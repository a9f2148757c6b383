"""The lip-sync judge ``sync``: does the right face speak each line, in time?

For every line on screen it compares how much each face's mouth moves, frame by frame, with how
the line's loudness changes, frame by frame::

    shape                 the clip's size, fps and frame count are the lipsync action's
    sync:<i>              the speaker's mouth follows line i: Pearson correlation >= min_correlation
    speaker:<i>           of all faces, the speaker's mouth follows line i best (value: the
                          speaker's correlation minus the best other face's; > 0 passes)
    offset:<i>            the lag (frames, + = the mouth late) with the best correlation is within
                          max_offset_frames

Measured on one decode of the clip, cropped to the mouths and scaled so a mouth is about
MOUTH_PIXELS wide: each face's mouth region (a box MOUTH_BOX times the mouth's width, around the
mouth, both placed in frame n by ``motion.project``, so a camera move is followed) gives the mean
absolute luma change from frame n-1 to frame n. The line's audio, placed at its offset in the
clip, gives the RMS of each frame's window of samples, and the audio curve is the absolute change
of that RMS from frame to frame. Why the change and not the level: a mouth whose opening follows
the loudness changes the picture in proportion to how much the opening CHANGES, so the picture's
change matches the loudness's change (a steady vowel holds the mouth still and open); and a mouth
that moves whenever there is speech, still in silence, also moves most where the loudness changes
most (syllables start and end), so the change fits both.

Measured (tests/workers/test_judge_sync.py's clips: two faces, push_in, a mouth opening with the
line's per-frame RMS; synthetic syllables and espeak-ng en-us lines of 1.4-2.4 s):

- the speaker's correlation: 0.96-0.98 with the change, 0.69-0.72 with the level; the other,
  still face at most 0.41. A mouth moving to the other face's line: -0.08 to 0.18. Hence
  min_correlation 0.5.
- still mouths under the camera move (whole-pixel steps over textured skin): 0.25-0.37, the
  floor min_correlation stands above.
- a mouth 2 frames late measures lag 2, 4 frames late lag 4 (correlation unchanged); hence
  max_offset_frames 2 (83 ms at 24 fps, 67 ms at 30 fps).
- the embedded lip-sync backend (workers/lipsync/mouth.py) on the embedded keyframe and push_in
  clip of two characters, two espeak-ng lines, 360x640 at 24 fps and 1080x1920 at 30 fps: the
  speaker 0.75-0.84 at lag 0, the other face -0.16 to 0.18; the same clip before lip-sync 0.08-0.35
  (the other face up to 0.40); the speakers swapped fail sync and speaker.
- cost: 0.10-0.18 CPU-seconds per second of a 1080x1920 clip (0.04-0.08 at 360x640): one ffmpeg
  decode, cropped to the mouths and scaled so a mouth is MOUTH_PIXELS wide.

Correlations are taken over the line's frames with MARGIN frames either side, for each lag from
-MAX_LAG to +MAX_LAG frames; a face's correlation is its best over the lags. Off-screen lines and
speakers without a face pass their three checks, saying they were skipped.

The score is the mean over lines of the speaker's best correlation at a lag within
max_offset_frames, clamped to [0, 1] (an off-screen line 1; a clip of the wrong shape 0): in-time
motion that follows the audio closely scores high.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from workers.api import Estimate, Resources, StageError, StageResult, ToolMissing, Usage, children_cpu, run_tool
from workers.judge.audio import read_wav
from workers.judge.common import Check, judged_op, probe, rate, thresholds, verdict
from workers.video.motion import project

THRESHOLDS = {
    "min_correlation": (0.5, 0.0, 1.0),
    "max_offset_frames": (2.0, 0.0, 10.0),
}
MAX_LAG = 5  # lags searched, frames either way
MARGIN = 5  # frames of the clip either side of a line taken into its correlation
MOUTH_BOX = (1.5, 1.2)  # the mouth region: width and height as multiples of the mouth's width
MOUTH_PIXELS = 32  # a mouth is measured about this wide (the crop is scaled down, never up)
DECODE_PIXELS_PER_SECOND = 400e6  # decoding a 1080x1920 H.264 clip on one thread (as frames.py)
PLOT_SIZE = (720, 240)
_COLOURS = ((230, 60, 60), (40, 140, 240), (40, 180, 90), (220, 150, 20), (170, 80, 220))


@dataclass(frozen=True)
class Line:
    index: int
    samples: np.ndarray  # mono floats
    sample_rate: int
    offset_seconds: float
    speaker: str
    off_screen: bool


def _number(expect: Mapping[str, Any], name: str) -> int:
    value = expect.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise StageError(f"judge sync: params.expect.{name} must be a positive number, not {value!r}")
    return int(value)


def _faces(expect: Mapping[str, Any]) -> dict[str, tuple[float, float, float]]:
    """Each face's mouth centre and width in the keyframe, from ``expect.faces``."""
    out = {}
    for cid, face in dict(expect.get("faces") or {}).items():
        try:
            x, y = (float(v) for v in face["mouth"])
            width = float(face["mouth_width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StageError(f"judge sync: expect.faces.{cid} needs mouth [x, y] and mouth_width") from exc
        if not (math.isfinite(x) and math.isfinite(y) and width > 0):
            raise StageError(f"judge sync: expect.faces.{cid} has a mouth at {x}, {y} of width {width}")
        out[str(cid)] = (x, y, width)
    return out


def _lines(inputs: Mapping[str, Path], expect: Mapping[str, Any]) -> list[Line]:
    sample_rate = _number(expect, "sample_rate")
    out = []
    for i, line in enumerate(list(expect.get("lines") or [])):
        name = str(line.get("input") or "")
        path = inputs.get(name)
        if path is None:
            raise StageError(f"judge sync: expect.lines[{i}].input {name!r} is not one of the inputs")
        offset = line.get("offset_samples", 0)
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or offset < 0:
            raise StageError(f"judge sync: expect.lines[{i}].offset_samples must be a number >= 0, not {offset!r}")
        audio = read_wav(Path(path))
        out.append(
            Line(
                i,
                audio.samples,
                audio.sample_rate,
                float(offset) / sample_rate,
                str(line.get("speaker") or ""),
                bool(line.get("off_screen")),
            )
        )
    return out


def envelope(line: Line, fps: int, frames: int) -> np.ndarray:
    """The line's RMS in each frame's window of the clip (0 outside the line)."""
    squares = np.concatenate(([0.0], np.cumsum(line.samples.astype(np.float64) ** 2)))
    times = np.arange(frames + 1) / fps - line.offset_seconds
    edges = np.clip(np.round(times * line.sample_rate).astype(np.int64), 0, len(line.samples))
    counts = np.diff(edges)
    sums = squares[edges[1:]] - squares[edges[:-1]]
    return np.sqrt(np.where(counts > 0, sums / np.maximum(counts, 1), 0.0))


def _line_frames(line: Line, fps: int) -> tuple[int, int]:
    start = math.floor(line.offset_seconds * fps)
    end = math.ceil((line.offset_seconds + len(line.samples) / line.sample_rate) * fps)
    return start, end


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 where either side does not vary."""
    x, y = x - x.mean(), y - y.mean()
    norm = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / norm if norm > 1e-12 else 0.0


def lagged(motion: np.ndarray, audio: np.ndarray, window: np.ndarray) -> dict[int, float]:
    """Correlation of ``motion`` over ``window`` with ``audio`` LAG frames earlier, per lag."""
    out = {}
    for lag in range(-MAX_LAG, MAX_LAG + 1):
        src = window - lag
        shifted = np.where((src >= 0) & (src < len(audio)), audio[np.clip(src, 0, len(audio) - 1)], 0.0)
        out[lag] = pearson(motion[window], shifted)
    return out


_Regions = dict[str, list[tuple[float, float, float, float]]]


def _regions(
    faces: Mapping[str, tuple[float, float, float]], camera: str, size: tuple[int, int], frames: int
) -> _Regions:
    """Each face's mouth box (x0, y0, x1, y1, in the clip's pixels) in every frame."""
    width, height = size
    out: _Regions = {}
    for cid, (x, y, mouth) in faces.items():
        boxes = []
        for n in range(frames):
            px, py, scale = project(camera, width, height, frames, n, x, y)
            hw, hh = MOUTH_BOX[0] * mouth * scale / 2, MOUTH_BOX[1] * mouth * scale / 2
            boxes.append((px - hw, py - hh, px + hw, py + hh))
        out[cid] = boxes
    return out


def _crop(regions: _Regions, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The even-aligned box (x, y, w, h) of the clip holding every mouth box; None if none is in it."""
    boxes = [b for bs in regions.values() for b in bs]
    if not boxes:
        return None
    x0 = max(0, math.floor(min(b[0] for b in boxes)) // 2 * 2)
    y0 = max(0, math.floor(min(b[1] for b in boxes)) // 2 * 2)
    x1 = min(size[0], math.ceil(max(b[2] for b in boxes)))
    y1 = min(size[1], math.ceil(max(b[3] for b in boxes)))
    w, h = (x1 - x0 + 1) // 2 * 2, (y1 - y0 + 1) // 2 * 2
    if w < 2 or h < 2 or x0 + w > size[0] or y0 + h > size[1]:
        w, h = min(w, size[0] - x0) // 2 * 2, min(h, size[1] - y0) // 2 * 2
    return (x0, y0, w, h) if w >= 2 and h >= 2 else None


def _decode(subject: Path, crop: tuple[int, int, int, int], out: tuple[int, int]) -> np.ndarray:
    """The clip's luma inside ``crop``, scaled to ``out``: one array (frames, height, width)."""
    x, y, w, h = crop
    ow, oh = out
    graph = f"crop={w}:{h}:{x}:{y},scale={ow}:{oh}:flags=area,format=gray"
    try:
        proc = run_tool(
            ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(subject), "-map", "0:v:0"]
            + ["-vf", graph, "-fps_mode", "passthrough", "-f", "rawvideo", "-"],
            what="judge sync: decode the clip",
            timeout=300,
        )
    except ToolMissing:
        raise
    except StageError as exc:
        raise StageError(str(exc), retryable=True) from exc
    raw = np.frombuffer(proc.stdout, dtype=np.uint8)
    n = len(raw) // (ow * oh)
    return raw[: n * ow * oh].reshape(n, oh, ow)


def mouth_motion(
    luma: np.ndarray, regions: _Regions, crop: tuple[int, int, int, int], out: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Per face, the mean absolute luma change of its mouth region from the frame before (frame 0: 0)."""
    x, y, w, h = crop
    kx, ky = out[0] / w, out[1] / h
    motion = {}
    for cid, boxes in regions.items():
        values = np.zeros(len(luma))
        for n in range(1, len(luma)):
            b = boxes[n]
            c0, c1 = sorted((max(0, math.floor((b[0] - x) * kx)), min(out[0], math.ceil((b[2] - x) * kx))))
            r0, r1 = sorted((max(0, math.floor((b[1] - y) * ky)), min(out[1], math.ceil((b[3] - y) * ky))))
            if c1 - c0 < 1 or r1 - r0 < 1:
                continue  # the mouth is outside the picture in this frame
            now = luma[n, r0:r1, c0:c1].astype(np.int16)
            values[n] = float(np.abs(now - luma[n - 1, r0:r1, c0:c1]).mean())
        motion[cid] = values
    return motion


def _skipped(i: int, why: str, least: float, most: float) -> list[Check]:
    return [
        Check(f"sync:{i}", None, least, True, f"skipped: {why}"),
        Check(f"speaker:{i}", None, 0.0, True, f"skipped: {why}"),
        Check(f"offset:{i}", None, most, True, f"skipped: {why}"),
    ]


def _line_checks(
    line: Line, motion: Mapping[str, np.ndarray], audio: np.ndarray, fps: int, limits: Mapping[str, float]
) -> tuple[list[Check], float]:
    """The three checks of one on-screen line, and its score."""
    i, least, most = line.index, limits["min_correlation"], limits["max_offset_frames"]
    frames = len(audio)
    start, end = _line_frames(line, fps)
    window = np.arange(max(1, start - MARGIN), min(frames, end + MARGIN))
    if len(window) < 3:
        why = f"the line (frames {start}-{end}) is not inside the clip's {frames} frames"
        return [Check(n, None, t, False, why) for n, t in ((f"sync:{i}", least), (f"speaker:{i}", 0.0))] + [
            Check(f"offset:{i}", None, most, False, why)
        ], 0.0
    by_face = {cid: lagged(m, audio, window) for cid, m in motion.items()}
    best = {cid: max(c.values()) for cid, c in by_face.items()}
    own = by_face[line.speaker]
    lag = max(own, key=lambda k: (own[k], -abs(k)))
    corr = own[lag]
    span = f"frames {window[0]}-{window[-1]}"
    sync = Check(
        f"sync:{i}",
        corr,
        least,
        corr >= least,
        f"{line.speaker}'s mouth follows the line with correlation {corr:.2f} ({span}), at least {least:.2f} wanted",
        score=max(0.0, corr) / least if least else None,
    )
    others = {cid: c for cid, c in best.items() if cid != line.speaker}
    if others:
        rival = max(others, key=lambda k: others[k])
        lead = corr - others[rival]
        figures = ", ".join(f"{cid} {c:.2f}" for cid, c in sorted(best.items(), key=lambda kv: -kv[1]))
        who = max(best, key=lambda k: best[k])
        speaker = Check(
            f"speaker:{i}",
            lead,
            0.0,
            lead > 0,
            f"{who}'s mouth follows the line best ({figures}); {line.speaker} speaks",
        )
    else:
        speaker = Check(f"speaker:{i}", None, 0.0, True, f"{line.speaker} is the only face")
    when = "late" if lag > 0 else "early"
    unit = "frame" if abs(lag) == 1 else "frames"
    said = "in time" if lag == 0 else f"{abs(lag)} {unit} {when} ({abs(lag) / fps:.2f} s)"
    offset = Check(
        f"offset:{i}",
        float(lag),
        most,
        abs(lag) <= most,
        f"{line.speaker}'s mouth moves {said}, at most {most:g} frames wanted",
    )
    in_time = max(c for k, c in own.items() if abs(k) <= most)
    return [sync, speaker, offset], min(1.0, max(0.0, in_time))


def plot(path: Path, motion: Mapping[str, np.ndarray], audio: np.ndarray, lines: Sequence[Line], fps: int) -> Path:
    """Mouth motion of each face and the audio curve over the frames; speakers' faces in colour,
    the others grey, the audio black, each line's frames shaded and labelled with its speaker."""
    im = Image.new("RGB", PLOT_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(im)
    w, h, top = PLOT_SIZE[0], PLOT_SIZE[1], 16
    frames = max(2, len(audio))

    def xs(n: float) -> float:
        return 4 + n * (w - 8) / (frames - 1)

    for line in lines:
        a, b = _line_frames(line, fps)
        draw.rectangle((xs(a), top, xs(b), h - 2), fill=(235, 235, 235))

    def curve(values: np.ndarray, colour: tuple[int, int, int], width: int) -> None:
        peak = float(values.max()) if len(values) else 0.0
        scaled = values / peak if peak > 0 else values
        draw.line([(xs(n), h - 4 - v * (h - top - 8)) for n, v in enumerate(scaled)], fill=colour, width=width)

    speakers = sorted({ln.speaker for ln in lines if not ln.off_screen and ln.speaker in motion})
    colours = {cid: _COLOURS[k % len(_COLOURS)] for k, cid in enumerate(speakers)}
    for line in lines:
        a = _line_frames(line, fps)[0]
        draw.text((xs(a) + 2, top), f"{line.index}: {line.speaker}", fill=colours.get(line.speaker, (120, 120, 120)))
    label_x = 4
    for cid, values in motion.items():
        colour = colours.get(cid, (160, 160, 160))
        curve(values, colour, 2)
        draw.text((label_x, 2), cid, fill=colour)
        label_x += 8 * len(cid) + 12
    curve(audio, (0, 0, 0), 1)
    draw.text((label_x, 2), "audio", fill=(0, 0, 0))
    im.save(path)
    return path


class SyncJudge:
    """Judges a lipsync clip: does each line's speaker's mouth move with the line, in time, and
    more than any other face's?

    op "judge": params ``{"target": {"op": "lipsync", ...}, "thresholds": {...overrides}, "expect":
    the lipsync action's params (width, height, fps, frames, sample_rate, camera, faces, lines)}``;
    inputs ``{"subject": the lipsync clip, "line0", ...: the lines' WAVs}``. Returns the verdict
    (``workers.judge.common.verdict``, the score as the module says) with ``evidence``: a plot of
    each face's mouth motion and the audio over the frames.

    Raises StageError (retryable) when it cannot measure: an unreadable clip or WAV, an ffmpeg
    failure; StageError (not retryable) for bad params or an unknown threshold.

    Example::

        BACKEND.run("judge", {"subject": clip, "line0": wav}, {"target": {"op": "lipsync"},
                    "thresholds": {}, "expect": lipsync_params}, out_dir).meta["verdict"]
    """

    stage, name, version = "judge", "sync", "1"
    ops = ("judge",)
    judges = ("lipsync",)
    thresholds = THRESHOLDS
    resources = Resources(num_cpus=1)
    tools = ("ffmpeg", "ffprobe")

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        expect = dict(params.get("expect") or {})
        pixels = float(expect.get("width") or 1080) * float(expect.get("height") or 1920)
        return Estimate(seconds=0.3 + float(expect.get("frames") or 1) * pixels / DECODE_PIXELS_PER_SECOND)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        judged_op(self, op, params)
        limits = thresholds(THRESHOLDS, params, "sync")
        expect = dict(params.get("expect") or {})
        subject = inputs.get("subject")
        if subject is None:
            raise StageError("judge sync: input 'subject' is missing")
        want_w, want_h = _number(expect, "width"), _number(expect, "height")
        want_fps, want_frames = _number(expect, "fps"), _number(expect, "frames")
        camera = str(expect.get("camera") or "static")
        faces = _faces(expect)
        lines = _lines(inputs, expect)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cpu0 = children_cpu()
        try:
            info = probe(Path(subject), "judge sync: probe the clip")
        except ToolMissing:
            raise
        except StageError as exc:
            raise StageError(str(exc), retryable=True) from exc
        video: dict[str, Any] = next((s for s in info.get("streams") or [] if s.get("codec_type") == "video"), {})
        w, h = int(video.get("width") or 0), int(video.get("height") or 0)
        fps, frames = rate(video.get("r_frame_rate")), int(video.get("nb_read_packets") or 0)
        ok = (w, h, frames) == (want_w, want_h, want_frames) and abs(fps - want_fps) < 1e-6
        shape = Check(
            "shape",
            float(frames),
            float(want_frames),
            ok,
            f"{w}x{h} at {fps:g} fps, {frames} frames; {want_w}x{want_h} at {want_fps} fps, {want_frames} frames wanted",
        )
        checks, scores = [shape], []
        motion = {cid: np.zeros(want_frames) for cid in faces}  # mouths outside the picture do not move
        audio = np.zeros(want_frames)
        if ok:
            regions = _regions(faces, camera, (w, h), frames)
            crop = _crop(regions, (w, h))
            if crop is not None:
                k = min(1.0, MOUTH_PIXELS / min(m for _, _, m in faces.values()))
                size = (max(2, round(crop[2] * k)), max(2, round(crop[3] * k)))
                luma = _decode(Path(subject), crop, size)
                if len(luma) != frames:
                    raise StageError(f"judge sync: decoded {len(luma)} of the clip's {frames} frames", retryable=True)
                motion = mouth_motion(luma, regions, crop, size)
        for line in lines:
            curve = np.abs(np.diff(envelope(line, want_fps, want_frames), prepend=0.0))
            audio = audio + curve
            least, most = limits["min_correlation"], limits["max_offset_frames"]
            if not ok:
                why = "not measured: the clip's shape is wrong"
                checks += [Check(c.name, None, c.threshold, False, why) for c in _skipped(line.index, why, least, most)]
                scores.append(0.0)
            elif line.off_screen or line.speaker not in faces:
                why = f"{line.speaker} speaks off screen" if line.off_screen else f"{line.speaker} has no face drawn"
                checks += _skipped(line.index, why + ", no mouth is expected to move", least, most)
                scores.append(1.0)
            else:
                own, score = _line_checks(line, motion, curve, want_fps, limits)
                checks += own
                scores.append(score)
        evidence = plot(out_dir / "evidence.png", motion, audio, lines, want_fps)
        result = verdict(
            checks, out_dir, {"evidence": evidence}, Usage(cpu_seconds=children_cpu() - cpu0, model="sync")
        )
        # The score is the lines' correlation (see the module's docstring), not the checks' mean.
        result.meta["score"] = round(sum(scores) / len(scores), 6) if scores and ok else (1.0 if ok else 0.0)
        path = result.files["verdict"]
        path.write_text(json.dumps(result.meta, indent=2, sort_keys=True) + "\n")
        return result


BACKEND = SyncJudge()
