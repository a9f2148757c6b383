"""Fonts for Pillow-drawn text in every script a spec may hold, and text that fits its box.

One font cannot draw everything, so text is drawn with a chain of fonts (Noto CJK first, then Noto for
Arabic, Hebrew, Devanagari and Thai, Noto Sans, and Symbola for emoji and symbols): each character goes
to the first font of the chain that has a glyph for it, and neighbouring characters with the same font
and direction form one run. Runs are ordered by the Unicode bidi algorithm (``levels``, ``reorder``) and shaped
by raqm when Pillow has it (Arabic letters join, marks sit on their bases); without raqm, text is laid
out one glyph after another and right-to-left runs are reversed, and the log says so once.

Emoji are drawn in one colour (Symbola): Pillow draws colour emoji only from bitmap strikes of one size.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

from workers.api import StageError

log = logging.getLogger(__name__)

_NOTO, _NOTO_OT = "/usr/share/fonts/truetype/noto", "/usr/share/fonts/opentype/noto"
# (what it draws, the Debian package, candidate files); the first is required, the others widen coverage
_CHAIN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "CJK and Latin",
        "fonts-noto-cjk",
        (
            f"{_NOTO_OT}/NotoSansCJK-Regular.ttc",
            f"{_NOTO_OT}/NotoSansCJK-Bold.ttc",
            "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
            "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
            f"{_NOTO_OT}/NotoSerifCJK-Regular.ttc",
            "/System/Library/Fonts/PingFang.ttc",
        ),
    ),
    ("Arabic", "fonts-noto-core", (f"{_NOTO}/NotoSansArabic-Regular.ttf", f"{_NOTO}/NotoNaskhArabic-Regular.ttf")),
    ("Hebrew", "fonts-noto-core", (f"{_NOTO}/NotoSansHebrew-Regular.ttf",)),
    ("Devanagari", "fonts-noto-core", (f"{_NOTO}/NotoSansDevanagari-Regular.ttf",)),
    ("Thai", "fonts-noto-core", (f"{_NOTO}/NotoSansThai-Regular.ttf",)),
    ("Latin, Greek, Cyrillic", "fonts-noto-core", (f"{_NOTO}/NotoSans-Regular.ttf",)),
    ("emoji and symbols", "fonts-symbola", ("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",)),
)
ELLIPSIS = "…"
# CJK punctuation that must not begin a line: it stays with the character before it
_NO_LINE_START = set("，。、！？：；）」』》〉】〕,.!?:;)%”’…ー々")


@functools.cache
def font_paths() -> tuple[Path, ...]:
    """The fonts of the chain that are installed, in order; raises StageError when the first is missing."""
    found: list[Path] = []
    for i, (what, package, candidates) in enumerate(_CHAIN):
        path = next((Path(c) for c in candidates if Path(c).is_file()), None)
        if path is not None:
            found.append(path)
        elif i == 0:
            raise StageError(f"no CJK-capable font found: install Noto CJK (Debian/Ubuntu: apt-get install {package})")
        else:
            log.warning("no font for %s: such text draws as empty boxes; install %s", what, package)
    return tuple(found)


def font_path() -> Path:
    return font_paths()[0]


@functools.cache
def raqm() -> bool:
    """Whether Pillow shapes text with raqm (joining, marks, bidi); said once in the log when it does not."""
    if features.check("raqm"):
        return True
    log.warning("Pillow has no raqm: Arabic and other joined scripts are drawn unshaped")
    return False


@functools.lru_cache(maxsize=256)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    engine = ImageFont.Layout.RAQM if raqm() else ImageFont.Layout.BASIC
    return ImageFont.truetype(str(font_paths()[index]), size=max(8, int(size)), layout_engine=engine)


def font(size: int) -> ImageFont.FreeTypeFont:
    """The first font of the chain at ``size`` pixels (it draws Latin and CJK)."""
    return _font(0, size)


@functools.lru_cache(maxsize=16)
def _probe(index: int) -> tuple[ImageFont.FreeTypeFont, bytes]:
    """A basic-layout copy of font ``index`` for glyph checks, and how it draws a missing glyph."""
    probe = ImageFont.truetype(str(font_paths()[index]), size=24, layout_engine=ImageFont.Layout.BASIC)
    return probe, _ink(probe, "\U000e01f0")  # a variation selector no font maps: its .notdef box


def _ink(probe: ImageFont.FreeTypeFont, ch: str) -> bytes:
    """The pixels ``ch`` draws in a small square, or nothing when it draws no ink."""
    img = Image.new("L", (48, 48))
    ImageDraw.Draw(img).text((8, 4), ch, font=probe, fill=255)
    return img.tobytes() if img.getbbox() else b""


def _attached(ch: str) -> bool:
    """Marks, joiners and variation selectors: drawn with the font of the character before them."""
    return unicodedata.category(ch) in ("Mn", "Me", "Cf") or 0xFE00 <= ord(ch) <= 0xFE0F


@functools.lru_cache(maxsize=8192)
def font_for(ch: str) -> int:
    """The index of the first font in the chain with a glyph for ``ch`` (0 when none has one)."""
    if ch.isspace() or _attached(ch):
        return 0
    for index in range(len(font_paths())):
        probe, notdef = _probe(index)
        ink = _ink(probe, ch)
        if ink and ink != notdef:
            return index
    return 0


@dataclass(frozen=True)
class Run:
    """Characters drawn with one font in one direction, in logical order."""

    text: str
    font: int
    rtl: bool


def runs(line: str) -> list[Run]:
    """One line of text as runs in visual (left-to-right drawing) order."""
    if not raqm():  # without shaping, joiners and selectors would draw as boxes
        line = "".join(ch for ch in line if not _attached(ch) or unicodedata.category(ch) == "Mn")
    if not line:
        return []
    fonts: list[int] = []
    for i, ch in enumerate(line):
        own = font_for(ch)
        if (ch.isspace() or _attached(ch)) and i > 0:
            own = fonts[-1]
        fonts.append(own)
    lead = len(line) - len(line.lstrip())
    if lead < len(line):  # leading spaces join the first run that draws something
        fonts[:lead] = [fonts[lead]] * lead
    level = levels(line)
    pieces: list[tuple[int, Run]] = []
    start = 0
    for i in range(1, len(line) + 1):
        if i == len(line) or (fonts[i], level[i]) != (fonts[start], level[start]):
            pieces.append((level[start], Run(line[start:i], fonts[start], level[start] % 2 == 1)))
            start = i
    return [run for _, run in reorder(pieces)]


def _length(run: Run, size: int) -> float:
    fnt = _font(run.font, size)
    if raqm():
        return fnt.getlength(run.text, direction="rtl" if run.rtl else "ltr")
    return fnt.getlength(run.text)


def width(text: str, size: int) -> float:
    """How many pixels ``text`` (one line) takes at ``size``."""
    return sum(_length(run, size) for run in runs(text))


def draw(d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, fill) -> float:
    """Draw one line at ``xy`` (its top-left, as ``ImageDraw.text``) with the font chain; its width."""
    x, y = xy
    baseline = y + _font(0, size).getmetrics()[0]
    for run in runs(text):
        fnt = _font(run.font, size)
        if raqm():
            direction = "rtl" if run.rtl else "ltr"
            d.text((x, baseline), run.text, font=fnt, fill=fill, anchor="ls", direction=direction)
        else:
            d.text((x, baseline), run.text[::-1] if run.rtl else run.text, font=fnt, fill=fill, anchor="ls")
        x += _length(run, size)
    return x - xy[0]


def _size_of(fnt: ImageFont.FreeTypeFont | int) -> int:
    return fnt if isinstance(fnt, int) else int(fnt.size)


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F") and ch not in _NO_LINE_START and not ch.isspace()


def _tokens(paragraph: str) -> list[str]:
    """Pieces a line may break between: words with their trailing spaces, and single CJK characters
    (with the punctuation that may not begin a line)."""
    out: list[str] = []
    for ch in paragraph:
        if out and (ch in _NO_LINE_START or _attached(ch) or ch.isspace()):
            out[-1] += ch
        elif not out or out[-1][-1].isspace() or _wide(ch) or _wide(out[-1][-1]):
            out.append(ch)
        else:
            out[-1] += ch
    return out


def _break_word(word: str, size: int, limit: float) -> list[str]:
    """A word wider than the line, cut between characters."""
    parts, current = [], ""
    for ch in word:
        if current and width(current + ch, size) > limit and not _attached(ch):
            parts.append(current)
            current = ch
        else:
            current += ch
    return [*parts, current]


def wrap(text: str, fnt: ImageFont.FreeTypeFont | int, width_px: int, max_lines: int = 6) -> list[str]:
    """Break ``text`` into lines no wider than ``width_px`` at the size of ``fnt`` (a font or a size).

    Latin text breaks at spaces, CJK text between characters; a word wider than the line is cut. Past
    ``max_lines`` the last line ends with an ellipsis, shortened until it fits.
    """
    size = _size_of(fnt)
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for token in _tokens(paragraph):
            if width((current + token).rstrip(), size) <= width_px:
                current += token
                continue
            if current:
                lines.append(current.rstrip())
            pieces = _break_word(token, size, width_px) if width(token.rstrip(), size) > width_px else [token]
            lines += [p.rstrip() for p in pieces[:-1]]
            current = pieces[-1]
        lines.append(current.rstrip())
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = ellipsize(lines[-1] + ELLIPSIS, size, width_px)
    return lines


def ellipsize(line: str, size: int, width_px: int) -> str:
    """``line`` as it is if it fits, else shortened and ending in an ellipsis so that it fits."""
    if width(line, size) <= width_px:
        return line
    body = line.removesuffix(ELLIPSIS)
    while body and width(body.rstrip() + ELLIPSIS, size) > width_px:
        body = body[:-1]
    return body.rstrip() + ELLIPSIS


def fit(text: str, size: int, width_px: int, max_lines: int, min_size: int = 10) -> tuple[int, list[str]]:
    """The largest size from ``size`` down to ``min_size`` at which ``text`` wraps into ``max_lines`` lines,
    with those lines; at ``min_size`` the lines are cut with an ellipsis."""
    for candidate in range(size, min_size - 1, -max(1, size // 12)):
        lines = wrap(text, candidate, width_px, max_lines=max_lines + 1)
        if len(lines) <= max_lines:
            return candidate, lines
    return min_size, wrap(text, min_size, width_px, max_lines=max_lines)


def draw_lines(
    d: ImageDraw.ImageDraw, xy: tuple[float, float], lines: Sequence[str], size: int, leading: float, fill
) -> None:
    """Draw ``lines`` one below the other, ``leading`` pixels apart."""
    x, y = xy
    for n, line in enumerate(lines):
        draw(d, (x, y + n * leading), line, size, fill)


# The Unicode bidi algorithm (UAX #9) for one line without explicit embeddings: the paragraph level from
# the first strong character (P2, P3), weak types (W1-W7), neutrals (N1, N2), implicit levels (I1, I2),
# trailing spaces at the paragraph level (L1) and reordering (L2).
_NUMBER = ("EN", "AN")


def levels(text: str) -> list[int]:
    """The embedding level of each character of ``text``: even left-to-right, odd right-to-left."""
    types = [unicodedata.bidirectional(ch) or "L" for ch in text]
    base = next((0 if t == "L" else 1 for t in types if t in ("L", "R", "AL")), 0)
    sor = "R" if base else "L"
    for i, t in enumerate(types):  # W1
        if t == "NSM":
            types[i] = types[i - 1] if i else sor
    strong = sor
    for i, t in enumerate(types):  # W2, W3
        if t in ("L", "R", "AL"):
            strong = t
        if t == "EN" and strong == "AL":
            types[i] = "AN"
    types = ["R" if t == "AL" else t for t in types]
    for i in range(1, len(types) - 1):  # W4
        before, here, after = types[i - 1], types[i], types[i + 1]
        if here == "ES" and before == after == "EN" or here == "CS" and before == after and before in _NUMBER:
            types[i] = before
    for i, t in enumerate(types):  # W5: terminators (%, $) next to European numbers
        if t == "ET":
            j = i
            while j < len(types) and types[j] == "ET":
                j += 1
            if i and types[i - 1] == "EN" or j < len(types) and types[j] == "EN":
                types[i:j] = ["EN"] * (j - i)
    types = ["ON" if t in ("ES", "ET", "CS") else t for t in types]  # W6
    strong = sor
    for i, t in enumerate(types):  # W7
        if t in ("L", "R"):
            strong = t
        elif t == "EN" and strong == "L":
            types[i] = "L"
    resolved = ["R" if t in _NUMBER else t for t in types]  # numbers count as R beside neutrals
    i = 0
    while i < len(types):  # N1, N2
        if resolved[i] in ("L", "R"):
            i += 1
            continue
        j = i
        while j < len(types) and resolved[j] not in ("L", "R"):
            j += 1
        before = resolved[i - 1] if i else sor
        after = resolved[j] if j < len(types) else sor
        types[i:j] = [before if before == after else sor] * (j - i)
        i = j
    out = []
    for t in types:  # I1, I2
        if base == 0:
            out.append(1 if t == "R" else 2 if t in _NUMBER else 0)
        else:
            out.append(2 if t in ("L", *_NUMBER) else 1)
    end = len(text)
    while end and text[end - 1].isspace():  # L1
        end -= 1
        out[end] = base
    return out


def reorder(pieces: Sequence[tuple[int, Run]]) -> list[tuple[int, Run]]:
    """Pieces (level, run) of one line, from logical to visual order (L2): from the highest level down to
    the lowest odd one, every stretch at that level or above is reversed."""
    out = list(pieces)
    if not out:
        return out
    highest = max(level for level, _ in out)
    lowest_odd = min((level for level, _ in out if level % 2), default=highest + 1)
    for level in range(highest, lowest_odd - 1, -1):
        i = 0
        while i < len(out):
            if out[i][0] < level:
                i += 1
                continue
            j = i
            while j < len(out) and out[j][0] >= level:
                j += 1
            out[i:j] = out[i:j][::-1]
            i = j
    return out
