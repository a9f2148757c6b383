"""The set of ready actions, kept in scheduling order and split into lanes so a round can stop early.

A *lane* is the set of ready actions that every policy treats alike: same batch (so same studio and
budget), same backend (same concurrency cap), same resource shape (CPUs, GPUs, accelerator) and the
same dimensions of cost. If the scheduler must refuse the first action of a lane, it would refuse the
rest of the lane too for the rest of the round (free resources, allowances, cap slots and budget
headroom only shrink as a round dispatches), so the whole lane is skipped at once. A round
therefore costs O((dispatched + lanes) log n) however many actions are waiting: with tens of
thousands of ready clips and every GPU busy, it looks at one clip, not all of them.

``walk()`` merges the lanes' heads in order and never changes the queue: the caller removes what it
dispatched with ``discard``.

Example::

    q = ReadyQueue()
    q.push(task, ranking.sort_key(task, terms, rank))
    selection = scheduler.select(q, None, batches, free, state)
    for t in selection.dispatch:
        q.discard(t.key)
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from typing import Any

from farm.policy.budget import costs_on
from farm.policy.types import Task

Lane = tuple[Hashable, ...]
Order = tuple[Any, ...]
Entry = tuple[Order, int, Task]  # a heap entry: (order, version, task)


def model_of(task: Task) -> str:
    """The model a GPU task needs loaded, as residency names it (farm.policy.residency): its stage and
    backend."""
    return f"{task.stage}/{task.backend}"


def lane_of(task: Task) -> Lane:
    """The tasks that every policy treats alike: same batch, backend, resource shape, cost dimensions."""
    return (task.batch, task.backend, task.cpus, task.gpus, task.accelerator, costs_on(task))


class ReadyQueue:
    """Ready actions by lane, each lane a heap on the caller's order key (smallest first).

    Order keys must be comparable with each other; end them with the action key so they are unique
    (``ranking.sort_key`` does). ``gpu_demand()`` is what fair share needs: GPUs wanted per studio;
    ``gpu_backlog()`` what residency needs: seconds of ready GPU work per model (``model_of``).
    """

    def __init__(self) -> None:
        self._lane_index: dict[Lane, int] = {}
        self._heaps: list[list[Entry]] = []  # per lane
        self._live: dict[str, tuple[int, int, Task]] = {}  # key -> (version, lane index, task)
        self._version = 0
        self._demand: dict[str, float] = {}
        self._gpu_tasks: dict[str, int] = {}
        self._backlog: dict[str, float] = {}
        self._model_tasks: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: str) -> bool:
        return key in self._live

    def __iter__(self) -> Iterator[Task]:
        """The ready tasks, in no particular order."""
        return (task for _, _, task in self._live.values())

    def push(self, task: Task, order: Order) -> None:
        """Add a ready task (replacing one with the same key)."""
        if task.key in self._live:
            self.discard(task.key)
        lane = lane_of(task)
        index = self._lane_index.get(lane)
        if index is None:
            index = self._lane_index[lane] = len(self._heaps)
            self._heaps.append([])
        self._version += 1
        heapq.heappush(self._heaps[index], (order, self._version, task))
        self._live[task.key] = (self._version, index, task)
        if task.gpus > 0:
            self._demand[task.studio] = self._demand.get(task.studio, 0.0) + task.gpus
            self._gpu_tasks[task.studio] = self._gpu_tasks.get(task.studio, 0) + 1
            model = model_of(task)
            self._backlog[model] = self._backlog.get(model, 0.0) + task.est_seconds
            self._model_tasks[model] = self._model_tasks.get(model, 0) + 1

    def discard(self, key: str) -> bool:
        """Remove a task (dispatched, cancelled); False if it was not there. Lazy: O(1) now."""
        entry = self._live.pop(key, None)
        if entry is None:
            return False
        task = entry[2]
        if task.gpus > 0:
            left = self._gpu_tasks[task.studio] - 1
            self._gpu_tasks[task.studio] = left
            self._demand[task.studio] = self._demand[task.studio] - task.gpus if left else 0.0
            model = model_of(task)
            count = self._model_tasks[model] - 1
            self._model_tasks[model] = count
            self._backlog[model] = max(0.0, self._backlog[model] - task.est_seconds) if count else 0.0
        return True

    def gpu_backlog(self) -> dict[str, float]:
        """Model -> seconds of ready GPU work for it (estimates)."""
        return {m: s for m, s in self._backlog.items() if self._model_tasks.get(m)}

    def gpu_demand(self) -> dict[str, float]:
        """Studio -> GPUs its ready GPU actions ask for."""
        return {s: d for s, d in self._demand.items() if self._gpu_tasks.get(s)}

    def walk(self) -> Walk:
        """Iterate ready tasks in order; call ``refuse()`` to skip the rest of the last task's lane."""
        return Walk(self)

    def _head(self, index: int) -> Entry | None:
        heap = self._heaps[index]
        while heap:
            order, version, task = heap[0]
            live = self._live.get(task.key)
            if live is not None and live[0] == version:
                return heap[0]
            heapq.heappop(heap)  # stale: discarded or replaced
        return None


class Walk:
    """A k-way merge of the lanes' heads. Leaves the queue as it found it (restored on exhaustion
    or ``close()``)."""

    def __init__(self, queue: ReadyQueue) -> None:
        self._q = queue
        self._merge: list[tuple[Order, int]] = []
        for index in range(len(queue._heaps)):
            head = queue._head(index)
            if head is not None:
                self._merge.append((head[0], index))
        heapq.heapify(self._merge)
        self._taken: list[tuple[int, Entry]] = []
        self._current: int | None = None
        self._refused = False
        self._closed = False

    def __iter__(self) -> Walk:
        return self

    def __next__(self) -> Task:
        q = self._q
        if self._current is not None and not self._refused:
            index = self._current
            self._taken.append((index, heapq.heappop(q._heaps[index])))
            head = q._head(index)
            if head is not None:
                heapq.heappush(self._merge, (head[0], index))
        self._current, self._refused = None, False
        if not self._merge:
            self.close()
            raise StopIteration
        _, index = heapq.heappop(self._merge)
        self._current = index
        return q._heaps[index][0][2]

    def refuse(self) -> None:
        """The task just yielded was refused: skip its lane for the rest of this walk."""
        self._refused = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for index, entry in self._taken:
                heapq.heappush(self._q._heaps[index], entry)
            self._taken.clear()
