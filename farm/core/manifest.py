"""The record that an action is done: what it produced (blob digests), its usage, its timings.

Persisted as JSON validated by pydantic, with a schema version (never pickle).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from farm.policy.types import Prices, Spend
from workers.api import Usage

SCHEMA_VERSION = 1


class Blob(BaseModel):
    model_config = ConfigDict(frozen=True)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    name: str  # the file name the backend gave it (for extensions and downloads)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    stage: str
    op: str
    backend: str
    version: str
    label: str
    outputs: dict[str, Blob]
    meta: dict[str, Any] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)  # the backend's own record, validated as it is
    started_at: float  # unix seconds, taken by the worker
    finished_at: float
    worker: dict[str, str] = Field(default_factory=dict)  # node, pid

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at


def spend_of(usage: Usage, prices: Prices) -> Spend:
    """What a run's usage costs on the budgeted dimensions (tokens, GPU-seconds, money at ``prices``):
    the one place usage becomes spend, for budgets, metrics, reports and the simulator."""
    tokens = _count(usage.tokens_in) + _count(usage.tokens_out)
    gpu_seconds = _count(usage.gpu_seconds)
    return Spend(tokens=tokens, gpu_seconds=gpu_seconds, money=prices.money(tokens, gpu_seconds))


def _count(value: Any) -> Any:
    """A usage amount as reported, or 0 where a backend reported nonsense (negative, NaN, infinite)."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else 0
