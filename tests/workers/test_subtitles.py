"""The subtitles of an episode (workers/assembly/_subtitles.py): cue text that never forges a cue of
its own, the conventions every cue keeps (42 Latin / 16 CJK characters a line, two lines, 5/6 s), and
the small pieces of the assembly that need no media."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.workers.test_assembly import mov_text_samples, parse_srt, parse_srt_loosely
from workers.api import StageError
from workers.assembly._subtitles import ass_text, build_cues, cue_text, line_length
from workers.assembly.ffmpeg import concat_list, language_code

# --- the pieces, without media ----------------------------------------------------------------


def test_cue_text_drops_blank_lines_and_keeps_everything_else():
    """cue_text trims, drops blank lines (SRT ends cues there) and keeps every other character."""
    assert cue_text("  a\r\n\r\n \n{\\an8} <b>b</b> --> \\n 😀\n") == "a\n{\\an8} <b>b</b> --> \\n 😀"


def test_overlapping_cues_are_refused():
    """A cue starting before the previous one ends raises StageError."""
    with pytest.raises(StageError, match="before"):
        build_cues([{"start": 0, "end": 2, "text": "a"}, {"start": 1.5, "end": 3, "text": "b"}], 10_000)


def test_cue_past_the_end_is_clamped_and_one_after_it_refused():
    """A cue ending after the video is cut at its end; one starting after it raises StageError."""
    assert build_cues([{"start": 1, "end": 12, "text": "a"}], 10_000)[0].end_ms == 10_000
    with pytest.raises(StageError):
        build_cues([{"start": 11, "end": 12, "text": "a"}], 10_000)


def test_ass_text_breaks_up_only_what_ffmpeg_would_interpret():
    """Override openers and \\n/\\N get an empty {\\} block; real newlines become \\N; the rest is untouched."""
    assert ass_text("{\\an8}a\\nb\\Nc\nd {x} \\h \\") == "{{\\}\\an8}a\\{\\}nb\\{\\}Nc\\Nd {x} \\h \\"


def test_concat_list_quotes_paths(tmp_path):
    """A path with a quote is single-quoted with the quote escaped as '\\'' and its duration stated."""
    path = tmp_path / "it's.mov"
    assert concat_list([(path, 2.5)]).splitlines()[1:] == [
        "file '" + str(path.resolve()).replace("'", "'\\''") + "'",
        "duration 2.500000",
    ]


@pytest.mark.parametrize(
    "tag, code",
    [("en", "eng"), ("en-US", "eng"), ("zh", "zho"), ("zh_CN", "zho"), ("fra", "fra"), ("", "und"), ("x; rm", "und")],
)
def test_language_codes_are_iso_639_2(tag, code):
    """Language tags map to the ISO 639-2/T codes MP4 stores; unknown ones to "und"."""
    assert language_code(tag) == code


# --- SRT cue injection: a line's text must never start a cue of its own -----------------------------

INJECTION = "Para one\n\n2\n00:00:05,000 --> 00:00:06,000\nInjected cue"
INJECTIONS = [
    INJECTION,
    "Para one\n2\n00:00:05,000 --> 00:00:06,000\nInjected cue",  # no blank line to drop
    "Para one\r\n\r\n2\r\n00:00:05,000 --> 00:00:06,000\r\nInjected cue",
    "Para one\n\n2\n   00:00:05,000-->00:00:06,000\nInjected cue",  # whitespace, no spaces at the arrow
    "Para one\n\n2\n+0:0:5.000 --> 0:0:6.000\nInjected cue",  # ffmpeg reads %d: a sign, short fields
    "Para one\n\n2\n00:00:05,000 - > 00:00:06,000\nInjected cue",  # PyPI srt's "- >" arrow
    "Para one\n\n2\n00:00:05,000 --> 00:00:06,000 X1:0 X2:1 Y1:0 Y2:1\nInjected cue",
    "00:00:05,000 --> 00:00:06,000\nInjected cue",  # the whole text is a timing line
]


def _injected_srt(text: str) -> tuple[list, str]:
    from workers.assembly._subtitles import srt

    cues = build_cues([{"start": 0, "end": 4, "text": text}, {"start": 7, "end": 8.25, "text": "later"}], 10_000)
    return cues, srt(cues)


@pytest.mark.parametrize("text", INJECTIONS)
def test_a_line_that_looks_like_a_cue_stays_in_its_own_cue(text):
    """Blank lines are dropped and a timing-like line starts with a zero-width space: the strict
    reader and a reader that starts a cue at every timing line both see exactly the cues written,
    the first line's (wrapped, split past two lines) filling 0..4 s with its visible text, then "later"."""
    cues, body = _injected_srt(text)
    visible = [line for line in text.replace("\r\n", "\n").strip().split("\n") if line.strip()]
    first = [c for c in cues if c.start_ms < 4000]
    assert (first[0].start_ms, first[-1].end_ms) == (0, 4000)
    assert all(a.end_ms == b.start_ms for a, b in zip(first, first[1:]))
    assert " ".join(c.text for c in first).replace("\u200b", "").split() == " ".join(visible).split()
    assert [(c.start_ms, c.end_ms, c.text) for c in cues[len(first) :]] == [(7000, 8250, "later")]
    assert parse_srt(body) == [(c.start_ms, c.end_ms, c.text) for c in cues]
    assert [(s, e) for s, e, _ in parse_srt_loosely(body)] == [(c.start_ms, c.end_ms) for c in cues]
    for block in body.split("\n\n")[:-1]:
        assert "" not in block.split("\n")  # no empty line within a cue
        for line in block.split("\n")[2:]:
            assert not re.match(r"\s*[-+]?\d+\s*:.*-[ -]*>", line)  # no text line reads as timing


def test_cue_text_is_idempotent_and_leaves_ordinary_arrows_alone():
    once = cue_text(INJECTION)
    assert cue_text(once) == once
    assert once.count("\u200b") == 1
    assert cue_text("10 apples --> 12 apples") == "\u200b10 apples --> 12 apples"  # harmless, invisible
    assert cue_text("He said --> go\n2 cups") == "He said --> go\n2 cups"


@pytest.mark.media
@pytest.mark.parametrize("text", INJECTIONS)
def test_ffmpeg_reads_the_srt_with_the_injection_as_one_cue(text, tmp_path):
    """``ffmpeg -i episode.srt -f srt -`` round-trips the sidecar to the same cues."""
    cues, body = _injected_srt(text)
    path = tmp_path / "episode.srt"
    path.write_text(body, encoding="utf-8", newline="\n")
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "srt", "-"], capture_output=True, check=True
    ).stdout.decode("utf-8")
    assert parse_srt_loosely(out) == [(c.start_ms, c.end_ms, c.text) for c in cues]


@pytest.mark.media
def test_the_soft_track_carries_the_same_text_as_the_srt(tmp_path):
    """The mov_text track is made from the cues (not from the SRT): its samples hold the SRT's texts."""
    from workers.assembly._subtitles import ass_matroska

    cues, body = _injected_srt(INJECTION)
    subs, mp4 = tmp_path / "subs.mkv", tmp_path / "subs.mp4"
    subs.write_bytes(ass_matroska(cues))
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(subs), "-map", "0:s:0", "-c:s", "mov_text", str(mp4)], check=True
    )
    assert mov_text_samples(mp4) == parse_srt(body)


# --- the conventions every cue keeps: 42 (Latin) / 16 (CJK) characters a line, two lines, 5/6 s ----

LONG = (
    "The lantern flickered as the old tea master poured a cup for the stranger "
    "who had walked all night through the rain to reach the shop."
)


def _lines(cues) -> list[str]:
    return [line for c in cues for line in c.text.split("\n")]


def test_a_long_latin_line_wraps_at_spaces_into_two_lines_of_at_most_42():
    """A 65-character line becomes one cue of two lines, broken at a space, nothing lost."""
    text = "Twenty years I waited for that letter, child, and now it is here."
    (cue,) = build_cues([{"start": 1, "end": 5, "text": text}], 10_000)
    assert (cue.start_ms, cue.end_ms) == (1000, 5000)
    assert cue.text == "Twenty years I waited for that letter,\nchild, and now it is here."
    assert cue.text.replace("\n", " ") == text


def test_a_line_past_two_lines_is_split_into_cues_sharing_its_window_by_characters():
    """134 characters make four even lines, so two cues: together exactly the line's window, each
    at least 5/6 s, the rest of the time shared by their characters; the same every time."""
    cues = build_cues([{"start": 1, "end": 6.5, "text": LONG}], 10_000)
    assert [(c.start_ms, c.end_ms) for c in cues] == [(1000, 3677), (3677, 6500)]
    assert [c.text.count("\n") for c in cues] == [1, 1]
    assert all(len(line) <= 42 for line in _lines(cues))
    assert " ".join(_lines(cues)) == LONG
    chars = [len(c.text) - 1 for c in cues]  # 63 and 68 characters
    spare = 5500 - 2 * 834
    assert cues[0].end_ms - 1000 == 834 + round(spare * chars[0] / sum(chars))
    assert build_cues([{"start": 1, "end": 6.5, "text": LONG}], 10_000) == cues


def test_cjk_wraps_at_16_characters_and_never_breaks_a_character_apart():
    """CJK breaks between any characters, 16 a line, even lines, best after a pause; closing
    punctuation never starts a line; a combining accent and a joined emoji sequence stay whole."""
    text = "今天晚上的茶特别香，你要不要尝一尝？我们这里的龙井是西湖边上最好的茶叶。"
    cues = build_cues([{"start": 0, "end": 6, "text": text}], 10_000)
    lines = _lines(cues)
    assert lines == ["今天晚上的茶特别香，", "你要不要尝一尝？我们这里的", "龙井是西湖边上最好的茶叶。"]
    assert "".join(lines) == text and all(len(line) <= 16 for line in lines)
    assert not any(line[0] in "，。？" for line in lines)
    family, accent = "👨\u200d👩\u200d👧", "e\u0301"
    mixed = "茶" * 15 + family + "好" * 15 + accent + "好"
    lines = _lines(build_cues([{"start": 0, "end": 6, "text": mixed}], 10_000))
    assert "".join(lines) == mixed and len(lines) == 3
    assert any(family in line for line in lines) and any(accent in line for line in lines)
    assert all(line_length(line) <= 16 and line[0] not in "\u200d\u0301" for line in lines)


def test_a_word_longer_than_a_line_is_broken_not_cut():
    """A 100-character word is broken into 42-character pieces, every character kept."""
    word = "x" * 100
    assert _lines(build_cues([{"start": 0, "end": 5, "text": "a " + word}], 10_000)) == [
        "a",
        "x" * 42,
        "x" * 42,
        "x" * 16,
    ]


def test_a_short_line_is_held_for_5_6_s_but_never_past_the_next_cue():
    """A 0.3 s line keeps its start and lasts 834 ms; one 0.5 s before the next cue ends there;
    the last one stops at the video's end."""
    cues = build_cues(
        [
            {"start": 1, "end": 1.3, "text": "Yes."},
            {"start": 3, "end": 3.2, "text": "No."},
            {"start": 3.5, "end": 5, "text": "Maybe."},
            {"start": 9.5, "end": 9.7, "text": "Bye."},
        ],
        10_000,
    )
    assert [(c.start_ms, c.end_ms) for c in cues] == [(1000, 1834), (3000, 3500), (3500, 5000), (9500, 10_000)]


def test_wrapping_never_makes_a_line_that_reads_as_timing():
    """Text whose wrap would start a line with "12 --> 13" keeps that line behind a zero-width
    space, so no reader takes it for a cue."""
    text = "a" * 40 + " 12 --> 13 Injected"
    (cue,) = build_cues([{"start": 0, "end": 4, "text": text}], 10_000)
    assert cue.text == "a" * 40 + "\n\u200b12 --> 13 Injected"
    assert [(s, e) for s, e, _ in parse_srt_loosely(srt_of([cue]))] == [(0, 4000)]


def srt_of(cues) -> str:
    from workers.assembly._subtitles import srt

    return srt(cues)
