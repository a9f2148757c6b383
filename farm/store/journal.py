"""The controller's memory: an append-only log of events, kept in the artifact store.

Every change is an event written here *before* it takes effect (DESIGN.md, invariant 5). Events are
appended in segments (one object per group commit: ``_farm/journal/000000000042.jsonl``), because S3
objects cannot be appended to; replay reads the segments in order. A segment is written whole or
not at all, so a crash mid-write loses only events that never took effect.

Events are the typed models of ``farm.core.events``; replay validates every line and yields an
``Unreadable`` for one it cannot read, which the controller judges against its batch.

Example::

    journal = StoreJournal(LocalStore("farm-store"))
    journal.append([BatchCancelled(batch="b-1")], now=time.time())
    for event in journal.replay(): ...
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from farm.core import events as ev
from farm.errors import StoreError
from farm.store.base import ObjectStore, check_name

PREFIX = "_farm/journal"


def render_prefix(studio: str, series: str, episode: str, render: str | None = None) -> str:
    """Where ``farm render`` journals its renders of one episode: in the studio's own tree, one
    journal per render (``render`` None: the folder that holds them all)."""
    base = f"{studio}/renders/{series}/{episode}"
    return check_name(f"{base}/{render}" if render else base)


# Events whose effect a client has been told of: these segments are flushed before the answer.
ACKNOWLEDGED = frozenset({"batch.submitted", "batch.cancelled"})


class StoreJournal:
    """Append-only event segments under ``prefix`` of an ObjectStore. One writer at a time.

    ``durable``: the event types whose segment is flushed to disk before ``append`` returns (the
    others only need to outlive the process: dispatches and completions are re-derived on replay
    from the manifests, which workers write durably).

    ``buffer_s``: for a journal that is a record, not a memory to recover from (``farm render``'s):
    groups are numbered at once but written together, at most this many seconds late, and by
    ``flush``. None (the controller's journal): each group is written before ``append`` returns.
    """

    def __init__(
        self,
        objects: ObjectStore,
        prefix: str = PREFIX,
        durable: Collection[str] = ACKNOWLEDGED,
        buffer_s: float | None = None,
    ):
        self.objects, self.prefix, self.durable, self.buffer_s = objects, prefix, frozenset(durable), buffer_s
        self._segment: int | None = None
        self._seq = 0
        self._pending: list[Any] = []
        self._written_at = time.monotonic()

    def _segments(self) -> list[str]:
        return sorted(n for n in self.objects.list(self.prefix + "/") if n.endswith(".jsonl"))

    def replay(self) -> Iterator[Any]:
        """Every event ever appended, in order. Also positions the journal to append after them."""
        names = self._segments()
        seq = 0
        for name in names:
            data = self.objects.get_bytes(name)
            if data is None:
                raise StoreError(f"journal segment {name} vanished during replay")
            for line in data.decode("utf-8", "replace").splitlines():
                if line.strip():
                    event = ev.parse(line)
                    seq = max(seq, event.seq + 1)
                    yield event
        self._segment = int(names[-1].rsplit("/", 1)[-1][:-6]) + 1 if names else 0
        self._seq = seq

    def append(self, proposals: Sequence[Any], now: float) -> list[Any]:
        """Write ``proposals`` (event models) as one segment; return them numbered and time-stamped."""
        if not proposals:
            return []
        if self._segment is None:
            for _ in self.replay():
                pass
        assert self._segment is not None
        for p in proposals:
            if not isinstance(p, ev.JournaledEvent):
                raise TypeError(f"only the farm's events are journaled, not {type(p).__name__}")
        out = [p.model_copy(update={"seq": self._seq + i, "at": now}) for i, p in enumerate(proposals)]
        if self.buffer_s is None:
            self._write(out)  # raises before anything changes: the group is not applied
        else:
            if time.monotonic() - self._written_at >= self.buffer_s:
                self.flush()  # earlier groups only: if this raises, this group is neither kept nor applied
            self._pending += out
        self._seq += len(out)
        return out

    def flush(self) -> None:
        """Write the groups appended and not written yet (a buffered journal's), as one segment."""
        if self._pending:
            self._write(self._pending)
            self._pending = []

    def _write(self, events: Sequence[Any]) -> None:
        assert self._segment is not None
        body = "".join(ev.dump(e) + "\n" for e in events)
        self.objects.put_bytes(
            f"{self.prefix}/{self._segment:012d}.jsonl",
            body.encode("utf-8"),
            durable=any(e.type in self.durable for e in events),
        )
        self._segment += 1
        self._written_at = time.monotonic()
