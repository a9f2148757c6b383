"""The events that follow from what comes back to the controller (pure): a worker's answer, a store
lookup, a failed attempt, an interrupted action, a delivery, a notification's outcome. The engine
journals them; ``Controller.apply`` then takes them in. A result becomes a fact only after it is
checked here (farm.core.checks): an unusable one fails its action and its episodes instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farm.core.checks import check_result
from farm.core.decisions import Decisions
from farm.core.events import (
    ActionCached,
    ActionCompleted,
    ActionFailed,
    BatchFailed,
    Delivered,
    EpisodeDelivered,
    EpisodeFailed,
    EpisodeFailedEvent,
    Failed,
    Reason,
    WebhookDelivered,
    WebhookFailed,
    WebhookResult,
)
from farm.core.manifest import Manifest
from farm.core.spec import Series
from farm.core.state import ActionState, Notified


class Proposals(Decisions):
    """The proposing half of the controller (``Decisions`` decides what runs; ``Controller`` applies)."""

    def on_result(self, key: str, manifest: Manifest, facts: Mapping[str, Any] | None = None) -> list[Any]:
        """The events that follow a finished attempt: its completion, or, if its result is unusable,
        a failure that no retry can mend (the same inputs give the same result) and its episodes'."""
        state = self.actions[key]
        result, problem = check_result(state.action, manifest, facts, self._series_of(state))
        if result is None:
            return self._failure_events(key, f"unusable result: {problem}", False, manifest.worker.get("node"), 0.0)
        return [ActionCompleted(batch=state.charged_to, key=key, data=result)]

    def on_cached(self, key: str, manifest: Manifest, facts: Mapping[str, Any] | None = None) -> list[Any]:
        """The events that follow finding an action done in the store: a cache hit, or, if the stored
        result is unusable, the failure of its episodes (running it again would find the same)."""
        state = self.actions[key]
        result, problem = check_result(state.action, manifest, facts, self._series_of(state))
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

    def _series_of(self, state: ActionState) -> list[Series]:
        return [self.episodes[key].job.series for key in sorted(state.episodes)]

    def on_failure(
        self, key: str, error: str, retryable: bool, worker: str | None, now: float, retry_after: float | None = None
    ) -> list[Any]:
        """The events that follow a failed attempt: the failure, then a retry, a quarantine or a give-up.
        A retry waits for the policy's backoff, or longer when the provider asked (``retry_after``)."""
        return self._failure_events(key, error, retryable, worker, now, retry_after)

    def interrupted(self, key: str, why: str) -> list[Any]:
        """The record of an action the farm itself stopped (a controller restart found it running and
        no manifest): it is ready again at once, and the attempt is not counted against it."""
        state = self.actions[key]
        data = Failed(error=why, retryable=True, worker=None, attempt=state.attempts, interrupted=True)
        return [ActionFailed(batch=state.charged_to, key=key, data=data)]

    def delivered(self, batch: str, episode: str, deliverables: Mapping[str, str]) -> list[Any]:
        return [EpisodeDelivered(batch=batch, data=Delivered(episode=episode, deliverables=dict(deliverables)))]

    def notified(self, outcome: Notified) -> list[Any]:
        """The record of how a notification ended: ``webhook.delivered``, or ``webhook.failed`` once its
        sender has given up (after its retries)."""
        event = WebhookDelivered if outcome.ok else WebhookFailed
        data = WebhookResult(
            id=outcome.id,
            kind=outcome.kind,
            detail=outcome.detail[:500],
            episode=outcome.episode,
            host=outcome.host,
            attempts=max(0, outcome.attempts),
        )
        return [event(batch=outcome.batch, data=data)]

    def undeliverable(self, batch: str, episode: str, error: str) -> list[Any]:
        """The record of an episode whose deliverables could not be published: it fails."""
        reason = f"its deliverables could not be published: {error[:500]}"
        return [EpisodeFailedEvent(batch=batch, data=EpisodeFailed(episode=episode, reason=reason))]

    def batch_failed(self, batch: str, reason: str) -> list[Any]:
        """The record of a batch the controller stopped while applying one of its events (``Fault``)."""
        if batch not in self.batches or self.batches[batch].failure_journaled:
            return []
        return [BatchFailed(batch=batch, data=Reason(reason=reason))]
