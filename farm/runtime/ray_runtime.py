"""The Ray runtime: actions become Ray tasks (CPU stages) or calls on warm worker actors (GPU stages,
and backends that do paid or model work: farm.runtime.workers).

Each runs ``farm.runtime.execute.execute``; a finished one comes back as its manifest, a failed one
as ``ActionFailed`` with the backend's retryability. Ray retries nothing: a lost worker, actor or node
comes back as a retryable failure, so every attempt is the farm's, journaled and accounted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import structlog

from farm.catalog import Catalog
from farm.core.events import ActionResult
from farm.core.manifest import Blob
from farm.core.plan import Action
from farm.core.ports import Finished
from farm.core.state import Profile
from farm.errors import ActionFailed, FarmError
from farm.observe import logs
from farm.policy.residency import Gpu, Placement
from farm.runtime.capacity import left_over
from farm.runtime.cluster import probe, use_token_auth
from farm.runtime.execute import execute
from farm.runtime.pools import Pool, Pools
from farm.runtime.workers import actor_node, describe_all, find_workers, where
from farm.settings import StoreSpec

log = structlog.get_logger("farm.runtime")


def _start_or_join(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at ``address`` (probed first: a wrong address or a missing token is one line
    within seconds), else start a Ray of this process's own: never one that happens to run here."""
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "include_dashboard": False, "log_to_driver": True}
    if address:
        probe(address)
        ray.init(address=address, **kwargs)
        return
    if os.environ.get("RAY_AUTH_MODE") is None:
        use_token_auth()  # Ray's default for a new local Ray, said here so that it does not warn each time
    ray.init(address="local", num_cpus=num_cpus, **kwargs)


def _local_cpus() -> int:
    """The CPUs a local ``ray.init()`` would offer here (cgroup limits included)."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except (ImportError, AttributeError):
        return os.cpu_count() or 1


# Ray retries nothing: a worker or node that dies is a failed attempt the farm journals and retries
@ray.remote(max_retries=0)
def _execute_task(action, inputs, spec, studio, log_level, batch=None, configs=None):
    logs.configure(level=log_level, json=True)
    return execute(action, inputs, spec, studio, batch, configs, where=where)


def _controller() -> tuple[str, str] | None:
    """(name, namespace) of the named actor this process is, if it is one (the farm's controller)."""
    try:
        context = ray.get_runtime_context()
        if context.get_actor_id() is None:  # a driver (farm render, a test): asking its name only warns
            return None
        name = context.get_actor_name()
        return (name, context.namespace) if name else None
    except Exception:  # a driver, or a Ray that cannot say
        return None


class RayRuntime:
    """Runs actions on Ray: CPU stages as tasks; GPU stages, and backends that do paid or model work
    (``Catalog.outlives``), on pools of warm ``StageWorker`` actors. Hosted in the farm's controller
    actor, those workers are detached and named after it: they outlive it, and its next incarnation
    adopts them (``adopt``).

    Connects to ``address`` when given (or to the cluster this process already joined), else starts
    a local Ray. Actions read and write the store ``spec`` describes; each holds the resources of the
    profile it is submitted with. ``catalog`` holds the configured backends; their settings travel
    to the workers with the work.

    ``cpu_ahead``: CPU actions per CPU that ``capacity`` offers beyond what can run now. Ray queues
    them and hands each to a worker the moment one finishes, on the lease it already holds, instead
    of the worker idling while the result goes to the controller and the next action comes back.
    The price: a more urgent action that becomes ready waits behind at most that many per CPU. GPU
    actions are not queued ahead: GPU shares and floors count GPUs held, and a GPU action is long
    enough that the round trip does not show.
    """

    grows = True  # Ray's autoscaler, where the cluster has one

    def __init__(
        self,
        spec: StoreSpec,
        address: str | None = None,
        num_cpus: int | None = None,
        log_level: str = "WARNING",
        idle_actor_s: float = 30.0,
        catalog: Catalog | None = None,
        cpu_ahead: int = 0,
    ):
        self.log_level, self.idle_actor_s, self.cpu_ahead = log_level, idle_actor_s, cpu_ahead
        self.catalog = catalog or Catalog()
        self._owns = not ray.is_initialized()
        self._address, self._num_cpus, self._store_spec = address, num_cpus, spec
        self._running: dict[ray.ObjectRef, tuple[Action, Any]] = {}  # ref -> (action, profile)
        self._pools = Pools(self.catalog, log_level, self._cluster, idle_actor_s)
        self._totals: tuple[float, Any] | None = None
        self._spec: Any = None
        self._configs: Any = None
        self._owner: tuple[str, str] | None = None  # the controller actor this runs in, if any
        self._outlives: dict[str, bool] = {}
        # A local Ray of our own starts with the first action: a render whose actions are all in the
        # store already never waits for one. A cluster given by address is joined now (a wrong one
        # fails at once).
        if not self._owns or address:
            self._start()
        self._task_fns: dict[float, Any] = {}
        self._requested: list[dict] = []  # what the autoscaler was last sent
        self._wanted: list[dict] = []  # what the queue needs now
        self._request_lock, self._request_wake = threading.Lock(), threading.Event()
        self._request_stop = threading.Event()
        self._requester: threading.Thread | None = None

    def _start(self) -> None:
        if self._spec is not None:
            return
        if self._owns and not ray.is_initialized():
            _start_or_join(self._address, self._num_cpus)
        self._owner = _controller()
        self._spec = ray.put(self._store_spec)  # put once, passed by reference to every task
        self._configs = ray.put(self.catalog.configs) if self.catalog.configs else None

    def submit(
        self,
        action: Action,
        inputs: Mapping[str, Blob],
        profile: Profile,
        batch: str | None,
        placement: Placement | None = None,
    ) -> None:
        """Start ``action`` on the cluster holding ``profile``'s resources; ``batch`` (the batch charged
        for it) goes into its logs; ``placement``: the GPU worker residency chose (farm.runtime.pools)."""
        self._start()
        prof = profile
        args = (action.to_json(), {k: b.model_dump() for k, b in inputs.items()}, self._spec, action.context["studio"])
        if prof.gpus > 0 or self._on_worker(action.backend):
            ref = self._pools.submit(action, prof, args + (batch, self._configs), self._owner, placement)
        else:
            if prof.cpus not in self._task_fns:
                self._task_fns[prof.cpus] = _execute_task.options(num_cpus=prof.cpus)
            ref = self._task_fns[prof.cpus].remote(*args, self.log_level, batch, self._configs)
        self._running[ref] = (action, prof)

    def _on_worker(self, backend: str) -> bool:
        if backend not in self._outlives:
            self._outlives[backend] = self.catalog.outlives(backend)
        return self._outlives[backend]

    @property
    def running(self) -> int:
        return len(self._running)

    def actors(self) -> dict[str, int]:
        """Warm actors per pool, for status and metrics."""
        return {f"{k[0]}/{k[1]}": len(p.actors) for k, p in self._pools.pools.items()}

    def slots(self) -> list[Gpu]:
        """The cluster's GPUs as model residency sees them (farm.runtime.pools.Pools.slots)."""
        if self._spec is None:
            return []
        return self._pools.slots()

    def release(self, gpus: list[str]) -> None:
        """Give back the GPUs the residency policy released."""
        self._pools.release(gpus)

    def _cluster(self) -> tuple[float, dict]:
        """The live nodes' CPUs and GPUs by accelerator, read at most once a second."""
        now = time.monotonic()
        if self._spec is None:  # our local Ray, not started yet: what it will have
            return float(self._num_cpus or _local_cpus()), {}
        if self._totals is None or now - self._totals[0] > 1.0:
            cpus, gpus = 0.0, dict[str | None, float]()
            for node in ray.nodes():
                if not node.get("Alive"):
                    continue
                res = node.get("Resources", {})
                cpus += res.get("CPU", 0.0)
                if res.get("GPU"):
                    acc = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None)
                    gpus[acc] = gpus.get(acc, 0.0) + res["GPU"]
            self._totals = (now, (cpus, gpus))
        return self._totals[1]

    def capacity(self):
        """What the controller may still start now: the live nodes' CPUs (times 1 + ``cpu_ahead``) and
        GPUs, less what our actions hold."""
        cpus, gpus = self._cluster()
        self._pools.retire_idle(time.monotonic())
        return left_over(cpus * (1 + self.cpu_ahead), gpus, [prof for _, prof in self._running.values()])

    def request_capacity(self, shapes) -> None:
        """Tell Ray's autoscaler (where the cluster has one) what the queue needs, as (cpus, gpus,
        accelerator) shapes; a GPU group can then grow from zero. Without an autoscaler this is a
        no-op. Each call replaces the last request. The request is a blocking GCS write that takes
        tens of milliseconds on a busy head, and the queue changes with every completion, so a
        thread sends the newest request, at most once a second (an autoscaler acts on a scale of
        seconds to minutes); the controller's loop never waits for it."""
        bundles = []
        for cpus, gpus, accelerator in shapes:
            bundle = {"GPU": float(gpus)} | ({"CPU": float(cpus)} if cpus else {})
            if accelerator:
                bundle[f"accelerator_type:{accelerator}"] = 0.001
            bundles.append(bundle)
        with self._request_lock:
            if bundles == self._wanted:
                return
            self._wanted = bundles
        if self._spec is None:
            return  # a local Ray of our own has no autoscaler (and has not started)
        if self._requester is None:
            self._requester = threading.Thread(target=self._send_requests, daemon=True, name="autoscaler-request")
            self._requester.start()
        self._request_wake.set()

    def _send_requests(self) -> None:
        from ray.autoscaler.sdk import request_resources

        while not self._request_stop.is_set():
            self._request_wake.wait()
            self._request_wake.clear()
            with self._request_lock:
                bundles = self._wanted
            if bundles != self._requested and not self._request_stop.is_set():
                try:
                    request_resources(bundles=bundles)
                    self._requested = bundles
                except Exception as exc:  # the head is restarting: the next change tries again
                    log.warning("autoscaler.request_failed", error=str(exc))
            self._request_stop.wait(1.0)

    def requested(self) -> list[dict]:
        """The last request the autoscaler received."""
        return list(self._requested)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until at least one submitted action finishes (or ``timeout``); return those that did."""
        if not self._running:
            return []
        ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if ready:  # collect everything else already finished too
            more, _ = ray.wait(
                [r for r in self._running if r not in ready], num_returns=len(self._running) - len(ready), timeout=0
            )
            ready += more
        return [self._finish(ref) for ref in ready]

    def _finish(self, ref) -> Finished:
        action, _ = self._running.pop(ref)
        actor_lost = False
        try:
            return Finished(action, ActionResult.model_validate(ray.get(ref)), None)
        except ray.exceptions.RayTaskError as exc:
            # Ray raises the task's exception as a RayTaskError subclass of its class, whose class
            # attributes shadow the instance's (FarmError.retryable is False): read the cause itself
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            if isinstance(cause, ActionFailed):
                return Finished(action, None, cause)
            retryable = getattr(cause, "retryable", False) if isinstance(cause, FarmError) else True
            return Finished(
                action,
                None,
                ActionFailed(
                    action.key,
                    action.label,
                    str(cause),
                    retryable=retryable,
                    worker=getattr(cause, "worker", None),
                    retry_after=getattr(cause, "retry_after", None),
                ),
            )
        except ray.exceptions.RayError as exc:  # a worker, actor or node died: a failed attempt, try elsewhere
            actor_lost = True
            actor_id = self._pools.owner_of(ref)
            node = actor_node(actor_id) if actor_id else None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return Finished(
                action,
                None,
                ActionFailed(
                    action.key,
                    action.label,
                    f"its worker was lost: {type(exc).__name__}: {first}",
                    retryable=True,
                    worker=node,
                ),
            )
        finally:
            self._pools.finished(ref, actor_lost)

    def cancel(self, keys) -> None:
        wanted = set(keys)
        for ref, (action, _) in list(self._running.items()):
            if action.key in wanted:
                ray.cancel(ref, force=False)

    def adopt(self, actions: Sequence[Action]) -> set[str]:
        """Re-attach to the workers a previous incarnation of this controller left running: each of
        ``actions`` one of them still runs (or has finished, its outcome kept) is tracked again and
        comes back through ``wait``; idle workers of a backend as configured now join its pool warm.
        Workers holding none of ``actions`` and running something, or built from other settings, are
        killed. Returns the keys tracked again. Outside the controller actor nothing outlives it."""
        self._start()
        if self._owner is None:
            return set()
        wanted = {a.key: a for a in actions}
        adopted: set[str] = set()
        for name, handle, info in describe_all(find_workers(*self._owner)):
            pool_key = tuple(info["pool"]) if info is not None and info.get("pool") else None
            if info is None or pool_key is None:
                self._sweep(name, handle)  # does not answer: dead, or stuck
                continue
            held = [k for k in info["running"] + info["finished"] if k in wanted]
            if not held and (info["running"] or self._version(pool_key[0], pool_key[1]) != info["version"]):
                self._sweep(name, handle)  # runs what nobody wants now, or another configuration's backend
                continue
            prof = Profile(cpus=pool_key[4], gpus=pool_key[3], accelerator=pool_key[2])
            pool = self._pools.pools.setdefault(pool_key, Pool(slots=int(info["slots"])))
            actor_id = handle._actor_id.hex()
            pool.actors[actor_id], pool.load[actor_id] = handle, 0
            for key in held:
                ref = handle.result.remote(key)
                self._running[ref] = (wanted[key], prof)
                pool.busy[ref] = actor_id
                pool.load[actor_id] += 1
                adopted.add(key)
            if not held:
                pool.last_used[actor_id] = time.monotonic()
            log.info("worker.adopted", worker=name, actions=len(held))
        return adopted

    @staticmethod
    def _sweep(name: str, handle: Any) -> None:
        log.info("worker.swept", worker=name)
        ray.kill(handle)

    def _version(self, stage: str, backend: str) -> str | None:
        try:
            return self.catalog.load(stage, backend).version
        except Exception:  # a backend no longer configured: its workers are swept
            return None

    def shutdown(self) -> None:
        self._request_stop.set()
        self._request_wake.set()
        for ref in self._running:
            ray.cancel(ref)
        self._running.clear()
        self._pools.shutdown()
        if self._owns and self._spec is not None and ray.is_initialized():
            ray.shutdown()
