"""Model residency: which GPU keeps its model, which swaps to another and when, and where each GPU
action runs. Pure: the GPUs, the models and the ready work are passed in; placements come out.

A real video model spends minutes loading (weights, text encoder, VAE) before seconds of denoising,
so a GPU that holds the model its next action needs is worth far more than a free one. ``place``
takes the GPU actions ``scheduler.select`` admitted, in its order (priority, deadline slack, fair
share and budgets have already spoken), and decides for each, in turn:

    1. resident     a GPU that holds its model has a free seat (``Model.seats``) and no other model
                    at work: run there
    2. empty        a GPU that holds nothing (or has room beside what it holds, idle): load there
    3. swap         a GPU whose models are all idle: unload them and load this one, when the swap
                    pays for itself (below) or the action is urgent (a class above the rest, or a
                    deadline at risk: the caller says)
    4. wait         otherwise it waits for a GPU of its model to free up: it is *deferred*

A swap pays for itself when, after it, the incoming model still has at least ``PAYBACK`` times its
load time of queued work per GPU holding it (the load is a small part of what that GPU then does),
and the models it evicts are left no busier per GPU than the incoming one is (so the swap moves a
GPU from where it is needed less to where it is needed more). A model that holds no GPU at all is
never starved: once its oldest waiting action has waited ``AGE_FACTOR`` times the model's load
time, one GPU swaps to it whatever the backlog.

A GPU that has been idle for ``RELEASE_IDLE_S`` and whose models nothing waits for is released: its
models unloaded, the GPU given back (to an autoscaler, or to anyone else's work on the cluster).

Among GPUs that qualify, a swap takes the one whose models are least needed (smallest backlog per
holder), then the one with the most memory free; loads go first to GPUs that hold nothing. Every
choice is deterministic (ties by GPU id), so the simulator and the live farm decide alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

PAYBACK = 1.0  # a swap wants queued work per holder of at least this many times the load time
AGE_FACTOR = 2.0  # a model holding no GPU gets one once an action has waited this many load times
RELEASE_IDLE_S = 600.0  # a GPU idle this long whose models nothing waits for is given back
EPS = 1e-9


@dataclass(frozen=True)
class Model:
    """What residency needs to know of a model (a GPU backend, on one accelerator kind): how long a
    load takes, how much GPU memory it holds (0: unknown, it takes a whole GPU), how many of its
    actions one GPU runs at once."""

    name: str
    load_s: float
    memory_gb: float = 0.0
    seats: int = 1


@dataclass
class Gpu:
    """One GPU (or GPU slot) as residency sees it: its kind, memory, the models it holds (loaded or
    loading) and how many actions of each run on it now."""

    id: str
    accelerator: str
    memory_gb: float = 0.0
    resident: tuple[str, ...] = ()
    running: dict[str, int] = field(default_factory=dict)
    idle_s: float = 0.0  # how long nothing has run on it

    def busy(self) -> bool:
        return any(n > 0 for n in self.running.values())

    def free_memory(self, models: Mapping[str, Model]) -> float:
        return self.memory_gb - sum(models[m].memory_gb for m in self.resident if m in models)


@dataclass(frozen=True)
class Want:
    """A GPU action that may start now: its model, the accelerator kind it needs (None: any), its
    estimated seconds, how long it has waited, and whether it may force a swap."""

    key: str
    model: str
    accelerator: str | None = None
    seconds: float = 0.0
    waited_s: float = 0.0
    urgent: bool = False


@dataclass(frozen=True)
class Placement:
    """Run ``key`` on GPU ``gpu``: after unloading ``evict`` and loading its model when ``load``."""

    key: str
    gpu: str
    model: str
    load: bool = False
    evict: tuple[str, ...] = ()


@dataclass
class Residency:
    """What ``place`` decided: placements in order, and the actions that wait."""

    placed: list[Placement] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    release: list[str] = field(default_factory=list)  # GPUs to give back (their models unloaded)

    @property
    def loads(self) -> int:
        return sum(1 for p in self.placed if p.load)


def backlog(wants: Iterable[Want], queued: Mapping[str, float] | None = None) -> dict[str, float]:
    """Queued seconds of work per model: the wants' estimates, plus ``queued`` (work known to come
    that is not ready yet, e.g. the clips behind keyframes being drawn)."""
    out = dict(queued or {})
    for w in wants:
        out[w.model] = out.get(w.model, 0.0) + w.seconds
    return out


def place(
    wants: Sequence[Want],
    gpus: Sequence[Gpu],
    models: Mapping[str, Model],
    queued: Mapping[str, float] | None = None,
) -> Residency:
    """Place ``wants`` (in the scheduler's order) on ``gpus``; see the module's rules. Nothing passed
    in is changed. ``queued``: more work per model that is coming (seconds), which counts towards a
    swap paying for itself."""
    core = _Core(gpus, models, backlog(wants, queued))
    out = Residency()
    for want in wants:
        placed = core.one(want)
        if placed is None:
            out.deferred.append(want.key)
        else:
            out.placed.append(placed)
    out.release = core.release()
    return out


class _Core:
    """The GPUs as the placements so far leave them, indexed by model and by what is bare (so that a
    decision over hundreds of GPUs costs little per action), and the work still to place."""

    def __init__(self, gpus: Sequence[Gpu], models: Mapping[str, Model], left: dict[str, float]):
        self.gpus = {
            g.id: Gpu(g.id, g.accelerator, g.memory_gb, tuple(g.resident), dict(g.running), g.idle_s) for g in gpus
        }
        self.order = sorted(self.gpus)
        self.models, self.left = models, left
        self.holding: dict[str, list[str]] = {}  # model -> ids of the GPUs holding it, in order
        for i in self.order:
            for m in self.gpus[i].resident:
                self.holding.setdefault(m, []).append(i)
        self.bare = [i for i in self.order if not self.gpus[i].resident]

    def holders(self, model: str) -> int:
        return len(self.holding.get(model, ()))

    def one(self, want: Want) -> Placement | None:
        model = self.models.get(want.model) or Model(want.model, 0.0)
        fits = want.accelerator
        evict: tuple[str, ...] = ()
        chosen, load = _resident([self.gpus[i] for i in self.holding.get(model.name, ())], model, fits), False
        if chosen is None:
            chosen = next((self.gpus[i] for i in self.bare if fits in (None, self.gpus[i].accelerator)), None)
            if chosen is None and model.memory_gb > 0:
                chosen = _roomy([self.gpus[i] for i in self.order], model, self.models, fits)
            load = chosen is not None
        if chosen is None:
            chosen = _victim(self, model, want)
            if chosen is not None:
                load, evict = True, chosen.resident
        if chosen is None:
            return None
        if load:
            if not chosen.resident:
                self.bare.remove(chosen.id)
            for m in evict:
                self.holding[m].remove(chosen.id)
            self.holding.setdefault(model.name, []).append(chosen.id)
        placed = Placement(want.key, chosen.id, model.name, load, tuple(evict))
        apply(chosen, placed)
        self.left[model.name] = max(0.0, self.left.get(model.name, 0.0) - want.seconds)
        return placed

    def release(self) -> list[str]:
        return [
            i
            for i in self.order
            if self.gpus[i].resident
            and not self.gpus[i].busy()
            and self.gpus[i].idle_s >= RELEASE_IDLE_S
            and all(self.left.get(m, 0.0) <= 0 for m in self.gpus[i].resident)
        ]


def _resident(holding: list[Gpu], model: Model, kind: str | None) -> Gpu | None:
    """The GPU holding ``model`` with a free seat and no other model at work on it (models that share a
    GPU's memory take turns at its compute), fewest running first."""
    seated = [
        g
        for g in holding
        if kind in (None, g.accelerator)
        and g.running.get(model.name, 0) < model.seats
        and not any(n > 0 for m, n in g.running.items() if m != model.name)
    ]
    return min(seated, key=lambda g: (g.running.get(model.name, 0), g.id), default=None)


def _roomy(gpus: list[Gpu], model: Model, models: Mapping[str, Model], kind: str | None) -> Gpu | None:
    """An idle GPU with room for ``model`` beside what it holds (every memory known), most room first."""
    roomy = [
        g
        for g in gpus
        if kind in (None, g.accelerator)
        and g.resident
        and not g.busy()
        and g.memory_gb > 0
        and all(models.get(m, Model(m, 0.0)).memory_gb > 0 for m in g.resident)
        and g.free_memory(models) >= model.memory_gb - EPS
    ]
    return max(roomy, key=lambda g: (g.free_memory(models), g.id), default=None)


def _victim(core: _Core, model: Model, want: Want) -> Gpu | None:
    """An idle GPU to swap to ``model``, when the swap pays (or the want is urgent, or its model has
    no GPU and has waited long enough); the least needed such GPU."""
    left, holders = core.left, core.holders
    incoming = left.get(model.name, 0.0) / (holders(model.name) + 1)
    starved = holders(model.name) == 0 and want.waited_s >= AGE_FACTOR * model.load_s
    forced = want.urgent or starved
    if not forced and incoming < PAYBACK * model.load_s - EPS:
        return None
    best: tuple[float, float, str] | None = None
    for i in core.order:
        g = core.gpus[i]
        if not g.resident or g.busy() or want.accelerator not in (None, g.accelerator):
            continue
        need = 0.0
        eligible = True
        for m in g.resident:
            n, work = holders(m), left.get(m, 0.0)
            need = max(need, work / max(1, n))
            # an evicted model left without a GPU while it has work would only swap back: only when forced
            after = work / (n - 1) if n > 1 else (0.0 if work <= 0 else float("inf"))
            eligible = eligible and (forced or after <= incoming + EPS)
        if eligible:
            rank = (need, -g.free_memory(core.models), g.id)
            if best is None or rank < best:
                best = rank
    return core.gpus[best[2]] if best is not None else None


class Session:
    """One decision's placements, asked one action at a time (``scheduler.select``'s gate): each offer
    is placed by ``placer`` (``place``, or another with its signature) on the GPUs as the offers before
    it left them. ``queued``: the work per model still waiting, the offers included."""

    def __init__(
        self,
        placer: Placer,
        gpus: Sequence[Gpu],
        models: Mapping[str, Model],
        queued: Mapping[str, float] | None = None,
    ):
        self.placer, self.models = placer, dict(models)
        self.left = dict(queued or {})
        self.result = Residency()
        # the farm's own policy places on an index kept across offers; another placer sees the GPUs anew
        self._core = _Core(gpus, self.models, self.left) if placer is place else None
        self.gpus = (
            list(self._core.gpus.values())
            if self._core is not None
            else [Gpu(g.id, g.accelerator, g.memory_gb, tuple(g.resident), dict(g.running), g.idle_s) for g in gpus]
        )
        self._by_id = {g.id: g for g in self.gpus}

    def offer(self, want: Want) -> Placement | None:
        """Place ``want`` now, or None: it waits (deferred)."""
        if self._core is not None:
            placed = self._core.one(want)
            (self.result.placed.append(placed) if placed is not None else self.result.deferred.append(want.key))
            return placed
        self.left[want.model] = max(0.0, self.left.get(want.model, 0.0) - want.seconds)
        decided = self.placer([want], self.gpus, self.models, self.left)
        if not decided.placed:
            self.left[want.model] = self.left.get(want.model, 0.0) + want.seconds  # still waiting
            self.result.deferred.append(want.key)
            return None
        p = decided.placed[0]
        apply(self._by_id[p.gpu], p)
        self.result.placed.append(p)
        return p

    def close(self) -> Residency:
        """What was decided, with the GPUs to give back now."""
        if self._core is not None:
            self.result.release = self._core.release()
        else:
            self.result.release = self.placer([], self.gpus, self.models, self.left).release
        return self.result


def apply(gpu: Gpu, p: Placement) -> None:
    """``gpu`` as ``p`` leaves it: its evicted models gone, its model loaded, one more action running."""
    if p.load:
        gpu.resident = tuple(m for m in gpu.resident if m not in p.evict) + (p.model,)
        gpu.running = {m: n for m, n in gpu.running.items() if m not in p.evict}
    gpu.running[p.model] = gpu.running.get(p.model, 0) + 1
    gpu.idle_s = 0.0


Placer = Callable[[Sequence[Want], Sequence[Gpu], Mapping[str, Model], Mapping[str, float] | None], Residency]
