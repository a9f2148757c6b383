"""The journal: append-only segments that replay in order, on the local store and a real S3 server."""

from __future__ import annotations

import pytest

from farm.store.journal import Journal
from farm.store import LocalStore


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def objects(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    from farm.store.s3 import S3Store

    server = request.getfixturevalue("s3_server")
    return S3Store(server.endpoint, server.access_key, server.secret_key, "farm-journal", f"j-{tmp_path.name}",
                   secure=server.secure, region=server.region)


def test_append_then_replay_in_order(objects):
    """Events come back in the order appended, numbered from zero, across segments."""
    j = Journal(objects)
    j.append([{"type": "batch.submitted", "batch": "b1", "data": {"n": 1}}], now=10.0)
    j.append([{"type": "action.dispatched", "batch": "b1", "key": "k" * 64},
              {"type": "action.completed", "batch": "b1", "key": "k" * 64}], now=11.0)
    events = list(Journal(objects).replay())
    assert [(e.seq, e.type, e.at) for e in events] == [
        (0, "batch.submitted", 10.0), (1, "action.dispatched", 11.0), (2, "action.completed", 11.0)]
    assert events[0].data == {"n": 1}


def test_a_new_writer_continues_after_replay(objects):
    """A restarted controller appends after what the last one wrote, never over it."""
    Journal(objects).append([{"type": "batch.submitted", "batch": "b1"}], now=1.0)
    second = Journal(objects)
    assert [e.seq for e in second.replay()] == [0]
    second.append([{"type": "batch.cancelled", "batch": "b1"}], now=2.0)
    third = Journal(objects)
    third.append([{"type": "batch.finished", "batch": "b1"}], now=3.0)
    assert [(e.seq, e.type) for e in Journal(objects).replay()] == [
        (0, "batch.submitted"), (1, "batch.cancelled"), (2, "batch.finished")]


def test_unknown_event_type_is_refused(objects):
    """Only the farm's event types are written."""
    with pytest.raises(ValueError):
        Journal(objects).append([{"type": "made.up"}], now=1.0)
    assert list(Journal(objects).replay()) == []


def test_journal_lives_outside_every_studio(tmp_path):
    """The journal's tree starts with '_', which no studio slug can."""
    objects = LocalStore(tmp_path)
    Journal(objects).append([{"type": "batch.submitted", "batch": "b"}], now=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["_farm"]
