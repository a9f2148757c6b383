"""Drawn text in every script a spec may hold: glyphs not boxes, right-to-left runs in order, lines that fit."""

from __future__ import annotations

from PIL import Image, ImageChops, ImageDraw, ImageStat

from workers import fonts

SIZE = 32


def _render(text: str, size: int = SIZE) -> Image.Image:
    img = Image.new("L", (900, 2 * size))
    fonts.draw(ImageDraw.Draw(img), (10, size // 4), text, size, 255)
    return img


def _difference(a: Image.Image, b: Image.Image) -> float:
    return ImageStat.Stat(ImageChops.difference(a, b)).mean[0]


def test_arabic_hebrew_emoji_devanagari_thai_draw_glyphs_not_boxes():
    """Two different letters of each script draw differently: a missing glyph is the same box for both."""
    pairs = {
        "arabic": ("ب", "س"),
        "hebrew": ("א", "ש"),
        "emoji": ("😀", "🎬"),
        "devanagari": ("क", "म"),
        "thai": ("ก", "ม"),
    }
    for script, (a, b) in pairs.items():
        first, second = _render(a * 3), _render(b * 3)
        assert first.getbbox() and second.getbbox(), script
        assert _difference(first, second) > 0.5, f"{script}: {a} and {b} draw alike (empty boxes)"


def test_arabic_letters_are_joined():
    """Arabic letters take their joined forms: a word is narrower than its letters drawn apart."""
    word = "بببب"
    assert fonts.width(word, SIZE) < sum(fonts.width(ch, SIZE) for ch in word) - 4


def test_bidi_levels_of_mixed_lines():
    """Hebrew in English is one right-to-left run; English in Hebrew is embedded left-to-right."""
    assert fonts.levels("Hello שלום") == [0] * 6 + [1] * 4
    assert fonts.levels("שלום Hello") == [1] * 5 + [2] * 5
    assert fonts.levels("שלום 123") == [1] * 5 + [2] * 3
    assert fonts.levels("abc 123") == [0] * 7


def test_runs_come_in_visual_order():
    """A Hebrew sentence with an English word draws the English first (leftmost), the Hebrew to its right."""
    assert [(r.text, r.rtl) for r in fonts.runs("Hello שלום")] == [("Hello ", False), ("שלום", True)]
    assert [(r.text, r.rtl) for r in fonts.runs("שלום Hello")] == [("Hello", False), ("שלום ", True)]
    assert [r.text for r in fonts.runs("שלום 123 abc")] == ["abc", " ", "123", "שלום "]


def test_mixed_caption_puts_the_hebrew_run_right_to_left():
    """In "Hello אב" the first Hebrew letter is drawn rightmost: its right edge looks like "Hello אא"."""
    probe = _render("Hello אב")
    right = probe.getbbox()[2]

    def tail(img: Image.Image) -> Image.Image:
        edge = img.getbbox()[2]
        return img.crop((edge - 12, 0, edge, img.height))

    assert abs(right - _render("Hello אא").getbbox()[2]) <= 3
    assert _difference(tail(probe), tail(_render("Hello אא"))) < _difference(tail(probe), tail(_render("Hello בב")))


def test_long_cjk_line_wraps_between_characters_inside_its_width():
    """A CJK line after a spaced speaker name wraps by width, every line inside it, ellipsis at the limit."""
    text = "xiaoyu: " + "这封信是写给我的吗寄信人的名字已经看不清了" * 6
    lines = fonts.wrap(text, fonts.font(15), 240, max_lines=4)
    assert len(lines) == 4 and lines[-1].endswith(fonts.ELLIPSIS)
    assert all(fonts.width(line, 15) <= 240 for line in lines)
    assert lines[0].startswith("xiaoyu: 这")


def test_latin_wraps_at_spaces_and_cjk_punctuation_never_starts_a_line():
    """Words stay whole; a full stop stays with the character before it."""
    lines = fonts.wrap("the quick brown fox jumps over the lazy dog", 20, 150)
    assert " ".join(lines) == "the quick brown fox jumps over the lazy dog"
    assert all(fonts.width(line, 20) <= 150 for line in lines)
    for width in range(60, 200, 7):
        assert not any(
            line.startswith(("。", "，")) for line in fonts.wrap("梅在柜台下，发现了一封信。她抬起头。", 20, width)
        )


def test_fit_shrinks_before_it_cuts():
    """Text that does not fit at the asked size is drawn smaller; at the smallest size it is cut with an ellipsis."""
    text = "a long description of the scene " * 4
    size, lines = fonts.fit(text, 30, 300, max_lines=2, min_size=10)
    assert size < 30 and len(lines) <= 2 and not lines[-1].endswith(fonts.ELLIPSIS)
    size, lines = fonts.fit(text * 10, 30, 300, max_lines=2, min_size=10)
    assert size == 10 and len(lines) == 2 and lines[-1].endswith(fonts.ELLIPSIS)
