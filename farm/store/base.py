"""The ObjectStore port: a flat namespace of immutable-by-convention objects.

Two implementations ship with the farm and pass the same contract suite
(tests/store/test_contract.py): ``LocalStore`` (a directory, the embedded default) and ``S3Store``
(any S3 server, through the minio client). ``farm.store.ArtifactStore`` builds blobs, manifests and
readable deliverable paths on top of it.

Object names are '/'-separated, relative, and made only by the farm from validated slugs and hex
digests; ``check_name`` refuses anything that could leave the store's root.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from farm.errors import StoreError, StoreUnwritable

# A leading '_' is allowed for the farm's own trees (``_farm/``): studio slugs cannot start with one.
# Matched with fullmatch: ``$`` would also match before a final newline ("acme\n").
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe object name, else raise StoreError."""
    parts = name.split("/")
    if not name or any(not _SEGMENT.fullmatch(p) or p in (".", "..") or ".." in p for p in parts):
        raise StoreError(f"refusing unsafe object name {name!r}")
    return name


# The errors with which a file system refuses a write for a reason a retry in seconds will not cure.
REFUSED_WRITES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def mount_of(path: Path) -> Path:
    """The mount point that holds ``path`` (or would hold it: the nearest existing folder above)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def refused_write(exc: OSError, what: str, path: Path, setting: str = "FARM_STORE") -> StoreUnwritable | None:
    """The one line for a write the file system refused (full, over quota, read-only, no permission),
    or None when ``exc`` is another error. ``what`` is the object or file being written, ``path`` where,
    ``setting`` the environment variable that moves it elsewhere."""
    if exc.errno not in REFUSED_WRITES:
        return None
    mount = mount_of(path)
    try:
        free = f"{_size(shutil.disk_usage(mount).free)} free"
    except OSError:
        free = "free space unknown"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return StoreUnwritable(
            f"{why} on {mount} ({free}) writing {what}: free space on {mount} or point {setting} elsewhere"
        )
    if exc.errno == errno.EROFS:
        return StoreUnwritable(
            f"{mount} is mounted read-only: cannot write {what}: remount it read-write or point {setting} elsewhere"
        )
    folder = path if path.is_dir() else path.parent
    return StoreUnwritable(
        f"no permission to write {what} in {folder} ({free}): "
        f"let this user write to {folder} or point {setting} elsewhere"
    )


class ObjectStore(Protocol):
    def put_file(self, name: str, path: Path) -> None:
        """Store the file's bytes under ``name``, atomically and durably: readers see all of it or
        nothing, and once this returns the object survives a power loss. A disk that refuses the
        write (full, read-only) raises StoreUnwritable and leaves no partial file."""

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
        """Make ``dst`` hold ``src``'s bytes without passing them through this process where the backend
        can: a hard link on a local store (same file system), a server-side copy on S3. Objects are
        only ever replaced whole, never written in place, so ``dst`` and ``src`` stay independent."""

    def describe(self) -> str:
        """Where the store is, for people (never credentials)."""
