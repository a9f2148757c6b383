"""The controller's memory: an append-only log of events, kept in the artifact store.

Every change is an event written here before it takes effect for anyone outside the controller
(DESIGN.md, invariant 5). S3 objects cannot be appended to, so events go in segments, one object per
group commit, and replay reads them in order. Layout under the journal's prefix (``_farm/journal``)::

    epoch/000000000007.json               each incarnation that writes claims the next epoch, once
    log/000000/000000000042-00000007.jsonl segment 42, written in epoch 7 (1,000 segments a folder)
    snap/000000001200-00000007.jsonl      snapshot: what replay needs of segments 0..1199
    batches/<batch>.jsonl                 a finished batch's events, archived by ``compact``
    000000000042.jsonl                    segments of the first journals (epoch 0), still read

**Group commit.** Events whose effect a client has been told of or sees at once (``durable``: a
submission, a cancel, a delivered or failed episode or batch, a webhook's outcome) are written, with
every group before them, before ``append`` returns. The others wait and go out
together as one segment: when the engine's step ends (``step_ended``) and the oldest has waited
``group_s``, at ``flush``, after ``buffer_s``, or at ``max_pending`` events. A crash before that loses
only what is re-derived on replay from the manifests workers write durably (dispatches, completions,
cache hits, retries), never what a client was told.

**One writer, fenced.** A journal claims a new epoch before its first write (``writer=True``: before it
replays), atomically: a create-exclusive file on a local store, a conditional put (``If-None-Match``)
on S3, or, on a server without conditional puts (Swift's s3api answers 501), a claim under a unique
name then verified by listing, which is best effort (two claims that both see only themselves in a
listing that is not yet consistent would both write; each segment still names its writer). Before
every write it checks that no later epoch was claimed, and raises ``Fenced`` instead of writing if
one was. Replay keeps a segment of epoch e only below the first segment of every later epoch, so
what a stale writer managed to write after its successor began is not history.

**Compaction.** ``plan_compaction`` (under the engine's lock: reads the controller) and ``compact``
(I/O, off the loop) replace batches that finished a while ago by one ``batch.archived`` summary each
in a snapshot, and write each one's events to ``batches/<batch>.jsonl`` for ``events_of``. Replay
reads the latest snapshot and the segments after it only, so a restart costs what is live.

Example::

    journal = StoreJournal(LocalStore("farm-store"), writer=True)
    for event in journal.replay(): ...
    journal.append([BatchCancelled(batch="b-1")], now=time.time())
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from farm.core import events as ev
from farm.errors import Fenced, StoreError
from farm.store.base import ObjectStore, check_name
from farm.store.local import LocalStore
from farm.store.segments import (
    CHUNK,
    Seg,
    create_local,
    epoch_limits,
    epoch_of,
    log_name,
    parse_events,
    s3_put_if_absent,
    seg_of,
    segment_body,
)

PREFIX = "_farm/journal"


def render_prefix(studio: str, series: str, episode: str, render: str | None = None) -> str:
    """Where ``farm render`` journals its renders of one episode: in the studio's own tree, one
    journal per render (``render`` None: the folder that holds them all)."""
    base = f"{studio}/renders/{series}/{episode}"
    return check_name(f"{base}/{render}" if render else base)


# Events whose effect a client has been told of, or may see at once (a status, a webhook): these are
# written (and fsynced), with everything waiting before them, before the answer.
ACKNOWLEDGED = frozenset(
    ("batch.submitted", "batch.cancelled", "batch.finished", "batch.failed")
    + ("episode.delivered", "episode.failed", "webhook.delivered", "webhook.failed", "review.recorded")
)


@dataclass(frozen=True)
class Compaction:
    """What ``compact`` does: archive ``archives`` (``batch.archived`` summaries, with the keys of each
    batch's actions) and snapshot the journal below segment ``upto``; ``needs``: each action that the
    batches kept whole still need -> those batches."""

    upto: int
    archives: tuple[tuple[Any, frozenset[str]], ...]
    needs: Mapping[str, frozenset[str]]


class StoreJournal:
    """Append-only event segments under ``prefix`` of an ObjectStore, one fenced writer at a time.

    Args:
        durable: event types written (with everything before them) before ``append`` returns, and
            fsynced; the rest only need to outlive the process, being re-derived on replay.
        buffer_s: write waiting groups once this many seconds have passed since the last write, at the
            next append (``farm render``'s record); None: no such bound.
        group_s: at the end of an engine step, write the waiting groups only if the oldest has waited
            this long (the controller's loop steps at least every 50 ms, so a group waits at most about
            ``group_s`` plus a step); 0: every step that journaled is a segment.
        clock: what ``group_s`` and ``buffer_s`` are measured with (a simulation passes its own).
        writer: claim the epoch before replaying (the controller's journal: nothing another incarnation
            writes after this one has read is taken as history). A journal opened only to read never
            claims one; one that appends without it claims at its first write and is fenced at once if
            anything was written since it replayed.
    """

    def __init__(
        self,
        objects: ObjectStore,
        prefix: str = PREFIX,
        durable: Collection[str] = ACKNOWLEDGED,
        buffer_s: float | None = None,
        *,
        writer: bool = False,
        group_s: float = 0.1,
        max_pending: int = 5000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.objects, self.prefix, self.durable, self.buffer_s = objects, prefix, frozenset(durable), buffer_s
        self.writer, self.group_s, self.max_pending, self._clock = writer, group_s, max_pending, clock
        self.epoch: int | None = None  # claimed, once this journal writes
        self._segment: int | None = None
        self._seq = 0
        self._pending: list[Any] = []
        self._failing = False  # the last write raised: appends write at once until one succeeds
        self._pending_since = self._written_at = clock()
        self._lock = threading.Lock()
        self._conditional = True  # the S3 server honours If-None-Match (until it answers otherwise)
        self._archived: set[str] = set()  # batches this journal's compactions archived

    # -- reading ------------------------------------------------------------------------------------
    def replay(self) -> Iterator[Any]:
        """Every event of the journal's valid history, in order: the latest snapshot's, then the
        segments after it. The first replay also positions the journal to append after them."""
        if self.writer and self.epoch is None:
            self._open(early=True)
        snap, segments = self._history()
        seq = 0
        for event in self._read([*([snap] if snap else []), *segments]):
            seq = max(seq, event.seq + 1)
            yield event
        if self._segment is None:
            self._segment = segments[-1].n + 1 if segments else (snap.n if snap else 0)
            self._seq = seq

    def events_of(self, batch_id: str, related: bool = False) -> list[Any]:
        """The events of batch ``batch_id`` without replaying the whole journal: its archive (if it was
        compacted) and what the live part holds of it. ``related``: also the events of its actions
        charged to other batches or to none (cache hits), which a report needs to rebuild it."""
        name = f"{self.prefix}/batches/{check_name(batch_id)}.jsonl"
        archived = parse_events(self.objects.get_bytes(name) or b"")
        seen = {e.seq for e in archived}
        if not related:
            archived = [e for e in archived if e.batch == batch_id]
        snap, segments = self._history()
        live = [
            e
            for e in self._read([*([snap] if snap else []), *segments])
            if e.batch == batch_id and e.type != "batch.archived" and e.seq not in seen
        ]
        return archived + live

    def _history(self) -> tuple[Seg | None, list[Seg]]:
        """The latest valid snapshot and the valid segments after it, in order."""
        snaps = [s for s in (seg_of(self.prefix, n) for n in self.objects.list(f"{self.prefix}/snap/")) if s]
        base = max((s.n for s in snaps), default=0)
        if snaps:
            names: list[str] = []
            chunk = base // CHUNK
            while True:  # segment numbers are dense, so the first empty folder is the end
                found = list(self.objects.list(f"{self.prefix}/log/{chunk:06d}/"))
                if not found:
                    break
                names += found
                chunk += 1
        else:  # never compacted: everything (and the first journals' segments at the top)
            names = list(self.objects.list(self.prefix + "/"))
        segments = [s for s in (seg_of(self.prefix, n, log=True) for n in names) if s]
        limit = epoch_limits(segments)
        valid = sorted((s for s in segments if s.n < limit(s.epoch)), key=lambda s: s.n)
        snap = max((s for s in snaps if s.n <= limit(s.epoch)), key=lambda s: s.n, default=None)
        start = snap.n if snap else 0
        return snap, [s for s in valid if s.n >= start]

    def _read(self, segments: Sequence[Seg]) -> Iterator[Any]:
        """The events of ``segments`` in order; several are fetched at once (a store round trip each)."""
        if not segments:
            return

        def get(seg: Seg) -> bytes:
            data = self.objects.get_bytes(seg.name)
            if data is None:
                raise StoreError(f"journal segment {seg.name} vanished during replay")
            return data

        if len(segments) == 1 or isinstance(self.objects, LocalStore):
            for seg in segments:
                yield from parse_events(get(seg))
            return
        with ThreadPoolExecutor(8) as pool:
            for data in pool.map(get, segments):
                yield from parse_events(data)

    # -- writing ------------------------------------------------------------------------------------
    def append(self, proposals: Sequence[Any], now: float) -> list[Any]:
        """Number and time-stamp ``proposals`` (event models) as one group and return them. The group is
        written before this returns if it holds a durable event (with every group waiting before it),
        else later, with the groups that follow (``step_ended``, ``flush``). If this raises, the journal is exactly as before: the group is not
        numbered, nothing waiting was dropped, and the next append takes the same numbers."""
        if not proposals:
            return []
        if self._segment is None:
            for _ in self.replay():
                pass
        for p in proposals:
            if not isinstance(p, ev.JournaledEvent):
                raise TypeError(f"only the farm's events are journaled, not {type(p).__name__}")
        out = [p.model_copy(update={"seq": self._seq + i, "at": now}) for i, p in enumerate(proposals)]
        waiting = self._pending + out
        late = self.buffer_s is not None and self._clock() - self._written_at >= self.buffer_s
        # after a write failed (the store is down), nothing more is taken in until one succeeds: the
        # caller keeps what it would have applied, instead of running on with a memory the store lacks
        if self._failing or late or len(waiting) >= self.max_pending or any(e.type in self.durable for e in out):
            self._write(waiting)  # raises before anything changes
            self._pending = []
        else:
            if not self._pending:
                self._pending_since = self._clock()
            self._pending = waiting
        self._seq += len(out)
        return out

    def step_ended(self) -> None:
        """The engine's step ended: write the waiting groups if the oldest has waited ``group_s`` (or
        ``buffer_s``, for a journal that asked to be written that seldom)."""
        window = max(self.group_s, self.buffer_s or 0.0)
        if self._pending and self._clock() - self._pending_since >= window:
            self.flush()

    def flush(self) -> None:
        """Write every group appended and not written yet, as one segment."""
        if self._pending:
            self._write(self._pending)
            self._pending = []

    def _write(self, events: Sequence[Any]) -> None:
        assert self._segment is not None
        try:
            self._check_fence()
            assert self.epoch is not None
            body = "".join(ev.dump(e) + "\n" for e in events)
            self.objects.put_bytes(
                log_name(self.prefix, self._segment, self.epoch),
                body.encode("utf-8"),
                durable=any(e.type in self.durable for e in events),
            )
        except Exception:
            self._failing = True
            raise
        self._failing = False
        self._segment += 1
        self._written_at = self._clock()

    # -- fencing ------------------------------------------------------------------------------------
    def _open(self, early: bool) -> None:
        """Claim the next epoch. ``early``: before replaying; else (a journal that replayed unclaimed)
        refuse to write if anything was written after what this journal read."""
        with self._lock:
            if self.epoch is not None:
                return
            while True:
                epoch = max(self._claims(), default=0) + 1
                if self._claim(epoch):
                    break
                time.sleep(random.uniform(0.005, 0.05))
            self.epoch = epoch
        if not early and self._segment is not None:
            _, segments = self._history()
            newer = [s for s in segments if s.n >= self._segment]
            if newer:
                raise Fenced(
                    f"the journal at {self.objects.describe()} {self.prefix} was written ({newer[0].name}) "
                    "after this controller read it: restart the controller to read it again"
                )

    def _check_fence(self) -> None:
        if self.epoch is None:
            self._open(early=False)
        newer = [e for e in self._claims() if e > (self.epoch or 0)]
        if newer:
            raise Fenced(
                f"epoch {max(newer)} of the journal at {self.objects.describe()} {self.prefix} was claimed "
                f"by a newer controller: this one (epoch {self.epoch}) must stop; the newer one holds the batches"
            )

    def _claims(self) -> list[int]:
        return [int(n.rsplit("/", 1)[-1][:12]) for n in self.objects.list(f"{self.prefix}/epoch/")]

    def _claim(self, epoch: int) -> bool:
        """Create the claim of ``epoch``; False if another incarnation holds it (or one after it)."""
        body = f'{{"epoch": {epoch}, "at": {time.time()}, "pid": {os.getpid()}}}\n'.encode()
        name = f"{self.prefix}/epoch/{epoch:012d}.json"
        if isinstance(self.objects, LocalStore):
            return create_local(self.objects, name, body)
        if self._conditional:
            answer = s3_put_if_absent(self.objects, name, body)
            if answer is not None:
                return answer
            self._conditional = False
        mine = f"{self.prefix}/epoch/{epoch:012d}-{secrets.token_hex(6)}.json"
        self.objects.put_bytes(mine, body)
        return not [n for n in self.objects.list(f"{self.prefix}/epoch/") if n != mine and epoch_of(n) >= epoch]

    # -- compaction ---------------------------------------------------------------------------------
    def plan_compaction(self, controller: Any, now: float, older_than: float = 600.0) -> Compaction | None:
        """Which finished batches to archive (those that ended ``older_than`` seconds ago or more, so that
        their last notifications are settled), from ``controller``'s state. Call it where the engine's
        state is read safely (under its lock); it flushes what waits. None: nothing to compact."""
        done = [
            b
            for b, s in controller.batches.items()
            if s.status != "running"
            and b not in controller.archives
            and b not in self._archived
            and (s.finished_at or now) <= now - older_than
        ]
        if not done:
            return None
        self.flush()
        assert self._segment is not None
        gone = set(done) | set(controller.archives) | self._archived
        needs: dict[str, set[str]] = {}
        for (b, _), ep in controller.episodes.items():
            if b not in gone:
                for k in ep.keys:
                    needs.setdefault(k, set()).add(b)
        archives = tuple(
            (
                _summary(controller, b, now),
                frozenset(k for eid in controller.batches[b].episodes for k in controller.episodes[(b, eid)].keys),
            )
            for b in done
        )
        return Compaction(self._segment, archives, {k: frozenset(v) for k, v in needs.items()})

    def compact(self, plan: Compaction) -> dict[str, int]:
        """Archive the planned batches' events and write a snapshot of the journal below ``plan.upto``.
        Safe alongside appends (it writes no segment); fenced like them. Returns what it did."""
        snap, segments = self._history()
        events = list(self._read([*([snap] if snap else []), *[s for s in segments if s.n < plan.upto]]))
        for summary, keys in plan.archives:
            mine = [e for e in events if e.type != "batch.archived" and (e.batch == summary.batch or e.key in keys)]
            if not any(e.batch == summary.batch for e in mine):  # archived before: never overwrite it
                continue
            self._check_fence()
            self.objects.put_bytes(f"{self.prefix}/batches/{check_name(summary.batch)}.jsonl", segment_body(mine))
        gone = {s.batch for s, _ in plan.archives} | {e.batch for e in events if e.type == "batch.archived"}
        idem = {e.batch: e.data.idempotency_key for e in events if e.type == "batch.submitted" and e.batch in gone}
        summaries = [_keyed(s, idem.get(s.batch)) for s, _ in plan.archives]
        kept = [e for e in events if e.type == "batch.archived"] + summaries
        kept += _live(events, gone, plan.needs)
        body = segment_body(kept)
        self._check_fence()
        assert self.epoch is not None
        self.objects.put_bytes(f"{self.prefix}/snap/{plan.upto:012d}-{self.epoch:08d}.jsonl", body)
        self._archived |= {s.batch for s, _ in plan.archives}
        return {
            "archived": len(plan.archives),
            "events_read": len(events),
            "events_kept": len(kept),
            "bytes": len(body),
        }


def _summary(controller: Any, batch_id: str, now: float) -> ev.BatchArchived:
    """What stands for finished batch ``batch_id`` once its events are compacted: its status now."""
    batch = controller.batches[batch_id]
    status = controller.batch_status(batch_id, now)
    data = ev.Archive(submitted=batch.terms.submitted, finished_at=batch.finished_at, status=status)
    return ev.BatchArchived(batch=batch_id, at=now, data=data)


def _keyed(summary: Any, key: str | None) -> Any:
    """The summary with its submission's idempotency key (a resubmission is still answered with it)."""
    return summary.model_copy(update={"data": summary.data.model_copy(update={"idempotency_key": key})})


def _live(events: Sequence[Any], gone: set[str | None], needs: Mapping[str, frozenset[str]]) -> list[Any]:
    """The events a snapshot keeps of the batches not archived: all of theirs, and those of the actions
    they need that other (archived) batches or cache lookups finished. Such an action finished before
    the first batch that needs it was submitted did not exist yet in the compacted history: its result
    comes right after that submission as a cache hit, as a restarted controller would find it."""
    submitted = {e.batch: e.seq for e in events if e.type == "batch.submitted" and e.batch not in gone}
    first = {k: min(submitted[b] for b in bs if b in submitted) for k, bs in needs.items() if bs & submitted.keys()}
    carried: dict[int, dict[str, Any]] = {}  # a submission's seq -> cache hits that follow it
    out: list[Any] = []
    for e in events:
        if e.type == "batch.archived":
            continue
        if e.batch is not None and e.batch not in gone:
            out.append(e)
            out += sorted(carried.pop(e.seq, {}).values(), key=lambda c: c.seq)
        elif e.key in first and e.seq > first[e.key]:
            out.append(e)
        elif e.key in first and e.type in ("action.completed", "action.cached"):
            hit = ev.ActionCached(key=e.key, seq=e.seq, at=e.at, data=e.data)
            carried.setdefault(first[e.key], {})[e.key] = hit
    return out
