"""Subtitles written by us, never by a filter: the sidecar SRT and the source of the mov_text track.

Cue text is user text. It reaches ffmpeg only as file content, and in a form ffmpeg reproduces
literally:

* The SRT sidecar holds the literal text. Its readers (ffmpeg included) treat ``<b>`` and
  ``{\\an8}`` as markup, so the SRT is never fed back to ffmpeg.
* The soft track comes from a small Matroska file with one ASS event per cue, written here with
  millisecond timestamps (an .ass file only has centiseconds). ffmpeg's ASS decoder passes events
  through verbatim and its mov_text encoder interprets exactly three things in them (libavcodec
  ass_split.c): ``{\\`` opens an override block, ``\\n`` and ``\\N`` are line breaks. ass_text()
  breaks each of those up with an empty override block ``{\\}``, which the encoder drops, so
  the tx3g samples in the MP4 carry the original text byte for byte.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.api import StageError


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


def without_controls(text: str) -> str:
    """Control characters other than newline and tab (NUL, escape, ...) become spaces."""
    return "".join(" " if unicodedata.category(ch) == "Cc" and ch not in "\n\t" else ch for ch in text)


# A line an SRT reader could take for a cue's timing line: ffmpeg's (sscanf "%d:%d:%d,%d --> ...",
# after any whitespace, with a sign) and PyPI srt's (digits, ``-->``, ``- >`` or ``-- >``; an index
# line before it starts a new cue even without a blank line): it starts with a digit and, spaces
# aside, holds "->". Loose on purpose: what it catches only gains an invisible character.
_STARTS_LIKE_TIME = re.compile(r"\s*[-+]?\d")
ZWSP = "\u200b"  # zero-width space: invisible, and no reader's digit or whitespace


def _timing_like(line: str) -> bool:
    return bool(_STARTS_LIKE_TIME.match(line)) and "->" in line.replace(" ", "")


def cue_text(text: str) -> str:
    """The text a cue shows for a line: what the SRT and the soft track carry.

    SRT ends a cue at a blank line, so blank lines inside a text are dropped; single line breaks
    stay; the whole is trimmed; control characters other than newline and tab become spaces. A
    line that looks like a timing line (``00:00:05,000 --> 00:00:06,000``) would start a cue of
    its own in ffmpeg's and other readers of the SRT: it starts with a zero-width space instead,
    so it shows as written. Every other character (quotes, backslashes, braces, tags, "-->",
    emoji, RTL) is kept as is.
    """
    text = without_controls(text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [line for line in text.strip().split("\n") if line.strip()]
    return "\n".join(ZWSP + line if _timing_like(line) else line for line in lines)


def build_cues(raw: Iterable[Mapping[str, Any]], duration_ms: int) -> list[Cue]:
    """Validate the planner's cues and round them to milliseconds.

    Cues must be in order and must not overlap (mov_text shows one sample at a time). An end past
    the video is clamped to it. Cues whose text is empty after cue_text() are dropped.
    Raises StageError naming the offending cue.
    """
    cues: list[Cue] = []
    for i, c in enumerate(raw):
        try:
            start_ms, end_ms = round(float(c["start"]) * 1000), round(float(c["end"]) * 1000)
            text = cue_text(str(c["text"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise StageError(f"assembly: cues[{i}] needs numeric start/end and a text: {exc}") from exc
        end_ms = min(end_ms, duration_ms)
        if start_ms < 0 or end_ms <= start_ms:
            raise StageError(
                f"assembly: cues[{i}] spans {start_ms}..{end_ms} ms, outside the video's 0..{duration_ms} ms"
            )
        if cues and start_ms < cues[-1].end_ms:
            raise StageError(
                f"assembly: cues[{i}] starts at {start_ms} ms, before cues[{i - 1}] ends ({cues[-1].end_ms} ms)"
            )
        if text:
            cues.append(Cue(start_ms, end_ms, text))
    return cues


def _srt_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis:03d}"


def srt(cues: Sequence[Cue]) -> str:
    """SubRip text: cues numbered from 1, literal text, one blank line after each cue."""
    return "".join(
        f"{n}\n{_srt_time(c.start_ms)} --> {_srt_time(c.end_ms)}\n{c.text}\n\n" for n, c in enumerate(cues, start=1)
    )


def ass_text(text: str) -> str:
    """``text`` as an ASS event body that ffmpeg's mov_text encoder turns back into ``text``."""
    out = []
    for i, ch in enumerate(text):
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch == "\n":
            out.append("\\N")
            continue
        out.append(ch)
        if (ch == "{" and nxt == "\\") or (ch == "\\" and nxt in ("n", "N")):
            out.append("{\\}")
    return "".join(out)


_ASS_HEADER = (
    "[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\nScaledBorderAndShadow: yes\n\n"
    "[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    "BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, "
    "Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n"
    "Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    "[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


# A minimal Matroska writer: EBML elements are (id, size, payload); sizes are written as 8-byte
# variable-length integers, which every reader accepts.
def _el(element_id: int, payload: bytes) -> bytes:
    return (
        element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
        + b"\x01"
        + len(payload).to_bytes(7, "big")
        + payload
    )


def _uint(element_id: int, value: int) -> bytes:
    return _el(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _str(element_id: int, value: str) -> bytes:
    return _el(element_id, value.encode("utf-8"))


def ass_matroska(cues: Sequence[Cue]) -> bytes:
    """A Matroska file with one ASS subtitle track holding ``cues`` at millisecond precision."""
    header = b"".join(
        [
            _uint(0x4286, 1),
            _uint(0x42F7, 1),
            _uint(0x42F2, 4),
            _uint(0x42F3, 8),
            _str(0x4282, "matroska"),
            _uint(0x4287, 4),
            _uint(0x4285, 2),
        ]
    )
    info = _el(0x1549A966, _uint(0x2AD7B1, 1_000_000) + _str(0x4D80, "farm") + _str(0x5741, "farm"))
    track = _el(
        0xAE,
        b"".join(
            [
                _uint(0xD7, 1),
                _uint(0x73C5, 1),
                _uint(0x83, 0x11),
                _uint(0x9C, 0),
                _str(0x86, "S_TEXT/ASS"),
                _el(0x63A2, _ASS_HEADER.encode("utf-8")),
            ]
        ),
    )
    clusters = []
    for order, cue in enumerate(cues):
        # One cluster per cue: a block's time is a 16-bit offset from its cluster's.
        event = f"{order},0,Default,,0,0,0,,{ass_text(cue.text)}".encode()
        block = b"\x81" + (0).to_bytes(2, "big") + b"\x00" + event
        group = _el(0xA0, _el(0xA1, block) + _uint(0x9B, cue.end_ms - cue.start_ms))
        clusters.append(_el(0x1F43B675, _uint(0xE7, cue.start_ms) + group))
    segment = _el(0x18538067, info + _el(0x1654AE6B, track) + b"".join(clusters))
    return _el(0x1A45DFA3, header) + segment
