"""The ObjectStore port: a flat namespace of immutable-by-convention objects.

Two implementations ship with the farm and pass the same contract suite
(tests/store/test_contract.py): ``LocalStore`` (a directory, the embedded default) and ``S3Store``
(any S3 server, through the minio client). ``farm.store.ArtifactStore`` builds blobs, manifests and
readable deliverable paths on top of it.

Object names are '/'-separated, relative, and made only by the farm from validated slugs and hex
digests; ``check_name`` refuses anything that could leave the store's root.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from farm.errors import StoreError

# A leading '_' is allowed for the farm's own trees (``_farm/``): studio slugs cannot start with one.
# Matched with fullmatch: ``$`` would also match before a final newline ("acme\n").
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe object name, else raise StoreError."""
    parts = name.split("/")
    if not name or any(not _SEGMENT.fullmatch(p) or p in (".", "..") or ".." in p for p in parts):
        raise StoreError(f"refusing unsafe object name {name!r}")
    return name


class ObjectStore(Protocol):
    def put_file(self, name: str, path: Path) -> None:
        """Store the file's bytes under ``name``, atomically: readers see all of it or nothing."""

    def put_bytes(self, name: str, data: bytes, *, durable: bool = True) -> None:
        """Store bytes atomically. ``durable=False`` allows a write that survives the process but
        not the machine (no fsync); backends that are always durable ignore it."""

    def get_file(self, name: str, dest: Path) -> None:
        """Write the object to ``dest``; raises StoreError if it does not exist."""

    def get_bytes(self, name: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Names under ``prefix`` (a folder ending in '/'), recursively, in no promised order."""

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy where the backend has one."""

    def describe(self) -> str:
        """Where the store is, for people (never credentials)."""
