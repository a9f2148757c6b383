"""The storyboard: a contact sheet of every shot's keyframe with its timing, camera, description (what
the shot is meant to show: the keyframes themselves show the scene only) and first line.

Drawn with Pillow from the shared CJK-capable font, so titles and lines in any script the font
covers render; the same inputs give the same PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from workers.api import StageError
from workers.fonts import draw as draw_text
from workers.fonts import ellipsize, font, wrap

THUMB_WIDTH = 240
MARGIN = 16
HEADER_HEIGHT = 72
CAPTION_LINES = 8  # shot id + timing, camera, two lines of description, the rest dialogue
CAPTION_SIZE = 15
LINE_HEIGHT = 20
CAPTION_HEIGHT = CAPTION_LINES * LINE_HEIGHT + 8
BACKGROUND = (18, 18, 22)
TEXT = (235, 235, 235)
DIM = (150, 150, 160)


def columns(width: int, height: int) -> int:
    """Four thumbnails per row for portrait frames, three for landscape."""
    return 4 if height >= width else 3


def sheet_size(shots: int, width: int, height: int) -> tuple[int, int]:
    cols = columns(width, height)
    rows = max(1, math.ceil(shots / cols))
    thumb_h = round(THUMB_WIDTH * height / width)
    return (
        MARGIN + cols * (THUMB_WIDTH + MARGIN),
        HEADER_HEIGHT + rows * (thumb_h + CAPTION_HEIGHT + MARGIN) + MARGIN,
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:05.2f}"


def render(
    path: Path,
    title: str,
    shots: Sequence[Mapping[str, Any]],
    keyframes: Sequence[Path],
    width: int,
    height: int,
    fps: int,
) -> tuple[int, int]:
    """Draw the sheet for ``shots`` (their keyframes in the same order) into ``path``; its size."""
    cols = columns(width, height)
    thumb_h = round(THUMB_WIDTH * height / width)
    size = sheet_size(len(shots), width, height)
    sheet = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    total = sum(int(s["frames"]) for s in shots) / fps
    title_font, caption_font = font(30), font(CAPTION_SIZE)
    heading = wrap(title or "Untitled", title_font, size[0] - 2 * MARGIN, max_lines=1)[0]
    draw_text(draw, (MARGIN, 12), heading, 30, TEXT)
    draw_text(draw, (MARGIN, 50), f"{len(shots)} shots · {_clock(total)}", 14, DIM)

    start_frame = 0
    for i, (shot, keyframe) in enumerate(zip(shots, keyframes)):
        x = MARGIN + (i % cols) * (THUMB_WIDTH + MARGIN)
        y = HEADER_HEIGHT + (i // cols) * (thumb_h + CAPTION_HEIGHT + MARGIN)
        try:
            with Image.open(keyframe) as im:
                thumb = im.convert("RGB").resize((THUMB_WIDTH, thumb_h), Image.Resampling.LANCZOS)
        except OSError as exc:
            raise StageError(f"assembly: keyframe of shot {shot.get('id')!r} is unreadable: {exc}") from exc
        sheet.paste(thumb, (x, y))
        frames = int(shot["frames"])
        lines = [
            (f"{shot.get('id', i + 1)}  {_clock(start_frame / fps)}  +{frames / fps:.2f}s", TEXT),
            (str(shot.get("camera", "")), DIM),
        ]
        description = str(shot.get("description") or "")
        if description:
            lines += [(text, DIM) for text in wrap(description, caption_font, THUMB_WIDTH, max_lines=2)]
        dialogue = shot.get("lines") or []
        if dialogue:
            first = dialogue[0]
            said = f"{first.get('speaker', '')}: {first.get('text', '')}"
            room = max(1, CAPTION_LINES - len(lines))
            lines += [(text, TEXT) for text in wrap(said, caption_font, THUMB_WIDTH, max_lines=room)]
        for n, (text, colour) in enumerate(lines[:CAPTION_LINES]):
            text = ellipsize(text, CAPTION_SIZE, THUMB_WIDTH)  # never over the next column
            draw_text(draw, (x, y + thumb_h + 6 + n * LINE_HEIGHT), text, CAPTION_SIZE, colour)
        start_frame += frames
    # No text chunks or timestamps: the PNG is a function of its pixels.
    sheet.save(path, format="PNG", optimize=False)
    return size
