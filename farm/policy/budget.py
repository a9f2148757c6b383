"""Whether a batch can afford to start an action: projected spend must stay within every cap.

Projected spend on a dimension (tokens, GPU-seconds, money) is what the batch has spent, plus the
estimates of its actions still running, plus this action's estimate. An action is held if that
would pass a cap *and* the action costs something on that dimension: a CPU mux under a GPU-seconds
cap always goes, so episodes whose expensive work is done can still be finished.

Overshoot therefore comes only from actions that cost more than estimated: at most the sum over the
batch's in-flight actions of (actual - estimate). The simulator checks spend <= cap + the cost of
the largest single action.

Example::

    admits(BatchTerms("b", "s", budget=Budget(gpu_seconds=3600)), Spend(gpu_seconds=3590),
           Spend(gpu_seconds=20), task_costing_15_gpu_seconds)
    # "gpu_seconds: 3,590 spent + 20 running + 15 this action would pass the cap of 3,600"
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.policy.types import NO_SPEND, BatchTerms, Spend, Task

DIMENSIONS = ("tokens", "gpu_seconds", "money")
EPS = 1e-9


@dataclass(frozen=True)
class Overrun:
    dimension: str
    spent: float
    running: float
    this: float
    cap: float

    def __str__(self) -> str:
        return (
            f"{self.dimension}: {self.spent:,g} spent + {self.running:,g} running + {self.this:,g} "
            f"this action would pass the cap of {self.cap:,g}"
        )


def overruns(terms: BatchTerms, spent: Spend, committed: Spend, task: Task) -> list[Overrun]:
    """Every cap that starting ``task`` would pass, in DIMENSIONS order (empty: it may start)."""
    budget = terms.budget
    if not budget.capped:
        return []
    found = []
    for dim in DIMENSIONS:
        cap = getattr(budget, dim)
        this = getattr(task.estimate, dim)
        if cap is None or this <= 0:
            continue
        s, r = getattr(spent, dim), getattr(committed, dim)
        if s + r + this > cap + EPS:
            found.append(Overrun(dim, s, r, this, cap))
    return found


def admits(terms: BatchTerms, spent: Spend | None, committed: Spend | None, task: Task) -> str | None:
    """None if ``task`` may start within ``terms.budget``; else the reason, naming the cap."""
    found = overruns(terms, spent or NO_SPEND, committed or NO_SPEND, task)
    return str(found[0]) if found else None


def costs_on(task: Task) -> frozenset[str]:
    """The dimensions on which ``task`` is estimated to cost something."""
    est = task.estimate
    return frozenset(d for d in DIMENSIONS if getattr(est, d) > 0)
