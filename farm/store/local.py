"""LocalStore: the embedded default, objects as files under one directory.

Every write goes to a temporary file in the object's folder and is renamed into place, so a reader
sees an object whole or not at all. A durable write (blobs, manifests, the journal segments a client
was told of) is flushed to the disk before the rename, and the folder after it, so that the rename
itself, and any folder it needed, survive a power loss: without the folder's flush the file's data
would be on disk but its name could vanish.

Objects are never written in place, only replaced whole; that is what lets ``copy`` (publishing an
episode) hard-link the blob instead of writing its bytes again. A linked object is made read-only
(blobs are content-addressed and immutable), so that no program writes into the blob through the
deliverable's name.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from farm.errors import StoreError
from farm.store.base import check_name, refused_write

# link() refused for a reason a plain copy does not share: another file system, too many links, a
# file system without hard links
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})


class _NoLink(Exception):
    """This file system cannot link the object here: copy it instead."""


def _create_temp(folder: Path) -> tuple[int, Path]:
    """A new, uniquely named temporary file in ``folder``, opened for writing. Unlike ``mkstemp``
    (always 0600) it gets the mode the process umask gives (0644 under 022), as any file a program
    writes: the store's files, a delivered episode.mp4 among them, are as readable as their folders."""
    for _ in range(100):
        tmp = folder / f".tmp-{secrets.token_hex(8)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and the folders above it that are missing; return those made, deepest first."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
    return missing


class LocalStore:
    """Objects as files under ``root``; writes go to a temporary file and are renamed into place."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def _place(self, name: str, make: Callable[[Path], Path], durable: bool) -> None:
        """Put an object in place: ``make(folder)`` makes the temporary file in the object's folder
        and returns it; it is renamed to the object's name, then the folder is flushed when
        ``durable`` (with any folder that was made for it). A disk that refuses the write raises
        StoreUnwritable; no temporary file is left behind."""
        target = self.path(name)
        tmp: Path | None = None
        try:
            made: list[Path] = []
            try:
                tmp = make(target.parent)
            except FileNotFoundError:  # the folder is new: make it only then (a mkdir per write is costly)
                made = _make_folders(target.parent)
                tmp = make(target.parent)
            os.replace(tmp, target)
            if durable:
                fsync_dir(target.parent)
                for folder in made:
                    fsync_dir(folder.parent)
        except OSError as exc:
            refused = refused_write(exc, f"{name} to the store", target)
            if refused is None:
                raise
            raise refused from exc
        finally:
            if tmp is not None:
                # gone after a rename; still there after a failure, or when the rename found the same
                # file under both names (a deliverable linked again) and did nothing
                tmp.unlink(missing_ok=True)

    def _atomic(self, name: str, write: Callable[[BinaryIO], object], durable: bool = True) -> None:
        def make(folder: Path) -> Path:
            fd, tmp = _create_temp(folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    write(out)
                    out.flush()
                    if durable:
                        os.fsync(out.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return tmp

        self._place(name, make, durable)

    def put_file(self, name: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._atomic(name, lambda out: shutil.copyfileobj(src, out, 1 << 20))

    def put_bytes(self, name: str, data: bytes, *, durable: bool = True) -> None:
        self._atomic(name, lambda out: out.write(data), durable)

    def get_file(self, name: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.path(name), dest)
        except FileNotFoundError as exc:
            if not self.path(name).is_file():
                raise StoreError(f"{name} is not in {self.describe()}") from exc
            raise
        except OSError as exc:  # the scratch disk, not the store, refused
            Path(dest).unlink(missing_ok=True)
            refused = refused_write(exc, f"{name} from the store to {dest}", Path(dest), "TMPDIR")
            if refused is None:
                raise
            raise refused from exc

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / check_name(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            for f in files:
                if not f.startswith(".tmp-"):
                    yield Path(dirpath, f).relative_to(self.root).as_posix()

    def copy(self, src: str, dst: str) -> None:
        """A hard link to ``src`` under ``dst`` (no byte is written again), made read-only with it;
        a copy where the two cannot share the file (another file system under ``dst``'s folder)."""
        source = self.path(src)
        try:
            mode = source.stat().st_mode
        except FileNotFoundError as exc:
            raise StoreError(f"{src} is not in {self.describe()}") from exc
        target = self.path(dst)
        if target.exists() and os.path.samefile(source, target):
            return  # published before
        try:
            if mode & 0o222:
                os.chmod(source, stat.S_IMODE(mode) & ~0o222)
        except OSError:  # not ours to make read-only (or a read-only disk): a link could let it change
            self.put_file(dst, source)
            return
        try:
            self._place(dst, lambda folder: self._link(source, folder), durable=True)
        except _NoLink:  # another file system under dst's folder, or one without hard links
            self.put_file(dst, source)

    @staticmethod
    def _link(source: Path, folder: Path) -> Path:
        for _ in range(100):
            tmp = folder / f".tmp-{secrets.token_hex(8)}"
            try:
                os.link(source, tmp)
                return tmp
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in _CANNOT_LINK:
                    raise _NoLink(str(exc)) from exc
                raise
        raise FileExistsError(f"no free temporary name in {folder}")

    def describe(self) -> str:
        return str(self.root)
