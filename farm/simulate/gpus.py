"""Simulated GPUs that hold models: each GPU a slot with its kind and memory, the models loaded on it,
and its time spent working, loading and idle.

On real hardware a video model spends minutes loading before seconds of work, so which GPU keeps
which model matters. ``NightRuntime`` models that: the controller's residency placer (farm.core.placing)
decides where each GPU action runs (a ``residency.Placement``), and the runtime carries it out on that
GPU: it unloads ``placement.evict``, then, when ``placement.load``, the load occupies the action's
share of the GPU for its model's load time *before* the action's own time; an action placed beside a
load of its model still under way (a second seat) waits for it. A GPU action dispatched with no
placement (a caller that places nothing) goes where Ray would put it: a free GPU of its kind, one
that holds its model if one is free, else any, loading there (``baselines.fifo``).

``slots()`` reports each GPU as residency sees it (its models, what runs on it, how long it has been
idle); ``release(gpus)`` gives back GPUs the policy releases: the fleet is fixed, so a given-back GPU
stays in it with nothing loaded, idle.

Each GPU's time is work, load or idle: an action holds its fraction of its GPU (``Profile.gpus``) for
its load, its wait and its work; what no action holds is idle, so per GPU work + load + idle is the
night's length. A placement the GPUs cannot carry (the wrong kind, no free seat, evicting a model at
work, more memory than the GPU has) is a placer's bug: ``PlacementError``, naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from farm.core.manifest import Blob
from farm.core.plan import Action
from farm.core.ports import ManualClock
from farm.core.state import Profile
from farm.policy.residency import Gpu, Model, Placement, Want
from farm.simulate.baselines import fifo
from farm.simulate.fleet import GpuKind, gpu_ids, model_name, models_of
from farm.simulate.runtime import EPS, Failures, Run, SimRuntime
from farm.simulate.workload import Workload

__all__ = ["GpuKind", "NightRuntime", "PlacementError", "gpu_ids", "model_name", "models_of"]


class PlacementError(ValueError):
    """A placement the simulated GPUs cannot carry out."""


@dataclass
class _Slot:
    """One GPU's state and account. ``gpu`` is what ``slots()`` reports (changed in place)."""

    gpu: Gpu
    free: float = 1.0  # fraction of the GPU no action holds
    ready_at: dict[str, float] = field(default_factory=dict)  # model -> when its load here ends
    idle_since: float = 0.0  # when nothing last ran on it
    loads: int = 0
    releases: int = 0


class NightRuntime(SimRuntime):
    """``SimRuntime`` with every GPU modelled: the models it holds, loads, evictions, and its time."""

    def __init__(
        self,
        workload: Workload,
        clock: ManualClock,
        kinds: Sequence[GpuKind],
        cpus: float,
        failures: Failures | None = None,
        seed: int = 0,
        models: Mapping[str, Model] | None = None,
    ):
        names = [k.name for k in kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"GPU kinds must be named once each: {names}")
        pools: dict[str | None, float] = {k.name: float(k.count) for k in kinds}
        super().__init__(workload, clock, pools, cpus, failures, seed)
        self.kinds = tuple(kinds)
        self.models = dict(models) if models is not None else models_of(workload)
        self.start = clock.now()
        self._slots = {i: _Slot(Gpu(i, k.name, k.memory_gb), idle_since=self.start) for i, k in gpu_ids(kinds)}
        self._on: dict[str, tuple[str, str, float, float]] = {}  # key -> (gpu, model, load_s, wait_s)

    def slots(self) -> list[Gpu]:
        """Every GPU: its kind, memory, the models it holds (loaded or loading), what runs on it and
        how long it has been idle. The objects are the runtime's own, read-only to the caller (a
        placer copies what it changes)."""
        now = self.clock.now()
        for s in self._slots.values():
            s.gpu.idle_s = 0.0 if s.gpu.running else now - s.idle_since
        return [s.gpu for s in self._slots.values()]

    def release(self, gpus: Sequence[str]) -> None:
        """Give back GPUs the residency policy releases: their models are unloaded (the fleet is fixed:
        a given-back GPU stays, empty, and counts as idle)."""
        for i in gpus:
            slot = self._slots.get(i)
            if slot is None:
                raise PlacementError(f"release of {i}: no such GPU")
            if slot.gpu.running:
                raise PlacementError(f"release of {i}: {', '.join(slot.gpu.running)} is at work there")
            slot.gpu.resident, slot.ready_at = (), {}
            slot.releases += 1

    def submit(
        self,
        action: Action,
        inputs: Mapping[str, Blob],
        profile: Profile,
        batch: str | None,
        placement: Placement | None = None,
    ) -> None:
        """Start ``action``: a GPU action on its placement's GPU (or where ``baselines.fifo`` puts it)."""
        if profile.gpus <= 0:
            super().submit(action, inputs, profile, batch)
            return
        name = model_name(action.stage, action.backend)
        model = self.models.get(name) or Model(name, 0.0)
        if placement is None:
            want = Want(action.key, name, profile.accelerator, 0.0)
            placed = fifo([want], self.slots(), {name: model}).placed
            if not placed:
                raise PlacementError(
                    f"{action.label}: no GPU of kind {profile.accelerator or 'any'} is free for {name}"
                )
            placement = placed[0]
        slot = self._carry_out(action, placement, model, profile)
        fail, seconds, worker = self._draw(action)
        now = self.clock.now()
        if placement.load:
            load, wait = model.load_s, 0.0
            slot.ready_at[name] = now + load
            slot.loads += 1
        else:
            load, wait = 0.0, max(0.0, slot.ready_at.get(name, now) - now)
        self.free_gpus[slot.gpu.accelerator] -= profile.gpus
        self._on[action.key] = (slot.gpu.id, name, load, wait)
        self._start(action, profile, slot.gpu.accelerator, now, now + load + wait + seconds, fail, worker, batch)

    def _carry_out(self, action: Action, p: Placement, model: Model, profile: Profile) -> _Slot:
        """Check ``p`` against the GPU and apply its evictions and load; the GPU's slot."""
        slot = self._slots.get(p.gpu)
        where = f"{action.label}: placement on {p.gpu}"
        if slot is None:
            raise PlacementError(f"{where}: no such GPU (GPUs: {', '.join(list(self._slots)[:4])}, ...)")
        g = slot.gpu
        if p.model != model.name:
            raise PlacementError(f"{where} names model {p.model}, but the action runs {model.name}")
        if profile.accelerator is not None and g.accelerator != profile.accelerator:
            raise PlacementError(f"{where}: a {g.accelerator}, but {model.name} runs on {profile.accelerator}")
        busy = [m for m in p.evict if g.running.get(m, 0) > 0]
        if busy:
            raise PlacementError(f"{where} evicts {', '.join(busy)}, which is at work there")
        resident = tuple(m for m in g.resident if m not in p.evict)
        if not p.load and model.name not in resident:
            raise PlacementError(f"{where} does not load {model.name}, which that GPU does not hold")
        if p.load and any(n > 0 for m, n in g.running.items() if m != model.name):
            raise PlacementError(f"{where} loads {model.name} while another model is at work there")
        if slot.free < profile.gpus - EPS:
            raise PlacementError(f"{where}: {slot.free:g} of it is free, the action needs {profile.gpus:g}")
        if model.name not in resident:
            resident += (model.name,)
        memory = [self.models[m].memory_gb if m in self.models else 0.0 for m in resident]
        if g.memory_gb > 0 and all(m > 0 for m in memory) and sum(memory) > g.memory_gb + EPS:
            held = ", ".join(resident)
            raise PlacementError(f"{where}: {held} need {sum(memory):g} GB, the GPU has {g.memory_gb:g} GB")
        for m in p.evict:
            slot.ready_at.pop(m, None)
        g.resident = resident
        g.running[model.name] = g.running.get(model.name, 0) + 1
        slot.free -= profile.gpus
        return slot

    def _run(
        self,
        key: str,
        batch: str,
        studio: str,
        action: Action,
        start: float,
        end: float,
        profile: Profile,
        worker: str,
        ok: bool,
    ) -> Run:
        on = self._on.pop(key, None)
        if on is None:
            return super()._run(key, batch, studio, action, start, end, profile, worker, ok)
        gpu, model, load, wait = on
        slot = self._slots[gpu]
        slot.free = min(1.0, slot.free + profile.gpus)
        left = slot.gpu.running.get(model, 0) - 1
        if left > 0:
            slot.gpu.running[model] = left
        else:
            slot.gpu.running.pop(model, None)
        if not slot.gpu.running:
            slot.idle_since = end
        return Run(
            key, batch, studio, action.stage, start, end, profile.gpus, profile.cpus, worker, ok, gpu, load, wait
        )

    def accounts(self) -> dict[str, dict[str, float]]:
        """Per GPU, over the night so far (from the start to the last action's end): GPU-seconds of
        work, load and idle (holding a seat while a load of its model is under way counts as idle),
        and how many loads it did. Actions still running are not counted."""
        span = self.last_end - self.start
        work = dict.fromkeys(self._slots, 0.0)
        load = dict.fromkeys(self._slots, 0.0)
        for r in self.runs:
            if r.gpu:
                work[r.gpu] += r.work_s * r.gpus
                load[r.gpu] += r.load_s * r.gpus
        return {
            i: {
                "work": work[i],
                "load": load[i],
                "idle": span - work[i] - load[i],
                "loads": float(s.loads),
                "releases": float(s.releases),
            }
            for i, s in self._slots.items()
        }
