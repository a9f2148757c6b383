"""What `farm validate` says about a spec: each problem at its line and field, with a fix that fits where it is."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from farm.errors import UsageError
from farm.loader import load_episode, validate_files
from farm.settings import Settings
from farm.specfile import SpecLimits

SERIES = """\
id: s1
title: T
language: en
style:
  description: d
  palette: ["#111111", "#222222"]
characters:
  - id: ana
    name: Ana
    look: {description: x}
    voice: {voice: en-us+f3}
"""
BOB = "  - id: bob\n    name: Bob\n    look: {description: y}\n    voice: {voice: en-us+m3}\n"
EPISODE = (
    "series: series.yaml\nnumber: 1\ntitle: T\noutline:\n  - beat: b\n    lines:\n      - {speaker: ana, text: hi}\n"
)


def _write(folder, name, text):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_series_with_a_misspelled_characters_is_still_a_series(tmp_path):
    """A series whose characters: is misspelled is told so, not read as an episode missing series: and number:."""
    path = _write(tmp_path, "series.yaml", SERIES.replace("characters:", "charaters:"))
    problems = validate_files([path])
    assert [(p.field, p.line) for p in problems] == [("characters", 1), ("charaters", 7)]
    assert "did you mean 'characters'?" in problems[1].message


def test_unknown_fields_are_matched_against_their_own_part_of_the_spec(tmp_path):
    """voice.speed is not taken for the series' seed: the voice's own fields are listed; look.hiar suggests hair."""
    text = SERIES.replace("{voice: en-us+f3}", "{voice: en-us+f3, speed: 2}").replace("{description: x}", "{hiar: x}")
    problems = {p.field: p for p in validate_files([_write(tmp_path, "series.yaml", text)])}
    speed = problems["characters[0].voice.speed"]
    assert "seed" not in speed.message and "(description, pitch, rate, voice)" in speed.message and speed.line == 11
    assert "did you mean 'hair'?" in problems["characters[0].look.hiar"].message


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        (SERIES.replace("language: en", "language: xx"), "language", 3, "is not supported"),
        (SERIES + BOB.replace("bob", "ana"), "characters[1].id", 12, "must be unique"),
        (SERIES + BOB.replace("en-us+m3", "en-us+f3"), "characters[1].voice", 15, "same voice"),
    ],
    ids=["language", "repeated-id", "shared-voice"],
)
def test_series_checks_across_fields_name_their_field_and_line(tmp_path, text, field, line, words):
    """A series' language, a repeated character id and a shared voice are reported at their own field and line."""
    [problem] = validate_files([_write(tmp_path, "series.yaml", text)])
    assert (problem.field, problem.line) == (field, line) and words in problem.message


def test_yes_no_and_numbers_where_text_is_wanted_say_to_quote_them(tmp_path):
    """`title: no` and `location: 3.5` are not text to YAML: the message shows the quoted line to write."""
    _write(tmp_path, "series.yaml", SERIES)
    text = EPISODE.replace("title: T", "title: no").replace("- beat: b", "- beat: b\n    location: 3.5")
    path = _write(tmp_path, "ep.yaml", text)
    problems = {p.field: p for p in validate_files([path])}
    assert (
        problems["title"].message == 'no is read by YAML as the yes/no value false, not as text; quote it: title: "no"'
    )
    assert problems["title"].line == 3
    assert 'quote it: location: "3.5"' in problems["outline[0].location"].message


def test_a_clock_time_is_text_not_a_base_60_number(tmp_path):
    """`time_of_day: 12:30` is the text 12:30 (YAML 1.1 would read 750); `seed: 12:30` is refused as no number."""
    _write(tmp_path, "series.yaml", SERIES)
    path = _write(tmp_path, "ep.yaml", EPISODE.replace("- beat: b", "- beat: b\n    time_of_day: 12:30"))
    assert load_episode(path).episode.outline[0].time_of_day == "12:30"
    seeded = _write(tmp_path, "ep2.yaml", EPISODE.replace("title: T", "title: T\nseed: 12:30"))
    [problem] = validate_files([seeded])
    assert (problem.field, problem.line) == ("seed", 4) and "'12:30' is not a number" in problem.message


def test_batch_problems_carry_their_lines(tmp_path):
    """An episode given twice in a batch, and a pattern that matches nothing, are reported at their lines."""
    _write(tmp_path, "series.yaml", SERIES)
    _write(tmp_path, "a.yaml", EPISODE)
    _write(tmp_path, "b.yaml", EPISODE)
    batch = _write(tmp_path, "batch.yaml", "studio: acme\nepisodes:\n  - a.yaml\n  - b.yaml\n  - none-*.yaml\n")
    problems = validate_files([batch], now=datetime.now(timezone.utc))
    found = {(p.file.rsplit("/", 1)[-1], p.field, p.line) for p in problems}
    assert found == {("b.yaml", "number", 2), ("batch.yaml", "episodes[2]", 5)}


def test_spec_limits_come_from_the_settings_passed_down(tmp_path):
    """The size limit and the extra folders are the settings' spec_max_bytes and spec_root, passed as values."""
    _write(tmp_path, "series.yaml", SERIES)
    (tmp_path / "sub").mkdir()
    path = _write(tmp_path / "sub", "ep.yaml", EPISODE.replace("series.yaml", "../series.yaml"))
    settings = Settings.from_env({"FARM_SPEC_MAX_BYTES": "4096", "FARM_SPEC_ROOT": str(tmp_path)})
    assert validate_files([path], limits=SpecLimits.of(settings)) == []
    [outside] = validate_files([path], limits=SpecLimits(max_bytes=4096))
    assert outside.field == "series" and "outside this spec's folder" in outside.message
    [too_big] = validate_files([path], limits=SpecLimits(max_bytes=40, roots=(tmp_path,)))
    assert "over the 40 a spec file may have" in too_big.message


def test_a_bad_spec_size_setting_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    """FARM_SPEC_MAX_BYTES that is no number is refused (it was silently ignored), naming the variable."""
    _write(tmp_path, "series.yaml", SERIES)
    monkeypatch.setenv("FARM_SPEC_MAX_BYTES", "1MB")
    with pytest.raises(UsageError, match=r"^FARM_SPEC_MAX_BYTES: .*integer"):
        validate_files([_write(tmp_path, "ep.yaml", EPISODE)])
