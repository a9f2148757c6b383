"""The journal: typed events in append-only segments that replay in order, on the local store and a
real S3 server; a line it cannot read comes back as ``Unreadable``, never as an exception."""

from __future__ import annotations

import pytest

from farm.core import events as ev
from farm.store import LocalStore
from farm.store.journal import Compaction, StoreJournal

KEY = "a" * 64


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
    j.flush()  # the two groups go out as one segment
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
    second.flush()
    third = StoreJournal(objects)
    third.append([ev.BatchFailed(batch="b1", data=ev.Reason(reason="r"))], now=3.0)
    third.flush()
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
    objects.put_bytes(  # the next segment of the same writer (epoch 1), torn
        "_farm/journal/log/000000/000000000001-00000001.jsonl",
        b'{"v":2,"seq":1,"at":2.0,"type":"made.up","batch":"b2","key":null,"data":{}}\n{"seq": 2, "ty\n',
    )
    StoreJournal(objects, writer=True).append([ev.BatchCancelled(batch="b1")], now=3.0)
    events = list(StoreJournal(objects).replay())
    assert [e.type for e in events] == [
        "batch.cancelled",
        "journal.unreadable",
        "journal.unreadable",
        "batch.cancelled",
    ]
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


# -- group commit, compaction, events per batch --------------------------------------------------


def test_a_submission_is_on_disk_when_append_returns_with_what_waited_before_it(tmp_path):
    """Groups that are not durable wait; a durable one goes out at once, with them, as one segment."""
    objects = LocalStore(tmp_path)
    j = StoreJournal(objects, writer=True)
    list(j.replay())
    j.append([ev.ActionRetry(batch="b0", key=KEY, data=ev.RetryAt(not_before=2.0))], now=1.0)
    j.append([ev.BudgetExhausted(batch="b0", data=ev.Reason(reason="r"))], now=1.5)
    assert list(StoreJournal(objects).replay()) == []  # waiting, re-derived on replay if lost
    j.append([ev.BatchCancelled(batch="b0")], now=2.0)
    assert [e.seq for e in StoreJournal(objects).replay()] == [0, 1, 2]
    assert len(list(objects.list("_farm/journal/log/"))) == 1


def test_a_step_is_written_once_its_oldest_group_has_waited_group_s(tmp_path):
    """At the end of an engine step the waiting groups are written once the oldest is ``group_s`` old."""
    objects = LocalStore(tmp_path)
    now = [0.0]
    j = StoreJournal(objects, writer=True, group_s=0.5, clock=lambda: now[0])
    list(j.replay())
    j.append([ev.BudgetExhausted(batch="b0", data=ev.Reason(reason="r"))], now=0.0)
    j.step_ended()
    now[0] = 0.4
    j.append([ev.BudgetExhausted(batch="b1", data=ev.Reason(reason="r"))], now=0.4)
    j.step_ended()
    assert list(StoreJournal(objects).replay()) == []
    now[0] = 0.5
    j.step_ended()
    assert [e.batch for e in StoreJournal(objects).replay()] == ["b0", "b1"]


def _night():
    """Three batches: the last (still running when the night stops) repeats the first's four episodes,
    whose work it reuses, and adds two of its own."""
    from farm.simulate.workload import synthetic_batch

    first = synthetic_batch(4, 0, studios=("studio-0",), batch="night-000")
    second = synthetic_batch(4, 1, studios=("studio-1",), batch="night-001", submitted=600.0, order=1)
    return first + second + synthetic_batch(6, 0, studios=("studio-0",), batch="night-002", submitted=1200.0, order=2)


@pytest.fixture
def compacted(objects, tmp_path):
    """The night played by the real engine on simulated GPUs, a restart, the full replay before
    compaction, and the journal after compacting the two finished batches."""
    from farm.bench.restart import _copy, play, restart

    workload = _night()
    local = LocalStore(tmp_path / "night")
    _, _, clock = play(workload, local, group_s=5.0)  # fewer segments to copy to S3
    if objects.describe() != local.describe():
        _copy(local, objects)
    now = clock.now() + 60.0
    _, _, first = restart(workload, objects, now)
    before = list(StoreJournal(objects).replay())
    plan = first.journal.plan_compaction(first.controller, now, older_than=0.0)
    assert plan is not None and [s.batch for s, _ in plan.archives] == ["night-000", "night-001"]
    first.journal.compact(plan)
    return workload, now, first, before


def test_a_restart_after_compaction_replays_only_what_is_live_and_lists_every_batch(objects, compacted):
    """Finished batches come back as their summaries, with the same status; the live one whole."""
    from farm.bench.restart import _comparable, restart

    workload, now, first, before = compacted
    _, count, second = restart(workload, objects, now)
    assert count < len(before) / 2
    assert sorted(second.controller.batches) == ["night-000", "night-001", "night-002"]
    assert sorted(second.controller.archives) == ["night-000", "night-001"]
    for b in first.controller.batches:
        assert _comparable(second.controller.batch_status(b, now)) == _comparable(first.controller.batch_status(b, now))
    live = second.controller.batch_status("night-002", now)
    assert live["status"] == "running" and live["actions"]["script"]["cached"] == 4  # reused, as before
    assert second.controller.errors == []  # nothing in the snapshot failed to apply


def test_events_of_a_batch_are_the_same_before_and_after_compaction(objects, compacted):
    """``events_of`` reads one batch's events (its archive and the live part), exactly as a full replay
    filtered to the batch gave them before compaction."""
    _, _, _, before = compacted
    journal = StoreJournal(objects)
    for b in ("night-000", "night-002"):
        assert [(e.seq, e.type) for e in journal.events_of(b)] == [(e.seq, e.type) for e in before if e.batch == b]
    assert journal.events_of("night-000") and journal.events_of("nothing") == []


def test_a_fenced_controller_cannot_compact(objects, compacted):
    """Compaction writes like an append: once a newer controller opened the journal, it raises Fenced."""
    from farm.bench.restart import restart
    from farm.errors import Fenced

    workload, now, first, _ = compacted
    assert first.journal.plan_compaction(first.controller, now, older_than=0.0) is None  # archived already
    restart(workload, objects, now)
    with pytest.raises(Fenced):
        first.journal.compact(Compaction(upto=1, archives=(), needs={}))


def test_an_archived_batch_keeps_its_idempotency_key(tmp_path):
    """The summary of a compacted batch carries the key it was submitted with, so that the same
    submission is still answered with it after a restart."""
    from farm.bench.restart import _controller
    from farm.simulate.run import _submission
    from farm.simulate.workload import synthetic_batch

    workload = synthetic_batch(1, 0, batch="b-1")
    (batch,) = workload.batches.values()
    sub = _submission(batch, batch.episodes, False, workload).model_copy(update={"idempotency_key": "night-7"})
    objects = LocalStore(tmp_path)
    journal, controller = StoreJournal(objects, writer=True), _controller(workload)
    list(journal.replay())
    for event in journal.append([ev.BatchSubmitted(batch="b-1", data=sub)], now=1.0):
        controller.apply(event)
    for event in journal.append([ev.BatchCancelled(batch="b-1")], now=2.0):
        controller.apply(event)
    plan = journal.plan_compaction(controller, now=10.0, older_than=5.0)
    assert plan is not None
    journal.compact(plan)
    (summary,) = StoreJournal(objects).replay()
    assert summary.type == "batch.archived" and summary.data.idempotency_key == "night-7"
    assert summary.data.status["status"] == "cancelled" and summary.data.finished_at == 2.0
