"""The controller's core: journal events in, state and commands out. Pure: no Ray, no I/O, no clock.

The service (farm.service.host) feeds it events in journal order and carries out the commands it returns;
replaying the journal into a fresh Controller rebuilds the same state (DESIGN.md, invariant 5).

Three kinds of calls:

* ``apply(event) -> [Command]``: take an event (already journaled) into the state.
* ``on_result(...)`` / ``on_failure(...)`` / ``decide(now, capacity)``: propose the events that
  follow from a worker's answer or from the clock (dispatches, retries, quarantines, budget holds,
  finished batches). The service journals them, then applies them.
* read-only views for status: ``batch_status``, ``projected_finish``.
"""

from __future__ import annotations

import heapq
from typing import Any, Iterable, Mapping

from farm.core.state import (ActionState, BatchState, Cancel, Command, Deliver, Dispatch, EpisodeState, Estimator,
                                   Lookup, Notify, Profile)
from farm.core.plan import STAGES, Action, BackendChoice, EpisodeJob, plan_episode
from farm.policy import (BatchTerms, Budget, Capacity, GiveUp, Prices, Quarantine, ReadyQueue, RetryPolicy, RunState, Share,
                         Spend, Task, select, upward_ranks)
from farm.policy.ranking import NO_PACE, pace, sort_key
from farm.core.script import Script
from farm.core.spec import PRIORITY_CLASSES, Episode, Series

# At most this many GPU bundles are asked of an autoscaler at once (see Controller.wanted_capacity).
MAX_CAPACITY_REQUEST = 512

# Events that change which live batch and episode a pending action counts for (its priority, deadline,
# budget) or whether any still needs it. (A delivered episode has no pending actions.)
_REORDERING = frozenset({"batch.submitted", "batch.cancelled", "batch.finished", "episode.failed"})

# Typical seconds still to come after an action whose dependants are not planned yet (a script's
# shots, a line's clip): keeps the critical-path rank honest before the graph has grown.
TAIL_SECONDS = {"script": 60.0, "sheet": 40.0, "keyframe": 30.0, "line": 30.0, "clip": 5.0, "mux": 2.0}


class Controller:
    def __init__(self, estimator: Estimator, profiles: Mapping[tuple[str, str], Profile], *,
                 prices: Prices = Prices(), shares: Iterable[Share] = (), caps: Mapping[str, int] | None = None,
                 retry: RetryPolicy = RetryPolicy()):
        self.estimator, self.profiles, self.prices = estimator, dict(profiles), prices
        self.shares, self.caps, self.retry = list(shares), dict(caps or {}), retry
        self.batches: dict[str, BatchState] = {}
        self.episodes: dict[tuple[str, str], EpisodeState] = {}
        self.actions: dict[str, ActionState] = {}
        self.last_seq = -1
        self._ranks: dict[str, float] | None = None
        self._ranks_at = float("-inf")
        self._graph_changed = True
        # kept up to date as events arrive, so a decision costs O(ready + running), not O(graph)
        self._dependants: dict[str, list[str]] = {}
        self._ready: set[str] = set()  # pending, every input done
        self._running: set[str] = set()
        # The ready actions the scheduler may start, in its order (farm.policy.ready), so a decision
        # costs O((dispatched + lanes) log n) however many wait: synced in ``decide`` from the keys
        # whose readiness changed, rebuilt when the order itself changes (new ranks, a batch or an
        # episode starting or ending, which changes which batch an action counts for).
        self._queue = ReadyQueue()
        self._queue_ranks: dict[str, float] | None = None  # the ranks the queue was ordered with
        self._queue_stale = True
        self._changed: set[str] = set()  # keys whose readiness changed since the last sync
        self._backoff: list[tuple[float, str]] = []  # (not_before, key): ready, but waiting out a retry
        self._tasks: dict[str, Task] = {}  # what the scheduler sees of an action, until the batches change
        # after each decision: (cpus, gpus, accelerator) of every GPU action running or waiting for room,
        # so an autoscaler can grow GPU groups (even from zero) to fit the queue
        self.wanted_capacity: list[tuple[float, float, str | None]] = []
        self._paces: dict[str, dict] = {}  # batch -> {(batch, episode): Pace}, fixed at its first decision
        self._estimates: dict[str, tuple[float, int, float]] = {}

    # -- applying events ------------------------------------------------------------------------
    def apply(self, event) -> list[Command]:
        """Take one journaled event into the state; return what the service must do about it."""
        self.last_seq = event.seq
        if event.type in _REORDERING:
            self._queue_stale = True
            self._tasks.clear()
        handler = getattr(self, "_on_" + event.type.replace(".", "_"))
        return handler(event) or []

    def _on_batch_submitted(self, e) -> list[Command]:
        d = e.data
        budget = Budget(**d.get("budget", {}))
        terms = BatchTerms(id=e.batch, studio=d["studio"], priority=PRIORITY_CLASSES[d["priority"]],
                           deadline=d.get("deadline"), budget=budget, submitted=e.at, order=len(self.batches))
        defaults = {s: BackendChoice.from_json(d["backends"][s]) for s in STAGES}
        batch = BatchState(terms=terms, name=d.get("name"), episodes=[], webhook=d.get("webhook"))
        self.batches[e.batch] = batch
        fresh: list[str] = []
        for item in d["episodes"]:
            series, episode = Series.model_validate(item["series"]), Episode.model_validate(item["episode"])
            eid = f"{series.id}/{episode.slug}"
            chosen = item.get("backends")  # per episode (its series' and the batch's choice)
            backends = {s: BackendChoice.from_json(chosen[s]) for s in STAGES} if chosen else defaults
            job = EpisodeJob(d["studio"], d["namespace"], series, episode, backends)
            ep = self.episodes[(e.batch, eid)] = EpisodeState(id=eid, batch=e.batch, job=job)
            batch.episodes.append(eid)
            fresh += self._replan(ep)
        for state in self.reused(e.batch):  # work already done for other batches is this batch's cache hit
            batch.saved = batch.saved + self._spend(state.manifest)
        for key in sorted({k for eid in batch.episodes for k in self.episodes[(e.batch, eid)].keys}):
            state = self.actions[key]
            if state.status == "quarantined":
                # quarantined for an earlier batch: a new batch gives it a fresh start
                state.attempts, state.failed_workers, state.not_before = 0, set(), 0.0
                self._set_status(key, "pending")
        commands: list[Command] = [Lookup(tuple(fresh))] if fresh else []
        return commands + [c for eid in batch.episodes for c in self._progress(self.episodes[(e.batch, eid)])]

    def reused(self, batch_id: str) -> list[ActionState]:
        """Actions of the batch this controller had already finished when the batch arrived
        (call it as the batch is submitted; later it also returns the batch's own work)."""
        keys = {k for eid in self.batches[batch_id].episodes for k in self.episodes[(batch_id, eid)].keys}
        return [self.actions[k] for k in sorted(keys)
                if self.actions[k].status == "done" and self.actions[k].manifest is not None]

    def _progress(self, ep: EpisodeState) -> list[Command]:
        """Deliver an episode whose final action is done."""
        if ep.status == "running" and ep.final_key is not None and self.actions[ep.final_key].status == "done":
            ep.status = "delivering"
            return [Deliver(ep.batch, ep.id)]
        return []

    def _spend(self, manifest: dict) -> Spend:
        usage = manifest.get("usage", {})
        tokens = usage.get("tokens_in", 0) + usage.get("tokens_out", 0)
        gpu_seconds = usage.get("gpu_seconds", 0.0)
        return Spend(tokens=tokens, gpu_seconds=gpu_seconds, money=self.prices.money(tokens, gpu_seconds))

    def _replan(self, ep: EpisodeState) -> list[str]:
        """Plan ``ep`` again with what is known; return keys the controller has never seen."""
        plan = plan_episode(ep.job, ep.script, ep.line_samples)
        fresh = []
        for action in plan.actions:
            state = self.actions.get(action.key)
            if state is None:
                state = self.actions[action.key] = ActionState(action)
                fresh.append(action.key)
                for ref in action.inputs.values():
                    self._dependants.setdefault(ref.key, []).append(action.key)
                self._check_ready(action.key)
            elif (ep.batch, ep.id) not in state.episodes:  # shared with another episode now: it may
                self._tasks.pop(action.key, None)           # count for another batch
                self._queue.discard(action.key)
                self._changed.add(action.key)
            state.episodes.add((ep.batch, ep.id))
        ep.keys = [a.key for a in plan.actions]
        ep.final_key = plan.final_key
        self._graph_changed = bool(fresh) or self._graph_changed
        # facts already known for actions shared with other episodes
        learned = [k for k in ep.keys if self.actions[k].status == "done" and self._teach(ep, self.actions[k])]
        return fresh + (self._replan(ep) if learned else [])

    def _check_ready(self, key: str) -> None:
        state = self.actions[key]
        self._changed.add(key)
        if state.status == "pending" and all(self.actions[r.key].status == "done" for r in state.action.inputs.values()):
            self._ready.add(key)
        else:
            self._ready.discard(key)

    def _set_status(self, key: str, status: str) -> None:
        self.actions[key].status = status
        (self._running.add if status == "running" else self._running.discard)(key)
        self._check_ready(key)
        if status == "done":
            for dependant in self._dependants.get(key, ()):
                self._check_ready(dependant)

    def _teach(self, ep: EpisodeState, state: ActionState) -> bool:
        """Give ``ep`` the facts a finished action carries; True if they are new to it."""
        action, facts = state.action, (state.manifest or {}).get("facts", {})
        if action.op == "line" and action.key not in ep.line_samples:
            ep.line_samples[action.key] = int(state.manifest["meta"]["samples"])
            return True
        if action.op == "script" and ep.script is None and ep.job.episode.script is None:
            ep.script = Script.model_validate(facts["script"])
            return True
        return False

    def _finished_action(self, e, cached: bool) -> list[Command]:
        state = self.actions[e.key]
        state.manifest, state.cached = e.data, cached
        self._set_status(e.key, "done")
        spend = self._spend(e.data)
        commands: list[Command] = []
        if cached:
            for batch_id in {b for b, _ in state.episodes}:
                self.batches[batch_id].saved = self.batches[batch_id].saved + spend
        elif state.charged_to in self.batches:
            self.batches[state.charged_to].spent = self.batches[state.charged_to].spent + spend
        fresh: list[str] = []
        for key in sorted(state.episodes):
            ep = self.episodes[key]
            if ep.status != "running":
                continue
            if self._teach(ep, state):
                fresh += self._replan(ep)
            commands += self._progress(ep)
        if fresh:
            commands.insert(0, Lookup(tuple(fresh)))
        return commands

    def _on_action_cached(self, e):
        return self._finished_action(e, cached=True)

    def _on_action_completed(self, e):
        return self._finished_action(e, cached=False)

    def _on_action_dispatched(self, e):
        state = self.actions[e.key]
        state.attempts, state.charged_to = state.attempts + 1, e.batch
        self._set_status(e.key, "running")
        return [Dispatch(e.key, e.batch)]

    def _on_action_failed(self, e):
        state = self.actions[e.key]
        self._set_status(e.key, "pending")
        if e.data.get("worker"):
            state.failed_workers.add(e.data["worker"])

    def _on_action_retry(self, e):
        self.actions[e.key].not_before = e.data["not_before"]
        self._changed.add(e.key)

    def _on_action_quarantined(self, e):
        self._set_status(e.key, "quarantined")

    def _on_episode_failed(self, e) -> list[Command]:
        ep = self.episodes[(e.batch, e.data["episode"])]
        ep.status, ep.reason = "failed", e.data["reason"]
        return [Notify(e.batch, "episode.failed", {"episode": ep.id, "reason": ep.reason})]

    def _on_episode_delivered(self, e) -> list[Command]:
        ep = self.episodes[(e.batch, e.data["episode"])]
        ep.status, ep.deliverables = "delivered", e.data["deliverables"]
        return [Notify(e.batch, "episode.delivered", {"episode": ep.id, "deliverables": ep.deliverables})]

    def _on_budget_exhausted(self, e):
        self.batches[e.batch].held = e.data["reason"]

    def _on_batch_finished(self, e) -> list[Command]:
        batch = self.batches[e.batch]
        batch.status, batch.finished_at = "finished", e.at
        return [Notify(e.batch, "batch.finished", self.batch_status(e.batch, e.at))]

    def _on_batch_cancelled(self, e) -> list[Command]:
        batch = self.batches[e.batch]
        batch.status, batch.finished_at = "cancelled", e.at
        running = [k for k, s in self.actions.items() if s.status == "running" and not self._wanted(s, e.batch)]
        return [Cancel(tuple(running))] if running else []

    def _on_webhook_delivered(self, e):
        return None

    _on_webhook_failed = _on_webhook_delivered

    # -- proposing events -----------------------------------------------------------------------
    def _wanted(self, state: ActionState, ignore: str | None = None) -> bool:
        """Does any live episode of a live batch (other than ``ignore``) still need this action?"""
        return any(b != ignore and self.batches[b].status == "running" and self.episodes[(b, ep)].status == "running"
                   for b, ep in state.episodes)

    def on_result(self, key: str, manifest: dict) -> list[dict]:
        return [{"type": "action.completed", "batch": self.actions[key].charged_to, "key": key, "data": manifest}]

    def on_failure(self, key: str, error: str, retryable: bool, worker: str | None, now: float,
                   retry_after: float | None = None) -> list[dict]:
        """The events that follow a failed attempt: the failure, then a retry, a quarantine or a give-up.
        A retry waits for the policy's backoff, or longer when the provider asked (``retry_after``)."""
        state = self.actions[key]
        batch = state.charged_to
        events = [{"type": "action.failed", "batch": batch, "key": key,
                   "data": {"error": error, "retryable": retryable, "worker": worker, "attempt": state.attempts}}]
        workers = state.failed_workers | ({worker} if worker else set())
        decision = self.retry.decide(key, state.attempts, retryable, workers)
        if isinstance(decision, (Quarantine, GiveUp)):
            if isinstance(decision, Quarantine):
                events.append({"type": "action.quarantined", "batch": batch, "key": key, "data": {"reason": decision.reason}})
            reason = f"{state.action.label}: {decision.reason}: {error}"
            for b, ep in sorted(state.episodes):
                if self.episodes[(b, ep)].status == "running":
                    events.append({"type": "episode.failed", "batch": b, "data": {"episode": ep, "reason": reason}})
        else:
            delay = max(decision.not_before_delay_s, retry_after or 0.0)
            events.append({"type": "action.retry", "batch": batch, "key": key,
                           "data": {"not_before": now + delay, "attempt": state.attempts}})
        return events

    def delivered(self, batch: str, episode: str, deliverables: dict[str, str]) -> list[dict]:
        return [{"type": "episode.delivered", "batch": batch, "data": {"episode": episode, "deliverables": deliverables}}]

    def ranks(self, now: float | None = None) -> dict[str, float]:
        """Upward ranks (remaining critical path) of every known action.

        Recomputed over the whole graph when it has grown, but at most once a second when ``now``
        is given: between refreshes a new action is ranked from its own estimate and tail
        (``_local_rank``), which is all a ranking heuristic needs while a big batch unfolds.
        """
        stale = self._ranks is None or (self._graph_changed and (now is None or now - self._ranks_at >= 1.0))
        if stale:
            durations, children = {}, self._dependants
            for key, state in self.actions.items():
                own = 0.0 if state.status == "done" else self._estimate(state.action)[0]
                tail = TAIL_SECONDS.get(state.action.op, 0.0) if key not in children else 0.0
                durations[key] = own + tail
            self._ranks = upward_ranks(durations, children)
            self._ranks_at, self._graph_changed = (now if now is not None else float("-inf")), False
        return self._ranks

    def _local_rank(self, key: str) -> float:
        state = self.actions[key]
        return self._estimate(state.action)[0] + TAIL_SECONDS.get(state.action.op, 0.0)

    def _estimate(self, action: Action) -> tuple[float, int, float]:
        """The backend's estimate, once per key (a key fixes every input of the estimate)."""
        est = self._estimates.get(action.key)
        if est is None:
            est = self._estimates[action.key] = self.estimator(action)
        return est

    def _task(self, state: ActionState) -> Task:
        task = self._tasks.get(state.action.key)
        if task is None:
            task = self._tasks[state.action.key] = self._make_task(state)
        return task

    def _make_task(self, state: ActionState) -> Task:
        a = state.action
        seconds, tokens, gpu_seconds = self._estimate(a)
        profile = self.profiles.get((a.stage, a.backend), Profile())
        live = sorted((self.batches[b].terms.priority, -self.batches[b].terms.order, b, ep)
                      for b, ep in state.episodes
                      if self.batches[b].status == "running" and self.episodes[(b, ep)].status == "running")
        _, _, batch, episode = live[-1]
        return Task(key=a.key, batch=batch, studio=self.batches[batch].terms.studio, episode=episode,
                    stage=a.stage, backend=a.backend, cpus=profile.cpus, gpus=profile.gpus,
                    accelerator=profile.accelerator, est_seconds=seconds, est_tokens=tokens,
                    est_gpu_seconds=gpu_seconds, est_money=self.prices.money(tokens, gpu_seconds))

    def running(self) -> list[ActionState]:
        return [self.actions[k] for k in sorted(self._running)]

    def ready(self, now: float) -> list[ActionState]:
        """Pending actions whose inputs are all done, past any retry backoff, still wanted."""
        states = (self.actions[k] for k in sorted(self._ready))
        return [s for s in states if s.not_before <= now and self._wanted(s)]

    def queued(self) -> list[Task]:
        """The actions waiting for room: ``ready`` as of the last decision, less what has started since."""
        return [t for t in self._queue if self.actions[t.key].status == "pending"]

    def decide(self, now: float, capacity: Capacity) -> list[dict]:
        """Events the clock and free capacity call for: dispatches, budget holds, finished batches."""
        events: list[dict] = []
        running = self.running()
        run_tasks = [self._task(s) for s in running if self._wanted(s)]
        gpus_by_studio: dict[str, float] = {}
        by_backend: dict[str, int] = {}
        committed: dict[str, Spend] = {}
        for t in run_tasks:
            gpus_by_studio[t.studio] = gpus_by_studio.get(t.studio, 0.0) + t.gpus
            by_backend[t.backend] = by_backend.get(t.backend, 0) + 1
            committed[t.batch] = committed.get(t.batch, Spend()) + Spend(t.est_tokens, t.est_gpu_seconds, t.est_money)
        state = RunState(gpus_by_studio=gpus_by_studio, running_by_backend=by_backend,
                         spent_by_batch={b: s.spent for b, s in self.batches.items()}, committed_by_batch=committed)
        terms = {b: s.terms for b, s in self.batches.items()}
        total_gpus = sum(capacity.gpus_by_accelerator.values()) + sum(t.gpus for t in run_tasks)
        total_cpus = capacity.cpus + sum(t.cpus for t in run_tasks if not t.gpus)
        paces = {k: v for b in self.batches if self.batches[b].status == "running"
                 for k, v in self._pace(b, total_gpus, total_cpus).items()}
        self._sync_queue(now, self.ranks(now), paces)
        selection = select(self._queue, None, terms, capacity, state, self.shares, self.caps)
        placed = {t.key for t in selection.dispatch}
        shapes = [t for t in [*run_tasks, *selection.dispatch] if t.gpus > 0]
        shapes += self._waiting_gpu_tasks(placed, MAX_CAPACITY_REQUEST - len(shapes))
        self.wanted_capacity = [(t.cpus, t.gpus, t.accelerator) for t in shapes][:MAX_CAPACITY_REQUEST]
        for task in selection.dispatch:
            events.append({"type": "action.dispatched", "batch": task.batch, "key": task.key,
                           "data": {"label": self.actions[task.key].action.label, "episode": task.episode}})
        for batch, reason in sorted(selection.held.items()):
            if self.batches[batch].held != reason:
                events.append({"type": "budget.exhausted", "batch": batch, "data": {"reason": reason}})
        for batch_id, batch in self.batches.items():
            if batch.status == "running" and all(
                    self.episodes[(batch_id, ep)].status in ("delivered", "failed") for ep in batch.episodes):
                events.append({"type": "batch.finished", "batch": batch_id, "data": {}})
        return events

    def _sync_queue(self, now: float, ranks: Mapping[str, float], paces: Mapping[tuple[str, str], Any]) -> None:
        """Bring the ready queue up to date: exactly the wanted ready actions past their backoff, each
        ordered by ``ranking.sort_key`` (a key not ranked yet by its own estimate and tail)."""
        if self._queue_stale or ranks is not self._queue_ranks:
            self._queue, self._backoff = ReadyQueue(), []
            self._queue_stale, self._queue_ranks = False, ranks
            keys = set(self._ready)
        else:
            keys = self._changed
            while self._backoff and self._backoff[0][0] <= now:
                keys.add(heapq.heappop(self._backoff)[1])
        self._changed = set()
        for key in sorted(keys):
            state = self.actions[key]
            if key not in self._ready or not self._wanted(state):
                self._queue.discard(key)
            elif state.not_before > now:
                self._queue.discard(key)
                heapq.heappush(self._backoff, (state.not_before, key))
            elif key not in self._queue:
                task = self._task(state)
                rank = ranks[key] if key in ranks else self._local_rank(key)
                self._queue.push(task, sort_key(task, self.batches[task.batch].terms, rank,
                                                paces.get((task.batch, task.episode), NO_PACE)))

    def _waiting_gpu_tasks(self, placed: set[str], limit: int) -> list[Task]:
        """Up to ``limit`` queued GPU actions not placed this round, most urgent first."""
        out: list[Task] = []
        if limit <= 0:
            return out
        walk = self._queue.walk()
        try:
            for task in walk:
                if task.gpus <= 0:
                    walk.refuse()  # a CPU lane: skip all of it
                elif task.key not in placed:
                    out.append(task)
                    if len(out) >= limit:
                        break
        finally:
            walk.close()
        return out

    def _pace(self, batch_id: str, total_gpus: float, total_cpus: float) -> dict:
        """Each episode's place in its batch's pipeline (farm.policy.ranking.pace), so episodes finish
        steadily in submission order instead of all together at the end."""
        if batch_id not in self._paces:
            batch = self.batches[batch_id]
            work = {}
            for eid in batch.episodes:
                ep = self.episodes[(batch_id, eid)]
                seconds = [self._estimate(self.actions[k].action) for k in ep.keys]
                gpu = sum(g for _, _, g in seconds)
                # work on the bottleneck: GPU-seconds over GPUs, or for CPU-only episodes CPU time over CPUs
                work[(batch_id, eid)] = (gpu / total_gpus if total_gpus and gpu
                                         else sum(s for s, _, _ in seconds) / max(1.0, total_cpus))
            self._paces[batch_id] = pace(list(work), work, start=batch.terms.submitted)
        return self._paces[batch_id]

    # -- views ----------------------------------------------------------------------------------
    def projected_finish(self, batch_id: str, now: float) -> float:
        """Now plus the longest remaining critical path among the batch's live episodes."""
        ranks = self.ranks(now)
        remaining = 0.0
        for eid in self.batches[batch_id].episodes:
            ep = self.episodes[(batch_id, eid)]
            if ep.status == "running":
                remaining = max([remaining] + [ranks.get(k, 0.0) for k in ep.keys if self.actions[k].status != "done"])
        return now + remaining

    def batch_status(self, batch_id: str, now: float) -> dict[str, Any]:
        batch = self.batches[batch_id]
        eps = [self.episodes[(batch_id, e)] for e in batch.episodes]
        stages: dict[str, dict[str, int]] = {}
        for key in {k for ep in eps for k in ep.keys}:
            s = self.actions[key]
            row = stages.setdefault(s.action.stage, {"done": 0, "cached": 0, "running": 0, "pending": 0, "failed": 0})
            reused = s.cached or (s.status == "done" and s.charged_to != batch_id)
            status = "cached" if reused else "failed" if s.status == "quarantined" else s.status
            row[status] = row.get(status, 0) + 1
        budget = batch.terms.budget
        projected = self.projected_finish(batch_id, now) if batch.status == "running" else batch.finished_at
        return {
            "batch": batch_id, "name": batch.name, "studio": batch.terms.studio, "status": batch.status,
            "priority": next(k for k, v in PRIORITY_CLASSES.items() if v == batch.terms.priority),
            "episodes": {"total": len(eps), "delivered": sum(e.status == "delivered" for e in eps),
                         "failed": sum(e.status == "failed" for e in eps),
                         "running": sum(e.status in ("running", "delivering") for e in eps)},
            "failures": [{"episode": e.id, "reason": e.reason} for e in eps if e.status == "failed"],
            "actions": {s: stages[s] for s in STAGES if s in stages},
            "spent": batch.spent.to_json(), "saved": batch.saved.to_json(),
            "budget": {"tokens": budget.tokens, "gpu_seconds": budget.gpu_seconds, "money": budget.money},
            "held": batch.held,
            "deadline": batch.terms.deadline, "projected_finish": projected,
            "on_track": None if batch.terms.deadline is None or projected is None else projected <= batch.terms.deadline,
            "deliverables": {e.id: e.deliverables for e in eps if e.deliverables},
        }
