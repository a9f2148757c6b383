"""The values the scheduling policies read and return. Plain frozen dataclasses, no behaviour to speak of.

A ``Task`` is what the scheduler knows about one ready action: who it is for (batch, studio, episode),
what it holds while it runs (CPUs, GPUs on an accelerator, a backend slot) and what it is expected to
cost (seconds, tokens, GPU-seconds, money). ``BatchTerms`` are what a studio asked for when it
submitted a batch: a priority class, a deadline, a budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# Higher is more urgent. Batch specs name a class; the policies compare the integers.
PRIORITY_CLASSES: Mapping[str, int] = {"low": 0, "normal": 1, "high": 2, "urgent": 3}


def priority_of(name: str) -> int:
    """The integer of a priority class name; ValueError naming the known classes otherwise."""
    try:
        return PRIORITY_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown priority class {name!r} (known: {', '.join(PRIORITY_CLASSES)})") from None


@dataclass(frozen=True, slots=True)
class Spend:
    """Tokens, GPU-seconds and money: spent, committed (estimates of running actions) or estimated."""

    tokens: int = 0
    gpu_seconds: float = 0.0
    money: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.tokens + other.tokens, self.gpu_seconds + other.gpu_seconds, self.money + other.money)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(self.tokens - other.tokens, self.gpu_seconds - other.gpu_seconds, self.money - other.money)

    def to_json(self) -> dict[str, float]:
        return {"tokens": self.tokens, "gpu_seconds": round(self.gpu_seconds, 3), "money": round(self.money, 4)}


NO_SPEND = Spend()


@dataclass(frozen=True)
class Prices:
    """The price table money is computed from (settings ``prices``): per 1,000 tokens, per GPU-hour."""

    per_1k_tokens: float = 0.0
    per_gpu_hour: float = 0.0

    def money(self, tokens: float, gpu_seconds: float) -> float:
        return tokens / 1000 * self.per_1k_tokens + gpu_seconds / 3600 * self.per_gpu_hour


@dataclass(frozen=True, slots=True)
class Task:
    """One ready action as the scheduler sees it.

    ``accelerator`` None means any GPU will do; a name pins the action to GPUs of that kind.
    The ``est_*`` fields are the backend's estimate, known before the action runs.
    """

    key: str
    batch: str
    studio: str
    episode: str
    stage: str
    backend: str
    cpus: float = 1.0
    gpus: float = 0.0
    accelerator: str | None = None
    est_seconds: float = 0.0
    est_tokens: int = 0
    est_gpu_seconds: float = 0.0
    est_money: float = 0.0

    @property
    def estimate(self) -> Spend:
        return Spend(self.est_tokens, self.est_gpu_seconds, self.est_money)


@dataclass(frozen=True)
class Budget:
    """Caps on a batch's spend; None means no cap on that dimension."""

    tokens: int | None = None
    gpu_seconds: float | None = None
    money: float | None = None

    @property
    def capped(self) -> bool:
        return self.tokens is not None or self.gpu_seconds is not None or self.money is not None


@dataclass(frozen=True)
class BatchTerms:
    """What a batch asked for. ``deadline`` and ``submitted`` are epoch seconds; ``order`` is the
    submission sequence number (the last tie-break between batches)."""

    id: str
    studio: str
    priority: int = PRIORITY_CLASSES["normal"]
    deadline: float | None = None
    budget: Budget = field(default_factory=Budget)
    submitted: float = 0.0
    order: int = 0

    def __post_init__(self) -> None:
        if self.deadline is not None and not math.isfinite(self.deadline):
            raise ValueError(f"batch {self.id}: deadline must be a finite time or None")


@dataclass(frozen=True)
class Share:
    """A studio's claim on the farm's GPUs (like an OpenCue subscription): a weight for dividing
    contended GPUs and a floor it is guaranteed whenever it has work."""

    studio: str
    weight: float = 1.0
    floor_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"share of {self.studio}: weight must be > 0, got {self.weight}")
        if self.floor_gpus < 0:
            raise ValueError(f"share of {self.studio}: floor_gpus must be >= 0, got {self.floor_gpus}")


@dataclass(frozen=True)
class Capacity:
    """What is free right now: CPUs, and GPUs per accelerator kind (None: GPUs of no named kind)."""

    cpus: float
    gpus_by_accelerator: Mapping[str | None, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunState:
    """What is running and what has been spent, as the scheduler needs it.

    ``committed_by_batch`` is the sum of the *estimates* of a batch's running actions; the caller adds
    an action's estimate when it dispatches it and takes the same estimate off when it ends (and adds
    the actual usage to ``spent_by_batch``).
    """

    gpus_by_studio: Mapping[str, float] = field(default_factory=dict)
    running_by_backend: Mapping[str, int] = field(default_factory=dict)
    spent_by_batch: Mapping[str, Spend] = field(default_factory=dict)
    committed_by_batch: Mapping[str, Spend] = field(default_factory=dict)


@dataclass
class Selection:
    """What to start now, in order; where each GPU action was counted (accelerator kind); and, per
    batch, why its budget holds it (the first reason this round)."""

    dispatch: list[Task] = field(default_factory=list)
    placed: dict[str, str | None] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
