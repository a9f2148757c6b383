"""The journal: typed events in append-only segments that replay in order, on the local store and a
real S3 server; a line it cannot read comes back as ``Unreadable``, never as an exception."""

from __future__ import annotations

import pytest

from farm.core import events as ev
from farm.store import LocalStore
from farm.store.journal import StoreJournal

KEY = "a" * 64


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def objects(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    from farm.store.s3 import S3Store

    server = request.getfixturevalue("s3_server")
    return S3Store(
        server.endpoint,
        server.access_key,
        server.secret_key,
        "farm-journal",
        f"j-{tmp_path.name}",
        secure=server.secure,
        region=server.region,
    )


def test_append_then_replay_in_order(objects):
    """Events come back in the order appended, numbered from zero, across segments, as their models."""
    j = StoreJournal(objects)
    j.append([ev.BudgetExhausted(batch="b1", data=ev.Reason(reason="gpu_seconds: over"))], now=10.0)
    j.append(
        [
            ev.ActionDispatched(batch="b1", key=KEY, data=ev.Dispatched(label="clip s01", episode="s/ep001")),
            ev.ActionRetry(batch="b1", key=KEY, data=ev.RetryAt(not_before=12.5, attempt=1)),
        ],
        now=11.0,
    )
    events = list(StoreJournal(objects).replay())
    assert [(e.seq, e.type, e.at) for e in events] == [
        (0, "budget.exhausted", 10.0),
        (1, "action.dispatched", 11.0),
        (2, "action.retry", 11.0),
    ]
    assert isinstance(events[2], ev.ActionRetry) and events[2].data.not_before == 12.5
    assert events[0].data.reason == "gpu_seconds: over"


def test_a_new_writer_continues_after_replay(objects):
    """A restarted controller appends after what the last one wrote, never over it."""
    StoreJournal(objects).append([ev.BatchCancelled(batch="b1")], now=1.0)
    second = StoreJournal(objects)
    assert [e.seq for e in second.replay()] == [0]
    second.append([ev.BatchFinished(batch="b1")], now=2.0)
    third = StoreJournal(objects)
    third.append([ev.BatchFailed(batch="b1", data=ev.Reason(reason="r"))], now=3.0)
    assert [(e.seq, e.type) for e in StoreJournal(objects).replay()] == [
        (0, "batch.cancelled"),
        (1, "batch.finished"),
        (2, "batch.failed"),
    ]


def test_only_the_farms_events_are_written(objects):
    """Anything but a journaled event model is refused, and nothing is written."""
    with pytest.raises(TypeError):
        StoreJournal(objects).append([{"type": "batch.cancelled", "batch": "b1"}], now=1.0)
    with pytest.raises(TypeError):
        StoreJournal(objects).append([ev.Unreadable(data=ev.Reason(reason="x"))], now=1.0)
    assert list(StoreJournal(objects).replay()) == []


def test_an_unreadable_line_replays_as_unreadable_with_its_batch(tmp_path):
    """A line of another schema or a torn write is not an exception: it names its batch and why."""
    objects = LocalStore(tmp_path)
    StoreJournal(objects).append([ev.BatchCancelled(batch="b1")], now=1.0)
    objects.put_bytes(
        "_farm/journal/000000000001.jsonl",
        b'{"v":2,"seq":1,"at":2.0,"type":"made.up","batch":"b2","key":null,"data":{}}\n{"seq": 2, "ty\n',
    )
    StoreJournal(objects).append([ev.BatchFinished(batch="b1")], now=3.0)
    events = list(StoreJournal(objects).replay())
    assert [e.type for e in events] == ["batch.cancelled", "journal.unreadable", "journal.unreadable", "batch.finished"]
    assert (
        events[1].batch == "b2"
        and events[1].seq == 1
        and "journal event 1 (made.up) is unreadable" in events[1].data.reason
    )
    assert events[2].batch is None and events[3].seq == 2  # numbered after the last readable one


def test_a_journal_of_the_first_schema_still_replays(tmp_path):
    """Version 1 lines (the first journals) read as the same models."""
    objects = LocalStore(tmp_path)
    objects.put_bytes(
        "_farm/journal/000000000000.jsonl",
        b'{"v":1,"seq":0,"at":5.0,"type":"action.failed","batch":"b1","key":"'
        + KEY.encode()
        + b'","data":{"error":"boom","retryable":true,"worker":"n1","attempt":1}}\n',
    )
    (event,) = StoreJournal(objects).replay()
    assert isinstance(event, ev.ActionFailed) and event.data.worker == "n1" and event.v == 1


def test_journal_lives_outside_every_studio(tmp_path):
    """The journal's tree starts with '_', which no studio slug can."""
    objects = LocalStore(tmp_path)
    StoreJournal(objects).append([ev.BatchCancelled(batch="b")], now=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["_farm"]
