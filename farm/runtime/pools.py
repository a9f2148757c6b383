"""Warm worker actors (farm.runtime.workers.StageWorker), one pool per (stage, backend, resources), and
the GPUs they hold, as model residency sees them.

A GPU worker is a GPU holding its backend's model: ``slots()`` reports each one (its model, how many
actions it runs) and the GPUs no worker holds, and the controller's residency policy
(farm.policy.residency, through farm.core.placing) decides where each GPU action runs. A dispatch
carries that decision (``Placement``) and the pools carry it out and nothing more: run on the worker
that holds the model; or load it, on a free GPU or in place of the worker(s) the placement evicts;
give back a GPU the policy releases. Workers without a GPU (API and model-server backends, which
outlive the controller) grow to the work and are given back after ``idle_s`` idle: they hold no GPU
and load nothing, so there is no residency to decide for them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray

from farm.catalog import Catalog, slots
from farm.core.plan import Action
from farm.core.state import Profile
from farm.policy.residency import Gpu, Placement
from farm.runtime.cluster import NAMESPACE
from farm.runtime.workers import StageWorker, worker_name

ANY_KIND = "any"  # the accelerator of GPUs Ray reports no accelerator_type for (as the metrics label it)


@dataclass
class Pool:
    """Warm actors of one (stage, backend, accelerator, gpus, cpus). Each actor takes up to ``slots``
    actions at once (a batching backend's ``max_batch``)."""

    slots: int = 1
    actors: dict = field(default_factory=dict)  # actor id -> actor
    load: dict = field(default_factory=dict)  # actor id -> actions in flight
    busy: dict = field(default_factory=dict)  # ref -> actor id
    last_used: dict = field(default_factory=dict)  # actor id -> monotonic time it last fell idle

    def pick(self) -> str | None:
        """An actor with a free slot, the fullest first (so batches fill), or None."""
        free = [(n, a) for a, n in self.load.items() if n < self.slots]
        return max(free)[1] if free else None


def model_name(key: tuple) -> str:
    return f"{key[0]}/{key[1]}"


class Pools:
    """The pools of one runtime. ``cluster()`` gives the live nodes' (CPUs, GPUs by accelerator)."""

    def __init__(self, catalog: Catalog, log_level: str, cluster: Any, idle_s: float = 30.0):
        self.catalog, self.log_level, self.cluster, self.idle_s = catalog, log_level, cluster, idle_s
        self.pools: dict[tuple, Pool] = {}

    @staticmethod
    def key(action: Action, prof: Profile) -> tuple:
        return (action.stage, action.backend, prof.accelerator, prof.gpus, prof.cpus)

    def submit(self, action: Action, prof: Profile, args: tuple, owner: Any, placement: Placement | None) -> Any:
        """Run ``action`` on a worker of its pool: the one ``placement`` names, a new one where it loads
        the model (after giving back the workers it evicts), or without a placement the fullest worker
        with room, else a new one."""
        key = self.key(action, prof)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(slots=slots(self.catalog.load(action.stage, action.backend)))
        actor_id = None
        if placement is not None and not placement.load and placement.gpu in pool.actors:
            actor_id = placement.gpu
        elif placement is not None and placement.load:
            self._evict(placement.gpu)
        else:
            actor_id = pool.pick()
            if actor_id is None and pool.actors and prof.gpus > 0 and len(pool.actors) >= self._seats(prof, pool):
                # as many workers as the cluster's GPUs seat: queue on the least loaded one
                actor_id = min(pool.load, key=lambda a: pool.load[a])
        if actor_id is None:
            actor_id = self._start(key, pool, action, prof, args, owner)
        ref = pool.actors[actor_id].run.remote(action.key, *args)
        pool.load[actor_id] += 1
        pool.busy[ref] = actor_id
        return ref

    def _start(self, key: tuple, pool: Pool, action: Action, prof: Profile, args: tuple, owner: Any) -> str:
        # the actor holds the whole of what its slots' actions hold between them; one without a GPU waits
        # on a server and holds no CPU while idle (the controller counts its actions' CPUs); its threads:
        # one per slot, one per collecting call after a restart, and describe
        options: dict[str, Any] = {
            "num_gpus": prof.gpus * pool.slots,
            "num_cpus": prof.cpus if prof.gpus > 0 else 0,
            "max_concurrency": 2 * pool.slots + 2,
        }
        if prof.accelerator:
            options["accelerator_type"] = prof.accelerator
        if owner is not None:  # outlives the controller, which finds it again by its name
            name = worker_name(owner[0], uuid.uuid4().hex[:12])
            options |= {"name": name, "namespace": NAMESPACE, "lifetime": "detached"}
        worker_cls: Any = StageWorker  # a Ray actor class
        actor = worker_cls.options(**options).remote(
            action.stage, action.backend, self.log_level, args[5] if len(args) > 5 else None, args[2], key, owner
        )
        actor_id = actor._actor_id.hex()
        pool.actors[actor_id], pool.load[actor_id] = actor, 0
        return actor_id

    def _evict(self, gpu: str) -> None:
        """Give back the worker ``gpu`` names (a placement evicts it), if it is idle."""
        for pool in self.pools.values():
            if gpu in pool.actors and pool.load.get(gpu, 0) == 0:
                self.drop(pool, gpu)
                return

    def release(self, gpus: list[str]) -> None:
        """Give back the GPUs the residency policy releases (idle, their models wanted by nothing)."""
        for gpu in gpus:
            self._evict(gpu)

    def _seats(self, prof: Profile, pool: Pool) -> int:
        _, gpus = self.cluster()
        matching = sum(n for acc, n in gpus.items() if prof.accelerator is None or acc == prof.accelerator)
        return max(1, int(matching // max(prof.gpus * pool.slots, 1e-9)))

    def slots(self) -> list[Gpu]:
        """Every GPU of the live nodes as residency sees it: each GPU worker (the model it holds, what
        runs on it, how long it has been idle), then the GPUs no worker holds."""
        _, gpus = self.cluster()
        now, out, held = time.monotonic(), [], dict[Any, float]()
        kinds = [k for k in gpus if gpus[k] > 0]
        for key, pool in self.pools.items():
            if key[3] <= 0:
                continue
            kind = key[2] if key[2] is not None else (kinds[0] if len(kinds) == 1 else None)
            held[kind] = held.get(kind, 0.0) + key[3] * pool.slots * len(pool.actors)
            for actor_id in sorted(pool.actors):
                running = pool.load.get(actor_id, 0)
                idle = now - pool.last_used.get(actor_id, now) if running == 0 else 0.0
                out.append(Gpu(actor_id, kind or ANY_KIND, 0.0, (model_name(key),), {model_name(key): running}, idle))
        for kind in sorted(gpus, key=lambda k: k or ""):
            free = int(gpus[kind] - held.get(kind, 0.0) + 1e-9)
            out += [Gpu(f"free:{kind or ANY_KIND}:{i}", kind or ANY_KIND) for i in range(max(0, free))]
        return out

    def owner_of(self, ref: Any) -> str | None:
        return next((p.busy[ref] for p in self.pools.values() if ref in p.busy), None)

    def finished(self, ref: Any, lost: bool) -> None:
        """``ref``'s action came back (``lost``: its worker died with it)."""
        for pool in self.pools.values():
            if ref in pool.busy:
                actor_id = pool.busy.pop(ref)
                if actor_id not in pool.actors:
                    continue
                if lost:
                    self.drop(pool, actor_id)
                else:
                    pool.load[actor_id] -= 1
                    if pool.load[actor_id] == 0:
                        pool.last_used[actor_id] = time.monotonic()

    def retire_idle(self, now: float) -> None:
        """Give back workers without a GPU idle for ``idle_s`` (GPU workers go when residency says)."""
        for key, pool in self.pools.items():
            if key[3] > 0:
                continue
            for actor_id, load in list(pool.load.items()):
                if load == 0 and now - pool.last_used.get(actor_id, 0.0) > self.idle_s:
                    self.drop(pool, actor_id)

    @staticmethod
    def drop(pool: Pool, actor_id: str) -> None:
        actor = pool.actors.pop(actor_id)
        pool.load.pop(actor_id, None)
        pool.last_used.pop(actor_id, None)
        ray.kill(actor)

    def shutdown(self) -> None:
        for pool in self.pools.values():
            for actor in pool.actors.values():
                ray.kill(actor)
        self.pools.clear()
