"""What a simulation reports, and the lower bound it is judged against."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from farm.policy.types import Spend
from farm.simulate.runtime import Run, true_seconds
from farm.simulate.workload import Workload


@dataclass
class SimResult:
    policy: str
    episodes: int
    gpus: float
    cpus: float
    makespan_s: float
    lower_bound_s: float
    gpu_busy: float
    deadline_met: dict[str, bool]  # per batch with a deadline: every episode done by then
    batch_finished: dict[str, float | None]  # seconds after the start; None: not every episode done
    spend: Spend
    spend_by_batch: dict[str, Spend]
    spend_by_studio: dict[str, Spend]
    gpu_seconds_by_studio: dict[str, float]
    episodes_done: int
    episodes_failed: dict[str, str]  # "batch/series/episode" -> reason
    episodes_unfinished: dict[str, str]  # "batch/series/episode" -> why it never finished (budget)
    budget_held: dict[str, str]  # batch -> the first reason its budget held it
    dispatches: int
    retries: int
    quarantines: int
    give_ups: int
    actions: int = 0
    events: int = 0  # journaled by the controller
    runs: list[Run] = field(default_factory=list, repr=False)

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s > 0 else 1.0

    @property
    def all_deadlines_met(self) -> bool:
        return all(self.deadline_met.values())

    def usage(self, t0: float, t1: float) -> dict[str, float]:
        """GPU-seconds each studio used between ``t0`` and ``t1`` (seconds after the start)."""
        out: dict[str, float] = {}
        for r in self.runs:
            overlap = min(r.end, t1) - max(r.start, t0)
            if overlap > 0 and r.gpus > 0:
                out[r.studio] = out.get(r.studio, 0.0) + overlap * r.gpus
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "episodes": self.episodes,
            "gpus": self.gpus,
            "cpus": self.cpus,
            "makespan_s": round(self.makespan_s, 3),
            "lower_bound_s": round(self.lower_bound_s, 3),
            "ratio": round(self.ratio, 4),
            "gpu_busy": round(self.gpu_busy, 4),
            "deadline_met": {"all": self.all_deadlines_met, "by_batch": self.deadline_met},
            "batch_finished_s": {b: None if t is None else round(t, 3) for b, t in self.batch_finished.items()},
            "spend": self.spend.to_json(),
            "spend_by_batch": {b: s.to_json() for b, s in self.spend_by_batch.items()},
            "spend_by_studio": {s: v.to_json() for s, v in self.spend_by_studio.items()},
            "episodes_done": self.episodes_done,
            "episodes_failed": self.episodes_failed,
            "episodes_unfinished": self.episodes_unfinished,
            "budget_held": self.budget_held,
            "dispatches": self.dispatches,
            "retries": self.retries,
            "quarantines": self.quarantines,
            "give_ups": self.give_ups,
            "actions": self.actions,
            "events": self.events,
        }


def lower_bound(workload: Workload, gpus: dict[str | None, float], cpus: float) -> float:
    """No schedule can beat this (seconds after the first submission): the larger of the critical
    path with true durations and unlimited machines, and for each resource its total true work over
    its capacity (GPUs overall, GPUs of each named kind for the actions pinned to it, CPUs).

    The graph is the planner's, with what it learns as it goes: an action waits for its inputs, for
    its batch's submission, for its episode's script (any one of the series' scripts, for a shared
    character sheet), and a clip for its shot's lines (it is planned once they are voiced). Ignores
    failed attempts.
    """
    graph = workload.graph()
    profiles = workload.profiles()
    seconds = {key: true_seconds(workload, action) for key, action in graph.actions.items()}
    path = critical_path(workload, seconds)
    gpu_work: dict[str | None, float] = {}
    cpu_work = 0.0
    for key, action in graph.actions.items():
        profile = profiles[(action.stage, action.backend)]
        if profile.gpus:
            gpu_work[profile.accelerator] = gpu_work.get(profile.accelerator, 0.0) + seconds[key] * profile.gpus
        cpu_work += seconds[key] * profile.cpus
    total = sum(gpu_work.values())
    bounds = [
        path,
        total / max(sum(gpus.values()), 1e-12) if total else 0.0,
        cpu_work / cpus if cpu_work and cpus > 0 else 0.0,
    ]
    for kind, work in gpu_work.items():
        if kind is not None and work and gpus.get(kind):
            bounds.append(work / gpus[kind])
    return max(bounds)


def critical_path(
    workload: Workload,
    seconds: Mapping[str, float],
    earliest: Mapping[str, float] | None = None,
    keys: Collection[str] | None = None,
) -> float:
    """The longest path through the planner's graph (see ``lower_bound``) with unlimited machines,
    seconds after the first submission: each action takes ``seconds[key]`` and starts no sooner than
    ``earliest[key]`` seconds after the first submission (e.g. its model's load). ``keys``: only these
    actions (their inputs outside it count as done from the start)."""
    graph = workload.graph()
    t0 = min(b.submitted for b in workload.batches.values())
    submitted = {b.id: b.submitted for b in workload.batches.values()}
    chosen = set(graph.actions) if keys is None else set(keys) & set(graph.actions)
    parents: dict[str, set[str]] = {}
    waiting: dict[str, int] = {}
    dependants: dict[str, list[str]] = {}
    for key in chosen:
        action = graph.actions[key]
        parents[key] = ({r.key for r in action.inputs.values()} | set(graph.lines_of.get(key, ()))) & chosen
        revealers = graph.revealed_by.get(key, set()) & chosen
        waiting[key] = len(parents[key]) + (1 if revealers else 0)
        for p in parents[key]:
            dependants.setdefault(p, []).append(key)
        for r in revealers:
            dependants.setdefault(r, []).append("?" + key)  # any one revealer suffices
    floor = earliest or {}
    ready_at = {k: max(submitted[graph.batch_of[k]], t0 + floor.get(k, 0.0)) for k in chosen}
    heap = [(ready_at[k] + seconds[k], k) for k, w in waiting.items() if w == 0]
    heapq.heapify(heap)
    revealed: set[str] = set()
    finish: dict[str, float] = {}
    while heap:  # in order of finish time, so the first revealer to finish is the one that reveals
        end, key = heapq.heappop(heap)
        finish[key] = end
        for d in dependants.get(key, ()):
            if d[0] == "?":
                d = d[1:]
                if d in revealed:
                    continue
                revealed.add(d)
            ready_at[d] = max(ready_at[d], end)
            waiting[d] -= 1
            if waiting[d] == 0:
                heapq.heappush(heap, (ready_at[d] + seconds[d], d))
    return max(finish.values()) - t0 if finish else 0.0
