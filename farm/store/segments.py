"""How the journal's objects are named, written and read (farm.store.journal): segment and snapshot
names with their epoch, a segment's body, and creating an object only if it does not exist (the
epoch claims that fence a stale writer), on a local store and on S3."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from farm.core import events as ev
from farm.errors import StoreError
from farm.store.base import refused_write
from farm.store.local import LocalStore, fsync_dir

CHUNK = 1000  # segments per log folder: replay lists only the folders from its snapshot on


@dataclass(frozen=True)
class Seg:
    """A segment (or a snapshot of the segments before ``n``) written in ``epoch``."""

    n: int
    epoch: int
    name: str


def segment_body(events: Iterable[Any]) -> bytes:
    return "".join(ev.dump(e) + "\n" for e in events).encode("utf-8")


def parse_events(data: bytes) -> list[Any]:
    return [ev.parse(line) for line in data.decode("utf-8", "replace").splitlines() if line.strip()]


def log_name(prefix: str, n: int, epoch: int) -> str:
    return f"{prefix}/log/{n // CHUNK:06d}/{n:012d}-{epoch:08d}.jsonl"


def seg_of(prefix: str, name: str, log: bool = False) -> Seg | None:
    """A segment (``log``) or snapshot name as (number, epoch); None for anything else under ``prefix``
    (claims, archives). Segments are under ``log/``, or at the top for the first journals (epoch 0)."""
    rel = name[len(prefix) + 1 :] if name.startswith(prefix + "/") else ""
    parts = rel.split("/")
    wanted = (len(parts) == 3 and parts[0] == "log") or len(parts) == 1 if log else len(parts) == 2
    if not wanted or (not log and parts[0] != "snap") or not rel.endswith(".jsonl"):
        return None
    number, _, epoch = parts[-1][:-6].partition("-")
    if not number.isdigit() or not (epoch.isdigit() or not epoch):
        return None
    return Seg(int(number), int(epoch or 0), name)


def epoch_of(name: str) -> int:
    stem = name.rsplit("/", 1)[-1][:12]
    return int(stem) if stem.isdigit() else -1


def epoch_limits(segments: Sequence[Seg]) -> Any:
    """epoch -> the first segment number a later epoch wrote (what epoch e wrote from there on is stale)."""
    start: dict[int, int] = {}
    for s in segments:
        start[s.epoch] = min(start.get(s.epoch, s.n), s.n)
    bound: dict[int, float] = {}
    lowest = float("inf")
    for epoch in sorted(start, reverse=True):
        bound[epoch] = lowest
        lowest = min(lowest, start[epoch])

    def limit(epoch: int) -> float:
        if epoch in bound:
            return bound[epoch]
        return min((n for e, n in start.items() if e > epoch), default=float("inf"))

    return limit


def create_local(objects: LocalStore, name: str, body: bytes) -> bool:
    """Create ``name`` with ``body`` unless it exists, atomically (a hard link does not replace)."""
    target = objects.path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{secrets.token_hex(8)}"
    with open(tmp, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(tmp, target)
        fsync_dir(target.parent)  # the claim outlives a power loss once it is acknowledged
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise refused_write(exc, f"{name} to the store", target) or exc from exc
    finally:
        tmp.unlink(missing_ok=True)


def s3_put_if_absent(objects: Any, name: str, body: bytes) -> bool | None:
    """A conditional put on S3: True if created, False if it existed, None if the server has no
    conditional puts (then the caller claims by listing)."""
    from minio.error import S3Error

    from farm.store.s3 import S3Store

    if not isinstance(objects, S3Store):
        return None
    headers: dict[str, Any] = {"If-None-Match": "*", "Content-Length": str(len(body))}
    try:
        objects._client._execute("PUT", objects.bucket, objects._key(name), body=body, headers=headers)
        return True
    except S3Error as exc:
        if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        if exc.code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
            return None
        raise StoreError(f"S3 claiming {name}: {exc.code}: {exc.message}") from exc
