"""The one selection function: which ready actions to start now. The live controller and the
simulator both call it after every event.

Candidates are considered in ranking order (``ranking.sort_key``). A candidate starts if, in turn:

    1. resources fit     its CPUs are free, and its GPUs are free on one accelerator kind
                         (a task's accelerator None: any kind; a name: that kind only)
    2. fair share        a GPU action's studio holds less than its allowance (``fairshare``)
    3. backend cap       its backend runs fewer actions than its cap (``caps``)
    4. budget            its batch can afford it (``budget``)
    5. a GPU for it      a GPU action's model is placed (``gate``: model residency, which may let
                         it wait for a GPU of its model rather than swap one)

Once a candidate is refused, the rest of its lane (``ready.lane_of``: same batch, backend, resource
shape and cost dimensions) is skipped for this round. For rules 1-3 that changes nothing, since free
capacity, allowance headroom and cap slots only shrink during a round. For budgets it is the policy:
a batch that cannot afford its most urgent action on a capped dimension spends nothing more on that
dimension this round (its cheaper, less urgent actions do not eat the rest of the budget), while
actions that cost nothing there still go. The batch is reported in ``Selection.held`` with the
reason, for the controller to journal once.

Fast path: pass a ``ReadyQueue`` (kept up to date by the caller) and a round costs
O((dispatched + lanes) log n). A plain sequence works too (sorted here with ``ranks``: O(n log n)),
which is simpler for small candidate sets and tests; both give the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from farm.policy import budget as budget_policy
from farm.policy import caps as caps_policy
from farm.policy import fairshare
from farm.policy.ranking import NO_PACE, Pace, sort_key
from farm.policy.ready import Lane, ReadyQueue, Walk, lane_of
from farm.policy.types import NO_SPEND, BatchTerms, Capacity, RunState, Selection, Share, Spend, Task

EPS = 1e-9


class _ListWalk:
    """Same protocol as ``ready.Walk`` over an already sorted list."""

    def __init__(self, tasks: list[Task]):
        self._tasks = iter(tasks)
        self._refused: set[Lane] = set()
        self._last: Task | None = None

    def __iter__(self) -> _ListWalk:
        return self

    def __next__(self) -> Task:
        for task in self._tasks:
            if not self._refused or lane_of(task) not in self._refused:
                self._last = task
                return task
        raise StopIteration

    def refuse(self) -> None:
        if self._last is not None:
            self._refused.add(lane_of(self._last))

    def close(self) -> None:
        pass


def _place(task: Task, gpus: Mapping[str | None, float]) -> tuple[bool, str | None]:
    """Where a GPU task fits: its own accelerator kind, or (None) the kind with the most free GPUs."""
    if task.accelerator is not None:
        return gpus.get(task.accelerator, 0.0) >= task.gpus - EPS, task.accelerator
    best, best_free = None, -1.0
    for kind in sorted(gpus, key=lambda k: (k is not None, k or "")):
        if gpus[kind] > best_free:
            best, best_free = kind, gpus[kind]
    return best_free >= task.gpus - EPS, best


def select(
    candidates: ReadyQueue | Iterable[Task],
    ranks: Mapping[str, float] | None,
    batches: Mapping[str, BatchTerms],
    free: Capacity,
    state: RunState,
    shares: Iterable[Share] | None = (),
    caps: Mapping[str, int] | None = None,
    paces: Mapping[tuple[str, str], Pace] | None = None,
    gate: Callable[[Task], bool] | None = None,
) -> Selection:
    """Choose what to start now.

    ``candidates``: ready actions, not running, not held back by a retry backoff; a ``ReadyQueue``
    (already ordered: ``ranks`` unused) or any iterable (ordered here by ``sort_key`` with ``ranks``,
    missing ranks count as 0, and with ``paces``: (batch, episode) -> ``ranking.Pace``, missing ones
    count as none). ``batches``: the terms of every candidate's batch. ``free``: capacity
    free now. ``state``: GPUs held per studio, running actions per backend, spent and committed
    (running estimates) per batch. ``shares``: studios' GPU shares; ``()`` shares equally, ``None``
    turns fair share off. ``caps``: backend -> most actions at once. ``gate``: asked last of each GPU
    action that would start; False leaves it (and the rest of its lane: the same model) waiting.

    Returns the actions to start in order, the accelerator kind each GPU action was counted
    against, and per batch the reason its budget holds it. Pure: nothing passed in is changed.
    """
    walk: Walk | _ListWalk
    if isinstance(candidates, ReadyQueue):
        walk = candidates.walk()
        demand = candidates.gpu_demand()
    else:
        ranks, paces = ranks or {}, paces or {}
        tasks = sorted(
            candidates,
            key=lambda t: sort_key(
                t, batches[t.batch], ranks.get(t.key, 0.0), paces.get((t.batch, t.episode), NO_PACE)
            ),
        )
        walk = _ListWalk(tasks)
        demand = {}
        for t in tasks:
            if t.gpus > 0:
                demand[t.studio] = demand.get(t.studio, 0.0) + t.gpus

    cpus = free.cpus
    gpus = dict(free.gpus_by_accelerator)
    use = dict(state.gpus_by_studio)
    running = dict(state.running_by_backend)
    allowance = None
    if shares is not None:
        capacity = sum(gpus.values()) + sum(use.values())
        allowance = fairshare.allowances(shares, use, demand, capacity)
    added: dict[str, Spend] = {}
    held_on: dict[str, frozenset[str]] = {}
    out = Selection()
    try:
        for task in walk:
            if task.cpus > cpus + EPS:
                walk.refuse()
                continue
            kind = None
            if task.gpus > 0:
                fits, kind = _place(task, gpus)
                if not fits or (allowance is not None and not fairshare.permits(allowance, use, task.studio)):
                    walk.refuse()
                    continue
            if caps and not caps_policy.admits(caps, running, task):
                walk.refuse()
                continue
            terms = batches[task.batch]
            if terms.budget.capped:
                held = held_on.get(task.batch)
                if held and held & budget_policy.costs_on(task):
                    walk.refuse()
                    continue
                committed = state.committed_by_batch.get(task.batch, NO_SPEND) + added.get(task.batch, NO_SPEND)
                over = budget_policy.overruns(terms, state.spent_by_batch.get(task.batch, NO_SPEND), committed, task)
                if over:
                    held_on[task.batch] = (held or frozenset()) | {o.dimension for o in over}
                    out.held.setdefault(task.batch, str(over[0]))
                    walk.refuse()
                    continue
            if gate is not None and task.gpus > 0 and not gate(task):
                walk.refuse()
                continue
            if terms.budget.capped:
                added[task.batch] = added.get(task.batch, NO_SPEND) + task.estimate
            cpus -= task.cpus
            if task.gpus > 0:
                gpus[kind] -= task.gpus
                use[task.studio] = use.get(task.studio, 0.0) + task.gpus
                out.placed[task.key] = kind
            running[task.backend] = running.get(task.backend, 0) + 1
            out.dispatch.append(task)
    finally:
        walk.close()
    return out
