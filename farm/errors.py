"""The farm's errors: one root, a ``retryable`` flag the scheduler reads.

::

    FarmError
      ├── UsageError        the user's mistake: an option, a setting, a backend name; says the fix (exit 2)
      │     └── SpecError   a spec (YAML) is invalid; names the file, the line, the field path and the fix
      ├── StoreError        the artifact store failed (S3 errors are mapped here once)
      │     ├── Fenced      a newer controller opened the journal: this one may no longer write
      │     └── StoreUnwritable  a disk refused a write: full, over quota, read-only, no permission
      └── ActionFailed      a stage's backend failed; keeps the backend's message and retryability

Stage backends raise ``workers.api.StageError``; the runtime maps it to ``ActionFailed`` at one place.
Anything else that escapes is a bug: the command exits 1 and keeps the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class FarmError(Exception):
    retryable = False


class UsageError(FarmError):
    """Something the user asked for cannot be done as asked; the message says what to do instead."""


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec: where (file, line, field path) and what to do about it."""

    file: str
    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class SpecError(UsageError):
    """A spec failed validation; ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(FarmError):
    pass


class Fenced(StoreError):
    """A newer controller has opened the journal for writing, so this one may no longer write to it.
    Never retryable: the controller that gets it must stop (its successor holds the batches now)."""

    retryable = False


class StoreUnwritable(StoreError):
    """A file system refused a write (ENOSPC, EDQUOT, EROFS, EACCES): one line says what, where, how
    much space is free there and the fix. Not retryable: a full or read-only disk does not clear in the
    seconds a retry waits, and every retry would run the stage again (GPU time and paid calls) only to
    fail at the same write. The action fails for good and its episode fails with this line; what
    finished is kept, so once ops has freed space, submitting the batch again reruns only the rest."""

    retryable = False


class ActionFailed(FarmError):
    def __init__(
        self,
        key: str,
        label: str,
        message: str,
        *,
        retryable: bool,
        worker: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{label}: {message}")
        self.key = key
        self.label = label
        self.retryable = retryable
        self.worker = worker  # the Ray node it failed on, for quarantine across distinct workers
        self.retry_after = retry_after  # seconds the provider asked us to wait (HTTP Retry-After)
        self._message = message

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # survives pickling across Ray processes with every field
        return (
            _rebuild_action_failed,
            (self.key, self.label, self._message, self.retryable, self.worker, self.retry_after),
        )


def _rebuild_action_failed(
    key: str, label: str, message: str, retryable: bool, worker: str | None, retry_after: float | None = None
) -> ActionFailed:
    return ActionFailed(key, label, message, retryable=retryable, worker=worker, retry_after=retry_after)
