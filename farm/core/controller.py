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
* ``notified(outcome)``: the record of how a notification (a ``Notify`` the host carried out)
  ended, ``webhook.delivered`` or ``webhook.failed``; its batch counts them.
* read-only views: ``batch_status``, ``projected_finish`` (and ``remaining_seconds``), ``running``,
  ``queued``, ``next_wake``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from farm.core.events import (
    ActionResult,
)
from farm.core.manifest import spend_of
from farm.core.plan import STAGES, BackendChoice, EpisodeJob
from farm.core.planning import Planning, judging_of, review_of
from farm.core.spec import PRIORITY_CLASSES
from farm.core.state import (
    ActionState,
    BatchState,
    Cancel,
    Command,
    Dispatch,
    EpisodeState,
    Estimator,
    Fault,
    Lookup,
    Notify,
    Profile,
)
from farm.core.takes import Verdict
from farm.core.views import batch_status
from farm.policy import (
    BatchTerms,
    Budget,
    Prices,
    RetryPolicy,
    Share,
    Spend,
)
from farm.policy.residency import Placer

# Events that change which live batch and episode a pending action counts for (its priority, deadline,
# budget) or whether any still needs it. (A delivered episode has no pending actions.)
_REORDERING = frozenset({"batch.submitted", "batch.cancelled", "batch.finished", "batch.failed", "episode.failed"})


class Controller(Planning):
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
        placer: Placer | None = None,
    ):
        super().__init__(
            estimator,
            profiles,
            prices=prices,
            shares=shares,
            caps=caps,
            retry=retry,
            order=order,
            rank_refresh_s=rank_refresh_s,
            placer=placer,
        )
        self.last_seq = -1
        self.errors: list[str] = []  # events that could not be applied and named no known batch
        # finished batches whose events the journal compacted: their last status, as ``batch.archived`` said
        self.archives: dict[str, dict[str, Any]] = {}
        # (studio, idempotency key) -> the batch submitted with it (``farm batch submit --idempotency-key``)
        self.keyed: dict[tuple[str, str], str] = {}
        # what every judge action said (by its key): a fact each episode's plan reads (farm.core.takes)
        self.verdicts: dict[str, Verdict] = {}
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
            "webhook.delivered": self._on_webhook,
            "webhook.failed": self._on_webhook,
            "journal.unreadable": self._on_journal_unreadable,
            "batch.archived": self._on_batch_archived,
            "review.recorded": self._on_review_recorded,
            "take.declined": self._on_take_declined,
        }

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
        self._forget_expected(batch_id)
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
        if d.idempotency_key is not None:
            self.keyed.setdefault((d.studio, d.idempotency_key), e.batch)
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
        # (a journal from before a stage existed names no backend for it: its episodes are planned without it)
        defaults = {s: BackendChoice.from_json(d.backends[s]) for s in STAGES if s in d.backends}
        batch = BatchState(terms=terms, name=d.name, episodes=[], webhook=d.webhook.model_dump() if d.webhook else None)
        self.batches[e.batch] = batch
        fresh: list[str] = []
        for item in d.episodes:
            eid = f"{item.series.id}/{item.episode.slug}"
            chosen = item.backends
            backends = {s: BackendChoice.from_json(chosen[s]) for s in STAGES if s in chosen} if chosen else defaults
            job = EpisodeJob(d.studio, d.namespace, item.series, item.episode, backends, judging_of(item.judging))
            ep = self.episodes[(e.batch, eid)] = EpisodeState(id=eid, batch=e.batch, job=job)
            ep.reviews = {r.key: review_of(r) for r in item.reviews if r.episode == eid}
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
            elif state.status == "pending" and state.attempts and not self._wanted(state, ignore=e.batch):
                # given up on for an earlier batch (its episode failed): a fresh count, not one last try
                state.attempts, state.failed_workers, state.not_before = 0, set(), 0.0
                self._changed.add(key)
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

    def _spend(self, result: ActionResult | None) -> Spend:
        return spend_of(result.usage, self.prices) if result is not None else Spend()

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
        if not cached:
            self._learn(state.action, e.data)
            self._count_take(state.action, e.data)
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
        if e.key not in self.actions:  # a compacted journal's hit, before any batch's plan reached it:
            return []  # nothing to apply; a lookup finds it in the store once one does
        return self._finished_action(e, cached=True)

    def _on_action_completed(self, e: Any) -> list[Command]:
        return self._finished_action(e, cached=False)

    def _on_action_dispatched(self, e: Any) -> list[Command]:
        state = self.actions[e.key]
        state.attempts, state.charged_to, state.started_at = state.attempts + 1, e.batch, e.at
        self._set_status(e.key, "running")
        return [Dispatch(e.key, e.batch, self.placement_of(e.key))]

    def _on_action_failed(self, e: Any) -> None:
        state = self.actions[e.key]
        self._set_status(e.key, "pending")
        if e.data.interrupted:  # the farm stopped it, not the action's failure: its dispatch is not counted
            state.attempts = max(0, state.attempts - 1)
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
        self.projection.forget(ep.batch, ep.id)

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

    def _on_webhook(self, e: Any) -> None:
        """Count how a notification ended. Nothing about a notification stops a batch: one of a batch
        this controller does not know is ignored, and this handler cannot raise."""
        batch = self.batches.get(e.batch or "")
        if batch is None:
            return
        d = e.data
        batch.notifications.pop(d.id, None)  # its latest outcome counts, and comes last
        if e.type == "webhook.delivered":
            batch.notifications[d.id] = None
            return
        about = " ".join(p for p in (d.kind, d.episode) if p)
        to = f" to {d.host}" if d.host else ""
        tries = f" after {d.attempts} attempt{'s' if d.attempts != 1 else ''}" if d.attempts else ""
        batch.notifications[d.id] = f"{about}{to}: {d.detail or 'failed'}{tries}"

    def _on_budget_exhausted(self, e: Any) -> None:
        self.batches[e.batch].held = e.data.reason

    def _on_batch_finished(self, e: Any) -> list[Command]:
        batch = self.batches[e.batch]
        batch.status, batch.finished_at = "finished", e.at
        self._forget_expected(e.batch)
        return [Notify(e.batch, "batch.finished", self.batch_status(e.batch, e.at))]

    def _on_batch_failed(self, e: Any) -> list[Command]:
        batch = self.batches[e.batch]
        commands: list[Command] = [
            c for c in self._fail_batch(e.batch, e.data.reason, e.at) if not isinstance(c, Fault)
        ]
        batch.failure_journaled = True
        return commands

    def _on_batch_archived(self, e: Any) -> None:
        """A finished batch known by its summary only: listed, with its last status, and never run."""
        if e.batch in self.batches:
            self.errors.append(f"journal event {e.seq}: batch {e.batch} is archived and also live; kept live")
            return
        s, d = e.data.status, e.data
        terms = BatchTerms(
            id=e.batch,
            studio=s["studio"],
            priority=PRIORITY_CLASSES[s["priority"]],
            deadline=s["deadline"],
            budget=Budget(**s["budget"]),
            submitted=d.submitted,
            order=len(self.batches),
        )
        batch = BatchState(terms=terms, name=s["name"], episodes=[], webhook=None, status=s["status"])
        batch.finished_at, batch.reason, batch.failure_journaled = d.finished_at, s["reason"], True
        self.batches[e.batch] = batch
        self.archives[e.batch] = dict(s)
        if d.idempotency_key is not None:
            self.keyed.setdefault((s["studio"], d.idempotency_key), str(e.batch))

    def _on_batch_cancelled(self, e: Any) -> list[Command]:
        batch = self.batches[e.batch]
        batch.status, batch.finished_at = "cancelled", e.at
        self._forget_expected(e.batch)
        running = [k for k in sorted(self._running) if not self._wanted(self.actions[k], e.batch)]
        return [Cancel(tuple(running))] if running else []

    # -- views ----------------------------------------------------------------------------------
    def projected_finish(self, batch_id: str, now: float) -> float:
        """When the batch is projected to finish: ``now`` plus ``remaining_seconds`` while it runs, else
        when it ended (finished, failed or cancelled)."""
        batch = self.batches[batch_id]
        if batch.status != "running":
            return batch.finished_at if batch.finished_at is not None else now
        return now + self.remaining_seconds(batch_id, now)

    def batch_status(self, batch_id: str, now: float) -> dict[str, Any]:
        """What ``farm batch status`` shows of a batch (farm.core.views)."""
        return batch_status(self, batch_id, now)
