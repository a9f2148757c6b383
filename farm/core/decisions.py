"""The controller's decisions: what runs next, and what the running hold. Pure: time is passed in.

``Decisions`` owns the state the scheduler reads (every batch, episode and action, which are ready,
which run) and decides with farm.policy: ``decide(now, capacity)`` proposes the dispatches, budget
holds and finished batches; ``ranks`` are the remaining critical paths; an episode is paced through
its batch by the work its sketch plans; ``remaining_seconds`` projects how long a batch still takes
(farm.core.projection). ``Controller`` (farm.core.controller) adds applying events.

Everything here is kept up to date as events arrive, so a decision costs O(ready + running), not
O(graph): the ready queue is synced from the keys whose readiness changed, the running holdings
are counted as actions start and end, and both are rebuilt only when the batches change.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from farm.core.events import (
    ActionDispatched,
    ActionFailed,
    ActionQuarantined,
    ActionRetry,
    BatchFinished,
    BudgetExhausted,
    Dispatched,
    EpisodeFailed,
    EpisodeFailedEvent,
    Failed,
    Reason,
    RetryAt,
    TakeDeclined,
)
from farm.core.manifest import Manifest
from farm.core.placing import Placer, Placing, Slots
from farm.core.plan import Action, plan_episode, sketch
from farm.core.projection import Projection
from farm.core.state import ActionState, BatchState, EpisodeState, Estimator, Profile
from farm.core.takes import TAKEN_OPS
from farm.core.yields import Yields
from farm.policy import (
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
    budget_admits,
    select,
    upward_ranks,
)
from farm.policy.ranking import NO_PACE, Pace, pace, sort_key

# Typical seconds still to come after an action whose dependants are not planned yet (a script's
# shots, a line's clip): keeps the critical-path rank honest before the graph has grown.
TAIL_SECONDS = {"script": 60.0, "sheet": 40.0, "keyframe": 30.0, "line": 30.0, "clip": 5.0, "mux": 2.0}

ORDERS = ("farm", "fifo")
_NO_RANKS: Mapping[str, float] = {}  # the "fifo" order ranks nothing (one object: the queue is not rebuilt)


class Decisions(Placing):
    """The scheduling half of the controller (see ``Controller`` for the arguments)."""

    def __init__(
        self,
        estimator: Estimator,
        profiles: Mapping[tuple[str, str], Profile],
        *,
        prices: Prices,
        shares: Iterable[Share] | None,
        caps: Mapping[str, int] | None,
        retry: RetryPolicy,
        order: str,
        rank_refresh_s: float,
        placer: Placer | None = None,
    ):
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r} (known: {', '.join(ORDERS)})")
        self.estimator, self.profiles, self.prices = estimator, dict(profiles), prices
        self.shares = None if shares is None else list(shares)
        self.caps, self.retry, self.order, self.rank_refresh_s = dict(caps or {}), retry, order, rank_refresh_s
        self._init_placing(placer)
        self.batches: dict[str, BatchState] = {}
        self.episodes: dict[tuple[str, str], EpisodeState] = {}
        self.actions: dict[str, ActionState] = {}
        self._ranks: dict[str, float] | None = None
        self._ranks_at = float("-inf")
        self._graph_changed = True
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
        self._paces: dict[str, dict[tuple[str, str], Pace]] = {}  # batch -> paces, fixed at its first decision
        self._estimates: dict[str, tuple[float, int, float]] = {}
        self._unestimated: dict[str, str] = {}  # key -> why its backend could not estimate it
        self.projection = Projection()  # how long each batch still takes (remaining_seconds)
        self.yields = Yields()  # each backend's share of judged takes that passed
        # episodes to fail at the next decision, with why: a strict batch's flagged shot, failed delivery checks
        self._failing: dict[tuple[str, str], str] = {}

    def _reorder(self) -> None:
        """Which batch each action counts for may have changed: order and attribute afresh."""
        self._queue_stale = self._run_stale = True
        self._tasks.clear()

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

    def _wanted(self, state: ActionState, ignore: str | None = None) -> bool:
        """Does any live episode of a live batch (other than ``ignore``) still need this action?"""
        return any(
            b != ignore and self.batches[b].status == "running" and self.episodes[(b, ep)].status == "running"
            for b, ep in state.episodes
        )

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
            seconds, tokens, gpu_seconds = self._guarded_estimate(action)
            takes = self._expected_takes(action)
            est = self._estimates[action.key] = (seconds * takes, round(tokens * takes), gpu_seconds * takes)
        return est

    def _expected_takes(self, action: Action) -> float:
        """How many takes a judged keyframe, clip or line is expected to need from this one on (its
        backend's yield, farm.core.yields); 1 for everything else."""
        take = action.params.get("take") if action.op in TAKEN_OPS else None
        state = self.actions.get(action.key)
        if not isinstance(take, int) or state is None:
            return 1.0
        allowed = 0
        for b, eid in state.episodes:
            judging = self.episodes[(b, eid)].job.judging
            if judging is not None and judging.judges.get(action.op):
                allowed = max(allowed, judging.takes)
        return self.yields.expected_takes(action.backend, action.op, allowed - take + 1) if allowed else 1.0

    def _count_take(self, action: Action, result: Manifest) -> None:
        """A judge's fresh verdict on a take counts towards the judged backend's yield."""
        target = action.params.get("target") if action.op == "judge" else None
        if isinstance(target, dict) and target.get("op") in TAKEN_OPS:
            self.yields.count(str(target.get("backend")), str(target["op"]), result.meta.get("verdict") == "pass")

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

    def decide(self, now: float, capacity: Capacity, slots: Slots = None) -> list[Any]:
        """Events the clock and free capacity call for: episodes that fail (a strict batch's flagged shot,
        failed delivery checks), dispatches, budget holds and the takes they decline, finished batches.
        ``slots``: the runtime's GPUs and the models they hold, where it reports them (farm.core.placing)."""
        failing = self._episodes_failing()
        if failing:  # first: what they no longer need must not be dispatched
            return failing
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
            live = [b for b, batch in self.batches.items() if batch.status == "running"]
            new = [b for b in live if b not in self._paces]
            # one episode alone has nothing to be paced against (a render): weigh it once another arrives
            if new and sum(len(self.batches[b].episodes) for b in live) > 1:
                total_gpus = sum(capacity.gpus_by_accelerator.values()) + sum(t.gpus for t in run_tasks)
                total_cpus = capacity.cpus + sum(t.cpus for t in run_tasks if not t.gpus)
                for b in new:
                    self._paces[b] = self._pace(b, total_gpus, total_cpus)
            self._sync_queue(now, self.ranks(now))
        else:
            self._sync_queue(now, _NO_RANKS)
        gate = self._gate(slots, now)  # model residency: where each GPU action runs (farm.core.placing)
        selection = select(self._queue, None, terms, capacity, state, self.shares, self.caps, gate=gate)
        self._placed_done()
        self._placed = {t.key for t in selection.dispatch}
        free_gpus = sum(capacity.gpus_by_accelerator.values())
        self.projection.room = (
            max(0.0, capacity.cpus - sum(t.cpus for t in selection.dispatch)),
            max(0.0, free_gpus - sum(t.gpus for t in selection.dispatch)),
            capacity.cpus + sum(t.cpus for t in run_tasks if not t.gpus),
            free_gpus + sum(t.gpus for t in run_tasks),
        )
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
        if selection.held:
            events += self._declined(selection.held, state)
        for batch_id, batch in self.batches.items():
            if batch.status == "running" and batch.open <= 0:
                events.append(BatchFinished(batch=batch_id))
        return events

    def _episodes_failing(self) -> list[Any]:
        events: list[Any] = []
        for (batch, eid), reason in sorted(self._failing.items()):
            ep = self.episodes[(batch, eid)]
            if ep.status == "running" and self.batches[batch].status == "running":
                events.append(EpisodeFailedEvent(batch=batch, data=EpisodeFailed(episode=eid, reason=reason)))
            else:
                del self._failing[(batch, eid)]
        return events

    def _declined(self, held: Mapping[str, str], state: RunState) -> list[Any]:
        """The next takes (take 2 on) of batches their budget holds, which it would not pay for: declined,
        so their shots use their best take so far instead of waiting for money that is not coming."""
        events: list[Any] = []
        for task in self.queued():
            action = self.actions[task.key].action
            take = action.params.get("take")
            if task.batch not in held or action.op not in TAKEN_OPS or not isinstance(take, int) or take < 2:
                continue
            terms = self.batches[task.batch].terms
            why = budget_admits(
                terms, state.spent_by_batch.get(task.batch), state.committed_by_batch.get(task.batch), task
            )
            if why is not None:
                reason = f"{action.label}: the budget would not pay for it ({why})"
                events.append(TakeDeclined(batch=task.batch, key=task.key, data=Reason(reason=reason)))
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
                if task.gpus > 0:  # how long it waits for a GPU of its model (farm.core.placing)
                    self._ready_at.setdefault(key, now)
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

    def _pace(self, batch_id: str, total_gpus: float, total_cpus: float) -> dict[tuple[str, str], Pace]:
        """Each episode's place in its batch's pipeline (farm.policy.ranking.pace), so episodes finish
        steadily in submission order instead of all together at the end. An episode is weighed by
        the work its sketch plans (``plan.sketch``): its script and lines are not known yet."""
        batch = self.batches[batch_id]
        work = {}
        for eid in batch.episodes:
            estimates = self._expected_work(self.episodes[(batch_id, eid)])
            gpu = sum(g for _, _, g in estimates)
            # work on the bottleneck: GPU-seconds over GPUs, or for CPU-only episodes CPU time over CPUs
            work[(batch_id, eid)] = (
                gpu / total_gpus if total_gpus and gpu else sum(s for s, _, _ in estimates) / max(1.0, total_cpus)
            )
        return pace(list(work), work, start=batch.terms.submitted)

    def remaining_seconds(self, batch_id: str, now: float) -> float:
        """How long the batch's live episodes should still take from ``now`` (farm.core.projection)."""
        return self.projection.remaining_seconds(self, batch_id, now)

    def _learn(self, action: Action, result: Manifest) -> None:
        """Count how long a finished action took (its worker's own timings) against its estimate."""
        estimated = self._guarded_estimate(action, record=False)[0]  # one take's, as the backend said
        load = getattr(result.usage, "load_seconds", 0.0)  # the run that loaded its model says how long
        self.projection.learn(action, result.finished_at - result.started_at - load, estimated)
        if load:
            self.learn_load(action.stage, action.backend, load)

    def _forget_expected(self, batch_id: str) -> None:
        """Drop the expected plans of a batch that has stopped."""
        for eid in self.batches[batch_id].episodes:
            self.projection.forget(batch_id, eid)

    def _expected_work(self, ep: EpisodeState) -> Sequence[tuple[float, int, float]]:
        try:
            script, samples, fixed = sketch(ep.job, ep.fixed, keyed=False)  # estimates need no keys
            actions = plan_episode(ep.job, script, samples, fixed, keyed=False).actions
        except Exception:  # an episode that cannot even be sketched is weighed by what is planned
            actions = []
        return [self._guarded_estimate(a, record=False) for a in actions]
