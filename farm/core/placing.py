"""Where the controller's GPU work runs (pure): model residency (farm.policy.residency) applied to what
the scheduler admitted, and the GPU capacity an autoscaler should add.

Each decision, ``scheduler.select`` chooses what may start (priority, slack, fair share, caps,
budgets). When the runtime reports its GPUs (``Runtime.slots``: each GPU, the models it holds and what
runs on it), the admitted GPU actions go to the residency placer in that order: each gets a GPU,
with a load (and what it evicts) where its model is not there, or waits for a GPU of its model.
The placement travels with the ``Dispatch`` command to the runtime, which carries it out and keeps no
residency rules of its own. A runtime that reports no GPUs (threads on a laptop) places nothing.

A model's load time, memory and seats come from its backend's profile (``Profile.load_s``,
``memory_gb``; seats: how many of its actions share one GPU, ``1 / gpus``), its load time learned
from the workers' reports once they come (``usage.load_seconds``, the longest seen).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from farm.core.state import Profile
from farm.policy.ready import ReadyQueue, model_of
from farm.policy.residency import Gpu, Model, Placement, Session, Want, place
from farm.policy.residency import Placer as Placer  # the type of a placer, for callers that pass one
from farm.policy.types import PRIORITY_CLASSES, Task

MAX_CAPACITY_REQUEST = 512  # at most this many GPU bundles are asked of an autoscaler at once
RELEASE_CHECK_S = 60.0  # how often GPUs are looked at for one to give back, when nothing is placed

Slots = Sequence[Gpu] | Callable[[], Sequence[Gpu]] | None  # the runtime's GPUs, or how to ask for them


class Placing:
    """The residency half of the scheduler (mixed into ``Decisions``)."""

    profiles: dict[tuple[str, str], Profile]
    batches: dict[str, Any]
    _queue: ReadyQueue
    _placed: set[str]
    _gpu_shapes: list[Task]

    def _init_placing(self, placer: Placer | None) -> None:
        self.placer: Placer = placer or place
        self._placements: dict[str, Placement] = {}  # decided, not yet carried out
        self._ready_at: dict[str, float] = {}  # when a ready GPU action was first seen waiting
        self._loads_seen: dict[str, float] = {}  # model -> the longest load a worker reported
        self._released: list[str] = []  # GPUs the last decision gives back
        self._session: Session | None = None  # this decision's placements
        self._release_checked = float("-inf")

    def _model(self, task: Task) -> Model:
        name = model_of(task)
        profile = self.profiles.get((task.stage, task.backend), Profile())
        seats = max(1, round(1.0 / profile.gpus)) if 0 < profile.gpus < 1 else 1
        load = max(profile.load_s, self._loads_seen.get(name, 0.0))
        return Model(name, load, profile.memory_gb, seats)

    def learn_load(self, stage: str, backend: str, seconds: float) -> None:
        """A worker reported loading ``stage/backend``'s model in ``seconds``."""
        name = f"{stage}/{backend}"
        if seconds > self._loads_seen.get(name, 0.0):
            self._loads_seen[name] = seconds

    def _gate(self, slots: Slots, now: float) -> Callable[[Task], bool] | None:
        """For ``scheduler.select``: a gate that places each GPU action it would start (keeping the
        placement for its ``Dispatch``), or lets it wait for a GPU of its model. None without GPUs.
        The runtime's GPUs are asked for only when a GPU action would start (most decisions of a busy
        night have no GPU free), and once a minute to give back the GPUs idle long enough."""
        if not slots:
            return None
        self._session = None

        def session() -> Session:
            if self._session is None:
                gpus = slots() if callable(slots) else slots
                self._session = Session(self.placer, gpus, {}, self._queue.gpu_backlog())
            return self._session

        def gate(task: Task) -> bool:
            s = session()
            model = s.models[model_of(task)] = self._model(task)
            terms = self.batches[task.batch].terms
            urgent = terms.priority >= PRIORITY_CLASSES["urgent"] or (
                terms.deadline is not None and now + task.est_seconds > terms.deadline
            )
            waited = now - self._ready_at.get(task.key, now)
            placed = s.offer(Want(task.key, model.name, task.accelerator, task.est_seconds, waited, urgent))
            if placed is None:
                return False
            self._placements[task.key] = placed
            self._ready_at.pop(task.key, None)
            return True

        if now - self._release_checked >= RELEASE_CHECK_S:
            self._release_checked = now
            session()
        return gate

    def _placed_done(self) -> None:
        """After the decision: the GPUs it gives back."""
        self._released = self._session.close().release if self._session is not None else []
        self._session = None

    def released(self) -> list[str]:
        """The GPUs the last decision gives back (once: the runtime lets them go)."""
        out, self._released = self._released, []
        return out

    def placement_of(self, key: str) -> Placement | None:
        """The placement decided for ``key``'s dispatch (once: it is handed to the runtime)."""
        return self._placements.pop(key, None)

    def wanted_capacity(self) -> list[tuple[float, float, str | None]]:
        """(cpus, gpus, accelerator) of every GPU action running or waiting for room as of the last
        decision, most urgent first, at most MAX_CAPACITY_REQUEST: what an autoscaler should grow GPU
        groups (even from zero) to fit."""
        shapes = [t for t in self._held() if t.gpus > 0 and t.key not in self._placed] + self._gpu_shapes
        shapes += self._waiting_gpu_tasks(self._placed, MAX_CAPACITY_REQUEST - len(shapes))
        return [(t.cpus, t.gpus, t.accelerator) for t in shapes][:MAX_CAPACITY_REQUEST]

    def _held(self) -> list[Task]:  # Decisions: the tasks of the running actions
        raise NotImplementedError

    def _waiting_gpu_tasks(self, placed: set[str], limit: int) -> list[Task]:
        """Up to ``limit`` queued GPU actions not placed this round, most urgent first."""
        out: list[Task] = []
        if limit <= 0:
            return out
        walk = self._queue.walk()
        try:
            for task in walk:
                if task.gpus <= 0:
                    walk.refuse()  # a CPU lane: skip all of it
                elif task.key not in placed:
                    out.append(task)
                    if len(out) >= limit:
                        break
        finally:
            walk.close()
        return out
