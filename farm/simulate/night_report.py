"""What a night on GPUs that hold models is judged by: its makespan against a lower bound that counts
the loads every model needs, each GPU's time as work / load / idle, loads, deadlines and studio shares.

The lower bound (``night_bound``), in seconds after the first submission, is the largest of:

    path       the critical path of the planner's graph with true durations and unlimited GPUs, where a
               GPU action starts no sooner than its model's load time (every GPU starts the night empty)
    per kind   for the GPUs of each kind (and for all GPUs together), the least T with
               T x GPUs >= sum over the models that run there of (work + n x load x seat), n = ceil(work / T):
               a model with ``work`` GPU-seconds to do in T needs at least n GPUs, and each of them loads it
               once at least (a load holds one seat: 1 / seats of a GPU)
    cpus       the CPU work over the CPUs

A deadline is *allowed* by the bound when it is no sooner than its batch's own bound (the same, for
its actions alone on the whole fleet). A studio's share is measured while it has work (from its
submission to the end of its last GPU action), in the stretches where at least two studios have work:
its GPU-seconds (work and loads of its actions) over all studios' in those stretches, against its
weight over the weights of the studios with work then; ``studio_share_error`` is the largest
difference over the studios.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.policy.types import Share
from farm.simulate.fleet import GpuKind, model_name, models_of
from farm.simulate.gpus import NightRuntime
from farm.simulate.result import SimResult, critical_path
from farm.simulate.runtime import Run, true_seconds
from farm.simulate.workload import Workload


@dataclass(frozen=True)
class Bound:
    """The lower bound and what it is made of (``path``, ``gpus:<kind>``, ``gpus``, ``cpus``)."""

    seconds: float
    parts: dict[str, float]
    by_batch: dict[str, float] = field(default_factory=dict)  # each batch alone on the fleet


def _least_time(work: Mapping[str, float], loads: Mapping[str, float], gpus: float) -> float:
    """The least T with T * gpus >= sum of work + ceil(work / T) * load (0 if there is no work)."""
    total = sum(work.values())
    if total <= 0 or gpus <= 0:
        return 0.0

    def need(t: float) -> float:
        return sum(w + math.ceil(w / t - 1e-9) * loads.get(m, 0.0) for m, w in work.items() if w > 0) / gpus

    lo, hi = total / gpus, need(total / gpus)  # need() falls as T grows: need(lo) is feasible
    for _ in range(60):
        mid = (lo + hi) / 2
        if need(mid) <= mid:
            hi = mid
        else:
            lo = mid
    return hi


def _bound(
    workload: Workload,
    kinds: Sequence[GpuKind],
    cpus: float,
    seconds: Mapping[str, float],
    earliest: Mapping[str, float],
    keys: Collection[str] | None,
) -> tuple[float, dict[str, float]]:
    graph = workload.graph()
    profiles = workload.profiles()
    models = models_of(workload)
    by_kind: dict[str | None, dict[str, float]] = {}
    cpu_work = 0.0
    for key in graph.actions if keys is None else keys:
        action = graph.actions[key]
        profile = profiles[(action.stage, action.backend)]
        cpu_work += seconds[key] * profile.cpus
        if profile.gpus > 0:
            work = by_kind.setdefault(profile.accelerator, {})
            name = model_name(action.stage, action.backend)
            work[name] = work.get(name, 0.0) + seconds[key] * profile.gpus
    load = {m: model.load_s / model.seats for m, model in models.items()}
    parts = {"path": critical_path(workload, seconds, earliest, keys)}
    everything: dict[str, float] = {}
    for kind, work in by_kind.items():
        for m, w in work.items():
            everything[m] = everything.get(m, 0.0) + w
        count = sum(k.count for k in kinds if k.name == kind)
        if kind is not None:
            parts[f"gpus:{kind}"] = _least_time(work, load, count) if count else math.inf
    parts["gpus"] = _least_time(everything, load, sum(k.count for k in kinds))
    parts["cpus"] = cpu_work / cpus if cpus > 0 else (math.inf if cpu_work else 0.0)
    return max(parts.values()), parts


def night_bound(workload: Workload, kinds: Sequence[GpuKind], cpus: float) -> Bound:
    """The night's lower bound (see the module), and each batch's alone."""
    graph = workload.graph()
    models = models_of(workload)
    profiles = workload.profiles()
    seconds = {k: true_seconds(workload, a) for k, a in graph.actions.items()}
    earliest = {}
    for key, a in graph.actions.items():
        if profiles[(a.stage, a.backend)].gpus > 0:
            earliest[key] = models[model_name(a.stage, a.backend)].load_s
    total, parts = _bound(workload, kinds, cpus, seconds, earliest, None)
    batches: dict[str, list[str]] = {}
    for key, batch in graph.batch_of.items():
        batches.setdefault(batch, []).append(key)
    by_batch = {b: _bound(workload, kinds, cpus, seconds, earliest, keys)[0] for b, keys in sorted(batches.items())}
    return Bound(total, parts, by_batch)


def _usage(runs: Sequence[Run], t0: float, t1: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in runs:
        overlap = min(r.end, t1) - max(r.start, t0)
        if overlap > 0 and r.gpus > 0:
            out[r.studio] = out.get(r.studio, 0.0) + overlap * r.gpus
    return out


def studio_shares(
    runs: Sequence[Run], windows: Mapping[str, tuple[float, float]], weights: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Studio -> its ``share`` of the GPU-seconds used while it and another studio had work, and the
    ``weight`` share it was due over the same stretches (see the module). ``windows``: studio ->
    (from, to) while it has work; studios without a weight have weight 1."""
    cuts = sorted({t for w in windows.values() for t in w})
    used: dict[str, float] = {}
    due: dict[str, float] = {}
    total: dict[str, float] = {}
    gpu_runs = [r for r in runs if r.gpus > 0]
    for a, b in zip(cuts, cuts[1:], strict=False):
        active = [s for s, (lo, hi) in windows.items() if lo <= a and b <= hi]
        if len(active) < 2:
            continue
        usage = _usage([r for r in gpu_runs if r.start < b and r.end > a], a, b)
        everyone = sum(usage.get(s, 0.0) for s in active)
        weight = sum(weights.get(s, 1.0) for s in active)
        for s in active:
            used[s] = used.get(s, 0.0) + usage.get(s, 0.0)
            due[s] = due.get(s, 0.0) + everyone * weights.get(s, 1.0) / weight
            total[s] = total.get(s, 0.0) + everyone
    return {s: {"weight": due[s] / total[s], "share": used[s] / total[s]} for s in sorted(total) if total[s] > 0}


@dataclass
class NightResult:
    """A night under one policy: the simulation's own result, and the night's measures."""

    sim: SimResult
    kinds: tuple[GpuKind, ...]
    bound: Bound
    accounts: dict[str, dict[str, float]]  # GPU -> work, load, idle (GPU-seconds), loads, releases
    shares: dict[str, dict[str, float]]  # studio -> weight, share
    deadlines: dict[str, dict[str, Any]]  # batch -> deadline_s, finished_s, bound_s, allowed, met

    @property
    def makespan_s(self) -> float:
        return self.sim.makespan_s

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.bound.seconds if self.bound.seconds > 0 else 1.0

    def gpu_seconds(self, kind: str | None = None) -> dict[str, float]:
        """GPU-seconds of work, load and idle over every GPU (of ``kind``)."""
        rows = [a for g, a in self.accounts.items() if kind is None or g.rsplit("-", 1)[0] == kind]
        return {part: sum(a[part] for a in rows) for part in ("work", "load", "idle")}

    @property
    def useful_gpu_share(self) -> float:
        t = self.gpu_seconds()
        whole = t["work"] + t["load"] + t["idle"]
        return t["work"] / whole if whole > 0 else 0.0

    @property
    def loads(self) -> int:
        return int(sum(a["loads"] for a in self.accounts.values()))

    @property
    def deadline_misses(self) -> int:
        return sum(1 for d in self.deadlines.values() if not d["met"])

    @property
    def studio_share_error(self) -> float:
        return max((abs(v["share"] - v["weight"]) for v in self.shares.values()), default=0.0)

    def to_json(self) -> dict[str, Any]:
        r3: Callable[[float], float] = lambda x: round(x, 3)  # noqa: E731
        per_gpu = [a["loads"] for a in self.accounts.values()]
        return {
            "makespan_s": r3(self.makespan_s),
            "lower_bound_s": r3(self.bound.seconds),
            "ratio": round(self.ratio, 4),
            "useful_gpu_share": round(self.useful_gpu_share, 4),
            "gpu_seconds": {k: r3(v) for k, v in self.gpu_seconds().items()},
            "gpu_seconds_by_kind": {
                k.name: {p: r3(v) for p, v in self.gpu_seconds(k.name).items()} for k in self.kinds
            },
            "loads": self.loads,
            "releases": int(sum(a.get("releases", 0.0) for a in self.accounts.values())),
            "loads_per_gpu": {
                "mean": round(sum(per_gpu) / max(1, len(per_gpu)), 3),
                "max": int(max(per_gpu, default=0)),
            },
            "deadline_misses": self.deadline_misses,
            "deadlines": self.deadlines,
            "studio_share_error": round(self.studio_share_error, 4),
            "studio_shares": {s: {k: round(v, 4) for k, v in d.items()} for s, d in self.shares.items()},
            "episodes_done": self.sim.episodes_done,
            "dispatches": self.sim.dispatches,
        }


def report(
    sim: SimResult,
    workload: Workload,
    kinds: Sequence[GpuKind],
    runtime: NightRuntime,
    bound: Bound,
    shares: Sequence[Share],
) -> NightResult:
    """The night's measures from its simulation and the runtime that played it."""
    t0 = min(b.submitted for b in workload.batches.values())
    windows: dict[str, tuple[float, float]] = {}
    for b in workload.batches.values():
        lo, hi = windows.get(b.studio, (math.inf, -math.inf))
        windows[b.studio] = (min(lo, b.submitted), hi)
    for r in runtime.runs:
        if r.gpus > 0 and r.studio in windows:
            lo, hi = windows[r.studio]
            windows[r.studio] = (lo, max(hi, r.end))
    windows = {s: w for s, w in windows.items() if w[1] > w[0]}
    weights = {s.studio: s.weight for s in shares}
    deadlines: dict[str, dict[str, Any]] = {}
    for b in sorted(workload.batches.values(), key=lambda b: b.id):
        if b.deadline is None:
            continue
        finished = sim.batch_finished.get(b.id)
        own = bound.by_batch.get(b.id, 0.0)
        deadlines[b.id] = {
            "deadline_s": b.deadline - t0,
            "finished_s": None if finished is None else round(finished, 3),
            "bound_s": round(own, 3),
            "allowed": b.deadline - t0 >= own,
            "met": bool(sim.deadline_met.get(b.id)),
        }
    return NightResult(
        sim, tuple(kinds), bound, runtime.accounts(), studio_shares(runtime.runs, windows, weights), deadlines
    )
