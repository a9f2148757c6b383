"""The controller's memory: an append-only log of events, kept in the artifact store.

Every change is an event written here *before* it takes effect (DESIGN.md, invariant 5). Events are
appended in segments (one object per group commit: ``_farm/journal/000000000042.jsonl``), because S3
objects cannot be appended to; replay reads the segments in order. A segment is written whole or
not at all, so a crash mid-write loses only events that never took effect.

Example::

    journal = Journal(LocalStore("farm-store"))
    journal.append([{"type": "batch.submitted", "batch": "b-1", "data": {...}}], now=time.time())
    for event in journal.replay(): ...
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from farm.errors import StoreError
from farm.store.base import ObjectStore

SCHEMA_VERSION = 1
PREFIX = "_farm/journal"

EventType = Literal[
    "batch.submitted", "batch.cancelled", "batch.finished", "budget.exhausted",
    "action.cached", "action.dispatched", "action.completed", "action.failed", "action.retry", "action.quarantined",
    "episode.delivered", "episode.failed", "webhook.delivered", "webhook.failed",
]


# Events whose effect a client has been told of: these segments are flushed before the answer.
ACKNOWLEDGED = frozenset({"batch.submitted", "batch.cancelled"})


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: int = SCHEMA_VERSION
    seq: int = Field(ge=0)
    at: float
    type: EventType
    batch: str | None = None
    key: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Journal:
    """Append-only event segments under ``_farm/journal/`` of an ObjectStore. One writer at a time."""

    def __init__(self, objects: ObjectStore, prefix: str = PREFIX):
        self.objects, self.prefix = objects, prefix
        self._segment: int | None = None
        self._seq = 0

    def _segments(self) -> list[str]:
        return sorted(n for n in self.objects.list(self.prefix + "/") if n.endswith(".jsonl"))

    def replay(self) -> Iterator[Event]:
        """Every event ever appended, in order. Also positions the journal to append after them."""
        names = self._segments()
        seq = 0
        for name in names:
            data = self.objects.get_bytes(name)
            if data is None:
                raise StoreError(f"journal segment {name} vanished during replay")
            for line in data.decode("utf-8").splitlines():
                if line.strip():
                    event = Event.model_validate_json(line)
                    seq = event.seq + 1
                    yield event
        self._segment = int(names[-1].rsplit("/", 1)[-1][:-6]) + 1 if names else 0
        self._seq = seq

    def append(self, events: list[dict[str, Any]], now: float) -> list[Event]:
        """Write ``events`` (dicts with type, batch, key, data) as one segment; return them sequenced.

        A segment holding an event that a client is told about (a submitted or cancelled batch) is
        flushed to disk before this returns. Other events only need to outlive the controller's
        process, not the machine: dispatches and completions are re-derived on replay from the
        manifests, which workers write durably.
        """
        if not events:
            return []
        if self._segment is None:
            for _ in self.replay():
                pass
        out = []
        for e in events:
            out.append(Event(seq=self._seq, at=now, **e))
            self._seq += 1
        body = "".join(json.dumps(ev.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False) + "\n"
                       for ev in out)
        durable = any(ev.type in ACKNOWLEDGED for ev in out)
        self.objects.put_bytes(f"{self.prefix}/{self._segment:012d}.jsonl", body.encode("utf-8"), durable=durable)
        self._segment += 1
        return out
