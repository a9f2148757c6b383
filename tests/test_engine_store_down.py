"""The engine when its store fails (issue 15, item 1), on the in-process ports: a journal whose
writes raise the OSError a full or vanished disk gives, and a runtime that loses an action. Nothing
taken from the runtime is lost, nothing is applied twice, and an action nothing runs is settled."""

from __future__ import annotations

import pytest

from farm.core.engine import StoreDown
from farm.core.ports import Finished, MemoryJournal
from tests.test_controller import CAPACITY, Harness, manifest


class FlakyJournal(MemoryJournal):
    """A memory journal that refuses every write while ``down`` (ENOSPC, as a full disk does)."""

    down = False

    def append(self, proposals, now):
        if self.down and proposals:
            raise OSError(28, "No space left on device")
        return super().append(proposals, now)


def _harness() -> Harness:
    h = Harness()
    h.journal = h.engine.journal = FlakyJournal()
    return h


def test_results_that_come_back_while_the_journal_is_down_are_held_then_journaled_once():
    h = _harness()
    h.submit()
    h.engine.decide()
    running = [k for k, s in h.c.actions.items() if s.status == "running"]
    assert running
    back = [Finished(h.c.actions[k].action, manifest(h.c.actions[k].action), None) for k in running]
    h.journal.down = True
    with pytest.raises(StoreDown):
        h.engine.advance(back)
    assert len(h.engine.held) == len(running)  # kept, not applied
    assert all(h.c.actions[k].status == "running" for k in running)
    with pytest.raises(StoreDown):
        h.engine.advance([])  # still down: still kept, nothing dispatched meanwhile
    dispatched = list(h.dispatched)
    h.journal.down = False
    h.engine.advance([])
    assert not h.engine.held and not h.engine.backlog
    completed = [e.key for e in h.log if e.type == "action.completed"]
    assert sorted(completed) == sorted(running)  # each once
    assert len(h.dispatched) > len(dispatched)  # and the batch goes on


def test_commands_a_failure_stopped_are_carried_out_after_it():
    """The journal takes a result, then fails before the dispatches that result allows are journaled:
    they wait in the backlog and happen on the next step, once."""
    h = _harness()
    h.submit()
    h.engine.decide()
    first = [k for k, s in h.c.actions.items() if s.status == "running"]
    h.engine.advance([Finished(h.c.actions[k].action, manifest(h.c.actions[k].action), None) for k in first])
    before = len(h.dispatched)
    running = [k for k, s in h.c.actions.items() if s.status == "running"]
    # the next results are journaled, then the journal fails for what follows (lookups, dispatches)
    writes = {"n": 0}
    real = MemoryJournal.append

    def once_then_down(self, proposals, now):
        writes["n"] += 1
        if writes["n"] > 1 and proposals:
            raise OSError(30, "Read-only file system")
        return real(self, proposals, now)

    h.journal.append = once_then_down.__get__(h.journal)
    with pytest.raises(StoreDown):
        h.engine.advance([Finished(h.c.actions[k].action, manifest(h.c.actions[k].action), None) for k in running])
    assert not h.engine.held  # those were journaled
    h.journal.append = real.__get__(h.journal)
    h.run()
    status = h.c.batch_status("b1", h.now)
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 1
    assert len(h.dispatched) == len(set(h.dispatched)) > before


def test_an_action_nothing_runs_is_settled_by_the_reconciler():
    """The runtime refused one start (its error went to the loop's log): the controller holds the action
    running with nothing behind it. ``reconcile`` makes it ready again, not counted as an attempt."""
    h = _harness()
    h.submit()
    lost = {}

    def refuse_first(action, inputs, profile, batch):
        if not lost:
            lost[action.key] = True
            raise RuntimeError("the cluster refused the task")
        h.runtime.submitted.append(action.key)

    h.runtime.submit = refuse_first
    with pytest.raises(RuntimeError):
        h.engine.commit(h.c.decide(h.now, CAPACITY))
    (key,) = lost
    assert h.c.actions[key].status == "running" and key not in h.engine.submitted
    assert h.engine.reconcile() >= 1
    assert h.c.actions[key].status != "running" and h.c.actions[key].attempts == 0
    h.run()
    assert h.c.batch_status("b1", h.now)["episodes"]["delivered"] == 1
    assert key in h.dispatched


def test_a_result_whose_outputs_cannot_be_read_while_the_store_is_down_is_held_not_failed():
    """A finished script (paid for) whose script cannot be read back now: held, not a failed attempt."""
    from farm.errors import StoreError

    h = _harness()
    h.submit(outline=True)
    h.engine.decide()
    (key,) = [k for k, s in h.c.actions.items() if s.status == "running"]
    action = h.c.actions[key].action
    real = h.artifacts.facts
    down = StoreError("S3 get acme/blobs/...: connection refused")
    down.retryable = True

    def unreadable(action, manifest):
        raise down

    h.artifacts.facts = unreadable
    with pytest.raises(StoreDown):
        h.engine.advance([Finished(action, manifest(action), None)])
    assert len(h.engine.held) == 1 and not [e for e in h.log if e.type == "action.failed"]
    h.artifacts.facts = real
    h.engine.advance([])
    assert h.c.actions[key].status == "done" and not [e for e in h.log if e.type == "action.failed"]
