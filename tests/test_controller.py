"""The controller's pure core, driven through the real engine with in-memory ports: no Ray, no store.

The engine runs on a MemoryJournal and a ManualClock; ``HandRuntime`` starts nothing until the test
finishes an action (with a made-up manifest) or fails it, and ``DictArtifacts`` answers lookups from a
dict of "stored" manifests.
"""

from __future__ import annotations

import copy
import hashlib

import pytest

from farm.core.controller import Cancel, Controller, Notify, Profile
from farm.core.engine import Engine
from farm.core.events import BatchCancelled, BatchSubmitted, Submission
from farm.core.manifest import Manifest
from farm.core.plan import OUTPUTS
from farm.core.ports import ManualClock, MemoryJournal
from farm.core.script import Script
from farm.core.spec import Episode, Series
from farm.policy import Capacity, Prices, RetryPolicy
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES

BACKENDS = {
    "script": ["outline", "1"],
    "image": ["pillow", "1"],
    "video": ["ffmpeg-motion", "1"],
    "dubbing": ["espeak-ng", "1"],
    "assembly": ["ffmpeg", "1"],
}
CAPACITY = Capacity(cpus=4, gpus_by_accelerator={None: 2})


def estimator(action):
    return (1.0, 0, 1.0 if action.stage == "video" else 0.0)


PROFILES = {("video", "ffmpeg-motion"): Profile(cpus=1, gpus=1)}


def manifest(action, attempt_worker="node-a", **changes) -> Manifest:
    digest = lambda name: hashlib.sha256(f"{action.key}{name}".encode()).hexdigest()  # noqa: E731
    data = {
        "key": action.key,
        "stage": action.stage,
        "op": action.op,
        "backend": action.backend,
        "version": action.version,
        "label": action.label,
        "outputs": {o: {"digest": digest(o), "size": 1, "name": o} for o in OUTPUTS[action.op]},
        "meta": {"samples": 24_000 + 10 * len(action.params.get("text", ""))} if action.op == "line" else {},
        "usage": {"gpu_seconds": 1.5 if action.stage == "video" else 0.0, "cpu_seconds": 0.5},
        "started_at": 0.0,
        "finished_at": 1.0,
        "worker": {"node": attempt_worker},
    }
    return Manifest.model_validate(data | changes)


def facts(action, script=SMALL_SCRIPT):
    return {"script": Script.model_validate(script).model_dump(mode="json")} if action.op == "script" else {}


class HandRuntime:
    """Starts nothing by itself: the test finishes or fails what was submitted. ``capacity`` is what
    the test says is free."""

    def __init__(self):
        self.submitted: list[str] = []
        self.free = CAPACITY

    running, grows = 0, False

    def submit(self, action, inputs, profile, batch):
        self.submitted.append(action.key)

    def wait(self, timeout=None):
        return []

    def capacity(self):
        return self.free

    def request_capacity(self, shapes):
        pass

    def cancel(self, keys):
        pass

    def adopt(self, actions):
        return set()

    def shutdown(self):
        pass


class DictArtifacts:
    def __init__(self):
        self.stored: dict[str, Manifest] = {}

    def lookup(self, actions):
        return [(a, self.stored[a.key]) for a in actions if a.key in self.stored]

    def facts(self, action, manifest):
        return facts(action)

    def deliver(self, job, outputs):
        return {"video": f"{job.series.id}/{job.episode.slug}/episode.mp4"}

    def refresh(self, studio):
        pass


class Harness:
    def __init__(self, controller=None, **kw):
        self.c = controller or Controller(estimator, PROFILES, prices=Prices(per_gpu_hour=3600.0), **kw)
        self.journal, self.clock = MemoryJournal(), ManualClock(1000.0)
        self.runtime, self.artifacts = HandRuntime(), DictArtifacts()
        self.notes: list[Notify] = []
        self.engine = Engine(self.c, self.journal, self.runtime, self.clock, self.artifacts, notify=self.notes.append)
        self.fail: dict[str, list[str]] = {}  # action key -> workers on which it fails
        self.scripts: dict[str, dict] = {}  # a script action's key -> the script it writes (default SMALL_SCRIPT)
        self.changes: dict[str, dict] = {}  # an action's key -> what its manifest has instead

    @property
    def log(self):
        return self.journal.events

    @property
    def stored(self):
        return self.artifacts.stored

    @stored.setter
    def stored(self, value):
        self.artifacts.stored = value

    @property
    def dispatched(self):
        return self.runtime.submitted

    @property
    def now(self):
        return self.clock.now()

    @now.setter
    def now(self, value):
        self.clock.set(value)

    def commit(self, events):
        return self.engine.commit(events)

    def finish(self, key):
        """The action's attempt comes back with a made-up manifest (stored, as a worker would)."""
        action = self.c.actions[key].action
        m = self.stored[key] = manifest(action, **self.changes.get(key, {}))
        self.commit(self.c.on_result(key, m, facts(action, self.scripts.get(key, SMALL_SCRIPT))))

    def submit(self, batch="b1", episodes=1, unique=False, series=SMALL_SERIES, outline=False, **terms):
        """Episodes 1..n share sheets and all shots but one line; ``unique`` makes every shot theirs alone;
        ``outline`` gives them outlines (a script action each) instead of their scripts."""
        series = Series.model_validate(series).model_dump(mode="json")
        eps = []
        for n in range(1, episodes + 1):
            script = copy.deepcopy(SMALL_SCRIPT)
            script["scenes"][1]["shots"][0]["lines"][0]["text"] = f"Only me, time {n}."
            for shot in (s for scene in script["scenes"] for s in scene["shots"]) if unique else ():
                shot["description"] += f" ({batch} #{n})"
            source = (
                {"outline": [{"beat": f"{batch} episode {n}", "lines": [{"speaker": "ana", "text": f"Hi {n}."}]}]}
                if outline
                else {"script": script}
            )
            eps.append(
                {
                    "series": series,
                    "episode": Episode.model_validate(
                        {"series": "s.yaml", "number": n, "title": f"E{n}", **source}
                    ).model_dump(mode="json"),
                }
            )
        data = {
            "studio": "acme",
            "namespace": "acme",
            "priority": "normal",
            "budget": {},
            "backends": BACKENDS,
            "episodes": eps,
        } | terms
        self.commit([BatchSubmitted(batch=batch, data=Submission.model_validate(data))])

    def run(self, rounds=200):
        """Dispatch what decide() allows, finish everything running, repeat until nothing moves."""
        for _ in range(rounds):
            events = self.c.decide(self.now, CAPACITY)
            self.commit(events)
            running = [k for k, s in self.c.actions.items() if s.status == "running"]
            if not running and not events:
                return
            for key in running:
                workers = self.fail.get(key, [])
                if workers:
                    self.commit(self.c.on_failure(key, "boom", True, workers.pop(0), self.now))
                else:
                    self.finish(key)
            self.now += 10.0
        raise AssertionError("did not settle")


def test_batch_runs_to_delivery():
    """A submitted batch dispatches every action once, delivers each episode and finishes."""
    h = Harness()
    h.submit(episodes=2)
    h.run()
    status = h.c.batch_status("b1", h.now)
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 2
    planned = {k for ep in h.c.episodes.values() for k in ep.keys}
    assert len(planned) == 18  # 2 x 15, less what the episodes share: sheets, identical shots and lines
    assert sorted(h.dispatched) == sorted(planned)
    assert [n.kind for n in h.notes].count("episode.delivered") == 2 and h.notes[-1].kind == "batch.finished"


def test_replay_rebuilds_the_same_state():
    """Applying the journal to a fresh controller gives the same status, and it proposes nothing to redo."""
    h = Harness()
    h.submit(episodes=2)
    h.run()
    fresh = Controller(estimator, PROFILES, prices=Prices(per_gpu_hour=3600.0))
    for event in h.log:
        fresh.apply(event)
    assert fresh.batch_status("b1", h.now) == h.c.batch_status("b1", h.now)
    assert fresh.decide(h.now, CAPACITY) == []


def test_replay_midway_then_continue():
    """Cut the journal anywhere, replay it, carry on: the batch finishes and no finished action runs again."""
    h = Harness()
    h.submit(episodes=2)
    for _ in range(3):
        h.commit(h.c.decide(h.now, CAPACITY))
        for key in [k for k, s in h.c.actions.items() if s.status == "running"][:2]:
            h.finish(key)
    done_before = {k for k, s in h.c.actions.items() if s.status == "done"}
    restarted = Harness()
    restarted.stored = h.stored
    for event in h.log:
        restarted.c.apply(event)
    restarted.journal.events = list(h.log)
    for key in [k for k, s in restarted.c.actions.items() if s.status == "running"]:  # what the service does
        restarted.commit(restarted.c.on_failure(key, "interrupted", True, None, restarted.now))
    restarted.now += 100
    restarted.run()
    assert restarted.c.batch_status("b1", restarted.now)["episodes"]["delivered"] == 2
    assert not done_before & set(restarted.dispatched)


def test_resubmitted_batch_is_all_cache():
    """The same episodes submitted again run nothing, deliver at once and count what they saved."""
    h = Harness()
    h.submit(episodes=1)
    h.run()
    before = len(h.dispatched)
    h.submit(batch="b2", episodes=1)
    h.run()
    status = h.c.batch_status("b2", h.now)
    assert len(h.dispatched) == before and status["status"] == "finished"
    assert status["episodes"]["delivered"] == 1
    assert sum(row["cached"] for row in status["actions"].values()) == 15
    assert status["saved"]["gpu_seconds"] == 4.5


def test_store_manifests_are_cache_hits():
    """Actions whose manifests are already in the store are not dispatched."""
    h = Harness()
    h.submit(episodes=1)
    h.run()
    second = Harness()
    second.stored = h.stored
    second.submit(episodes=1)
    second.run()
    assert second.dispatched == []
    assert second.c.batch_status("b1", second.now)["episodes"]["delivered"] == 1


def test_budget_stops_new_gpu_work_and_says_why():
    """A GPU-seconds cap holds the batch's clips once projected spend would pass it."""
    h = Harness()
    h.submit(episodes=2, budget={"gpu_seconds": 3.0})
    h.run()
    status = h.c.batch_status("b1", h.now)
    clips = status["actions"]["video"]
    # 3 distinct clips (the episodes' s02-01 lines have equal lengths, so their clips are one action)
    assert clips == {"done": 2, "cached": 0, "running": 0, "pending": 1, "failed": 0}, clips
    assert status["spent"]["gpu_seconds"] <= 3.0 + 1.5
    assert "gpu_seconds" in status["held"]
    assert [e.type for e in h.log].count("budget.exhausted") == 1


def test_failure_on_three_workers_quarantines_and_the_batch_goes_on():
    """An action failing on three different workers is quarantined; its episode fails, the other is delivered."""
    h = Harness(retry=RetryPolicy(base_s=1.0, max_delay_s=1.0))
    h.submit(episodes=2)
    line = next(s.action for s in h.c.actions.values() if s.action.op == "line" and "time 2" in s.action.params["text"])
    h.fail[line.key] = ["w1", "w2", "w3"]
    h.run()
    status = h.c.batch_status("b1", h.now)
    assert status["status"] == "finished"
    assert status["episodes"] == {"total": 2, "delivered": 1, "failed": 1, "running": 0}
    assert "quarantined" in status["failures"][0]["reason"] or "3 workers" in status["failures"][0]["reason"]
    types = [e.type for e in h.log]
    assert types.count("action.retry") == 2 and types.count("action.quarantined") == 1
    retries = [e for e in h.log if e.type == "action.retry"]
    assert all(0 <= e.data.not_before - e.at <= 1.0 for e in retries)


def test_a_new_batch_retries_what_an_earlier_one_quarantined():
    """An action quarantined for one batch gets a fresh start when another batch needs it."""
    h = Harness(retry=RetryPolicy(base_s=1.0, max_delay_s=1.0))
    h.submit(episodes=1)
    line = next(s.action for s in h.c.actions.values() if s.action.op == "line")
    h.fail[line.key] = ["w1", "w2", "w3"]
    h.run()
    assert h.c.batch_status("b1", h.now)["episodes"]["failed"] == 1
    h.submit(batch="b2", episodes=1)
    h.run()
    assert h.c.batch_status("b2", h.now)["episodes"]["delivered"] == 1


def test_cancel_stops_dispatching():
    """A cancelled batch dispatches nothing more and says which running actions to stop."""
    h = Harness()
    h.submit(episodes=1)
    h.commit(h.c.decide(h.now, CAPACITY))
    running = {k for k, s in h.c.actions.items() if s.status == "running"}
    cmds = h.c.apply(BatchCancelled(seq=len(h.log), at=h.now, batch="b1"))
    assert cmds == [Cancel(tuple(sorted(running, key=list(h.c.actions).index)))] or set(cmds[0].keys) == running
    assert h.c.decide(h.now, CAPACITY) == []
    assert h.c.batch_status("b1", h.now)["status"] == "cancelled"


def test_priority_orders_dispatch():
    """With one CPU free, the urgent batch's action goes first."""
    h = Harness()
    h.submit(batch="slow", episodes=1, priority="low")
    h.submit(batch="fast", episodes=1, priority="urgent", studio="other", namespace="other")
    events = h.c.decide(h.now, Capacity(cpus=1, gpus_by_accelerator={}))
    assert [e.batch for e in events] == ["fast"]


def test_bench_controller_plans_a_synthetic_batch():
    """The controller benchmark plans every action of a small synthetic batch and reports its cost."""
    from farm.bench.batch import bench_controller

    report = bench_controller(5)
    # four shared character sheets, 55 actions an episode (46, and the lip-syncs of its 9 shots with dialogue)
    assert report["actions"] == 4 + 5 * 55
    assert report["plan_seconds"] > 0 and "controller memory" in report["text"]


def test_gpu_work_without_gpus_is_asked_of_the_autoscaler():
    """With no GPU up, clips wait, and the controller says what GPU capacity would run them."""
    h = Harness()
    h.submit(episodes=1)
    no_gpus = Capacity(cpus=4, gpus_by_accelerator={})
    for _ in range(20):
        h.commit(h.c.decide(h.now, no_gpus))
        for key in [k for k, s in h.c.actions.items() if s.status == "running"]:
            h.finish(key)
    status = h.c.batch_status("b1", h.now)
    assert status["actions"]["video"]["pending"] == 3 and status["actions"]["video"]["running"] == 0
    assert h.c.wanted_capacity() == [(1, 1, None)] * 3


def _queue_order(c) -> list:
    return list(c._queue.walk())


def _reference_order(c, now) -> list:
    """What the scheduler would consider, in order, worked out from scratch as the controller did before
    it kept a queue: every wanted ready action past its backoff, sorted by ``ranking.sort_key``."""
    from farm.policy import NO_PACE, sort_key

    ranks = c.ranks(now)
    tasks = [c._make_task(s) for s in c.ready(now)]
    return sorted(
        tasks,
        key=lambda t: sort_key(
            t,
            c.batches[t.batch].terms,
            ranks[t.key] if t.key in ranks else c._local_rank(t.key),
            c._paces.get(t.batch, {}).get((t.batch, t.episode), NO_PACE),
        ),
    )


def test_ready_queue_matches_a_from_scratch_ordering():
    """The queue the controller keeps between decisions holds exactly the actions a from-scratch
    ordering would consider, in the same order, with the same batch charged, through shared actions
    changing batch, retries in backoff, quarantines, a cancelled batch and ranks refreshing."""
    import random

    rng = random.Random(7)
    h = Harness(retry=RetryPolicy(base_s=2.0, max_delay_s=8.0))
    h.submit(batch="b1", episodes=3)
    checked, poison = 0, None
    for rnd in range(400):
        if rnd == 3:  # shares b1's episodes 1-2 and outranks it: those actions now count for b2
            h.submit(batch="b2", episodes=2, priority="urgent", budget={"gpu_seconds": 9.0})
        if rnd == 5:
            h.submit(
                batch="b3",
                episodes=2,
                priority="low",
                deadline=h.now + 400.0,
                studio="other",
                namespace="other",
                unique=True,
            )
            first = h.c.episodes[("b3", h.c.batches["b3"].episodes[0])]
            poison = next(k for k in first.keys if h.c.actions[k].action.params.get("text") == "Only me, time 1.")
        if rnd == 8:
            h.commit([BatchCancelled(batch="b1")])
        capacity = Capacity(cpus=rng.randint(0, 3), gpus_by_accelerator={None: rng.randint(0, 2)})
        events = h.c.decide(h.now, capacity)
        assert _queue_order(h.c) == _reference_order(h.c, h.now)
        checked += len(h.c._queue)
        h.commit(events)
        for key in sorted(k for k, s in h.c.actions.items() if s.status == "running"):
            roll = rng.random()
            if key == poison:  # a line of b3's first episode alone fails on every worker
                h.commit(h.c.on_failure(key, "bad line", True, f"node-{h.c.actions[key].attempts}", h.now))
            elif roll < 0.15:
                h.commit(h.c.on_failure(key, "flaky", True, f"node-{rng.randint(1, 4)}", h.now))
            elif roll < 0.7:
                h.finish(key)
        h.now += rng.choice([0.3, 0.6, 1.5, 3.0])
        if all(b.status != "running" for b in h.c.batches.values()):
            break
    else:
        raise AssertionError("the batches did not finish")
    statuses = {b: h.c.batch_status(b, h.now) for b in h.c.batches}
    assert statuses["b1"]["status"] == "cancelled" and statuses["b2"]["status"] == "finished"
    assert statuses["b3"]["episodes"] == {"total": 2, "delivered": 1, "failed": 1, "running": 0}
    assert any(e.type == "action.retry" for e in h.log) and checked > 50


def test_queued_is_what_waits_after_a_decision():
    """``queued`` (the metrics' queue depth) is what the last decision left waiting."""
    h = Harness()
    h.submit(episodes=1)
    h.commit(h.c.decide(h.now, Capacity(cpus=1, gpus_by_accelerator={})))
    waiting = {s.action.key for s in h.c.ready(h.now)}
    assert len(h.dispatched) == 1 and waiting and h.dispatched[0] not in waiting
    assert {t.key for t in h.c.queued()} == waiting


# -- a result becomes a fact only after it is checked; nothing one batch sends stops the others ------
def _script_of(h, batch, number):
    ep = h.c.episodes[(batch, f"test-series/ep{number:03d}")]
    return next(k for k in ep.keys if h.c.actions[k].action.op == "script")


ROGUE = copy.deepcopy(SMALL_SCRIPT)
ROGUE["scenes"][1]["shots"][0]["lines"][1]["speaker"] = "zed"


def test_a_script_naming_a_character_the_series_lacks_fails_only_its_episode():
    """A script backend's answer naming an unknown speaker is an unusable result: the script action fails
    for good (not completed), its episode fails with the reason, its sister episode and another batch
    are delivered, and the journal replays to the same state."""
    h = Harness()
    h.submit(batch="b1", episodes=2, outline=True)
    h.submit(batch="b2", episodes=1, outline=True, unique=True, studio="other", namespace="other")
    rogue = _script_of(h, "b1", 1)
    h.scripts[rogue] = ROGUE
    h.run()
    b1, b2 = h.c.batch_status("b1", h.now), h.c.batch_status("b2", h.now)
    assert b1["status"] == "finished" and b1["episodes"]["delivered"] == 1 and b1["episodes"]["failed"] == 1
    assert "'zed' is not a character of the series" in b1["failures"][0]["reason"]
    assert b2["episodes"]["delivered"] == 1
    mine = [e for e in h.log if e.key == rogue]
    assert [e.type for e in mine] == ["action.dispatched", "action.failed"] and not mine[1].data.retryable
    fresh = Controller(estimator, PROFILES, prices=Prices(per_gpu_hour=3600.0))
    for event in h.log:
        assert not [c for c in fresh.apply(event) if type(c).__name__ == "Fault"]
    assert fresh.batch_status("b1", h.now) == b1 and fresh.errors == []


@pytest.mark.parametrize(
    "op, changes, problem",
    [
        ("line", {"outputs": {}}, "no audio output"),
        ("keyframe", {"outputs": {"keyframe": {"digest": "0" * 64, "size": 0, "name": "k.png"}}}, "output is empty"),
        ("line", {"meta": {"samples": 0}}, "0 samples"),
        ("line", {"meta": {"samples": "48000"}}, "'48000' samples"),
        ("line", {"meta": {}}, "None samples"),
    ],
)
def test_an_unusable_result_fails_its_episode_never_the_engine(op, changes, problem):
    """A missing or empty output, or a line without a positive whole number of samples, fails the action
    for good and its episode; the batch goes on and finishes."""
    h = Harness()
    h.submit(episodes=1)
    key = next(k for k, s in sorted(h.c.actions.items()) if s.action.op == op)
    h.changes[key] = changes
    h.run()
    status = h.c.batch_status("b1", h.now)
    assert status["status"] == "finished" and status["episodes"]["failed"] == 1
    assert problem in status["failures"][0]["reason"] and "unusable result" in status["failures"][0]["reason"]
    assert not [e for e in h.log if e.key == key and e.type == "action.completed"]


def test_an_unusable_stored_result_fails_its_episode_and_says_how_to_mend_it():
    """A manifest in the store that is unusable (an older farm wrote it) is not a cache hit."""
    h = Harness()
    h.submit(episodes=1)
    h.run()
    line = next(k for k, s in h.c.actions.items() if s.action.op == "line")
    second = Harness()
    second.stored = dict(h.stored)
    second.stored[line] = manifest(h.c.actions[line].action, meta={"samples": -5})
    second.submit(episodes=1)
    second.run()
    failure = second.c.batch_status("b1", second.now)["failures"][0]["reason"]
    assert (
        "the stored result is unusable: the line has -5 samples" in failure
        and f"actions/{line[:2]}/{line}.json" in failure
    )


def _journal_with_an_unchecked_rogue_script():
    """The journal an older farm could write: a script naming an unknown speaker journaled as completed
    for b1 (it raised on apply, which Ray's restarts turned into a crash loop), and a second batch."""
    h = Harness()
    h.submit(batch="b1", episodes=1, outline=True)
    h.submit(batch="b2", episodes=1, outline=True, unique=True, studio="other", namespace="other")
    h.commit(h.c.decide(h.now, CAPACITY))
    rogue = _script_of(h, "b1", 1)
    result = h.c.on_result(rogue, manifest(h.c.actions[rogue].action), facts(h.c.actions[rogue].action))[0]
    bad = result.model_copy(
        update={
            "data": result.data.model_copy(
                update={"facts": type(result.data.facts)(script=Script.model_validate(ROGUE))}
            )
        }
    )
    return h, bad


def test_an_event_that_cannot_be_applied_fails_its_batch_and_every_other_batch_goes_on():
    """Applying the rogue completion raises inside the planner: b1 fails with the reason (journaled once as
    batch.failed), b2 is delivered, and a replay (and another) of the whole journal does the same."""
    h, bad = _journal_with_an_unchecked_rogue_script()
    h.commit([bad])
    h.run()
    b1, b2 = h.c.batch_status("b1", h.now), h.c.batch_status("b2", h.now)
    assert b1["status"] == "failed" and "KeyError" in b1["reason"] and b1["episodes"]["failed"] == 1
    assert b2["status"] == "finished" and b2["episodes"]["delivered"] == 1
    assert [e.type for e in h.log].count("batch.failed") == 1
    assert [n.kind for n in h.notes].count("batch.failed") == 1
    for _ in range(2):  # a restarted controller replays it without raising, and adds nothing
        again = Harness()
        again.stored = dict(h.stored)
        again.journal.events = list(h.log)
        again.engine.recover()
        assert again.c.batch_status("b1", h.now)["status"] == "failed"
        assert again.c.batch_status("b2", h.now)["status"] == "finished"
        assert len(again.log) == len(h.log)


def test_a_batch_that_failed_while_replaying_is_recorded_once():
    """A journal that ends right after the event that raised (the controller died before it wrote
    batch.failed): recovery writes batch.failed once, the next recovery nothing more."""
    h, bad = _journal_with_an_unchecked_rogue_script()
    h.journal.append([bad], h.now)  # written, never applied
    again = Harness()
    again.journal.events = list(h.log)
    again.engine.recover()
    assert [e.type for e in again.log].count("batch.failed") == 1
    third = Harness()
    third.journal.events = list(again.log)
    third.engine.recover()
    assert [e.type for e in third.log].count("batch.failed") == 1


def test_an_unreadable_journal_event_fails_its_batch_only():
    """An event the journal could not read (``Unreadable``) stops its own batch when replayed."""
    from farm.core.events import Reason, Unreadable

    h = Harness()
    h.submit(batch="b1", episodes=1)
    h.submit(batch="b2", episodes=1, unique=True)
    h.journal.events.append(Unreadable(seq=len(h.log), at=h.now, batch="b1", data=Reason(reason="torn")))
    again = Harness()
    again.journal.events = list(h.log)
    again.engine.recover()
    again.run()
    assert again.c.batch_status("b1", again.now)["status"] == "failed"
    assert again.c.batch_status("b2", again.now)["episodes"]["delivered"] == 1


def test_a_backend_whose_estimate_raises_fails_its_actions_not_the_controller():
    """A studio's own backend class raising in ``estimate`` fails those actions and their episodes."""

    def shaky(action):
        if action.op == "clip":
            raise RuntimeError("estimate exploded")
        return estimator(action)

    h = Harness(controller=Controller(shaky, PROFILES))
    h.submit(episodes=1)
    h.run()
    status = h.c.batch_status("b1", h.now)
    assert status["status"] == "finished" and status["episodes"]["failed"] == 1
    assert "could not estimate it: RuntimeError: estimate exploded" in status["failures"][0]["reason"]


def test_an_event_naming_an_action_the_controller_never_planned_stops_only_its_batch():
    """An event the core cannot apply at all (a journal edited by hand, a bug) fails the batch it names;
    one naming no known batch is kept among the controller's errors."""
    from farm.core.events import ActionFailed, Failed

    h = Harness()
    h.submit(batch="b1", episodes=1)
    h.submit(batch="b2", episodes=1, unique=True)
    h.commit([ActionFailed(batch="b1", key="f" * 64, data=Failed(error="x", retryable=True))])
    h.commit([ActionFailed(batch=None, key="e" * 64, data=Failed(error="x", retryable=True))])
    h.run()
    assert h.c.batch_status("b1", h.now)["status"] == "failed" and "KeyError" in h.c.batches["b1"].reason
    assert h.c.batch_status("b2", h.now)["episodes"]["delivered"] == 1
    assert len(h.c.errors) == 1 and "action.failed" in h.c.errors[0]


# -- webhooks that finally fail are facts of their batch ----------------------------------------------
def _give_up(h, note, **changes):
    """What the host's sender hands back once it has given up on ``note`` (after its retries)."""
    from farm.core.state import Notified

    episode = note.payload.get("episode")
    outcome = {
        "batch": note.batch,
        "id": f"{note.batch}:{note.kind}:{episode or ''}",
        "kind": note.kind,
        "ok": False,
        "detail": "HTTP 500",
        "episode": episode,
        "host": "hooks.example.com",
        "attempts": 5,
    }
    h.engine.notified(Notified(**(outcome | changes)))


def test_a_webhook_that_finally_fails_is_journaled_counted_and_replayed():
    """A notification its sender gave up on is a journaled ``webhook.failed`` (the event it told of, the
    receiver's host, the attempts, the last error; nothing of the URL's query): the batch status counts
    it, a replay of the journal counts the same, and a later delivery of it (a restarted controller
    sends it again) counts it as sent."""
    from farm.core.events import SCHEMA_VERSION, dump, parse

    h = Harness()
    h.submit(episodes=1, webhook={"url": "https://hooks.example.com/farm?token=t0ken"})
    h.run()
    assert [n.kind for n in h.notes] == ["episode.delivered", "batch.finished"]
    assert h.c.batch_status("b1", h.now)["notifications"] == {"sent": 0, "failed": 0, "last_error": None}
    for note in h.notes:
        _give_up(h, note)
    failed = [e for e in h.log if e.type == "webhook.failed"]
    assert [(e.batch, e.data.kind, e.data.episode, e.data.host, e.data.attempts, e.data.detail) for e in failed] == [
        ("b1", "episode.delivered", "test-series/ep001", "hooks.example.com", 5, "HTTP 500"),
        ("b1", "batch.finished", None, "hooks.example.com", 5, "HTTP 500"),
    ]
    assert all(e.v == SCHEMA_VERSION for e in failed) and "t0ken" not in "".join(dump(e) for e in failed)
    status = h.c.batch_status("b1", h.now)
    assert status["notifications"] == {
        "sent": 0,
        "failed": 2,
        "last_error": "batch.finished to hooks.example.com: HTTP 500 after 5 attempts",
    }

    again = Harness()
    again.journal.events = [parse(dump(e)) for e in h.log]
    again.engine.recover()
    assert again.c.batch_status("b1", h.now) == status
    assert sorted(n.kind for n in again.notes) == ["batch.finished", "episode.delivered"]  # to be sent again
    delivered = next(n for n in again.notes if n.kind == "episode.delivered")
    _give_up(again, delivered, ok=True, detail="HTTP 200", attempts=1)
    assert again.c.batch_status("b1", again.now)["notifications"] == {
        "sent": 1,
        "failed": 1,
        "last_error": "batch.finished to hooks.example.com: HTTP 500 after 5 attempts",
    }


def test_webhook_outcomes_of_older_journals_and_unknown_batches_never_stop_a_batch():
    """A schema-2 ``webhook.failed`` line (id, kind, detail only) reads and counts; an outcome naming a
    batch this controller does not know is ignored: no fault, no error, nothing else changes."""
    from farm.core.events import WebhookFailed, parse

    h = Harness()
    h.submit(episodes=1)
    old = parse(
        '{"v":2,"seq":5,"at":1000.0,"type":"webhook.failed","batch":"b1","key":null,'
        '"data":{"id":"b1:episode.delivered:test-series/ep001","kind":"episode.delivered","detail":"HTTP 503"}}'
    )
    assert isinstance(old, WebhookFailed) and old.data.host is None and old.data.attempts == 0
    assert h.c.apply(old) == []
    stranger = old.model_copy(update={"batch": "nobody", "seq": 6})
    assert h.c.apply(stranger) == []
    status = h.c.batch_status("b1", h.now)
    assert status["notifications"] == {"sent": 0, "failed": 1, "last_error": "episode.delivered: HTTP 503"}
    assert status["status"] == "running" and h.c.errors == []
    h.run()
    assert h.c.batch_status("b1", h.now)["episodes"]["delivered"] == 1


# -- the projected finish: remaining work over the capacity in use, converging on the true finish -----
SECONDS = {"script": 6.0, "sheet": 4.0, "keyframe": 3.0, "line": 1.5, "clip": 8.0, "mux": 1.0, "episode": 2.5}


def _estimated(action):
    return (SECONDS[action.op], 0, SECONDS[action.op] if action.stage == "video" else 0.0)


def _play(episodes=3, slower=1.0, outline=False, tick=0.5):
    """Run a batch on a ManualClock with 4 CPUs and 2 GPUs: each action takes ``slower`` times its
    estimate, the free capacity is what the running leave. Every ``tick`` seconds, and at each decision,
    record (now, projected finish). Returns the batch's true finish and the samples."""
    h = Harness(controller=Controller(_estimated, PROFILES))
    h.submit(episodes=episodes, unique=True, outline=outline)
    ends: dict[str, float] = {}
    samples: list[tuple[float, float]] = []
    while True:
        held = [PROFILES.get((s.action.stage, s.action.backend), Profile()) for s in h.c.running()]
        free = Capacity(cpus=4 - sum(p.cpus for p in held), gpus_by_accelerator={None: 2 - sum(p.gpus for p in held)})
        h.commit(h.c.decide(h.now, free))
        if h.c.batches["b1"].status != "running":
            break
        for s in h.c.running():
            ends.setdefault(s.action.key, h.now + SECONDS[s.action.op] * slower)
        due = min(ends.values())
        while True:
            samples.append((h.now, h.c.batch_status("b1", h.now)["projected_finish"]))
            if h.now + tick >= due:
                break
            h.now += tick
        h.now = due
        for key in [k for k, end in ends.items() if end <= due]:
            h.changes[key] = {"started_at": due - SECONDS[h.c.actions[key].action.op] * slower, "finished_at": due}
            del ends[key]
            h.finish(key)
    finish = h.c.batches["b1"].finished_at
    assert h.c.batch_status("b1", h.now + 100)["projected_finish"] == finish == h.now
    return finish, samples


def test_projected_finish_converges_on_the_true_finish():
    """As actions finish on time, the projection stays within a few seconds of the true finish (3
    episodes, 50 s on 4 CPUs and 2 GPUs), never ahead of it, and from the last actions on it is the true
    finish itself, not "now plus something"."""
    finish, samples = _play()
    start = samples[0][0]
    # the schedule's ties are broken by key, so its length moves by a tick when keys change: 50-52 s
    assert 50.0 <= finish - start <= 52.0
    errors = [projected - finish for _, projected in samples]
    assert max(errors) <= 1e-6, "the projection ran ahead of the true finish"
    assert min(errors) >= -0.1 * (finish - start)
    late = [e for (now, _), e in zip(samples, errors) if now >= finish - 10.0]
    assert late and all(abs(e) < 1e-6 for e in late)


def test_projected_finish_of_one_episode():
    """A batch of one (``farm render``): the projection is there from the start and ends on the finish."""
    finish, samples = _play(episodes=1)
    errors = [projected - finish for _, projected in samples]
    assert max(errors) <= 1e-6 and min(errors) >= -0.2 * (finish - samples[0][0])
    assert abs(errors[-1]) < 1e-6


def test_projected_finish_learns_how_long_actions_take():
    """Actions taking half as long again as estimated: once some of each kind have run, the projection
    uses what they took (within 10% of the true finish, never ahead), and converges on it."""
    finish, samples = _play(slower=1.5)
    start = samples[0][0]
    errors = [(now, projected - finish) for now, projected in samples]
    assert max(e for _, e in errors) <= 1e-6
    assert all(abs(e) <= 0.1 * (finish - start) for now, e in errors if now >= start + 0.4 * (finish - start))
    assert abs(errors[-1][1]) < 1e-6


def test_projected_finish_of_outlines_counts_the_work_their_scripts_will_plan():
    """Before an outline's script is written, its sketched shots count: the projection is not just
    the scripts' own seconds, and it converges on the finish."""
    finish, samples = _play(outline=True)
    start = samples[0][0]
    assert samples[0][1] - start > 3 * SECONDS["script"]
    errors = [projected - finish for _, projected in samples]
    assert all(abs(e) <= 0.3 * (finish - start) for e in errors)
    assert abs(errors[-1]) < 1e-6


def _restart(h: Harness) -> Harness:
    """A new controller incarnation on the same journal and store: it replays and settles what ran."""
    restarted = Harness()
    restarted.stored, restarted.journal = h.stored, h.journal
    restarted.engine.journal = h.journal
    restarted.now = h.now + 5
    restarted.engine.recover()
    return restarted


def test_restarts_of_the_controller_are_not_attempts_of_the_actions_in_flight():
    """More restarts than the retry policy allows attempts, each while the same actions run: none is
    given up, no episode fails, the interruptions are journaled as such (and counted as no failure)
    and the batch is delivered."""
    h = Harness()
    h.submit(episodes=1)
    h.commit(h.c.decide(h.now, CAPACITY))
    running = {k for k, s in h.c.actions.items() if s.status == "running"}
    assert running
    for _ in range(h.c.retry.max_attempts + 2):
        h = _restart(h)
        assert all(h.c.actions[k].attempts == 0 for k in running)
        h.commit(h.c.decide(h.now, CAPACITY))
        assert {k for k, s in h.c.actions.items() if s.status == "running"} >= running
    interruptions = [e for e in h.log if e.type == "action.failed"]
    assert interruptions and all(e.data.interrupted for e in interruptions)
    assert not [e for e in h.log if e.type in ("action.retry", "action.quarantined", "episode.failed")]
    h.run()
    assert h.c.batch_status("b1", h.now)["episodes"]["delivered"] == 1


def test_a_resubmitted_batch_gives_an_action_given_up_on_a_fresh_count():
    """An action that failed its every attempt failed its episode; the same episode in a new batch gets
    the retry policy's whole count again, not one last try."""
    h = Harness()
    h.submit(episodes=1)
    h.commit(h.c.decide(h.now, CAPACITY))
    key = sorted(k for k, s in h.c.actions.items() if s.status == "running")[0]
    for _ in range(h.c.retry.max_attempts):
        h.commit(h.c.on_failure(key, "boom", True, None, h.now))  # one worker: given up, not quarantined
        h.now += 10_000
        h.commit(h.c.decide(h.now, CAPACITY))
        if h.c.batch_status("b1", h.now)["episodes"]["failed"]:
            break
    assert h.c.batch_status("b1", h.now)["episodes"]["failed"] == 1
    assert h.c.actions[key].attempts >= h.c.retry.max_attempts
    h.submit(batch="b2", episodes=1)
    assert h.c.actions[key].attempts == 0
    h.commit(h.c.decide(h.now, CAPACITY))
    assert h.c.actions[key].status == "running"
    h.commit(h.c.on_failure(key, "boom again", True, None, h.now))
    assert h.c.batch_status("b2", h.now)["episodes"]["failed"] == 0  # one failure: a retry, not the end


class _LostBlobArtifacts(DictArtifacts):
    """A store that cannot publish one episode: its final blob is not where the studio reads (a batch
    submitted with another studio's cache namespace, as a raw client could)."""

    def deliver(self, job, outputs):
        if job.episode.number == 1:
            raise FileNotFoundError(2, "No such file or directory", "acme/blobs/ab/abcdef")
        return super().deliver(job, outputs)


def test_an_episode_the_store_cannot_publish_fails_alone_and_replays_cleanly():
    """A delivery the store refuses for good fails that episode with the reason; the batch goes on and
    finishes; a new incarnation replaying the journal (where that episode was still to be delivered)
    neither raises nor delivers it, and reports the same."""
    h = Harness()
    h.artifacts = h.engine.artifacts = _LostBlobArtifacts()
    h.submit(episodes=2, unique=True)
    h.run()
    status = h.c.batch_status("b1", h.now)
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 1
    (failure,) = status["failures"]
    assert "could not be published: FileNotFoundError" in failure["reason"]

    cut = next(i for i, e in enumerate(h.log) if e.type == "episode.failed")
    again = Harness()
    again.artifacts = again.engine.artifacts = _LostBlobArtifacts()
    again.stored = dict(h.stored)
    again.journal.events = list(h.log[:cut])  # the crash came before the delivery's record
    again.now = h.now
    again.engine.recover()
    again.run()
    replayed = again.c.batch_status("b1", again.now)
    assert replayed["episodes"] == status["episodes"] and replayed["failures"] == status["failures"]
