"""Batch specs: studios, priorities, deadlines, budgets and episode globs, validated before submission."""

from __future__ import annotations

from datetime import datetime, timezone

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
    assert p.field == "episodes[1]" and "matches no file" in p.message


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
