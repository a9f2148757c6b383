"""The controller's core: journaled events in, state and commands out. Pure: no Ray, no I/O, no clock.

The engine (farm.core.engine) feeds it events in journal order and carries out the commands it
returns; replaying the journal into a fresh Controller rebuilds the same state (DESIGN.md,
invariant 5).

Three kinds of calls:

* ``apply(event) -> [Command]``: take an event (already journaled) into the state. Never raises:
  an event that cannot be applied stops the batch it belongs to (a ``Fault`` command, which the
  engine journals as ``batch.failed``) and every other batch goes on (invariant 10).
* ``on_result`` / ``on_cached`` / ``on_failure`` / ``decide(now, capacity)``: propose the events
  that follow from a worker's answer, a store lookup or the clock (dispatches, retries,
  quarantines, budget holds, finished batches). A result becomes a fact only after it is checked
  here: one that is unusable (a missing or empty output, a line without samples, a script that
  names characters the series does not have) fails its action and its episodes instead.
* read-only views: ``batch_status``, ``projected_finish``, ``running``, ``queued``, ``next_wake``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from farm.core.events import (
    ActionCached,
    ActionCompleted,
    ActionDispatched,
    ActionFailed,
    ActionQuarantined,
    ActionResult,
    ActionRetry,
    BatchFailed,
    BatchFinished,
    BudgetExhausted,
    Delivered,
    Dispatched,
    EpisodeDelivered,
    EpisodeFailed,
    EpisodeFailedEvent,
    Facts,
    Failed,
    Reason,
    RetryAt,
)
from farm.core.manifest import Manifest, spend_of
from farm.core.plan import OUTPUTS, STAGES, Action, BackendChoice, EpisodeJob, plan_episode, plan_script, sketch
from farm.core.script import Script, check_against
from farm.core.spec import PRIORITY_CLASSES
from farm.core.state import (
    ActionState,
    BatchState,
    Cancel,
    Command,
    Deliver,
    Dispatch,
    EpisodeState,
    Estimator,
    Fault,
    Lookup,
    Notify,
    Profile,
)
from farm.policy import (
    BatchTerms,
    Budget,
    Capacity,
    GiveUp,
    Prices,
    Quarantine,
    ReadyQueue,
    RetryPolicy,
    RunState,
    Share,
    Spend,
    Task,
    select,
    upward_ranks,
)
from farm.policy.ranking import NO_PACE, Pace, pace, sort_key

# At most this many GPU bundles are asked of an autoscaler at once (see Controller.wanted_capacity).
MAX_CAPACITY_REQUEST = 512

# Events that change which live batch and episode a pending action counts for (its priority, deadline,
# budget) or whether any still needs it. (A delivered episode has no pending actions.)
_REORDERING = frozenset({"batch.submitted", "batch.cancelled", "batch.finished", "batch.failed", "episode.failed"})

# Typical seconds still to come after an action whose dependants are not planned yet (a script's
# shots, a line's clip): keeps the critical-path rank honest before the graph has grown.
TAIL_SECONDS = {"script": 60.0, "sheet": 40.0, "keyframe": 30.0, "line": 30.0, "clip": 5.0, "mux": 2.0}

ORDERS = ("farm", "fifo")
_NO_RANKS: Mapping[str, float] = {}  # the "fifo" order ranks nothing (one object: the queue is not rebuilt)


class Controller:
    """Every batch's state, and the scheduling decisions over all of them.

    Args:
        estimator: an action's estimated (seconds, tokens, GPU-seconds), from its backend.
        profiles: (stage, backend) -> the resources one action holds.
        prices, shares, caps, retry: the price table, studios' GPU shares (``None``: no fair share),
            per-backend concurrency caps, and the retry policy.
        order: "farm" ranks ready actions by priority, deadline slack and paced critical path;
            "fifo" takes them in the order they became ready (a baseline for ``farm simulate``).
        rank_refresh_s: how often, at most, the critical-path ranks of the whole graph are worked
            out again while it grows (between refreshes a new action is ranked from its own estimate).
    """

    def __init__(
        self,
        estimator: Estimator,
        profiles: Mapping[tuple[str, str], Profile],
        *,
        prices: Prices = Prices(),
        shares: Iterable[Share] | None = (),
        caps: Mapping[str, int] | None = None,
        retry: RetryPolicy = RetryPolicy(),
        order: str = "farm",
        rank_refresh_s: float = 1.0,
    ):
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r} (known: {', '.join(ORDERS)})")
        self.estimator, self.profiles, self.prices = estimator, dict(profiles), prices
        self.shares = None if shares is None else list(shares)
        self.caps, self.retry, self.order, self.rank_refresh_s = dict(caps or {}), retry, order, rank_refresh_s
        self.batches: dict[str, BatchState] = {}
        self.episodes: dict[tuple[str, str], EpisodeState] = {}
        self.actions: dict[str, ActionState] = {}
        self.last_seq = -1
        self.errors: list[str] = []  # events that could not be applied and named no known batch
        self._handlers: dict[str, Callable[[Any], list[Command] | None]] = {
            "batch.submitted": self._on_batch_submitted,
            "batch.cancelled": self._on_batch_cancelled,
            "batch.finished": self._on_batch_finished,
            "batch.failed": self._on_batch_failed,
            "budget.exhausted": self._on_budget_exhausted,
            "action.cached": self._on_action_cached,
            "action.completed": self._on_action_completed,
            "action.dispatched": self._on_action_dispatched,
            "action.failed": self._on_action_failed,
            "action.retry": self._on_action_retry,
            "action.quarantined": self._on_action_quarantined,
            "episode.delivered": self._on_episode_delivered,
            "episode.failed": self._on_episode_failed,
            "webhook.delivered": _nothing,
            "webhook.failed": _nothing,
            "journal.unreadable": self._on_journal_unreadable,
        }
        self._ranks: dict[str, float] | None = None
        self._ranks_at = float("-inf")
        self._graph_changed = True
        # kept up to date as events arrive, so a decision costs O(ready + running), not O(graph)
        self._dependants: dict[str, list[str]] = {}
        self._ready: set[str] = set()  # pending, every input done
        self._ready_since: dict[str, int] = {}  # when each became ready (the "fifo" order)
        self._ready_count = 0
        self._running: set[str] = set()
        # The ready actions the scheduler may start, in its order (farm.policy.ready), so a decision
        # costs O((dispatched + lanes) log n) however many wait: synced in ``decide`` from the keys
        # whose readiness changed, rebuilt when the order itself changes (new ranks, a batch or an
        # episode starting or ending, which changes which batch an action counts for).
        self._queue = ReadyQueue()
        self._queue_ranks: Mapping[str, float] | None = None  # the ranks the queue was ordered with
        self._queue_stale = True
        self._changed: set[str] = set()  # keys whose readiness changed since the last sync
        self._backoff: list[tuple[float, str]] = []  # (not_before, key): ready, but waiting out a retry
        self._tasks: dict[str, Task] = {}  # what the scheduler sees of an action, until the batches change
        # what the wanted running actions hold, kept as they start and end (rebuilt when the batches
        # change): GPUs per studio, actions per backend, estimates per capped batch
        self._run: dict[str, Task] = {}
        self._use: dict[str, float] = {}
        self._by_backend: dict[str, int] = {}
        self._committed: dict[str, Spend] = {}
        self._run_stale = True
        # the GPU actions placed at the last decision (see wanted_capacity)
        self._gpu_shapes: list[Task] = []
        self._placed: set[str] = set()
        self._paces: dict[
            str, dict[tuple[str, str], Pace]
        ] = {}  # batch -> its episodes' paces, fixed at its first decision
        self._estimates: dict[str, tuple[float, int, float]] = {}
        self._unestimated: dict[str, str] = {}  # key -> why its backend could not estimate it

    def _reorder(self) -> None:
        """Which batch each action counts for may have changed: order and attribute afresh."""
        self._queue_stale = self._run_stale = True
        self._tasks.clear()

    # -- applying events ------------------------------------------------------------------------
    def apply(self, event: Any) -> list[Command]:
        """Take one journaled event into the state; return what the engine must do about it.

        Never raises: if the event cannot be applied, the batch it concerns stops (``Fault``)."""
        self.last_seq = event.seq
        if event.type in _REORDERING:
            self._reorder()
        try:
            return self._handlers[event.type](event) or []
        except Exception as exc:  # the boundary: an error applying one batch's event is data about that batch
            return self._fault(event, f"{type(exc).__name__}: {exc}")

    def _fault(self, event: Any, error: str) -> list[Command]:
        reason = f"the farm could not apply {event.type} (journal event {event.seq}): {error}"
        batches = self._batches_of(event)
        if not batches:
            self.errors.append(reason)
            return []
        self._reorder()
        return [c for b in batches for c in self._fail_batch(b, reason, event.at)]

    def _batches_of(self, event: Any) -> list[str]:
        """The live batches an event concerns: its own, else those needing the action it names."""
        if event.batch in self.batches:
            return [event.batch]
        state = self.actions.get(event.key or "")
        return sorted({b for b, _ in state.episodes} if state else set())

    def _fail_batch(self, batch_id: str, reason: str, at: float) -> list[Command]:
        batch = self.batches[batch_id]
        if batch.status != "running":
            return []
        batch.status, batch.reason, batch.finished_at = "failed", reason, at
        for eid in batch.episodes:
            ep = self.episodes[(batch_id, eid)]
            if ep.status in ("running", "delivering"):
                ep.status, ep.reason = "failed", reason
        batch.open = 0
        running = tuple(k for k in sorted(self._running) if not self._wanted(self.actions[k]))
        commands: list[Command] = [Fault(batch_id, reason)]
        if running:
            commands.append(Cancel(running))
        return commands + [Notify(batch_id, "batch.failed", {"reason": reason})]

    def _on_journal_unreadable(self, e: Any) -> list[Command]:
        return self._fault(e, e.data.reason)

    def _on_batch_submitted(self, e: Any) -> list[Command]:
        d = e.data
        if e.batch in self.batches:  # the batch that has this id is not this event's to stop
            self.errors.append(f"journal event {e.seq}: batch {e.batch} was submitted again; the second is ignored")
            return []
        budget = Budget(tokens=d.budget.tokens, gpu_seconds=d.budget.gpu_seconds, money=d.budget.money)
        terms = BatchTerms(
            id=e.batch,
            studio=d.studio,
            priority=PRIORITY_CLASSES[d.priority],
            deadline=d.deadline,
            budget=budget,
            submitted=e.at,
            order=len(self.batches),
        )
        defaults = {s: BackendChoice.from_json(d.backends[s]) for s in STAGES}
        batch = BatchState(terms=terms, name=d.name, episodes=[], webhook=d.webhook.model_dump() if d.webhook else None)
        self.batches[e.batch] = batch
        fresh: list[str] = []
        for item in d.episodes:
            eid = f"{item.series.id}/{item.episode.slug}"
            backends = {s: BackendChoice.from_json(item.backends[s]) for s in STAGES} if item.backends else defaults
            job = EpisodeJob(d.studio, d.namespace, item.series, item.episode, backends)
            ep = self.episodes[(e.batch, eid)] = EpisodeState(id=eid, batch=e.batch, job=job)
            batch.episodes.append(eid)
            batch.open += 1
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
        return [
            self.actions[k]
            for k in sorted(keys)
            if self.actions[k].status == "done" and self.actions[k].manifest is not None
        ]

    def _progress(self, ep: EpisodeState) -> list[Command]:
        """Deliver an episode whose final action is done."""
        if ep.status == "running" and ep.final_key is not None and self.actions[ep.final_key].status == "done":
            ep.status = "delivering"
            return [Deliver(ep.batch, ep.id)]
        return []

    def _spend(self, result: ActionResult | None) -> Spend:
        return spend_of(result.usage, self.prices) if result is not None else Spend()

    def _replan(self, ep: EpisodeState) -> list[str]:
        """Plan ``ep`` again with what is known; return keys the controller has never seen."""
        script = ep.script or ep.job.episode.script
        if ep.fixed is None or (script is not None and not ep.fixed.shots):
            ep.fixed = plan_script(ep.job, ep.script)  # what the script fixes, planned once
        plan = plan_episode(ep.job, ep.script, ep.line_samples, ep.fixed)
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
                self._tasks.pop(action.key, None)  # count for another batch
                self._queue.discard(action.key)
                self._changed.add(action.key)
            state.episodes.add((ep.batch, ep.id))
        ep.keys = [a.key for a in plan.actions]
        ep.final_key = plan.final_key
        self._graph_changed = bool(fresh) or self._graph_changed
        # facts already known for actions shared with other episodes
        learned = [k for k in ep.keys if self.actions[k].status == "done" and self._teach(ep, self.actions[k])]
        return fresh + (self._replan(ep) if learned else [])

    def _hold(self, task: Task, sign: int) -> None:
        """Count a running action's task in (``sign`` 1) or out (-1) of what the running hold."""
        if sign > 0:
            self._run[task.key] = task
        else:
            del self._run[task.key]
        self._use[task.studio] = self._use.get(task.studio, 0.0) + sign * task.gpus
        self._by_backend[task.backend] = self._by_backend.get(task.backend, 0) + sign
        if self.batches[task.batch].terms.budget.capped:
            estimate = task.estimate
            self._committed[task.batch] = (
                self._committed.get(task.batch, Spend()) + estimate
                if sign > 0
                else self._committed[task.batch] - estimate
            )

    def _held(self) -> list[Task]:
        """The tasks of the wanted running actions (counted afresh when the batches have changed)."""
        if self._run_stale:
            self._run, self._use, self._by_backend, self._committed = {}, {}, {}, {}
            self._run_stale = False
            for key in sorted(self._running):
                state = self.actions[key]
                if self._wanted(state):
                    self._hold(self._task(state), 1)
        return list(self._run.values())

    def _check_ready(self, key: str) -> None:
        state = self.actions[key]
        self._changed.add(key)
        if state.status == "pending" and all(
            self.actions[r.key].status == "done" for r in state.action.inputs.values()
        ):
            if key not in self._ready:
                self._ready.add(key)
                self._ready_count += 1
                self._ready_since[key] = self._ready_count
        else:
            self._ready.discard(key)

    def _set_status(self, key: str, status: str) -> None:
        state = self.actions[key]
        if status == "running" and key not in self._running:
            self._running.add(key)
            if not self._run_stale and self._wanted(state):
                self._hold(self._task(state), 1)
        elif status != "running" and key in self._running:
            self._running.discard(key)
            if not self._run_stale and key in self._run:
                self._hold(self._run[key], -1)
        state.status = status
        self._check_ready(key)
        if status == "done":
            for dependant in self._dependants.get(key, ()):
                self._check_ready(dependant)

    def _teach(self, ep: EpisodeState, state: ActionState) -> bool:
        """Give ``ep`` the facts a finished action carries; True if they are new to it."""
        action, result = state.action, state.manifest
        if result is None:
            return False
        if action.op == "line" and action.key not in ep.line_samples:
            ep.line_samples[action.key] = int(result.meta["samples"])
            return True
        if action.op == "script" and ep.script is None and ep.job.episode.script is None:
            if result.facts is None or result.facts.script is None:
                raise ValueError(f"{action.label} finished without a script")
            ep.script = result.facts.script
            return True
        return False

    def _finished_action(self, e: Any, cached: bool) -> list[Command]:
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
            try:  # one episode that cannot be planned stops its own batch, not the others sharing the action
                if self._teach(ep, state):
                    fresh += self._replan(ep)
                commands += self._progress(ep)
            except Exception as exc:
                self._reorder()
                commands += self._fail_batch(
                    ep.batch,
                    f"the farm could not plan {ep.id} after {state.action.label}: {type(exc).__name__}: {exc}",
                    e.at,
                )
        if fresh:
            commands.insert(0, Lookup(tuple(fresh)))
        return commands

    def _on_action_cached(self, e: Any) -> list[Command]:
        return self._finished_action(e, cached=True)

    def _on_action_completed(self, e: Any) -> list[Command]:
        return self._finished_action(e, cached=False)

    def _on_action_dispatched(self, e: Any) -> list[Command]:
        state = self.actions[e.key]
        state.attempts, state.charged_to = state.attempts + 1, e.batch
        self._set_status(e.key, "running")
        return [Dispatch(e.key, e.batch)]

    def _on_action_failed(self, e: Any) -> None:
        state = self.actions[e.key]
        self._set_status(e.key, "pending")
        if e.data.worker:
            state.failed_workers.add(e.data.worker)

    def _on_action_retry(self, e: Any) -> None:
        self.actions[e.key].not_before = e.data.not_before
        self._changed.add(e.key)

    def _on_action_quarantined(self, e: Any) -> None:
        self._set_status(e.key, "quarantined")

    def _close_episode(self, ep: EpisodeState, status: str) -> None:
        if ep.status in ("running", "delivering"):
            self.batches[ep.batch].open -= 1
        ep.status = status

    def _on_episode_failed(self, e: Any) -> list[Command]:
        ep = self.episodes[(e.batch, e.data.episode)]
        if ep.status == "failed":  # its batch failed first
            return []
        self._close_episode(ep, "failed")
        ep.reason = e.data.reason
        return [Notify(e.batch, "episode.failed", {"episode": ep.id, "reason": ep.reason})]

    def _on_episode_delivered(self, e: Any) -> list[Command]:
        ep = self.episodes[(e.batch, e.data.episode)]
        if ep.status == "failed":
            return []
        self._close_episode(ep, "delivered")
        ep.deliverables = dict(e.data.deliverables)
        return [Notify(e.batch, "episode.delivered", {"episode": ep.id, "deliverables": ep.deliverables})]

    def _on_budget_exhausted(self, e: Any) -> None:
        self.batches[e.batch].held = e.data.reason

    def _on_batch_finished(self, e: Any) -> list[Command]:
        batch = self.batches[e.batch]
        batch.status, batch.finished_at = "finished", e.at
        return [Notify(e.batch, "batch.finished", self.batch_status(e.batch, e.at))]

    def _on_batch_failed(self, e: Any) -> list[Command]:
        batch = self.batches[e.batch]
        commands: list[Command] = [
            c for c in self._fail_batch(e.batch, e.data.reason, e.at) if not isinstance(c, Fault)
        ]
        batch.failure_journaled = True
        return commands

    def _on_batch_cancelled(self, e: Any) -> list[Command]:
        batch = self.batches[e.batch]
        batch.status, batch.finished_at = "cancelled", e.at
        running = [k for k in sorted(self._running) if not self._wanted(self.actions[k], e.batch)]
        return [Cancel(tuple(running))] if running else []

    # -- proposing events -----------------------------------------------------------------------
    def _wanted(self, state: ActionState, ignore: str | None = None) -> bool:
        """Does any live episode of a live batch (other than ``ignore``) still need this action?"""
        return any(
            b != ignore and self.batches[b].status == "running" and self.episodes[(b, ep)].status == "running"
            for b, ep in state.episodes
        )

    def on_result(self, key: str, manifest: Manifest, facts: Mapping[str, Any] | None = None) -> list[Any]:
        """The events that follow a finished attempt: its completion, or, if its result is unusable,
        a failure that no retry can mend (the same inputs give the same result) and its episodes'."""
        state = self.actions[key]
        result, problem = self._checked(state, manifest, facts)
        if result is None:
            return self._failure_events(key, f"unusable result: {problem}", False, manifest.worker.get("node"), 0.0)
        return [ActionCompleted(batch=state.charged_to, key=key, data=result)]

    def on_cached(self, key: str, manifest: Manifest, facts: Mapping[str, Any] | None = None) -> list[Any]:
        """The events that follow finding an action done in the store: a cache hit, or, if the stored
        result is unusable, the failure of its episodes (running it again would find the same)."""
        state = self.actions[key]
        result, problem = self._checked(state, manifest, facts)
        if result is None:
            return self._failure_events(
                key,
                f"the stored result is unusable: {problem} (delete its manifest, "
                f"actions/{key[:2]}/{key}.json in the studio's store, to make it again)",
                False,
                None,
                0.0,
            )
        return [ActionCached(key=key, data=result)]

    def _checked(
        self, state: ActionState, manifest: Manifest, facts: Mapping[str, Any] | None
    ) -> tuple[ActionResult | None, str]:
        """The result an action's manifest and facts make, or (None, what is wrong with them)."""
        action = state.action
        if manifest.key != action.key:
            return None, f"the manifest is for action {manifest.key[:12]}, not {action.key[:12]}"
        missing = [o for o in OUTPUTS.get(action.op, ()) if o not in manifest.outputs]
        if missing:
            return None, f"no {', '.join(missing)} output"
        empty = sorted(o for o in OUTPUTS.get(action.op, ()) if manifest.outputs[o].size <= 0)
        if empty:
            return None, f"the {', '.join(empty)} output is empty"
        if action.op == "line":
            samples = manifest.meta.get("samples")
            if not isinstance(samples, int) or isinstance(samples, bool) or samples <= 0:
                return None, f"the line has {samples!r} samples of audio, not a positive whole number"
        script = None
        if action.op == "script":
            raw = (facts or {}).get("script")
            if raw is None:
                return None, "no script came with it"
            try:
                script = raw if isinstance(raw, Script) else Script.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                return None, (
                    f"the script does not validate ({exc.error_count()} problems; first: "
                    f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']})"
                )
            for b, eid in sorted(state.episodes):
                series = self.episodes[(b, eid)].job.series
                problems = check_against(script, {c.id for c in series.characters})
                if problems:
                    return None, (
                        f"the script is not one for series {series.id}: "
                        + "; ".join(f"{p}: {m}" for p, m in problems[:5])
                        + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                    )
        fields = {name: getattr(manifest, name) for name in Manifest.model_fields}
        return ActionResult.model_construct(**fields, facts=Facts(script=script) if script else None), ""

    def on_failure(
        self, key: str, error: str, retryable: bool, worker: str | None, now: float, retry_after: float | None = None
    ) -> list[Any]:
        """The events that follow a failed attempt: the failure, then a retry, a quarantine or a give-up.
        A retry waits for the policy's backoff, or longer when the provider asked (``retry_after``)."""
        return self._failure_events(key, error, retryable, worker, now, retry_after)

    def _failure_events(
        self, key: str, error: str, retryable: bool, worker: str | None, now: float, retry_after: float | None = None
    ) -> list[Any]:
        state = self.actions[key]
        batch = state.charged_to
        events: list[Any] = [
            ActionFailed(
                batch=batch,
                key=key,
                data=Failed(error=error, retryable=retryable, worker=worker, attempt=state.attempts),
            )
        ]
        workers = state.failed_workers | ({worker} if worker else set())
        decision = self.retry.decide(key, state.attempts, retryable, workers)
        if isinstance(decision, (Quarantine, GiveUp)):
            if isinstance(decision, Quarantine):
                events.append(ActionQuarantined(batch=batch, key=key, data=Reason(reason=decision.reason)))
            reason = f"{state.action.label}: {decision.reason}: {error}"
            for b, ep in sorted(state.episodes):
                if self.batches[b].status == "running" and self.episodes[(b, ep)].status == "running":
                    events.append(EpisodeFailedEvent(batch=b, data=EpisodeFailed(episode=ep, reason=reason)))
        else:
            delay = max(decision.not_before_delay_s, retry_after or 0.0)
            events.append(
                ActionRetry(batch=batch, key=key, data=RetryAt(not_before=now + delay, attempt=state.attempts))
            )
        return events

    def delivered(self, batch: str, episode: str, deliverables: Mapping[str, str]) -> list[Any]:
        return [EpisodeDelivered(batch=batch, data=Delivered(episode=episode, deliverables=dict(deliverables)))]

    def batch_failed(self, batch: str, reason: str) -> list[Any]:
        """The record of a batch the controller stopped while applying one of its events (``Fault``)."""
        if batch not in self.batches or self.batches[batch].failure_journaled:
            return []
        return [BatchFailed(batch=batch, data=Reason(reason=reason))]

    def ranks(self, now: float | None = None) -> dict[str, float]:
        """Upward ranks (remaining critical path) of every known action.

        Recomputed over the whole graph when it has grown, but at most every ``rank_refresh_s``
        when ``now`` is given: between refreshes a new action is ranked from its own estimate and
        tail (``_local_rank``), which is all a ranking heuristic needs while a big batch unfolds.
        """
        stale = self._ranks is None or (
            self._graph_changed and (now is None or now - self._ranks_at >= self.rank_refresh_s)
        )
        if stale:
            durations, children = {}, self._dependants
            for key, state in self.actions.items():
                own = 0.0 if state.status == "done" else self._estimate(state.action)[0]
                tail = TAIL_SECONDS.get(state.action.op, 0.0) if key not in children else 0.0
                durations[key] = own + tail
            self._ranks = upward_ranks(durations, children)
            self._ranks_at, self._graph_changed = (now if now is not None else float("-inf")), False
        assert self._ranks is not None
        return self._ranks

    def _local_rank(self, key: str) -> float:
        state = self.actions[key]
        return self._estimate(state.action)[0] + TAIL_SECONDS.get(state.action.op, 0.0)

    def _estimate(self, action: Action) -> tuple[float, int, float]:
        """The backend's estimate, once per key (a key fixes every input of the estimate). A backend
        whose estimate raises (a studio's own class may) fails that action at the next decision."""
        est = self._estimates.get(action.key)
        if est is None:
            est = self._estimates[action.key] = self._guarded_estimate(action)
        return est

    def _guarded_estimate(self, action: Action, record: bool = True) -> tuple[float, int, float]:
        try:
            seconds, tokens, gpu_seconds = self.estimator(action)
            return float(seconds), int(tokens), float(gpu_seconds)
        except Exception as exc:
            if record:
                self._unestimated[action.key] = (
                    f"its backend {action.backend} could not estimate it: {type(exc).__name__}: {exc}"
                )
            return 0.0, 0, 0.0

    def _task(self, state: ActionState) -> Task:
        task = self._tasks.get(state.action.key)
        if task is None:
            task = self._tasks[state.action.key] = self._make_task(state)
        return task

    def _make_task(self, state: ActionState) -> Task:
        a = state.action
        seconds, tokens, gpu_seconds = self._estimate(a)
        profile = self.profiles.get((a.stage, a.backend), Profile())
        live = sorted(
            (self.batches[b].terms.priority, -self.batches[b].terms.order, b, ep)
            for b, ep in state.episodes
            if self.batches[b].status == "running" and self.episodes[(b, ep)].status == "running"
        )
        _, _, batch, episode = live[-1]
        return Task(
            key=a.key,
            batch=batch,
            studio=self.batches[batch].terms.studio,
            episode=episode,
            stage=a.stage,
            backend=a.backend,
            cpus=profile.cpus,
            gpus=profile.gpus,
            accelerator=profile.accelerator,
            est_seconds=seconds,
            est_tokens=tokens,
            est_gpu_seconds=gpu_seconds,
            est_money=self.prices.money(tokens, gpu_seconds),
        )

    def running(self) -> list[ActionState]:
        return [self.actions[k] for k in sorted(self._running)]

    def ready(self, now: float) -> list[ActionState]:
        """Pending actions whose inputs are all done, past any retry backoff, still wanted."""
        states = (self.actions[k] for k in sorted(self._ready))
        return [s for s in states if s.not_before <= now and self._wanted(s)]

    def queued(self) -> list[Task]:
        """The actions waiting for room: ``ready`` as of the last decision, less what has started since."""
        return [t for t in self._queue if self.actions[t.key].status == "pending"]

    def next_wake(self) -> float | None:
        """When the next retry's backoff ends (as of the last decision), if one is waiting."""
        return self._backoff[0][0] if self._backoff else None

    def decide(self, now: float, capacity: Capacity) -> list[Any]:
        """Events the clock and free capacity call for: dispatches, budget holds, finished batches."""
        events: list[Any] = self._unestimable()
        run_tasks = self._held()
        state = RunState(
            gpus_by_studio=self._use,
            running_by_backend=self._by_backend,
            spent_by_batch={b: s.spent for b, s in self.batches.items()},
            committed_by_batch=self._committed,
        )
        terms = {b: s.terms for b, s in self.batches.items()}
        if self.order == "farm":
            new = [b for b, batch in self.batches.items() if batch.status == "running" and b not in self._paces]
            if new:
                total_gpus = sum(capacity.gpus_by_accelerator.values()) + sum(t.gpus for t in run_tasks)
                total_cpus = capacity.cpus + sum(t.cpus for t in run_tasks if not t.gpus)
                for b in new:
                    self._paces[b] = self._pace(b, total_gpus, total_cpus)
            self._sync_queue(now, self.ranks(now))
        else:
            self._sync_queue(now, _NO_RANKS)
        selection = select(self._queue, None, terms, capacity, state, self.shares, self.caps)
        self._placed = {t.key for t in selection.dispatch}
        self._gpu_shapes = [t for t in selection.dispatch if t.gpus > 0]
        for task in selection.dispatch:
            events.append(
                ActionDispatched(
                    batch=task.batch,
                    key=task.key,
                    data=Dispatched(label=self.actions[task.key].action.label, episode=task.episode),
                )
            )
        for held, reason in sorted(selection.held.items()):
            if self.batches[held].held != reason:
                events.append(BudgetExhausted(batch=held, data=Reason(reason=reason)))
        for batch_id, batch in self.batches.items():
            if batch.status == "running" and batch.open <= 0:
                events.append(BatchFinished(batch=batch_id))
        return events

    def _unestimable(self) -> list[Any]:
        """Failures of the actions whose backend could not estimate them (once each, while wanted)."""
        events: list[Any] = []
        for key, reason in sorted(self._unestimated.items()):
            state = self.actions.get(key)
            if state is not None and state.status == "pending" and self._wanted(state):
                events += self._failure_events(key, reason, False, None, 0.0)
        self._unestimated.clear()
        return events

    def _sync_queue(self, now: float, ranks: Mapping[str, float]) -> None:
        """Bring the ready queue up to date: exactly the wanted ready actions past their backoff, each
        ordered by ``ranking.sort_key`` (a key not ranked yet by its own estimate and tail), or in
        the "fifo" order by when it became ready."""
        if self._queue_stale or ranks is not self._queue_ranks:
            self._queue, self._backoff = ReadyQueue(), []
            self._queue_stale, self._queue_ranks = False, ranks
            keys = set(self._ready)
        else:
            keys = self._changed
            while self._backoff and self._backoff[0][0] <= now:
                keys.add(heapq.heappop(self._backoff)[1])
        self._changed = set()
        fifo = self.order == "fifo"
        for key in sorted(keys):
            state = self.actions[key]
            if key not in self._ready or not self._wanted(state):
                self._queue.discard(key)
            elif state.not_before > now:
                self._queue.discard(key)
                heapq.heappush(self._backoff, (state.not_before, key))
            elif key not in self._queue:
                task = self._task(state)
                if fifo:
                    self._queue.push(task, (self._ready_since[key], key))
                    continue
                rank = ranks[key] if key in ranks else self._local_rank(key)
                self._queue.push(
                    task,
                    sort_key(
                        task,
                        self.batches[task.batch].terms,
                        rank,
                        self._paces.get(task.batch, {}).get((task.batch, task.episode), NO_PACE),
                    ),
                )

    def wanted_capacity(self) -> list[tuple[float, float, str | None]]:
        """(cpus, gpus, accelerator) of every GPU action running or waiting for room as of the last
        decision, most urgent first, at most MAX_CAPACITY_REQUEST: what an autoscaler should grow GPU
        groups (even from zero) to fit."""
        shapes = [t for t in self._held() if t.gpus > 0 and t.key not in self._placed] + self._gpu_shapes
        shapes += self._waiting_gpu_tasks(self._placed, MAX_CAPACITY_REQUEST - len(shapes))
        return [(t.cpus, t.gpus, t.accelerator) for t in shapes][:MAX_CAPACITY_REQUEST]

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

    def _pace(self, batch_id: str, total_gpus: float, total_cpus: float) -> dict[tuple[str, str], Pace]:
        """Each episode's place in its batch's pipeline (farm.policy.ranking.pace), so episodes finish
        steadily in submission order instead of all together at the end. An episode is weighed by
        the work its sketch plans (``plan.sketch``): its script and lines are not known yet."""
        batch = self.batches[batch_id]
        work = {}
        for eid in batch.episodes:
            estimates = self._expected_work(self.episodes[(batch_id, eid)].job)
            gpu = sum(g for _, _, g in estimates)
            # work on the bottleneck: GPU-seconds over GPUs, or for CPU-only episodes CPU time over CPUs
            work[(batch_id, eid)] = (
                gpu / total_gpus if total_gpus and gpu else sum(s for s, _, _ in estimates) / max(1.0, total_cpus)
            )
        return pace(list(work), work, start=batch.terms.submitted)

    def _expected_work(self, job: EpisodeJob) -> Sequence[tuple[float, int, float]]:
        try:
            script, samples = sketch(job)
            actions = plan_episode(job, script, samples).actions
        except Exception:  # an episode that cannot even be sketched is weighed by what is planned
            actions = []
        return [self._guarded_estimate(a, record=False) for a in actions]

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
            "batch": batch_id,
            "name": batch.name,
            "studio": batch.terms.studio,
            "status": batch.status,
            "reason": batch.reason,
            "priority": next(k for k, v in PRIORITY_CLASSES.items() if v == batch.terms.priority),
            "episodes": {
                "total": len(eps),
                "delivered": sum(e.status == "delivered" for e in eps),
                "failed": sum(e.status == "failed" for e in eps),
                "running": sum(e.status in ("running", "delivering") for e in eps),
            },
            "failures": [{"episode": e.id, "reason": e.reason} for e in eps if e.status == "failed"],
            "actions": {s: stages[s] for s in STAGES if s in stages},
            "spent": batch.spent.to_json(),
            "saved": batch.saved.to_json(),
            "budget": {"tokens": budget.tokens, "gpu_seconds": budget.gpu_seconds, "money": budget.money},
            "held": batch.held,
            "deadline": batch.terms.deadline,
            "projected_finish": projected,
            "on_track": None
            if batch.terms.deadline is None or projected is None
            else projected <= batch.terms.deadline,
            "deliverables": {e.id: e.deliverables for e in eps if e.deliverables},
        }


def _nothing(event: Any) -> None:
    return None
