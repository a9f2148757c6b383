"""Baseline GPU placers, to weigh the farm's model residency (``farm.policy.residency.place``) against.
Each has ``place``'s signature, ``(wants, gpus, models, queued) -> Residency``, so the controller
takes any of them (``Controller(placer=...)``); each is pure and deterministic, and changes nothing
passed in.

``fifo``      load on demand, as Ray does when tasks of different models share GPUs: each action in
              the order given lands on a free GPU of its kind; one that holds its model with a seat
              free if there is one (an idle warm worker is reused), else any free GPU (chosen by the
              action's key, as arbitrary as a Ray node pick), loading its model there and unloading
              what does not fit beside it. It never waits while a GPU of its kind is free.
``per_task``  a fresh worker per action: each action lands on any free GPU of its kind and loads its
              model, whatever that GPU held (the models idle there are unloaded).
``static``    a fixed partition (``static_partition``): each model owns GPUs in proportion to its
              expected GPU work (from the planner's sketch), its actions run only there, and each GPU
              loads its model once. An action whose GPUs are all busy waits.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

from farm.policy.residency import Gpu, Model, Placement, Placer, Residency, Want
from farm.simulate.fleet import GpuKind, accelerators, apportion, expected_gpu_work, gpu_ids
from farm.simulate.workload import Workload


class _View:
    """The GPUs passed in, as the placements so far leave them: a GPU is copied when a placement first
    changes it (a placer is asked one action at a time, and must change nothing passed in)."""

    def __init__(self, gpus: Sequence[Gpu]):
        self._gpus = sorted(gpus, key=lambda g: g.id)
        self._changed: dict[str, Gpu] = {}
        self._by_id: dict[str, Gpu] | None = None

    def all(self) -> list[Gpu]:
        return [self._changed.get(g.id, g) for g in self._gpus]

    def get(self, ids: Sequence[str]) -> list[Gpu]:
        """The GPUs named ``ids`` that are here, in that order."""
        if self._by_id is None:
            self._by_id = {g.id: g for g in self._gpus}
        return [self._changed.get(i) or self._by_id[i] for i in ids if i in self._by_id]

    def take(self, g: Gpu, p: Placement) -> Placement:
        """Apply ``p`` to ``g`` (a copy of it); ``p``."""
        mine = self._changed.get(g.id)
        if mine is None:
            mine = self._changed[g.id] = Gpu(g.id, g.accelerator, g.memory_gb, g.resident, dict(g.running), g.idle_s)
        if p.load:
            mine.resident = tuple(m for m in mine.resident if m not in p.evict and m != p.model) + (p.model,)
            for m in p.evict:
                mine.running.pop(m, None)
        mine.running[p.model] = mine.running.get(p.model, 0) + 1
        mine.idle_s = 0.0
        return p


def _seat_free(g: Gpu, model: Model) -> bool:
    """``g`` can start one more action of ``model`` now: no other model at work there, and one of
    the model's seats free."""
    return g.running.get(model.name, 0) < model.seats and not any(
        n > 0 for m, n in g.running.items() if m != model.name
    )


def _any(key: str, gpus: list[Gpu]) -> Gpu:
    """One of ``gpus``, chosen by ``key`` alone: arbitrary, but the same every time."""
    return gpus[zlib.crc32(key.encode()) % len(gpus)]


def _to_unload(g: Gpu, model: Model, models: Mapping[str, Model]) -> tuple[str, ...]:
    """The idle models on ``g`` that go for ``model`` to load: none when it fits beside them (every
    memory known), else all of them."""
    idle = tuple(m for m in g.resident if m != model.name and g.running.get(m, 0) == 0)
    held = [models[m].memory_gb if m in models else 0.0 for m in g.resident if m != model.name]
    known = g.memory_gb > 0 and model.memory_gb > 0 and all(x > 0 for x in held)
    if known and sum(held) + model.memory_gb <= g.memory_gb + 1e-9:
        return ()
    return idle


def _fits(want: Want, gpus: list[Gpu]) -> list[Gpu]:
    return [g for g in gpus if want.accelerator in (None, g.accelerator)]


def fifo(
    wants: Sequence[Want],
    gpus: Sequence[Gpu],
    models: Mapping[str, Model],
    queued: Mapping[str, float] | None = None,
) -> Residency:
    """Load on demand (see the module): a free GPU holding the model, else any free GPU, loading there."""
    view = _View(gpus)
    out = Residency()
    for want in wants:
        model = models.get(want.model) or Model(want.model, 0.0)
        fits = _fits(want, view.all())
        warm = [g for g in fits if want.model in g.resident and _seat_free(g, model)]
        if warm:
            g = min(warm, key=lambda g: (g.running.get(want.model, 0), g.id))
            out.placed.append(view.take(g, Placement(want.key, g.id, want.model)))
            continue
        free = [g for g in fits if not g.busy()]
        if not free:
            out.deferred.append(want.key)
            continue
        g = _any(want.key, free)
        out.placed.append(view.take(g, Placement(want.key, g.id, want.model, True, _to_unload(g, model, models))))
    return out


def per_task(
    wants: Sequence[Want],
    gpus: Sequence[Gpu],
    models: Mapping[str, Model],
    queued: Mapping[str, float] | None = None,
) -> Residency:
    """A fresh worker per action (see the module): every placement loads its model."""
    view = _View(gpus)
    out = Residency()
    for want in wants:
        model = models.get(want.model) or Model(want.model, 0.0)
        free = [g for g in _fits(want, view.all()) if _seat_free(g, model)]
        if not free:
            out.deferred.append(want.key)
            continue
        g = _any(want.key, free)
        evict = tuple(m for m in g.resident if g.running.get(m, 0) == 0)  # the workers that ran them are gone
        out.placed.append(view.take(g, Placement(want.key, g.id, want.model, True, evict)))
    return out


def static(partition: Mapping[str, str]) -> Placer:
    """A placer keeping each model on its own GPUs: ``partition`` is GPU id -> the model it holds."""
    owners: dict[str, list[str]] = {}
    for gpu, model in sorted(partition.items()):
        owners.setdefault(model, []).append(gpu)

    def place_static(
        wants: Sequence[Want],
        gpus: Sequence[Gpu],
        models: Mapping[str, Model],
        queued: Mapping[str, float] | None = None,
    ) -> Residency:
        view = _View(gpus)
        out = Residency()
        for want in wants:
            if want.model not in owners:
                known = ", ".join(sorted(owners))
                raise ValueError(f"static placement: model {want.model} owns no GPU in the partition (it has: {known})")
            model = models.get(want.model) or Model(want.model, 0.0)
            mine = view.get(owners[want.model])
            seated = [g for g in mine if want.model in g.resident and _seat_free(g, model)]
            if seated:
                g = min(seated, key=lambda g: (g.running.get(want.model, 0), g.id))
                out.placed.append(view.take(g, Placement(want.key, g.id, want.model)))
                continue
            bare = [g for g in mine if want.model not in g.resident and not g.busy()]
            if not bare:
                out.deferred.append(want.key)
                continue
            g = bare[0]
            out.placed.append(view.take(g, Placement(want.key, g.id, want.model, True, tuple(g.resident))))
        return out

    return place_static


def static_partition(workload: Workload, kinds: Sequence[GpuKind]) -> dict[str, str]:
    """GPU id -> the model it keeps: each kind's GPUs split among the models that run on that kind in
    proportion to their expected GPU work (``fleet.expected_gpu_work``), at least one each. Models
    that take any kind go to the kind with the most GPUs."""
    work = expected_gpu_work(workload)
    kind_of = accelerators(workload)
    biggest = max(kinds, key=lambda k: (k.count, k.name)).name if kinds else None
    by_kind: dict[str, dict[str, float]] = {}
    for model, seconds in work.items():
        kind = kind_of.get(model) or biggest
        if kind is None or not any(k.name == kind for k in kinds):
            raise ValueError(f"static placement: model {model} runs on {kind}, and the fleet has no such GPUs")
        by_kind.setdefault(kind, {})[model] = seconds
    out: dict[str, str] = {}
    ids = gpu_ids(kinds)
    for kind, share in sorted(by_kind.items()):
        mine = [i for i, k in ids if k.name == kind]
        if len(mine) < len(share):
            raise ValueError(
                f"static placement: {len(mine)} {kind} GPUs cannot give one to each of {len(share)} models"
            )
        counts = apportion(len(mine), share, least=1)
        at = 0
        for model in sorted(counts):
            for gpu in mine[at : at + counts[model]]:
                out[gpu] = model
            at += counts[model]
    return out


PLACERS: Mapping[str, Placer] = {"fifo": fifo, "per-task": per_task}
