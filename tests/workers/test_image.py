"""The Pillow image backend: sheets and keyframes of the right size, deterministic, CJK-capable."""

from __future__ import annotations

import hashlib

from PIL import Image, ImageChops

from workers.image.pillow import BACKEND, SHEET_SIZE

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


def test_cjk_caption_draws_glyphs(tmp_path):
    """A Mandarin description draws visible glyphs (not tofu boxes): more ink than a blank caption."""
    figure = _sheet(tmp_path).files["figure"]

    def ink(desc, name):
        out = tmp_path / name
        out.mkdir()
        params = {
            "style": STYLE,
            "width": 360,
            "height": 640,
            "seed": [1, "x"],
            "location": "l",
            "time_of_day": "day",
            "description": desc,
            "framing": "wide",
            "characters": [],
        }
        img = Image.open(BACKEND.run("keyframe", {"sheet:ana": figure}, params, out).files["keyframe"]).convert("L")
        band = img.crop((0, 40, 360, 110))
        return sum(band.histogram()[201:])

    assert ink("梅在柜台下发现了一封信", "cjk") > ink("\u3000", "blank") + 200


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
    """The caption band's text: its near-white pixels (the scene under the band is darkened, never that light)."""
    r, g, b = frame.crop((0, 0, frame.width, frame.height // 4)).split()
    return ImageChops.darker(ImageChops.darker(r, g), b).point(lambda v: 255 if v > 150 else 0).tobytes()


def test_arabic_hebrew_and_emoji_captions_draw_glyphs(tmp_path):
    """Captions in Arabic, Hebrew and emoji draw their letters: two different letters, repeated as often, never
    draw alike (missing glyphs draw the same boxes), and draw more than a blank caption."""
    pairs = {"arabic": ("بببب", "سسسس"), "hebrew": ("אאאא", "שששש"), "emoji": ("😀😀", "🎬🎬")}
    blank = _text_ink(_band(tmp_path, "blank", "\u3000")).count(255)
    for script, (a, b) in pairs.items():
        first, second = _text_ink(_band(tmp_path, f"{script}-a", a)), _text_ink(_band(tmp_path, f"{script}-b", b))
        assert first != second, f"{script}: {a} and {b} draw alike"
        assert first.count(255) > blank + 20, script


def test_long_cjk_caption_stays_inside_its_box(tmp_path):
    """A long CJK description after a spaced name wraps inside the band's margins: no text in the right margin."""
    frame = _band(tmp_path, "long", "Ana: " + "小雨在断桥边捡到一封被雨打湿的信" * 12, width=180, height=320)
    margin = frame.crop((int(180 * 0.95), 0, 180, 320))
    assert not [c for _, c in margin.getcolors(1 << 16) if min(c) > 225]
