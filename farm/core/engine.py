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

Example::

    engine = Engine(controller, MemoryJournal(), runtime, ManualClock(), artifacts)
    engine.submit("b-1", submission)
    while engine.controller.batches["b-1"].status == "running":
        engine.step(timeout=1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from farm.core.controller import Controller
from farm.core.events import BatchCancelled, BatchSubmitted, Submission
from farm.core.ports import Artifacts, Clock, Finished, Journal, Runtime
from farm.core.state import Cancel, Command, Deliver, Dispatch, Fault, Lookup, Notified, Notify, Profile
from farm.errors import FarmError

INTERRUPTED = "interrupted: the controller restarted while it ran"


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

    # -- the one way state changes ------------------------------------------------------------------
    def commit(self, proposals: Sequence[Any]) -> list[Any]:
        """Journal ``proposals`` as one group, apply the whole group, then carry out what it calls for."""
        if not proposals:
            return []
        events = self.journal.append(proposals, self.clock.now())
        commands: list[Command] = []
        for event in events:
            if event.type == "webhook.delivered":
                self.sent.add(event.data.id)
            commands += self.controller.apply(event)
        if self.observe is not None:
            for event in events:
                self.observe(event)
        self.carry_out(commands)
        return events

    def carry_out(self, commands: Iterable[Command]) -> None:
        for command in commands:
            if isinstance(command, Lookup):
                self._lookup(command.keys)
            elif isinstance(command, Dispatch):
                self._dispatch(command.key)
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

    def _dispatch(self, key: str) -> None:
        state = self.controller.actions[key]
        action = state.action
        inputs = {}
        for name, ref in action.inputs.items():
            result = self.controller.actions[ref.key].manifest
            assert result is not None, f"{action.label}: input {name} is not done"
            inputs[name] = result.outputs[ref.output]
        profile = self.controller.profiles.get((action.stage, action.backend), Profile())
        self.runtime.submit(action, inputs, profile, state.charged_to)

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
        self.commit([BatchSubmitted(batch=batch_id, data=submission)])

    def cancel(self, batch_id: str) -> None:
        if self.controller.batches[batch_id].status == "running":
            self.commit([BatchCancelled(batch=batch_id)])

    def step(self, timeout: float | None = None) -> list[Finished]:
        """Wait up to ``timeout`` for finished attempts, take them in, decide what runs next."""
        finished = self.runtime.wait(timeout)
        self.advance(finished)
        return finished

    def advance(self, finished: Sequence[Finished]) -> None:
        """Take in finished attempts (one journal group for all), then decide and dispatch."""
        now = self.clock.now()
        proposals: list[Any] = []
        for f in finished:
            key = f.action.key
            if key not in self.controller.actions:
                continue
            if f.manifest is not None:
                try:
                    facts = self.artifacts.facts(f.action, f.manifest)
                except FarmError as exc:  # its outputs cannot be read now (the store): try it again
                    proposals += self.controller.on_failure(key, f"reading its result: {exc}", exc.retryable, None, now)
                    continue
                proposals += self.controller.on_result(key, f.manifest, facts)
            else:
                err = f.error
                assert err is not None
                proposals += self.controller.on_failure(key, str(err), err.retryable, err.worker, now, err.retry_after)
        self.commit(proposals)
        self.decide()

    def notified(self, outcome: Notified) -> None:
        """Journal how a notification ended, once its sender is done retrying (``webhook.delivered`` or
        ``webhook.failed``): a fact its batch counts, which survives a restart. A host on another
        thread calls it holding the lock it steps the engine under, as with every other call."""
        self.commit(self.controller.notified(outcome))

    def decide(self) -> None:
        self.commit(self.controller.decide(self.clock.now(), self.runtime.capacity()))
        if self.runtime.grows:
            self.runtime.request_capacity(self.controller.wanted_capacity())

    def next_wake(self) -> float | None:
        """When something is due without a worker answering (a retry's backoff ending)."""
        return self.controller.next_wake()

    def recover(self) -> int:
        """Replay the journal into the controller, then settle what the last incarnation left: actions
        it thought running (their manifest, or an interrupted attempt), lookups, deliveries,
        ``batch.failed`` records of batches that stopped while replaying, notifications. Returns the
        number of events replayed."""
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
        for action in orphans:
            manifest = found.get(action.key)
            if manifest is not None:
                self.commit(self.controller.on_result(action.key, manifest, self.artifacts.facts(action, manifest)))
            else:
                self.commit(self.controller.interrupted(action.key, INTERRUPTED))
        self._lookup([k for k, s in self.controller.actions.items() if s.status == "pending"])
        for d in deliveries:
            if self.controller.episodes[(d.batch, d.episode)].status == "delivering":
                self._deliver(d.batch, d.episode)
        if self.notify is not None:
            for note in notes:
                self.notify(note)
        return count
