"""The embedded image backend: character sheets and keyframes drawn with Pillow.

Offline and deterministic (every random choice comes from a generator seeded by the action's
parameters). A character sheet is a turnaround of the character in three poses plus its look and
colours; it also yields the front pose as a transparent "figure", which every keyframe with that
character composes in, so a character looks the same in every shot of every episode of the series.
A keyframe shows the scene only (no caption: the shot's description is the prompt, not the picture)
and says in its meta where each drawn character's face and mouth are, for the lip-sync stage.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from workers import fonts
from workers.api import Estimate, Resources, StageError, StageResult, Usage

SHEET_SIZE = (1200, 900)
FIGURE_HEIGHT = 800
_SKIN = ("#f1c7a5", "#e0ac69", "#c68642", "#8d5524", "#ffdbac", "#d1a37c")
_HAIR = ("#1b1b1b", "#3b2219", "#6a4e42", "#b89778", "#a52a2a", "#d6c4a8")
_HAIRSTYLES = ("bob", "long", "short", "bun")


def _rgb(color: str) -> tuple[int, int, int]:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return r, g, b


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b))
    return r, g, bl


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest())


def _colors(character: Mapping[str, Any], palette: list[str]) -> dict[str, tuple[int, int, int]]:
    look, rng = character["look"], _rng("colors", character["id"])
    return {
        "skin": _rgb(look.get("skin") or rng.choice(_SKIN)),
        "hair": _rgb(look.get("hair") or rng.choice(_HAIR)),
        "outfit": _rgb(look.get("outfit") or rng.choice(palette[1:])),
        "accent": _rgb(palette[-1]),
    }


_TURN = {"front": 0.0, "three_quarter": 0.5, "side": 1.0}


def face_geometry(pose: str, height: int) -> dict[str, Any]:
    """Where draw_figure puts the face on a figure ``height`` pixels tall (in pose ``pose``).

    ``box`` is the head's box [x0, y0, x1, y1], ``mouth`` the mouth's centre [x, y], ``mouth_width`` its
    width at rest and ``head_r`` the head's half width, in the figure's pixels (the pixel at column i
    has x = i, as Pillow draws). draw_figure draws from these numbers, so a keyframe that composes the
    figure can say where each face and mouth is without looking at the pixels.
    """
    turn, w = _TURN[pose], int(height * 0.55)
    head_r = height * 0.105
    hx, hy = w / 2 + turn * head_r * 0.35, height * 0.19
    return {
        "box": [hx - head_r, hy - head_r * 1.15, hx + head_r, hy + head_r * 1.15],
        "mouth": [hx + turn * head_r * 0.4, hy + head_r * 0.5],
        "mouth_width": head_r * 0.5,
        "head_r": head_r,
    }


def mouth_colour(character: Mapping[str, Any], palette: list[str]) -> tuple[int, int, int]:
    """The closed mouth's colour: the character's skin, darker and a little red, so it shows on any skin."""
    return _mix(_colors(character, palette)["skin"], (70, 15, 25), 0.6)


def draw_figure(character: Mapping[str, Any], palette: list[str], seed: int, pose: str, height: int) -> Image.Image:
    """One pose ("front", "three_quarter", "side") of a character, on a transparent canvas.

    The head and the mouth are where face_geometry(pose, height) says.
    """
    c, rng = _colors(character, palette), _rng("figure", character["id"], seed)
    hairstyle, build = rng.choice(_HAIRSTYLES), rng.uniform(0.85, 1.15)
    w, h = int(height * 0.55), height
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    turn = _TURN[pose]
    face = face_geometry(pose, height)
    cx, head_r = w / 2, face["head_r"]
    shoulder = h * 0.19 * build * (1 - 0.45 * turn)
    dark = _mix(c["outfit"], (0, 0, 0), 0.35)
    # legs, torso, arms, neck, head, hair, face: back to front
    for dx in (-0.35, 0.35):
        x = cx + dx * shoulder * (1 - 0.6 * turn)
        d.rounded_rectangle((x - h * 0.035, h * 0.66, x + h * 0.035, h * 0.98), radius=h * 0.02, fill=dark)
    d.polygon(
        [
            (cx - shoulder, h * 0.31),
            (cx + shoulder, h * 0.31),
            (cx + shoulder * 0.8, h * 0.70),
            (cx - shoulder * 0.8, h * 0.70),
        ],
        fill=c["outfit"],
    )
    for side in (-1, 1):
        x = cx + side * (shoulder + h * 0.02)
        if turn < 0.9 or side == 1:
            d.rounded_rectangle(
                (x - h * 0.03, h * 0.32, x + h * 0.03, h * 0.62),
                radius=h * 0.03,
                fill=_mix(c["outfit"], (255, 255, 255), 0.1),
            )
    d.polygon([(cx - shoulder * 0.45, h * 0.31), (cx + shoulder * 0.45, h * 0.31), (cx, h * 0.40)], fill=c["accent"])
    d.rectangle((cx - h * 0.03, h * 0.25, cx + h * 0.03, h * 0.32), fill=_mix(c["skin"], (0, 0, 0), 0.1))
    hx, hy = (face["box"][0] + face["box"][2]) / 2, (face["box"][1] + face["box"][3]) / 2
    if hairstyle == "long":
        d.rounded_rectangle(
            (hx - head_r * 1.15, hy - head_r, hx + head_r * 1.15, hy + head_r * 2.1),
            radius=head_r * 0.6,
            fill=c["hair"],
        )
    d.ellipse((hx - head_r, hy - head_r * 1.15, hx + head_r, hy + head_r * 1.15), fill=c["skin"])
    if hairstyle == "bun":
        d.ellipse((hx - head_r * 0.45, hy - head_r * 1.75, hx + head_r * 0.45, hy - head_r * 0.95), fill=c["hair"])
    cap = {"bob": 0.35, "long": 0.25, "short": -0.15, "bun": 0.0}[hairstyle]
    d.chord(
        (hx - head_r * 1.08, hy - head_r * 1.25, hx + head_r * 1.08, hy + head_r * (1.0 + cap)),
        180,
        360,
        fill=c["hair"],
    )
    if hairstyle == "bob":
        for x0, x1 in ((hx - head_r * 1.08, hx - head_r * 0.8), (hx + head_r * 0.8, hx + head_r * 1.08)):
            d.rectangle((x0, hy - head_r * 0.2, x1, hy + head_r * 0.75), fill=c["hair"])
    eye_dx = [(-0.38, 0.38), (-0.1, 0.5), (0.45,)][min(2, int(turn * 2))]
    for ex in eye_dx:
        x = hx + ex * head_r
        d.ellipse((x - head_r * 0.09, hy - head_r * 0.05, x + head_r * 0.09, hy + head_r * 0.17), fill=(25, 25, 35))
    # a closed mouth, a small dark ellipse: the part a lip-sync stage opens and closes
    (mx, my), mw = face["mouth"], face["mouth_width"]
    mh = max(1.0, head_r * 0.16)
    d.ellipse((mx - mw / 2, my - mh / 2, mx + mw / 2, my + mh / 2), fill=mouth_colour(character, palette))
    return img


def _gradient(size: tuple[int, int], top, bottom) -> Image.Image:
    w, h = size
    column = Image.new("RGB", (1, h))
    column.putdata([_mix(top, bottom, y / max(1, h - 1)) for y in range(h)])
    return column.resize((w, h))


def draw_sheet(params: Mapping[str, Any]) -> tuple[Image.Image, Image.Image]:
    style, character, seed = params["style"], params["character"], params["seed"]
    palette = style["palette"]
    w, h = SHEET_SIZE
    sheet = _gradient((w, h), _mix(_rgb(palette[0]), (255, 255, 255), 0.15), _rgb(palette[0])).convert("RGBA")
    d = ImageDraw.Draw(sheet)
    title_size, [title] = fonts.fit(f"{character['name']} — character sheet", 44, w - 80, max_lines=1, min_size=24)
    fonts.draw(d, (40, 28 + (44 - title_size) // 2), title, title_size, (255, 255, 255))
    description = fonts.wrap(character["look"]["description"], 24, w - 80, max_lines=2)
    fonts.draw_lines(d, (40, 90), description, 24, 32, (230, 230, 230))
    poses = ("front", "three_quarter", "side")
    for i, pose in enumerate(poses):
        fig = draw_figure(character, palette, seed, pose, 640)
        x = 40 + i * 340
        sheet.alpha_composite(fig, (x, 180))
        fonts.draw(d, (x + 110, 830), pose.replace("_", "/").replace("three/quarter", "3/4"), 26, (255, 255, 255))
    for i, (name, rgb) in enumerate(_colors(character, palette).items()):
        d.rectangle((w - 95, 200 + i * 90, w - 40, 255 + i * 90), fill=rgb, outline=(255, 255, 255))
        fonts.draw(d, (w - 95, 258 + i * 90), name, 16, (255, 255, 255))
    figure = draw_figure(character, palette, seed, "front", FIGURE_HEIGHT)
    return sheet.convert("RGB"), figure


def _night_factor(time_of_day: str) -> float:
    t = time_of_day.lower()
    return 0.55 if "night" in t or "夜" in t else 0.3 if "evening" in t or "dusk" in t or "晚" in t else 0.0


def _placed(face: Mapping[str, Any], fx: float, fy: float, x: int, y: int) -> dict[str, Any]:
    """A figure's face geometry after the figure is resized by (fx, fy) and pasted at (x, y)."""

    def px(v: float) -> float:
        return round(x + (v + 0.5) * fx - 0.5, 2)

    def py(v: float) -> float:
        return round(y + (v + 0.5) * fy - 0.5, 2)

    x0, y0, x1, y1 = face["box"]
    return {
        "box": [px(x0), py(y0), px(x1), py(y1)],
        "mouth": [px(face["mouth"][0]), py(face["mouth"][1])],
        "mouth_width": round(face["mouth_width"] * fx, 2),
    }


def draw_keyframe(
    params: Mapping[str, Any], figures: Mapping[str, Image.Image]
) -> tuple[Image.Image, dict[str, dict[str, Any]]]:
    """The shot's scene with its characters composed in, and where each drawn character's face is.

    The faces map each character drawn to its head box, mouth centre and mouth width in the keyframe's
    pixels (the figures are front poses from the sheets). No text is drawn: the scene, not its prompt.
    """
    w, h = params["width"], params["height"]
    palette = [_rgb(p) for p in params["style"]["palette"]]
    rng = _rng("keyframe", params["seed"], params["location"], params["description"])
    dim = _night_factor(params["time_of_day"])
    top, bottom = _mix(palette[0], (0, 0, 0), dim), _mix(palette[1], palette[0], 0.3 + dim / 2)
    img = _gradient((w, h), top, bottom).convert("RGBA")
    d = ImageDraw.Draw(img)
    glow = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    gx, gy, gr = rng.uniform(0.15, 0.85) * w, rng.uniform(0.12, 0.35) * h, rng.uniform(0.06, 0.12) * w
    ImageDraw.Draw(glow).ellipse((gx - gr, gy - gr, gx + gr, gy + gr), fill=(*palette[-1], 200))
    img.alpha_composite(glow.filter(ImageFilter.GaussianBlur(w / 40)))
    horizon = h * rng.uniform(0.55, 0.68)
    for layer, shade in ((0, 0.45), (1, 0.7)):
        x = -rng.uniform(0, w * 0.1)
        while x < w:
            bw, bh = rng.uniform(0.08, 0.22) * w, rng.uniform(0.12, 0.38) * h * (1.2 - 0.3 * layer)
            color = _mix(palette[0], (0, 0, 0), shade)
            d.rectangle((x, horizon - bh, x + bw, horizon), fill=color)
            for _ in range(int(bw * bh / (w * h) * 120)):
                wx, wy = rng.uniform(x + 4, x + bw - 8), rng.uniform(horizon - bh + 6, horizon - 10)
                d.rectangle(
                    (wx, wy, wx + w * 0.008, wy + w * 0.012), fill=(*palette[-1], 255) if rng.random() < 0.6 else color
                )
            x += bw + rng.uniform(0, w * 0.04)
    d.rectangle((0, horizon, w, h), fill=_mix(palette[1], (0, 0, 0), 0.5 + dim / 3))
    cast = [c for c in params["characters"] if c in figures]
    scale = {"wide": 0.42, "medium": 0.7, "close": 1.5}[params["framing"]]
    if params["framing"] == "close":
        cast = cast[:1]
    faces = {}
    for i, cid in enumerate(cast):
        fig = figures[cid]
        face = face_geometry("front", fig.height)
        w0, h0 = fig.size
        # never wider than the character's share of the frame, so two people in a medium shot do not overlap
        fh = int(min(h * scale, 0.95 * w / len(cast) * fig.height / fig.width))
        fig = fig.resize((max(1, int(fig.width * fh / fig.height)), fh), Image.Resampling.LANCZOS)
        x = int((i + 1) / (len(cast) + 1) * w - fig.width / 2)
        y = int(h * 0.22) if params["framing"] == "close" else int(min(h - fh, horizon + h * 0.3 - fh))
        img.alpha_composite(fig, (x, y))
        faces[cid] = _placed(face, fig.width / w0, fig.height / h0, x, y)
    tint = Image.new("RGBA", (w, h), (*palette[-1], 18))
    img.alpha_composite(tint)
    return img.convert("RGB"), faces


class PillowImages:
    """Image stage, embedded default: ``sheet`` (a character turnaround) and ``keyframe`` (one per shot).

    A keyframe's meta is ``{"width", "height", "faces"}``; faces maps each character drawn to
    ``{"box": [x0, y0, x1, y1], "mouth": [x, y], "mouth_width": w}`` in the keyframe's pixels.
    """

    stage, name, version = "image", "pillow", "2"  # 2: text in every script (fallback fonts, bidi, wrapping)
    ops = ("sheet", "keyframe")
    resources = Resources(num_cpus=1)
    tools: tuple[str, ...] = ()

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=0.5 if op == "sheet" else params["width"] * params["height"] / 2e6)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        if op == "sheet":
            sheet, figure = draw_sheet(params)
            files = {"sheet": out_dir / "sheet.png", "figure": out_dir / "figure.png"}
            sheet.save(files["sheet"], optimize=False)
            figure.save(files["figure"], optimize=False)
            return StageResult(
                files=files, meta={"width": sheet.width, "height": sheet.height}, usage=Usage(model="pillow")
            )
        if op == "keyframe":
            figures = {}
            for name, path in inputs.items():
                if name.startswith("sheet:"):
                    with Image.open(path) as im:
                        figures[name[len("sheet:") :]] = im.convert("RGBA")
            frame, faces = draw_keyframe(params, figures)
            path = out_dir / "keyframe.png"
            frame.save(path, optimize=False)
            return StageResult(
                files={"keyframe": path},
                meta={"width": frame.width, "height": frame.height, "faces": faces},
                usage=Usage(model="pillow"),
            )
        raise StageError(f"{self.name} cannot do {op!r}")


BACKEND = PillowImages()
