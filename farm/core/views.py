"""What people see of a batch: ``batch_status`` (``farm batch status``, the webhooks' and the metrics'
view of a batch). Pure: the controller's state and a time in, a JSON-able dict out."""

from __future__ import annotations

from typing import Any

from farm.core.plan import JUDGE, STAGES
from farm.core.spec import PRIORITY_CLASSES


def batch_status(c: Any, batch_id: str, now: float) -> dict[str, Any]:
    """What ``farm batch status`` shows of a batch: its episodes, actions per stage, spend and budget,
    projected finish, failures, the episodes held for review and its notifications."""
    if batch_id in c.archives:
        return dict(c.archives[batch_id])
    batch = c.batches[batch_id]
    eps = [c.episodes[(batch_id, e)] for e in batch.episodes]
    stages: dict[str, dict[str, int]] = {}
    for key in {k for ep in eps for k in ep.keys}:
        s = c.actions[key]
        row = stages.setdefault(s.action.stage, {"done": 0, "cached": 0, "running": 0, "pending": 0, "failed": 0})
        reused = s.cached or (s.status == "done" and s.charged_to != batch_id)
        status = "cached" if reused else "failed" if s.status == "quarantined" else s.status
        row[status] = row.get(status, 0) + 1
    budget = batch.terms.budget
    projected = c.projected_finish(batch_id, now) if batch.status == "running" else batch.finished_at
    notes = batch.notifications
    failed_notes = [why for why in notes.values() if why is not None]
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
        # episodes with a shot whose every take failed (delivered with the best take unless strict)
        "held_for_review": sum(bool(e.flagged) for e in eps),
        "review": [{"episode": e.id, "shots": list(e.flagged)} for e in eps if e.flagged],
        "actions": {s: stages[s] for s in (*STAGES, JUDGE) if s in stages},
        "spent": batch.spent.to_json(),
        "saved": batch.saved.to_json(),
        "budget": {"tokens": budget.tokens, "gpu_seconds": budget.gpu_seconds, "money": budget.money},
        "held": batch.held,
        "deadline": batch.terms.deadline,
        "projected_finish": projected,
        "on_track": None if batch.terms.deadline is None or projected is None else projected <= batch.terms.deadline,
        "deliverables": {e.id: e.deliverables for e in eps if e.deliverables},
        # webhooks: delivered, and failed after their retries (the last such failure, said in full)
        "notifications": {
            "sent": len(notes) - len(failed_notes),
            "failed": len(failed_notes),
            "last_error": failed_notes[-1] if failed_notes else None,
        },
    }
