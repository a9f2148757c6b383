"""Hostile specs: every bad one is a located problem (file, line, field, fix), never a crash, a hang,
a silent loss or something the embedded stages fail on later."""

from __future__ import annotations

import copy
import os
import threading
from datetime import datetime, timezone

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.core.spec import MAX_CHARACTERS, MAX_LINES, MAX_SHOTS, SPEC_FIELDS
from farm.errors import SpecError
from farm.loader import load_batch, load_episode, validate_files
from farm.specfile import MAX_DEPTH, MAX_NODES
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, write_specs

NOW = datetime(2026, 11, 20, 22, 0, tzinfo=timezone.utc)
HEAD = "series: series.yaml\nnumber: 1\ntitle: T\n"
OUTLINE = "outline:\n  - beat: b\n    lines:\n      - {speaker: ana, text: hi}\n"


def _episode(**changes):
    ep = {"series": "series.yaml", "number": 1, "title": "T", "target_seconds": 30, "script": SMALL_SCRIPT}
    ep.update(changes)
    return ep


def _problems(tmp_path, series=None, episode=None):
    with pytest.raises(SpecError) as exc:
        load_episode(write_specs(tmp_path, series, episode))
    return exc.value.problems


def _raw(tmp_path, text, name="ep001.yaml", series=True):
    """An episode (or any file) written as raw text, with the small series beside it."""
    if series:
        write_specs(tmp_path)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _line(path, start):
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(start))


# 1. crashes become located problems, and the other files are still checked


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (HEAD + OUTLINE + "seed: " + "[" * 600 + "]" * 600 + "\n", f"nests deeper than {MAX_DEPTH}"),
        (HEAD + OUTLINE + "seed: !!float\n", "cannot be read as float"),
        (HEAD + OUTLINE + "seed: !!int ''\n", "cannot be read as int"),
        (HEAD + OUTLINE + "seed: !!timestamp nonsense\n", "cannot be read as timestamp"),
        (HEAD + OUTLINE + "seed: !!bool maybe\n", "cannot be read as bool"),
        (HEAD + OUTLINE + "seed: " + "9" * 5000 + "\n", "5000 digits"),
    ],
    ids=["deep", "empty-float", "empty-int", "bad-timestamp", "bad-bool", "huge-int"],
)
def test_yaml_that_crashed_is_a_located_problem_and_other_files_are_checked(tmp_path, text, needle):
    bad = _raw(tmp_path, text)
    other = tmp_path / "other.yaml"
    other.write_text(HEAD + OUTLINE + "titel: x\n")
    problems = validate_files([bad, other])
    first = [p for p in problems if p.file == str(bad)]
    assert len(first) == 1 and needle in first[0].message and first[0].line == _line(bad, "seed:"), problems
    assert any(p.file == str(other) and p.field == "titel" for p in problems)
    assert len(str(first[0])) < 400


def test_nul_in_series_is_refused(tmp_path):
    path = _raw(tmp_path, 'series: "series\\0.yaml"\nnumber: 1\ntitle: T\n' + OUTLINE)
    [problem] = validate_files([path])
    assert problem.field == "series" and "control character" in problem.message and problem.line == 1


# 2. nothing is lost silently


def test_duplicate_keys_name_both_lines(tmp_path):
    path = _raw(tmp_path, HEAD + "title: Again\n" + OUTLINE)
    [problem] = validate_files([path])
    assert "'title' is given twice" in problem.message and "lines 3 and 4" in problem.message and problem.line == 4


def test_duplicate_keys_in_a_flow_mapping(tmp_path):
    path = _raw(tmp_path, HEAD + "outline:\n  - beat: b\n    lines:\n      - {speaker: ana, text: hi, text: yo}\n")
    [problem] = validate_files([path])
    assert "'text' is given twice" in problem.message and "lines 7 and 7" in problem.message


def test_unquoted_colour_is_refused_with_the_quoting(tmp_path):
    write_specs(tmp_path)
    text = (tmp_path / "series.yaml").read_text().replace("outfit: '#c03030'", "outfit: #c03030")
    assert "outfit: #c03030" in text
    (tmp_path / "series.yaml").write_text(text)
    [problem] = validate_files([tmp_path / "series.yaml"])
    assert problem.field == "characters[0].look.outfit"
    assert 'quote it: outfit: "#111111"' in problem.message and problem.line == _line(
        tmp_path / "series.yaml", "    outfit"
    )


def test_unquoted_palette_colour_is_refused(tmp_path):
    series = copy.deepcopy(SMALL_SERIES)
    series["style"]["palette"] = ["#102030", None]
    [problem] = _problems(tmp_path, series=series)
    assert problem.field == "style.palette" and "quote each one" in problem.message


def test_outline_and_script_together_is_refused(tmp_path):
    ep = _episode(outline=[{"beat": "b", "lines": [{"speaker": "ana", "text": "hi"}]}])
    [problem] = _problems(tmp_path, episode=ep)
    assert problem.field == "outline" and "together with a hand-written script" in problem.message and problem.line
    assert "remove outline:" in problem.message and "remove script:" in problem.message


@pytest.mark.parametrize("where", ["outline", "script"])
def test_whitespace_only_line_is_refused(tmp_path, where):
    if where == "outline":
        ep = _episode(script=None, outline=[{"beat": "b", "lines": [{"speaker": "ana", "text": " \t "}]}])
        field = "outline[0].lines[0].text"
    else:
        script = copy.deepcopy(SMALL_SCRIPT)
        script["scenes"][1]["shots"][0]["lines"][1]["text"] = "   "
        ep, field = _episode(script=script), "script.scenes[1].shots[0].lines[1].text"
    [problem] = _problems(tmp_path, episode=ep)
    assert problem.field == field and "only whitespace" in problem.message and problem.line


@pytest.mark.parametrize(
    ("series", "episode", "field"),
    [
        (None, _episode(number=True), "number"),
        (None, _episode(seed=False), "seed"),
        (None, _episode(target_seconds=True), "target_seconds"),
        (dict(SMALL_SERIES, fps=True), None, "fps"),
        (dict(SMALL_SERIES, resolution={"width": True, "height": 320}), None, "resolution.width"),
    ],
)
def test_yes_no_values_are_not_numbers(tmp_path, series, episode, field):
    problems = _problems(tmp_path, series=series, episode=episode)
    assert any(p.field == field and "yes/no value" in p.message for p in problems), problems


def test_yes_no_shot_duration_is_not_a_number(tmp_path):
    script = copy.deepcopy(SMALL_SCRIPT)
    script["scenes"][0]["shots"][0]["duration"] = True
    [problem] = _problems(tmp_path, episode=_episode(script=script))
    assert problem.field == "script" and "scenes[0].shots[0].duration is true" in problem.message


# 3. bounded input


def _finishes(fn, seconds=20.0):
    """``fn()``, which must return (or raise) within ``seconds``: the old loader hung on these."""
    out: list = []

    def run():
        try:
            out.append((fn(), None))
        except Exception as exc:
            out.append((None, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"did not finish within {seconds} s"
    if out[0][1] is not None:
        raise out[0][1]
    return out[0][0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_series_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")
    path = _raw(tmp_path, "series: fifo.yaml\nnumber: 1\ntitle: T\n" + OUTLINE, series=False)
    problems = _finishes(lambda: validate_files([path]))
    assert any("not a regular file" in p.message for p in problems), problems


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_is_refused():
    [problem] = _finishes(lambda: validate_files(["/dev/zero"]))
    assert "not a regular file" in problem.message


def test_a_big_file_is_refused_naming_the_setting(tmp_path, monkeypatch):
    path = _raw(tmp_path, HEAD + OUTLINE + ("# padding\n" * 120_000))
    [problem] = validate_files([path])
    assert "over the 1048576" in problem.message and "FARM_SPEC_MAX_BYTES" in problem.message
    monkeypatch.setenv("FARM_SPEC_MAX_BYTES", str(4 << 20))
    assert validate_files([path]) == []


def test_alias_bomb_is_refused(tmp_path):
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        text += f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]\n"
    path = _raw(tmp_path, HEAD + OUTLINE + "x-bomb:\n  " + text.replace("\n", "\n  "))
    [problem] = _finishes(lambda: validate_files([path]), 10)
    assert f"more than {MAX_NODES} values" in problem.message and problem.line


def test_small_aliases_still_work(tmp_path):
    write_specs(tmp_path)
    text = HEAD + "outline:\n  - beat: b\n    lines: &l\n      - {speaker: ana, text: hi}\n  - beat: c\n    lines: *l\n"
    assert validate_files([_raw(tmp_path, text)]) == []


@pytest.mark.parametrize("written", ["/etc/passwd", "../series.yaml", "/dev/zero", "sub/../../x.yaml"])
def test_series_outside_the_spec_folder_is_refused(tmp_path, written):
    (tmp_path / "sub").mkdir()
    path = _raw(tmp_path / "sub", f"series: {written}\nnumber: 1\ntitle: T\n" + OUTLINE)
    [problem] = validate_files([path])
    assert problem.field == "series" and "outside this spec's folder" in problem.message
    assert "FARM_SPEC_ROOT" in problem.message and problem.line == 1


def test_series_outside_is_allowed_under_farm_spec_root(tmp_path, monkeypatch):
    write_specs(tmp_path)
    (tmp_path / "sub").mkdir()
    path = _raw(tmp_path / "sub", "series: ../series.yaml\nnumber: 1\ntitle: T\n" + OUTLINE, series=False)
    monkeypatch.setenv("FARM_SPEC_ROOT", str(tmp_path))
    assert validate_files([path]) == []


@pytest.mark.parametrize("pattern", ["/**/*.yaml", "../*.yaml", "/etc/passwd"])
def test_batch_patterns_stay_in_the_batch_folder(tmp_path, pattern):
    (tmp_path / "b").mkdir()
    path = tmp_path / "b" / "batch.yaml"
    path.write_text(yaml.safe_dump({"studio": "acme", "episodes": [pattern]}))
    with pytest.raises(SpecError) as exc:
        _finishes(lambda: load_batch(path, NOW), 10)
    [problem] = exc.value.problems
    assert problem.field == "episodes[0]" and "outside this spec's folder" in problem.message and problem.line


def test_a_script_of_ten_thousand_shots_is_refused(tmp_path):
    shots = [{"id": f"x{i}", "description": "d", "duration": 30} for i in range(10_000)]
    script = dict(SMALL_SCRIPT, scenes=[{"id": "s", "location": "l", "shots": shots}])
    [problem] = _problems(tmp_path, episode=_episode(script=script))
    assert problem.field == "script" and f"has 10000 shots; an episode may have at most {MAX_SHOTS}" in problem.message


def test_a_script_longer_than_an_episode_is_refused(tmp_path):
    shots = [{"id": f"x{i}", "description": "d", "duration": 30} for i in range(7)]
    script = dict(SMALL_SCRIPT, scenes=[{"id": "s", "location": "l", "shots": shots}])
    [problem] = _problems(tmp_path, episode=_episode(script=script))
    assert problem.field == "script" and "last 210.0 s" in problem.message and "at most 180 s" in problem.message


def test_too_many_lines_and_too_much_speech(tmp_path):
    lines = [{"speaker": "ana", "text": "hi"}] * (MAX_LINES + 1)
    problems = _problems(tmp_path, episode=_episode(script=None, outline=[{"beat": "b", "lines": lines}]))
    assert any(p.field == "outline[0].lines" and f"at most {MAX_LINES} items" in p.message for p in problems)
    talk = [{"speaker": "ana", "text": " ".join(["word"] * 100)}] * 5  # about 5 x 39 s
    [problem] = _problems(tmp_path, episode=_episode(script=None, outline=[{"beat": "b", "lines": talk}]))
    assert problem.field == "outline" and "take about 194 s to say" in problem.message


def test_too_many_characters(tmp_path):
    chars = [
        {
            "id": f"c{i}",
            "name": "C",
            "look": {"description": "d"},
            "voice": {"voice": "en-us", "pitch": i, "rate": 175},
        }
        for i in range(MAX_CHARACTERS + 1)
    ]
    problems = _problems(tmp_path, series=dict(SMALL_SERIES, characters=chars))
    assert any(p.field == "characters" and f"at most {MAX_CHARACTERS} items" in p.message for p in problems)


# 4. what validates, the embedded script writer can write


def _outline_params(loaded):
    return {"series": loaded.series.model_dump(mode="json"), "episode": loaded.episode.model_dump(mode="json")}


def test_an_outline_whose_shot_description_would_not_fit_is_refused(tmp_path):
    from workers.script.outline import write_script

    beat = {"beat": "b" * 1990, "location": "l" * 1990, "lines": [{"speaker": "ana", "text": "hi"}]}
    [problem] = _problems(tmp_path, episode=_episode(script=None, outline=[beat]))
    assert problem.field == "outline[0].beat" and "over the 2000" in problem.message and problem.line
    # the largest that fits is accepted, and the script writer writes it
    style = len(f"unspecified, day.  ({SMALL_SERIES['style']['description']})")
    beat = {"beat": "b" * (2000 - style), "lines": [{"speaker": "ana", "text": "hi"}]}
    loaded = load_episode(write_specs(tmp_path, episode=_episode(script=None, outline=[beat])))
    assert write_script(_outline_params(loaded)).scenes[0].shots[0].description.startswith("unspecified")


# 5. whatever the file holds, validate_files answers with problems


_keys = st.sampled_from([*SPEC_FIELDS, "<<", "x"])
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True),
    _text,
    st.sampled_from(["series.yaml", "ep*.yaml", "/etc/passwd", "..", "#111111", "en-us+f3", "acme", "ana"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)
_raw_yaml = st.sampled_from(
    ["!!float", "!!int ''", "!!timestamp x", "*nope", "&a [*a]", "{a: 1, a: 2}", "#c", "'", "\x00", "[" * 60, "- -"]
)


@st.composite
def _documents(draw):
    doc = draw(st.dictionaries(_keys, _values, max_size=8))
    if draw(st.booleans()):
        doc.setdefault("series", "series.yaml")
        doc.setdefault("number", 1)
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False)
    if draw(st.booleans()):  # a splice of raw, often broken, YAML somewhere
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(list(SPEC_FIELDS))) + ": " + draw(_raw_yaml))
        text = "\n".join(lines)
    return text


@settings(
    max_examples=2000 if os.environ.get("CI") else 200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=_documents(), kind=st.sampled_from(["episode", "series", "batch"]))
def test_validate_files_never_raises(tmp_path, doc, kind):
    if not (tmp_path / "series.yaml").exists():
        write_specs(tmp_path)
    path = tmp_path / f"fuzz-{kind}.yaml"
    if kind == "batch":
        doc = "studio: acme\nepisodes: [fuzz-episode.yaml]\n" + doc
        (tmp_path / "fuzz-episode.yaml").write_text(doc.split("\n", 2)[-1], encoding="utf-8")
    path.write_text(doc, encoding="utf-8")
    problems = validate_files([path, tmp_path / "ep001.yaml"], now=NOW)
    assert isinstance(problems, list)
    for p in problems:
        assert p.file and isinstance(p.message, str) and p.message
