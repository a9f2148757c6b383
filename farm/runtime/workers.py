"""Warm worker actors, and why they outlive the controller (DESIGN.md, invariant 11).

A ``StageWorker`` loads one backend (and its model) once and runs that backend's actions. GPU stages
and backends that do paid or model work (``Catalog.outlives``) run on them. When the controller runs
as the farm's named actor, its workers are *detached* named actors (``farm-worker-<controller>-...``
in namespace ``farm``): Ray does not kill them when the controller dies, so a paid call is not paid
again and a model is not loaded again. Each action runs on a thread of the worker's own and its
outcome is kept by action key, so a restarted controller can find the worker by name, ask what it
holds (``describe``) and collect what it was running (``result``).

Nothing is left behind: the controller retires idle workers and kills them all when it shuts down;
a restarted controller kills those it cannot adopt; and a worker whose controller is gone for good
(``farm controller stop``) ends itself once it runs nothing.

Ray retries nothing here (``max_restarts=0``, ``max_task_retries=0``): a worker that dies is the
farm's failed attempt, journaled and retried under its own policy.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import ray
import structlog

from farm.catalog import Catalog, slots
from farm.observe import logs
from farm.runtime.batching import Batcher
from farm.runtime.execute import execute
from farm.settings import StoreSpec
from farm.store import models, open_objects

log = structlog.get_logger("farm.runtime")

PREFIX = "farm-worker-"  # then the controller's actor name, then a random part (a worker, not work)
KEEP_FINISHED = 256  # outcomes a worker keeps for a controller that may not have heard them
OWNER_CHECK_S = 5.0  # how often a detached worker looks for its controller


def where() -> dict[str, str]:
    """Where an action ran: node, host, process, the GPUs Ray gave it (the report's lanes) and their
    kind (the node's Ray ``accelerator_type``, where it has one: the metrics' accelerator)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()
    worker = {"node": node, "host": socket.gethostname(), "pid": str(os.getpid())}
    gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    if gpus:
        worker["gpus"] = ",".join(str(g) for g in gpus)
        kind = _accelerator(node)
        if kind:
            worker["accelerator"] = kind
    return worker


_kinds: dict[str, str | None] = {}  # node id -> its accelerator kind, asked of Ray once per process


def _accelerator(node: str) -> str | None:
    """The accelerator kind of a Ray node (its ``accelerator_type:KIND`` resource), or None."""
    if node not in _kinds:
        try:
            found: dict[str, Any] = next((n for n in ray.nodes() if n.get("NodeID") == node), {})
        except Exception:  # the control plane is busy: the action is recorded without its kind
            return None
        resources = found.get("Resources", {})
        _kinds[node] = next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), None)
    return _kinds[node]


class _Job:
    """One action running on a worker's thread; its outcome (a manifest as JSON, or the exception)."""

    def __init__(self, run: Callable[[], dict[str, Any]], seats: threading.Semaphore):
        self.seats = seats
        self.done = threading.Event()
        self.value: dict[str, Any] | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(run,), daemon=True, name="farm-action").start()

    def _run(self, run: Callable[[], dict[str, Any]]) -> None:
        try:
            with self.seats:  # no more at once than the worker's slots (its GPU share)
                self.value = run()
        except BaseException as exc:  # the outcome, handed to whoever collects it
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> dict[str, Any]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class WarmWorker:
    """A long-lived worker for one backend: loads it (and its model) once, stays warm. A batching
    backend's worker takes ``max_batch`` actions at once and runs them together. ``StageWorker`` is
    this class as a Ray actor; as a plain object it runs actions in this process.

    ``pool``: (stage, backend, accelerator, gpus, cpus), what a controller adopting it needs to know;
    ``owner``: (name, namespace) of the controller actor it serves, when it outlives it.

    The time spent building the backend (fetching a stored model to this node, the catalog's build,
    and the ``load()`` of a GPU backend that has one, called here) is the model's load: the first action that
    runs here carries it in its usage's ``load_seconds`` (added to a load its backend reports itself),
    so the farm accounts the load once, on the GPU that paid for it."""

    def __init__(
        self,
        stage: str,
        backend: str,
        configs=None,
        spec: StoreSpec | None = None,
        pool: tuple | None = None,
        owner: tuple[str, str] | None = None,
    ):
        started = time.perf_counter()
        if spec is not None:  # models named "store:NAME" are fetched to this node's cache, once
            configs = models.localize(configs, open_objects(spec))
        self.backend = Catalog(configs).load(stage, backend)
        load = getattr(self.backend, "load", None)
        if callable(load) and self.backend.resources.num_gpus > 0:  # a GPU model (workers/_torch.py): load it now,
            load()  # where it is timed, not in the first action
        self._unclaimed_load = time.perf_counter() - started  # until the first action that runs here
        self.slots = slots(self.backend)
        self.batcher = Batcher(self.backend, getattr(self.backend, "batch_wait_s", 0.02)) if self.slots > 1 else None
        self.pool, self.version = pool, self.backend.version
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self._seats = threading.Semaphore(self.slots)
        if owner is not None:
            threading.Thread(target=self._watch, args=owner, daemon=True, name="farm-owner").start()

    def run(self, key: str, action, inputs, spec, studio, batch=None, configs=None) -> dict[str, Any]:
        """Run one action on a thread of this worker's own and wait for it; the outcome is kept (by
        ``key``) for a controller that did not hear it. A second call for a key running here waits for
        the same run."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None or job.done.is_set():
                # execute builds the backend from the same settings: the instance built above, model loaded
                def run() -> dict[str, Any]:
                    since = time.time()
                    manifest = execute(action, inputs, spec, studio, batch, configs, self.batcher, where=where)
                    return self._charge_load(manifest, since)

                job = self._jobs[key] = _Job(run, self._seats)
                self._jobs.move_to_end(key)
                self._forget()
        return job.outcome()

    def _charge_load(self, manifest: dict[str, Any], since: float) -> dict[str, Any]:
        """The first action that ran here (not one found done in the store: it ran ``since`` or later)
        carries the time spent building this worker's backend in ``usage.load_seconds``, added to any
        load its backend reported (a lazy load in its first run)."""
        if float(manifest.get("started_at") or 0.0) < since:
            return manifest
        with self._lock:
            built, self._unclaimed_load = self._unclaimed_load, 0.0
        if built <= 0:
            return manifest
        usage = dict(manifest.get("usage") or {})
        reported = float(usage.get("load_seconds") or 0.0)
        usage["load_seconds"] = round((reported if math.isfinite(reported) and reported > 0 else 0.0) + built, 6)
        return {**manifest, "usage": usage}

    def result(self, key: str) -> dict[str, Any]:
        """The outcome of the action ``key`` started here (waits while it runs). Raises LookupError
        when this worker holds nothing for it."""
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            raise LookupError(f"this worker holds no action {key}")
        return job.outcome()

    def describe(self) -> dict[str, Any]:
        """What a restarted controller needs to adopt this worker: its pool, its backend's version,
        the actions it runs and those whose outcome it keeps."""
        with self._lock:
            running = [k for k, j in self._jobs.items() if not j.done.is_set()]
            finished = [k for k, j in self._jobs.items() if j.done.is_set()]
        return {
            "pool": self.pool,
            "slots": self.slots,
            "version": self.version,
            "running": running,
            "finished": finished,
        }

    def _forget(self) -> None:
        """Keep the newest KEEP_FINISHED finished outcomes (a controller collects each at once)."""
        done = [k for k, j in self._jobs.items() if j.done.is_set()]
        for k in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self._jobs[k]

    def _watch(self, name: str, namespace: str) -> None:
        """End this worker once its controller is gone for good and nothing runs here (a controller
        that Ray is restarting keeps its name, and adopts the worker)."""
        while True:
            time.sleep(OWNER_CHECK_S)
            with self._lock:
                busy = any(not j.done.is_set() for j in self._jobs.values())
            if busy:
                continue
            try:
                ray.get_actor(name, namespace=namespace)
            except ValueError:
                log.warning("worker.orphaned", controller=name, pid=os.getpid())
                os._exit(0)
            except Exception:  # the cluster's control plane is busy or restarting: look again later
                continue


@ray.remote(max_restarts=0, max_task_retries=0)
class StageWorker(WarmWorker):
    """A ``WarmWorker`` as a Ray actor, logging JSON lines at ``log_level``."""

    def __init__(
        self,
        stage: str,
        backend: str,
        log_level: str,
        configs=None,
        spec: StoreSpec | None = None,
        pool: tuple | None = None,
        owner: tuple[str, str] | None = None,
    ):
        logs.configure(level=log_level, json=True)
        super().__init__(stage, backend, configs, spec, pool, owner)


def worker_name(owner: str, suffix: str) -> str:
    return f"{PREFIX}{owner}-{suffix}"


def find_workers(owner: str, namespace: str) -> list[tuple[str, Any]]:
    """The named workers of the controller called ``owner``: (name, handle) of each still alive."""
    prefix = worker_name(owner, "")
    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != namespace or not str(entry.get("name", "")).startswith(prefix):
            continue
        try:
            found.append((entry["name"], ray.get_actor(entry["name"], namespace=namespace)))
        except ValueError:  # died since it was listed
            continue
    return found


def describe_all(handles: list[tuple[str, Any]], timeout: float = 30.0) -> list[tuple[str, Any, dict | None]]:
    """Ask every worker what it holds, at once; None for one that does not answer (dead, stuck)."""
    refs = [h.describe.remote() for _, h in handles]
    ray.wait(refs, num_returns=len(refs), timeout=timeout)
    out = []
    for (name, handle), ref in zip(handles, refs, strict=True):
        try:
            out.append((name, handle, ray.get(ref, timeout=0)))
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            out.append((name, handle, None))
    return out


def actor_node(actor_id: str) -> str | None:
    """The node an actor ran on (to journal which worker a lost attempt ran on), if Ray still says."""
    try:
        from ray._private.state import actors

        info = actors(actor_id)
        return str(info["Address"]["NodeID"]) or None
    except Exception:  # an older or newer Ray, or the record is gone: the failure is journaled without it
        return None
