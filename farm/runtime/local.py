"""The in-process runtime: actions run on threads of this process, through the same ``execute`` as a
Ray worker, against the same store. A real runtime, not a mock (as httpx ships ``MockTransport``):
the engine, the controller, metrics, reports and logs are tested on it without Ray.

It offers ``cpus`` CPUs (default: this machine's) and ``gpus`` GPUs by accelerator kind (default
none), and the controller never starts more than fits: the threads are the workers. A GPU action
runs on a thread too, so GPU scheduling can be tested with backends that need no GPU (``noop``).

Example::

    runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from farm.catalog import Catalog
from farm.core.events import ActionResult
from farm.core.manifest import Blob
from farm.core.plan import Action
from farm.core.ports import Finished
from farm.core.state import Profile
from farm.errors import ActionFailed, FarmError
from farm.policy import Capacity
from farm.runtime.capacity import left_over
from farm.runtime.execute import execute
from farm.settings import StoreSpec


class InProcessRuntime:
    grows = False  # a fixed set of workers

    def __init__(
        self,
        spec: StoreSpec,
        catalog: Catalog | None = None,
        *,
        cpus: float | None = None,
        gpus: Mapping[str | None, float] | None = None,
        log_level: str = "WARNING",
    ):
        self.spec, self.catalog = spec, catalog or Catalog()
        self.cpus = float(cpus if cpus is not None else (os.cpu_count() or 1))
        self.gpus = dict(gpus or {})
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="farm-action")
        self._running: dict[Future, tuple[Action, Profile]] = {}
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return len(self._running)

    def submit(
        self, action: Action, inputs: Mapping[str, Blob], profile: Profile, batch: str | None, placement: Any = None
    ) -> None:
        future = self._pool.submit(
            execute,
            action.to_json(),
            {k: b.model_dump() for k, b in inputs.items()},
            self.spec,
            action.context["studio"],
            batch,
            self.catalog.configs,
        )
        with self._lock:
            self._running[future] = (action, profile)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        with self._lock:
            futures = list(self._running)
        if not futures:
            return []
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for future in sorted(done, key=lambda f: self._running[f][0].key):
            with self._lock:
                action, _ = self._running.pop(future)
            out.append(self._finished(action, future))
        return out

    @staticmethod
    def _finished(action: Action, future: Future) -> Finished:
        error = future.exception()
        if error is None:
            return Finished(action, ActionResult.model_validate(future.result()), None)
        if isinstance(error, ActionFailed):
            return Finished(action, None, error)
        retryable = error.retryable if isinstance(error, FarmError) else True  # the store, the disk: try again
        failed = ActionFailed(action.key, action.label, f"{type(error).__name__}: {error}", retryable=retryable)
        failed.__cause__ = error
        return Finished(action, None, failed)

    def capacity(self) -> Capacity:
        with self._lock:
            held = [profile for _, profile in self._running.values()]
        return left_over(self.cpus, self.gpus, held)

    def request_capacity(self, shapes: Sequence[tuple[float, float, str | None]]) -> None:
        """One machine does not grow."""

    def cancel(self, keys: Collection[str]) -> None:
        """Threads cannot be stopped: a cancelled action runs to its end and its result is kept."""

    def adopt(self, actions: Sequence[Action]) -> set[str]:
        """Threads die with the process that hosts the engine: nothing outlives it."""
        return set()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._running.clear()
