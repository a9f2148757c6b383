"""The Pillow image backend: sheets and keyframes of the right size, deterministic, CJK-capable."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image, ImageChops

from workers.image.pillow import (
    BACKEND,
    SHEET_SIZE,
    _colors,
    _mix,
    _rgb,
    draw_figure,
    face_geometry,
    mouth_colour,
)

STYLE = {"description": "flat", "palette": ["#102030", "#405060", "#f0a040"]}
ANA = {
    "id": "ana",
    "name": "安娜 Ana",
    "look": {"description": "红色外套 red coat", "outfit": "#c03030", "hair": None, "skin": None},
}


def _sheet(tmp_path, character=ANA, seed=0):
    out = tmp_path / f"sheet-{character['id']}-{seed}"
    out.mkdir()
    return BACKEND.run("sheet", {}, {"style": STYLE, "character": character, "seed": seed}, out)


def _keyframe(tmp_path, figure, framing="medium", description="安娜站在窗边。Ana at the window."):
    out = tmp_path / f"kf-{framing}"
    out.mkdir()
    params = {
        "style": STYLE,
        "width": 180,
        "height": 320,
        "seed": [1, "s01-01"],
        "location": "厨房",
        "time_of_day": "night",
        "description": description,
        "framing": framing,
        "characters": ["ana"],
    }
    return BACKEND.run("keyframe", {"sheet:ana": figure}, params, out)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sheet_has_turnaround_and_transparent_figure(tmp_path):
    """A sheet is SHEET_SIZE; its figure is RGBA with transparent background and opaque body."""
    result = _sheet(tmp_path)
    assert Image.open(result.files["sheet"]).size == SHEET_SIZE
    figure = Image.open(result.files["figure"])
    assert figure.mode == "RGBA"
    assert figure.getpixel((0, 0))[3] == 0
    assert figure.getpixel((figure.width // 2, int(figure.height * 0.5)))[3] == 255


def test_keyframe_size_and_determinism(tmp_path):
    """Keyframes are exactly the series' resolution and identical for identical inputs."""
    figure = _sheet(tmp_path).files["figure"]
    a = _keyframe(tmp_path, figure).files["keyframe"]
    assert Image.open(a).size == (180, 320)
    b_dir = tmp_path / "again"
    b_dir.mkdir()
    b = _keyframe(b_dir, _sheet(b_dir).files["figure"]).files["keyframe"]
    assert _digest(a) == _digest(b)


def test_character_colours_come_from_the_look(tmp_path):
    """The character's outfit colour from the spec appears in the keyframe."""
    figure = _sheet(tmp_path).files["figure"]
    frame = Image.open(_keyframe(tmp_path, figure, framing="close").files["keyframe"]).convert("RGB")
    colours = {c for _, c in frame.getcolors(maxcolors=1 << 20)}
    assert any(abs(r - 0xC0) < 12 and abs(g - 0x30) < 12 and abs(b - 0x30) < 12 for r, g, b in colours)


def test_framing_changes_the_picture(tmp_path):
    """Wide, medium and close framings give different keyframes."""
    figure = _sheet(tmp_path).files["figure"]
    digests = {_digest(_keyframe(tmp_path, figure, framing=f).files["keyframe"]) for f in ("wide", "medium", "close")}
    assert len(digests) == 3


def test_every_hairstyle_and_pose_draws():
    """Figures draw for many characters and seeds in every pose (every hairstyle is reached)."""
    from workers.image.pillow import _HAIRSTYLES, _rng, draw_figure

    styles = set()
    for i in range(40):
        character = dict(ANA, id=f"c{i}")
        styles.add(_rng("figure", character["id"], i).choice(_HAIRSTYLES))
        for pose in ("front", "three_quarter", "side"):
            assert draw_figure(character, STYLE["palette"], i, pose, 120).size == (66, 120)
    assert styles == set(_HAIRSTYLES)


BEN = {
    "id": "ben",
    "name": "Ben",
    "look": {"description": "blue shirt", "outfit": "#3050c0", "hair": None, "skin": "#8d5524"},
}


def _cast_keyframe(tmp_path, framing):
    """A 360x640 night keyframe of Ana and Ben in ``framing``; its result and its picture."""
    figures = {f"sheet:{c['id']}": _sheet(tmp_path, c).files["figure"] for c in (ANA, BEN)}
    out = tmp_path / f"cast-{framing}"
    out.mkdir()
    params = {
        "style": STYLE,
        "width": 360,
        "height": 640,
        "seed": [1, "s01-02"],
        "location": "桥",
        "time_of_day": "night",
        "description": "Ana and Ben on the bridge.",
        "framing": framing,
        "characters": ["ana", "ben"],
    }
    result = BACKEND.run("keyframe", figures, params, out)
    return result, Image.open(result.files["keyframe"]).convert("RGB")


def _tinted(rgb):
    """A figure's colour as the keyframe shows it: under the scene's light tint (the palette's last colour)."""
    return _mix(rgb, _rgb(STYLE["palette"][-1]), 18 / 255)


def _far(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.parametrize("framing, drawn", [("wide", ["ana", "ben"]), ("medium", ["ana", "ben"]), ("close", ["ana"])])
def test_faces_are_reported_where_they_are_drawn(tmp_path, framing, drawn):
    """meta faces names every character drawn (a close shot draws only the first): the mouth point shows the
    mouth's colour, a point inside the face box between the eyes and the mouth shows the skin."""
    result, frame = _cast_keyframe(tmp_path, framing)
    faces = result.meta["faces"]
    assert list(faces) == drawn
    for cid in drawn:
        character = ANA if cid == "ana" else BEN
        skin, mouth = (
            _tinted(_colors(character, STYLE["palette"])["skin"]),
            _tinted(mouth_colour(character, STYLE["palette"])),
        )
        assert _far(skin, mouth) > 30
        (mx, my), (x0, y0, x1, y1) = faces[cid]["mouth"], faces[cid]["box"]
        assert x0 < mx < x1 and y0 < my < y1
        assert faces[cid]["mouth_width"] == pytest.approx((x1 - x0) / 4, rel=0.02)
        assert _far(frame.getpixel((round(mx), round(my))), mouth) <= 6, (cid, framing)
        cheek = (round((x0 + x1) / 2), round((y0 + y1) / 2 + (x1 - x0) / 8))
        assert _far(frame.getpixel(cheek), skin) <= 6, (cid, framing)
    if len(drawn) == 2:
        assert faces["ana"]["box"][2] < faces["ben"]["box"][0]


def test_the_mouth_is_a_distinct_closed_mouth_on_every_figure():
    """draw_figure paints a mouth in the mouth's colour at face_geometry's mouth point, in every pose."""
    for pose in ("front", "three_quarter", "side"):
        figure = draw_figure(ANA, STYLE["palette"], 0, pose, 400)
        face = face_geometry(pose, 400)
        mx, my = face["mouth"]
        assert figure.getpixel((round(mx), round(my)))[:3] == mouth_colour(ANA, STYLE["palette"]), pose
        assert (
            figure.getpixel((round(mx), round(my - face["head_r"] * 0.25)))[:3]
            == _colors(ANA, STYLE["palette"])["skin"]
        )


def _band(tmp_path, name, description, width=360, height=640):
    """The keyframe for ``description`` with nobody in it."""
    out = tmp_path / name
    out.mkdir()
    params = {
        "style": STYLE,
        "width": width,
        "height": height,
        "seed": [1, "x"],
        "location": "l",
        "time_of_day": "day",
        "description": description,
        "framing": "wide",
        "characters": [],
    }
    return Image.open(BACKEND.run("keyframe", {}, params, out).files["keyframe"]).convert("RGB")


def _text_ink(frame):
    """Text in the top quarter: its near-white pixels (no scene colour there is that light)."""
    r, g, b = frame.crop((0, 0, frame.width, frame.height // 4)).split()
    return ImageChops.darker(ImageChops.darker(r, g), b).point(lambda v: 255 if v > 150 else 0).tobytes()


def test_no_caption_is_burnt_into_the_keyframe(tmp_path):
    """The keyframe shows the scene, not its prompt: no light text and no darkened band at the top, where the
    caption band with the place, the time and the description used to be."""
    frame = _band(tmp_path, "long", "Ana: " + "小雨在断桥边捡到一封被雨打湿的信" * 6)
    assert _text_ink(frame).count(255) == 0
    sky, under = frame.convert("L").getpixel((2, 0)), frame.convert("L").getpixel((2, int(640 * 0.06)))
    assert under >= sky * 0.9, (sky, under)


def _sheet_text(tmp_path, name):
    """The light pixels of a sheet's title row, for a character called ``name``."""
    out = tmp_path / f"text-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    params = {"style": STYLE, "character": dict(ANA, name=name), "seed": 0}
    sheet = Image.open(BACKEND.run("sheet", {}, params, out).files["sheet"]).convert("L")
    return sheet.crop((0, 0, SHEET_SIZE[0], 85)).point(lambda v: 255 if v > 150 else 0).tobytes()


def test_sheet_text_draws_every_script(tmp_path):
    """A sheet's title draws CJK, Arabic, Hebrew and emoji letters: two different letters, repeated as often,
    never draw alike (missing glyphs draw the same boxes), and draw more than a blank title."""
    pairs = {
        "cjk": ("梅梅梅梅", "信信信信"),
        "arabic": ("بببب", "سسسس"),
        "hebrew": ("אאאא", "שששש"),
        "emoji": ("😀😀", "🎬🎬"),
    }
    blank = _sheet_text(tmp_path, "\u3000").count(255)
    for script, (a, b) in pairs.items():
        first, second = _sheet_text(tmp_path, a), _sheet_text(tmp_path, b)
        assert first != second, f"{script}: {a} and {b} draw alike"
        assert first.count(255) > blank + 20, script
