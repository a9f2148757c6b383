"""Finding a font that draws Latin and CJK text alike (Noto Sans CJK), for Pillow-drawn media."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import ImageFont

from workers.api import StageError

_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)


@functools.cache
def font_path() -> Path:
    for candidate in _CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise StageError("no CJK-capable font found: install Noto CJK (Debian/Ubuntu: sudo apt-get install fonts-noto-cjk)")


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """The shared UI font at ``size`` pixels."""
    return ImageFont.truetype(str(font_path()), size=max(8, int(size)))


def wrap(text: str, fnt: ImageFont.FreeTypeFont, width: int, max_lines: int = 6) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` pixels.

    Words are kept whole where the text has spaces; CJK text (no spaces) breaks between characters.
    """
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        tokens = paragraph.split(" ") if " " in paragraph else list(paragraph)
        joiner = " " if " " in paragraph else ""
        for token in tokens:
            trial = f"{current}{joiner}{token}" if current else token
            if fnt.getlength(trial) <= width or not current:
                current = trial
            else:
                lines.append(current)
                current = token
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip() + "…"
    return lines
