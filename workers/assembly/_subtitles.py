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


# The conventions every cue keeps (what subtitle style guides ask of a cue): characters a line
# (Latin scripts and CJK), lines a cue, and the shortest time a cue stays on screen (5/6 s,
# rounded up to the millisecond).
LATIN_LINE, CJK_LINE, MAX_LINES, MIN_CUE_MS = 42, 16, 2, 834

# Han, kana, hangul, bopomofo, CJK punctuation and fullwidth forms: scripts written without spaces,
# whose lines may break between any two characters.
_CJK_RANGES = (
    (0x1100, 0x11FF),
    (0x2E80, 0x2FDF),
    (0x3000, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0xFE30, 0xFE4F),
    (0xFF00, 0xFFEF),
    (0x20000, 0x3FFFF),
)
# Closing punctuation that never starts a line: it stays with the character before it.
_CLOSING = set("、。，．！？：；）」』】〉》〕］｝〙〗…‥・ー～!?,.:;)]}%")
_ZWJ = "\u200d"
# Punctuation a line had best end at: where a reader pauses.
_PAUSES = set(".,!?;:…，。！？、；：")


def _is_cjk_char(ch: str) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES)


def is_cjk(text: str) -> bool:
    """Whether ``text`` holds CJK characters: its lines then hold at most CJK_LINE characters."""
    return any(_is_cjk_char(ch) for ch in text)


def line_limit(text: str) -> int:
    """The most characters a line of ``text`` may hold: CJK_LINE for CJK text, else LATIN_LINE."""
    return CJK_LINE if is_cjk(text) else LATIN_LINE


def clusters(text: str) -> list[str]:
    """``text`` as the characters people see: each base character with the combining marks,
    variation selectors, emoji modifiers and zero-width-joined characters that follow it, so a
    line never breaks inside one."""
    out: list[str] = []
    for ch in text:
        joins = (
            unicodedata.category(ch).startswith("M")
            or ch == _ZWJ
            or 0xFE00 <= ord(ch) <= 0xFE0F
            or 0x1F3FB <= ord(ch) <= 0x1F3FF
            or 0xE0100 <= ord(ch) <= 0xE01EF
            or 0xDC00 <= ord(ch) <= 0xDFFF  # a lone low surrogate stays with its high one
        )
        if out and (joins or out[-1].endswith(_ZWJ)):
            out[-1] += ch
        else:
            out.append(ch)
    return out


def line_length(line: str) -> int:
    """Characters in a subtitle line as people count them: clusters, invisible format characters
    (the zero-width space cue_text adds) not counted."""
    return sum(1 for c in clusters(line) if not all(unicodedata.category(ch) == "Cf" for ch in c))


def _atoms(line: str) -> list[tuple[str, bool]]:
    """``line`` as unbreakable pieces, each with whether a space stood before it: words, and
    each CJK character on its own (closing punctuation kept with the piece before it)."""
    atoms: list[tuple[str, bool]] = []
    word, space = "", False
    for c in clusters(line):
        if c.isspace():
            if word:
                atoms.append((word, space))
            word, space = "", True
        elif atoms and not word and not space and c in _CLOSING:
            atoms[-1] = (atoms[-1][0] + c, atoms[-1][1])
        elif _is_cjk_char(c[0]):
            if word and c in _CLOSING:
                word += c
                continue
            if word:
                atoms.append((word, space))
                space = False
            word = ""
            atoms.append((c, space))
            space = False
        else:
            word += c
    if word:
        atoms.append((word, space))
    return atoms


def wrap(line: str, limit: int) -> list[str]:
    """One line of text as lines of at most ``limit`` characters: broken at spaces (which go), or
    between CJK characters; a word longer than a line is broken between its characters. It takes
    as few lines as a greedy fill would, with the breaks chosen so the lines are as even as they
    can be (no one-word last line under a full one)."""
    if line_length(line) <= limit:
        return [line]
    atoms: list[tuple[str, int, bool]] = []  # (text, characters, a space before it)
    for atom, space in _atoms(line):
        parts = clusters(atom) if line_length(atom) > limit else [atom]
        step = limit if len(parts) > 1 else 1
        for i in range(0, len(parts), step):
            piece = "".join(parts[i : i + step])
            atoms.append((piece, line_length(piece), space and i == 0))
    m = len(atoms)

    def width(i: int, j: int) -> int:  # atoms i..j-1 on one line
        return sum(a[1] for a in atoms[i:j]) + sum(1 for a in atoms[i + 1 : j] if a[2])

    count, i = 0, 0
    while i < m:  # the fewest lines: a greedy fill
        j = i + 1
        while j < m and width(i, j + 1) <= limit:
            j += 1
        count, i = count + 1, j
    # best[k][j]: (the least cost, the break before j) for atoms 0..j-1 in k lines; the cost of a
    # line is its squared slack, less a bonus where it ends at a pause (a comma, a full stop)
    bonus = limit * limit / 8
    inf = (float("inf"), 0)
    best = [[inf] * (m + 1) for _ in range(count + 1)]
    best[0][0] = (0.0, 0)
    for k in range(1, count + 1):
        for j in range(1, m + 1):
            w = 0
            for i in range(j - 1, -1, -1):  # atoms i..j-1 on the k-th line
                w += atoms[i][1] + (1 if i + 1 < j and atoms[i + 1][2] else 0)
                if w > limit:
                    break
                cost = best[k - 1][i][0] + (limit - w) ** 2 - (bonus if atoms[j - 1][0][-1] in _PAUSES else 0)
                if cost < best[k][j][0]:
                    best[k][j] = (cost, i)
    lines, j = [], m
    for k in range(count, 0, -1):
        i = best[k][j][1]
        lines.append("".join((" " if a[2] and t > i else "") + a[0] for t, a in enumerate(atoms[i:j], start=i)))
        j = i
    return lines[::-1]


def _protect(line: str) -> str:
    return ZWSP + line if _timing_like(line) else line


def _pieces(text: str) -> list[str]:
    """A cue text as the texts of consecutive cues: each line wrapped to its limit, at most
    MAX_LINES lines a cue."""
    limit = line_limit(text)
    lines = [_protect(w) for line in text.split("\n") for w in wrap(line, limit)]
    return ["\n".join(lines[i : i + MAX_LINES]) for i in range(0, len(lines), MAX_LINES)]


def _timed(start_ms: int, end_ms: int, bound_ms: int, texts: Sequence[str]) -> list[Cue]:
    """Cues for one line's texts over its window ``start_ms..end_ms``, sharing the time by
    characters. Each cue gets MIN_CUE_MS first where the window holds that much; a window too
    short for it ends later, up to ``bound_ms`` (the next cue's start or the video's end)."""
    n = len(texts)
    if end_ms - start_ms < n * MIN_CUE_MS:
        end_ms = max(end_ms, min(start_ms + n * MIN_CUE_MS, bound_ms))
    span = end_ms - start_ms
    if span < n:
        raise StageError(f"assembly: a {span} ms line cannot hold {n} cues")
    weights = [max(1, line_length(t.replace("\n", ""))) for t in texts]
    floor = MIN_CUE_MS if span >= n * MIN_CUE_MS else 0
    extra, total = span - n * floor, sum(weights)
    cues, begin, done = [], start_ms, 0
    for k, (text, weight) in enumerate(zip(texts, weights), start=1):
        done += weight
        end = end_ms if k == n else start_ms + k * floor + (extra * done + total // 2) // total
        end = min(max(end, begin + 1), end_ms - (n - k))
        cues.append(Cue(begin, end, text))
        begin = end
    return cues


def build_cues(raw: Iterable[Mapping[str, Any]], duration_ms: int) -> list[Cue]:
    """Validate the planner's cues, round them to milliseconds and make them keep the conventions.

    Cues must be in order and must not overlap (mov_text shows one sample at a time). An end past
    the video is clamped to it. Cues whose text is empty after cue_text() are dropped. A line's
    text is wrapped to LATIN_LINE or CJK_LINE characters a line and, past MAX_LINES lines, split
    into consecutive cues that share its window by characters; nothing is cut. A cue shorter than
    MIN_CUE_MS keeps its start and ends later, but never after the next cue starts.
    Raises StageError naming the offending cue.
    """
    lines: list[Cue] = []
    previous_end = 0
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
        if i and start_ms < previous_end:
            raise StageError(
                f"assembly: cues[{i}] starts at {start_ms} ms, before cues[{i - 1}] ends ({previous_end} ms)"
            )
        previous_end = end_ms
        if text:
            lines.append(Cue(start_ms, end_ms, text))
    cues: list[Cue] = []
    for i, line in enumerate(lines):
        bound = lines[i + 1].start_ms if i + 1 < len(lines) else duration_ms
        cues += _timed(line.start_ms, line.end_ms, bound, _pieces(line.text))
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
