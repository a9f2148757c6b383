"""Spec files: valid ones load, every invalid one is refused with file, line, field and a fix."""

from __future__ import annotations

import copy

import pytest
import yaml

from farm.errors import SpecError
from farm.loader import load_episode, validate_files
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, write_specs


def _problems(tmp_path, series=None, episode=None):
    path = write_specs(tmp_path, series, episode)
    with pytest.raises(SpecError) as exc:
        load_episode(path)
    return exc.value.problems


def _episode(**changes):
    ep = {"series": "series.yaml", "number": 1, "title": "T", "target_seconds": 30, "script": SMALL_SCRIPT}
    ep.update(changes)
    return ep


def test_shipped_examples_are_valid():
    """Every shipped example validates."""
    from importlib import resources

    files = [
        str(f)
        for s in (resources.files("farm") / "examples").iterdir()
        if s.is_dir()
        for f in s.iterdir()
        if f.name.endswith(".yaml")
    ]
    assert len(files) >= 5
    assert validate_files(files) == []


def test_small_episode_loads(tmp_path):
    """A valid episode loads together with its series."""
    loaded = load_episode(write_specs(tmp_path))
    assert loaded.series.id == "test-series"
    assert loaded.episode.script.scenes[0].shots[1].lines[0].text == "Is anyone there?"
    assert loaded.series.resolution.width == 180


def test_defaults_are_vertical_1080p_at_30fps(tmp_path):
    """Resolution and fps default to 1080x1920 at 30 fps."""
    series = {k: v for k, v in SMALL_SERIES.items() if k not in ("resolution", "fps")}
    loaded = load_episode(write_specs(tmp_path, series))
    assert (loaded.series.resolution.width, loaded.series.resolution.height, loaded.series.fps) == (1080, 1920, 30)


def test_unknown_field_names_file_line_and_field(tmp_path):
    """An unknown field is reported with its file, line and path, and a spelling hint."""
    ep = _episode(titel="oops")
    [problem] = _problems(tmp_path, episode=ep)
    assert problem.file.endswith("ep001.yaml")
    assert problem.field == "titel"
    assert "did you mean 'title'" in problem.message
    lines = (tmp_path / "ep001.yaml").read_text().splitlines()
    assert lines[problem.line - 1].startswith("titel:")


def test_speaker_not_in_series(tmp_path):
    """A line spoken by someone who is not a character names the exact line and the known characters."""
    script = copy.deepcopy(SMALL_SCRIPT)
    script["scenes"][1]["shots"][0]["lines"][1]["speaker"] = "carl"
    [problem] = _problems(tmp_path, episode=_episode(script=script))
    assert problem.field == "script.scenes[1].shots[0].lines[1].speaker"
    assert "'carl' is not a character" in problem.message and "ana, bo" in problem.message


def test_outline_speaker_not_in_series(tmp_path):
    """Outline lines are checked against the series too."""
    ep = {
        "series": "series.yaml",
        "number": 2,
        "title": "T",
        "outline": [{"beat": "b", "lines": [{"speaker": "ana", "text": "hi"}, {"speaker": "zed", "text": "yo"}]}],
    }
    [problem] = _problems(tmp_path, episode=ep)
    assert problem.field == "outline[0].lines[1].speaker"


def test_missing_series_file(tmp_path):
    """An episode naming a series file that does not exist says which file it looked for."""
    [problem] = _problems(tmp_path, episode=_episode(series="nope.yaml"))
    assert problem.field == "series" and "nope.yaml" in problem.message and "does not exist" in problem.message


def test_missing_episode_file(tmp_path):
    """A missing episode file is a spec error, not a crash."""
    with pytest.raises(SpecError, match="file not found"):
        load_episode(tmp_path / "absent.yaml")


@pytest.mark.parametrize("bad_id", ["..", "../escape", "a/b", "/etc/passwd", "Caps", "with space", ""])
def test_ids_that_could_leave_the_store_are_refused(tmp_path, bad_id):
    """Series ids are slugs: no '..', '/', absolute paths or spaces."""
    series = dict(SMALL_SERIES, id=bad_id)
    problems = _problems(tmp_path, series=series)
    assert [p.field for p in problems] == ["id"]
    assert "not a valid id" in problems[0].message or "at least" in problems[0].message


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("fps", 29, "fps 29 is not supported"),
        ("language", "xx", "language 'xx' is not supported"),
        ("resolution", {"width": 181, "height": 320}, "multiple of 2"),
    ],
)
def test_impossible_series_values(tmp_path, field, value, needle):
    """Impossible series values are refused with what is allowed."""
    problems = _problems(tmp_path, series=dict(SMALL_SERIES, **{field: value}))
    assert any(needle in p.message for p in problems), problems


def test_characters_must_sound_distinct(tmp_path):
    """Two characters with the same voice, pitch and rate are refused."""
    chars = copy.deepcopy(SMALL_SERIES["characters"])
    chars[1]["voice"] = dict(chars[0]["voice"])
    [problem] = _problems(tmp_path, series=dict(SMALL_SERIES, characters=chars))
    assert "same voice" in problem.message


def test_target_length_bounds(tmp_path):
    """Target length must be 30-180 seconds."""
    [problem] = _problems(tmp_path, episode=_episode(target_seconds=10))
    assert problem.field == "target_seconds"


def test_episode_needs_outline_or_script(tmp_path):
    """An episode with neither outline nor script is refused with the fix."""
    ep = {"series": "series.yaml", "number": 1, "title": "T"}
    [problem] = _problems(tmp_path, episode=ep)
    assert "outline" in problem.message and "script" in problem.message


def test_every_problem_is_reported_at_once(tmp_path):
    """validate_files reports all problems across files, not only the first."""
    ep = _episode(number=0, target_seconds=999, extra=1)
    path = write_specs(tmp_path, episode=ep)
    problems = validate_files([path, tmp_path / "missing.yaml"])
    fields = {p.field for p in problems}
    assert {"number", "target_seconds", "extra"} <= fields
    assert any("missing.yaml" in p.file for p in problems)


def test_not_yaml(tmp_path):
    """Broken YAML names the line."""
    path = tmp_path / "ep.yaml"
    path.write_text("series: a\n  number: [1\n")
    problems = validate_files([path])
    assert problems and "not valid YAML" in problems[0].message and problems[0].line


def test_yaml_dump_roundtrip_of_hostile_text(tmp_path):
    """Dialogue with quotes, colons, braces, newlines, emoji and RTL text loads exactly."""
    hostile = 'He said "no": 100% {\\an8} C:\\path\\n\nnext line 🎬 مرحبا שלום'
    script = copy.deepcopy(SMALL_SCRIPT)
    script["scenes"][0]["shots"][1]["lines"][0]["text"] = hostile
    loaded = load_episode(write_specs(tmp_path, episode=_episode(script=script)))
    assert loaded.episode.script.scenes[0].shots[1].lines[0].text == hostile
    assert yaml.safe_load((tmp_path / "ep001.yaml").read_text())["number"] == 1
