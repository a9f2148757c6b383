"""The discrete-event simulation: a workload played on simulated CPUs and GPUs through the same
``farm.policy`` functions the live controller calls. No Ray, no clock: time is a number here.

Events are submissions, action ends (success or failure) and retry releases. After all events at
one instant are handled, ``scheduler.select`` runs once and what it picks starts.

Policies:

``farm``        ``select`` with everything: ranking (priority, slack, paced critical path), fair
                share, backend caps, budgets, retries with backoff and quarantine.
``fifo``        what bare Ray does: ready actions start in the order they became ready, wherever
                resources fit; no priorities, shares, caps or budgets (retries still apply).
``sequential``  today's one-machine tools: one episode at a time (its actions still run in
                parallel), in submission order, otherwise like fifo.
"""

from __future__ import annotations

import heapq
import random
import zlib
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from farm.policy import ranking
from farm.policy.ready import ReadyQueue
from farm.policy.retry import Quarantine, Retry, RetryPolicy
from farm.policy.scheduler import select
from farm.policy.types import NO_SPEND, BatchTerms, Budget, Capacity, RunState, Share, Spend, Task
from farm.simulate.result import Run, SimResult, lower_bound
from farm.simulate.workload import Node, Workload, episode_work

POLICIES = ("farm", "fifo", "sequential")

_SUBMIT, _END, _RELEASE = 0, 1, 2


@dataclass(frozen=True)
class Failures:
    """Failure injection. Each attempt fails with ``probability`` (``retryable`` or not), after a
    random part of its duration, on one of ``workers`` workers (attempts of one action rotate
    through them). Actions in ``poison`` fail every attempt, retryably: the quarantine case."""

    probability: float = 0.0
    retryable: bool = True
    workers: int = 8
    poison: frozenset[str] = frozenset()


class _Sim:
    def __init__(self, workload: Workload, gpus: dict[str | None, float], cpus: float, policy: str, seed: int,
                 shares: Iterable[Share] | None, caps: Mapping[str, int] | None, failures: Failures | None,
                 retry: RetryPolicy, pace: bool):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
        self.w, self.policy, self.retry = workload, policy, retry
        self.nodes: dict[str, Node] = workload.nodes
        self.total_gpus, self.total_cpus = dict(gpus), float(cpus)
        self.free_gpus, self.free_cpus = dict(gpus), float(cpus)
        self.farm = policy == "farm"
        self.shares = (tuple(shares) if shares is not None else ()) if self.farm else None
        self.caps = caps if self.farm else None
        # The baselines know nothing of budgets.
        self.batches: dict[str, BatchTerms] = dict(workload.batches) if self.farm else {
            b: replace(t, budget=Budget()) for b, t in workload.batches.items()}
        self.failures = failures or Failures()
        self.rng = random.Random(seed)

        self.children: dict[str, list[str]] = {}
        self.reveals: dict[str, list[str]] = {}
        self.waiting: dict[str, int] = {}
        self.ep_left: dict[tuple[str, str], int] = {}
        self.initial: dict[tuple[str, str], list[str]] = {}
        for key, node in self.nodes.items():
            self.waiting[key] = len(node.parents)
            for p in node.parents:
                self.children.setdefault(p, []).append(key)
            for r in node.revealed_by:
                self.reveals.setdefault(r, []).append(key)
            ep = (node.task.batch, node.task.episode)
            self.ep_left[ep] = self.ep_left.get(ep, 0) + 1
            if not node.revealed_by:
                self.initial.setdefault(ep, []).append(key)
        self.revealed: set[str] = set()
        self.ranks: dict[str, float] = {}
        self.paces = self._paces() if (self.farm and pace) else {}

        self.queue = ReadyQueue()
        self.events: list[tuple] = []
        self.seq = 0  # events
        self.ready_seq = 0  # fifo order
        self.now = 0.0
        self.use: dict[str, float] = {}
        self.running: dict[str, int] = {}
        self.spent: dict[str, Spend] = {}
        self.committed: dict[str, Spend] = {}
        self.by_studio: dict[str, Spend] = {}
        self.attempts: dict[str, int] = {}
        self.failed_on: dict[str, set[str]] = {}
        self.ep_done: dict[tuple[str, str], float] = {}
        self.ep_failed: dict[tuple[str, str], str] = {}
        self.budget_held: dict[str, str] = {}
        self.runs: list[Run] = []
        self.dispatches = self.retries = self.quarantines = self.give_ups = 0

        # sequential: episodes in submission order, released one at a time
        self.order = [(b, e) for b in sorted(self.batches, key=lambda b: (self.batches[b].submitted,
                                                                           self.batches[b].order))
                      for e in workload.episodes[b]]
        self.next_ep = 0
        self.active: tuple[str, str] | None = None
        self.submitted: set[str] = set()

    # -- set-up ---------------------------------------------------------------------------------

    def _paces(self) -> dict[tuple[str, str], ranking.Pace]:
        """Each episode's place in its batch's pipeline, from mean estimated work per episode."""
        gpu_total = sum(self.total_gpus.values())
        out = {}
        for b, (gpu_s, cpu_s) in episode_work(self.w).items():
            per_episode = max(gpu_s / gpu_total if gpu_total else 0.0, cpu_s / self.total_cpus if self.total_cpus else 0.0)
            for e, p in ranking.pace(self.w.episodes[b], per_episode, self.batches[b].submitted).items():
                out[(b, e)] = p
        return out

    # -- readiness ------------------------------------------------------------------------------

    def _needed(self, node: Node) -> bool:
        b = node.task.batch
        return any((b, e) not in self.ep_failed for e in node.serves)

    def _rank_new(self, keys: list[str]) -> None:
        durations = {k: self.nodes[k].task.est_seconds for k in keys}
        tails = {}
        for k in keys:
            tail = self.nodes[k].tail_s
            for c in self.children.get(k, ()):
                if c in self.ranks and c not in durations:
                    tail = max(tail, self.ranks[c])
            if tail:
                tails[k] = tail
        self.ranks.update(ranking.upward_ranks(durations, self.children, tails))

    def _reveal(self, keys: list[str]) -> None:
        new = [k for k in keys if k not in self.revealed]
        if not new:
            return
        self.revealed.update(new)
        if self.farm:
            self._rank_new(new)
        for k in new:
            if self.waiting[k] == 0:
                self._ready(k)

    def _ready(self, key: str) -> None:
        node = self.nodes[key]
        if not self._needed(node):
            return
        task = node.task
        if self.farm:
            pace = self.paces.get((task.batch, task.episode), ranking.NO_PACE)
            order = ranking.sort_key(task, self.batches[task.batch], self.ranks[key], pace)
        else:
            self.ready_seq += 1
            order = (self.ready_seq,)
        self.queue.push(task, order)

    def _submit(self, batch: str) -> None:
        self.submitted.add(batch)
        if self.policy == "sequential":
            self._release_next()
        else:
            for e in self.w.episodes[batch]:
                self._reveal(self.initial.get((batch, e), []))

    def _release_next(self) -> None:
        while self.active is None and self.next_ep < len(self.order):
            ep = self.order[self.next_ep]
            if ep[0] not in self.submitted:
                return
            self.next_ep += 1
            if ep in self.ep_failed or ep in self.ep_done:
                continue
            self.active = ep
            self._reveal(self.initial.get(ep, []))

    def _episode_over(self, ep: tuple[str, str]) -> None:
        if self.active == ep:
            self.active = None
            self._release_next()

    # -- running ----------------------------------------------------------------------------------

    def _push_event(self, t: float, kind: int, *data) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, data))

    def _start(self, task: Task, kind: str | None) -> None:
        node = self.nodes[task.key]
        self.queue.discard(task.key)
        attempt = self.attempts.get(task.key, 0) + 1
        f = self.failures
        fail = task.key in f.poison or (f.probability > 0 and self.rng.random() < f.probability)
        duration = node.actual_s * (self.rng.uniform(0.1, 1.0) if fail else 1.0)
        worker = f"w{(zlib.crc32(task.key.encode()) + attempt) % max(1, f.workers)}"
        self.free_cpus -= task.cpus
        if task.gpus:
            self.free_gpus[kind] -= task.gpus
            self.use[task.studio] = self.use.get(task.studio, 0.0) + task.gpus
        self.running[task.backend] = self.running.get(task.backend, 0) + 1
        self.committed[task.batch] = self.committed.get(task.batch, NO_SPEND) + task.estimate
        self.dispatches += 1
        self._push_event(self.now + duration, _END, task, kind, self.now, fail, worker,
                         duration / node.actual_s if node.actual_s else 1.0)

    def _end(self, task: Task, kind, started: float, fail: bool, worker: str, fraction: float) -> None:
        node = self.nodes[task.key]
        self.free_cpus += task.cpus
        if task.gpus:
            self.free_gpus[kind] += task.gpus
            self.use[task.studio] -= task.gpus
        self.running[task.backend] -= 1
        self.committed[task.batch] = self.committed[task.batch] - task.estimate
        gpu_s = (self.now - started) * task.gpus
        tokens = round(node.actual_tokens * fraction)
        cost = Spend(tokens, gpu_s, self.w.prices.money(tokens, gpu_s))
        self.spent[task.batch] = self.spent.get(task.batch, NO_SPEND) + cost
        self.by_studio[task.studio] = self.by_studio.get(task.studio, NO_SPEND) + cost
        self.runs.append(Run(task.key, task.batch, task.studio, task.stage, started, self.now, task.gpus,
                             task.cpus, worker, not fail))
        if not fail:
            self._complete(task)
            return
        n = self.attempts[task.key] = self.attempts.get(task.key, 0) + 1
        workers = self.failed_on.setdefault(task.key, set())
        workers.add(worker)
        retryable = task.key in self.failures.poison or self.failures.retryable
        decision = self.retry.decide(task.key, n, retryable, workers)
        if isinstance(decision, Retry):
            self.retries += 1
            self._push_event(self.now + decision.not_before_delay_s, _RELEASE, task.key)
        else:
            if isinstance(decision, Quarantine):
                self.quarantines += 1
            else:
                self.give_ups += 1
            self._fail(task, decision.reason)

    def _complete(self, task: Task) -> None:
        key = task.key
        ep = (task.batch, task.episode)
        self.ep_left[ep] -= 1
        if self.ep_left[ep] == 0 and ep not in self.ep_failed:
            self.ep_done[ep] = self.now
            self._episode_over(ep)
        for child in self.children.get(key, ()):
            self.waiting[child] -= 1
            if self.waiting[child] == 0 and child in self.revealed:
                self._ready(child)
        revealed = self.reveals.get(key)
        if revealed:
            self._reveal(revealed)

    def _fail(self, task: Task, reason: str) -> None:
        node = self.nodes[task.key]
        message = f"{task.stage} {task.key}: {reason}"
        newly = [(task.batch, e) for e in node.serves
                 if (task.batch, e) not in self.ep_failed and (task.batch, e) not in self.ep_done]
        for ep in newly:
            self.ep_failed[ep] = message
        # Cancel ready actions no surviving episode needs.
        for queued in [t for t in self.queue if not self._needed(self.nodes[t.key])]:
            self.queue.discard(queued.key)
        for ep in newly:
            self._episode_over(ep)

    def _dispatch(self) -> None:
        if not len(self.queue):
            return
        state = RunState(self.use, self.running, self.spent, self.committed)
        selection = select(self.queue, None, self.batches, Capacity(self.free_cpus, self.free_gpus), state,
                           self.shares, self.caps)
        for batch, reason in selection.held.items():
            self.budget_held.setdefault(batch, reason)
        for task in selection.dispatch:
            self._start(task, selection.placed.get(task.key))

    def run(self) -> SimResult:
        for b, terms in self.batches.items():
            self._push_event(terms.submitted, _SUBMIT, b)
        t0 = min(t.submitted for t in self.batches.values())
        last = t0
        events = self.events
        while events:
            self.now = events[0][0]
            while events and events[0][0] == self.now:
                _, _, kind, data = heapq.heappop(events)
                if kind == _END:
                    self._end(*data)
                    last = self.now
                elif kind == _RELEASE:
                    key = data[0]
                    if self._needed(self.nodes[key]):
                        self._ready(key)
                else:
                    self._submit(*data)
            self._dispatch()
        return self._result(t0, last)

    def _result(self, t0: float, last: float) -> SimResult:
        makespan = last - t0
        gpu_total = sum(self.total_gpus.values())
        gpu_used = sum((r.end - r.start) * r.gpus for r in self.runs)
        unfinished = {}
        for b, eps in self.w.episodes.items():
            for e in eps:
                if (b, e) not in self.ep_done and (b, e) not in self.ep_failed:
                    unfinished[f"{b}/{e}"] = (f"budget-exhausted: {self.budget_held[b]}" if b in self.budget_held
                                              else "never started: no capacity fits its actions")
        finished, met = {}, {}
        for b, terms in self.batches.items():
            eps = self.w.episodes[b]
            complete = all((b, e) in self.ep_done for e in eps)
            end = max((self.ep_done[(b, e)] for e in eps if (b, e) in self.ep_done), default=None)
            finished[b] = end - t0 if complete and end is not None else None
            if terms.deadline is not None:
                met[b] = complete and end is not None and end <= terms.deadline
        total = sum(self.spent.values(), NO_SPEND)
        return SimResult(
            policy=self.policy, episodes=self.w.episode_count, gpus=gpu_total, cpus=self.total_cpus,
            makespan_s=makespan, lower_bound_s=lower_bound(self.w, self.total_gpus, self.total_cpus),
            gpu_busy=gpu_used / (gpu_total * makespan) if gpu_total and makespan > 0 else 0.0,
            deadline_met=met, batch_finished=finished, spend=total,
            spend_by_batch=dict(sorted(self.spent.items())), spend_by_studio=dict(sorted(self.by_studio.items())),
            gpu_seconds_by_studio={s: v.gpu_seconds for s, v in sorted(self.by_studio.items())},
            episodes_done=len(self.ep_done),
            episodes_failed={f"{b}/{e}": r for (b, e), r in sorted(self.ep_failed.items())},
            episodes_unfinished=unfinished, budget_held=dict(sorted(self.budget_held.items())),
            dispatches=self.dispatches, retries=self.retries, quarantines=self.quarantines,
            give_ups=self.give_ups, runs=self.runs,
        )


def simulate(workload: Workload, gpus: int | float | Mapping[str | None, float], cpus: float = 64,
             policy: str = "farm", seed: int = 0, shares: Iterable[Share] | None = None,
             caps: Mapping[str, int] | None = None, failures: Failures | None = None,
             retry: RetryPolicy = RetryPolicy(), pace: bool = True) -> SimResult:
    """Play ``workload`` on ``gpus`` GPUs (a count, or GPUs per accelerator kind) and ``cpus`` CPUs
    under ``policy`` ("farm", "fifo" or "sequential"); deadlines and budgets come from the batches'
    terms. ``seed`` drives failure injection only (the workload has its own). ``shares`` default to
    equal weights; ``pace=False`` ranks by each episode's own critical path alone (an ablation).

    Same inputs, same result.
    """
    capacity = {None: float(gpus)} if isinstance(gpus, (int, float)) else {k: float(v) for k, v in gpus.items()}
    return _Sim(workload, capacity, cpus, policy, seed, shares, caps, failures, retry, pace).run()
