"""The controller service: journal, store, runtime and webhooks wired around the pure Controller.

It runs as a named, detached Ray actor (``farm-controller`` in namespace ``farm``) that Ray restarts
when it dies. Every change goes through ``_commit``: the events are appended to the journal first,
then applied to the Controller, then their commands are carried out (DESIGN.md, invariant 5). On
start the journal is replayed; actions that were running when the last incarnation died are looked
up in the store (a finished one has its manifest) and otherwise dispatched again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from farm import catalog as backends
from farm.observe import logs
from farm.core.controller import Cancel, Controller, Deliver, Dispatch, Lookup, Notify, Profile
from farm.core.manifest import Blob
from farm.observe.metrics import Metrics, accelerator_label
from farm.core.plan import Action
from farm.policy import Prices, RetryPolicy, Share
from farm.service.render import DELIVERABLES
from farm.runtime.ray_runtime import RayRuntime, slots
from farm.settings import Settings
from farm.store import ArtifactStore, open_objects
from farm.store.journal import Journal
from farm.service.webhooks import Notification, deliver

log = structlog.get_logger("farm.service.host")

ACTOR_NAME, NAMESPACE = "farm-controller", "farm"
# log levels of journaled events (the others are info)
_LEVELS = {"action.cached": logging.DEBUG, "action.failed": logging.WARNING, "action.quarantined": logging.WARNING,
           "episode.failed": logging.WARNING}


def batch_payload(loaded_batch, settings: Settings) -> dict[str, Any]:
    """What ``farm batch submit`` sends: the validated specs as values (the controller reads no user files)."""
    spec = loaded_batch.spec
    return {
        "studio": spec.studio, "name": spec.name, "priority": spec.priority,
        "namespace": spec.studio if settings.cache_namespace is None else settings.cache_namespace,
        "deadline": spec.deadline.timestamp() if spec.deadline else None,
        "budget": spec.budget.model_dump(),
        "webhook": spec.webhook.model_dump() if spec.webhook else None,
        "backends": dict(spec.backends),
        "episodes": [{"series": e.series.model_dump(mode="json"), "episode": e.episode.model_dump(mode="json")}
                     for e in loaded_batch.episodes],
    }


def profiles_for(settings: Settings, catalog: backends.Catalog | None = None) -> dict[tuple[str, str], Profile]:
    """What one action of each backend holds: its declared resources, with settings' per-stage
    overrides for the default backends. A batching backend's GPUs are shared by the actions of a
    batch, so each holds its slice (the actor holds the whole)."""
    catalog = catalog or settings.catalog()
    defaults = settings.backend_names()
    out = {}
    for stage, name in catalog.all():
        if stage not in defaults:
            continue  # a configured backend that cannot be built: ``farm backends`` says why
        backend = catalog.load(stage, name)
        declared = backend.resources
        override = settings.stage_resources.get(stage, {}) if defaults[stage] == name or name not in catalog.configs else {}
        gpus = override.get("num_gpus", declared.num_gpus)
        out[(stage, name)] = Profile(cpus=override.get("num_cpus", declared.num_cpus),
                                     gpus=gpus / slots(backend),
                                     accelerator=override.get("accelerator", declared.accelerator))
    return out


def estimator(catalog: backends.Catalog):
    """The controller's estimate function: (seconds, tokens, GPU-seconds) of one action."""
    def estimate(action: Action) -> tuple[float, int, float]:
        est = catalog.load(action.stage, action.backend).estimate(action.op, action.params)
        return est.seconds, est.tokens, est.gpu_seconds
    return estimate


def episode_backends(payload: dict[str, Any], item: dict[str, Any], settings: Settings,
                     catalog: backends.Catalog) -> dict[str, list]:
    """Stage -> [name, version, features] of one episode: the batch's choice, else its series', else
    settings'. Raises UnknownBackend naming the stage and the spec that asked for it."""
    chosen = catalog.choose_for(settings.backend_names(), item["series"].get("backends"), payload.get("backends"))
    return {stage: choice.to_json() for stage, choice in chosen.items()}


class ControllerService:
    """Owns every batch on the cluster. Thread-safe: RPCs and the scheduling loop share one lock."""

    def __init__(self, settings_json: dict[str, Any], *, start_loop: bool = True):
        self.settings = Settings.model_validate(settings_json)
        logs.configure(level=self.settings.log_level, json=True, secrets=[
            self.settings.s3_access_key.get_secret_value(), self.settings.s3_secret_key.get_secret_value(),
            *self.settings.catalog().secrets()])
        self.spec = self.settings.store_spec()
        self.objects = open_objects(self.spec)
        self.journal = Journal(self.objects)
        self.catalog = self.settings.catalog()
        self.profiles = profiles_for(self.settings, self.catalog)
        self.controller = Controller(
            estimator(self.catalog), self.profiles, prices=Prices(**self.settings.prices),
            shares=[Share(**s) for s in self.settings.shares], caps=self.settings.caps,
            retry=RetryPolicy(**self.settings.retry))
        self.runtime = RayRuntime(log_level=self.settings.log_level, catalog=self.catalog,
                                  cpu_ahead=self.settings.dispatch_ahead)
        self.lock = threading.RLock()
        self._stores: dict[str, ArtifactStore] = {}
        self._done: dict[str, set[str]] = {}
        self._webhooks: queue.Queue[Notification] = queue.Queue()
        self._sent: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set when new work arrives, so an idle loop reacts at once
        self.started_at = time.time()
        self.metrics = Metrics(prices=Prices(**self.settings.prices),
                               accelerators={k: accelerator_label(p) for k, p in self.profiles.items()})
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        self._gauges_at, self._gauges_every = 0.0, 1.0
        self._recover()
        self._threads = []
        if start_loop:
            for target in (self._loop, self._webhook_loop):
                thread = threading.Thread(target=target, daemon=True, name=target.__name__)
                thread.start()
                self._threads.append(thread)

    # -- the one way state changes ------------------------------------------------------------------
    def _commit(self, events: list[dict]) -> None:
        for event in self.journal.append(events, time.time()):
            commands = self.controller.apply(event)
            self._account(event)
            self._carry_out(commands)

    def _account(self, event) -> None:
        """Metrics and logs of one journaled event (the one place usage is accounted)."""
        state = self.controller.actions.get(event.key) if event.key else None
        self.metrics.observe(event, state.action if state else None)
        if state is not None:
            self._log_action(event, state)
        elif event.type == "batch.submitted":
            self._account_reused(event.batch)
        elif event.type in ("episode.delivered", "episode.failed"):
            ep = self.controller.episodes[(event.batch, event.data["episode"])]
            seconds = 0.0
            if event.type == "episode.delivered":  # the episode's length, for cost per finished minute
                seconds = float(self.controller.actions[ep.final_key].manifest.get("meta", {}).get("duration", 0.0))
            self.metrics.episode(ep.job.studio, event.type.split(".")[1], seconds)
            log.log(_LEVELS.get(event.type, logging.INFO), event.type, batch=event.batch, studio=ep.job.studio,
                    series=ep.job.series.id, episode=ep.job.episode.slug, reason=event.data.get("reason"))

    def _account_reused(self, batch_id: str) -> None:
        """Work a new batch finds already done in this controller is its cache hit (no event says so)."""
        studio = self.controller.batches[batch_id].terms.studio
        for state in self.controller.reused(batch_id):
            self.metrics.cached(studio, state.action.stage, state.manifest.get("usage", {}))

    def _log_action(self, event, state) -> None:
        """One line per journaled action event, with the action's context (farm.observe.logs.action_context)."""
        d = event.data
        extra: dict[str, Any] = {}
        if event.type == "action.failed":
            extra = {"error": d.get("error"), "retryable": d.get("retryable"), "worker": d.get("worker"),
                     "attempt": d.get("attempt")}
        elif event.type == "action.retry":
            extra = {"retry_in_s": round(d["not_before"] - event.at, 3)}
        elif event.type == "action.quarantined":
            extra = {"reason": d.get("reason")}
        elif event.type == "action.completed":
            extra = {"seconds": round(d.get("finished_at", 0.0) - d.get("started_at", 0.0), 3)}
        # a lookup (action.cached) is charged to no batch: name one that needs it
        batch = event.batch or state.charged_to or min((b for b, _ in state.episodes), default=None)
        log.log(_LEVELS.get(event.type, logging.INFO), event.type, **logs.action_context(state.action, batch), **extra)

    def _carry_out(self, commands) -> None:
        for command in commands:
            if isinstance(command, Lookup):
                self._lookup(command.keys)
            elif isinstance(command, Dispatch):
                self._dispatch(command.key)
            elif isinstance(command, Deliver):
                self._deliver(command.batch, command.episode)
            elif isinstance(command, Notify):
                self._notify(command)
            elif isinstance(command, Cancel):
                self.runtime.cancel(command.keys)

    def _store(self, studio: str) -> ArtifactStore:
        if studio not in self._stores:
            self._stores[studio] = ArtifactStore(self.objects, studio)
            self._done[studio] = self._stores[studio].done_keys()
        return self._stores[studio]

    def _facts(self, action: Action, store: ArtifactStore, manifest) -> dict[str, Any]:
        data = manifest.model_dump(mode="json")
        if action.op == "script":
            with tempfile.TemporaryDirectory(prefix="farm-facts-") as tmp:
                path = store.get_blob(manifest.outputs["script"], Path(tmp, "script.json"))
                data["facts"] = {"script": json.loads(path.read_text(encoding="utf-8"))}
        return data

    def _lookup(self, keys) -> None:
        found = []
        for key in keys:
            action = self.controller.actions[key].action
            store = self._store(action.context["studio"])
            if key in self._done[action.context["studio"]]:
                manifest = store.get_manifest(key)
                if manifest is not None:
                    found.append({"type": "action.cached", "key": key, "data": self._facts(action, store, manifest)})
        if found:
            self._commit(found)

    def _dispatch(self, key: str) -> None:
        action = self.controller.actions[key].action
        inputs = {n: Blob.model_validate(self.controller.actions[r.key].manifest["outputs"][r.output])
                  for n, r in action.inputs.items()}
        self.runtime.submit(action, inputs, self.spec, action.context["studio"],
                            profile=self.profiles.get((action.stage, action.backend)),
                            batch=self.controller.actions[key].charged_to)

    def _deliver(self, batch: str, episode: str) -> None:
        ep = self.controller.episodes[(batch, episode)]
        final = self.controller.actions[ep.final_key].manifest
        store = self._store(ep.job.studio)
        series, slug = ep.job.series.id, ep.job.episode.slug
        paths = {out: store.publish(Blob.model_validate(final["outputs"][out]), series, slug, name)
                 for out, name in DELIVERABLES.items()}
        self._commit(self.controller.delivered(batch, episode, paths))

    def _notify(self, command: Notify) -> None:
        hook = self.controller.batches[command.batch].webhook
        if not hook:
            return
        note_id = f"{command.batch}:{command.kind}:{command.payload.get('episode', '')}"
        if note_id in self._sent:
            return
        # The secret stays in the controller's environment (a Kubernetes Secret, say), never in the journal.
        secret = os.environ.get(hook["secret_env"]) if hook.get("secret_env") else None
        logs.hide(secret)
        self._webhooks.put(Notification(note_id, hook["url"], secret, command.kind,
                                        {"batch": command.batch, **command.payload}))

    # -- recovery ---------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Replay the journal, then settle what the last incarnation left running."""
        deliveries: list[tuple[str, str]] = []
        notes: list[Notify] = []
        count = 0
        for event in self.journal.replay():
            count += 1
            if event.type == "webhook.delivered":
                self._sent.add(event.data["id"])
            for command in self.controller.apply(event):
                if isinstance(command, Notify):
                    notes.append(command)
                elif isinstance(command, Deliver):
                    deliveries.append((command.batch, command.episode))
        log.info("controller.replayed", events=count, batches=len(self.controller.batches))
        with self.lock:
            orphans = [k for k, s in self.controller.actions.items() if s.status == "running"]
            for key in orphans:
                action = self.controller.actions[key].action
                store = self._store(action.context["studio"])
                manifest = store.get_manifest(key)
                if manifest is not None:
                    self._commit([{"type": "action.completed", "batch": self.controller.actions[key].charged_to,
                                   "key": key, "data": self._facts(action, store, manifest)}])
                else:
                    self._commit(self.controller.on_failure(key, "interrupted: the controller restarted while it ran",
                                                            True, None, time.time()))
            pending = [k for k, s in self.controller.actions.items() if s.status == "pending"]
            self._lookup(pending)
            for batch, episode in deliveries:
                if self.controller.episodes[(batch, episode)].status == "delivering":
                    self._deliver(batch, episode)
            for note in notes:
                self._notify(note)

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                finished = self.runtime.wait(timeout=0.05)
                with self.lock:
                    events = []  # one journal segment for everything that finished (group commit)
                    for f in finished:
                        if f.manifest is not None:
                            store = self._store(f.action.context["studio"])
                            events += self.controller.on_result(f.action.key, self._facts(f.action, store, f.manifest))
                        else:
                            events += self.controller.on_failure(f.action.key, str(f.error), f.error.retryable,
                                                                 f.error.worker, time.time(), f.error.retry_after)
                    self._commit(events)
                    self._commit(self.controller.decide(time.time(), self.runtime.capacity()))
                    self.runtime.request_capacity(self.controller.wanted_capacity)
                    self._refresh_gauges()
                if not finished and self.runtime.running == 0:
                    self._wake.wait(0.05)
                    self._wake.clear()
            except Exception:  # keep scheduling; the error is in the log with its traceback
                log.exception("controller.loop_error")
                self._stop.wait(1.0)

    def _refresh_gauges(self) -> None:
        """The stage and batch gauges, every second, or less often when the batches are so big that
        working out their status (O(actions)) would take more than 5% of the loop's time."""
        now = time.time()
        if now - self._gauges_at < self._gauges_every:
            return
        self._gauges_at, started = now, time.perf_counter()
        queued: dict[str, int] = {}
        running: dict[str, int] = {}
        for task in self.controller.queued():
            queued[task.stage] = queued.get(task.stage, 0) + 1
        for state in self.controller.running():
            running[state.action.stage] = running.get(state.action.stage, 0) + 1
        self.metrics.stages(queued, running)
        for batch_id, batch in self.controller.batches.items():
            if batch.status == "running" or self.metrics.tracks(batch_id):  # a finished batch: drop its series once
                self.metrics.batch(self.controller.batch_status(batch_id, now))
        self._gauges_every = max(1.0, 20 * (time.perf_counter() - started))

    def _webhook_loop(self) -> None:
        while not self._stop.is_set():
            try:
                note = self._webhooks.get(timeout=0.2)
            except queue.Empty:
                continue
            ok, detail = deliver(note)
            with self.lock:
                self._sent.add(note.id)
                self._commit([{"type": "webhook.delivered" if ok else "webhook.failed", "batch": note.payload["batch"],
                               "data": {"id": note.id, "kind": note.kind, "detail": detail}}])

    # -- the API (Ray actor methods) ----------------------------------------------------------------
    def submit(self, payload: dict[str, Any]) -> str:
        """Record a batch durably and return its id (only after the journal holds it)."""
        now = time.time()
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d-%H%M%S")
        batch_id = f"{payload['studio']}-{stamp}-{digest}"
        episodes = [dict(item, backends=episode_backends(payload, item, self.settings, self.catalog))
                    for item in payload["episodes"]]
        data = dict(payload, episodes=episodes,
                    backends={s: c.to_json() for s, c in self.catalog.choose(self.settings.backend_names()).items()})
        with self.lock:
            self._store(payload["studio"])
            self._done[payload["studio"]] = self._stores[payload["studio"]].done_keys()
            self._commit([{"type": "batch.submitted", "batch": batch_id, "data": data}])
        self._wake.set()
        return batch_id

    def cancel(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            self._known(batch_id)
            if self.controller.batches[batch_id].status == "running":
                self._commit([{"type": "batch.cancelled", "batch": batch_id, "data": {}}])
            return self.controller.batch_status(batch_id, time.time())

    def _known(self, batch_id: str) -> None:
        if batch_id not in self.controller.batches:
            raise KeyError(f"no batch {batch_id!r}; `farm batch list` shows the known ones")

    def status(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            self._known(batch_id)
            return self.controller.batch_status(batch_id, time.time())

    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            now = time.time()
            return [self.controller.batch_status(b, now) for b in self.controller.batches]

    def events(self, batch_id: str) -> list[dict[str, Any]]:
        self._known(batch_id)
        return [e.model_dump(mode="json") for e in Journal(self.objects).replay() if e.batch == batch_id]

    def ping(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "pid": os.getpid(), "batches": len(self.controller.batches),
                "last_seq": self.controller.last_seq, "store": self.objects.describe()}

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.metrics.close()
