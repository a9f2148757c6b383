"""Metrics and logs of every journaled event: the one place usage is accounted (DESIGN.md, invariant 6).

The engine calls an ``Accounting`` with each event it commits, after the event's group is applied,
wherever the engine is hosted: the batch controller serves the metrics on ``/metrics``, ``farm
render`` exports them when it is done (Pushgateway, textfile).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

from farm.core.controller import Controller
from farm.core.state import ActionState
from farm.observe import logs
from farm.observe.metrics import JUDGE, Metrics

log = structlog.get_logger("farm.controller")

# log levels of journaled events (the others are info)
_LEVELS = {
    "action.cached": logging.DEBUG,
    "action.failed": logging.WARNING,
    "action.quarantined": logging.WARNING,
    "episode.failed": logging.WARNING,
    "batch.failed": logging.ERROR,
    "webhook.delivered": logging.DEBUG,
    "webhook.failed": logging.WARNING,
}


class Accounting:
    def __init__(self, metrics: Metrics, controller: Controller):
        self.metrics, self.controller = metrics, controller

    def __call__(self, event: Any) -> None:
        state = self.controller.actions.get(event.key) if event.key else None
        self.metrics.observe(event, state.action if state else None)
        if state is not None:
            self._log_action(event, state)
        elif event.type == "batch.submitted":
            self._account_reused(event.batch)
        elif event.type in ("episode.delivered", "episode.failed"):
            self._episode(event)
        elif event.type == "batch.failed":
            log.error("batch.failed", batch=event.batch, reason=event.data.reason)
        elif event.type in ("webhook.delivered", "webhook.failed"):
            d = event.data  # the receiver's host only: the journal holds nothing more of its URL
            log.log(
                _LEVELS[event.type],
                event.type,
                batch=event.batch,
                kind=d.kind,
                episode=d.episode,
                host=d.host,
                attempts=d.attempts,
                detail=d.detail,
            )

    def _episode(self, event: Any) -> None:
        ep = self.controller.episodes[(event.batch, event.data.episode)]
        seconds = 0.0
        if event.type == "episode.delivered" and ep.final_key is not None:  # its length: cost per finished minute
            final = self.controller.actions[ep.final_key].manifest
            seconds = float((final.meta if final else {}).get("duration", 0.0))
        self.metrics.episode(ep.job.studio, event.type.split(".")[1], seconds)
        log.log(
            _LEVELS.get(event.type, logging.INFO),
            event.type,
            batch=event.batch,
            studio=ep.job.studio,
            series=ep.job.series.id,
            episode=ep.job.episode.slug,
            reason=getattr(event.data, "reason", None),
        )

    def _account_reused(self, batch_id: str) -> None:
        """Work a new batch finds already done in this controller is its cache hit (no event says so)."""
        studio = self.controller.batches[batch_id].terms.studio
        for state in self.controller.reused(batch_id):
            assert state.manifest is not None
            self.metrics.cached(studio, state.action.stage, state.manifest.usage)

    def _log_action(self, event: Any, state: ActionState) -> None:
        """One line per journaled action event, with the action's context (logs.action_context)."""
        d = event.data
        extra: dict[str, Any] = {}
        if event.type == "action.failed":
            extra = {"error": d.error, "retryable": d.retryable, "worker": d.worker, "attempt": d.attempt}
        elif event.type == "action.retry":
            extra = {"retry_in_s": round(d.not_before - event.at, 3)}
        elif event.type == "action.quarantined":
            extra = {"reason": d.reason}
        elif event.type == "action.completed":
            extra = {"seconds": round(d.finished_at - d.started_at, 3)}
            if d.usage.load_seconds > 0:  # its run loaded the model first (farm_model_loads_total)
                extra["load_seconds"] = round(d.usage.load_seconds, 3)
            if state.action.stage == JUDGE:  # what it decided on which take, and the checks that failed
                extra |= _verdict(d.meta, state.action.params.get("target") or {})
        # a lookup (action.cached) is charged to no batch: name one that needs it
        batch = event.batch or state.charged_to or min((b for b, _ in state.episodes), default=None)
        log.log(_LEVELS.get(event.type, logging.INFO), event.type, **logs.action_context(state.action, batch), **extra)


def _verdict(meta: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """A judge's verdict for its log line: pass/fail, score, the judged take and the names of the failed checks."""
    checks = meta.get("checks")
    checks = checks if isinstance(checks, list) else []
    failed = [c.get("name") for c in checks if isinstance(c, dict) and not c.get("passed")]
    return {"verdict": meta.get("verdict"), "score": meta.get("score"), "take": target.get("take"), "failed": failed}
