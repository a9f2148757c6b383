"""Pure scheduling policies, one decision per module; the live controller and ``farm simulate`` both
decide with them. No Ray, no I/O, no clock: time and state are passed in.

    ranking     in what order ready actions are considered (priority, deadline slack, critical path)
    fairshare   how many GPUs each studio may hold (weights, floors, burst)
    budget      whether a batch can afford an action (tokens, GPU-seconds, money)
    caps        at most N actions at once per backend (rate-limited APIs)
    retry       after a failure: retry with backoff, quarantine, or give up
    ready       the ready set, ordered and split into lanes so a round stops early
    scheduler   select(): the one function that applies all of the above
"""

from farm.policy.budget import admits as budget_admits
from farm.policy.caps import admits as cap_admits
from farm.policy.fairshare import allowances
from farm.policy.ranking import NO_PACE, PACE_WEIGHT, Pace, pace, sort_key, upward_ranks
from farm.policy.ready import ReadyQueue, lane_of
from farm.policy.retry import GiveUp, Quarantine, Retry, RetryPolicy, jitter
from farm.policy.scheduler import select
from farm.policy.types import (
    NO_SPEND,
    PRIORITY_CLASSES,
    BatchTerms,
    Budget,
    Capacity,
    Prices,
    RunState,
    Selection,
    Share,
    Spend,
    Task,
    priority_of,
)

__all__ = [
    "NO_SPEND",
    "PRIORITY_CLASSES",
    "BatchTerms",
    "Budget",
    "Capacity",
    "Prices",
    "GiveUp",
    "Quarantine",
    "ReadyQueue",
    "Retry",
    "RetryPolicy",
    "RunState",
    "Selection",
    "Share",
    "Spend",
    "Task",
    "allowances",
    "budget_admits",
    "cap_admits",
    "jitter",
    "lane_of",
    "NO_PACE",
    "PACE_WEIGHT",
    "Pace",
    "pace",
    "priority_of",
    "select",
    "sort_key",
    "upward_ranks",
]
