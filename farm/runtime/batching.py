"""Batching on a GPU worker: concurrent actions with equal ``batch_key`` share one backend call.

A ``StageWorker`` for a backend with ``max_batch > 1`` accepts that many actions at once (Ray
runs them on the actor's threads). Each thread hands its action to the ``Batcher`` and waits; one
thread at a time — the leader — takes the oldest waiting action and every other waiting one with
the same key (up to ``max_batch``), runs them as one ``run_batch`` call and hands each its result.
Actions arriving while a batch runs on the device wait for the next one, so the device is fed
full batches under load and single actions without delay when idle (after at most ``wait_s``,
spent only when fewer than ``max_batch`` are waiting).

This is Ray Serve's ``@serve.batch`` idea, kept here so a worker needs nothing but Ray core.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from workers.api import BatchItem, StageError, StageResult


@dataclass
class _Waiting:
    op: str
    key: Any
    item: BatchItem
    done: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, backend, wait_s: float = 0.02):
        self.backend, self.wait_s = backend, wait_s
        self.max_batch = max(1, int(getattr(backend, "max_batch", 1)))
        self._waiting: list[_Waiting] = []
        self._lock = threading.Lock()  # guards _waiting
        self._device = threading.Lock()  # one batch on the device at a time
        self.calls: list[int] = []  # the size of every batch run (for benchmarks and tests)

    def run(self, op: str, item: BatchItem) -> StageResult:
        me = _Waiting(op, (op, self.backend.batch_key(op, item.params)), item)
        with self._lock:
            self._waiting.append(me)
        deadline = time.monotonic() + self.wait_s
        while not me.done.done():
            with self._lock:
                crowd = sum(1 for w in self._waiting if w.key == me.key)
            if crowd < self.max_batch and time.monotonic() < deadline:
                time.sleep(min(0.002, self.wait_s))
                continue
            with self._device:
                if me.done.done():
                    break
                self._lead()
        result = me.done.result()
        if isinstance(result, Exception):
            raise result
        return result

    def _lead(self) -> None:
        with self._lock:
            first = self._waiting[0]
            group = [w for w in self._waiting if w.key == first.key][: self.max_batch]
            for w in group:
                self._waiting.remove(w)
        self.calls.append(len(group))
        try:
            results = self.backend.run_batch(first.op, [w.item for w in group])
            if len(results) != len(group):
                raise StageError(f"{self.backend.name} returned {len(results)} results for {len(group)} actions")
        except Exception as exc:  # the whole call failed: every action of the batch has that error
            results = [exc] * len(group)
        for w, r in zip(group, results):
            w.done.set_result(r)
