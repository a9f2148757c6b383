"""Batch specs: studios, priorities, deadlines, budgets and episode globs, validated before submission."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import yaml

from farm.errors import SpecError
from farm.loader import load_batch
from tests.conftest import SMALL_SCRIPT, write_specs

NOW = datetime(2026, 11, 20, 22, 0, tzinfo=timezone.utc)


def _batch(tmp_path, **fields):
    write_specs(tmp_path / "eps")
    ep2 = {"series": "series.yaml", "number": 2, "title": "Two", "script": SMALL_SCRIPT}
    (tmp_path / "eps" / "ep002.yaml").write_text(yaml.safe_dump(ep2))
    body = {
        "studio": "acme",
        "priority": "high",
        "deadline": "2026-11-21T14:00:00+08:00",
        "budget": {"tokens": 1000, "gpu_seconds": 3600, "money": 12.5},
        "episodes": ["eps/ep*.yaml"],
    } | fields
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def _problems(path):
    with pytest.raises(SpecError) as exc:
        load_batch(path, NOW)
    return exc.value.problems


def test_batch_loads_every_matched_episode(tmp_path):
    """Globs are resolved relative to the batch file and every episode is loaded and validated."""
    loaded = load_batch(_batch(tmp_path), NOW)
    assert [e.episode.number for e in loaded.episodes] == [1, 2]
    assert loaded.spec.deadline.utcoffset().total_seconds() == 8 * 3600
    assert loaded.spec.budget.gpu_seconds == 3600


def test_unknown_fields(tmp_path):
    """An unknown top-level field is refused with its name."""
    [p] = _problems(_batch(tmp_path, tenant="acme"))
    assert p.field == "tenant" and "unknown field" in p.message


def test_deadline_in_the_past(tmp_path):
    """A deadline already past is refused, showing both times."""
    [p] = _problems(_batch(tmp_path, deadline="2026-11-20T21:00:00+00:00"))
    assert p.field == "deadline" and "already past" in p.message


def test_deadline_needs_a_zone(tmp_path):
    """A deadline without a time zone is refused."""
    [p] = _problems(_batch(tmp_path, deadline="2026-11-21T06:00:00"))
    assert p.field == "deadline"


def test_negative_budget(tmp_path):
    """A negative budget cap is refused at its field path."""
    [p] = _problems(_batch(tmp_path, budget={"gpu_seconds": -5}))
    assert p.field == "budget.gpu_seconds"


def test_empty_glob(tmp_path):
    """A glob that matches nothing is named, with the folder it looked in."""
    [p] = _problems(_batch(tmp_path, episodes=["eps/ep*.yaml", "nothing/*.yaml"]))
    assert p.field == "episodes[1]" and "matches no episode file" in p.message


def test_a_glob_takes_episodes_not_the_series_beside_them(tmp_path):
    """``eps/*.yaml`` also matches eps/series.yaml: a glob skips series files; a series file named on
    its own is still refused (validated as the episode it is not)."""
    loaded = load_batch(_batch(tmp_path, episodes=["eps/*.yaml"]), NOW)
    assert [e.episode.number for e in loaded.episodes] == [1, 2]
    problems = _problems(_batch(tmp_path, episodes=["eps/series.yaml"]))
    assert problems and all(p.file.endswith("series.yaml") for p in problems)


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("+8h", datetime(2026, 11, 21, 6, 0, tzinfo=timezone.utc)),
        ("+1d2h30m", datetime(2026, 11, 22, 0, 30, tzinfo=timezone.utc)),
        ("07:00 Asia/Shanghai", datetime(2026, 11, 21, 7, 0, tzinfo=ZoneInfo("Asia/Shanghai"))),  # 06:00 there now
        ("23:00 UTC", datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc)),  # today still
        ("21:00 UTC", datetime(2026, 11, 21, 21, 0, tzinfo=timezone.utc)),  # past today: tomorrow's
        ("23:00 tomorrow UTC", datetime(2026, 11, 21, 23, 0, tzinfo=timezone.utc)),
        ("07:00 today +08:00", datetime(2026, 11, 21, 7, 0, tzinfo=timezone(timedelta(hours=8)))),
    ],
)
def test_relative_deadlines_mean_a_time_after_submission(tmp_path, written, meant):
    """A scheduled batch file cannot carry a fixed date: "+8h" and "06:00 <zone>" are resolved when it is
    loaded (NOW is 22:00 UTC, 06:00 of the next day in Shanghai)."""
    loaded = load_batch(_batch(tmp_path, deadline=written), NOW)
    assert loaded.spec.deadline == meant


@pytest.mark.parametrize("written", ["tomorrow", "+8 hours", "06:00 Mars/Olympus", "25:00 UTC", "06:00"])
def test_a_deadline_that_is_no_form_says_the_forms(tmp_path, written):
    path = _batch(tmp_path, deadline=written)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("deadline:"))
    [p] = _problems(path)
    assert p.field == "deadline" and p.line == line and '"+8h"' in p.message and "06:00 Asia/Shanghai" in p.message


def test_bad_episode_inside_a_batch(tmp_path):
    """A broken episode file named by the batch is reported in that file."""
    path = _batch(tmp_path)
    (tmp_path / "eps" / "ep003.yaml").write_text("series: series.yaml\nnumber: 3\ntitle: x\n")
    [p] = _problems(path)
    assert p.file.endswith("ep003.yaml") and "outline" in p.message


def test_same_episode_twice(tmp_path):
    """Two files claiming the same episode of the same series are refused."""
    path = _batch(tmp_path)
    ep = {"series": "series.yaml", "number": 2, "title": "Copy", "script": SMALL_SCRIPT}
    (tmp_path / "eps" / "ep002-copy.yaml").write_text(yaml.safe_dump(ep))
    problems = _problems(path)
    assert any("may appear once" in p.message for p in problems)


def test_priority_class_and_studio_slug(tmp_path):
    """Priorities are named classes and the studio is a slug."""
    problems = _problems(_batch(tmp_path, priority="asap", studio="../other"))
    assert {p.field for p in problems} == {"priority", "studio"}
    assert any("'urgent'" in p.message for p in problems)
