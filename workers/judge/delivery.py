"""The delivery judge: is the finished episode fit to publish?

It measures the episode MP4 and its SRT against what the plan asked for and what platforms expect:

* loudness and true peak, read from ffmpeg's EBU R128 meter (``ebur128=peak=true``);
* video and audio streams of the same length (within one frame);
* the format: H.264 High profile yuv420p at the planned size and rate, AAC at the planned sample
  rate, and fast start (the ``moov`` box before ``mdat``, read from the file's top-level boxes);
* the subtitles: every dialogue line covered by its cue(s) from its first to its last sample
  (within one frame; or to where the 5/6 s minimum takes it), with its whole text; no line longer
  than the language allows, at most two lines a cue, no cue shorter than 5/6 s unless the next
  one cuts it; and the reading speed.

A take that cannot be measured (ffmpeg fails, a file cannot be read) raises a retryable
StageError; an episode that measures badly is a ``fail`` verdict naming the check.
"""

from __future__ import annotations

import math
import re
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.api import Estimate, Resources, StageError, StageResult, ToolMissing, run_tool
from workers.assembly._subtitles import CJK_LINE, LATIN_LINE, MAX_LINES, is_cjk, line_length
from workers.judge.common import Check, judged_op, probe, rate, thresholds, verdict

THRESHOLDS = {
    "loudness_tolerance_lu": (1.0, 0.1, 10.0),
    "max_true_peak_db": (-1.0, -9.0, 0.0),
    "max_timing_error_frames": (1.0, 0.0, 10.0),
    # A cue lasts exactly its line's audio, so a cue reads as fast as its voice speaks: the subtitling
    # conventions (about 20 characters a second, 9 for CJK) are reported in the check's detail, and what
    # fails is speech no one could read along with, faster than 1.5 times them (a line cut short, or a
    # voice far too fast). A studio holding its voices to the conventions sets 20 and 9.
    "max_reading_speed_latin_cps": (30.0, 5.0, 60.0),
    "max_reading_speed_cjk_cps": (13.5, 2.0, 30.0),
}
CONVENTION_CPS = {False: 20.0, True: 9.0}  # the subtitling conventions, said in the detail
MIN_CUE_S = 5 / 6
_SUMMARY = re.compile(r"Summary:(.*)", re.S)
_INTEGRATED = re.compile(r"I:\s+(-?inf|-?[\d.]+) LUFS")
_PEAK = re.compile(r"True peak:\s+Peak:\s+(-?inf|-?[\d.]+) dBFS")
_TIMING = re.compile(r"(\d+):(\d\d):(\d\d),(\d\d\d) --> (\d+):(\d\d):(\d\d),(\d\d\d)")


@dataclass(frozen=True)
class SrtCue:
    start: float
    end: float
    lines: tuple[str, ...]


def _measure(args: list[str], what: str) -> Any:
    """run_tool, with a failure to measure made retryable (the judge could not measure)."""
    try:
        return run_tool(args, what=what, timeout=600)
    except ToolMissing:
        raise
    except StageError as exc:
        raise StageError(str(exc), retryable=True) from exc


def _measure_probe(path: Path) -> dict[str, Any]:
    try:
        return probe(path, "judge delivery: probe")
    except ToolMissing:
        raise
    except StageError as exc:
        raise StageError(str(exc), retryable=True) from exc


def loudness(path: Path) -> tuple[float, float]:
    """(integrated loudness LUFS, true peak dBTP) of the first audio stream, from ebur128's summary."""
    proc = _measure(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-nostats",
            "-v",
            "info",
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-af",
            "ebur128=peak=true:framelog=verbose",
            "-f",
            "null",
            "-",
        ],
        "judge delivery: loudness",
    )
    summary = _SUMMARY.findall(proc.stderr.decode("utf-8", "replace"))
    found_i = _INTEGRATED.findall(summary[-1]) if summary else []
    found_tp = _PEAK.findall(summary[-1]) if summary else []
    if not found_i or not found_tp:
        raise StageError("judge delivery: ffmpeg's ebur128 printed no summary", retryable=True)
    return float(found_i[-1]), float(found_tp[-1])


def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4's top-level boxes, in file order (reading only their headers)."""
    names: list[str] = []
    size_of_file = path.stat().st_size
    with path.open("rb") as f:
        pos = 0
        while pos + 8 <= size_of_file:
            f.seek(pos)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:
                (size,) = struct.unpack(">Q", f.read(8))
            elif size == 0:
                size = size_of_file - pos
            names.append(kind.decode("latin-1"))
            if size < 8:
                break
            pos += size
    return names


def parse_srt(text: str) -> list[SrtCue]:
    """SubRip cues: a number line, a timing line, text lines up to a blank line. Raises ValueError
    naming the first block that is not a cue."""
    cues = []
    blocks = [b for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip("\n")) if b.strip()]
    for n, block in enumerate(blocks, start=1):
        rows = block.split("\n")
        found = _TIMING.fullmatch(rows[1].strip()) if len(rows) > 1 else None
        if not rows[0].strip().isdigit() or found is None:
            raise ValueError(f"block {n} is not a numbered cue with a timing line: {block[:60]!r}")
        v = [int(x) for x in found.groups()]
        start = v[0] * 3600 + v[1] * 60 + v[2] + v[3] / 1000
        end = v[4] * 3600 + v[5] * 60 + v[6] + v[7] / 1000
        cues.append(SrtCue(start, end, tuple(rows[2:])))
    return cues


def _bare(text: str) -> str:
    """Text without whitespace, control and format characters: what wrapping may not change."""
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf"))


def _gap_score(excess: float, scale: float) -> float:
    return max(0.0, 1.0 - excess / scale)


class DeliveryJudge:
    """Judges the assembled episode: loudness, durations, format, fast start and subtitles."""

    # 2: reading speed fails past 1.5x the conventions (a cue lasts exactly its line's audio)
    stage, name, version = "judge", "delivery", "2"
    ops = ("judge",)
    judges = ("episode",)
    thresholds = THRESHOLDS
    resources = Resources(num_cpus=1)
    tools = ("ffmpeg", "ffprobe")

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        cues = (params.get("expect") or {}).get("cues") or []
        end = float(cues[-1].get("end", 0)) if cues else 0.0
        return Estimate(seconds=1.0 + 0.02 * end)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        judged_op(self, op, params)
        limits = thresholds(self.thresholds, params, self.name)
        expect = dict(params.get("expect") or {})
        try:
            width, height, fps = int(expect["width"]), int(expect["height"]), int(expect["fps"])
            sample_rate, target = int(expect["sample_rate"]), float(expect["loudness_lufs"])
            cjk, lines = bool(expect.get("cjk", False)), list(expect.get("cues") or [])
        except (KeyError, TypeError, ValueError) as exc:
            raise StageError(
                f"judge delivery: params.expect needs width, height, fps, sample_rate, loudness_lufs: {exc}"
            ) from exc
        if fps <= 0:
            raise StageError(f"judge delivery: params.expect.fps must be positive, not {fps}")
        for name in ("subject", "subtitles"):
            if name not in inputs:
                raise StageError(f"judge delivery: input {name!r} is missing")
        subject, subtitles = Path(inputs["subject"]), Path(inputs["subtitles"])
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = 1 / fps
        info = _measure_probe(subject)
        streams = info.get("streams") or []
        video = next((s for s in streams if s.get("codec_type") == "video"), None)
        audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
        checks = self._loudness(subject, audio, target, limits, silent_ok=not lines)
        checks.append(self._durations(video, audio, frame, limits))
        checks += self._format(video, audio, width, height, fps, sample_rate)
        try:
            boxes = top_level_boxes(subject)
        except (OSError, struct.error) as exc:
            raise StageError(f"judge delivery: cannot read the episode's boxes: {exc}", retryable=True) from exc
        fast = "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat")
        order = " < ".join(b for b in boxes if b in ("moov", "mdat")) or "no moov/mdat"
        checks.append(Check("faststart", None, None, fast, f"top-level boxes {order}"))
        duration = float((info.get("format") or {}).get("duration") or 0)
        checks += self._cues(subtitles, lines, cjk, frame, duration, limits)
        return verdict(checks, out_dir)

    def _loudness(self, subject, audio, target, limits, silent_ok: bool) -> list[Check]:
        tol, ceiling = limits["loudness_tolerance_lu"], limits["max_true_peak_db"]
        if audio is None:
            return [
                Check("loudness", None, tol, False, "no audio stream"),
                Check("true_peak", None, ceiling, False, "no audio stream"),
            ]
        integrated, peak = loudness(subject)
        if not math.isfinite(integrated) or integrated <= -70:
            ok = silent_ok
            detail = "silent" + (" (no dialogue planned)" if ok else f", target {target:g} LUFS")
            return [
                Check("loudness", None, tol, ok, detail),
                Check("true_peak", peak, ceiling, peak <= ceiling, f"{peak:.1f} dBTP, ceiling {ceiling:g}"),
            ]
        off = abs(integrated - target)
        return [
            Check(
                "loudness",
                integrated,
                tol,
                off <= tol,
                f"{integrated:.1f} LUFS, target {target:g} ±{tol:g} LU ({off:.1f} LU off)",
                score=_gap_score(off - tol, 6.0),
            ),
            Check(
                "true_peak",
                peak,
                ceiling,
                peak <= ceiling,
                f"{peak:.1f} dBTP, ceiling {ceiling:g} dBTP",
                score=_gap_score(peak - ceiling, 6.0),
            ),
        ]

    def _durations(self, video, audio, frame, limits) -> Check:
        tolerance = limits["max_timing_error_frames"] * frame
        if video is None or audio is None:
            return Check(
                "durations", None, tolerance, False, "no " + ("video" if video is None else "audio") + " stream"
            )
        try:
            v, a = float(video["duration"]), float(audio["duration"])
        except (KeyError, TypeError, ValueError):
            return Check("durations", None, tolerance, False, "the file states no stream durations")
        gap = abs(v - a)
        return Check(
            "durations",
            gap,
            tolerance,
            gap <= tolerance + 1e-6,
            f"video {v:.3f} s, audio {a:.3f} s ({gap:.3f} s apart, one frame is {frame:.3f} s)",
            score=_gap_score(gap - tolerance, 2.0),
        )

    def _format(self, video, audio, width, height, fps, sample_rate) -> list[Check]:
        if video is None:
            vcheck = Check("video_format", None, None, False, "no video stream")
        else:
            got = (
                f"{video.get('codec_name')} {video.get('profile')} {video.get('pix_fmt')} "
                f"{video.get('width')}x{video.get('height')} {rate(video.get('avg_frame_rate')):g} fps"
            )
            ok = (
                video.get("codec_name") == "h264"
                and video.get("profile") == "High"
                and video.get("pix_fmt") == "yuv420p"
                and (video.get("width"), video.get("height")) == (width, height)
                and abs(rate(video.get("avg_frame_rate")) - fps) < 0.01
            )
            vcheck = Check(
                "video_format", None, None, ok, f"{got}; expected h264 High yuv420p {width}x{height} {fps} fps"
            )
        if audio is None:
            acheck = Check("audio_format", None, None, False, "no audio stream")
        else:
            sr = int(audio.get("sample_rate") or 0)
            ok = audio.get("codec_name") == "aac" and sr == sample_rate
            acheck = Check(
                "audio_format", None, None, ok, f"{audio.get('codec_name')} {sr} Hz; expected aac {sample_rate} Hz"
            )
        return [vcheck, acheck]

    def _cues(self, path: Path, lines: list, cjk: bool, frame: float, duration: float, limits) -> list[Check]:
        names = ("cue_timing", "line_length", "lines_per_cue", "cue_duration", "reading_speed")
        try:
            cues = parse_srt(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise StageError(f"judge delivery: cannot read the subtitles: {exc}", retryable=True) from exc
        except ValueError as exc:
            return [Check(n, None, None, False, f"the SRT does not parse: {exc}") for n in names]
        return [
            _timing(cues, lines, frame, duration, limits["max_timing_error_frames"] * frame),
            _line_length(cues, cjk),
            _lines_per_cue(cues),
            _cue_duration(cues),
            _reading_speed(cues, cjk, limits),
        ]


def _timing(cues: list[SrtCue], lines: list, frame: float, duration: float, tolerance: float) -> Check:
    """Each dialogue line's cues: the first starts at the line's start, the last ends at its end
    (or later, where the 5/6 s minimum extends it, never past the next line), the text is whole."""
    windows = [(float(c["start"]), float(c["end"]), str(c.get("text", ""))) for c in lines]
    owned: list[list[SrtCue]] = [[] for _ in windows]
    stray = 0
    for cue in cues:
        i = max((k for k, w in enumerate(windows) if w[0] <= cue.start + tolerance), default=None)
        if i is None:
            stray += 1
        else:
            owned[i].append(cue)
    worst, problems = 0.0, []
    if stray:
        problems.append(f"{stray} cue(s) before any line")
    for k, ((start, end, text), mine) in enumerate(zip(windows, owned)):
        if not mine:
            if _bare(text):
                problems.append(f"line {k + 1} has no cue")
            continue
        bound = min(windows[k + 1][0] if k + 1 < len(windows) else duration, duration or math.inf)
        latest = min(max(end, start + len(mine) * MIN_CUE_S + 0.001), bound)  # 5/6 s, rounded up to the ms
        first = abs(mine[0].start - start)
        # early is an error; late only past where the 5/6 s minimum may take it
        last_err = end - mine[-1].end if mine[-1].end < end else max(0.0, mine[-1].end - latest)
        worst = max(worst, first, last_err)
        if first > tolerance + 1e-6:
            problems.append(f"line {k + 1} starts {mine[0].start:.3f} s, audio {start:.3f} s")
        if last_err > tolerance + 1e-6:
            problems.append(f"line {k + 1} ends {mine[-1].end:.3f} s, audio {end:.3f} s")
        if _bare("".join("".join(c.lines) for c in mine)) != _bare(text):
            problems.append(f"line {k + 1}'s text differs from its cue(s)")
    detail = f"{len(windows)} lines in {len(cues)} cues, worst edge {worst:.3f} s off (tolerance {tolerance:.3f} s)"
    if problems:
        detail += ": " + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
    return Check("cue_timing", worst, tolerance, not problems, detail, score=_gap_score(worst - tolerance, 1.0))


def _limit(line: str, cjk: bool) -> int:
    # A line with no CJK character (a name, an English line in a Chinese episode) keeps the Latin limit.
    return CJK_LINE if cjk and is_cjk(line) else LATIN_LINE


def _line_length(cues: list[SrtCue], cjk: bool) -> Check:
    rows = [line for c in cues for line in c.lines]
    over = [line for line in rows if line_length(line) > _limit(line, cjk)]
    longest = max((line_length(line) for line in rows), default=0)
    limit = CJK_LINE if cjk else LATIN_LINE
    detail = f"longest line {longest} characters, limit {limit}" + (f"; {len(over)} lines over" if over else "")
    return Check("line_length", longest, limit, not over, detail)


def _lines_per_cue(cues: list[SrtCue]) -> Check:
    most = max((len(c.lines) for c in cues), default=0)
    blank = sum(1 for c in cues if any(not line.strip() for line in c.lines) or not c.lines)
    detail = f"at most {most} lines in a cue, limit {MAX_LINES}" + (
        f"; {blank} cues with an empty line" if blank else ""
    )
    return Check("lines_per_cue", most, MAX_LINES, most <= MAX_LINES and not blank, detail)


def _cue_duration(cues: list[SrtCue]) -> Check:
    short = [
        (n, c)
        for n, c in enumerate(cues)
        if c.end - c.start < MIN_CUE_S - 0.001 and not (n + 1 < len(cues) and abs(cues[n + 1].start - c.end) <= 0.001)
    ]
    shortest = min((c.end - c.start for c in cues), default=0.0)
    detail = f"shortest cue {shortest:.3f} s, minimum {MIN_CUE_S:.3f} s unless the next cue cuts it"
    if short:
        n, c = short[0]
        detail += f"; {len(short)} too short (cue {n + 1}: {c.end - c.start:.3f} s)"
    return Check("cue_duration", shortest, MIN_CUE_S, not short, detail)


def _reading_speed(cues: list[SrtCue], cjk: bool, limits: Mapping[str, float]) -> Check:
    limit = limits["max_reading_speed_cjk_cps" if cjk else "max_reading_speed_latin_cps"]
    speeds = [(sum(line_length(line) for line in c.lines) / max(c.end - c.start, 0.001), n) for n, c in enumerate(cues)]
    fastest, n = max(speeds, default=(0.0, -1))
    detail = f"fastest cue {fastest:.1f} characters/s" + (f" (cue {n + 1})" if n >= 0 else "") + f", limit {limit:g}"
    if fastest > CONVENTION_CPS[cjk]:
        detail += f"; over the {CONVENTION_CPS[cjk]:g} of the conventions"
    return Check("reading_speed", fastest, limit, fastest <= limit, detail, score=_gap_score(fastest - limit, limit))


BACKEND = DeliveryJudge()
