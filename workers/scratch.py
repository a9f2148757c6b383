"""Scratch folders: every one the farm makes while it runs an action lies under one folder per process,
and the folders of a process that is gone are swept by the next one that makes scratch on the machine.

Layout::

    <tmp>/farm-scratch-<uid>/<host>-<pid>-<start>/<prefix><random>/

``<tmp>`` is the system's temporary folder (TMPDIR); ``<start>`` is when the process started (in
clock ticks since boot), so that a pid the kernel has given to a new process does not keep a dead
one's folder alive. An action's folder is removed when the action ends and the process's folder at
its exit; a process killed (kill -9, the OOM killer) leaves both, and the first scratch folder the
next process makes sweeps them. Another host's folders (containers that share a /tmp) are left alone.

Example::

    with scratch_dir("farm-") as tmp:
        ...  # write files under Path(tmp)
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_roots: dict[int, Path] = {}  # pid -> this process's root (a forked child makes its own)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), "0" where /proc is not
    there, or None when no such process is alive."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]  # a zombie is dead: its parent has not reaped it
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return "0"


def base() -> Path:
    """The folder that holds every process's scratch root, for this user."""
    return Path(tempfile.gettempdir()) / f"farm-scratch-{os.getuid() if hasattr(os, 'getuid') else 0}"


def sweep(folder: Path | None = None) -> list[Path]:
    """Remove the scratch roots of this host's processes that are no longer alive; return them."""
    folder = folder or base()
    host, removed = _host(), []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        owner, sep, rest = entry.name.rpartition("-")
        owner_host, sep2, pid = owner.rpartition("-")
        if not (sep and sep2 and pid.isdigit()) or owner_host != host:
            continue
        if _started(int(pid)) != rest:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def process_root() -> Path:
    """This process's scratch root, made (and the dead processes' swept) on the first call."""
    pid = os.getpid()
    with _lock:
        root = _roots.get(pid)
        if root is None or not root.is_dir():
            folder = base()
            folder.mkdir(mode=0o700, exist_ok=True)
            if root is None:
                sweep(folder)
                atexit.register(shutil.rmtree, folder / f"{_host()}-{pid}-{_started(pid)}", ignore_errors=True)
            root = folder / f"{_host()}-{pid}-{_started(pid)}"
            root.mkdir(exist_ok=True)
            _roots[pid] = root
        return root


def scratch_dir(prefix: str = "farm-") -> tempfile.TemporaryDirectory:
    """A new scratch folder under this process's root, removed when its ``with`` block ends."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=process_root())
