"""``farm bench restart``: how long a controller takes to come back after a night, before and after
the journal's compaction, in the same run (the baseline).

A night of N episodes (several batches, several studios) is played by the real engine and controller
on simulated GPUs (farm.simulate's runtime, clock and artifacts), journaling into a ``StoreJournal`` on
a local store; every batch but the last finishes, the last is still running. Then a controller
restarts (a fresh Controller, ``Engine.recover`` on a fresh journal, which claims the next epoch),
the finished batches are compacted, and a controller restarts again. Reported: segments written with
group commit and without it (one per engine commit, as the journal wrote before), bytes, and both
restart times. With ``--store s3://...`` the journal is copied to that S3 store after the night and
the restarts read it there.

Example::

    farm bench restart --episodes 1000 --json
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from farm.core.controller import Controller
from farm.core.engine import Engine
from farm.core.manifest import Manifest
from farm.core.plan import Action
from farm.core.ports import ManualClock
from farm.simulate.run import RANK_REFRESH_S, _submission
from farm.simulate.runtime import SimArtifacts, SimRuntime
from farm.simulate.workload import Workload, synthetic_batch
from farm.store.base import ObjectStore
from farm.store.journal import PREFIX, StoreJournal
from farm.store.local import LocalStore

GPUS, CPUS = 64.0, 128.0


class _Counted(StoreJournal):
    """The journal, counting what it would have written without group commit (a segment per append)."""

    appends = steps = 0

    def append(self, proposals: Sequence[Any], now: float) -> list[Any]:
        out = super().append(proposals, now)
        self.appends += bool(out)
        return out

    def step_ended(self) -> None:
        self.steps += bool(self._pending)  # a segment per step that journaled (group_s 0)
        super().step_ended()


def night(episodes: int, batches: int, seed: int = 0) -> Workload:
    """``episodes`` episodes in ``batches`` batches of five studios, submitted 10 minutes apart."""
    per = [episodes // batches + (i < episodes % batches) for i in range(batches)]
    parts = [
        synthetic_batch(n, seed + i, studios=(f"studio-{i % 5}",), batch=f"night-{i:03d}", submitted=600.0 * i, order=i)
        for i, n in enumerate(per)
        if n
    ]
    workload = parts[0]
    for part in parts[1:]:
        workload = workload + part
    return workload


class _Store(SimArtifacts):
    """The simulated store after the night: the manifests of what ran are there to be found."""

    def __init__(self, workload: Workload, manifests: dict[str, Any]):
        super().__init__(workload)
        self.manifests = manifests

    def lookup(self, actions: Sequence[Action]) -> list[tuple[Action, Manifest]]:
        return [(a, self.manifests[a.key]) for a in actions if a.key in self.manifests]


def _controller(workload: Workload) -> Controller:
    return Controller(workload.estimate, workload.profiles(), prices=workload.prices, rank_refresh_s=RANK_REFRESH_S)


def play(workload: Workload, objects: ObjectStore, group_s: float = 0.0) -> tuple[Engine, _Counted, ManualClock]:
    """Play the night until every batch but the last has finished; the last is left running.
    ``group_s``: the journal's, in simulated seconds (0: a segment per engine step)."""
    order = sorted(workload.batches.values(), key=lambda b: (b.submitted, b.order))
    clock = ManualClock(order[0].submitted)
    journal = _Counted(objects, writer=True, group_s=group_s, clock=clock.now)
    engine = Engine(
        _controller(workload), journal, SimRuntime(workload, clock, {None: GPUS}, CPUS), clock, SimArtifacts(workload)
    )
    list(journal.replay())
    queue = list(order)
    last = order[-1].id
    batches = engine.controller.batches
    while True:
        while queue and queue[0].submitted <= clock.now():
            b = queue.pop(0)
            engine.submit(b.id, _submission(b, b.episodes, True, workload))
            engine.decide()
        if not queue and all(s.status != "running" for k, s in batches.items() if k != last):
            break
        runtime = engine.runtime
        assert isinstance(runtime, SimRuntime)
        wakes = [t for t in (runtime.next_end(), engine.controller.next_wake()) if t is not None]
        wakes += [queue[0].submitted] if queue else []
        if not wakes:
            break
        engine.step(timeout=max(0.0, min(wakes) - clock.now()))
    journal.flush()
    return engine, journal, clock


def restart(
    workload: Workload, objects: ObjectStore, now: float, manifests: dict[str, Any] | None = None
) -> tuple[float, int, Engine]:
    """A controller coming back: a fresh Controller and journal, ``Engine.recover`` (which finds the
    night's ``manifests`` in the store). (seconds, events replayed, the engine)."""
    t0 = time.perf_counter()
    clock = ManualClock(now)
    journal = StoreJournal(objects, writer=True)
    runtime = SimRuntime(workload, clock, {None: GPUS}, CPUS)
    engine = Engine(_controller(workload), journal, runtime, clock, _Store(workload, manifests or {}))
    count = engine.recover()
    journal.flush()
    return time.perf_counter() - t0, count, engine


def _size(objects: ObjectStore) -> tuple[int, int]:
    names = [n for n in objects.list(PREFIX + "/") if n.endswith(".jsonl") and "/log/" in n]
    return len(names), sum(len(objects.get_bytes(n) or b"") for n in names)


def _copy(src: ObjectStore, dst: ObjectStore) -> int:
    """Copy the journal's objects to another store (eight at a time); how many."""
    names = list(src.list(PREFIX + "/"))

    def one(name: str) -> None:
        data = src.get_bytes(name)
        assert data is not None
        dst.put_bytes(name, data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))
    return len(names)


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    """A batch's status without what moves with the clock and the learned estimates."""
    return {k: v for k, v in status.items() if k not in ("projected_finish", "on_track")}


def bench_restart(
    episodes: int = 1000, batches: int = 20, store: ObjectStore | None = None, group_s: float = 0.1
) -> dict[str, Any]:
    """Play a night of ``episodes`` episodes in ``batches`` batches (journal grouped by ``group_s``
    simulated seconds), restart before and after compaction (reading ``store`` if given, else the
    local store the night wrote); the report."""
    batches = max(2, min(batches, episodes))
    workload = night(episodes, batches)
    with tempfile.TemporaryDirectory(prefix="farm-bench-restart-") as tmp:
        local = LocalStore(Path(tmp) / "store")
        t0 = time.perf_counter()
        engine, journal, clock = play(workload, local, group_s)
        played_s = time.perf_counter() - t0
        segments, size = _size(local)
        objects = store if store is not None else local
        copied = _copy(local, objects) if store is not None else 0
        now = clock.now() + 3600.0
        done = {k: s.manifest for k, s in engine.controller.actions.items() if s.manifest is not None}
        before_s, before_events, first = restart(workload, objects, now, done)
        statuses = {b: _comparable(first.controller.batch_status(b, now)) for b in first.controller.batches}
        journal_1 = first.journal
        assert isinstance(journal_1, StoreJournal)
        t1 = time.perf_counter()
        plan = journal_1.plan_compaction(first.controller, now, older_than=0.0)
        stats = journal_1.compact(plan) if plan is not None else {}
        compact_s = time.perf_counter() - t1
        after_s, after_events, second = restart(workload, objects, now, done)
        after = {b: _comparable(second.controller.batch_status(b, now)) for b in second.controller.batches}
        differences = sorted(
            f"{b}: {k}"
            for b in statuses.keys() | after.keys()
            for k in statuses.get(b, {"batch": 0})
            if statuses.get(b, {}).get(k) != after.get(b, {}).get(k)
        )
    running = [b for b, s in second.controller.batches.items() if s.status == "running"]
    report = {
        "episodes": episodes,
        "batches": batches,
        "store": "s3" if store is not None else "local",
        "played_s": round(played_s, 2),
        "segments": segments,
        "segments_without_group_commit": journal.appends,
        "segments_per_episode": round(segments / episodes, 3),
        "segments_per_episode_without_group_commit": round(journal.appends / episodes, 3),
        "steps_that_journaled": journal.steps,
        "group_s": group_s,
        "journal_bytes": size,
        "objects_copied": copied,
        "restart_before_s": round(before_s, 3),
        "events_before": before_events,
        "compact_s": round(compact_s, 3),
        "compaction": stats,
        "restart_after_s": round(after_s, 3),
        "events_after": after_events,
        "running_batches": running,
        "statuses_equal": not differences,
        "status_differences": differences[:20],
    }
    report["text"] = (
        f"restart after a night of {episodes} episodes in {batches} batches ({report['store']} store):\n"
        f"  journal: {segments} segments with group commit ({group_s} s), {report['segments_per_episode']}/episode; "
        f"a segment per commit: {journal.appends} ({report['segments_per_episode_without_group_commit']}/episode); "
        f"a segment per step: about {journal.steps}; {size:,} bytes\n"
        f"  restart before compaction: {before_s:.2f} s ({before_events} events replayed)\n"
        f"  compaction of {stats.get('archived', 0)} finished batches: {compact_s:.2f} s\n"
        f"  restart after compaction:  {after_s:.2f} s ({after_events} events replayed)\n"
        f"  every batch's status the same after compaction: {not differences} {' '.join(differences[:5])}"
    )
    return report
