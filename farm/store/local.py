"""LocalStore: the embedded default, objects as files under one directory."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from farm.errors import StoreError
from farm.store.base import check_name


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


class LocalStore:
    """Objects as files under ``root``; writes go to a temporary file and are renamed into place."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def _atomic(self, name: str, write, durable: bool = True) -> None:
        target = self.path(name)
        try:
            fd, tmp = _create_temp(target.parent)
        except FileNotFoundError:  # the folder is new: make it only then (a mkdir per write is costly)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, name: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._atomic(name, lambda out: shutil.copyfileobj(src, out, 1 << 20))

    def put_bytes(self, name: str, data: bytes, *, durable: bool = True) -> None:
        self._atomic(name, lambda out: out.write(data), durable)

    def get_file(self, name: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.path(name), dest)
        except FileNotFoundError as exc:
            raise StoreError(f"{name} is not in {self.describe()}") from exc

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
        self.put_file(dst, self.path(src))

    def describe(self) -> str:
        return str(self.root)
