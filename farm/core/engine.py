"""The engine: the one loop that journals events, applies them to the Controller and carries out its
commands (DESIGN.md, invariant 9). Pure: everything outside goes through its ports
(farm.core.ports): a Journal, a Runtime, a Clock and the Artifacts.

It is hosted three times, always the same:

* ``farm.service.host.ControllerService``: the batch controller, a Ray actor (store journal, Ray runtime);
* ``farm.service.local``: ``farm render``, a batch of one episode in this process;
* ``farm.simulate``: a night played on simulated GPUs (memory journal, simulated runtime, manual clock).

Every change goes through ``commit``: a group of events is written to the journal, the whole group
is applied, then the follow-up work is carried out in journal order (lookups, dispatches,
deliveries, notifications), which may commit more groups. A result becomes a fact only once the
controller has checked it; an event that cannot be applied stops its own batch (``batch.failed``)
and never the engine.

The store can be down (a journal write or a lookup fails with a retryable ``StoreError`` or an
``OSError``). Then nothing is lost: finished attempts taken from the runtime are *held* until their
group is journaled, and the commands a failure stopped stay in a *backlog*, carried out first by the
next ``advance``. The error reaches the host as ``StoreDown``; it calls ``advance`` again (with
backoff) until the store answers. Nothing is dispatched meanwhile: a dispatch is journaled first.

Example::

    engine = Engine(controller, MemoryJournal(), runtime, ManualClock(), artifacts)
    engine.submit("b-1", submission)
    while engine.controller.batches["b-1"].status == "running":
        engine.step(timeout=1.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from farm.core.controller import Controller
from farm.core.events import BatchCancelled, BatchSubmitted, ReviewData, ReviewRecorded, Submission
from farm.core.ports import Artifacts, Clock, Finished, Journal, Runtime
from farm.core.state import Cancel, Command, Deliver, Dispatch, Fault, Lookup, Notified, Notify, Profile
from farm.errors import FarmError, StoreError, StoreUnwritable
from farm.policy.residency import Placement

INTERRUPTED = "interrupted: the controller restarted while it ran"
ORPHANED = "interrupted: nothing was running it (its worker was never started or its result was lost)"


class StoreDown(StoreError):
    """The store failed while the engine journaled or carried out a command: what it was doing is
    kept (held results, the backlog) and done by the next ``advance``. ``cause`` is the store's error."""

    retryable = True

    def __init__(self, cause: BaseException):
        super().__init__(f"the store is unavailable: {type(cause).__name__}: {cause}")
        self.cause = cause


def _store_down(exc: BaseException) -> bool:
    """Is ``exc`` the store being unavailable (worth holding on to the work and trying again)?"""
    if isinstance(exc, StoreDown):
        return True
    if isinstance(exc, (OSError, StoreUnwritable)):  # a local store: disk full, read-only, a vanished mount
        return True
    return isinstance(exc, StoreError) and bool(getattr(exc, "retryable", False))


class Engine:
    """Args:
    controller: the pure core it drives.
    journal, runtime, clock, artifacts: its ports.
    notify: called with each ``Notify`` command (webhooks), if given. The host carries it out (on a
        thread of its own, say) and hands back how it ended with ``notified``.
    observe: called with each committed event after its group is applied (metrics, logs), if given.
    """

    def __init__(
        self,
        controller: Controller,
        journal: Journal,
        runtime: Runtime,
        clock: Clock,
        artifacts: Artifacts,
        *,
        notify: Callable[[Notify], None] | None = None,
        observe: Callable[[Any], None] | None = None,
    ):
        self.controller, self.journal, self.runtime = controller, journal, runtime
        self.clock, self.artifacts = clock, artifacts
        self.notify, self.observe = notify, observe
        self.sent: set[str] = set()  # webhook notifications already delivered (journaled)
        self.held: list[Finished] = []  # attempts taken from the runtime whose group is not journaled yet
        self.backlog: list[Command] = []  # commands a store failure stopped, carried out first next time
        self.submitted: set[str] = set()  # keys handed to the runtime and not back yet (``reconcile``)

    # -- the one way state changes ------------------------------------------------------------------
    def commit(self, proposals: Sequence[Any]) -> list[Any]:
        """Journal ``proposals`` as one group, apply the whole group, then carry out what it calls for."""
        events, commands = self._record(proposals)
        self.carry_out(commands)
        return events

    def _record(self, proposals: Sequence[Any]) -> tuple[list[Any], list[Command]]:
        """Journal and apply one group; its commands, not carried out yet. When the journal write fails
        nothing is applied (the exception is the store's, as ``StoreDown`` where it is one)."""
        if not proposals:
            return [], []
        try:
            events = self.journal.append(proposals, self.clock.now())
        except Exception as exc:
            if _store_down(exc) and not isinstance(exc, StoreDown):
                raise StoreDown(exc) from exc
            raise
        commands: list[Command] = []
        for event in events:
            if event.type == "webhook.delivered":
                self.sent.add(event.data.id)
            commands += self.controller.apply(event)
        if self.observe is not None:
            for event in events:
                self.observe(event)
        return events, commands

    def carry_out(self, commands: Iterable[Command]) -> None:
        """Carry out ``commands`` in order. When the store fails, the command it stopped and those after
        it go to the backlog (after those of the inner commit that failed, so the order holds)."""
        todo = list(commands)
        for i, command in enumerate(todo):
            try:
                self._carry_out_one(command)
            except StoreDown:
                self.backlog += todo[i + 1 :]  # this command's own group was journaled; an inner one stopped
                raise
            except Exception as exc:
                if not _store_down(exc):
                    raise
                self.backlog += todo[i:]
                raise StoreDown(exc) from exc

    def _carry_out_one(self, command: Command) -> None:
        if isinstance(command, Lookup):
            self._lookup(command.keys)
        elif isinstance(command, Dispatch):
            self._dispatch(command.key, command.placement)
        elif isinstance(command, Deliver):
            self._deliver(command.batch, command.episode)
        elif isinstance(command, Notify):
            if self.notify is not None:
                self.notify(command)
        elif isinstance(command, Cancel):
            self.runtime.cancel(command.keys)
        elif isinstance(command, Fault):
            self.commit(self.controller.batch_failed(command.batch, command.reason))

    def _lookup(self, keys: Sequence[str]) -> None:
        actions = [self.controller.actions[k].action for k in keys]
        found: list[Any] = []
        for action, manifest in self.artifacts.lookup(actions):
            found += self.controller.on_cached(action.key, manifest, self.artifacts.facts(action, manifest))
        self.commit(found)

    def _dispatch(self, key: str, placement: Placement | None = None) -> None:
        state = self.controller.actions[key]
        action = state.action
        inputs = {}
        for name, ref in action.inputs.items():
            result = self.controller.actions[ref.key].manifest
            assert result is not None, f"{action.label}: input {name} is not done"
            inputs[name] = result.outputs[ref.output]
        profile = self.controller.profiles.get((action.stage, action.backend), Profile())
        if placement is None:
            self.runtime.submit(action, inputs, profile, state.charged_to)
        else:  # the GPU residency chose for it (farm.core.placing): the runtime carries it out
            self.runtime.submit(action, inputs, profile, state.charged_to, placement)
        self.submitted.add(key)

    def _deliver(self, batch: str, episode: str) -> None:
        ep = self.controller.episodes[(batch, episode)]
        assert ep.final_key is not None
        final = self.controller.actions[ep.final_key].manifest
        assert final is not None
        try:
            paths = self.artifacts.deliver(ep.job, final.outputs)
        except (FarmError, OSError) as exc:
            if getattr(exc, "retryable", False):
                raise  # the store is down: the episode is still delivering, and is delivered again later
            # what the store will never give (a blob of another studio's cache, a refused write): this
            # episode fails with the reason, never the engine, and a replay does the same
            self.commit(self.controller.undeliverable(batch, episode, f"{type(exc).__name__}: {exc}"))
            return
        self.commit(self.controller.delivered(batch, episode, paths))

    # -- what hosts call ------------------------------------------------------------------------------
    def submit(self, batch_id: str, submission: Submission) -> None:
        """Record a batch (it is durable once this returns) and plan it."""
        self.artifacts.refresh(submission.studio)
        self._answer([BatchSubmitted(batch=batch_id, data=submission)])

    def cancel(self, batch_id: str) -> None:
        if self.controller.batches[batch_id].status == "running":
            self._answer([BatchCancelled(batch=batch_id)])

    def review(self, batch_id: str, review: ReviewData) -> None:
        """Record a person's verdict on a take of one of the batch's episodes (durable once this returns)."""
        self._answer([ReviewRecorded(batch=batch_id, data=review)])

    def _answer(self, proposals: Sequence[Any]) -> None:
        """Commit what a caller is waiting for: it raises only when the group itself was not journaled.
        Once it is, what follows (planning, lookups) goes to the backlog if the store fails meanwhile:
        the caller is told of its batch, and the next ``advance`` carries on."""
        _, commands = self._record(proposals)
        with contextlib.suppress(StoreDown):  # kept in the backlog
            self.carry_out(commands)

    def step(self, timeout: float | None = None) -> list[Finished]:
        """Wait up to ``timeout`` for finished attempts, take them in, decide what runs next."""
        finished = self.runtime.wait(timeout)
        self.advance(finished)
        return finished

    def advance(self, finished: Sequence[Finished]) -> None:
        """Take in finished attempts (one journal group for all), then decide and dispatch. What a store
        failure stopped last time (the backlog, held attempts) goes first; if the store fails again,
        ``StoreDown`` is raised and everything is kept for the next call."""
        self.held += finished
        for f in finished:
            self.submitted.discard(f.action.key)
        if self.backlog:
            backlog, self.backlog = self.backlog, []
            self.carry_out(backlog)
        if self.held:
            held, self.held = self.held, []
            try:
                _, commands = self._record(self._take_in(held))
            except Exception:
                self.held = held + self.held  # not journaled: nothing of it was applied
                raise
            self.carry_out(commands)
        self.decide()
        try:
            self.journal.step_ended()  # a grouping journal writes what waits
        except Exception as exc:
            if _store_down(exc) and not isinstance(exc, StoreDown):
                raise StoreDown(exc) from exc
            raise

    def _take_in(self, finished: Sequence[Finished]) -> list[Any]:
        """The events that finished attempts call for (pure: nothing changes until they are applied)."""
        now = self.clock.now()
        proposals: list[Any] = []
        for f in finished:
            key = f.action.key
            if key not in self.controller.actions:
                continue
            if f.manifest is not None:
                try:
                    facts = self.artifacts.facts(f.action, f.manifest)
                except (FarmError, OSError) as exc:
                    if _store_down(exc):  # the result is done and may be paid for: keep it until the store is back
                        raise StoreDown(exc) from exc
                    retryable = bool(getattr(exc, "retryable", False))
                    proposals += self.controller.on_failure(key, f"reading its result: {exc}", retryable, None, now)
                    continue
                proposals += self.controller.on_result(key, f.manifest, facts)
            else:
                err = f.error
                assert err is not None
                proposals += self.controller.on_failure(key, str(err), err.retryable, err.worker, now, err.retry_after)
        return proposals

    def reconcile(self) -> int:
        """Settle actions the controller holds running that nothing runs (not handed to the runtime, or
        its answer lost): from their manifest where it exists, else as interrupted (not an attempt) so
        they run again. Returns how many were settled. Hosts call it now and then."""
        if self.backlog or self.held:
            return 0  # a dispatch or a result is still on its way: not orphans
        orphans = [s.action for s in self.controller.running() if s.action.key not in self.submitted]
        if not orphans:
            return 0
        found = {action.key: manifest for action, manifest in self.artifacts.lookup(orphans)}
        for action in orphans:
            manifest = found.get(action.key)
            if manifest is not None:
                self.commit(self.controller.on_result(action.key, manifest, self.artifacts.facts(action, manifest)))
            else:
                self.commit(self.controller.interrupted(action.key, ORPHANED))
        return len(orphans)

    def notified(self, outcome: Notified) -> None:
        """Journal how a notification ended, once its sender is done retrying (``webhook.delivered`` or
        ``webhook.failed``): a fact its batch counts, which survives a restart. A host on another
        thread calls it holding the lock it steps the engine under, as with every other call."""
        self._answer(self.controller.notified(outcome))

    def decide(self) -> None:
        slots = getattr(self.runtime, "slots", None)  # asked for only when a GPU action would start
        self.commit(self.controller.decide(self.clock.now(), self.runtime.capacity(), slots))
        released = self.controller.released()
        if released and hasattr(self.runtime, "release"):
            self.runtime.release(released)
        if self.runtime.grows:
            self.runtime.request_capacity(self.controller.wanted_capacity())

    def next_wake(self) -> float | None:
        """When something is due without a worker answering (a retry's backoff ending)."""
        return self.controller.next_wake()

    def recover(self) -> int:
        """Replay the journal into the controller, then settle what the last incarnation left: actions
        it thought running (their manifest, else the worker the runtime re-attached to, else an
        interrupted attempt), lookups, deliveries, ``batch.failed`` records of batches that stopped
        while replaying, notifications. Returns the number of events replayed."""
        deliveries: list[Deliver] = []
        notes: list[Notify] = []
        faults: list[Fault] = []
        count = 0
        for event in self.journal.replay():
            count += 1
            if event.type == "webhook.delivered":
                self.sent.add(event.data.id)
            for command in self.controller.apply(event):
                if isinstance(command, Notify):
                    notes.append(command)
                elif isinstance(command, Deliver):
                    deliveries.append(command)
                elif isinstance(command, Fault):
                    faults.append(command)
        for fault in faults:
            self.commit(self.controller.batch_failed(fault.batch, fault.reason))
        orphans = [s.action for s in self.controller.running()]
        for studio in sorted({a.context.get("studio", "") for a in orphans}):
            self.artifacts.refresh(studio)
        found = {action.key: manifest for action, manifest in self.artifacts.lookup(orphans)}
        # work that outlived the last incarnation is re-attached (its outcome comes back through
        # ``wait``); the runtime is asked even with none, to sweep workers it cannot adopt
        adopted = self.runtime.adopt([a for a in orphans if a.key not in found])
        self.submitted.update(adopted)  # the runtime runs them again: not orphans for ``reconcile``
        for action in orphans:
            manifest = found.get(action.key)
            if manifest is not None:
                self.commit(self.controller.on_result(action.key, manifest, self.artifacts.facts(action, manifest)))
            elif action.key not in adopted:
                self.commit(self.controller.interrupted(action.key, INTERRUPTED))
        self._lookup([k for k, s in self.controller.actions.items() if s.status == "pending"])
        for d in deliveries:
            if self.controller.episodes[(d.batch, d.episode)].status == "delivering":
                self._deliver(d.batch, d.episode)
        if self.notify is not None:
            for note in notes:
                self.notify(note)
        return count
